//! BackupPolicy: start each scheduled run as a BackupJob owned by the
//! policy (CronJob's rules, `crate::policy::runs`), look up the resources
//! it protects at every run, prune finished runs past the history limits,
//! and write what happened to the policy's status.
//!
//! A run's job is named after its scheduled minute and the policy's
//! `lastScheduleTime` moves only once that job exists: a controller that
//! restarts (or reads a stale cache) finds the job already there and never
//! starts a run twice; one that was down during a run's minute starts it
//! when it comes back, within `startingDeadlineSeconds`.

mod history;
mod preview;
mod resources;
mod retention;
mod verification;

use resources::{Found, find_resources, record_missing};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{DeleteParams, ObjectMeta, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument};

use super::{Context, Error, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, STALLED};
use crate::api::{
    BackupJob, BackupJobSpec, BackupPolicy, BackupPolicyStatus, BackupResource,
    DB_CLUSTER_RESOURCE_PREFIX, DB_DUMP_RESOURCE_PREFIX, DB_INSTANCE_RESOURCE_PREFIX, JobLimits,
    Phase, PostgresSource,
};
use crate::names::{POLICY_LABEL, SCHEDULED_TIME_ANNOTATION};
use crate::policy::runs::{self, Decision, Observed, Skipped};
use crate::policy::schedule::Schedule;

/// Event reasons of policies.
pub mod reasons {
    pub const RUN_STARTED: &str = "RunStarted";
    pub const RUN_SKIPPED: &str = "RunSkipped";
    pub const RUNS_MISSED: &str = "RunsMissed";
    pub const RUN_REPLACED: &str = "RunReplaced";
    pub const NO_RESOURCES: &str = "NoResources";
    pub const RESOURCES_MISSING: &str = "ResourcesMissing";
    pub const INVALID_POLICY: &str = "InvalidPolicy";
    pub const NO_CONFIGURATION: &str = "WorkerConfigurationNotFound";
    pub const NAMESPACE_NOT_ADMITTED: &str = "NamespaceNotAdmitted";
    pub const TOO_MANY_RESOURCES: &str = "TooManyResources";
    pub const DB_CLUSTERS_NOT_LISTED: &str = "DBClustersNotListed";
}

/// The most resources one BackupJob takes (its `spec.resources` limit).
const MAX_RESOURCES: usize = 100;

/// The condition types only policies have.
pub const RUNS_MISSED: &str = "RunsMissed";
pub const RESOURCES_MISSING: &str = "ResourcesMissing";

/// The longest a policy waits between reconciles (its resources' ages).
const REFRESH: Duration = Duration::from_secs(300);

/// A policy's spec, checked.
struct Parsed {
    schedule: Schedule,
    zone: TimeZone,
    /// `Err`: what is wrong with `spec.retention` (backups go on).
    retention: std::result::Result<Option<retention::Parsed>, String>,
}

/// The longest policy name: its jobs are `<policy>-<minute>` (CronJob's
/// limit too).
const MAX_NAME: usize = 52;

fn parse(policy: &BackupPolicy) -> std::result::Result<Parsed, String> {
    let name = policy.name_any();
    if name.len() > MAX_NAME {
        return Err(format!(
            "the name {name:?} is longer than {MAX_NAME} characters: each run's BackupJob is named <policy>-<scheduled minute>; create the policy with a shorter name"
        ));
    }
    let schedule = Schedule::parse(&policy.spec.schedule)
        .map_err(|e| format!("spec.schedule {:?}: {e}", policy.spec.schedule))?;
    let zone = TimeZone::get(&policy.spec.time_zone).map_err(|_| {
        format!(
            "spec.timeZone {:?} is not an IANA time zone (such as Europe/Berlin or America/New_York)",
            policy.spec.time_zone
        )
    })?;
    let retention = retention::parse(policy);
    Ok(Parsed {
        schedule,
        zone,
        retention,
    })
}

