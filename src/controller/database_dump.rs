//! PostgreSQL dumps of RDS DB instances (a BackupJob's `postgres`): the
//! controller's part. A worker does the dump (`worker::database`); the
//! controller finds the DB instance, opens a path from that worker alone to
//! it, and closes the path once the worker is gone.
//!
//! The path is a security group pair (`aws::group_pairs`) owned by the job
//! and the resource: the worker is launched in the *worker* group besides
//! the configuration's, and the *database* group is added to the DB
//! instance with ModifyDBInstance. What RDS documents (Amazon RDS API
//! Reference, ModifyDBInstance; User Guide, "Controlling access with
//! security groups"): `VpcSecurityGroupIds` replaces the instance's whole
//! list; a change of groups applies without a reboot but only while the
//! instance is `available` (else `InvalidDBInstanceState`); while it
//! applies, the group's membership is `adding` or `removing`; an instance
//! takes at most 5 VPC security groups by default ("Quotas for Amazon
//! RDS"). A group is deleted only once neither the worker nor the DB
//! instance is in it.
//!
//! The job does not finish while a pair exists ([`settling`]); a pair whose
//! job is gone (deleted while it ran) is found by the sweep ([`sweep`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use super::job::core::mark_failed;
use super::job::job_access;
use super::job::kind::{Settling, TaskDetails, WorkerJob};
use super::{Context, Result};
use crate::api::{
    BackupJob, BackupJobStatus, BackupWorkerStatus, DB_DUMP_RESOURCE_PREFIX, DatabaseAccessStatus,
    RestoreJob, RestoreJobStatus, RestoreWorkerStatus, RestoredDatabase, WorkerConfiguration,
    WorkerStatus,
};
use crate::aws::AwsClients;
use crate::aws::rds::DbInstanceInfo;
use crate::messages::DatabaseTask;
use crate::mover::manifest::DatabaseImage;
use crate::names::tags;
use crate::reasons::FailureReason;

/// RDS's default quota of VPC security groups per DB instance.
pub const SECURITY_GROUPS_PER_INSTANCE: usize = 5;

/// How soon a pair waiting to be removed is looked at again.
const RELEASE_RECHECK: Duration = Duration::from_secs(5);

/// Where the user data fetches the CA bundle that signs RDS's certificates
/// in a Region (`{region}` is filled in): AWS's trust store. Overridden
/// with `TENDER_RDS_CA_BUNDLE_URL` (any URL curl reads, a `file://` one
/// for an image that carries the bundle).
pub const RDS_CA_BUNDLE_URL: &str =
    "https://truststore.pki.rds.amazonaws.com/{region}/{region}-bundle.pem";

/// The DB instance of a dump's resource ID (`rds-pg-<identifier>`).
pub fn dump_instance_of(resource: &str) -> Option<&str> {
    resource.strip_prefix(DB_DUMP_RESOURCE_PREFIX)
}

/// The databases the job names for `resource`.
fn databases_of(job: &BackupJob, resource: &str) -> Vec<String> {
    job.spec
        .resources
        .iter()
        .find(|r| r.id() == resource)
        .and_then(|r| r.postgres.as_ref())
        .map(|p| p.databases.clone())
        .unwrap_or_default()
}

