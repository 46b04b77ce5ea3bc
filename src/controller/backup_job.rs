//! BackupJob reconciler: resolve the configuration, launch one worker per
//! resource (crash-safe), apply the workers' messages, declare silent or
//! dead workers lost, retry within `backoffLimit`, enforce the deadline,
//! suspend and TTL, terminate each worker the moment it is done, and write
//! what happened to status. The decisions live in `lifecycle`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::jobs::{TargetKind, WorkerJob};
use super::lifecycle::{
    self, Applied, DEADLINE_EXCEEDED, Problem, WORKER_LOST, apply_message, mark_failed,
    next_attempt,
};
use super::reports::{Receipt, delete_receipts};
use super::{Context, Error, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING};
use crate::api::{
    AccountAccess, BackupJobStatus, Phase, RestoreMode, WorkerAccount, WorkerConfiguration,
    WorkerStatus,
};
use crate::aws::accounts::{Access, RegionAccount};
use crate::aws::instance_cache::RegionInstances;
use crate::aws::instances::WorkerLaunch;
use crate::messages::{FileLevelTask, Operation, PROTOCOL_VERSION, WorkerTask};
use crate::names::JOB_FINALIZER;
use crate::placement::{self, WorkerOwner};
use crate::telemetry::{OutcomeLabels, RegionLabels, WorkerLabels};
use sha2::Digest;

/// How often an unfinished job is looked at even when nothing happens
/// (worker messages wake it much sooner).
const SAFETY_REQUEUE: Duration = Duration::from_secs(300);
/// How often a job that waits for a fix is looked at again.
const STALLED_REQUEUE: Duration = Duration::from_secs(60);
/// How often a worker that waits for a launch slot or for capacity is
/// looked at again.
const QUEUED_RECHECK: Duration = Duration::from_secs(5);
/// How long after a start the controller waits for messages that were in
/// flight before it judges workers by their instance state.
const REDELIVERY_WINDOW: Duration =
    Duration::from_secs(crate::aws::queues::VISIBILITY_TIMEOUT.as_secs() + 5);
