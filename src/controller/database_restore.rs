//! A RestoreJob of mode `database`: the controller reads the restore
//! point's manifest (verified with the repository's integrity key), creates
//! a new DB instance from its DB snapshot with RestoreDBInstanceFromDBSnapshot
//! (never over an existing one: RDS answers `DBInstanceAlreadyExists`, and
//! Tender checks first), waits until RDS has it `available`, and records
//! its endpoint. No worker. A DB cluster snapshot's restore point becomes a
//! new DB cluster (RestoreDBClusterFromSnapshot) and, for Aurora, its
//! writer DB instance (CreateDBInstance into the cluster, once the cluster
//! is `available`): [`advance_cluster`].
//!
//! Idempotent like the backup (`database_backup`): a DB instance of the
//! requested name that carries this job's UID tag is the one an earlier
//! reconcile created, and is followed, not created again; one without it
//! belongs to someone else, and the job fails without touching it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::job::job_access;
use super::job::kind::{Advance, ControllerStep};
use super::{Context, Error, Result};
use crate::api::{
    DB_CLUSTER_RESOURCE_PREFIX, DB_INSTANCE_RESOURCE_PREFIX, DatabaseRestore, RestoreJob,
    RestoreWorkerStatus, RestoredDatabase,
};
use crate::aws::accounts::Access;
use crate::aws::rds::{
    ClusterRestore, Databases, DbClusterInfo, DbInstanceInfo, InstanceRestore, SnapshotKind,
};
use crate::mover::MoverError;
use crate::mover::integrity;
use crate::mover::manifest::{DatabaseImage, RepositoryLocation, parse_manifest};
use crate::names::tags;
use crate::reasons::FailureReason;

/// How long a DB instance RDS accepted may be missing from
/// DescribeDBInstances before Tender takes it for deleted.
const VISIBILITY_GRACE_SECONDS: i64 = 60;

/// Whether restore point `id` (`<job>/<resource>`) is a database's (a DB
/// instance's or a DB cluster's snapshot).
pub fn is_database_point(id: &str) -> bool {
    id.split_once('/').is_some_and(|(_, resource)| {
        resource.starts_with(DB_INSTANCE_RESOURCE_PREFIX)
            || resource.starts_with(DB_CLUSTER_RESOURCE_PREFIX)
    })
}

/// Whether restore point `id` is a DB cluster's.
fn is_cluster_point(id: &str) -> bool {
    id.split_once('/')
        .is_some_and(|(_, resource)| resource.starts_with(DB_CLUSTER_RESOURCE_PREFIX))
}

/// DB instance states from which RDS never brings it to `available` by
/// itself.
fn is_failed_state(status: &str) -> bool {
    matches!(
        status,
        "failed"
            | "incompatible-restore"
            | "incompatible-parameters"
            | "incompatible-network"
            | "incompatible-option-group"
            | "inaccessible-encryption-credentials"
            | "inaccessible-encryption-credentials-recoverable"
            | "restore-error"
            | "storage-full"
            | "deleting"
    )
}

fn record(worker: &mut RestoreWorkerStatus, found: &DbInstanceInfo, requested: Time) {
    worker.restored_database = Some(RestoredDatabase {
        db_instance_id: found.identifier.clone(),
        db_instance_arn: found.arn.clone(),
        state: found.status.clone(),
        endpoint_address: found.address.clone(),
        endpoint_port: found.port,
        requested_time: requested,
        db_cluster_id: None,
        db_cluster_arn: None,
        cluster_state: None,
        reader_endpoint_address: None,
    });
}

