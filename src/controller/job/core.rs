//! The job core: pure decisions about a job's workers, from its spec, its
//! status and what was observed (messages, instance states, time). Applying
//! messages, declaring a worker lost, the deadline, suspension, retries,
//! the job's phase and conditions, and when to look again. No I/O here:
//! the reconciler observes, calls these, and carries out what they decide
//! (the Events as [`Notice`]s, the terminations as [`Termination`]s); unit
//! tests call them directly.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{JobStatus, Phase, WorkerStatus};
use crate::controller::events;
use crate::messages::{WorkerEvent, WorkerMessage};
use crate::placement;
use crate::reasons::{BlockedReason, FailureReason};

/// Reason of a worker that went silent or whose instance died.
pub const WORKER_LOST: &str = FailureReason::WorkerLost.as_str();
/// Reason of a worker that did not report that it started in time.
pub const WORKER_BOOT_TIMEOUT: &str = FailureReason::WorkerBootTimeout.as_str();
/// Reason of workers stopped by `activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = FailureReason::DeadlineExceeded.as_str();

/// Marks a worker failed with a CamelCase reason and a message for people;
/// a retriable failure counts against `backoffLimit`.
pub fn mark_failed(
    w: &mut WorkerStatus,
    reason: impl Into<FailureReason>,
    message: &str,
    now: Timestamp,
) {
    let reason = reason.into();
    w.phase = Phase::Failed;
    w.reason = Some(reason.to_string());
    w.message = Some(format!("{reason}: {message}"));
    w.finished_time = Some(Time(now));
    if !reason.is_permanent() {
        w.failures += 1;
    }
}

/// What applying one message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The worker's status changed.
    Changed,
    /// Nothing to change (duplicate, older, other attempt or instance).
    Stale,
    /// The worker is not recorded as launched yet; keep the message.
    NotYet,
}

/// Applies one worker message to the matching worker entry. Idempotent: a
/// message at or below `lastSequence`, or for a finished worker, changes
/// nothing.
pub fn apply_message(w: &mut WorkerStatus, msg: &WorkerMessage, now: Timestamp) -> Applied {
    if msg.attempt != w.attempt {
        return Applied::Stale;
    }
    match &w.instance_id {
        None if w.phase == Phase::Provisioning => return Applied::NotYet,
        None => return Applied::Stale,
        Some(id) if *id != msg.instance_id => return Applied::Stale,
        Some(_) => {}
    }
    if w.phase.is_finished() || w.phase == Phase::Suspended || msg.sequence <= w.last_sequence {
        return Applied::Stale;
    }
    let at = Time(now);
    match &msg.event {
        // Liveness only (see ReportStore::heard).
        WorkerEvent::Heartbeat => return Applied::Stale,
        WorkerEvent::Started => {
            w.phase = Phase::Running;
            w.started_time.get_or_insert(at);
        }
        WorkerEvent::Progress {
            percent,
            detail,
            bytes,
            ..
        } => {
            w.phase = Phase::Running;
            w.started_time.get_or_insert(at);
            w.progress_percent = Some((*percent).clamp(0, 100));
            w.message = Some(detail.clone());
            if let Some(b) = bytes {
                w.bytes_done = Some(b.done as i64);
                w.bytes_total = Some(b.total as i64);
                w.bytes_per_second = Some(b.per_second as i64);
            }
        }
        WorkerEvent::Completed { detail, bytes, .. } => {
            w.phase = Phase::Succeeded;
            w.reason = None;
            w.progress_percent = Some(100);
            w.message = Some(detail.clone());
            w.finished_time = Some(at);
            if let Some(b) = bytes {
                w.bytes_done = Some(b.done as i64);
                w.bytes_total = Some(b.total as i64);
                w.bytes_per_second = Some(b.per_second as i64);
            }
        }
        WorkerEvent::Failed {
            reason, message, ..
        } => mark_failed(w, reason, message, now),
    }
    w.last_sequence = msg.sequence;
    Applied::Changed
}