/// How often deletion rechecks workers that are not terminated yet.
const TERMINATION_RECHECK: Duration = Duration::from_secs(5);

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
        && let Some(action) = terminate_for_deletion(&*job, &api, &ctx).await?
    {
        return Ok(action);
    }
    let action = match finalizer(&api, JOB_FINALIZER, job, |event| async {
        match event {
            FinalizerEvent::Apply(job) => apply(&*job, &api, &ctx).await,
            FinalizerEvent::Cleanup(job) => cleanup(&*job, &ctx).await,
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

/// Picks the configuration a job uses: the one it names, else the only one
/// of its namespace for its resources' region.
pub fn choose_configuration<'a, K: WorkerJob>(
    job: &K,
    candidates: &'a [Arc<WorkerConfiguration>],
) -> Result<&'a Arc<WorkerConfiguration>, Problem> {
    if job.repository().is_none() {
        return Err(Problem {
            reason: "RepositoryMissing",
            message: format!(
                "this {} has no spec.repository (it was created before Tender required one); create it again with a repository",
                K::KIND
            ),
        });
    }
    let ns = job.namespace().unwrap_or_default();
    let in_ns = || {
        candidates
            .iter()
            .filter(move |c| c.namespace().as_deref() == Some(ns.as_str()))
    };
    let chosen = if let Some(reference) = &job.configuration_ref() {
        in_ns()
            .find(|c| c.name_any() == reference.name)
            .ok_or_else(|| Problem {
                reason: "WorkerConfigurationNotFound",
                message: format!(
                    "WorkerConfiguration {:?} does not exist in this namespace; create it or fix spec.workerConfigurationRef",
                    reference.name
                ),
            })?
    } else {
        let targets = job.targets();
        let mut regions: Vec<&str> = targets.iter().map(|r| r.region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        let [region] = regions[..] else {
            return Err(Problem {
                reason: "WorkerConfigurationAmbiguous",
                message: format!(
                    "the resources are in several regions ({}); set spec.workerConfigurationRef or split the job per region",
                    regions.join(", ")
                ),
            });
        };
        let matching: Vec<_> = in_ns().filter(|c| c.spec.region == region).collect();
        match matching[..] {
            [one] => one,
            [] => {
                return Err(Problem {
                    reason: "WorkerConfigurationNotFound",
                    message: format!(
                        "no WorkerConfiguration for region {region} in this namespace; create one or set spec.workerConfigurationRef"
                    ),
                });
            }
            _ => {
                return Err(Problem {
                    reason: "WorkerConfigurationAmbiguous",
                    message: format!(
                        "{} WorkerConfigurations serve region {region} in this namespace; set spec.workerConfigurationRef",
                        matching.len()
                    ),
                });
            }
        }
    };
    if chosen.meta().deletion_timestamp.is_some() {
        return Err(Problem {
            reason: "WorkerConfigurationDeleting",
            message: format!(
                "WorkerConfiguration {:?} is being deleted; no new workers are launched with it",
                chosen.name_any()
            ),
        });
    }
    if let Some(r) = job
        .targets()
        .into_iter()
        .find(|r| r.region != chosen.spec.region)
    {
        return Err(Problem {
            reason: "RegionMismatch",
            message: format!(
                "resource {} is in {} but WorkerConfiguration {:?} launches workers in {}; use a configuration for that region",
                r.id,
                r.region,
                chosen.name_any(),
                chosen.spec.region
            ),
        });
    }
    Ok(chosen)
}

fn finalize_status<K: WorkerJob>(
    job: &K,
    status: &mut BackupJobStatus,
    problem: Option<&Problem>,
    now: Timestamp,
) {
    let resources = job.targets().len();
    status.phase = lifecycle::job_phase(&status.workers, resources, job.suspended());
    status.active_workers = status
        .workers
        .iter()
        .filter(|w| w.instance_id.is_some() && w.terminated_time.is_none())
        .count() as i32;
    if status.phase.is_finished() && status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
    let text = lifecycle::summary(&status.workers, resources);
    let mut desired = lifecycle::job_conditions(status.phase, problem, &text);
    if let (Some(position), false) = (status.queue_position, status.phase.is_finished()) {
        let message = format!(
            "queued at position {position} for a worker slot (maxConcurrentWorkers); {text}"
        );
        for c in desired
            .iter_mut()
            .filter(|c| c.type_ == READY || c.type_ == RECONCILING)
        {
            c.reason = "Queued".into();
            c.message = message.clone();
        }
    }
    status.conditions = conditions::merge(&status.conditions, &desired, job.meta().generation, now);
    status.observed_generation = job.meta().generation;
}

/// Writes the job's status and remembers it: the controller is the only
/// writer of a job's status, so what it wrote last is newer than anything
/// its watch cache may still show.
async fn write_status<K: WorkerJob>(
    api: &Api<K>,
    job: &K,
    status: &BackupJobStatus,
    ctx: &Context,
) -> Result<()> {
    apply_status(api, job, status, &ctx.metrics).await?;
    if let Some(uid) = job.uid() {
        ctx.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, status.clone());
    }
    Ok(())
}

/// The status to start from: what this controller wrote last, else what
/// the watch cache shows.
fn baseline<K: WorkerJob>(job: &K, ctx: &Context) -> Option<BackupJobStatus> {
    let uid = job.uid()?;
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .cloned()
        .or_else(|| job.job_status().cloned())
}

/// Publishes the Event of a worker's phase change, if it changed.
async fn worker_event<K: WorkerJob>(
    job: &K,
    before: Option<Phase>,
    after: &WorkerStatus,
    ctx: &Context,
) {
    if before == Some(after.phase) {
        return;
    }
    let id = after.instance_id.as_deref().unwrap_or("-");
    let detail = after.message.as_deref().unwrap_or("");
    let (type_, reason) = match (after.phase, after.reason.as_deref()) {
        (Phase::Failed, Some(WORKER_LOST)) => (EventType::Warning, WORKER_LOST),
        (Phase::Failed, Some(DEADLINE_EXCEEDED)) => (EventType::Warning, DEADLINE_EXCEEDED),
        (Phase::Failed, _) => (EventType::Warning, "WorkerFailed"),
        (Phase::Succeeded, _) => (EventType::Normal, "WorkerSucceeded"),
        (Phase::Running, _) => (EventType::Normal, "WorkerStarted"),
        (Phase::Suspended, _) => (EventType::Normal, "WorkerSuspended"),
        _ => return,
    };
    let note = format!(
        "worker {id} for {} (attempt {}): {}",
        after.resource,
        after.attempt,
        if detail.is_empty() { "started" } else { detail }
    );
    ctx.event(job, type_, reason, "FollowWorker", note).await;
}

async fn apply<K: WorkerJob>(job: &K, api: &Api<K>, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let old = baseline(job, ctx);
    let mut status = old.clone().unwrap_or_default();
    let now = Timestamp::now();
    let started = Instant::now();
    // Launch tokens recorded before this reconcile (see `launch_workers`).
    let recorded_tokens: HashSet<String> = old
        .iter()
        .flat_map(|s| s.workers.iter())
        .map(|w| w.launch_token.clone())
        .collect();

    // A finished job only makes sure its workers are gone, then waits for
    // its TTL.
    if status.phase.is_finished() {
        terminate_finished(job, &mut status, ctx).await?;
        finalize_status(job, &mut status, None, now);
        if old.as_ref() != Some(&status) {
            write_status(api, job, &status, ctx).await?;
        }
        // Whatever still arrives for a finished job is stale: consume it.
        let stale: Vec<Receipt> = ctx
            .reports
            .pending(&uid)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        ctx.reports.settle(&uid, &stale);
        delete_receipts(&ctx.aws, &stale).await;
        return expire(job, api, &status, now).await;
    }

    let configs = ctx.configurations.state();
    // A job that already has workers keeps following them with the
    // configuration it started with, even while that one is being deleted
    // or is not ready: only new launches wait (`blocked`).
    let started_with = status.worker_configuration.as_ref().and_then(|name| {
        configs
            .iter()
            .find(|c| c.name_any() == *name && c.namespace() == job.namespace())
            .cloned()
    });
    let (config, mut blocked) = match (choose_configuration(job, &configs), started_with) {
        (Ok(c), _) => (c.clone(), None),
        (Err(problem), Some(c)) if !status.workers.is_empty() => (c, Some(problem)),
        (Err(problem), _) => {
            finalize_status(job, &mut status, Some(&problem), now);
            if old.as_ref() != Some(&status) {
                ctx.event(
                    job,
                    EventType::Warning,
                    problem.reason,
                    "ResolveConfiguration",
                    problem.message.clone(),
                )
                .await;
                write_status(api, job, &status, ctx).await?;
            }
            return Ok(Action::requeue(STALLED_REQUEUE));
        }
    };
    status.worker_configuration = Some(config.name_any());
    let queue_url = ready_configuration(&config);
    if queue_url.is_none() && blocked.is_none() {
        // Not ready (no queue yet, or its network or instance types are not
        // right); its reconcile wakes this job when that changes.
        blocked = Some(Problem {
            reason: "WaitingForWorkerConfiguration",
            message: format!(
                "waiting for WorkerConfiguration {:?}: {}",
                config.name_any(),
                not_ready_message(&config)
            ),
        });
    }
    if let (Some(problem), true) = (&blocked, status.workers.is_empty()) {
        finalize_status(job, &mut status, None, now);
        let desired = vec![
            DesiredCondition::new(READY, false, problem.reason, problem.message.clone()),
            DesiredCondition::new(RECONCILING, true, problem.reason, problem.message.clone()),
        ];
        status.conditions =
            conditions::merge(&status.conditions, &desired, job.meta().generation, now);
        if old.as_ref() != Some(&status) {
            write_status(api, job, &status, ctx).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(30)));
    }

    // 1. Plan a worker for every resource that has none.
    if blocked.is_none() {
        plan_workers(job, &config, &uid, &mut status, ctx, now).await?;
    }
    status.start_time.get_or_insert(Time(now));

    // 2. Apply what the workers reported.
    let pending = ctx.reports.pending(&uid);
    let mut settled: Vec<Receipt> = Vec::new();
    for (msg, receipt) in &pending {
        let before = status
            .workers
            .iter()
            .find(|w| w.resource == msg.resource)
            .map(|w| w.phase);
        match apply_message(&mut status.workers, msg, now) {
            Applied::NotYet => continue,
            Applied::Stale => {}
            Applied::Changed => {
                if let Some(after) = status.workers.iter().find(|w| w.resource == msg.resource) {
                    worker_event(job, before, after, ctx).await;
                }
            }
        }
        settled.push(receipt.clone());
    }

    // 2b. A volume restore ends with the volume, made from the snapshot the
    // worker wrote, in the worker's account.
    match job.restore_mode() {
        Some(RestoreMode::Volume) => restore_volumes(job, &config, &mut status, ctx, now).await?,
        Some(RestoreMode::Full) => restore_instances(job, &mut status, ctx, now).await?,
        _ => {}
    }

    // 2c. A file-level session the user marked finished ends now: its
    // worker counts as done and is terminated below.
    if job.finish_requested() {
        for w in status.workers.iter_mut().filter(|w| !w.phase.is_finished()) {
            w.phase = Phase::Succeeded;
            w.reason = None;
            w.finished_time = Some(Time(now));
            w.message = Some(format!(
                "session ended: the job was annotated {}=true",
                crate::names::FINISH_SESSION_ANNOTATION
            ));
        }
    }

    // 3. Deadline, suspension, and workers that went silent or died.
    let deadline = lifecycle::deadline_passed(
        status.start_time.as_ref(),
        job.active_deadline_seconds(),
        now,
    );
    let timeout = Duration::from_secs(config.spec.heartbeat_timeout_seconds.max(1) as u64);
    let observed = observe_instances(job, &status, ctx).await?;
    let redelivery_settled = Duration::try_from(now.duration_since(ctx.started_at))
        .unwrap_or_default()
        >= REDELIVERY_WINDOW;
    for i in 0..status.workers.len() {
        let before = status.workers[i].phase;
        let w = &mut status.workers[i];
        if w.phase.is_finished() {
            continue;
        }
        if deadline {
            let secs = job.active_deadline_seconds().unwrap_or_default();
            mark_failed(
                w,
                DEADLINE_EXCEEDED,
                &format!("the job ran longer than activeDeadlineSeconds ({secs} s)"),
                now,
            );
        } else if job.suspended() {
            w.phase = Phase::Suspended;
        } else {
            let state = w
                .instance_id
                .as_ref()
                .and_then(|id| observed.as_ref().and_then(|o| o.get(id)))
                .map(|o| o.state.as_str());
            // Right after a restart, messages that were in flight come back
            // only after the visibility timeout: a finished worker's
            // instance may already be terminated while its "completed" is
            // still on its way. Judge by instance state only after that.
            let state = state.filter(|_| redelivery_settled);
            let heard = lifecycle::last_heard(
                w,
                ctx.reports.last_heard(&uid, &w.resource, w.attempt),
                ctx.started_at,
            );
            if let Some(why) = lifecycle::lost_reason(w, state, heard, timeout, now) {
                mark_failed(w, WORKER_LOST, &why, now);
            }
        }
        let after = status.workers[i].clone();
        worker_event(job, Some(before), &after, ctx).await;
    }

    // 4. Terminate every worker that is done or suspended, at once.
    terminate_finished(job, &mut status, ctx).await?;

    // 5. Replace failed workers within the backoff limit; resume suspended ones.
    for w in status.workers.iter_mut() {
        let resumable = w.phase == Phase::Suspended
            && !job.suspended()
            && (w.instance_id.is_none() || w.terminated_time.is_some());
        if !deadline && !job.suspended() && lifecycle::should_retry(w, job.backoff_limit()) {
            let note = format!(
                "{}; launching attempt {} ({} of {} retries used)",
                w.message.as_deref().unwrap_or("failed"),
                w.attempt + 1,
                w.failures,
                job.backoff_limit()
            );
            next_attempt(w, &uid);
            w.message = Some(note.clone());
            ctx.event(
                job,
                EventType::Normal,
                "WorkerRetried",
                "RetryWorker",
                format!("{}: {note}", w.resource),
            )
            .await;
        } else if resumable {
            next_attempt(w, &uid);
            w.message = Some("resumed".to_string());
        }
    }

    // 6. Record launch tokens before anything is launched.
    finalize_status(job, &mut status, None, now);
    if old.as_ref() != Some(&status) {
        write_status(api, job, &status, ctx).await?;
        crate::faults::crash_point("after-token-write");
    }
    let recorded = status.clone();

    // 7. Launch (or adopt) every planned worker that has no instance yet.
    match (&blocked, &queue_url) {
        (None, Some(queue_url)) if !job.suspended() => {
            launch_workers(
                job,
                &config,
                queue_url,
                &mut status,
                ctx,
                started,
                &recorded_tokens,
            )
            .await?;
        }
        (Some(problem), _) if problem.reason == "WorkerConfigurationDeleting" => {
            // Nothing will ever launch it: the configuration is going away.
            for w in status
                .workers
                .iter_mut()
                .filter(|w| w.phase == Phase::Provisioning && w.instance_id.is_none())
            {
                mark_failed(
                    w,
                    "WorkerConfigurationDeleted",
                    &problem.message,
                    Timestamp::now(),
                );
            }
        }
        _ => {}
    }

    finalize_status(job, &mut status, None, Timestamp::now());
    let waiting_to_launch = status
        .workers
        .iter()
        .any(|w| w.phase == Phase::Provisioning && w.instance_id.is_none());
    if let (Some(problem), true, false) = (&blocked, waiting_to_launch, status.phase.is_finished())
    {
        let desired = [
            DesiredCondition::new(READY, false, problem.reason, problem.message.clone()),
            DesiredCondition::new(RECONCILING, true, problem.reason, problem.message.clone()),
        ];
        status.conditions = conditions::merge(
            &status.conditions,
            &desired,
            job.meta().generation,
            Timestamp::now(),
        );
    }
    if status != recorded {
        write_status(api, job, &status, ctx).await?;
        crate::faults::crash_point("after-status-write");
    }
    ctx.reports.settle(&uid, &settled);
    delete_receipts(&ctx.aws, &settled).await;

    if status.phase.is_finished() {
        finished(job, &status, ctx).await;
        return expire(job, api, &status, Timestamp::now()).await;
    }
    Ok(Action::requeue(next_wakeup(
        job, &status, timeout, ctx, &uid,
    )))
}

