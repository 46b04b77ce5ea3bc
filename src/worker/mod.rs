//! The worker agent (`tender worker`): runs on a worker instance, reads its
//! task, reports over SQS (started, progress, heartbeats, completed or
//! failed) and does the work.
//!
//! This version inspects the protected instance (its volumes and their
//! size) and reports; it does not move data yet, and its completion message
//! says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use crate::aws::accounts::Access;
use crate::aws::{AwsClients, AwsError};
use crate::messages::{Operation, PROTOCOL_VERSION, WorkerEvent, WorkerMessage, WorkerTask};

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
            event,
        };
        let body = serde_json::to_string(&message).unwrap_or_default();
        self.aws
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

    let beats = reporter.clone();
    let period = Duration::from_secs(task.heartbeat_seconds.max(1));
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = beats.send(WorkerEvent::Heartbeat).await {
                warn!(error = %e, "heartbeat not sent");
            }
        }
    });

    let outcome = match task.operation {
        Operation::Backup => inspect_source(&aws, &task, &reporter).await,
        Operation::Restore => Err((
            "RestoreNotSupported".to_string(),
            "this agent does not run restores yet".to_string(),
        )),
    };
    heartbeat.abort();
    match outcome {
        Ok(detail) => {
            reporter
                .send(WorkerEvent::Completed {
                    detail: detail.clone(),
                })
                .await
                .map_err(AgentError::Report)?;
            info!(detail, "worker completed");
            Ok(())
        }
        Err((reason, message)) => {
            reporter
                .send(WorkerEvent::Failed {
                    reason: reason.clone(),
                    message: message.clone(),
                })
                .await
                .map_err(AgentError::Report)?;
            Err(AgentError::Failed(format!("{reason}: {message}")))
        }
    }
}

async fn inspect_source(
    aws: &AwsClients,
    task: &WorkerTask,
    reporter: &Reporter,
) -> Result<String, (String, String)> {
    reporter
        .send(WorkerEvent::Progress {
            percent: 0,
            detail: format!("inspecting {}", task.resource),
        })
        .await
        .map_err(|e| ("ReportFailed".to_string(), e.to_string()))?;
    // A worker in the backup account reads production through its role.
    let source = match &task.source_access {
        Some(role) => {
            let access = Access::new(Some(role), &[&task.namespace, &task.job_name, "worker"]);
            aws.scoped(&access).await
        }
        None => aws.clone(),
    };
    match source
        .describe_source_instance(&task.resource_region, &task.resource)
        .await
    {
        Ok(Some(source)) => Ok(format!(
            "inspected {} ({} GiB of EBS in {}); this version moves no data",
            task.resource,
            source.total_ebs_gib,
            source
                .availability_zone
                .as_deref()
                .unwrap_or("an unknown zone")
        )),
        Ok(None) => Err((
            "SourceInstanceNotFound".to_string(),
            format!(
                "instance {} does not exist in {}",
                task.resource, task.resource_region
            ),
        )),
        Err(e) => Err((e.category().to_string(), e.to_string())),
    }
}
