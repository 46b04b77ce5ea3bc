//! Copying one backup's blocks into the repository: each block read,
//! named by its hash, compressed, and stored unless the repository has it
//! (or written again when garbage collection condemned it).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::manifest::{self, BackupStats, BlockRef, BlockSource};
use super::pace::{BLOCK_RETRIES, Pace, retry_block};
use super::{BackupRequest, MoverError, Progress, check_chunk, lock, seal};
use crate::aws::AwsError;
use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::repository::Chunk;

/// What the blocks of one backup share while they are copied.
pub(super) struct BlockCopy<'r, 'a> {
    pub(super) request: &'r BackupRequest<'a>,
    pub(super) progress: &'r Progress,
    /// Spaces GetSnapshotBlock requests under the per-snapshot quota.
    pub(super) pace: Pace,
    /// Chunks known to be stored: the parent's, then each one uploaded or
    /// found. A chunk being uploaded is claimed, so it is uploaded once.
    pub(super) known: Mutex<HashSet<String>>,
    /// Chunks garbage collection condemned: written even when stored, so
    /// that their `LastModified` says a backup needs them.
    pub(super) condemned: HashSet<String>,
    /// What makes this backup's rescue names its own.
    pub(super) rescue_tag: String,
    pub(super) stats: Mutex<BackupStats>,
}

impl BlockCopy<'_, '_> {
    /// Copies one block into the repository (or reuses the parent's);
    /// `None` for a block of zeros, which is not stored.
    pub(super) async fn block(
        &self,
        snapshot_id: &str,
        source: BlockSource,
    ) -> Result<Option<BlockRef>, MoverError> {
        let (index, token) = match source {
            BlockSource::Reuse(block) => {
                self.progress
                    .done
                    .fetch_add(u64::from(block.length), Ordering::Relaxed);
                lock(&self.stats).blocks_reused += 1;
                return Ok(Some(block));
            }
            BlockSource::Read { index, token } => (index, token),
        };
        let request = self.request;
        // A block is tried again on its own (throttling, a server error)
        // before it fails the attempt; what the others did is kept.
        let (data, mut retried) = retry_block(
            &BLOCK_RETRIES,
            &self.progress.retried,
            || format!("{snapshot_id} block {index}"),
            || async {
                self.pace.wait().await;
                let snapshots = request.source.snapshots();
                let data = snapshots
                    .get_snapshot_block(request.region, snapshot_id, index, &token)
                    .await?;
                Ok(data)
            },
        )
        .await?;
        if data.len() > BLOCK_SIZE {
            return Err(MoverError::OversizedBlock {
                snapshot_id: snapshot_id.to_string(),
                index,
                length: data.len(),
            });
        }
        let length = data.len() as u32;
        let (hash, packed, zero) = seal(data).await?;
        lock(&self.stats).blocks_read += 1;
        self.progress
            .done
            .fetch_add(BLOCK_SIZE as u64, Ordering::Relaxed);
        let mut chunk = hash;
        if !zero {
            let (name, r) = self.store_chunk(&chunk, packed, u64::from(length)).await?;
            (chunk, retried) = (name, retried | r);
        }
        if retried {
            self.progress.retried.blocks.fetch_add(1, Ordering::Relaxed);
            lock(&self.stats).blocks_retried += 1;
        }
        if zero {
            lock(&self.stats).zero_blocks += 1;
            return Ok(None);
        }
        Ok(Some(BlockRef {
            index,
            chunk,
            length,
        }))
    }

    /// Stores one chunk of a stream (a database dump), compressed, unless
    /// the repository has it already.
    pub(super) async fn stream_chunk(
        &self,
        data: Vec<u8>,
    ) -> Result<super::manifest::StreamChunk, MoverError> {
        let length = data.len() as u32;
        let (hash, packed) = super::pack(data).await?;
        let (chunk, retried) = self.store_chunk(&hash, packed, u64::from(length)).await?;
        let mut stats = lock(&self.stats);
        stats.blocks_read += 1;
        if retried {
            self.progress.retried.blocks.fetch_add(1, Ordering::Relaxed);
            stats.blocks_retried += 1;
        }
        self.progress
            .done
            .fetch_add(u64::from(length), Ordering::Relaxed);
        Ok(super::manifest::StreamChunk { chunk, length })
    }

