//! BackupPolicy end to end, against the real kube-apiserver and the moto
//! AWS emulator: runs start on their minute, survive a controller restart
//! without a lost or doubled run, and find tagged instances at every run.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{REGION, TestEnv, eventually};
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tender::api::{BackupJob, BackupPolicy, Phase};
use tender::names::{POLICY_LABEL, SCHEDULED_TIME_ANNOTATION};

/// "On time": a run's BackupJob exists within this long of its minute.
const ON_TIME: Duration = Duration::from_secs(10);

async fn create_policy(env: &TestEnv, name: &str, spec: serde_json::Value) -> BackupPolicy {
    let policy: BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("a valid policy");
    env.api::<BackupPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the policy")
}

/// The policy's runs: (scheduled time, created time, job), oldest first.
async fn runs_of(env: &TestEnv, policy: &str) -> Vec<(Timestamp, Timestamp, BackupJob)> {
    let jobs = env
        .api::<BackupJob>()
        .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={policy}")))
        .await
        .expect("list jobs")
        .items;
    let mut runs: Vec<_> = jobs
        .into_iter()
        .map(|j| {
            let scheduled: Timestamp = j.annotations()[SCHEDULED_TIME_ANNOTATION]
                .parse()
                .expect("scheduled time");
            let created = j.metadata.creation_timestamp.clone().expect("created").0;
            (scheduled, created, j)
        })
        .collect();
    runs.sort_by_key(|r| r.0);
    runs
}

async fn wait_runs(
    env: &TestEnv,
    policy: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(Timestamp, Timestamp, BackupJob)> {
    eventually(timeout, || async {
        let runs = runs_of(env, policy).await;
        (runs.len() >= n).then_some(runs)
    })
    .await
}

/// Sleeps until `second` past the next minute (so that a step happens at
/// a known point of the schedule).
async fn until_second(second: u64) {
    let now = Timestamp::now().as_millisecond();
    let into = now.rem_euclid(60_000) as u64;
    let target = second * 1000;
    let wait = if into < target {
        target - into
    } else {
        60_000 - into + target
    };
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

fn on_time(runs: &[(Timestamp, Timestamp, BackupJob)]) {
    for (scheduled, created, job) in runs {
        let late = created.duration_since(*scheduled);
        assert!(
            late >= jiff::SignedDuration::ZERO && late.unsigned_abs() <= ON_TIME,
            "{} was created {late} after its minute",
            job.name_any()
        );
    }
}

#[tokio::test]
async fn a_policy_runs_every_minute_on_time_and_a_restart_loses_and_doubles_no_run() {
    let env = TestEnv::new("policy-schedule").await;
    let net = env.network().await;
    env.create_configuration("default", &net, json!({})).await;
    env.wait_configuration_ready("default").await;
    let subnet = net.subnet.clone();
    let protected = env.protected_instance(&subnet).await;
    let spec = env.with_cluster_names(json!({
        "schedule": "* * * * *",
        "region": REGION,
        "resources": [{"instanceId": protected}],
        "repositoryRef": {"name": env.repository().await},
        "workerConfigurationRef": {"name": "default"},
        "successfulJobsHistoryLimit": 10,
    }));
    create_policy(&env, "every-minute", spec).await;

    // The first run, on its minute; it backs the instance up with a worker.
    let first = wait_runs(&env, "every-minute", 1, Duration::from_secs(75)).await;
    on_time(&first);
    let first_job = first[0].2.name_any();
    let done = env
        .wait_job_finished(&first_job, Duration::from_secs(90))
        .await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.workers[0].resource, protected);
    // Its restore point records the policy (the job's controlling owner),
    // so the policy's retention rules apply to it.
    let repo: tender::api::BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .expect("the repository");
    let loc = tender::mover::manifest::RepositoryLocation::of(&repo.spec, &env.namespace);
    let point = status.workers[0]
        .restore_point
        .clone()
        .expect("a restore point");
    let aws = tender::aws::AwsClients::from_env().await;
    let manifest = tender::mover::load_manifest(&aws, &loc, &point)
        .await
        .expect("the restore point's manifest");
    assert_eq!(manifest.policy.as_deref(), Some("every-minute"));
    let worker_id = status.workers[0]
        .instance_id
        .clone()
        .expect("a worker was launched");
    let worker = common::describe_instance(&env.ec2, &worker_id).await;
    common::assert_terminating(&worker);

    // The controller is down across a minute: the run it missed starts
    // when it is back (no run lost), once.
    until_second(40).await;
    env.kill_controller();
    until_second(15).await;
    env.start_controller();
    until_second(30).await;
    // And it restarts between two runs: the next starts on its minute.
    env.kill_controller();
    env.start_controller();
    // Runs of the minutes of the outage, of the restart, and the one after.
    let runs = wait_runs(&env, "every-minute", 4, Duration::from_secs(150)).await;

    let minutes: Vec<i64> = runs.iter().map(|r| r.0.as_second() / 60).collect();
    let distinct: BTreeSet<i64> = minutes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        minutes.len(),
        "a run was started twice: {minutes:?}"
    );
    for pair in minutes.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "a run was lost: {minutes:?}");
    }
    // Every run but the one the outage delayed started on its minute.
    let late: Vec<_> = runs
        .iter()
        .filter(|(s, c, _)| c.duration_since(*s).unsigned_abs() > ON_TIME)
        .map(|(_, _, j)| j.name_any())
        .collect();
    assert!(late.len() <= 1, "late runs: {late:?}");

    // The policy's status says what happened.
    let policy = eventually(Duration::from_secs(60), || async {
        let p = env.api::<BackupPolicy>().get("every-minute").await.ok()?;
        let s = p.status.clone()?;
        (s.last_successful_time.is_some() && s.resources.first()?.newest_restore_point.is_some())
            .then_some(p)
    })
    .await;
    let s = policy.status.clone().expect("status");
    assert_eq!(s.observed_generation, policy.metadata.generation);
    assert!(s.next_schedule_time.is_some() && s.next_schedule_time_local.is_some());
    assert!(s.last_schedule_time.is_some());
    assert_eq!(s.resources[0].id, protected);
    assert_eq!(s.resources[0].source, "resources");
    assert!(s.resources[0].age.is_some());
    let ready = common::condition_of(&policy.status.as_ref().expect("status").conditions, "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True", "{ready:?}");
    let events = env.events().await;
    assert!(events.iter().any(|(r, _)| r == "RunStarted"), "{events:?}");
}

