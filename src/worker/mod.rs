//! The worker agent (`tender worker`): runs on a worker instance, reads its
//! task, reports over SQS (started, progress with bytes and throughput at
//! every heartbeat, completed or failed) and moves the data.
//!
//! A backup of an instance snapshots all its volumes at once (CreateSnapshots)
//! and waits for the snapshots here, on the worker, rather than in the
//! controller: the wait can take minutes to hours, the worker is running and
//! heartbeating anyway, and the controller stays free of per-job polling.
//! A backup of a snapshot reads it as it is. Either way the data mover
//! (`crate::mover`) writes one restore point to the job's repository.

pub mod browser;
mod database;
mod file_level;
mod snapshots;
mod verification;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use std::time::Instant;

use tracing::{info, warn};

use crate::api::RestoredSnapshot;
use crate::aws::accounts::Access;
use crate::aws::{AwsClients, AwsError};
use crate::messages::{
    ByteProgress, PROTOCOL_VERSION, WorkerEvent, WorkerMessage, WorkerProfile, WorkerTask,
};
use crate::mover::manifest::{Manifest, RepositoryLocation, VolumeImage};

/// Device of a restored volume whose restore point names none (a snapshot's).
pub const ROOT_DEVICE: &str = crate::mover::manifest::SNAPSHOT_DEVICE;
use crate::mover::{self, BackupRequest, MoverError, Progress, SourceVolume};
use crate::names::tags;
use crate::reasons::FailureReason;

/// Why the agent stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("unsupported task version {0} (this agent speaks {PROTOCOL_VERSION})")]
    UnsupportedTask(u32),
    #[error("could not report to the controller: {0}")]
    Report(AwsError),
    #[error("the task failed: {0}")]
    Failed(String),
}

/// Sends this worker's messages with increasing sequence numbers.
struct Reporter {
    aws: AwsClients,
    task: WorkerTask,
    instance_id: String,
    sequence: AtomicI64,
}

impl Reporter {
    async fn send(&self, event: WorkerEvent) -> Result<(), AwsError> {
        let message = WorkerMessage {
            version: PROTOCOL_VERSION,
            namespace: self.task.namespace.clone(),
            job_name: self.task.job_name.clone(),
            job_uid: self.task.job_uid.clone(),
            resource: self.task.resource.clone(),
            instance_id: self.instance_id.clone(),
            attempt: self.task.attempt,
            sequence: self.sequence.fetch_add(1, Ordering::SeqCst) + 1,
            event: event.within_bounds(),
        };
        let body = serde_json::to_string(&message).unwrap_or_default();
        self.aws
            .queues()
            .send_message(&self.task.queue_region, &self.task.queue_url, &body)
            .await
    }
}

/// Runs one task to its end and reports the outcome.
pub async fn run(aws: AwsClients, task: WorkerTask, instance_id: String) -> Result<(), AgentError> {
    if task.version != PROTOCOL_VERSION {
        return Err(AgentError::UnsupportedTask(task.version));
    }
    let reporter = Arc::new(Reporter {
        aws: aws.clone(),
        task: task.clone(),
        instance_id,
        sequence: AtomicI64::new(0),
    });
    reporter
        .send(WorkerEvent::Started)
        .await
        .map_err(AgentError::Report)?;
    info!(
        job = task.job_name,
        resource = task.resource,
        "worker started"
    );

    let progress = Arc::new(Progress::default());
    let period = Duration::from_secs(task.heartbeat_seconds.max(1));
    let heartbeat = tokio::spawn(heartbeat(reporter.clone(), progress.clone(), period));

    let started = Instant::now();
    let outcome = match task.profile() {
        WorkerProfile::Backup => backup(&aws, &task, &progress).await,
        WorkerProfile::FileLevel => file_level::serve(&aws, &task, &reporter).await,
        WorkerProfile::Restore => restore(&aws, &task, &progress).await,
        WorkerProfile::Retention => retention(&aws, &task).await,
        WorkerProfile::Verification => verification::run(&aws, &task, &progress).await,
    };
    heartbeat.abort();
    match outcome {
        // A restore point found damaged fails the verification, with what
        // was found.
        Ok(Done {
            verification: Some(found),
            detail,
            ..
        }) if found.result != crate::api::VerificationResult::Verified => {
            let reason = verification::reason(&found);
            reporter
                .send(WorkerEvent::Failed {
                    reason: reason.clone(),
                    message: detail.clone(),
                    verification: Some(Box::new(found)),
                })
                .await
                .map_err(AgentError::Report)?;
            Err(AgentError::Failed(format!("{reason}: {detail}")))
        }
        Ok(done) => {
            let (moved, total) = progress.snapshot();
            reporter
                .send(WorkerEvent::Completed {
                    detail: done.detail.clone(),
                    restore_point: done.restore_point.clone(),
                    snapshot_id: done.snapshots.first().map(|s| s.snapshot_id.clone()),
                    snapshots: done.snapshots.clone(),
                    machine: done.machine.clone(),
                    retention: done.retention.clone().map(Box::new),
                    verification: done.verification.clone().map(Box::new),
                    bytes: Some(ByteProgress {
                        done: moved,
                        total,
                        per_second: rate(moved, started.elapsed()),
                    }),
                })
                .await
                .map_err(AgentError::Report)?;
            info!(detail = done.detail, "worker completed");
            Ok(())
        }
        Err((reason, message)) => {
            reporter
                .send(WorkerEvent::Failed {
                    reason: reason.clone(),
                    message: message.clone(),
                    verification: None,
                })
                .await
                .map_err(AgentError::Report)?;
            Err(AgentError::Failed(format!("{reason}: {message}")))
        }
    }
}