/// True when a retry should replace this worker: it failed for a reason
/// worth retrying, the retries are not used up, and its instance is gone.
pub fn should_retry(w: &WorkerStatus, backoff_limit: i32) -> bool {
    w.phase == Phase::Failed
        && w.reason
            .as_deref()
            .is_some_and(|r| !FailureReason::parse(r).is_permanent())
        && w.failures <= backoff_limit
        && (w.instance_id.is_none() || w.terminated_time.is_some())
}

/// Turns a worker entry into its next attempt: a new launch token, nothing
/// launched yet. Failures and the last message stay.
pub fn next_attempt(w: &mut WorkerStatus, job_uid: &str) {
    w.attempt += 1;
    w.launch_token = placement::launch_token(job_uid, &w.resource, w.attempt);
    w.phase = Phase::Provisioning;
    w.reason = None;
    w.instance_id = None;
    w.instance_state = None;
    w.launch_time = None;
    w.started_time = None;
    w.finished_time = None;
    w.terminated_time = None;
    w.progress_percent = None;
    w.last_sequence = 0;
}

/// True once `activeDeadlineSeconds` has passed since the job started.
pub fn deadline_passed(
    start: Option<&Time>,
    deadline_seconds: Option<i64>,
    now: Timestamp,
) -> bool {
    match (start, deadline_seconds) {
        (Some(start), Some(secs)) => now.duration_since(start.0).as_secs() >= secs,
        _ => false,
    }
}

/// The job's phase from its workers' phases.
pub fn job_phase<W: Deref<Target = WorkerStatus>>(
    workers: &[W],
    resources: usize,
    suspended: bool,
) -> Phase {
    let all_done = workers.len() == resources && workers.iter().all(|w| w.phase.is_finished());
    if !workers.is_empty() && all_done {
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
    if suspended {
        Phase::Suspended
    } else if workers.iter().any(|w| w.phase == Phase::Running) {
        Phase::Running
    } else if workers.iter().any(|w| w.phase == Phase::Provisioning) {
        Phase::Provisioning
    } else {
        Phase::Pending
    }
}

/// Why a job cannot go on without a fix.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: BlockedReason,
    pub message: String,
}

/// The conditions of a job in `phase`: kstatus-compatible, plus `Complete`
/// or `Failed` once finished (as `batch/v1` Job has them).
pub fn job_conditions(
    phase: Phase,
    problem: Option<&Problem>,
    summary: &str,
) -> Vec<DesiredCondition> {
    let phase_name = format!("{phase:?}");
    if let Some(p) = problem {
        return vec![
            DesiredCondition::new(READY, false, p.reason.as_str(), p.message.clone()),
            DesiredCondition::new(STALLED, true, p.reason.as_str(), p.message.clone()),
        ];
    }
    match phase {
        Phase::Succeeded => vec![
            DesiredCondition::new(READY, true, phase_name.clone(), summary),
            DesiredCondition::new("Complete", true, phase_name, summary),
        ],
        Phase::Failed | Phase::PartiallySucceeded => vec![
            DesiredCondition::new(READY, false, phase_name.clone(), summary),
            DesiredCondition::new(STALLED, true, phase_name.clone(), summary),
            DesiredCondition::new("Failed", true, phase_name, summary),
        ],
        Phase::Suspended => vec![
            DesiredCondition::new(READY, false, phase_name.clone(), summary),
            DesiredCondition::new("Suspended", true, phase_name, summary),
        ],
        _ => vec![
            DesiredCondition::new(READY, false, phase_name.clone(), summary),
            DesiredCondition::new(RECONCILING, true, phase_name, summary),
        ],
    }
}

/// One line for people: counts per phase, and why each failure failed.
pub fn summary<W: Deref<Target = WorkerStatus>>(workers: &[W], resources: usize) -> String {
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

/// What a job's spec and clock say about all its workers at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobFacts {
    /// `activeDeadlineSeconds` has passed since the job started.
    pub deadline_passed: bool,
    pub deadline_seconds: Option<i64>,
    pub suspended: bool,
    pub backoff_limit: i32,
}

