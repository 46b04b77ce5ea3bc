//! Tests of the job core: messages, lost workers, retries, phase and
//! conditions.

use super::*;
use crate::api::{BackupJob, BackupWorkerStatus, JobWorker};
use crate::controller::job::kind::WorkerJob;
use crate::messages::PROTOCOL_VERSION;

/// Applies one message as the reconciler does ([`apply_messages`], with the
/// backup's own fields) and says what became of it.
fn apply(workers: &mut [BackupWorkerStatus], msg: &WorkerMessage, now: Timestamp) -> Applied {
    let before = workers.to_vec();
    let out = apply_messages(workers, &[msg], now, BackupJob::record);
    match (out.settled.is_empty(), before.as_slice() == workers) {
        (true, _) => Applied::NotYet,
        (false, true) => Applied::Stale,
        (false, false) => Applied::Changed,
    }
}

pub(super) fn worker(resource: &str, phase: Phase) -> BackupWorkerStatus {
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

pub(super) fn message(resource: &str, sequence: i64, event: WorkerEvent) -> WorkerMessage {
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

pub(super) fn at(secs: i64) -> Timestamp {
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
        machine: None,
        retention: None,
        verification: None,
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
        verification: None,
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
        verification: None,
    };
    apply(&mut workers, &message("a", 2, fail), at(1));
    assert_eq!((workers[0].phase, workers[0].failures), (Phase::Failed, 1));
    let mut workers = vec![worker("b", Phase::Running)];
    let fail = WorkerEvent::Failed {
        reason: "SourceInstanceNotFound".into(),
        message: "gone".into(),
        verification: None,
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
    let (reason, why) = lost_reason(&w, Some("running"), heard, timeout, at(130)).expect("lost");
    assert_eq!(reason, FailureReason::WorkerLost);
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
fn a_worker_that_does_not_start_in_time_failed_to_boot() {
    let mut w = worker("a", Phase::Provisioning);
    w.launch_time = Some(Time(at(100)));
    let timeouts = Timeouts {
        boot: Duration::from_secs(60),
        heartbeat: Duration::from_secs(600),
    };
    let heard = last_heard(&w, None, at(0));
    assert_eq!(
        lost_reason(&w, Some("running"), heard, timeouts, at(159)),
        None
    );
    let (reason, why) = lost_reason(&w, Some("running"), heard, timeouts, at(160)).expect("lost");
    assert_eq!(reason, FailureReason::WorkerBootTimeout);
    assert!(
        why.contains("did not report that it started within 60 s"),
        "{why}"
    );
    assert!(why.contains("bootTimeoutSeconds is 60"), "{why}");
    // Once it has started, the heartbeat timeout applies.
    w.phase = Phase::Running;
    w.started_time = Some(Time(at(110)));
    assert_eq!(
        lost_reason(&w, Some("running"), at(110), timeouts, at(700)),
        None
    );
    let (reason, _) = lost_reason(&w, Some("running"), at(110), timeouts, at(710)).expect("lost");
    assert_eq!(reason, FailureReason::WorkerLost);
    // The wake-up follows the boot timeout while it boots.
    assert_eq!(
        timeouts.of(&worker("b", Phase::Provisioning)),
        Duration::from_secs(60)
    );
    assert_eq!(timeouts.of(&w), Duration::from_secs(600));
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
    assert_eq!(why.0, FailureReason::WorkerLost);
    assert!(why.1.contains("terminated"), "{}", why.1);
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
        reason: crate::reasons::BlockedReason::WorkerConfigurationNotFound,
        message: "m".into(),
    };
    let stalled = job_conditions(Phase::Pending, Some(&problem), "x");
    assert!(has(&stalled, STALLED) && !has(&stalled, RECONCILING));
}