/// One step of the restore (see the module's doc).
pub async fn advance(
    job: &RestoreJob,
    worker: &mut RestoreWorkerStatus,
    step: &ControllerStep<'_>,
    ctx: &Context,
) -> Result<Advance> {
    let Some(wanted) = job.spec.database.clone() else {
        return Ok(Advance::Failed {
            reason: FailureReason::RestoreModeMismatch,
            message: "mode database needs spec.database".into(),
        });
    };
    let cluster_point = is_cluster_point(&worker.resource);
    if cluster_point != wanted.db_cluster_id.is_some() {
        let message = if cluster_point {
            format!(
                "restore point {} is a DB cluster's: set spec.database.dbClusterId (the new DB cluster) and dbInstanceId (its writer DB instance) in a new RestoreJob",
                worker.resource
            )
        } else {
            format!(
                "restore point {} is a DB instance's: spec.database.dbClusterId applies only to a DB cluster's; leave it out in a new RestoreJob",
                worker.resource
            )
        };
        return Ok(Advance::Failed {
            reason: FailureReason::RestoreModeMismatch,
            message,
        });
    }
    let region = worker.region.clone();
    let production = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let rds = production.databases();
    if cluster_point {
        return advance_cluster(job, worker, &wanted, (&rds, step), ctx).await;
    }
    let id = wanted.db_instance_id.clone();
    let uid = job.uid().unwrap_or_default();

    if let Some(recorded) = worker.restored_database.clone() {
        let Some(found) = rds.describe_instance(&region, &id).await? else {
            let age = step.now.duration_since(recorded.requested_time.0).as_secs();
            if age < VISIBILITY_GRACE_SECONDS {
                return Ok(Advance::Wait {
                    recheck: Duration::from_secs(3),
                });
            }
            return Ok(Advance::Failed {
                reason: FailureReason::DatabaseRestoreFailed,
                message: format!(
                    "DB instance {id} is gone from {region}: deleted while RDS created it"
                ),
            });
        };
        record(worker, &found, recorded.requested_time.clone());
        if found.status == "available" {
            worker.message = Some(format!(
                "DB instance {id} is available at {}:{}",
                found.address.as_deref().unwrap_or("?"),
                found.port.unwrap_or_default()
            ));
            return Ok(Advance::Done);
        }
        if is_failed_state(&found.status) {
            return Ok(Advance::Failed {
                reason: FailureReason::DatabaseRestoreFailed,
                message: format!(
                    "RDS put the restored DB instance {id} in state {}; it is left for you to inspect and delete",
                    found.status
                ),
            });
        }
        worker.message = Some(format!("DB instance {id} is {}", found.status));
        let age = step.now.duration_since(recorded.requested_time.0).as_secs();
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(if age < 120 { 3 } else { 30 }),
        });
    }

    if let Some(existing) = rds.describe_instance(&region, &id).await? {
        if existing.tags.get(tags::JOB_UID) == Some(&uid) {
            record(worker, &existing, Time(step.now));
            return Ok(Advance::Wait {
                recheck: Duration::from_secs(1),
            });
        }
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseAlreadyExists,
            message: format!(
                "DB instance {id} already exists in {region}; a restore never overwrites a database: set spec.database.dbInstanceId to a new identifier in a new RestoreJob"
            ),
        });
    }
    let Some(repository) = step.repository else {
        worker.message = Some("waiting for the job's BackupRepository".into());
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(30),
        });
    };
    let image = match read_image(job, repository, &worker.resource, ctx).await? {
        Ok(image) => image,
        Err((reason, message)) => return Ok(Advance::Failed { reason, message }),
    };
    let snapshot = match usable_snapshot(&rds, &image, SnapshotKind::Instance, worker).await? {
        Ok(snapshot) => snapshot,
        Err(advance) => return Ok(advance),
    };
    let new_tags = restored_tags(job, &worker.resource, &ctx.cluster_id);
    let groups = wanted.vpc_security_group_ids.clone().unwrap_or_default();
    let request = restore_request(&wanted, &snapshot.identifier, &groups, &new_tags);
    match rds.restore_instance(&region, &request).await {
        Ok(created) => {
            record(worker, &created, Time(step.now));
            worker.message = Some(format!(
                "creating DB instance {id} from DB snapshot {}",
                snapshot.identifier
            ));
            ctx.event(
                job,
                EventType::Normal,
                "DatabaseRestoreStarted",
                "RestoreDatabase",
                format!(
                    "creating DB instance {id} in {region} from DB snapshot {} (restore point {})",
                    snapshot.identifier, worker.resource
                ),
            )
            .await;
            Ok(Advance::Wait {
                recheck: Duration::from_secs(3),
            })
        }
        // Created by a call whose answer was lost, or by someone else at
        // the same moment: the next step tells which by the tags.
        Err(e) if e.code() == Some("DBInstanceAlreadyExists") => Ok(Advance::Wait {
            recheck: Duration::from_secs(5),
        }),
        Err(e) => refused_restore(e, worker, SnapshotKind::Instance, &snapshot.identifier, &id),
    }
}

