//! The instances a policy's run protects, looked up at the run, and the
//! ones it protected before and cannot find any more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::{history, reasons};
use crate::api::{BackupPolicy, BackupPolicyStatus, WorkerConfiguration};
use crate::aws::accounts::Access;
use crate::controller::{Context, Error, Result};

/// The resources a run protects, found now.
pub(super) struct FoundResources {
    /// Instance IDs to back up, sorted.
    pub ids: Vec<String>,
    /// Each with where it came from.
    pub sources: BTreeMap<String, &'static str>,
    /// IDs named in spec.resources.
    pub named: Vec<String>,
}

pub(super) enum Found {
    NoConfiguration(String),
    Failed(Error),
}

/// Looks the policy's instances up in its region, with the production
/// account access of the configuration its jobs will use.
pub(super) async fn find_resources(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<FoundResources, Found> {
    let config = configuration_of(ctx, policy).map_err(Found::NoConfiguration)?;
    let access = Access::new(
        config.spec.production_account.as_ref(),
        &[&policy.namespace().unwrap_or_default(), &policy.name_any()],
    );
    let aws = ctx.aws.scoped(&access).await;
    let named: Vec<String> = policy
        .spec
        .resources
        .iter()
        .map(|r| r.instance_id.clone())
        .collect();
    let found_named = aws
        .instances()
        .find_protected_instances(&policy.spec.region, &named, &[])
        .await
        .map_err(|e| Found::Failed(e.into()))?;
    let selectors: Vec<BTreeMap<String, String>> = policy
        .spec
        .instance_selectors
        .iter()
        .map(|s| s.match_tags.clone())
        .collect();
    let selected = if selectors.is_empty() {
        Vec::new()
    } else {
        aws.instances()
            .find_protected_instances(&policy.spec.region, &[], &selectors)
            .await
            .map_err(|e| Found::Failed(e.into()))?
    };
    let mut sources = BTreeMap::new();
    for id in selected {
        sources.insert(id, history::SELECTED);
    }
    for id in found_named {
        sources.insert(id, history::NAMED);
    }
    Ok(FoundResources {
        ids: sources.keys().cloned().collect(),
        sources,
        named,
    })
}

/// The configuration the policy's jobs will use: the one it names, else
/// the default of its region.
pub(super) fn configuration_of(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<Arc<WorkerConfiguration>, String> {
    let all = ctx.configurations.state();
    match &policy.spec.worker_configuration_ref {
        Some(r) => all.into_iter().find(|c| c.name_any() == r.name).ok_or_else(|| {
            format!(
                "WorkerConfiguration {:?} does not exist; create it or fix spec.workerConfigurationRef",
                r.name
            )
        }),
        None => all
            .into_iter()
            .find(|c| {
                c.spec.region == policy.spec.region
                    && c.annotations()
                        .get(crate::api::DEFAULT_CONFIGURATION_ANNOTATION)
                        .is_some_and(|v| v == "true")
            })
            .ok_or_else(|| {
                format!(
                    "no WorkerConfiguration is the default for {} (annotation {}=\"true\"); name one in spec.workerConfigurationRef",
                    policy.spec.region,
                    crate::api::DEFAULT_CONFIGURATION_ANNOTATION
                )
            }),
    }
}

/// Records the resources a run could not find, with an Event when the
/// list changes.
pub(super) async fn record_missing(
    ctx: &Context,
    policy: &BackupPolicy,
    status: &mut BackupPolicyStatus,
    found: &FoundResources,
) {
    let ids: BTreeSet<String> = found.ids.iter().cloned().collect();
    let missing = history::missing_resources(
        &status.missing_resources,
        &status.resources,
        &found.named,
        &ids,
        Timestamp::now(),
    );
    let changed = missing
        .iter()
        .map(|m| &m.id)
        .ne(status.missing_resources.iter().map(|m| &m.id));
    if changed && !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|m| format!("{} ({})", m.id, m.reason))
            .collect();
        ctx.event(
            policy,
            EventType::Warning,
            reasons::RESOURCES_MISSING,
            "Schedule",
            format!(
                "protected instances not found in {}: {}",
                policy.spec.region,
                list.join("; ")
            ),
        )
        .await;
    }
    // A missing resource stays in `resources` with its newest restore
    // point: it is still restorable, only no longer backed up.
    status.missing_resources = missing;
}
