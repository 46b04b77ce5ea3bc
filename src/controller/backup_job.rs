//! BackupJob: what only a backup does on the shared job lifecycle
//! (`controller::job`): find each source (an instance's zone and EBS size,
//! or a snapshot), size its worker, and record the restore point it wrote.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::job::kind::{
    Advance, ControllerStep, Located, NotLocated, Settling, Target, TaskDetails, WorkerJob,
};
use super::job::{self, job_access};
use super::{Context, Result};
use super::{database_backup, database_dump};
use crate::api::{
    BackupJob, BackupJobStatus, BackupWorkerStatus, JobLimits, LocalObjectReference,
    WorkerConfiguration, WorkerConfigurationSpec,
};
use crate::aws::AwsClients;
use crate::messages::{Operation, WorkerEvent, WorkerProfile};
use crate::placement;
use crate::reasons::FailureReason;

pub async fn reconcile(job: Arc<BackupJob>, ctx: Arc<Context>) -> Result<Action> {
    job::reconcile(job, ctx).await
}

/// A source the configuration's `allowedSources` does not admit.
fn refused(config: &WorkerConfiguration, what: &str, id: &str, why: String) -> NotLocated {
    NotLocated {
        reason: FailureReason::SourceNotAllowed,
        message: format!(
            "{what} {id} is not a source WorkerConfiguration {:?} admits: {why}; ask an admin to change its spec.allowedSources, or use another configuration",
            config.name_any()
        ),
    }
}

/// An instance's zone and total EBS size, if it exists and carries the
/// tags the configuration requires.
async fn locate_instance(
    config: &WorkerConfiguration,
    production: &AwsClients,
    target: &Target,
) -> Result<Result<Located, NotLocated>> {
    let (id, region) = (&target.id, &target.region);
    let Some(found) = production
        .instances()
        .describe_source_instance(region, id)
        .await?
    else {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceInstanceNotFound,
            message: format!("instance {id} does not exist in {region}; check spec.resources"),
        }));
    };
    if let Err(tag) = config.spec.allowed_sources.admits_tags(&found.tags) {
        let why = format!("it does not carry tag {tag}");
        return Ok(Err(refused(config, "instance", id, why)));
    }
    Ok(Ok(Located {
        zone: found.availability_zone,
        size_gib: found.total_ebs_gib,
        dump: false,
    }))
}

/// A snapshot's size (regional: any zone will do), if it is complete, owned
/// by an account the configuration allows, and carries the tags it requires.
async fn locate_snapshot(
    config: &WorkerConfiguration,
    production: &AwsClients,
    target: &Target,
) -> Result<Result<Located, NotLocated>> {
    let (id, region) = (&target.id, &target.region);
    let allowed = &config.spec.allowed_sources;
    let Some(found) = production.snapshots().describe_snapshot(region, id).await? else {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceSnapshotNotFound,
            message: format!("snapshot {id} does not exist in {region}; check spec.resources"),
        }));
    };
    if found.state == "error" {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceSnapshotFailed,
            message: format!(
                "snapshot {id} in {region} is in state error: EBS could not complete it"
            ),
        }));
    }
    let owner = found.owner_id.clone().unwrap_or_default();
    let owners_allowed = if allowed.accounts.is_empty() {
        vec![reading_account(config, production, region).await?]
    } else {
        allowed.accounts.clone()
    };
    if !owners_allowed.contains(&owner) {
        let why = format!(
            "it is owned by account {owner:?}, not by {}",
            owners_allowed.join(", ")
        );
        return Ok(Err(refused(config, "snapshot", id, why)));
    }
    if let Err(tag) = allowed.admits_tags(&found.tags) {
        let why = format!("it does not carry tag {tag}");
        return Ok(Err(refused(config, "snapshot", id, why)));
    }
    Ok(Ok(Located {
        zone: None,
        size_gib: found.volume_size_gib,
        dump: false,
    }))
}

/// A DB instance's zone and allocated storage, if it exists and carries
/// the tags the configuration requires; for a dump (`dump`), also if a
/// worker of this configuration can reach and sign in to it.
async fn locate_database(
    config: &WorkerConfiguration,
    production: &AwsClients,
    target: &Target,
    (db, dump): (&str, bool),
) -> Result<Result<Located, NotLocated>> {
    let region = &target.region;
    let Some(found) = production.databases().describe_instance(region, db).await? else {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceDatabaseNotFound,
            message: format!("DB instance {db} does not exist in {region}; check spec.resources"),
        }));
    };
    if let Err(tag) = config.spec.allowed_sources.admits_tags(&found.tags) {
        let why = format!("it does not carry tag {tag}");
        return Ok(Err(refused(config, "DB instance", db, why)));
    }
    // RDS refuses CreateDBSnapshot for a cluster's member: the cluster is
    // snapshotted as a whole.
    if let (false, Some(cluster)) = (dump, &found.db_cluster_identifier) {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceDatabaseUnavailable,
            message: format!(
                "DB instance {db} is a member of DB cluster {cluster}, whose storage RDS snapshots as a whole: back up the cluster with spec.resources[].dbClusterId: {cluster}"
            ),
        }));
    }
    if let Some(message) = dump
        .then(|| database_dump::not_possible(config, &found))
        .flatten()
    {
        return Ok(Err(NotLocated {
            reason: FailureReason::DatabaseDumpNotPossible,
            message,
        }));
    }
    Ok(Ok(Located {
        zone: found.availability_zone,
        size_gib: found.allocated_gib,
        dump,
    }))
}

