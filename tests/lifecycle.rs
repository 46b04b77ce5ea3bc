//! The worker lifecycle under failure, against the real kube-apiserver and
//! the moto AWS emulator: lost workers and retries, deadlines, TTL, a
//! controller killed mid-launch, orphans, bad and repeated messages, and
//! leader election. Each test checks the job's status and the emulator's
//! EC2/SQS state.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use common::{TestEnv, condition, reports};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tender::api::{BackupJob, Phase};
use tender::messages::WorkerEvent;

const TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_lost_worker_is_retried_then_the_job_fails_at_the_backoff_limit() {
    let env = TestEnv::new("lost").await;
    env.boot_workers.store(false, Ordering::SeqCst); // workers never report
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration(
        "default",
        &net,
        serde_json::json!({"heartbeatTimeoutSeconds": 5, "bootTimeoutSeconds": 10}),
    )
    .await;
    env.wait_configuration_ready("default").await;
    let job = env
        .create_job("silent", &protected, serde_json::json!({"backoffLimit": 1}))
        .await;
    let uid = job.uid().unwrap();

    let job = env.wait_job_phase("silent", TIMEOUT, Phase::Failed).await;
    let status = job.status.clone().unwrap();
    let worker = &status.workers[0];
    assert_eq!(worker.attempt, 2, "one retry: {worker:?}");
    assert_eq!(worker.failures, 2);
    // It never started: the boot timeout, with what its console says
    // (nothing: no user data ran).
    assert_eq!(worker.reason.as_deref(), Some("WorkerBootTimeout"));
    let message = worker.message.as_deref().unwrap();
    assert!(
        message.contains("did not report that it started within")
            && message.contains("bootTimeoutSeconds is 10")
            && message.contains("it has no console output yet"),
        "{worker:?}"
    );
    assert_eq!(status.active_workers, 0);
    assert_eq!(condition(&job, "Failed").unwrap().status, "True");
    assert_eq!(condition(&job, "Stalled").unwrap().status, "True");

    // Two attempts, two instances with distinct tokens, both terminated.
    let instances = env.workers_of(&uid).await;
    assert_eq!(instances.len(), 2, "one instance per attempt");
    let mut attempts: Vec<String> = instances
        .iter()
        .map(|i| TestEnv::tags(i)["tender.dev/attempt"].clone())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"]);
    let tokens: std::collections::BTreeSet<String> = instances
        .iter()
        .map(|i| TestEnv::tags(i)["tender.dev/launch-token"].clone())
        .collect();
    assert_eq!(tokens.len(), 2, "each attempt has its own launch token");
    instances.iter().for_each(common::assert_terminating);

    let reasons: Vec<String> = env.events().await.into_iter().map(|(r, _)| r).collect();
    for reason in ["WorkerBootTimeout", "WorkerRetried", "JobFailed"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "event {reason} missing: {reasons:?}"
        );
    }
}

