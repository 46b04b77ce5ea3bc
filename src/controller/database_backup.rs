//! A BackupJob's RDS DB instance or DB cluster: the controller takes a
//! manual DB snapshot (DB cluster snapshot), tagged as Tender's, waits
//! until RDS has it `available`
//! (following `PercentProgress`), then writes the restore point's manifest
//! (version 2: the snapshot and the DB instance as it was) to the
//! repository, sealed with the repository's integrity key. No worker: RDS
//! does the copying.
//!
//! Each step is idempotent: the snapshot is named after the attempt's
//! launch token, so a controller that crashed after CreateDBSnapshot finds
//! its snapshot (by name, and by its job-UID tag) instead of taking a
//! second one; the manifest is written with `If-None-Match` and one
//! already there is accepted only if this job wrote it. The garbage
//! collector deletes the snapshots whose restore point is gone
//! (`garbage_collector::database_snapshots`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::job::job_access;
use super::job::kind::{Advance, ControllerStep};
use super::{Context, Error, Result};
use crate::api::{
    BackupJob, BackupRepository, BackupWorkerStatus, DB_CLUSTER_RESOURCE_PREFIX,
    DB_INSTANCE_RESOURCE_PREFIX, DatabaseSnapshotCopy, DatabaseSnapshotStatus,
};
use crate::aws::AwsClients;
use crate::aws::accounts::Access;
use crate::aws::rds::{self, DbClusterInfo, DbInstanceInfo, DbSnapshotInfo, SnapshotKind};
use crate::aws::repository::Created;
use crate::mover::MoverError;
use crate::mover::integrity;
use crate::mover::manifest::{
    BackupStats, DATABASE_MANIFEST_VERSION, DatabaseImage, DatabaseSnapshotRef, Manifest,
    RepositoryLocation, parse_manifest, restore_point_id,
};
use crate::names::tags;
use crate::reasons::FailureReason;
use sha2::{Digest, Sha256};

/// How often a snapshot RDS is taking is looked at: often at first (a
/// small database's snapshot takes a minute or two), then every 30 s.
fn recheck(requested: Option<&Time>, now: Timestamp) -> Duration {
    let age = requested.map_or(0, |t| now.duration_since(t.0).as_secs());
    if age < 120 {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(30)
    }
}

/// How long a snapshot RDS accepted may be missing from DescribeDBSnapshots
/// before Tender takes it for deleted.
const VISIBILITY_GRACE_SECONDS: i64 = 60;

/// The DB instance identifier of a BackupJob resource ID, if it names one.
pub fn db_instance_of(resource: &str) -> Option<&str> {
    resource.strip_prefix(DB_INSTANCE_RESOURCE_PREFIX)
}

/// The DB cluster identifier of a BackupJob resource ID, if it names one.
pub fn db_cluster_of(resource: &str) -> Option<&str> {
    resource.strip_prefix(DB_CLUSTER_RESOURCE_PREFIX)
}

/// What a resource ID's snapshot is of, and its identifier, if RDS takes
/// it (a DB instance or a DB cluster).
pub fn database_of(resource: &str) -> Option<(SnapshotKind, &str)> {
    db_cluster_of(resource)
        .map(|c| (SnapshotKind::Cluster, c))
        .or_else(|| db_instance_of(resource).map(|d| (SnapshotKind::Instance, d)))
}

