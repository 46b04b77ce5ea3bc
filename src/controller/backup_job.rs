//! BackupJob: what only a backup does on the shared job lifecycle
//! (`controller::job`): find each source (an instance's zone and EBS size,
//! or a snapshot), size its worker, and record the restore point it wrote.

use std::sync::Arc;

use kube::runtime::controller::Action;

use super::job::kind::{Located, NotLocated, Target, TaskDetails, WorkerJob};
use super::job::{self, job_access};
use super::{Context, Result};
use crate::api::{
    BackupJob, BackupJobStatus, BackupWorkerStatus, InstanceTypes, JobLimits, LocalObjectReference,
    Repository, WorkerConfiguration,
};
use crate::messages::{Operation, WorkerEvent};
use crate::placement;
use crate::reasons::FailureReason;

pub async fn reconcile(job: Arc<BackupJob>, ctx: Arc<Context>) -> Result<Action> {
    job::reconcile(job, ctx).await
}

impl WorkerJob for BackupJob {
    const KIND: &'static str = "BackupJob";
    const OPERATION: Operation = Operation::Backup;
    type Worker = BackupWorkerStatus;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    fn targets(&self) -> Vec<Target> {
        self.spec
            .resources
            .iter()
            .map(|r| Target {
                id: r.id().to_string(),
                region: r.region.clone(),
            })
            .collect()
    }
    fn limits(&self) -> &JobLimits {
        &self.spec.limits
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
    fn repository(&self) -> Option<&Repository> {
        self.spec.repository.as_ref()
    }
    fn job_status(&self) -> Option<&BackupJobStatus> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &job::status::Written<BackupJobStatus> {
        &ctx.written_backups
    }

    /// An instance's zone and total EBS size, or a snapshot (regional: any
    /// zone will do), looked up in the production account.
    async fn locate(
        &self,
        target: &Target,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<Result<Located, NotLocated>> {
        let access = job_access(self, config.spec.production_account.as_ref());
        let production = ctx.aws.scoped(&access).await;
        let is_instance = self
            .spec
            .resources
            .iter()
            .any(|r| r.instance_id.as_deref() == Some(target.id.as_str()));
        if is_instance {
            let found = production
                .instances()
                .describe_source_instance(&target.region, &target.id)
                .await?;
            return Ok(found
                .map(|s| Located {
                    zone: s.availability_zone,
                    size_gib: s.total_ebs_gib,
                })
                .ok_or(NotLocated {
                    reason: FailureReason::SourceInstanceNotFound,
                    what: "instance",
                }));
        }
        let found = production
            .snapshots()
            .describe_snapshot(&target.region, &target.id)
            .await?;
        Ok(match found {
            Some(s) if s.state == "error" => Err(NotLocated {
                reason: FailureReason::SourceSnapshotFailed,
                what: "completed snapshot",
            }),
            Some(s) => Ok(Located {
                zone: None,
                size_gib: s.volume_size_gib,
            }),
            None => Err(NotLocated {
                reason: FailureReason::SourceSnapshotNotFound,
                what: "snapshot",
            }),
        })
    }

    fn instance_type(&self, types: Option<&InstanceTypes>, located: &Located) -> String {
        placement::backup_instance_type(types, located.size_gib)
    }

    fn record(worker: &mut BackupWorkerStatus, event: &WorkerEvent) {
        if let WorkerEvent::Completed {
            restore_point: Some(point),
            ..
        } = event
        {
            worker.restore_point = Some(point.clone());
        }
    }

    async fn task_details(
        &self,
        _worker: &mut BackupWorkerStatus,
        _config: &WorkerConfiguration,
        _ctx: &Context,
    ) -> Result<TaskDetails> {
        Ok(TaskDetails::default())
    }
}
