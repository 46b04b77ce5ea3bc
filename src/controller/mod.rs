//! The controller: one reconciler per kind, sharing one [`Context`].
//!
//! - `job`: the lifecycle both job kinds run (plan, launch, follow,
//!   terminate, retry, status); its pure decisions are in `job::core`.
//! - `backup_job`, `restore_job`: what only that kind does on it.
//! - `worker_configuration`: the configuration's checks, its SQS queue and
//!   its pump; `worker_count` writes its `activeWorkers`.
//! - `index`: what the controller knows of every job's workers, by
//!   configuration (admission, worker counts, deletion holds).
//! - `reports`: worker messages from SQS, filed for their jobs;
//!   `queue_access`: who may send to and receive from a queue.
//! - `garbage_collector`: the sweep that terminates orphaned workers.
//! - `leader`: Lease-based leader election.

pub mod agents;
pub mod backup_job;
pub mod backup_policy;
pub mod backup_repository;
pub mod configuration_checks;
pub mod database_backup;
pub mod database_dump;
pub mod database_restore;
pub mod events;
pub mod garbage_collector;
pub mod index;
pub mod job;
pub mod leader;
pub mod original_location;
pub mod queue_access;
pub mod reach;
pub mod reports;
pub mod restore_job;
pub mod retention_job;
mod run;
pub mod verification_job;
mod wake;
pub mod worker_configuration;
mod worker_count;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::api::{
    BackupJob, BackupJobStatus, BackupRepository, RestoreJob, RestoreJobStatus, RetentionJob,
    RetentionJobStatus, VerificationJob, VerificationJobStatus, WorkerConfiguration,
};
use crate::aws::instance_cache::InstanceCache;
use crate::aws::{AwsClients, AwsError};
use crate::names::FIELD_MANAGER;
use crate::telemetry::{KindErrorLabels, KindLabels, Metrics};
use index::WorkerIndex;
use job::status::Written;
use k8s_openapi::jiff::Timestamp;
use reports::{QueuePumps, ReportStore};

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("could not encode the worker task: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A source EC2 does not show yet (eventual consistency); retried.
    #[error("{0} (not visible yet; retrying)")]
    NotVisibleYet(String),
    /// A worker's user data cannot be made (its size, its agent URL).
    #[error("cannot make the worker's user data: {0}")]
    UserData(#[from] crate::user_data::UserDataError),
}

impl Error {
    /// A low-cardinality category for Event reasons, logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Aws(e) => e.category(),
            Error::Encode(_) => "EncodeError",
            Error::Finalizer(_) => "FinalizerError",
            Error::MissingObjectKey(_) => "InvalidObject",
            Error::Timeout(_) => "Timeout",
            Error::NotVisibleYet(_) => "NotVisibleYet",
            Error::UserData(_) => "UserDataInvalid",
        }
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    /// A reconcile's own failure keeps its category (an AWS error stays an
    /// AWS error in metrics, logs and conditions); only the finalizer
    /// patches' failures are `FinalizerError`.
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            other => Error::Finalizer(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How soon a reconcile whose finalizer patch met a newer object runs again
/// (the watch event of that object usually comes first).
pub(crate) const STALE_OBJECT_RETRY: Duration = Duration::from_secs(1);

/// True when the finalizer helper's patch was refused because the object
/// changed after the watch cache saw it: the JSON patch's `test` fails
/// (422), or the write conflicts (409). It happens when a reconcile runs
/// on a cached object that does not show the finalizer this controller
/// added a moment ago. Not a failure worth a backoff: the watch brings the
/// current object, and another reconcile with it.
pub(crate) fn stale_finalizer_patch<E: std::error::Error + 'static>(
    e: &kube::runtime::finalizer::Error<E>,
) -> bool {
    use kube::runtime::finalizer::Error as F;
    matches!(
        e,
        F::AddFinalizer(kube::Error::Api(ae)) | F::RemoveFinalizer(kube::Error::Api(ae))
            if ae.code == 422 || ae.code == 409
    )
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub aws: AwsClients,
    pub recorder: Recorder,
    /// Tags every AWS resource this controller creates, so that two clusters
    /// sharing an account never touch each other's workers.
    pub cluster_id: String,
    pub configurations: Store<WorkerConfiguration>,
    pub repositories: Store<BackupRepository>,
    /// The namespaces jobs run in, for the classes' `namespaceSelector`.
    pub namespaces: Store<Namespace>,
    pub jobs: Store<BackupJob>,
    pub restores: Store<RestoreJob>,
    pub retentions: Store<RetentionJob>,
    pub verifications: Store<VerificationJob>,
    pub reports: Arc<ReportStore>,
    pub pumps: QueuePumps,
    /// The shared, batched view of worker instance states.
    pub instances: InstanceCache,
    pub metrics: Arc<Metrics>,
    /// The namespace this controller is limited to, if any.
    pub namespace: Option<String>,
    /// When this process started: a worker is never declared lost for
    /// silence that began before the controller was there to hear it.
    pub started_at: Timestamp,
    /// Seconds between worker heartbeats, passed to every worker.
    pub heartbeat_seconds: u64,
    /// How often configurations re-check their network (see Options).
    pub network_recheck: Duration,
    /// How often repositories are counted (see Options).
    pub repository_count: Duration,
    /// Garbage collection's grace period (see Options).
    pub gc_grace: Duration,
    /// Hosts a file-level session may be at besides its worker's own
    /// addresses (see Options).
    pub trusted_browser_hosts: Vec<String>,
    /// How long a restore waits for EBS to seal its snapshots and for its
    /// AMI to become available (see Options).
    pub restored_snapshot_timeout: Duration,
    /// The worker agents this controller delivers to workers' user data.
    pub agents: Arc<agents::AgentStore>,
    failures: Mutex<HashMap<String, u32>>,
    /// One launch decision at a time per configuration (by UID).
    launch_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The status this controller last wrote to each job, by UID.
    pub(crate) written_backups: Written<BackupJobStatus>,
    pub(crate) written_restores: Written<RestoreJobStatus>,
    pub(crate) written_retentions: Written<RetentionJobStatus>,
    pub(crate) written_verifications: Written<VerificationJobStatus>,
    /// What the controller knows of every job's workers.
    pub workers: Arc<WorkerIndex>,
    /// Workers that never reached AWS, per configuration.
    pub reach: reach::WorkerReach,
}

impl Context {
    /// Publishes an Event on `obj`; a failure to publish is logged, never fatal.
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Next requeue delay for an object that failed: exponential from 5 s to
    /// 5 min, with jitter so that many failing objects do not retry in step.
    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let base = Duration::from_secs(5).saturating_mul(1u32 << (*n - 1).min(6));
        let base = base.min(Duration::from_secs(300));
        base + jitter(base / 5)
    }

    pub(crate) fn launch_lock(&self, config_uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.launch_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(config_uid.to_string())
            .or_default()
            .clone()
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// A pseudo-random duration in `[0, max)`, from the clock's nanoseconds.
pub(crate) fn jitter(max: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from(nanos) % max_ms)
}

/// Writes `status` with server-side apply under Tender's field manager.
pub(crate) async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    status: &S,
    metrics: &Metrics,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    metrics
        .status_writes
        .get_or_create(&kind_labels(&K::kind(&())))
        .inc();
    // A hung API server must not hold a reconcile (and the object) forever.
    tokio::time::timeout(
        STATUS_WRITE_TIMEOUT,
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        ),
    )
    .await
    .map_err(|_| Error::Timeout("status write"))??;
    Ok(())
}