#[instrument(skip_all, fields(policy = policy.name_any()))]
pub async fn reconcile(policy: Arc<BackupPolicy>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .get_or_create(&super::kind_labels("BackupPolicy"))
        .inc();
    // A controller that has just started decides nothing on caches it has
    // not listed yet: a run due now would find no configuration (and be
    // reported missed), and jobs or retention runs would look absent.
    super::garbage_collector::wait_until_ready(&ctx.configurations).await;
    super::garbage_collector::wait_until_ready(&ctx.repositories).await;
    super::garbage_collector::wait_until_ready(&ctx.jobs).await;
    super::garbage_collector::wait_until_ready(&ctx.retentions).await;
    super::garbage_collector::wait_until_ready(&ctx.verifications).await;
    let ns = policy
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<BackupPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let before = policy.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.observed_generation = policy.metadata.generation;
    let now = Timestamp::now();
    let parsed = match parse(&policy) {
        Ok(p) => p,
        Err(message) => {
            status.phase = Some("Invalid".into());
            status.conditions = conditions::merge(
                &status.conditions,
                &[
                    DesiredCondition::new(READY, false, reasons::INVALID_POLICY, &message),
                    DesiredCondition::new(STALLED, true, reasons::INVALID_POLICY, &message),
                ],
                policy.metadata.generation,
                now,
            );
            if status != before {
                ctx.event(
                    &*policy,
                    EventType::Warning,
                    reasons::INVALID_POLICY,
                    "Validate",
                    message,
                )
                .await;
                apply_status(&api, &*policy, &status, &ctx.metrics).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let jobs = own_jobs(&ctx, &policy, &ns);
    let job_refs: Vec<&BackupJob> = jobs.iter().map(Arc::as_ref).collect();
    let runs = history::runs(
        &job_refs,
        policy.spec.successful_jobs_history_limit,
        policy.spec.failed_jobs_history_limit,
    );
    let decision = runs::decide(&Observed {
        schedule: &parsed.schedule,
        zone: &parsed.zone,
        created: policy
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now),
        last_scheduled: before.last_schedule_time.as_ref().map(|t| t.0),
        starting_deadline_seconds: policy.spec.starting_deadline_seconds,
        concurrency: policy.spec.concurrency_policy,
        suspend: policy.spec.suspend,
        active: &runs.active,
        now,
    });
    let mut active = runs.active.clone();
    let mut run_conditions = Vec::new();
    carry_out(
        &ctx,
        &policy,
        &parsed,
        &decision,
        &mut status,
        &mut active,
        &mut run_conditions,
    )
    .await?;
    let jobs_api: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
    for name in &runs.prune {
        delete_run(&jobs_api, name).await?;
    }
    let (next_retention, retention_condition) = retention::reconcile(
        &ctx,
        &policy,
        parsed
            .retention
            .as_ref()
            .map(Option::as_ref)
            .map_err(String::as_str),
        &parsed.zone,
        &mut status,
        now,
    )
    .await?;
    let (next_verification, verification_condition) =
        verification::reconcile(&ctx, &policy, &parsed.zone, &mut status, now).await?;
    write_status(
        &policy,
        &parsed,
        (&decision, &runs, active),
        (
            run_conditions,
            retention_condition
                .into_iter()
                .chain(verification_condition)
                .collect(),
        ),
        &mut status,
        now,
    );
    if status != before {
        apply_status(&api, &*policy, &status, &ctx.metrics).await?;
    }
    let next = [decision.next, next_retention, next_verification]
        .into_iter()
        .flatten()
        .min();
    Ok(Action::requeue(requeue_after(next, Timestamp::now())))
}

/// How long until the next run is due (capped at [`REFRESH`]); a timer
/// never fires early, so the run starts within a moment of its minute.
fn requeue_after(next: Option<Timestamp>, now: Timestamp) -> Duration {
    next.and_then(|n| Duration::try_from(n.duration_since(now)).ok())
        .unwrap_or(REFRESH)
        .min(REFRESH)
        .max(Duration::from_millis(100))
}

/// The policy's own objects of a kind (its runs' BackupJobs or
/// RetentionJobs) in `all`, from a shared cache: its label and its UID as
/// owner.
fn owned<K: Resource>(policy: &BackupPolicy, ns: &str, all: Vec<Arc<K>>) -> Vec<Arc<K>> {
    let uid = policy.uid();
    all.into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns))
        .filter(|j| j.labels().get(POLICY_LABEL) == Some(&policy.name_any()))
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect()
}

/// The policy's own BackupJobs, from the shared job cache.
fn own_jobs(ctx: &Context, policy: &BackupPolicy, ns: &str) -> Vec<Arc<BackupJob>> {
    owned(policy, ns, ctx.jobs.state())
}

