//! RestoreJob: what only a restore does on the shared job lifecycle
//! (`controller::job`): the volume (mode `volume`) or the AMI and instance
//! (mode `full`) made from the snapshots the worker wrote, and the session
//! Secret and end of a file-level recovery browser (mode `fileLevel`).

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use sha2::Digest;

use super::database_dump;
use super::database_restore;
use super::job::core::mark_failed;
use super::job::kind::{
    Advance, ControllerStep, Located, NotLocated, Settling, Target, TaskDetails, WorkerJob,
};
use super::job::{self, job_access};
use super::{Context, Error, Result};
use crate::api::{
    JobLimits, LocalObjectReference, Phase, RestoreJob, RestoreJobStatus, RestoreMode,
    RestoreWorkerStatus, WorkerConfiguration, WorkerConfigurationSpec, WorkerStatus,
};
use crate::aws::AwsError;
use crate::controller::events;
use crate::controller::original_location;
use crate::messages::{FileLevelTask, Operation, WorkerEvent, WorkerProfile};
use crate::mover::manifest::RepositoryLocation;
use crate::names::tags;
use crate::placement;
use crate::reasons::FailureReason;

pub async fn reconcile(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Action> {
    job::reconcile(job, ctx).await
}

impl WorkerJob for RestoreJob {
    const KIND: &'static str = "RestoreJob";
    const OPERATION: Operation = Operation::Restore;
    type Worker = RestoreWorkerStatus;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    /// A file-level session reads the repository and writes restored
    /// files only; the other modes write snapshots.
    fn profile(&self) -> WorkerProfile {
        match self.spec.mode {
            RestoreMode::FileLevel => WorkerProfile::FileLevel,
            RestoreMode::Volume | RestoreMode::Full | RestoreMode::Database => {
                WorkerProfile::Restore
            }
        }
    }
    fn targets(&self) -> Vec<Target> {
        vec![Target {
            id: self.spec.restore_point_id(),
            region: self.spec.region.clone(),
        }]
    }
    fn limits(&self) -> &JobLimits {
        &self.spec.limits
    }
    fn suspended(&self) -> bool {
        false
    }
    fn repository_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.repository_ref.as_ref()
    }
    fn other_repository_refs(&self) -> Vec<&LocalObjectReference> {
        self.spec
            .restore_files_to
            .iter()
            .map(|r| &r.repository_ref)
            .collect()
    }
    fn job_status(&self) -> Option<&RestoreJobStatus> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &job::status::Written<RestoreJobStatus> {
        &ctx.written_restores
    }

    /// Checks what can be known before a launch (`preflight`): the
    /// restore point, the restored instance's type, the target bucket. Its
    /// worker goes to the zone the restored volume needs.
    async fn locate(
        &self,
        _target: &Target,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<Result<Located, NotLocated>> {
        let database_groups = self
            .spec
            .database
            .as_ref()
            .and_then(|d| d.vpc_security_group_ids.as_deref());
        let requested = self
            .spec
            .security_group_ids
            .as_deref()
            .or(database_groups)
            .unwrap_or_default();
        if let Some(group) = group_not_allowed(requested, &config.spec.restore_security_group_ids) {
            return Ok(Err(NotLocated {
                reason: FailureReason::SecurityGroupNotAllowed,
                message: format!(
                    "security group {group} is not one WorkerConfiguration {:?} lets restores attach (spec.restoreSecurityGroupIds); ask an admin to add it, or leave spec.securityGroupIds (spec.database.vpcSecurityGroupIds) unset for the VPC's default group",
                    config.name_any()
                ),
            }));
        }
        let point = self.spec.restore_point_id();
        let dump_point = database_dump::is_dump_point(&point);
        let database_point = database_restore::is_database_point(&point) || dump_point;
        if database_point != (self.spec.mode == RestoreMode::Database) {
            return Ok(Err(NotLocated {
                reason: FailureReason::RestoreModeMismatch,
                message: if database_point {
                    format!(
                        "restore point {} is a database's: restore it with mode database and spec.database",
                        self.spec.restore_point_id()
                    )
                } else {
                    format!(
                        "restore point {} is not a database's: mode database restores only restore points of RDS DB instances and DB clusters",
                        self.spec.restore_point_id()
                    )
                },
            }));
        }
        if dump_point
            && self
                .spec
                .database
                .as_ref()
                .is_some_and(|d| d.db_cluster_id.is_some())
        {
            return Ok(Err(NotLocated {
                reason: FailureReason::RestoreModeMismatch,
                message: format!(
                    "restore point {} is a PostgreSQL dump, loaded into an existing DB instance: spec.database.dbClusterId does not apply; leave it out in a new RestoreJob",
                    self.spec.restore_point_id()
                ),
            }));
        }
        if let Some(problem) = preflight::check(self, config, ctx).await? {
            return Ok(Err(problem));
        }
        if dump_point && let Some(target) = &self.spec.database {
            return Box::pin(locate_load_target(self, target, config, ctx)).await;
        }
        Ok(Ok(Located {
            zone: self.spec.availability_zone.clone(),
            size_gib: 0,
            dump: false,
        }))
    }

    fn instance_type(&self, spec: &WorkerConfigurationSpec, located: &Located) -> String {
        if located.dump {
            return placement::dump_instance_type(spec.instance_types.as_ref(), spec.architecture);
        }
        let types = spec.instance_types.as_ref();
        let defaults = placement::DefaultTypes::of(spec.architecture);
        if self.spec.mode == RestoreMode::FileLevel {
            types
                .and_then(|t| t.file_level_recovery.clone())
                .unwrap_or_else(|| defaults.file_level())
        } else {
            types
                .and_then(|t| t.restore.clone())
                .unwrap_or_else(|| defaults.restore())
        }
    }

    /// A DB snapshot's restore point: RDS creates the DB instance, the
    /// controller follows it. (A dump's is loaded by a worker.)
    fn runs_on_controller(&self, resource: &str) -> bool {
        self.spec.mode == RestoreMode::Database && !database_dump::is_dump_point(resource)
    }

    async fn advance(
        &self,
        worker: &mut RestoreWorkerStatus,
        step: &ControllerStep<'_>,
        ctx: &Context,
    ) -> Result<Advance> {
        database_restore::advance(self, worker, step, ctx).await
    }

    fn record(worker: &mut RestoreWorkerStatus, event: &WorkerEvent) {
        match event {
            WorkerEvent::Progress {
                session: Some(s), ..
            } => {
                worker.browser_url = Some(s.url.clone());
                worker.certificate_sha256 = Some(s.certificate_sha256.clone());
                worker.public_key_sha256 = Some(s.public_key_sha256.clone());
                if let Some(request) = &s.original_location
                    && let Some(staged) = original_location::staged(worker, request)
                {
                    worker.original_location = Some(staged);
                }
            }
            WorkerEvent::Completed {
                snapshot_id,
                snapshots,
                machine,
                ..
            } => {
                if machine.is_some() {
                    worker.restored_machine = machine.clone();
                }
                if snapshot_id.is_some() {
                    worker.restored_snapshot_id = snapshot_id.clone();
                }
                if !snapshots.is_empty() {
                    worker.restored_snapshots = snapshots.clone();
                }
            }
            _ => {}
        }
    }

    async fn follow_up(
        &self,
        config: &WorkerConfiguration,
        status: &mut RestoreJobStatus,
        ctx: &Context,
        now: Timestamp,
    ) -> Result<()> {
        match self.spec.mode {
            RestoreMode::Volume => restore_volumes(self, config, status, ctx, now).await?,
            RestoreMode::Full => restore_instances(self, config, status, ctx, now).await?,
            RestoreMode::FileLevel => {
                end_finished_session(self, status, now);
                original_location::advance(self, config, &mut status.workers, ctx, now).await?;
            }
            // A snapshot's: the controller's own steps (`database_restore`);
            // a dump's: the worker's path closed once it is gone.
            RestoreMode::Database => {
                Box::pin(database_dump::release_load(self, status, ctx)).await?;
            }
        }
        Ok(())
    }

    /// A volume or full restore whose worker succeeded is not done until
    /// its volume or instance exists (EBS may still be sealing the
    /// snapshots, or the AMI still be pending).
    fn settling(&self, status: &RestoreJobStatus) -> Option<Settling> {
        if let Some(settling) = database_dump::load_settling(status) {
            return Some(settling);
        }
        if let Some(o) = status
            .workers
            .iter()
            .filter(|w| original_location::in_flight(w))
            .find_map(|w| w.original_location.as_ref())
        {
            return Some(Settling {
                note: format!("restoring files onto {}: {:?}", o.instance_id, o.phase),
                recheck: original_location::RECHECK,
            });
        }
        let now = Timestamp::now();
        let waiting: Vec<&RestoreWorkerStatus> = status
            .workers
            .iter()
            .filter(|w| w.phase == Phase::Succeeded && result_pending(self.spec.mode, w))
            .collect();
        let first = waiting.first()?;
        let note = first
            .message
            .clone()
            .unwrap_or_else(|| "making the restored volume or instance".into());
        let since = waiting
            .iter()
            .map(|w| since_completed(w, now))
            .min()
            .unwrap_or_default();
        Some(Settling {
            note,
            recheck: crate::aws::consistency::recheck_after(since),
        })
    }

    async fn task_details(
        &self,
        worker: &mut RestoreWorkerStatus,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<TaskDetails> {
        if database_dump::is_dump_point(&worker.resource) {
            // Boxed: its calls would swell every reconcile's future.
            return Box::pin(database_dump::prepare_load(self, worker, config, ctx)).await;
        }
        let file_level = match self.spec.mode {
            RestoreMode::FileLevel => {
                let (secret, mut task) = ensure_session(self, ctx).await?;
                worker.session_secret = Some(secret);
                task.original_location = original_location::task(self, config, worker, ctx).await?;
                Some(task)
            }
            _ => None,
        };
        Ok(TaskDetails {
            restore_point: Some(worker.resource.clone()),
            device: self.spec.device.clone(),
            all_volumes: self.spec.mode == RestoreMode::Full,
            file_level,
            ..TaskDetails::default()
        })
    }
}

/// The DB instance a dump is loaded into: it must exist, be one a worker
/// of `config` can reach and sign in to as for a dump, and not be asked
/// to change (the fields that describe a new DB instance are a DB
/// snapshot's). Its worker runs in its zone.
async fn locate_load_target(
    job: &RestoreJob,
    target: &crate::api::DatabaseRestore,
    config: &WorkerConfiguration,
    ctx: &Context,
) -> Result<Result<Located, NotLocated>> {
    let db = &target.db_instance_id;
    let region = &job.spec.region;
    let for_new = [
        ("dbInstanceClass", target.db_instance_class.is_some()),
        ("dbSubnetGroupName", target.db_subnet_group_name.is_some()),
        (
            "vpcSecurityGroupIds",
            target.vpc_security_group_ids.is_some(),
        ),
        (
            "dbParameterGroupName",
            target.db_parameter_group_name.is_some(),
        ),
    ];
    if let Some((field, _)) = for_new.iter().find(|(_, set)| *set) {
        return Ok(Err(NotLocated {
            reason: FailureReason::RestoreModeMismatch,
            message: format!(
                "restore point {} is a PostgreSQL dump's, which is loaded into the existing DB instance {db}; spec.database.{field} describes a new DB instance (a DB snapshot's restore): remove it",
                job.spec.restore_point_id()
            ),
        }));
    }
    let access = job_access(job, config.spec.production_account.as_ref());
    let production = ctx.aws.scoped(&access).await;
    let Some(found) = production.databases().describe_instance(region, db).await? else {
        return Ok(Err(NotLocated {
            reason: FailureReason::DatabaseRestoreTargetNotFound,
            message: format!(
                "DB instance {db} does not exist in {region}: a PostgreSQL dump is loaded into an existing RDS for PostgreSQL DB instance (create it, or restore a DB snapshot's restore point to get a new one)"
            ),
        }));
    };
    if let Some(message) = database_dump::not_possible(config, &found) {
        return Ok(Err(NotLocated {
            reason: FailureReason::DatabaseDumpNotPossible,
            message,
        }));
    }
    Ok(Ok(Located {
        zone: found.availability_zone,
        size_gib: found.allocated_gib,
        dump: true,
    }))
}

/// A file-level session the user marked finished (annotation
/// `tender.dev/finish-session=true`) ends now: its worker counts as done
/// and is terminated.
fn end_finished_session(job: &RestoreJob, status: &mut RestoreJobStatus, now: Timestamp) {
    let requested = job
        .annotations()
        .get(crate::names::FINISH_SESSION_ANNOTATION)
        .is_some_and(|v| v == "true");
    if !requested {
        return;
    }
    for w in status.workers.iter_mut().filter(|w| !w.phase.is_finished()) {
        w.phase = Phase::Succeeded;
        w.reason = None;
        w.finished_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        w.message = Some(format!(
            "session ended: the job was annotated {}=true",
            crate::names::FINISH_SESSION_ANNOTATION
        ));
    }
}

/// Creates the volume of every succeeded restore worker that has none yet.
async fn restore_volumes(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    status: &mut RestoreJobStatus,
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for w in status.workers.iter_mut() {
        if w.phase != Phase::Succeeded || w.restored_volume_id.is_some() {
            continue;
        }
        let Some(snapshot) = w.restored_snapshot_id.clone() else {
            let message = "the worker finished without naming the snapshot it restored into";
            mark_failed(w, FailureReason::VolumeCreateFailed, message, now);
            continue;
        };
        let subnet_zone = config.status.as_ref().and_then(|s| {
            s.subnets
                .iter()
                .find(|n| Some(&n.subnet_id) == w.subnet_id.as_ref())
                .and_then(|n| n.availability_zone.clone())
        });
        let Some(zone) = job.spec.availability_zone.clone().or(subnet_zone) else {
            let message = "no availability zone for the volume: set spec.availabilityZone";
            mark_failed(w, FailureReason::VolumeCreateFailed, message, now);
            continue;
        };
        let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
        let ids = std::slice::from_ref(&snapshot);
        if !usable::snapshots_usable(job, config, w, &aws, ids, (ctx, now)).await? {
            continue;
        }
        // Tender never deletes a restored volume.
        let tags = restored_tags(job, w);
        match aws
            .snapshots()
            .create_volume_from_snapshot(&w.region, &snapshot, &zone, &tags, &w.launch_token)
            .await
        {
            Ok(volume) => {
                ctx.event(
                    job,
                    EventType::Normal,
                    events::VOLUME_RESTORED,
                    "RestoreVolume",
                    format!(
                        "created volume {volume} in {zone} from snapshot {snapshot} ({})",
                        w.resource
                    ),
                )
                .await;
                w.message = Some(format!(
                    "restored {} into volume {volume} ({zone}) from snapshot {snapshot}",
                    w.resource
                ));
                w.restored_volume_id = Some(volume);
            }
            Err(e) if e.is_transient() => {
                return Err(e.into());
            }
            Err(e) => {
                let message = format!(
                    "{e}; the restored snapshot {snapshot} is kept: create the volume from it by hand, or fix the cause and create a new RestoreJob"
                );
                mark_failed(w, FailureReason::VolumeCreateFailed, &message, now);
            }
        }
    }
    Ok(())
}

/// Tags of what a restore creates for the user (a volume, an instance): it
/// carries Tender's tag (the policies let Tender create only what does) but
/// never this cluster's ID, so no sweep ever takes it.
fn restored_tags(job: &RestoreJob, w: &WorkerStatus) -> Vec<(String, String)> {
    vec![
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::NAME.to_string(), format!("restore of {}", w.resource)),
        (
            tags::NAMESPACE.to_string(),
            job.namespace().unwrap_or_default(),
        ),
        (tags::JOB_KIND.to_string(), RestoreJob::KIND.to_string()),
        (tags::JOB_NAME.to_string(), job.name_any()),
        (tags::JOB_UID.to_string(), job.uid().unwrap_or_default()),
        (tags::RESOURCE.to_string(), w.resource.clone()),
    ]
}

/// A full restore ends with an instance: an AMI registered from the
/// snapshots the worker wrote, and an instance launched from it in the
/// worker's subnet, in the worker's account.
async fn restore_instances(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    status: &mut RestoreJobStatus,
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for w in status.workers.iter_mut() {
        if w.phase != Phase::Succeeded || w.restored_instance_id.is_some() {
            continue;
        }
        if w.restored_snapshots.is_empty() {
            let message = "the worker finished without naming the snapshots it restored into";
            mark_failed(w, FailureReason::InstanceRestoreFailed, message, now);
            continue;
        }
        let (Some(instance_type), Some(subnet)) =
            (job.spec.instance_type.as_deref(), w.subnet_id.clone())
        else {
            let message = "no instanceType or subnet for the restored instance";
            mark_failed(w, FailureReason::InstanceRestoreFailed, message, now);
            continue;
        };
        if w.restored_image_id.is_none() {
            let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
            let ids: Vec<String> = w
                .restored_snapshots
                .iter()
                .map(|s| s.snapshot_id.clone())
                .collect();
            if !usable::snapshots_usable(job, config, w, &aws, &ids, (ctx, now)).await? {
                continue;
            }
        }
        match launch_restored(job, w, instance_type, &subnet, (ctx, now)).await {
            Ok(None) => {} // the image is not available yet
            Ok(Some((image, instance))) => {
                let note = format!(
                    "restored {} as instance {instance} ({instance_type}, {subnet}) from image {image}",
                    w.resource
                );
                ctx.event(
                    job,
                    EventType::Normal,
                    events::INSTANCE_RESTORED,
                    "RestoreInstance",
                    note.clone(),
                )
                .await;
                w.message = Some(note);
                w.restored_instance_id = Some(instance);
            }
            Err(RestoreStepError::Aws(e)) if e.is_transient() => return Err(e.into()),
            Err(e) => instance_not_restored(job, w, e, (ctx, now)).await,
        }
    }
    Ok(())
}

/// Fails a full restore's worker for good, saying why and what is kept.
async fn instance_not_restored(
    job: &RestoreJob,
    w: &mut RestoreWorkerStatus,
    error: RestoreStepError,
    (ctx, now): (&Context, Timestamp),
) {
    if let RestoreStepError::Failed(reason, message) = error {
        let note = format!("{}: {message}", w.resource);
        ctx.event(
            job,
            EventType::Warning,
            reason.as_str(),
            "WaitForImage",
            note,
        )
        .await;
        mark_failed(w, reason, &message, now);
        return;
    }
    let kept: Vec<String> = w
        .restored_snapshots
        .iter()
        .map(|s| format!("{} {}", s.device, s.snapshot_id))
        .collect();
    let message = format!(
        "{error}; the restored snapshots are kept ({}): fix the cause and create a new RestoreJob",
        kept.join(", ")
    );
    mark_failed(w, FailureReason::InstanceRestoreFailed, &message, now);
}

/// Registers an AMI from the worker's restored snapshots as the machine
/// the restore point recorded (adopting one an earlier try registered),
/// waits until it is available, and launches the restored instance from
/// it, in the worker's account and subnet: `(image, instance)`, or `None`
/// while the image is not available yet.
async fn launch_restored(
    job: &RestoreJob,
    w: &mut RestoreWorkerStatus,
    instance_type: &str,
    subnet: &str,
    (ctx, now): (&Context, Timestamp),
) -> Result<Option<(String, String)>, RestoreStepError> {
    let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
    let image = match &w.restored_image_id {
        Some(image) => image.clone(),
        None => {
            let snapshots: Vec<(String, String)> = w
                .restored_snapshots
                .iter()
                .map(|s| (s.device.clone(), s.snapshot_id.clone()))
                .collect();
            let machine = w.restored_machine.clone().unwrap_or_else(|| {
                // An older agent reports none: as for an older manifest.
                let devices = snapshots.iter().map(|(d, _)| Some(d.as_str()));
                crate::mover::machine::fallback_machine(devices)
            });
            let plan = crate::aws::images::plan_image(&machine, &snapshots)
                .map_err(RestoreStepError::Refused)?;
            let uid = job.uid().unwrap_or_default();
            let name = format!(
                "tender-restore-{}-{}",
                job.name_any(),
                &uid[..uid.len().min(8)]
            );
            let description = format!("Tender restore of {}", w.resource);
            let tags = restored_tags(job, w);
            aws.instances()
                .register_restored_image(&w.region, (&name, &description), &plan, &tags)
                .await?
        }
    };
    w.restored_image_id = Some(image.clone());
    let state = aws.instances().image_state(&w.region, &image).await?;
    let since = since_completed(w, now);
    match usable::image_readiness(
        &image,
        state.as_deref(),
        since,
        ctx.restored_snapshot_timeout,
    ) {
        usable::Readiness::Ready => {}
        usable::Readiness::Waiting { message, .. } => {
            w.message = Some(message);
            return Ok(None);
        }
        usable::Readiness::Failed { reason, message } => {
            return Err(RestoreStepError::Failed(reason, message));
        }
    }
    let groups = job.spec.security_group_ids.clone().unwrap_or_default();
    let tags = restored_tags(job, w);
    let token = format!("{}-restored", w.launch_token);
    let instance = aws
        .instances()
        .launch_restored_instance(&crate::aws::instances::RestoredInstanceLaunch {
            region: &w.region,
            image_id: &image,
            instance_type,
            subnet_id: subnet,
            security_group_ids: &groups,
            tags: &tags,
            client_token: &token,
        })
        .await?;
    Ok(Some((image, instance)))
}

/// Why a full restore's image or instance could not be made.
#[derive(Debug, thiserror::Error)]
enum RestoreStepError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The recorded machine and the restored snapshots make no bootable
    /// image.
    #[error("{0}")]
    Refused(String),
    #[error("{1}")]
    Failed(FailureReason, String),
}

