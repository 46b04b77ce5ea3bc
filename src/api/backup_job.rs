//! `BackupJob`: back up a list of AWS resources, one worker per resource.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    INSTANCE_ID_PATTERN, LocalObjectReference, REGION_PATTERN, Repository, SNAPSHOT_ID_PATTERN,
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
    {"rule": "self.resources == oldSelf.resources && has(self.repository) == has(oldSelf.repository) && (!has(self.repository) || self.repository == oldSelf.repository) && has(self.workerConfigurationRef) == has(oldSelf.workerConfigurationRef) && (!has(self.workerConfigurationRef) || self.workerConfigurationRef.name == oldSelf.workerConfigurationRef.name)",
     "message": "resources, repository and workerConfigurationRef of a BackupJob are immutable; create a new BackupJob instead"},
    {"rule": "self.resources.all(r, self.resources.filter(o, (has(o.instanceId) && has(r.instanceId) && o.instanceId == r.instanceId) || (has(o.snapshotId) && has(r.snapshotId) && o.snapshotId == r.snapshotId)).size() == 1)",
     "message": "each resource may be listed once"},
    {"rule": "has(self.repository)",
     "message": "spec.repository is required: the S3 bucket (and prefix) the restore points go to"}
]))]
#[serde(rename_all = "camelCase")]
pub struct BackupJobSpec {
    /// The WorkerConfiguration (same namespace) to launch workers with. When
    /// unset, the only configuration of the namespace for the resources'
    /// region is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,

    /// Resources to back up; each gets its own worker and its own restore
    /// point. Each resource may be listed once.
    #[schemars(length(min = 1, max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub resources: Vec<BackupResource>,

    /// The S3 repository the restore points go to (required). A resource's
    /// newest restore point there is the parent of its next backup, which
    /// then reads and stores only the blocks that changed.
    // Optional in Rust only: jobs stored by a Tender that had no repository
    // must still load (and then stall with a clear reason) instead of
    // breaking the watch of every job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,

    /// Retries per resource: a worker that fails or is lost is replaced by a
    /// new attempt until this many retries are used up (default 2).
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: i32,

    /// Seconds the job may run, counted from its start; then its workers are
    /// terminated and the job fails with reason `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Seconds after the job finished at which Tender deletes it. Unset: the
    /// job is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// While true, no worker is launched and running workers are terminated
    /// (their attempt is not counted as a failure); set it back to false to
    /// go on.
    #[serde(default)]
    pub suspend: bool,
}

fn default_backoff_limit() -> i32 {
    2
}

/// One protected resource: an EC2 instance (all its EBS volumes, snapshotted
/// together) or an existing EBS snapshot.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.instanceId) != has(self.snapshotId)",
     "message": "set exactly one of instanceId and snapshotId"}
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
    /// Region of the resource, for example `eu-west-1`.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
}

impl BackupResource {
    /// The resource's ID, whichever kind it is.
    pub fn id(&self) -> &str {
        self.instance_id
            .as_deref()
            .or(self.snapshot_id.as_deref())
            .unwrap_or_default()
    }
}

/// A snapshot a restore wrote, and the device it belongs on.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredSnapshot {
    /// Device name, for example `/dev/xvda`.
    pub device: String,
    /// The snapshot's ID.
    pub snapshot_id: String,
}

/// Phase of a job or of one of its workers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; no worker launched yet.
    #[default]
    Pending,
    /// A worker is being launched or is booting.
    Provisioning,
    /// The worker reported that it started.
    Running,
    /// The worker finished its work.
    Succeeded,
    /// The worker or the job failed; the message says why.
    Failed,
    /// Some of the job's resources succeeded, some failed (jobs only).
    PartiallySucceeded,
    /// `spec.suspend` is true: nothing runs until it is set back to false.
    Suspended,
}

impl Phase {
    /// Succeeded, Failed and PartiallySucceeded never change again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::PartiallySucceeded
        )
    }
}

/// What the controller observed of a BackupJob.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Phase of the whole job, for people.
    #[serde(default)]
    pub phase: Phase,
    /// Conditions: `Ready` (true once the job succeeded), `Reconciling`
    /// while workers run, `Stalled` when the job cannot go on without a fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The WorkerConfiguration the workers were launched with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration: Option<String>,
    /// Workers launched and not yet terminated.
    #[serde(default)]
    pub active_workers: i32,
    /// Place of this job in its configuration's queue while
    /// `maxConcurrentWorkers` holds its workers back (1 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// When the first worker was launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job finished (succeeded or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// One entry per resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerStatus>,
}

/// The worker of one resource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// The protected resource (instance ID).
    pub resource: String,
    /// Region the worker runs in.
    pub region: String,
    /// Phase of this worker.
    #[serde(default)]
    pub phase: Phase,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// Idempotency token of this attempt's launch: the RunInstances
    /// ClientToken and the `tender.dev/launch-token` tag. Written before
    /// the launch, so a restarted controller adopts the instance instead of
    /// launching a second one.
    pub launch_token: String,
    /// The worker's EC2 instance ID, once launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The role the worker was launched through (unset: the controller's own
    /// credentials); it is also used to terminate the worker, whatever the
    /// configuration says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<super::AccountAccess>,
    /// Instance type the worker was launched with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Availability zone of the protected resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Subnet the worker was launched in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// Why that subnet was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// When RunInstances returned the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<Time>,
    /// When the worker reported that it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_time: Option<Time>,
    /// When the worker reported that it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_time: Option<Time>,
    /// When TerminateInstances was accepted for the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_time: Option<Time>,
    /// Last known EC2 state of the worker instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_state: Option<String>,
    /// Progress reported by the worker, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<i32>,
    /// Bytes the worker has moved so far, of `bytesTotal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
    /// Bytes the worker has to move (known once it has listed the blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// Recent throughput in bytes per second, as the worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<i64>,
    /// The restore point this worker wrote (`<job>/<resource>`), the value
    /// a RestoreJob's `restorePoint` takes; for a restore, the one it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// The EBS snapshot a restore worker wrote the restored blocks into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_snapshot_id: Option<String>,
    /// The EBS volume Tender created from that snapshot (mode `volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_volume_id: Option<String>,
    /// Every snapshot a restore worker wrote, by device (mode `full`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored_snapshots: Vec<RestoredSnapshot>,
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
    /// The Secret (same namespace) whose `token` opens the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secret: Option<String>,
    /// CamelCase reason of the last failure of this worker, such as
    /// `WorkerLost` or `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last message from the worker or the controller about this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Highest message sequence number applied; older or repeated messages
    /// change nothing.
    #[serde(default)]
    pub last_sequence: i64,
    /// Attempts of this resource that failed or were lost; the resource fails
    /// once this exceeds `spec.backoffLimit`.
    #[serde(default)]
    pub failures: i32,
}