#[tokio::test]
async fn a_tag_selector_protects_an_instance_tagged_after_the_policy_was_made() {
    let env = TestEnv::new("policy-tags").await;
    let net = env.network().await;
    env.create_configuration("default", &net, json!({})).await;
    env.wait_configuration_ready("default").await;
    let tag = format!("backup-{}", env.namespace);
    let instance = env.protected_instance(&net.subnet).await;
    let gone = "i-0000000000000dead";
    let spec = env.with_cluster_names(json!({
        "schedule": "* * * * *",
        "region": REGION,
        "resources": [{"instanceId": gone}],
        "instanceSelectors": [{"matchTags": {tag.clone(): "daily"}}],
        "repositoryRef": {"name": env.repository().await},
        "workerConfigurationRef": {"name": "default"},
    }));
    create_policy(&env, "tagged", spec).await;

    // Nothing matches yet: the run is skipped, and says why; the named
    // instance that does not exist is reported.
    let policy = eventually(Duration::from_secs(75), || async {
        let p = env.api::<BackupPolicy>().get("tagged").await.ok()?;
        p.status.as_ref()?.last_schedule_time.as_ref()?;
        Some(p)
    })
    .await;
    let status = policy.status.clone().expect("status");
    assert_eq!(status.missing_resources.len(), 1, "{status:?}");
    assert_eq!(status.missing_resources[0].id, gone);
    let missing = common::condition_of(&status.conditions, "ResourcesMissing").expect("condition");
    assert!(missing.message.contains(gone), "{missing:?}");
    let skipped = common::condition_of(&status.conditions, "RunsMissed").expect("condition");
    assert_eq!(skipped.reason, "NoResources", "{skipped:?}");
    assert!(runs_of(&env, "tagged").await.is_empty());

    // Tagged now: the next run backs it up.
    env.ec2
        .create_tags()
        .resources(&instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(&tag)
                .value("daily")
                .build(),
        )
        .send()
        .await
        .expect("tag the instance");
    let runs = wait_runs(&env, "tagged", 1, Duration::from_secs(75)).await;
    on_time(&runs);
    let job = &runs[0].2;
    let ids: Vec<String> = job.spec.resources.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [instance.as_str()],
        "only the tagged, existing instance"
    );
    let done = env
        .wait_job_finished(&job.name_any(), Duration::from_secs(90))
        .await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let worker = status.workers[0].instance_id.clone().expect("a worker");
    common::assert_terminating(&common::describe_instance(&env.ec2, &worker).await);
    let policy = eventually(Duration::from_secs(60), || async {
        let p = env.api::<BackupPolicy>().get("tagged").await.ok()?;
        let r = p
            .status
            .as_ref()?
            .resources
            .iter()
            .find(|r| r.id == instance)?
            .clone();
        r.newest_restore_point.is_some().then_some(r)
    })
    .await;
    assert_eq!(policy.source, "instanceSelectors");
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "ResourcesMissing" && n.contains(gone)),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_policy_naming_a_configuration_that_does_not_admit_its_namespace_lists_nothing() {
    let env = TestEnv::new("policy-closed").await;
    let net = env.network().await;
    // Another team's configuration: it admits no namespace of this test.
    env.create_configuration(
        "closed",
        &net,
        json!({"namespaceSelector": {"matchLabels": {"team": "someone-else"}}}),
    )
    .await;
    env.wait_configuration_ready("closed").await;
    let tag = format!("backup-{}", env.namespace);
    let instance = env.protected_instance(&net.subnet).await;
    env.ec2
        .create_tags()
        .resources(&instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(&tag)
                .value("daily")
                .build(),
        )
        .send()
        .await
        .expect("tag the instance");
    let spec = env.with_cluster_names(json!({
        "schedule": "* * * * *",
        "region": REGION,
        "instanceSelectors": [{"matchTags": {tag.clone(): "*"}}],
        "repositoryRef": {"name": env.repository().await},
        "workerConfigurationRef": {"name": "closed"},
    }));
    create_policy(&env, "closed", spec).await;

    // The run is missed and says why; nothing of that configuration's
    // account was listed into the status, and no job was made.
    let missed = eventually(Duration::from_secs(90), || async {
        let p = env.api::<BackupPolicy>().get("closed").await.ok()?;
        let status = p.status?;
        common::condition_of(&status.conditions, "RunsMissed")
            .filter(|c| c.status == "True")
            .cloned()
            .map(|c| (c, status.clone()))
    })
    .await;
    let (condition, status) = missed;
    assert_eq!(condition.reason, "NamespaceNotAdmitted", "{condition:?}");
    assert!(
        condition.message.contains(&env.cluster_name("closed")),
        "{condition:?}"
    );
    assert!(status.resources.is_empty(), "{status:?}");
    assert_eq!(status.protected_resources, 0, "{status:?}");
    assert!(runs_of(&env, "closed").await.is_empty());
    let events = env.events().await;
    assert!(
        events.iter().any(|(r, _)| r == "NamespaceNotAdmitted"),
        "{events:?}"
    );
}
