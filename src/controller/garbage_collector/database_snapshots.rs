//! The sweep of database snapshots: the manual DB snapshots and DB cluster
//! snapshots a BackupJob took (tagged with this cluster's ID and the job) whose restore point is
//! gone (expired by retention, deleted by hand) or never came to be (a
//! failed attempt, a job deleted while RDS was taking it). RDS keeps a
//! manual snapshot until someone deletes it, and each costs storage and
//! counts against the Region's quota of 100, so none may outlive its
//! restore point.
//!
//! A snapshot is kept while its job runs, while RDS is still taking it
//! (RDS refuses to delete it then, `InvalidDBSnapshotState`), for the grace
//! period after its creation, and whenever its restore point's manifest
//! names it, or cannot be read (its BackupRepository unknown to the
//! cluster, the bucket unreachable): deleting is the one thing never done
//! on doubt.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use crate::api::{BackupJob, BackupJobStatus};
use crate::aws::AwsClients;
use crate::aws::accounts::Access;
use crate::aws::rds::{DbSnapshotInfo, SnapshotKind};
use crate::controller::Context;
use crate::controller::database_backup::snapshot_name;
use crate::controller::job::status::baseline;
use crate::mover::integrity::unseal;
use crate::mover::manifest::{RepositoryLocation, parse_manifest, restore_point_id};
use crate::names::tags;

/// Why a database snapshot is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotVerdict {
    /// Its job runs, its restore point names it, or what it says cannot be
    /// known for sure.
    Keep,
    /// Its restore point names another snapshot (an earlier attempt's).
    NotNamedByRestorePoint,
    /// Its restore point has been gone (retention, a deletion) or was never
    /// written, for longer than the grace period.
    RestorePointGone,
}

/// Whether the owner job still needs the snapshot: while it runs, it may
/// be taking or recording it. `None` (the job is gone, or finished): its
/// restore point decides.
pub fn owner_keeps(owner: Option<&BackupJobStatus>) -> bool {
    owner.is_some_and(|status| !status.phase.is_finished())
}

/// The verdict on a snapshot from its restore point's stored manifest
/// (`None`: no such object), and since when the restore point has been
/// seen missing (`absent_since`, this process's memory: a key that goes
/// missing is deleted only once it stayed missing for `grace`, so a
/// listing that is wrong once, or a manifest restored from a versioned
/// bucket in time, costs no snapshot).
pub fn judge_by_manifest(
    id: &str,
    stored: Option<&[u8]>,
    absent_since: Option<Timestamp>,
    now: Timestamp,
    grace: Duration,
) -> SnapshotVerdict {
    let Some(stored) = stored else {
        let long_enough = super::intermediates::past_grace(absent_since, now, grace);
        return if long_enough {
            SnapshotVerdict::RestorePointGone
        } else {
            SnapshotVerdict::Keep
        };
    };
    // Read, not verified: whoever could forge it could delete it as well,
    // and a manifest that does not parse keeps the snapshot.
    let manifest = unseal(stored)
        .ok()
        .and_then(|sealed| parse_manifest(&sealed.payload).ok());
    match manifest {
        Some(m) => {
            let named = m
                .database
                .iter()
                .flat_map(|d| d.snapshots.iter())
                .any(|s| s.identifier == id);
            if named {
                SnapshotVerdict::Keep
            } else {
                SnapshotVerdict::NotNamedByRestorePoint
            }
        }
        None => SnapshotVerdict::Keep,
    }
}

/// Where the snapshots' restore points were first seen missing, by
/// snapshot ARN (or region and name).
fn absences() -> &'static Mutex<HashMap<String, Timestamp>> {
    static ABSENT: OnceLock<Mutex<HashMap<String, Timestamp>>> = OnceLock::new();
    ABSENT.get_or_init(Mutex::default)
}

