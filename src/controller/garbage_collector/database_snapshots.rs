//! The sweep of database snapshots: the manual DB snapshots a BackupJob
//! took (tagged with this cluster's ID and the job) whose restore point is
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

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use crate::api::{BackupJob, BackupJobStatus};
use crate::aws::AwsClients;
use crate::aws::accounts::Access;
use crate::aws::rds::DbSnapshotInfo;
use crate::controller::Context;
use crate::controller::job::status::baseline;
use crate::mover::integrity::unseal;
use crate::mover::manifest::{RepositoryLocation, parse_manifest, restore_point_id};
use crate::names::tags;

/// Why a database snapshot is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotVerdict {
    /// Its job runs, RDS is taking it, or its restore point names it (or
    /// cannot be read).
    Keep,
    /// Its job finished without naming it (a failed or earlier attempt).
    NotNamedByOwner,
    /// Its restore point is gone (retention, a deletion) or never written.
    RestorePointGone,
}

/// What the owner job says about snapshot `id`: `Some(verdict)` when the
/// job decides alone, `None` when the restore point must be read.
pub fn judge_by_owner(id: &str, owner: Option<&BackupJobStatus>) -> Option<SnapshotVerdict> {
    let Some(status) = owner else {
        return None; // the job is gone: its restore point decides
    };
    if !status.phase.is_finished() {
        return Some(SnapshotVerdict::Keep);
    }
    let named = status.workers.iter().any(|w| {
        w.restore_point.is_some()
            && w.database_snapshot
                .as_ref()
                .is_some_and(|s| s.snapshot_id == id)
    });
    if named {
        None
    } else {
        Some(SnapshotVerdict::NotNamedByOwner)
    }
}

/// The verdict on a snapshot from its restore point's stored manifest
/// (`None`: no such object).
pub fn judge_by_manifest(id: &str, stored: Option<&[u8]>) -> SnapshotVerdict {
    let Some(stored) = stored else {
        return SnapshotVerdict::RestorePointGone;
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
                SnapshotVerdict::RestorePointGone
            }
        }
        None => SnapshotVerdict::Keep,
    }
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
/// cannot be read (then nothing is deleted).
async fn stored_manifest(ctx: &Context, s: &DbSnapshotInfo) -> Result<Option<Vec<u8>>, String> {
    let tag = |k: &str| s.tags.get(k).cloned().ok_or(format!("no tag {k}"));
    let (ns, job, resource, repo) = (
        tag(tags::NAMESPACE)?,
        tag(tags::JOB_NAME)?,
        tag(tags::RESOURCE)?,
        tag(tags::REPOSITORY)?,
    );
    let repository = ctx
        .repositories
        .get(&ObjectRef::new(&repo))
        .ok_or(format!("BackupRepository {repo:?} is not in the cluster"))?;
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

/// Deletes this cluster's database snapshots that outlived their restore
/// point in one region and account; returns how many.
pub(super) async fn sweep(ctx: &Context, aws: &AwsClients, region: &str, grace: Duration) -> usize {
    let all = match aws.databases().list_manual_snapshots(region).await {
        Ok(found) => found,
        Err(e) => {
            warn!(region, error = %e, "garbage collection: could not list DB snapshots");
            return 0;
        }
    };
    let now = Timestamp::now();
    let mut deleted = 0;
    for s in all.iter().filter(|s| is_ours(ctx, s)) {
        if s.status != "available" && !s.is_failed() {
            continue; // RDS is taking or copying it
        }
        let created = s
            .created
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok());
        if !super::intermediates::past_grace(created, now, grace) {
            continue;
        }
        let Ok(owner) = owner_status(ctx, s) else {
            continue;
        };
        let verdict = match judge_by_owner(&s.identifier, owner.as_ref()) {
            Some(v) => v,
            None => match stored_manifest(ctx, s).await {
                Ok(stored) => judge_by_manifest(&s.identifier, stored.as_deref()),
                Err(why) => {
                    warn!(
                        region,
                        snapshot = s.identifier,
                        why,
                        "garbage collection: cannot read the restore point of a DB snapshot; kept"
                    );
                    SnapshotVerdict::Keep
                }
            },
        };
        if verdict == SnapshotVerdict::Keep {
            continue;
        }
        match aws.databases().delete_snapshot(region, &s.identifier).await {
            Ok(_) => {
                info!(region, snapshot = s.identifier, reason = ?verdict, "deleted a DB snapshot whose restore point is gone");
                deleted += 1;
            }
            Err(e) => {
                warn!(region, snapshot = s.identifier, error = %e, "garbage collection: could not delete a DB snapshot")
            }
        }
    }
    deleted
}

/// Tender's, this cluster's (and, for a namespaced controller, this
/// namespace's), and a BackupJob's.
fn is_ours(ctx: &Context, s: &DbSnapshotInfo) -> bool {
    let tag = |k: &str| s.tags.get(k).map(String::as_str);
    tag(tags::MANAGED_BY) == Some(tags::MANAGED_BY_VALUE)
        && tag(tags::CLUSTER_ID) == Some(ctx.cluster_id.as_str())
        && tag(tags::JOB_KIND) == Some("BackupJob")
        && ctx
            .namespace
            .as_deref()
            .is_none_or(|ns| tag(tags::NAMESPACE) == Some(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupWorkerStatus, DatabaseSnapshotStatus, Phase, WorkerStatus};
    use crate::mover::integrity::seal;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(phase: Phase, snapshot: &str, restore_point: bool) -> BackupJobStatus {
        BackupJobStatus {
            phase,
            workers: vec![BackupWorkerStatus {
                worker: WorkerStatus {
                    resource: "rds-db-orders".into(),
                    ..Default::default()
                },
                restore_point: restore_point.then(|| "nightly/rds-db-orders".into()),
                database_snapshot: Some(DatabaseSnapshotStatus {
                    snapshot_id: snapshot.into(),
                    snapshot_arn: None,
                    state: "available".into(),
                    requested_time: Time(Timestamp::UNIX_EPOCH),
                }),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_owner_keeps_what_it_may_still_use_and_drops_what_it_never_named() {
        let running = status(Phase::Running, "tender-a", false);
        assert_eq!(
            judge_by_owner("tender-b", Some(&running)),
            Some(SnapshotVerdict::Keep)
        );
        let done = status(Phase::Succeeded, "tender-a", true);
        assert_eq!(
            judge_by_owner("tender-a", Some(&done)),
            None,
            "its restore point decides"
        );
        assert_eq!(
            judge_by_owner("tender-old-attempt", Some(&done)),
            Some(SnapshotVerdict::NotNamedByOwner)
        );
        let failed = status(Phase::Failed, "tender-a", false);
        assert_eq!(
            judge_by_owner("tender-a", Some(&failed)),
            Some(SnapshotVerdict::NotNamedByOwner)
        );
        assert_eq!(judge_by_owner("tender-a", None), None);
    }

    #[test]
    fn a_manifest_keeps_only_the_snapshots_it_names() {
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
        assert_eq!(
            judge_by_manifest("tender-a", Some(&stored)),
            SnapshotVerdict::Keep
        );
        assert_eq!(
            judge_by_manifest("tender-b", Some(&stored)),
            SnapshotVerdict::RestorePointGone
        );
        assert_eq!(
            judge_by_manifest("tender-a", None),
            SnapshotVerdict::RestorePointGone
        );
        assert_eq!(
            judge_by_manifest("tender-a", Some(b"not a manifest")),
            SnapshotVerdict::Keep,
            "what cannot be read is kept"
        );
    }
}
