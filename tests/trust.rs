//! Trust boundaries between namespaces, end to end against the real
//! kube-apiserver and the moto AWS emulator: a WorkerConfiguration or a
//! BackupRepository (cluster-scoped, an admin's) serves only the namespaces
//! its `namespaceSelector` admits, and a job elsewhere stalls without
//! launching anything; two namespaces share one repository without seeing
//! each other's restore points; and a repository's status says whether its
//! bucket answers and how many restore points it holds.
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::disks;
use common::{REGION, TEST_LABEL, TestEnv, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tender::api::{BackupJob, BackupRepository, Phase, RestoreJob, WorkerConfiguration};
use tender::mover::manifest::RepositoryLocation;

const TIMEOUT: Duration = Duration::from_secs(90);
/// How soon a job follows a change of what it waits for (a stalled job is
/// otherwise looked at again only every minute).
const PROMPTLY: Duration = Duration::from_secs(30);

/// Instances tagged with the job's UID, in any state and of any cluster.
async fn instances_of_job(env: &TestEnv, job_uid: &str) -> usize {
    let out = env
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{}", tender::names::tags::JOB_UID))
                .values(job_uid)
                .build(),
        )
        .send()
        .await
        .expect("describe instances");
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

/// Waits until the job is Stalled with `reason`, then checks that it stays
/// Pending and that nothing was launched for it; returns the condition.
async fn stalled_without_launching(env: &TestEnv, name: &str, reason: &str) -> Condition {
    let job = env
        .wait_job(name, TIMEOUT, |j| {
            condition(j, "Stalled").is_some_and(|c| c.status == "True" && c.reason == reason)
        })
        .await;
    // Time enough for a launch, had one been allowed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job: BackupJob = env.api().get(&job.name_any()).await.unwrap();
    let status = job.status.as_ref().unwrap();
    assert_eq!(status.phase, Phase::Pending, "{status:?}");
    assert!(
        status.workers.iter().all(|w| w.instance_id.is_none()),
        "{status:?}"
    );
    assert_eq!(condition(&job, "Ready").unwrap().status, "False");
    assert_eq!(
        instances_of_job(env, &job.uid().unwrap()).await,
        0,
        "no instance for a job whose namespace is not admitted"
    );
    let events = env.events().await;
    assert!(events.iter().any(|(r, _)| r == reason), "{events:?}");
    condition(&job, "Stalled").unwrap().clone()
}

fn restore_condition<'a>(job: &'a RestoreJob, type_: &str) -> Option<&'a Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn repository_condition<'a>(repo: &'a BackupRepository, type_: &str) -> Option<&'a Condition> {
    repo.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// A `namespaceSelector` that admits no namespace of any test.
fn admits_another_team() -> serde_json::Value {
    serde_json::json!({"matchLabels": {TEST_LABEL: "another-team"}})
}

#[tokio::test]
async fn a_configuration_that_does_not_admit_the_namespace_launches_nothing_for_it() {
    let env = TestEnv::new("trust-config").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    // The region's default admits no namespace at all (no selector); the
    // other one admits another team's.
    env.create_configuration(
        "nobodys",
        &net,
        serde_json::json!({"namespaceSelector": null}),
    )
    .await;
    env.create_configuration(
        "theirs",
        &net,
        serde_json::json!({"namespaceSelector": admits_another_team()}),
    )
    .await;
    env.wait_configuration_ready("nobodys").await;
    env.wait_configuration_ready("theirs").await;

    env.create_job(
        "named",
        &protected,
        serde_json::json!({"workerConfigurationRef": {"name": "theirs"}}),
    )
    .await;
    env.create_job("by-default", &protected, serde_json::json!({}))
        .await;
    let named = stalled_without_launching(&env, "named", "NamespaceNotAdmitted").await;
    assert!(
        named.message.contains(&format!(
            "WorkerConfiguration \"{}\" does not admit this namespace",
            env.cluster_name("theirs")
        )) && named.message.contains("does not match"),
        "{}",
        named.message
    );
    let by_default = stalled_without_launching(&env, "by-default", "NamespaceNotAdmitted").await;
    assert!(
        by_default.message.contains(&env.cluster_name("nobodys"))
            && by_default.message.contains("admits no namespace"),
        "{}",
        by_default.message
    );

    // The admin admits the namespace: the job runs, with that
    // configuration, at once.
    let configs: Api<WorkerConfiguration> = env.cluster_api();
    configs
        .patch(
            &env.cluster_name("theirs"),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": {"namespaceSelector": env.admits_this_namespace()}
            })),
        )
        .await
        .unwrap();
    let job = env
        .wait_job_phase("named", PROMPTLY, Phase::Succeeded)
        .await;
    assert_eq!(
        job.status.as_ref().unwrap().worker_configuration,
        Some(env.cluster_name("theirs"))
    );
    assert!(condition(&job, "Stalled").is_none());
    assert_eq!(instances_of_job(&env, &job.uid().unwrap()).await, 1);
    // The other still waits: its default admits nobody.
    let other: BackupJob = env.api().get("by-default").await.unwrap();
    assert_eq!(other.status.unwrap().phase, Phase::Pending);
}