/// The owner's latest status (`Ok(None)`: gone); `Err` when the tags do
/// not name a job.
fn owner_status(ctx: &Context, s: &DbSnapshotInfo) -> Result<Option<BackupJobStatus>, ()> {
    let (Some(ns), Some(name), Some(uid)) = (
        s.tags.get(tags::NAMESPACE),
        s.tags.get(tags::JOB_NAME),
        s.tags.get(tags::JOB_UID),
    ) else {
        return Err(());
    };
    Ok(ctx
        .jobs
        .get(&ObjectRef::<BackupJob>::new(name).within(ns))
        .filter(|job| job.uid().as_deref() == Some(uid.as_str()))
        .map(|job| baseline(&*job, ctx).unwrap_or_default()))
}

/// The stored manifest of the snapshot's restore point; `Err` when it
/// cannot be read for sure (then nothing is deleted): the repository is
/// not in the cluster, or is another one than the snapshot was taken for
/// (deleted and made again under its name), or S3 did not answer.
async fn stored_manifest(ctx: &Context, s: &DbSnapshotInfo) -> Result<Option<Vec<u8>>, String> {
    let tag = |k: &str| s.tags.get(k).cloned().ok_or(format!("no tag {k}"));
    let (ns, job, resource, repo, repo_uid) = (
        tag(tags::NAMESPACE)?,
        tag(tags::JOB_NAME)?,
        tag(tags::RESOURCE)?,
        tag(tags::REPOSITORY)?,
        tag(tags::REPOSITORY_UID)?,
    );
    let repository = ctx
        .repositories
        .get(&ObjectRef::new(&repo))
        .ok_or(format!("BackupRepository {repo:?} is not in the cluster"))?;
    if repository.uid().as_deref() != Some(repo_uid.as_str()) {
        return Err(format!(
            "BackupRepository {repo:?} is not the one the snapshot was taken for (its UID changed)"
        ));
    }
    let location = RepositoryLocation::of(&repository.spec, &ns);
    let access = Access::new(
        repository.spec.access.as_ref(),
        &["repository", &repository.name_any()],
    );
    let aws = ctx.aws.scoped(&access).await;
    let key = location.manifest_key(&restore_point_id(&job, &resource));
    aws.repository()
        .get_object(&location, &key)
        .await
        .map_err(|e| e.to_string())
}

/// When RDS took the snapshot, else when Tender asked for it.
fn taken_at(s: &DbSnapshotInfo) -> Option<Timestamp> {
    s.created
        .as_deref()
        .or(s.tags.get(tags::REQUESTED_AT).map(String::as_str))
        .and_then(|t| t.parse::<Timestamp>().ok())
}

/// Deletes this cluster's database snapshots (of DB instances and of DB
/// clusters) that outlived their restore point in one region and account;
/// returns how many.
pub(super) async fn sweep(ctx: &Context, aws: &AwsClients, region: &str, grace: Duration) -> usize {
    let mut deleted = 0;
    for kind in [SnapshotKind::Instance, SnapshotKind::Cluster] {
        deleted += sweep_kind(ctx, aws, region, grace, kind).await;
    }
    deleted
}

