//! Whether what a restore worker wrote can be used yet. After the worker's
//! CompleteSnapshot, EBS seals a snapshot asynchronously ("CompleteSnapshot
//! … start[s] an asynchronous workflow that seals the snapshot and moves it
//! to a completed state",
//! <https://docs.aws.amazon.com/ebs/latest/userguide/writesnapshots.html>),
//! and CreateVolume and RegisterImage refuse a snapshot that is not
//! `completed` (`IncorrectState`). A registered AMI is `pending` before it
//! is `available`, and RunInstances needs it available. Both are waited for
//! by requeueing the job, never inside a reconcile, and only up to the
//! controller's timeout.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::since_completed;
use crate::api::{RestoreJob, RestoreWorkerStatus, WorkerConfiguration, WorkerStatus};
use crate::aws::consistency::{self, Absence};
use crate::aws::ebs::SnapshotInfo;
use crate::aws::{AwsClients, AwsError};
use crate::controller::Context;
use crate::controller::job::core::mark_failed;
use crate::names::tags;
use crate::reasons::FailureReason;

/// Whether the snapshots a worker named can be made into a volume or an
/// image now. They must be its own first: a forged `completed` could name
/// any snapshot the controller may read, of any account; one that is not
/// fails the worker for good (`SnapshotNotOwned`, with an Event) and
/// nothing is created. Then they must be `completed`: while EBS is still
/// sealing them the worker's `snapshotProgress` and message say so, and
/// the job is looked at again (see `RestoreJob::settling`); a snapshot in
/// error, or still pending at the controller's timeout, fails the worker.
pub(super) async fn snapshots_usable(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    w: &mut RestoreWorkerStatus,
    aws: &AwsClients,
    snapshot_ids: &[String],
    (ctx, now): (&Context, Timestamp),
) -> Result<bool, AwsError> {
    let uid = job.uid().unwrap_or_default();
    let account = workers_account(w, config);
    let mut found = Vec::new();
    for id in snapshot_ids {
        found.push((
            id.as_str(),
            aws.snapshots().describe_snapshot(&w.region, id).await?,
        ));
    }
    let since = since_completed(w, now);
    let visible_problem = found.iter().find_map(|(id, s)| {
        s.as_ref()
            .and_then(|s| snapshot_problem(id, Some(s), &uid, account.as_deref()))
    });
    let readiness = if visible_problem.is_some() {
        Readiness::Ready
    } else {
        let judged: Vec<(&str, Option<&SnapshotInfo>)> =
            found.iter().map(|(id, s)| (*id, s.as_ref())).collect();
        snapshots_readiness(&judged, since, ctx.restored_snapshot_timeout)
    };
    match readiness {
        Readiness::Ready => {}
        Readiness::Waiting { progress, message } => {
            w.snapshot_progress = Some(progress);
            w.message = Some(message);
            return Ok(false);
        }
        Readiness::Failed { reason, message } => {
            w.snapshot_progress = None;
            let note = format!("{}: {message}", w.resource);
            ctx.event(
                job,
                EventType::Warning,
                reason.as_str(),
                "WaitForRestoredSnapshots",
                note,
            )
            .await;
            mark_failed(w, reason, &message, now);
            return Ok(false);
        }
    }
    w.snapshot_progress = None;
    let problem = visible_problem.or_else(|| {
        found
            .iter()
            .find_map(|(id, s)| snapshot_problem(id, s.as_ref(), &uid, account.as_deref()))
    });
    let Some(problem) = problem else {
        return Ok(true);
    };
    let message =
        format!("{problem}; the worker's report is not trusted and nothing was made from it");
    let reason = FailureReason::SnapshotNotOwned;
    let note = format!("{}: {message}", w.resource);
    ctx.event(
        job,
        EventType::Warning,
        reason.as_str(),
        "CheckRestoredSnapshots",
        note,
    )
    .await;
    mark_failed(w, reason, &message, now);
    Ok(false)
}

/// The account a worker ran in: its role's, else the configuration's
/// (the controller's own credentials).
pub(super) fn workers_account(w: &WorkerStatus, config: &WorkerConfiguration) -> Option<String> {
    match &w.access {
        Some(role) => role.role_arn.split(':').nth(4).map(String::from),
        None => config.status.as_ref().and_then(|s| s.account_id.clone()),
    }
}