#[tokio::test]
async fn a_repository_that_does_not_admit_the_namespace_or_does_not_exist_launches_nothing() {
    let env = TestEnv::new("trust-repo").await;
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let bucket = env.bucket().await;
    env.create_repository(
        "theirs",
        &bucket,
        serde_json::json!({"namespaceSelector": admits_another_team()}),
    )
    .await;

    env.create_job(
        "denied",
        &protected,
        serde_json::json!({"repositoryRef": {"name": "theirs"}}),
    )
    .await;
    let denied = stalled_without_launching(&env, "denied", "NamespaceNotAdmitted").await;
    assert!(
        denied.message.contains(&format!(
            "BackupRepository \"{}\" does not admit this namespace",
            env.cluster_name("theirs")
        )),
        "{}",
        denied.message
    );

    env.create_job(
        "nowhere",
        &protected,
        serde_json::json!({"repositoryRef": {"name": "later"}}),
    )
    .await;
    let missing = stalled_without_launching(&env, "nowhere", "BackupRepositoryNotFound").await;
    assert!(
        missing.message.contains(&env.cluster_name("later")),
        "{}",
        missing.message
    );

    // A file-level session may copy files only to a repository that
    // admits the namespace, too.
    env.back_up("nightly", &protected, TIMEOUT).await;
    let restore = env
        .create_restore(
            "browse",
            "fileLevel",
            &format!("nightly/{protected}"),
            serde_json::json!({"restoreFilesTo": {"repositoryRef": {"name": "theirs"}}}),
        )
        .await;
    let stalled = env
        .wait_restore("browse", TIMEOUT, |j| {
            restore_condition(j, "Stalled")
                .is_some_and(|c| c.status == "True" && c.reason == "NamespaceNotAdmitted")
        })
        .await;
    assert!(
        restore_condition(&stalled, "Stalled")
            .unwrap()
            .message
            .contains(&env.cluster_name("theirs")),
        "{:?}",
        stalled.status
    );
    assert_eq!(instances_of_job(&env, &restore.uid().unwrap()).await, 0);

    // The repository is created: the job that waited for it runs, at once.
    env.create_repository("later", &bucket, serde_json::json!({"prefix": "later/"}))
        .await;
    let job = env
        .wait_job_phase("nowhere", PROMPTLY, Phase::Succeeded)
        .await;
    let point = job.status.as_ref().unwrap().workers[0]
        .restore_point
        .clone()
        .unwrap();
    let keys = disks::keys(&disks::s3().await, &bucket, "later/").await;
    let manifest = format!("later/{}/restore-points/{point}.json", env.namespace);
    assert!(keys.contains(&manifest), "{manifest} not in {keys:?}");
    // The one denied is still denied.
    let denied: BackupJob = env.api().get("denied").await.unwrap();
    assert_eq!(denied.status.unwrap().phase, Phase::Pending);
}

