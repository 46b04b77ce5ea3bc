//! The data mover: EBS snapshots into a content-addressed S3 repository,
//! and restore points back into new EBS snapshots.
//!
//! A backup reads a snapshot's blocks with the EBS direct APIs (only the
//! blocks that changed since the parent restore point, when there is one),
//! names each 512 KiB block by the SHA-256 of its data, compresses it with
//! zstd and uploads it unless the repository already has that chunk; the
//! manifest (the restore point) maps block indexes to chunks. A restore
//! first fetches and verifies every chunk it needs, and writes nothing
//! unless all of them are there and intact; then it writes the blocks into
//! a new snapshot. Reads, uploads and writes run [`CONCURRENCY`] at a time,
//! so memory stays near `CONCURRENCY` blocks whatever the volume's size.

pub mod manifest;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::{AwsClients, AwsError};
use crate::reasons::FailureReason;
use manifest::{
    BackupStats, BlockRef, BlockSource, LatestPointer, Manifest, RepositoryLocation, VolumeImage,
};

/// Blocks in flight at once (each holds up to 512 KiB, plus its compressed copy).
pub const CONCURRENCY: usize = 16;

/// zstd level: fast, and most of the gain on disk images.
const ZSTD_LEVEL: i32 = 3;

/// Why a backup or restore stopped. Each has a stable reason for statuses.
#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    #[error("{0}")]
    Aws(#[from] AwsError),
    #[error(
        "chunk {key} (blocks {blocks:?}) is missing from the repository; restore point {restore_point} cannot be restored"
    )]
    ChunkMissing {
        restore_point: String,
        key: String,
        blocks: Vec<i32>,
    },
    #[error(
        "chunk {key} (blocks {blocks:?}) is corrupt: {detail}; restore point {restore_point} cannot be restored"
    )]
    ChunkCorrupt {
        restore_point: String,
        key: String,
        blocks: Vec<i32>,
        detail: String,
    },
    #[error("restore point {id} does not exist (no object {key} in bucket {bucket})")]
    RestorePointNotFound {
        id: String,
        bucket: String,
        key: String,
    },
    #[error("the manifest {key} cannot be read: {detail}")]
    ManifestInvalid { key: String, detail: String },
    #[error(
        "restore point {id} already exists, written by another BackupJob (UID {other_uid}); give the job another name"
    )]
    RestorePointExists { id: String, other_uid: String },
    #[error("snapshot {snapshot_id} block {index} is {length} bytes, more than an EBS block")]
    OversizedBlock {
        snapshot_id: String,
        index: i32,
        length: usize,
    },
}

impl MoverError {
    /// A stable CamelCase reason.
    pub fn reason(&self) -> FailureReason {
        match self {
            MoverError::Aws(e) => e.failure_reason(),
            MoverError::ChunkMissing { .. } => FailureReason::ChunkMissing,
            MoverError::ChunkCorrupt { .. } => FailureReason::ChunkCorrupt,
            MoverError::RestorePointNotFound { .. } => FailureReason::RestorePointNotFound,
            MoverError::ManifestInvalid { .. } => FailureReason::ManifestInvalid,
            MoverError::RestorePointExists { .. } => FailureReason::RestorePointExists,
            MoverError::OversizedBlock { .. } => FailureReason::SnapshotUnreadable,
        }
    }
}

/// Bytes done out of bytes total, shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// A snapshot to back up, and where it came from.
#[derive(Clone, Debug)]
pub struct SourceVolume {
    pub snapshot_id: String,
    pub device: Option<String>,
    pub volume_id: Option<String>,
}

/// Everything one backup needs to know.
pub struct BackupRequest<'a> {
    /// Clients that can read the snapshots (the source account's).
    pub source: &'a AwsClients,
    /// Clients that can write the repository.
    pub repository: &'a AwsClients,
    pub location: &'a RepositoryLocation,
    pub region: &'a str,
    pub resource: &'a str,
    /// What successive backups of the same data share, which picks the
    /// parent: the instance ID, or for a snapshot the volume it was taken
    /// of (so that daily snapshots of one volume chain incrementally).
    pub lineage: &'a str,
    pub job_name: &'a str,
    pub job_uid: &'a str,
    pub volumes: &'a [SourceVolume],
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hash and compress a block off the async threads.
async fn seal(data: Vec<u8>) -> Result<(String, Vec<u8>, bool), AwsError> {
    tokio::task::spawn_blocking(move || {
        let zero = data.iter().all(|b| *b == 0);
        let hash = sha256_hex(&data);
        let packed = if zero {
            Vec::new()
        } else {
            zstd::bulk::compress(&data, ZSTD_LEVEL).unwrap_or_default()
        };
        (hash, packed, zero)
    })
    .await
    .map_err(|e| AwsError::Unreachable {
        operation: "CompressChunk",
        detail: e.to_string(),
    })
}