/// The tags of a DB snapshot Tender takes: its ownership (what the IAM
/// policy's conditions and the sweep go by) and where its restore point is
/// (the repository's name and UID: one recreated under the same name is
/// another repository).
pub fn snapshot_tags(
    job: &BackupJob,
    resource: &str,
    attempt: i32,
    cluster_id: &str,
    repository_uid: &str,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let repository = job
        .spec
        .repository_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let mut out = BTreeMap::from([
        (tags::MANAGED_BY.into(), tags::MANAGED_BY_VALUE.into()),
        (tags::CLUSTER_ID.into(), cluster_id.into()),
        (tags::NAMESPACE.into(), job.namespace().unwrap_or_default()),
        (tags::JOB_KIND.into(), "BackupJob".into()),
        (tags::JOB_NAME.into(), job.name_any()),
        (tags::JOB_UID.into(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.into(), resource.into()),
        (tags::ATTEMPT.into(), attempt.to_string()),
        (tags::REPOSITORY.into(), repository),
        (tags::REPOSITORY_UID.into(), repository_uid.into()),
        (tags::REQUESTED_AT.into(), now.to_string()),
    ]);
    if let Some(targets) = &job.spec.copy_to {
        let regions: Vec<&str> = targets.iter().map(|t| t.region.as_str()).collect();
        out.insert(tags::COPY_REGIONS.into(), regions.join(" "));
    }
    out
}

/// The tags the snapshot's name is made of: everything that says whose it
/// is and where its restore point is.
const NAMED_BY: [&str; 8] = [
    tags::CLUSTER_ID,
    tags::NAMESPACE,
    tags::JOB_NAME,
    tags::JOB_UID,
    tags::RESOURCE,
    tags::ATTEMPT,
    tags::REPOSITORY,
    tags::REPOSITORY_UID,
];

/// The name of the DB snapshot that carries `tags`: `tender-` and 40 hex
/// digits of their SHA-256. A snapshot whose tags were changed after it
/// was taken no longer matches its name, and the sweep leaves it alone.
pub fn snapshot_name(tags: &BTreeMap<String, String>) -> Option<String> {
    let mut hasher = Sha256::new();
    for key in NAMED_BY {
        hasher.update(tags.get(key)?.as_bytes());
        hasher.update([0u8]);
    }
    Some(format!("tender-{}", hex::encode(&hasher.finalize()[..20])))
}

/// One step of the backup of a DB instance (see the module's doc).
pub async fn advance(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    step: &ControllerStep<'_>,
    ctx: &Context,
) -> Result<Advance> {
    let Some((kind, db)) = database_of(&worker.resource).map(|(k, d)| (k, d.to_string())) else {
        return Err(Error::MissingObjectKey("a DB instance in the resource ID"));
    };
    let noun = kind.noun();
    let region = worker.region.clone();
    let production = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let rds = production.databases();
    let Some(repository) = repository_of(job, ctx) else {
        worker.message = Some("waiting for the job's BackupRepository".into());
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(30),
        });
    };
    let tags = snapshot_tags(
        job,
        &worker.resource,
        worker.attempt,
        &ctx.cluster_id,
        &repository.uid().unwrap_or_default(),
        step.now,
    );
    let Some(snapshot_id) = snapshot_name(&tags) else {
        return Err(Error::MissingObjectKey("the DB snapshot's tags"));
    };

    // The snapshot this attempt or an earlier one started is followed as
    // long as RDS may still make it available: a retry, a resume or a
    // restarted controller never starts a second one beside it.
    if let Some(recorded) = worker.database_snapshot.clone() {
        let found = rds
            .describe_snapshot(kind, &region, &recorded.snapshot_id)
            .await?;
        let age = step.now.duration_since(recorded.requested_time.0).as_secs();
        match found {
            Some(found) if !found.is_failed() => {
                return follow(job, worker, (&found, &recorded), step, ctx, (kind, &db)).await;
            }
            None if age < VISIBILITY_GRACE_SECONDS => {
                return Ok(Advance::Wait {
                    recheck: Duration::from_secs(3),
                });
            }
            found if recorded.snapshot_id == snapshot_id => {
                let what = found.map_or("is gone".to_string(), |f| format!("is {}", f.status));
                return Ok(Advance::Failed {
                    reason: FailureReason::DatabaseSnapshotFailed,
                    message: format!(
                        "{noun} {snapshot_id} of {db} {what} in {region}; the next attempt takes a new one (the garbage collector deletes this one)"
                    ),
                });
            }
            // An earlier attempt's, failed or gone: this attempt takes its
            // own.
            _ => worker.database_snapshot = None,
        }
    }

    // Not recorded: a snapshot of this attempt's name is one a reconcile
    // started before it could record it (a crash), if it is genuinely a
    // snapshot of this DB instance taken for this job.
    if let Some(found) = rds.describe_snapshot(kind, &region, &snapshot_id).await? {
        if let Err(why) = genuine(&rds, &region, &found, (kind, &db), &tags).await? {
            return Ok(Advance::Failed {
                reason: FailureReason::SnapshotNotOwned,
                message: format!(
                    "{noun} {snapshot_id} exists in {region} and is not this job's: {why}"
                ),
            });
        }
        record(worker, &found, step.now);
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(2),
        });
    }
    start(
        job,
        worker,
        &production,
        (kind, &db, &snapshot_id, &tags),
        step,
        ctx,
    )
    .await
}

