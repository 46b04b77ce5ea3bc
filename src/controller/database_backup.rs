//! A BackupJob's RDS DB instance: the controller takes a manual DB
//! snapshot, tagged as Tender's, waits until RDS has it `available`
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
    BackupJob, BackupWorkerStatus, DB_INSTANCE_RESOURCE_PREFIX, DatabaseSnapshotStatus,
};
use crate::aws::AwsClients;
use crate::aws::accounts::Access;
use crate::aws::rds::{self, DbInstanceInfo, DbSnapshotInfo};
use crate::aws::repository::Created;
use crate::mover::MoverError;
use crate::mover::integrity;
use crate::mover::manifest::{
    BackupStats, DATABASE_MANIFEST_VERSION, DatabaseImage, DatabaseSnapshotRef, Manifest,
    RepositoryLocation, parse_manifest, restore_point_id,
};
use crate::names::tags;
use crate::reasons::FailureReason;

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

/// The tags of a DB snapshot Tender takes: its ownership (what the IAM
/// policy's conditions and the sweep go by) and where its restore point is.
pub fn snapshot_tags(
    job: &BackupJob,
    resource: &str,
    attempt: i32,
    cluster_id: &str,
) -> BTreeMap<String, String> {
    let repository = job
        .spec
        .repository_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    BTreeMap::from([
        (tags::MANAGED_BY.into(), tags::MANAGED_BY_VALUE.into()),
        (tags::CLUSTER_ID.into(), cluster_id.into()),
        (tags::NAMESPACE.into(), job.namespace().unwrap_or_default()),
        (tags::JOB_KIND.into(), "BackupJob".into()),
        (tags::JOB_NAME.into(), job.name_any()),
        (tags::JOB_UID.into(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.into(), resource.into()),
        (tags::ATTEMPT.into(), attempt.to_string()),
        (tags::REPOSITORY.into(), repository),
    ])
}

/// One step of the backup of a DB instance (see the module's doc).
pub async fn advance(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    step: &ControllerStep<'_>,
    ctx: &Context,
) -> Result<Advance> {
    let Some(db) = db_instance_of(&worker.resource).map(str::to_string) else {
        return Err(Error::MissingObjectKey("a DB instance in the resource ID"));
    };
    let region = worker.region.clone();
    let production = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let rds = production.databases();
    let snapshot_id = worker.launch_token.clone();
    let ours = |s: &DbSnapshotInfo| s.tags.get(tags::JOB_UID) == job.uid().as_ref();

    let recorded = worker
        .database_snapshot
        .as_ref()
        .filter(|s| s.snapshot_id == snapshot_id)
        .cloned();
    let Some(recorded) = recorded else {
        // Not started by this attempt, as far as the status says: a
        // snapshot of this name is one an earlier reconcile started.
        if let Some(found) = rds.describe_snapshot(&region, &snapshot_id).await? {
            if !ours(&found) {
                return Ok(Advance::Failed {
                    reason: FailureReason::SnapshotNotOwned,
                    message: format!(
                        "DB snapshot {snapshot_id} exists in {region} and was not taken for this job"
                    ),
                });
            }
            record(worker, &found, step.now);
            return Ok(Advance::Wait {
                recheck: Duration::from_secs(1),
            });
        }
        return start(job, worker, &production, &db, step, ctx).await;
    };

    let Some(found) = rds.describe_snapshot(&region, &snapshot_id).await? else {
        let age = step.now.duration_since(recorded.requested_time.0).as_secs();
        if age < VISIBILITY_GRACE_SECONDS {
            return Ok(Advance::Wait {
                recheck: Duration::from_secs(3),
            });
        }
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotFailed,
            message: format!(
                "DB snapshot {snapshot_id} of {db} is gone from {region} (deleted while it was being taken?); the next attempt takes a new one"
            ),
        });
    };
    record(worker, &found, recorded.requested_time.0);
    if found.is_failed() {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotFailed,
            message: format!(
                "RDS put DB snapshot {snapshot_id} of {db} in state {}; the next attempt takes a new one (the garbage collector deletes this one)",
                found.status
            ),
        });
    }
    if found.status != "available" {
        worker.progress_percent = found.percent_progress;
        worker.message = Some(format!(
            "DB snapshot {snapshot_id} of {db} is {} ({}%)",
            found.status,
            found.percent_progress.unwrap_or(0)
        ));
        return Ok(Advance::Wait {
            recheck: recheck(Some(&recorded.requested_time), step.now),
        });
    }
    let Some(repository) = step.repository else {
        worker.message = Some(format!(
            "DB snapshot {snapshot_id} of {db} is available; waiting for the job's BackupRepository to record it"
        ));
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(30),
        });
    };
    let instance = rds.describe_instance(&region, &db).await?;
    let account = account_of(found.arn.as_deref())
        .map(str::to_string)
        .unwrap_or_default();
    let manifest = manifest(job, worker, &found, instance.as_ref(), &account, step.now);
    match write_manifest(job, repository, &manifest, ctx).await? {
        Ok(()) => {
            worker.restore_point = Some(manifest.id.clone());
            worker.message = Some(format!(
                "DB snapshot {snapshot_id} of {db} is available; restore point {} recorded",
                manifest.id
            ));
            Ok(Advance::Done)
        }
        Err((reason, message)) => Ok(Advance::Failed { reason, message }),
    }
}

/// The account in an RDS ARN (`arn:aws:rds:<region>:<account>:…`).
fn account_of(arn: Option<&str>) -> Option<&str> {
    arn?.split(':').nth(4).filter(|a| !a.is_empty())
}

