//! A policy's verification runs: one VerificationJob per scheduled time of
//! `spec.verification.schedule` (CronJob's rules, `Forbid`), named like
//! the policy's other runs and owned by it. A run reads back the newest
//! restore point of each of the policy's resources as the catalog lists
//! them (but DB snapshots', which RDS keeps), those verified longest ago first (at most 50 a run: with more
//! resources, the next runs take the rest).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::api::conditions::DesiredCondition;
use crate::api::restore_point::REPOSITORY_LABEL;
use crate::api::verification_job::{MAX_RESTORE_POINTS, VerifiedRestorePoint};
use crate::api::{
    BackupPolicy, BackupPolicyStatus, JobLimits, LastVerificationRun, Phase, RestorePoint,
    VerificationJob, VerificationJobSpec, VerificationResult,
};
use crate::controller::{Context, Result};
use crate::policy::runs::{self, ConcurrencyPolicy, Observed};
use crate::policy::schedule::Schedule;

/// The condition a policy has while its last verification run found a
/// restore point damaged (or could not read one).
pub const VERIFICATION_FAILED: &str = "VerificationFailed";

/// Verification's schedule when the policy names none.
pub const DEFAULT_SCHEDULE: &str = "@weekly";

/// Finished verification runs a policy keeps.
const HISTORY: usize = 3;

/// Restore points a run's outcome names at most.
const NAMED: usize = 10;

/// Checks `spec.verification`; `None` when the policy has none.
pub fn parse(policy: &BackupPolicy) -> std::result::Result<Option<Schedule>, String> {
    let Some(verification) = &policy.spec.verification else {
        return Ok(None);
    };
    let text = verification.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    Schedule::parse(text)
        .map(Some)
        .map_err(|e| format!("spec.verification.schedule {text:?}: {e}"))
}

