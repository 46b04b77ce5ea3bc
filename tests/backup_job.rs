//! BackupJob end to end, against the real kube-apiserver and the moto AWS
//! emulator: status on one side, EC2/SQS state on the other.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use common::{REGION, TestEnv, condition, launched, reports};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use tender::api::{BackupJob, Phase, WorkerConfiguration};
use tender::messages::WorkerEvent;

const TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn backup_job_launches_a_worker_follows_it_and_terminates_it() {
    let env = TestEnv::new("happy").await;
    let net = env.network().await;
    let (subnet, zone, sg) = (
        net.subnet.clone(),
        net.zone.clone(),
        net.security_group.clone(),
    );
    let protected = env.protected_disk().await;
    env.create_configuration("default", &net, serde_json::json!({}))
        .await;
    let cfg = env.wait_configuration_ready("default").await;
    let queue_url = cfg.status.unwrap().queue_url.unwrap();

    let created = env
        .create_job(
            "nightly",
            &protected,
            serde_json::json!({"workerConfigurationRef": {"name": "default"}}),
        )
        .await;
    let uid = created.uid().unwrap();

    let job = env
        .wait_job("nightly", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Succeeded && s.active_workers == 0)
        })
        .await;

    // The custom resource's side.
    let status = job.status.clone().unwrap();
    assert_eq!(status.observed_generation, job.metadata.generation);
    assert_eq!(
        status.worker_configuration,
        Some(env.cluster_name("default"))
    );
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    let ready = condition(&job, "Ready").expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Succeeded")
    );
    assert!(condition(&job, "Reconciling").is_none() && condition(&job, "Stalled").is_none());
    assert!(job.finalizers().iter().any(|f| f == "tender.dev/workers"));
    let [worker] = &status.workers[..] else {
        panic!("one worker expected: {status:?}")
    };
    assert_eq!(worker.resource, protected);
    assert_eq!(worker.phase, Phase::Succeeded);
    assert_eq!(worker.attempt, 1);
    assert_eq!(worker.instance_type.as_deref(), Some("m5.large"));
    assert_eq!(worker.subnet_id.as_deref(), Some(subnet.as_str()));
    assert!(worker.placement.as_deref().unwrap().contains(&zone));
    assert_eq!(worker.progress_percent, Some(100));
    assert!(worker.message.as_deref().unwrap().contains(&protected));
    for (what, t) in [
        ("launchTime", &worker.launch_time),
        ("startedTime", &worker.started_time),
        ("finishedTime", &worker.finished_time),
        ("terminatedTime", &worker.terminated_time),
    ] {
        assert!(t.is_some(), "{what} missing: {worker:?}");
    }
    let instance_id = worker.instance_id.clone().unwrap();

    // The emulator's side: exactly one worker for the job, terminated, tagged
    // with its owner, launched as configured.
    let instances = env.workers_of(&uid).await;
    assert_eq!(instances.len(), 1, "one worker instance for the job");
    let instance = &instances[0];
    assert_eq!(instance.instance_id(), Some(instance_id.as_str()));
    common::assert_terminating(instance);
    assert_eq!(instance.instance_type().unwrap().as_str(), "m5.large");
    assert_eq!(instance.subnet_id(), Some(subnet.as_str()));
    // The emulator reports the groups on the network interface.
    let eni = &instance.network_interfaces()[0];
    assert!(
        eni.groups()
            .iter()
            .any(|g| g.group_id() == Some(sg.as_str())),
        "{eni:?}"
    );
    assert_eq!(
        instance.public_ip_address(),
        None,
        "no public IP unless asked for"
    );
    let tags = TestEnv::tags(instance);
    assert_eq!(tags["tender.dev/cluster-id"], env.cluster_id);
    assert_eq!(tags["tender.dev/namespace"], env.namespace);
    assert_eq!(tags["tender.dev/job-name"], "nightly");
    assert_eq!(tags["tender.dev/job-kind"], "BackupJob");
    assert_eq!(tags["tender.dev/resource"], protected);
    assert_eq!(tags["tender.dev/attempt"], "1");
    assert_eq!(tags["tender.dev/launch-token"], worker.launch_token);
    assert_eq!(tags["team"], "storage");
    assert_eq!(tags["cost-center"], "42");
    let metadata = instance.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens().unwrap().as_str(), "required");

    // The worker reported over the configuration's queue, and the applied
    // messages were deleted from it.
    let sqs = common::sqs().await;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    let visible = &attrs[&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages];
    assert_eq!(visible, "0", "every worker message was consumed");

    // Events tell the story (the job's own is published just after its
    // status is written).
    let reasons: Vec<String> = common::eventually(Duration::from_secs(10), || async {
        let reasons: Vec<String> = env.events().await.into_iter().map(|(r, _)| r).collect();
        reasons
            .iter()
            .any(|r| r == "JobSucceeded")
            .then_some(reasons)
    })
    .await;
    for reason in [
        "WorkerLaunched",
        "WorkerStarted",
        "WorkerSucceeded",
        "WorkerTerminated",
        "JobSucceeded",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "event {reason} missing from {reasons:?}"
        );
    }

    // The configuration counts no active worker now (its count is written
    // apart from the job's status, a moment later).
    let api: Api<WorkerConfiguration> = env.cluster_api();
    let default = env.cluster_name("default");
    let count = common::eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let default = default.clone();
        async move {
            let cfg = api.get(&default).await.ok()?;
            let active = cfg.status?.active_workers;
            (active == 0).then_some(active)
        }
    })
    .await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_job_without_a_configuration_is_stalled_then_runs_once_one_exists() {
    let env = TestEnv::new("noconfig").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    let created = env
        .create_job("orphan", &protected, serde_json::json!({}))
        .await;

    let job = env
        .wait_job("orphan", TIMEOUT, |j| {
            condition(j, "Stalled").is_some_and(|c| c.status == "True")
        })
        .await;
    let stalled = condition(&job, "Stalled").unwrap();
    assert_eq!(stalled.reason, "WorkerConfigurationNotFound");
    assert!(stalled.message.contains(REGION), "{}", stalled.message);
    assert_eq!(condition(&job, "Ready").unwrap().status, "False");
    assert_eq!(job.status.as_ref().unwrap().phase, Phase::Pending);
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, _)| r == "WorkerConfigurationNotFound"),
        "{events:?}"
    );
    assert!(env.workers_of(&created.uid().unwrap()).await.is_empty());

    // Creating the configuration (without a reference: found as its
    // region's default) lets the job run.
    env.create_configuration("east", &net, serde_json::json!({}))
        .await;
    let job = env
        .wait_job_phase("orphan", TIMEOUT, Phase::Succeeded)
        .await;
    assert!(condition(&job, "Stalled").is_none());
    assert_eq!(
        job.status.unwrap().worker_configuration,
        Some(env.cluster_name("east"))
    );
}

