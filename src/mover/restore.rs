//! A restore: every chunk a volume needs is fetched and verified before
//! anything is written, then the blocks go into a new EBS snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};

use super::manifest::{self, Manifest, RepositoryLocation, VolumeImage};
use super::pace::{BLOCK_RETRIES, BLOCKS_PER_SECOND, Pace, retry_block};
use super::{CONCURRENCY, MoverError, Progress, check_chunk};
use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::repository::Chunk;
use crate::aws::{AwsClients, AwsError};

/// Fetches one chunk (tried again on its own when throttled) and checks
/// it against its name; also says whether the fetch needed a retry.
pub(super) async fn fetch_chunk(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    (manifest, progress): (&Manifest, &Progress),
    hash: &str,
    users: &BTreeMap<String, Vec<i32>>,
) -> Result<(Vec<u8>, bool), MoverError> {
    let key = loc.chunk_key(hash);
    let blocks = || users.get(hash).cloned().unwrap_or_default();
    let (found, retried) = retry_block(
        &BLOCK_RETRIES,
        &progress.retried,
        || key.clone(),
        || async { Ok(aws.repository().get_chunk(loc, &key).await?) },
    )
    .await?;
    let packed = match found {
        Chunk::Packed(packed) => packed,
        Chunk::Missing => {
            return Err(MoverError::ChunkMissing {
                restore_point: manifest.id.clone(),
                key,
                blocks: blocks(),
            });
        }
        Chunk::Oversized(size) => {
            return Err(MoverError::ChunkCorrupt {
                restore_point: manifest.id.clone(),
                key,
                blocks: blocks(),
                detail: format!("it is {size} bytes, more than a compressed block can be"),
            });
        }
    };
    let expected = hash.to_string();
    let checked = tokio::task::spawn_blocking(move || check_chunk(&packed, &expected))
        .await
        .map_err(|e| AwsError::Unreachable {
            operation: "VerifyChunk",
            detail: e.to_string(),
        })?;
    let data = checked.map_err(|detail| MoverError::ChunkCorrupt {
        restore_point: manifest.id.clone(),
        key,
        blocks: blocks(),
        detail,
    })?;
    Ok((data, retried))
}

/// Checks that every chunk of `volume` is in the repository and intact.
pub async fn verify(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    manifest: &Manifest,
    volume: &VolumeImage,
    progress: &Progress,
) -> Result<(), MoverError> {
    let users = manifest::chunk_users(std::slice::from_ref(volume));
    let lengths: BTreeMap<&str, u64> = volume
        .blocks
        .iter()
        .map(|b| (b.chunk.as_str(), u64::from(b.length)))
        .collect();
    // Owned items: a stream of borrowed ones makes the future unspawnable
    // (rustc cannot prove it for every lifetime).
    let hashes: Vec<String> = users.keys().cloned().collect();
    futures::stream::iter(hashes)
        .map(|hash| {
            let users = &users;
            let lengths = &lengths;
            async move {
                let (_, retried) =
                    fetch_chunk(aws, loc, (manifest, progress), &hash, users).await?;
                if retried {
                    progress.retried.blocks.fetch_add(1, Ordering::Relaxed);
                }
                let n = users.get(&hash).map_or(0, |u| u.len() as u64);
                progress.done.fetch_add(
                    n * lengths.get(hash.as_str()).copied().unwrap_or(0),
                    Ordering::Relaxed,
                );
                Ok::<(), MoverError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Where and how a restored snapshot is written.
pub struct RestoreTarget<'a> {
    /// Clients of the account the snapshot is written in.
    pub aws: &'a AwsClients,
    pub region: &'a str,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
    /// Makes a retried StartSnapshot return the same snapshot.
    pub client_token: &'a str,
}

/// Restores one volume of a restore point into a new snapshot and returns
/// its ID. Every chunk is verified first; when one is missing or corrupt,
/// nothing is written. Progress counts the verification and the writes
/// (twice the volume's bytes).
pub async fn restore_volume(
    repo: &AwsClients,
    loc: &RepositoryLocation,
    manifest: &Manifest,
    volume: &VolumeImage,
    target: RestoreTarget<'_>,
    progress: &Progress,
) -> Result<String, MoverError> {
    // Added, not set: a full restore moves several volumes with one Progress.
    progress
        .total
        .fetch_add(2 * volume.bytes(), Ordering::Relaxed);
    verify(repo, loc, manifest, volume, progress).await?;
    // Encrypted like the source (with its key where that key can be used).
    let encryption = manifest::restore_encryption(volume, target.region);
    let snapshot_id = target
        .aws
        .snapshots()
        .start_snapshot_encrypted(
            target.region,
            volume.size_gib,
            target.description,
            target.tags,
            target.client_token,
            encryption.as_ref(),
        )
        .await?;
    // Within an attempt, a block that fails is written again on its own,
    // into the same pending snapshot, and the blocks written stay written.
    // A *new* attempt (another worker, after this one failed or was lost)
    // starts a new snapshot and writes every block: the EBS direct APIs
    // cannot list the blocks of a snapshot that is still pending ("Can a
    // snapshot be accessed using the EBS direct APIs if it has a pending
    // status? No", <https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-faq.html>),
    // so nothing tells the new worker which blocks the old one wrote, and
    // a restore worker can write no record of them (its role has no
    // s3:PutObject, by design). The old attempt's snapshot stays pending,
    // tagged with the job, for the sweep.
    let users = manifest::chunk_users(std::slice::from_ref(volume));
    let pace = Pace::new(BLOCKS_PER_SECOND);
    futures::stream::iter(volume.blocks.clone())
        .map(|block| {
            let users = &users;
            let snapshot_id = &snapshot_id;
            let pace = &pace;
            async move {
                let (mut data, fetched_again) =
                    fetch_chunk(repo, loc, (manifest, progress), &block.chunk, users).await?;
                // EBS writes whole blocks; a short one ends in zeros.
                data.resize(BLOCK_SIZE, 0);
                let what = || format!("{snapshot_id} block {}", block.index);
                let ((), written_again) =
                    retry_block(&BLOCK_RETRIES, &progress.retried, what, || {
                        let data = data.clone();
                        async move {
                            pace.wait().await;
                            target
                                .aws
                                .snapshots()
                                .put_snapshot_block(target.region, snapshot_id, block.index, data)
                                .await?;
                            Ok(())
                        }
                    })
                    .await?;
                if fetched_again || written_again {
                    progress.retried.blocks.fetch_add(1, Ordering::Relaxed);
                }
                progress
                    .done
                    .fetch_add(u64::from(block.length), Ordering::Relaxed);
                Ok::<(), MoverError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let written = i32::try_from(volume.blocks.len()).unwrap_or(i32::MAX);
    target
        .aws
        .snapshots()
        .complete_snapshot(target.region, &snapshot_id, written)
        .await?;
    Ok(snapshot_id)
}
