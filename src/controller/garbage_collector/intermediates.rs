//! The sweep of intermediates: what a worker or the controller made on the
//! way to a restore's result and tagged `tender.dev/intermediate=true` with
//! this cluster's ID and its job (today: the snapshots a restore worker
//! writes). Once no job owns one and it is older than the grace period, it
//! is deleted. What a restore hands to the user (its volume, image and
//! instance) never carries the tag, and a snapshot that backs an image (a
//! full restore's AMI) is never deleted; a restore point's snapshots are a
//! backup's, which never carry it either.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use crate::api::{RestoreJob, RestoreJobStatus};
use crate::aws::AwsClients;
use crate::aws::ebs::SnapshotInfo;
use crate::controller::Context;
use crate::controller::job::status::baseline;
use crate::names::tags;

/// Why an intermediate is a leftover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftoverReason {
    /// No RestoreJob with its namespace, name and UID exists.
    OwnerGone,
    /// Its job finished without naming it (an earlier attempt's, or one
    /// written after the job gave up).
    NotNamedByOwner,
}

impl LeftoverReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftoverReason::OwnerGone => "OwnerGone",
            LeftoverReason::NotNamedByOwner => "NotNamedByOwner",
        }
    }
}

/// Judges an intermediate snapshot against its owner job's latest status
/// (`None`: the job is gone). An unfinished job owns all it made (a worker
/// may be writing); a finished one only what its status names (kept, as
/// its message says, for the user to make a volume from by hand).
pub fn leftover_reason(
    snapshot_id: &str,
    owner: Option<&RestoreJobStatus>,
) -> Option<LeftoverReason> {
    let Some(status) = owner else {
        return Some(LeftoverReason::OwnerGone);
    };
    if !status.phase.is_finished() {
        return None;
    }
    let named = status.workers.iter().any(|w| {
        w.restored_snapshot_id.as_deref() == Some(snapshot_id)
            || w.restored_snapshots
                .iter()
                .any(|s| s.snapshot_id == snapshot_id)
    });
    (!named).then_some(LeftoverReason::NotNamedByOwner)
}

/// Whether an intermediate is old enough to be judged: one whose creation
/// time is unknown never is.
pub fn past_grace(started: Option<Timestamp>, now: Timestamp, grace: Duration) -> bool {
    started.is_some_and(|t| now.duration_since(t).as_secs() >= grace.as_secs() as i64)
}

/// The owner's latest status, when the RestoreJob the tags name exists
/// with the tagged UID.
fn owner_status(ctx: &Context, snapshot: &SnapshotInfo) -> Result<Option<RestoreJobStatus>, ()> {
    let (Some(ns), Some(name), Some(uid)) = (
        snapshot.tags.get(tags::NAMESPACE),
        snapshot.tags.get(tags::JOB_NAME),
        snapshot.tags.get(tags::JOB_UID),
    ) else {
        return Err(()); // not traceable to a job: not Tender's to judge
    };
    Ok(ctx
        .restores
        .get(&ObjectRef::<RestoreJob>::new(name).within(ns))
        .filter(|job| job.uid().as_deref() == Some(uid.as_str()))
        .map(|job| baseline(&*job, ctx).unwrap_or_default()))
}

/// Deletes this cluster's leftover intermediate snapshots in one region
/// and account; returns how many.
pub(super) async fn sweep(ctx: &Context, aws: &AwsClients, region: &str, grace: Duration) -> usize {
    let wanted = [
        (tags::INTERMEDIATE, tags::INTERMEDIATE_VALUE),
        (tags::CLUSTER_ID, ctx.cluster_id.as_str()),
        (tags::MANAGED_BY, tags::MANAGED_BY_VALUE),
    ];
    let candidates = match aws.snapshots().snapshots_tagged(region, &wanted).await {
        Ok(found) => found,
        Err(e) => {
            warn!(region, error = %e, "garbage collection: could not list intermediate snapshots");
            return 0;
        }
    };
    let now = Timestamp::now();
    let mut leftovers: Vec<(String, LeftoverReason)> = Vec::new();
    for snapshot in &candidates {
        if ctx
            .namespace
            .as_deref()
            .is_some_and(|ns| snapshot.tags.get(tags::NAMESPACE).map(String::as_str) != Some(ns))
        {
            continue; // another controller's namespace
        }
        if !past_grace(snapshot.start_time, now, grace) {
            continue;
        }
        let Ok(owner) = owner_status(ctx, snapshot) else {
            continue;
        };
        if let Some(reason) = leftover_reason(&snapshot.snapshot_id, owner.as_ref()) {
            leftovers.push((snapshot.snapshot_id.clone(), reason));
        }
    }
    if leftovers.is_empty() {
        return 0;
    }
    let in_images: HashSet<String> = match aws.instances().snapshots_in_images(region).await {
        Ok(used) => used,
        Err(e) => {
            warn!(region, error = %e, "garbage collection: could not list images; no intermediate snapshot deleted");
            return 0;
        }
    };
    let mut deleted = 0;
    for (id, reason) in leftovers.iter().filter(|(id, _)| !in_images.contains(id)) {
        match aws.snapshots().delete_snapshot(region, id).await {
            Ok(()) => {
                info!(
                    region,
                    snapshot_id = id,
                    reason = reason.as_str(),
                    "deleted a leftover intermediate snapshot"
                );
                deleted += 1;
            }
            Err(e) => {
                warn!(region, snapshot_id = id, error = %e, "could not delete a leftover intermediate snapshot")
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, RestoreWorkerStatus, RestoredSnapshot};

    fn finished(named: &[&str]) -> RestoreJobStatus {
        RestoreJobStatus {
            phase: Phase::Failed,
            workers: vec![RestoreWorkerStatus {
                restored_snapshot_id: named.first().map(|s| s.to_string()),
                restored_snapshots: named
                    .iter()
                    .map(|s| RestoredSnapshot {
                        device: "/dev/xvda".into(),
                        snapshot_id: s.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_without_its_job_is_a_leftover() {
        assert_eq!(
            leftover_reason("snap-1", None),
            Some(LeftoverReason::OwnerGone)
        );
    }

    #[test]
    fn a_running_job_owns_everything_it_made() {
        let running = RestoreJobStatus {
            phase: Phase::Running,
            ..Default::default()
        };
        assert_eq!(leftover_reason("snap-1", Some(&running)), None);
    }

    #[test]
    fn a_finished_job_owns_only_what_its_status_names() {
        let status = finished(&["snap-kept"]);
        assert_eq!(leftover_reason("snap-kept", Some(&status)), None);
        assert_eq!(
            leftover_reason("snap-earlier-attempt", Some(&status)),
            Some(LeftoverReason::NotNamedByOwner)
        );
    }

    #[test]
    fn only_what_is_known_to_be_old_enough_is_judged() {
        let now = Timestamp::from_second(10_000).unwrap_or_default();
        let grace = Duration::from_secs(60);
        let young = Timestamp::from_second(9_990).ok();
        let old = Timestamp::from_second(9_000).ok();
        assert!(!past_grace(young, now, grace));
        assert!(past_grace(old, now, grace));
        assert!(!past_grace(None, now, grace));
    }
}
