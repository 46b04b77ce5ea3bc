//! VerificationJob: what only a verification does on the shared job
//! lifecycle (`controller::job`): one worker per restore point, in the
//! repository's region, whose task names the restore point; once a worker
//! reports, what it found goes on the restore point's `RestorePoint`
//! (`status.lastVerification`), with a Warning Event there when it is
//! damaged.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::job;
use super::job::kind::{Located, NotLocated, Target, TaskDetails, WorkerJob};
use super::{Context, Result};
use crate::api::restore_point::{LastVerification, object_name};
use crate::api::{
    JobLimits, JobStatus, LocalObjectReference, RestorePoint, VerificationJob,
    VerificationJobStatus, VerificationResult, VerificationWorkerStatus, WorkerConfiguration,
    WorkerConfigurationSpec,
};
use crate::messages::{Operation, WorkerEvent, WorkerProfile};
use crate::placement;
use crate::reasons::FailureReason;

pub async fn reconcile(job: Arc<VerificationJob>, ctx: Arc<Context>) -> Result<Action> {
    job::reconcile(job, ctx).await
}

impl WorkerJob for VerificationJob {
    const KIND: &'static str = "VerificationJob";
    const OPERATION: Operation = Operation::Verification;
    type Worker = VerificationWorkerStatus;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    fn profile(&self) -> WorkerProfile {
        WorkerProfile::Verification
    }
    /// One worker per restore point (each named once, by its ID).
    fn targets(&self) -> Vec<Target> {
        let mut ids: Vec<String> = self.spec.restore_points.iter().map(|p| p.id()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| Target {
                id,
                region: self.spec.region.clone(),
            })
            .collect()
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
    fn job_status(&self) -> Option<&VerificationJobStatus> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &job::status::Written<VerificationJobStatus> {
        &ctx.written_verifications
    }

    /// The workers run next to the repository: `spec.region` must be the
    /// repository's.
    async fn locate(
        &self,
        _target: &Target,
        _config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<Result<Located, NotLocated>> {
        let repository = self
            .repository_ref()
            .and_then(|r| ctx.repositories.get(&ObjectRef::new(&r.name)));
        if let Some(repository) = repository
            && repository.spec.region != self.spec.region
        {
            return Ok(Err(NotLocated {
                reason: FailureReason::RepositoryRegionMismatch,
                message: format!(
                    "spec.region is {} and BackupRepository {:?} is in {}: set spec.region to the repository's region, where the workers run next to its data",
                    self.spec.region,
                    repository.name_any(),
                    repository.spec.region
                ),
            }));
        }
        Ok(Ok(Located {
            zone: None,
            size_gib: 0,
        }))
    }

    fn instance_type(&self, spec: &WorkerConfigurationSpec, _located: &Located) -> String {
        spec.instance_types
            .as_ref()
            .and_then(|t| t.verification.clone())
            .unwrap_or_else(|| placement::DefaultTypes::of(spec.architecture).verification())
    }

    fn record(worker: &mut VerificationWorkerStatus, event: &WorkerEvent) {
        if let WorkerEvent::Completed {
            verification: Some(found),
            ..
        }
        | WorkerEvent::Failed {
            verification: Some(found),
            ..
        } = event
        {
            worker.outcome = Some((**found).clone());
            worker.cataloged = false;
        }
    }

    /// Puts each new outcome on its restore point's RestorePoint.
    async fn follow_up(
        &self,
        _config: &WorkerConfiguration,
        status: &mut JobStatus<VerificationWorkerStatus>,
        ctx: &Context,
        now: Timestamp,
    ) -> Result<()> {
        for worker in status.workers.iter_mut() {
            if worker.cataloged || !worker.phase.is_finished() {
                continue;
            }
            let Some(found) = &worker.outcome else {
                continue;
            };
            let at = worker
                .finished_time
                .clone()
                .unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
            let verification = LastVerification {
                time: at,
                job: self.name_any(),
                result: found.result,
                intact_chunks: found.intact_chunks,
                chunks: found.chunks,
                message: (found.result != VerificationResult::Verified)
                    .then(|| worker.message.clone())
                    .flatten(),
            };
            // Never holds the job up: its workers are judged and
            // terminated after this, and the job keeps the outcome anyway.
            match catalog(self, ctx, &verification, &found.restore_point).await {
                Ok(()) => worker.cataloged = true,
                Err(e) => warn!(
                    error = %e,
                    restore_point = found.restore_point,
                    "could not record the verification on its RestorePoint; trying again at the next reconcile"
                ),
            }
        }
        Ok(())
    }

    async fn task_details(
        &self,
        worker: &mut VerificationWorkerStatus,
        _config: &WorkerConfiguration,
        _ctx: &Context,
    ) -> Result<TaskDetails> {
        Ok(TaskDetails {
            restore_point: Some(worker.resource.clone()),
            ..TaskDetails::default()
        })
    }
}

/// Records `verification` on restore point `id`'s RestorePoint, if the
/// catalog has it (a restore point made since the last listing has none
/// yet: the job keeps the outcome).
async fn catalog(
    job: &VerificationJob,
    ctx: &Context,
    verification: &LastVerification,
    id: &str,
) -> Result<()> {
    let Some(name) = object_name(id) else {
        return Ok(());
    };
    let ns = job.namespace().unwrap_or_default();
    let api: Api<RestorePoint> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(point) = api.get_opt(&name).await? else {
        warn!(
            restore_point = id,
            namespace = ns,
            "verified restore point is not in the catalog yet"
        );
        return Ok(());
    };
    if point.spec.repository_ref.name
        != job
            .spec
            .repository_ref
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or_default()
    {
        return Ok(());
    }
    // A merge patch, not an apply: `held` is the catalog's, applied by
    // it, and neither writer may drop the other's field.
    let patch = serde_json::json!({"status": {"lastVerification": verification}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    if verification.result != VerificationResult::Verified {
        ctx.event(
            &point,
            EventType::Warning,
            "RestorePointDamaged",
            "Verify",
            verification
                .message
                .clone()
                .unwrap_or_else(|| format!("VerificationJob {} found it damaged", job.name_any())),
        )
        .await;
    }
    Ok(())
}
