//! RestoreJob reconciler: a RestoreJob runs on the BackupJob lifecycle
//! (`backup_job::reconcile`, through `jobs::WorkerJob`): finalizer,
//! crash-safe launch, messages, heartbeats, retries, deadline, TTL. What
//! only a restore does lives there too, behind `WorkerJob::restore_mode`:
//! the volume (mode `volume`) or the AMI and instance (mode `full`) made
//! from the snapshots the worker wrote, and the session Secret of a
//! file-level recovery browser (mode `fileLevel`).

use std::sync::Arc;

use kube::runtime::controller::Action;

use super::{Context, Result};
use crate::api::RestoreJob;

pub async fn reconcile(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Action> {
    super::backup_job::reconcile(job, ctx).await
}
