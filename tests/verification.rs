//! Verification against the real kube-apiserver and the moto AWS emulator
//! (with the realism layer's IAM, where a verification worker runs with
//! exactly `iam/worker-verification-policy.json`): a VerificationJob reads
//! each restore point back on a worker of its own; an intact one is
//! `Verified`, one with a chunk overwritten or deleted behind Tender's back
//! fails with `ChunkCorrupt` or `ChunkMissing` and says which chunk and
//! volume; the result lands on each RestorePoint (and survives the
//! catalog's next write of it), a damaged one gets a Warning Event, and
//! every worker instance is terminated.

mod common;

use std::time::Duration;

use common::disks;
use common::{TestEnv, eventually};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use tender::api::{
    BackupPolicy, BackupRepository, Phase, RestorePoint, VerificationJob, VerificationResult,
    VerificationWorkerStatus,
};
use tender::aws::AwsClients;
use tender::mover;
use tender::mover::manifest::RepositoryLocation;
use tender::names::POLICY_LABEL;

const TIMEOUT: Duration = Duration::from_secs(150);
const BLOCK: usize = 512 * 1024;

/// Restore point `(job, resource)` of four distinct 512 KiB blocks made
/// from `seed`.
async fn back_up(aws: &AwsClients, loc: &RepositoryLocation, point: (&str, &str), seed: u64) {
    let data = disks::random_bytes(4 * BLOCK, seed);
    disks::back_up_as(aws, loc, point, None, &data).await;
}

/// The chunk keys of restore point `id`, in block order, and the snapshot
/// its one volume was read from (what names a volume without a device).
async fn chunk_keys(aws: &AwsClients, loc: &RepositoryLocation, id: &str) -> (Vec<String>, String) {
    let m = mover::load_manifest(aws, loc, id).await.expect("manifest");
    let volume = &m.volumes[0];
    let keys = volume
        .blocks
        .iter()
        .map(|b| loc.chunk_key(&b.chunk))
        .collect();
    (keys, volume.snapshot_id.clone())
}

async fn restore_point(env: &TestEnv, name: &str) -> RestorePoint {
    eventually(TIMEOUT, || async {
        env.api::<RestorePoint>().get(name).await.ok()
    })
    .await
}

/// Creates VerificationJob `name` of `points` in the test's repository.
async fn verify(env: &TestEnv, name: &str, repository: &str, points: &[&str]) {
    let job: VerificationJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "VerificationJob",
        "metadata": {"name": name},
        "spec": {
            "repositoryRef": {"name": repository},
            "region": common::REGION,
            "restorePoints": points,
            "backoffLimit": 2,
        },
    }))
    .expect("a VerificationJob");
    env.api::<VerificationJob>()
        .create(&Default::default(), &job)
        .await
        .expect("create the VerificationJob");
}

/// VerificationJob `name`, once finished.
async fn finished(env: &TestEnv, name: &str) -> VerificationJob {
    eventually(TIMEOUT, || async {
        let job = env.api::<VerificationJob>().get(name).await.ok()?;
        job.status
            .as_ref()
            .is_some_and(|s| s.phase.is_finished())
            .then_some(job)
    })
    .await
}

fn worker<'a>(job: &'a VerificationJob, id: &str) -> &'a VerificationWorkerStatus {
    let status = job.status.as_ref().expect("status");
    status
        .workers
        .iter()
        .find(|w| w.resource == id)
        .expect("a worker per restore point")
}

