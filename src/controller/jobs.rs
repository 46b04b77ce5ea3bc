//! What BackupJobs and RestoreJobs have in common, so that one lifecycle
//! (`backup_job`'s reconciler: finalizer, crash-safe launch, messages,
//! heartbeats, retries, deadline, TTL, termination) runs both.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    BackupJob, BackupJobStatus, LocalObjectReference, Repository, RestoreJob, RestoreMode,
};
use crate::messages::Operation;

/// One thing a job runs a worker for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What `status.workers[].resource` says: an instance, a snapshot, or a
    /// restore point.
    pub id: String,
    pub region: String,
    pub kind: TargetKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Instance,
    Snapshot,
    RestorePoint,
}

/// A job kind the lifecycle runs.
pub trait WorkerJob:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind, as in `tender.dev/job-kind` tags and metric labels.
    const KIND: &'static str;
    const OPERATION: Operation;

    fn configuration_ref(&self) -> Option<&LocalObjectReference>;
    fn targets(&self) -> Vec<Target>;
    fn backoff_limit(&self) -> i32;
    fn active_deadline_seconds(&self) -> Option<i64>;
    fn ttl_seconds_after_finished(&self) -> Option<i64>;
    fn suspended(&self) -> bool;
    /// Required by the schema; `None` only for objects stored before it was.
    fn repository(&self) -> Option<&Repository>;
    fn job_status(&self) -> Option<&BackupJobStatus>;
    /// For a restore: its mode.
    fn restore_mode(&self) -> Option<RestoreMode> {
        None
    }
    /// For a restore: the device of the volume to restore.
    fn device(&self) -> Option<&str> {
        None
    }
    /// For a restore: the zone of the restored volume.
    fn zone(&self) -> Option<&str> {
        None
    }
    /// For a full restore: the restored instance's type and groups.
    fn restored_instance_type(&self) -> Option<&str> {
        None
    }
    fn restored_security_groups(&self) -> Vec<String> {
        Vec::new()
    }
    /// For a file-level recovery session: minutes it may stay idle.
    fn idle_timeout_minutes(&self) -> i32 {
        30
    }
    /// For a file-level recovery session: where selected files may go.
    fn restore_files_to(&self) -> Option<&Repository> {
        None
    }
    /// For a file-level recovery session: whether the user marked it
    /// finished (annotation `tender.dev/finish-session=true`).
    fn finish_requested(&self) -> bool {
        false
    }
}

impl WorkerJob for BackupJob {
    const KIND: &'static str = "BackupJob";
    const OPERATION: Operation = Operation::Backup;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    fn targets(&self) -> Vec<Target> {
        self.spec
            .resources
            .iter()
            .map(|r| Target {
                id: r.id().to_string(),
                region: r.region.clone(),
                kind: if r.instance_id.is_some() {
                    TargetKind::Instance
                } else {
                    TargetKind::Snapshot
                },
            })
            .collect()
    }
    fn backoff_limit(&self) -> i32 {
        self.spec.backoff_limit
    }
    fn active_deadline_seconds(&self) -> Option<i64> {
        self.spec.active_deadline_seconds
    }
    fn ttl_seconds_after_finished(&self) -> Option<i64> {
        self.spec.ttl_seconds_after_finished
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
    fn repository(&self) -> Option<&Repository> {
        self.spec.repository.as_ref()
    }
    fn job_status(&self) -> Option<&BackupJobStatus> {
        self.status.as_ref()
    }
}

impl WorkerJob for RestoreJob {
    const KIND: &'static str = "RestoreJob";
    const OPERATION: Operation = Operation::Restore;

    fn configuration_ref(&self) -> Option<&LocalObjectReference> {
        self.spec.worker_configuration_ref.as_ref()
    }
    fn targets(&self) -> Vec<Target> {
        vec![Target {
            id: self.spec.restore_point.clone(),
            region: self.spec.region.clone(),
            kind: TargetKind::RestorePoint,
        }]
    }
    fn backoff_limit(&self) -> i32 {
        self.spec.backoff_limit
    }
    fn active_deadline_seconds(&self) -> Option<i64> {
        self.spec.active_deadline_seconds
    }
    fn ttl_seconds_after_finished(&self) -> Option<i64> {
        self.spec.ttl_seconds_after_finished
    }
    fn suspended(&self) -> bool {
        false
    }
    fn repository(&self) -> Option<&Repository> {
        self.spec.repository.as_ref()
    }
    fn job_status(&self) -> Option<&BackupJobStatus> {
        self.status.as_ref()
    }
    fn restore_mode(&self) -> Option<RestoreMode> {
        Some(self.spec.mode)
    }
    fn device(&self) -> Option<&str> {
        self.spec.device.as_deref()
    }
    fn zone(&self) -> Option<&str> {
        self.spec.availability_zone.as_deref()
    }
    fn restored_instance_type(&self) -> Option<&str> {
        self.spec.instance_type.as_deref()
    }
    fn restored_security_groups(&self) -> Vec<String> {
        self.spec.security_group_ids.clone().unwrap_or_default()
    }
    fn idle_timeout_minutes(&self) -> i32 {
        self.spec.idle_timeout_minutes.unwrap_or(30)
    }
    fn restore_files_to(&self) -> Option<&Repository> {
        self.spec.restore_files_to.as_ref()
    }
    fn finish_requested(&self) -> bool {
        self.spec.mode == RestoreMode::FileLevel
            && self
                .annotations()
                .get(crate::names::FINISH_SESSION_ANNOTATION)
                .is_some_and(|v| v == "true")
    }
}
