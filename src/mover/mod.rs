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
//!
//! Manifests and `latest` pointers are authenticated with the repository's
//! KMS HMAC key (`integrity`): a manifest that does not verify is never
//! restored from, and a `latest` pointer (or the manifest it names) that
//! does not verify is never built on. A manifest is written only where
//! none is (`If-None-Match: *`), so no restore point is ever replaced.

mod chunks;
pub mod dump;
pub mod gc;
pub mod integrity;
pub mod machine;
pub mod manifest;
pub mod pace;
mod restore;
pub mod retention;
pub mod store;
pub mod verify;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::repository::Created;
use crate::aws::{AwsClients, AwsError};
use crate::reasons::FailureReason;
use chunks::BlockCopy;
use manifest::{
    BackupStats, BlockRef, BlockSource, LatestPointer, Manifest, RepositoryLocation, VolumeImage,
};
use pace::{BLOCKS_PER_SECOND, Pace};
pub use restore::{RestoreTarget, restore_volume, verify};

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
        "{key} does not verify with the repository's integrity key: {detail}. It was changed, replaced or written without that key, so Tender will not use it; restore another restore point, and find out who else can write to the bucket"
    )]
    Unverified { key: String, detail: String },
    #[error(
        "the task's repository names no integrity key (spec.integrity.macKeyId), and nothing is written or read unauthenticated; the controller that launched this worker is older than the agent"
    )]
    NoIntegrityKey,
    #[error(
        "restore point {id} already exists, written by another BackupJob (UID {other_uid}); give the job another name"
    )]
    RestorePointExists { id: String, other_uid: String },
    #[error(
        "the backup copied for {ran} s, past the grace period of garbage collection's list {list}, written while it ran: a chunk it reused may be deleted, so it stores no restore point; the retry starts over. Raise the controller's --gc-grace-seconds above the longest backup"
    )]
    OutlivedGrace { list: String, ran: i64 },
    /// A retention task that cannot be carried out as given.
    #[error("the retention task is not valid: {0}")]
    InvalidTask(String),
    /// The worker's local disk, where garbage collection spills chunk
    /// hashes.
    #[error("the worker's local disk: {0}")]
    Spill(String),
    /// A PostgreSQL tool (or the server through it) failed a step of a
    /// dump or of its restore.
    #[error("{step}: {detail}")]
    Database {
        step: String,
        detail: String,
        restore: bool,
    },
    #[error(
        "database {database:?} on the target already holds {relations} tables, views or sequences; a dump is restored only into a database that holds none (drop it, or restore under another name)"
    )]
    TargetNotEmpty { database: String, relations: u64 },
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
            MoverError::Unverified { .. } => FailureReason::RestorePointUnverified,
            MoverError::NoIntegrityKey => FailureReason::RepositoryMissing,
            MoverError::RestorePointExists { .. } => FailureReason::RestorePointExists,
            MoverError::OversizedBlock { .. } => FailureReason::SnapshotUnreadable,
            MoverError::Database { restore: false, .. } => FailureReason::DatabaseDumpFailed,
            MoverError::Database { restore: true, .. } => FailureReason::DatabaseLoadFailed,
            MoverError::TargetNotEmpty { .. } => FailureReason::DatabaseRestoreTargetNotEmpty,
            MoverError::Spill(_) => FailureReason::WorkerDiskFailed,
            MoverError::InvalidTask(_) => FailureReason::RetentionInvalid,
            MoverError::OutlivedGrace { .. } => FailureReason::BackupOutlivedGracePeriod,
        }
    }
}

/// Bytes done out of bytes total, shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// Blocks that needed a retry by the mover, and its retries.
    pub retried: pace::Retries,
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
    /// What the source instance's AMI said, recorded in the manifest for a
    /// full restore; `None` for a snapshot.
    pub machine: Option<&'a crate::api::MachineImage>,
    /// The BackupPolicy the backup runs for, if any.
    pub policy: Option<&'a str>,
    /// Garbage collection's grace period, for its lists that record none
    /// (default a day): a backup that copied past the grace period of a
    /// list written meanwhile stores no restore point (see
    /// [`MoverError::OutlivedGrace`]).
    pub grace: Option<std::time::Duration>,
}

