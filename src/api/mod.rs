//! Tender's custom resources, API group `tender.dev`, version `v1alpha1`.

pub mod backup_job;
pub mod conditions;
pub mod restore_job;
pub mod worker_configuration;

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use backup_job::{
    BackupJob, BackupJobSpec, BackupJobStatus, BackupResource, Phase, WorkerStatus,
};
pub use restore_job::{RestoreJob, RestoreJobSpec, RestoreJobStatus, RestoreMode};
pub use worker_configuration::{
    AccountAccess, InstanceTypes, RootVolume, WorkerAccount, WorkerConfiguration,
    WorkerConfigurationSpec, WorkerConfigurationStatus, WorkerSubnet,
};

/// AWS region names such as `us-east-1` or `us-gov-west-1`.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$";
/// EC2 instance IDs such as `i-0123456789abcdef0`.
pub const INSTANCE_ID_PATTERN: &str = r"^i-[0-9a-f]{8,17}$";
/// EC2 instance type names such as `c5.large` or `m7i-flex.xlarge`.
pub const INSTANCE_TYPE_PATTERN: &str = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$";

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
