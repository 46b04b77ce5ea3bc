//! What the policy's next retention run will expire, for its status: the
//! policy's rules applied, at the run's time, to its RestorePoints (the
//! catalog, as fresh as the repository's last count), held ones kept and
//! those annotated for deletion added. The run itself decides on the
//! repository's manifests; this tells people before it does.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::api::restore_point::{DELETE_ANNOTATION, REPOSITORY_LABEL};
use crate::api::{BackupPolicy, RestorePoint, RetentionPreview};
use crate::controller::{Context, Result};
use crate::names::POLICY_LABEL;
use crate::policy::retention::{Candidate, Rules, apply_per_resource};

/// Restore point IDs the preview names at most (the count is whole).
const NAMED: usize = 20;

pub async fn preview(
    ctx: &Context,
    policy: &BackupPolicy,
    zone: &TimeZone,
    at: Timestamp,
) -> Result<Option<RetentionPreview>> {
    let Some(rules) = policy
        .spec
        .retention
        .as_ref()
        .and_then(|r| Rules::of(&r.rules).ok())
    else {
        return Ok(None);
    };
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<RestorePoint> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{REPOSITORY_LABEL}={}", policy.spec.repository_ref.name);
    let points = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    Ok(Some(expiring(
        &rules,
        zone,
        (&policy.name_any(), &points),
        at,
    )))
}

/// The preview at `at` of the repository's `points` in the namespace: the
/// rules for the policy's own, the deletions asked for any.
pub fn expiring(
    rules: &Rules,
    zone: &TimeZone,
    (policy, points): (&str, &[RestorePoint]),
    at: Timestamp,
) -> RetentionPreview {
    let held = |p: &RestorePoint| p.status.as_ref().is_some_and(|s| s.held);
    let own: Vec<&RestorePoint> = points
        .iter()
        .filter(|p| p.labels().get(POLICY_LABEL).map(String::as_str) == Some(policy))
        .collect();
    let mut by_resource: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for p in &own {
        by_resource
            .entry(format!("{}/{}", p.spec.region, p.spec.resource))
            .or_default()
            .push(Candidate {
                id: p.spec.id.clone(),
                created: p.spec.created_at.0,
                held: held(p),
            });
    }
    let mut expires: Vec<String> = apply_per_resource(rules, zone, by_resource, at)
        .into_values()
        .flatten()
        .filter(|v| !v.kept())
        .map(|v| v.id)
        .collect();
    expires.extend(
        points
            .iter()
            .filter(|p| !held(p))
            .filter(|p| p.annotations().get(DELETE_ANNOTATION).map(String::as_str) == Some("true"))
            .map(|p| p.spec.id.clone()),
    );
    expires.sort();
    expires.dedup();
    RetentionPreview {
        at: Time(at),
        restore_points: own.len() as i64,
        expires_count: expires.len() as i64,
        expires: expires.into_iter().take(NAMED).collect(),
    }
}
