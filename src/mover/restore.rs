//! A restore: every chunk a volume needs is fetched and verified before
//! anything is written, then the blocks go into a new EBS snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};

use super::manifest::{self, Manifest, RepositoryLocation, VolumeImage};
use super::{CONCURRENCY, MoverError, Progress, check_chunk};
use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::{AwsClients, AwsError};

/// Fetches one chunk and checks it against its name.
async fn fetch_chunk(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    manifest: &Manifest,
    hash: &str,
    users: &BTreeMap<String, Vec<i32>>,
) -> Result<Vec<u8>, MoverError> {
    let key = loc.chunk_key(hash);
    let blocks = || users.get(hash).cloned().unwrap_or_default();
    let Some(packed) = aws.repository().get_object(loc, &key).await? else {
        return Err(MoverError::ChunkMissing {
            restore_point: manifest.id.clone(),
            key,
            blocks: blocks(),
        });
    };
    let expected = hash.to_string();
    let checked = tokio::task::spawn_blocking(move || check_chunk(&packed, &expected))
        .await
        .map_err(|e| AwsError::Unreachable {
            operation: "VerifyChunk",
            detail: e.to_string(),
        })?;
    checked.map_err(|detail| MoverError::ChunkCorrupt {
        restore_point: manifest.id.clone(),
        key,
        blocks: blocks(),
        detail,
    })
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
                fetch_chunk(aws, loc, manifest, &hash, users).await?;
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
    let snapshot_id = target
        .aws
        .snapshots()
        .start_snapshot(
            target.region,
            volume.size_gib,
            target.description,
            target.tags,
            target.client_token,
        )
        .await?;
    let users = manifest::chunk_users(std::slice::from_ref(volume));
    futures::stream::iter(volume.blocks.clone())
        .map(|block| {
            let users = &users;
            let snapshot_id = &snapshot_id;
            async move {
                let mut data = fetch_chunk(repo, loc, manifest, &block.chunk, users).await?;
                // EBS writes whole blocks; a short one ends in zeros.
                data.resize(BLOCK_SIZE, 0);
                target
                    .aws
                    .snapshots()
                    .put_snapshot_block(target.region, snapshot_id, block.index, data)
                    .await?;
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