/// A policy's runs of one kind split into the active ones and the newest
/// finished one; finished ones beyond the newest `history` are deleted.
/// `phase` says a run's phase and when it completed.
async fn keep_history<K>(
    api: &Api<K>,
    own: &[Arc<K>],
    history: usize,
    phase: impl Fn(&K) -> (Phase, Timestamp),
) -> Result<(Vec<Arc<K>>, Option<Arc<K>>)>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (active, mut finished): (Vec<_>, Vec<_>) =
        own.iter().cloned().partition(|j| !phase(j).0.is_finished());
    finished.sort_by_key(|j| std::cmp::Reverse(phase(j).1));
    for old in finished.iter().skip(history) {
        delete_run(api, &old.name_any()).await?;
    }
    Ok((active, finished.into_iter().next()))
}

/// The region of the policy's repository, if it exists: where its
/// retention and verification workers run.
fn repository_region(ctx: &Context, policy: &BackupPolicy) -> Option<String> {
    ctx.repositories
        .get(&ObjectRef::new(&policy.spec.repository_ref.name))
        .map(|r| r.spec.region.clone())
}

/// The WorkerConfiguration a run next to the repository uses: the
/// policy's when it is in `region`, else (`None`) that region's default.
fn configuration_in(
    ctx: &Context,
    policy: &BackupPolicy,
    region: &str,
) -> Option<crate::api::LocalObjectReference> {
    policy.spec.worker_configuration_ref.clone().filter(|r| {
        ctx.configurations
            .get(&ObjectRef::new(&r.name))
            .is_none_or(|c| c.spec.region == region)
    })
}

