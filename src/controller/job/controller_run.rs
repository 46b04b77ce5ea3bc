//! Targets the controller works on itself, with no worker instance (see
//! [`WorkerJob::runs_on_controller`]): an RDS snapshot, whose copying RDS
//! does. Their entries in `status.workers` go Provisioning → Running →
//! Succeeded or Failed like a worker's, so the job's phase, conditions,
//! deadline, suspension, retries and TTL treat them alike; only the steps
//! differ: [`WorkerJob::advance`] instead of a launch and messages.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::core::{self, mark_failed};
use super::kind::{Advance, ControllerStep, WorkerJob};
use crate::api::{JobStatus, Phase};
use crate::controller::{Context, Error, Result, events};

/// How soon a step that met a transient AWS error is tried again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(15);

/// Starts the controller-run entries that wait (planned, retried or
/// resumed): they have nothing to launch. A suspended job starts nothing.
pub fn start<K: WorkerJob>(job: &K, status: &mut JobStatus<K::Worker>, now: Timestamp) {
    if job.suspended() {
        return;
    }
    for w in status.workers.iter_mut() {
        if job.runs_on_controller(&w.resource) && w.phase == Phase::Provisioning {
            w.phase = Phase::Running;
            w.started_time = Some(Time(now));
        }
    }
}

/// One step of each running controller-run entry; returns when to look
/// again, if any entry still waits. Past the deadline, or while suspended,
/// nothing moves: the lifecycle fails or suspends them.
pub async fn advance_all<K: WorkerJob>(
    job: &K,
    step: &ControllerStep<'_>,
    status: &mut JobStatus<K::Worker>,
    ctx: &Context,
) -> Result<Option<Duration>> {
    let deadline_passed = core::deadline_passed(
        status.start_time.as_ref(),
        job.limits().active_deadline_seconds,
        step.now,
    );
    if job.suspended() || deadline_passed {
        return Ok(None);
    }
    let mut wake: Option<Duration> = None;
    for w in status.workers.iter_mut() {
        if !job.runs_on_controller(&w.resource) || w.phase != Phase::Running {
            continue;
        }
        let outcome = match job.advance(w, step, ctx).await {
            Ok(outcome) => outcome,
            Err(Error::Aws(e)) if e.is_transient() => {
                w.message = Some(format!("{e}; trying again"));
                Advance::Wait {
                    recheck: TRANSIENT_RETRY,
                }
            }
            Err(Error::Aws(e)) => Advance::Failed {
                reason: e.failure_reason(),
                message: e.to_string(),
            },
            Err(e) => return Err(e),
        };
        match outcome {
            Advance::Wait { recheck } => {
                wake = Some(wake.map_or(recheck, |w| w.min(recheck)));
            }
            Advance::Done => {
                w.phase = Phase::Succeeded;
                w.reason = None;
                w.finished_time = Some(Time(step.now));
                w.progress_percent = Some(100);
                let note = format!(
                    "{} (attempt {}): {}",
                    w.resource,
                    w.attempt,
                    w.message.as_deref().unwrap_or("done")
                );
                ctx.event(
                    job,
                    EventType::Normal,
                    events::WORKER_SUCCEEDED,
                    "FollowDatabase",
                    note,
                )
                .await;
            }
            Advance::Failed { reason, message } => {
                mark_failed(w, &reason, &message, step.now);
                let note = format!("{} (attempt {}): {message}", w.resource, w.attempt);
                ctx.event(
                    job,
                    EventType::Warning,
                    reason.as_str(),
                    "FollowDatabase",
                    note,
                )
                .await;
            }
        }
    }
    Ok(wake)
}
