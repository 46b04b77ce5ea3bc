//! [`Databases`]: RDS DB instances and Aurora DB clusters, and the manual
//! DB snapshots and DB cluster snapshots Tender takes of them.
//!
//! What AWS documents and Tender relies on (Amazon RDS API Reference):
//! - CreateDBSnapshot returns at once with the snapshot `creating`; it
//!   becomes `available` later, `PercentProgress` rising meanwhile
//!   (the `DBSnapshotAvailable` waiter fails on `deleted`, `deleting`,
//!   `failed`, `incompatible-restore`, `incompatible-parameters`).
//! - It refuses with `InvalidDBInstanceState` while the instance cannot be
//!   snapshotted (another backup, a modification), with
//!   `SnapshotQuotaExceeded` at the Region's manual-snapshot quota (100 by
//!   default), and with `DBSnapshotAlreadyExists` for an identifier in use:
//!   Tender names each attempt's snapshot after its launch token, so a
//!   controller that crashed after the call finds its snapshot instead of
//!   taking a second one.
//! - Tags given on creation are authorized as `rds:AddTagsToResource` too.
//! - A DB cluster (Aurora, or a Multi-AZ DB cluster) is snapshotted as a
//!   whole with CreateDBClusterSnapshot, never through its instances
//!   (CreateDBSnapshot refuses a cluster member). Its errors are named
//!   differently (`DBClusterNotFoundFault`, `InvalidDBClusterStateFault`,
//!   `DBClusterSnapshotAlreadyExistsFault`,
//!   `DBClusterSnapshotNotFoundFault`): [`SnapshotKind`] knows them.

use std::collections::BTreeMap;

use aws_sdk_rds::types::Tag;

use super::{AwsClients, AwsError, AwsOperation};

/// An RDS DB instance, as DescribeDBInstances describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbInstanceInfo {
    pub identifier: String,
    pub arn: Option<String>,
    /// `available`, `backing-up`, `modifying`, `stopped`, … .
    pub status: String,
    pub engine: String,
    pub engine_version: Option<String>,
    pub instance_class: Option<String>,
    pub availability_zone: Option<String>,
    /// Its endpoint: host name and port, once it has one.
    pub address: Option<String>,
    pub port: Option<i32>,
    pub allocated_gib: i64,
    pub subnet_group: Option<String>,
    /// The VPC of its subnet group.
    pub vpc_id: Option<String>,
    /// The DB cluster it belongs to (Aurora, Multi-AZ DB clusters).
    pub db_cluster_identifier: Option<String>,
    pub vpc_security_group_ids: Vec<String>,
    /// Those of its groups whose membership is not `active` yet (RDS
    /// reports `adding`, `removing`, … while a modification applies).
    pub pending_security_group_ids: Vec<String>,
    pub parameter_group: Option<String>,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    pub dbi_resource_id: Option<String>,
    pub master_username: Option<String>,
    /// The RDS-managed secret holding the master password, if RDS manages it.
    pub master_user_secret_arn: Option<String>,
    pub iam_auth: bool,
    pub tags: BTreeMap<String, String>,
}

/// An RDS DB cluster, as DescribeDBClusters describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbClusterInfo {
    pub identifier: String,
    pub arn: Option<String>,
    /// `available`, `backing-up`, `creating`, `modifying`, `stopped`, … .
    pub status: String,
    pub engine: String,
    pub engine_version: Option<String>,
    /// The writer's endpoint and the readers' one, once it has them.
    pub endpoint: Option<String>,
    pub reader_endpoint: Option<String>,
    pub port: Option<i32>,
    /// Its DB subnet group's name.
    pub subnet_group: Option<String>,
    pub vpc_security_group_ids: Vec<String>,
    pub parameter_group: Option<String>,
    /// The instance class of a Multi-AZ DB cluster (Aurora's instances
    /// have each their own).
    pub cluster_instance_class: Option<String>,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    pub resource_id: Option<String>,
    pub master_username: Option<String>,
    /// Its DB instances, the writer first.
    pub members: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