/// Creates the volume of every succeeded restore worker that has none yet.
async fn restore_volumes<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    status: &mut BackupJobStatus,
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for w in status.workers.iter_mut() {
        if w.phase != Phase::Succeeded || w.restored_volume_id.is_some() {
            continue;
        }
        let Some(snapshot) = w.restored_snapshot_id.clone() else {
            let message = "the worker finished without naming the snapshot it restored into";
            mark_failed(w, "VolumeCreateFailed", message, now);
            continue;
        };
        let subnet_zone = config.status.as_ref().and_then(|s| {
            s.subnets
                .iter()
                .find(|n| Some(&n.subnet_id) == w.subnet_id.as_ref())
                .and_then(|n| n.availability_zone.clone())
        });
        let Some(zone) = job.zone().map(String::from).or(subnet_zone) else {
            let message = "no availability zone for the volume: set spec.availabilityZone";
            mark_failed(w, "VolumeCreateFailed", message, now);
            continue;
        };
        let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
        // Tender never deletes a restored volume.
        let tags = restored_tags(job, w);
        match aws
            .create_volume_from_snapshot(&w.region, &snapshot, &zone, &tags, &w.launch_token)
            .await
        {
            Ok(volume) => {
                ctx.event(
                    job,
                    EventType::Normal,
                    "VolumeRestored",
                    "RestoreVolume",
                    format!(
                        "created volume {volume} in {zone} from snapshot {snapshot} ({})",
                        w.resource
                    ),
                )
                .await;
                w.message = Some(format!(
                    "restored {} into volume {volume} ({zone}) from snapshot {snapshot}",
                    w.resource
                ));
                w.restored_volume_id = Some(volume);
            }
            Err(e) if matches!(e.category(), "AwsThrottled" | "AwsUnreachable") => {
                return Err(e.into());
            }
            Err(e) => {
                let message = format!(
                    "{e}; the restored snapshot {snapshot} is kept: create the volume from it by hand, or fix the cause and create a new RestoreJob"
                );
                mark_failed(w, "VolumeCreateFailed", &message, now);
            }
        }
    }
    Ok(())
}

/// Tags of what a restore creates for the user (a volume, an instance): it
/// carries Tender's tag (the policies let Tender create only what does) but
/// never this cluster's ID, so no sweep ever takes it.
fn restored_tags<K: WorkerJob>(job: &K, w: &WorkerStatus) -> Vec<(String, String)> {
    use crate::names::tags;
    vec![
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::NAME.to_string(), format!("restore of {}", w.resource)),
        (
            tags::NAMESPACE.to_string(),
            job.namespace().unwrap_or_default(),
        ),
        (tags::JOB_KIND.to_string(), K::KIND.to_string()),
        (tags::JOB_NAME.to_string(), job.name_any()),
        (tags::JOB_UID.to_string(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.to_string(), w.resource.clone()),
    ]
}

