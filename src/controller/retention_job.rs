//! RetentionJob: what only a retention run does on the shared job
//! lifecycle (`controller::job`): one worker in the repository's region,
//! sized by the chunks the namespace part held at the last run, whose task
//! carries the policy's rules and the grace period of garbage collection.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::job;
use super::job::kind::{Located, NotLocated, Target, TaskDetails, WorkerJob};
use super::{Context, Result};
use crate::api::{
    JobLimits, LocalObjectReference, RetentionJob, RetentionJobStatus, RetentionWorkerStatus,
    WorkerConfiguration, WorkerConfigurationSpec,
};
use crate::messages::{Operation, RetentionTask, WorkerEvent, WorkerProfile};
use crate::placement;
use crate::reasons::FailureReason;

/// Annotation on a RetentionJob: the chunks its namespace part held at the
/// policy's last retention run, which sizes the worker.
pub const EXPECTED_CHUNKS_ANNOTATION: &str = "tender.dev/expected-chunks";

pub async fn reconcile(job: Arc<RetentionJob>, ctx: Arc<Context>) -> Result<Action> {
    job::reconcile(job, ctx).await
}

impl RetentionJob {
    /// The restore points unfinished RestoreJobs and VerificationJobs of
    /// this namespace read from this repository: no run expires one while
    /// it is read.
    fn restore_points_in_use(&self, ctx: &Context) -> Vec<String> {
        let repository = self.spec.repository_ref.as_ref().map(|r| &r.name);
        let mut ids: Vec<String> = ctx
            .restores
            .state()
            .iter()
            .filter(|r| r.namespace() == self.namespace())
            .filter(|r| r.spec.repository_ref.as_ref().map(|r| &r.name) == repository)
            .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_finished()))
            .map(|r| r.spec.restore_point_id())
            .collect();
        // And those unfinished verifications read: expiring one mid-read
        // would report it missing.
        ids.extend(
            ctx.verifications
                .state()
                .iter()
                .filter(|v| v.namespace() == self.namespace())
                .filter(|v| v.spec.repository_ref.as_ref().map(|r| &r.name) == repository)
                .filter(|v| !v.status.as_ref().is_some_and(|s| s.phase.is_finished()))
                .flat_map(|v| v.spec.restore_points.iter().map(|p| p.id())),
        );
        ids.sort();
        ids.dedup();
        // All of them, never a few: were they too many for user data
        // (16 KiB, some 300 IDs), the launch fails with UserData and says
        // so rather than expire a restore point being read.
        ids
    }
}

impl WorkerJob for RetentionJob {
    const KIND: &'static str = "RetentionJob";
    const OPERATION: Operation = Operation::Retention;
    type Worker = RetentionWorkerStatus;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    fn profile(&self) -> WorkerProfile {
        WorkerProfile::Retention
    }
    /// One worker, for the repository (named by its reference).
    fn targets(&self) -> Vec<Target> {
        vec![Target {
            id: self
                .spec
                .repository_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            region: self.spec.region.clone(),
        }]
    }
    fn limits(&self) -> &JobLimits {
        &self.spec.limits
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
    fn repository_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.repository_ref.as_ref()
    }
    fn job_status(&self) -> Option<&RetentionJobStatus> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &job::status::Written<RetentionJobStatus> {
        &ctx.written_retentions
    }

    /// The worker runs next to the repository: `spec.region` must be the
    /// repository's, and the rules must be valid.
    async fn locate(
        &self,
        _target: &Target,
        _config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<Result<Located, NotLocated>> {
        if let Err(e) = crate::policy::retention::Rules::of(&self.spec.retention) {
            return Ok(Err(NotLocated {
                reason: FailureReason::RetentionInvalid,
                message: format!("spec.retention: {e}"),
            }));
        }
        let zone = self.spec.time_zone.as_deref().unwrap_or("UTC");
        if let Err(e) = jiff::tz::TimeZone::get(zone) {
            return Ok(Err(NotLocated {
                reason: FailureReason::RetentionInvalid,
                message: format!("spec.timeZone {zone:?} is not an IANA time zone: {e}"),
            }));
        }
        let repository = self
            .repository_ref()
            .and_then(|r| ctx.repositories.get(&ObjectRef::new(&r.name)));
        if let Some(repository) = repository
            && repository.spec.region != self.spec.region
        {
            return Ok(Err(NotLocated {
                reason: FailureReason::RepositoryRegionMismatch,
                message: format!(
                    "spec.region is {} and BackupRepository {:?} is in {}: set spec.region to the repository's region, where the worker runs next to its data",
                    self.spec.region,
                    repository.name_any(),
                    repository.spec.region
                ),
            }));
        }
        Ok(Ok(Located {
            zone: None,
            size_gib: 0,
            dump: false,
        }))
    }

    fn instance_type(&self, spec: &WorkerConfigurationSpec, _located: &Located) -> String {
        let chunks = self
            .annotations()
            .get(EXPECTED_CHUNKS_ANNOTATION)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        spec.instance_types
            .as_ref()
            .and_then(|t| t.retention.clone())
            .unwrap_or_else(|| placement::DefaultTypes::of(spec.architecture).retention(chunks))
    }

    fn record(worker: &mut RetentionWorkerStatus, event: &WorkerEvent) {
        if let WorkerEvent::Completed {
            retention: Some(outcome),
            ..
        } = event
        {
            worker.outcome = Some((**outcome).clone());
        }
    }

    async fn task_details(
        &self,
        _worker: &mut RetentionWorkerStatus,
        _config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<TaskDetails> {
        Ok(TaskDetails {
            retention: Some(RetentionTask {
                policy: self.spec.policy.clone(),
                rules: self.spec.retention.clone(),
                time_zone: self.spec.time_zone.clone().unwrap_or_else(|| "UTC".into()),
                grace_seconds: ctx.gc_grace.as_secs(),
                delete: self.spec.delete_restore_points.clone(),
                in_use: self.restore_points_in_use(ctx),
            }),
            ..TaskDetails::default()
        })
    }
}