/// Reads the restore point `id`'s manifest.
pub async fn load_manifest(
    aws: &AwsClients,
    location: &RepositoryLocation,
    id: &str,
) -> Result<Manifest, MoverError> {
    let key = location.manifest_key(id);
    let Some(text) = aws
        .repository()
        .get_object(&location.region, &location.bucket, &key)
        .await?
    else {
        return Err(MoverError::RestorePointNotFound {
            id: id.to_string(),
            bucket: location.bucket.clone(),
            key,
        });
    };
    manifest::parse_manifest(&text).map_err(|detail| MoverError::ManifestInvalid { key, detail })
}

/// The newest restore point of `resource` in the repository, if any and
/// readable; a broken pointer means a full backup, never a failed one.
async fn latest(
    aws: &AwsClients,
    location: &RepositoryLocation,
    region: &str,
    resource: &str,
) -> Result<Option<Manifest>, MoverError> {
    let key = location.latest_key(region, resource);
    let Some(text) = aws
        .repository()
        .get_object(&location.region, &location.bucket, &key)
        .await?
    else {
        return Ok(None);
    };
    let Ok(pointer) = serde_json::from_slice::<LatestPointer>(&text) else {
        tracing::warn!(key, "unreadable latest pointer; taking a full backup");
        return Ok(None);
    };
    match load_manifest(aws, location, &pointer.restore_point).await {
        Ok(m) => Ok(Some(m)),
        Err(MoverError::Aws(e)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "parent restore point unusable; taking a full backup");
            Ok(None)
        }
    }
}

/// Backs up `request.volumes` into one restore point and returns its
/// manifest (already stored, and made the resource's latest).
pub async fn backup(
    request: BackupRequest<'_>,
    progress: &Progress,
) -> Result<Manifest, MoverError> {
    let id = manifest::restore_point_id(request.job_name, request.resource);
    check_not_taken(&request, &id).await?;
    let parent = latest(
        request.repository,
        request.location,
        request.region,
        request.lineage,
    )
    .await?;
    // Plan every volume first, so the total is known before the first read.
    let plans = plan_volumes(&request, parent.as_ref()).await?;
    let total: u64 = plans
        .iter()
        .flat_map(|p| p.blocks.iter())
        .map(|s| match s {
            BlockSource::Read { .. } => BLOCK_SIZE as u64,
            BlockSource::Reuse(b) => u64::from(b.length),
        })
        .sum();
    progress.total.store(total, Ordering::Relaxed);

    let copy = BlockCopy {
        request: &request,
        progress,
        known: Mutex::new(
            parent
                .iter()
                .flat_map(|p| p.volumes.iter())
                .flat_map(|v| v.blocks.iter().map(|b| b.chunk.clone()))
                .collect(),
        ),
        stats: Mutex::new(BackupStats::default()),
    };
    let mut volumes = Vec::new();
    for plan in plans {
        let snapshot_id = plan.volume.snapshot_id.as_str();
        let blocks: Vec<Option<BlockRef>> = futures::stream::iter(plan.blocks)
            .map(|source| copy.block(snapshot_id, source))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut blocks: Vec<BlockRef> = blocks.into_iter().flatten().collect();
        blocks.sort_by_key(|b| b.index);
        volumes.push(VolumeImage {
            device: plan.volume.device.clone(),
            volume_id: plan.volume.volume_id.clone(),
            snapshot_id: plan.volume.snapshot_id.clone(),
            size_gib: plan.size_gib,
            block_size: BLOCK_SIZE as u32,
            blocks,
        });
    }
    let mut stats = lock(&copy.stats).clone();
    stats.bytes_total = volumes.iter().map(VolumeImage::bytes).sum();
    let manifest = Manifest {
        version: manifest::MANIFEST_VERSION,
        id: id.clone(),
        resource: request.resource.to_string(),
        region: request.region.to_string(),
        job_name: request.job_name.to_string(),
        job_uid: request.job_uid.to_string(),
        created_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        parent: parent.map(|p| p.id),
        volumes,
        stats,
    };
    write_manifest(&request, &manifest).await?;
    Ok(manifest)
}

/// A retried attempt of the same job overwrites its own restore point;
/// another job's is never overwritten.
async fn check_not_taken(request: &BackupRequest<'_>, id: &str) -> Result<(), MoverError> {
    let loc = request.location;
    if let Some(text) = request
        .repository
        .repository()
        .get_object(&loc.region, &loc.bucket, &loc.manifest_key(id))
        .await?
        && let Ok(existing) = manifest::parse_manifest(&text)
        && existing.job_uid != request.job_uid
    {
        return Err(MoverError::RestorePointExists {
            id: id.to_string(),
            other_uid: existing.job_uid,
        });
    }
    Ok(())
}

/// One volume's plan: which blocks to read, which to reuse.
struct VolumePlan {
    volume: SourceVolume,
    size_gib: i64,
    blocks: Vec<BlockSource>,
}

