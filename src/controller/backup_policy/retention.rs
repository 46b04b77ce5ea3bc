//! A policy's retention runs: one RetentionJob per scheduled time of
//! `spec.retention.schedule` (CronJob's rules, `Forbid`), named like the
//! policy's backup runs and owned by it. A run waits while another
//! policy's run on the same repository in this namespace is active, as
//! this controller's cache shows it, and the policy says so. That keeps
//! runs apart where it can; it is not a lock (two policies reconciled at
//! the same moment, or a RetentionJob made by hand, may still overlap),
//! and nothing relies on it: each collection is safe on its own against
//! any other and against backups (`mover::gc`).

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use crate::api::conditions::DesiredCondition;
use crate::api::restore_point::{DELETE_ANNOTATION, REPOSITORY_LABEL};
use crate::api::{
    BackupPolicy, BackupPolicyStatus, JobLimits, LastRetention, Phase, RestorePoint, RetentionJob,
    RetentionJobSpec,
};
use crate::controller::retention_job::EXPECTED_CHUNKS_ANNOTATION;
use crate::controller::{Context, Result};
use crate::names::POLICY_LABEL;
use crate::policy::runs::{self, ConcurrencyPolicy, Observed};
use crate::policy::schedule::Schedule;

/// The condition a policy has while its last retention run failed.
pub const RETENTION_FAILED: &str = "RetentionFailed";

/// Retention's schedule when the policy names none.
pub const DEFAULT_SCHEDULE: &str = "@daily";

/// Finished retention runs a policy keeps (the newest; older ones'
/// RetentionJobs are deleted).
const HISTORY: usize = 3;

/// The retention schedule and rules of a policy, checked.
pub struct Parsed {
    pub schedule: Schedule,
}

/// Checks `spec.retention`; `None` when the policy has none.
pub fn parse(policy: &BackupPolicy) -> std::result::Result<Option<Parsed>, String> {
    let Some(retention) = &policy.spec.retention else {
        return Ok(None);
    };
    crate::policy::retention::Rules::of(&retention.rules)
        .map_err(|e| format!("spec.retention: {e}"))?;
    let text = retention.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let schedule =
        Schedule::parse(text).map_err(|e| format!("spec.retention.schedule {text:?}: {e}"))?;
    Ok(Some(Parsed { schedule }))
}

/// Starts the due retention run, prunes old ones and records the last one
/// in `status`. Returns when the next run is due, and the condition to
/// show.
pub async fn reconcile(
    ctx: &Context,
    policy: &BackupPolicy,
    parsed: std::result::Result<Option<&Parsed>, &str>,
    zone: &TimeZone,
    status: &mut BackupPolicyStatus,
    now: Timestamp,
) -> Result<(Option<Timestamp>, Option<DesiredCondition>)> {
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<RetentionJob> = Api::namespaced(ctx.client.clone(), &ns);
    let own = super::owned(policy, &ns, ctx.retentions.state());
    let (active, last) =
        super::keep_history(&api, &own, HISTORY, |j| (phase(j), completed_at(j))).await?;
    if let Some(last) = last {
        status.last_retention = Some(last_retention(&last));
    }
    let parsed = match parsed {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            status.active_retention = active.first().map(|j| j.name_any());
            status.next_retention_time = None;
            status.retention_preview = None;
            return Ok((None, None));
        }
        // Backups go on; only retention waits for the fix.
        Err(message) => {
            status.active_retention = active.first().map(|j| j.name_any());
            status.next_retention_time = None;
            let condition = DesiredCondition::new(
                RETENTION_FAILED,
                true,
                "InvalidRetention",
                format!("{message}; no retention run starts until it is fixed (backups go on)"),
            );
            return Ok((None, Some(condition)));
        }
    };
    let mut active: Vec<String> = active.iter().map(|j| j.name_any()).collect();
    let decision = runs::decide(&Observed {
        schedule: &parsed.schedule,
        zone,
        created: policy
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now),
        last_scheduled: status.last_retention_schedule_time.as_ref().map(|t| t.0),
        starting_deadline_seconds: None,
        concurrency: ConcurrencyPolicy::Forbid,
        suspend: policy.spec.suspend,
        active: &active,
        now,
    });
    let mut waiting = None;
    let region = super::repository_region(ctx, policy);
    if let Some(due) = decision.start {
        if region.is_none() {
            // Its region is where the worker runs: without it the run
            // could only fail; it starts once the repository is there.
            waiting = Some((
                "RepositoryNotFound",
                format!(
                    "the retention run of {} waits: BackupRepository {:?} does not exist; create it or fix spec.repositoryRef",
                    due.to_zoned(zone.clone()),
                    policy.spec.repository_ref.name
                ),
            ));
        } else if let Some(other) = busy_repository(ctx, policy, &ns) {
            info!(
                other,
                "retention run waits for another policy's run on the same repository"
            );
            waiting = Some((
                "WaitingForAnotherRun",
                format!(
                    "the retention run of {} waits for RetentionJob {other} (another policy's) on the same repository to finish",
                    due.to_zoned(zone.clone())
                ),
            ));
        } else {
            let name = runs::job_name(&policy.name_any(), due);
            let region = region.unwrap_or_default();
            let mut job = job_for(ctx, policy, (&name, due), region, status)?;
            job.spec.delete_restore_points = asked_to_delete(ctx, policy, &ns).await?;
            match api.create(&PostParams::default(), &job).await {
                Ok(_) => {
                    ctx.event(
                        policy,
                        EventType::Normal,
                        "RetentionStarted",
                        "Retention",
                        format!(
                            "RetentionJob {name} expires restore points and collects chunks for the run of {}",
                            due.to_zoned(zone.clone())
                        ),
                    )
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            status.last_retention_schedule_time = Some(Time(due));
            if !active.contains(&name) {
                active.push(name);
            }
        }
    }
    status.active_retention = active.first().cloned();
    status.next_retention_time = decision.next.map(Time);
    let at = decision.next.unwrap_or(now);
    status.retention_preview = super::preview::preview(ctx, policy, zone, at).await?;
    let condition = match &status.last_retention {
        Some(last) if last.phase == "Failed" => Some(DesiredCondition::new(
            RETENTION_FAILED,
            true,
            "RetentionRunFailed",
            format!(
                "retention run {} failed: {}; restore points stay until a run succeeds",
                last.job,
                last.message.as_deref().unwrap_or("see the RetentionJob")
            ),
        )),
        _ => Some(match waiting {
            Some((reason, message)) => {
                DesiredCondition::new(RETENTION_FAILED, false, reason, message)
            }
            None => DesiredCondition::new(
                RETENTION_FAILED,
                false,
                "RetentionRunsSucceed",
                String::new(),
            ),
        }),
    };
    Ok((decision.next, condition))
}

/// Restore points of the policy's repository in this namespace whose
/// RestorePoint is annotated `tender.dev/delete: "true"` (the first 100).
async fn asked_to_delete(ctx: &Context, policy: &BackupPolicy, ns: &str) -> Result<Vec<String>> {
    let api: Api<RestorePoint> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{REPOSITORY_LABEL}={}", policy.spec.repository_ref.name);
    let mut ids: Vec<String> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.annotations().get(DELETE_ANNOTATION).map(String::as_str) == Some("true"))
        .map(|p| p.spec.id)
        .collect();
    ids.sort();
    ids.truncate(MAX_DELETIONS);
    Ok(ids)
}