/// The job's BackupRepository object.
fn repository_of(job: &BackupJob, ctx: &Context) -> Option<Arc<BackupRepository>> {
    let name = job.spec.repository_ref.as_ref()?;
    ctx.repositories.get(&ObjectRef::new(&name.name))
}

/// Whether a snapshot found under this attempt's name is the one it took:
/// of this DB instance or cluster (by identifier and by its DbiResourceId
/// or DbClusterResourceId, which one of the same name made later does not
/// share), manual, and
/// tagged as this attempt's (tags anyone may set: the name and the
/// instance are what RDS vouches for).
async fn genuine(
    rds: &crate::aws::rds::Databases<'_>,
    region: &str,
    found: &DbSnapshotInfo,
    (kind, db): (SnapshotKind, &str),
    wanted: &BTreeMap<String, String>,
) -> Result<std::result::Result<(), String>> {
    if found.source_identifier.as_deref() != Some(db) {
        return Ok(Err(format!(
            "it is a snapshot of {:?}",
            found.source_identifier
        )));
    }
    if found.snapshot_type.as_deref() != Some("manual") {
        return Ok(Err(format!("it is a {:?} snapshot", found.snapshot_type)));
    }
    for key in [tags::JOB_UID, tags::RESOURCE, tags::ATTEMPT] {
        if found.tags.get(key) != wanted.get(key) {
            return Ok(Err(format!("its tag {key} is {:?}", found.tags.get(key))));
        }
    }
    let resource_id = match kind {
        SnapshotKind::Instance => rds
            .describe_instance(region, db)
            .await?
            .and_then(|i| i.dbi_resource_id),
        SnapshotKind::Cluster => rds
            .describe_cluster(region, db)
            .await?
            .and_then(|c| c.resource_id),
    };
    let same = match (&found.dbi_resource_id, resource_id) {
        (Some(a), Some(b)) => a == &b,
        // RDS did not say: the identifier and the tags have to do.
        _ => true,
    };
    Ok(if same {
        Ok(())
    } else {
        Err(format!(
            "it was taken of another {} named {db}",
            kind.source_noun()
        ))
    })
}

