//! Where a worker is planned and launched: a worker entry (with its launch
//! token) for every resource that has none, then, once the token is in the
//! job's status, RunInstances in the planned subnet (the next one on a
//! capacity error), or adoption of an instance an earlier reconcile
//! launched with the same token.

use std::collections::HashSet;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::admission;
use super::core::mark_failed;
use super::job_access;
use super::kind::{TaskDetails, WorkerJob};
use crate::api::{JobStatus, JobWorker, Phase, WorkerAccount, WorkerConfiguration, WorkerStatus};
use crate::aws::AwsClients;
use crate::aws::instance_cache::RegionInstances;
use crate::aws::instances::{WorkerInstance, WorkerLaunch};
use crate::controller::agents::AgentDownload;
use crate::controller::events;
use crate::controller::{Context, Error, Result};
use crate::messages::{PROTOCOL_VERSION, WorkerTask};
use crate::mover::manifest::RepositoryLocation;
use crate::placement::{self, WorkerOwner};
use crate::reasons::FailureReason;
use crate::telemetry::WorkerLabels;

/// Plans a worker for every resource of the job that has none: where its
/// source is, its subnet and instance type, and attempt 1's launch token.
/// A resource that cannot be found fails at once, with an Event.
pub async fn plan_workers<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    uid: &str,
    status: &mut JobStatus<K::Worker>,
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for target in job.targets() {
        if status.workers.iter().any(|w| w.resource == target.id) {
            continue;
        }
        let mut worker = WorkerStatus {
            resource: target.id.clone(),
            region: config.spec.region.clone(),
            attempt: 1,
            launch_token: placement::launch_token(uid, &target.id, 1),
            ..Default::default()
        };
        match job.locate(&target, config, ctx).await? {
            Err(missing) if not_visible_yet(job, &missing.reason, now) => {
                // EC2 is eventually consistent: a snapshot or instance
                // created a moment before the job may not be described yet.
                return Err(Error::NotVisibleYet(missing.message));
            }
            Err(missing) => {
                let message = missing.message;
                mark_failed(&mut worker, &missing.reason, &message, now);
                ctx.event(
                    job,
                    EventType::Warning,
                    missing.reason.as_str(),
                    "PlanWorker",
                    message,
                )
                .await;
            }
            Ok(_) if job.runs_on_controller(&target.id) => {
                // Nothing to launch: the controller works on it with the
                // production account's role (see `controller_run`).
                worker.phase = Phase::Provisioning;
                worker.access = config.spec.production_account.clone();
            }
            Ok(located) => {
                let subnets = config
                    .status
                    .as_ref()
                    .map(|s| s.subnets.as_slice())
                    .unwrap_or_default();
                let subnet = placement::subnet_candidates(subnets, located.zone.as_deref())
                    .into_iter()
                    .next()
                    .ok_or(Error::MissingObjectKey(
                        "subnets in the WorkerConfiguration's status",
                    ))?;
                worker.phase = Phase::Provisioning;
                worker.access = config.spec.worker_access().cloned();
                worker.instance_type = Some(job.instance_type(&config.spec, &located));
                worker.zone = located.zone;
                worker.subnet_id = Some(subnet.subnet_id);
                worker.placement = Some(subnet.reason);
            }
        }
        status.workers.push(K::Worker::new(worker));
    }
    Ok(())
}

/// How long after a job's creation a source EC2 says does not exist is
/// taken for one it does not show yet. "Eventual consistency in the Amazon
/// EC2 API" (EC2 API Reference): a resource just created may not be
/// returned by Describe calls at once; a job made together with its
/// snapshot (a pipeline, GitOps) must not fail for that.
pub const SOURCE_VISIBILITY_GRACE_SECONDS: i64 = 60;

/// Whether `reason` (a source not found) may only mean "not visible yet":
/// the job is younger than [`SOURCE_VISIBILITY_GRACE_SECONDS`].
fn not_visible_yet<K: WorkerJob>(job: &K, reason: &FailureReason, now: Timestamp) -> bool {
    let not_found = matches!(
        reason,
        FailureReason::SourceInstanceNotFound
            | FailureReason::SourceSnapshotNotFound
            | FailureReason::SourceDatabaseNotFound
    );
    let created = job.meta().creation_timestamp.as_ref().map(|t| t.0);
    not_found
        && created
            .is_some_and(|c| now.duration_since(c).as_secs() < SOURCE_VISIBILITY_GRACE_SECONDS)
}