/// What RDS's refusal of a restore means for the job.
fn refused_restore(
    e: crate::aws::AwsError,
    worker: &mut RestoreWorkerStatus,
    kind: SnapshotKind,
    snapshot: &str,
    id: &str,
) -> Result<Advance> {
    let noun = kind.noun();
    let what = kind.source_noun();
    if e.code() == Some(kind.snapshot_invalid_state()) {
        worker.message = Some(format!("{e}; trying again"));
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(15),
        });
    }
    if e.code() == Some(kind.snapshot_not_found()) {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotMissing,
            message: format!(
                "{noun} {snapshot} of restore point {} is gone: {e}",
                worker.resource
            ),
        });
    }
    if e.is_transient() || e.category() == "AwsPermissionDenied" {
        return Err(e.into());
    }
    Ok(Advance::Failed {
        reason: FailureReason::DatabaseRestoreRefused,
        message: format!(
            "RDS refused to create {what} {id}: {e}; check spec.database (instance class, subnet group, security groups, parameter group) and the account's RDS quotas"
        ),
    })
}

/// The restore point's snapshot of `kind` in the worker's Region, if it is
/// there, this account's and `available`; else what the job does.
async fn usable_snapshot(
    rds: &Databases<'_>,
    image: &DatabaseImage,
    kind: SnapshotKind,
    worker: &mut RestoreWorkerStatus,
) -> Result<std::result::Result<crate::mover::manifest::DatabaseSnapshotRef, Advance>> {
    let region = worker.region.clone();
    let noun = kind.noun();
    let Some(snapshot) = image.snapshots.iter().find(|s| s.region == region).cloned() else {
        let regions: Vec<&str> = image.snapshots.iter().map(|s| s.region.as_str()).collect();
        return Ok(Err(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotMissing,
            message: format!(
                "restore point {} has {noun}s in {regions:?} only; set spec.region to one of them",
                worker.resource
            ),
        }));
    };
    let failed = |message| {
        Ok(Err(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotMissing,
            message,
        }))
    };
    match rds
        .describe_snapshot(kind, &region, &snapshot.identifier)
        .await?
    {
        // The restore point names its snapshot by ARN: one of the same name
        // in another account (another configuration's production account)
        // is not it.
        Some(s) if s.arn.as_deref() != Some(snapshot.arn.as_str()) => failed(format!(
            "restore point {} is in {noun} {}, and the configuration's production account has {:?} under that name; restore with the WorkerConfiguration of the account that took it",
            worker.resource, snapshot.arn, s.arn
        )),
        Some(s) if s.status == "available" => Ok(Ok(snapshot)),
        Some(s) if !s.is_failed() => {
            worker.message = Some(format!(
                "{noun} {} is {}; waiting until it is available",
                s.identifier, s.status
            ));
            Ok(Err(Advance::Wait {
                recheck: Duration::from_secs(15),
            }))
        }
        other => failed(format!(
            "{noun} {} of restore point {} is {} in {region}; this restore point cannot be restored",
            snapshot.identifier,
            worker.resource,
            other.map_or("gone".to_string(), |s| format!("in state {}", s.status))
        )),
    }
}

/// DB cluster states from which RDS never brings it to `available` by
/// itself.
fn is_failed_cluster_state(status: &str) -> bool {
    matches!(
        status,
        "failed"
            | "inaccessible-encryption-credentials"
            | "inaccessible-encryption-credentials-recoverable"
            | "incompatible-network"
            | "incompatible-parameters"
            | "incompatible-restore"
            | "deleting"
    )
}

