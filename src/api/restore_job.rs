//! `RestoreJob`: restore one resource from a restore point.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    DB_IDENTIFIER_PATTERN, DEVICE_PATTERN, INSTANCE_TYPE_PATTERN, LocalObjectReference,
    PREFIX_PATTERN, REGION_PATTERN, SECURITY_GROUP_PATTERN, ZONE_PATTERN,
};

/// `<BackupJob name>/<resource ID>`, or the name of its RestorePoint
/// object, `<BackupJob name>.<resource ID>`.
pub const RESTORE_POINT_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?[/.][a-z0-9-]+$";

/// Restore one resource (a whole instance, a volume, or files) from a
/// restore point. `fileLevel` mode keeps a worker serving the file-level
/// recovery browser until the session has been idle for `idleTimeoutMinutes`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "RestoreJob",
    namespaced,
    status = "RestoreJobStatus",
    printcolumn(
        name = "RestorePoint",
        type_ = "string",
        json_path = ".spec.restorePoint"
    ),
    shortname = "rj",
    category = "tender",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.activeWorkers",
        description = "Workers running now"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a RestoreJob's spec is immutable; create a new RestoreJob instead"},
    {"rule": "self.mode == 'fileLevel' || !has(self.idleTimeoutMinutes)",
     "message": "idleTimeoutMinutes applies only to mode fileLevel"},
    {"rule": "self.mode == 'full' || (!has(self.instanceType) && !has(self.securityGroupIds))",
     "message": "instanceType and securityGroupIds apply only to mode full"},
    {"rule": "self.mode != 'full' || has(self.instanceType)",
     "message": "mode full needs instanceType: the type of the restored instance"},
    {"rule": "self.mode == 'fileLevel' || !has(self.restoreFilesTo)",
     "message": "restoreFilesTo applies only to mode fileLevel"},
    {"rule": "self.mode == 'fileLevel' || !has(self.restoreToOriginalLocation) || !self.restoreToOriginalLocation",
     "message": "restoreToOriginalLocation applies only to mode fileLevel"},
    {"rule": "has(self.repositoryRef)",
     "message": "spec.repositoryRef is required: the BackupRepository that holds the restore point"},
    {"rule": "(self.mode == 'database') == has(self.database)",
     "message": "mode database needs spec.database (the new DB instance), and only it takes one"}
]))]
#[serde(rename_all = "camelCase")]
pub struct RestoreJobSpec {
    /// The WorkerConfiguration to launch the worker with. When unset, the
    /// one annotated `tender.dev/is-default-configuration: "true"` for
    /// `region`. Either way it must admit this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,
    /// What to restore: `full` (a new instance), `volume`, or `fileLevel`
    /// (browse and download files).
    pub mode: RestoreMode,
    /// The restore point to restore from: `<BackupJob name>/<resource ID>`,
    /// as a BackupJob records it in `status.workers[].restorePoint`, or the
    /// name of its RestorePoint (`<BackupJob name>.<resource ID>`, as
    /// `kubectl get restorepoints` lists it).
    #[schemars(length(min = 1, max = 512), pattern(RESTORE_POINT_PATTERN))]
    pub restore_point: String,
    /// The BackupRepository that holds the restore point (required; it must
    /// admit this namespace). Only restore points that jobs of this
    /// namespace wrote can be restored.
    // Optional in Rust only, as BackupJobSpec::repository_ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalObjectReference>,
    /// Region to restore into, for example `eu-west-1`.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
    /// Availability zone of the restored volume (mode `volume`; default:
    /// the zone of the configuration's first subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(ZONE_PATTERN), length(max = 32))]
    pub availability_zone: Option<String>,
    /// Device name of the volume to restore, for restore points of
    /// instances with several volumes (mode `volume`; default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DEVICE_PATTERN), length(max = 32))]
    pub device: Option<String>,
    /// Instance type of the restored instance (mode `full`), for example
    /// `m5.large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN), length(max = 32))]
    pub instance_type: Option<String>,
    /// Security groups of the restored instance (mode `full`; default: the
    /// VPC's default group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5), inner(pattern(SECURITY_GROUP_PATTERN)))]
    pub security_group_ids: Option<Vec<String>>,
    /// Retries, deadline and TTL, as a `batch/v1` Job has them.
    #[serde(flatten)]
    pub limits: super::JobLimits,
    /// Where the file-level recovery browser's "Restore selected" copies
    /// files and folders (mode `fileLevel`): a BackupRepository this
    /// namespace is admitted to. Unset: the browser offers downloads only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_files_to: Option<RestoreFilesTo>,
    /// Whether the file-level recovery browser may restore selected files
    /// onto the running instance the restore point was taken of, through
    /// AWS Systems Manager Run Command (mode `fileLevel`). The instance must
    /// run an SSM Agent and carry the tag
    /// `tender.dev/restore-to-original-location: allowed` (its owner's
    /// consent: the command runs as root there). Nothing is overwritten
    /// unless the page is told to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore_to_original_location: bool,
    /// The new DB instance (mode `database`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRestore>,
    /// Minutes a file-level recovery session may stay idle before its worker
    /// is terminated (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1440))]
    pub idle_timeout_minutes: Option<i32>,
}