#[tokio::test]
async fn a_verification_reads_every_chunk_back_and_says_what_is_damaged() {
    let env = TestEnv::new("verification").await;
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
    back_up(&aws, &loc, ("daily-1", "disk-1"), 21).await;
    back_up(&aws, &loc, ("daily-1", "disk-2"), 41).await;
    back_up(&aws, &loc, ("daily-1", "disk-3"), 61).await;
    for name in ["daily-1.disk-1", "daily-1.disk-2", "daily-1.disk-3"] {
        restore_point(&env, name).await;
    }
    // Behind Tender's back: one chunk of disk-2 overwritten with other
    // data, one chunk of disk-3 deleted.
    let (keys, snapshot) = chunk_keys(&aws, &loc, "daily-1/disk-2").await;
    let corrupt = keys[1].clone();
    let original = s3
        .get_object()
        .bucket(&loc.bucket)
        .key(&corrupt)
        .send()
        .await
        .expect("the chunk")
        .body
        .collect()
        .await
        .expect("its bytes")
        .into_bytes();
    let put = s3
        .put_object()
        .bucket(&loc.bucket)
        .key(&corrupt)
        .body(
            zstd::bulk::compress(&disks::random_bytes(BLOCK, 99), 3)
                .unwrap()
                .into(),
        )
        .send()
        .await;
    put.expect("overwrite a chunk");
    let missing = chunk_keys(&aws, &loc, "daily-1/disk-3").await.0[2].clone();
    let deleted = s3
        .delete_object()
        .bucket(&loc.bucket)
        .key(&missing)
        .send()
        .await;
    deleted.expect("delete a chunk");

    // Named either way: by ID or by RestorePoint name.
    let points = ["daily-1/disk-1", "daily-1.disk-2", "daily-1/disk-3"];
    verify(&env, "check", &repository, &points).await;
    let job = finished(&env, "check").await;
    let status = job.status.clone().unwrap();
    assert_eq!(status.phase, Phase::PartiallySucceeded, "{status:?}");

    // The intact one.
    let intact = worker(&job, "daily-1/disk-1");
    assert_eq!(intact.phase, Phase::Succeeded, "{intact:?}");
    let found = intact.outcome.clone().expect("an outcome");
    assert_eq!(found.result, VerificationResult::Verified);
    assert_eq!((found.chunks, found.intact_chunks), (4, 4));
    assert_eq!(found.logical_bytes, 4 * BLOCK as u64);

    // The overwritten chunk: found, named, and not retried (reading it
    // again cannot mend it).
    let bad = worker(&job, "daily-1/disk-2");
    assert_eq!(bad.phase, Phase::Failed, "{bad:?}");
    assert_eq!(bad.reason.as_deref(), Some("ChunkCorrupt"));
    assert_eq!(bad.attempt, 1, "{bad:?}");
    let found = bad.outcome.clone().expect("an outcome");
    assert_eq!(found.result, VerificationResult::Damaged);
    assert_eq!(
        (
            found.intact_chunks,
            found.corrupt_chunks,
            found.missing_chunks
        ),
        (3, 1, 0)
    );
    assert_eq!(found.damaged_keys, std::slice::from_ref(&corrupt));
    assert_eq!(found.damaged_volumes, [snapshot]);
    assert!(
        bad.message
            .as_deref()
            .unwrap_or_default()
            .contains(&corrupt)
    );

    let gone = worker(&job, "daily-1/disk-3");
    assert_eq!(gone.reason.as_deref(), Some("ChunkMissing"), "{gone:?}");
    let found = gone.outcome.clone().expect("an outcome");
    assert_eq!(
        (
            found.intact_chunks,
            found.corrupt_chunks,
            found.missing_chunks
        ),
        (3, 0, 1)
    );
    assert_eq!(found.damaged_keys, std::slice::from_ref(&missing));

    // The EC2 side: one worker per restore point, each terminated.
    for w in &status.workers {
        let instance = w.instance_id.clone().expect("a worker was launched");
        let described = common::describe_instance(&env.ec2, &instance).await;
        common::assert_terminating(&described);
        assert_eq!(
            TestEnv::tags(&described)
                .get("tender.dev/job-kind")
                .map(String::as_str),
            Some("VerificationJob")
        );
    }

    // The catalog side: each RestorePoint says what its last check found.
    let verified = |name: &'static str| {
        let env = &env;
        async move {
            eventually(TIMEOUT, || async {
                let p = env.api::<RestorePoint>().get(name).await.ok()?;
                p.status?.last_verification
            })
            .await
        }
    };
    let first = verified("daily-1.disk-1").await;
    assert_eq!(first.result, VerificationResult::Verified);
    assert_eq!((first.job.as_str(), first.chunks), ("check", 4));
    let second = verified("daily-1.disk-2").await;
    assert_eq!(second.result, VerificationResult::Damaged);
    assert!(second.message.unwrap_or_default().contains(&corrupt));
    assert_eq!(
        verified("daily-1.disk-3").await.result,
        VerificationResult::Damaged
    );
    eventually(TIMEOUT, || async {
        env.events()
            .await
            .iter()
            .any(|(reason, note)| reason == "RestorePointDamaged" && note.contains(&missing))
            .then_some(())
    })
    .await;

    // The catalog writes `held` by server-side apply; the verification's
    // field stays when it does.
    let hold = serde_json::json!({"metadata": {"annotations": {"tender.dev/hold": "true"}}});
    env.api::<RestorePoint>()
        .patch(
            "daily-1.disk-1",
            &PatchParams::default(),
            &Patch::Merge(&hold),
        )
        .await
        .expect("hold the restore point");
    let held = eventually(TIMEOUT, || async {
        let p = env.api::<RestorePoint>().get("daily-1.disk-1").await.ok()?;
        p.status.filter(|s| s.held)
    })
    .await;
    assert_eq!(
        held.last_verification.map(|v| v.result),
        Some(VerificationResult::Verified)
    );

    // The chunk put back, a new verification finds disk-2 intact, and its
    // RestorePoint keeps nothing of the damage reported before.
    let put = s3
        .put_object()
        .bucket(&loc.bucket)
        .key(&corrupt)
        .body(original.into())
        .send()
        .await;
    put.expect("put the chunk back");
    verify(&env, "check-again", &repository, &["daily-1.disk-2"]).await;
    let mended = eventually(TIMEOUT, || async {
        let p = env.api::<RestorePoint>().get("daily-1.disk-2").await.ok()?;
        p.status?
            .last_verification
            .filter(|v| v.job == "check-again")
    })
    .await;
    assert_eq!(mended.result, VerificationResult::Verified);
    assert_eq!((mended.intact_chunks, mended.chunks), (4, 4));
    assert_eq!(mended.message, None, "{mended:?}");
}

