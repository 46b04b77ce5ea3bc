//! RestoreJob reconciler. This version does not run restores yet (the data
//! mover and the restore lifecycle are later work), so it says so on the
//! job's status instead of leaving it silently Pending.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{Context, Error, Result, apply_status};
use crate::api::RestoreJob;
use crate::api::conditions::{self, DesiredCondition, READY, STALLED};

pub const NOT_SUPPORTED_REASON: &str = "RestoreNotSupported";

pub async fn reconcile(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.metrics
        .reconciles
        .get_or_create(&super::kind_labels("RestoreJob"))
        .inc();
    let message = "this version of Tender does not run RestoreJobs yet; no worker was launched and nothing was restored";
    let mut status = job.status.clone().unwrap_or_default();
    status.observed_generation = job.metadata.generation;
    status.phase = Some("Failed".into());
    let desired = [
        DesiredCondition::new(READY, false, NOT_SUPPORTED_REASON, message),
        DesiredCondition::new(STALLED, true, NOT_SUPPORTED_REASON, message),
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
            message.to_string(),
        )
        .await;
        apply_status(&api, &*job, &status, &ctx.metrics).await?;
    }
    Ok(Action::await_change())
}