impl DbClusterInfo {
    /// Whether its instances are made one by one with CreateDBInstance
    /// (Aurora) rather than by RDS with the cluster (Multi-AZ DB clusters).
    pub fn is_aurora(&self) -> bool {
        is_aurora(&self.engine)
    }

    /// Whether it is an RDS DB cluster (Aurora, or a Multi-AZ DB cluster
    /// of MySQL or PostgreSQL). DescribeDBClusters also answers Amazon
    /// DocumentDB (`docdb`) and Neptune (`neptune`) clusters, which share
    /// RDS's API but not its snapshots' restore rules.
    pub fn is_rds(&self) -> bool {
        self.is_aurora() || matches!(self.engine.as_str(), "mysql" | "postgres")
    }
}

/// Whether `engine` is an Aurora engine (`aurora-mysql`,
/// `aurora-postgresql`, …).
pub fn is_aurora(engine: &str) -> bool {
    engine.starts_with("aurora")
}

/// What a snapshot is of: a DB instance (CreateDBSnapshot and its kin) or
/// a DB cluster (CreateDBClusterSnapshot and its kin). RDS names their
/// errors differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    Instance,
    Cluster,
}

impl SnapshotKind {
    fn create_operation(self) -> AwsOperation {
        match self {
            Self::Instance => AwsOperation::CreateDBSnapshot,
            Self::Cluster => AwsOperation::CreateDBClusterSnapshot,
        }
    }

    fn copy_operation(self) -> AwsOperation {
        match self {
            Self::Instance => AwsOperation::CopyDBSnapshot,
            Self::Cluster => AwsOperation::CopyDBClusterSnapshot,
        }
    }

    /// "DB snapshot" or "DB cluster snapshot".
    pub fn noun(self) -> &'static str {
        match self {
            Self::Instance => "DB snapshot",
            Self::Cluster => "DB cluster snapshot",
        }
    }

    /// "DB instance" or "DB cluster".
    pub fn source_noun(self) -> &'static str {
        match self {
            Self::Instance => "DB instance",
            Self::Cluster => "DB cluster",
        }
    }

    /// The error code of a snapshot that does not exist.
    pub fn snapshot_not_found(self) -> &'static str {
        match self {
            Self::Instance => "DBSnapshotNotFound",
            Self::Cluster => "DBClusterSnapshotNotFoundFault",
        }
    }

    /// The error code of a snapshot identifier already in use.
    pub fn snapshot_exists(self) -> &'static str {
        match self {
            Self::Instance => "DBSnapshotAlreadyExists",
            Self::Cluster => "DBClusterSnapshotAlreadyExistsFault",
        }
    }

    /// The error code of a snapshot RDS cannot use or delete yet.
    pub fn snapshot_invalid_state(self) -> &'static str {
        match self {
            Self::Instance => "InvalidDBSnapshotState",
            Self::Cluster => "InvalidDBClusterSnapshotStateFault",
        }
    }

    /// The error code of a DB instance or cluster that does not exist.
    pub fn source_not_found(self) -> &'static str {
        match self {
            Self::Instance => "DBInstanceNotFound",
            Self::Cluster => "DBClusterNotFoundFault",
        }
    }

    /// The error code of a DB instance or cluster that cannot be
    /// snapshotted now.
    pub fn source_invalid_state(self) -> &'static str {
        match self {
            Self::Instance => "InvalidDBInstanceState",
            Self::Cluster => "InvalidDBClusterStateFault",
        }
    }

    /// The Service Quotas name of the manual snapshot quota.
    pub fn quota_name(self) -> &'static str {
        match self {
            Self::Instance => "Manual DB instance snapshots",
            Self::Cluster => "Manual DB cluster snapshots",
        }
    }
}

