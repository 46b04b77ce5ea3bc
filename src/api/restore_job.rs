//! `RestoreJob`: restore one resource from a restore point.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LocalObjectReference, REGION_PATTERN};

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
     "message": "idleTimeoutMinutes applies only to mode fileLevel"}
]))]
#[serde(rename_all = "camelCase")]
pub struct RestoreJobSpec {
    /// The WorkerConfiguration (same namespace) to launch the worker with.
    /// When unset, the only configuration of the namespace for `region` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,
    /// What to restore: `full` (a new instance), `volume`, or `fileLevel`
    /// (browse and download files).
    pub mode: RestoreMode,
    /// The restore point to restore from, as recorded by a BackupJob.
    #[schemars(length(min = 1, max = 512))]
    pub restore_point: String,
    /// Region to restore into, for example `eu-west-1`.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
    /// Minutes a file-level recovery session may stay idle before its worker
    /// is terminated (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1440))]
    pub idle_timeout_minutes: Option<i32>,
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
}

/// What the controller observed of a RestoreJob.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Phase of the job, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions: `Ready`, and `Reconciling` or `Stalled` while they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Workers launched and not yet terminated.
    #[serde(default)]
    pub active_workers: i32,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
