//! A verification, on a worker: every chunk a restore point references is
//! read back and checked against its name (its SHA-256), after the
//! manifest's MAC. Unlike a restore, which stops at the first bad chunk,
//! it reads them all, so that the outcome says how much of the restore
//! point is damaged and which volumes.
//!
//! Memory: the restore point's distinct chunk names and the devices that
//! use each (some 100 bytes a chunk: 200 MiB for a 1 TiB volume of
//! distinct 512 KiB blocks), and `CONCURRENCY` chunks in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};

use super::manifest::RepositoryLocation;
use super::restore::fetch_chunk;
use super::{CONCURRENCY, MoverError, Progress, load_manifest, lock};
use crate::api::verification_job::OUTCOME_KEYS;
use crate::api::{VerificationOutcome, VerificationResult};
use crate::aws::AwsClients;

/// Reads restore point `id` back. `Ok` whatever it found (the outcome
/// says); `Err` when the repository could not be read (worth retrying) or
/// the restore point is not there.
pub async fn run(
    aws: &AwsClients,
    location: &RepositoryLocation,
    id: &str,
    progress: &Progress,
) -> Result<VerificationOutcome, MoverError> {
    let mut outcome = VerificationOutcome {
        restore_point: id.to_string(),
        ..VerificationOutcome::default()
    };
    let manifest = match load_manifest(aws, location, id).await {
        Ok(m) => m,
        Err(MoverError::Unverified { key, .. } | MoverError::ManifestInvalid { key, .. }) => {
            outcome.result = VerificationResult::Unverified;
            outcome.damaged_keys.push(key);
            return Ok(outcome);
        }
        Err(e) => return Err(e),
    };
    // Each distinct chunk once, with its length and the devices using it.
    let mut chunks: BTreeMap<String, (u64, BTreeSet<String>)> = BTreeMap::new();
    for volume in &manifest.volumes {
        // A volume backed up from a bare snapshot has no device.
        let name = volume
            .device
            .clone()
            .unwrap_or_else(|| volume.snapshot_id.clone());
        for block in &volume.blocks {
            let entry = chunks
                .entry(block.chunk.clone())
                .or_insert_with(|| (u64::from(block.length), BTreeSet::new()));
            entry.1.insert(name.clone());
        }
    }
    outcome.chunks = chunks.len() as u64;
    outcome.logical_bytes = chunks.values().map(|(length, _)| length).sum();
    progress
        .total
        .fetch_add(outcome.logical_bytes, Ordering::Relaxed);
    let no_users = BTreeMap::new();
    let damaged: Mutex<Damage> = Mutex::default();
    // Owned items: a stream of borrowed ones makes the future unspawnable
    // (rustc cannot prove it for every lifetime).
    futures::stream::iter(chunks)
        .map(|(hash, (length, devices))| {
            let (manifest, damaged, no_users) = (&manifest, &damaged, &no_users);
            async move {
                match fetch_chunk(aws, location, (manifest, progress), &hash, no_users).await {
                    Ok(_) => lock(damaged).intact += 1,
                    Err(MoverError::ChunkMissing { key, .. }) => {
                        lock(damaged).note(key, &devices, false);
                    }
                    Err(MoverError::ChunkCorrupt { key, .. }) => {
                        lock(damaged).note(key, &devices, true);
                    }
                    Err(e) => return Err(e),
                }
                progress.done.fetch_add(length, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let damaged = damaged.into_inner().unwrap_or_else(|e| e.into_inner());
    outcome.intact_chunks = damaged.intact;
    outcome.missing_chunks = damaged.missing;
    outcome.corrupt_chunks = damaged.corrupt;
    outcome.damaged_keys = damaged.keys.into_iter().take(OUTCOME_KEYS).collect();
    outcome.damaged_volumes = damaged.volumes.into_iter().collect();
    if damaged.missing + damaged.corrupt > 0 {
        outcome.result = VerificationResult::Damaged;
    }
    Ok(outcome)
}

/// What the reads found wrong so far.
#[derive(Default)]
struct Damage {
    intact: u64,
    missing: u64,
    corrupt: u64,
    /// The first keys in key order (the smallest `OUTCOME_KEYS`), so that
    /// a run names the same ones whatever order the reads finished in.
    keys: BTreeSet<String>,
    volumes: BTreeSet<String>,
}

impl Damage {
    fn note(&mut self, key: String, devices: &BTreeSet<String>, corrupt: bool) {
        if corrupt {
            self.corrupt += 1;
        } else {
            self.missing += 1;
        }
        self.keys.insert(key);
        if self.keys.len() > OUTCOME_KEYS {
            self.keys.pop_last();
        }
        self.volumes.extend(devices.iter().cloned());
    }
}
