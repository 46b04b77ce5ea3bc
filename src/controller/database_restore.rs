//! A RestoreJob of mode `database`: the controller reads the restore
//! point's manifest (verified with the repository's integrity key), creates
//! a new DB instance from its DB snapshot with RestoreDBInstanceFromDBSnapshot
//! (never over an existing one: RDS answers `DBInstanceAlreadyExists`, and
//! Tender checks first), waits until RDS has it `available`, and records
//! its endpoint. No worker.
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
    DB_INSTANCE_RESOURCE_PREFIX, DatabaseRestore, RestoreJob, RestoreWorkerStatus, RestoredDatabase,
};
use crate::aws::accounts::Access;
use crate::aws::rds::{DbInstanceInfo, InstanceRestore};
use crate::mover::MoverError;
use crate::mover::integrity;
use crate::mover::manifest::{DatabaseImage, RepositoryLocation, parse_manifest};
use crate::names::tags;
use crate::reasons::FailureReason;

/// How long a DB instance RDS accepted may be missing from
/// DescribeDBInstances before Tender takes it for deleted.
const VISIBILITY_GRACE_SECONDS: i64 = 60;

/// Whether restore point `id` (`<job>/<resource>`) is a database's.
pub fn is_database_point(id: &str) -> bool {
    id.split_once('/')
        .is_some_and(|(_, resource)| resource.starts_with(DB_INSTANCE_RESOURCE_PREFIX))
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
    let region = worker.region.clone();
    let production = ctx
        .aws
        .scoped(&job_access(job, worker.access.as_ref()))
        .await;
    let rds = production.databases();
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
    let Some(snapshot) = image.snapshots.iter().find(|s| s.region == region) else {
        let regions: Vec<&str> = image.snapshots.iter().map(|s| s.region.as_str()).collect();
        return Ok(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotMissing,
            message: format!(
                "restore point {} has DB snapshots in {regions:?} only; set spec.region to one of them",
                worker.resource
            ),
        });
    };
    match rds.describe_snapshot(&region, &snapshot.identifier).await? {
        // The restore point names its snapshot by ARN: one of the same name
        // in another account (another configuration's production account)
        // is not it.
        Some(s) if s.arn.as_deref() != Some(snapshot.arn.as_str()) => {
            return Ok(Advance::Failed {
                reason: FailureReason::DatabaseSnapshotMissing,
                message: format!(
                    "restore point {} is in DB snapshot {}, and the configuration's production account has {:?} under that name; restore with the WorkerConfiguration of the account that took it",
                    worker.resource, snapshot.arn, s.arn
                ),
            });
        }
        Some(s) if s.status == "available" => {}
        Some(s) if !s.is_failed() => {
            worker.message = Some(format!(
                "DB snapshot {} is {}; waiting until it is available",
                s.identifier, s.status
            ));
            return Ok(Advance::Wait {
                recheck: Duration::from_secs(15),
            });
        }
        other => {
            return Ok(Advance::Failed {
                reason: FailureReason::DatabaseSnapshotMissing,
                message: format!(
                    "DB snapshot {} of restore point {} is {} in {region}; this restore point cannot be restored",
                    snapshot.identifier,
                    worker.resource,
                    other.map_or("gone".to_string(), |s| format!("in state {}", s.status))
                ),
            });
        }
    }
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
        Err(e) if e.code() == Some("InvalidDBSnapshotState") => {
            worker.message = Some(format!("{e}; trying again"));
            Ok(Advance::Wait {
                recheck: Duration::from_secs(15),
            })
        }
        Err(e) if e.code() == Some("DBSnapshotNotFound") => Ok(Advance::Failed {
            reason: FailureReason::DatabaseSnapshotMissing,
            message: format!(
                "DB snapshot {} of restore point {} is gone: {e}",
                snapshot.identifier, worker.resource
            ),
        }),
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) if e.category() == "AwsPermissionDenied" => Err(e.into()),
        Err(e) => Ok(Advance::Failed {
            reason: FailureReason::DatabaseRestoreRefused,
            message: format!(
                "RDS refused to create DB instance {id}: {e}; check spec.database (instance class, subnet group, security groups, parameter group) and the account's RDS quotas"
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