/// Why a dump of `found` cannot be made with `config`, for people.
pub(super) fn not_possible(config: &WorkerConfiguration, found: &DbInstanceInfo) -> Option<String> {
    let db = &found.identifier;
    if found.engine != "postgres" {
        return Some(format!(
            "DB instance {db} runs engine {:?}; a postgres resource dumps RDS for PostgreSQL only (back it up with dbInstanceId, a DB snapshot, instead)",
            found.engine
        ));
    }
    if let Some(cluster) = &found.db_cluster_identifier {
        return Some(format!(
            "DB instance {db} belongs to DB cluster {cluster}, whose security groups RDS changes only at the cluster level; dumps of DB clusters are not supported yet"
        ));
    }
    if found.master_user_secret_arn.is_none() {
        return Some(format!(
            "DB instance {db} has no master password managed by RDS in Secrets Manager, which the dump's worker signs in with; turn on ManageMasterUserPassword (aws rds modify-db-instance --manage-master-user-password)"
        ));
    }
    if found.tags.get(tags::DUMP_ACCESS).map(String::as_str) != Some(tags::DUMP_ACCESS_VALUE) {
        return Some(format!(
            "DB instance {db} does not carry tag {}={}, with which its owner lets Tender add the dump's security group to it for the length of the job (the shipped controller policy allows ModifyDBInstance on such DB instances only); tag it",
            tags::DUMP_ACCESS,
            tags::DUMP_ACCESS_VALUE
        ));
    }
    // Workers run where the DB instance is unless the configuration puts
    // them in a backup account of their own.
    if config.spec.worker_access() != config.spec.production_account.as_ref() {
        return Some(format!(
            "WorkerConfiguration {:?} launches workers in the backup account, but a dump's worker must run in DB instance {db}'s account and VPC; use a configuration with account: production",
            config.name_any()
        ));
    }
    let vpc = config.status.as_ref().and_then(|s| s.vpc_id.as_deref());
    if found.vpc_id.is_none() || found.vpc_id.as_deref() != vpc {
        return Some(format!(
            "DB instance {db} is in VPC {}, WorkerConfiguration {:?} launches workers in {}; use a configuration with subnets in the DB instance's VPC",
            found.vpc_id.as_deref().unwrap_or("(none)"),
            config.name_any(),
            vpc.unwrap_or("(not known yet)")
        ));
    }
    if found.address.is_none() {
        return Some(format!(
            "DB instance {db} has no endpoint yet (it is {})",
            found.status
        ));
    }
    None
}

/// The tags of the pair a `K` job makes for `resource`, to reach DB
/// instance `db`.
fn pair_tags<K: WorkerJob>(
    ctx: &Context,
    job: &K,
    resource: &str,
    db: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (tags::MANAGED_BY.into(), tags::MANAGED_BY_VALUE.into()),
        (tags::CLUSTER_ID.into(), ctx.cluster_id.clone()),
        (tags::NAMESPACE.into(), job.namespace().unwrap_or_default()),
        (tags::JOB_KIND.into(), K::KIND.into()),
        (tags::JOB_NAME.into(), job.name_any()),
        (tags::JOB_UID.into(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.into(), resource.into()),
        (tags::DB_INSTANCE.into(), db.into()),
    ])
}

/// A task not ready to launch yet: why, for the worker's message.
fn wait(note: String) -> TaskDetails {
    TaskDetails {
        wait: Some(note),
        ..TaskDetails::default()
    }
}

/// Where opening a worker's path to a DB instance stands.
pub(super) enum Path {
    /// Open: the DB instance as it is now, and the group the worker is
    /// launched in.
    Open {
        found: Box<DbInstanceInfo>,
        worker_group: String,
    },
    /// Not yet (RDS applying the change, say): why.
    Wait(String),
    /// Never in this attempt: why.
    Failed(FailureReason, String),
}

/// Extra checks of the DB instance a path is opened to (the
/// configuration's `allowedSources` for a dump's source).
type Check<'a> = &'a (dyn Fn(&DbInstanceInfo) -> Option<(FailureReason, String)> + Sync);