/// Lists each volume's blocks and, against the parent's image of the same
/// volume, what changed since.
async fn plan_volumes(
    request: &BackupRequest<'_>,
    parent: Option<&Manifest>,
) -> Result<Vec<VolumePlan>, MoverError> {
    let mut plans = Vec::new();
    for volume in request.volumes {
        let listing = request
            .source
            .snapshots()
            .list_snapshot_blocks(request.region, &volume.snapshot_id)
            .await?;
        let parent_image = parent.and_then(|p| {
            p.volumes.iter().find(|v| {
                (v.device.is_some() && v.device == volume.device)
                    || (v.volume_id.is_some() && v.volume_id == volume.volume_id)
                    || request.volumes.len() == 1 && p.volumes.len() == 1
            })
        });
        let changed = match parent_image {
            Some(p) if p.snapshot_id != volume.snapshot_id => {
                match request
                    .source
                    .snapshots()
                    .list_changed_blocks(request.region, &p.snapshot_id, &volume.snapshot_id)
                    .await
                {
                    Ok(c) => Some(c),
                    // The parent's snapshot is gone: read everything; the
                    // chunks still deduplicate.
                    Err(e) => {
                        tracing::info!(error = %e, "no change list against the parent; reading every block");
                        None
                    }
                }
            }
            Some(_) => Some(Vec::new()),
            None => None,
        };
        plans.push(VolumePlan {
            volume: volume.clone(),
            size_gib: listing.volume_size_gib,
            blocks: manifest::plan_blocks(&listing, parent_image, changed.as_deref()),
        });
    }
    Ok(plans)
}

/// What the blocks of one backup share while they are copied.
struct BlockCopy<'r, 'a> {
    request: &'r BackupRequest<'a>,
    progress: &'r Progress,
    /// Chunks known to be stored: the parent's, then each one uploaded or
    /// found. A chunk being uploaded is claimed, so it is uploaded once.
    known: Mutex<HashSet<String>>,
    stats: Mutex<BackupStats>,
}

impl BlockCopy<'_, '_> {
    /// Copies one block into the repository (or reuses the parent's);
    /// `None` for a block of zeros, which is not stored.
    async fn block(
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
        let data = request
            .source
            .snapshots()
            .get_snapshot_block(request.region, snapshot_id, index, &token)
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
        if zero {
            lock(&self.stats).zero_blocks += 1;
            return Ok(None);
        }
        self.store_chunk(&hash, packed).await?;
        Ok(Some(BlockRef {
            index,
            chunk: hash,
            length,
        }))
    }

    /// Stores a chunk unless the repository has it already.
    async fn store_chunk(&self, hash: &str, packed: Vec<u8>) -> Result<(), MoverError> {
        let claimed = lock(&self.known).insert(hash.to_string());
        if !claimed {
            lock(&self.stats).chunks_deduplicated += 1;
            return Ok(());
        }
        let (loc, repo) = (self.request.location, self.request.repository);
        let key = loc.chunk_key(hash);
        if repo
            .repository()
            .object_exists(&loc.region, &loc.bucket, &key)
            .await?
        {
            lock(&self.stats).chunks_deduplicated += 1;
            return Ok(());
        }
        let size = packed.len() as u64;
        let put = repo
            .repository()
            .put_object(&loc.region, &loc.bucket, &key, packed, "application/zstd")
            .await;
        if let Err(e) = put {
            // Let a later block (or attempt) upload it.
            lock(&self.known).remove(hash);
            return Err(e.into());
        }
        let mut s = lock(&self.stats);
        s.chunks_uploaded += 1;
        s.bytes_uploaded += size;
        Ok(())
    }
}

/// The manifest goes last: a restore point exists only once every chunk it
/// names is stored. Then it becomes the resource's latest.
async fn write_manifest(
    request: &BackupRequest<'_>,
    manifest: &Manifest,
) -> Result<(), MoverError> {
    let (loc, repo) = (request.location, request.repository);
    let text = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    repo.repository()
        .put_object(
            &loc.region,
            &loc.bucket,
            &loc.manifest_key(&manifest.id),
            text,
            "application/json",
        )
        .await?;
    let pointer = serde_json::to_vec(&LatestPointer {
        restore_point: manifest.id.clone(),
    })
    .unwrap_or_default();
    repo.repository()
        .put_object(
            &loc.region,
            &loc.bucket,
            &loc.latest_key(request.region, request.lineage),
            pointer,
            "application/json",
        )
        .await?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    let Some(packed) = aws
        .repository()
        .get_object(&loc.region, &loc.bucket, &key)
        .await?
    else {
        return Err(MoverError::ChunkMissing {
            restore_point: manifest.id.clone(),
            key,
            blocks: blocks(),
        });
    };
    let expected = hash.to_string();
    let checked = tokio::task::spawn_blocking(move || {
        let data = zstd::bulk::decompress(&packed, BLOCK_SIZE).map_err(|e| e.to_string())?;
        let actual = sha256_hex(&data);
        if actual == expected {
            Ok(data)
        } else {
            Err(format!("its data hashes to {actual}"))
        }
    })
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
