//! The garbage collector: the safety net under every other path. Each sweep
//! refreshes the shared instance cache of every region in use, terminates
//! worker instances of this cluster whose owner job is gone, finished, or
//! does not know them (after a grace period), deletes worker queues whose
//! configuration is gone, deletes restores' intermediate snapshots that
//! no job owns any more (`intermediates`), and the staging folders of
//! restores to the original location whose job is gone or finished
//! (`staging`).

mod database_snapshots;
mod intermediates;
mod staging;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use super::Context;
use std::ops::Deref;

use kube::runtime::reflector::Store;

use super::job::kind::WorkerJob;
use super::job::status::baseline;
use crate::api::{
    BackupJob, BackupWorkerStatus, JobStatus, RestoreJob, RetentionJob, VerificationJob,
    WorkerStatus,
};
use crate::aws::AwsClients;
use crate::aws::accounts::{Access, RegionAccount};
use crate::aws::instance_cache::ObservedInstance;
use crate::names::tags;

/// Why an instance is an orphan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrphanReason {
    /// No job with the instance's namespace, name and UID exists.
    OwnerGone,
    /// The owner job has finished; its workers should all be gone.
    OwnerFinished,
    /// The owner job exists but no worker of it carries this launch token.
    UnknownToOwner,
}

impl OrphanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanReason::OwnerGone => "OwnerGone",
            OrphanReason::OwnerFinished => "OwnerFinished",
            OrphanReason::UnknownToOwner => "UnknownToOwner",
        }
    }
}

/// Judges one live worker instance against what its owner job says.
/// `owner` is the job's latest status when the job exists with the UID the
/// instance is tagged with.
pub fn orphan_reason<W: Deref<Target = WorkerStatus>>(
    instance: &ObservedInstance,
    owner: Option<&JobStatus<W>>,
) -> Option<OrphanReason> {
    let Some(status) = owner else {
        return Some(OrphanReason::OwnerGone);
    };
    if status.phase.is_finished() {
        return Some(OrphanReason::OwnerFinished);
    }
    let token = instance.tags.get(tags::LAUNCH_TOKEN)?;
    let known = status.workers.iter().any(|w| {
        &w.launch_token == token
            && w.terminated_time.is_none()
            && w.instance_id
                .as_deref()
                .is_none_or(|id| id == instance.instance_id)
    });
    (!known).then_some(OrphanReason::UnknownToOwner)
}

/// Settings of the sweep.
#[derive(Clone, Copy, Debug)]
pub struct SweepConfig {
    pub interval: Duration,
    /// An orphan is terminated only once it is older than this, so that a
    /// launch whose status write is still on its way is never mistaken for one.
    pub grace: Duration,
    /// An intermediate snapshot no job owns is deleted only once it is
    /// older than this.
    pub intermediate_grace: Duration,
}

/// Runs sweeps until the task is dropped.
pub async fn run(ctx: Arc<Context>, config: SweepConfig) {
    // Judging instances against an empty cache would find everything orphaned.
    wait_until_ready(&ctx.jobs).await;
    wait_until_ready(&ctx.configurations).await;
    // Restore workers are owned by RestoreJobs: never judge them blind.
    wait_until_ready(&ctx.restores).await;
    wait_until_ready(&ctx.retentions).await;
    wait_until_ready(&ctx.verifications).await;
    loop {
        sweep(&ctx, config).await;
        tokio::time::sleep(config.interval).await;
    }
}

