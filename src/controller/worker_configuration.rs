//! WorkerConfiguration reconciler: checks what the configuration names
//! (credentials, image, subnets, security group, endpoints, instance
//! types), owns its SQS queue and its pump, and holds its deletion until no
//! unfinished job needs it (asking the worker index). It runs on its own
//! changes and its recheck timer; the worker count is `worker_count`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use tracing::{debug, info, instrument};

use super::index::ConfigKey;
use super::{Context, Error, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{AccountAccess, WorkerAccount, WorkerConfiguration, WorkerConfigurationStatus};
use crate::aws::AwsClients;
use crate::aws::accounts::{Access, CallerIdentity};
use crate::aws::network::Network;
use crate::controller::events;
use crate::names::{CONFIGURATION_FINALIZER, tags};
use crate::placement;

use super::configuration_checks::{
    Finding, check_instance_types, check_network, check_region, check_security_groups,
    check_subnets, resolve_image,
};
pub use super::configuration_checks::{INSTANCE_TYPES_OFFERED, NETWORK_READY};

/// Condition: Tender can act in the accounts the configuration names.
pub const CREDENTIALS_READY: &str = "CredentialsReady";
/// How often a configuration whose deletion waits for jobs is looked at.
const DELETION_RECHECK: Duration = Duration::from_secs(10);

#[instrument(skip_all, fields(configuration = cfg.name_any()))]
pub async fn reconcile(cfg: Arc<WorkerConfiguration>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<WorkerConfiguration> = Api::all(ctx.client.clone());
    let uid = cfg.uid().ok_or(Error::MissingObjectKey("uid"))?;
    ctx.metrics
        .reconciles
        .get_or_create(&super::kind_labels("WorkerConfiguration"))
        .inc();
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
        Err(e) if super::stale_finalizer_patch(&e) => {
            debug!(error = %e, "finalizer patch met a newer object; retrying on it");
            Ok(Action::requeue(super::STALE_OBJECT_RETRY))
        }
        Err(e) => {
            let e = Error::from(e);
            report_failure(&cfg, &api, &ctx, &e).await;
            Err(e)
        }
    }
}

/// The configuration's key in the worker index.
fn config_key(cfg: &WorkerConfiguration) -> ConfigKey {
    cfg.name_any()
}

fn queue_tags(cfg: &WorkerConfiguration, cluster_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::CLUSTER_ID.to_string(), cluster_id.to_string()),
        (tags::CONFIGURATION.to_string(), cfg.name_any()),
    ])
}

fn base_status(cfg: &WorkerConfiguration, ctx: &Context) -> WorkerConfigurationStatus {
    let mut status = cfg.status.clone().unwrap_or_default();
    status.observed_generation = cfg.metadata.generation;
    status.active_workers = ctx.workers.active(&config_key(cfg)) as i32;
    status
}

async fn apply(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
) -> Result<Action> {
    let region = &cfg.spec.region;
    let name = placement::queue_name(&ctx.cluster_id, &cfg.name_any());
    let owner_tags = queue_tags(cfg, &ctx.cluster_id);

    // The region first: in one that does not exist every call fails, and
    // should say so by name.
    if let Some(f) = check_region(cfg, &ctx.aws).await {
        return region_not_ready(cfg, api, ctx, f).await;
    }
    // Credentials next: every other call goes through them.
    let aws = ctx.aws.scoped(&configuration_access(cfg)).await;
    let credentials = match check_credentials(cfg, &aws, ctx).await {
        Ok(c) => c,
        Err((account_id, message)) => {
            return credentials_not_ready(cfg, api, ctx, account_id, message).await;
        }
    };
    let queue_url = aws
        .queues()
        .ensure_queue(region, &name, &owner_tags)
        .await?;
    let identity = (&credentials.identity, cfg.spec.worker_access().is_some());
    super::queue_access::restrict(ctx, &aws, identity, (region, &name, &queue_url)).await?;
    ctx.pumps.ensure(
        &aws,
        (region, &queue_url),
        config_key(cfg),
        super::reports::JobStores {
            backups: ctx.jobs.clone(),
            restores: ctx.restores.clone(),
            retentions: ctx.retentions.clone(),
            verifications: ctx.verifications.clone(),
        },
        ctx.reports.clone(),
    );

    let mut status = base_status(cfg, ctx);
    let created = status.queue_url.as_deref() != Some(queue_url.as_str());
    status.queue_url = Some(queue_url.clone());
    let mut findings: Vec<Finding> = Vec::new();
    status.account_id = Some(credentials.account_id.clone());
    status.image_id = resolve_image(cfg, aws.instances(), &mut findings).await;
    let subnets = check_subnets(cfg, aws.network(), &mut status, &mut findings).await?;
    let vpc = status.vpc_id.clone();
    check_security_groups(cfg, aws.network(), vpc.as_deref(), &mut findings).await?;
    ensure_security_group(cfg, aws.network(), &mut status, &name, &owner_tags).await?;
    let unreachable = ctx.reach.note(&config_key(cfg));
    let network = (&mut status, subnets.as_slice());
    let network = check_network(cfg, aws.network(), network, &mut findings, unreachable).await?;
    let types = check_instance_types(cfg, aws.network(), &mut findings).await?;
    let desired = vec![network, types, credentials.condition];
    conclude(cfg, api, ctx, status, findings, desired, &queue_url).await?;
    if created {
        info!(queue_url, "worker queue ready");
        ctx.event(
            cfg,
            EventType::Normal,
            events::QUEUE_READY,
            "EnsureQueue",
            format!("workers report to {queue_url}"),
        )
        .await;
    }
    // Endpoints, subnets and offerings change outside Kubernetes: look again.
    Ok(Action::requeue(ctx.network_recheck))
}

