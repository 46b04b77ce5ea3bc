//! The job core: pure decisions about a job's workers, from its spec, its
//! status and what was observed (messages, instance states, time). Applying
//! messages, declaring a worker lost, the deadline, suspension, retries,
//! the job's phase and conditions, and when to look again. No I/O here:
//! the reconciler observes, calls these, and carries out what they decide;
//! unit tests call them directly.

use std::ops::Deref;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{JobStatus, Phase, WorkerStatus};
use crate::aws::instance_state::InstanceState;
use crate::messages::{WorkerEvent, WorkerMessage};
use crate::placement;
use crate::reasons::{BlockedReason, FailureReason};

/// Reason of a worker that went silent or whose instance died.
pub const WORKER_LOST: &str = FailureReason::WorkerLost.as_str();
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
        WorkerEvent::Failed { reason, message } => mark_failed(w, reason, message, now),
    }
    w.last_sequence = msg.sequence;
    Applied::Changed
}

/// When the worker was last heard from: its last message in this process,
/// else its launch or start, and never before this process started (a
/// restarted controller gives every worker a full timeout to be heard).
pub fn last_heard(
    w: &WorkerStatus,
    in_memory: Option<Timestamp>,
    process_start: Timestamp,
) -> Timestamp {
    [
        in_memory,
        w.launch_time.as_ref().map(|t| t.0),
        w.started_time.as_ref().map(|t| t.0),
        Some(process_start),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(process_start)
}

/// Why an active worker is lost, if it is: its instance is gone or stopped,
/// or it has been silent for longer than `timeout`.
pub fn lost_reason(
    w: &WorkerStatus,
    observed_state: Option<&str>,
    last_heard: Timestamp,
    timeout: Duration,
    now: Timestamp,
) -> Option<String> {
    let active = matches!(w.phase, Phase::Provisioning | Phase::Running)
        && w.instance_id.is_some()
        && w.terminated_time.is_none();
    if !active {
        return None;
    }
    if let Some(state) = observed_state.map(InstanceState::from)
        && (state.is_going() || state.is_stopped())
    {
        return Some(format!(
            "worker instance {} is {state}",
            w.instance_id.as_deref().unwrap_or_default()
        ));
    }
    let silent = now.duration_since(last_heard);
    (silent >= SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX)).then(|| {
        format!(
            "no message from worker {} for {} s (heartbeatTimeoutSeconds is {})",
            w.instance_id.as_deref().unwrap_or_default(),
            silent.as_secs(),
            timeout.as_secs()
        )
    })
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
    timeout: Duration,
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
    } else if let Some(why) = lost_reason(w, liveness.instance_state, liveness.heard, timeout, now)
    {
        mark_failed(w, FailureReason::WorkerLost, &why, now);
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
    resources: usize,
    suspended: bool,
    problem: Option<&Problem>,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.phase = job_phase(&status.workers, resources, suspended);
    status.active_workers = status.workers.iter().filter(|w| w.is_active()).count() as i32;
    if status.phase.is_finished() && status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
    let text = summary(&status.workers, resources);
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

/// How often an unfinished job is looked at even when nothing happens
/// (worker messages wake it much sooner).
pub const SAFETY_REQUEUE: Duration = Duration::from_secs(300);
/// How often a worker that waits for a launch slot or for capacity is
/// looked at again.
pub const QUEUED_RECHECK: Duration = Duration::from_secs(5);

/// What the next wake-up of an unfinished job depends on.
pub struct WakeInputs<'a, W> {
    pub status: &'a JobStatus<W>,
    pub heartbeat_timeout: Duration,
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
    for w in status
        .workers
        .iter()
        .filter(|w| matches!(w.phase, Phase::Provisioning | Phase::Running))
    {
        let silent = Duration::try_from(inputs.now.duration_since(heard(w))).unwrap_or_default();
        wake = wake.min(inputs.heartbeat_timeout.saturating_sub(silent));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupJob, BackupWorkerStatus, JobWorker};
    use crate::controller::job::kind::WorkerJob;
    use crate::messages::PROTOCOL_VERSION;

    /// Applies a message to the worker of its resource, as the reconciler
    /// does (`job::messages`), with the backup's own fields.
    fn apply(workers: &mut [BackupWorkerStatus], msg: &WorkerMessage, now: Timestamp) -> Applied {
        let Some(w) = workers.iter_mut().find(|w| w.resource == msg.resource) else {
            return Applied::Stale;
        };
        let applied = apply_message(w, msg, now);
        if applied == Applied::Changed {
            BackupJob::record(w, &msg.event);
        }
        applied
    }

    fn worker(resource: &str, phase: Phase) -> BackupWorkerStatus {
        BackupWorkerStatus::new(WorkerStatus {
            resource: resource.into(),
            region: "us-east-1".into(),
            phase,
            attempt: 1,
            launch_token: "tok".into(),
            instance_id: Some(format!("i-{resource}")),
            ..Default::default()
        })
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

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    #[test]
    fn messages_apply_once_and_in_order() {
        let mut workers = vec![worker("a", Phase::Provisioning)];
        assert_eq!(
            apply(&mut workers, &message("a", 1, WorkerEvent::Started), at(1)),
            Applied::Changed
        );
        assert_eq!(workers[0].phase, Phase::Running);
        assert_eq!(
            apply(&mut workers, &message("a", 1, WorkerEvent::Started), at(2)),
            Applied::Stale
        );
        let progress = WorkerEvent::Progress {
            percent: 40,
            detail: "volume 1 of 2".into(),
            bytes: Some(crate::messages::ByteProgress {
                done: 40,
                total: 100,
                per_second: 20,
            }),
            session: None,
        };
        assert_eq!(
            apply(&mut workers, &message("a", 3, progress), at(3)),
            Applied::Changed
        );
        let older = WorkerEvent::Progress {
            percent: 10,
            detail: "old".into(),
            bytes: None,
            session: None,
        };
        assert_eq!(
            apply(&mut workers, &message("a", 2, older), at(4)),
            Applied::Stale
        );
        assert_eq!(workers[0].progress_percent, Some(40));
        assert_eq!(
            (
                workers[0].bytes_done,
                workers[0].bytes_total,
                workers[0].bytes_per_second
            ),
            (Some(40), Some(100), Some(20))
        );
        let done = WorkerEvent::Completed {
            detail: "done".into(),
            restore_point: Some("job/i-1".into()),
            snapshot_id: None,
            snapshots: Vec::new(),
            bytes: None,
        };
        assert_eq!(
            apply(&mut workers, &message("a", 4, done), at(5)),
            Applied::Changed
        );
        assert_eq!(workers[0].phase, Phase::Succeeded);
        assert_eq!(workers[0].restore_point.as_deref(), Some("job/i-1"));
        let fail = WorkerEvent::Failed {
            reason: "X".into(),
            message: "late".into(),
        };
        assert_eq!(
            apply(&mut workers, &message("a", 9, fail), at(6)),
            Applied::Stale
        );
        assert_eq!(workers[0].phase, Phase::Succeeded);
        assert_eq!(workers[0].started_time, Some(Time(at(1))));
    }

    #[test]
    fn messages_wait_for_the_launch_record_and_ignore_other_instances() {
        let mut workers = vec![worker("a", Phase::Provisioning)];
        workers[0].instance_id = None;
        assert_eq!(
            apply(&mut workers, &message("a", 1, WorkerEvent::Started), at(1)),
            Applied::NotYet
        );
        workers[0].instance_id = Some("i-other".into());
        assert_eq!(
            apply(&mut workers, &message("a", 1, WorkerEvent::Started), at(1)),
            Applied::Stale
        );
        let mut other_attempt = message("a", 1, WorkerEvent::Started);
        other_attempt.attempt = 2;
        assert_eq!(apply(&mut workers, &other_attempt, at(1)), Applied::Stale);
    }

    #[test]
    fn heartbeats_do_not_write_status() {
        let mut workers = vec![worker("a", Phase::Running)];
        assert_eq!(
            apply(
                &mut workers,
                &message("a", 5, WorkerEvent::Heartbeat),
                at(1)
            ),
            Applied::Stale
        );
        assert_eq!(workers[0].last_sequence, 0);
    }

    #[test]
    fn reported_failures_count_unless_permanent() {
        let mut workers = vec![worker("a", Phase::Running)];
        let fail = WorkerEvent::Failed {
            reason: "S3Unavailable".into(),
            message: "503".into(),
        };
        apply(&mut workers, &message("a", 2, fail), at(1));
        assert_eq!((workers[0].phase, workers[0].failures), (Phase::Failed, 1));
        let mut workers = vec![worker("b", Phase::Running)];
        let fail = WorkerEvent::Failed {
            reason: "SourceInstanceNotFound".into(),
            message: "gone".into(),
        };
        apply(&mut workers, &message("b", 2, fail), at(1));
        assert_eq!(workers[0].failures, 0);
        workers[0].terminated_time = Some(Time(at(2)));
        assert!(
            !should_retry(&workers[0], 5),
            "a permanent failure is not retried"
        );
    }

    #[test]
    fn a_silent_worker_is_lost_after_the_timeout_and_not_before() {
        let mut w = worker("a", Phase::Running);
        w.launch_time = Some(Time(at(100)));
        let timeout = Duration::from_secs(30);
        let heard = last_heard(&w, None, at(0));
        assert_eq!(heard, at(100));
        assert_eq!(
            lost_reason(&w, Some("running"), heard, timeout, at(129)),
            None
        );
        let why = lost_reason(&w, Some("running"), heard, timeout, at(130)).expect("lost");
        assert!(why.contains("no message"), "{why}");
        // A heartbeat heard in memory resets the clock.
        let heard = last_heard(&w, Some(at(125)), at(0));
        assert_eq!(
            lost_reason(&w, Some("running"), heard, timeout, at(140)),
            None
        );
        // After a restart every worker gets a full timeout.
        let heard = last_heard(&w, None, at(500));
        assert_eq!(lost_reason(&w, None, heard, timeout, at(520)), None);
    }

    #[test]
    fn a_worker_whose_instance_died_is_lost_at_once() {
        let w = worker("a", Phase::Running);
        let why = lost_reason(
            &w,
            Some("terminated"),
            at(100),
            Duration::from_secs(300),
            at(101),
        )
        .expect("lost");
        assert!(why.contains("terminated"), "{why}");
        let finished = worker("b", Phase::Succeeded);
        assert_eq!(
            lost_reason(
                &finished,
                Some("terminated"),
                at(0),
                Duration::from_secs(1),
                at(100)
            ),
            None
        );
    }

    #[test]
    fn retries_get_a_new_token_until_the_backoff_limit() {
        let mut w = worker("a", Phase::Running);
        mark_failed(&mut w, WORKER_LOST, "silent", at(1));
        assert!(
            !should_retry(&w, 1),
            "not before its instance is terminated"
        );
        w.terminated_time = Some(Time(at(2)));
        assert!(should_retry(&w, 1));
        let first_token = w.launch_token.clone();
        next_attempt(&mut w, "uid");
        assert_eq!((w.attempt, w.phase), (2, Phase::Provisioning));
        assert_ne!(w.launch_token, first_token);
        assert_eq!(w.launch_token, placement::launch_token("uid", "a", 2));
        assert!(w.instance_id.is_none() && w.terminated_time.is_none());
        w.instance_id = Some("i-2".into());
        mark_failed(&mut w, WORKER_LOST, "silent again", at(3));
        w.terminated_time = Some(Time(at(4)));
        assert_eq!(w.failures, 2);
        assert!(!should_retry(&w, 1), "backoffLimit 1 allows one retry");
    }

    #[test]
    fn deadline_counts_from_the_start() {
        let start = Time(at(100));
        assert!(!deadline_passed(Some(&start), Some(60), at(159)));
        assert!(deadline_passed(Some(&start), Some(60), at(160)));
        assert!(!deadline_passed(None, Some(60), at(1000)));
        assert!(!deadline_passed(Some(&start), None, at(1000)));
    }

    #[test]
    fn job_phase_from_workers() {
        assert_eq!(
            job_phase::<BackupWorkerStatus>(&[], 1, false),
            Phase::Pending
        );
        assert_eq!(
            job_phase(&[worker("a", Phase::Provisioning)], 1, false),
            Phase::Provisioning
        );
        assert_eq!(
            job_phase(
                &[
                    worker("a", Phase::Running),
                    worker("b", Phase::Provisioning)
                ],
                2,
                false
            ),
            Phase::Running
        );
        assert_eq!(
            job_phase(&[worker("a", Phase::Succeeded)], 2, false),
            Phase::Pending
        );
        assert_eq!(
            job_phase(
                &[worker("a", Phase::Succeeded), worker("b", Phase::Succeeded)],
                2,
                false
            ),
            Phase::Succeeded
        );
        assert_eq!(
            job_phase(
                &[worker("a", Phase::Succeeded), worker("b", Phase::Failed)],
                2,
                false
            ),
            Phase::PartiallySucceeded
        );
        assert_eq!(
            job_phase(&[worker("a", Phase::Failed)], 1, false),
            Phase::Failed
        );
        assert_eq!(
            job_phase(&[worker("a", Phase::Running)], 1, true),
            Phase::Suspended
        );
        assert_eq!(
            job_phase(&[worker("a", Phase::Succeeded)], 1, true),
            Phase::Succeeded
        );
    }

    #[test]
    fn conditions_follow_kstatus_and_batch_jobs() {
        let has = |c: &[DesiredCondition], t: &str| c.iter().any(|c| c.type_ == t && c.status);
        let running = job_conditions(Phase::Running, None, "x");
        assert!(has(&running, RECONCILING) && !has(&running, READY));
        let failed = job_conditions(Phase::Failed, None, "x");
        assert!(has(&failed, STALLED) && has(&failed, "Failed"));
        let done = job_conditions(Phase::Succeeded, None, "x");
        assert!(has(&done, READY) && has(&done, "Complete") && !has(&done, RECONCILING));
        let problem = Problem {
            reason: BlockedReason::WorkerConfigurationNotFound,
            message: "m".into(),
        };
        let stalled = job_conditions(Phase::Pending, Some(&problem), "x");
        assert!(has(&stalled, STALLED) && !has(&stalled, RECONCILING));
    }

    fn facts(deadline_passed: bool, suspended: bool, backoff_limit: i32) -> JobFacts {
        JobFacts {
            deadline_passed,
            deadline_seconds: Some(600),
            suspended,
            backoff_limit,
        }
    }

    #[test]
    fn judging_a_worker_table() {
        const TIMEOUT: Duration = Duration::from_secs(300);
        struct Case {
            name: &'static str,
            phase: Phase,
            deadline: bool,
            suspended: bool,
            state: Option<&'static str>,
            silent_for: i64,
            want_phase: Phase,
            want_reason: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "healthy",
                phase: Phase::Running,
                deadline: false,
                suspended: false,
                state: Some("running"),
                silent_for: 10,
                want_phase: Phase::Running,
                want_reason: None,
            },
            Case {
                name: "silent past the timeout",
                phase: Phase::Running,
                deadline: false,
                suspended: false,
                state: Some("running"),
                silent_for: 300,
                want_phase: Phase::Failed,
                want_reason: Some(WORKER_LOST),
            },
            Case {
                name: "silent, not yet",
                phase: Phase::Provisioning,
                deadline: false,
                suspended: false,
                state: None,
                silent_for: 299,
                want_phase: Phase::Provisioning,
                want_reason: None,
            },
            Case {
                name: "instance stopped",
                phase: Phase::Running,
                deadline: false,
                suspended: false,
                state: Some("stopped"),
                silent_for: 1,
                want_phase: Phase::Failed,
                want_reason: Some(WORKER_LOST),
            },
            Case {
                name: "deadline wins over liveness",
                phase: Phase::Running,
                deadline: true,
                suspended: false,
                state: Some("running"),
                silent_for: 1,
                want_phase: Phase::Failed,
                want_reason: Some(DEADLINE_EXCEEDED),
            },
            Case {
                name: "deadline also fails a suspended worker",
                phase: Phase::Suspended,
                deadline: true,
                suspended: true,
                state: None,
                silent_for: 1,
                want_phase: Phase::Failed,
                want_reason: Some(DEADLINE_EXCEEDED),
            },
            Case {
                name: "suspend",
                phase: Phase::Running,
                deadline: false,
                suspended: true,
                state: Some("running"),
                silent_for: 1,
                want_phase: Phase::Suspended,
                want_reason: None,
            },
            Case {
                name: "finished workers stay",
                phase: Phase::Succeeded,
                deadline: true,
                suspended: false,
                state: Some("terminated"),
                silent_for: 9999,
                want_phase: Phase::Succeeded,
                want_reason: None,
            },
        ];
        for c in cases {
            let mut w = worker("a", c.phase);
            let liveness = Liveness {
                instance_state: c.state,
                heard: at(1000),
            };
            judge_worker(
                &mut w,
                &facts(c.deadline, c.suspended, 2),
                liveness,
                TIMEOUT,
                at(1000 + c.silent_for),
            );
            assert_eq!(w.phase, c.want_phase, "{}", c.name);
            assert_eq!(w.reason.as_deref(), c.want_reason, "{}", c.name);
        }
    }

    #[test]
    fn retries_and_resumes_table() {
        let failed = |failures: i32, reason: &str, terminated: bool| {
            let mut w = worker("a", Phase::Failed);
            w.failures = failures;
            w.reason = Some(reason.into());
            w.message = Some(format!("{reason}: gone"));
            if terminated {
                w.terminated_time = Some(Time(at(5)));
            }
            w
        };
        let suspended = {
            let mut w = worker("a", Phase::Suspended);
            w.terminated_time = Some(Time(at(5)));
            w
        };
        let cases: [(&str, BackupWorkerStatus, JobFacts, bool); 7] = [
            (
                "within the limit",
                failed(1, WORKER_LOST, true),
                facts(false, false, 2),
                true,
            ),
            (
                "at the limit",
                failed(2, WORKER_LOST, true),
                facts(false, false, 2),
                true,
            ),
            (
                "past the limit",
                failed(3, WORKER_LOST, true),
                facts(false, false, 2),
                false,
            ),
            (
                "permanent reason",
                failed(1, "SourceSnapshotNotFound", true),
                facts(false, false, 2),
                false,
            ),
            (
                "instance not gone yet",
                failed(1, WORKER_LOST, false),
                facts(false, false, 2),
                false,
            ),
            (
                "deadline passed",
                failed(1, WORKER_LOST, true),
                facts(true, false, 2),
                false,
            ),
            (
                "job suspended",
                failed(1, WORKER_LOST, true),
                facts(false, true, 2),
                false,
            ),
        ];
        for (name, w, f, retried) in cases {
            let next = next_attempt_for(&w, &f);
            assert_eq!(
                matches!(next, NextAttempt::Retry { .. }),
                retried,
                "{name}: {next:?}"
            );
        }
        assert_eq!(
            next_attempt_for(&failed(1, WORKER_LOST, true), &facts(false, false, 2)),
            NextAttempt::Retry {
                note: "WorkerLost: gone; launching attempt 2 (1 of 2 retries used)".into()
            }
        );
        assert_eq!(
            next_attempt_for(&suspended, &facts(false, false, 2)),
            NextAttempt::Resume
        );
        assert_eq!(
            next_attempt_for(&suspended, &facts(false, true, 2)),
            NextAttempt::Stay
        );
        let mut still_running = suspended.clone();
        still_running.terminated_time = None;
        assert_eq!(
            next_attempt_for(&still_running, &facts(false, false, 2)),
            NextAttempt::Stay
        );
    }

    #[test]
    fn finalized_status_counts_and_queues() {
        let mut status: JobStatus<BackupWorkerStatus> = JobStatus {
            workers: vec![
                worker("a", Phase::Running),
                worker("b", Phase::Provisioning),
            ],
            queue_position: Some(3),
            ..Default::default()
        };
        status.workers[1].instance_id = None;
        finalize_status(&mut status, 2, false, None, Some(4), at(10));
        assert_eq!(status.phase, Phase::Running);
        assert_eq!(status.active_workers, 1);
        assert_eq!(status.observed_generation, Some(4));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(ready.reason, "Queued");
        assert!(
            ready.message.starts_with("queued at position 3"),
            "{}",
            ready.message
        );
        // Finished: the completion time is set once and kept.
        for w in status.workers.iter_mut() {
            w.phase = Phase::Succeeded;
            w.terminated_time = Some(Time(at(11)));
        }
        finalize_status(&mut status, 2, false, None, Some(4), at(12));
        finalize_status(&mut status, 2, false, None, Some(4), at(99));
        assert_eq!(status.phase, Phase::Succeeded);
        assert_eq!(status.active_workers, 0);
        assert_eq!(status.completion_time, Some(Time(at(12))));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Succeeded")
        );
    }

    #[test]
    fn wake_up_table() {
        let heard_at = |secs: i64| move |_: &WorkerStatus| at(secs);
        let running = || {
            let mut w = worker("a", Phase::Running);
            w.launch_time = Some(Time(at(0)));
            w
        };
        let status = |workers: Vec<BackupWorkerStatus>, start: Option<i64>| JobStatus {
            workers,
            start_time: start.map(|s| Time(at(s))),
            ..Default::default()
        };
        let wake = |s: &JobStatus<BackupWorkerStatus>,
                    deadline: Option<i64>,
                    redelivery: u64,
                    heard: i64| {
            next_wakeup(
                &WakeInputs {
                    status: s,
                    heartbeat_timeout: Duration::from_secs(300),
                    deadline_seconds: deadline,
                    redelivery_left: Duration::from_secs(redelivery),
                    now: at(1000),
                },
                heard_at(heard),
            )
        };
        // Nothing running: the safety interval.
        assert_eq!(wake(&status(vec![], None), None, 0, 0), SAFETY_REQUEUE);
        // A running worker heard 100 s ago: when its timeout would pass.
        assert_eq!(
            wake(&status(vec![running()], None), None, 0, 900),
            Duration::from_secs(200)
        );
        // The deadline comes first.
        assert_eq!(
            wake(&status(vec![running()], Some(950)), Some(60), 0, 1000),
            Duration::from_secs(10)
        );
        // Right after a restart: when redelivered messages are in.
        assert_eq!(
            wake(&status(vec![running()], None), None, 20, 1000),
            Duration::from_secs(20)
        );
        // A worker waiting for a slot: soon.
        let mut queued = worker("b", Phase::Provisioning);
        queued.instance_id = None;
        assert_eq!(
            wake(&status(vec![queued], None), None, 0, 1000),
            QUEUED_RECHECK
        );
        // Never a busy loop.
        assert_eq!(
            wake(&status(vec![running()], None), None, 0, 600),
            Duration::from_millis(500)
        );
    }
}
