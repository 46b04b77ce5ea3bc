//! Table tests of the checks that bind a message to its worker.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::Phase;
use crate::messages::{PROTOCOL_VERSION, SessionInfo};

const INSTANCE: &str = "i-0123456789abcdef0";
const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/111122223333/tender-c-ns-default";

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

#[test]
fn the_sender_must_be_the_worker_instance_itself() {
    let cases: [(&str, Option<&str>, &str, Option<Refusal>); 8] = [
        (
            "the instance's role session",
            Some("AROAEXAMPLEROLEID1234:i-0123456789abcdef0"),
            INSTANCE,
            None,
        ),
        (
            "another instance of the same role",
            Some("AROAEXAMPLEROLEID1234:i-0fedcba9876543210"),
            INSTANCE,
            Some(Refusal::ForeignSender),
        ),
        (
            "an IAM user",
            Some("AIDAEXAMPLEUSERID5678"),
            INSTANCE,
            Some(Refusal::ForeignSender),
        ),
        (
            "an IAM user's ID with the instance after a colon",
            Some("AIDAEXAMPLEUSERID5678:i-0123456789abcdef0"),
            INSTANCE,
            Some(Refusal::ForeignSender),
        ),
        (
            "the emulator's fixed sender",
            Some("AIDAIT2UOQQY3AUEKVGXU"),
            INSTANCE,
            Some(Refusal::ForeignSender),
        ),
        ("missing", None, INSTANCE, Some(Refusal::MissingSender)),
        ("empty", Some(""), INSTANCE, Some(Refusal::MissingSender)),
        (
            "a message that names no instance",
            Some("AROAEXAMPLEROLEID1234:"),
            "",
            Some(Refusal::ForeignSender),
        ),
    ];
    for (name, sender, instance, want) in cases {
        assert_eq!(sender_refusal(sender, instance), want, "{name}");
    }
}

#[test]
fn a_message_counts_only_from_its_configurations_queue() {
    assert_eq!(queue_refusal(QUEUE, Some(QUEUE)), None);
    let other = "https://sqs.us-east-1.amazonaws.com/111122223333/tender-c-ns-other";
    assert_eq!(queue_refusal(other, Some(QUEUE)), Some(Refusal::WrongQueue));
    assert_eq!(queue_refusal(QUEUE, None), Some(Refusal::WrongQueue));
}

#[test]
fn the_sequence_bound_grows_with_time_since_launch() {
    assert_eq!(sequence_bound(at(0), at(0)), SEQUENCE_SLACK);
    assert_eq!(
        sequence_bound(at(0), at(60)),
        SEQUENCE_SLACK + 60 * MAX_MESSAGES_PER_SECOND
    );
    // A clock that says the launch is in the future gives the slack only.
    assert_eq!(sequence_bound(at(60), at(0)), SEQUENCE_SLACK);
    // A day of heartbeats every second stays far below it.
    assert!(sequence_bound(at(0), at(86_400)) > 86_400 * 2);
}

fn completed(restore_point: Option<&str>) -> WorkerEvent {
    WorkerEvent::Completed {
        detail: "done".into(),
        restore_point: restore_point.map(String::from),
        snapshot_id: None,
        snapshots: Vec::new(),
        bytes: None,
        machine: None,
        retention: None,
        verification: None,
    }
}

#[test]
fn a_completion_names_the_restore_point_of_this_attempt() {
    use Operation::{Backup, Restore, Retention, Verification};
    let point = "nightly/i-0123456789abcdef0";
    let cases = [
        ("backup, its own", Backup, Some(point), None),
        (
            "backup, another job's",
            Backup,
            Some("other/i-0123456789abcdef0"),
            Some(Refusal::WrongRestorePoint),
        ),
        (
            "backup, another resource's",
            Backup,
            Some("nightly/i-0fedcba9876543210"),
            Some(Refusal::WrongRestorePoint),
        ),
        (
            "backup, none",
            Backup,
            None,
            Some(Refusal::WrongRestorePoint),
        ),
        ("restore, the one it reads", Restore, Some(point), None),
        (
            "restore, another",
            Restore,
            Some("other/i-0123456789abcdef0"),
            Some(Refusal::WrongRestorePoint),
        ),
        ("restore, none", Restore, None, None),
        // A retention run writes no restore point: naming one is forged.
        ("retention, none", Retention, None, None),
        (
            "retention, one",
            Retention,
            Some(point),
            Some(Refusal::WrongRestorePoint),
        ),
    ];
    for (name, operation, named, want) in cases {
        let resource = match operation {
            Backup => INSTANCE,
            Restore => point,
            Retention => "main",
            Verification => point,
        };
        let got = restore_point_refusal(operation, "nightly", resource, &completed(named));
        assert_eq!(got, want, "{name}");
    }
    let progress = WorkerEvent::Started;
    assert_eq!(
        restore_point_refusal(Backup, "nightly", INSTANCE, &progress),
        None
    );
}

