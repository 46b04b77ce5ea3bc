//! The lifecycle every job kind runs (BackupJob, RestoreJob; see
//! [`kind::WorkerJob`]): resolve the configuration, plan one worker per
//! resource, record its launch token, launch it (crash-safe), apply its
//! messages, declare silent or dead workers lost, retry within
//! `backoffLimit`, enforce the deadline, suspension and TTL, terminate each
//! worker the moment it is done, and write what happened to status.
//!
//! - `core`: the pure decisions (unit-tested table-style).
//! - `configuration`: which WorkerConfiguration, and whether it is ready.
//! - `launch`: planning and launching workers; `admission`: how many may
//!   launch under `maxConcurrentWorkers`.
//! - `messages`: the workers' messages, checked, then applied.
//! - `termination`: terminating workers, and a deleted job's hold.
//! - `status`: reading and writing status; the end of a finished job.

pub mod admission;
pub mod configuration;
mod controller_run;
pub mod core;
pub mod kind;
mod launch;
mod messages;
pub mod status;
mod termination;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{debug, instrument};

use self::configuration::{choose_configuration, choose_repository};
use self::core::{JobFacts, Liveness, Problem, Timeouts, mark_failed};
use self::kind::WorkerJob;
use self::status::{baseline, write_status};
use super::agents::{self, AgentDownload, AgentSource};
use super::reach;
use super::reports::{Receipt, delete_receipts};
use super::{Context, Error, Result};
use crate::api::{
    AccountAccess, BackupRepository, JobStatus, Phase, WorkerConfiguration, WorkerStatus,
};
use crate::aws::accounts::Access;
use crate::aws::instance_cache::RegionInstances;
use crate::mover::manifest::RepositoryLocation;
use crate::names::JOB_FINALIZER;
use crate::reasons::{BlockedReason, FailureReason};

pub use self::kind::{Located, NotLocated, Target, TaskDetails};

/// How often a job that waits for a fix is looked at again.
const STALLED_REQUEUE: Duration = Duration::from_secs(60);
/// How often a job that waits for its configuration is looked at again.
const CONFIGURATION_WAIT: Duration = Duration::from_secs(30);
/// How long after a start the controller waits for messages that were in
/// flight before it judges workers by their instance state.
const REDELIVERY_WINDOW: Duration =
    Duration::from_secs(crate::aws::queues::VISIBILITY_TIMEOUT.as_secs() + 5);

#[instrument(skip_all, fields(namespace = job.namespace().unwrap_or_default(), job = job.name_any()))]
pub async fn reconcile<K: WorkerJob>(job: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    ctx.metrics
        .reconciles
        .get_or_create(&super::kind_labels(K::KIND))
        .inc();
    // The finalizer stays until every worker is confirmed terminated. This
    // is decided before the finalizer helper runs, because a cleanup that
    // returns Ok lets the helper remove the finalizer.
    if job.meta().deletion_timestamp.is_some()
        && job.finalizers().iter().any(|f| f == JOB_FINALIZER)
        && let Some(action) = termination::terminate_for_deletion(&*job, &api, &ctx).await?
    {
        return Ok(action);
    }
    let action = match finalizer(&api, JOB_FINALIZER, job, |event| async {
        match event {
            FinalizerEvent::Apply(job) => apply(&*job, &api, &ctx).await,
            FinalizerEvent::Cleanup(job) => termination::cleanup(&*job, &ctx).await,
        }
    })
    .await
    {
        Err(e) if super::stale_finalizer_patch(&e) => {
            debug!(error = %e, "finalizer patch met a newer object; retrying on it");
            return Ok(Action::requeue(super::STALE_OBJECT_RETRY));
        }
        other => other?,
    };
    ctx.reset_backoff(&uid);
    Ok(action)
}

/// One reconcile of one job: what it started from.
struct Pass<'a, K: WorkerJob> {
    job: &'a K,
    api: &'a Api<K>,
    ctx: &'a Context,
    uid: String,
    old: Option<JobStatus<K::Worker>>,
    started: Instant,
}

impl<K: WorkerJob> Pass<'_, K> {
    fn generation(&self) -> Option<i64> {
        self.job.meta().generation
    }

    fn finalize(&self, status: &mut JobStatus<K::Worker>, problem: Option<&Problem>) {
        let settling = self.job.settling(status).map(|s| s.note);
        core::finalize_status(
            status,
            (
                self.job.targets().len(),
                self.job.suspended(),
                settling.as_deref(),
            ),
            problem,
            self.generation(),
            Timestamp::now(),
        );
    }

    /// Writes `status` when it differs from `than`.
    async fn write_if_changed(
        &self,
        status: &JobStatus<K::Worker>,
        than: Option<&JobStatus<K::Worker>>,
    ) -> Result<bool> {
        if than == Some(status) {
            return Ok(false);
        }
        write_status(self.api, self.job, status, self.ctx).await?;
        Ok(true)
    }
}

