//! `RetentionJob`: one retention run on a worker. It expires a policy's
//! restore points by the policy's rules, then garbage-collects the chunks
//! of the repository's namespace part in two phases (`mover::gc`). A
//! BackupPolicy with `spec.retention` creates them on its retention
//! schedule; a person may create one too (without `policy` it only
//! collects).
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LocalObjectReference, REGION_PATTERN};
use crate::policy::retention::Retention;

/// Expire restore points and reclaim the space of chunks no restore point
/// references any more, on a short-lived worker instance in the
/// repository's region. Nothing a live restore point needs is ever
/// deleted: a chunk goes only a grace period after it was found
/// unreferenced, if it still is and no backup wrote it since.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "RetentionJob",
    namespaced,
    status = "RetentionJobStatus",
    shortname = "retj",
    category = "tender",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Expired",
        type_ = "integer",
        json_path = ".status.workers[0].outcome.expiredRestorePoints",
        description = "Restore points this run deleted"
    ),
    printcolumn(
        name = "Freed",
        type_ = "integer",
        json_path = ".status.workers[0].outcome.deletedBytes",
        description = "Bytes of chunks this run deleted"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a RetentionJob's spec is immutable; create a new RetentionJob instead"},
    {"rule": "has(self.repositoryRef)",
     "message": "spec.repositoryRef is required: the BackupRepository to expire restore points in"}
]))]
#[serde(rename_all = "camelCase")]
pub struct RetentionJobSpec {
    /// The BackupRepository whose part for this namespace the run works on
    /// (it must admit this namespace). The worker runs in its region.
    // Optional in Rust only, as in BackupJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalObjectReference>,

    /// The repository's region, for example `eu-west-1`: the worker runs
    /// there, next to its data.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,

    /// The WorkerConfiguration to launch the worker with. When unset, the
    /// default one for the repository's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,

    /// The BackupPolicy (in this namespace) whose restore points `retention`
    /// expires. Unset: no restore point is expired, chunks are collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub policy: Option<String>,

    /// The rules, per resource (restic's `forget` rules; the newest
    /// restore point of a resource is always kept).
    #[serde(default)]
    pub retention: Retention,

    /// Restore points to delete on purpose (`<job>/<resource>`), whatever
    /// the rules say, unless held; a policy fills it from its namespace's
    /// RestorePoints annotated `tender.dev/delete: "true"`. At most 100 a
    /// run (the rest go in the next).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub delete_restore_points: Vec<String>,

    /// IANA time zone the calendar rules (hourly, daily, weekly…) count
    /// in, for example `Europe/Berlin` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Retries, deadline and TTL, as a `batch/v1` Job has them.
    #[serde(flatten)]
    pub limits: super::JobLimits,

    /// While true, no worker is launched.
    #[serde(default)]
    pub suspend: bool,
}

/// What the controller observed of a RetentionJob.
pub type RetentionJobStatus = super::JobStatus<RetentionWorkerStatus>;

/// The worker of a RetentionJob (one: the repository's namespace part).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionWorkerStatus {
    #[serde(flatten)]
    pub worker: super::WorkerStatus,
    /// What the run expired and collected, once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RetentionOutcome>,
}

super::job::job_worker!(RetentionWorkerStatus);

/// Restore point IDs a retention outcome names at most (the counts are
/// always whole).
pub const OUTCOME_IDS: usize = 50;

/// What one retention run did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionOutcome {
    /// Restore points the rules expired and the run deleted.
    pub expired_restore_points: u64,
    /// The first of them (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<String>,
    /// Restore points of the policy the rules keep.
    pub kept_restore_points: u64,
    /// Restore points of the namespace part after the run (all policies
    /// and jobs).
    pub restore_points: u64,
    /// What they describe, before deduplication and compression.
    pub logical_bytes: u64,
    /// Chunks stored before the run deleted any.
    pub stored_chunks: u64,
    /// Their bytes (compressed, as S3 bills them).
    pub stored_bytes: u64,
    /// Chunks some restore point references.
    pub live_chunks: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Chunks this run deleted.
    pub deleted_chunks: u64,
    /// Their bytes: the space this run gave back.
    pub deleted_bytes: u64,
    /// Chunks condemned and waiting for their grace period.
    pub pending_chunks: u64,
    /// Their bytes: what a later run will give back.
    pub pending_bytes: u64,
    /// When the first of them may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimable_at: Option<Time>,
    /// Condemned chunks kept because a backup wrote them again.
    pub rewritten_chunks: u64,
}