#[test]
fn a_verification_speaks_only_of_the_restore_point_its_worker_reads() {
    let point = "nightly/i-0123456789abcdef0";
    let found = |id: &str| {
        Some(Box::new(crate::api::VerificationOutcome {
            restore_point: id.into(),
            result: crate::api::VerificationResult::Unverified,
            ..Default::default()
        }))
    };
    let failed = |id: &str| WorkerEvent::Failed {
        reason: crate::reasons::FailureReason::RestorePointUnverified,
        message: "does not verify".into(),
        verification: found(id),
    };
    let own = restore_point_refusal(Operation::Verification, "v", point, &failed(point));
    assert_eq!(own, None);
    // Another restore point's result would land on the wrong RestorePoint.
    let other = failed("nightly/i-0fffffffffffffff0");
    assert_eq!(
        restore_point_refusal(Operation::Verification, "v", point, &other),
        Some(Refusal::WrongRestorePoint)
    );
    // A damaged restore point is not a success, and counts add up.
    let damaged = crate::api::VerificationOutcome {
        restore_point: point.into(),
        result: crate::api::VerificationResult::Damaged,
        chunks: 4,
        intact_chunks: 3,
        corrupt_chunks: 1,
        ..Default::default()
    };
    let as_failure = WorkerEvent::Failed {
        reason: crate::reasons::FailureReason::ChunkCorrupt,
        message: "damaged".into(),
        verification: Some(Box::new(damaged.clone())),
    };
    let check =
        |event: &WorkerEvent| restore_point_refusal(Operation::Verification, "v", point, event);
    assert_eq!(check(&as_failure), None);
    let mut as_success = completed(Some(point));
    if let WorkerEvent::Completed { verification, .. } = &mut as_success {
        *verification = Some(Box::new(damaged.clone()));
    }
    assert_eq!(check(&as_success), Some(Refusal::InconsistentOutcome));
    let uneven = WorkerEvent::Failed {
        reason: crate::reasons::FailureReason::ChunkCorrupt,
        message: "damaged".into(),
        verification: Some(Box::new(crate::api::VerificationOutcome {
            intact_chunks: 4,
            ..damaged
        })),
    };
    assert_eq!(check(&uneven), Some(Refusal::InconsistentOutcome));
    // A verification that completes says what it read.
    assert_eq!(
        check(&completed(Some(point))),
        Some(Refusal::InconsistentOutcome)
    );
    // A failure with nothing read (access denied, say) is a failure.
    let denied = WorkerEvent::Failed {
        reason: crate::reasons::FailureReason::RepositoryAccessDenied,
        message: "403".into(),
        verification: None,
    };
    assert_eq!(check(&denied), None);
    // No other kind of worker reports a verification.
    assert_eq!(
        restore_point_refusal(Operation::Restore, "v", point, &failed(point)),
        Some(Refusal::WrongRestorePoint)
    );
}

fn session(url: &str) -> WorkerEvent {
    WorkerEvent::Progress {
        percent: 100,
        detail: "up".into(),
        bytes: None,
        session: Some(SessionInfo {
            url: url.into(),
            certificate_sha256: "AB:CD".into(),
            public_key_sha256: "pin".into(),
            original_location: None,
        }),
    }
}