/// The configuration a job works with, once resolved.
struct Resolved {
    config: Arc<WorkerConfiguration>,
    /// Where its restore points are, and the repository its workers'
    /// agent is published to; `None` while launches are blocked.
    repository: Option<(RepositoryLocation, AgentSource)>,
    queue_url: Option<String>,
    /// Why new launches wait (existing workers are followed regardless).
    blocked: Option<Problem>,
}

async fn apply<K: WorkerJob>(job: &K, api: &Api<K>, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let old = baseline(job, ctx);
    let pass = Pass {
        job,
        api,
        ctx,
        uid,
        old: old.clone(),
        started: Instant::now(),
    };
    let mut status = old.unwrap_or_default();
    if status.phase.is_finished() {
        return follow_finished(&pass, status).await;
    }
    let mut resolved = match resolve(&pass, &mut status).await? {
        Ok(resolved) => resolved,
        Err(action) => return Ok(action),
    };
    let now = Timestamp::now();
    if resolved.blocked.is_none() {
        launch::plan_workers(job, &resolved.config, &pass.uid, &mut status, ctx, now).await?;
    }
    status.start_time.get_or_insert(Time(now));
    let settled = messages::apply_messages(&pass, &resolved.config, &mut status, now).await?;
    controller_run::start(job, &mut status, now);
    let step = kind::ControllerStep {
        config: &resolved.config,
        repository: resolved.repository.as_ref().map(|(loc, _)| loc),
        now,
    };
    let controller_wake = controller_run::advance_all(job, &step, &mut status, ctx).await?;
    job.follow_up(&resolved.config, &mut status, ctx, now)
        .await?;
    let spec = &resolved.config.spec;
    let timeout = Timeouts {
        boot: Duration::from_secs(spec.boot_timeout_seconds.max(1) as u64),
        heartbeat: Duration::from_secs(spec.heartbeat_timeout_seconds.max(1) as u64),
    };
    judge_workers(&pass, &mut status, timeout).await?;
    termination::terminate_finished(job, &mut status, ctx).await?;
    retry_workers(&pass, &mut status).await;
    // Retried or resumed entries the controller works on itself start at
    // once: they have nothing to launch.
    controller_run::start(job, &mut status, Timestamp::now());
    // After the retries: they launch too.
    let agent = deliver_agent(&pass, &mut resolved, &status).await;

    // Launch tokens are recorded before anything is launched.
    finalize_holding(&pass, &mut status, resolved.blocked.as_ref());
    if pass.write_if_changed(&status, pass.old.as_ref()).await? {
        crate::faults::crash_point("after-token-write");
    }
    let recorded = status.clone();
    launch_or_hold(&pass, &resolved, agent.as_ref(), &mut status).await?;
    if pass.write_if_changed(&status, Some(&recorded)).await? {
        crate::faults::crash_point("after-status-write");
    }
    ctx.reports.settle(&pass.uid, &settled);
    delete_receipts(&ctx.aws, &settled).await;

    if status.phase.is_finished() {
        status::finished(job, &status, ctx).await;
        return status::expire(job, api, &status, Timestamp::now()).await;
    }
    let mut wake = next_wakeup(&pass, &status, timeout);
    if let Some(settling) = job.settling(&status) {
        wake = wake.min(settling.recheck);
    }
    if let Some(recheck) = controller_wake {
        wake = wake.min(recheck);
    }
    Ok(Action::requeue(wake))
}

/// A finished job only makes sure its workers are gone, drops whatever
/// still arrives for it, then waits for its TTL.
async fn follow_finished<K: WorkerJob>(
    pass: &Pass<'_, K>,
    mut status: JobStatus<K::Worker>,
) -> Result<Action> {
    let ctx = pass.ctx;
    termination::terminate_finished(pass.job, &mut status, ctx).await?;
    pass.finalize(&mut status, None);
    pass.write_if_changed(&status, pass.old.as_ref()).await?;
    let stale: Vec<Receipt> = ctx
        .reports
        .pending(&pass.uid)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    ctx.reports.settle(&pass.uid, &stale);
    delete_receipts(&ctx.aws, &stale).await;
    status::expire(pass.job, pass.api, &status, Timestamp::now()).await
}

