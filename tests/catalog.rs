//! The restore-point catalog against the real kube-apiserver and the moto
//! AWS emulator: a controller started on a cluster that has never seen a
//! job, pointed at a repository with restore points in it, lists each as a
//! RestorePoint; deleting the object deletes no data (it comes back), a
//! manifest that goes takes its object with it, and a manifest that does
//! not verify is never listed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::disks;
use common::{REGION, TestEnv, eventually};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use tender::api::restore_point::REPOSITORY_LABEL;
use tender::api::{BackupRepository, RestorePoint};
use tender::aws::AwsClients;
use tender::mover;
use tender::mover::manifest::RepositoryLocation;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A restore point of one 512 KiB block of data made from `seed`.
async fn back_up(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    point: (&str, &str),
    policy: Option<&str>,
    seed: u64,
) {
    let data = disks::random_bytes(512 * 1024, seed);
    disks::back_up_as(aws, loc, point, policy, &data).await;
}

/// The catalog of the test's repository in its namespace, by name.
async fn catalog(env: &TestEnv, repository: &str) -> BTreeMap<String, RestorePoint> {
    env.api::<RestorePoint>()
        .list(&ListParams::default().labels(&format!("{REPOSITORY_LABEL}={repository}")))
        .await
        .expect("list RestorePoints")
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect()
}

async fn wait_catalog<F>(
    env: &TestEnv,
    repository: &str,
    check: F,
) -> BTreeMap<String, RestorePoint>
where
    F: Fn(&BTreeMap<String, RestorePoint>) -> bool,
{
    eventually(TIMEOUT, || async {
        let found = catalog(env, repository).await;
        check(&found).then_some(found)
    })
    .await
}

#[tokio::test]
async fn a_fresh_controller_lists_what_an_existing_repository_holds() {
    let env = TestEnv::without_controller("catalog").await;
    let repository = env.repository().await;
    let repo: BackupRepository = env
        .cluster_api()
        .get(&repository)
        .await
        .expect("the repository");
    let loc = RepositoryLocation::of(&repo.spec, &env.namespace);
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    // Made before this cluster's controller ever ran (by another cluster).
    back_up(&aws, &loc, ("nightly-1", "disk-1"), Some("nightly"), 11).await;
    back_up(&aws, &loc, ("nightly-2", "disk-1"), Some("nightly"), 13).await;
    back_up(&aws, &loc, ("manual", "disk-2"), None, 15).await;
    // A genuine manifest copied to another restore point's key: its MAC
    // verifies, but it names another restore point.
    let copied = s3
        .copy_object()
        .bucket(&loc.bucket)
        .copy_source(format!(
            "{}/{}",
            loc.bucket,
            loc.manifest_key("nightly-2/disk-1")
        ))
        .key(loc.manifest_key("forged/disk-9"))
        .send()
        .await;
    copied.expect("copy a manifest");

    env.start_controller();
    env.default_configuration().await;
    let found = wait_catalog(&env, &repository, |c| c.len() >= 3).await;
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["manual.disk-2", "nightly-1.disk-1", "nightly-2.disk-1"],
        "the forged one is not listed"
    );
    let second = &found["nightly-2.disk-1"].spec;
    assert_eq!(second.id, "nightly-2/disk-1");
    assert_eq!(second.resource, "disk-1");
    assert_eq!(second.region, REGION);
    assert_eq!(second.job_name, "nightly-2");
    assert_eq!(second.policy.as_deref(), Some("nightly"));
    assert_eq!(second.parent.as_deref(), Some("nightly-1/disk-1"));
    assert_eq!(second.repository_ref.name, repository);
    assert_eq!((second.volumes, second.logical_bytes), (1, 512 * 1024));
    assert!(second.stored_bytes > 0, "{second:?}");
    assert_eq!(found["manual.disk-2"].spec.policy, None);

    // A RestoreJob names a RestorePoint by its object's name.
    env.create_restore(
        "from-catalog",
        "volume",
        "nightly-2.disk-1",
        serde_json::json!({}),
    )
    .await;
    let restored = env
        .wait_restore_finished("from-catalog", Duration::from_secs(120))
        .await;
    let status = restored.status.expect("status");
    assert_eq!(status.phase, tender::api::Phase::Succeeded, "{status:?}");
    assert_eq!(status.workers[0].resource, "nightly-2/disk-1");
    // The repository's Event names it.
    eventually(TIMEOUT, || async {
        env.events()
            .await
            .iter()
            .any(|(reason, note)| {
                reason == "RestorePointUnverified" && note.contains("forged/disk-9")
            })
            .then_some(())
    })
    .await;

    // Deleting the object deletes nothing: the manifest stays, and the
    // next listing makes the object again.
    let old_uid = found["manual.disk-2"].uid();
    env.api::<RestorePoint>()
        .delete("manual.disk-2", &DeleteParams::default())
        .await
        .expect("delete the RestorePoint");
    let again = wait_catalog(&env, &repository, |c| {
        c.get("manual.disk-2").is_some_and(|p| p.uid() != old_uid)
    })
    .await;
    assert_eq!(again.len(), 3);
    mover::load_manifest(&aws, &loc, "manual/disk-2")
        .await
        .expect("the restore point is still there");

    // A manifest that goes (as a retention run deletes it) takes its
    // object with it.
    s3.delete_object()
        .bucket(&loc.bucket)
        .key(loc.manifest_key("nightly-1/disk-1"))
        .send()
        .await
        .expect("delete the manifest");
    let left = wait_catalog(&env, &repository, |c| !c.contains_key("nightly-1.disk-1")).await;
    assert_eq!(left.len(), 2);
}

