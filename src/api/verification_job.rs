//! `VerificationJob`: restore points checked end to end on workers. One
//! worker per restore point reads every chunk the restore point references
//! and checks it against its name (its SHA-256), after the manifest's MAC,
//! and the result is recorded on the job and on the restore point's
//! `RestorePoint` (`status.lastVerification`). A BackupPolicy with
//! `spec.verification` creates them on its verification schedule; a
//! person may create one too.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::restore_job::RESTORE_POINT_PATTERN;
use super::{LocalObjectReference, REGION_PATTERN};

/// Restore points one VerificationJob checks at most (one worker each).
pub const MAX_RESTORE_POINTS: usize = 50;

/// Chunk keys an outcome names at most (the counts are always whole).
pub const OUTCOME_KEYS: usize = 10;

/// Check that restore points can be restored: every chunk they reference
/// is read back from the repository and checked against its digest, on
/// short-lived worker instances in the repository's region (one per
/// restore point). Nothing is written anywhere but in statuses.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "VerificationJob",
    namespaced,
    status = "VerificationJobStatus",
    shortname = "verj",
    category = "tender",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Active",
        type_ = "integer",
        json_path = ".status.activeWorkers",
        description = "Workers reading restore points now"
    ),
    printcolumn(
        name = "Result",
        type_ = "string",
        json_path = ".status.workers[0].outcome.result",
        description = "What the first restore point's check found"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a VerificationJob's spec is immutable; create a new VerificationJob instead"},
    {"rule": "has(self.repositoryRef)",
     "message": "spec.repositoryRef is required: the BackupRepository that holds the restore points"}
]))]
#[serde(rename_all = "camelCase")]
pub struct VerificationJobSpec {
    /// The BackupRepository that holds the restore points (it must admit
    /// this namespace). The workers run in its region.
    // Optional in Rust only, as in BackupJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalObjectReference>,

    /// The repository's region, for example `eu-west-1`: the workers run
    /// there, next to its data.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,

    /// The restore points to check, as `<job>/<resource>` or as the name
    /// of their RestorePoint (`<job>.<resource>`); one worker each.
    #[schemars(length(min = 1, max = 50))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub restore_points: Vec<VerifiedRestorePoint>,

    /// The WorkerConfiguration to launch the workers with. When unset, the
    /// default one for the repository's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,

    /// The BackupPolicy whose run this is, if a policy made it (shown
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub policy: Option<String>,

    /// Retries, deadline and TTL, as a `batch/v1` Job has them. A restore
    /// point found damaged is not retried: reading it again cannot mend it.
    #[serde(flatten)]
    pub limits: super::JobLimits,

    /// While true, no worker is launched.
    #[serde(default)]
    pub suspend: bool,
}

/// A restore point to verify: `<job>/<resource>`, or its RestorePoint's
/// name `<job>.<resource>`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct VerifiedRestorePoint(
    #[schemars(length(min = 1, max = 512), pattern(RESTORE_POINT_PATTERN))] pub String,
);

impl VerifiedRestorePoint {
    /// Its ID, `<job>/<resource>`, whichever way it was written.
    pub fn id(&self) -> String {
        super::restore_job::restore_point_id(&self.0)
    }
}

/// What the controller observed of a VerificationJob.
pub type VerificationJobStatus = super::JobStatus<VerificationWorkerStatus>;

/// The worker of one restore point (`resource` is its ID).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationWorkerStatus {
    #[serde(flatten)]
    pub worker: super::WorkerStatus,
    /// What the worker found, once it finished reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<VerificationOutcome>,
    /// The outcome is on the restore point's RestorePoint (or there is
    /// none to put it on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cataloged: bool,
}

super::job::job_worker!(VerificationWorkerStatus);

/// What reading a restore point back found.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VerificationResult {
    /// The manifest's MAC verifies and every chunk is there and matches
    /// its digest: the restore point restores.
    #[default]
    Verified,
    /// Some chunk is missing or does not match its digest: the volumes
    /// that use it do not restore.
    Damaged,
    /// The manifest does not verify with the repository's integrity key
    /// (changed, replaced or moved): nothing it says is trusted.
    Unverified,
}

/// What one verification read and found.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationOutcome {
    /// The restore point, `<job>/<resource>`.
    pub restore_point: String,
    pub result: VerificationResult,
    /// Distinct chunks the restore point references.
    pub chunks: u64,
    /// Chunks read back and found intact.
    pub intact_chunks: u64,
    /// Chunks the repository does not have.
    pub missing_chunks: u64,
    /// Chunks that do not decompress or do not match their digest.
    pub corrupt_chunks: u64,
    /// Bytes of data the distinct chunks hold (uncompressed; a block
    /// several volumes or blocks share counts once).
    pub logical_bytes: u64,
    /// The first keys missing or corrupt (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_keys: Vec<String>,
    /// The volumes that use a damaged chunk: their devices, or for a
    /// snapshot's backup the snapshot it read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_volumes: Vec<String>,
}
