//! Starting the controller: the watches and their stores, the controllers
//! of the five kinds, leader election, and a graceful stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::{Predicate, WatchStreamExt, predicates};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tracing::{info, warn};

use super::index::WorkerIndex;
use super::job::status::Written;
use super::reports::{self, QueuePumps, ReportStore};
use super::{
    Context, Error, Options, Result, anyhow_like, backup_job, backup_policy, backup_repository,
    error_policy, garbage_collector, job, leader, restore_job, retention_job, verification_job,
    wake, worker_configuration, worker_count,
};
use crate::api::{
    BackupJob, BackupPolicy, BackupRepository, RestoreJob, RetentionJob, VerificationJob,
    WorkerConfiguration,
};
use crate::aws::AwsClients;
use crate::aws::instance_cache::InstanceCache;
use crate::names::CONTROLLER_NAME;
use crate::telemetry::{self, Readiness};

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
    let agents = super::agents::AgentStore::load(&opts.agents_dir).map_err(|e| {
        format!(
            "cannot read the worker agents in {}: {e}",
            opts.agents_dir.display()
        )
    })?;
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

    let result = run_leader(client, aws, opts, Arc::new(agents), leadership).await;
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
    agents: Arc<super::agents::AgentStore>,
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
    let (retention_tx, retention_rx) =
        futures::channel::mpsc::unbounded::<ObjectRef<RetentionJob>>();
    let (verification_tx, verification_rx) =
        futures::channel::mpsc::unbounded::<ObjectRef<VerificationJob>>();
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
    let (retentions, retention_store) = job_controller(
        api_for(&client, ns),
        (&configs, &repository_api),
        &classes,
        &workers,
        retention_rx,
    );
    let (verifications, verification_store) = job_controller(
        api_for(&client, ns),
        (&configs, &repository_api),
        &classes,
        &workers,
        verification_rx,
    );
    // A configuration reconciles on its own changes (spec, deletion,
    // finalizers) and its recheck timer, not on its status: the worker
    // count is written apart (`worker_count`) and needs no AWS check.
    let (config_controller, config_store) = class_controller(
        configs,
        &classes,
        predicates::generation.combine(predicates::finalizers),
    );
    let (reach_tx, reach_rx) = futures::channel::mpsc::unbounded();
    let config_controller = config_controller.reconcile_on(reach_rx);
    let (repositories, repository_store) =
        class_controller(repository_api, &classes, predicates::generation);
    let (namespace_store, namespace_watcher) = watch_namespaces(&client, ns).await?;

    let policies = policy_controller(&client, ns);
    let ctx = Arc::new(Context::new(
        client,
        aws,
        cluster_id,
        Stores {
            configurations: config_store,
            repositories: repository_store,
            namespaces: namespace_store,
            jobs: job_store,
            restores: restore_store,
            retentions: retention_store,
            verifications: verification_store,
        },
        reports::Triggers {
            backups: trigger_tx,
            restores: restore_tx,
            retentions: retention_tx,
            verifications: verification_tx,
        },
        (workers, reach_tx),
        (&opts, agents),
    ));

    let controllers = Controllers {
        backups,
        restores,
        retentions,
        verifications,
        configurations: config_controller,
        repositories,
        policies,
    };
    let outcome = run_all(ctx, controllers, opts.sweep, leadership).await;
    namespace_watcher.abort();
    outcome
}

/// The controllers of the seven kinds.
struct Controllers {
    backups: Controller<BackupJob>,
    restores: Controller<RestoreJob>,
    retentions: Controller<RetentionJob>,
    verifications: Controller<VerificationJob>,
    configurations: Controller<WorkerConfiguration>,
    repositories: Controller<BackupRepository>,
    policies: Controller<BackupPolicy>,
}

/// The policies' controller: a policy reconciles on its own changes, on
/// its jobs', retention runs' and verification runs' (those it owns, by
/// their label), and at its next run's time.
fn policy_controller(client: &Client, ns: Option<&str>) -> Controller<BackupPolicy> {
    let jobs: Api<BackupJob> = api_for(client, ns);
    let retentions: Api<RetentionJob> = api_for(client, ns);
    let verifications: Api<VerificationJob> = api_for(client, ns);
    Controller::new(
        api_for::<BackupPolicy>(client, ns),
        watcher::Config::default(),
    )
    .owns(
        jobs,
        watcher::Config::default().labels(crate::names::POLICY_LABEL),
    )
    .owns(
        retentions,
        watcher::Config::default().labels(crate::names::POLICY_LABEL),
    )
    .owns(
        verifications,
        watcher::Config::default().labels(crate::names::POLICY_LABEL),
    )
    .shutdown_on_signal()
}

