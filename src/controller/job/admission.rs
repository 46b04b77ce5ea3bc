//! Launch admission under a configuration's `maxConcurrentWorkers`: how
//! many of a job's waiting workers may launch now, from the worker index
//! (see `controller::index`), never by scanning every job.

use kube::ResourceExt;

use super::kind::WorkerJob;
use crate::api::{JobStatus, WorkerConfiguration};
use crate::controller::Context;
use crate::controller::index::{JobEntry, JobIdentity, QueueOrder, WorkerIndex};
use crate::placement;

/// A job's place in its configuration's launch queue.
pub fn queue_order<K: WorkerJob>(job: &K) -> QueueOrder {
    (
        job.meta().creation_timestamp.clone().map(|t| t.0),
        job.name_any(),
        job.uid().unwrap_or_default(),
    )
}

fn identity<K: WorkerJob>(job: &K) -> JobIdentity {
    JobIdentity {
        namespace: job.namespace().unwrap_or_default(),
        display: format!(
            "{} {}/{}",
            K::KIND,
            job.namespace().unwrap_or_default(),
            job.name_any()
        ),
        order: queue_order(job),
        suspended: job.suspended(),
    }
}

/// Tells the index about a job as its watch shows it.
pub fn record_watched<K: WorkerJob>(index: &WorkerIndex, job: &K) {
    if let Some(uid) = job.uid() {
        index.observe_watched(&uid, JobEntry::of(identity(job), job.job_status()));
    }
}

/// Tells the index about a status this controller wrote or is writing.
pub fn record_written<K: WorkerJob>(ctx: &Context, job: &K, status: &JobStatus<K::Worker>) {
    if let Some(uid) = job.uid() {
        ctx.workers
            .observe_written(&uid, JobEntry::of(identity(job), Some(status)));
    }
}

/// How many of the job's `waiting` workers may launch now, and its queue
/// position when some must wait.
pub fn allowance<K: WorkerJob>(
    ctx: &Context,
    config: &WorkerConfiguration,
    job: &K,
    status: &JobStatus<K::Worker>,
    waiting: usize,
) -> (usize, Option<usize>) {
    let Some(max) = config.spec.max_concurrent_workers else {
        return (waiting, None);
    };
    let key = config.name_any();
    let load = ctx
        .workers
        .load(&key, &job.uid().unwrap_or_default(), &queue_order(job));
    ctx.metrics
        .admission_entries_read
        .inc_by(load.entries_read as u64);
    // The index counts this job as last recorded; its newest state counts
    // instead.
    let mine_now = status.workers.iter().filter(|w| w.is_active()).count();
    let others = load.active.saturating_sub(load.mine);
    placement::launch_allowance(Some(max), others + mine_now, load.waiting_ahead, waiting)
}