#[test]
fn a_session_must_be_at_the_workers_own_address() {
    let addresses: Vec<String> = [
        "10.0.1.23",
        "ip-10-0-1-23.ec2.internal",
        "54.210.1.2",
        "ec2-54-210-1-2.compute-1.amazonaws.com",
        "2600:1f18::5",
    ]
    .map(String::from)
    .to_vec();
    let trusted = vec!["127.0.0.1".to_string()];
    let foreign = Some(Refusal::ForeignBrowserHost);
    let cases = [
        ("the public IP", "https://54.210.1.2/", None),
        ("the private IP, a port", "https://10.0.1.23:8443/", None),
        (
            "the public DNS name, any case",
            "https://EC2-54-210-1-2.compute-1.amazonaws.com/",
            None,
        ),
        ("IPv6", "https://[2600:1f18::5]/", None),
        ("a trusted local agent", "https://127.0.0.1:40123/", None),
        ("someone else's host", "https://203.0.113.7/", foreign),
        ("plain HTTP", "http://54.210.1.2/", foreign),
        ("user info", "https://54.210.1.2@203.0.113.7/", foreign),
        ("credentials", "https://u:p@54.210.1.2/", foreign),
        // WHATWG reads 0x36d20102 as 54.210.1.2: the same host, allowed.
        ("a hex IPv4", "https://0x36d20102/", None),
        ("not a URL", "54.210.1.2", foreign),
        (
            "a look-alike name",
            "https://54.210.1.2.attacker.example/",
            foreign,
        ),
    ];
    for (name, url, want) in cases {
        let got = browser_host_refusal(&session(url), &addresses, &trusted);
        assert_eq!(got, want, "{name}: {url}");
    }
    // Nothing known of the instance: no session can be its own.
    assert_eq!(
        browser_host_refusal(&session("https://54.210.1.2/"), &[], &[]),
        foreign
    );
    // Other events carry no session.
    assert_eq!(
        browser_host_refusal(&WorkerEvent::Heartbeat, &[], &[]),
        None
    );
}

fn running_worker() -> WorkerStatus {
    WorkerStatus {
        resource: INSTANCE.into(),
        region: "us-east-1".into(),
        phase: Phase::Running,
        attempt: 2,
        launch_token: "tok".into(),
        instance_id: Some("i-0aaaaaaaaaaaaaaaa".into()),
        launch_time: Some(Time(at(0))),
        last_sequence: 4,
        ..Default::default()
    }
}

fn message(sequence: i64, event: WorkerEvent) -> WorkerMessage {
    WorkerMessage {
        version: PROTOCOL_VERSION,
        namespace: "ns".into(),
        job_name: "nightly".into(),
        job_uid: "uid".into(),
        resource: INSTANCE.into(),
        instance_id: "i-0aaaaaaaaaaaaaaaa".into(),
        attempt: 2,
        sequence,
        event,
    }
}

/// A case of [`refusal`]: its name, the message, the queue it came on,
/// the worker it is for, and the verdict.
type Case<'a> = (
    &'a str,
    WorkerMessage,
    &'a str,
    Option<&'a WorkerStatus>,
    Option<Refusal>,
);

#[test]
fn a_filed_message_is_checked_against_its_job_and_worker() {
    let addresses = HashMap::from([(
        "i-0aaaaaaaaaaaaaaaa".to_string(),
        vec!["10.0.1.23".to_string()],
    )]);
    let expected = Expected {
        operation: Operation::Backup,
        job_name: "nightly",
        queue_url: Some(QUEUE),
        addresses: &addresses,
        trusted_browser_hosts: &[],
        now: at(60),
    };
    let w = running_worker();
    let bound = sequence_bound(at(0), at(60));
    let mut other_attempt = message(i64::MAX, WorkerEvent::Started);
    other_attempt.attempt = 1;
    let mut not_launched = running_worker();
    not_launched.instance_id = None;
    not_launched.launch_time = None;
    let own_point = format!("nightly/{INSTANCE}");
    let cases: Vec<Case<'_>> = vec![
        (
            "its next message",
            message(5, WorkerEvent::Started),
            QUEUE,
            Some(&w),
            None,
        ),
        (
            "on another configuration's queue",
            message(5, completed(Some(&own_point))),
            "https://sqs.us-east-1.amazonaws.com/111122223333/tender-c-ns-other",
            Some(&w),
            Some(Refusal::WrongQueue),
        ),
        (
            "at the bound",
            message(bound, WorkerEvent::Heartbeat),
            QUEUE,
            Some(&w),
            None,
        ),
        (
            "past the bound",
            message(bound + 1, WorkerEvent::Heartbeat),
            QUEUE,
            Some(&w),
            Some(Refusal::SequenceJump),
        ),
        (
            "i64::MAX",
            message(i64::MAX, WorkerEvent::Started),
            QUEUE,
            Some(&w),
            Some(Refusal::SequenceJump),
        ),
        (
            "another attempt's (stale whatever it says)",
            other_attempt,
            QUEUE,
            Some(&w),
            None,
        ),
        (
            "a worker not launched yet (judged once it is)",
            message(i64::MAX, WorkerEvent::Started),
            QUEUE,
            Some(&not_launched),
            None,
        ),
        (
            "another restore point",
            message(5, completed(Some("other/point"))),
            QUEUE,
            Some(&w),
            Some(Refusal::WrongRestorePoint),
        ),
        (
            "its own restore point",
            message(5, completed(Some(&own_point))),
            QUEUE,
            Some(&w),
            None,
        ),
        (
            "a session at its own address",
            message(5, session("https://10.0.1.23/")),
            QUEUE,
            Some(&w),
            None,
        ),
        (
            "a session elsewhere",
            message(5, session("https://203.0.113.7/")),
            QUEUE,
            Some(&w),
            Some(Refusal::ForeignBrowserHost),
        ),
        (
            "for no worker of the job",
            message(i64::MAX, WorkerEvent::Started),
            QUEUE,
            None,
            None,
        ),
    ];
    for (name, msg, arrived_on, worker, want) in cases {
        assert_eq!(refusal(&msg, arrived_on, worker, &expected), want, "{name}");
    }
}

