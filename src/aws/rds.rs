//! [`Databases`]: RDS DB instances and the manual DB snapshots Tender takes
//! of them.
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

/// A DB snapshot, as DescribeDBSnapshots describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbSnapshotInfo {
    pub identifier: String,
    pub arn: Option<String>,
    /// `creating`, `copying`, `available`, `failed`, `deleting`, … .
    pub status: String,
    pub percent_progress: Option<i32>,
    pub instance_identifier: Option<String>,
    /// `manual`, `automated`, `shared`, … .
    pub snapshot_type: Option<String>,
    /// The DbiResourceId of the DB instance it was taken of.
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

/// A DB instance state in which RDS refuses a snapshot only for a while:
/// it ends on its own (a backup, a modification, a start).
pub fn is_passing_state(status: &str) -> bool {
    matches!(
        status,
        "backing-up"
            | "configuring-enhanced-monitoring"
            | "configuring-iam-database-auth"
            | "configuring-log-exports"
            | "converting-to-vpc"
            | "creating"
            | "maintenance"
            | "modifying"
            | "moving-to-vpc"
            | "rebooting"
            | "renaming"
            | "resetting-master-credentials"
            | "starting"
            | "storage-optimization"
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
        instance_identifier: s.db_instance_identifier().map(str::to_string),
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

    /// Starts a manual snapshot `snapshot_id` of DB instance `instance_id`,
    /// tagged; it is `creating` when this returns.
    pub async fn create_snapshot(
        &self,
        region: &str,
        snapshot_id: &str,
        instance_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<DbSnapshotInfo, AwsError> {
        let create = self
            .aws
            .rds(region)
            .create_db_snapshot()
            .db_snapshot_identifier(snapshot_id)
            .db_instance_identifier(instance_id)
            .set_tags(Some(rds_tags(tags)))
            .send();
        let out = self
            .aws
            .call(AwsOperation::CreateDBSnapshot, create)
            .await?;
        out.db_snapshot()
            .and_then(snapshot_info)
            .ok_or_else(|| missing(AwsOperation::CreateDBSnapshot, "snapshot"))
    }

    /// The DB snapshot `id` of this account, or `None` when there is none
    /// (`DBSnapshotNotFound`).
    pub async fn describe_snapshot(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Option<DbSnapshotInfo>, AwsError> {
        let describe = self
            .aws
            .rds(region)
            .describe_db_snapshots()
            .db_snapshot_identifier(id)
            .send();
        match self
            .aws
            .call(AwsOperation::DescribeDBSnapshots, describe)
            .await
        {
            Ok(out) => Ok(out.db_snapshots().iter().find_map(snapshot_info)),
            Err(e) if e.code() == Some("DBSnapshotNotFound") => Ok(None),
            Err(e) => Err(e),
        }
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

    /// Every manual DB snapshot of this account in the Region (RDS has no
    /// tag filter on DescribeDBSnapshots: the caller reads `tags`).
    pub async fn list_manual_snapshots(
        &self,
        region: &str,
    ) -> Result<Vec<DbSnapshotInfo>, AwsError> {
        let mut pages = self
            .aws
            .rds(region)
            .describe_db_snapshots()
            .snapshot_type("manual")
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = self
            .aws
            .page(AwsOperation::DescribeDBSnapshots, pages.next())
            .await?
        {
            out.extend(page.db_snapshots().iter().filter_map(snapshot_info));
        }
        Ok(out)
    }

    /// Starts a copy `target_id`, in `region`, of the DB snapshot `source_arn`
    /// (another Region's: RDS wants its ARN), tagged, encrypted with
    /// `kms_key_id` (a key of `region`: required when the source is
    /// encrypted); it is `copying` when this returns.
    pub async fn copy_snapshot(
        &self,
        region: &str,
        source_arn: &str,
        target_id: &str,
        kms_key_id: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<DbSnapshotInfo, AwsError> {
        let copy = self
            .aws
            .rds(region)
            .copy_db_snapshot()
            .source_db_snapshot_identifier(source_arn)
            .target_db_snapshot_identifier(target_id)
            .set_kms_key_id(kms_key_id.map(str::to_string))
            .set_tags(Some(rds_tags(tags)))
            .send();
        let out = self.aws.call(AwsOperation::CopyDBSnapshot, copy).await?;
        out.db_snapshot()
            .and_then(snapshot_info)
            .ok_or_else(|| missing(AwsOperation::CopyDBSnapshot, "snapshot"))
    }

    /// Deletes DB snapshot `id`; `false` when it was already gone.
    pub async fn delete_snapshot(&self, region: &str, id: &str) -> Result<bool, AwsError> {
        let delete = self
            .aws
            .rds(region)
            .delete_db_snapshot()
            .db_snapshot_identifier(id)
            .send();
        match self.aws.call(AwsOperation::DeleteDBSnapshot, delete).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("DBSnapshotNotFound") => Ok(false),
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