/// A full restore ends with an instance: an AMI registered from the
/// snapshots the worker wrote, and an instance launched from it in the
/// worker's subnet, in the worker's account.
async fn restore_instances<K: WorkerJob>(
    job: &K,
    status: &mut BackupJobStatus,
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for w in status.workers.iter_mut() {
        if w.phase != Phase::Succeeded || w.restored_instance_id.is_some() {
            continue;
        }
        if w.restored_snapshots.is_empty() {
            let message = "the worker finished without naming the snapshots it restored into";
            mark_failed(w, "InstanceRestoreFailed", message, now);
            continue;
        }
        let (Some(instance_type), Some(subnet)) =
            (job.restored_instance_type(), w.subnet_id.clone())
        else {
            mark_failed(
                w,
                "InstanceRestoreFailed",
                "no instanceType or subnet for the restored instance",
                now,
            );
            continue;
        };
        let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
        let snapshots: Vec<(String, String)> = w
            .restored_snapshots
            .iter()
            .map(|s| (s.device.clone(), s.snapshot_id.clone()))
            .collect();
        let uid = job.uid().unwrap_or_default();
        let outcome = async {
            let image = match &w.restored_image_id {
                Some(image) => image.clone(),
                None => {
                    let name = format!(
                        "tender-restore-{}-{}",
                        job.name_any(),
                        &uid[..uid.len().min(8)]
                    );
                    let description = format!("Tender restore of {}", w.resource);
                    aws.register_restored_image(&w.region, &name, &description, &snapshots)
                        .await?
                }
            };
            w.restored_image_id = Some(image.clone());
            let groups = job.restored_security_groups();
            let tags = restored_tags(job, w);
            let token = format!("{}-restored", w.launch_token);
            let instance = aws
                .launch_restored_instance(&crate::aws::instances::RestoredInstanceLaunch {
                    region: &w.region,
                    image_id: &image,
                    instance_type,
                    subnet_id: &subnet,
                    security_group_ids: &groups,
                    tags: &tags,
                    client_token: &token,
                })
                .await?;
            Ok::<(String, String), crate::aws::AwsError>((image, instance))
        }
        .await;
        match outcome {
            Ok((image, instance)) => {
                let note = format!(
                    "restored {} as instance {instance} ({instance_type}, {subnet}) from image {image}",
                    w.resource
                );
                ctx.event(
                    job,
                    EventType::Normal,
                    "InstanceRestored",
                    "RestoreInstance",
                    note.clone(),
                )
                .await;
                w.message = Some(note);
                w.restored_instance_id = Some(instance);
            }
            Err(e) if matches!(e.category(), "AwsThrottled" | "AwsUnreachable") => {
                return Err(e.into());
            }
            Err(e) => {
                let message = format!(
                    "{e}; the restored snapshots are kept ({}): fix the cause and create a new RestoreJob",
                    snapshots
                        .iter()
                        .map(|(d, s)| format!("{d} {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                mark_failed(w, "InstanceRestoreFailed", &message, now);
            }
        }
    }
    Ok(())
}

/// When to look at an unfinished job again if nothing wakes it sooner:
/// the next worker's heartbeat deadline, the job's deadline, or the
/// safety interval.
fn next_wakeup<K: WorkerJob>(
    job: &K,
    status: &BackupJobStatus,
    timeout: Duration,
    ctx: &Context,
    uid: &str,
) -> Duration {
    let now = Timestamp::now();
    let mut wake = SAFETY_REQUEUE;
    if status
        .workers
        .iter()
        .any(|w| w.phase == Phase::Provisioning && w.instance_id.is_none())
    {
        // Queued behind maxConcurrentWorkers, or no subnet had room.
        wake = QUEUED_RECHECK;
    }
    for w in status
        .workers
        .iter()
        .filter(|w| matches!(w.phase, Phase::Provisioning | Phase::Running))
    {
        let heard = lifecycle::last_heard(
            w,
            ctx.reports.last_heard(uid, &w.resource, w.attempt),
            ctx.started_at,
        );
        let silent = Duration::try_from(now.duration_since(heard)).unwrap_or_default();
        wake = wake.min(timeout.saturating_sub(silent));
    }
    let since_start = Duration::try_from(now.duration_since(ctx.started_at)).unwrap_or_default();
    if since_start < REDELIVERY_WINDOW
        && status
            .workers
            .iter()
            .any(|w| w.instance_id.is_some() && w.terminated_time.is_none())
    {
        wake = wake.min(REDELIVERY_WINDOW - since_start);
    }
    if let (Some(start), Some(secs)) = (&status.start_time, job.active_deadline_seconds()) {
        let elapsed = Duration::try_from(now.duration_since(start.0)).unwrap_or_default();
        wake = wake.min(Duration::from_secs(secs.max(0) as u64).saturating_sub(elapsed));
    }
    wake.max(Duration::from_millis(500)) + super::jitter(Duration::from_millis(250))
}

/// The shared view of the region's worker instances, when any worker of
/// this job has a live instance to check.
async fn observe_instances<K: WorkerJob>(
    job: &K,
    status: &BackupJobStatus,
    ctx: &Context,
) -> Result<Option<RegionInstances>> {
    let Some(w) = status
        .workers
        .iter()
        .find(|w| w.instance_id.is_some() && w.terminated_time.is_none())
    else {
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
fn job_access<K: WorkerJob>(job: &K, role: Option<&AccountAccess>) -> Access {
    Access::new(
        role,
        &[&job.namespace().unwrap_or_default(), &job.name_any()],
    )
}

async fn plan_workers<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    uid: &str,
    status: &mut BackupJobStatus,
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for resource in job.targets() {
        if status.workers.iter().any(|w| w.resource == resource.id) {
            continue;
        }
        let attempt = 1;
        let mut worker = WorkerStatus {
            resource: resource.id.clone(),
            region: config.spec.region.clone(),
            attempt,
            launch_token: placement::launch_token(uid, &resource.id, attempt),
            ..Default::default()
        };
        let production = ctx
            .aws
            .scoped(&job_access(job, config.spec.production_account.as_ref()))
            .await;
        // Where the source is and how big: an instance's zone and volumes,
        // or a snapshot (regional: any zone will do). A restore point is in
        // the repository, which only the worker reads: its worker goes to
        // the zone the restored volume needs.
        let source = match resource.kind {
            TargetKind::Instance => production
                .describe_source_instance(&resource.region, &resource.id)
                .await?
                .map(|s| (s.availability_zone, s.total_ebs_gib))
                .ok_or(("SourceInstanceNotFound", "instance")),
            TargetKind::Snapshot => {
                match production
                    .describe_snapshot(&resource.region, &resource.id)
                    .await?
                {
                    Some(s) if s.state == "error" => {
                        Err(("SourceSnapshotFailed", "completed snapshot"))
                    }
                    Some(s) => Ok((None, s.volume_size_gib)),
                    None => Err(("SourceSnapshotNotFound", "snapshot")),
                }
            }
            TargetKind::RestorePoint => Ok((job.zone().map(String::from), 0)),
        };
        match source {
            Err((reason, what)) => {
                let message = format!(
                    "{what} {} does not exist in {}; check spec.resources",
                    resource.id, resource.region
                );
                mark_failed(&mut worker, reason, &message, now);
                ctx.event(job, EventType::Warning, reason, "PlanWorker", message)
                    .await;
            }
            Ok((availability_zone, total_ebs_gib)) => {
                let subnets = config
                    .status
                    .as_ref()
                    .map(|s| s.subnets.as_slice())
                    .unwrap_or_default();
                let subnet = placement::subnet_candidates(subnets, availability_zone.as_deref())
                    .into_iter()
                    .next()
                    .ok_or(Error::MissingObjectKey(
                        "subnets in the WorkerConfiguration's status",
                    ))?;
                worker.phase = Phase::Provisioning;
                worker.zone = availability_zone.clone();
                worker.access = config.spec.worker_access().cloned();
                let types = config.spec.instance_types.as_ref();
                worker.instance_type = Some(match K::OPERATION {
                    Operation::Backup => placement::backup_instance_type(types, total_ebs_gib),
                    Operation::Restore if job.restore_mode() == Some(RestoreMode::FileLevel) => {
                        types
                            .and_then(|t| t.file_level_recovery.clone())
                            .unwrap_or_else(|| {
                                placement::DEFAULT_FILE_LEVEL_INSTANCE_TYPE.to_string()
                            })
                    }
                    Operation::Restore => types
                        .and_then(|t| t.restore.clone())
                        .unwrap_or_else(|| placement::DEFAULT_RESTORE_INSTANCE_TYPE.to_string()),
                });
                worker.subnet_id = Some(subnet.subnet_id);
                worker.placement = Some(subnet.reason);
            }
        }
        status.workers.push(worker);
    }
    Ok(())
}

/// Why a configuration is not ready for backup workers, for people.
fn not_ready_message(config: &WorkerConfiguration) -> String {
    let Some(status) = config.status.as_ref() else {
        return "it has not been reconciled yet".into();
    };
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let ready = condition(READY).filter(|c| c.status != "True");
    let network =
        condition("NetworkReady").filter(|_| status.missing_endpoints.contains_key("backup"));
    match (ready, network) {
        (Some(c), _) | (None, Some(c)) => c.message.clone(),
        (None, None) => "its worker queue is not there yet".into(),
    }
}

/// A configuration's queue URL when it is ready for backup workers.
fn ready_configuration(config: &WorkerConfiguration) -> Option<String> {
    let status = config.status.as_ref()?;
    let ready = conditions::is_true(&status.conditions, READY);
    let network_ok = !status.missing_endpoints.contains_key("backup");
    (ready && network_ok)
        .then(|| status.queue_url.clone())
        .flatten()
}

/// Live workers of a configuration, and workers of older unfinished jobs
/// still waiting to launch, as this controller knows them.
fn configuration_load<K: WorkerJob>(
    ctx: &Context,
    config: &WorkerConfiguration,
    me: &K,
) -> (usize, usize) {
    let name = config.name_any();
    let me_key = (
        me.meta().creation_timestamp.clone().map(|t| t.0),
        me.name_any(),
    );
    let (mut active, mut waiting_ahead) = (0, 0);
    // Backups and restores share the configuration's workers.
    let jobs: Vec<JobView> = ctx
        .jobs
        .state()
        .iter()
        .map(|j| JobView::of(&**j, ctx))
        .chain(ctx.restores.state().iter().map(|j| JobView::of(&**j, ctx)))
        .collect();
    for job in jobs {
        if job.namespace != me.namespace() {
            continue;
        }
        let Some(status) = job.status else {
            continue;
        };
        if status.worker_configuration.as_deref() != Some(name.as_str()) {
            continue;
        }
        active += status
            .workers
            .iter()
            .filter(|w| w.instance_id.is_some() && w.terminated_time.is_none())
            .count();
        let older = job.key < me_key;
        if older && job.uid != me.uid() && !status.phase.is_finished() && !job.suspended {
            waiting_ahead += status
                .workers
                .iter()
                .filter(|w| w.phase == Phase::Provisioning && w.instance_id.is_none())
                .count();
        }
    }
    (active, waiting_ahead)
}

/// What `configuration_load` needs of a job of any kind.
struct JobView {
    namespace: Option<String>,
    key: (Option<Timestamp>, String),
    uid: Option<String>,
    status: Option<BackupJobStatus>,
    suspended: bool,
}

impl JobView {
    fn of<K: WorkerJob>(job: &K, ctx: &Context) -> Self {
        Self {
            namespace: job.namespace(),
            key: (
                job.meta().creation_timestamp.clone().map(|t| t.0),
                job.name_any(),
            ),
            uid: job.uid(),
            status: baseline(job, ctx),
            suspended: job.suspended(),
        }
    }
}

async fn launch_workers<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    queue_url: &str,
    status: &mut BackupJobStatus,
    ctx: &Context,
    reconcile_started: Instant,
    recorded_tokens: &HashSet<String>,
) -> Result<()> {
    let waiting: Vec<usize> = (0..status.workers.len())
        .filter(|&i| {
            status.workers[i].phase == Phase::Provisioning
                && status.workers[i].instance_id.is_none()
        })
        .collect();
    if waiting.is_empty() {
        status.queue_position = None;
        return Ok(());
    }
    // With maxConcurrentWorkers, one launch decision at a time per
    // configuration, so that concurrent reconciles never exceed it together.
    // Without a limit, jobs launch in parallel.
    let lock = config
        .spec
        .max_concurrent_workers
        .map(|_| ctx.launch_lock(&config.uid().unwrap_or_default()));
    let _guard = match &lock {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let (allowed, position) = match config.spec.max_concurrent_workers {
        Some(max) => {
            let (active, ahead) = configuration_load(ctx, config, job);
            let mine_active = status
                .workers
                .iter()
                .filter(|w| w.instance_id.is_some() && w.terminated_time.is_none())
                .count();
            // `active` was counted from what was last written; this job's own
            // workers are counted from its newest state instead.
            let others = active.saturating_sub(
                baseline(job, ctx)
                    .map(|s| {
                        s.workers
                            .iter()
                            .filter(|w| w.instance_id.is_some() && w.terminated_time.is_none())
                            .count()
                    })
                    .unwrap_or(0),
            );
            placement::launch_allowance(Some(max), others + mine_active, ahead, waiting.len())
        }
        None => (waiting.len(), None),
    };
    status.queue_position = position.map(|p| p as i32);
    let now = Timestamp::now();
    for &i in waiting.iter().take(allowed) {
        let w = &status.workers[i];
        // A worker launched with this token by an earlier reconcile whose
        // status write is lost (a crash) or not yet visible is adopted, not
        // launched again. The view must be newer than this reconcile. A
        // token this reconcile recorded first (not in the status it started
        // from, which holds this process's own last write) was never
        // launched with: no view is needed, and a wave of new jobs does not
        // wait for one (EC2's ClientToken covers the rest).
        let access = job_access(job, w.access.as_ref());
        let aws = ctx.aws.scoped(&access).await;
        let recorded_before = recorded_tokens.contains(w.launch_token.as_str());
        let view = if recorded_before {
            ctx.instances
                .snapshot(&aws, access.account_key(), &w.region, reconcile_started)
                .await?
        } else {
            RegionInstances::default()
        };
        if let Some(found) = view.values().find(|o| {
            o.tags.get(crate::names::tags::LAUNCH_TOKEN) == Some(&w.launch_token) && o.is_live()
        }) {
            info!(
                instance_id = found.instance_id,
                resource = w.resource,
                "adopting a worker launched with this token"
            );
            ctx.event(job, EventType::Normal, "WorkerAdopted", "LaunchWorker", format!(
                "worker {} for {} was already launched with this attempt's token; adopted it instead of launching another",
                found.instance_id, w.resource
            ))
            .await;
            let w = &mut status.workers[i];
            w.instance_id = Some(found.instance_id.clone());
            w.instance_state = Some(found.state.clone());
            w.launch_time = Some(Time(found.launch_time.unwrap_or(now)));
            continue;
        }
        let session = match job.restore_mode() {
            Some(RestoreMode::FileLevel) => Some(ensure_session(job, ctx).await?),
            _ => None,
        };
        if let Some((secret, _)) = &session {
            status.workers[i].session_secret = Some(secret.clone());
        }
        launch_one(
            job,
            config,
            queue_url,
            &mut status.workers[i],
            ctx,
            reconcile_started,
            session.map(|(_, task)| task),
        )
        .await?;
    }
    Ok(())
}

/// The Secret with a file-level recovery session's token (created once per
/// job, owned by it so that it goes with it) and what the worker needs of
/// it: the token's SHA-256, never the token.
async fn ensure_session<K: WorkerJob>(job: &K, ctx: &Context) -> Result<(String, FileLevelTask)> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let job_name = job.name_any();
    let name = format!(
        "{}-session-{}",
        &job_name[..job_name.len().min(230)],
        &uid[..uid.len().min(8)]
    );
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token = match secrets.get_opt(&name).await? {
        Some(found) => found
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .ok_or(Error::MissingObjectKey("token in the session Secret"))?,
        None => {
            let token = random_token()?;
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [(crate::names::tags::JOB_NAME.to_string(), job_name.clone())].into(),
                    ),
                    owner_references: Some(vec![OwnerReference {
                        api_version: K::api_version(&()).to_string(),
                        kind: K::kind(&()).to_string(),
                        name: job_name.clone(),
                        uid: uid.clone(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]),
                    ..Default::default()
                },
                string_data: Some([("token".to_string(), token.clone())].into()),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match secrets.create(&Default::default(), &secret).await {
                Ok(_) => token,
                // Created by a reconcile that raced this one: use its token.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Box::pin(ensure_session(job, ctx)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let token_sha256 = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((
        name,
        FileLevelTask {
            port: 443,
            token_sha256,
            idle_timeout_seconds: job.idle_timeout_minutes().max(1) as u64 * 60,
            // The bucket's region defaults to the region restored into.
            restore_to: job.restore_files_to().map(|r| {
                let region = job.targets().first().map(|t| t.region.clone());
                r.location(region.as_deref().unwrap_or_default())
            }),
        },
    ))
}

/// 32 random bytes, hex.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|_| Error::MissingObjectKey("randomness from /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Launches one worker, trying its subnets in order while they report no
/// capacity or no free address; the worker's `placement` says what happened.
async fn launch_one<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    queue_url: &str,
    w: &mut WorkerStatus,
    ctx: &Context,
    reconcile_started: Instant,
    session: Option<FileLevelTask>,
) -> Result<()> {
    let subnets = config
        .status
        .as_ref()
        .map(|s| s.subnets.as_slice())
        .unwrap_or_default();
    let mut candidates = placement::subnet_candidates(subnets, w.zone.as_deref());
    if candidates.is_empty() {
        let message = "the WorkerConfiguration has no subnet to launch in".to_string();
        mark_failed(w, "LaunchFailed", &message, Timestamp::now());
        return Ok(());
    }
    // The planned subnet first, if it is still configured.
    if let Some(pos) = candidates
        .iter()
        .position(|c| Some(&c.subnet_id) == w.subnet_id.as_ref())
    {
        let planned = candidates.remove(pos);
        candidates.insert(0, planned);
    }
    // The worker is launched, and later terminated, through the role
    // recorded when it was planned.
    let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
    let mut skipped: Vec<String> = Vec::new();
    for candidate in candidates {
        w.subnet_id = Some(candidate.subnet_id.clone());
        let launch = worker_launch(job, config, w, queue_url, ctx, session.clone())?;
        match aws.launch_worker(&launch).await {
            Ok(instance) => {
                crate::faults::crash_point("after-run-instances");
                ctx.metrics
                    .workers_launched
                    .get_or_create(&WorkerLabels {
                        region: launch.region.clone(),
                        profile: "backup".into(),
                    })
                    .inc();
                ctx.metrics
                    .launch_latency
                    .observe(reconcile_started.elapsed().as_secs_f64());
                w.placement = Some(if skipped.is_empty() {
                    candidate.reason.clone()
                } else {
                    format!("{}; {}", skipped.join("; "), candidate.reason)
                });
                ctx.event(
                    job,
                    EventType::Normal,
                    "WorkerLaunched",
                    "LaunchWorker",
                    format!(
                        "launched worker {} ({}, {}) for {} (attempt {})",
                        instance.instance_id,
                        launch.instance_type,
                        launch.subnet_id,
                        w.resource,
                        w.attempt
                    ),
                )
                .await;
                w.instance_id = Some(instance.instance_id);
                w.instance_state = Some(instance.state);
                w.launch_time = Some(Time(Timestamp::now()));
                w.message = None;
                return Ok(());
            }
            Err(e) if e.code().is_some_and(placement::is_capacity_error) => {
                let note = format!(
                    "{} had no room for {} ({})",
                    candidate.subnet_id,
                    launch.instance_type,
                    e.code().unwrap_or_default()
                );
                ctx.event(
                    job,
                    EventType::Warning,
                    "SubnetSkipped",
                    "LaunchWorker",
                    format!("{}: {note}; trying the next subnet", w.resource),
                )
                .await;
                skipped.push(note);
            }
            Err(e) if e.code().is_some_and(placement::is_stale_network_error) => {
                // The subnet or group went away under the configuration; its
                // next check picks what exists now. Try again then.
                w.message = Some(format!(
                    "{e}; waiting for the WorkerConfiguration's network to be checked again"
                ));
                ctx.event(
                    job,
                    EventType::Warning,
                    "NetworkChanged",
                    "LaunchWorker",
                    w.message.clone().unwrap_or_default(),
                )
                .await;
                return Ok(());
            }
            Err(e) if matches!(e.category(), "AwsThrottled" | "AwsUnreachable") => {
                // Worth retrying as is; the status keeps the token, so the
                // retry cannot launch twice.
                return Err(e.into());
            }
            Err(e) => {
                let message = format!("{e}; fix the WorkerConfiguration and create a new job");
                mark_failed(w, "LaunchFailed", &message, Timestamp::now());
                ctx.event(
                    job,
                    EventType::Warning,
                    "LaunchFailed",
                    "LaunchWorker",
                    message,
                )
                .await;
                return Ok(());
            }
        }
    }
    // No subnet had room: stay Provisioning and try again later.
    w.message = Some(format!(
        "no configured subnet has room now: {}; retrying",
        skipped.join("; ")
    ));
    Ok(())
}

/// Events and metrics of a job that just finished.
async fn finished<K: WorkerJob>(job: &K, status: &BackupJobStatus, ctx: &Context) {
    // Its assumed-role sessions are not needed any more.
    ctx.aws.forget_session(&job_access(job, None).session_name);
    let (type_, reason) = match status.phase {
        Phase::Succeeded => (EventType::Normal, "JobSucceeded"),
        Phase::PartiallySucceeded => (EventType::Warning, "JobPartiallySucceeded"),
        _ => (EventType::Warning, "JobFailed"),
    };
    let outcome = OutcomeLabels {
        outcome: format!("{:?}", status.phase),
    };
    ctx.metrics.jobs_finished.get_or_create(&outcome).inc();
    if let (Some(start), Some(end)) = (&status.start_time, &status.completion_time) {
        let secs = end.0.duration_since(start.0).as_secs_f64();
        ctx.metrics
            .job_duration
            .get_or_create(&outcome)
            .observe(secs.max(0.0));
    }
    ctx.event(
        job,
        type_,
        reason,
        "FinishJob",
        lifecycle::summary(&status.workers, job.targets().len()),
    )
    .await;
    info!(phase = ?status.phase, "job finished");
}

/// Deletes a finished job once `ttlSecondsAfterFinished` has passed, or
/// says when to come back for it.
async fn expire<K: WorkerJob>(
    job: &K,
    api: &Api<K>,
    status: &BackupJobStatus,
    now: Timestamp,
) -> Result<Action> {
    let (Some(ttl), Some(done)) = (job.ttl_seconds_after_finished(), &status.completion_time)
    else {
        return Ok(Action::await_change());
    };
    let age = now.duration_since(done.0).as_secs();
    if age < ttl {
        return Ok(Action::requeue(Duration::from_secs(
            (ttl - age).max(1) as u64
        )));
    }
    info!(ttl, "deleting the finished job (ttlSecondsAfterFinished)");
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &params).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// The configured security groups, else the one Tender manages.
fn security_groups(config: &WorkerConfiguration) -> Vec<String> {
    if !config.spec.security_group_ids.is_empty() {
        return config.spec.security_group_ids.clone();
    }
    config
        .status
        .as_ref()
        .and_then(|s| s.managed_security_group_id.clone())
        .into_iter()
        .collect()
}

fn worker_launch<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    worker: &WorkerStatus,
    queue_url: &str,
    ctx: &Context,
    file_level: Option<FileLevelTask>,
) -> Result<WorkerLaunch> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let job_name = job.name_any();
    let config_name = config.name_any();
    let resource_region = job
        .targets()
        .into_iter()
        .find(|r| r.id == worker.resource)
        .map(|r| r.region)
        .unwrap_or_else(|| worker.region.clone());
    let owner = WorkerOwner {
        cluster_id: &ctx.cluster_id,
        namespace: &ns,
        job_kind: K::KIND,
        job_name: &job_name,
        job_uid: &uid,
        resource: &worker.resource,
        attempt: worker.attempt,
        launch_token: &worker.launch_token,
        operation: K::OPERATION.as_str(),
        configuration: &config_name,
    };
    let task = WorkerTask {
        version: PROTOCOL_VERSION,
        operation: K::OPERATION,
        namespace: ns.clone(),
        job_name: job_name.clone(),
        job_uid: uid.clone(),
        resource: worker.resource.clone(),
        resource_region,
        attempt: worker.attempt,
        queue_url: queue_url.to_string(),
        queue_region: config.spec.region.clone(),
        heartbeat_seconds: ctx.heartbeat_seconds,
        // A worker in the backup account reads production through its role.
        source_access: match config.spec.account {
            WorkerAccount::Backup => config.spec.production_account.clone(),
            WorkerAccount::Production => None,
        },
        repository: job.repository().map(|r| r.location(&config.spec.region)),
        restore_point: (K::OPERATION == Operation::Restore).then(|| worker.resource.clone()),
        device: job.device().map(String::from),
        all_volumes: job.restore_mode() == Some(RestoreMode::Full),
        file_level,
    };
    Ok(WorkerLaunch {
        region: config.spec.region.clone(),
        image_id: config
            .status
            .as_ref()
            .and_then(|s| s.image_id.clone())
            .ok_or(Error::MissingObjectKey(
                "status.imageId of the WorkerConfiguration",
            ))?,
        instance_type: worker.instance_type.clone().unwrap_or_default(),
        subnet_id: worker.subnet_id.clone().unwrap_or_default(),
        security_group_ids: security_groups(config),
        assign_public_ip: config.spec.assign_public_ip && !config.spec.private_network,
        iam_instance_profile: config.spec.iam_instance_profile.clone(),
        root_device_name: config.spec.root_volume.device_name.clone(),
        root_size_gib: config.spec.root_volume.size_gib,
        root_kms_key_id: config.spec.root_volume.kms_key_id.clone(),
        launch_token: worker.launch_token.clone(),
        tags: placement::worker_tags(&owner, &config.spec.tags),
        user_data: task.user_data()?,
    })
}

/// Instance IDs of workers grouped by the region and role they run under.
fn group_by_account(workers: &[&WorkerStatus]) -> Vec<(RegionAccount, Vec<String>)> {
    let mut groups: Vec<(RegionAccount, Vec<String>)> = Vec::new();
    for w in workers {
        let Some(id) = &w.instance_id else { continue };
        let key = (w.region.clone(), w.access.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ids)) => ids.push(id.clone()),
            None => groups.push((key, vec![id.clone()])),
        }
    }
    groups
}