/// A DB cluster: it exists, is an RDS one, the configuration admits it,
/// and, when the job copies its snapshot (`copies`), RDS can copy it.
/// Regional (its instances span zones) and snapshotted by RDS: no zone, no
/// size.
async fn locate_cluster(
    config: &WorkerConfiguration,
    production: &AwsClients,
    target: &Target,
    (cluster, copies): (&str, bool),
) -> Result<Result<Located, NotLocated>> {
    let region = &target.region;
    let Some(found) = production
        .databases()
        .describe_cluster(region, cluster)
        .await?
    else {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceDatabaseNotFound,
            message: format!(
                "DB cluster {cluster} does not exist in {region}; check spec.resources"
            ),
        }));
    };
    if let Err(tag) = config.spec.allowed_sources.admits_tags(&found.tags) {
        let why = format!("it does not carry tag {tag}");
        return Ok(Err(refused(config, "DB cluster", cluster, why)));
    }
    if !found.is_rds() {
        return Ok(Err(NotLocated {
            reason: FailureReason::SourceDatabaseUnavailable,
            message: format!(
                "DB cluster {cluster} runs {}, not an RDS engine (DescribeDBClusters also answers DocumentDB and Neptune clusters): Tender backs up Aurora DB clusters and Multi-AZ DB clusters of MySQL or PostgreSQL",
                found.engine
            ),
        }));
    }
    // "Copying a snapshot of a Multi-AZ DB cluster" is among what RDS's
    // Multi-AZ DB clusters do not support.
    if copies && !found.is_aurora() {
        return Ok(Err(NotLocated {
            reason: FailureReason::DatabaseCopyRefused,
            message: format!(
                "DB cluster {cluster} is a Multi-AZ DB cluster ({}), and RDS cannot copy a Multi-AZ DB cluster's snapshots: back it up in a BackupJob without copyTo",
                found.engine
            ),
        }));
    }
    Ok(Ok(Located {
        zone: None,
        size_gib: 0,
        dump: false,
    }))
}

/// The account Tender reads sources in: the production role's, else its
/// own.
async fn reading_account(
    config: &WorkerConfiguration,
    production: &AwsClients,
    region: &str,
) -> Result<String> {
    let from_role = config
        .spec
        .production_account
        .as_ref()
        .and_then(|a| a.role_arn.split(':').nth(4))
        .filter(|a| !a.is_empty());
    match from_role {
        Some(account) => Ok(account.to_string()),
        None => Ok(production.caller_identity(region).await?.account),
    }
}

/// The BackupPolicy that made `job`: its label names it and the policy is
/// its controlling owner, as a policy's runs are. A label alone (anyone who
/// may create a BackupJob can set one) puts no restore point under a
/// policy's retention rules.
pub(crate) fn made_by_policy(job: &BackupJob) -> Option<String> {
    let label = job.labels().get(crate::names::POLICY_LABEL)?;
    job.owner_references()
        .iter()
        .any(|o| {
            o.controller == Some(true)
                && o.kind == "BackupPolicy"
                && o.api_version == "tender.dev/v1alpha1"
                && &o.name == label
        })
        .then(|| label.clone())
}

impl WorkerJob for BackupJob {
    const KIND: &'static str = "BackupJob";
    const OPERATION: Operation = Operation::Backup;
    type Worker = BackupWorkerStatus;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    fn profile(&self) -> WorkerProfile {
        WorkerProfile::Backup
    }
    fn targets(&self) -> Vec<Target> {
        self.spec
            .resources
            .iter()
            .map(|r| Target {
                id: r.id(),
                region: r.region.clone(),
            })
            .collect()
    }
    fn limits(&self) -> &JobLimits {
        &self.spec.limits
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
    fn repository_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.repository_ref.as_ref()
    }
    fn job_status(&self) -> Option<&BackupJobStatus> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &job::status::Written<BackupJobStatus> {
        &ctx.written_backups
    }

