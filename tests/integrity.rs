//! Repository integrity against the real API server and the AWS emulator:
//! manifests and `latest` pointers authenticated with a KMS HMAC key, and
//! restore points written only where none is. Each attack is played by
//! someone who can write the bucket but cannot use the key:
//!
//! - a manifest changed by one byte: its RestoreJob fails with
//!   `RestorePointUnverified` and nothing is restored, nor browsed;
//! - a `latest` pointer changed: the next backup does not build on it (a
//!   full backup, which says why), and the pointer is whole again after;
//! - two writers racing for one restore point, and a conditional PUT on a
//!   taken key: exactly one manifest, the first, intact;
//! - the MAC itself, with real KMS keys: round trip, another key, an
//!   altered payload.
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::disks::{self, Ext4Image};
use common::{REGION, TestEnv};
use kube::ResourceExt;
use tender::api::{BackupRepository, Phase};
use tender::aws::AwsClients;
use tender::aws::repository::Created;
use tender::mover::manifest::RepositoryLocation;
use tender::mover::{self, MoverError, Progress, integrity};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Changes one byte of the payload of the stored document `key` (`at`
/// finds it in the payload) and leaves its MAC as it was: all that someone
/// who can write the bucket but not use the key can do.
async fn tamper(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, at: impl Fn(&[u8]) -> usize) {
    let stored = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let stored = stored.body.collect().await.unwrap().into_bytes();
    let mut envelope: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let mut payload = STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let i = at(&payload);
    payload[i] = if payload[i] == b'0' { b'1' } else { b'0' };
    envelope["payload"] = STANDARD.encode(&payload).into();
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(serde_json::to_vec(&envelope).unwrap().into())
        .send()
        .await
        .unwrap();
}

/// The index `skip` bytes after the start of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &str, skip: usize) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle} not in {}", String::from_utf8_lossy(haystack)))
        + skip
}

/// This test's repository, as its workers see it.
async fn location(env: &TestEnv) -> RepositoryLocation {
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .unwrap();
    RepositoryLocation::of(&repo.spec, &env.namespace)
}

/// A test's world with its default configuration, and a disk to protect:
/// an EBS snapshot of `image`.
async fn world(name: &str, image: &Ext4Image) -> (TestEnv, AwsClients, aws_sdk_s3::Client, String) {
    let env = TestEnv::new(name).await;
    env.default_configuration().await;
    let aws = AwsClients::from_env().await;
    let disk = disks::write_snapshot(&aws, &image.bytes, 1).await;
    (env, aws, disks::s3().await, disk)
}

#[tokio::test]
async fn a_tampered_manifest_is_never_restored_nor_browsed() {
    let image = Ext4Image::build(&[("etc/motd", b"all is well\n".to_vec())], 8);
    let (env, aws, s3, disk) = world("tampered-manifest", &image).await;
    env.back_up("nightly", &disk, TIMEOUT).await;
    let point = format!("nightly/{disk}");
    let loc = location(&env).await;
    let manifest = mover::load_manifest(&aws, &loc, &point).await.unwrap();
    assert_eq!(manifest.namespace, env.namespace);
    assert!(!manifest.job_uid.is_empty());

    // One hex digit of a block's chunk: the block would restore as another
    // chunk's data.
    let key = loc.manifest_key(&point);
    tamper(&s3, &loc.bucket, &key, |m| find(m, "\"chunk\": \"", 10)).await;
    let e = mover::load_manifest(&aws, &loc, &point).await.unwrap_err();
    assert_eq!(e.reason(), "RestorePointUnverified", "{e}");

    let restore = env
        .create_restore("bring-back", "volume", &point, serde_json::json!({}))
        .await;
    let browse = env
        .create_restore("browse", "fileLevel", &point, serde_json::json!({}))
        .await;
    for (name, job) in [("bring-back", &restore), ("browse", &browse)] {
        let done = env.wait_restore_finished(name, TIMEOUT).await;
        let status = done.status.clone().unwrap();
        assert_eq!(status.phase, Phase::Failed, "{name}: {status:?}");
        let worker = &status.workers[0];
        assert_eq!(
            worker.reason.as_deref(),
            Some("RestorePointUnverified"),
            "{worker:?}"
        );
        let message = worker.message.clone().unwrap();
        assert!(
            message.contains(&key) && message.contains("restore another restore point"),
            "{message}"
        );
        assert!(worker.restored_volume_id.is_none() && worker.browser_url.is_none());
        // Nothing was restored: no snapshot started, no volume made.
        let uid = job.uid().unwrap();
        assert!(
            disks::snapshots_tagged(&env.ec2, "tender.dev/job-uid", &uid)
                .await
                .is_empty()
        );
        let volumes = env.ec2.describe_volumes().send().await.unwrap();
        let restored = volumes
            .volumes()
            .iter()
            .filter(|v| v.tags().iter().any(|t| t.value() == Some(uid.as_str())));
        assert_eq!(restored.count(), 0, "{name}: a volume was restored");
    }
}