#[tokio::test]
async fn the_active_deadline_stops_a_job_and_its_worker() {
    let env = TestEnv::new("deadline").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let job = env
        .create_job(
            "slow",
            &protected,
            serde_json::json!({"activeDeadlineSeconds": 3, "backoffLimit": 5}),
        )
        .await;
    let uid = job.uid().unwrap();

    let job = env.wait_job_phase("slow", TIMEOUT, Phase::Failed).await;
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert_eq!(worker.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(worker.attempt, 1, "a deadline is not retried");
    let failed = condition(&job, "Failed").unwrap();
    assert!(
        failed.message.contains("activeDeadlineSeconds"),
        "{}",
        failed.message
    );
    let instances = env.workers_of(&uid).await;
    assert_eq!(instances.len(), 1);
    common::assert_terminating(&instances[0]);
}

#[tokio::test]
async fn a_finished_job_is_deleted_after_its_ttl() {
    let env = TestEnv::new("ttl").await;
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let job = env
        .create_job(
            "short-lived",
            &protected,
            serde_json::json!({"ttlSecondsAfterFinished": 2}),
        )
        .await;
    let uid = job.uid().unwrap();

    env.wait_job_phase("short-lived", TIMEOUT, Phase::Succeeded)
        .await;
    let jobs: Api<BackupJob> = env.api();
    common::eventually(TIMEOUT, || {
        let jobs = jobs.clone();
        async move {
            jobs.get_opt("short-lived")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let instances = env.workers_of(&uid).await;
    assert_eq!(instances.len(), 1);
    common::assert_terminating(&instances[0]);
}

#[tokio::test]
async fn a_suspended_job_launches_nothing_until_resumed() {
    let env = TestEnv::new("suspend").await;
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let job = env
        .create_job("paused", &protected, serde_json::json!({"suspend": true}))
        .await;
    let uid = job.uid().unwrap();

    let job = env
        .wait_job_phase("paused", TIMEOUT, Phase::Suspended)
        .await;
    assert_eq!(condition(&job, "Suspended").unwrap().status, "True");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.workers_of(&uid).await.is_empty(),
        "nothing launched while suspended"
    );

    let jobs: Api<BackupJob> = env.api();
    jobs.patch(
        "paused",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    let job = env
        .wait_job_phase("paused", TIMEOUT, Phase::Succeeded)
        .await;
    assert!(condition(&job, "Suspended").is_none());
    let instances = env.workers_of(&uid).await;
    assert_eq!(instances.len(), 1);
    common::assert_terminating(&instances[0]);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "crash points need --features fault-injection"
)]
async fn a_controller_killed_right_after_run_instances_adopts_the_worker_on_restart() {
    let env = TestEnv::without_controller("crash").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    // This controller aborts the moment RunInstances returns, before the
    // instance ID reaches the job's status.
    env.start_controller_with(&[], &[("TENDER_CRASH_AT", "after-run-instances")]);
    env.create_configuration("default", &net, serde_json::json!({}))
        .await;
    env.wait_configuration_ready("default").await;
    let job = env
        .create_job("survivor", &protected, serde_json::json!({}))
        .await;
    let uid = job.uid().unwrap();

    common::eventually(TIMEOUT, || async {
        (!env.exited_controllers().is_empty()).then_some(())
    })
    .await;
    let jobs: Api<BackupJob> = env.api();
    let crashed = jobs.get("survivor").await.unwrap();
    let worker = &crashed.status.as_ref().unwrap().workers[0];
    assert!(
        worker.instance_id.is_none(),
        "the crash came before the status write: {worker:?}"
    );
    assert_eq!(env.workers_of(&uid).await.len(), 1);

    env.kill_controller();
    env.start_controller();
    let job = env
        .wait_job_phase("survivor", TIMEOUT, Phase::Succeeded)
        .await;
    let instances = env.workers_of(&uid).await;
    assert_eq!(instances.len(), 1, "exactly one instance for the job");
    assert_eq!(
        job.status.as_ref().unwrap().workers[0]
            .instance_id
            .as_deref(),
        instances[0].instance_id()
    );
    common::assert_terminating(&instances[0]);
    let reasons: Vec<String> = env.events().await.into_iter().map(|(r, _)| r).collect();
    assert!(reasons.iter().any(|r| r == "WorkerAdopted"), "{reasons:?}");
}

#[tokio::test]
async fn the_sweep_terminates_orphaned_workers_and_deletes_orphaned_queues() {
    let env = TestEnv::without_controller("orphan").await;
    let port = env.start_controller_with(&[], &[]);
    let net = env.default_configuration().await.net;

    // A worker whose job never existed here, and one of another cluster.
    let orphan_tags = [
        ("tender.dev/cluster-id", env.cluster_id.as_str()),
        ("tender.dev/namespace", env.namespace.as_str()),
        ("tender.dev/job-kind", "BackupJob"),
        ("tender.dev/job-name", "deleted-long-ago"),
        ("tender.dev/job-uid", "00000000-0000-0000-0000-000000000000"),
        ("tender.dev/launch-token", "tender-0000"),
    ];
    let run = |tags: Vec<(String, String)>| {
        let ec2 = env.ec2.clone();
        let subnet = net.subnet.clone();
        async move {
            let spec = TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(
                    tags.into_iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .build();
            let out = ec2
                .run_instances()
                .image_id("ami-0123456789abcdef0")
                .instance_type(aws_sdk_ec2::types::InstanceType::C5Large)
                .min_count(1)
                .max_count(1)
                .subnet_id(subnet)
                .tag_specifications(spec)
                .send()
                .await
                .unwrap();
            out.instances()[0].instance_id().unwrap().to_string()
        }
    };
    let orphan = run(orphan_tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
    .await;
    let foreign_cluster = common::unique("other-cluster");
    let foreign = run(orphan_tags
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                if *k == "tender.dev/cluster-id" {
                    foreign_cluster.clone()
                } else {
                    v.to_string()
                },
            )
        })
        .collect())
    .await;
    // A queue whose configuration is gone.
    let sqs = common::sqs().await;
    let queue = sqs
        .create_queue()
        .queue_name(common::unique("tender-gone"))
        .tags("tender.dev/cluster-id", &env.cluster_id)
        .tags("tender.dev/worker-configuration", env.cluster_name("gone"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();

    let describe = |id: String| {
        let ec2 = env.ec2.clone();
        async move { common::state(&common::describe_instance(&ec2, &id).await) }
    };
    common::eventually(TIMEOUT, || {
        let d = describe(orphan.clone());
        async move { (d.await == "terminated").then_some(()) }
    })
    .await;
    common::eventually(TIMEOUT, || {
        let sqs = sqs.clone();
        let queue = queue.clone();
        async move {
            sqs.get_queue_attributes()
                .queue_url(queue)
                .send()
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        describe(foreign.clone()).await,
        "running",
        "another cluster's worker is left alone"
    );
    // The configuration in use keeps its queue.
    let cfg = env.wait_configuration_ready("default").await;
    let live_queue = cfg.status.unwrap().queue_url.unwrap();
    assert!(
        sqs.get_queue_attributes()
            .queue_url(live_queue)
            .send()
            .await
            .is_ok()
    );

    let metrics = env.metrics(port).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tender_gc_orphans_terminated_total") && l.contains("OwnerGone"))
        .unwrap_or_else(|| panic!("no orphan metric in:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    // Every sweep creates the series; the orphaned queue must have counted.
    let queues_deleted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tender_gc_queues_deleted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        queues_deleted >= 1.0,
        "no queue deletion counted:\n{metrics}"
    );
    env.ec2
        .terminate_instances()
        .instance_ids(foreign)
        .send()
        .await
        .unwrap();
}

/// A message of the job's first worker, as its agent would send it.
fn message(job: &BackupJob, sequence: i64, event: WorkerEvent) -> String {
    let w = &job.status.as_ref().expect("the job has a status").workers[0];
    reports::message(job, w, sequence, event)
}

#[tokio::test]
async fn duplicate_late_and_malformed_messages_change_nothing() {
    let env = TestEnv::new("messages").await;
    let queue = env.default_configuration().await.queue_url();
    let protected = env.protected_disk().await;
    let done = env.back_up("steady", &protected, TIMEOUT).await;

    let send = |body: String| reports::send(&queue, body);
    let last = done.status.as_ref().unwrap().workers[0].last_sequence;
    // A duplicate of the last message, an older one arriving late, a failure
    // after success, garbage, a future protocol version, and a message for a
    // job that does not exist.
    send(message(
        &done,
        last,
        WorkerEvent::Completed {
            detail: "again".into(),
            restore_point: Some("other/point".into()),
            snapshot_id: None,
            snapshots: Vec::new(),
            bytes: None,
            machine: None,
            retention: None,
            verification: None,
        },
    ))
    .await;
    send(message(
        &done,
        1,
        WorkerEvent::Progress {
            percent: 5,
            detail: "late".into(),
            bytes: None,
            session: None,
        },
    ))
    .await;
    send(message(
        &done,
        last + 1,
        WorkerEvent::Failed {
            reason: "Boom".into(),
            message: "after the fact".into(),
            verification: None,
        },
    ))
    .await;
    send("{this is not json".into()).await;
    send(message(&done, last + 2, WorkerEvent::Started).replace("\"version\":1", "\"version\":99"))
        .await;
    let mut ghost: serde_json::Value =
        serde_json::from_str(&message(&done, 1, WorkerEvent::Started)).unwrap();
    ghost["jobUid"] = "not-a-job".into();
    send(ghost.to_string()).await;

    // Every message is consumed, and the job is exactly as it was.
    reports::wait_drained(&queue).await;
    let after: BackupJob = env.api().get("steady").await.unwrap();
    assert_eq!(
        after.status, done.status,
        "late, repeated and bad messages changed the status"
    );
    assert!(
        env.exited_controllers().is_empty(),
        "the controller survived the bad messages"
    );

    // And it still works.
    env.back_up("next", &protected, TIMEOUT).await;
    let log = std::fs::read_to_string(
        env.log_dir
            .join(format!("{}-controller.log", env.namespace)),
    )
    .unwrap();
    assert!(
        log.contains("dropping malformed worker message"),
        "malformed message not logged"
    );
    assert!(log.contains("dropping worker message for a job that does not exist"));
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_acts_and_a_follower_takes_over() {
    let env = TestEnv::without_controller("leader").await;
    let election = [
        "--leader-elect",
        "--leader-election-lease-seconds",
        "3",
        "--leader-election-renew-seconds",
        "1",
    ];
    let first = env.start_controller_with(&election, &[("POD_NAME", "replica-a")]);
    let leases: Api<Lease> = env.api();
    let holder = || {
        let leases = leases.clone();
        async move {
            leases
                .get_opt("tender-controller")
                .await
                .ok()??
                .spec?
                .holder_identity
                .filter(|h| !h.is_empty())
        }
    };
    common::eventually(TIMEOUT, || async {
        (holder().await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let second = env.start_controller_with(&election, &[("POD_NAME", "replica-b")]);

    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let job = env
        .create_job("led", &protected, serde_json::json!({}))
        .await;
    env.wait_job_phase("led", TIMEOUT, Phase::Succeeded).await;
    assert_eq!(env.workers_of(&job.uid().unwrap()).await.len(), 1);
    let follower_metrics = env.metrics(second).await;
    assert!(
        !follower_metrics.contains("tender_workers_launched_total{"),
        "the follower launched nothing:\n{follower_metrics}"
    );
    assert!(
        env.metrics(first)
            .await
            .contains("tender_workers_launched_total{")
    );
    // The standby is ready too (readiness gates rollouts and drains).
    let ready = env.http_get(second, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // The leader dies; the follower takes over once the lease expires.
    env.kill_controller_on(first);
    common::eventually(TIMEOUT, || async {
        (holder().await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let job = env
        .create_job("after-failover", &protected, serde_json::json!({}))
        .await;
    env.wait_job_phase("after-failover", TIMEOUT, Phase::Succeeded)
        .await;
    assert_eq!(env.workers_of(&job.uid().unwrap()).await.len(), 1);
}