/// Follows a snapshot RDS accepted: progress while RDS takes it, then the
/// restore point.
async fn follow(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    (found, recorded): (&DbSnapshotInfo, &DatabaseSnapshotStatus),
    step: &ControllerStep<'_>,
    ctx: &Context,
    (kind, db): (SnapshotKind, &str),
) -> Result<Advance> {
    let noun = kind.noun();
    let snapshot_id = found.identifier.clone();
    record(worker, found, recorded.requested_time.0);
    if found.status != "available" {
        // With copies to make, taking the snapshot is half the work.
        let half = job.spec.copy_to.is_some();
        worker.progress_percent = found.percent_progress.map(|p| if half { p / 2 } else { p });
        worker.message = Some(format!(
            "{noun} {snapshot_id} of {db} is {} ({}%)",
            found.status,
            found.percent_progress.unwrap_or(0)
        ));
        return Ok(Advance::Wait {
            recheck: recheck(Some(&recorded.requested_time), step.now),
        });
    }
    let Some(repository) = step.repository else {
        worker.message = Some(format!(
            "{noun} {snapshot_id} of {db} is available; waiting for the job's BackupRepository to record it"
        ));
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(30),
        });
    };
    let production = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    if let Some(wait_or_fail) = copies(job, worker, (kind, found), &production, ctx).await? {
        return Ok(wait_or_fail);
    }
    let instance = match kind {
        SnapshotKind::Instance => {
            production
                .databases()
                .describe_instance(&worker.region, db)
                .await?
        }
        SnapshotKind::Cluster => {
            let rds = production.databases();
            match rds.describe_cluster(&worker.region, db).await? {
                Some(cluster) => {
                    // An Aurora cluster's class is its writer's.
                    let writer = match (cluster.is_aurora(), cluster.members.first()) {
                        (true, Some(w)) => rds.describe_instance(&worker.region, w).await?,
                        _ => None,
                    };
                    Some(as_instance(&cluster, writer.as_ref()))
                }
                None => None,
            }
        }
    };
    let account = account_of(found.arn.as_deref())
        .map(str::to_string)
        .unwrap_or_default();
    let manifest = manifest(job, worker, found, instance.as_ref(), &account, step.now);
    match write_manifest(job, repository, &manifest, ctx).await? {
        Written::Ours(stored) => {
            // A manifest this job wrote earlier (a crash, an answer lost)
            // names the snapshot of its restore point: that one is kept,
            // whichever attempt took it, and the sweep takes the other.
            if let Some(first) = stored.database.as_ref().and_then(|d| d.snapshots.first())
                && first.identifier != snapshot_id
            {
                let copies = stored
                    .database
                    .iter()
                    .flat_map(|d| d.snapshots.iter().skip(1))
                    .map(|c| DatabaseSnapshotCopy {
                        region: c.region.clone(),
                        snapshot_id: c.identifier.clone(),
                        snapshot_arn: Some(c.arn.clone()),
                        state: "available".into(),
                        progress_percent: None,
                    })
                    .collect();
                worker.database_snapshot = Some(DatabaseSnapshotStatus {
                    snapshot_id: first.identifier.clone(),
                    snapshot_arn: Some(first.arn.clone()),
                    state: "available".into(),
                    requested_time: recorded.requested_time.clone(),
                    copies,
                });
            }
            worker.restore_point = Some(stored.id.clone());
            worker.message = Some(format!(
                "{noun} {} of {db} is available; restore point {} recorded",
                worker
                    .database_snapshot
                    .as_ref()
                    .map_or(snapshot_id.as_str(), |s| s.snapshot_id.as_str()),
                stored.id
            ));
            Ok(Advance::Done)
        }
        Written::Refused(reason, message) => Ok(Advance::Failed { reason, message }),
    }
}

/// The account in an RDS ARN (`arn:aws:rds:<region>:<account>:…`).
fn account_of(arn: Option<&str>) -> Option<&str> {
    arn?.split(':').nth(4).filter(|a| !a.is_empty())
}

/// What the manifest records of a DB cluster, in a DB instance's terms:
/// the instance class is its writer's (Aurora) or the cluster's (Multi-AZ
/// DB clusters), the parameter group the DB cluster parameter group.
fn as_instance(cluster: &DbClusterInfo, writer: Option<&DbInstanceInfo>) -> DbInstanceInfo {
    DbInstanceInfo {
        identifier: cluster.identifier.clone(),
        arn: cluster.arn.clone(),
        status: cluster.status.clone(),
        engine: cluster.engine.clone(),
        engine_version: cluster.engine_version.clone(),
        instance_class: cluster
            .cluster_instance_class
            .clone()
            .or_else(|| writer.and_then(|w| w.instance_class.clone())),
        address: cluster.endpoint.clone(),
        port: cluster.port,
        subnet_group: cluster.subnet_group.clone(),
        vpc_security_group_ids: cluster.vpc_security_group_ids.clone(),
        parameter_group: cluster.parameter_group.clone(),
        storage_encrypted: cluster.storage_encrypted,
        kms_key_id: cluster.kms_key_id.clone(),
        master_username: cluster.master_username.clone(),
        tags: cluster.tags.clone(),
        ..DbInstanceInfo::default()
    }
}

fn record(worker: &mut BackupWorkerStatus, found: &DbSnapshotInfo, requested: Timestamp) {
    let copies = worker
        .database_snapshot
        .take()
        .filter(|s| s.snapshot_id == found.identifier)
        .map(|s| s.copies)
        .unwrap_or_default();
    worker.database_snapshot = Some(DatabaseSnapshotStatus {
        snapshot_id: found.identifier.clone(),
        snapshot_arn: found.arn.clone(),
        state: found.status.clone(),
        requested_time: Time(requested),
        copies,
    });
}