#[tokio::test]
async fn two_namespaces_share_a_repository_without_colliding() {
    // Two teams' namespaces, each with its own controller (a test's
    // controller watches one namespace) and configuration, and one
    // repository that admits both: both controllers manage it (they select
    // its label), as one controller watching every namespace would.
    let a = TestEnv::without_controller("trust-a").await;
    let b = TestEnv::without_controller("trust-b").await;
    let shared_label = format!("shared-{}", a.namespace);
    for env in [&a, &b] {
        let selector = format!("{TEST_LABEL} in ({},{shared_label})", env.namespace);
        env.start_controller_with(&["--class-selector", &selector], &[]);
        env.default_configuration().await;
    }
    let bucket = a.bucket().await;
    let shared = a.cluster_name("shared");
    let repo: BackupRepository = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": shared, "labels": {TEST_LABEL: shared_label}},
        "spec": {
            "bucket": bucket, "prefix": "teams/", "region": REGION,
            "expectedBucketOwner": common::EMULATOR_ACCOUNT,
            "integrity": {"macKeyId": common::hmac_key(None).await},
            "namespaceSelector": {"matchExpressions": [{
                "key": TEST_LABEL, "operator": "In", "values": [a.namespace, b.namespace]
            }]}
        }
    }))
    .unwrap();
    a.cluster_api::<BackupRepository>()
        .create(&Default::default(), &repo)
        .await
        .unwrap();

    // Same job name, same disk: the same restore point ID in each.
    let disk = a.protected_disk().await;
    let spec = serde_json::json!({
        "resources": [{"snapshotId": disk, "region": REGION}],
        "repositoryRef": {"name": shared},
    });
    for env in [&a, &b] {
        env.create_job_spec("nightly", spec.clone()).await;
    }
    let point = format!("nightly/{disk}");
    let s3 = disks::s3().await;
    let aws = tender::aws::AwsClients::from_env().await;
    for env in [&a, &b] {
        let job = env
            .wait_job_phase("nightly", TIMEOUT, Phase::Succeeded)
            .await;
        let worker = &job.status.as_ref().unwrap().workers[0];
        assert_eq!(worker.restore_point.as_deref(), Some(point.as_str()));
        // Each namespace's restore point at a key of its own, written by
        // its own job, and its own chunks.
        let key = format!("teams/{}/restore-points/{point}.json", env.namespace);
        let keys = disks::keys(&s3, &bucket, "teams/").await;
        assert!(keys.contains(&key), "{key} not in {keys:?}");
        let location = RepositoryLocation::of(&repo.spec, &env.namespace);
        let manifest = tender::mover::load_manifest(&aws, &location, &point)
            .await
            .unwrap();
        assert_eq!(manifest.job_uid, job.uid().unwrap());
        let chunks = format!("teams/{}/chunks/", env.namespace);
        assert!(!disks::keys(&s3, &bucket, &chunks).await.is_empty());
    }
    let manifests: Vec<String> = disks::keys(&s3, &bucket, "teams/")
        .await
        .into_iter()
        .filter(|k| k.contains("/restore-points/"))
        .collect();
    assert_eq!(manifests.len(), 2, "{manifests:?}");

    // Each restores its own.
    for env in [&a, &b] {
        env.create_restore_spec(
            "bring-back",
            serde_json::json!({
                "mode": "volume", "restorePoint": point, "region": REGION,
                "repositoryRef": {"name": shared},
            }),
        )
        .await;
        let done = env.wait_restore_finished("bring-back", TIMEOUT).await;
        let status = done.status.as_ref().unwrap();
        assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    }

    // The repository counts both, by namespace.
    let counted = a
        .wait_repository("shared", TIMEOUT, |r| {
            r.status.as_ref().is_some_and(|s| s.restore_points == 2)
        })
        .await;
    let status = counted.status.unwrap();
    assert_eq!(
        status.restore_points_by_namespace,
        [(a.namespace.clone(), 1), (b.namespace.clone(), 1)].into()
    );
}

#[tokio::test]
async fn a_repository_reports_whether_its_bucket_answers_and_what_it_holds() {
    let env = TestEnv::new("trust-status").await;
    env.default_configuration().await;
    let repo = env.repository().await;
    let ready = env
        .wait_repository(&repo, TIMEOUT, |r| {
            r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Ready")
        })
        .await;
    let status = ready.status.as_ref().unwrap();
    assert_eq!(status.restore_points, 0);
    assert_eq!(status.observed_generation, ready.metadata.generation);
    assert!(status.last_checked_time.is_some());
    let condition = repository_condition(&ready, "Ready").unwrap();
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.contains(&env.bucket().await),
        "{condition:?}"
    );
    assert!(repository_condition(&ready, "Stalled").is_none_or(|c| c.status == "False"));

    // A backup: one restore point, counted for this namespace, and bytes.
    let protected = env.protected_disk().await;
    env.back_up("nightly", &protected, TIMEOUT).await;
    let counted = env
        .wait_repository(&repo, TIMEOUT, |r| {
            r.status.as_ref().is_some_and(|s| s.restore_points == 1)
        })
        .await;
    let status = counted.status.unwrap();
    assert_eq!(
        status.restore_points_by_namespace,
        [(env.namespace.clone(), 1)].into()
    );
    assert!(status.stored_bytes > 0, "{status:?}");

    // A bucket that does not exist: NotReady, and why.
    env.create_repository(
        "missing",
        &common::unique("tender-nothing-here"),
        serde_json::json!({}),
    )
    .await;
    let missing = env
        .wait_repository("missing", TIMEOUT, |r| {
            r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("NotReady")
        })
        .await;
    for type_ in ["Ready", "Stalled"] {
        let c = repository_condition(&missing, type_).unwrap();
        assert_eq!(c.reason, "BucketUnreachable", "{c:?}");
        assert!(c.message.contains("expectedBucketOwner"), "{c:?}");
    }
    assert_eq!(
        repository_condition(&missing, "Ready").unwrap().status,
        "False"
    );
    assert_eq!(
        repository_condition(&missing, "Stalled").unwrap().status,
        "True"
    );
    let events = env.events().await;
    assert!(
        events.iter().any(|(r, _)| r == "BucketUnreachable"),
        "{events:?}"
    );
    // (The emulator ignores ExpectedBucketOwner, so a bucket of another
    // owner cannot be shown here.)
}