#[tokio::test]
async fn a_verification_of_a_restore_point_that_is_not_there_fails_and_says_so() {
    let env = TestEnv::new("verification-missing").await;
    env.default_configuration().await;
    let repository = env.repository().await;
    verify(&env, "nothing", &repository, &["never-1/disk-9"]).await;
    let job = finished(&env, "nothing").await;
    let w = worker(&job, "never-1/disk-9");
    assert_eq!(w.phase, Phase::Failed, "{w:?}");
    assert_eq!(w.reason.as_deref(), Some("RestorePointNotFound"));
    assert!(
        w.message
            .as_deref()
            .unwrap_or_default()
            .contains("never-1/disk-9")
    );
    let instance = w.instance_id.clone().expect("a worker was launched");
    common::assert_terminating(&common::describe_instance(&env.ec2, &instance).await);
}

#[tokio::test]
async fn a_policy_verifies_the_newest_restore_point_of_each_resource_on_its_schedule() {
    let env = TestEnv::new("verification-policy").await;
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
    let policy_run = |job: &'static str, resource: &'static str, seed: u64| {
        let (aws, loc) = (&aws, &loc);
        async move {
            let data = disks::random_bytes(2 * BLOCK, seed);
            disks::back_up_as(aws, loc, (job, resource), Some("weekly"), &data).await;
        }
    };
    policy_run("weekly-1", "disk-1", 121).await;
    policy_run("weekly-2", "disk-1", 141).await;
    policy_run("weekly-2", "disk-2", 161).await;
    // Another policy's, and one made by hand: not this policy's to check.
    let data = disks::random_bytes(BLOCK, 181);
    disks::back_up_as(&aws, &loc, ("other-1", "disk-3"), Some("other"), &data).await;
    disks::back_up_as(&aws, &loc, ("manual", "disk-1"), None, &data).await;
    for name in ["weekly-2.disk-1", "weekly-2.disk-2", "manual.disk-1"] {
        restore_point(&env, name).await;
    }
    // disk-2's newest restore point loses a chunk.
    let (keys, _) = chunk_keys(&aws, &loc, "weekly-2/disk-2").await;
    let deleted = s3
        .delete_object()
        .bucket(&loc.bucket)
        .key(&keys[0])
        .send()
        .await;
    deleted.expect("delete a chunk");

    let spec = env.with_cluster_names(serde_json::json!({
        // Backups never run in the test; verification every minute.
        "schedule": "0 0 1 1 *",
        "region": common::REGION,
        "resources": [{"instanceId": "i-0123456789abcdef0"}],
        "repositoryRef": {"name": repository},
        "verification": {"schedule": "* * * * *"},
    }));
    let policy: BackupPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "weekly"}, "spec": spec
    }))
    .unwrap();
    env.api::<BackupPolicy>()
        .create(&Default::default(), &policy)
        .await
        .expect("create the policy");

    let run = eventually(TIMEOUT, || async {
        let runs = env
            .api::<VerificationJob>()
            .list(&ListParams::default().labels(&format!("{POLICY_LABEL}=weekly")))
            .await
            .ok()?;
        runs.items.into_iter().next()
    })
    .await;
    let mut named: Vec<String> = run.spec.restore_points.iter().map(|p| p.id()).collect();
    named.sort();
    assert_eq!(named, ["weekly-2/disk-1", "weekly-2/disk-2"]);
    assert_eq!(run.spec.policy.as_deref(), Some("weekly"));
    assert_eq!(run.spec.region, common::REGION);

    // The policy's status says what the run found, and that a restore
    // point of it is damaged.
    let policy = eventually(Duration::from_secs(240), || async {
        let p = env.api::<BackupPolicy>().get("weekly").await.ok()?;
        p.status
            .as_ref()
            .and_then(|s| s.last_verification.as_ref())
            .is_some_and(|l| l.job == run.name_any())
            .then_some(p)
    })
    .await;
    let status = policy.status.expect("status");
    let last = status.last_verification.clone().expect("last verification");
    assert_eq!(
        (last.verified, last.damaged, last.unchecked),
        (1, 1, 0),
        "{last:?}"
    );
    assert_eq!(last.damaged_restore_points, ["weekly-2/disk-2"]);
    assert_eq!(last.phase, "PartiallySucceeded");
    let condition = common::condition_of(&status.conditions, "VerificationFailed")
        .expect("a VerificationFailed condition");
    assert_eq!(condition.status, "True", "{condition:?}");
    assert_eq!(condition.reason, "RestorePointDamaged");
    assert!(
        condition.message.contains("weekly-2/disk-2") && condition.message.contains(&keys[0]),
        "{}",
        condition.message
    );
    assert!(status.next_verification_time.is_some());
    let verified = eventually(TIMEOUT, || async {
        let p = env
            .api::<RestorePoint>()
            .get("weekly-2.disk-1")
            .await
            .ok()?;
        p.status?.last_verification
    })
    .await;
    assert_eq!(
        (verified.result, verified.job),
        (VerificationResult::Verified, run.name_any())
    );
}
