//! `BackupJob`: back up a list of AWS resources, one worker per resource.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    DB_CLUSTER_RESOURCE_PREFIX, DB_DUMP_RESOURCE_PREFIX, DB_IDENTIFIER_PATTERN,
    DB_INSTANCE_RESOURCE_PREFIX, INSTANCE_ID_PATTERN, KMS_KEY_PATTERN, LocalObjectReference,
    REGION_PATTERN, SNAPSHOT_ID_PATTERN,
};

/// Back up AWS resources. Tender launches one short-lived worker instance per
/// resource, follows it over SQS and terminates it as soon as it is done.
/// The spec cannot change after creation: create a new job instead.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "BackupJob",
    namespaced,
    status = "BackupJobStatus",
    shortname = "bj",
    category = "tender",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.activeWorkers",
        description = "Workers running now"
    ),
    printcolumn(
        name = "Configuration",
        type_ = "string",
        json_path = ".status.workerConfiguration",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.resources == oldSelf.resources && has(self.copyTo) == has(oldSelf.copyTo) && (!has(self.copyTo) || self.copyTo == oldSelf.copyTo) && has(self.repositoryRef) == has(oldSelf.repositoryRef) && (!has(self.repositoryRef) || self.repositoryRef.name == oldSelf.repositoryRef.name) && has(self.workerConfigurationRef) == has(oldSelf.workerConfigurationRef) && (!has(self.workerConfigurationRef) || self.workerConfigurationRef.name == oldSelf.workerConfigurationRef.name)",
     "message": "resources, copyTo, repositoryRef and workerConfigurationRef of a BackupJob are immutable; create a new BackupJob instead"},
    {"rule": "self.resources.all(r, self.resources.filter(o, (has(o.instanceId) && has(r.instanceId) && o.instanceId == r.instanceId) || (has(o.snapshotId) && has(r.snapshotId) && o.snapshotId == r.snapshotId) || (has(o.dbInstanceId) && has(r.dbInstanceId) && o.dbInstanceId == r.dbInstanceId) || (has(o.dbClusterId) && has(r.dbClusterId) && o.dbClusterId == r.dbClusterId) || (has(o.postgres) && has(r.postgres) && o.postgres.dbInstanceId == r.postgres.dbInstanceId)).size() == 1)",
     "message": "each resource may be listed once"},
    {"rule": "has(self.repositoryRef)",
     "message": "spec.repositoryRef is required: the BackupRepository the restore points go to"},
    {"rule": "!has(self.copyTo) || self.resources.all(r, has(r.dbInstanceId) || has(r.dbClusterId))",
     "message": "copyTo applies to RDS DB instances (dbInstanceId) and DB clusters (dbClusterId) only"},
    {"rule": "!has(self.copyTo) || self.resources.all(r, self.copyTo.all(c, c.region != r.region))",
     "message": "copyTo names another Region than the database's"}
]))]
#[serde(rename_all = "camelCase")]
pub struct BackupJobSpec {
    /// The WorkerConfiguration to launch workers with. When unset, the one
    /// annotated `tender.dev/is-default-configuration: "true"` for the
    /// resources' region. Either way it must admit this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,

    /// Resources to back up; each gets its own worker and its own restore
    /// point. Each resource may be listed once.
    #[schemars(length(min = 1, max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub resources: Vec<BackupResource>,

    /// The BackupRepository the restore points go to (required; it must
    /// admit this namespace). A resource's newest restore point there is
    /// the parent of its next backup, which then reads and stores only the
    /// blocks that changed.
    // Optional in Rust only: jobs stored by an older Tender (with an inline
    // `repository`) must still load (and then stall with a clear reason)
    // instead of breaking the watch of every job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalObjectReference>,

    /// Copies of each DB instance's (or DB cluster's) snapshot into other
    /// Regions, made once it is available and recorded in the same restore
    /// point (which can then be restored in any of them); each copy is
    /// deleted with it. RDS DB instances and DB clusters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["region"]))]
    pub copy_to: Option<Vec<SnapshotCopyTarget>>,

    /// Retries, deadline and TTL, as a `batch/v1` Job has them.
    #[serde(flatten)]
    pub limits: super::JobLimits,

    /// While true, no worker is launched and running workers are terminated
    /// (their attempt is not counted as a failure); set it back to false to
    /// go on.
    #[serde(default)]
    pub suspend: bool,
}

/// One protected resource: an EC2 instance (all its EBS volumes, snapshotted
/// together), an existing EBS snapshot, an RDS DB instance (a manual DB
/// snapshot, taken and kept by Tender), an Aurora or Multi-AZ DB cluster
/// (a manual DB cluster snapshot, the same way), or the databases of an RDS for
/// PostgreSQL instance (a logical dump into the repository, by a worker).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.instanceId), has(self.snapshotId), has(self.dbInstanceId), has(self.dbClusterId), has(self.postgres)].filter(x, x).size() == 1",
     "message": "set exactly one of instanceId, snapshotId, dbInstanceId, dbClusterId and postgres"},
    {"rule": "!has(self.dbInstanceId) || !self.dbInstanceId.contains('--')",
     "message": "an RDS DB instance identifier has no two hyphens in a row"},
    {"rule": "!has(self.dbClusterId) || !self.dbClusterId.contains('--')",
     "message": "an RDS DB cluster identifier has no two hyphens in a row"}
]))]
#[serde(rename_all = "camelCase")]
pub struct BackupResource {
    /// ID of the EC2 instance to back up, for example `i-0123456789abcdef0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_ID_PATTERN), length(max = 19))]
    pub instance_id: Option<String>,
    /// ID of an EBS snapshot to copy into the repository, for example
    /// `snap-0123456789abcdef0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SNAPSHOT_ID_PATTERN), length(max = 22))]
    pub snapshot_id: Option<String>,
    /// Identifier of an RDS DB instance (any engine) to back up, for example
    /// `orders-db`: Tender takes a manual DB snapshot of it, tagged as its
    /// own, waits until it is available, and records it in a restore point
    /// (resource `rds-db-<identifier>`). The snapshot is deleted once its
    /// restore point is (by retention or by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_instance_id: Option<String>,
    /// Identifier of an RDS DB cluster (Aurora, or a Multi-AZ DB cluster)
    /// to back up, for example `orders-cluster`: Tender takes a manual DB
    /// cluster snapshot of it, as for a DB instance (resource
    /// `rds-cluster-<identifier>`). Its member instances cannot be named
    /// with `dbInstanceId`: RDS snapshots a cluster as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_cluster_id: Option<String>,
    /// An RDS for PostgreSQL DB instance whose databases a worker dumps
    /// into the repository (resource `rds-pg-<identifier>`): roles without
    /// their passwords, then each database in one consistent snapshot, cut
    /// into content-defined chunks so that a daily dump stores only what
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSource>,
    /// Region of the resource, for example `eu-west-1`.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
}

