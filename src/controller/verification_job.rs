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
use super::job::kind::{Located, NotLocated, Settling, Target, TaskDetails, WorkerJob};
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
        target: &Target,
        _config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<Result<Located, NotLocated>> {
        if super::database_restore::is_database_point(&target.id) {
            return Ok(Err(NotLocated {
                reason: FailureReason::RestoreModeMismatch,
                message: format!(
                    "restore point {} is a database's: its data is a DB snapshot RDS keeps, not chunks in the repository; a VerificationJob reads chunks (restore it with a RestoreJob of mode database to check it)",
                    target.id
                ),
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
                    "spec.region is {} and BackupRepository {:?} is in {}: set spec.region to the repository's region, where the workers run next to its data",
                    self.spec.region,
                    repository.name_any(),
                    repository.spec.region
                ),
            }));
        }
        // Its size, from the catalog when it has it, sizes the worker.
        let ns = self.namespace().unwrap_or_default();
        let api: Api<RestorePoint> = Api::namespaced(ctx.client.clone(), &ns);
        // Only a size: a failed lookup launches the smallest worker
        // rather than hold the job up.
        let listed = match object_name(&target.id) {
            Some(name) => api.get_opt(&name).await.unwrap_or_else(|e| {
                warn!(error = %e, restore_point = target.id, "no size from the catalog");
                None
            }),
            None => None,
        };
        let size_gib = listed.map_or(0, |p| {
            (p.spec.logical_bytes.max(0) as u64).div_ceil(1 << 30) as i64
        });
        Ok(Ok(Located {
            zone: None,
            size_gib,
            dump: false,
        }))
    }

    fn instance_type(&self, spec: &WorkerConfigurationSpec, located: &Located) -> String {
        spec.instance_types
            .as_ref()
            .and_then(|t| t.verification.clone())
            .unwrap_or_else(|| {
                placement::DefaultTypes::of(spec.architecture).verification(located.size_gib)
            })
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
            // A failed write is tried again while the job settles (see
            // `settling`), never an error that would hold the job's other
            // steps up; the job keeps the outcome whatever happens.
            match catalog(self, ctx, &verification, &found.restore_point).await {
                Ok(()) => worker.cataloged = true,
                Err(e) => {
                    warn!(
                        error = %e,
                        restore_point = found.restore_point,
                        "could not record the verification on its RestorePoint"
                    );
                    if !patient(worker, now) {
                        let note = format!(
                            "the outcome for {} stays on this job only: its RestorePoint could not be updated ({e}); check the controller's permission to patch restorepoints/status",
                            found.restore_point
                        );
                        ctx.event(
                            self,
                            EventType::Warning,
                            "RestorePointNotUpdated",
                            "Verify",
                            note,
                        )
                        .await;
                    }
                }
            }
        }
        Ok(())
    }

    /// The job stays unfinished while an outcome is not on its
    /// RestorePoint yet, for at most [`CATALOG_PATIENCE`].
    fn settling(&self, status: &JobStatus<VerificationWorkerStatus>) -> Option<Settling> {
        let now = Timestamp::now();
        let waiting = status.workers.iter().find(|w| {
            w.outcome.is_some() && !w.cataloged && w.phase.is_finished() && patient(w, now)
        })?;
        Some(Settling {
            note: format!(
                "recording the verification of {} on its RestorePoint",
                waiting.resource
            ),
            recheck: std::time::Duration::from_secs(5),
        })
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

/// How long a job waits, once a worker finished, for its outcome to be
/// written on the RestorePoint.
const CATALOG_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether the job still waits for `worker`'s outcome to be cataloged.
fn patient(worker: &VerificationWorkerStatus, now: Timestamp) -> bool {
    let finished = worker.finished_time.as_ref().map_or(now, |t| t.0);
    std::time::Duration::try_from(now.duration_since(finished))
        .is_ok_and(|waited| waited < CATALOG_PATIENCE)
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
    // An older verification (a retried job's) never replaces a newer one.
    let newer = point
        .status
        .as_ref()
        .and_then(|s| s.last_verification.as_ref())
        .is_some_and(|v| v.time.0 > verification.time.0);
    if newer {
        return Ok(());
    }
    // A merge patch, not an apply: `held` is the catalog's, applied by
    // it, and neither writer may drop the other's field. Every field is
    // sent, `null` included, so none of an earlier verification remains.
    let mut value = serde_json::to_value(verification).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.entry("message").or_insert(serde_json::Value::Null);
    }
    let patch = serde_json::json!({"status": {"lastVerification": value}});
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
