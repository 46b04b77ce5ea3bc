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

pub mod backup_job;
pub mod backup_repository;
pub mod events;
pub mod garbage_collector;
pub mod index;
pub mod job;
pub mod leader;
pub mod queue_access;
pub mod reports;
pub mod restore_job;
mod wake;
pub mod worker_configuration;
mod worker_count;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::{Predicate, WatchStreamExt, predicates};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::api::{
    BackupJob, BackupJobStatus, BackupRepository, RestoreJob, RestoreJobStatus, WorkerConfiguration,
};
use crate::aws::instance_cache::InstanceCache;
use crate::aws::{AwsClients, AwsError};
use crate::names::{CONTROLLER_NAME, FIELD_MANAGER};
use crate::telemetry::{self, KindErrorLabels, KindLabels, Metrics, Readiness};
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
    /// Hosts a file-level session may be at besides its worker's own
    /// addresses (see Options).
    pub trusted_browser_hosts: Vec<String>,
    failures: Mutex<HashMap<String, u32>>,
    /// One launch decision at a time per configuration (by UID).
    launch_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The status this controller last wrote to each job, by UID.
    pub(crate) written_backups: Written<BackupJobStatus>,
    pub(crate) written_restores: Written<RestoreJobStatus>,
    /// What the controller knows of every job's workers.
    pub workers: Arc<WorkerIndex>,
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
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn resolve_cluster_id(client: &Client, configured: Option<String>) -> Result<String> {
    if let Some(id) = configured.filter(|s| !s.is_empty()) {
        return Ok(id);
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    ns.metadata
        .uid
        .ok_or(Error::MissingObjectKey("kube-system uid"))
}

/// Runs the controller until SIGTERM or Ctrl-C, or until it loses
/// leadership (then it exits with an error, to restart as a candidate).
pub async fn run(opts: Options) -> anyhow_like::Result {
    let client = Client::try_default().await?;
    let aws = AwsClients::from_env().await;
    let metrics = aws.metrics();
    let ready = Arc::new(Readiness::default());
    let listener = tokio::net::TcpListener::bind(&opts.metrics_address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.metrics_address))?;
    let server = tokio::spawn(telemetry::serve(listener, metrics.clone(), ready.clone()));

    // A standby replica is healthy and ready too: readiness gates rollouts
    // and drains, and only one replica can ever hold the lease.
    ready.set(true);
    let (leadership, lease) = match opts.election.clone() {
        Some(config) => {
            let (rx, handle) = leader::LeaderElection::new(client.clone(), config)
                .acquire()
                .await;
            (Some(rx), Some(handle))
        }
        None => (None, None),
    };

    let result = run_leader(client, aws, opts, leadership).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    server.abort();
    result
}