impl JobFacts {
    pub fn of<W>(
        status: &JobStatus<W>,
        deadline_seconds: Option<i64>,
        suspended: bool,
        backoff_limit: i32,
        now: Timestamp,
    ) -> Self {
        Self {
            deadline_passed: deadline_passed(status.start_time.as_ref(), deadline_seconds, now),
            deadline_seconds,
            suspended,
            backoff_limit,
        }
    }
}

/// What was observed of one worker's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness<'a> {
    /// Its instance's EC2 state, when it may be trusted (see
    /// `REDELIVERY_WINDOW` in the reconciler).
    pub instance_state: Option<&'a str>,
    /// When it was last heard from (see [`last_heard`]).
    pub heard: Timestamp,
}

/// The deadline, suspension, and workers that went silent or died: what
/// becomes of one unfinished worker.
pub fn judge_worker(
    w: &mut WorkerStatus,
    facts: &JobFacts,
    liveness: Liveness<'_>,
    timeouts: impl Into<Timeouts>,
    now: Timestamp,
) {
    if w.phase.is_finished() {
        return;
    }
    if facts.deadline_passed {
        let secs = facts.deadline_seconds.unwrap_or_default();
        let message = format!("the job ran longer than activeDeadlineSeconds ({secs} s)");
        mark_failed(w, FailureReason::DeadlineExceeded, &message, now);
    } else if facts.suspended {
        w.phase = Phase::Suspended;
    } else if let Some((reason, why)) =
        lost_reason(w, liveness.instance_state, liveness.heard, timeouts, now)
    {
        mark_failed(w, reason, &why, now);
    }
}

/// What becomes of a failed or suspended worker whose instance is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextAttempt {
    /// Nothing: it runs, it is done, or it waits.
    Stay,
    /// A new attempt replaces a failure; the note says why, for people.
    Retry { note: String },
    /// A suspended worker goes on.
    Resume,
}

/// Decides whether a worker gets a new attempt.
pub fn next_attempt_for(w: &WorkerStatus, facts: &JobFacts) -> NextAttempt {
    if facts.deadline_passed || facts.suspended {
        return NextAttempt::Stay;
    }
    if should_retry(w, facts.backoff_limit) {
        return NextAttempt::Retry {
            note: format!(
                "{}; launching attempt {} ({} of {} retries used)",
                w.message.as_deref().unwrap_or("failed"),
                w.attempt + 1,
                w.failures,
                facts.backoff_limit
            ),
        };
    }
    let gone = w.instance_id.is_none() || w.terminated_time.is_some();
    if w.phase == Phase::Suspended && gone {
        return NextAttempt::Resume;
    }
    NextAttempt::Stay
}

/// The job-level fields that follow from its workers: phase, active count,
/// completion time, conditions (with `problem`, and a queue position), and
/// the generation they describe.
pub fn finalize_status<W: Deref<Target = WorkerStatus>>(
    status: &mut JobStatus<W>,
    (resources, suspended, settling): (usize, bool, Option<&str>),
    problem: Option<&Problem>,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.phase = job_phase(&status.workers, resources, suspended);
    // The kind's own steps after its workers (a restore's volume) are not
    // done: the job is not finished yet.
    if settling.is_some() && status.phase.is_finished() {
        status.phase = Phase::Running;
    }
    status.active_workers = status.workers.iter().filter(|w| w.is_active()).count() as i32;
    if status.phase.is_finished() && status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
    let mut text = summary(&status.workers, resources);
    if let Some(note) = settling {
        text.push_str(&format!("; {note}"));
    }
    let mut desired = job_conditions(status.phase, problem, &text);
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
    status.conditions = conditions::merge(&status.conditions, &desired, generation, now);
    status.observed_generation = generation;
}

