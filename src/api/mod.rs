//! Tender's custom resources, API group `tender.dev`, version `v1alpha1`.

pub mod backup_job;
pub mod conditions;
pub mod job;
pub mod restore_job;
pub mod worker_configuration;

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use backup_job::{
    BackupJob, BackupJobSpec, BackupJobStatus, BackupResource, BackupWorkerStatus,
};
pub use job::{JobLimits, JobStatus, JobWorker, Phase, WorkerStatus};
pub use restore_job::{
    RestoreJob, RestoreJobSpec, RestoreJobStatus, RestoreMode, RestoreWorkerStatus,
    RestoredSnapshot,
};
pub use worker_configuration::{
    AccountAccess, InstanceTypes, RootVolume, WorkerAccount, WorkerConfiguration,
    WorkerConfigurationSpec, WorkerConfigurationStatus, WorkerSubnet,
};

/// AWS region names such as `us-east-1` or `us-gov-west-1`.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$";
/// EC2 instance IDs such as `i-0123456789abcdef0`.
pub const INSTANCE_ID_PATTERN: &str = r"^i-[0-9a-f]{8,17}$";
/// EBS snapshot IDs such as `snap-0123456789abcdef0`.
pub const SNAPSHOT_ID_PATTERN: &str = r"^snap-[0-9a-f]{8,17}$";
/// S3 bucket names (DNS-style: lowercase letters, digits, dots, hyphens).
pub const BUCKET_PATTERN: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// Key prefixes inside a bucket: no leading slash, no `..`, printable.
pub const PREFIX_PATTERN: &str = r"^[A-Za-z0-9!_.*'()/-]*$";
/// EC2 instance type names such as `c5.large` or `m7i-flex.xlarge`.
pub const INSTANCE_TYPE_PATTERN: &str = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$";

/// The backup repository: restore points and their chunks live in an S3
/// bucket under a prefix. Several jobs (and clusters) may share one; a
/// chunk is stored once whoever wrote it first.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.prefix) || (!self.prefix.contains('..') && !self.prefix.startsWith('/'))",
     "message": "repository prefix may not contain '..' or start with '/'"}
]))]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// Name of the S3 bucket, for example `acme-backups`.
    #[schemars(pattern(BUCKET_PATTERN), length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket, for example `prod/` (default: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(pattern(PREFIX_PATTERN), length(max = 256))]
    pub prefix: String,
    /// Region of the bucket (default: the WorkerConfiguration's region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: Option<String>,
}

/// A reference to an object in the same namespace.
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
        BackupJob::crd(),
        RestoreJob::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        Ok((format!("{name}.yaml"), serde_yaml::to_string(&crd)?))
    })
    .collect()
}