/// Sixteen random hex digits, for names no other writer picks.
pub(crate) fn random_tag() -> String {
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    hex::encode(random)
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A stored chunk's block, when its bytes decompress to data that hashes to
/// `expected` (its name); else what is wrong. Blocking: call it off the
/// async threads.
pub(crate) fn check_chunk(packed: &[u8], expected: &str) -> Result<Vec<u8>, String> {
    let data = zstd::bulk::decompress(packed, BLOCK_SIZE).map_err(|e| e.to_string())?;
    let actual = sha256_hex(&data);
    if actual == manifest::chunk_digest(expected) {
        Ok(data)
    } else {
        Err(format!("its data hashes to {actual}"))
    }
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

/// Hash and compress a chunk of a stream off the async threads (zeros
/// too: a stream's chunks are all stored).
async fn pack(data: Vec<u8>) -> Result<(String, Vec<u8>), AwsError> {
    tokio::task::spawn_blocking(move || {
        let hash = sha256_hex(&data);
        let packed = zstd::bulk::compress(&data, ZSTD_LEVEL).unwrap_or_default();
        (hash, packed)
    })
    .await
    .map_err(|e| AwsError::Unreachable {
        operation: "CompressChunk",
        detail: e.to_string(),
    })
}

/// Reads the restore point `id`'s manifest, once it verifies with the
/// repository's integrity key and names itself `id` of this namespace.
pub async fn load_manifest(
    aws: &AwsClients,
    location: &RepositoryLocation,
    id: &str,
) -> Result<Manifest, MoverError> {
    let key = location.manifest_key(id);
    let Some(stored) = aws.repository().get_object(location, &key).await? else {
        return Err(MoverError::RestorePointNotFound {
            id: id.to_string(),
            bucket: location.bucket.clone(),
            key,
        });
    };
    let text = integrity::verified(aws, location, &key, &stored).await?;
    let manifest =
        manifest::parse_manifest(&text).map_err(|detail| MoverError::ManifestInvalid {
            key: key.clone(),
            detail,
        })?;
    manifest
        .placed(id, location.namespace.as_deref())
        .map_err(|detail| MoverError::Unverified { key, detail })?;
    Ok(manifest)
}

/// What the next backup builds on.
#[derive(Default)]
struct Parent {
    manifest: Option<Manifest>,
    /// Why the newest restore point was not trusted, when it was not.
    refused: Option<String>,
}

/// The newest restore point of `lineage`, if there is one that can be
/// trusted. A pointer or manifest that does not verify is not used at all
/// (not even its list of chunks): the backup becomes a full one, which an
/// altered pointer cannot make wrong, and the manifest says why. Refusing
/// the backup instead would stop protection and gain nothing: whoever can
/// alter the pointer can delete it, which also means a full backup.
async fn parent(
    aws: &AwsClients,
    location: &RepositoryLocation,
    region: &str,
    lineage: &str,
) -> Result<Parent, MoverError> {
    let key = location.latest_key(region, lineage);
    let Some(stored) = aws.repository().get_object(location, &key).await? else {
        return Ok(Parent::default());
    };
    let found = async {
        let text = integrity::verified(aws, location, &key, &stored).await?;
        let pointer: LatestPointer =
            serde_json::from_slice(&text).map_err(|e| MoverError::ManifestInvalid {
                key: key.clone(),
                detail: e.to_string(),
            })?;
        pointer
            .placed(location.namespace.as_deref(), region, lineage)
            .map_err(|detail| MoverError::Unverified {
                key: key.clone(),
                detail,
            })?;
        load_manifest(aws, location, &pointer.restore_point).await
    };
    match found.await {
        Ok(manifest) => Ok(Parent {
            manifest: Some(manifest),
            refused: None,
        }),
        Err(e @ (MoverError::Aws(_) | MoverError::NoIntegrityKey)) => Err(e),
        Err(e @ MoverError::Unverified { .. }) => {
            tracing::warn!(error = %e, "the latest restore point does not verify; taking a full backup");
            Ok(Parent {
                manifest: None,
                refused: Some(e.to_string()),
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "parent restore point unusable; taking a full backup");
            Ok(Parent::default())
        }
    }
}

/// Backs up `request.volumes` into one restore point and returns its
/// manifest (already stored, and made the resource's latest). A retried
/// attempt whose earlier attempt stored the restore point returns that one.
pub async fn backup(
    request: BackupRequest<'_>,
    progress: &Progress,
) -> Result<Manifest, MoverError> {
    finish(&request, |id| copy(&request, id, progress)).await
}

/// The steps of every backup around its copy: an earlier attempt's stored
/// restore point is returned as it is; else `copy` makes the manifest,
/// which is stored unless the copy outlived garbage collection's grace,
/// and made the lineage's latest.
async fn finish<F, Fut>(request: &BackupRequest<'_>, copy: F) -> Result<Manifest, MoverError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Manifest, MoverError>>,
{
    let id = manifest::restore_point_id(request.job_name, request.resource);
    let manifest = match stored_by_this_job(request, &id).await? {
        Some(done) => done,
        None => {
            let started = jiff::Timestamp::now();
            let manifest = copy(id).await?;
            // Garbage collection deletes a chunk condemned after this
            // backup read the condemned lists a grace period after the
            // list was written: a backup still running then must not
            // store a manifest that may name a deleted chunk.
            let store = store::S3Store {
                aws: request.repository,
                location: request.location,
            };
            let fallback = request
                .grace
                .and_then(|g| jiff::SignedDuration::try_from(g).ok())
                .unwrap_or(gc::MIN_GRACE);
            let now = jiff::Timestamp::now();
            if let Some(list) =
                gc::outlived_by(&store, request.location, started, now, fallback).await?
            {
                return Err(MoverError::OutlivedGrace {
                    list,
                    ran: now.duration_since(started).as_secs(),
                });
            }
            store_manifest(request, manifest).await?
        }
    };
    point_latest(request, &manifest).await?;
    Ok(manifest)
}

/// Copies the volumes' blocks into the repository (only what changed since
/// the trusted parent) and returns the manifest that maps them.
async fn copy(
    request: &BackupRequest<'_>,
    id: String,
    progress: &Progress,
) -> Result<Manifest, MoverError> {
    let parent = parent(
        request.repository,
        request.location,
        request.region,
        request.lineage,
    )
    .await?;
    let base = parent.manifest.as_ref();
    // Chunks garbage collection condemned: needed ones are written again.
    let store = store::S3Store {
        aws: request.repository,
        location: request.location,
    };
    let condemned = gc::load_condemned(&store, request.location).await?;
    // Plan every volume first, so the total is known before the first read.
    let plans = plan_volumes(request, base, &condemned).await?;
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
        request,
        progress,
        pace: Pace::new(BLOCKS_PER_SECOND),
        known: Mutex::new(
            base.iter()
                .flat_map(|p| p.volumes.iter())
                .flat_map(|v| v.blocks.iter().map(|b| b.chunk.clone()))
                .filter(|c| !condemned.contains(c))
                .collect(),
        ),
        condemned,
        rescue_tag: hex::encode(&Sha256::digest(request.job_uid.as_bytes())[..6]),
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
            encryption: plan.encryption,
        });
    }
    let mut stats = lock(&copy.stats).clone();
    stats.bytes_total = volumes.iter().map(VolumeImage::bytes).sum();
    Ok(Manifest {
        version: manifest::MANIFEST_VERSION,
        id,
        resource: request.resource.to_string(),
        region: request.region.to_string(),
        namespace: request.location.namespace.clone().unwrap_or_default(),
        job_name: request.job_name.to_string(),
        job_uid: request.job_uid.to_string(),
        created_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        parent: parent.manifest.map(|p| p.id),
        parent_refused: parent.refused,
        volumes,
        stats,
        machine: request.machine.cloned(),
        policy: request.policy.map(String::from),
        database: None,
    })
}

/// The restore point `id` as stored already: this job's own (an earlier
/// attempt's, or this attempt's PUT that S3 stored before an error) is the
/// restore point; another job's, or one that does not verify, is never
/// replaced.
async fn stored_by_this_job(
    request: &BackupRequest<'_>,
    id: &str,
) -> Result<Option<Manifest>, MoverError> {
    let exists = |other_uid: String| MoverError::RestorePointExists {
        id: id.to_string(),
        other_uid,
    };
    match load_manifest(request.repository, request.location, id).await {
        Ok(m) if m.job_uid == request.job_uid => Ok(Some(m)),
        Ok(m) => Err(exists(m.job_uid)),
        Err(MoverError::RestorePointNotFound { .. }) => Ok(None),
        // A document there that does not verify is tampering, and says so
        // (naming the key), rather than passing for another job's.
        Err(
            e @ (MoverError::Aws(_) | MoverError::NoIntegrityKey | MoverError::Unverified { .. }),
        ) => Err(e),
        Err(e) => Err(exists(format!(
            "unknown: the stored manifest is unusable: {e}"
        ))),
    }
}

/// One volume's plan: which blocks to read, which to reuse.
struct VolumePlan {
    volume: SourceVolume,
    size_gib: i64,
    blocks: Vec<BlockSource>,
    /// Recorded so that a restore is encrypted like the source.
    encryption: Option<manifest::VolumeEncryption>,
}

/// Lists each volume's blocks and, against the parent's image of the same
/// volume, what changed since.
async fn plan_volumes(
    request: &BackupRequest<'_>,
    parent: Option<&Manifest>,
    condemned: &HashSet<String>,
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
        let encryption = request
            .source
            .snapshots()
            .snapshot_encryption(request.region, &volume.snapshot_id)
            .await?;
        plans.push(VolumePlan {
            encryption,
            volume: volume.clone(),
            size_gib: listing.volume_size_gib,
            blocks: manifest::plan_blocks(&listing, parent_image, changed.as_deref(), condemned),
        });
    }
    Ok(plans)
}

