//! BackupJob reconciler: resolve the configuration, launch one worker per
//! resource (crash-safe), apply the workers' messages, terminate each worker
//! the moment it is done, and write what happened to status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::reports::{Receipt, delete_receipts};
use super::{Context, Error, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{BackupJob, BackupJobStatus, Phase, WorkerConfiguration, WorkerStatus};
use crate::aws::instances::WorkerLaunch;
use crate::messages::{Operation, PROTOCOL_VERSION, WorkerEvent, WorkerMessage, WorkerTask};
use crate::names::JOB_FINALIZER;
use crate::placement::{self, WorkerOwner};

/// How often an unfinished job is looked at even when nothing happens
/// (worker messages wake it much sooner).
const SAFETY_REQUEUE: Duration = Duration::from_secs(300);
/// How often a job that waits for a fix is looked at again.
const STALLED_REQUEUE: Duration = Duration::from_secs(60);

#[instrument(skip_all, fields(namespace = job.namespace().unwrap_or_default(), job = job.name_any()))]
pub async fn reconcile(job: Arc<BackupJob>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let action = finalizer(&api, JOB_FINALIZER, job, |event| async {
        match event {
            FinalizerEvent::Apply(job) => apply(&job, &api, &ctx).await,
            FinalizerEvent::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    })
    .await?;
    ctx.reset_backoff(&uid);
    Ok(action)
}

/// Why a job cannot use any configuration right now.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigurationProblem {
    pub reason: &'static str,
    pub message: String,
}

/// Picks the configuration a job uses: the one it names, else the only one
/// of its namespace for its resources' region.
pub fn choose_configuration<'a>(
    job: &BackupJob,
    candidates: &'a [Arc<WorkerConfiguration>],
) -> Result<&'a Arc<WorkerConfiguration>, ConfigurationProblem> {
    let ns = job.namespace().unwrap_or_default();
    let in_ns = || {
        candidates
            .iter()
            .filter(move |c| c.namespace().as_deref() == Some(ns.as_str()))
    };
    let chosen = if let Some(reference) = &job.spec.worker_configuration_ref {
        in_ns()
            .find(|c| c.name_any() == reference.name)
            .ok_or_else(|| ConfigurationProblem {
                reason: "WorkerConfigurationNotFound",
                message: format!(
                    "WorkerConfiguration {:?} does not exist in this namespace; create it or fix spec.workerConfigurationRef",
                    reference.name
                ),
            })?
    } else {
        let mut regions: Vec<&str> = job
            .spec
            .resources
            .iter()
            .map(|r| r.region.as_str())
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let [region] = regions[..] else {
            return Err(ConfigurationProblem {
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
                return Err(ConfigurationProblem {
                    reason: "WorkerConfigurationNotFound",
                    message: format!(
                        "no WorkerConfiguration for region {region} in this namespace; create one or set spec.workerConfigurationRef"
                    ),
                });
            }
            _ => {
                return Err(ConfigurationProblem {
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
        return Err(ConfigurationProblem {
            reason: "WorkerConfigurationDeleting",
            message: format!(
                "WorkerConfiguration {:?} is being deleted; no new workers are launched with it",
                chosen.name_any()
            ),
        });
    }
    if let Some(r) = job
        .spec
        .resources
        .iter()
        .find(|r| r.region != chosen.spec.region)
    {
        return Err(ConfigurationProblem {
            reason: "RegionMismatch",
            message: format!(
                "resource {} is in {} but WorkerConfiguration {:?} launches workers in {}; use a configuration for that region",
                r.instance_id,
                r.region,
                chosen.name_any(),
                chosen.spec.region
            ),
        });
    }
    Ok(chosen)
}

/// What applying one message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The worker's status changed.
    Changed,
    /// Nothing to change (duplicate, older, other attempt, heartbeat).
    Stale,
    /// The worker is not recorded as launched yet; keep the message.
    NotYet,
}

/// Applies one worker message to the matching worker entry. Idempotent: a
/// message at or below `lastSequence`, or for a finished worker, changes
/// nothing.
pub fn apply_message(workers: &mut [WorkerStatus], msg: &WorkerMessage, now: Timestamp) -> Applied {
    let Some(w) = workers.iter_mut().find(|w| w.resource == msg.resource) else {
        return Applied::Stale;
    };
    if msg.attempt != w.attempt {
        return Applied::Stale;
    }
    match &w.instance_id {
        None => return Applied::NotYet,
        Some(id) if *id != msg.instance_id => return Applied::Stale,
        Some(_) => {}
    }
    if w.phase.is_finished() || msg.sequence <= w.last_sequence {
        return Applied::Stale;
    }
    let now = Time(now);
    match &msg.event {
        // Liveness only: writing status per heartbeat would cost a write
        // every few seconds per worker for nothing a person reads.
        WorkerEvent::Heartbeat => return Applied::Stale,
        WorkerEvent::Started => {
            w.phase = Phase::Running;
            w.started_time.get_or_insert(now);
        }
        WorkerEvent::Progress { percent, detail } => {
            w.phase = Phase::Running;
            w.started_time.get_or_insert(now);
            w.progress_percent = Some((*percent).clamp(0, 100));
            w.message = Some(detail.clone());
        }
        WorkerEvent::Completed { detail } => {
            w.phase = Phase::Succeeded;
            w.progress_percent = Some(100);
            w.message = Some(detail.clone());
            w.finished_time = Some(now);
        }
        WorkerEvent::Failed { reason, message } => {
            w.phase = Phase::Failed;
            w.message = Some(format!("{reason}: {message}"));
            w.finished_time = Some(now);
        }
    }
    w.last_sequence = msg.sequence;
    Applied::Changed
}

/// The job's phase from its workers' phases.
pub fn job_phase(workers: &[WorkerStatus], resources: usize) -> Phase {
    if workers.is_empty() {
        return Phase::Pending;
    }
    if workers.len() == resources && workers.iter().all(|w| w.phase.is_finished()) {
        let succeeded = workers
            .iter()
            .filter(|w| w.phase == Phase::Succeeded)
            .count();
        return match succeeded {
            n if n == workers.len() => Phase::Succeeded,
            0 => Phase::Failed,
            _ => Phase::PartiallySucceeded,
        };
    }
    if workers.iter().any(|w| w.phase == Phase::Running) {
        Phase::Running
    } else if workers.iter().any(|w| w.phase == Phase::Provisioning) {
        Phase::Provisioning
    } else {
        Phase::Pending
    }
}

/// The conditions of a job in `phase`, with `stalled` when it waits for a fix.
fn job_conditions(
    phase: Phase,
    stalled: Option<&ConfigurationProblem>,
    summary: &str,
) -> Vec<DesiredCondition> {
    let phase_name = format!("{phase:?}");
    let mut out = vec![DesiredCondition::new(
        READY,
        phase == Phase::Succeeded,
        phase_name.clone(),
        summary,
    )];
    if let Some(problem) = stalled {
        out[0] = DesiredCondition::new(READY, false, problem.reason, problem.message.clone());
        out.push(DesiredCondition::new(
            STALLED,
            true,
            problem.reason,
            problem.message.clone(),
        ));
    } else if matches!(phase, Phase::Failed | Phase::PartiallySucceeded) {
        out.push(DesiredCondition::new(STALLED, true, phase_name, summary));
    } else if !phase.is_finished() {
        out.push(DesiredCondition::new(
            RECONCILING,
            true,
            phase_name,
            summary,
        ));
    }
    out
}

fn summary(workers: &[WorkerStatus], resources: usize) -> String {
    let count = |p: Phase| workers.iter().filter(|w| w.phase == p).count();
    let failed: Vec<String> = workers
        .iter()
        .filter(|w| w.phase == Phase::Failed)
        .map(|w| {
            format!(
                "{}: {}",
                w.resource,
                w.message.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    let mut s = format!(
        "{} of {} resources succeeded, {} running, {} provisioning, {} failed",
        count(Phase::Succeeded),
        resources,
        count(Phase::Running),
        count(Phase::Provisioning),
        count(Phase::Failed)
    );
    if !failed.is_empty() {
        s.push_str(&format!(" ({})", failed.join("; ")));
    }
    s
}

fn finalize_status(
    job: &BackupJob,
    status: &mut BackupJobStatus,
    stalled: Option<&ConfigurationProblem>,
    now: Timestamp,
) {
    let resources = job.spec.resources.len();
    status.phase = job_phase(&status.workers, resources);
    status.active_workers = status
        .workers
        .iter()
        .filter(|w| w.instance_id.is_some() && w.terminated_time.is_none())
        .count() as i32;
    if status.phase.is_finished() && status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
    let text = summary(&status.workers, resources);
    let desired = job_conditions(status.phase, stalled, &text);
    status.conditions =
        conditions::merge(&status.conditions, &desired, job.metadata.generation, now);
    status.observed_generation = job.metadata.generation;
}

/// Writes the job's status and remembers it: the controller is the only
/// writer of a job's status, so what it wrote last is newer than anything
/// its watch cache may still show.
async fn write_status(
    api: &Api<BackupJob>,
    job: &BackupJob,
    status: &BackupJobStatus,
    ctx: &Context,
) -> Result<()> {
    apply_status(api, job, status).await?;
    if let Some(uid) = job.uid() {
        ctx.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, status.clone());
    }
    Ok(())
}

async fn write_if_changed(
    api: &Api<BackupJob>,
    job: &BackupJob,
    old: &Option<BackupJobStatus>,
    new: &BackupJobStatus,
    ctx: &Context,
) -> Result<()> {
    if old.as_ref() != Some(new) {
        write_status(api, job, new, ctx).await?;
    }
    Ok(())
}

async fn apply(job: &BackupJob, api: &Api<BackupJob>, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let ns = job.namespace().unwrap_or_default();
    // What this controller wrote last beats a watch cache that may lag.
    let old = ctx
        .written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .cloned()
        .or_else(|| job.status.clone());
    let mut status = old.clone().unwrap_or_default();
    let now = Timestamp::now();

    // A finished job only makes sure its workers are gone.
    if status.phase.is_finished() {
        terminate_finished(job, &mut status, ctx).await?;
        finalize_status(job, &mut status, None, now);
        write_if_changed(api, job, &old, &status, ctx).await?;
        return Ok(Action::await_change());
    }

    let configs = ctx.configurations.state();
    let config = match choose_configuration(job, &configs) {
        Ok(c) => c.clone(),
        Err(problem) => {
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
    let Some(queue_url) = config.status.as_ref().and_then(|s| s.queue_url.clone()) else {
        // The configuration's queue is not there yet; its reconcile wakes us.
        status.worker_configuration = Some(config.name_any());
        let problem = ConfigurationProblem {
            reason: "WaitingForWorkerConfiguration",
            message: format!(
                "WorkerConfiguration {:?} is not ready yet (no worker queue)",
                config.name_any()
            ),
        };
        finalize_status(job, &mut status, None, now);
        let desired = vec![
            DesiredCondition::new(READY, false, problem.reason, problem.message.clone()),
            DesiredCondition::new(RECONCILING, true, problem.reason, problem.message),
        ];
        status.conditions =
            conditions::merge(&status.conditions, &desired, job.metadata.generation, now);
        write_if_changed(api, job, &old, &status, ctx).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    status.worker_configuration = Some(config.name_any());

    // 1. Plan a worker for every resource that has none, and record its
    // launch token before anything is launched.
    let mut planned = false;
    for resource in &job.spec.resources {
        if status
            .workers
            .iter()
            .any(|w| w.resource == resource.instance_id)
        {
            continue;
        }
        let attempt = 1;
        let mut worker = WorkerStatus {
            resource: resource.instance_id.clone(),
            region: config.spec.region.clone(),
            attempt,
            launch_token: placement::launch_token(&uid, &resource.instance_id, attempt),
            ..Default::default()
        };
        match ctx
            .aws
            .describe_source_instance(&resource.region, &resource.instance_id)
            .await?
        {
            None => {
                worker.phase = Phase::Failed;
                worker.message = Some(format!(
                    "SourceInstanceNotFound: instance {} does not exist in {}; check spec.resources",
                    resource.instance_id, resource.region
                ));
                worker.finished_time = Some(Time(now));
                ctx.event(
                    job,
                    EventType::Warning,
                    "SourceInstanceNotFound",
                    "PlanWorker",
                    worker.message.clone().unwrap_or_default(),
                )
                .await;
            }
            Some(source) => {
                let subnet = placement::choose_subnet(
                    &config.spec.subnets,
                    source.availability_zone.as_deref(),
                )
                .ok_or(Error::MissingObjectKey(
                    "spec.subnets of the WorkerConfiguration",
                ))?;
                worker.phase = Phase::Provisioning;
                worker.instance_type = Some(placement::backup_instance_type(
                    config.spec.instance_types.as_ref(),
                    source.total_ebs_gib,
                ));
                worker.subnet_id = Some(subnet.subnet_id);
                worker.placement = Some(subnet.reason);
            }
        }
        status.workers.push(worker);
        planned = true;
    }
    if planned {
        status.start_time.get_or_insert(Time(now));
        finalize_status(job, &mut status, None, now);
        write_status(api, job, &status, ctx).await?;
    }
    let recorded = status.clone();

    // 2. Launch (or adopt) every planned worker that has no instance yet.
    for i in 0..status.workers.len() {
        let w = &status.workers[i];
        if w.phase != Phase::Provisioning || w.instance_id.is_some() {
            continue;
        }
        let region = w.region.clone();
        let token = w.launch_token.clone();
        if let Some(found) = ctx
            .aws
            .find_worker_by_launch_token(&region, &ctx.cluster_id, &token)
            .await?
        {
            // Launched by an earlier reconcile whose status write this one
            // does not see (a restart, or a cache that lags the write).
            info!(
                instance_id = found.instance_id,
                resource = w.resource,
                "adopting a worker launched with this token"
            );
            ctx.event(job, EventType::Normal, "WorkerAdopted", "LaunchWorker", format!(
                "worker {} for {} was already launched with this attempt's token; adopted it instead of launching another",
                found.instance_id, w.resource
            )).await;
            let w = &mut status.workers[i];
            w.instance_id = Some(found.instance_id);
            w.instance_state = Some(found.state);
            w.launch_time.get_or_insert(Time(now));
            continue;
        }
        let launch = worker_launch(job, &config, &status.workers[i], &queue_url, ctx)?;
        match ctx.aws.launch_worker(&launch).await {
            Ok(instance) => {
                let w = &mut status.workers[i];
                ctx.event(
                    job,
                    EventType::Normal,
                    "WorkerLaunched",
                    "LaunchWorker",
                    format!(
                        "launched worker {} ({}, {}) for {}",
                        instance.instance_id, launch.instance_type, launch.subnet_id, w.resource
                    ),
                )
                .await;
                w.instance_id = Some(instance.instance_id);
                w.instance_state = Some(instance.state);
                w.launch_time = Some(Time(now));
            }
            Err(e) if matches!(e.category(), "AwsThrottled" | "AwsUnreachable") => {
                // Worth retrying as is; the status keeps the token, so the
                // retry cannot launch twice.
                return Err(e.into());
            }
            Err(e) => {
                let w = &mut status.workers[i];
                w.phase = Phase::Failed;
                w.message = Some(format!(
                    "LaunchFailed: {e}; fix the WorkerConfiguration and create a new job"
                ));
                w.finished_time = Some(Time(now));
                ctx.event(
                    job,
                    EventType::Warning,
                    "LaunchFailed",
                    "LaunchWorker",
                    w.message.clone().unwrap_or_default(),
                )
                .await;
            }
        }
    }

    // 3. Apply what the workers reported.
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
                let after = status.workers.iter().find(|w| w.resource == msg.resource);
                if let Some(after) = after
                    && Some(after.phase) != before
                {
                    let (type_, reason) = match after.phase {
                        Phase::Failed => (EventType::Warning, "WorkerFailed"),
                        Phase::Succeeded => (EventType::Normal, "WorkerSucceeded"),
                        _ => (EventType::Normal, "WorkerStarted"),
                    };
                    let note = format!(
                        "worker {} for {}: {}",
                        msg.instance_id,
                        msg.resource,
                        after.message.as_deref().unwrap_or("started")
                    );
                    ctx.event(job, type_, reason, "ApplyWorkerReport", note)
                        .await;
                }
            }
        }
        settled.push(receipt.clone());
    }

    // 4. Terminate every worker that is done, at once.
    terminate_finished(job, &mut status, ctx).await?;

    finalize_status(job, &mut status, None, now);
    if status != recorded || old.as_ref() != Some(&status) {
        write_status(api, job, &status, ctx).await?;
    }
    ctx.reports.settle(&uid, &settled);
    delete_receipts(&ctx.aws, &settled).await;

    if status.phase.is_finished() && old.as_ref().map(|s| s.phase) != Some(status.phase) {
        let (type_, reason) = match status.phase {
            Phase::Succeeded => (EventType::Normal, "JobSucceeded"),
            Phase::PartiallySucceeded => (EventType::Warning, "JobPartiallySucceeded"),
            _ => (EventType::Warning, "JobFailed"),
        };
        ctx.event(
            job,
            type_,
            reason,
            "FinishJob",
            summary(&status.workers, job.spec.resources.len()),
        )
        .await;
        info!(phase = ?status.phase, namespace = ns, "job finished");
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(SAFETY_REQUEUE))
}

fn worker_launch(
    job: &BackupJob,
    config: &WorkerConfiguration,
    worker: &WorkerStatus,
    queue_url: &str,
    ctx: &Context,
) -> Result<WorkerLaunch> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let job_name = job.name_any();
    let config_name = config.name_any();
    let resource_region = job
        .spec
        .resources
        .iter()
        .find(|r| r.instance_id == worker.resource)
        .map(|r| r.region.clone())
        .unwrap_or_else(|| worker.region.clone());
    let owner = WorkerOwner {
        cluster_id: &ctx.cluster_id,
        namespace: &ns,
        job_kind: "BackupJob",
        job_name: &job_name,
        job_uid: &uid,
        resource: &worker.resource,
        attempt: worker.attempt,
        launch_token: &worker.launch_token,
        operation: Operation::Backup.as_str(),
        configuration: &config_name,
    };
    let task = WorkerTask {
        version: PROTOCOL_VERSION,
        operation: Operation::Backup,
        namespace: ns.clone(),
        job_name: job_name.clone(),
        job_uid: uid.clone(),
        resource: worker.resource.clone(),
        resource_region,
        attempt: worker.attempt,
        queue_url: queue_url.to_string(),
        queue_region: config.spec.region.clone(),
        heartbeat_seconds: ctx.heartbeat_seconds,
    };
    Ok(WorkerLaunch {
        region: config.spec.region.clone(),
        image_id: config.spec.image_id.clone(),
        instance_type: worker.instance_type.clone().unwrap_or_default(),
        subnet_id: worker.subnet_id.clone().unwrap_or_default(),
        security_group_ids: config.spec.security_group_ids.clone(),
        iam_instance_profile: config.spec.iam_instance_profile.clone(),
        launch_token: worker.launch_token.clone(),
        tags: placement::worker_tags(&owner, &config.spec.tags),
        user_data: serde_json::to_string(&task)?,
    })
}

/// Terminates the instances of finished workers that are not terminated yet.
async fn terminate_finished(
    job: &BackupJob,
    status: &mut BackupJobStatus,
    ctx: &Context,
) -> Result<()> {
    let now = Timestamp::now();
    let mut by_region: Vec<(String, Vec<String>)> = Vec::new();
    for w in &status.workers {
        if let (true, Some(id), None) = (w.phase.is_finished(), &w.instance_id, &w.terminated_time)
        {
            match by_region.iter_mut().find(|(r, _)| *r == w.region) {
                Some((_, ids)) => ids.push(id.clone()),
                None => by_region.push((w.region.clone(), vec![id.clone()])),
            }
        }
    }
    for (region, ids) in by_region {
        let states = ctx.aws.terminate_workers(&region, &ids).await?;
        for state in states {
            if let Some(w) = status
                .workers
                .iter_mut()
                .find(|w| w.instance_id.as_deref() == Some(state.instance_id.as_str()))
            {
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
/// but never recorded (found by the job-UID tag), then let it go.
async fn cleanup(job: &BackupJob, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let status = job.status.clone().unwrap_or_default();
    let mut regions: Vec<String> = status.workers.iter().map(|w| w.region.clone()).collect();
    regions.sort();
    regions.dedup();
    for region in regions {
        let mut ids: Vec<String> = status
            .workers
            .iter()
            .filter(|w| w.region == region && w.terminated_time.is_none())
            .filter_map(|w| w.instance_id.clone())
            .collect();
        for found in ctx
            .aws
            .find_workers_of_job(&region, &ctx.cluster_id, &uid)
            .await?
        {
            if !ids.contains(&found.instance_id) {
                ids.push(found.instance_id);
            }
        }
        if !ids.is_empty() {
            let states = ctx.aws.terminate_workers(&region, &ids).await?;
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
    }
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    let receipts = ctx.reports.forget(&uid);
    delete_receipts(&ctx.aws, &receipts).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BackupJobSpec, BackupResource, LocalObjectReference, WorkerConfigurationSpec, WorkerSubnet,
    };

    fn worker(resource: &str, phase: Phase) -> WorkerStatus {
        WorkerStatus {
            resource: resource.into(),
            region: "us-east-1".into(),
            phase,
            attempt: 1,
            launch_token: "tok".into(),
            instance_id: Some(format!("i-{resource}")),
            ..Default::default()
        }
    }

    fn message(resource: &str, sequence: i64, event: WorkerEvent) -> WorkerMessage {
        WorkerMessage {
            version: PROTOCOL_VERSION,
            namespace: "ns".into(),
            job_name: "job".into(),
            job_uid: "uid".into(),
            resource: resource.into(),
            instance_id: format!("i-{resource}"),
            attempt: 1,
            sequence,
            event,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000).expect("valid")
    }

    #[test]
    fn messages_apply_once_and_in_order() {
        let mut workers = vec![worker("a", Phase::Provisioning)];
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), now()),
            Applied::Changed
        );
        assert_eq!(workers[0].phase, Phase::Running);
        // Duplicate.
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), now()),
            Applied::Stale
        );
        let progress = WorkerEvent::Progress {
            percent: 40,
            detail: "volume 1 of 2".into(),
        };
        assert_eq!(
            apply_message(&mut workers, &message("a", 3, progress), now()),
            Applied::Changed
        );
        // Late and out of order: older than what was applied.
        let older = WorkerEvent::Progress {
            percent: 10,
            detail: "old".into(),
        };
        assert_eq!(
            apply_message(&mut workers, &message("a", 2, older), now()),
            Applied::Stale
        );
        assert_eq!(workers[0].progress_percent, Some(40));
        let done = WorkerEvent::Completed {
            detail: "done".into(),
        };
        assert_eq!(
            apply_message(&mut workers, &message("a", 4, done), now()),
            Applied::Changed
        );
        assert_eq!(workers[0].phase, Phase::Succeeded);
        // Nothing changes a finished worker.
        let fail = WorkerEvent::Failed {
            reason: "X".into(),
            message: "late".into(),
        };
        assert_eq!(
            apply_message(&mut workers, &message("a", 9, fail), now()),
            Applied::Stale
        );
        assert_eq!(workers[0].phase, Phase::Succeeded);
    }

    #[test]
    fn messages_wait_for_the_launch_record_and_ignore_other_instances() {
        let mut workers = vec![worker("a", Phase::Provisioning)];
        workers[0].instance_id = None;
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), now()),
            Applied::NotYet
        );
        workers[0].instance_id = Some("i-other".into());
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), now()),
            Applied::Stale
        );
        let mut other_attempt = message("a", 1, WorkerEvent::Started);
        other_attempt.attempt = 2;
        assert_eq!(
            apply_message(&mut workers, &other_attempt, now()),
            Applied::Stale
        );
    }

    #[test]
    fn heartbeats_do_not_write_status() {
        let mut workers = vec![worker("a", Phase::Running)];
        assert_eq!(
            apply_message(
                &mut workers,
                &message("a", 5, WorkerEvent::Heartbeat),
                now()
            ),
            Applied::Stale
        );
        assert_eq!(workers[0].last_sequence, 0);
    }

    #[test]
    fn job_phase_from_workers() {
        assert_eq!(job_phase(&[], 1), Phase::Pending);
        assert_eq!(
            job_phase(&[worker("a", Phase::Provisioning)], 1),
            Phase::Provisioning
        );
        assert_eq!(
            job_phase(
                &[
                    worker("a", Phase::Running),
                    worker("b", Phase::Provisioning)
                ],
                2
            ),
            Phase::Running
        );
        assert_eq!(
            job_phase(&[worker("a", Phase::Succeeded)], 2),
            Phase::Pending
        );
        assert_eq!(
            job_phase(
                &[worker("a", Phase::Succeeded), worker("b", Phase::Succeeded)],
                2
            ),
            Phase::Succeeded
        );
        assert_eq!(
            job_phase(
                &[worker("a", Phase::Succeeded), worker("b", Phase::Failed)],
                2
            ),
            Phase::PartiallySucceeded
        );
        assert_eq!(job_phase(&[worker("a", Phase::Failed)], 1), Phase::Failed);
    }

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
                image_id: "ami-aaaaaaaa".into(),
                iam_instance_profile: None,
                instance_types: None,
                tags: Default::default(),
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
                        instance_id: format!("i-0000000{i}"),
                        region: (*r).into(),
                    })
                    .collect(),
            },
        );
        j.metadata.namespace = Some("ns".into());
        j
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

    #[test]
    fn failed_jobs_are_stalled_and_running_jobs_reconciling() {
        let running = job_conditions(Phase::Running, None, "x");
        assert!(running.iter().any(|c| c.type_ == RECONCILING && c.status));
        let failed = job_conditions(Phase::Failed, None, "x");
        assert!(failed.iter().any(|c| c.type_ == STALLED && c.status));
        let done = job_conditions(Phase::Succeeded, None, "x");
        assert_eq!(done.len(), 1);
        assert!(done[0].status);
    }
}