    /// An instance's zone and total EBS size, or a snapshot (regional: any
    /// zone will do), looked up in the production account.
    async fn locate(
        &self,
        target: &Target,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<Result<Located, NotLocated>> {
        let access = job_access(self, config.spec.production_account.as_ref());
        let production = ctx.aws.scoped(&access).await;
        if let Some(cluster) = database_backup::db_cluster_of(&target.id) {
            let copies = self.spec.copy_to.as_ref().is_some_and(|c| !c.is_empty());
            return locate_cluster(config, &production, target, (cluster, copies)).await;
        }
        if let Some(db) = database_backup::db_instance_of(&target.id) {
            return locate_database(config, &production, target, (db, false)).await;
        }
        if let Some(db) = database_dump::dump_instance_of(&target.id) {
            return locate_database(config, &production, target, (db, true)).await;
        }
        let is_instance = self
            .spec
            .resources
            .iter()
            .any(|r| r.instance_id.as_deref() == Some(target.id.as_str()));
        if is_instance {
            locate_instance(config, &production, target).await
        } else {
            locate_snapshot(config, &production, target).await
        }
    }

    fn instance_type(&self, spec: &WorkerConfigurationSpec, located: &Located) -> String {
        if located.dump {
            return placement::dump_instance_type(spec.instance_types.as_ref(), spec.architecture);
        }
        placement::backup_instance_type(
            spec.instance_types.as_ref(),
            spec.architecture,
            located.size_gib,
        )
    }

    /// A DB instance or cluster: RDS takes the snapshot, the controller
    /// follows it.
    fn runs_on_controller(&self, resource: &str) -> bool {
        database_backup::database_of(resource).is_some()
    }

    async fn advance(
        &self,
        worker: &mut BackupWorkerStatus,
        step: &ControllerStep<'_>,
        ctx: &Context,
    ) -> Result<Advance> {
        database_backup::advance(self, worker, step, ctx).await
    }

    /// Dumps whose worker is gone: their security groups are removed.
    async fn follow_up(
        &self,
        _config: &WorkerConfiguration,
        status: &mut BackupJobStatus,
        ctx: &Context,
        _now: k8s_openapi::jiff::Timestamp,
    ) -> Result<()> {
        Box::pin(database_dump::release_dumps(self, status, ctx)).await
    }

    fn settling(&self, status: &BackupJobStatus) -> Option<Settling> {
        database_dump::dumps_settling(status)
    }

    fn record(worker: &mut BackupWorkerStatus, event: &WorkerEvent) {
        if let WorkerEvent::Completed {
            restore_point: Some(point),
            ..
        } = event
        {
            worker.restore_point = Some(point.clone());
        }
    }

    /// The policy that made the job: its restore point then falls under
    /// the policy's retention rules.
    /// A PostgreSQL dump's: its server, and the path to it opened.
    async fn task_details(
        &self,
        worker: &mut BackupWorkerStatus,
        config: &WorkerConfiguration,
        ctx: &Context,
    ) -> Result<TaskDetails> {
        if database_dump::dump_instance_of(&worker.resource).is_some() {
            // Boxed: its calls would swell every reconcile's future.
            return Box::pin(database_dump::prepare(self, worker, config, ctx)).await;
        }
        Ok(TaskDetails {
            policy: made_by_policy(self),
            ..TaskDetails::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    #[test]
    fn only_a_policys_own_run_is_the_policys() {
        let job = |label: Option<&str>, owner: Option<(&str, &str, bool)>| {
            let mut j: BackupJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
                "metadata": {"name": "nightly-29400000"},
                "spec": {"resources": [{"instanceId": "i-0123456789abcdef0", "region": "eu-west-1"}],
                         "repositoryRef": {"name": "main"}}
            }))
            .expect("a job");
            if let Some(l) = label {
                j.labels_mut()
                    .insert(crate::names::POLICY_LABEL.into(), l.into());
            }
            if let Some((kind, name, controller)) = owner {
                j.metadata.owner_references = Some(vec![OwnerReference {
                    api_version: "tender.dev/v1alpha1".into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: "uid".into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]);
            }
            j
        };
        let own = Some(("BackupPolicy", "nightly", true));
        let cases = [
            (
                "the policy's run",
                job(Some("nightly"), own),
                Some("nightly"),
            ),
            ("a label alone", job(Some("nightly"), None), None),
            ("another policy's owner", job(Some("weekly"), own), None),
            (
                "not the controller",
                job(Some("nightly"), Some(("BackupPolicy", "nightly", false))),
                None,
            ),
            (
                "another kind",
                job(Some("nightly"), Some(("CronJob", "nightly", true))),
                None,
            ),
            ("an owner without the label", job(None, own), None),
        ];
        for (name, j, want) in cases {
            assert_eq!(made_by_policy(&j).as_deref(), want, "{name}");
        }
    }
}