impl RestoreJobSpec {
    /// The restore point's ID (`<job>/<resource>`), however `restorePoint`
    /// names it: a RestorePoint's name is `<job>.<resource>`, and a
    /// resource ID holds no dot.
    pub fn restore_point_id(&self) -> String {
        restore_point_id(&self.restore_point)
    }
}

/// The ID `<job>/<resource>` of a restore point named by its ID or by its
/// RestorePoint's name.
pub fn restore_point_id(named: &str) -> String {
    if named.contains('/') {
        return named.to_string();
    }
    match named.rsplit_once('.') {
        Some((job, resource)) => format!("{job}/{resource}"),
        None => named.to_string(),
    }
}

/// Where "Restore selected" copies files: under
/// `<repository prefix>_restored/<namespace>/<RestoreJob>/<prefix>`, apart
/// from every namespace's restore points (no namespace name starts with
/// `_`), each file keeping its path.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFilesTo {
    /// The BackupRepository to copy into.
    pub repository_ref: LocalObjectReference,
    /// A further prefix under this job's folder (default: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(pattern(PREFIX_PATTERN), length(max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains('..') && !self.startsWith('/')", "message": "prefix may not contain '..' or start with '/'"}
    ]))]
    pub prefix: String,
}

/// What a RestoreJob restores.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestoreMode {
    /// A new EC2 instance from the restore point.
    Full,
    /// One EBS volume from the restore point.
    Volume,
    /// A worker serving the file-level recovery browser.
    FileLevel,
    /// A database's restore point (see `spec.database`): a DB snapshot's
    /// into a new RDS DB instance, a DB cluster snapshot's into a new DB
    /// cluster (RDS restores them; no worker), a
    /// PostgreSQL dump's into an existing, empty RDS for PostgreSQL DB
    /// instance (a worker loads it).
    Database,
}