/// What is wrong with a snapshot a restore worker named, if anything: it
/// must exist, be owned by the workers' `account`, and carry this job's
/// UID tag, as the worker tags every snapshot it writes.
pub fn snapshot_problem(
    snapshot_id: &str,
    found: Option<&SnapshotInfo>,
    job_uid: &str,
    account: Option<&str>,
) -> Option<String> {
    let Some(snapshot) = found else {
        return Some(format!(
            "snapshot {snapshot_id} does not exist in the workers' account"
        ));
    };
    let owner = snapshot.owner_id.as_deref();
    if account.is_none() || owner != account {
        return Some(format!(
            "snapshot {snapshot_id} is owned by account {}, not by the workers' account {}",
            owner.unwrap_or("?"),
            account.unwrap_or("?")
        ));
    }
    let tagged = snapshot.tags.get(tags::JOB_UID).map(String::as_str);
    (tagged != Some(job_uid)).then(|| {
        format!(
            "snapshot {snapshot_id} does not carry this job's tag {}={job_uid}",
            tags::JOB_UID
        )
    })
}

/// What the controller can do with what a worker wrote, now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every snapshot (or the image) is usable.
    Ready,
    /// Not yet: `progress` (for example `45%`) and a message for people.
    Waiting { progress: String, message: String },
    /// It never will be.
    Failed {
        reason: FailureReason,
        message: String,
    },
}

/// Judges a restore's snapshots, as DescribeSnapshots found them (`None`:
/// not found), `since_completed` after the worker reported them written.
/// A snapshot not found counts as not yet visible within EC2's
/// eventual-consistency window; after it, the caller's ownership check
/// reports it missing.
pub fn snapshots_readiness(
    found: &[(&str, Option<&SnapshotInfo>)],
    since_completed: Duration,
    timeout: Duration,
) -> Readiness {
    let mut slowest: Option<(&str, u32)> = None;
    for (id, snapshot) in found {
        let Some(s) = snapshot else {
            if consistency::absence(since_completed) == Absence::NotYetVisible {
                let message = format!(
                    "waiting for restored snapshot {id} to become visible to DescribeSnapshots (EC2 is eventually consistent)"
                );
                return Readiness::Waiting {
                    progress: "0%".into(),
                    message,
                };
            }
            continue;
        };
        match s.state.as_str() {
            "completed" => {}
            "error" => {
                return Readiness::Failed {
                    reason: FailureReason::RestoredSnapshotFailed,
                    message: format!(
                        "EBS put restored snapshot {id} in state error while sealing it ({}); delete it and create a new RestoreJob",
                        s.state_message.as_deref().unwrap_or("no reason given")
                    ),
                };
            }
            _ => {
                let percent = percent(s.progress.as_deref());
                if slowest.is_none_or(|(_, p)| percent < p) {
                    slowest = Some((id, percent));
                }
            }
        }
    }
    let Some((id, percent)) = slowest else {
        return Readiness::Ready;
    };
    if since_completed >= timeout {
        return Readiness::Failed {
            reason: FailureReason::RestoredSnapshotTimedOut,
            message: format!(
                "restored snapshot {id} was still pending ({percent}%) {}s after the worker completed it (limit: the controller's --restored-snapshot-timeout-seconds, {}s); it is kept: create the volume or image from it once it is completed, or raise the limit",
                since_completed.as_secs(),
                timeout.as_secs()
            ),
        };
    }
    Readiness::Waiting {
        progress: format!("{percent}%"),
        message: format!(
            "waiting for EBS to seal restored snapshot {id} ({percent}%) before using it"
        ),
    }
}

/// Judges the AMI a full restore registered, in `state` as DescribeImages
/// reported it (`None`: not found).
pub fn image_readiness(
    image_id: &str,
    state: Option<&str>,
    since_completed: Duration,
    timeout: Duration,
) -> Readiness {
    let waiting = |why: &str| Readiness::Waiting {
        progress: "100%".into(),
        message: format!("waiting for image {image_id} to become available ({why})"),
    };
    match state {
        Some("available") => Readiness::Ready,
        Some("pending") | None if since_completed >= timeout => Readiness::Failed {
            reason: FailureReason::RestoredSnapshotTimedOut,
            message: format!(
                "image {image_id} was still not available {}s after the worker completed (limit {}s); it is kept",
                since_completed.as_secs(),
                timeout.as_secs()
            ),
        },
        Some("pending") => waiting("pending"),
        None if consistency::absence(since_completed) == Absence::NotYetVisible => {
            waiting("not yet visible to DescribeImages")
        }
        None => Readiness::Failed {
            reason: FailureReason::InstanceRestoreFailed,
            message: format!("image {image_id} that this restore registered no longer exists"),
        },
        Some(other) => Readiness::Failed {
            reason: FailureReason::RestoredSnapshotFailed,
            message: format!(
                "image {image_id} is in state {other}; the restored snapshots are kept: create a new RestoreJob"
            ),
        },
    }
}