/// Runs the controllers, the sweeper and the worker count until they stop
/// (see `until_stopped`).
async fn run_all(
    ctx: Arc<Context>,
    c: Controllers,
    sweep: garbage_collector::SweepConfig,
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow_like::Result {
    let sweeper = tokio::spawn(garbage_collector::run(ctx.clone(), sweep));
    let counter = tokio::spawn(worker_count::run(ctx.clone()));
    let jobs_done = c
        .backups
        .run(backup_job::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let configs_done = c
        .configurations
        .run(worker_configuration::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let restores_done = c
        .restores
        .run(restore_job::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let retentions_done = c
        .retentions
        .run(retention_job::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let verifications_done = c
        .verifications
        .run(verification_job::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let repositories_done = c
        .repositories
        .run(backup_repository::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let policies_done = c
        .policies
        .run(backup_policy::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let controllers = async {
        futures::join!(
            jobs_done,
            configs_done,
            restores_done,
            retentions_done,
            verifications_done,
            repositories_done,
            policies_done
        );
    };
    let outcome = until_stopped(controllers, leadership).await;
    sweeper.abort();
    counter.abort();
    ctx.pumps.stop_all();
    info!("tender controller stopped");
    outcome
}

/// The controller of a cluster-scoped class (WorkerConfiguration,
/// BackupRepository): it reconciles on its own changes, as `changed` sees
/// them, and on its recheck timer, never on the status it writes.
fn class_controller<K>(
    api: Api<K>,
    classes: &watcher::Config,
    changed: impl Predicate<K> + Send + 'static,
) -> (Controller<K>, Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, classes.clone())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(changed, Default::default());
    let controller = Controller::for_stream(stream, store.clone()).shutdown_on_signal();
    (controller, store)
}

/// How long the namespace watch may take to list before the controller
/// gives up with a message.
const NAMESPACE_WATCH_START: Duration = Duration::from_secs(60);

/// The namespaces jobs run in (all, or `only`), for the classes'
/// `namespaceSelector`: returns once the watch has listed them, so that no
/// job is judged against labels not seen yet.
async fn watch_namespaces(
    client: &Client,
    only: Option<&str>,
) -> anyhow_like::Result<(Store<Namespace>, tokio::task::JoinHandle<()>)> {
    let (store, writer) = reflector::store();
    let config = match only {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let task = tokio::spawn(
        watcher(Api::<Namespace>::all(client.clone()), config)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| futures::future::ready(())),
    );
    // A watch that cannot list (RBAC from an older chart, say) retries
    // forever: say what is missing instead of waiting without a word.
    match tokio::time::timeout(NAMESPACE_WATCH_START, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok((store, task)),
        Ok(Err(e)) => Err(format!("the namespace watch did not start: {e}").into()),
        Err(_) => {
            task.abort();
            Err(format!(
                "could not list namespaces within {} s: the controller reads their labels for the classes' namespaceSelector; grant it list and watch on namespaces (the chart's ClusterRole does)",
                NAMESPACE_WATCH_START.as_secs()
            )
            .into())
        }
    }
}

/// The stores of the watched kinds.
struct Stores {
    configurations: Store<WorkerConfiguration>,
    repositories: Store<BackupRepository>,
    namespaces: Store<Namespace>,
    jobs: Store<BackupJob>,
    restores: Store<RestoreJob>,
    retentions: Store<RetentionJob>,
    verifications: Store<VerificationJob>,
}

impl Context {
    fn new(
        client: Client,
        aws: AwsClients,
        cluster_id: String,
        stores: Stores,
        triggers: reports::Triggers,
        (workers, reach): (
            Arc<WorkerIndex>,
            futures::channel::mpsc::UnboundedSender<ObjectRef<WorkerConfiguration>>,
        ),
        (opts, agents): (&Options, Arc<super::agents::AgentStore>),
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
            retentions: stores.retentions,
            verifications: stores.verifications,
            reports: Arc::new(ReportStore::default()),
            pumps: QueuePumps::new(triggers, opts.require_worker_sender),
            trusted_browser_hosts: opts.trusted_browser_hosts.clone(),
            restored_snapshot_timeout: opts.restored_snapshot_timeout,
            agents: agents.clone(),
            heartbeat_seconds: opts.heartbeat_seconds,
            network_recheck: opts.network_recheck,
            repository_count: opts.repository_count,
            gc_grace: opts.gc_grace,
            namespace: opts.namespace.clone(),
            started_at: Timestamp::now(),
            failures: Mutex::default(),
            written_backups: Written::default(),
            written_restores: Written::default(),
            written_retentions: Written::default(),
            written_verifications: Written::default(),
            workers,
            reach: super::reach::WorkerReach::new(reach),
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
