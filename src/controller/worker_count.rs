//! Writes each configuration's `status.activeWorkers` from the worker index
//! whenever it changes: a merge patch of that one field under its own field
//! manager, so no configuration reconcile (and none of its AWS checks) runs
//! for a count.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use super::Context;
use super::index::ConfigKey;
use crate::api::WorkerConfiguration;
use crate::names::WORKER_COUNT_FIELD_MANAGER;

/// Changes within this window are written together.
const COALESCE: Duration = Duration::from_millis(200);

/// Runs until the task is dropped.
pub async fn run(ctx: Arc<Context>) {
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<ConfigKey>();
    ctx.workers.notify_counts(tx);
    while let Some(first) = rx.next().await {
        let mut due: BTreeSet<ConfigKey> = BTreeSet::from([first]);
        tokio::time::sleep(COALESCE).await;
        while let Ok(key) = rx.try_recv() {
            due.insert(key);
        }
        for key in due {
            write_count(&ctx, &key).await;
        }
    }
}

/// Patches one configuration's count. A failure is logged: the next change
/// or the configuration's own reconcile writes it again.
async fn write_count(ctx: &Context, name: &ConfigKey) {
    // Written even when the cache shows the same value: the cache may be
    // behind a write of the configuration's own reconcile, and a count left
    // wrong until the next change would lie for hours.
    if ctx.configurations.get(&ObjectRef::new(name)).is_none() {
        return;
    }
    let active = ctx.workers.active(name) as i32;
    let api: Api<WorkerConfiguration> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"status": {"activeWorkers": active}});
    let params = PatchParams {
        field_manager: Some(WORKER_COUNT_FIELD_MANAGER.into()),
        ..Default::default()
    };
    ctx.metrics
        .status_writes
        .get_or_create(&super::kind_labels("WorkerConfiguration"))
        .inc();
    if let Err(e) = api.patch_status(name, &params, &Patch::Merge(patch)).await {
        warn!(configuration = name, error = %e, "could not write the worker count");
    }
}