async fn sweep_kind(
    ctx: &Context,
    aws: &AwsClients,
    region: &str,
    grace: Duration,
    kind: SnapshotKind,
) -> usize {
    let noun = kind.noun();
    let all = match aws.databases().list_manual_snapshots(kind, region).await {
        Ok(found) => found,
        Err(e) => {
            warn!(region, error = %e, "garbage collection: could not list {noun}s");
            return 0;
        }
    };
    let now = Timestamp::now();
    let mut deleted = 0;
    for s in all.iter().filter(|s| is_ours(ctx, s)) {
        // RDS deletes only what it has finished with (and `deleting` is on
        // its way).
        if !matches!(
            s.status.as_str(),
            "available" | "failed" | "incompatible-restore" | "incompatible-parameters"
        ) {
            continue;
        }
        if !super::intermediates::past_grace(taken_at(s), now, grace) {
            continue;
        }
        let Ok(owner) = owner_status(ctx, s) else {
            continue;
        };
        if owner_keeps(owner.as_ref()) {
            continue;
        }
        let key = s
            .arn
            .clone()
            .unwrap_or_else(|| format!("{region}/{}", s.identifier));
        let verdict = match stored_manifest(ctx, s).await {
            Ok(stored) => {
                let mut absent = absences().lock().unwrap_or_else(|p| p.into_inner());
                let since = match stored {
                    Some(_) => {
                        absent.remove(&key);
                        None
                    }
                    None => Some(*absent.entry(key.clone()).or_insert(now)),
                };
                judge_by_manifest(&s.identifier, stored.as_deref(), since, now, grace)
            }
            Err(why) => {
                warn!(
                    region,
                    snapshot = s.identifier,
                    why,
                    "garbage collection: cannot read the restore point of a {noun}; kept"
                );
                SnapshotVerdict::Keep
            }
        };
        if verdict == SnapshotVerdict::Keep {
            continue;
        }
        if let Err(why) = delete_copies(ctx, aws, (kind, region), s).await {
            warn!(
                region,
                snapshot = s.identifier,
                why,
                "garbage collection: could not delete the copies of a {noun}; it is kept until they are gone"
            );
            continue;
        }
        match aws
            .databases()
            .delete_snapshot(kind, region, &s.identifier)
            .await
        {
            Ok(_) => {
                absences()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                info!(region, snapshot = s.identifier, reason = ?verdict, "deleted a {noun} whose restore point is gone");
                deleted += 1;
            }
            Err(e) => {
                warn!(region, snapshot = s.identifier, error = %e, "garbage collection: could not delete a {noun}")
            }
        }
    }
    deleted
}