/// Sets `Ready` false and `Reconciling` true with a problem that holds new
/// launches back (not a stall: the job goes on once it is fixed).
pub fn hold_launches<W>(
    status: &mut JobStatus<W>,
    problem: &Problem,
    generation: Option<i64>,
    now: Timestamp,
) {
    let desired = [
        DesiredCondition::new(
            READY,
            false,
            problem.reason.as_str(),
            problem.message.clone(),
        ),
        DesiredCondition::new(
            RECONCILING,
            true,
            problem.reason.as_str(),
            problem.message.clone(),
        ),
    ];
    status.conditions = conditions::merge(&status.conditions, &desired, generation, now);
}

/// Whether launches are already held for `problem` (its reason and message
/// are the `Ready` condition's): its Event was published then.
pub fn held_for<W>(status: &JobStatus<W>, problem: &Problem) -> bool {
    status.conditions.iter().any(|c| {
        c.type_ == READY && c.reason == problem.reason.as_str() && c.message == problem.message
    })
}

/// How often an unfinished job is looked at even when nothing happens
/// (worker messages wake it much sooner).
pub const SAFETY_REQUEUE: Duration = Duration::from_secs(300);
/// How often a worker that waits for a launch slot or for capacity is
/// looked at again.
pub const QUEUED_RECHECK: Duration = Duration::from_secs(5);

/// What the next wake-up of an unfinished job depends on.
pub struct WakeInputs<'a, W> {
    pub status: &'a JobStatus<W>,
    pub timeouts: Timeouts,
    pub deadline_seconds: Option<i64>,
    /// Time left until messages in flight before a restart are redelivered
    /// (zero once they have been).
    pub redelivery_left: Duration,
    pub now: Timestamp,
}

/// When to look at an unfinished job again if nothing wakes it sooner: the
/// next worker's heartbeat deadline, the job's deadline, the end of the
/// redelivery window, a queued launch, or the safety interval. `heard`
/// says when a worker was last heard from.
pub fn next_wakeup<W: Deref<Target = WorkerStatus>>(
    inputs: &WakeInputs<'_, W>,
    heard: impl Fn(&WorkerStatus) -> Timestamp,
) -> Duration {
    let status = inputs.status;
    let mut wake = SAFETY_REQUEUE;
    if status.workers.iter().any(|w| w.is_waiting_to_launch()) {
        // Queued behind maxConcurrentWorkers, or no subnet had room.
        wake = QUEUED_RECHECK;
    }
    // Only launched workers can go silent: an entry the controller works
    // on itself (a database's) has no instance and is never heard from.
    for w in status
        .workers
        .iter()
        .filter(|w| matches!(w.phase, Phase::Provisioning | Phase::Running))
        .filter(|w| w.instance_id.is_some())
    {
        let silent = Duration::try_from(inputs.now.duration_since(heard(w))).unwrap_or_default();
        wake = wake.min(inputs.timeouts.of(w).saturating_sub(silent));
    }
    if !inputs.redelivery_left.is_zero() && status.workers.iter().any(|w| w.is_active()) {
        wake = wake.min(inputs.redelivery_left);
    }
    if let (Some(start), Some(secs)) = (&status.start_time, inputs.deadline_seconds) {
        let elapsed = Duration::try_from(inputs.now.duration_since(start.0)).unwrap_or_default();
        wake = wake.min(Duration::from_secs(secs.max(0) as u64).saturating_sub(elapsed));
    }
    wake.max(Duration::from_millis(500))
}