/// How long one status write may take.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn kind_labels(kind: &str) -> KindLabels {
    KindLabels {
        kind: kind.to_string(),
    }
}

/// Shared error policy: log, count, then requeue with backoff.
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&KindErrorLabels {
            kind: K::kind(&()).to_string(),
            category: error.category().to_string(),
        })
        .inc();
    let key = obj.meta().uid.clone().unwrap_or_default();
    let delay = ctx.backoff(&key);
    warn!(
        name = obj.meta().name.as_deref().unwrap_or_default(),
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        category = error.category(),
        error = %error,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// How the controller is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Overrides the cluster ID (default: the UID of namespace `kube-system`).
    pub cluster_id: Option<String>,
    /// Watch only this namespace's jobs (default: all namespaces).
    pub namespace: Option<String>,
    /// Manage only the WorkerConfigurations and BackupRepositories whose
    /// labels match this selector (default: all).
    pub class_selector: Option<String>,
    pub heartbeat_seconds: u64,
    /// How often configurations re-check subnets, endpoints and instance
    /// types, which change outside Kubernetes.
    pub network_recheck: Duration,
    /// How often a BackupRepository's restore points and bytes are counted.
    pub repository_count: Duration,
    /// How long retention leaves a condemned chunk before it may delete it
    /// (see [`gc_grace`]).
    pub gc_grace: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: String,
    /// Leader election; `None` runs without it (a single replica).
    pub election: Option<leader::ElectionConfig>,
    pub sweep: garbage_collector::SweepConfig,
    /// Accept a worker message only when SQS names the worker instance as
    /// its sender (`SenderId` `<role ID>:<instance ID>`). Off only against
    /// an emulator, which names one fixed sender.
    pub require_worker_sender: bool,
    /// Hosts a file-level session URL may name besides the worker
    /// instance's own addresses: agents that run outside EC2 (tests, the
    /// demo). Empty in production.
    pub trusted_browser_hosts: Vec<String>,
    /// How long after its worker completed a restore may wait for its
    /// snapshots to be `completed` (and its AMI `available`) before it
    /// fails with `RestoredSnapshotTimedOut`.
    pub restored_snapshot_timeout: Duration,
    /// Where the worker agents are (`tender-worker-<arch>.gz`).
    pub agents_dir: std::path::PathBuf,
}

pub use run::run;

/// The grace period of garbage collection from `--gc-grace-seconds`: at
/// least a day (`mover::gc::MIN_GRACE`), except in test builds, whose
/// tests shorten it.
pub fn gc_grace(seconds: u64) -> Duration {
    let least = crate::mover::gc::MIN_GRACE.as_secs().unsigned_abs();
    if cfg!(feature = "fault-injection") || seconds >= least {
        Duration::from_secs(seconds.max(1))
    } else {
        tracing::warn!(
            seconds,
            least,
            "--gc-grace-seconds is below a day; using a day, the least a production build takes"
        );
        Duration::from_secs(least)
    }
}

/// A boxed error for the binary's entry points.
pub mod anyhow_like {
    pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_inside_the_finalizer_keeps_its_category() {
        let inner = Error::Aws(crate::aws::AwsError::Unreachable {
            operation: "RunInstances",
            detail: "timed out".into(),
        });
        let e = Error::from(kube::runtime::finalizer::Error::ApplyFailed(inner));
        assert_eq!(e.category(), "AwsUnreachable");
        let patch = Error::from(kube::runtime::finalizer::Error::<Error>::UnnamedObject);
        assert_eq!(patch.category(), "FinalizerError");
    }
}
