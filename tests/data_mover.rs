//! The data mover against the AWS emulator, without the controller: a real
//! ext4 image in an EBS snapshot, backed up, changed, backed up again
//! incrementally, and both restore points restored byte for byte; a
//! missing or corrupt chunk fails the restore before anything is written.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::REGION;
use common::disks::{self, Ext4Image};
use tender::aws::AwsClients;
use tender::mover::manifest::RepositoryLocation;
use tender::mover::{self, BackupRequest, MoverError, Progress, RestoreTarget, SourceVolume};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible and reproducible.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn backup(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    job: &str,
    snapshot_id: &str,
) -> tender::mover::manifest::Manifest {
    let progress = Progress::default();
    let m = mover::backup(
        BackupRequest {
            source: aws,
            repository: aws,
            location: loc,
            region: REGION,
            resource: "disk-1",
            job_name: job,
            job_uid: &format!("uid-{job}"),
            volumes: &[SourceVolume {
                snapshot_id: snapshot_id.to_string(),
                device: None,
                volume_id: None,
            }],
        },
        &progress,
    )
    .await
    .unwrap();
    let (done, total) = progress.snapshot();
    assert_eq!(done, total, "progress ends at its total");
    m
}

async fn restore(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    id: &str,
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
            tags: &[],
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
    let loc = RepositoryLocation::new(&bucket, "team-a/", REGION);

    // A filesystem with incompressible data, a file of identical blocks
    // (stored once) and a small text file.
    let mut image = Ext4Image::build(
        &[
            ("docs/report.bin", random_bytes(3 << 20, 7)),
            ("docs/zeros-and-ones.bin", vec![0x11; 2 << 20]),
            ("hello.txt", b"hello from tender\n".to_vec()),
        ],
        32,
    );
    let original = image.bytes.clone();
    let first_snapshot = disks::write_snapshot(&aws, &original, 1).await;
    let blocks = disks::data_blocks(&original);
    let unique_blocks: HashSet<&[u8]> = blocks.values().copied().collect();
    assert!(unique_blocks.len() < blocks.len(), "the image has duplicate blocks");

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
    image.overwrite(offsets[40], &random_bytes(100_000, 99));
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
    for (id, expected) in [("nightly-1/disk-1", &original), ("nightly-2/disk-1", &changed)] {
        let restored = restore(&aws, &loc, id).await.unwrap();
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
    let before = disks::own_snapshots(&ec2).await.len();
    match restore(&aws, &loc, "nightly-1/disk-1").await {
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
    let e = restore(&aws, &loc, "nightly-1/disk-1").await.unwrap_err();
    assert!(matches!(e, MoverError::ChunkMissing { ref key, .. } if *key == victim));
    assert!(e.to_string().contains(&victim), "{e}");
    assert_eq!(
        disks::own_snapshots(&ec2).await.len(),
        before,
        "a failed restore starts no snapshot"
    );

    // A restore point that is not there.
    let e = restore(&aws, &loc, "nightly-9/disk-1").await.unwrap_err();
    assert_eq!(e.reason(), "RestorePointNotFound");
}

#[tokio::test]
async fn another_jobs_restore_point_is_never_overwritten() {
    let _ = common::kube_client().await;
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "", REGION);
    let image = Ext4Image::build(&[("a.txt", b"a".to_vec())], 8);
    let snapshot = disks::write_snapshot(&aws, &image.bytes, 1).await;
    backup(&aws, &loc, "same-name", &snapshot).await;
    let e = mover::backup(
        BackupRequest {
            source: &aws,
            repository: &aws,
            location: &loc,
            region: REGION,
            resource: "disk-1",
            job_name: "same-name",
            job_uid: "a-different-uid",
            volumes: &[SourceVolume {
                snapshot_id: snapshot.clone(),
                device: None,
                volume_id: None,
            }],
        },
        &Progress::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason(), "RestorePointExists");
}