/// The manifest goes last: a restore point exists only once every chunk it
/// names is stored. It is written only where none is (`If-None-Match: *`):
/// of two writers racing for one ID, S3 lets exactly one write, and the
/// other finds the winner's manifest. Returns the manifest that is stored.
async fn store_manifest(
    request: &BackupRequest<'_>,
    manifest: Manifest,
) -> Result<Manifest, MoverError> {
    let (loc, repo) = (request.location, request.repository);
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let sealed = integrity::authenticate(repo, loc, &text).await?;
    let key = loc.manifest_key(&manifest.id);
    match repo
        .repository()
        .create_object(loc, &key, sealed, "application/json")
        .await?
    {
        Created::Written => Ok(manifest),
        Created::AlreadyExists => {
            stored_by_this_job(request, &manifest.id)
                .await?
                .ok_or_else(|| MoverError::RestorePointExists {
                    id: manifest.id.clone(),
                    other_uid: "unknown: it was deleted while this job wrote".into(),
                })
        }
    }
}

/// Makes the restore point the latest of its lineage: the parent of the
/// next backup.
async fn point_latest(request: &BackupRequest<'_>, manifest: &Manifest) -> Result<(), MoverError> {
    let (loc, repo) = (request.location, request.repository);
    let pointer = LatestPointer {
        restore_point: manifest.id.clone(),
        namespace: loc.namespace.clone().unwrap_or_default(),
        region: request.region.to_string(),
        lineage: request.lineage.to_string(),
    };
    let text = serde_json::to_vec(&pointer).unwrap_or_default();
    let sealed = integrity::authenticate(repo, loc, &text).await?;
    repo.repository()
        .put_object(
            loc,
            &loc.latest_key(request.region, request.lineage),
            sealed,
            "application/json",
        )
        .await?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
