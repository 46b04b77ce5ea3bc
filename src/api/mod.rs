//! Tender's custom resources, API group `tender.dev`, version `v1alpha1`.

pub mod backup_job;
pub mod backup_policy;
pub mod backup_repository;
pub mod conditions;
pub mod job;
pub mod restore_job;
pub mod restore_point;
pub mod retention_job;
pub mod verification_job;
pub mod worker_configuration;

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use backup_job::{
    BackupJob, BackupJobSpec, BackupJobStatus, BackupResource, BackupWorkerStatus,
    DatabaseAccessStatus, DatabaseSnapshotCopy, DatabaseSnapshotStatus, PostgresSource,
    SnapshotCopyTarget,
};
pub use backup_policy::{
    BackupPolicy, BackupPolicySpec, BackupPolicyStatus, DatabaseBackupMethod, DatabaseSelector,
    InstanceSelector, LastRetention, LastVerificationRun, MissingResource, PolicyJobLimits,
    PolicyResource, PolicyRetention, PolicyVerification, ProtectedResource, RetentionPreview,
};
pub use backup_repository::{
    BackupRepository, BackupRepositorySpec, BackupRepositoryStatus, EncryptionKind,
    RepositoryEncryption, RepositoryIntegrity, RepositorySpace,
};
pub use job::{JobLimits, JobStatus, JobWorker, Phase, WorkerStatus};
pub use restore_job::{
    DatabaseRestore, MachineImage, OriginalLocationPhase, OriginalLocationStatus, RestoreFilesTo,
    RestoreJob, RestoreJobSpec, RestoreJobStatus, RestoreMode, RestoreWorkerStatus,
    RestoredDatabase, RestoredSnapshot,
};
pub use restore_point::{RestorePoint, RestorePointSpec};
pub use retention_job::{
    RetentionJob, RetentionJobSpec, RetentionJobStatus, RetentionOutcome, RetentionWorkerStatus,
};
pub use verification_job::{
    VerificationJob, VerificationJobSpec, VerificationJobStatus, VerificationOutcome,
    VerificationResult, VerificationWorkerStatus,
};
pub use worker_configuration::{
    AccountAccess, AllowedSources, Architecture, DEFAULT_CONFIGURATION_ANNOTATION,
    InstanceProfiles, InstanceTypes, RootVolume, WorkerAccount, WorkerConfiguration,
    WorkerConfigurationSpec, WorkerConfigurationStatus, WorkerSubnet,
};

/// AWS region names such as `us-east-1` or `us-gov-west-1`.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$";
/// EC2 instance IDs such as `i-0123456789abcdef0`.
pub const INSTANCE_ID_PATTERN: &str = r"^i-[0-9a-f]{8,17}$";
/// EBS snapshot IDs such as `snap-0123456789abcdef0`.
pub const SNAPSHOT_ID_PATTERN: &str = r"^snap-[0-9a-f]{8,17}$";
/// S3 bucket names (DNS-style: lowercase letters, digits, dots, hyphens).
/// An RDS DB instance identifier: 1 to 63 lowercase letters, digits and
/// hyphens, starting with a letter (RDS stores identifiers in lowercase);
/// the schema also refuses two hyphens in a row and a trailing hyphen.
pub const DB_IDENTIFIER_PATTERN: &str = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$";
/// The prefix of a DB instance's resource ID in a job's status and its
/// restore point (`rds-db-<identifier>`): an RDS identifier may look like
/// an instance or snapshot ID, so it is told apart.
pub const DB_INSTANCE_RESOURCE_PREFIX: &str = "rds-db-";
/// The prefix of a DB cluster's resource ID (`rds-cluster-<identifier>`):
/// Aurora and Multi-AZ DB clusters are snapshotted as a whole.
pub const DB_CLUSTER_RESOURCE_PREFIX: &str = "rds-cluster-";
/// The prefix of a PostgreSQL dump's resource ID (`rds-pg-<identifier>`):
/// its restore points form a lineage of their own, apart from the DB
/// instance's snapshots.
pub const DB_DUMP_RESOURCE_PREFIX: &str = "rds-pg-";
pub const BUCKET_PATTERN: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// Key prefixes inside a bucket: no leading slash, no `..`, printable.
pub const PREFIX_PATTERN: &str = r"^[A-Za-z0-9!_.*'()/-]*$";
/// Availability zones such as `eu-west-1a`.
pub const ZONE_PATTERN: &str = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}[a-z]$";
/// Security group IDs such as `sg-0123456789abcdef0`.
pub const SECURITY_GROUP_PATTERN: &str = r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$";
/// Linux device names of EBS volumes such as `/dev/xvda`, `/dev/sda1` or
/// `/dev/sdf`.
pub const DEVICE_PATTERN: &str =
    r"^/dev/(sd[a-z]{1,2}[0-9]{0,2}|xvd[a-z]{1,2}[0-9]{0,2}|nvme[0-9]{1,2}n1)$";
/// A KMS key: its ID, its ARN, an alias, or an alias ARN.
pub const KMS_KEY_PATTERN: &str = r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|alias/[A-Za-z0-9/_-]{1,250}|arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/[0-9a-f-]{36}|key/mrk-[0-9a-f]{32}|alias/[A-Za-z0-9/_-]{1,250}))$";
/// AWS account IDs: twelve digits.
pub const ACCOUNT_ID_PATTERN: &str = r"^[0-9]{12}$";
/// EC2 instance type names such as `c5.large` or `m7i-flex.xlarge`.
pub const INSTANCE_TYPE_PATTERN: &str = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$";
/// IAM instance profiles: a name such as `tender-worker-backup`, or an ARN
/// such as `arn:aws:iam::111122223333:instance-profile/tender/backup`.
pub const INSTANCE_PROFILE_PATTERN: &str = r"^(arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/([A-Za-z0-9+=,.@_-]+/)*)?[A-Za-z0-9+=,.@_-]{1,128}$";

/// A reference to an object by name: in the job's namespace, or a
/// cluster-scoped one (WorkerConfiguration, BackupRepository).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The CRDs as `(file name, YAML)` pairs, in the order they are applied.
/// `crds/` holds exactly these files; a test fails when they drift.
pub fn crd_documents() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    [
        WorkerConfiguration::crd(),
        BackupRepository::crd(),
        BackupJob::crd(),
        RestoreJob::crd(),
        BackupPolicy::crd(),
        RetentionJob::crd(),
        RestorePoint::crd(),
        VerificationJob::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        Ok((format!("{name}.yaml"), serde_yaml::to_string(&crd)?))
    })
    .collect()
}