/// A DB snapshot or DB cluster snapshot, as DescribeDBSnapshots or
/// DescribeDBClusterSnapshots describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbSnapshotInfo {
    pub identifier: String,
    pub arn: Option<String>,
    /// `creating`, `copying`, `available`, `failed`, `deleting`, … .
    pub status: String,
    pub percent_progress: Option<i32>,
    /// The DB instance (or, for a cluster snapshot, DB cluster) it is of.
    pub source_identifier: Option<String>,
    /// `manual`, `automated`, `shared`, … .
    pub snapshot_type: Option<String>,
    /// The DbiResourceId of the DB instance it was taken of (for a cluster
    /// snapshot, the DbClusterResourceId).
    pub dbi_resource_id: Option<String>,
    pub engine: Option<String>,
    pub engine_version: Option<String>,
    pub allocated_gib: i64,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    /// When it was taken (RFC 3339), once RDS says.
    pub created: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl DbSnapshotInfo {
    /// Whether RDS has given up on it: it will never become `available`.
    pub fn is_failed(&self) -> bool {
        matches!(
            self.status.as_str(),
            "failed" | "deleted" | "deleting" | "incompatible-restore" | "incompatible-parameters"
        )
    }
}

/// A DB instance (or DB cluster) state in which RDS refuses a snapshot
/// only for a while: it ends on its own (a backup, a modification, a
/// start, a failover).
pub fn is_passing_state(status: &str) -> bool {
    matches!(
        status,
        "backing-up"
            | "backtracking"
            | "configuring-enhanced-monitoring"
            | "configuring-iam-database-auth"
            | "configuring-log-exports"
            | "converting-to-vpc"
            | "creating"
            | "failing-over"
            | "maintenance"
            | "migrating"
            | "modifying"
            | "moving-to-vpc"
            | "rebooting"
            | "renaming"
            | "resetting-master-credentials"
            | "starting"
            | "storage-optimization"
            | "scaling-compute"
            | "update-iam-db-auth"
            | "upgrading"
    )
}

