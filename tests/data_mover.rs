//! The data mover against the AWS emulator, without the controller: a real
//! ext4 image in an EBS snapshot, backed up, changed, backed up again
//! incrementally, and both restore points restored byte for byte; a
//! missing or corrupt chunk fails the restore before anything is written.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use common::REGION;
use common::disks::{self, Ext4Image};
use tender::aws::AwsClients;
use tender::messages::{Operation, PROTOCOL_VERSION, WorkerEvent, WorkerMessage, WorkerTask};
use tender::mover::manifest::RepositoryLocation;
use tender::mover::{self, MoverError, Progress, RestoreTarget};

async fn backup(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    job: &str,
    snapshot_id: &str,
) -> tender::mover::manifest::Manifest {
    let progress = Progress::default();
    let uid = format!("uid-{job}");
    let volumes = disks::snapshot_volume(snapshot_id);
    let request = disks::backup_request(aws, loc, (job, &uid), &volumes);
    let m = mover::backup(request, &progress)
        .await
        .expect("the backup succeeds");
    let (done, total) = progress.snapshot();
    assert_eq!(done, total, "progress ends at its total");
    m
}

/// Restores `id`'s first volume into a snapshot tagged `test-restore=marker`.
async fn restore(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    id: &str,
    marker: &str,
) -> Result<String, MoverError> {
    let m = mover::load_manifest(aws, loc, id).await?;
    mover::restore_volume(
        aws,
        loc,
        &m,
        &m.volumes[0],
        RestoreTarget {
            aws,
            region: REGION,
            description: "restored by a test",
            tags: &[("test-restore".to_string(), marker.to_string())],
            client_token: &common::unique("restore"),
        },
        &Progress::default(),
    )
    .await
}