/// A hold placed through a RestorePoint is recorded in the repository and
/// keeps the restore point from expiry; a deletion asked for by
/// annotation is carried out by the next retention run; a hold released
/// is removed from the repository.
#[tokio::test]
async fn holds_keep_restore_points_and_deletions_reach_the_next_retention_run() {
    use kube::api::{Patch, PatchParams, PostParams};
    use serde_json::json;
    use tender::api::{BackupPolicy, RetentionJob};

    let env = TestEnv::without_controller("catalog-holds").await;
    env.start_controller_with(&["--gc-grace-seconds", "20"], &[]);
    env.default_configuration().await;
    let repository = env.repository().await;
    let repo: BackupRepository = env
        .cluster_api()
        .get(&repository)
        .await
        .expect("the repository");
    let loc = RepositoryLocation::of(&repo.spec, &env.namespace);
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    for (run, seed) in [("run-1", 21), ("run-2", 23), ("run-3", 25)] {
        back_up(&aws, &loc, (run, "disk-1"), Some("keep-one"), seed).await;
    }
    back_up(&aws, &loc, ("manual", "disk-2"), None, 27).await;
    wait_catalog(&env, &repository, |c| c.len() == 4).await;

    let points = env.api::<RestorePoint>();
    let annotate = |name: &'static str, key: &'static str, value: &'static str| {
        let points = points.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {key: value}}});
            points
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotate the RestorePoint");
        }
    };
    annotate("run-1.disk-1", "tender.dev/hold", "true").await;
    annotate("manual.disk-2", "tender.dev/delete", "true").await;
    let hold_key = loc.hold_key("run-1/disk-1");
    wait_catalog(&env, &repository, |c| {
        c["run-1.disk-1"].status.as_ref().is_some_and(|s| s.held)
    })
    .await;
    assert!(
        disks::keys(&s3, &loc.bucket, &hold_key)
            .await
            .contains(&hold_key),
        "the hold is recorded in the repository"
    );

    let policy: BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "keep-one"},
        "spec": {
            "schedule": "0 0 1 1 *",
            "region": REGION,
            "resources": [{"instanceId": "i-0123456789abcdef0"}],
            "repositoryRef": {"name": repository},
            "retention": {"keepLast": 1, "schedule": "* * * * *"},
        }
    }))
    .expect("a policy");
    env.api::<BackupPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the policy");
    // Before its first run, the policy says what the run will delete
    // (unless the run came first: the minute may be that near).
    let preview = eventually(TIMEOUT, || async {
        let p = env.api::<BackupPolicy>().get("keep-one").await.ok()?;
        p.status?.retention_preview
    })
    .await;
    let started = !env
        .api::<RetentionJob>()
        .list(&ListParams::default())
        .await
        .expect("list RetentionJobs")
        .items
        .is_empty();
    if !started {
        assert_eq!(preview.expires, ["manual/disk-2", "run-2/disk-1"]);
        assert_eq!(preview.restore_points, 3);
    }
    let run = eventually(Duration::from_secs(150), || async {
        let jobs = env
            .api::<RetentionJob>()
            .list(&ListParams::default())
            .await
            .ok()?
            .items;
        let job = jobs.into_iter().next()?;
        job.status
            .as_ref()
            .is_some_and(|s| s.phase.is_finished())
            .then_some(job)
    })
    .await;
    assert_eq!(run.spec.delete_restore_points, ["manual/disk-2"]);
    let status = run.status.expect("status");
    assert_eq!(status.phase, tender::api::Phase::Succeeded, "{status:?}");
    let outcome = status.workers[0].outcome.clone().expect("outcome");
    let mut expired = outcome.expired.clone();
    expired.sort();
    // run-1 is held: keepLast 1 keeps run-3, expires run-2 only; the
    // manual one goes because it was asked for.
    assert_eq!(expired, ["manual/disk-2", "run-2/disk-1"]);
    let left = wait_catalog(&env, &repository, |c| c.len() == 2).await;
    let names: Vec<&str> = left.keys().map(String::as_str).collect();
    assert_eq!(names, ["run-1.disk-1", "run-3.disk-1"]);
    // Nothing more to expire: run-1 is held, run-3 is the newest.
    eventually(TIMEOUT, || async {
        let p = env.api::<BackupPolicy>().get("keep-one").await.ok()?;
        let preview = p.status?.retention_preview?;
        (preview.restore_points == 2 && preview.expires_count == 0).then_some(())
    })
    .await;

    // Released: the repository forgets the hold.
    annotate("run-1.disk-1", "tender.dev/hold", "false").await;
    wait_catalog(&env, &repository, |c| {
        c["run-1.disk-1"].status.as_ref().is_some_and(|s| !s.held)
    })
    .await;
    assert!(disks::keys(&s3, &loc.bucket, &hold_key).await.is_empty());
}
