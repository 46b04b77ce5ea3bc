//! What a job kind tells the shared lifecycle: its spec's common fields,
//! and the steps only it takes. `backup_job` and `restore_job` implement
//! [`WorkerJob`]; the lifecycle in this module runs either.

use std::fmt::Debug;
use std::future::Future;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::Written;
use crate::api::{
    JobLimits, JobStatus, JobWorker, LocalObjectReference, WorkerConfiguration,
    WorkerConfigurationSpec,
};
use crate::controller::{Context, Result};
use crate::messages::{FileLevelTask, Operation, RetentionTask, WorkerEvent, WorkerProfile};
use crate::reasons::FailureReason;

/// One thing a job runs a worker for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What `status.workers[].resource` says: an instance, a snapshot, or a
    /// restore point.
    pub id: String,
    pub region: String,
}

/// Where a target is and how large, as planning needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The availability zone the worker should run in, if it matters.
    pub zone: Option<String>,
    /// GiB of data the worker moves (0 when unknown).
    pub size_gib: i64,
    /// A database dump (sized by CPU, not by disk).
    pub dump: bool,
}

/// Why a target cannot be planned: a CamelCase reason and what is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLocated {
    pub reason: FailureReason,
    /// For people: what is wrong and what to fix.
    pub message: String,
}

/// What the task of a worker says beyond the shared fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskDetails {
    pub restore_point: Option<String>,
    pub device: Option<String>,
    pub all_volumes: bool,
    pub file_level: Option<FileLevelTask>,
    /// The BackupPolicy a backup runs for (recorded in its restore point).
    pub policy: Option<String>,
    pub retention: Option<RetentionTask>,
    /// A dump's server (see [`crate::messages::DatabaseTask`]).
    pub database: Option<crate::messages::DatabaseTask>,
    /// Security groups the worker gets besides the configuration's (a
    /// dump's group that the DB instance admits).
    pub security_groups: Vec<String>,
    /// Not launchable yet (its DB instance is still being modified, say):
    /// why, for the worker's message; tried again at the next reconcile.
    pub wait: Option<String>,
}

/// What a step of a controller-run target works with.
#[derive(Clone, Copy, Debug)]
pub struct ControllerStep<'a> {
    pub config: &'a WorkerConfiguration,
    /// Where the job's restore points are; `None` while the job's
    /// repository cannot be used (the step then waits).
    pub repository: Option<&'a crate::mover::manifest::RepositoryLocation>,
    pub now: Timestamp,
}

/// What a finished worker's job still waits for (see
/// [`WorkerJob::settling`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settling {
    /// For people, in the job's conditions.
    pub note: String,
    pub recheck: std::time::Duration,
}

/// Where a target the controller works on itself stands after one step
/// (see [`WorkerJob::advance`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advance {
    /// Still going (RDS still copying, say): look again after `recheck`.
    Wait { recheck: std::time::Duration },
    /// Done: the target succeeded.
    Done,
    /// It cannot succeed in this attempt; retried within `backoffLimit`
    /// unless `reason` is permanent.
    Failed {
        reason: FailureReason,
        message: String,
    },
}

/// A job kind the lifecycle runs.
pub trait WorkerJob:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind, as in `tender.dev/job-kind` tags and metric labels.
    const KIND: &'static str;
    const OPERATION: Operation;
    /// This kind's entry in `status.workers`.
    type Worker: JobWorker;

    fn configuration_ref(&self) -> Option<&LocalObjectReference>;
    /// What its workers do, which picks their instance profile.
    fn profile(&self) -> WorkerProfile;
    fn targets(&self) -> Vec<Target>;
    /// Retries, deadline and TTL.
    fn limits(&self) -> &JobLimits;
    fn suspended(&self) -> bool;
    /// The BackupRepository it reads or writes. Required by the schema;
    /// `None` only for objects stored before it was.
    fn repository_ref(&self) -> Option<&LocalObjectReference>;
    /// Further repositories it writes to (a restore's `restoreFilesTo`),
    /// which must admit its namespace too.
    fn other_repository_refs(&self) -> Vec<&LocalObjectReference> {
        Vec::new()
    }
    fn job_status(&self) -> Option<&JobStatus<Self::Worker>>;
    /// The statuses this controller wrote to jobs of this kind.
    fn written(ctx: &Context) -> &Written<JobStatus<Self::Worker>>;

    /// Where `target` is and how large (a lookup in the production
    /// account), or why it cannot be worked on. `Err` is a failed lookup,
    /// worth retrying.
    fn locate(
        &self,
        target: &Target,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> impl Future<Output = Result<Result<Located, NotLocated>>> + Send;

    /// The worker's instance type, from the configuration's profiles or
    /// this kind's default.
    fn instance_type(&self, spec: &WorkerConfigurationSpec, located: &Located) -> String;

    /// Records what a worker's message says that only this kind keeps (a
    /// restore point, restored snapshots, a browser session), once the
    /// message was applied.
    fn record(worker: &mut Self::Worker, event: &WorkerEvent);

    /// This kind's own steps once the workers' messages are applied (a
    /// restore's volume or instance, the end of a session), before workers
    /// are judged and terminated.
    fn follow_up(
        &self,
        _config: &WorkerConfiguration,
        _status: &mut JobStatus<Self::Worker>,
        _ctx: &Context,
        _now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Whether this kind's own steps still wait on something after its
    /// workers finished (a restore whose snapshots EBS is still sealing):
    /// the job stays unfinished meanwhile, and is looked at again after
    /// `recheck`.
    fn settling(&self, _status: &JobStatus<Self::Worker>) -> Option<Settling> {
        None
    }

    /// Whether the controller works on `resource` itself, with no worker
    /// instance (an RDS snapshot: RDS does the copying). Such an entry of
    /// `status.workers` is never launched, never judged by its instance or
    /// its silence, and moves on through [`WorkerJob::advance`]; the
    /// deadline, suspension, retries and TTL apply to it as to any other.
    fn runs_on_controller(&self, _resource: &str) -> bool {
        false
    }

    /// One step of a target the controller works on itself (see
    /// [`WorkerJob::runs_on_controller`]): each step is idempotent, so a
    /// restarted controller goes on where the status says it was. `Err`
    /// is a failed call, worth retrying.
    fn advance(
        &self,
        worker: &mut Self::Worker,
        step: &ControllerStep<'_>,
        ctx: &Context,
    ) -> impl Future<Output = Result<Advance>> + Send {
        // Never called: `runs_on_controller` is false for such a kind.
        let _ = (worker, step, ctx);
        async {
            Ok(Advance::Failed {
                reason: FailureReason::LaunchFailed,
                message: format!("a {} has no target the controller works on", Self::KIND),
            })
        }
    }

    /// What this worker's task says beyond the shared fields, prepared
    /// right before its launch (a session Secret, say).
    fn task_details(
        &self,
        worker: &mut Self::Worker,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> impl Future<Output = Result<TaskDetails>> + Send;
}
