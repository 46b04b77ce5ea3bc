//! Pure decisions about a job's workers: applying messages, declaring a
//! worker lost, retrying, the job's phase and conditions. No I/O here; the
//! reconciler calls these, and unit tests call them directly.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::conditions::{DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{Phase, WorkerStatus};
use crate::messages::{WorkerEvent, WorkerMessage};
use crate::placement;

/// Failure reasons that retrying cannot fix.
const PERMANENT_REASONS: &[&str] = &[
    "SourceInstanceNotFound",
    "SourceSnapshotNotFound",
    "SourceSnapshotFailed",
    "SourceNotFound",
    "RestorePointExists",
    "RestorePointNotFound",
    "ChunkMissing",
    "ChunkCorrupt",
    "ManifestInvalid",
    "RepositoryNotFound",
    "RestorePointMissing",
    "VolumeNotInRestorePoint",
    "VolumeCreateFailed",
    "InstanceRestoreFailed",
    "DeadlineExceeded",
    "LaunchFailed",
    "WorkerConfigurationDeleted",
];

/// Reason of a worker that went silent or whose instance died.
pub const WORKER_LOST: &str = "WorkerLost";
/// Reason of workers stopped by `activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";

/// True when a failure with `reason` is worth another attempt.
pub fn is_retriable(reason: &str) -> bool {
    !PERMANENT_REASONS.contains(&reason)
}

/// Marks a worker failed with a CamelCase reason and a message for people;
/// a retriable failure counts against `backoffLimit`.
pub fn mark_failed(w: &mut WorkerStatus, reason: &str, message: &str, now: Timestamp) {
    w.phase = Phase::Failed;
    w.reason = Some(reason.to_string());
    w.message = Some(format!("{reason}: {message}"));
    w.finished_time = Some(Time(now));
    if is_retriable(reason) {
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
pub fn apply_message(workers: &mut [WorkerStatus], msg: &WorkerMessage, now: Timestamp) -> Applied {
    let Some(w) = workers.iter_mut().find(|w| w.resource == msg.resource) else {
        return Applied::Stale;
    };
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
            session,
        } => {
            if let Some(s) = session {
                w.browser_url = Some(s.url.clone());
                w.certificate_sha256 = Some(s.certificate_sha256.clone());
                w.public_key_sha256 = Some(s.public_key_sha256.clone());
            }
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
        WorkerEvent::Completed {
            detail,
            restore_point,
            snapshot_id,
            snapshots,
            bytes,
        } => {
            if snapshot_id.is_some() {
                w.restored_snapshot_id = snapshot_id.clone();
            }
            if !snapshots.is_empty() {
                w.restored_snapshots = snapshots.clone();
            }
            w.phase = Phase::Succeeded;
            w.reason = None;
            w.progress_percent = Some(100);
            w.message = Some(detail.clone());
            w.finished_time = Some(at);
            if restore_point.is_some() {
                w.restore_point = restore_point.clone();
            }
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
    if let Some(state) = observed_state
        && matches!(
            state,
            "shutting-down" | "terminated" | "stopping" | "stopped"
        )
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
        && w.reason.as_deref().is_some_and(is_retriable)
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
pub fn job_phase(workers: &[WorkerStatus], resources: usize, suspended: bool) -> Phase {
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
    pub reason: &'static str,
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
            DesiredCondition::new(READY, false, p.reason, p.message.clone()),
            DesiredCondition::new(STALLED, true, p.reason, p.message.clone()),
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
pub fn summary(workers: &[WorkerStatus], resources: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::PROTOCOL_VERSION;

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

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    #[test]
    fn messages_apply_once_and_in_order() {
        let mut workers = vec![worker("a", Phase::Provisioning)];
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), at(1)),
            Applied::Changed
        );
        assert_eq!(workers[0].phase, Phase::Running);
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), at(2)),
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
            apply_message(&mut workers, &message("a", 3, progress), at(3)),
            Applied::Changed
        );
        let older = WorkerEvent::Progress {
            percent: 10,
            detail: "old".into(),
            bytes: None,
            session: None,
        };
        assert_eq!(
            apply_message(&mut workers, &message("a", 2, older), at(4)),
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
            apply_message(&mut workers, &message("a", 4, done), at(5)),
            Applied::Changed
        );
        assert_eq!(workers[0].phase, Phase::Succeeded);
        assert_eq!(workers[0].restore_point.as_deref(), Some("job/i-1"));
        let fail = WorkerEvent::Failed {
            reason: "X".into(),
            message: "late".into(),
        };
        assert_eq!(
            apply_message(&mut workers, &message("a", 9, fail), at(6)),
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
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), at(1)),
            Applied::NotYet
        );
        workers[0].instance_id = Some("i-other".into());
        assert_eq!(
            apply_message(&mut workers, &message("a", 1, WorkerEvent::Started), at(1)),
            Applied::Stale
        );
        let mut other_attempt = message("a", 1, WorkerEvent::Started);
        other_attempt.attempt = 2;
        assert_eq!(
            apply_message(&mut workers, &other_attempt, at(1)),
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
        apply_message(&mut workers, &message("a", 2, fail), at(1));
        assert_eq!((workers[0].phase, workers[0].failures), (Phase::Failed, 1));
        let mut workers = vec![worker("b", Phase::Running)];
        let fail = WorkerEvent::Failed {
            reason: "SourceInstanceNotFound".into(),
            message: "gone".into(),
        };
        apply_message(&mut workers, &message("b", 2, fail), at(1));
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
        assert_eq!(job_phase(&[], 1, false), Phase::Pending);
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
            reason: "WorkerConfigurationNotFound",
            message: "m".into(),
        };
        let stalled = job_conditions(Phase::Pending, Some(&problem), "x");
        assert!(has(&stalled, STALLED) && !has(&stalled, RECONCILING));
    }
}