/// Says on the status, and in an Event, that the configuration's region
/// does not exist or cannot be reached; looks again later.
async fn region_not_ready(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
    f: Finding,
) -> Result<Action> {
    let desired = [
        DesiredCondition::new(READY, false, f.reason, f.message.clone()),
        DesiredCondition::new(STALLED, true, f.reason, f.message.clone()),
    ];
    let event = (EventType::Warning, f.reason, "CheckRegion", f.message);
    let status = base_status(cfg, ctx);
    write_with_event(cfg, api, ctx, status, "NotReady", &desired, event).await?;
    Ok(Action::requeue(ctx.network_recheck))
}

/// Says on the status, and in an Event, that the configuration's accounts
/// cannot be reached; looks again later.
async fn credentials_not_ready(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
    account_id: Option<String>,
    message: String,
) -> Result<Action> {
    let mut status = base_status(cfg, ctx);
    status.account_id = account_id;
    let desired = [
        DesiredCondition::new(READY, false, "CredentialsNotReady", message.clone()),
        DesiredCondition::new(
            CREDENTIALS_READY,
            false,
            events::CANNOT_ASSUME_ROLE,
            message.clone(),
        ),
        DesiredCondition::new(STALLED, true, "CredentialsNotReady", message.clone()),
    ];
    let event = (
        EventType::Warning,
        events::CANNOT_ASSUME_ROLE,
        "CheckCredentials",
        message,
    );
    write_with_event(cfg, api, ctx, status, "NotReady", &desired, event).await?;
    Ok(Action::requeue(ctx.network_recheck))
}

/// Security group: the configured ones, else one Tender manages.
async fn ensure_security_group(
    cfg: &WorkerConfiguration,
    network: Network<'_>,
    status: &mut WorkerConfigurationStatus,
    name: &str,
    owner_tags: &BTreeMap<String, String>,
) -> Result<()> {
    let region = &cfg.spec.region;
    if !cfg.spec.security_group_ids.is_empty() {
        if let Some(old) = status.managed_security_group_id.clone() {
            // No longer needed; deleting fails while a worker still uses it.
            if network.delete_security_group(region, &old).await.is_ok() {
                status.managed_security_group_id = None;
            }
        }
    } else if let Some(vpc) = status.vpc_id.clone() {
        let (ingress, egress) = placement::managed_rules(&cfg.spec.file_level_recovery_cidrs);
        let sg_name = format!("{name}-workers");
        let id = network
            .ensure_security_group(region, &vpc, &sg_name, owner_tags, &ingress, &egress)
            .await?;
        status.managed_security_group_id = Some(id);
    }
    Ok(())
}

/// `Ready` from the findings; writes the status (and the findings' Events)
/// when anything changed.
async fn conclude(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
    mut status: WorkerConfigurationStatus,
    findings: Vec<Finding>,
    checks: Vec<DesiredCondition>,
    queue_url: &str,
) -> Result<()> {
    let ready = match findings.first() {
        None => DesiredCondition::new(
            READY,
            true,
            "Ready",
            format!("workers report to {queue_url}"),
        ),
        Some(f) => DesiredCondition::new(READY, false, f.reason, f.message.clone()),
    };
    let mut desired = vec![ready];
    desired.extend(checks);
    if let Some(f) = findings.first() {
        desired.push(DesiredCondition::new(
            STALLED,
            true,
            f.reason,
            f.message.clone(),
        ));
    }
    status.phase = Some(
        if findings.is_empty() {
            "Ready"
        } else {
            "NotReady"
        }
        .into(),
    );
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        cfg.metadata.generation,
        Timestamp::now(),
    );
    let changed = cfg.status.as_ref() != Some(&status);
    if changed {
        for f in &findings {
            ctx.event(
                cfg,
                EventType::Warning,
                f.reason,
                "Reconcile",
                f.message.clone(),
            )
            .await;
        }
        apply_status(api, cfg, &status, &ctx.metrics).await?;
    }
    Ok(())
}

/// How a configuration's own calls (queue, network, instance cache) reach
/// the account its workers run in: a session named after it.
fn configuration_access(cfg: &WorkerConfiguration) -> Access {
    Access::new(cfg.spec.worker_access(), &[&cfg.name_any()])
}

/// What the credentials check found.
struct Credentials {
    account_id: String,
    identity: CallerIdentity,
    condition: DesiredCondition,
}

