//! Where a job's status is read from and written to, and what happens once
//! a job has finished (its Events and metrics, then its TTL).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::core;
use super::kind::WorkerJob;
use crate::api::{JobStatus, Phase};
use crate::controller::events;
use crate::controller::{Context, Result, apply_status};
use crate::telemetry::OutcomeLabels;

/// The status this controller last wrote to each job of one kind, by UID.
/// The controller is the only writer of a job's status, so what it wrote
/// last is newer than anything its watch cache may still show.
pub struct Written<S>(Mutex<HashMap<String, S>>);

impl<S> Default for Written<S> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<S: Clone> Written<S> {
    pub fn get(&self, uid: &str) -> Option<S> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    fn insert(&self, uid: String, status: S) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, status);
    }

    pub fn remove(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

/// The status to start from: what this controller wrote last, else what
/// the watch cache shows.
pub fn baseline<K: WorkerJob>(job: &K, ctx: &Context) -> Option<JobStatus<K::Worker>> {
    let uid = job.uid()?;
    K::written(ctx)
        .get(&uid)
        .or_else(|| job.job_status().cloned())
}

/// Writes the job's status, remembers it, and tells the worker index.
pub async fn write_status<K: WorkerJob>(
    api: &Api<K>,
    job: &K,
    status: &JobStatus<K::Worker>,
    ctx: &Context,
) -> Result<()> {
    apply_status(api, job, status, &ctx.metrics).await?;
    if let Some(uid) = job.uid() {
        K::written(ctx).insert(uid, status.clone());
    }
    super::admission::record_written(ctx, job, status);
    Ok(())
}

/// Events and metrics of a job that just finished.
pub async fn finished<K: WorkerJob>(job: &K, status: &JobStatus<K::Worker>, ctx: &Context) {
    // Its assumed-role sessions are not needed any more.
    ctx.aws
        .forget_session(&super::job_access(job, None).session_name);
    let (type_, reason) = match status.phase {
        Phase::Succeeded => (EventType::Normal, events::JOB_SUCCEEDED),
        Phase::PartiallySucceeded => (EventType::Warning, events::JOB_PARTIALLY_SUCCEEDED),
        _ => (EventType::Warning, events::JOB_FAILED),
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
    let summary = core::summary(&status.workers, job.targets().len());
    ctx.event(job, type_, reason, "FinishJob", summary).await;
    info!(phase = ?status.phase, "job finished");
}

/// Deletes a finished job once `ttlSecondsAfterFinished` has passed, or
/// says when to come back for it.
pub async fn expire<K: WorkerJob>(
    job: &K,
    api: &Api<K>,
    status: &JobStatus<K::Worker>,
    now: Timestamp,
) -> Result<Action> {
    let (Some(ttl), Some(done)) = (
        job.limits().ttl_seconds_after_finished,
        &status.completion_time,
    ) else {
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