/// Terminates the instances of workers that are finished or suspended and
/// not terminated yet.
async fn terminate_finished<K: WorkerJob>(
    job: &K,
    status: &mut BackupJobStatus,
    ctx: &Context,
) -> Result<()> {
    let done: Vec<&WorkerStatus> = status
        .workers
        .iter()
        .filter(|w| w.phase.is_finished() || w.phase == Phase::Suspended)
        .filter(|w| w.instance_id.is_some() && w.terminated_time.is_none())
        .collect();
    let groups = group_by_account(&done);
    for ((region, role), ids) in groups {
        let access = job_access(job, role.as_ref());
        let aws = ctx.aws.scoped(&access).await;
        // Instances the shared view already shows going or gone (terminated
        // before a restart, say) are recorded, not terminated again.
        let view = ctx
            .instances
            .recent(&aws, access.account_key(), &region)
            .await?;
        let (gone, ids): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| {
            view.get(id)
                .is_some_and(|o| matches!(o.state.as_str(), "shutting-down" | "terminated"))
        });
        let mut states = aws.terminate_workers(&region, &ids).await?;
        crate::faults::crash_point("after-terminate-instances");
        states.extend(gone.into_iter().filter_map(|id| {
            view.get(&id)
                .map(|o| crate::aws::instances::WorkerInstance {
                    instance_id: id.clone(),
                    state: o.state.clone(),
                })
        }));
        let now = Timestamp::now();
        ctx.metrics
            .workers_terminated
            .get_or_create(&RegionLabels {
                region: region.clone(),
            })
            .inc_by(states.len() as u64);
        for state in states {
            if let Some(w) = status
                .workers
                .iter_mut()
                .find(|w| w.instance_id.as_deref() == Some(state.instance_id.as_str()))
            {
                if let Some(done) = &w.finished_time {
                    let secs = now.duration_since(done.0).as_secs_f64();
                    ctx.metrics.termination_latency.observe(secs.max(0.0));
                }
                w.terminated_time = Some(Time(now));
                w.instance_state = Some(state.state.clone());
            }
            ctx.event(
                job,
                EventType::Normal,
                "WorkerTerminated",
                "TerminateWorker",
                format!("terminated worker {} ({})", state.instance_id, state.state),
            )
            .await;
        }
    }
    Ok(())
}