fn record_cluster(
    worker: &mut RestoreWorkerStatus,
    cluster: &DbClusterInfo,
    writer: Option<&DbInstanceInfo>,
    requested: Time,
) {
    let writer_id = writer
        .map(|w| w.identifier.clone())
        .or_else(|| {
            worker
                .restored_database
                .as_ref()
                .map(|r| r.db_instance_id.clone())
        })
        .unwrap_or_default();
    // Without the writer at hand, what the last step saw of it is kept.
    let writer_arn = writer.map_or_else(
        || {
            worker
                .restored_database
                .as_ref()
                .and_then(|r| r.db_instance_arn.clone())
        },
        |w| w.arn.clone(),
    );
    worker.restored_database = Some(RestoredDatabase {
        db_instance_id: writer_id,
        db_instance_arn: writer_arn,
        // The writer's, once it exists; the cluster's until then.
        state: writer.map_or(cluster.status.clone(), |w| w.status.clone()),
        endpoint_address: cluster.endpoint.clone(),
        endpoint_port: cluster.port,
        requested_time: requested,
        db_cluster_id: Some(cluster.identifier.clone()),
        db_cluster_arn: cluster.arn.clone(),
        cluster_state: Some(cluster.status.clone()),
        reader_endpoint_address: cluster.reader_endpoint.clone(),
    });
}

/// A DB cluster snapshot's restore point: a new DB cluster
/// (`spec.database.dbClusterId`) and, for Aurora, its writer DB instance
/// (`dbInstanceId`), both tagged as this job's. Neither name may be in
/// use by anything else before the cluster is created, so a refusal never
/// leaves half a restore behind; what carries this job's UID tag is what
/// an earlier reconcile created, and is followed.
async fn advance_cluster(
    job: &RestoreJob,
    worker: &mut RestoreWorkerStatus,
    wanted: &DatabaseRestore,
    (rds, step): (&Databases<'_>, &ControllerStep<'_>),
    ctx: &Context,
) -> Result<Advance> {
    let region = worker.region.clone();
    let cluster_id = wanted.db_cluster_id.clone().unwrap_or_default();
    let writer_id = wanted.db_instance_id.clone();
    let uid = job.uid().unwrap_or_default();
    let ours = |tags: &BTreeMap<String, String>| tags.get(tags::JOB_UID) == Some(&uid);
    let exists = |what: &str, id: &str, field: &str| Advance::Failed {
        reason: FailureReason::DatabaseAlreadyExists,
        message: format!(
            "{what} {id} already exists in {region}; a restore never overwrites a database: set spec.database.{field} to a new identifier in a new RestoreJob"
        ),
    };
    let recorded = worker
        .restored_database
        .clone()
        .filter(|r| r.db_cluster_id.is_some());
    let found = rds.describe_cluster(&region, &cluster_id).await?;
    let cluster = match (recorded.as_ref(), found) {
        (Some(r), None) => {
            let age = step.now.duration_since(r.requested_time.0).as_secs();
            if age < VISIBILITY_GRACE_SECONDS {
                return Ok(Advance::Wait {
                    recheck: Duration::from_secs(3),
                });
            }
            return Ok(Advance::Failed {
                reason: FailureReason::DatabaseRestoreFailed,
                message: format!(
                    "DB cluster {cluster_id} is gone from {region}: deleted while RDS created it"
                ),
            });
        }
        (None, Some(c)) if !ours(&c.tags) => {
            return Ok(exists("DB cluster", &cluster_id, "dbClusterId"));
        }
        // The cluster this restore made is gone and another of its name
        // took its place: that one is not followed, let alone given a
        // writer.
        (Some(r), Some(c))
            if !ours(&c.tags) || (r.db_cluster_arn.is_some() && c.arn != r.db_cluster_arn) =>
        {
            return Ok(Advance::Failed {
                reason: FailureReason::DatabaseRestoreFailed,
                message: format!(
                    "DB cluster {cluster_id} in {region} is no longer the one this restore created ({}): it was deleted and another was made under its name, which is left alone",
                    r.db_cluster_arn.as_deref().unwrap_or("no ARN recorded")
                ),
            });
        }
        (None, None) => {
            return start_cluster(job, worker, wanted, (rds, step), ctx).await;
        }
        (_, Some(c)) => c,
    };
    let requested = recorded.map_or(Time(step.now), |r| r.requested_time);
    record_cluster(worker, &cluster, None, requested.clone());
    if is_failed_cluster_state(&cluster.status) {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreFailed,
            message: format!(
                "RDS put the restored DB cluster {cluster_id} in state {}; it is left for you to inspect and delete",
                cluster.status
            ),
        });
    }
    let age = step.now.duration_since(requested.0).as_secs();
    let wait = Advance::Wait {
        recheck: Duration::from_secs(if age < 120 { 3 } else { 30 }),
    };
    if cluster.status != "available" {
        worker.message = Some(format!("DB cluster {cluster_id} is {}", cluster.status));
        return Ok(wait);
    }
    let endpoint = format!(
        "{}:{}",
        cluster.endpoint.as_deref().unwrap_or("?"),
        cluster.port.unwrap_or_default()
    );
    if !cluster.is_aurora() {
        // A Multi-AZ DB cluster: RDS made its DB instances with it.
        let writer = match cluster.members.first() {
            Some(w) => rds.describe_instance(&region, w).await?,
            None => None,
        };
        record_cluster(worker, &cluster, writer.as_ref(), requested);
        worker.message = Some(format!(
            "DB cluster {cluster_id} is available at {endpoint}"
        ));
        return Ok(Advance::Done);
    }
    let Some(writer) = rds.describe_instance(&region, &writer_id).await? else {
        return start_writer(job, worker, wanted, &cluster, (rds, step), ctx).await;
    };
    if !ours(&writer.tags) || writer.db_cluster_identifier.as_deref() != Some(cluster_id.as_str()) {
        return Ok(exists("DB instance", &writer_id, "dbInstanceId"));
    }
    record_cluster(worker, &cluster, Some(&writer), requested);
    if is_failed_state(&writer.status) {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreFailed,
            message: format!(
                "RDS put the writer DB instance {writer_id} of the restored DB cluster {cluster_id} in state {}; both are left for you to inspect and delete",
                writer.status
            ),
        });
    }
    if writer.status != "available" {
        worker.message = Some(format!(
            "DB cluster {cluster_id} is available; its writer DB instance {writer_id} is {}",
            writer.status
        ));
        return Ok(wait);
    }
    worker.message = Some(format!(
        "DB cluster {cluster_id} is available at {endpoint} (writer DB instance {writer_id})"
    ));
    Ok(Advance::Done)
}

