//! Table-style tests of the job core's decisions.

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
        reason: crate::reasons::BlockedReason::WorkerConfigurationNotFound,
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
    let wake =
        |s: &JobStatus<BackupWorkerStatus>, deadline: Option<i64>, redelivery: u64, heard: i64| {
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

#[test]
fn filed_messages_settle_unless_their_worker_is_not_launched_yet() {
    let mut launching = worker("b", Phase::Provisioning);
    launching.instance_id = None;
    let mut workers = vec![worker("a", Phase::Provisioning), launching];
    let started = message("a", 1, WorkerEvent::Started);
    let duplicate = message("a", 1, WorkerEvent::Started);
    let late = message("a", 0, WorkerEvent::Started);
    let early = message("b", 1, WorkerEvent::Started);
    let stranger = message("c", 1, WorkerEvent::Started);
    let out = apply_messages(
        &mut workers,
        &[&started, &duplicate, &late, &early, &stranger],
        at(1),
        BackupJob::record,
    );
    // b's message waits for b's launch to be recorded; the rest are done.
    assert_eq!(out.settled, [0, 1, 2, 4]);
    assert_eq!(workers[0].phase, Phase::Running);
    assert_eq!(workers[1].phase, Phase::Provisioning);
    // One Event, for the one change.
    assert_eq!(out.notices.len(), 1);
    assert_eq!(out.notices[0].reason, "WorkerStarted");
    assert_eq!(out.notices[0].note, "worker i-a for a (attempt 1): started");
}

#[test]
fn phase_changes_make_events_table() {
    let failed = |reason: &str| {
        let mut w = worker("a", Phase::Failed);
        w.reason = Some(reason.into());
        w.message = Some(format!("{reason}: why"));
        w
    };
    /// Phase before, worker after, and the Event wanted: (warning, reason).
    type Case = (
        Option<Phase>,
        BackupWorkerStatus,
        Option<(bool, &'static str)>,
    );
    let cases: [Case; 8] = [
        (
            Some(Phase::Running),
            failed(WORKER_LOST),
            Some((true, WORKER_LOST)),
        ),
        (
            Some(Phase::Running),
            failed(DEADLINE_EXCEEDED),
            Some((true, DEADLINE_EXCEEDED)),
        ),
        (
            Some(Phase::Running),
            failed("ChunkMissing"),
            Some((true, "WorkerFailed")),
        ),
        (
            Some(Phase::Running),
            worker("a", Phase::Succeeded),
            Some((false, "WorkerSucceeded")),
        ),
        (
            Some(Phase::Provisioning),
            worker("a", Phase::Running),
            Some((false, "WorkerStarted")),
        ),
        (
            Some(Phase::Running),
            worker("a", Phase::Suspended),
            Some((false, "WorkerSuspended")),
        ),
        (Some(Phase::Running), worker("a", Phase::Running), None),
        (None, worker("a", Phase::Provisioning), None),
    ];
    for (before, after, want) in cases {
        let got = phase_notice(before, &after).map(|n| (n.warning, n.reason));
        assert_eq!(got, want, "{before:?} -> {:?}", after.phase);
    }
}

#[test]
fn retries_come_with_an_event_and_a_new_token() {
    let mut lost = worker("a", Phase::Failed);
    lost.reason = Some(WORKER_LOST.into());
    lost.message = Some("WorkerLost: silent".into());
    lost.failures = 1;
    lost.terminated_time = Some(Time(at(5)));
    let mut workers = vec![lost, worker("b", Phase::Running)];
    let notices = retry_workers(&mut workers, &facts(false, false, 2), "uid");
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].reason, "WorkerRetried");
    assert_eq!(
        notices[0].note,
        "a: WorkerLost: silent; launching attempt 2 (1 of 2 retries used)"
    );
    assert_eq!(workers[0].attempt, 2);
    assert_eq!(
        workers[0].launch_token,
        placement::launch_token("uid", "a", 2)
    );
    assert!(workers[0].is_waiting_to_launch());
    assert_eq!(workers[1].phase, Phase::Running);
}