/// One message per period: progress while bytes are moving, else a
/// heartbeat; either tells the controller the worker is alive. Runs until
/// aborted.
async fn heartbeat(beats: Arc<Reporter>, watched: Arc<Progress>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut last = (0u64, Instant::now());
    loop {
        tick.tick().await;
        let (done, total) = watched.snapshot();
        let event = if total > 0 && done != last.0 {
            let per_second = rate(done - last.0, last.1.elapsed());
            last = (done, Instant::now());
            WorkerEvent::Progress {
                percent: percent(done, total),
                detail: format!("{} of {} moved", mib(done), mib(total)),
                bytes: Some(ByteProgress {
                    done,
                    total,
                    per_second,
                }),
                session: None,
            }
        } else {
            WorkerEvent::Heartbeat
        };
        if let Err(e) = beats.send(event).await {
            warn!(error = %e, "progress or heartbeat not sent");
        }
    }
}

fn rate(bytes: u64, over: Duration) -> u64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0
    } else {
        (bytes as f64 / secs) as u64
    }
}

fn percent(done: u64, total: u64) -> i32 {
    (done.min(total) * 100)
        .checked_div(total)
        .map_or(0, |p| p as i32)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// What a finished operation reports.
struct Done {
    detail: String,
    restore_point: Option<String>,
    snapshots: Vec<RestoredSnapshot>,
    /// The machine a full restore's image is registered as.
    machine: Option<crate::api::MachineImage>,
    retention: Option<crate::api::RetentionOutcome>,
    verification: Option<crate::api::VerificationOutcome>,
}

type Failure = (FailureReason, String);

fn failure(reason: FailureReason, message: impl Into<String>) -> Failure {
    (reason, message.into())
}

/// A mover error as a reason and a message that says what to fix.
fn mover_failure(e: MoverError, repository: &RepositoryLocation) -> Failure {
    match &e {
        MoverError::Aws(a) if a.code() == Some("NoSuchBucket") => failure(
            FailureReason::RepositoryNotFound,
            format!(
                "bucket {} does not exist in {}; create it or fix spec.repository",
                repository.bucket, repository.region
            ),
        ),
        _ => failure(e.reason(), e.to_string()),
    }
}

async fn backup(aws: &AwsClients, task: &WorkerTask, progress: &Progress) -> Result<Done, Failure> {
    if let Some(db) = &task.database {
        return database::dump(aws, task, db, progress).await;
    }
    let Some(repository) = &task.repository else {
        return Err(failure(
            FailureReason::RepositoryMissing,
            "the task names no repository; the controller that launched this worker is older than the agent",
        ));
    };
    // A worker in the backup account reads production through its role.
    let source = match &task.source_access {
        Some(role) => {
            let access = Access::new(Some(role), &[&task.namespace, &task.job_name, "worker"]);
            aws.scoped(&access).await
        }
        None => aws.clone(),
    };
    let region = task.resource_region.as_str();
    let from_instance = task.resource.starts_with("i-");
    let mut lineage = task.resource.clone();
    let (volumes, machine) = if from_instance {
        let taken = snapshots::snapshot_instance(&source, task).await?;
        (taken.volumes, Some(taken.machine))
    } else {
        lineage = snapshots::wait_for_snapshot(&source, region, &task.resource)
            .await?
            .unwrap_or_else(|| task.resource.clone());
        let volume = SourceVolume {
            snapshot_id: task.resource.clone(),
            device: None,
            volume_id: None,
        };
        (vec![volume], None)
    };
    let manifest = mover::backup(
        BackupRequest {
            source: &source,
            repository: aws,
            location: repository,
            region,
            resource: &task.resource,
            job_name: &task.job_name,
            job_uid: &task.job_uid,
            lineage: &lineage,
            volumes: &volumes,
            machine: machine.as_ref(),
            policy: task.policy.as_deref(),
            grace: task.gc_grace_seconds.map(std::time::Duration::from_secs),
        },
        progress,
    )
    .await;
    // The snapshots taken for a backup that failed, or that found its
    // restore point stored by an earlier attempt, are no restore point's
    // base: they would only cost money. (A retry takes new ones.)
    let used: Vec<&str> = match &manifest {
        Ok(m) => m.volumes.iter().map(|v| v.snapshot_id.as_str()).collect(),
        Err(_) => Vec::new(),
    };
    if from_instance {
        for v in volumes
            .iter()
            .filter(|v| !used.contains(&v.snapshot_id.as_str()))
        {
            if let Err(e) = source
                .snapshots()
                .delete_snapshot(region, &v.snapshot_id)
                .await
            {
                warn!(error = %e, snapshot = v.snapshot_id, "could not delete a snapshot no restore point uses");
            }
        }
    }
    let manifest = manifest.map_err(|e| mover_failure(e, repository))?;
    if from_instance {
        forget_parent_snapshots((aws, &source), region, &manifest, task).await;
    }
    Ok(Done {
        detail: backup_detail(&manifest),
        restore_point: Some(manifest.id.clone()),
        snapshots: Vec::new(),
        machine: None,
        retention: None,
        verification: None,
    })
}

/// Expires the policy's restore points and collects the namespace part's
/// chunks, spilling hashes to the worker's temporary directory.
async fn retention(aws: &AwsClients, task: &WorkerTask) -> Result<Done, Failure> {
    let (Some(repository), Some(retention)) = (&task.repository, &task.retention) else {
        return Err(failure(
            FailureReason::RepositoryMissing,
            "the task names no repository or no retention rules; the controller that launched this worker is older than the agent",
        ));
    };
    let now = jiff::Timestamp::now();
    // The unit's cache directory, on the root volume (systemd names it);
    // /tmp is memory on many images.
    let spill = std::env::var_os("CACHE_DIRECTORY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let (outcome, expiry) = mover::retention::run(aws, repository, retention, &spill, now)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    let mut detail = format!(
        "expired {} restore point(s), kept {}; {} restore point(s) left; deleted {} chunk(s) ({}), {} chunk(s) ({}) waiting for their grace period",
        outcome.expired_restore_points,
        outcome.kept_restore_points,
        outcome.restore_points,
        outcome.deleted_chunks,
        mib(outcome.deleted_bytes),
        outcome.pending_chunks,
        mib(outcome.pending_bytes),
    );
    if !expiry.held_back.is_empty() {
        detail.push_str(&format!(
            "; {} restore point(s) asked to be deleted are held or being restored and stay, {} first",
            expiry.held_back.len(),
            expiry.held_back[0]
        ));
    }
    if !expiry.skipped.is_empty() {
        detail.push_str(&format!(
            "; {} restore point(s) left alone because they do not verify, {} first",
            expiry.skipped.len(),
            expiry.skipped[0]
        ));
    }
    Ok(Done {
        detail,
        restore_point: None,
        snapshots: Vec::new(),
        machine: None,
        retention: Some(outcome),
        verification: None,
    })
}

/// What a backup did, for the job's status.
fn backup_detail(manifest: &Manifest) -> String {
    let s = &manifest.stats;
    let refused = match &manifest.parent_refused {
        Some(why) => format!(
            " (warning: the latest restore point was not trusted, so this is a full backup: {why})"
        ),
        None => String::new(),
    };
    let retried = match s.blocks_retried {
        0 => String::new(),
        n => format!(", {n} blocks retried after throttling or a server error"),
    };
    format!(
        "restore point {}: {} of data, {} blocks read, {} reused from {}, {} chunks uploaded ({}), {} already stored{retried}{refused}",
        manifest.id,
        mib(s.bytes_total),
        s.blocks_read,
        s.blocks_reused,
        manifest
            .parent
            .as_deref()
            .unwrap_or("no parent (full backup)"),
        s.chunks_uploaded,
        mib(s.bytes_uploaded),
        s.chunks_deduplicated
    )
}

/// Restores one volume of a restore point into a new EBS snapshot, in the
/// region and account this worker runs in; the controller makes the volume
/// or instance from it.
async fn restore(
    aws: &AwsClients,
    task: &WorkerTask,
    progress: &Progress,
) -> Result<Done, Failure> {
    if let Some(db) = &task.database {
        return database::load(aws, task, db, progress).await;
    }
    let (Some(repository), Some(id)) = (&task.repository, &task.restore_point) else {
        return Err(failure(
            FailureReason::RestorePointMissing,
            "the task names no repository or restore point",
        ));
    };
    let manifest = mover::load_manifest(aws, repository, id)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    let volumes = volumes_to_restore(&manifest, task, id)?;
    let tags = restore_snapshot_tags(task, &manifest.resource);
    let description = format!("Tender restore {} of {id}", task.job_name);
    // One snapshot per job and attempt, even if StartSnapshot is retried.
    let mut snapshots = Vec::new();
    for (i, volume) in volumes.iter().enumerate() {
        // One snapshot per job, attempt and volume, even if StartSnapshot
        // is retried.
        let token = format!("{}-{}-{i}", task.job_uid, task.attempt);
        let snapshot_id = mover::restore_volume(
            aws,
            repository,
            &manifest,
            volume,
            mover::RestoreTarget {
                aws,
                region: &task.resource_region,
                description: &description,
                tags: &tags,
                client_token: &token,
            },
            progress,
        )
        .await
        .map_err(|e| mover_failure(e, repository))?;
        snapshots.push(RestoredSnapshot {
            // A snapshot's restore point has no device: it is the boot disk.
            device: volume
                .device
                .clone()
                .unwrap_or_else(|| ROOT_DEVICE.to_string()),
            snapshot_id,
        });
    }
    let written: Vec<String> = snapshots
        .iter()
        .map(|s| format!("{} → {}", s.device, s.snapshot_id))
        .collect();
    let retried = match progress.retried.blocks.load(Ordering::Relaxed) {
        0 => String::new(),
        n => format!("; {n} blocks retried after throttling or a server error"),
    };
    Ok(Done {
        detail: format!(
            "restored {} volume(s) of {id} ({} of data): {}{retried}",
            volumes.len(),
            mib(volumes.iter().map(|v| v.bytes()).sum()),
            written.join(", ")
        ),
        restore_point: Some(id.clone()),
        snapshots,
        machine: task.all_volumes.then(|| manifest.machine_or_fallback()),
        retention: None,
        verification: None,
    })
}

/// The volumes a restore writes: all of them, the one the task names, or
/// the first.
fn volumes_to_restore<'a>(
    manifest: &'a Manifest,
    task: &WorkerTask,
    id: &str,
) -> Result<Vec<&'a VolumeImage>, Failure> {
    let volumes: Vec<&VolumeImage> = match (&task.device, task.all_volumes) {
        (_, true) => manifest.volumes.iter().collect(),
        (Some(device), false) => manifest
            .volumes
            .iter()
            .filter(|v| v.device.as_deref() == Some(device.as_str()))
            .take(1)
            .collect(),
        (None, false) => manifest.volumes.iter().take(1).collect(),
    };
    if volumes.is_empty() {
        let devices: Vec<&str> = manifest
            .volumes
            .iter()
            .filter_map(|v| v.device.as_deref())
            .collect();
        return Err(failure(
            FailureReason::VolumeNotInRestorePoint,
            format!(
                "restore point {id} has no volume {}; it has {devices:?}",
                task.device.as_deref().unwrap_or("at all")
            ),
        ));
    }
    Ok(volumes)
}