/// The PostgreSQL databases of an RDS DB instance, dumped by a worker.
///
/// The worker runs in the WorkerConfiguration's VPC (which must be the DB
/// instance's), in the DB instance's zone when a configured subnet is
/// there. For the job, Tender creates a pair of security groups that lets
/// only this worker reach the DB instance on its port, adds one to the DB
/// instance (ModifyDBInstance) and removes both when the worker is gone.
/// The worker signs in as the master user, with the password RDS manages
/// in Secrets Manager (`ManageMasterUserPassword`), over TLS verified
/// against the RDS certificate authorities.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.dbInstanceId.contains('--')",
     "message": "an RDS DB instance identifier has no two hyphens in a row"},
    {"rule": "!has(self.databases) || self.databases.all(d, size(d) >= 1 && size(d) <= 63)",
     "message": "a PostgreSQL database name has 1 to 63 characters"}
]))]
#[serde(rename_all = "camelCase")]
pub struct PostgresSource {
    /// Identifier of the RDS for PostgreSQL DB instance, for example
    /// `orders-db`.
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_instance_id: String,
    /// Only these databases; empty or unset: every database but RDS's own
    /// (`rdsadmin`) and the templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub databases: Vec<String>,
}

/// Where a copy of a DB snapshot goes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotCopyTarget {
    /// The Region of the copy, for example `eu-central-1`.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
    /// A KMS key of that Region to encrypt the copy with: required when the
    /// DB instance is encrypted (RDS cannot use a key of another Region),
    /// else the copy is left unencrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(KMS_KEY_PATTERN), length(max = 2048))]
    pub kms_key_id: Option<String>,
}

impl BackupResource {
    /// The resource's ID, whichever kind it is, as `status.workers[]` and
    /// its restore point name it (`rds-db-<identifier>` for a DB instance,
    /// `rds-cluster-<identifier>` for a DB cluster).
    pub fn id(&self) -> String {
        if let Some(pg) = &self.postgres {
            return format!("{DB_DUMP_RESOURCE_PREFIX}{}", pg.db_instance_id);
        }
        if let Some(cluster) = &self.db_cluster_id {
            return format!("{DB_CLUSTER_RESOURCE_PREFIX}{cluster}");
        }
        match &self.db_instance_id {
            Some(db) => format!("{DB_INSTANCE_RESOURCE_PREFIX}{db}"),
            None => self
                .instance_id
                .as_deref()
                .or(self.snapshot_id.as_deref())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// What the controller observed of a BackupJob.
pub type BackupJobStatus = super::JobStatus<BackupWorkerStatus>;

/// The worker of one resource of a BackupJob.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupWorkerStatus {
    #[serde(flatten)]
    pub worker: super::WorkerStatus,
    /// The restore point this worker wrote (`<job>/<resource>`), the value
    /// a RestoreJob's `restorePoint` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// The DB snapshot of a DB instance's backup, once Tender started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_snapshot: Option<DatabaseSnapshotStatus>,
    /// A PostgreSQL dump's security group pair while it exists: Tender
    /// removes the database group from the DB instance and deletes both
    /// once the resource's worker is gone, and the job finishes only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_access: Option<DatabaseAccessStatus>,
}

/// The security groups that let a dump's worker reach its DB instance.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseAccessStatus {
    /// The worker's group (egress to the database group on the port).
    pub worker_security_group_id: String,
    /// The group added to the DB instance (ingress from the worker group).
    pub database_security_group_id: String,
    /// Why the groups are not removed yet, once the worker is gone (the DB
    /// instance not available, a refused call, a group still in use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_waiting: Option<String>,
}

/// A DB snapshot Tender takes for a BackupJob.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSnapshotStatus {
    /// Its identifier (the attempt's launch token).
    pub snapshot_id: String,
    /// Its ARN, as RDS gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_arn: Option<String>,
    /// Its RDS status when last looked at (`creating`, `available`, …).
    pub state: String,
    /// When Tender asked RDS for it.
    pub requested_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Its copies in other Regions (`spec.copyTo`), once started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<DatabaseSnapshotCopy>,
}

/// A copy of a DB snapshot in another Region.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSnapshotCopy {
    /// Its Region.
    pub region: String,
    /// Its identifier there (the same as the source's).
    pub snapshot_id: String,
    /// Its ARN, as RDS gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_arn: Option<String>,
    /// Its RDS status when last looked at (`copying`, `available`, …).
    pub state: String,
    /// RDS's progress of the copy, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<i32>,
}

super::job::job_worker!(BackupWorkerStatus);