/// Waits until a store has its initial list. Polled in short rounds: the
/// store's readiness signal wakes only the last of several waiters (the
/// controller waits on it too), so a single long wait could sleep forever.
pub(crate) async fn wait_until_ready<K>(store: &kube::runtime::reflector::Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// Judges an instance against the latest known status of the job its tags
/// name, when that job exists with the tagged UID.
fn judge(ctx: &Context, instance: &ObservedInstance) -> Option<OrphanReason> {
    let (Some(ns), Some(name), Some(uid)) = (
        instance.tags.get(tags::NAMESPACE),
        instance.tags.get(tags::JOB_NAME),
        instance.tags.get(tags::JOB_UID),
    ) else {
        return orphan_reason::<BackupWorkerStatus>(instance, None);
    };
    match instance.tags.get(tags::JOB_KIND).map(String::as_str) {
        Some(RestoreJob::KIND) => {
            judge_by::<RestoreJob>(ctx, &ctx.restores, instance, ns, name, uid)
        }
        Some(RetentionJob::KIND) => {
            judge_by::<RetentionJob>(ctx, &ctx.retentions, instance, ns, name, uid)
        }
        Some(VerificationJob::KIND) => {
            judge_by::<VerificationJob>(ctx, &ctx.verifications, instance, ns, name, uid)
        }
        _ => judge_by::<BackupJob>(ctx, &ctx.jobs, instance, ns, name, uid),
    }
}

fn judge_by<K: WorkerJob>(
    ctx: &Context,
    store: &Store<K>,
    instance: &ObservedInstance,
    ns: &str,
    name: &str,
    uid: &str,
) -> Option<OrphanReason> {
    let status = store
        .get(&ObjectRef::<K>::new(name).within(ns))
        .filter(|job| job.uid().as_deref() == Some(uid))
        .map(|job| baseline(&*job, ctx).unwrap_or_default());
    orphan_reason(instance, status.as_ref())
}

/// The regions and accounts that have configurations or workers.
fn accounts_in_use(ctx: &Context) -> Vec<RegionAccount> {
    let mut out: Vec<RegionAccount> = Vec::new();
    let mut add = |key: RegionAccount| {
        if !out.contains(&key) {
            out.push(key);
        }
    };
    for c in ctx.configurations.state() {
        add((c.spec.region.clone(), c.spec.worker_access().cloned()));
    }
    for job in ctx.jobs.state() {
        if let Some(s) = &job.status {
            for w in &s.workers {
                add((w.region.clone(), w.access.clone()));
            }
        }
    }
    out
}

/// The regions and production accounts databases are backed up in: each
/// configuration's, and each database backup's and its copies' (whose
/// configuration may be gone), remembered for as long as this process
/// runs, so that a copy's Region is still swept once its job is deleted.
fn database_accounts(ctx: &Context) -> Vec<RegionAccount> {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<Vec<RegionAccount>>> =
        std::sync::OnceLock::new();
    let mut out = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut add = |key: RegionAccount| {
        if !out.contains(&key) {
            out.push(key);
        }
    };
    for c in ctx.configurations.state() {
        add((c.spec.region.clone(), c.spec.production_account.clone()));
    }
    for job in ctx.jobs.state() {
        if let Some(s) = &job.status {
            for w in s.workers.iter().filter(|w| {
                crate::controller::database_backup::database_of(&w.resource).is_some()
                    || crate::controller::database_dump::dump_instance_of(&w.resource).is_some()
            }) {
                add((w.region.clone(), w.access.clone()));
                // And the Regions its copies went to.
                for copy in job.spec.copy_to.iter().flatten() {
                    add((copy.region.clone(), w.access.clone()));
                }
            }
        }
    }
    out.clone()
}

async fn sweep(ctx: &Context, config: SweepConfig) {
    let staged = staging::sweep(ctx, config.intermediate_grace).await;
    if staged > 0 {
        info!(
            objects = staged,
            "garbage collection: deleted leftover staged files"
        );
    }
    sweep_database_snapshots(ctx, config.intermediate_grace).await;
    let now = Timestamp::now();
    for (region, role) in accounts_in_use(ctx) {
        let access = Access::new(role.as_ref(), &["garbage-collector"]);
        let aws = ctx.aws.scoped(&access).await;
        let instances = match ctx
            .instances
            .snapshot(&aws, access.account_key(), &region, Instant::now())
            .await
        {
            Ok(i) => i,
            Err(e) => {
                warn!(region, error = %e, "garbage collection: could not list worker instances");
                continue;
            }
        };
        let mut orphans: Vec<(String, OrphanReason)> = Vec::new();
        let mut live = 0usize;
        for instance in instances.values().filter(|i| i.is_live()) {
            if ctx.namespace.as_deref().is_some_and(|ns| {
                instance.tags.get(tags::NAMESPACE).map(String::as_str) != Some(ns)
            }) {
                continue; // another controller's namespace
            }
            if !matches!(
                instance.tags.get(tags::JOB_KIND).map(String::as_str),
                Some("BackupJob" | "RestoreJob" | "RetentionJob" | "VerificationJob")
            ) {
                continue; // not a kind this version launches
            }
            live += 1;
            let Some(reason) = judge(ctx, instance) else {
                continue;
            };
            let old_enough = instance
                .launch_time
                .is_none_or(|t| now.duration_since(t).as_secs() >= config.grace.as_secs() as i64);
            if old_enough {
                orphans.push((instance.instance_id.clone(), reason));
            }
        }
        let mut by_reason: HashMap<&'static str, usize> = HashMap::new();
        if !orphans.is_empty() {
            let ids: Vec<String> = orphans.iter().map(|(id, _)| id.clone()).collect();
            match aws.instances().terminate_workers(&region, &ids).await {
                Ok(_) => {
                    for (id, reason) in &orphans {
                        warn!(
                            region,
                            instance_id = id,
                            reason = reason.as_str(),
                            "terminated an orphaned worker"
                        );
                        *by_reason.entry(reason.as_str()).or_default() += 1;
                    }
                }
                Err(e) => {
                    warn!(region, error = %e, "garbage collection: could not terminate orphans")
                }
            }
        }
        ctx.metrics.record_sweep(&region, live, &by_reason);
        let queues = sweep_queues(ctx, &aws, &region).await;
        let intermediates =
            intermediates::sweep(ctx, &aws, &region, config.intermediate_grace).await;
        ctx.metrics
            .record_intermediate_sweep(&region, intermediates);
        info!(
            region,
            workers_seen = live,
            orphans_terminated = by_reason.values().sum::<usize>(),
            orphans_by_reason = ?by_reason,
            queues_deleted = queues,
            intermediates_deleted = intermediates,
            "garbage collection sweep"
        );
    }
}

/// Deletes this cluster's DB snapshots whose restore point is gone, in
/// every region and production account in use.
async fn sweep_database_snapshots(ctx: &Context, grace: std::time::Duration) {
    for (region, role) in database_accounts(ctx) {
        let access = Access::new(role.as_ref(), &["garbage-collector"]);
        let aws = ctx.aws.scoped(&access).await;
        let deleted = database_snapshots::sweep(ctx, &aws, &region, grace).await;
        if deleted > 0 {
            info!(
                region,
                deleted, "garbage collection: deleted DB snapshots whose restore point is gone"
            );
        }
        let pairs = super::database_dump::sweep(ctx, &aws, &region, grace).await;
        if pairs > 0 {
            info!(
                region,
                pairs, "garbage collection: deleted dumps' security groups whose job is gone"
            );
        }
    }
}

/// Deletes this cluster's worker queues whose configuration no longer exists.
async fn sweep_queues(ctx: &Context, aws: &AwsClients, region: &str) -> usize {
    let queues = match aws.queues().list_queues(region, "tender-").await {
        Ok(q) => q,
        Err(e) => {
            warn!(region, error = %e, "garbage collection: could not list queues");
            return 0;
        }
    };
    let mut deleted = 0;
    for (url, queue_tags) in queues {
        if queue_tags.get(tags::CLUSTER_ID) != Some(&ctx.cluster_id) {
            continue;
        }
        let Some(name) = queue_tags.get(tags::CONFIGURATION) else {
            continue;
        };
        let exists = ctx.configurations.get(&ObjectRef::new(name)).is_some();
        if exists {
            continue;
        }
        match aws.queues().delete_queue(region, &url).await {
            Ok(()) => {
                warn!(region, queue_url = url, "deleted an orphaned worker queue");
                ctx.pumps.stop(&url);
                deleted += 1;
            }
            Err(e) => {
                warn!(region, queue_url = url, error = %e, "could not delete an orphaned queue")
            }
        }
    }
    ctx.metrics.record_queue_sweep(region, deleted);
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupJobStatus, JobWorker, Phase};

    fn instance(token: &str) -> ObservedInstance {
        ObservedInstance {
            instance_id: "i-1".into(),
            state: "running".into(),
            tags: [(tags::LAUNCH_TOKEN.to_string(), token.to_string())].into(),
            launch_time: None,
            addresses: Vec::new(),
        }
    }

    fn status(phase: Phase, token: &str, instance_id: Option<&str>) -> BackupJobStatus {
        BackupJobStatus {
            phase,
            workers: vec![BackupWorkerStatus::new(WorkerStatus {
                resource: "i-src".into(),
                launch_token: token.into(),
                instance_id: instance_id.map(Into::into),
                phase: Phase::Running,
                ..Default::default()
            })],
            ..Default::default()
        }
    }

    #[test]
    fn an_instance_without_its_job_is_an_orphan() {
        assert_eq!(
            orphan_reason::<BackupWorkerStatus>(&instance("t"), None),
            Some(OrphanReason::OwnerGone)
        );
    }

    #[test]
    fn a_finished_job_owns_no_live_worker() {
        let s = status(Phase::Succeeded, "t", Some("i-1"));
        assert_eq!(
            orphan_reason(&instance("t"), Some(&s)),
            Some(OrphanReason::OwnerFinished)
        );
    }

    #[test]
    fn a_worker_the_job_knows_is_kept_even_before_its_id_is_recorded() {
        let recorded = status(Phase::Running, "t", Some("i-1"));
        assert_eq!(orphan_reason(&instance("t"), Some(&recorded)), None);
        let launching = status(Phase::Provisioning, "t", None);
        assert_eq!(orphan_reason(&instance("t"), Some(&launching)), None);
    }

    #[test]
    fn a_worker_of_an_old_attempt_or_a_duplicate_is_unknown() {
        let s = status(Phase::Running, "t2", Some("i-2"));
        assert_eq!(
            orphan_reason(&instance("t1"), Some(&s)),
            Some(OrphanReason::UnknownToOwner)
        );
        let duplicate = status(Phase::Running, "t", Some("i-other"));
        assert_eq!(
            orphan_reason(&instance("t"), Some(&duplicate)),
            Some(OrphanReason::UnknownToOwner)
        );
    }
}
