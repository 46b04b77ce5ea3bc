//! A verification, on a worker: every chunk a restore point references is
//! read back and checked against its name (its SHA-256), after the
//! manifest's MAC. Unlike a restore, which stops at the first bad chunk,
//! it reads them all, so that the outcome says how much of the restore
//! point is damaged and which volumes.
//!
//! Memory: the manifest, and the distinct chunk names with their length
//! and the volumes that use them (together about 250 bytes a 512 KiB
//! block: some 500 MiB a TiB of distinct blocks, which sizes the worker,
//! `placement::DefaultTypes::verification`), and `CONCURRENCY` chunks in
//! flight, each at most `MAX_PACKED_CHUNK` bytes as read.

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
    // A manifest that does not verify is what this check exists to find;
    // one that verifies but does not parse (a newer format, say) is not
    // damage, and fails the run as `ManifestInvalid`.
    let manifest = match load_manifest(aws, location, id).await {
        Ok(m) => m,
        Err(MoverError::Unverified { key, .. }) => {
            outcome.result = VerificationResult::Unverified;
            outcome.damaged_keys.push(bounded(key));
            return Ok(outcome);
        }
        Err(e) => return Err(e),
    };
    // Each distinct chunk once, with its length and the volumes using it
    // (bit `i` for volume `i`; volumes past the 64th share the last bit).
    let mut chunks: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (i, volume) in manifest.volumes.iter().enumerate() {
        let bit = 1u64 << i.min(63);
        for block in &volume.blocks {
            let entry = chunks
                .entry(block.chunk.clone())
                .or_insert_with(|| (u64::from(block.length), 0));
            entry.1 |= bit;
        }
    }
    // A database's dump counts as one more volume.
    if let Some(dump) = manifest.database.as_ref().and_then(|d| d.dump.as_ref()) {
        let bit = 1u64 << manifest.volumes.len().min(63);
        for (_, stream) in dump.streams() {
            for c in &stream.chunks {
                let entry = chunks
                    .entry(c.chunk.clone())
                    .or_insert_with(|| (u64::from(c.length), 0));
                entry.1 |= bit;
            }
        }
    }
    // A volume backed up from a bare snapshot has no device.
    let mut names: Vec<String> = manifest
        .volumes
        .iter()
        .map(|v| v.device.clone().unwrap_or_else(|| v.snapshot_id.clone()))
        .collect();
    if manifest.database.as_ref().is_some_and(|d| d.dump.is_some()) {
        names.push("database dump".to_string());
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
                        lock(damaged).note(key, devices, false);
                    }
                    Err(MoverError::ChunkCorrupt { key, .. }) => {
                        lock(damaged).note(key, devices, true);
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
    outcome.damaged_volumes = names
        .iter()
        .enumerate()
        .filter(|(i, _)| damaged.volumes & (1u64 << (*i).min(63)) != 0)
        .map(|(_, name)| name.clone())
        .collect();
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
    /// The volumes that use a damaged chunk, as bits.
    volumes: u64,
}

impl Damage {
    fn note(&mut self, key: String, volumes: u64, corrupt: bool) {
        if corrupt {
            self.corrupt += 1;
        } else {
            self.missing += 1;
        }
        self.keys.insert(bounded(key));
        if self.keys.len() > OUTCOME_KEYS {
            self.keys.pop_last();
        }
        self.volumes |= volumes;
    }
}

/// A key as an outcome names it: whole when it fits a message's ID bound
/// (S3 keys may be twice as long), else its end, which names the chunk.
fn bounded(key: String) -> String {
    const KEEP: usize = 400;
    if key.len() <= crate::messages::bounds::ID_BYTES {
        return key;
    }
    let mut at = key.len() - KEEP;
    while !key.is_char_boundary(at) {
        at += 1;
    }
    format!("…{}", &key[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_key_is_named_by_its_end() {
        let short = "prod/ns/chunks/ab/abcdef".to_string();
        assert_eq!(bounded(short.clone()), short);
        let long = format!("{}/chunks/ab/{}", "p".repeat(600), "f".repeat(64));
        let named = bounded(long.clone());
        assert!(
            named.len() <= crate::messages::bounds::ID_BYTES,
            "{}",
            named.len()
        );
        assert!(named.ends_with(&"f".repeat(64)));
    }

    #[test]
    fn damage_names_the_smallest_keys_and_every_volume_hit() {
        let mut d = Damage::default();
        for i in (0..15).rev() {
            d.note(format!("k{i:02}"), 1 << (i % 3), i % 2 == 0);
        }
        assert_eq!((d.missing, d.corrupt), (7, 8));
        let keys: Vec<&str> = d.keys.iter().map(String::as_str).collect();
        assert_eq!(keys.len(), OUTCOME_KEYS);
        assert_eq!((keys[0], keys[9]), ("k00", "k09"));
        assert_eq!(d.volumes, 0b111);
    }
}