/// The Regions a snapshot's tag says its copies are in (only well-formed
/// Region names: the tag is read from AWS, and a name goes into an
/// endpoint's host name), without its own.
pub fn copy_regions<'a>(s: &'a DbSnapshotInfo, own: &str) -> Vec<&'a str> {
    let well_formed = |r: &&str| {
        (4..=32).contains(&r.len())
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && r.contains('-')
    };
    s.tags
        .get(tags::COPY_REGIONS)
        .map(|v| {
            v.split_whitespace()
                .filter(well_formed)
                .filter(|r| *r != own)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the copies `spec.copyTo` made of snapshot `s` (the Regions its
/// tag names; same account, same name), before `s` goes: the tag is what
/// still knows where they are once the job is gone and no configuration
/// is in their Region. A copy that is not this job's (other tags) is left
/// alone; one still `copying` is deleted, which cancels it.
async fn delete_copies(
    ctx: &Context,
    aws: &AwsClients,
    (kind, region): (SnapshotKind, &str),
    s: &DbSnapshotInfo,
) -> Result<(), String> {
    for copy_region in copy_regions(s, region) {
        let rds = aws.databases();
        let found = rds
            .describe_snapshot(kind, copy_region, &s.identifier)
            .await
            .map_err(|e| e.to_string())?;
        let Some(copy) = found else { continue };
        if !is_ours(ctx, &copy) || copy.tags.get(tags::JOB_UID) != s.tags.get(tags::JOB_UID) {
            continue;
        }
        if rds
            .delete_snapshot(kind, copy_region, &copy.identifier)
            .await
            .map_err(|e| format!("{copy_region}: {e}"))?
        {
            info!(
                region = copy_region,
                snapshot = copy.identifier,
                "deleted the copy of a {} whose restore point is gone",
                kind.noun()
            );
        }
    }
    Ok(())
}

/// Tender's, this cluster's (and, for a namespaced controller, this
/// namespace's), a BackupJob's, and still named after its tags: one whose
/// tags were changed after it was taken is nobody's to judge.
fn is_ours(ctx: &Context, s: &DbSnapshotInfo) -> bool {
    let tag = |k: &str| s.tags.get(k).map(String::as_str);
    tag(tags::MANAGED_BY) == Some(tags::MANAGED_BY_VALUE)
        && tag(tags::CLUSTER_ID) == Some(ctx.cluster_id.as_str())
        && tag(tags::JOB_KIND) == Some("BackupJob")
        && ctx
            .namespace
            .as_deref()
            .is_none_or(|ns| tag(tags::NAMESPACE) == Some(ns))
        && snapshot_name(&s.tags).as_deref() == Some(s.identifier.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;
    use crate::mover::integrity::seal;

    #[test]
    fn copy_regions_are_read_from_the_tag_and_only_well_formed_ones_are_used() {
        let with = |value: &str| DbSnapshotInfo {
            tags: [(tags::COPY_REGIONS.to_string(), value.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            copy_regions(&with("us-west-2 eu-central-1"), "us-east-1"),
            ["us-west-2", "eu-central-1"]
        );
        assert_eq!(
            copy_regions(&with("us-east-1 us-west-2"), "us-east-1"),
            ["us-west-2"],
            "never its own Region"
        );
        assert!(
            copy_regions(&with("evil.example.com/x US-WEST-2 a"), "us-east-1").is_empty(),
            "no host names, paths or odd names"
        );
        assert!(copy_regions(&DbSnapshotInfo::default(), "us-east-1").is_empty());
    }

    #[test]
    fn a_running_owner_keeps_its_snapshots_and_a_finished_one_leaves_it_to_the_restore_point() {
        let status = |phase| BackupJobStatus {
            phase,
            ..Default::default()
        };
        assert!(owner_keeps(Some(&status(Phase::Running))));
        assert!(owner_keeps(Some(&status(Phase::Pending))));
        assert!(!owner_keeps(Some(&status(Phase::Succeeded))));
        assert!(!owner_keeps(Some(&status(Phase::Failed))));
        assert!(!owner_keeps(None));
    }

    #[test]
    fn a_manifest_keeps_only_the_snapshots_it_names_and_a_missing_one_only_after_the_grace() {
        let manifest = serde_json::json!({
            "version": 2, "id": "nightly/rds-db-orders", "resource": "rds-db-orders",
            "region": "eu-west-1", "namespace": "shop", "jobName": "nightly", "jobUid": "u",
            "createdAt": "2026-12-02T00:00:00Z", "volumes": [],
            "stats": {"blocksRead": 0, "blocksReused": 0, "zeroBlocks": 0, "chunksUploaded": 0,
                      "bytesUploaded": 0, "chunksDeduplicated": 0, "bytesTotal": 0},
            "database": {"identifier": "orders", "engine": "postgres", "allocatedGib": 20,
                         "storageEncrypted": false,
                         "snapshots": [{"identifier": "tender-a", "arn": "arn:aws:rds:eu-west-1:123456789012:snapshot:tender-a",
                                        "region": "eu-west-1", "account": "123456789012"}]}
        });
        let stored = seal(&serde_json::to_vec(&manifest).expect("json"), "key", b"mac");
        let now = Timestamp::from_second(2_000_000_000).expect("a time");
        let grace = Duration::from_secs(600);
        let judge = |id: &str, stored: Option<&[u8]>, since: Option<i64>| {
            let since = since.map(|s| Timestamp::from_second(2_000_000_000 - s).expect("a time"));
            judge_by_manifest(id, stored, since, now, grace)
        };
        assert_eq!(
            judge("tender-a", Some(&stored), None),
            SnapshotVerdict::Keep
        );
        assert_eq!(
            judge("tender-b", Some(&stored), None),
            SnapshotVerdict::NotNamedByRestorePoint
        );
        assert_eq!(
            judge("tender-a", None, Some(0)),
            SnapshotVerdict::Keep,
            "just seen missing"
        );
        assert_eq!(judge("tender-a", None, Some(599)), SnapshotVerdict::Keep);
        assert_eq!(
            judge("tender-a", None, Some(600)),
            SnapshotVerdict::RestorePointGone
        );
        assert_eq!(
            judge("tender-a", Some(b"not a manifest"), None),
            SnapshotVerdict::Keep,
            "what cannot be read is kept"
        );
    }
}
