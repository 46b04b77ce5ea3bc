//! Retention on workers, end to end against the real kube-apiserver and
//! the moto AWS emulator (with the realism layer: the retention worker acts
//! with exactly `iam/worker-retention-policy.json`): a policy's retention
//! runs expire its restore points by its rules and the repository's chunks
//! drop to exactly what the kept restore points reference, and a backup
//! that needs chunks condemned by a collection restores byte for byte
//! after the collection deleted them.
//!
//! The restore points are written by the data mover itself (the code a
//! backup worker runs), as backups of a policy, from EBS snapshots holding
//! chosen data, so that each holds chunks of its own: the emulator's
//! instances have no data to back up.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::disks;
use common::{REGION, TestEnv, eventually};
use kube::ResourceExt;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tender::api::{BackupRepository, Phase, RetentionJob};
use tender::aws::AwsClients;
use tender::mover::manifest::RepositoryLocation;
use tender::mover::{self, Progress, RestoreTarget};
use tender::names::POLICY_LABEL;

/// The controller's grace period in these tests (a day in production).
const GRACE: &str = "20";
const TIMEOUT: Duration = Duration::from_secs(150);
const BLOCK: usize = 512 * 1024;

/// A world whose controller collects with a short grace period.
async fn world(name: &str) -> (TestEnv, AwsClients, RepositoryLocation) {
    let env = TestEnv::without_controller(name).await;
    env.start_controller_with(&["--gc-grace-seconds", GRACE], &[]);
    env.default_configuration().await;
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .expect("the test's repository");
    let loc = RepositoryLocation::of(&repo.spec, &env.namespace);
    (env, AwsClients::from_env().await, loc)
}

/// A disk image of one 512 KiB block per seed (odd seeds: `random_bytes`
/// makes the same data of 2n and 2n+1).
fn image(seeds: &[u64]) -> Vec<u8> {
    seeds
        .iter()
        .flat_map(|s| disks::random_bytes(BLOCK, *s))
        .collect()
}

/// The chunk objects of the namespace part, by name.
async fn chunks(s3: &aws_sdk_s3::Client, loc: &RepositoryLocation) -> BTreeSet<String> {
    disks::keys(s3, &loc.bucket, &loc.chunks_prefix())
        .await
        .into_iter()
        .map(|k| k.rsplit('/').next().unwrap_or_default().to_string())
        .collect()
}

/// The restore points of the namespace part.
async fn restore_points(s3: &aws_sdk_s3::Client, loc: &RepositoryLocation) -> BTreeSet<String> {
    let prefix = loc.restore_points_prefix();
    disks::keys(s3, &loc.bucket, &prefix)
        .await
        .into_iter()
        .map(|k| k[prefix.len()..k.len() - ".json".len()].to_string())
        .collect()
}

/// Every chunk the restore points `ids` reference (read and verified).
async fn referenced(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    ids: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for id in ids {
        let m = mover::load_manifest(aws, loc, id)
            .await
            .expect("a kept restore point");
        out.extend(
            m.volumes
                .iter()
                .flat_map(|v| v.blocks.iter().map(|b| b.chunk.clone())),
        );
    }
    out
}

async fn wait_retention(env: &TestEnv, name: &str) -> RetentionJob {
    eventually(TIMEOUT, || async {
        let job = env.api::<RetentionJob>().get(name).await.ok()?;
        job.status
            .as_ref()
            .is_some_and(|s| s.phase.is_finished())
            .then_some(job)
    })
    .await
}

/// The policy's RetentionJobs, oldest first, once there are `n`.
async fn retention_runs(env: &TestEnv, policy: &str, n: usize) -> Vec<RetentionJob> {
    eventually(TIMEOUT, || async {
        let mut jobs = env
            .api::<RetentionJob>()
            .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={policy}")))
            .await
            .ok()?
            .items;
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
        (jobs.len() >= n).then_some(jobs)
    })
    .await
}

/// The finished job's worker: succeeded, and its instance terminated.
async fn succeeded(env: &TestEnv, job: &RetentionJob) -> tender::api::RetentionOutcome {
    let status = job.status.clone().expect("status");
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let worker = &status.workers[0];
    let instance = worker.instance_id.clone().expect("a worker was launched");
    let described = common::describe_instance(&env.ec2, &instance).await;
    common::assert_terminating(&described);
    assert_eq!(
        TestEnv::tags(&described)
            .get("tender.dev/job-kind")
            .map(String::as_str),
        Some("RetentionJob")
    );
    worker
        .outcome
        .clone()
        .expect("the run reported its outcome")
}