#[tokio::test]
async fn full_and_incremental_backups_restore_byte_for_byte() {
    let _ = common::kube_client().await; // checks the environment
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let ec2 = common::ec2().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-a/", REGION)
        .with_mac_key(&common::hmac_key(None).await);

    // A filesystem with incompressible data, a file of identical blocks
    // (stored once) and a small text file.
    let mut image = Ext4Image::build(
        &[
            ("docs/report.bin", disks::random_bytes(3 << 20, 7)),
            ("docs/zeros-and-ones.bin", vec![0x11; 2 << 20]),
            ("hello.txt", b"hello from tender\n".to_vec()),
        ],
        32,
    );
    let original = image.bytes.clone();
    let first_snapshot = disks::write_snapshot(&aws, &original, 1).await;
    let blocks = disks::data_blocks(&original);
    let unique_blocks: HashSet<&[u8]> = blocks.values().copied().collect();
    assert!(
        unique_blocks.len() < blocks.len(),
        "the image has duplicate blocks"
    );

    let full = backup(&aws, &loc, "nightly-1", &first_snapshot).await;
    assert_eq!(full.parent, None);
    assert_eq!(full.stats.blocks_read, blocks.len() as u64);
    assert_eq!(full.stats.chunks_uploaded, unique_blocks.len() as u64);
    let chunks_after_full = disks::keys(&s3, &bucket, "team-a/chunks/").await;
    assert_eq!(chunks_after_full.len(), unique_blocks.len());
    assert!(
        disks::keys(&s3, &bucket, "team-a/restore-points/nightly-1/disk-1.json")
            .await
            .len()
            == 1
    );

    // Change part of one file in place: only the EBS blocks under it change.
    let offsets = image.file_offsets("/docs/report.bin");
    assert!(!offsets.is_empty(), "debugfs found the file's blocks");
    image.overwrite(offsets[40], &disks::random_bytes(100_000, 99));
    let changed = image.bytes.clone();
    let second_snapshot = disks::write_snapshot(&aws, &changed, 1).await;
    let changed_blocks: Vec<i32> = disks::data_blocks(&changed)
        .into_iter()
        .filter(|(i, b)| blocks.get(i) != Some(b))
        .map(|(i, _)| i)
        .collect();
    assert!(!changed_blocks.is_empty() && changed_blocks.len() <= 2);

    let incremental = backup(&aws, &loc, "nightly-2", &second_snapshot).await;
    assert_eq!(incremental.parent.as_deref(), Some("nightly-1/disk-1"));
    assert_eq!(
        incremental.stats.blocks_read,
        changed_blocks.len() as u64,
        "an incremental reads only the changed blocks"
    );
    let chunks_after_incremental = disks::keys(&s3, &bucket, "team-a/chunks/").await;
    assert_eq!(
        chunks_after_incremental.len(),
        chunks_after_full.len() + changed_blocks.len(),
        "an incremental uploads only the changed chunks"
    );

    // Both restore points come back byte for byte.
    for (id, expected) in [
        ("nightly-1/disk-1", &original),
        ("nightly-2/disk-1", &changed),
    ] {
        let restored = restore(&aws, &loc, id, &common::unique("restore"))
            .await
            .unwrap();
        let bytes = disks::read_snapshot(&aws, &restored, expected.len()).await;
        assert!(bytes == *expected, "{id} restored with different bytes");
    }

    // A corrupt chunk: the restore names it and writes nothing.
    let victim = chunks_after_full[0].clone();
    s3.put_object()
        .bucket(&bucket)
        .key(&victim)
        .body(b"not zstd at all".to_vec().into())
        .send()
        .await
        .unwrap();
    let failed = common::unique("failed-restore");
    match restore(&aws, &loc, "nightly-1/disk-1", &failed).await {
        Err(MoverError::ChunkCorrupt { key, .. }) => assert_eq!(key, victim),
        other => panic!("expected ChunkCorrupt, got {other:?}"),
    }
    // A missing chunk: the same.
    s3.delete_object()
        .bucket(&bucket)
        .key(&victim)
        .send()
        .await
        .unwrap();
    let e = restore(&aws, &loc, "nightly-1/disk-1", &failed)
        .await
        .unwrap_err();
    assert!(matches!(e, MoverError::ChunkMissing { ref key, .. } if *key == victim));
    assert!(e.to_string().contains(&victim), "{e}");
    assert!(
        disks::snapshots_tagged(&ec2, "test-restore", &failed)
            .await
            .is_empty(),
        "a failed restore starts no snapshot"
    );

    // A restore point that is not there.
    let e = restore(&aws, &loc, "nightly-9/disk-1", &common::unique("restore"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RestorePointNotFound");
}

#[tokio::test]
async fn another_jobs_restore_point_is_never_overwritten() {
    let _ = common::kube_client().await;
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&common::hmac_key(None).await);
    let image = Ext4Image::build(&[("a.txt", b"a".to_vec())], 8);
    let snapshot = disks::write_snapshot(&aws, &image.bytes, 1).await;
    backup(&aws, &loc, "same-name", &snapshot).await;
    let volumes = disks::snapshot_volume(&snapshot);
    let request = disks::backup_request(&aws, &loc, ("same-name", "a-different-uid"), &volumes);
    let e = mover::backup(request, &Progress::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RestorePointExists");
}

/// Every message on a queue, parsed, in sequence order.
async fn drain(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<WorkerMessage> {
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive messages");
        if got.messages().is_empty() {
            break;
        }
        for m in got.messages() {
            let body = m.body().expect("a message has a body");
            out.push(WorkerMessage::parse(body).expect("a worker message"));
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().expect("a receipt handle"))
                .send()
                .await
                .expect("delete the message");
        }
    }
    out.sort_by_key(|m| m.sequence);
    out
}

#[tokio::test]
async fn the_agent_restores_a_restore_point_into_a_snapshot_and_reports_it() {
    let _ = common::kube_client().await;
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let ec2 = common::ec2().await;
    let sqs = common::sqs().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&common::hmac_key(None).await);
    let image = Ext4Image::build(
        &[
            ("srv/data.bin", disks::random_bytes(1 << 20, 3)),
            ("motd", b"hi\n".to_vec()),
        ],
        8,
    );
    let snapshot = disks::write_snapshot(&aws, &image.bytes, 1).await;
    backup(&aws, &loc, "weekly", &snapshot).await;
    let queue = sqs
        .create_queue()
        .queue_name(common::unique("restore-agent"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let task = |attempt: i32| WorkerTask {
        version: PROTOCOL_VERSION,
        operation: Operation::Restore,
        namespace: "ns".into(),
        job_name: "restore-weekly".into(),
        job_uid: common::unique("uid"),
        resource: "weekly/disk-1".into(),
        resource_region: REGION.into(),
        attempt,
        queue_url: queue.clone(),
        queue_region: REGION.into(),
        heartbeat_seconds: 1,
        cluster_id: None,
        source_access: None,
        repository: Some(loc.clone()),
        restore_point: Some("weekly/disk-1".into()),
        device: None,
        all_volumes: false,
        file_level: None,
        policy: None,
        gc_grace_seconds: None,
        retention: None,
        database: None,
    };

    tender::worker::run(aws.clone(), task(1), "i-00000000000000001".into())
        .await
        .unwrap();
    let messages = drain(&sqs, &queue).await;
    assert!(matches!(messages[0].event, WorkerEvent::Started));
    let Some(WorkerEvent::Completed {
        snapshot_id: Some(restored),
        restore_point,
        bytes: Some(bytes),
        ..
    }) = messages.last().map(|m| m.event.clone())
    else {
        panic!("no completion with a snapshot: {messages:?}");
    };
    assert_eq!(restore_point.as_deref(), Some("weekly/disk-1"));
    assert_eq!(bytes.done, bytes.total);
    let back = disks::read_snapshot(&aws, &restored, image.bytes.len()).await;
    assert!(back == image.bytes, "the restored snapshot differs");
    let tags: Vec<(String, String)> = ec2
        .describe_snapshots()
        .snapshot_ids(&restored)
        .send()
        .await
        .unwrap()
        .snapshots()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().into(), t.value().unwrap().into()))
        .collect();
    assert!(
        tags.contains(&("tender.dev/job-name".into(), "restore-weekly".into())),
        "{tags:?}"
    );

    // A corrupt chunk: the agent reports which, and writes no snapshot.
    let victim = disks::keys(&s3, &bucket, "chunks/").await[0].clone();
    s3.put_object()
        .bucket(&bucket)
        .key(&victim)
        .body(b"garbage".to_vec().into())
        .send()
        .await
        .unwrap();
    let failing = task(2);
    let failing_uid = failing.job_uid.clone();
    let e = tender::worker::run(aws.clone(), failing, "i-00000000000000002".into())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ChunkCorrupt"), "{e}");
    let messages = drain(&sqs, &queue).await;
    match messages.last().map(|m| &m.event) {
        Some(WorkerEvent::Failed {
            reason, message, ..
        }) => {
            assert_eq!(reason, "ChunkCorrupt");
            assert!(message.contains(&victim), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // The agent tags what it writes with the job's UID: nothing for attempt 2.
    assert!(
        disks::snapshots_tagged(&ec2, "tender.dev/job-uid", &failing_uid)
            .await
            .is_empty(),
        "a failed restore starts no snapshot"
    );

    // A huge object planted under a chunk's name is not read into memory:
    // it is a corrupt chunk, and said so.
    s3.put_object()
        .bucket(&bucket)
        .key(&victim)
        .body(vec![7u8; 8 << 20].into())
        .send()
        .await
        .unwrap();
    let e = tender::worker::run(aws.clone(), task(3), "i-00000000000000003".into())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ChunkCorrupt"), "{e}");
    let messages = drain(&sqs, &queue).await;
    match messages.last().map(|m| &m.event) {
        Some(WorkerEvent::Failed { message, .. }) => {
            assert!(message.contains(&victim), "{message}");
            assert!(
                message.contains("more than a compressed block can be"),
                "{message}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// EBS throttles every third block (per snapshot, five times in a row:
/// more than the SDK's own attempts): each such block is retried on its
/// own and the backup and the restore go through, byte for byte, with no
/// block read or written twice.
#[tokio::test]
async fn throttled_blocks_are_retried_alone_and_nothing_is_moved_twice() {
    let _ = common::kube_client().await; // checks the environment
    let aws = AwsClients::from_env().await;
    let throttle = common::throttle::start(3, 5).await;
    let throttled_aws = AwsClients::from_env_with_endpoint(&throttle.endpoint).await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-t/", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let image = Ext4Image::build(&[("data.bin", disks::random_bytes(4 << 20, 11))], 16);
    let snapshot = disks::write_snapshot(&aws, &image.bytes, 1).await;
    let blocks = disks::data_blocks(&image.bytes);
    let throttled = blocks.keys().filter(|i| *i % 3 == 0).count();
    assert!(throttled > 0 && throttled < blocks.len());

    let progress = Progress::default();
    let volumes = disks::snapshot_volume(&snapshot);
    let request = disks::backup_request(&throttled_aws, &loc, ("throttled-1", "uid-t1"), &volumes);
    let manifest = mover::backup(request, &progress)
        .await
        .expect("the backup goes through the throttling");
    let retried = |p: &Progress| p.retried.blocks.load(Ordering::Relaxed) as usize;
    assert_eq!(manifest.stats.blocks_retried as usize, throttled);
    assert_eq!(retried(&progress), throttled);
    let tally = &throttle.tally;
    assert_eq!(
        tally.gets_forwarded.load(Ordering::SeqCst),
        blocks.len(),
        "each block is read once"
    );

    let progress = Progress::default();
    let restored = mover::restore_volume(
        &throttled_aws,
        &loc,
        &manifest,
        &manifest.volumes[0],
        RestoreTarget {
            aws: &throttled_aws,
            region: REGION,
            description: "restored through throttling",
            tags: &[],
            client_token: &common::unique("restore"),
        },
        &progress,
    )
    .await
    .expect("the restore goes through the throttling");
    assert_eq!(retried(&progress), throttled);
    assert_eq!(
        tally.puts_forwarded.load(Ordering::SeqCst),
        blocks.len(),
        "each block is written once"
    );
    assert_eq!(
        tally.throttled.load(Ordering::SeqCst),
        2 * throttled * 5,
        "every injected throttle was met"
    );
    assert_eq!(
        disks::read_snapshot(&aws, &restored, image.bytes.len()).await,
        image.bytes
    );
    println!(
        "throttling: {} of {} blocks throttled 5 times each way, {} retried by the mover in the backup and {} in the restore",
        throttled,
        blocks.len(),
        manifest.stats.blocks_retried,
        retried(&progress)
    );
}

/// A backup attempt that fails half way (one block EBS will not serve)
/// leaves the chunks it uploaded; the retried attempt reads the blocks
/// again but uploads only the chunks not stored yet.
#[tokio::test]
async fn a_retried_backup_uploads_only_what_the_failed_attempt_did_not() {
    let _ = common::kube_client().await; // checks the environment
    let aws = AwsClients::from_env().await;
    let throttle = common::throttle::start(i32::MAX, 0).await;
    let faulty_aws = AwsClients::from_env_with_endpoint(&throttle.endpoint).await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-r/", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let image = Ext4Image::build(&[("data.bin", disks::random_bytes(24 << 20, 13))], 40);
    let snapshot = disks::write_snapshot(&aws, &image.bytes, 1).await;
    let blocks = disks::data_blocks(&image.bytes);
    let unique: HashSet<&[u8]> = blocks.values().copied().collect();
    // A block three quarters in: the blocks before it are done by then.
    let broken = *blocks.keys().nth(blocks.len() * 3 / 4).unwrap();
    throttle.tally.broken.lock().unwrap().insert(broken);

    let volumes = disks::snapshot_volume(&snapshot);
    let attempt = || disks::backup_request(&faulty_aws, &loc, ("resumed-1", "uid-r1"), &volumes);
    let failed = mover::backup(attempt(), &Progress::default()).await;
    assert!(failed.is_err(), "block {broken} cannot be read");
    // Uploads in flight when the attempt stopped are settled by now.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let stored = disks::keys(&s3, &bucket, "team-r/chunks/").await.len();
    assert!(
        stored > 0 && stored < unique.len(),
        "{stored} of {}",
        unique.len()
    );

    throttle.tally.broken.lock().unwrap().clear();
    let retried = mover::backup(attempt(), &Progress::default())
        .await
        .expect("the retried attempt succeeds");
    assert_eq!(retried.stats.blocks_read as usize, blocks.len());
    assert_eq!(
        retried.stats.chunks_uploaded as usize,
        unique.len() - stored,
        "only the chunks the failed attempt did not store are uploaded"
    );
    assert_eq!(
        disks::keys(&s3, &bucket, "team-r/chunks/").await.len(),
        unique.len()
    );
    println!(
        "resume: the failed attempt stored {stored} of {} chunks; the retry uploaded {} and found the rest stored",
        unique.len(),
        retried.stats.chunks_uploaded
    );
}

/// A snapshot encrypted with a customer key is backed up with its key
/// recorded, and restored encrypted with that same key; a manifest from
/// before the record (no encryption in it) restores as it always did.
#[tokio::test]
async fn an_encrypted_source_is_restored_encrypted_with_its_key() {
    let _ = common::kube_client().await; // checks the environment
    let aws = AwsClients::from_env().await;
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let key = aws_sdk_kms::Client::new(&conf)
        .create_key()
        .description("tender test EBS key")
        .send()
        .await
        .unwrap()
        .key_metadata()
        .and_then(|m| m.arn())
        .unwrap()
        .to_string();
    let ec2 = common::ec2().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-e/", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let image = Ext4Image::build(&[("secret.txt", b"only with the key\n".to_vec())], 8);
    let snapshot = disks::write_encrypted_snapshot(&aws, &image.bytes, 1, Some(&key)).await;

    let manifest = backup(&aws, &loc, "encrypted-1", &snapshot).await;
    assert_eq!(
        manifest.volumes[0].encryption,
        Some(tender::mover::manifest::VolumeEncryption {
            kms_key_arn: Some(key.clone())
        }),
        "the source's encryption is recorded"
    );
    // EC2 may not know a snapshot for a moment after it is made.
    let describe = |id: String| {
        let ec2 = ec2.clone();
        async move {
            for _ in 0..50 {
                if let Ok(out) = ec2.describe_snapshots().snapshot_ids(&id).send().await {
                    let s = out.snapshots()[0].clone();
                    return (
                        s.encrypted().unwrap_or(false),
                        s.kms_key_id().map(String::from),
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            panic!("EC2 does not know snapshot {id}");
        }
    };
    let restored = restore(&aws, &loc, "encrypted-1/disk-1", "encrypted")
        .await
        .unwrap();
    assert_eq!(describe(restored.clone()).await, (true, Some(key.clone())));
    assert_eq!(
        disks::read_snapshot(&aws, &restored, image.bytes.len()).await,
        image.bytes
    );

    // A manifest written before encryption was recorded.
    let mut old = manifest.clone();
    old.volumes[0].encryption = None;
    let plain = mover::restore_volume(
        &aws,
        &loc,
        &old,
        &old.volumes[0],
        RestoreTarget {
            aws: &aws,
            region: REGION,
            description: "restored from an old manifest",
            tags: &[],
            client_token: &common::unique("restore"),
        },
        &Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!(describe(plain).await, (false, None));
}
