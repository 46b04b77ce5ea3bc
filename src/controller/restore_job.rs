//! RestoreJob reconciler: a RestoreJob runs on the BackupJob lifecycle
//! (`backup_job::reconcile`, through `jobs::WorkerJob`): one worker, which
//! verifies every chunk of the restore point and writes the blocks into a
//! new EBS snapshot. Mode `volume` then gets its volume here, created from
//! that snapshot. Modes this version cannot run yet (`full`, `fileLevel`)
//! are refused plainly instead of launching a worker that would pretend.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{Context, Error, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, STALLED};
use crate::api::{Phase, RestoreJob, RestoreMode};

pub const NOT_SUPPORTED_REASON: &str = "RestoreModeNotSupported";

pub async fn reconcile(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Action> {
    if matches!(job.spec.mode, RestoreMode::Volume | RestoreMode::Full) {
        return super::backup_job::reconcile(job, ctx).await;
    }
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.metrics
        .reconciles
        .get_or_create(&super::kind_labels("RestoreJob"))
        .inc();
    let message = format!(
        "this version of Tender restores modes volume and full, not {:?}; no worker was launched and nothing was restored",
        job.spec.mode
    );
    let mut status = job.status.clone().unwrap_or_default();
    status.observed_generation = job.metadata.generation;
    status.phase = Phase::Failed;
    let desired = [
        DesiredCondition::new(READY, false, NOT_SUPPORTED_REASON, message.clone()),
        DesiredCondition::new(STALLED, true, NOT_SUPPORTED_REASON, message.clone()),
    ];
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        job.metadata.generation,
        Timestamp::now(),
    );
    if job.status.as_ref() != Some(&status) {
        ctx.event(
            &*job,
            EventType::Warning,
            NOT_SUPPORTED_REASON,
            "Reconcile",
            message,
        )
        .await;
        apply_status(&api, &*job, &status, &ctx.metrics).await?;
    }
    Ok(Action::await_change())
}