fn tags_of(list: &[Tag]) -> BTreeMap<String, String> {
    list.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn instance_info(d: &aws_sdk_rds::types::DbInstance) -> Option<DbInstanceInfo> {
    Some(DbInstanceInfo {
        identifier: d.db_instance_identifier()?.to_string(),
        arn: d.db_instance_arn().map(str::to_string),
        status: d.db_instance_status().unwrap_or_default().to_string(),
        engine: d.engine().unwrap_or_default().to_string(),
        engine_version: d.engine_version().map(str::to_string),
        instance_class: d.db_instance_class().map(str::to_string),
        availability_zone: d.availability_zone().map(str::to_string),
        address: d.endpoint().and_then(|e| e.address()).map(str::to_string),
        port: d.endpoint().and_then(|e| e.port()),
        allocated_gib: i64::from(d.allocated_storage().unwrap_or_default()),
        subnet_group: d
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
            .map(str::to_string),
        db_cluster_identifier: d.db_cluster_identifier().map(str::to_string),
        vpc_id: d
            .db_subnet_group()
            .and_then(|g| g.vpc_id())
            .map(str::to_string),
        vpc_security_group_ids: d
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        pending_security_group_ids: d
            .vpc_security_groups()
            .iter()
            .filter(|g| g.status().is_some_and(|s| s != "active"))
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        parameter_group: d
            .db_parameter_groups()
            .first()
            .and_then(|g| g.db_parameter_group_name())
            .map(str::to_string),
        storage_encrypted: d.storage_encrypted().unwrap_or_default(),
        kms_key_id: d.kms_key_id().map(str::to_string),
        dbi_resource_id: d.dbi_resource_id().map(str::to_string),
        master_username: d.master_username().map(str::to_string),
        master_user_secret_arn: d
            .master_user_secret()
            .and_then(|s| s.secret_arn())
            .map(str::to_string),
        iam_auth: d.iam_database_authentication_enabled().unwrap_or_default(),
        tags: tags_of(d.tag_list()),
    })
}

fn snapshot_info(s: &aws_sdk_rds::types::DbSnapshot) -> Option<DbSnapshotInfo> {
    Some(DbSnapshotInfo {
        identifier: s.db_snapshot_identifier()?.to_string(),
        arn: s.db_snapshot_arn().map(str::to_string),
        status: s.status().unwrap_or_default().to_string(),
        percent_progress: s.percent_progress(),
        source_identifier: s.db_instance_identifier().map(str::to_string),
        snapshot_type: s.snapshot_type().map(str::to_string),
        dbi_resource_id: s.dbi_resource_id().map(str::to_string),
        engine: s.engine().map(str::to_string),
        engine_version: s.engine_version().map(str::to_string),
        allocated_gib: i64::from(s.allocated_storage().unwrap_or_default()),
        encrypted: s.encrypted().unwrap_or_default(),
        kms_key_id: s.kms_key_id().map(str::to_string),
        created: s.snapshot_create_time().and_then(|t| {
            t.fmt(aws_sdk_rds::primitives::DateTimeFormat::DateTime)
                .ok()
        }),
        tags: tags_of(s.tag_list()),
    })
}

fn cluster_snapshot_info(s: &aws_sdk_rds::types::DbClusterSnapshot) -> Option<DbSnapshotInfo> {
    Some(DbSnapshotInfo {
        identifier: s.db_cluster_snapshot_identifier()?.to_string(),
        arn: s.db_cluster_snapshot_arn().map(str::to_string),
        status: s.status().unwrap_or_default().to_string(),
        percent_progress: s.percent_progress(),
        source_identifier: s.db_cluster_identifier().map(str::to_string),
        snapshot_type: s.snapshot_type().map(str::to_string),
        dbi_resource_id: s.db_cluster_resource_id().map(str::to_string),
        engine: s.engine().map(str::to_string),
        engine_version: s.engine_version().map(str::to_string),
        allocated_gib: i64::from(s.allocated_storage().unwrap_or_default()),
        encrypted: s.storage_encrypted().unwrap_or_default(),
        kms_key_id: s.kms_key_id().map(str::to_string),
        created: s.snapshot_create_time().and_then(|t| {
            t.fmt(aws_sdk_rds::primitives::DateTimeFormat::DateTime)
                .ok()
        }),
        tags: tags_of(s.tag_list()),
    })
}

fn cluster_info(c: &aws_sdk_rds::types::DbCluster) -> Option<DbClusterInfo> {
    let mut members: Vec<(bool, String)> = c
        .db_cluster_members()
        .iter()
        .filter_map(|m| {
            Some((
                !m.is_cluster_writer().unwrap_or_default(),
                m.db_instance_identifier()?.to_string(),
            ))
        })
        .collect();
    members.sort();
    Some(DbClusterInfo {
        identifier: c.db_cluster_identifier()?.to_string(),
        arn: c.db_cluster_arn().map(str::to_string),
        status: c.status().unwrap_or_default().to_string(),
        engine: c.engine().unwrap_or_default().to_string(),
        engine_version: c.engine_version().map(str::to_string),
        endpoint: c.endpoint().map(str::to_string),
        reader_endpoint: c.reader_endpoint().map(str::to_string),
        port: c.port(),
        subnet_group: c.db_subnet_group().map(str::to_string),
        vpc_security_group_ids: c
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        parameter_group: c.db_cluster_parameter_group().map(str::to_string),
        cluster_instance_class: c.db_cluster_instance_class().map(str::to_string),
        storage_encrypted: c.storage_encrypted().unwrap_or_default(),
        kms_key_id: c.kms_key_id().map(str::to_string),
        resource_id: c.db_cluster_resource_id().map(str::to_string),
        master_username: c.master_username().map(str::to_string),
        members: members.into_iter().map(|(_, id)| id).collect(),
        tags: tags_of(c.tag_list()),
    })
}

fn rds_tags<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<Tag> {
    tags.into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// The answer lacked what the call promises.
fn missing(operation: AwsOperation, what: &str) -> AwsError {
    AwsError::Service {
        operation: operation.name(),
        code: "IncompleteResponse".into(),
        message: format!("{operation} returned no {what}"),
    }
}

/// RDS DB instances and their snapshots ([`AwsClients::databases`]).
#[derive(Clone, Copy)]
pub struct Databases<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Databases<'_> {
    /// The DB instance `id`, or `None` when the Region has none of that
    /// name (`DBInstanceNotFound`).
    pub async fn describe_instance(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Option<DbInstanceInfo>, AwsError> {
        let describe = self
            .aws
            .rds(region)
            .describe_db_instances()
            .db_instance_identifier(id)
            .send();
        match self
            .aws
            .call(AwsOperation::DescribeDBInstances, describe)
            .await
        {
            Ok(out) => Ok(out.db_instances().iter().find_map(instance_info)),
            Err(e) if e.code() == Some("DBInstanceNotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The value of a DB instance's RDS-managed master secret (a JSON
    /// object with `username` and `password`), by its ARN. Not kept, not
    /// logged: the SDK marks the answer sensitive.
    pub async fn master_secret(&self, region: &str, arn: &str) -> Result<String, AwsError> {
        let get = self
            .aws
            .secretsmanager(region)
            .get_secret_value()
            .secret_id(arn)
            .send();
        let out = self.aws.call(AwsOperation::GetSecretValue, get).await?;
        out.secret_string()
            .map(str::to_string)
            .ok_or_else(|| missing(AwsOperation::GetSecretValue, "SecretString"))
    }

    /// Makes `groups` DB instance `id`'s VPC security groups. Without
    /// `ApplyImmediately`: RDS applies a change of security groups as soon
    /// as possible whatever that flag says ("Settings for DB instances",
    /// RDS User Guide), while the flag would also apply every change the
    /// owner queued for the maintenance window (a class change, an engine
    /// upgrade) at once.
    /// RDS refuses with `InvalidDBInstanceState` while the instance is not
    /// `available` (another modification, a backup window, stopped): the
    /// caller tries again later.
    pub async fn set_security_groups(
        &self,
        region: &str,
        id: &str,
        groups: &[String],
    ) -> Result<(), AwsError> {
        let modify = self
            .aws
            .rds(region)
            .modify_db_instance()
            .db_instance_identifier(id)
            .set_vpc_security_group_ids(Some(groups.to_vec()))
            .apply_immediately(false)
            .send();
        self.aws
            .call(AwsOperation::ModifyDBInstance, modify)
            .await
            .map(|_| ())
    }

    /// Starts a manual snapshot `snapshot_id` of DB instance (or, for
    /// [`SnapshotKind::Cluster`], DB cluster) `source_id`, tagged; it is
    /// `creating` when this returns.
    pub async fn create_snapshot(
        &self,
        kind: SnapshotKind,
        region: &str,
        snapshot_id: &str,
        source_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<DbSnapshotInfo, AwsError> {
        let rds = self.aws.rds(region);
        let found = match kind {
            SnapshotKind::Instance => {
                let create = rds
                    .create_db_snapshot()
                    .db_snapshot_identifier(snapshot_id)
                    .db_instance_identifier(source_id)
                    .set_tags(Some(rds_tags(tags)))
                    .send();
                let out = self
                    .aws
                    .call(AwsOperation::CreateDBSnapshot, create)
                    .await?;
                out.db_snapshot().and_then(snapshot_info)
            }
            SnapshotKind::Cluster => {
                let create = rds
                    .create_db_cluster_snapshot()
                    .db_cluster_snapshot_identifier(snapshot_id)
                    .db_cluster_identifier(source_id)
                    .set_tags(Some(rds_tags(tags)))
                    .send();
                let out = self
                    .aws
                    .call(AwsOperation::CreateDBClusterSnapshot, create)
                    .await?;
                out.db_cluster_snapshot().and_then(cluster_snapshot_info)
            }
        };
        found.ok_or_else(|| missing(kind.create_operation(), "snapshot"))
    }

    /// The snapshot `id` of this account, or `None` when there is none
    /// (`DBSnapshotNotFound`, `DBClusterSnapshotNotFoundFault`).
    pub async fn describe_snapshot(
        &self,
        kind: SnapshotKind,
        region: &str,
        id: &str,
    ) -> Result<Option<DbSnapshotInfo>, AwsError> {
        let rds = self.aws.rds(region);
        let found = match kind {
            SnapshotKind::Instance => {
                let describe = rds
                    .describe_db_snapshots()
                    .db_snapshot_identifier(id)
                    .send();
                self.aws
                    .call(AwsOperation::DescribeDBSnapshots, describe)
                    .await
                    .map(|out| out.db_snapshots().iter().find_map(snapshot_info))
            }
            SnapshotKind::Cluster => {
                let describe = rds
                    .describe_db_cluster_snapshots()
                    .db_cluster_snapshot_identifier(id)
                    .send();
                self.aws
                    .call(AwsOperation::DescribeDBClusterSnapshots, describe)
                    .await
                    .map(|out| {
                        out.db_cluster_snapshots()
                            .iter()
                            .find_map(cluster_snapshot_info)
                    })
            }
        };
        match found {
            Err(e) if e.code() == Some(kind.snapshot_not_found()) => Ok(None),
            other => other,
        }
    }

    /// The DB cluster `id`, or `None` when the Region has none of that name
    /// (`DBClusterNotFoundFault`).
    pub async fn describe_cluster(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Option<DbClusterInfo>, AwsError> {
        let describe = self
            .aws
            .rds(region)
            .describe_db_clusters()
            .db_cluster_identifier(id)
            .send();
        match self
            .aws
            .call(AwsOperation::DescribeDBClusters, describe)
            .await
        {
            Ok(out) => Ok(out.db_clusters().iter().find_map(cluster_info)),
            Err(e) if e.code() == Some("DBClusterNotFoundFault") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every RDS DB cluster of this account in the Region, with its tags
    /// (DocumentDB and Neptune clusters left out: see
    /// [`DbClusterInfo::is_rds`]).
    pub async fn list_clusters(&self, region: &str) -> Result<Vec<DbClusterInfo>, AwsError> {
        let mut pages = self
            .aws
            .rds(region)
            .describe_db_clusters()
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = self
            .aws
            .page(AwsOperation::DescribeDBClusters, pages.next())
            .await?
        {
            out.extend(
                page.db_clusters()
                    .iter()
                    .filter_map(cluster_info)
                    .filter(DbClusterInfo::is_rds),
            );
        }
        Ok(out)
    }

    /// Every DB instance of this account in the Region, with its tags
    /// (DescribeDBInstances answers them; its filters take no tags).
    pub async fn list_instances(&self, region: &str) -> Result<Vec<DbInstanceInfo>, AwsError> {
        let mut pages = self
            .aws
            .rds(region)
            .describe_db_instances()
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = self
            .aws
            .page(AwsOperation::DescribeDBInstances, pages.next())
            .await?
        {
            out.extend(page.db_instances().iter().filter_map(instance_info));
        }
        Ok(out)
    }

    /// Every manual snapshot of this kind of this account in the Region
    /// (RDS has no tag filter on DescribeDBSnapshots: the caller reads
    /// `tags`).
    pub async fn list_manual_snapshots(
        &self,
        kind: SnapshotKind,
        region: &str,
    ) -> Result<Vec<DbSnapshotInfo>, AwsError> {
        let rds = self.aws.rds(region);
        let mut out = Vec::new();
        match kind {
            SnapshotKind::Instance => {
                let mut pages = rds
                    .describe_db_snapshots()
                    .snapshot_type("manual")
                    .into_paginator()
                    .send();
                while let Some(page) = self
                    .aws
                    .page(AwsOperation::DescribeDBSnapshots, pages.next())
                    .await?
                {
                    out.extend(page.db_snapshots().iter().filter_map(snapshot_info));
                }
            }
            SnapshotKind::Cluster => {
                let mut pages = rds
                    .describe_db_cluster_snapshots()
                    .snapshot_type("manual")
                    .into_paginator()
                    .send();
                while let Some(page) = self
                    .aws
                    .page(AwsOperation::DescribeDBClusterSnapshots, pages.next())
                    .await?
                {
                    out.extend(
                        page.db_cluster_snapshots()
                            .iter()
                            .filter_map(cluster_snapshot_info),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Starts a copy `target_id`, in `region`, of the snapshot `source_arn`
    /// (another Region's: RDS wants its ARN), tagged, encrypted with
    /// `kms_key_id` (a key of `region`: required when the source is
    /// encrypted); it is `copying` when this returns. No `PreSignedUrl`:
    /// "This setting applies only to Amazon Web Services GovCloud (US)
    /// Regions. It's ignored in other Amazon Web Services Regions"
    /// (CopyDBSnapshot and CopyDBClusterSnapshot, RDS API Reference), and
    /// Tender does not presign for GovCloud yet.
    pub async fn copy_snapshot(
        &self,
        kind: SnapshotKind,
        region: &str,
        source_arn: &str,
        target_id: &str,
        kms_key_id: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<DbSnapshotInfo, AwsError> {
        let rds = self.aws.rds(region);
        let found = match kind {
            SnapshotKind::Instance => {
                let copy = rds
                    .copy_db_snapshot()
                    .source_db_snapshot_identifier(source_arn)
                    .target_db_snapshot_identifier(target_id)
                    .set_kms_key_id(kms_key_id.map(str::to_string))
                    .set_tags(Some(rds_tags(tags)))
                    .send();
                let out = self.aws.call(AwsOperation::CopyDBSnapshot, copy).await?;
                out.db_snapshot().and_then(snapshot_info)
            }
            SnapshotKind::Cluster => {
                let copy = rds
                    .copy_db_cluster_snapshot()
                    .source_db_cluster_snapshot_identifier(source_arn)
                    .target_db_cluster_snapshot_identifier(target_id)
                    .set_kms_key_id(kms_key_id.map(str::to_string))
                    .set_tags(Some(rds_tags(tags)))
                    .send();
                let out = self
                    .aws
                    .call(AwsOperation::CopyDBClusterSnapshot, copy)
                    .await?;
                out.db_cluster_snapshot().and_then(cluster_snapshot_info)
            }
        };
        found.ok_or_else(|| missing(kind.copy_operation(), "snapshot"))
    }

    /// Deletes snapshot `id`; `false` when it was already gone.
    pub async fn delete_snapshot(
        &self,
        kind: SnapshotKind,
        region: &str,
        id: &str,
    ) -> Result<bool, AwsError> {
        let rds = self.aws.rds(region);
        let deleted = match kind {
            SnapshotKind::Instance => {
                let delete = rds.delete_db_snapshot().db_snapshot_identifier(id).send();
                self.aws
                    .call(AwsOperation::DeleteDBSnapshot, delete)
                    .await
                    .map(|_| ())
            }
            SnapshotKind::Cluster => {
                let delete = rds
                    .delete_db_cluster_snapshot()
                    .db_cluster_snapshot_identifier(id)
                    .send();
                self.aws
                    .call(AwsOperation::DeleteDBClusterSnapshot, delete)
                    .await
                    .map(|_| ())
            }
        };
        match deleted {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(kind.snapshot_not_found()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates DB instance `request.identifier` from a snapshot (never
    /// over an existing one: RDS answers `DBInstanceAlreadyExists`), tagged;
    /// it is `creating` when this returns.
    pub async fn restore_instance(
        &self,
        region: &str,
        request: &InstanceRestore<'_>,
    ) -> Result<DbInstanceInfo, AwsError> {
        let restore = self
            .aws
            .rds(region)
            .restore_db_instance_from_db_snapshot()
            .db_instance_identifier(request.identifier)
            .db_snapshot_identifier(request.snapshot)
            .set_db_instance_class(request.instance_class.map(str::to_string))
            .set_db_subnet_group_name(request.subnet_group.map(str::to_string))
            .set_vpc_security_group_ids(
                (!request.security_group_ids.is_empty())
                    .then(|| request.security_group_ids.to_vec()),
            )
            .set_db_parameter_group_name(request.parameter_group.map(str::to_string))
            // RDS's default is public without a subnet group, or with the
            // default one: a restored copy of a database never is.
            .publicly_accessible(false)
            .set_tags(Some(rds_tags(request.tags)))
            .send();
        let out = self
            .aws
            .call(AwsOperation::RestoreDBInstanceFromDBSnapshot, restore)
            .await?;
        out.db_instance()
            .and_then(instance_info)
            .ok_or_else(|| missing(AwsOperation::RestoreDBInstanceFromDBSnapshot, "instance"))
    }
}

/// What a restore of a DB cluster snapshot into a new DB cluster asks for;
/// unset fields take the snapshot's (or RDS's default).
#[derive(Clone, Copy, Debug)]
pub struct ClusterRestore<'a> {
    pub identifier: &'a str,
    /// The snapshot's identifier (this account) or ARN.
    pub snapshot: &'a str,
    /// RestoreDBClusterFromSnapshot requires the engine; the snapshot's.
    pub engine: &'a str,
    /// The snapshot's, so that RDS does not pick the engine's default.
    pub engine_version: Option<&'a str>,
    /// A Multi-AZ DB cluster's instance class (RDS makes its instances);
    /// unset for Aurora, whose instances are created one by one.
    pub cluster_instance_class: Option<&'a str>,
    pub subnet_group: Option<&'a str>,
    pub security_group_ids: &'a [String],
    pub parameter_group: Option<&'a str>,
    pub tags: &'a BTreeMap<String, String>,
}

impl Databases<'_> {
    /// Creates DB cluster `request.identifier` from a DB cluster snapshot
    /// (never over an existing one: RDS answers
    /// `DBClusterAlreadyExistsFault`), tagged; it is `creating`, and an
    /// Aurora cluster has no DB instance, when this returns.
    pub async fn restore_cluster(
        &self,
        region: &str,
        request: &ClusterRestore<'_>,
    ) -> Result<DbClusterInfo, AwsError> {
        let restore = self
            .aws
            .rds(region)
            .restore_db_cluster_from_snapshot()
            .db_cluster_identifier(request.identifier)
            .snapshot_identifier(request.snapshot)
            .engine(request.engine)
            .set_engine_version(request.engine_version.map(str::to_string))
            .set_db_cluster_instance_class(request.cluster_instance_class.map(str::to_string))
            .set_db_subnet_group_name(request.subnet_group.map(str::to_string))
            .set_vpc_security_group_ids(
                (!request.security_group_ids.is_empty())
                    .then(|| request.security_group_ids.to_vec()),
            )
            .set_db_cluster_parameter_group_name(request.parameter_group.map(str::to_string))
            .set_publicly_accessible(request.cluster_instance_class.map(|_| false))
            .set_tags(Some(rds_tags(request.tags)))
            .send();
        let out = self
            .aws
            .call(AwsOperation::RestoreDBClusterFromSnapshot, restore)
            .await?;
        out.db_cluster()
            .and_then(cluster_info)
            .ok_or_else(|| missing(AwsOperation::RestoreDBClusterFromSnapshot, "cluster"))
    }

    /// Creates DB instance `identifier` of class `class` in Aurora DB
    /// cluster `cluster` (its first instance is the writer), tagged. The
    /// cluster decides its storage, subnet group, security groups and
    /// credentials.
    pub async fn create_cluster_instance(
        &self,
        region: &str,
        identifier: &str,
        cluster: &str,
        class: &str,
        engine: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<DbInstanceInfo, AwsError> {
        let create = self
            .aws
            .rds(region)
            .create_db_instance()
            .db_instance_identifier(identifier)
            .db_cluster_identifier(cluster)
            .db_instance_class(class)
            .engine(engine)
            .publicly_accessible(false)
            .set_tags(Some(rds_tags(tags)))
            .send();
        let out = self
            .aws
            .call(AwsOperation::CreateDBInstance, create)
            .await?;
        out.db_instance()
            .and_then(instance_info)
            .ok_or_else(|| missing(AwsOperation::CreateDBInstance, "instance"))
    }
}

/// What a restore of a DB snapshot into a new DB instance asks for; unset
/// fields take the snapshot's (or RDS's default).
#[derive(Clone, Copy, Debug)]
pub struct InstanceRestore<'a> {
    pub identifier: &'a str,
    /// The snapshot's identifier (this account) or ARN.
    pub snapshot: &'a str,
    pub instance_class: Option<&'a str>,
    pub subnet_group: Option<&'a str>,
    pub security_group_ids: &'a [String],
    pub parameter_group: Option<&'a str>,
    pub tags: &'a BTreeMap<String, String>,
}