#[tokio::test]
async fn keep_last_two_leaves_the_two_newest_and_exactly_their_chunks() {
    let (env, aws, loc) = world("retention-keep-two").await;
    let s3 = disks::s3().await;
    // By hand, outside the policy: never expired by its rules.
    disks::back_up_as(&aws, &loc, ("manual", "disk-1"), None, &image(&[1, 3, 91])).await;
    // Four runs of disk-1: two blocks shared by all, one of each run's own.
    for run in 0..4u64 {
        let data = image(&[1, 3, 101 + 2 * run]);
        let job = format!("run-{run}");
        disks::back_up_as(&aws, &loc, (&job, "disk-1"), Some("keep-two"), &data).await;
    }
    // One run of disk-2: its only restore point is its newest.
    disks::back_up_as(
        &aws,
        &loc,
        ("run-0", "disk-2"),
        Some("keep-two"),
        &image(&[201]),
    )
    .await;
    let before = chunks(&s3, &loc).await;
    assert_eq!(before.len(), 2 + 1 + 4 + 1, "{before:?}");

    let spec = env.with_cluster_names(json!({
        // Backups never run in the test; retention every minute.
        "schedule": "0 0 1 1 *",
        "region": REGION,
        "resources": [{"instanceId": "i-0123456789abcdef0"}],
        "repositoryRef": {"name": env.repository().await},
        "retention": {"keepLast": 2, "schedule": "* * * * *"},
    }));
    let policy: tender::api::BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "keep-two"}, "spec": spec
    }))
    .unwrap();
    env.api::<tender::api::BackupPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    // The first run expires run-0 and run-1 of disk-1 and condemns their
    // own chunks; nothing is deleted yet.
    let first = retention_runs(&env, "keep-two", 1).await[0].name_any();
    let first = succeeded(&env, &wait_retention(&env, &first).await).await;
    let kept: BTreeSet<String> = [
        "manual/disk-1",
        "run-2/disk-1",
        "run-3/disk-1",
        "run-0/disk-2",
    ]
    .map(String::from)
    .into();
    assert_eq!(restore_points(&s3, &loc).await, kept);
    assert_eq!(first.expired_restore_points, 2, "{first:?}");
    let mut expired = first.expired.clone();
    expired.sort();
    assert_eq!(expired, ["run-0/disk-1", "run-1/disk-1"]);
    assert_eq!(first.kept_restore_points, 3, "{first:?}");
    assert_eq!((first.deleted_chunks, first.pending_chunks), (0, 2));
    assert!(first.reclaimable_at.is_some(), "{first:?}");
    let live = referenced(&aws, &loc, &kept).await;
    assert_eq!(live.len(), 2 + 1 + 2 + 1);
    assert_eq!(chunks(&s3, &loc).await, before, "nothing deleted yet");

    // A run a grace period later deletes them: the chunks are exactly the
    // kept restore points' chunks.
    let runs = retention_runs(&env, "keep-two", 2).await;
    let second = succeeded(&env, &wait_retention(&env, &runs[1].name_any()).await).await;
    assert_eq!(second.expired_restore_points, 0, "{second:?}");
    assert_eq!((second.deleted_chunks, second.pending_chunks), (2, 0));
    assert_eq!(chunks(&s3, &loc).await, live);
    assert_eq!(restore_points(&s3, &loc).await, kept);

    // The policy says what its last retention run did.
    let policy = eventually(Duration::from_secs(60), || async {
        let p = env
            .api::<tender::api::BackupPolicy>()
            .get("keep-two")
            .await
            .ok()?;
        let last = p.status.as_ref()?.last_retention.clone()?;
        (last.job == runs[1].name_any()).then_some(p)
    })
    .await;
    let status = policy.status.expect("status");
    let last = status.last_retention.expect("last retention");
    assert_eq!(last.phase, "Succeeded");
    assert_eq!(last.outcome.map(|o| o.deleted_chunks), Some(2));
    assert!(status.next_retention_time.is_some());

    // The repository tells the truth about space: what its restore points
    // describe, what they reference, nothing left to reclaim.
    let run = format!("{}/{}", env.namespace, runs[1].name_any());
    let repo = env
        .wait_repository("repo", TIMEOUT, |r| {
            r.status
                .as_ref()
                .and_then(|s| s.space.as_ref())
                .is_some_and(|s| s.last_retention.as_deref() == Some(run.as_str()))
        })
        .await;
    let space = repo.status.and_then(|s| s.space).expect("space");
    // Three restore points of three blocks and one of one, in 6 chunks.
    assert_eq!(space.logical_bytes, 10 * BLOCK as i64, "{space:?}");
    assert_eq!(space.deduplication_ratio.as_deref(), Some("1.67"));
    assert!(space.compression_ratio.is_some(), "{space:?}");
    assert_eq!(
        space.last_retention_deleted_bytes,
        second.deleted_bytes as i64
    );
    assert_eq!((space.reclaimable_bytes, space.reclaimable_at), (0, None));
}