/// An Event the reconciler publishes for a decision of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// The Event of a worker's phase change, when it changed to a phase people
/// follow.
pub fn phase_notice(before: Option<Phase>, after: &WorkerStatus) -> Option<Notice> {
    if before == Some(after.phase) {
        return None;
    }
    let (warning, reason) = match (after.phase, after.reason.as_deref()) {
        (Phase::Failed, Some(WORKER_LOST)) => (true, WORKER_LOST),
        (Phase::Failed, Some(WORKER_BOOT_TIMEOUT)) => (true, WORKER_BOOT_TIMEOUT),
        (Phase::Failed, Some(DEADLINE_EXCEEDED)) => (true, DEADLINE_EXCEEDED),
        (Phase::Failed, _) => (true, events::WORKER_FAILED),
        (Phase::Succeeded, _) => (false, events::WORKER_SUCCEEDED),
        (Phase::Running, _) => (false, events::WORKER_STARTED),
        (Phase::Suspended, _) => (false, events::WORKER_SUSPENDED),
        _ => return None,
    };
    let detail = after.message.as_deref().unwrap_or("");
    let note = format!(
        "worker {} for {} (attempt {}): {}",
        after.instance_id.as_deref().unwrap_or("-"),
        after.resource,
        after.attempt,
        if detail.is_empty() { "started" } else { detail }
    );
    Some(Notice {
        warning,
        reason,
        action: "FollowWorker",
        note,
    })
}

/// What applying a job's filed messages did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MessagesApplied {
    /// Positions of the messages that are done with (applied, or stale):
    /// delete them once the status is written. The others wait for their
    /// worker's launch to be recorded.
    pub settled: Vec<usize>,
    pub notices: Vec<Notice>,
}

/// Applies a job's filed messages, oldest first, to the worker of each
/// one's resource; `record` keeps what only the job's kind keeps of a
/// message that changed its worker.
pub fn apply_messages<W: DerefMut<Target = WorkerStatus>>(
    workers: &mut [W],
    messages: &[&WorkerMessage],
    now: Timestamp,
    record: impl Fn(&mut W, &WorkerEvent),
) -> MessagesApplied {
    let mut out = MessagesApplied::default();
    for (i, msg) in messages.iter().enumerate() {
        let Some(w) = workers.iter_mut().find(|w| w.resource == msg.resource) else {
            out.settled.push(i);
            continue;
        };
        let before = w.phase;
        match apply_message(w, msg, now) {
            Applied::NotYet => continue,
            Applied::Stale => {}
            Applied::Changed => {
                record(w, &msg.event);
                out.notices.extend(phase_notice(Some(before), w));
            }
        }
        out.settled.push(i);
    }
    out
}

/// Replaces failed workers within the backoff limit and resumes suspended
/// ones: a new attempt with a new launch token. Returns the Events of the
/// retries.
pub fn retry_workers<W: DerefMut<Target = WorkerStatus>>(
    workers: &mut [W],
    facts: &JobFacts,
    job_uid: &str,
) -> Vec<Notice> {
    let mut notices = Vec::new();
    for w in workers.iter_mut() {
        match next_attempt_for(w, facts) {
            NextAttempt::Stay => {}
            NextAttempt::Resume => {
                next_attempt(w, job_uid);
                w.message = Some("resumed".to_string());
            }
            NextAttempt::Retry { note } => {
                next_attempt(w, job_uid);
                notices.push(Notice {
                    warning: false,
                    reason: events::WORKER_RETRIED,
                    action: "RetryWorker",
                    note: format!("{}: {note}", w.resource),
                });
                w.message = Some(note);
            }
        }
    }
    notices
}

/// Condition of a deleted job whose workers EC2 does not report as going.
pub const INSTANCE_TERMINATING: &str = "InstanceTerminating";

/// Whether a deleted job's finalizer stays: while any of its instances
/// (`still_running`) is not yet shutting down or terminated, with the
/// conditions that say so.
pub fn deletion_hold(still_running: &[String]) -> Option<Vec<DesiredCondition>> {
    if still_running.is_empty() {
        return None;
    }
    let message = format!("waiting for EC2 to terminate {}", still_running.join(", "));
    Some(vec![
        DesiredCondition::new(
            INSTANCE_TERMINATING,
            true,
            INSTANCE_TERMINATING,
            message.clone(),
        ),
        DesiredCondition::new(READY, false, INSTANCE_TERMINATING, message),
    ])
}

pub mod binding;
mod effects;
mod liveness;
pub use liveness::{Timeouts, last_heard, lost_reason};

pub use self::effects::{Termination, terminations};

#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;
