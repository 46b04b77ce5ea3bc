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
use super::job::kind::{Settling, TaskDetails};
use super::{Context, Result};
use crate::api::{
    BackupJob, BackupJobStatus, BackupWorkerStatus, DB_DUMP_RESOURCE_PREFIX, DatabaseAccessStatus,
    WorkerConfiguration,
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

/// The tags of a job's pair for `resource`.
fn pair_tags(ctx: &Context, job: &BackupJob, resource: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (tags::MANAGED_BY.into(), tags::MANAGED_BY_VALUE.into()),
        (tags::CLUSTER_ID.into(), ctx.cluster_id.clone()),
        (tags::NAMESPACE.into(), job.namespace().unwrap_or_default()),
        (tags::JOB_KIND.into(), "BackupJob".into()),
        (tags::JOB_NAME.into(), job.name_any()),
        (tags::JOB_UID.into(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.into(), resource.into()),
    ])
}

/// A task not ready to launch yet: why, for the worker's message.
fn wait(note: String) -> TaskDetails {
    TaskDetails {
        wait: Some(note),
        ..TaskDetails::default()
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
    match Box::pin(prepare_once(job, worker, config, ctx)).await {
        Ok(details) => Ok(details),
        // A failed call waits with what AWS said (the job's other workers
        // still launch); the next reconcile tries again.
        Err(e) => Ok(wait(format!(
            "preparing the path to DB instance {}: {e}; retrying",
            dump_instance_of(&worker.resource).unwrap_or_default()
        ))),
    }
}

async fn prepare_once(
    job: &BackupJob,
    worker: &mut BackupWorkerStatus,
    config: &WorkerConfiguration,
    ctx: &Context,
) -> Result<TaskDetails> {
    let Some(db) = dump_instance_of(&worker.resource).map(str::to_string) else {
        return Ok(TaskDetails::default());
    };
    let region = worker.region.clone();
    let aws = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let now = Timestamp::now();
    let Some(found) = aws.databases().describe_instance(&region, &db).await? else {
        let message = format!("DB instance {db} does not exist in {region} any more");
        mark_failed(worker, FailureReason::SourceDatabaseNotFound, &message, now);
        return Ok(TaskDetails::default());
    };
    if let Err(tag) = config.spec.allowed_sources.admits_tags(&found.tags) {
        let message = format!(
            "DB instance {db} no longer carries tag {tag}, which WorkerConfiguration {:?} requires of its sources",
            config.name_any()
        );
        mark_failed(worker, FailureReason::SourceNotAllowed, &message, now);
        return Ok(TaskDetails::default());
    }
    if let Some(message) = not_possible(config, &found) {
        mark_failed(
            worker,
            FailureReason::DatabaseDumpNotPossible,
            &message,
            now,
        );
        return Ok(TaskDetails::default());
    }
    if matches!(
        found.status.as_str(),
        "stopped" | "stopping" | "failed" | "storage-full"
    ) || found.status.starts_with("incompatible-")
        || found.status.starts_with("inaccessible-")
    {
        let message = format!(
            "DB instance {db} is {}: it cannot be dumped until it is available again",
            found.status
        );
        mark_failed(
            worker,
            FailureReason::SourceDatabaseUnavailable,
            &message,
            now,
        );
        return Ok(TaskDetails::default());
    }
    let uid = job.uid().unwrap_or_default();
    let port = found.port.unwrap_or(5432);
    let pair = aws
        .network()
        .ensure_group_pair(
            &region,
            found.vpc_id.as_deref().unwrap_or_default(),
            &format!("tender-dump-{uid}-{db}"),
            &pair_tags(ctx, job, &worker.resource),
            port,
        )
        .await?;
    worker.database_access = Some(DatabaseAccessStatus {
        worker_security_group_id: pair.worker.clone(),
        database_security_group_id: pair.database.clone(),
        release_waiting: None,
    });
    if !found.vpc_security_group_ids.contains(&pair.database) {
        if found.vpc_security_group_ids.len() >= SECURITY_GROUPS_PER_INSTANCE {
            let message = format!(
                "DB instance {db} has {} VPC security groups, RDS's quota per DB instance, and the dump needs to add one that admits its worker; remove one of the DB instance's groups (RDS does not raise this quota)",
                found.vpc_security_group_ids.len()
            );
            mark_failed(
                worker,
                FailureReason::DatabaseDumpNotPossible,
                &message,
                now,
            );
            return Ok(TaskDetails::default());
        }
        if found.status != "available" {
            return Ok(wait(format!(
                "waiting for DB instance {db} to be available (it is {}) to add security group {} that admits the dump's worker",
                found.status, pair.database
            )));
        }
        let mut groups = found.vpc_security_group_ids.clone();
        groups.push(pair.database.clone());
        match aws
            .databases()
            .set_security_groups(&region, &db, &groups)
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some("InvalidDBInstanceState") => {
                return Ok(wait(format!(
                    "RDS cannot modify DB instance {db} now ({e}); adding the dump's security group later"
                )));
            }
            Err(e) if e.failure_reason() == FailureReason::AwsPermissionDenied => {
                let message = format!(
                    "Tender may not add the dump's security group to DB instance {db}: {e}; the controller's role needs rds:ModifyDBInstance on it (iam/controller-policy.json grants it on DB instances tagged {}={})",
                    tags::DUMP_ACCESS,
                    tags::DUMP_ACCESS_VALUE
                );
                mark_failed(worker, FailureReason::AwsPermissionDenied, &message, now);
                return Ok(TaskDetails::default());
            }
            Err(e) => return Err(e.into()),
        }
        crate::faults::crash_point("after-modify-db-instance");
        info!(
            db,
            group = pair.database,
            "added the dump's security group to the DB instance"
        );
        return Ok(wait(format!(
            "added security group {} to DB instance {db}; waiting for RDS to apply it",
            pair.database
        )));
    }
    if found.pending_security_group_ids.contains(&pair.database) {
        return Ok(wait(format!(
            "waiting for RDS to apply security group {} to DB instance {db}",
            pair.database
        )));
    }
    let ca_bundle_url = std::env::var("TENDER_RDS_CA_BUNDLE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| RDS_CA_BUNDLE_URL.to_string())
        .replace("{region}", &region);
    let image = DatabaseImage {
        identifier: db.clone(),
        engine: found.engine.clone(),
        engine_version: found.engine_version.clone(),
        instance_class: found.instance_class.clone(),
        port: found.port,
        allocated_gib: found.allocated_gib,
        subnet_group: found.subnet_group.clone(),
        // As the owner set them: the dump's own group is not the DB
        // instance's.
        vpc_security_group_ids: found
            .vpc_security_group_ids
            .iter()
            .filter(|g| **g != pair.database)
            .cloned()
            .collect(),
        parameter_group: found.parameter_group.clone(),
        master_username: found.master_username.clone(),
        storage_encrypted: found.storage_encrypted,
        kms_key_id: found.kms_key_id.clone(),
        snapshots: Vec::new(),
        dump: None,
    };
    Ok(TaskDetails {
        policy: super::backup_job::made_by_policy(job),
        database: Some(DatabaseTask {
            db_instance_id: db.clone(),
            host: found.address.clone().unwrap_or_default(),
            port: u16::try_from(port).unwrap_or(5432),
            user: found.master_username.clone().unwrap_or_default(),
            secret_arn: found.master_user_secret_arn.clone().unwrap_or_default(),
            engine_version: found.engine_version.clone().unwrap_or_default(),
            sslmode: "verify-full".into(),
            ca_bundle_url,
            databases: databases_of(job, &worker.resource),
            image,
        }),
        security_groups: vec![pair.worker],
        ..TaskDetails::default()
    })
}

/// Whether a dump entry's pair may go: its resource is done (succeeded or
/// failed for good) or suspended, and its worker is terminated or was
/// never launched. (A suspended job's next attempt makes the pair again.)
fn releasable(w: &BackupWorkerStatus) -> bool {
    w.database_access.is_some()
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

/// After the workers' messages: the pairs of finished dump entries whose
/// worker is gone are removed; what holds one back is recorded.
pub async fn release(job: &BackupJob, status: &mut BackupJobStatus, ctx: &Context) -> Result<()> {
    for w in status.workers.iter_mut().filter(|w| releasable(w)) {
        let (Some(db), Some(access)) = (
            dump_instance_of(&w.resource).map(str::to_string),
            w.database_access.clone(),
        ) else {
            continue;
        };
        let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
        match Box::pin(release_pair(&aws, &w.region, &db, &access)).await {
            Ok(Released::Gone) => {
                info!(db, "deleted the dump's security groups");
                w.database_access = None;
            }
            Ok(Released::Waiting(why)) => {
                if let Some(a) = w.database_access.as_mut() {
                    a.release_waiting = Some(why);
                }
            }
            Err(e) => {
                warn!(db, error = %e, "could not remove the dump's security groups yet");
                if let Some(a) = w.database_access.as_mut() {
                    a.release_waiting = Some(e.to_string());
                }
            }
        }
    }
    Ok(())
}

/// A job whose dump pairs are still there is not finished.
pub fn settling(status: &BackupJobStatus) -> Option<Settling> {
    let waiting: Vec<&str> = status
        .workers
        .iter()
        .filter(|w| releasable(w))
        .map(|w| w.resource.as_str())
        .collect();
    let why: Vec<&str> = status
        .workers
        .iter()
        .filter(|w| releasable(w))
        .filter_map(|w| w.database_access.as_ref()?.release_waiting.as_deref())
        .collect();
    (!waiting.is_empty()).then(|| Settling {
        note: format!(
            "removing the security groups that let the dump's worker reach {}{}",
            waiting.join(", "),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        ),
        recheck: RELEASE_RECHECK,
    })
}

/// Deletes this cluster's dump pairs in one region and account whose job
/// is gone, or finished without one of its entries naming them (a status
/// write lost); returns how many pairs went.
pub(super) async fn sweep(ctx: &Context, aws: &AwsClients, region: &str, grace: Duration) -> usize {
    let ours = BTreeMap::from([
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::CLUSTER_ID.to_string(), ctx.cluster_id.clone()),
        (tags::JOB_KIND.to_string(), "BackupJob".to_string()),
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
        let owner = ctx
            .jobs
            .get(&ObjectRef::<BackupJob>::new(&name).within(&ns))
            .filter(|job| job.uid().as_deref() == Some(uid.as_str()));
        if let Some(job) = &owner {
            let status = super::job::status::baseline(&**job, ctx).unwrap_or_default();
            let entry = status.workers.iter().find(|w| w.resource == resource);
            // The job's own reconcile removes what its status names, and
            // an unfinished job may still launch with it.
            if !status.phase.is_finished() || entry.is_some_and(|w| w.database_access.is_some()) {
                continue;
            }
        }
        let Some(db) = dump_instance_of(&resource) else {
            continue;
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
                    "garbage collection: deleted a dump's security groups whose job is gone"
                );
                deleted += 1;
            }
            Ok(Released::Waiting(why)) => {
                info!(
                    region,
                    db, why, "garbage collection: a dump's security groups stay for now"
                )
            }
            Err(e) => {
                warn!(region, db, error = %e, "garbage collection: could not delete a dump's security groups")
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, WorkerAccount, WorkerStatus};

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
        assert!(releasable(&entry(
            Phase::Succeeded,
            Some("i-1"),
            true,
            true
        )));
        assert!(
            releasable(&entry(Phase::Failed, None, false, true)),
            "never launched"
        );
        assert!(
            !releasable(&entry(Phase::Succeeded, Some("i-1"), false, true)),
            "worker still running"
        );
        assert!(
            !releasable(&entry(Phase::Running, Some("i-1"), true, true)),
            "a retry may come"
        );
        assert!(
            !releasable(&entry(Phase::Succeeded, Some("i-1"), true, false)),
            "nothing to remove"
        );
        let status = BackupJobStatus {
            workers: vec![entry(Phase::Succeeded, Some("i-1"), true, true)],
            ..Default::default()
        };
        assert!(settling(&status).is_some_and(|s| s.note.contains("rds-pg-orders")));
        assert!(settling(&BackupJobStatus::default()).is_none());
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