/// The DB instance a database's restore point is restored into.
///
/// A DB snapshot's restore point makes a **new** DB instance: unset fields
/// take what the snapshot holds (or RDS's default: the default VPC's
/// subnet group and security group, the engine's default parameter group).
///
/// A DB cluster snapshot's restore point makes a **new** DB cluster
/// (`dbClusterId`) and, for Aurora, its writer DB instance
/// (`dbInstanceId`, of class `dbInstanceClass`: default the class of the
/// backed-up cluster's writer); `dbParameterGroupName` is then the DB
/// cluster parameter group.
///
/// A PostgreSQL dump's restore point is loaded by a worker into an
/// **existing** RDS for PostgreSQL DB instance, as a dump is taken (its
/// owner's tag `tender.dev/dump-access: allowed`, a master password
/// managed by RDS, the configuration's VPC): each database is created
/// there, or filled if it exists empty; one that holds tables is refused
/// and left as it is. The fields that describe a new DB instance do not
/// apply.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.dbInstanceId.contains('--')",
     "message": "an RDS DB instance identifier has no two hyphens in a row"},
    {"rule": "!has(self.dbClusterId) || !self.dbClusterId.contains('--')",
     "message": "an RDS DB cluster identifier has no two hyphens in a row"},
    {"rule": "!has(self.dbClusterId) || !has(self.databases)",
     "message": "databases applies to a PostgreSQL dump's restore point, dbClusterId to a DB cluster snapshot's"},
    {"rule": "!has(self.databases) || self.databases.all(d, size(d) >= 1 && size(d) <= 63)",
     "message": "a PostgreSQL database name has 1 to 63 characters"}
]))]
pub struct DatabaseRestore {
    /// Identifier of the DB instance. From a DB snapshot: the new DB
    /// instance, which must not exist (a restore never overwrites a
    /// database). From a PostgreSQL dump: the DB instance to load into,
    /// which must exist.
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_instance_id: String,
    /// From a DB cluster snapshot: identifier of the new DB cluster, which
    /// must not exist (required for such a restore point, refused for
    /// others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_cluster_id: Option<String>,
    /// From a PostgreSQL dump: only these of its databases (default: every
    /// one it holds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub databases: Vec<String>,
    /// Its instance class, for example `db.t3.micro` (default: the
    /// snapshot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(r"^db\.[a-z0-9]+\.[a-z0-9]+$"))]
    pub db_instance_class: Option<String>,
    /// Its DB subnet group: where in which VPC it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub db_subnet_group_name: Option<String>,
    /// Its VPC security groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5), inner(pattern(SECURITY_GROUP_PATTERN)))]
    pub vpc_security_group_ids: Option<Vec<String>>,
    /// Its DB parameter group (a DB cluster's: its DB cluster parameter
    /// group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub db_parameter_group_name: Option<String>,
}

/// What the controller observed of a RestoreJob: one worker, whose entry
/// also names what the restore created.
pub type RestoreJobStatus = super::JobStatus<RestoreWorkerStatus>;

/// The worker of a RestoreJob, and what the restore created.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreWorkerStatus {
    #[serde(flatten)]
    pub worker: super::WorkerStatus,
    /// The EBS snapshot the worker wrote the restored blocks into (mode
    /// `volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_snapshot_id: Option<String>,
    /// The EBS volume Tender created from that snapshot (mode `volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_volume_id: Option<String>,
    /// Every snapshot the worker wrote, by device (mode `full`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored_snapshots: Vec<RestoredSnapshot>,
    /// What the restore point recorded of the backed-up instance (mode
    /// `full`): the AMI is registered with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_machine: Option<MachineImage>,
    /// While EBS is still sealing the restored snapshots (state `pending`
    /// after the worker's CompleteSnapshot), the progress of the slowest,
    /// for example `45%`; no volume or AMI can be made from them before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_progress: Option<String>,
    /// The AMI Tender registered from those snapshots (mode `full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_image_id: Option<String>,
    /// The instance Tender launched from that AMI (mode `full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_instance_id: Option<String>,
    /// Where the file-level recovery browser is (mode `fileLevel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_url: Option<String>,
    /// SHA-256 fingerprint of the browser's self-signed certificate (DER,
    /// `AB:CD:…`): check it against what your browser shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    /// SHA-256 of the certificate's public key, base64, for pinning
    /// (`curl --pinnedpubkey sha256//…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
    /// The Secret (same namespace) whose `token` opens the session (mode
    /// `fileLevel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secret: Option<String>,
    /// The last restore of files onto the source instance requested in the
    /// session (`spec.restoreToOriginalLocation`), or why none can be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_location: Option<OriginalLocationStatus>,
    /// The DB instance a restore of a database created or loaded into
    /// (mode `database`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_database: Option<RestoredDatabase>,
    /// The security groups that let the worker loading a PostgreSQL dump
    /// reach its DB instance, as for a dump (see the BackupJob's
    /// `databaseAccess`): removed once the worker is gone, and the job
    /// finishes only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_access: Option<super::DatabaseAccessStatus>,
}