/// The configuration to work with. A job that already has workers keeps
/// following them with the configuration it started with, even while that
/// one is being deleted or is not ready: only new launches wait. `Err` is
/// what to return when the job cannot go on at all.
async fn resolve<K: WorkerJob>(
    pass: &Pass<'_, K>,
    status: &mut JobStatus<K::Worker>,
) -> Result<Result<Resolved, Action>> {
    let (job, ctx) = (pass.job, pass.ctx);
    let configs = ctx.configurations.state();
    let started_with = status
        .worker_configuration
        .as_ref()
        .and_then(|name| configs.iter().find(|c| c.name_any() == *name).cloned());
    let labels = namespace_labels(ctx, &job.namespace().unwrap_or_default());
    let repositories = ctx.repositories.state();
    let chosen = choose_configuration(job, &configs, &labels).and_then(|c| {
        let repository = job_repository(job, &repositories, &labels)?;
        Ok((c.clone(), repository))
    });
    let (config, repository, mut blocked) = match (chosen, started_with) {
        (Ok((c, r)), _) => (c, Some(r), None),
        (Err(problem), Some(c)) if !status.workers.is_empty() => (c, None, Some(problem)),
        (Err(problem), _) => {
            pass.finalize(status, Some(&problem));
            if pass.old.as_ref() != Some(status) {
                let note = problem.message.clone();
                ctx.event(
                    job,
                    EventType::Warning,
                    problem.reason.as_str(),
                    "ResolveConfiguration",
                    note,
                )
                .await;
                write_status(pass.api, job, status, ctx).await?;
            }
            return Ok(Err(Action::requeue(STALLED_REQUEUE)));
        }
    };
    status.worker_configuration = Some(config.name_any());
    let queue_url = configuration::ready_configuration(&config, job.profile());
    if queue_url.is_none() && blocked.is_none() {
        // Not ready (no queue yet, or its network or instance types are not
        // right); its reconcile wakes this job when that changes.
        blocked = Some(Problem {
            reason: BlockedReason::WaitingForWorkerConfiguration,
            message: format!(
                "waiting for WorkerConfiguration {:?}: {}",
                config.name_any(),
                configuration::not_ready_message(&config, job.profile())
            ),
        });
    }
    if let (Some(problem), true) = (&blocked, status.workers.is_empty()) {
        pass.finalize(status, None);
        core::hold_launches(status, problem, pass.generation(), Timestamp::now());
        pass.write_if_changed(status, pass.old.as_ref()).await?;
        return Ok(Err(Action::requeue(CONFIGURATION_WAIT)));
    }
    Ok(Ok(Resolved {
        config,
        repository,
        queue_url,
        blocked,
    }))
}

/// The labels of namespace `ns`, for the classes' `namespaceSelector` (the
/// namespace watch is complete before anything reconciles).
pub(crate) fn namespace_labels(ctx: &Context, ns: &str) -> BTreeMap<String, String> {
    ctx.namespaces
        .get(&ObjectRef::new(ns))
        .map(|n| n.labels().clone())
        .unwrap_or_default()
}

/// Where the job's restore points are, once every repository it names
/// admits its namespace.
fn job_repository<K: WorkerJob>(
    job: &K,
    repositories: &[Arc<BackupRepository>],
    labels: &BTreeMap<String, String>,
) -> std::result::Result<(RepositoryLocation, AgentSource), Problem> {
    for other in job.other_repository_refs() {
        choose_repository(other, repositories, labels)?;
    }
    let reference = job.repository_ref().ok_or_else(|| Problem {
        reason: BlockedReason::RepositoryMissing,
        message: "spec.repositoryRef is missing".into(),
    })?;
    let chosen = choose_repository(reference, repositories, labels)?;
    let spec = &chosen.spec;
    let source = AgentSource {
        name: chosen.name_any(),
        location: RepositoryLocation::new(&spec.bucket, &spec.prefix, &spec.region).owned_by(spec),
        access: spec.access.clone(),
    };
    Ok((
        RepositoryLocation::of(spec, &job.namespace().unwrap_or_default()),
        source,
    ))
}