/// The tags of every snapshot a worker creates (at creation: the IAM
/// policies let workers delete or write only snapshots tagged
/// `tender.dev/managed-by=tender`), naming the job, the resource the data
/// is of and, from current controllers, the cluster.
fn snapshot_tags(task: &WorkerTask, resource: &str) -> Vec<(String, String)> {
    let mut out = vec![
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::JOB_UID.to_string(), task.job_uid.clone()),
        (tags::JOB_NAME.to_string(), task.job_name.clone()),
        (tags::RESOURCE.to_string(), resource.to_string()),
    ];
    if let Some(cluster) = &task.cluster_id {
        out.push((tags::CLUSTER_ID.to_string(), cluster.clone()));
    }
    out
}

/// Deletes the snapshots Tender took for the parent restore point: the new
/// ones are the base of the next incremental now. Snapshots anyone else
/// made are never touched. A failure only costs storage, so it is logged.
/// The parent's manifest is read with the repository's clients, the
/// snapshots handled with the source's (a production role's, maybe).
async fn forget_parent_snapshots(
    (repository_clients, source): (&AwsClients, &AwsClients),
    region: &str,
    manifest: &Manifest,
    task: &WorkerTask,
) {
    let Some(parent) = &manifest.parent else {
        return;
    };
    let Some(repository) = &task.repository else {
        return;
    };
    let parent = match mover::load_manifest(repository_clients, repository, parent).await {
        Ok(parent) => parent,
        Err(e) => {
            warn!(error = %e, "could not read the parent restore point; its snapshots stay");
            return;
        }
    };
    let current: Vec<&str> = manifest
        .volumes
        .iter()
        .map(|v| v.snapshot_id.as_str())
        .collect();
    for volume in &parent.volumes {
        if current.contains(&volume.snapshot_id.as_str()) {
            continue;
        }
        match source
            .snapshots()
            .describe_snapshot(region, &volume.snapshot_id)
            .await
        {
            Ok(Some(s))
                if s.tags.get(tags::MANAGED_BY).map(String::as_str)
                    == Some(tags::MANAGED_BY_VALUE)
                    && s.tags.get(tags::RESOURCE) == Some(&task.resource) =>
            {
                if let Err(e) = source
                    .snapshots()
                    .delete_snapshot(region, &volume.snapshot_id)
                    .await
                {
                    warn!(error = %e, snapshot = volume.snapshot_id, "could not delete the parent's snapshot");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not look at the parent's snapshot"),
        }
    }
}

/// The tags of a snapshot a restore writes: a worker's, plus what marks
/// it as made on the way (`tender.dev/intermediate`) and names its job, so
/// that the garbage collector can delete it once no job owns it.
fn restore_snapshot_tags(task: &WorkerTask, resource: &str) -> Vec<(String, String)> {
    let mut out = snapshot_tags(task, resource);
    out.push((tags::NAMESPACE.to_string(), task.namespace.clone()));
    out.push((tags::JOB_KIND.to_string(), "RestoreJob".to_string()));
    out.push((
        tags::INTERMEDIATE.to_string(),
        tags::INTERMEDIATE_VALUE.to_string(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restore policy lets StartSnapshot tag with Tender's keys only
    /// (`iam/worker-restore-policy.json`), and the snapshot's own policies
    /// key on `managed-by`.
    #[test]
    fn snapshots_carry_only_tenders_tags_and_its_ownership() {
        let task = WorkerTask::sample();
        let tags = snapshot_tags(&task, "i-0123456789abcdef0");
        assert!(
            tags.iter().all(|(k, _)| k.starts_with(tags::PREFIX)),
            "{tags:?}"
        );
        assert!(tags.contains(&(tags::MANAGED_BY.into(), tags::MANAGED_BY_VALUE.into())));
        assert!(tags.contains(&(tags::CLUSTER_ID.into(), "cluster".into())));
        assert!(tags.contains(&(tags::RESOURCE.into(), "i-0123456789abcdef0".into())));
        let older = WorkerTask {
            cluster_id: None,
            ..task
        };
        let tags = snapshot_tags(&older, "i-0123456789abcdef0");
        assert!(!tags.iter().any(|(k, _)| k == tags::CLUSTER_ID));
    }

    /// A restore's snapshots are marked as made on the way, and name their
    /// job fully, so that the sweep can tell whose they are; the restore
    /// policy lets StartSnapshot tag with Tender's keys only.
    #[test]
    fn a_restores_snapshots_are_intermediate_and_name_their_job() {
        let task = WorkerTask::sample();
        let tags = restore_snapshot_tags(&task, "i-0123456789abcdef0");
        assert!(
            tags.iter().all(|(k, _)| k.starts_with(tags::PREFIX)),
            "{tags:?}"
        );
        for (key, value) in [
            (tags::INTERMEDIATE, tags::INTERMEDIATE_VALUE),
            (tags::JOB_KIND, "RestoreJob"),
            (tags::NAMESPACE, task.namespace.as_str()),
            (tags::JOB_UID, task.job_uid.as_str()),
            (tags::CLUSTER_ID, "cluster"),
        ] {
            assert!(
                tags.contains(&(key.to_string(), value.to_string())),
                "{key}: {tags:?}"
            );
        }
        // A backup's snapshots (a restore point's base) never are.
        let backup = snapshot_tags(&task, "i-0123456789abcdef0");
        assert!(!backup.iter().any(|(k, _)| k == tags::INTERMEDIATE));
    }
}