#[tokio::test]
async fn a_backup_that_needs_condemned_chunks_restores_after_they_are_deleted() {
    let (env, aws, loc) = world("retention-rescue").await;
    let s3 = disks::s3().await;
    let x = image(&[7, 11]);
    disks::back_up_as(&aws, &loc, ("old", "disk-1"), Some("keep-one"), &x).await;
    disks::back_up_as(
        &aws,
        &loc,
        ("new", "disk-1"),
        Some("keep-one"),
        &image(&[13]),
    )
    .await;
    let repository = env.repository().await;
    let create = |name: &str| {
        let job: RetentionJob = serde_json::from_value(json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "RetentionJob",
            "metadata": {"name": name},
            "spec": {
                "repositoryRef": {"name": repository},
                "region": REGION,
                "policy": "keep-one",
                "retention": {"keepLast": 1},
            }
        }))
        .unwrap();
        let api = env.api::<RetentionJob>();
        async move { api.create(&PostParams::default(), &job).await.unwrap() }
    };

    // The collection expires `old` and condemns its chunks (x's blocks).
    create("condemn").await;
    let condemned = succeeded(&env, &wait_retention(&env, "condemn").await).await;
    assert_eq!(
        (condemned.expired_restore_points, condemned.pending_chunks),
        (1, 2)
    );

    // A backup now needs x's data again: it writes it under rescue names,
    // never relying on a condemned chunk.
    let again = disks::back_up_as(&aws, &loc, ("again", "disk-1"), Some("keep-one"), &x).await;
    let names: Vec<&str> = again.volumes[0]
        .blocks
        .iter()
        .map(|b| b.chunk.as_str())
        .collect();
    assert!(
        names.iter().all(|n| n.contains('~')),
        "the backup reused a condemned chunk: {names:?}"
    );

    // A grace period later the condemned chunks go (and `new`, now
    // expired, has its own condemned); `again` restores byte for byte.
    tokio::time::sleep(Duration::from_secs(22)).await;
    create("delete").await;
    let deleted = succeeded(&env, &wait_retention(&env, "delete").await).await;
    assert_eq!(deleted.deleted_chunks, 2, "{deleted:?}");
    assert_eq!(
        restore_points(&s3, &loc).await,
        BTreeSet::from(["again/disk-1".to_string()])
    );
    let m = mover::load_manifest(&aws, &loc, "again/disk-1")
        .await
        .unwrap();
    let restored = mover::restore_volume(
        &aws,
        &loc,
        &m,
        &m.volumes[0],
        RestoreTarget {
            aws: &aws,
            region: REGION,
            description: "restored by a test",
            tags: &[("test-restore".to_string(), env.namespace.clone())],
            client_token: &common::unique("restore"),
        },
        &Progress::default(),
    )
    .await
    .expect("the restore point restores");
    disks::wait_completed(&aws, &restored).await;
    assert_eq!(disks::read_snapshot(&aws, &restored, x.len()).await, x);
}

/// Whether a backup may store its manifest, judged against the condemned
/// lists in S3 as a backup reads them: a list it read at its start never
/// stops it, one written since stops it once ripe (its own grace period,
/// recorded in the list, or the fallback when it records none).
#[tokio::test]
async fn a_backup_stores_no_manifest_once_a_list_written_while_it_ran_is_ripe() {
    use jiff::{SignedDuration, Timestamp};
    let _ = common::kube_client().await; // checks the environment
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-a/", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let store = tender::mover::store::S3Store {
        aws: &aws,
        location: &loc,
    };
    let put = |run: &str, grace: Option<u64>| {
        let mut list = json!({"version": 1, "run": run, "chunks": []});
        if let Some(g) = grace {
            list["grace_seconds"] = g.into();
        }
        let key = format!("{}{run}/00.json", loc.condemned_prefix());
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(list.to_string().into_bytes().into())
                .send()
                .await
                .expect("put a list");
            key
        }
    };
    let day = SignedDuration::from_hours(24);
    let check = |started: Timestamp, now: Timestamp| {
        tender::mover::gc::outlived_by(&store, &loc, started, now, day)
    };
    // A list there before the backup started: read at the start, never
    // a reason to stop, however old it gets.
    put("before", Some(0)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Timestamp::now();
    let later = started + SignedDuration::from_hours(1000);
    assert_eq!(check(started, later).await.expect("check"), None);
    // One written while the backup ran, not ripe yet: the next collection
    // will see the manifest.
    let slow = put("slow", Some(3600)).await;
    let now = Timestamp::now();
    assert_eq!(check(started, now).await.expect("check"), None);
    // Ripe: a chunk the backup reused may be gone.
    let an_hour_on = now + SignedDuration::from_secs(3600);
    assert_eq!(
        check(started, an_hour_on).await.expect("check"),
        Some(slow.clone())
    );
    // A list that records no grace period is judged by the fallback (a
    // day): not ripe after an hour, ripe after two days.
    s3.delete_object()
        .bucket(&bucket)
        .key(&slow)
        .send()
        .await
        .expect("delete a list");
    let bare = put("bare", None).await;
    let now = Timestamp::now();
    assert_eq!(check(started, an_hour_on).await.expect("check"), None);
    let two_days = now + SignedDuration::from_hours(48);
    assert_eq!(check(started, two_days).await.expect("check"), Some(bare));
    // Without any list, nothing stops a backup, however long it ran.
    let empty = RepositoryLocation::new(&bucket, "team-b/", REGION);
    let none = tender::mover::gc::outlived_by(
        &tender::mover::store::S3Store {
            aws: &aws,
            location: &empty,
        },
        &empty,
        started,
        later,
        day,
    )
    .await
    .expect("check");
    assert_eq!(none, None);
}