/// RestoreDBClusterFromSnapshot of the restore point's DB cluster snapshot.
async fn start_cluster(
    job: &RestoreJob,
    worker: &mut RestoreWorkerStatus,
    wanted: &DatabaseRestore,
    (rds, step): (&Databases<'_>, &ControllerStep<'_>),
    ctx: &Context,
) -> Result<Advance> {
    let region = worker.region.clone();
    let cluster_id = wanted.db_cluster_id.clone().unwrap_or_default();
    let Some(repository) = step.repository else {
        worker.message = Some("waiting for the job's BackupRepository".into());
        return Ok(Advance::Wait {
            recheck: Duration::from_secs(30),
        });
    };
    let image = match read_image(job, repository, &worker.resource, ctx).await? {
        Ok(image) => image,
        Err((reason, message)) => return Ok(Advance::Failed { reason, message }),
    };
    let aurora = crate::aws::rds::is_aurora(&image.engine);
    // An Aurora cluster's writer is made once the cluster is available:
    // its name must be free before the cluster is made, so that a refusal
    // leaves nothing behind. RDS names a Multi-AZ DB cluster's instances
    // itself.
    if aurora
        && let Some(i) = rds
            .describe_instance(&region, &wanted.db_instance_id)
            .await?
        && i.tags.get(tags::JOB_UID) != job.uid().as_ref()
    {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseAlreadyExists,
            message: format!(
                "DB instance {} already exists in {region}; a restore never overwrites a database: set spec.database.dbInstanceId to a new identifier in a new RestoreJob",
                wanted.db_instance_id
            ),
        });
    }
    let class = wanted
        .db_instance_class
        .clone()
        .or(image.instance_class.clone());
    // Aurora Serverless v2: RDS makes a db.serverless instance only in a
    // cluster given a ServerlessV2ScalingConfiguration, which restore
    // points do not record yet. Refused before anything is made.
    if aurora && class.as_deref() == Some("db.serverless") {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreRefused,
            message: format!(
                "the writer of restore point {} would be an Aurora Serverless v2 instance (db.serverless), whose DB cluster needs a capacity range Tender does not record or set yet: set spec.database.dbInstanceClass to a provisioned class (for example db.r6g.large) in a new RestoreJob",
                worker.resource
            ),
        });
    }
    if class.is_none() {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreRefused,
            message: format!(
                "restore point {} does not record the DB cluster's instance class: set spec.database.dbInstanceClass in a new RestoreJob",
                worker.resource
            ),
        });
    }
    let snapshot = match usable_snapshot(rds, &image, SnapshotKind::Cluster, worker).await? {
        Ok(snapshot) => snapshot,
        Err(advance) => return Ok(advance),
    };
    let new_tags = restored_tags(job, &worker.resource, &ctx.cluster_id);
    let groups = wanted.vpc_security_group_ids.clone().unwrap_or_default();
    let request = ClusterRestore {
        identifier: &cluster_id,
        snapshot: &snapshot.identifier,
        engine: &image.engine,
        engine_version: image.engine_version.as_deref(),
        cluster_instance_class: (!aurora).then_some(class.as_deref()).flatten(),
        subnet_group: wanted.db_subnet_group_name.as_deref(),
        security_group_ids: &groups,
        parameter_group: wanted.db_parameter_group_name.as_deref(),
        tags: &new_tags,
    };
    match rds.restore_cluster(&region, &request).await {
        Ok(created) => {
            worker.restored_database = Some(RestoredDatabase {
                db_instance_id: wanted.db_instance_id.clone(),
                db_instance_arn: None,
                state: created.status.clone(),
                endpoint_address: created.endpoint.clone(),
                endpoint_port: created.port,
                requested_time: Time(step.now),
                db_cluster_id: Some(created.identifier.clone()),
                db_cluster_arn: created.arn.clone(),
                cluster_state: Some(created.status.clone()),
                reader_endpoint_address: created.reader_endpoint.clone(),
            });
            worker.message = Some(format!(
                "creating DB cluster {cluster_id} from DB cluster snapshot {}",
                snapshot.identifier
            ));
            ctx.event(
                job,
                EventType::Normal,
                "DatabaseRestoreStarted",
                "RestoreDatabase",
                format!(
                    "creating DB cluster {cluster_id} in {region} from DB cluster snapshot {} (restore point {})",
                    snapshot.identifier, worker.resource
                ),
            )
            .await;
            Ok(Advance::Wait {
                recheck: Duration::from_secs(3),
            })
        }
        Err(e) if e.code() == Some("DBClusterAlreadyExistsFault") => Ok(Advance::Wait {
            recheck: Duration::from_secs(5),
        }),
        Err(e) => refused_restore(
            e,
            worker,
            SnapshotKind::Cluster,
            &snapshot.identifier,
            &cluster_id,
        ),
    }
}