#[tokio::test]
async fn a_missing_source_instance_fails_the_job_without_launching() {
    let env = TestEnv::new("nosource").await;
    env.default_configuration().await;
    let created = env
        .create_job("ghost", "i-00000000deadbeef0", serde_json::json!({}))
        .await;

    let job = env.wait_job_phase("ghost", TIMEOUT, Phase::Failed).await;
    let stalled = condition(&job, "Stalled").expect("a failed job is Stalled");
    assert_eq!(stalled.reason, "Failed");
    assert!(
        stalled.message.contains("SourceInstanceNotFound"),
        "{}",
        stalled.message
    );
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert!(worker.instance_id.is_none());
    assert!(env.workers_of(&created.uid().unwrap()).await.is_empty());
    let events = env.events().await;
    assert!(
        events.iter().any(|(r, _)| r == "SourceInstanceNotFound"),
        "{events:?}"
    );
}

#[tokio::test]
async fn deleting_a_running_job_terminates_its_worker_first() {
    let env = TestEnv::new("delete").await;
    // The worker instance never boots an agent: it stays Provisioning.
    env.boot_workers
        .store(false, std::sync::atomic::Ordering::SeqCst);
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let created = env
        .create_job("doomed", &protected, serde_json::json!({}))
        .await;
    let uid = created.uid().unwrap();

    let job = env
        .wait_job("doomed", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.workers.first().is_some_and(|w| w.instance_id.is_some()))
        })
        .await;
    assert_eq!(job.status.as_ref().unwrap().phase, Phase::Provisioning);
    assert_eq!(job.status.as_ref().unwrap().active_workers, 1);
    let instance_id = job.status.unwrap().workers[0].instance_id.clone().unwrap();
    let running = env.workers_of(&uid).await;
    // The worker's root volume is encrypted and tagged like the worker, and
    // its user data is the script that starts the agent.
    let volumes = env
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(&instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let root = &volumes.volumes()[0];
    assert_eq!(root.encrypted(), Some(true));
    assert_eq!(root.size(), Some(16));
    let user_data = env
        .ec2
        .describe_instance_attribute()
        .instance_id(&instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let script = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        user_data.user_data().unwrap().value().unwrap(),
    )
    .unwrap();
    let script = String::from_utf8(script).unwrap();
    assert!(
        script.starts_with("#!/bin/sh")
            && script.contains("ExecStart=${AGENT} worker")
            && script.contains("\nURL='http"),
        "{script}"
    );
    let task = tender::messages::WorkerTask::from_user_data(&script).unwrap();
    assert_eq!((task.job_name.as_str(), task.attempt), ("doomed", 1));
    let state = common::state(&running[0]);
    assert!(state == "pending" || state == "running", "{state}");

    // The configuration cannot go while the job runs.
    let configs: Api<WorkerConfiguration> = env.cluster_api();
    let default = env.cluster_name("default");
    configs
        .delete(&default, &DeleteParams::default())
        .await
        .unwrap();
    let cfg = common::eventually(TIMEOUT, || {
        let configs = configs.clone();
        let default = default.clone();
        async move {
            let c = configs.get(&default).await.ok()?;
            (c.status.as_ref()?.phase.as_deref() == Some("Deleting")).then_some(c)
        }
    })
    .await;
    let ready = cfg
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "InUse");
    let doomed = format!("BackupJob {}/doomed", env.namespace);
    assert!(ready.message.contains(&doomed), "{}", ready.message);
    let queue_url = cfg.status.unwrap().queue_url.unwrap();

    let jobs: Api<BackupJob> = env.api();
    jobs.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(TIMEOUT, || {
        let jobs = jobs.clone();
        async move { jobs.get_opt("doomed").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let after = env.workers_of(&uid).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].instance_id(), Some(instance_id.as_str()));
    common::assert_terminating(&after[0]);

    // With the job gone, the configuration goes, and its queue with it.
    common::eventually(TIMEOUT, || {
        let configs = configs.clone();
        let default = default.clone();
        async move {
            configs
                .get_opt(&default)
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let sqs = common::sqs().await;
    let gone = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .send()
        .await;
    assert!(gone.is_err(), "the configuration's queue was deleted");
}

fn completed(restore_point: &str) -> WorkerEvent {
    WorkerEvent::Completed {
        detail: "backed up".into(),
        restore_point: Some(restore_point.into()),
        snapshot_id: None,
        snapshots: Vec::new(),
        bytes: None,
        machine: None,
        retention: None,
        verification: None,
    }
}

/// A message counts only from the queue of its job's configuration: a
/// `completed` forged onto another configuration's queue (one its forger
/// may send to) is dropped, logged and counted, and changes nothing.
#[tokio::test]
async fn a_completion_forged_on_another_configurations_queue_is_not_applied() {
    let (env, port) = TestEnv::with_silent_workers("wrong-queue").await;
    let victim = env.configured("victim", json!({})).await.queue_url();
    let other = env.configured("other", json!({})).await.queue_url();
    let protected = env.protected_disk().await;
    let using_victim = json!({"workerConfigurationRef": {"name": "victim"}});
    env.create_job("nightly", &protected, using_victim).await;
    let job = env
        .wait_job("nightly", TIMEOUT, |j| launched(&j.status))
        .await;
    let w = job.status.as_ref().unwrap().workers[0].worker.clone();
    reports::send(&victim, reports::message(&job, &w, 1, WorkerEvent::Started)).await;
    env.wait_job_phase("nightly", TIMEOUT, Phase::Running).await;

    let point = format!("nightly/{protected}");
    reports::send(&other, reports::message(&job, &w, 2, completed(&point))).await;
    env.wait_refused(port, "WrongQueue", 1).await;
    reports::wait_drained(&other).await;

    let after: BackupJob = env.api().get("nightly").await.unwrap();
    let status = after.status.unwrap();
    assert_eq!(status.phase, Phase::Running, "{status:?}");
    let worker = &status.workers[0];
    assert_eq!(
        (
            worker.phase,
            worker.last_sequence,
            worker.restore_point.as_deref()
        ),
        (Phase::Running, 1, None),
        "{worker:?}"
    );
    let log = std::fs::read_to_string(
        env.log_dir
            .join(format!("{}-controller.log", env.namespace)),
    )
    .unwrap();
    assert!(log.contains("came on another configuration's queue"));
}

/// Forgeries on the right queue that the sender check would stop in AWS
/// (the emulator names one sender for all): a sequence number no worker
/// can have reached (which would make every later real message look
/// stale), a detail of about 1 MiB (as much as SQS carries), and a
/// restore point the attempt does not write. Each is refused, and the real
/// worker, booted afterwards, still reports from sequence 1 and succeeds.
#[tokio::test]
async fn forged_sequences_details_and_restore_points_are_refused_and_the_worker_still_counts() {
    let (env, port) = TestEnv::with_silent_workers("forged").await;
    let queue = env.default_configuration().await.queue_url();
    let protected = env.protected_disk().await;
    env.create_job("nightly", &protected, json!({})).await;
    let job = env
        .wait_job("nightly", TIMEOUT, |j| launched(&j.status))
        .await;
    let w = job.status.as_ref().unwrap().workers[0].worker.clone();

    let silencer = WorkerEvent::Progress {
        percent: 1,
        detail: "every later message is stale".into(),
        bytes: None,
        session: None,
    };
    let huge = WorkerEvent::Progress {
        percent: 2,
        detail: "x".repeat(1024 * 1024 - 1024),
        bytes: None,
        session: None,
    };
    reports::send(&queue, reports::message(&job, &w, i64::MAX, silencer)).await;
    reports::send(&queue, reports::message(&job, &w, 2, huge)).await;
    let elsewhere = completed("nightly/i-0fedcba9876543210");
    reports::send(&queue, reports::message(&job, &w, 3, elsewhere)).await;
    for reason in ["SequenceJump", "Oversized", "WrongRestorePoint"] {
        env.wait_refused(port, reason, 1).await;
    }
    reports::wait_drained(&queue).await;
    let held: BackupJob = env.api().get("nightly").await.unwrap();
    let worker = &held.status.unwrap().workers[0];
    assert_eq!(
        (
            worker.phase,
            worker.last_sequence,
            worker.restore_point.as_deref()
        ),
        (Phase::Provisioning, 0, None),
        "{worker:?}"
    );

    env.boot_workers.store(true, Ordering::SeqCst);
    let done = env
        .wait_job_finished("nightly", TIMEOUT)
        .await
        .status
        .unwrap();
    assert_eq!(done.phase, Phase::Succeeded, "{done:?}");
    let worker = &done.workers[0];
    assert_eq!(
        worker.restore_point.as_deref(),
        Some(format!("nightly/{protected}").as_str())
    );
    assert!(worker.last_sequence < 100, "{worker:?}");
}

/// The queue's policy, read back from SQS (the emulator stores it but does
/// not enforce it): only EC2 instance credentials of the workers' account
/// may send, only the controller may receive and delete.
#[tokio::test]
async fn the_queue_lets_only_worker_instances_send_and_only_the_controller_receive() {
    let env = TestEnv::new("queue-policy").await;
    let queue = env.default_configuration().await.queue_url();
    let (account, user_id) = env.controller_identity().await;
    let (account, user_id) = (account.as_str(), user_id.as_str());
    let out = common::sqs()
        .await
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .unwrap();
    let text = &out.attributes().unwrap()[&QueueAttributeName::Policy];
    let policy: serde_json::Value = serde_json::from_str(text).unwrap();
    let name = queue.rsplit('/').next().unwrap();
    let arn = format!("arn:aws:sqs:{REGION}:{account}:{name}");
    let statement = |sid: &str| {
        tender::controller::queue_access::statement(&policy, sid)
            .unwrap_or_else(|| panic!("no {sid} in {policy:#}"))
            .clone()
    };
    let only_instances = statement("OnlyInstanceCredentialsSend");
    assert_eq!(
        (&only_instances["Effect"], &only_instances["Action"]),
        (&json!("Deny"), &json!("sqs:SendMessage"))
    );
    assert_eq!(only_instances["Resource"], arn.as_str());
    assert_eq!(
        only_instances["Condition"]["Null"]["ec2:SourceInstanceARN"],
        "true"
    );
    let only_workers = statement("OnlyWorkerInstancesSend");
    assert_eq!(
        only_workers["Condition"]["ArnNotLike"]["ec2:SourceInstanceARN"],
        format!("arn:aws:ec2:{REGION}:{account}:instance/*").as_str()
    );
    let only_controller = statement("OnlyTheControllerReceives");
    assert_eq!(only_controller["Effect"], "Deny");
    assert_eq!(only_controller["Principal"], "*");
    let actions = only_controller["Action"].as_array().unwrap();
    for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage"] {
        assert!(actions.contains(&json!(action)), "{actions:?}");
    }
    let controller = match user_id.split_once(':') {
        Some((role, _)) => format!("{role}:*"),
        None => user_id.to_string(),
    };
    assert_eq!(
        only_controller["Condition"]["StringNotLike"]["aws:userid"],
        json!([controller])
    );
}

/// With the sender check on (the production default), the workers' own
/// messages count: the test world's SQS names each worker's
/// instance-profile session (`<role ID>:<instance ID>`) as the sender, as
/// AWS does. A message the test sends with its own key names its account
/// instead, and is refused as `ForeignSender` though it says all the
/// right things.
#[tokio::test]
async fn with_the_sender_check_on_only_the_workers_own_messages_count() {
    if !common::realism::enabled() {
        eprintln!("skipped: the environment runs plain moto (TENDER_REALISM=0)");
        return;
    }
    let env = TestEnv::without_controller("sender").await;
    let port = env.start_controller_with(&[], &[("TENDER_REQUIRE_WORKER_SENDER", "true")]);
    let queue = env.default_configuration().await.queue_url();
    let protected = env.protected_disk().await;
    env.create_job("nightly", &protected, json!({})).await;
    let job = env
        .wait_job("nightly", TIMEOUT, |j| launched(&j.status))
        .await;
    let w = job.status.as_ref().unwrap().workers[0].worker.clone();
    let point = format!("nightly/{protected}");
    reports::send(&queue, reports::message(&job, &w, 50, completed(&point))).await;
    env.wait_refused(port, "ForeignSender", 1).await;

    let done = env.wait_job_finished("nightly", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(
        status.workers[0].restore_point.as_deref(),
        Some(point.as_str())
    );
    assert_eq!(
        reports::refused(&env.metrics(port).await, "ForeignSender"),
        1
    );
}

/// A worker whose role cannot `s3:ListBucket` the repository meets S3's
/// answer for a key that does not exist yet: 403, not 404 (the test world
/// plays that rule). The job fails at once, by name, saying what to grant;
/// it is not retried, and the 403 is not taken for "absent".
#[tokio::test]
async fn a_worker_without_list_bucket_fails_by_name_with_what_to_grant() {
    if !common::realism::enabled() {
        eprintln!("skipped: the environment runs plain moto (TENDER_REALISM=0)");
        return;
    }
    let env = TestEnv::new("no-list-bucket").await;
    // The workers' role may do everything but s3:ListBucket.
    let role = common::unique("no-list");
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "NotAction": "s3:ListBucket", "Resource": "*"}]
    });
    common::realism::ensure_role(&role, &policy).await;
    env.configured("default", json!({"instanceProfiles": {"backup": role}}))
        .await;
    let disk = env.protected_disk().await;

    env.create_job("first", &disk, json!({})).await;
    let job = env
        .wait_job_finished("first", Duration::from_secs(120))
        .await;
    let status = job.status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    let worker = &status.workers[0];
    assert_eq!(worker.reason.as_deref(), Some("RepositoryAccessDenied"));
    assert_eq!(
        worker.attempt, 1,
        "a permission a retry cannot fix is not retried"
    );
    let message = worker.message.clone().unwrap();
    for needed in [
        "s3:GetObject",
        "s3:ListBucket",
        "s3:prefix",
        "/restore-points/first/",
    ] {
        assert!(message.contains(needed), "{needed} not in {message}");
    }
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("a Failed condition");
    assert!(
        failed.message.contains("RepositoryAccessDenied"),
        "{}",
        failed.message
    );
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "RepositoryAccessDenied"
                || note.contains("RepositoryAccessDenied")),
        "{events:?}"
    );
}
