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
use tender::mover::manifest::RepositoryLocation;
use tender::mover::{self, BackupRequest, Progress};

const TIMEOUT: Duration = Duration::from_secs(90);

async fn back_up(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    (job, resource): (&str, &str),
    policy: Option<&str>,
    seed: u64,
) {
    let data = disks::random_bytes(512 * 1024, seed);
    let snapshot = disks::write_snapshot(aws, &data, 1).await;
    let volumes = disks::snapshot_volume(&snapshot);
    let uid = format!("uid-{job}");
    let request = BackupRequest {
        resource,
        lineage: resource,
        policy,
        ..disks::backup_request(aws, loc, (job, &uid), &volumes)
    };
    mover::backup(request, &Progress::default())
        .await
        .expect("the backup succeeds");
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