/// The copies of `spec.copyTo`, started or followed: `None` once all are
/// available, else what the job waits for or why it failed.
async fn copies(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    (kind, source): (SnapshotKind, &DbSnapshotInfo),
    production: &AwsClients,
    ctx: &Context,
) -> Result<Option<Advance>> {
    let noun = kind.noun();
    let Some(targets) = job.spec.copy_to.clone() else {
        return Ok(None);
    };
    let rds = production.databases();
    let id = source.identifier.clone();
    let Some(source_arn) = source.arn.clone() else {
        return Err(Error::MissingObjectKey("the DB snapshot's ARN"));
    };
    // The copy carries the source's ownership tags, so it has the same
    // name and the sweep judges it alike (not the list of copies: that is
    // the source's to keep).
    let tags: BTreeMap<String, String> = source
        .tags
        .iter()
        .filter(|(k, _)| k.starts_with(tags::PREFIX) && k.as_str() != tags::COPY_REGIONS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Every copy must be possible before any is started (a copy to
    // another Region is billed).
    if source.encrypted
        && let Some(target) = targets.iter().find(|t| t.kms_key_id.is_none())
    {
        let region = &target.region;
        return Ok(Some(Advance::Failed {
            reason: FailureReason::DatabaseCopyRefused,
            message: format!(
                "{noun} {id} is encrypted, and a copy to {region} needs a KMS key of {region}: set spec.copyTo[].kmsKeyId for {region} in a new BackupJob"
            ),
        }));
    }
    let mut waiting = Vec::new();
    for target in &targets {
        let region = target.region.as_str();
        let recorded = worker
            .database_snapshot
            .as_ref()
            .and_then(|s| s.copies.iter().find(|c| c.region == region))
            .cloned();
        let found = rds.describe_snapshot(kind, region, &id).await?;
        let found = match (recorded, found) {
            (_, Some(found)) if found.tags.get(tags::JOB_UID) != tags.get(tags::JOB_UID) => {
                return Ok(Some(Advance::Failed {
                    reason: FailureReason::SnapshotNotOwned,
                    message: format!("{noun} {id} exists in {region} and is not this job's copy"),
                }));
            }
            (_, Some(found)) if matches!(found.status.as_str(), "deleting" | "deleted") => {
                forget_copy(worker, region);
                waiting.push(format!("{region}: a failed copy is being deleted"));
                continue;
            }
            (_, Some(found)) if found.is_failed() => {
                // Gone for good: deleted, and copied again under the same
                // name once RDS has let it go.
                forget_copy(worker, region);
                if let Err(e) = rds.delete_snapshot(kind, region, &id).await {
                    return Ok(Some(Advance::Failed {
                        reason: FailureReason::DatabaseSnapshotFailed,
                        message: format!(
                            "RDS put the copy of {noun} {id} in {region} in state {}, and refused to delete it ({e}); delete it by hand",
                            found.status
                        ),
                    }));
                }
                waiting.push(format!(
                    "{region}: the copy was {}, copying again",
                    found.status
                ));
                continue;
            }
            (_, Some(found)) => found,
            (Some(_), None) => {
                forget_copy(worker, region);
                waiting.push(format!("{region}: the copy is gone, copying again"));
                continue;
            }
            (None, None) => {
                match rds
                    .copy_snapshot(
                        kind,
                        region,
                        &source_arn,
                        &id,
                        target.kms_key_id.as_deref(),
                        &tags,
                    )
                    .await
                {
                    Ok(started) => {
                        ctx.event(
                            job,
                            EventType::Normal,
                            "DatabaseSnapshotCopyStarted",
                            "BackupDatabase",
                            format!("copying {noun} {id} to {region}"),
                        )
                        .await;
                        started
                    }
                    Err(e) if e.code() == Some(kind.snapshot_exists()) => {
                        waiting.push(format!("{region}: looking for the copy"));
                        continue;
                    }
                    Err(e) => {
                        let reason = match e.code() {
                            Some("SnapshotQuotaExceeded") => {
                                FailureReason::DatabaseSnapshotQuotaExceeded
                            }
                            Some(
                                "KMSKeyNotAccessibleFault"
                                | "InvalidParameterCombination"
                                | "InvalidParameterValue",
                            ) => FailureReason::DatabaseCopyRefused,
                            _ => return Err(e.into()),
                        };
                        return Ok(Some(Advance::Failed {
                            reason,
                            message: format!(
                                "RDS refused to copy {noun} {id} to {region}: {e}; check spec.copyTo (the key must be a key of {region} the controller may use) and the quota \"{}\" of {region}",
                                kind.quota_name()
                            ),
                        }));
                    }
                }
            }
        };
        if let Some(s) = worker.database_snapshot.as_mut() {
            let copy = DatabaseSnapshotCopy {
                region: region.to_string(),
                snapshot_id: found.identifier.clone(),
                snapshot_arn: found.arn.clone(),
                state: found.status.clone(),
                progress_percent: found.percent_progress,
            };
            match s.copies.iter_mut().find(|c| c.region == region) {
                Some(c) => *c = copy,
                None => s.copies.push(copy),
            }
        }
        if found.status != "available" {
            waiting.push(format!(
                "{region}: {} ({}%)",
                found.status,
                found.percent_progress.unwrap_or(0)
            ));
        }
    }
    if waiting.is_empty() {
        return Ok(None);
    }
    let copies = worker
        .database_snapshot
        .as_ref()
        .map(|s| s.copies.as_slice())
        .unwrap_or_default();
    let done: i32 = copies
        .iter()
        .map(|c| {
            if c.state == "available" {
                100
            } else {
                c.progress_percent.unwrap_or(0)
            }
        })
        .sum();
    // The source counts as half the work, the copies as the other half.
    worker.progress_percent = Some(50 + done / (2 * targets.len().max(1) as i32));
    worker.message = Some(format!(
        "{noun} {id} is available; copying it: {}",
        waiting.join(", ")
    ));
    Ok(Some(Advance::Wait {
        recheck: Duration::from_secs(5),
    }))
}

fn forget_copy(worker: &mut BackupWorkerStatus, region: &str) {
    if let Some(s) = worker.database_snapshot.as_mut() {
        s.copies.retain(|c| c.region != region);
    }
}

/// CreateDBSnapshot, with what RDS's refusals mean for the job.
async fn start(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    production: &AwsClients,
    (kind, db, snapshot_id, tags): (SnapshotKind, &str, &str, &BTreeMap<String, String>),
    step: &ControllerStep<'_>,
    ctx: &Context,
) -> Result<Advance> {
    let region = worker.region.clone();
    let rds = production.databases();
    let (noun, source) = (kind.noun(), kind.source_noun());
    let refused = match rds
        .create_snapshot(kind, &region, snapshot_id, db, tags)
        .await
    {
        Ok(created) => {
            // A crash here leaves a snapshot the status does not name yet:
            // the next reconcile finds it by its name and job-UID tag.
            crate::faults::crash_point("after-create-db-snapshot");
            record(worker, &created, step.now);
            worker.progress_percent = Some(created.percent_progress.unwrap_or(0));
            worker.message = Some(format!("taking {noun} {snapshot_id} of {db}"));
            ctx.event(
                job,
                EventType::Normal,
                "DatabaseSnapshotStarted",
                "BackupDatabase",
                format!("taking {noun} {snapshot_id} of {source} {db} in {region}"),
            )
            .await;
            return Ok(Advance::Wait {
                recheck: Duration::from_secs(3),
            });
        }
        Err(e) => e,
    };
    let message = refused.to_string();
    let code = refused.code();
    // Taken by a call whose answer was lost: the next step finds it.
    if code == Some(kind.snapshot_exists()) {
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(5),
        });
    }
    if code == Some(kind.source_not_found()) {
        return Ok(Advance::Failed {
            reason: FailureReason::SourceDatabaseNotFound,
            message: format!("{source} {db} does not exist in {region}; check spec.resources"),
        });
    }
    if code == Some("SnapshotQuotaExceeded") {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotQuotaExceeded,
            message: format!(
                "RDS refused a snapshot of {db}: the account's manual {noun} quota in {region} is used up ({message}); delete manual snapshots nobody needs (expired restore points' snapshots go once the garbage collector runs), or raise the quota \"{}\" in Service Quotas",
                kind.quota_name()
            ),
        });
    }
    if code != Some(kind.source_invalid_state()) {
        return Err(refused.into());
    }
    let status = match kind {
        SnapshotKind::Instance => rds.describe_instance(&region, db).await?.map(|i| i.status),
        SnapshotKind::Cluster => rds.describe_cluster(&region, db).await?.map(|c| c.status),
    };
    Ok(match status {
        None => Advance::Failed {
            reason: FailureReason::SourceDatabaseNotFound,
            message: format!("{source} {db} does not exist in {region} any more"),
        },
        Some(status) if rds::is_passing_state(&status) => {
            worker.message = Some(format!(
                "{source} {db} is {status}; RDS takes a snapshot once that ends"
            ));
            Advance::Wait {
                recheck: Duration::from_secs(30),
            }
        }
        Some(status) => Advance::Failed {
            reason: FailureReason::SourceDatabaseUnavailable,
            message: format!(
                "RDS cannot snapshot {source} {db}: it is {status} ({message}); bring it back to available (start it, or fix its storage or KMS key) and create a new BackupJob"
            ),
        },
    })
}