/// Whether a worker that succeeded still waits for its job's result: a
/// volume (mode `volume`) or an instance (mode `full`).
fn result_pending(mode: RestoreMode, w: &RestoreWorkerStatus) -> bool {
    match mode {
        RestoreMode::Volume => w.restored_volume_id.is_none(),
        RestoreMode::Full => w.restored_instance_id.is_none(),
        RestoreMode::FileLevel | RestoreMode::Database => false,
    }
}

/// How long ago the worker reported its snapshots written (zero when it is
/// not recorded).
fn since_completed(w: &WorkerStatus, now: Timestamp) -> std::time::Duration {
    w.finished_time
        .as_ref()
        .and_then(|t| std::time::Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or_default()
}

/// The Secret with a file-level recovery session's token (created once per
/// job, owned by it so that it goes with it) and what the worker needs of
/// it: the token's SHA-256, never the token.
async fn ensure_session(job: &RestoreJob, ctx: &Context) -> Result<(String, FileLevelTask)> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let ns = job
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = job.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let job_name = job.name_any();
    let name = format!(
        "{}-session-{}",
        &job_name[..job_name.len().min(230)],
        &uid[..uid.len().min(8)]
    );
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token = match secrets.get_opt(&name).await? {
        Some(found) => found
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .ok_or(Error::MissingObjectKey("token in the session Secret"))?,
        None => {
            let token = random_token()?;
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [(crate::names::tags::JOB_NAME.to_string(), job_name.clone())].into(),
                    ),
                    owner_references: Some(vec![OwnerReference {
                        api_version: RestoreJob::api_version(&()).to_string(),
                        kind: RestoreJob::kind(&()).to_string(),
                        name: job_name.clone(),
                        uid: uid.clone(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]),
                    ..Default::default()
                },
                string_data: Some([("token".to_string(), token.clone())].into()),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match secrets.create(&Default::default(), &secret).await {
                Ok(_) => token,
                // Created by a reconcile that raced this one: use its token.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Box::pin(ensure_session(job, ctx)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let token_sha256 = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    Ok((
        name,
        FileLevelTask {
            port: 443,
            token_sha256,
            idle_timeout_seconds: job.spec.idle_timeout_minutes.unwrap_or(30).max(1) as u64 * 60,
            max_life_seconds: job
                .spec
                .limits
                .active_deadline_seconds
                .and_then(|s| u64::try_from(s).ok()),
            restore_to: restored_files_location(job, ctx)?,
            original_location: None,
        },
    ))
}

/// Where "Restore selected" copies files, when the job says so: its own
/// folder of the `restoreFilesTo` repository (whose admission of the
/// namespace the lifecycle checked before launching).
fn restored_files_location(job: &RestoreJob, ctx: &Context) -> Result<Option<RepositoryLocation>> {
    let Some(to) = &job.spec.restore_files_to else {
        return Ok(None);
    };
    let repository = ctx
        .repositories
        .get(&ObjectRef::new(&to.repository_ref.name))
        .ok_or(Error::MissingObjectKey(
            "the BackupRepository of spec.restoreFilesTo",
        ))?;
    Ok(Some(RepositoryLocation::restored_files(
        &repository.spec,
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        &to.prefix,
    )))
}

/// The first of a restore's requested security groups that the admin's
/// list does not hold: a namespace user must not attach any group of the
/// VPC to an instance they can log into.
fn group_not_allowed<'a>(requested: &'a [String], allowed: &[String]) -> Option<&'a str> {
    requested
        .iter()
        .find(|g| !allowed.contains(g))
        .map(String::as_str)
}

/// 32 random bytes, hex.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Error::MissingObjectKey("randomness from the OS"))?;
    Ok(hex::encode(bytes))
}

mod usable;
pub use usable::snapshot_problem;

mod preflight;
#[cfg(test)]
mod tests;