/// Launches (or adopts) every planned worker that has no instance yet, as
/// far as the configuration's `maxConcurrentWorkers` allows; the others
/// wait with a queue position. `recorded_tokens` are the launch tokens in
/// the status this reconcile started from.
pub async fn launch_workers<K: WorkerJob>(
    job: &K,
    config: &WorkerConfiguration,
    (queue_url, repository, agent): (&str, &RepositoryLocation, Option<&AgentDownload>),
    status: &mut JobStatus<K::Worker>,
    ctx: &Context,
    reconcile_started: Instant,
    recorded_tokens: &HashSet<String>,
) -> Result<()> {
    let waiting: Vec<usize> = (0..status.workers.len())
        .filter(|&i| status.workers[i].is_waiting_to_launch())
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
    let (allowed, position) = admission::allowance(ctx, config, job, status, waiting.len());
    status.queue_position = position.map(|p| p as i32);
    for &i in waiting.iter().take(allowed) {
        let worker = &mut status.workers[i];
        let access = job_access(job, worker.access.as_ref());
        let aws = ctx.aws.scoped(&access).await;
        // A worker launched with this token by an earlier reconcile whose
        // status write is lost (a crash) or not yet visible is adopted, not
        // launched again. The view must be newer than this reconcile. A
        // token this reconcile recorded first (not in the status it started
        // from, which holds this process's own last write) was never
        // launched with: no view is needed, and a wave of new jobs does not
        // wait for one (EC2's ClientToken covers the rest).
        if recorded_tokens.contains(worker.launch_token.as_str()) {
            let view = ctx
                .instances
                .snapshot(
                    &aws,
                    access.account_key(),
                    &worker.region,
                    reconcile_started,
                )
                .await?;
            if adopt(job, worker, &view, ctx).await {
                continue;
            }
        }
        let details = job.task_details(worker, config, ctx).await?;
        if worker.phase.is_finished() {
            // Found unlaunchable right before the launch: said as a
            // planning failure is.
            let reason = worker.reason.clone().unwrap_or_default();
            let message = worker.message.clone().unwrap_or_default();
            ctx.event(job, EventType::Warning, &reason, "LaunchWorker", message)
                .await;
            continue;
        }
        if let Some(note) = &details.wait {
            worker.message = Some(note.clone());
            continue;
        }
        let launch = Launch {
            config,
            queue_url,
            repository,
            agent,
            aws: &aws,
            reconcile_started,
            details,
        };
        launch_one(job, &launch, worker, ctx).await?;
    }
    // Count what was launched before the lock is released: the next
    // decision must see it even before this job's status is written.
    admission::record_written(ctx, job, status);
    Ok(())
}

/// Adopts a live instance launched with the worker's token, if the view
/// shows one.
async fn adopt<K: WorkerJob>(
    job: &K,
    w: &mut WorkerStatus,
    view: &RegionInstances,
    ctx: &Context,
) -> bool {
    let Some(found) = view.values().find(|o| {
        o.tags.get(crate::names::tags::LAUNCH_TOKEN) == Some(&w.launch_token) && o.is_live()
    }) else {
        return false;
    };
    info!(
        instance_id = found.instance_id,
        resource = w.resource,
        "adopting a worker launched with this token"
    );
    let note = format!(
        "worker {} for {} was already launched with this attempt's token; adopted it instead of launching another",
        found.instance_id, w.resource
    );
    ctx.event(
        job,
        EventType::Normal,
        events::WORKER_ADOPTED,
        "LaunchWorker",
        note,
    )
    .await;
    w.instance_id = Some(found.instance_id.clone());
    w.instance_state = Some(found.state.to_string());
    w.launch_time = Some(Time(found.launch_time.unwrap_or_else(Timestamp::now)));
    true
}

/// What every subnet tried for one worker shares.
struct Launch<'a> {
    config: &'a WorkerConfiguration,
    queue_url: &'a str,
    repository: &'a RepositoryLocation,
    /// Where the worker downloads its agent; `None`: its image carries it.
    agent: Option<&'a AgentDownload>,
    aws: &'a AwsClients,
    reconcile_started: Instant,
    details: TaskDetails,
}