/// Opens the path from a worker of `job` to DB instance `db`: the pair
/// made (recorded in `slot` at once, so that it is removed whatever
/// happens next) and its database group on the DB instance, once RDS has
/// applied it. `missing` is the reason when the DB instance is gone.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_path<K: WorkerJob>(
    (job, ctx, config): (&K, &Context, &WorkerConfiguration),
    aws: &AwsClients,
    (region, db, resource): (&str, &str, &str),
    missing: FailureReason,
    check: Check<'_>,
    slot: &mut Option<DatabaseAccessStatus>,
) -> Result<Path> {
    let Some(found) = aws.databases().describe_instance(region, db).await? else {
        return Ok(Path::Failed(
            missing,
            format!("DB instance {db} does not exist in {region} any more"),
        ));
    };
    if let Some((reason, message)) = check(&found) {
        return Ok(Path::Failed(reason, message));
    }
    if let Some(message) = not_possible(config, &found) {
        return Ok(Path::Failed(
            FailureReason::DatabaseDumpNotPossible,
            message,
        ));
    }
    if matches!(
        found.status.as_str(),
        "stopped" | "stopping" | "failed" | "storage-full"
    ) || found.status.starts_with("incompatible-")
        || found.status.starts_with("inaccessible-")
    {
        return Ok(Path::Failed(
            FailureReason::SourceDatabaseUnavailable,
            format!(
                "DB instance {db} is {}: a worker cannot reach it until it is available again",
                found.status
            ),
        ));
    }
    let uid = job.uid().unwrap_or_default();
    let port = found.port.unwrap_or(5432);
    let purpose = if K::KIND == "BackupJob" {
        "dump"
    } else {
        "load"
    };
    let pair = aws
        .network()
        .ensure_group_pair(
            region,
            found.vpc_id.as_deref().unwrap_or_default(),
            &format!("tender-{purpose}-{uid}-{db}"),
            &pair_tags(ctx, job, resource, db),
            port,
        )
        .await?;
    *slot = Some(DatabaseAccessStatus {
        worker_security_group_id: pair.worker.clone(),
        database_security_group_id: pair.database.clone(),
        release_waiting: None,
    });
    if !found.vpc_security_group_ids.contains(&pair.database) {
        if found.vpc_security_group_ids.len() >= SECURITY_GROUPS_PER_INSTANCE {
            return Ok(Path::Failed(
                FailureReason::DatabaseDumpNotPossible,
                format!(
                    "DB instance {db} has {} VPC security groups, RDS's quota per DB instance, and the {purpose} needs to add one that admits its worker; remove one of the DB instance's groups (RDS does not raise this quota)",
                    found.vpc_security_group_ids.len()
                ),
            ));
        }
        if found.status != "available" {
            return Ok(Path::Wait(format!(
                "waiting for DB instance {db} to be available (it is {}) to add security group {} that admits the {purpose}'s worker",
                found.status, pair.database
            )));
        }
        let mut groups = found.vpc_security_group_ids.clone();
        groups.push(pair.database.clone());
        match aws
            .databases()
            .set_security_groups(region, db, &groups)
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some("InvalidDBInstanceState") => {
                return Ok(Path::Wait(format!(
                    "RDS cannot modify DB instance {db} now ({e}); adding the {purpose}'s security group later"
                )));
            }
            Err(e) if e.failure_reason() == FailureReason::AwsPermissionDenied => {
                return Ok(Path::Failed(
                    FailureReason::AwsPermissionDenied,
                    format!(
                        "Tender may not add the {purpose}'s security group to DB instance {db}: {e}; the controller's role needs rds:ModifyDBInstance on it (iam/controller-policy.json grants it on DB instances tagged {}={})",
                        tags::DUMP_ACCESS,
                        tags::DUMP_ACCESS_VALUE
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        crate::faults::crash_point("after-modify-db-instance");
        info!(
            db,
            group = pair.database,
            "added a worker's security group to the DB instance"
        );
        return Ok(Path::Wait(format!(
            "added security group {} to DB instance {db}; waiting for RDS to apply it",
            pair.database
        )));
    }
    if found.pending_security_group_ids.contains(&pair.database) {
        return Ok(Path::Wait(format!(
            "waiting for RDS to apply security group {} to DB instance {db}",
            pair.database
        )));
    }
    Ok(Path::Open {
        found: Box::new(found),
        worker_group: pair.worker,
    })
}

/// The task's server: DB instance `found`, reached over TLS verified
/// against the RDS certificate authorities of `region`.
pub(super) fn database_task(
    found: &DbInstanceInfo,
    region: &str,
    databases: Vec<String>,
    image: DatabaseImage,
) -> DatabaseTask {
    let ca_bundle_url = std::env::var("TENDER_RDS_CA_BUNDLE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| RDS_CA_BUNDLE_URL.to_string())
        .replace("{region}", region);
    DatabaseTask {
        db_instance_id: found.identifier.clone(),
        host: found.address.clone().unwrap_or_default(),
        port: u16::try_from(found.port.unwrap_or(5432)).unwrap_or(5432),
        user: found.master_username.clone().unwrap_or_default(),
        secret_arn: found.master_user_secret_arn.clone().unwrap_or_default(),
        engine_version: found.engine_version.clone().unwrap_or_default(),
        sslmode: "verify-full".into(),
        ca_bundle_url,
        databases,
        image,
    }
}

/// What a restore point records of DB instance `found`: its settings as
/// the owner set them (the worker's own group is not the DB instance's).
pub(super) fn image_of(found: &DbInstanceInfo, worker_group_on_db: Option<&str>) -> DatabaseImage {
    DatabaseImage {
        identifier: found.identifier.clone(),
        engine: found.engine.clone(),
        engine_version: found.engine_version.clone(),
        instance_class: found.instance_class.clone(),
        port: found.port,
        allocated_gib: found.allocated_gib,
        subnet_group: found.subnet_group.clone(),
        vpc_security_group_ids: found
            .vpc_security_group_ids
            .iter()
            .filter(|g| Some(g.as_str()) != worker_group_on_db)
            .cloned()
            .collect(),
        parameter_group: found.parameter_group.clone(),
        master_username: found.master_username.clone(),
        storage_encrypted: found.storage_encrypted,
        kms_key_id: found.kms_key_id.clone(),
        snapshots: Vec::new(),
        dump: None,
    }
}

/// Right before a dump's worker is launched: the DB instance as it is now,
/// the pair made and the database group on the DB instance (waiting while
/// RDS applies it), and the task's server. A DB instance that went away
/// or changed so that it cannot be dumped fails the worker.
pub async fn prepare(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    config: &WorkerConfiguration,
    ctx: &Context,
) -> Result<TaskDetails> {
    let Some(db) = dump_instance_of(&worker.resource).map(str::to_string) else {
        return Ok(TaskDetails::default());
    };
    let region = worker.region.clone();
    let resource = worker.resource.clone();
    let aws = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let admitted = |found: &DbInstanceInfo| {
        let tag = config.spec.allowed_sources.admits_tags(&found.tags).err()?;
        Some((
            FailureReason::SourceNotAllowed,
            format!(
                "DB instance {} no longer carries tag {tag}, which WorkerConfiguration {:?} requires of its sources",
                found.identifier,
                config.name_any()
            ),
        ))
    };
    let opened = Box::pin(open_path(
        (job, ctx, config),
        &aws,
        (&region, &db, &resource),
        FailureReason::SourceDatabaseNotFound,
        &admitted,
        &mut worker.database_access,
    ))
    .await;
    let (found, worker_group) = match opened {
        Ok(Path::Open {
            found,
            worker_group,
        }) => (found, worker_group),
        Ok(Path::Wait(note)) => return Ok(wait(note)),
        Ok(Path::Failed(reason, message)) => {
            mark_failed(worker, reason, &message, Timestamp::now());
            return Ok(TaskDetails::default());
        }
        // A failed call waits with what AWS said (the job's other workers
        // still launch); the next reconcile tries again.
        Err(e) => {
            return Ok(wait(format!(
                "preparing the path to DB instance {db}: {e}; retrying"
            )));
        }
    };
    let on_db = worker
        .database_access
        .as_ref()
        .map(|a| a.database_security_group_id.as_str());
    let image = image_of(&found, on_db);
    Ok(TaskDetails {
        policy: super::backup_job::made_by_policy(job),
        database: Some(database_task(
            &found,
            &region,
            databases_of(job, &resource),
            image,
        )),
        security_groups: vec![worker_group],
        ..TaskDetails::default()
    })
}

/// Whether restore point `id` (`<job>/<resource>`) is a PostgreSQL
/// dump's.
pub fn is_dump_point(id: &str) -> bool {
    id.split_once('/')
        .is_some_and(|(_, resource)| dump_instance_of(resource).is_some())
}

/// Right before the worker that loads a dump into an existing DB instance
/// is launched (a RestoreJob of mode `database` from a dump's restore
/// point): as [`prepare`], the path to the DB instance of
/// `spec.database`; the worker checks that each database it loads is
/// absent or empty.
pub async fn prepare_load(
    job: &RestoreJob,
    worker: &mut RestoreWorkerStatus,
    config: &WorkerConfiguration,
    ctx: &Context,
) -> Result<TaskDetails> {
    let Some(target) = job.spec.database.clone() else {
        return Ok(TaskDetails::default());
    };
    let db = target.db_instance_id.clone();
    let region = worker.region.clone();
    let resource = worker.resource.clone();
    let aws = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let opened = Box::pin(open_path(
        (job, ctx, config),
        &aws,
        (&region, &db, &resource),
        FailureReason::DatabaseRestoreTargetNotFound,
        &|_| None,
        &mut worker.database_access,
    ))
    .await;
    let (found, worker_group) = match opened {
        Ok(Path::Open {
            found,
            worker_group,
        }) => (found, worker_group),
        Ok(Path::Wait(note)) => return Ok(wait(note)),
        Ok(Path::Failed(reason, message)) => {
            mark_failed(worker, reason, &message, Timestamp::now());
            return Ok(TaskDetails::default());
        }
        Err(e) => {
            return Ok(wait(format!(
                "preparing the path to DB instance {db}: {e}; retrying"
            )));
        }
    };
    worker.restored_database = Some(RestoredDatabase {
        db_instance_id: db.clone(),
        db_instance_arn: found.arn.clone(),
        state: found.status.clone(),
        endpoint_address: found.address.clone(),
        endpoint_port: found.port,
        requested_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        db_cluster_id: None,
        db_cluster_arn: None,
        cluster_state: None,
        reader_endpoint_address: None,
    });
    let on_db = worker
        .database_access
        .as_ref()
        .map(|a| a.database_security_group_id.as_str());
    let image = image_of(&found, on_db);
    Ok(TaskDetails {
        restore_point: Some(resource),
        database: Some(database_task(
            &found,
            &region,
            target.databases.clone(),
            image,
        )),
        security_groups: vec![worker_group],
        ..TaskDetails::default()
    })
}

/// The pair of a RestoreJob's load (see [`release`]).
pub async fn release_load(
    job: &RestoreJob,
    status: &mut RestoreJobStatus,
    ctx: &Context,
) -> Result<()> {
    let Some(db) = job.spec.database.as_ref().map(|d| d.db_instance_id.clone()) else {
        return Ok(());
    };
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for w in status.workers.iter_mut() {
        let RestoreWorkerStatus {
            worker,
            database_access,
            ..
        } = w;
        entries.push((worker, db.clone(), database_access));
    }
    release(job, entries, ctx).await
}

/// [`settling`] of a RestoreJob's load.
pub fn load_settling(status: &RestoreJobStatus) -> Option<Settling> {
    settling(
        status
            .workers
            .iter()
            .map(|w| (&w.worker, w.database_access.as_ref())),
    )
}

/// Whether an entry's pair may go: its resource is done (succeeded or
/// failed for good) or suspended, and its worker is terminated or was
/// never launched. (A suspended job's next attempt makes the pair again.)
fn releasable(w: &WorkerStatus, access: Option<&DatabaseAccessStatus>) -> bool {
    access.is_some()
        && (w.phase.is_finished() || w.phase == crate::api::Phase::Suspended)
        && !w.is_active()
}

/// Where removing a pair stands.
#[derive(Debug, PartialEq, Eq)]
enum Released {
    Gone,
    /// Not yet, and why (for the job's conditions).
    Waiting(String),
}

/// Removes the database group from the DB instance (once RDS can modify
/// it) and deletes the pair.
async fn release_pair(
    aws: &AwsClients,
    region: &str,
    db: &str,
    access: &DatabaseAccessStatus,
) -> Result<Released> {
    let ours = &access.database_security_group_id;
    if let Some(found) = aws.databases().describe_instance(region, db).await?
        && found.vpc_security_group_ids.contains(ours)
    {
        if found.status != "available" {
            return Ok(Released::Waiting(format!(
                "DB instance {db} is {}; its security group {ours} is removed once it is available",
                found.status
            )));
        }
        let rest: Vec<String> = found
            .vpc_security_group_ids
            .iter()
            .filter(|g| *g != ours)
            .cloned()
            .collect();
        if rest.is_empty() {
            return Ok(Released::Waiting(format!(
                "security group {ours} is DB instance {db}'s only one (its other groups were removed meanwhile), and RDS keeps at least one; give the DB instance its own group back"
            )));
        }
        match aws.databases().set_security_groups(region, db, &rest).await {
            Ok(()) => info!(
                db,
                group = ours.as_str(),
                "removed the dump's security group from the DB instance"
            ),
            Err(e) if e.code() == Some("InvalidDBInstanceState") => {
                return Ok(Released::Waiting(format!(
                    "RDS cannot modify DB instance {db} now ({e})"
                )));
            }
            Err(e) => {
                return Ok(Released::Waiting(format!(
                    "could not remove security group {ours} from DB instance {db}: {e}; the controller's role needs rds:ModifyDBInstance on it (tag {}={})",
                    tags::DUMP_ACCESS,
                    tags::DUMP_ACCESS_VALUE
                )));
            }
        }
        // Deleted once RDS has let go of it (DependencyViolation until then).
    }
    // A half-made pair (a crash between its two groups) has one group.
    let groups: Vec<String> = [
        access.worker_security_group_id.clone(),
        access.database_security_group_id.clone(),
    ]
    .into_iter()
    .filter(|g| !g.is_empty())
    .collect();
    Ok(
        match aws.network().delete_pair_groups(region, &groups).await {
            Ok(true) => Released::Gone,
            Ok(false) => Released::Waiting(format!(
                "security groups {} are still in use (the worker shutting down, or RDS applying the change)",
                groups.join(", ")
            )),
            Err(e) => Released::Waiting(format!(
                "could not delete security groups {}: {e}",
                groups.join(", ")
            )),
        },
    )
}

/// A job's entry as [`release`] takes it: the worker, its DB instance,
/// and its pair.
pub(super) type Entry<'a> = (
    &'a mut WorkerStatus,
    String,
    &'a mut Option<DatabaseAccessStatus>,
);

/// After the workers' messages: the pairs of a job's finished entries
/// whose worker is gone are removed; what holds one back is recorded.
/// `entries` are the job's entries, each with its DB instance and its
/// pair.
pub(super) async fn release<K: WorkerJob>(
    job: &K,
    entries: Vec<Entry<'_>>,
    ctx: &Context,
) -> Result<()> {
    for (w, db, slot) in entries {
        let Some(access) = slot.clone().filter(|a| releasable(w, Some(a))) else {
            continue;
        };
        let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
        match Box::pin(release_pair(&aws, &w.region, &db, &access)).await {
            Ok(Released::Gone) => {
                info!(db, "deleted a worker's security groups to its DB instance");
                *slot = None;
            }
            Ok(Released::Waiting(why)) => {
                if let Some(a) = slot.as_mut() {
                    a.release_waiting = Some(why);
                }
            }
            Err(e) => {
                warn!(db, error = %e, "could not remove a worker's security groups yet");
                if let Some(a) = slot.as_mut() {
                    a.release_waiting = Some(e.to_string());
                }
            }
        }
    }
    Ok(())
}

/// The pairs of a BackupJob's dumps (see [`release`]).
pub async fn release_dumps(
    job: &BackupJob,
    status: &mut BackupJobStatus,
    ctx: &Context,
) -> Result<()> {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for w in status.workers.iter_mut() {
        let Some(db) = dump_instance_of(&w.resource).map(str::to_string) else {
            continue;
        };
        let BackupWorkerStatus {
            worker,
            database_access,
            ..
        } = w;
        entries.push((worker, db, database_access));
    }
    release(job, entries, ctx).await
}

/// A job whose workers' pairs are still there is not finished.
pub(super) fn settling<'a>(
    entries: impl IntoIterator<Item = (&'a WorkerStatus, Option<&'a DatabaseAccessStatus>)>,
) -> Option<Settling> {
    let waiting: Vec<(&WorkerStatus, &DatabaseAccessStatus)> = entries
        .into_iter()
        .filter(|(w, a)| releasable(w, *a))
        .filter_map(|(w, a)| Some((w, a?)))
        .collect();
    let names: Vec<&str> = waiting.iter().map(|(w, _)| w.resource.as_str()).collect();
    let why: Vec<&str> = waiting
        .iter()
        .filter_map(|(_, a)| a.release_waiting.as_deref())
        .collect();
    (!waiting.is_empty()).then(|| Settling {
        note: format!(
            "removing the security groups that let the worker of {} reach its DB instance{}",
            names.join(", "),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        ),
        recheck: RELEASE_RECHECK,
    })
}

/// [`settling`] of a BackupJob's dumps.
pub fn dumps_settling(status: &BackupJobStatus) -> Option<Settling> {
    settling(
        status
            .workers
            .iter()
            .map(|w| (&w.worker, w.database_access.as_ref())),
    )
}

/// Deletes this cluster's pairs (of dumps and of loads) in one region
/// and account whose job is gone, or finished without one of its entries
/// naming them (a status write lost); returns how many pairs went.
pub(super) async fn sweep(ctx: &Context, aws: &AwsClients, region: &str, grace: Duration) -> usize {
    let ours = BTreeMap::from([
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::CLUSTER_ID.to_string(), ctx.cluster_id.clone()),
    ]);
    let groups = match aws.network().pair_groups(region, &ours).await {
        Ok(g) => g,
        Err(e) => {
            warn!(region, error = %e, "garbage collection: could not list dump security groups");
            return 0;
        }
    };
    // Pairs by job UID and resource.
    let mut pairs: BTreeMap<(String, String), Vec<&crate::aws::group_pairs::PairGroup>> =
        BTreeMap::new();
    let now = Timestamp::now();
    for g in &groups {
        let tag = |k: &str| g.tags.get(k).cloned().unwrap_or_default();
        let made = tag(tags::REQUESTED_AT).parse::<Timestamp>().ok();
        let old_enough =
            made.is_some_and(|t| now.duration_since(t).as_secs() >= grace.as_secs() as i64);
        if !old_enough {
            continue;
        }
        if ctx
            .namespace
            .as_deref()
            .is_some_and(|ns| tag(tags::NAMESPACE) != ns)
        {
            continue;
        }
        pairs
            .entry((tag(tags::JOB_UID), tag(tags::RESOURCE)))
            .or_default()
            .push(g);
    }
    let mut deleted = 0;
    for ((uid, resource), members) in pairs {
        let tag = |k: &str| members[0].tags.get(k).cloned().unwrap_or_default();
        let (ns, name) = (tag(tags::NAMESPACE), tag(tags::JOB_NAME));
        // The job's own reconcile removes what its status names, and an
        // unfinished job may still launch with it.
        let owned = match tag(tags::JOB_KIND).as_str() {
            "BackupJob" => still_owned(
                ctx,
                ctx.jobs.get(&ObjectRef::new(&name).within(&ns)),
                &uid,
                |s: &BackupJobStatus| {
                    s.workers
                        .iter()
                        .any(|w| w.resource == resource && w.database_access.is_some())
                },
            ),
            "RestoreJob" => still_owned(
                ctx,
                ctx.restores.get(&ObjectRef::new(&name).within(&ns)),
                &uid,
                |s: &RestoreJobStatus| {
                    s.workers
                        .iter()
                        .any(|w| w.resource == resource && w.database_access.is_some())
                },
            ),
            _ => true,
        };
        if owned {
            continue;
        }
        // Pairs made before they named their DB instance were dumps'.
        let db = match members[0].tags.get(tags::DB_INSTANCE) {
            Some(db) => db.as_str(),
            None => match dump_instance_of(&resource) {
                Some(db) => db,
                None => continue,
            },
        };
        let find = |role: &str| {
            members
                .iter()
                .find(|g| {
                    g.tags
                        .get(crate::aws::group_pairs::GROUP_ROLE_TAG)
                        .map(String::as_str)
                        == Some(role)
                })
                .map(|g| g.group_id.clone())
                .unwrap_or_default()
        };
        let access = DatabaseAccessStatus {
            worker_security_group_id: find("worker"),
            database_security_group_id: find("database"),
            release_waiting: None,
        };
        // A worker of a deleted job may still be shutting down: EC2 then
        // refuses, and the next sweep tries again.
        match Box::pin(release_pair(aws, region, db, &access)).await {
            Ok(Released::Gone) => {
                info!(
                    region,
                    db,
                    job = name,
                    "garbage collection: deleted a worker's security groups to its DB instance whose job is gone"
                );
                deleted += 1;
            }
            Ok(Released::Waiting(why)) => {
                info!(
                    region,
                    db,
                    why,
                    "garbage collection: a worker's security groups to its DB instance stay for now"
                )
            }
            Err(e) => {
                warn!(region, db, error = %e, "garbage collection: could not delete a worker's security groups to its DB instance")
            }
        }
    }
    deleted
}

/// Whether `job` (if it is the one of UID `uid`) still answers for a
/// pair: it is unfinished, or its status names the pair.
fn still_owned<K: WorkerJob>(
    ctx: &Context,
    job: Option<std::sync::Arc<K>>,
    uid: &str,
    names_it: impl Fn(&crate::api::JobStatus<K::Worker>) -> bool,
) -> bool {
    let Some(job) = job.filter(|j| j.uid().as_deref() == Some(uid)) else {
        return false;
    };
    let status = super::job::status::baseline(&*job, ctx).unwrap_or_default();
    !status.phase.is_finished() || names_it(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, WorkerAccount, WorkerStatus};

    fn gone(w: &BackupWorkerStatus) -> bool {
        releasable(w, w.database_access.as_ref())
    }

    #[test]
    fn a_pair_goes_once_its_resource_is_done_and_its_worker_gone() {
        let entry =
            |phase, instance: Option<&str>, terminated: bool, access: bool| BackupWorkerStatus {
                worker: WorkerStatus {
                    resource: "rds-pg-orders".into(),
                    phase,
                    instance_id: instance.map(String::from),
                    terminated_time: terminated.then(|| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now())
                    }),
                    ..Default::default()
                },
                database_access: access.then(|| DatabaseAccessStatus {
                    worker_security_group_id: "sg-1".into(),
                    database_security_group_id: "sg-2".into(),
                    release_waiting: None,
                }),
                ..Default::default()
            };
        assert!(gone(&entry(Phase::Succeeded, Some("i-1"), true, true)));
        assert!(
            gone(&entry(Phase::Failed, None, false, true)),
            "never launched"
        );
        assert!(
            !gone(&entry(Phase::Succeeded, Some("i-1"), false, true)),
            "worker still running"
        );
        assert!(
            !gone(&entry(Phase::Running, Some("i-1"), true, true)),
            "a retry may come"
        );
        assert!(
            !gone(&entry(Phase::Succeeded, Some("i-1"), true, false)),
            "nothing to remove"
        );
        let status = BackupJobStatus {
            workers: vec![entry(Phase::Succeeded, Some("i-1"), true, true)],
            ..Default::default()
        };
        assert!(dumps_settling(&status).is_some_and(|s| s.note.contains("rds-pg-orders")));
        assert!(dumps_settling(&BackupJobStatus::default()).is_none());
    }

    #[test]
    fn only_postgres_in_the_configurations_vpc_with_a_managed_secret_is_dumped() {
        let config: WorkerConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
            "metadata": {"name": "prod"},
            "spec": {"region": "eu-west-1", "account": "production"},
            "status": {"vpcId": "vpc-1"}
        }))
        .expect("a configuration");
        let good = DbInstanceInfo {
            identifier: "orders".into(),
            engine: "postgres".into(),
            vpc_id: Some("vpc-1".into()),
            address: Some("orders.example".into()),
            master_user_secret_arn: Some(
                "arn:aws:secretsmanager:eu-west-1:1:secret:rds!db-1".into(),
            ),
            tags: BTreeMap::from([(tags::DUMP_ACCESS.into(), tags::DUMP_ACCESS_VALUE.into())]),
            ..Default::default()
        };
        assert_eq!(not_possible(&config, &good), None);
        let cases = [
            (
                "mysql",
                DbInstanceInfo {
                    engine: "mysql".into(),
                    ..good.clone()
                },
                "engine",
            ),
            (
                "no secret",
                DbInstanceInfo {
                    master_user_secret_arn: None,
                    ..good.clone()
                },
                "ManageMasterUserPassword",
            ),
            (
                "another VPC",
                DbInstanceInfo {
                    vpc_id: Some("vpc-2".into()),
                    ..good.clone()
                },
                "VPC vpc-2",
            ),
            (
                "no endpoint",
                DbInstanceInfo {
                    address: None,
                    ..good.clone()
                },
                "no endpoint",
            ),
            (
                "not opted in",
                DbInstanceInfo {
                    tags: BTreeMap::new(),
                    ..good.clone()
                },
                "tender.dev/dump-access=allowed",
            ),
        ];
        for (name, found, says) in cases {
            let why = not_possible(&config, &found).unwrap_or_default();
            assert!(why.contains(says), "{name}: {why}");
        }
        let mut backup = config.clone();
        backup.spec.account = WorkerAccount::Backup;
        backup.spec.backup_account = Some(crate::api::AccountAccess {
            role_arn: "arn:aws:iam::222222222222:role/tender-backup".into(),
            external_id: None,
        });
        assert!(not_possible(&backup, &good).is_some_and(|w| w.contains("account: production")));
    }
}