/// The deadline, suspension, and workers that went silent or whose
/// instance died (from the shared instance view).
async fn judge_workers<K: WorkerJob>(
    pass: &Pass<'_, K>,
    status: &mut JobStatus<K::Worker>,
    timeout: Timeouts,
) -> Result<()> {
    let (job, ctx) = (pass.job, pass.ctx);
    let now = Timestamp::now();
    let facts = facts(job, status, now);
    let observed = observe_instances(job, status, ctx).await?;
    // Right after a restart, messages that were in flight come back only
    // after the visibility timeout: a finished worker's instance may
    // already be terminated while its "completed" is still on its way.
    // Judge by instance state only after that.
    let redelivery_settled = since_start(ctx, now) >= REDELIVERY_WINDOW;
    let liveness = |w: &WorkerStatus| Liveness {
        instance_state: w
            .instance_id
            .as_ref()
            .and_then(|id| observed.as_ref().and_then(|o| o.get(id)))
            .map(|o| o.state.as_str())
            .filter(|_| redelivery_settled),
        heard: heard(ctx, &pass.uid, w),
    };
    let before: Vec<Phase> = status.workers.iter().map(|w| w.phase).collect();
    let unfinished: Vec<bool> = before.iter().map(|p| !p.is_finished()).collect();
    // Each Event is made once a worker that did not boot carries its
    // console in its message.
    let mut notices = Vec::new();
    for (w, &was) in status.workers.iter_mut().zip(&before) {
        let observed = liveness(w);
        core::judge_worker(w, &facts, observed, timeout, now);
        if was != Phase::Failed
            && w.phase == Phase::Failed
            && w.reason.as_deref() == Some(FailureReason::WorkerBootTimeout.as_str())
        {
            boot_console(job, w, ctx).await;
        }
        notices.extend(core::phase_notice(Some(was), w));
    }
    publish(pass, notices).await;
    if let Some(config) = status.worker_configuration.as_deref() {
        let of = format!(
            "{} {}/{}",
            K::KIND,
            job.namespace().unwrap_or_default(),
            job.name_any()
        );
        for (w, was_unfinished) in status.workers.iter().zip(unfinished) {
            if w.last_sequence > 0 && !w.phase.is_finished() {
                ctx.reach.heard(config);
            } else if was_unfinished && reach::never_reached_aws(w, liveness(w).instance_state) {
                ctx.reach
                    .lost_unheard(config, reach::unreached_note(&of, w, timeout.boot));
            } else if let Some(note) = reach::reported_unreachable(&of, w, now) {
                ctx.reach.lost_unheard(config, note);
            }
        }
    }
    Ok(())
}

/// Adds the last lines of a worker's console to the message of a worker
/// that did not boot in time (what its user data printed: a digest
/// mismatch, no route to S3, ...), and has the agent's publication checked
/// again before the next launch.
async fn boot_console<K: WorkerJob>(job: &K, w: &mut WorkerStatus, ctx: &Context) {
    ctx.agents.forget();
    let Some(id) = w.instance_id.clone() else {
        return;
    };
    let access = job_access(job, w.access.as_ref());
    let aws = ctx.aws.scoped(&access).await;
    let console = match aws.instances().console_output(&w.region, &id).await {
        Ok(Some(text)) if !crate::aws::console::tail(&text).is_empty() => {
            format!("its console ends: {}", crate::aws::console::tail(&text))
        }
        Ok(_) => "it has no console output yet".to_string(),
        Err(e) => format!("its console output could not be read: {e}"),
    };
    let message = w.message.take().unwrap_or_default();
    w.message = Some(format!("{message}; {console}"));
}

/// Replaces failed workers within the backoff limit and resumes suspended
/// ones.
async fn retry_workers<K: WorkerJob>(pass: &Pass<'_, K>, status: &mut JobStatus<K::Worker>) {
    let facts = facts(pass.job, status, Timestamp::now());
    let notices = core::retry_workers(&mut status.workers, &facts, &pass.uid);
    publish(pass, notices).await;
}

/// Publishes the core's Events on the job.
async fn publish<K: WorkerJob>(pass: &Pass<'_, K>, notices: Vec<core::Notice>) {
    for n in notices {
        let type_ = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        pass.ctx
            .event(pass.job, type_, n.reason, n.action, n.note)
            .await;
    }
}

/// Launches (or adopts) the planned workers, unless launches are held: a
/// configuration going away fails the workers that will never launch.
async fn launch_or_hold<K: WorkerJob>(
    pass: &Pass<'_, K>,
    resolved: &Resolved,
    agent: Option<&AgentDownload>,
    status: &mut JobStatus<K::Worker>,
) -> Result<()> {
    let (job, ctx) = (pass.job, pass.ctx);
    let recorded_tokens: HashSet<String> = pass
        .old
        .iter()
        .flat_map(|s| s.workers.iter())
        .map(|w| w.launch_token.clone())
        .collect();
    match (&resolved.blocked, &resolved.queue_url) {
        (None, Some(queue_url)) if !job.suspended() => {
            let config = &resolved.config;
            let Some((repository, _)) = &resolved.repository else {
                return Err(Error::MissingObjectKey("the job's BackupRepository"));
            };
            launch::launch_workers(
                job,
                config,
                (queue_url, repository, agent),
                status,
                ctx,
                pass.started,
                &recorded_tokens,
            )
            .await?;
        }
        (Some(problem), _) if problem.reason == BlockedReason::WorkerConfigurationDeleting => {
            for w in status
                .workers
                .iter_mut()
                .filter(|w| w.is_waiting_to_launch())
            {
                let now = Timestamp::now();
                mark_failed(
                    w,
                    FailureReason::WorkerConfigurationDeleted,
                    &problem.message,
                    now,
                );
            }
        }
        _ => {}
    }
    finalize_holding(pass, status, resolved.blocked.as_ref());
    Ok(())
}