/// The manifest of the restore point: version 2, the snapshot and the DB
/// instance as it is now (as the snapshot says, if it is gone).
fn manifest(
    job: &BackupJob,
    worker: &BackupWorkerStatus,
    snapshot: &DbSnapshotInfo,
    instance: Option<&DbInstanceInfo>,
    account: &str,
    now: Timestamp,
) -> Manifest {
    let identifier = database_of(&worker.resource)
        .map(|(_, id)| id)
        .unwrap_or_default()
        .to_string();
    // A DB cluster has no allocated storage of its own (its stand-in
    // instance says 0): the snapshot's then.
    let allocated_gib = instance
        .map(|i| i.allocated_gib)
        .filter(|gib| *gib > 0)
        .unwrap_or(snapshot.allocated_gib);
    let database = DatabaseImage {
        identifier,
        engine: instance
            .map(|i| i.engine.clone())
            .or(snapshot.engine.clone())
            .unwrap_or_default(),
        engine_version: snapshot
            .engine_version
            .clone()
            .or(instance.and_then(|i| i.engine_version.clone())),
        instance_class: instance.and_then(|i| i.instance_class.clone()),
        port: instance.and_then(|i| i.port),
        allocated_gib,
        subnet_group: instance.and_then(|i| i.subnet_group.clone()),
        vpc_security_group_ids: instance
            .map(|i| i.vpc_security_group_ids.clone())
            .unwrap_or_default(),
        parameter_group: instance.and_then(|i| i.parameter_group.clone()),
        master_username: instance.and_then(|i| i.master_username.clone()),
        storage_encrypted: snapshot.encrypted,
        kms_key_id: snapshot.kms_key_id.clone(),
        snapshots: std::iter::once(DatabaseSnapshotRef {
            identifier: snapshot.identifier.clone(),
            arn: snapshot.arn.clone().unwrap_or_default(),
            region: worker.region.clone(),
            account: account.to_string(),
        })
        .chain(
            worker
                .database_snapshot
                .iter()
                .flat_map(|s| s.copies.iter())
                .filter(|c| c.state == "available")
                .map(|c| DatabaseSnapshotRef {
                    identifier: c.snapshot_id.clone(),
                    arn: c.snapshot_arn.clone().unwrap_or_default(),
                    region: c.region.clone(),
                    account: account_of(c.snapshot_arn.as_deref())
                        .unwrap_or(account)
                        .to_string(),
                }),
        )
        .collect(),
        dump: None,
    };
    let bytes_total = u64::try_from(allocated_gib.max(0)).unwrap_or_default() << 30;
    Manifest {
        version: DATABASE_MANIFEST_VERSION,
        id: restore_point_id(&job.name_any(), &worker.resource),
        resource: worker.resource.clone(),
        region: worker.region.clone(),
        namespace: job.namespace().unwrap_or_default(),
        job_name: job.name_any(),
        job_uid: job.uid().unwrap_or_default(),
        created_at: snapshot.created.clone().unwrap_or_else(|| now.to_string()),
        parent: None,
        parent_refused: None,
        volumes: Vec::new(),
        stats: BackupStats {
            bytes_total,
            ..BackupStats::default()
        },
        machine: None,
        policy: super::backup_job::made_by_policy(job),
        database: Some(database),
    }
}