/// Deleting a job: terminate every worker it has, including any launched
/// but never recorded (found by the job-UID tag in the shared view). Holds
/// the deletion, with condition `InstanceTerminating`, until EC2 reports
/// every one of them shutting down, terminated or gone. `None` when nothing
/// holds the deletion any more.
async fn terminate_for_deletion<K: WorkerJob>(
    job: &K,
    api: &Api<K>,
    ctx: &Context,
) -> Result<Option<Action>> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let old = baseline(job, ctx);
    let mut status = old.clone().unwrap_or_default();
    let mut accounts: Vec<RegionAccount> = Vec::new();
    for w in &status.workers {
        let key = (w.region.clone(), w.access.clone());
        if !accounts.contains(&key) {
            accounts.push(key);
        }
    }
    let mut waiting: Vec<String> = Vec::new();
    for (region, role) in accounts {
        let access = job_access(job, role.as_ref());
        let aws = ctx.aws.scoped(&access).await;
        let view = ctx
            .instances
            .snapshot(&aws, access.account_key(), &region, Instant::now())
            .await?;
        let mut ids: Vec<String> = status
            .workers
            .iter()
            .filter(|w| w.region == region && w.access == role)
            .filter_map(|w| w.instance_id.clone())
            .filter(|id| view.get(id).is_some_and(|o| o.is_live()))
            .collect();
        for o in view.values() {
            if o.is_live()
                && o.tags.get(crate::names::tags::JOB_UID) == Some(&uid)
                && !ids.contains(&o.instance_id)
            {
                ids.push(o.instance_id.clone());
            }
        }
        if ids.is_empty() {
            continue;
        }
        let states = aws.terminate_workers(&region, &ids).await?;
        let now = Timestamp::now();
        for s in &states {
            if let Some(w) = status
                .workers
                .iter_mut()
                .find(|w| w.instance_id.as_deref() == Some(s.instance_id.as_str()))
            {
                w.terminated_time.get_or_insert(Time(now));
                w.instance_state = Some(s.state.clone());
            }
            if !matches!(s.state.as_str(), "shutting-down" | "terminated") {
                waiting.push(s.instance_id.clone());
            }
        }
        warn!(
            count = states.len(),
            "terminated the workers of a deleted job"
        );
        ctx.event(
            job,
            EventType::Normal,
            "WorkersTerminated",
            "DeleteJob",
            format!(
                "terminated {} worker(s) before deleting the job: {}",
                states.len(),
                ids.join(", ")
            ),
        )
        .await;
    }
    if waiting.is_empty() {
        return Ok(None);
    }
    let message = format!("waiting for EC2 to terminate {}", waiting.join(", "));
    let desired = [
        DesiredCondition::new(
            "InstanceTerminating",
            true,
            "InstanceTerminating",
            message.clone(),
        ),
        DesiredCondition::new(READY, false, "InstanceTerminating", message),
    ];
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        job.meta().generation,
        Timestamp::now(),
    );
    if old.as_ref() != Some(&status) {
        write_status(api, job, &status, ctx).await?;
    }
    Ok(Some(Action::requeue(TERMINATION_RECHECK)))
}