/// Someone who can write the bucket plants junk under the names of blocks
/// they expect (a public AMI's, say) before any backup wrote them: the
/// backup does not take them for stored chunks, and the restore point
/// restores.
#[tokio::test]
async fn chunks_planted_before_the_first_backup_are_not_taken_for_stored() {
    use sha2::Digest;
    let image = Ext4Image::build(&[("etc/motd", b"planted\n".to_vec())], 8);
    let (env, _aws, s3, disk) = world("planted-chunks", &image).await;
    let loc = location(&env).await;
    let blocks = disks::data_blocks(&image.bytes);
    assert!(!blocks.is_empty());
    for block in blocks.values() {
        let name = hex::encode(sha2::Sha256::digest(block));
        s3.put_object()
            .bucket(&loc.bucket)
            .key(loc.chunk_key(&name))
            .body(b"not the block".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    env.back_up("nightly", &disk, TIMEOUT).await;
    let point = format!("nightly/{disk}");
    env.create_restore("bring-back", "volume", &point, serde_json::json!({}))
        .await;
    let done = env.wait_restore_finished("bring-back", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
}

/// A document planted where a job will write its restore point is named
/// for what it is: tampering (`RestorePointUnverified`, with its key), not
/// another job's restore point.
#[tokio::test]
async fn a_planted_manifest_is_reported_as_tampering() {
    let image = Ext4Image::build(&[("etc/motd", b"mine\n".to_vec())], 8);
    let (env, _aws, s3, disk) = world("planted-manifest", &image).await;
    let loc = location(&env).await;
    let key = loc.manifest_key(&format!("nightly/{disk}"));
    s3.put_object()
        .bucket(&loc.bucket)
        .key(&key)
        .body(b"{}".to_vec().into())
        .send()
        .await
        .unwrap();
    env.create_job("nightly", &disk, serde_json::json!({}))
        .await;
    let done = env.wait_job_finished("nightly", TIMEOUT).await;
    let status = done.status.unwrap();
    let worker = &status.workers[0];
    assert_eq!(
        worker.reason.as_deref(),
        Some("RestorePointUnverified"),
        "{worker:?}"
    );
    assert!(
        worker.message.as_deref().unwrap_or_default().contains(&key),
        "{worker:?}"
    );
}

#[tokio::test]
async fn a_tampered_latest_pointer_is_not_built_on() {
    let image = Ext4Image::build(&[("data.bin", disks::random_bytes(1 << 20, 9))], 8);
    let blocks = disks::data_blocks(&image.bytes).len() as u64;
    let (env, aws, s3, disk) = world("tampered-latest", &image).await;
    let loc = location(&env).await;
    env.back_up("monday", &disk, TIMEOUT).await;
    // Each backup of the disk builds on the last (the lineage is the volume
    // the emulator says the snapshot is of).
    let latest = disks::keys(&s3, &loc.bucket, &format!("{}latest/{REGION}/", loc.prefix)).await;
    let [latest] = &latest[..] else {
        panic!("one latest pointer: {latest:?}")
    };
    let pointed = || async {
        let stored = s3
            .get_object()
            .bucket(&loc.bucket)
            .key(latest)
            .send()
            .await
            .unwrap();
        let stored = stored.body.collect().await.unwrap().into_bytes();
        let text = integrity::verified(&aws, &loc, latest, &stored)
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&text).unwrap()["restorePoint"].clone()
    };
    assert_eq!(pointed().await, format!("monday/{disk}"));
    tamper(&s3, &loc.bucket, latest, |p| {
        find(p, "\"restorePoint\":\"", 16)
    })
    .await;

    // The altered pointer is not used: a full backup, which says why.
    let tuesday = env.back_up("tuesday", &disk, TIMEOUT).await;
    let worker = &tuesday.status.as_ref().unwrap().workers[0];
    let message = worker.message.clone().unwrap();
    assert!(
        message.contains("not trusted") && message.contains(latest.as_str()),
        "{message}"
    );
    let point = format!("tuesday/{disk}");
    let m = mover::load_manifest(&aws, &loc, &point).await.unwrap();
    assert_eq!(m.parent, None);
    assert!(
        m.parent_refused
            .as_deref()
            .unwrap()
            .contains("does not verify")
    );
    assert_eq!((m.stats.blocks_read, m.stats.blocks_reused), (blocks, 0));
    // And the pointer is whole again: the next backup builds on it.
    assert_eq!(pointed().await, point);
    env.back_up("wednesday", &disk, TIMEOUT).await;
    let m = mover::load_manifest(&aws, &loc, &format!("wednesday/{disk}"))
        .await
        .unwrap();
    assert_eq!(m.parent.as_deref(), Some(point.as_str()));
    assert_eq!((m.stats.blocks_read, m.stats.blocks_reused), (0, blocks));
}

#[tokio::test]
async fn of_two_writers_racing_for_one_restore_point_exactly_one_writes() {
    let _ = common::kube_client().await; // checks the environment
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-a/", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let image = Ext4Image::build(&[("a.bin", disks::random_bytes(1 << 20, 4))], 8);
    let volumes = disks::snapshot_volume(&disks::write_snapshot(&aws, &image.bytes, 1).await);
    let (progress_a, progress_b) = (Progress::default(), Progress::default());
    let (a, b) = tokio::join!(
        mover::backup(
            disks::backup_request(&aws, &loc, ("same-name", "uid-a"), &volumes),
            &progress_a
        ),
        mover::backup(
            disks::backup_request(&aws, &loc, ("same-name", "uid-b"), &volumes),
            &progress_b
        ),
    );
    let (winner, loser) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one restore point and one refusal: {other:?}"),
    };
    assert!(
        matches!(&loser, MoverError::RestorePointExists { other_uid, .. } if *other_uid == winner.job_uid),
        "{loser}"
    );
    let stored = mover::load_manifest(&aws, &loc, "same-name/disk-1")
        .await
        .unwrap();
    assert_eq!(stored, winner, "the first manifest is intact");

    // A retried attempt of the winner finds its restore point: the same one.
    let again = mover::backup(
        disks::backup_request(&aws, &loc, ("same-name", &winner.job_uid), &volumes),
        &Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!(again, winner);

    // The conditional PUT itself: a taken key keeps what it holds.
    let key = loc.manifest_key("same-name/disk-1");
    let before = aws.repository().get_object(&loc, &key).await.unwrap();
    let put = aws
        .repository()
        .create_object(&loc, &key, b"{}".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(put, Created::AlreadyExists);
    assert_eq!(
        aws.repository().get_object(&loc, &key).await.unwrap(),
        before
    );
    assert_eq!(
        aws.repository()
            .create_object(
                &loc,
                &loc.manifest_key("other/disk-1"),
                b"{}".to_vec(),
                "application/json"
            )
            .await
            .unwrap(),
        Created::Written
    );
}

#[tokio::test]
async fn a_mac_verifies_with_its_key_only_and_only_for_its_bytes() {
    let _ = common::kube_client().await;
    let aws = AwsClients::from_env().await;
    let loc = RepositoryLocation::new("unused-bucket", "", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let payload =
        br#"{"restorePoint":"nightly/i-1","namespace":"a","region":"us-east-1","lineage":"i-1"}"#;
    let stored = integrity::authenticate(&aws, &loc, payload).await.unwrap();
    let back = integrity::verified(&aws, &loc, "k", &stored).await.unwrap();
    assert_eq!(back, payload);

    // Another HMAC key (another repository's, or an attacker's).
    let other = loc.clone().with_mac_key(&common::hmac_key(None).await);
    match integrity::verified(&aws, &other, "k", &stored).await {
        Err(e @ MoverError::Unverified { .. }) => {
            assert!(
                e.to_string().contains(loc.mac_key_id.as_deref().unwrap()),
                "{e}"
            )
        }
        other => panic!("expected Unverified, got {other:?}"),
    }
    // The MAC moved onto other bytes.
    let sealed = integrity::unseal(&stored).unwrap();
    let forged = integrity::seal(
        br#"{"restorePoint":"forged/i-1","namespace":"a","region":"us-east-1","lineage":"i-1"}"#,
        &sealed.key_id,
        &sealed.mac,
    );
    let e = integrity::verified(&aws, &loc, "k", &forged)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RestorePointUnverified", "{e}");
    assert!(e.to_string().contains("does not match its contents"), "{e}");
    // A document written before integrity, or by hand: not trusted either.
    let e = integrity::verified(&aws, &loc, "k", payload)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not an authenticated document"),
        "{e}"
    );
}