/// What writing the manifest came to.
enum Written {
    /// The manifest of the restore point is this job's: the one just
    /// written, or one it wrote before (which may name an earlier
    /// attempt's snapshot).
    Ours(Box<Manifest>),
    Refused(FailureReason, String),
}

/// Writes the manifest once (`If-None-Match`), sealed; one already there
/// is fine only if this job wrote it (a crash after the write), and then
/// it is the restore point.
async fn write_manifest(
    job: &BackupJob,
    location: &RepositoryLocation,
    manifest: &Manifest,
    ctx: &Context,
) -> Result<Written> {
    let repository =
        repository_of(job, ctx).ok_or(Error::MissingObjectKey("the job's BackupRepository"))?;
    let access = Access::new(
        repository.spec.access.as_ref(),
        &["repository", &repository.name_any()],
    );
    let aws = ctx.aws.scoped(&access).await;
    let text = serde_json::to_vec_pretty(manifest)?;
    let sealed = match integrity::authenticate(&aws, location, &text).await {
        Ok(sealed) => sealed,
        Err(MoverError::Aws(e)) => return Err(e.into()),
        Err(e) => {
            return Ok(Written::Refused(
                FailureReason::RestorePointUnverified,
                e.to_string(),
            ));
        }
    };
    let key = location.manifest_key(&manifest.id);
    let repo = aws.repository();
    if repo
        .create_object(location, &key, sealed, "application/json")
        .await?
        == Created::Written
    {
        return Ok(Written::Ours(Box::new(manifest.clone())));
    }
    let stored = repo.get_object(location, &key).await?.unwrap_or_default();
    let theirs = match integrity::verified(&aws, location, &key, &stored).await {
        Ok(payload) => parse_manifest(&payload).ok(),
        Err(MoverError::Aws(e)) => return Err(e.into()),
        Err(_) => None,
    };
    Ok(match theirs {
        Some(m) if m.job_uid == manifest.job_uid && m.database.is_some() => {
            Written::Ours(Box::new(m))
        }
        _ => Written::Refused(
            FailureReason::RestorePointExists,
            format!(
                "restore point {} already exists in the repository and was not written by this job; delete its RestorePoint or name the BackupJob differently",
                manifest.id
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> BackupJob {
        let mut job: BackupJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": "nightly", "namespace": "shop", "uid": "6f1c"},
            "spec": {"resources": [{"dbInstanceId": "orders", "region": "eu-west-1"}],
                     "repositoryRef": {"name": "main"}}
        }))
        .expect("a job");
        job.metadata.uid = Some("6f1c".into());
        job
    }

    #[test]
    fn a_snapshots_name_follows_from_its_tags_and_no_longer_matches_once_they_change() {
        let t = |attempt, at: i64| {
            let now = Timestamp::from_second(at).expect("a time");
            snapshot_tags(
                &job(),
                "rds-db-orders",
                attempt,
                "cluster-1",
                "repo-uid",
                now,
            )
        };
        let name = snapshot_name(&t(1, 1_800_000_000)).expect("a name");
        assert!(name.starts_with("tender-") && name.len() == 47, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "an RDS identifier: {name}"
        );
        assert_eq!(
            snapshot_name(&t(1, 1_900_000_000)),
            Some(name.clone()),
            "the time asked is not part of it"
        );
        assert_ne!(snapshot_name(&t(2, 1_800_000_000)), Some(name.clone()));
        for key in NAMED_BY {
            let mut edited = t(1, 1_800_000_000);
            edited.insert(key.to_string(), "someone-else".into());
            assert_ne!(snapshot_name(&edited), Some(name.clone()), "{key}");
            edited.remove(key);
            assert_eq!(snapshot_name(&edited), None, "{key}");
        }
    }
}
