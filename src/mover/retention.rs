//! A retention run, on a worker: expire one policy's restore points by its
//! rules (`crate::policy::retention`), then collect the chunks of the
//! namespace part in two phases (`super::gc`).
//!
//! Only a manifest whose MAC verifies takes part: a manifest that does not
//! verify is neither expired (it may be a genuine one the key no longer
//! verifies; deleting data on a forgery's word, or on no word at all, is
//! the one mistake retention must not make) nor counted as a newer restore
//! point that would push genuine ones out. Its chunks stay referenced all
//! the same (the collector reads every manifest).
//!
//! Memory: one small candidate (ID, resource, time) per restore point of
//! the policy, besides what the collector holds (see `gc`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::MoverError;
use super::gc::{self, Collection};
use super::integrity;
use super::manifest::{self, RepositoryLocation};
use super::store::{Object, S3Store, for_each_object};
use crate::api::RetentionOutcome;
use crate::api::retention_job::OUTCOME_IDS;
use crate::aws::AwsClients;
use crate::messages::RetentionTask;
use crate::policy::retention::{Candidate, Rules, apply_per_resource};

/// What a retention run saw of the policy's restore points, besides the
/// outcome.
#[derive(Debug, Default)]
pub struct Expiry {
    pub expired: Vec<String>,
    pub kept: u64,
    /// Manifests that did not verify or parse, left alone.
    pub skipped: Vec<String>,
    /// Restore points asked to be deleted that are held (or read by a
    /// restore), kept.
    pub held_back: Vec<String>,
}

/// Runs one retention task against the repository at `location`.
pub async fn run(
    aws: &AwsClients,
    location: &RepositoryLocation,
    task: &RetentionTask,
    spill_dir: &Path,
    now: Timestamp,
) -> Result<(RetentionOutcome, Expiry), MoverError> {
    let grace = SignedDuration::from_secs(i64::try_from(task.grace_seconds).unwrap_or(i64::MAX));
    let store = S3Store { aws, location };
    let expiry = if task.policy.is_some() || !task.delete.is_empty() {
        expire(aws, location, task, now).await?
    } else {
        Expiry::default()
    };
    let keys: Vec<String> = expiry
        .expired
        .iter()
        .map(|id| location.manifest_key(id))
        .collect();
    for batch in keys.chunks(super::store::PAGE) {
        aws.repository().delete_objects(location, batch).await?;
    }
    let run = format!("{}-{}", now.strftime("%Y%m%dT%H%M%SZ"), super::random_tag());
    let collected = gc::collect(
        &store,
        location,
        &Collection {
            grace,
            spill_dir: spill_dir.to_path_buf(),
            run,
        },
    )
    .await?;
    let outcome = RetentionOutcome {
        expired_restore_points: expiry.expired.len() as u64,
        expired: expiry.expired.iter().take(OUTCOME_IDS).cloned().collect(),
        kept_restore_points: expiry.kept,
        restore_points: collected.manifests,
        logical_bytes: collected.logical_bytes,
        stored_chunks: collected.chunks,
        stored_bytes: collected.chunk_bytes,
        live_chunks: collected.live_chunks,
        live_bytes: collected.live_bytes,
        deleted_chunks: collected.deleted_chunks,
        deleted_bytes: collected.deleted_bytes,
        pending_chunks: collected.pending_chunks,
        pending_bytes: collected.pending_bytes,
        reclaimable_at: collected
            .reclaimable_at
            .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(to_k8s(t))),
        rewritten_chunks: collected.rewritten_chunks,
    };
    Ok((outcome, expiry))
}

fn to_k8s(t: Timestamp) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// The policy's restore points the rules no longer keep, and those asked
/// for by name; never a held one, nor one a restore reads.
async fn expire(
    aws: &AwsClients,
    location: &RepositoryLocation,
    task: &RetentionTask,
    now: Timestamp,
) -> Result<Expiry, MoverError> {
    let rules = Rules::of(&task.rules).map_err(|detail| MoverError::InvalidTask(detail.clone()))?;
    let zone = TimeZone::get(&task.time_zone)
        .map_err(|e| MoverError::InvalidTask(format!("time zone {:?}: {e}", task.time_zone)))?;
    let store = S3Store { aws, location };
    let holds_prefix = location.holds_prefix();
    let mut held: BTreeSet<String> = task.in_use.iter().cloned().collect();
    for_each_object(&store, &holds_prefix, |o: Object| {
        held.insert(o.key[holds_prefix.len()..].to_string());
    })
    .await?;
    let prefix = location.restore_points_prefix();
    let mut keys = Vec::new();
    for_each_object(&store, &prefix, |o: Object| {
        if o.key.ends_with(".json") {
            keys.push(o.key);
        }
    })
    .await?;
    let mut expiry = Expiry::default();
    let mut by_resource: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for key in keys {
        let id = key[prefix.len()..key.len() - ".json".len()].to_string();
        let Some(stored) = aws.repository().get_object(location, &key).await? else {
            continue; // deleted since the listing
        };
        let found = async {
            let text = integrity::verified(aws, location, &key, &stored).await?;
            let m =
                manifest::parse_manifest(&text).map_err(|detail| MoverError::ManifestInvalid {
                    key: key.clone(),
                    detail,
                })?;
            m.placed(&id, location.namespace.as_deref())
                .map_err(|detail| MoverError::Unverified {
                    key: key.clone(),
                    detail,
                })?;
            let created: Timestamp =
                m.created_at
                    .parse()
                    .map_err(|e: jiff::Error| MoverError::ManifestInvalid {
                        key: key.clone(),
                        detail: format!("createdAt {:?}: {e}", m.created_at),
                    })?;
            Ok::<_, MoverError>((m, created))
        };
        let (m, created) = match found.await {
            Ok(found) => found,
            Err(e @ (MoverError::Aws(_) | MoverError::NoIntegrityKey)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, key, "restore point left alone: it does not verify");
                expiry.skipped.push(id);
                continue;
            }
        };
        if task.delete.contains(&id) {
            if held.contains(&id) {
                expiry.held_back.push(id.clone());
            } else {
                expiry.expired.push(id.clone());
                continue;
            }
        }
        if task.policy.is_none() || m.policy != task.policy {
            continue;
        }
        by_resource
            .entry(format!("{}/{}", m.region, m.resource))
            .or_default()
            .push(Candidate {
                held: held.contains(&id),
                id,
                created,
            });
    }
    for verdicts in apply_per_resource(&rules, &zone, by_resource, now).into_values() {
        for v in verdicts {
            if v.kept() {
                expiry.kept += 1;
            } else {
                expiry.expired.push(v.id);
            }
        }
    }
    Ok(expiry)
}
