//! The snapshots a backup reads: one someone else took (waited for until
//! complete), or the ones the worker takes of an instance's volumes, with
//! the instance's machine recorded for a full restore.

use std::time::{Duration, Instant};

use super::{Failure, failure, snapshot_tags};
use crate::api::MachineImage;
use crate::aws::AwsClients;
use crate::aws::consistency::{self, Absence};
use crate::messages::WorkerTask;
use crate::mover::SourceVolume;
use crate::reasons::FailureReason;

/// How often the worker looks at the snapshots it is waiting for.
const SNAPSHOT_POLL: Duration = Duration::from_secs(5);

/// What snapshotting an instance gave: its volumes' snapshots, and its
/// machine as DescribeInstances reported it.
pub(super) struct TakenInstance {
    pub volumes: Vec<SourceVolume>,
    pub machine: MachineImage,
}

/// Waits until a snapshot someone else took is complete; returns the
/// volume it was taken of, when EBS knows it.
pub(super) async fn wait_for_snapshot(
    source: &AwsClients,
    region: &str,
    snapshot_id: &str,
) -> Result<Option<String>, Failure> {
    loop {
        match source
            .snapshots()
            .describe_snapshot(region, snapshot_id)
            .await
            .map_err(|e| failure(e.failure_reason(), e.to_string()))?
        {
            Some(s) if s.state == "completed" => return Ok(s.volume_id),
            Some(s) if s.state == "error" => {
                return Err(failure(
                    FailureReason::SourceSnapshotFailed,
                    format!("snapshot {snapshot_id} is in state error; take a new one"),
                ));
            }
            Some(_) => tokio::time::sleep(SNAPSHOT_POLL).await,
            None => {
                return Err(failure(
                    FailureReason::SourceSnapshotNotFound,
                    format!("snapshot {snapshot_id} does not exist in {region}"),
                ));
            }
        }
    }
}

/// Snapshots the instance's volumes and waits until they are complete.
pub(super) async fn snapshot_instance(
    source: &AwsClients,
    task: &WorkerTask,
) -> Result<TakenInstance, Failure> {
    let region = task.resource_region.as_str();
    let aws_failure = |e: crate::aws::AwsError| failure(e.failure_reason(), e.to_string());
    let Some(instance) = source
        .instances()
        .describe_source_instance(region, &task.resource)
        .await
        .map_err(aws_failure)?
    else {
        return Err(failure(
            FailureReason::SourceInstanceNotFound,
            format!("instance {} does not exist in {region}", task.resource),
        ));
    };
    let tags = snapshot_tags(task, &task.resource);
    let description = format!("Tender backup {} of {}", task.job_name, task.resource);
    let made = source
        .snapshots()
        .snapshot_instance(region, &task.resource, &description, &tags)
        .await
        .map_err(aws_failure)?;
    let created = Instant::now();
    let mut volumes = Vec::new();
    for (snapshot_id, volume_id) in &made {
        if let Err(failed) =
            wait_for_own_snapshot(source, region, (snapshot_id, volume_id), created).await
        {
            // No restore point will use them: they would only cost money.
            for (id, _) in &made {
                if let Err(e) = source.snapshots().delete_snapshot(region, id).await {
                    tracing::warn!(error = %e, snapshot = id, "could not delete a snapshot of a failed backup");
                }
            }
            return Err(failed);
        }
        let (snapshot_id, volume_id) = (snapshot_id.clone(), volume_id.clone());
        let device = instance
            .volumes
            .iter()
            .find(|(_, v)| *v == volume_id)
            .map(|(d, _)| d.clone());
        volumes.push(SourceVolume {
            snapshot_id,
            device,
            volume_id: Some(volume_id),
        });
    }
    Ok(TakenInstance {
        volumes,
        machine: instance.machine,
    })
}

/// Waits until a snapshot this worker took (at `created`) is complete.
/// Right after CreateSnapshots, DescribeSnapshots may not know it yet
/// (eventual consistency): that is "not yet" for a while, not "gone".
async fn wait_for_own_snapshot(
    source: &AwsClients,
    region: &str,
    (snapshot_id, volume_id): (&str, &str),
    created: Instant,
) -> Result<(), Failure> {
    let aws_failure = |e: crate::aws::AwsError| failure(e.failure_reason(), e.to_string());
    loop {
        match source
            .snapshots()
            .describe_snapshot(region, snapshot_id)
            .await
            .map_err(aws_failure)?
        {
            Some(s) if s.state == "completed" => return Ok(()),
            Some(s) if s.state == "error" => {
                return Err(failure(
                    FailureReason::SnapshotFailed,
                    format!("EBS could not snapshot {volume_id} ({snapshot_id})"),
                ));
            }
            Some(_) => tokio::time::sleep(SNAPSHOT_POLL).await,
            None => match consistency::absence(created.elapsed()) {
                Absence::NotYetVisible => {
                    tokio::time::sleep(consistency::recheck_after(created.elapsed())).await
                }
                Absence::Gone => {
                    return Err(failure(
                        FailureReason::SnapshotFailed,
                        format!(
                            "snapshot {snapshot_id} of {volume_id} disappeared ({}s after it was taken, DescribeSnapshots does not know it)",
                            created.elapsed().as_secs()
                        ),
                    ));
                }
            },
        }
    }
}