/// Starts the due verification run, prunes old ones and records the last
/// one in `status`. Returns when the next run is due, and the condition
/// to show.
pub async fn reconcile(
    ctx: &Context,
    policy: &BackupPolicy,
    zone: &TimeZone,
    status: &mut BackupPolicyStatus,
    now: Timestamp,
) -> Result<(Option<Timestamp>, Option<DesiredCondition>)> {
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<VerificationJob> = Api::namespaced(ctx.client.clone(), &ns);
    let own = super::owned(policy, &ns, ctx.verifications.state());
    let (active, last) = super::keep_history(&api, &own, HISTORY, job_phase).await?;
    if let Some(last) = last {
        status.last_verification = Some(last_run(&last));
    }
    let mut active: Vec<String> = active.iter().map(|j| j.name_any()).collect();
    let schedule = match parse(policy) {
        Ok(Some(schedule)) => schedule,
        Ok(None) => {
            status.active_verification = active.first().cloned();
            status.next_verification_time = None;
            return Ok((None, None));
        }
        Err(message) => {
            status.active_verification = active.first().cloned();
            status.next_verification_time = None;
            let condition = DesiredCondition::new(
                VERIFICATION_FAILED,
                true,
                "InvalidVerification",
                format!("{message}; no verification run starts until it is fixed (backups go on)"),
            );
            return Ok((None, Some(condition)));
        }
    };
    let decision = runs::decide(&Observed {
        schedule: &schedule,
        zone,
        created: policy
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now),
        last_scheduled: status.last_verification_schedule_time.as_ref().map(|t| t.0),
        starting_deadline_seconds: None,
        concurrency: ConcurrencyPolicy::Forbid,
        suspend: policy.spec.suspend,
        active: &active,
        now,
    });
    let mut waiting = None;
    if let Some(due) = decision.start {
        let local = due.to_zoned(zone.clone());
        match super::repository_region(ctx, policy) {
            // The workers run in the repository's region: without it the
            // run could only fail; it starts once the repository is there.
            None => {
                waiting = Some((
                    "RepositoryNotFound",
                    format!(
                        "the verification run of {local} waits: BackupRepository {:?} does not exist; create it or fix spec.repositoryRef",
                        policy.spec.repository_ref.name
                    ),
                ));
            }
            Some(region) => {
                let points = newest_restore_points(ctx, policy, &ns).await?;
                if points.is_empty() {
                    // Nothing to read yet: the run is spent, and says so.
                    waiting = Some((
                        "NothingToVerify",
                        format!(
                            "the verification run of {local} found no restore point of this policy in the catalog to read back (DB snapshots' restore points are not: RDS keeps their data)"
                        ),
                    ));
                } else {
                    let name = runs::job_name(&policy.name_any(), due);
                    let job = job_for(ctx, policy, (&name, due), region, points)?;
                    match api.create(&PostParams::default(), &job).await {
                        Ok(_) => {
                            let note = format!(
                                "VerificationJob {name} reads back {} restore point(s) for the run of {local}",
                                job.spec.restore_points.len()
                            );
                            ctx.event(
                                policy,
                                EventType::Normal,
                                "VerificationStarted",
                                "Verify",
                                note,
                            )
                            .await;
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                    if !active.contains(&name) {
                        active.push(name);
                    }
                }
                status.last_verification_schedule_time = Some(Time(due));
            }
        }
    }
    status.active_verification = active.first().cloned();
    status.next_verification_time = decision.next.map(Time);
    let condition = match &status.last_verification {
        Some(last) if last.damaged > 0 => DesiredCondition::new(
            VERIFICATION_FAILED,
            true,
            "RestorePointDamaged",
            format!(
                "verification run {} found {} restore point(s) damaged ({}): {}; restore from another restore point of those resources, take a new backup, and find out what changed the repository",
                last.job,
                last.damaged,
                last.damaged_restore_points.join(", "),
                last.message.as_deref().unwrap_or("see the VerificationJob")
            ),
        ),
        Some(last) if last.unchecked > 0 => DesiredCondition::new(
            VERIFICATION_FAILED,
            true,
            "VerificationRunFailed",
            format!(
                "verification run {} could not check {} restore point(s): {}; nothing is known to be damaged, and the next run tries again",
                last.job,
                last.unchecked,
                last.message.as_deref().unwrap_or("see the VerificationJob")
            ),
        ),
        _ => match waiting {
            Some((reason, message)) => {
                DesiredCondition::new(VERIFICATION_FAILED, false, reason, message)
            }
            None => DesiredCondition::new(
                VERIFICATION_FAILED,
                false,
                "RestorePointsVerified",
                String::new(),
            ),
        },
    };
    Ok((decision.next, Some(condition)))
}

fn job_phase(job: &VerificationJob) -> (Phase, Timestamp) {
    let status = job.status.as_ref();
    (
        status.map(|s| s.phase).unwrap_or_default(),
        status
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// The newest restore point of each of the policy's resources in the
/// catalog, those verified longest ago (or never) first, at most
/// [`MAX_RESTORE_POINTS`].
async fn newest_restore_points(
    ctx: &Context,
    policy: &BackupPolicy,
    ns: &str,
) -> Result<Vec<VerifiedRestorePoint>> {
    let api: Api<RestorePoint> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{REPOSITORY_LABEL}={}", policy.spec.repository_ref.name);
    let own = Some(policy.name_any());
    let verified_at = |p: &RestorePoint| {
        p.status
            .as_ref()
            .and_then(|s| s.last_verification.as_ref())
            .map(|v| v.time.0)
    };
    let mut newest: BTreeMap<(String, String), RestorePoint> = BTreeMap::new();
    // When any restore point of each resource was last read back: a
    // resource checked longest ago (or never) goes first, so that with
    // more than 50 resources each run takes others.
    let mut checked: BTreeMap<(String, String), Timestamp> = BTreeMap::new();
    for point in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        // A DB snapshot's restore point has no chunks to read back (RDS
        // keeps its data); a dump's has.
        if point.spec.policy != own
            || crate::controller::database_restore::is_database_point(&point.spec.id)
        {
            continue;
        }
        let key = (point.spec.region.clone(), point.spec.resource.clone());
        if let Some(at) = verified_at(&point) {
            let last = checked.entry(key.clone()).or_insert(at);
            *last = (*last).max(at);
        }
        // The catalog's times are whole seconds: a tie goes to the later
        // ID (policy runs are named by their minute).
        let order = |p: &RestorePoint| (p.spec.created_at.0, p.spec.id.clone());
        if newest.get(&key).is_none_or(|n| order(n) < order(&point)) {
            newest.insert(key, point);
        }
    }
    let mut points: Vec<(Option<Timestamp>, String)> = newest
        .into_iter()
        .map(|(key, p)| (checked.get(&key).copied(), p.spec.id))
        .collect();
    points.sort();
    Ok(points
        .into_iter()
        .take(MAX_RESTORE_POINTS)
        .map(|(_, id)| VerifiedRestorePoint(id))
        .collect())
}

fn last_run(job: &VerificationJob) -> LastVerificationRun {
    let status = job.status.clone().unwrap_or_default();
    let found = |w: &&crate::api::VerificationWorkerStatus| w.outcome.as_ref().map(|o| o.result);
    let verified = status
        .workers
        .iter()
        .filter(|w| w.phase == Phase::Succeeded && found(w) == Some(VerificationResult::Verified))
        .count();
    let damaged: Vec<_> = status
        .workers
        .iter()
        .filter(|w| found(w).is_some_and(|r| r != VerificationResult::Verified))
        .collect();
    let unchecked: Vec<_> = status
        .workers
        .iter()
        .filter(|w| w.phase != Phase::Succeeded && w.outcome.is_none())
        .collect();
    LastVerificationRun {
        job: job.name_any(),
        phase: format!("{:?}", status.phase),
        completion_time: status.completion_time.clone(),
        verified: verified as i32,
        damaged: damaged.len() as i32,
        damaged_restore_points: damaged
            .iter()
            .take(NAMED)
            .map(|w| w.resource.clone())
            .collect(),
        unchecked: unchecked.len() as i32,
        message: damaged
            .first()
            .or(unchecked.first())
            .and_then(|w| w.message.clone()),
    }
}

/// The VerificationJob of one run, in the repository's region.
fn job_for(
    ctx: &Context,
    policy: &BackupPolicy,
    (name, due): (&str, Timestamp),
    region: String,
    restore_points: Vec<VerifiedRestorePoint>,
) -> Result<VerificationJob> {
    Ok(VerificationJob {
        metadata: super::run_metadata(policy, name, due)?,
        spec: VerificationJobSpec {
            repository_ref: Some(policy.spec.repository_ref.clone()),
            worker_configuration_ref: super::configuration_in(ctx, policy, &region),
            region,
            restore_points,
            policy: Some(policy.name_any()),
            limits: JobLimits::default(),
            suspend: false,
        },
        status: None,
    })
}