/// The last step of deletion, once every worker is gone: forget the job.
async fn cleanup<K: WorkerJob>(job: &K, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    let receipts = ctx.reports.forget(&uid);
    delete_receipts(&ctx.aws, &receipts).await;
    ctx.aws.forget_session(&job_access(job, None).session_name);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BackupJob, BackupJobSpec, BackupResource, LocalObjectReference, WorkerConfigurationSpec,
        WorkerSubnet,
    };

    fn config(name: &str, ns: &str, region: &str) -> Arc<WorkerConfiguration> {
        let mut c = WorkerConfiguration::new(
            name,
            WorkerConfigurationSpec {
                region: region.into(),
                subnets: vec![WorkerSubnet {
                    subnet_id: "subnet-aaaaaaaa".into(),
                    availability_zone: None,
                }],
                security_group_ids: vec!["sg-aaaaaaaa".into()],
                image_id: Some("ami-aaaaaaaa".into()),
                image_ssm_parameter: None,
                account: Default::default(),
                backup_account: None,
                production_account: None,
                iam_instance_profile: None,
                instance_types: None,
                tags: Default::default(),
                heartbeat_timeout_seconds: 300,
                file_level_recovery_cidrs: Vec::new(),
                assign_public_ip: false,
                private_network: false,
                root_volume: Default::default(),
                max_concurrent_workers: None,
            },
        );
        c.metadata.namespace = Some(ns.into());
        Arc::new(c)
    }

    fn job(reference: Option<&str>, regions: &[&str]) -> BackupJob {
        let mut j = BackupJob::new(
            "job",
            BackupJobSpec {
                worker_configuration_ref: reference
                    .map(|n| LocalObjectReference { name: n.into() }),
                resources: regions
                    .iter()
                    .enumerate()
                    .map(|(i, r)| BackupResource {
                        instance_id: Some(format!("i-0000000{i}")),
                        snapshot_id: None,
                        region: (*r).into(),
                    })
                    .collect(),
                repository: Some(crate::api::Repository {
                    bucket: "backups".into(),
                    prefix: String::new(),
                    region: None,
                }),
                backoff_limit: 2,
                active_deadline_seconds: None,
                ttl_seconds_after_finished: None,
                suspend: false,
            },
        );
        j.metadata.namespace = Some("ns".into());
        j
    }

    #[test]
    fn a_job_stored_before_repositories_loads_and_stalls_with_a_reason() {
        // What an older Tender stored: no spec.repository.
        let stored = serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": "old", "namespace": "ns"},
            "spec": {"resources": [{"instanceId": "i-00000001", "region": "us-east-1"}]}
        });
        let job: BackupJob = serde_json::from_value(stored).expect("it still loads");
        let configs = vec![config("east", "ns", "us-east-1")];
        let problem = choose_configuration(&job, &configs).expect_err("no repository");
        assert_eq!(problem.reason, "RepositoryMissing");
        assert!(problem.message.contains("spec.repository"));
    }

    #[test]
    fn configuration_by_reference_or_by_region() {
        let configs = vec![
            config("east", "ns", "us-east-1"),
            config("west", "ns", "us-west-2"),
            config("east", "other", "us-east-1"),
        ];
        let chosen = choose_configuration(&job(None, &["us-west-2"]), &configs).expect("chosen");
        assert_eq!(chosen.name_any(), "west");
        let chosen =
            choose_configuration(&job(Some("east"), &["us-east-1"]), &configs).expect("chosen");
        assert_eq!(chosen.namespace().as_deref(), Some("ns"));
        let missing = choose_configuration(&job(Some("nope"), &["us-east-1"]), &configs)
            .expect_err("missing");
        assert_eq!(missing.reason, "WorkerConfigurationNotFound");
        let none = choose_configuration(&job(None, &["eu-west-1"]), &configs).expect_err("none");
        assert_eq!(none.reason, "WorkerConfigurationNotFound");
        assert!(none.message.contains("eu-west-1"));
        let mismatch = choose_configuration(&job(Some("east"), &["us-west-2"]), &configs)
            .expect_err("mismatch");
        assert_eq!(mismatch.reason, "RegionMismatch");
    }

    #[test]
    fn two_configurations_for_one_region_are_ambiguous() {
        let configs = vec![
            config("a", "ns", "us-east-1"),
            config("b", "ns", "us-east-1"),
        ];
        let err =
            choose_configuration(&job(None, &["us-east-1"]), &configs).expect_err("ambiguous");
        assert_eq!(err.reason, "WorkerConfigurationAmbiguous");
        let err = choose_configuration(&job(None, &["us-east-1", "us-west-2"]), &configs)
            .expect_err("ambiguous");
        assert_eq!(err.reason, "WorkerConfigurationAmbiguous");
    }
}