/// CreateDBInstance of an Aurora cluster's writer, once the cluster is
/// `available`.
async fn start_writer(
    job: &RestoreJob,
    worker: &mut RestoreWorkerStatus,
    wanted: &DatabaseRestore,
    cluster: &DbClusterInfo,
    (rds, step): (&Databases<'_>, &ControllerStep<'_>),
    ctx: &Context,
) -> Result<Advance> {
    let region = worker.region.clone();
    let writer_id = wanted.db_instance_id.clone();
    let class = match wanted.db_instance_class.clone() {
        Some(class) => Some(class),
        None => {
            let Some(repository) = step.repository else {
                worker.message = Some("waiting for the job's BackupRepository".into());
                return Ok(Advance::Wait {
                    recheck: Duration::from_secs(30),
                });
            };
            match read_image(job, repository, &worker.resource, ctx).await? {
                Ok(image) => image.instance_class,
                Err((reason, message)) => return Ok(Advance::Failed { reason, message }),
            }
        }
    };
    let Some(class) = class else {
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreRefused,
            message: format!(
                "restore point {} does not record the class of the DB cluster's writer: set spec.database.dbInstanceClass in a new RestoreJob (DB cluster {} is left for you)",
                worker.resource, cluster.identifier
            ),
        });
    };
    let new_tags = restored_tags(job, &worker.resource, &ctx.cluster_id);
    match rds
        .create_cluster_instance(
            &region,
            &writer_id,
            &cluster.identifier,
            &class,
            &cluster.engine,
            &new_tags,
        )
        .await
    {
        Ok(created) => {
            record_cluster(
                worker,
                cluster,
                Some(&created),
                worker
                    .restored_database
                    .as_ref()
                    .map_or(Time(step.now), |r| r.requested_time.clone()),
            );
            worker.message = Some(format!(
                "DB cluster {} is available; creating its writer DB instance {writer_id} ({class})",
                cluster.identifier
            ));
            ctx.event(
                job,
                EventType::Normal,
                "DatabaseWriterStarted",
                "RestoreDatabase",
                format!(
                    "creating DB instance {writer_id} ({class}) as the writer of DB cluster {}",
                    cluster.identifier
                ),
            )
            .await;
            Ok(Advance::Wait {
                recheck: Duration::from_secs(3),
            })
        }
        // Created by a call whose answer was lost (or not visible yet):
        // the next step finds it by its tags.
        Err(e) if e.code() == Some("DBInstanceAlreadyExists") => Ok(Advance::Wait {
            recheck: Duration::from_secs(5),
        }),
        Err(e) if e.is_transient() || e.category() == "AwsPermissionDenied" => Err(e.into()),
        Err(e) => Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreRefused,
            message: format!(
                "RDS refused to create the writer DB instance {writer_id} of DB cluster {}: {e}; check spec.database.dbInstanceClass (a class the engine offers in {region}); DB cluster {} is left for you to use or delete",
                cluster.identifier, cluster.identifier
            ),
        }),
    }
}