fn record(worker: &mut BackupWorkerStatus, found: &DbSnapshotInfo, requested: Timestamp) {
    worker.database_snapshot = Some(DatabaseSnapshotStatus {
        snapshot_id: found.identifier.clone(),
        snapshot_arn: found.arn.clone(),
        state: found.status.clone(),
        requested_time: Time(requested),
    });
}

/// CreateDBSnapshot, with what RDS's refusals mean for the job.
async fn start(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    production: &AwsClients,
    db: &str,
    step: &ControllerStep<'_>,
    ctx: &Context,
) -> Result<Advance> {
    let region = worker.region.clone();
    let snapshot_id = worker.launch_token.clone();
    let tags = snapshot_tags(job, &worker.resource, worker.attempt, &ctx.cluster_id);
    let rds = production.databases();
    let refused = match rds.create_snapshot(&region, &snapshot_id, db, &tags).await {
        Ok(created) => {
            record(worker, &created, step.now);
            worker.progress_percent = Some(created.percent_progress.unwrap_or(0));
            worker.message = Some(format!("taking DB snapshot {snapshot_id} of {db}"));
            ctx.event(
                job,
                EventType::Normal,
                "DatabaseSnapshotStarted",
                "BackupDatabase",
                format!("taking DB snapshot {snapshot_id} of DB instance {db} in {region}"),
            )
            .await;
            return Ok(Advance::Wait {
                recheck: Duration::from_secs(3),
            });
        }
        Err(e) => e,
    };
    let message = refused.to_string();
    Ok(match refused.code() {
        // Taken by a call whose answer was lost: the next step finds it.
        Some("DBSnapshotAlreadyExists") => Advance::Wait {
            recheck: Duration::from_secs(1),
        },
        Some("DBInstanceNotFound") => Advance::Failed {
            reason: FailureReason::SourceDatabaseNotFound,
            message: format!("DB instance {db} does not exist in {region}; check spec.resources"),
        },
        Some("SnapshotQuotaExceeded") => Advance::Failed {
            reason: FailureReason::DatabaseSnapshotQuotaExceeded,
            message: format!(
                "RDS refused a snapshot of {db}: the account's manual DB snapshot quota in {region} is used up ({message}); delete manual snapshots nobody needs (expired restore points' snapshots go once the garbage collector runs), or raise the quota \"Manual DB instance snapshots\" in Service Quotas"
            ),
        },
        Some("InvalidDBInstanceState") => match rds.describe_instance(&region, db).await? {
            None => Advance::Failed {
                reason: FailureReason::SourceDatabaseNotFound,
                message: format!("DB instance {db} does not exist in {region} any more"),
            },
            Some(i) if rds::is_passing_state(&i.status) => {
                worker.message = Some(format!(
                    "DB instance {db} is {}; RDS takes a snapshot once that ends",
                    i.status
                ));
                Advance::Wait {
                    recheck: Duration::from_secs(30),
                }
            }
            Some(i) => Advance::Failed {
                reason: FailureReason::SourceDatabaseUnavailable,
                message: format!(
                    "RDS cannot snapshot DB instance {db}: it is {} ({message}); bring it back to available (start it, or fix its storage or KMS key) and create a new BackupJob",
                    i.status
                ),
            },
        },
        _ => return Err(refused.into()),
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
    let identifier = db_instance_of(&worker.resource)
        .unwrap_or_default()
        .to_string();
    let allocated_gib = instance.map_or(snapshot.allocated_gib, |i| i.allocated_gib);
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
        snapshots: vec![DatabaseSnapshotRef {
            identifier: snapshot.identifier.clone(),
            arn: snapshot.arn.clone().unwrap_or_default(),
            region: worker.region.clone(),
            account: account.to_string(),
        }],
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

/// Writes the manifest once (`If-None-Match`), sealed; one already there
/// is fine only if this job wrote it (a crash after the write).
async fn write_manifest(
    job: &BackupJob,
    location: &RepositoryLocation,
    manifest: &Manifest,
    ctx: &Context,
) -> Result<std::result::Result<(), (FailureReason, String)>> {
    let name = job
        .spec
        .repository_ref
        .as_ref()
        .ok_or(Error::MissingObjectKey("spec.repositoryRef"))?;
    let repository =
        ctx.repositories
            .get(&ObjectRef::new(&name.name))
            .ok_or(Error::MissingObjectKey(
                "the BackupRepository of spec.repositoryRef",
            ))?;
    let access = Access::new(
        repository.spec.access.as_ref(),
        &["repository", &repository.name_any()],
    );
    let aws = ctx.aws.scoped(&access).await;
    let text = serde_json::to_vec_pretty(manifest)?;
    let sealed = match integrity::authenticate(&aws, location, &text).await {
        Ok(sealed) => sealed,
        Err(MoverError::Aws(e)) => return Err(e.into()),
        Err(e) => return Ok(Err((FailureReason::RestorePointUnverified, e.to_string()))),
    };
    let key = location.manifest_key(&manifest.id);
    let repo = aws.repository();
    if repo
        .create_object(location, &key, sealed, "application/json")
        .await?
        == Created::Written
    {
        return Ok(Ok(()));
    }
    let stored = repo.get_object(location, &key).await?.unwrap_or_default();
    let theirs = match integrity::verified(&aws, location, &key, &stored).await {
        Ok(payload) => parse_manifest(&payload).ok(),
        Err(MoverError::Aws(e)) => return Err(e.into()),
        Err(_) => None,
    };
    match theirs {
        Some(m) if m.job_uid == manifest.job_uid => Ok(Ok(())),
        _ => Ok(Err((
            FailureReason::RestorePointExists,
            format!(
                "restore point {} already exists in the repository and was not written by this job; delete its RestorePoint or name the BackupJob differently",
                manifest.id
            ),
        ))),
    }
}