#[test]
fn parse_errors_are_malformed_or_oversized() {
    let too_large = WorkerMessage::parse(&"x".repeat(crate::messages::bounds::BODY_BYTES + 1));
    assert_eq!(
        Refusal::of_parse_error(&too_large.unwrap_err()),
        Refusal::Oversized
    );
    let garbage = WorkerMessage::parse("{nope").unwrap_err();
    assert_eq!(Refusal::of_parse_error(&garbage), Refusal::Malformed);
    assert_eq!(Refusal::SequenceJump.to_string(), "SequenceJump");
}

#[test]
fn a_message_speaks_only_for_a_worker_its_job_can_have() {
    let worker = |attempt: i32, instance: Option<&'static str>| KnownWorker {
        resource_is_the_jobs: true,
        first_attempts: 7,
        recorded: Some((attempt, instance)),
    };
    let from = |attempt: i32, instance: &str| {
        let mut m = message(1, WorkerEvent::Heartbeat);
        m.attempt = attempt;
        m.instance_id = instance.into();
        m
    };
    let me = "i-0aaaaaaaaaaaaaaaa";
    let unrecorded = KnownWorker {
        resource_is_the_jobs: true,
        first_attempts: 7,
        recorded: None,
    };
    let cases: [(&str, KnownWorker<'_>, WorkerMessage, Option<Refusal>); 10] = [
        ("no worker recorded yet", unrecorded, from(1, me), None),
        (
            "an attempt the backoff limit allows",
            unrecorded,
            from(7, me),
            None,
        ),
        (
            "beyond the backoff limit",
            unrecorded,
            from(8, me),
            Some(Refusal::UnknownWorker),
        ),
        (
            "its recorded instance",
            worker(2, Some(me)),
            from(2, me),
            None,
        ),
        (
            "before its instance is recorded",
            worker(2, None),
            from(2, me),
            None,
        ),
        (
            "the next attempt, while its record lags",
            worker(2, Some("i-0bbbbbbbbbbbbbbbb")),
            from(3, me),
            None,
        ),
        (
            "another instance for a recorded attempt",
            worker(2, Some("i-0bbbbbbbbbbbbbbbb")),
            from(2, me),
            Some(Refusal::ForeignInstance),
        ),
        (
            "an attempt the job cannot have launched",
            worker(2, None),
            from(9, me),
            Some(Refusal::UnknownWorker),
        ),
        (
            "attempt zero",
            worker(2, None),
            from(0, me),
            Some(Refusal::UnknownWorker),
        ),
        (
            "a resource the job does not have",
            KnownWorker {
                resource_is_the_jobs: false,
                ..worker(2, None)
            },
            from(2, me),
            Some(Refusal::UnknownWorker),
        ),
    ];
    for (name, known, message, want) in cases {
        assert_eq!(worker_refusal(known, &message), want, "{name}");
    }
}