/// `45%` as 45; anything else as 0.
fn percent(progress: Option<&str>) -> u32 {
    progress
        .and_then(|p| p.trim_end_matches('%').trim().parse().ok())
        .unwrap_or(0)
        .min(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn snapshot(state: &str, progress: &str) -> SnapshotInfo {
        SnapshotInfo {
            snapshot_id: "snap-1".into(),
            state: state.into(),
            progress: Some(progress.into()),
            state_message: None,
            volume_size_gib: 8,
            volume_id: None,
            tags: Default::default(),
            owner_id: None,
            start_time: None,
        }
    }

    #[test]
    fn a_pending_snapshot_is_waited_for_with_its_progress() {
        let (done, slow, slower) = (
            snapshot("completed", "100%"),
            snapshot("pending", "60%"),
            snapshot("pending", "45%"),
        );
        let found = [
            ("snap-a", Some(&done)),
            ("snap-b", Some(&slow)),
            ("snap-c", Some(&slower)),
        ];
        let r = snapshots_readiness(&found, Duration::from_secs(30), HOUR);
        assert!(
            matches!(&r, Readiness::Waiting { progress, message } if progress == "45%" && message.contains("snap-c")),
            "{r:?}"
        );
        let all_done = [("snap-a", Some(&done))];
        assert_eq!(
            snapshots_readiness(&all_done, Duration::ZERO, HOUR),
            Readiness::Ready
        );
    }

    #[test]
    fn a_snapshot_pending_past_the_timeout_fails_saying_so() {
        let slow = snapshot("pending", "99%");
        let r = snapshots_readiness(&[("snap-b", Some(&slow))], HOUR, HOUR);
        assert!(
            matches!(&r, Readiness::Failed { reason, message }
                if *reason == FailureReason::RestoredSnapshotTimedOut
                && message.contains("snap-b") && message.contains("99%")),
            "{r:?}"
        );
    }

    #[test]
    fn a_snapshot_in_error_fails_at_once() {
        let broken = SnapshotInfo {
            state_message: Some("internal error".into()),
            ..snapshot("error", "12%")
        };
        let r = snapshots_readiness(&[("snap-e", Some(&broken))], Duration::ZERO, HOUR);
        assert!(
            matches!(&r, Readiness::Failed { reason, message }
                if *reason == FailureReason::RestoredSnapshotFailed && message.contains("internal error")),
            "{r:?}"
        );
    }

    #[test]
    fn a_snapshot_not_found_right_after_is_not_yet_visible() {
        let r = snapshots_readiness(&[("snap-n", None)], Duration::from_secs(1), HOUR);
        assert!(matches!(r, Readiness::Waiting { .. }), "{r:?}");
        // Later, absence is for the ownership check to report.
        let r = snapshots_readiness(&[("snap-n", None)], 2 * HOUR, 3 * HOUR);
        assert_eq!(r, Readiness::Ready);
    }

    #[test]
    fn an_image_is_used_only_once_available() {
        let t = Duration::from_secs(5);
        assert_eq!(
            image_readiness("ami-1", Some("available"), t, HOUR),
            Readiness::Ready
        );
        assert!(matches!(
            image_readiness("ami-1", Some("pending"), t, HOUR),
            Readiness::Waiting { .. }
        ));
        assert!(matches!(
            image_readiness("ami-1", None, t, HOUR),
            Readiness::Waiting { .. }
        ));
        assert!(matches!(
            image_readiness("ami-1", Some("failed"), t, HOUR),
            Readiness::Failed {
                reason: FailureReason::RestoredSnapshotFailed,
                ..
            }
        ));
        assert!(matches!(
            image_readiness("ami-1", Some("pending"), HOUR, HOUR),
            Readiness::Failed {
                reason: FailureReason::RestoredSnapshotTimedOut,
                ..
            }
        ));
    }
}