/// Restore points one run deletes by request at most (the rest go in the
/// next run): the task travels in the worker's user data (16 KiB).
const MAX_DELETIONS: usize = 100;

fn phase(job: &RetentionJob) -> Phase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn completed_at(job: &RetentionJob) -> Timestamp {
    job.status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// An active RetentionJob of another owner on the same repository in this
/// namespace, if any.
fn busy_repository(ctx: &Context, policy: &BackupPolicy, ns: &str) -> Option<String> {
    let own = policy.name_any();
    ctx.retentions
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns))
        .filter(|j| j.labels().get(POLICY_LABEL) != Some(&own))
        .filter(|j| !phase(j).is_finished())
        .find(|j| {
            j.spec.repository_ref.as_ref().map(|r| &r.name)
                == Some(&policy.spec.repository_ref.name)
        })
        .map(|j| j.name_any())
}

fn last_retention(job: &RetentionJob) -> LastRetention {
    let status = job.status.clone().unwrap_or_default();
    let worker = status.workers.first();
    let message = (status.phase != Phase::Succeeded)
        .then(|| worker.and_then(|w| w.message.clone()))
        .flatten();
    LastRetention {
        job: job.name_any(),
        phase: format!("{:?}", status.phase),
        completion_time: status.completion_time.clone(),
        message,
        outcome: worker.and_then(|w| w.outcome.clone()),
    }
}

/// The RetentionJob of one run: the policy's rules and zone, in the
/// repository's region, sized by the chunks the last run counted.
fn job_for(
    ctx: &Context,
    policy: &BackupPolicy,
    (name, due): (&str, Timestamp),
    region: String,
    status: &BackupPolicyStatus,
) -> Result<RetentionJob> {
    let mut metadata = super::run_metadata(policy, name, due)?;
    if let Some(outcome) = status
        .last_retention
        .as_ref()
        .and_then(|l| l.outcome.as_ref())
    {
        metadata.annotations.get_or_insert_default().insert(
            EXPECTED_CHUNKS_ANNOTATION.to_string(),
            outcome.stored_chunks.to_string(),
        );
    }
    let rules = policy
        .spec
        .retention
        .as_ref()
        .map(|r| r.rules.clone())
        .unwrap_or_default();
    Ok(RetentionJob {
        metadata,
        spec: RetentionJobSpec {
            repository_ref: Some(policy.spec.repository_ref.clone()),
            // The worker runs next to the data.
            worker_configuration_ref: super::configuration_in(ctx, policy, &region),
            region,
            policy: Some(policy.name_any()),
            retention: rules,
            time_zone: Some(policy.spec.time_zone.clone()),
            delete_restore_points: Vec::new(),
            limits: JobLimits::default(),
            suspend: false,
        },
        status: None,
    })
}