async fn run_leader(
    client: Client,
    aws: AwsClients,
    opts: Options,
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow_like::Result {
    let cluster_id = resolve_cluster_id(&client, opts.cluster_id.clone()).await?;
    let ns = opts.namespace.as_deref();
    info!(
        cluster_id,
        namespace = ns.unwrap_or("<all>"),
        "starting tender controller"
    );
    let configs: Api<WorkerConfiguration> = Api::all(client.clone());
    let repository_api: Api<BackupRepository> = Api::all(client.clone());
    let classes = class_watch(opts.class_selector.as_deref());
    let workers = Arc::new(WorkerIndex::default());
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded::<ObjectRef<BackupJob>>();
    let (restore_tx, restore_rx) = futures::channel::mpsc::unbounded::<ObjectRef<RestoreJob>>();
    let (backups, job_store) = job_controller(
        api_for(&client, ns),
        (&configs, &repository_api),
        &classes,
        &workers,
        trigger_rx,
    );
    let (restores, restore_store) = job_controller(
        api_for(&client, ns),
        (&configs, &repository_api),
        &classes,
        &workers,
        restore_rx,
    );
    // A configuration reconciles on its own changes (spec, deletion,
    // finalizers) and its recheck timer, not on its status: the worker
    // count is written apart (`worker_count`) and needs no AWS check.
    let (config_writer_store, config_writer) = reflector::store();
    let config_stream = watcher(configs.clone(), classes.clone())
        .default_backoff()
        .reflect(config_writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    let config_controller =
        Controller::for_stream(config_stream, config_writer_store.clone()).shutdown_on_signal();
    // A repository reconciles on its own changes and its recheck timer,
    // not on the status it writes.
    let (repository_store, repository_writer) = reflector::store();
    let repository_stream = watcher(repository_api, classes)
        .default_backoff()
        .reflect(repository_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let repositories =
        Controller::for_stream(repository_stream, repository_store.clone()).shutdown_on_signal();
    // Jobs read their namespace's labels (the classes' namespaceSelector):
    // the watch is complete before any job reconciles.
    let (namespace_store, namespace_writer) = reflector::store();
    let namespace_watch = match ns {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let namespace_watcher = tokio::spawn(
        watcher(Api::<Namespace>::all(client.clone()), namespace_watch)
            .default_backoff()
            .reflect(namespace_writer)
            .for_each(|_| futures::future::ready(())),
    );
    namespace_store
        .wait_until_ready()
        .await
        .map_err(|e| format!("the namespace watch did not start: {e}"))?;

    let ctx = Arc::new(Context::new(
        client,
        aws,
        cluster_id,
        Stores {
            configurations: config_writer_store,
            repositories: repository_store,
            namespaces: namespace_store,
            jobs: job_store,
            restores: restore_store,
        },
        reports::Triggers {
            backups: trigger_tx,
            restores: restore_tx,
        },
        workers,
        &opts,
    ));

    let sweeper = tokio::spawn(garbage_collector::run(ctx.clone(), opts.sweep));
    let counter = tokio::spawn(worker_count::run(ctx.clone()));
    let jobs_done = backups
        .run(backup_job::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let configs_done = config_controller
        .run(worker_configuration::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let restores_done = restores
        .run(restore_job::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let repositories_done = repositories
        .run(backup_repository::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let controllers = async {
        futures::join!(jobs_done, configs_done, restores_done, repositories_done);
    };
    let outcome = until_stopped(controllers, leadership).await;
    sweeper.abort();
    counter.abort();
    namespace_watcher.abort();
    ctx.pumps.stop_all();
    info!("tender controller stopped");
    outcome
}

/// The stores of the watched kinds.
struct Stores {
    configurations: Store<WorkerConfiguration>,
    repositories: Store<BackupRepository>,
    namespaces: Store<Namespace>,
    jobs: Store<BackupJob>,
    restores: Store<RestoreJob>,
}

impl Context {
    fn new(
        client: Client,
        aws: AwsClients,
        cluster_id: String,
        stores: Stores,
        triggers: reports::Triggers,
        workers: Arc<WorkerIndex>,
        opts: &Options,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            instances: InstanceCache::new(cluster_id.clone()),
            metrics: aws.metrics(),
            aws,
            cluster_id,
            configurations: stores.configurations,
            repositories: stores.repositories,
            namespaces: stores.namespaces,
            jobs: stores.jobs,
            restores: stores.restores,
            reports: Arc::new(ReportStore::default()),
            pumps: QueuePumps::new(triggers, opts.require_worker_sender),
            trusted_browser_hosts: opts.trusted_browser_hosts.clone(),
            heartbeat_seconds: opts.heartbeat_seconds,
            network_recheck: opts.network_recheck,
            namespace: opts.namespace.clone(),
            started_at: Timestamp::now(),
            failures: Mutex::default(),
            written_backups: Written::default(),
            written_restores: Written::default(),
            workers,
            launch_locks: Mutex::default(),
        }
    }
}

/// The controller of one job kind: its watch feeds the worker index and
/// the store, a configuration's or repository's change wakes the jobs it
/// concerns, and worker messages wake their job (`reconcile_on`).
fn job_controller<K: job::kind::WorkerJob>(
    api: Api<K>,
    (configs, repositories): (&Api<WorkerConfiguration>, &Api<BackupRepository>),
    classes: &watcher::Config,
    workers: &Arc<WorkerIndex>,
    messages: futures::channel::mpsc::UnboundedReceiver<ObjectRef<K>>,
) -> (Controller<K>, Store<K>) {
    let (store, writer) = reflector::store();
    let index = workers.clone();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| match event {
            watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                job::admission::record_watched(&index, job);
            }
            watcher::Event::Delete(job) => {
                if let Some(uid) = job.uid() {
                    index.forget(&uid);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        })
        .touched_objects();
    let waiting = store.clone();
    let changes = wake::ConfigChanges::default();
    let naming = store.clone();
    let repository_changes = wake::RepositoryChanges::default();
    let controller = Controller::for_stream(stream, store.clone())
        .watches(
            configs.clone(),
            classes.clone(),
            move |cfg: WorkerConfiguration| changes.wake(&waiting, &cfg),
        )
        .watches(
            repositories.clone(),
            classes.clone(),
            move |repo: BackupRepository| repository_changes.wake(&naming, &repo),
        )
        .reconcile_on(messages)
        .shutdown_on_signal();
    (controller, store)
}

/// The watch of the cluster-scoped classes (WorkerConfiguration,
/// BackupRepository) this controller manages.
fn class_watch(selector: Option<&str>) -> watcher::Config {
    match selector.filter(|s| !s.is_empty()) {
        Some(s) => watcher::Config::default().labels(s),
        None => watcher::Config::default(),
    }
}

/// Runs `controllers` until they end, leadership is lost, or SIGTERM (or
/// Ctrl-C): then each controller stops taking new work on its own
/// (shutdown_on_signal); in-flight reconciles get SHUTDOWN_GRACE to
/// finish, and then the process stops whatever still waits, so that a
/// Deployment rollout or a terminal never hangs on it.
async fn until_stopped(
    controllers: impl std::future::Future<Output = ()>,
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow_like::Result {
    let lost = async {
        match leadership {
            Some(mut rx) => {
                while *rx.borrow() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            }
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::pin!(controllers);
    tokio::select! {
        () = &mut controllers => Ok(()),
        () = lost => Err("lost leadership; exiting so that a restart rejoins as a candidate".into()),
        () = stop_requested() => {
            info!("stop requested; letting in-flight reconciles finish");
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut controllers).await.is_err() {
                warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "the controllers did not stop within the grace period; stopping anyway");
            }
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long in-flight reconciles may run after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
