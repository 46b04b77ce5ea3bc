//! WorkerConfiguration reconciler: owns the configuration's SQS queue and
//! its pump, counts the workers that use it, and holds its deletion until
//! no unfinished job needs it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use tracing::{info, instrument};

use super::{Context, Error, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{BackupJob, WorkerConfiguration, WorkerConfigurationStatus};
use crate::names::{CONFIGURATION_FINALIZER, tags};
use crate::placement;

/// How often a configuration whose deletion waits for jobs is looked at.
const DELETION_RECHECK: Duration = Duration::from_secs(10);

#[instrument(skip_all, fields(namespace = cfg.namespace().unwrap_or_default(), configuration = cfg.name_any()))]
pub async fn reconcile(cfg: Arc<WorkerConfiguration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cfg
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<WorkerConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = cfg.uid().ok_or(Error::MissingObjectKey("uid"))?;
    // A configuration in use stays until its jobs finish. This is decided
    // before the finalizer helper runs, because a cleanup that returns Ok
    // lets the helper remove the finalizer.
    if cfg.metadata.deletion_timestamp.is_some()
        && cfg
            .finalizers()
            .iter()
            .any(|f| f == CONFIGURATION_FINALIZER)
        && let Some(action) = hold_deletion(&cfg, &api, &ctx).await?
    {
        return Ok(action);
    }
    let result = finalizer(&api, CONFIGURATION_FINALIZER, cfg.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(cfg) => apply(&cfg, &api, &ctx).await,
            FinalizerEvent::Cleanup(cfg) => cleanup(&cfg, &ctx).await,
        }
    })
    .await;
    match result {
        Ok(action) => {
            ctx.reset_backoff(&uid);
            Ok(action)
        }
        Err(e) => {
            let e = Error::from(e);
            report_failure(&cfg, &api, &ctx, &e).await;
            Err(e)
        }
    }
}

/// Jobs of this configuration's namespace that use it.
fn jobs_using(cfg: &WorkerConfiguration, ctx: &Context) -> Vec<Arc<BackupJob>> {
    let ns = cfg.namespace();
    let name = cfg.name_any();
    ctx.jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace() == ns)
        .filter(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.worker_configuration.as_deref())
                == Some(name.as_str())
        })
        .collect()
}

fn queue_tags(cfg: &WorkerConfiguration, cluster_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::CLUSTER_ID.to_string(), cluster_id.to_string()),
        (
            tags::NAMESPACE.to_string(),
            cfg.namespace().unwrap_or_default(),
        ),
        (tags::CONFIGURATION.to_string(), cfg.name_any()),
    ])
}

fn base_status(cfg: &WorkerConfiguration, ctx: &Context) -> WorkerConfigurationStatus {
    let mut status = cfg.status.clone().unwrap_or_default();
    status.observed_generation = cfg.metadata.generation;
    status.active_workers = jobs_using(cfg, ctx)
        .iter()
        .filter_map(|j| j.status.as_ref())
        .map(|s| s.active_workers)
        .sum();
    status
}

async fn apply(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
) -> Result<Action> {
    let region = &cfg.spec.region;
    let name = placement::queue_name(
        &ctx.cluster_id,
        &cfg.namespace().unwrap_or_default(),
        &cfg.name_any(),
    );
    let queue_url = ctx
        .aws
        .ensure_queue(region, &name, &queue_tags(cfg, &ctx.cluster_id))
        .await?;
    ctx.pumps.ensure(
        &ctx.aws,
        region,
        &queue_url,
        ctx.jobs.clone(),
        ctx.reports.clone(),
    );

    let mut status = base_status(cfg, ctx);
    let created = status.queue_url.as_deref() != Some(queue_url.as_str());
    status.queue_url = Some(queue_url.clone());
    status.phase = Some("Ready".into());
    let desired = [DesiredCondition::new(
        READY,
        true,
        "QueueReady",
        format!("workers report to {queue_url}"),
    )];
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        cfg.metadata.generation,
        Timestamp::now(),
    );
    if cfg.status.as_ref() != Some(&status) {
        apply_status(api, cfg, &status).await?;
    }
    if created {
        info!(queue_url, "worker queue ready");
        ctx.event(
            cfg,
            EventType::Normal,
            "QueueReady",
            "EnsureQueue",
            format!("workers report to {queue_url}"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Keeps a configuration that unfinished jobs use: says so on its status
/// and comes back later. `None` when nothing holds the deletion.
async fn hold_deletion(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
) -> Result<Option<Action>> {
    let busy: Vec<String> = jobs_using(cfg, ctx)
        .iter()
        .filter(|j| !j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .map(|j| j.name_any())
        .collect();
    if !busy.is_empty() {
        let message = format!(
            "deletion waits for {} unfinished job(s) that use this configuration: {}",
            busy.len(),
            busy.join(", ")
        );
        let mut status = base_status(cfg, ctx);
        status.phase = Some("Deleting".into());
        let desired = [
            DesiredCondition::new(READY, false, "InUse", message.clone()),
            DesiredCondition::new(RECONCILING, true, "InUse", message.clone()),
        ];
        status.conditions = conditions::merge(
            &status.conditions,
            &desired,
            cfg.metadata.generation,
            Timestamp::now(),
        );
        if cfg.status.as_ref() != Some(&status) {
            ctx.event(
                cfg,
                EventType::Normal,
                "DeletionWaiting",
                "DeleteConfiguration",
                message,
            )
            .await;
            apply_status(api, cfg, &status).await?;
        }
        return Ok(Some(Action::requeue(DELETION_RECHECK)));
    }
    Ok(None)
}

async fn cleanup(cfg: &WorkerConfiguration, ctx: &Context) -> Result<Action> {
    if let Some(queue_url) = cfg.status.as_ref().and_then(|s| s.queue_url.as_deref()) {
        ctx.pumps.stop(queue_url);
        ctx.aws.delete_queue(&cfg.spec.region, queue_url).await?;
        info!(queue_url, "worker queue deleted");
    }
    Ok(Action::await_change())
}

/// Puts a failed reconcile on the configuration's status and as an Event.
async fn report_failure(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
    e: &Error,
) {
    let mut status = base_status(cfg, ctx);
    status.phase = Some("NotReady".into());
    let message = format!("{e}; Tender retries with backoff");
    let desired = [
        DesiredCondition::new(READY, false, e.category(), message.clone()),
        DesiredCondition::new(STALLED, true, e.category(), message.clone()),
    ];
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        cfg.metadata.generation,
        Timestamp::now(),
    );
    if cfg.status.as_ref() != Some(&status) {
        ctx.event(cfg, EventType::Warning, e.category(), "Reconcile", message)
            .await;
        let _ = apply_status(api, cfg, &status).await;
    }
}