/// Checks that Tender can act in the workers' account and, when one is
/// configured, read the production account. `Err` carries the account (if
/// known) and a message that says what to fix.
async fn check_credentials(
    cfg: &WorkerConfiguration,
    aws: &AwsClients,
    ctx: &Context,
) -> std::result::Result<Credentials, (Option<String>, String)> {
    let region = &cfg.spec.region;
    let describe = |role: Option<&AccountAccess>| match role {
        Some(r) => format!("role {}", r.role_arn),
        None => "the controller's own credentials".to_string(),
    };
    let workers = aws.caller_identity(region).await.map_err(|e| {
        (
            None,
            format!(
                "cannot act in the workers' account through {}: {e}; check the role's trust policy (and external ID) and the controller's permissions",
                describe(cfg.spec.worker_access())
            ),
        )
    })?;
    let mut message = format!(
        "workers run in account {} ({})",
        workers.account, workers.arn
    );
    if cfg.spec.account == WorkerAccount::Backup
        && let Some(role) = &cfg.spec.production_account
    {
        let production = ctx
            .aws
            .scoped(&Access::new(Some(role), &[&cfg.name_any()]))
            .await;
        let identity = production.caller_identity(region).await.map_err(|e| {
            (
                Some(workers.account.clone()),
                format!(
                    "cannot read the production account through role {}: {e}; check its trust policy (and external ID)",
                    role.role_arn
                ),
            )
        })?;
        message.push_str(&format!(
            "; protected resources are read in account {}",
            identity.account
        ));
    }
    Ok(Credentials {
        account_id: workers.account.clone(),
        identity: workers,
        condition: DesiredCondition::new(CREDENTIALS_READY, true, "CredentialsReady", message),
    })
}

/// Keeps a configuration that unfinished jobs use: says so on its status
/// and comes back later. `None` when nothing holds the deletion.
async fn hold_deletion(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
) -> Result<Option<Action>> {
    let busy = ctx.workers.unfinished(&config_key(cfg));
    if !busy.is_empty() {
        let message = format!(
            "deletion waits for {} unfinished job(s) that use this configuration: {}",
            busy.len(),
            busy.join(", ")
        );
        let desired = [
            DesiredCondition::new(READY, false, "InUse", message.clone()),
            DesiredCondition::new(RECONCILING, true, "InUse", message.clone()),
        ];
        let event = (
            EventType::Normal,
            events::DELETION_WAITING,
            "DeleteConfiguration",
            message,
        );
        write_with_event(
            cfg,
            api,
            ctx,
            base_status(cfg, ctx),
            "Deleting",
            &desired,
            event,
        )
        .await?;
        return Ok(Some(Action::requeue(DELETION_RECHECK)));
    }
    Ok(None)
}

async fn cleanup(cfg: &WorkerConfiguration, ctx: &Context) -> Result<Action> {
    let aws = ctx.aws.scoped(&configuration_access(cfg)).await;
    if let Some(group_id) = cfg
        .status
        .as_ref()
        .and_then(|s| s.managed_security_group_id.as_deref())
    {
        // Fails (and is retried) while a terminating worker still uses it.
        aws.network()
            .delete_security_group(&cfg.spec.region, group_id)
            .await?;
        info!(group_id, "managed security group deleted");
    }
    if let Some(queue_url) = cfg.status.as_ref().and_then(|s| s.queue_url.as_deref()) {
        ctx.pumps.stop(queue_url);
        aws.queues()
            .delete_queue(&cfg.spec.region, queue_url)
            .await?;
        info!(queue_url, "worker queue deleted");
    }
    Ok(Action::await_change())
}

/// Puts a failed reconcile on the configuration's status and as an Event.
/// Writes a configuration's status with `phase` and `desired` conditions,
/// and publishes `event` (type, reason, action, note), when anything changed.
async fn write_with_event(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
    mut status: WorkerConfigurationStatus,
    phase: &str,
    desired: &[DesiredCondition],
    event: (EventType, &str, &str, String),
) -> Result<()> {
    status.phase = Some(phase.into());
    status.conditions = conditions::merge(
        &status.conditions,
        desired,
        cfg.metadata.generation,
        Timestamp::now(),
    );
    if cfg.status.as_ref() != Some(&status) {
        let (type_, reason, action, note) = event;
        ctx.event(cfg, type_, reason, action, note).await;
        apply_status(api, cfg, &status, &ctx.metrics).await?;
    }
    Ok(())
}

async fn report_failure(
    cfg: &WorkerConfiguration,
    api: &Api<WorkerConfiguration>,
    ctx: &Context,
    e: &Error,
) {
    let message = format!("{e}; Tender retries with backoff");
    let desired = [
        DesiredCondition::new(READY, false, e.category(), message.clone()),
        DesiredCondition::new(STALLED, true, e.category(), message.clone()),
    ];
    let event = (EventType::Warning, e.category(), "Reconcile", message);
    let _ = write_with_event(
        cfg,
        api,
        ctx,
        base_status(cfg, ctx),
        "NotReady",
        &desired,
        event,
    )
    .await;
}