    /// Stores a chunk unless the repository has it already (a chunk an
    /// earlier attempt stored, too: a retried backup re-reads its blocks
    /// but uploads only what is not there). Returns the name it is stored
    /// under (its hash, or a rescue name when garbage collection condemned
    /// it: `manifest::rescue_name`) and whether a call needed a retry.
    async fn store_chunk(
        &self,
        hash: &str,
        packed: Vec<u8>,
        length: u64,
    ) -> Result<(String, bool), MoverError> {
        let name = manifest::rescue_name(hash, &self.rescue_tag, &self.condemned);
        let claimed = lock(&self.known).insert(name.clone());
        if !claimed {
            lock(&self.stats).chunks_deduplicated += 1;
            return Ok((name, false));
        }
        let retried = self.store_named(&name, packed, length).await?;
        Ok((name, retried))
    }

    /// Stores the chunk `name` unless it is stored, intact, already.
    async fn store_named(
        &self,
        name: &str,
        packed: Vec<u8>,
        length: u64,
    ) -> Result<bool, MoverError> {
        let hash = name;
        let (loc, repo) = (self.request.location, self.request.repository);
        let key = loc.chunk_key(hash);
        let retries = &self.progress.retried;
        // A chunk the verified parent does not name is trusted only once
        // its bytes hash to its name: someone who can write the bucket (but
        // not MAC a manifest) could have planted junk under the name of a
        // block they expect (a public AMI's, say) before any backup wrote it.
        let found = retry_block(
            &BLOCK_RETRIES,
            retries,
            || key.clone(),
            || async { Ok(repo.repository().get_chunk(loc, &key).await?) },
        )
        .await;
        let (stored, retried) = match found {
            Ok(found) => found,
            Err(e) => {
                lock(&self.known).remove(hash);
                return Err(e);
            }
        };
        let stored = match stored {
            Chunk::Missing => None,
            Chunk::Packed(stored) => Some(Ok(stored)),
            Chunk::Oversized(size) => Some(Err(format!(
                "it is {size} bytes, more than a compressed block can be"
            ))),
        };
        if let Some(stored) = stored {
            let expected = hash.to_string();
            let intact = match stored {
                Ok(stored) => tokio::task::spawn_blocking(move || check_chunk(&stored, &expected))
                    .await
                    .map_err(|e| AwsError::Unreachable {
                        operation: "VerifyChunk",
                        detail: e.to_string(),
                    })?,
                Err(detail) => Err(detail),
            };
            match intact {
                Ok(_) => {
                    lock(&self.stats).chunks_deduplicated += 1;
                    return Ok(retried);
                }
                Err(detail) => {
                    tracing::warn!(
                        key,
                        detail,
                        "a stored chunk does not match its name; writing it again"
                    );
                }
            }
        }
        Ok(retried | self.upload_chunk(hash, &key, packed, length).await?)
    }

    /// Writes a chunk (replacing any stored under its name).
    async fn upload_chunk(
        &self,
        hash: &str,
        key: &str,
        packed: Vec<u8>,
        length: u64,
    ) -> Result<bool, MoverError> {
        let (loc, repo) = (self.request.location, self.request.repository);
        let retries = &self.progress.retried;
        let key = key.to_string();
        let mut retried = false;
        let size = packed.len() as u64;
        let put = retry_block(
            &BLOCK_RETRIES,
            retries,
            || key.clone(),
            || {
                let packed = packed.clone();
                async {
                    repo.repository()
                        .put_object(loc, &key, packed, "application/zstd")
                        .await?;
                    Ok(())
                }
            },
        )
        .await;
        match put {
            Ok(((), r)) => retried |= r,
            Err(e) => {
                // Let a later block (or attempt) upload it.
                lock(&self.known).remove(hash);
                return Err(e);
            }
        }
        let mut s = lock(&self.stats);
        s.chunks_uploaded += 1;
        s.bytes_uploaded += size;
        s.bytes_new += length;
        Ok(retried)
    }
}