/// The metadata of one of the policy's runs (of any kind): its name, the
/// policy's label, the run's scheduled time, and the policy as its
/// controlling owner.
fn run_metadata(policy: &BackupPolicy, name: &str, due: Timestamp) -> Result<ObjectMeta> {
    let owner = OwnerReference {
        api_version: BackupPolicy::api_version(&()).to_string(),
        kind: BackupPolicy::kind(&()).to_string(),
        name: policy.name_any(),
        uid: policy.uid().ok_or(Error::MissingObjectKey("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: policy.namespace(),
        labels: Some(BTreeMap::from([(
            POLICY_LABEL.to_string(),
            policy.name_any(),
        )])),
        annotations: Some(BTreeMap::from([(
            SCHEDULED_TIME_ANNOTATION.to_string(),
            due.to_string(),
        )])),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// Deletes one of the policy's runs (gone already is fine); its workers
/// go through the run's own finalizer.
async fn delete_run<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Does what `decision` says: ends replaced runs, starts the due one (its
/// resources looked up now), and says what was skipped.
async fn carry_out(
    ctx: &Context,
    policy: &BackupPolicy,
    parsed: &Parsed,
    decision: &Decision,
    status: &mut BackupPolicyStatus,
    active: &mut Vec<String>,
    run_conditions: &mut Vec<DesiredCondition>,
) -> Result<()> {
    let ns = policy.namespace().unwrap_or_default();
    let jobs_api: Api<BackupJob> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some((due, why)) = &decision.skipped {
        let local = due.to_zoned(parsed.zone.clone());
        let message = match why {
            Skipped::StillActive { active } => format!(
                "the run of {local} waits: run {active} is still active and concurrencyPolicy is Forbid; it starts when that one ends{}",
                deadline_note(policy)
            ),
            Skipped::MissedDeadline => format!(
                "the run of {local} was not started within startingDeadlineSeconds ({}s) of its time",
                policy.spec.starting_deadline_seconds.unwrap_or_default()
            ),
        };
        run_conditions.push(DesiredCondition::new(
            RUNS_MISSED,
            true,
            reasons::RUN_SKIPPED,
            &message,
        ));
        if !skip_already_said(status, &message) {
            ctx.event(
                policy,
                EventType::Warning,
                reasons::RUN_SKIPPED,
                "Schedule",
                message,
            )
            .await;
        }
    }
    let Some(due) = decision.start else {
        return Ok(());
    };
    for name in &decision.replace {
        delete_run(&jobs_api, name).await?;
        active.retain(|a| a != name);
        let note =
            format!("run {name} was deleted to start the run of {due} (concurrencyPolicy Replace)");
        ctx.event(
            policy,
            EventType::Normal,
            reasons::RUN_REPLACED,
            "Schedule",
            note,
        )
        .await;
    }
    let found = match find_resources(ctx, policy).await {
        Ok(found) => found,
        Err(Found::NoConfiguration(reason, message)) => {
            run_conditions.push(DesiredCondition::new(RUNS_MISSED, true, reason, &message));
            ctx.event(policy, EventType::Warning, reason, "Schedule", message)
                .await;
            return Ok(());
        }
        Err(Found::Failed(e)) => return Err(e),
    };
    record_missing(ctx, policy, status, &found).await;
    for (reason, message) in &found.warnings {
        ctx.event(
            policy,
            EventType::Warning,
            reason,
            "Schedule",
            message.clone(),
        )
        .await;
    }
    let name = runs::job_name(&policy.name_any(), due);
    status.missed_runs = status.missed_runs.saturating_add(decision.missed as i64);
    if decision.missed > 0 {
        let message = format!(
            "{} run(s) before the one of {} never started (controller down, or a run held by Forbid); only the newest is started (CronJob's rule)",
            decision.missed,
            due.to_zoned(parsed.zone.clone())
        );
        run_conditions.push(DesiredCondition::new(
            RUNS_MISSED,
            true,
            reasons::RUNS_MISSED,
            &message,
        ));
        ctx.event(
            policy,
            EventType::Warning,
            reasons::RUNS_MISSED,
            "Schedule",
            message,
        )
        .await;
    }
    status.last_schedule_time = Some(Time(due));
    status.last_schedule_time_local = Some(due.to_zoned(parsed.zone.clone()).to_string());
    if found.ids.is_empty() {
        let message = format!(
            "the run of {} found nothing to back up: nothing in spec.resources exists, and no instance or DB instance in {} matches spec.instanceSelectors or spec.databaseSelectors",
            due.to_zoned(parsed.zone.clone()),
            policy.spec.region
        );
        run_conditions.push(DesiredCondition::new(
            RUNS_MISSED,
            true,
            reasons::NO_RESOURCES,
            &message,
        ));
        ctx.event(
            policy,
            EventType::Warning,
            reasons::NO_RESOURCES,
            "Schedule",
            message,
        )
        .await;
        return Ok(());
    }
    status.protected_resources = found.ids.len().min(MAX_RESOURCES) as i32;
    if found.ids.len() > MAX_RESOURCES {
        let left_out = &found.ids[MAX_RESOURCES..];
        let message = format!(
            "{} resources are protected but a run backs up at most {MAX_RESOURCES}; left out of the run of {}: {}; split the policy (narrower instanceSelectors or databaseSelectors)",
            found.ids.len(),
            due.to_zoned(parsed.zone.clone()),
            left_out.join(", ")
        );
        run_conditions.push(DesiredCondition::new(
            RUNS_MISSED,
            true,
            reasons::TOO_MANY_RESOURCES,
            &message,
        ));
        ctx.event(
            policy,
            EventType::Warning,
            reasons::TOO_MANY_RESOURCES,
            "Schedule",
            message,
        )
        .await;
    }
    let job = job_for(policy, &name, due, &found.ids)?;
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(_) => {
            info!(
                job = name,
                resources = job.spec.resources.len(),
                "run started"
            );
            let note = format!(
                "BackupJob {name} backs up {} resource(s) for the run of {}",
                job.spec.resources.len(),
                due.to_zoned(parsed.zone.clone())
            );
            ctx.event(
                policy,
                EventType::Normal,
                reasons::RUN_STARTED,
                "Schedule",
                note,
            )
            .await;
        }
        // Made already: by this controller before a restart, or seen late
        // in a stale cache. The run counts once.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    if !active.contains(&name) {
        active.push(name);
    }
    status.resources = history::protected_resources(
        &status.resources,
        &found.sources,
        &BTreeMap::new(),
        Timestamp::now(),
    );
    Ok(())
}

fn deadline_note(policy: &BackupPolicy) -> String {
    match policy.spec.starting_deadline_seconds {
        Some(s) => format!(" (if within startingDeadlineSeconds, {s}s)"),
        None => String::new(),
    }
}

/// Whether the status says this skip already (an Event per skip, not per
/// reconcile).
fn skip_already_said(status: &BackupPolicyStatus, message: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == RUNS_MISSED && c.message == message)
}

/// The BackupJob resource of ID `id` (as `FoundResources` has it): an
/// instance, a DB snapshot's DB instance (`rds-db-`), or a dump's
/// (`rds-pg-`, with the databases `spec.resources` names for it).
fn resource_of(policy: &BackupPolicy, id: &str) -> BackupResource {
    let mut resource = BackupResource {
        instance_id: None,
        snapshot_id: None,
        db_instance_id: None,
        db_cluster_id: None,
        postgres: None,
        region: policy.spec.region.clone(),
    };
    if let Some(cluster) = id.strip_prefix(DB_CLUSTER_RESOURCE_PREFIX) {
        resource.db_cluster_id = Some(cluster.to_string());
    } else if let Some(db) = id.strip_prefix(DB_INSTANCE_RESOURCE_PREFIX) {
        resource.db_instance_id = Some(db.to_string());
    } else if let Some(db) = id.strip_prefix(DB_DUMP_RESOURCE_PREFIX) {
        let named = policy
            .spec
            .resources
            .iter()
            .find_map(|r| r.postgres.as_ref().filter(|p| p.db_instance_id == db));
        resource.postgres = Some(named.cloned().unwrap_or(PostgresSource {
            db_instance_id: db.to_string(),
            databases: Vec::new(),
        }));
    } else {
        resource.instance_id = Some(id.to_string());
    }
    resource
}

/// The BackupJob of one run.
fn job_for(policy: &BackupPolicy, name: &str, due: Timestamp, ids: &[String]) -> Result<BackupJob> {
    let limits = policy.spec.job_limits.clone().unwrap_or_default();
    let defaults = JobLimits::default();
    Ok(BackupJob {
        metadata: run_metadata(policy, name, due)?,
        spec: BackupJobSpec {
            worker_configuration_ref: policy.spec.worker_configuration_ref.clone(),
            resources: ids
                .iter()
                .take(MAX_RESOURCES)
                .map(|id| resource_of(policy, id))
                .collect(),
            repository_ref: Some(policy.spec.repository_ref.clone()),
            copy_to: None,
            limits: JobLimits {
                backoff_limit: limits.backoff_limit.unwrap_or(defaults.backoff_limit),
                active_deadline_seconds: limits.active_deadline_seconds,
                ttl_seconds_after_finished: None,
            },
            suspend: false,
        },
        status: None,
    })
}

/// Fills the status from the runs and the decision.
fn write_status(
    policy: &BackupPolicy,
    parsed: &Parsed,
    (decision, runs, active): (&Decision, &history::Runs, Vec<String>),
    (run_conditions, upkeep_conditions): (Vec<DesiredCondition>, Vec<DesiredCondition>),
    status: &mut BackupPolicyStatus,
    now: Timestamp,
) {
    status.active = active;
    if let Some(t) = runs.last_successful
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|old| old.0 < t)
    {
        status.last_successful_time = Some(Time(t));
    }
    status.next_schedule_time = decision.next.map(Time);
    status.next_schedule_time_local = decision
        .next
        .map(|t| t.to_zoned(parsed.zone.clone()).to_string());
    let sources: BTreeMap<String, &'static str> = BTreeMap::new();
    status.resources = history::protected_resources(&status.resources, &sources, &runs.newest, now);
    status.phase = Some(
        if policy.spec.suspend {
            "Suspended"
        } else if !status.active.is_empty() {
            "Running"
        } else {
            "Scheduled"
        }
        .into(),
    );
    let next = decision
        .next
        .map(|t| t.to_zoned(parsed.zone.clone()).to_string())
        .unwrap_or_else(|| "never (the schedule names no time in the next five years)".into());
    let ready = if policy.spec.suspend {
        DesiredCondition::new(
            READY,
            true,
            "Suspended",
            "the policy is suspended: no run starts until spec.suspend is false",
        )
    } else {
        DesiredCondition::new(READY, true, "Scheduled", format!("next run {next}"))
    };
    let mut desired = vec![
        ready,
        DesiredCondition::new(STALLED, false, "Valid", String::new()),
    ];
    // A skip or miss stays said until a run starts on time.
    match run_conditions.into_iter().next() {
        Some(c) => desired.push(c),
        None if decision.start.is_some() => {}
        None => {
            if let Some(c) = status
                .conditions
                .iter()
                .find(|c| c.type_ == RUNS_MISSED && c.status == "True")
            {
                desired.push(DesiredCondition::new(
                    RUNS_MISSED,
                    true,
                    c.reason.clone(),
                    c.message.clone(),
                ));
            }
        }
    }
    desired.extend(upkeep_conditions);
    if !status.missing_resources.is_empty() {
        let ids: Vec<&str> = status
            .missing_resources
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        desired.push(DesiredCondition::new(
            RESOURCES_MISSING,
            true,
            reasons::RESOURCES_MISSING,
            format!(
                "not found at the last run: {} (see status.missingResources)",
                ids.join(", ")
            ),
        ));
    }
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        policy.metadata.generation,
        now,
    );
}

#[cfg(test)]
mod tests;
