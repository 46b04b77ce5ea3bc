//! Worker reports, applied to a job's status: the messages the queue pumps
//! filed for the job (see `controller::reports`), and the Event of every
//! worker phase change.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::core::{self, Applied};
use super::kind::WorkerJob;
use crate::api::{JobStatus, Phase, WorkerStatus};
use crate::controller::Context;
use crate::controller::events;
use crate::controller::reports::Receipt;
use crate::reasons::FailureReason;

/// Applies every message filed for the job that can be applied now, and
/// returns the receipts of those to delete from SQS once the status is
/// written (applied or stale). A message for a worker not recorded as
/// launched yet stays filed.
pub async fn apply_pending<K: WorkerJob>(
    job: &K,
    uid: &str,
    status: &mut JobStatus<K::Worker>,
    ctx: &Context,
    now: Timestamp,
) -> Vec<Receipt> {
    let mut settled = Vec::new();
    for (msg, receipt) in ctx.reports.pending(uid) {
        let Some(w) = status
            .workers
            .iter_mut()
            .find(|w| w.resource == msg.resource)
        else {
            settled.push(receipt);
            continue;
        };
        let before = w.phase;
        match core::apply_message(w, &msg, now) {
            Applied::NotYet => continue,
            Applied::Stale => {}
            Applied::Changed => {
                K::record(w, &msg.event);
                worker_event(job, Some(before), w, ctx).await;
            }
        }
        settled.push(receipt);
    }
    settled
}

/// Publishes the Event of a worker's phase change, if it changed.
pub async fn worker_event<K: WorkerJob>(
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
    let failure = after.reason.as_deref().map(FailureReason::parse);
    let (type_, reason) = match (after.phase, &failure) {
        (
            Phase::Failed,
            Some(r @ (FailureReason::WorkerLost | FailureReason::DeadlineExceeded)),
        ) => (EventType::Warning, r.as_str()),
        (Phase::Failed, _) => (EventType::Warning, events::WORKER_FAILED),
        (Phase::Succeeded, _) => (EventType::Normal, events::WORKER_SUCCEEDED),
        (Phase::Running, _) => (EventType::Normal, events::WORKER_STARTED),
        (Phase::Suspended, _) => (EventType::Normal, events::WORKER_SUSPENDED),
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