/// A DB instance a RestoreJob created.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredDatabase {
    /// Its identifier (`spec.database.dbInstanceId`; of a DB cluster, its
    /// writer).
    pub db_instance_id: String,
    /// The DB cluster created (`spec.database.dbClusterId`), from a DB
    /// cluster snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_cluster_id: Option<String>,
    /// The DB cluster's ARN, as RDS gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_cluster_arn: Option<String>,
    /// The DB cluster's RDS status when last looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<String>,
    /// The DB cluster's reader endpoint, once RDS says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_endpoint_address: Option<String>,
    /// Its ARN, as RDS gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_instance_arn: Option<String>,
    /// Its RDS status when last looked at (`creating`, `available`, …).
    pub state: String,
    /// The host name clients connect to (a DB cluster's: its writer
    /// endpoint), once RDS says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_address: Option<String>,
    /// The port clients connect to, once RDS says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_port: Option<i32>,
    /// When Tender asked RDS for it.
    pub requested_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// Where a restore of files onto the source instance is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OriginalLocationPhase {
    /// The session offers it; nothing was requested yet.
    Available,
    /// The session cannot restore there (`message` says why).
    Unavailable,
    /// The worker staged the files; the command is being sent.
    Staged,
    /// Sent; Run Command has not started it yet.
    Pending,
    InProgress,
    /// Run Command could not deliver it yet and tries again.
    Delayed,
    /// Every file was restored.
    Succeeded,
    /// Some or all files were not restored (`message`, and the counts).
    Failed,
    /// Not delivered or not finished in time.
    TimedOut,
    Cancelled,
}

impl OriginalLocationPhase {
    /// Whether it will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }
}

/// A restore of files onto the source instance, as Run Command ran it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginalLocationStatus {
    pub phase: OriginalLocationPhase,
    /// The instance files are restored onto.
    pub instance_id: String,
    /// The EBS volume of the instance whose filesystem the session
    /// browses: the command writes onto that volume only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// The session's request (16 hex digits); none while unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether existing files are replaced (else the restored copy is
    /// written beside, with the suffix `.restored-<backup job>`).
    #[serde(default)]
    pub overwrite: bool,
    /// The filesystem's UUID, as the instance's `blkid` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_uuid: Option<String>,
    /// SHA-256 of the staged request's list, as the worker reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// Files staged.
    #[serde(default)]
    pub files: i64,
    /// Bytes of the files staged.
    #[serde(default)]
    pub bytes: i64,
    /// The Run Command command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Files the command wrote where nothing was (once it finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<i64>,
    /// Files the command wrote beside a file it kept, with the suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_beside: Option<i64>,
    /// Files the command replaced (when told to overwrite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwritten: Option<i64>,
    /// Files already there as restored (a command run again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<i64>,
    /// Files the command could not restore (the message names some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i64>,
    /// When the command was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the command finished (or the request failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Whether the staged files (or the request's answer) are still in
    /// the repository's `_staging/` folder; removed when the command
    /// finished, and the answer when the session ends.
    #[serde(default)]
    pub staged: bool,
}

super::job::job_worker!(RestoreWorkerStatus);

/// A snapshot a restore wrote, and the device it belongs on.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredSnapshot {
    /// Device name, for example `/dev/xvda`.
    pub device: String,
    /// The snapshot's ID.
    pub snapshot_id: String,
}

/// What an instance's AMI must say for the instance to boot again from
/// its restored volumes, as DescribeInstances reported it when the backup
/// was taken (RegisterImage's parameters of the same names).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineImage {
    /// `x86_64`, `arm64` (Graviton), `i386`, `x86_64_mac` or `arm64_mac`.
    pub architecture: String,
    /// `uefi`, `legacy-bios` or `uefi-preferred`; unset: the instance
    /// type's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    /// Whether the instance had ENA (enhanced networking) enabled.
    #[serde(default)]
    pub ena_support: bool,
    /// `simple` when the instance had Intel 82599 VF networking enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_net_support: Option<String>,
    /// `hvm` or `paravirtual`.
    pub virtualization_type: String,
    /// The device the instance boots from, for example `/dev/xvda`.
    pub root_device_name: String,
}

#[cfg(test)]
mod restore_point_tests {
    use super::restore_point_id;

    #[test]
    fn a_restore_point_is_named_by_its_id_or_its_restore_points_name() {
        for (named, id) in [
            ("nightly/i-0123456789abcdef0", "nightly/i-0123456789abcdef0"),
            ("nightly.i-0123456789abcdef0", "nightly/i-0123456789abcdef0"),
            ("a.b.snap-1", "a.b/snap-1"),
            ("a.b/snap-1", "a.b/snap-1"),
        ] {
            assert_eq!(restore_point_id(named), id, "{named}");
        }
    }
}
