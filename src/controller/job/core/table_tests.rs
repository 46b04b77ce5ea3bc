//! Table tests of the job core's decisions: judging workers, retries and
//! resumes, the finalized status, wake-ups, filed messages and the Events
//! decisions make.

use super::tests::{at, message, worker};
use super::*;
use crate::api::{BackupJob, BackupWorkerStatus};
use crate::controller::job::kind::WorkerJob;

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
    finalize_status(&mut status, (2, false, None), None, Some(4), at(10));
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
    finalize_status(&mut status, (2, false, None), None, Some(4), at(12));
    finalize_status(&mut status, (2, false, None), None, Some(4), at(99));
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
                    timeouts: Duration::from_secs(300).into(),
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
    // An entry the controller works on itself (no instance) is never
    // heard from: its silence sets no wake-up (it would be 0.5 s forever).
    let mut database = running();
    database.instance_id = None;
    assert_eq!(
        wake(&status(vec![database], None), None, 0, 0),
        SAFETY_REQUEUE
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

#[test]
fn a_deleted_job_is_held_while_an_instance_is_not_going() {
    assert_eq!(deletion_hold(&[]), None);
    let held = deletion_hold(&["i-1".into(), "i-2".into()]).expect("held");
    let terminating = held
        .iter()
        .find(|c| c.type_ == INSTANCE_TERMINATING)
        .expect("InstanceTerminating");
    assert!(terminating.status);
    assert_eq!(terminating.message, "waiting for EC2 to terminate i-1, i-2");
    let ready = held.iter().find(|c| c.type_ == READY).expect("Ready");
    assert!(!ready.status);
}

#[test]
fn a_job_whose_kind_still_settles_is_not_finished() {
    let mut status: JobStatus<BackupWorkerStatus> = JobStatus {
        workers: vec![worker("a", Phase::Succeeded)],
        ..Default::default()
    };
    let note = "waiting for EBS to seal restored snapshot snap-1 (45%) before using it";
    finalize_status(&mut status, (1, false, Some(note)), None, Some(1), at(10));
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.completion_time, None);
    let reconciling = status
        .conditions
        .iter()
        .find(|c| c.type_ == RECONCILING)
        .expect("Reconciling");
    assert!(
        reconciling.message.contains("(45%)"),
        "{}",
        reconciling.message
    );
    // Settled: finished now, and only now.
    finalize_status(&mut status, (1, false, None), None, Some(1), at(20));
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.completion_time, Some(Time(at(20))));
}
