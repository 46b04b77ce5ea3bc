//! Where workers are terminated: the moment they are done (or suspended),
//! and, when their job is deleted, every one it has, including any that
//! was launched but never recorded. The finalizer stays until EC2 says they
//! are going.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::core::{Termination, terminations};
use super::job_access;
use super::kind::WorkerJob;
use super::status::{baseline, write_status};
use crate::api::JobStatus;
use crate::api::conditions;
use crate::aws::accounts::RegionAccount;
use crate::controller::events;
use crate::controller::reports::delete_receipts;
use crate::controller::{Context, Error, Result};
use crate::telemetry::RegionLabels;

/// How often deletion rechecks workers that are not terminated yet.
const TERMINATION_RECHECK: Duration = Duration::from_secs(5);

/// Terminates the instances of workers that are finished or suspended and
/// not terminated yet.
pub async fn terminate_finished<K: WorkerJob>(
    job: &K,
    status: &mut JobStatus<K::Worker>,
    ctx: &Context,
) -> Result<()> {
    for Termination {
        region,
        access: role,
        instance_ids: ids,
    } in terminations(&status.workers)
    {
        let access = job_access(job, role.as_ref());
        let aws = ctx.aws.scoped(&access).await;
        // Instances the shared view already shows going or gone (terminated
        // before a restart, say) are recorded, not terminated again.
        let view = ctx
            .instances
            .recent(&aws, access.account_key(), &region)
            .await?;
        let (gone, ids): (Vec<String>, Vec<String>) = ids
            .into_iter()
            .partition(|id| view.get(id).is_some_and(|o| o.state.is_going()));
        let mut states = aws.instances().terminate_workers(&region, &ids).await?;
        crate::faults::crash_point("after-terminate-instances");
        states.extend(gone.into_iter().filter_map(|id| {
            view.get(&id)
                .map(|o| crate::aws::instances::WorkerInstance {
                    instance_id: id.clone(),
                    state: o.state.clone(),
                })
        }));
        let now = Timestamp::now();
        ctx.metrics
            .workers_terminated
            .get_or_create(&RegionLabels {
                region: region.clone(),
            })
            .inc_by(states.len() as u64);
        for state in states {
            if let Some(w) = status
                .workers
                .iter_mut()
                .find(|w| w.instance_id.as_deref() == Some(state.instance_id.as_str()))
            {
                if let Some(done) = &w.finished_time {
                    let secs = now.duration_since(done.0).as_secs_f64();
                    ctx.metrics.termination_latency.observe(secs.max(0.0));
                }
                w.terminated_time = Some(Time(now));
                w.instance_state = Some(state.state.to_string());
            }
            ctx.event(
                job,
                EventType::Normal,
                events::WORKER_TERMINATED,
                "TerminateWorker",
                format!("terminated worker {} ({})", state.instance_id, state.state),
            )
            .await;
        }
    }
    Ok(())
}

/// Deleting a job: terminate every worker it has, including any launched
/// but never recorded (found by the job-UID tag in the shared view). Holds
/// the deletion, with condition `InstanceTerminating`, until EC2 reports
/// every one of them shutting down, terminated or gone. `None` when nothing
/// holds the deletion any more.
pub async fn terminate_for_deletion<K: WorkerJob>(
    job: &K,
    api: &Api<K>,
    ctx: &Context,
) -> Result<Option<Action>> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let old = baseline(job, ctx);
    let mut status = old.clone().unwrap_or_default();
    let mut accounts: Vec<RegionAccount> = Vec::new();
    for w in &status.workers {
        let key = (w.region.clone(), w.access.clone());
        if !accounts.contains(&key) {
            accounts.push(key);
        }
    }
    let mut waiting: Vec<String> = Vec::new();
    for (region, role) in accounts {
        let access = job_access(job, role.as_ref());
        waiting.extend(terminate_all_in(job, &uid, &mut status, &region, &access, ctx).await?);
    }
    let Some(desired) = super::core::deletion_hold(&waiting) else {
        return Ok(None);
    };
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        job.meta().generation,
        Timestamp::now(),
    );
    if old.as_ref() != Some(&status) {
        write_status(api, job, &status, ctx).await?;
    }
    Ok(Some(Action::requeue(TERMINATION_RECHECK)))
}

/// Terminates every live worker of a deleted job in one region and account
/// (those in its status and any tagged with its UID); returns the instances
/// EC2 does not report as going yet.
async fn terminate_all_in<K: WorkerJob>(
    job: &K,
    uid: &str,
    status: &mut JobStatus<K::Worker>,
    region: &str,
    access: &crate::aws::accounts::Access,
    ctx: &Context,
) -> Result<Vec<String>> {
    let role = access.role.clone();
    let aws = ctx.aws.scoped(access).await;
    let view = ctx
        .instances
        .snapshot(&aws, access.account_key(), region, Instant::now())
        .await?;
    let mut ids: Vec<String> = status
        .workers
        .iter()
        .filter(|w| w.region == region && w.access == role)
        .filter_map(|w| w.instance_id.clone())
        .filter(|id| view.get(id).is_some_and(|o| o.is_live()))
        .collect();
    for o in view.values() {
        let tagged = o.tags.get(crate::names::tags::JOB_UID).map(String::as_str) == Some(uid);
        if o.is_live() && tagged && !ids.contains(&o.instance_id) {
            ids.push(o.instance_id.clone());
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let states = aws.instances().terminate_workers(region, &ids).await?;
    let now = Timestamp::now();
    let mut waiting = Vec::new();
    for s in &states {
        if let Some(w) = status
            .workers
            .iter_mut()
            .find(|w| w.instance_id.as_deref() == Some(s.instance_id.as_str()))
        {
            w.terminated_time.get_or_insert(Time(now));
            w.instance_state = Some(s.state.to_string());
        }
        if !s.state.is_going() {
            waiting.push(s.instance_id.clone());
        }
    }
    warn!(
        count = states.len(),
        "terminated the workers of a deleted job"
    );
    let note = format!(
        "terminated {} worker(s) before deleting the job: {}",
        states.len(),
        ids.join(", ")
    );
    ctx.event(
        job,
        EventType::Normal,
        events::WORKERS_TERMINATED,
        "DeleteJob",
        note,
    )
    .await;
    Ok(waiting)
}

/// The last step of deletion, once every worker is gone: forget the job.
pub async fn cleanup<K: WorkerJob>(job: &K, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    K::written(ctx).remove(&uid);
    ctx.workers.forget(&uid);
    let receipts = ctx.reports.forget(&uid);
    delete_receipts(&ctx.aws, &receipts).await;
    ctx.aws.forget_session(&job_access(job, None).session_name);
    Ok(Action::await_change())
}
