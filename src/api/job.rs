//! What BackupJobs and RestoreJobs share in their status: the phase, the
//! job's conditions and counters, and one entry per worker. Each kind adds
//! its own fields to a worker's entry (a backup's restore point; what a
//! restore created), so neither CRD carries the other's.

use std::ops::{Deref, DerefMut};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Phase of a job or of one of its workers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
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

/// How often and how long a job may try, and when it goes once finished:
/// the fields `batch/v1` Job has, shared by every job kind.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobLimits {
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
    /// Seconds after the job finished at which Tender deletes it (what a
    /// restore created stays). Unset: the job is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
        }
    }
}

fn default_backoff_limit() -> i32 {
    2
}

/// A worker entry of one job kind: the shared [`WorkerStatus`] plus that
/// kind's own fields.
pub trait JobWorker:
    Deref<Target = WorkerStatus>
    + DerefMut
    + Clone
    + Default
    + PartialEq
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + JsonSchema
    + Send
    + Sync
    + 'static
{
    /// A fresh entry around `worker`.
    fn new(worker: WorkerStatus) -> Self;
}

/// What the controller observed of a job.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus<W> {
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
    pub workers: Vec<W>,
}

/// The worker of one resource: what every job kind records of it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// The resource this worker is for (an instance or snapshot ID, or a
    /// restore point).
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

impl WorkerStatus {
    /// Launched and not terminated yet: it costs money now.
    pub fn is_active(&self) -> bool {
        self.instance_id.is_some() && self.terminated_time.is_none()
    }

    /// Planned but not launched: waiting for a slot, capacity or a network.
    pub fn is_waiting_to_launch(&self) -> bool {
        self.phase == Phase::Provisioning && self.instance_id.is_none()
    }
}

/// Implements [`Deref`] to [`WorkerStatus`] (its field `worker`) and
/// [`JobWorker`] for a kind's worker entry.
macro_rules! job_worker {
    ($entry:ty) => {
        impl std::ops::Deref for $entry {
            type Target = $crate::api::WorkerStatus;
            fn deref(&self) -> &Self::Target {
                &self.worker
            }
        }
        impl std::ops::DerefMut for $entry {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.worker
            }
        }
        impl $crate::api::job::JobWorker for $entry {
            fn new(worker: $crate::api::WorkerStatus) -> Self {
                Self {
                    worker,
                    ..Default::default()
                }
            }
        }
    };
}
pub(crate) use job_worker;