fn restore_request<'a>(
    wanted: &'a DatabaseRestore,
    snapshot: &'a str,
    groups: &'a [String],
    tags: &'a BTreeMap<String, String>,
) -> InstanceRestore<'a> {
    InstanceRestore {
        identifier: &wanted.db_instance_id,
        snapshot,
        instance_class: wanted.db_instance_class.as_deref(),
        subnet_group: wanted.db_subnet_group_name.as_deref(),
        security_group_ids: groups,
        parameter_group: wanted.db_parameter_group_name.as_deref(),
        tags,
    }
}

/// The tags of a DB instance a restore creates: whose it is. Never
/// `tender.dev/intermediate`: the database is the user's.
fn restored_tags(
    job: &RestoreJob,
    restore_point: &str,
    cluster_id: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (tags::MANAGED_BY.into(), tags::MANAGED_BY_VALUE.into()),
        (tags::CLUSTER_ID.into(), cluster_id.into()),
        (tags::NAMESPACE.into(), job.namespace().unwrap_or_default()),
        (tags::JOB_KIND.into(), "RestoreJob".into()),
        (tags::JOB_NAME.into(), job.name_any()),
        (tags::JOB_UID.into(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.into(), restore_point.into()),
    ])
}

/// The database of restore point `id`, from its verified manifest.
async fn read_image(
    job: &RestoreJob,
    location: &RepositoryLocation,
    id: &str,
    ctx: &Context,
) -> Result<std::result::Result<DatabaseImage, (FailureReason, String)>> {
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
    let key = location.manifest_key(id);
    let Some(stored) = aws.repository().get_object(location, &key).await? else {
        return Ok(Err((
            FailureReason::RestorePointNotFound,
            format!("restore point {id} is not in the repository (no {key})"),
        )));
    };
    let payload = match integrity::verified(&aws, location, &key, &stored).await {
        Ok(payload) => payload,
        Err(MoverError::Aws(e)) => return Err(e.into()),
        Err(e) => return Ok(Err((FailureReason::RestorePointUnverified, e.to_string()))),
    };
    let manifest = match parse_manifest(&payload) {
        Ok(m) => m,
        Err(e) => return Ok(Err((FailureReason::ManifestInvalid, e))),
    };
    if let Err(why) = manifest.placed(id, location.namespace.as_deref()) {
        return Ok(Err((
            FailureReason::RestorePointUnverified,
            format!("the object at {key} is not restore point {id}: {why}"),
        )));
    }
    match manifest.database {
        Some(image) => Ok(Ok(image)),
        None => Ok(Err((
            FailureReason::RestoreModeMismatch,
            format!("restore point {id} is not a database's; use mode full, volume or fileLevel"),
        ))),
    }
}