/// The job-level fields, and the hold on launches while `blocked` keeps
/// workers waiting: applied the same way at every write, so a held job's
/// conditions never flap between writes.
fn finalize_holding<K: WorkerJob>(
    pass: &Pass<'_, K>,
    status: &mut JobStatus<K::Worker>,
    blocked: Option<&Problem>,
) {
    pass.finalize(status, None);
    let waiting = status.workers.iter().any(|w| w.is_waiting_to_launch());
    if let (Some(problem), true, false) = (blocked, waiting, status.phase.is_finished()) {
        core::hold_launches(status, problem, pass.generation(), Timestamp::now());
    }
}

/// The agent download for the workers this reconcile may launch, the
/// agent published first if need be (see `agents`); when it cannot be
/// delivered, launches are held for that reason (with an Event the first
/// time).
async fn deliver_agent<K: WorkerJob>(
    pass: &Pass<'_, K>,
    resolved: &mut Resolved,
    status: &JobStatus<K::Worker>,
) -> Option<AgentDownload> {
    let waiting = status.workers.iter().any(|w| w.is_waiting_to_launch());
    if resolved.blocked.is_some() || !waiting || pass.job.suspended() {
        return None;
    }
    let (_, source) = resolved.repository.as_ref()?;
    match agents::for_launch(pass.ctx, &resolved.config, source).await {
        Ok(agent) => agent,
        Err(problem) => {
            if !core::held_for(status, &problem) {
                let note = problem.message.clone();
                let reason = problem.reason.as_str();
                pass.ctx
                    .event(pass.job, EventType::Warning, reason, "DeliverAgent", note)
                    .await;
            }
            resolved.blocked = Some(problem);
            None
        }
    }
}

fn facts<K: WorkerJob>(job: &K, status: &JobStatus<K::Worker>, now: Timestamp) -> JobFacts {
    JobFacts::of(
        status,
        job.limits().active_deadline_seconds,
        job.suspended(),
        job.limits().backoff_limit,
        now,
    )
}

fn since_start(ctx: &Context, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(ctx.started_at)).unwrap_or_default()
}

/// When a worker was last heard from (see `core::last_heard`).
fn heard(ctx: &Context, uid: &str, w: &WorkerStatus) -> Timestamp {
    core::last_heard(
        w,
        ctx.reports.last_heard(uid, &w.resource, w.attempt),
        ctx.started_at,
    )
}

fn next_wakeup<K: WorkerJob>(
    pass: &Pass<'_, K>,
    status: &JobStatus<K::Worker>,
    timeout: Timeouts,
) -> Duration {
    let now = Timestamp::now();
    let inputs = core::WakeInputs {
        status,
        timeouts: timeout,
        deadline_seconds: pass.job.limits().active_deadline_seconds,
        redelivery_left: REDELIVERY_WINDOW.saturating_sub(since_start(pass.ctx, now)),
        now,
    };
    core::next_wakeup(&inputs, |w| heard(pass.ctx, &pass.uid, w))
        + super::jitter(Duration::from_millis(250))
}

/// The shared view of the region's worker instances, when any worker of
/// this job has a live instance to check.
async fn observe_instances<K: WorkerJob>(
    job: &K,
    status: &JobStatus<K::Worker>,
    ctx: &Context,
) -> Result<Option<RegionInstances>> {
    let Some(w) = status.workers.iter().find(|w| w.is_active()) else {
        return Ok(None);
    };
    let access = job_access(job, w.access.as_ref());
    let aws = ctx.aws.scoped(&access).await;
    Ok(Some(
        ctx.instances
            .recent(&aws, access.account_key(), &w.region)
            .await?,
    ))
}

/// How a job's calls reach an account: `role` (if any), in a session named
/// after the job.
pub fn job_access<K: WorkerJob>(job: &K, role: Option<&AccountAccess>) -> Access {
    Access::new(
        role,
        &[&job.namespace().unwrap_or_default(), &job.name_any()],
    )
}