/// What one RunInstances in one subnet came to.
enum SubnetOutcome {
    Launched(WorkerInstance),
    /// No capacity or no address there: try the next subnet.
    NoRoom(String),
    /// Decided for now (failed, or waiting for the network): stop trying.
    Stop,
}

/// Launches one worker, trying its subnets in order while they report no
/// capacity or no free address; the worker's `placement` says what happened.
async fn launch_one<K: WorkerJob>(
    job: &K,
    launch: &Launch<'_>,
    w: &mut WorkerStatus,
    ctx: &Context,
) -> Result<()> {
    let subnets = launch
        .config
        .status
        .as_ref()
        .map(|s| s.subnets.as_slice())
        .unwrap_or_default();
    let mut candidates = placement::subnet_candidates(subnets, w.zone.as_deref());
    if candidates.is_empty() {
        let message = "the WorkerConfiguration has no subnet to launch in".to_string();
        mark_failed(w, FailureReason::LaunchFailed, &message, Timestamp::now());
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
    let mut skipped: Vec<String> = Vec::new();
    for candidate in candidates {
        w.subnet_id = Some(candidate.subnet_id.clone());
        match try_subnet(job, launch, w, ctx).await? {
            SubnetOutcome::Launched(instance) => {
                w.placement = Some(if skipped.is_empty() {
                    candidate.reason.clone()
                } else {
                    format!("{}; {}", skipped.join("; "), candidate.reason)
                });
                w.instance_id = Some(instance.instance_id);
                w.instance_state = Some(instance.state.to_string());
                w.launch_time = Some(Time(Timestamp::now()));
                w.message = None;
                return Ok(());
            }
            SubnetOutcome::NoRoom(note) => skipped.push(note),
            SubnetOutcome::Stop => return Ok(()),
        }
    }
    // No subnet had room: stay Provisioning and try again later.
    w.message = Some(format!(
        "no configured subnet has room now: {}; retrying",
        skipped.join("; ")
    ));
    Ok(())
}

/// RunInstances for one worker in the subnet its status names now.
async fn try_subnet<K: WorkerJob>(
    job: &K,
    launch: &Launch<'_>,
    w: &mut WorkerStatus,
    ctx: &Context,
) -> Result<SubnetOutcome> {
    let spec = match worker_launch(job, launch, w, ctx) {
        Ok(spec) => spec,
        // Never launchable as it is (its task is too large for EC2's user
        // data): fail the worker rather than the reconcile, forever.
        Err(Error::UserData(e)) => {
            mark_failed(
                w,
                FailureReason::LaunchFailed,
                &e.to_string(),
                Timestamp::now(),
            );
            return Ok(SubnetOutcome::Stop);
        }
        Err(e) => return Err(e),
    };
    let e = match launch.aws.instances().launch_worker(&spec).await {
        Ok(instance) => {
            crate::faults::crash_point("after-run-instances");
            record_launch(job, &spec, w, &instance, launch, ctx).await;
            return Ok(SubnetOutcome::Launched(instance));
        }
        Err(e) => e,
    };
    let code = e.code().unwrap_or_default().to_string();
    if placement::is_capacity_error(&code) {
        let note = format!(
            "{} had no room for {} ({code})",
            spec.subnet_id, spec.instance_type
        );
        let message = format!("{}: {note}; trying the next subnet", w.resource);
        ctx.event(
            job,
            EventType::Warning,
            events::SUBNET_SKIPPED,
            "LaunchWorker",
            message,
        )
        .await;
        return Ok(SubnetOutcome::NoRoom(note));
    }
    if placement::is_stale_network_error(&code) {
        // The subnet or group went away under the configuration; its next
        // check picks what exists now. Try again then.
        let message =
            format!("{e}; waiting for the WorkerConfiguration's network to be checked again");
        w.message = Some(message.clone());
        ctx.event(
            job,
            EventType::Warning,
            events::NETWORK_CHANGED,
            "LaunchWorker",
            message,
        )
        .await;
        return Ok(SubnetOutcome::Stop);
    }
    if e.is_transient() {
        // Worth retrying as is; the status keeps the token, so the retry
        // cannot launch twice.
        return Err(e.into());
    }
    let message = format!("{e}; fix the WorkerConfiguration and create a new job");
    mark_failed(w, FailureReason::LaunchFailed, &message, Timestamp::now());
    ctx.event(
        job,
        EventType::Warning,
        events::LAUNCH_FAILED,
        "LaunchWorker",
        message,
    )
    .await;
    Ok(SubnetOutcome::Stop)
}

/// Metrics and the Event of a worker just launched.
async fn record_launch<K: WorkerJob>(
    job: &K,
    spec: &WorkerLaunch,
    w: &WorkerStatus,
    instance: &WorkerInstance,
    launch: &Launch<'_>,
    ctx: &Context,
) {
    let labels = WorkerLabels {
        region: spec.region.clone(),
        profile: job.profile().as_str().into(),
    };
    ctx.metrics.workers_launched.get_or_create(&labels).inc();
    ctx.metrics
        .launch_latency
        .observe(launch.reconcile_started.elapsed().as_secs_f64());
    let note = format!(
        "launched worker {} ({}, {}) for {} (attempt {})",
        instance.instance_id, spec.instance_type, spec.subnet_id, w.resource, w.attempt
    );
    ctx.event(
        job,
        EventType::Normal,
        events::WORKER_LAUNCHED,
        "LaunchWorker",
        note,
    )
    .await;
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

/// The RunInstances request of a worker: its task in the user data, its
/// ownership tags, and the configuration's network and root volume.
fn worker_launch<K: WorkerJob>(
    job: &K,
    launch: &Launch<'_>,
    worker: &WorkerStatus,
    ctx: &Context,
) -> Result<WorkerLaunch> {
    let config = launch.config;
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
    let details = launch.details.clone();
    let task = WorkerTask {
        version: PROTOCOL_VERSION,
        operation: K::OPERATION,
        namespace: ns.clone(),
        job_name: job_name.clone(),
        job_uid: uid.clone(),
        resource: worker.resource.clone(),
        resource_region,
        attempt: worker.attempt,
        queue_url: launch.queue_url.to_string(),
        queue_region: config.spec.region.clone(),
        heartbeat_seconds: ctx.heartbeat_seconds,
        cluster_id: Some(ctx.cluster_id.clone()),
        // A worker in the backup account reads production through its role.
        source_access: match config.spec.account {
            WorkerAccount::Backup => config.spec.production_account.clone(),
            WorkerAccount::Production => None,
        },
        repository: Some(launch.repository.clone()),
        restore_point: details.restore_point,
        device: details.device,
        all_volumes: details.all_volumes,
        file_level: details.file_level,
        policy: details.policy,
        gc_grace_seconds: Some(ctx.gc_grace.as_secs()),
        retention: details.retention,
        database: details.database,
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
        security_group_ids: security_groups(config)
            .into_iter()
            .chain(launch.details.security_groups.iter().cloned())
            .collect(),
        assign_public_ip: public_ip(config, worker.subnet_id.as_deref()),
        // Each operation's own profile, with only its permissions.
        iam_instance_profile: config
            .spec
            .instance_profile(job.profile())
            .map(String::from),
        root_device_name: config.spec.root_volume.device_name.clone(),
        root_size_gib: config.spec.root_volume.size_gib,
        root_kms_key_id: config.spec.root_volume.kms_key_id.clone(),
        launch_token: worker.launch_token.clone(),
        tags: placement::worker_tags(&owner, &config.spec.tags),
        user_data: task.user_data(launch.agent)?,
    })
}

/// Whether a worker in `subnet` gets a public IP: as the configuration says,
/// else as its check found the subnet does by default
/// (`status.publicIpSubnets`).
fn public_ip(config: &WorkerConfiguration, subnet: Option<&str>) -> bool {
    let subnet_maps = config.status.as_ref().is_some_and(|s| {
        s.public_ip_subnets
            .iter()
            .any(|p| Some(p.as_str()) == subnet)
    });
    crate::reachability::public_ip(
        config.spec.assign_public_ip,
        config.spec.private_network,
        subnet_maps,
    )
}
