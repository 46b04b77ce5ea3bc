//! The restore-point catalog: after each count of a repository, one
//! RestorePoint object per restore point of every namespace part whose
//! namespace exists here and is admitted, made from the manifest once its
//! MAC verifies; objects whose manifest is gone are deleted. A new cluster
//! pointed at an existing repository so sees what was made before.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};
use tracing::warn;

use crate::api::restore_point::{
    HOLD_ANNOTATION, REPOSITORY_LABEL, RestorePointStatus, object_name,
};
use crate::api::{BackupRepository, LocalObjectReference, RestorePoint, RestorePointSpec};
use crate::aws::AwsClients;
use crate::controller::job::configuration::admits;
use crate::controller::{Context, Result, apply_status};
use crate::mover::manifest::{Manifest, RepositoryLocation};
use crate::mover::{self, MoverError};

/// Manifests read (and verified) per count at most: a repository with many
/// new restore points is caught up over a few counts, never in one long
/// reconcile.
const NEW_PER_PASS: usize = 200;

/// Restore point IDs by namespace.
pub type ByNamespace = BTreeMap<String, BTreeSet<String>>;

/// What one catalog pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub created: usize,
    pub deleted: usize,
    /// Restore points whose manifest does not verify: not cataloged.
    pub unverified: Vec<String>,
    /// New restore points left for the next pass.
    pub deferred: usize,
}

/// Brings the catalog of `repo` in line with `ids` (namespace → restore
/// point IDs, from the listing).
pub async fn sync(
    ctx: &Context,
    aws: &AwsClients,
    repo: &BackupRepository,
    (ids, holds): (&ByNamespace, &ByNamespace),
) -> Result<Synced> {
    let mut synced = Synced::default();
    let mut budget = NEW_PER_PASS;
    for ns in catalog_namespaces(ctx, repo) {
        let api: Api<RestorePoint> = Api::namespaced(ctx.client.clone(), &ns);
        let selector = format!("{REPOSITORY_LABEL}={}", repo.name_any());
        let existing = api.list(&ListParams::default().labels(&selector)).await?;
        let none = BTreeSet::new();
        let listed = ids.get(&ns).unwrap_or(&none);
        let known: BTreeSet<&str> = existing.items.iter().map(|p| p.spec.id.as_str()).collect();
        for gone in existing
            .items
            .iter()
            .filter(|p| !listed.contains(&p.spec.id))
        {
            match api.delete(&gone.name_any(), &DeleteParams::default()).await {
                Ok(_) => synced.deleted += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let location = RepositoryLocation::of(&repo.spec, &ns);
        let held = holds.get(&ns).unwrap_or(&none);
        for point in existing
            .items
            .iter()
            .filter(|p| listed.contains(&p.spec.id))
        {
            let recorded = held.contains(&point.spec.id);
            sync_hold(ctx, aws, (&api, &location), point, recorded).await?;
        }
        for id in listed.iter().filter(|id| !known.contains(id.as_str())) {
            let Some(name) = object_name(id) else {
                warn!(
                    id,
                    namespace = ns,
                    "a restore point ID that names no object; not cataloged"
                );
                continue;
            };
            if budget == 0 {
                synced.deferred += 1;
                continue;
            }
            budget -= 1;
            let manifest = match mover::load_manifest(aws, &location, id).await {
                Ok(m) => m,
                Err(MoverError::RestorePointNotFound { .. }) => continue, // expired since
                Err(e @ (MoverError::Aws(_) | MoverError::NoIntegrityKey)) => {
                    return Err(crate::controller::Error::Aws(match e {
                        MoverError::Aws(a) => a,
                        other => crate::aws::AwsError::Unreachable {
                            operation: "VerifyMac",
                            detail: other.to_string(),
                        },
                    }));
                }
                Err(e) => {
                    warn!(error = %e, id, namespace = ns, "restore point not cataloged");
                    synced.unverified.push(format!("{ns}/{id}"));
                    continue;
                }
            };
            let object = object_of(repo, &ns, &name, &manifest);
            match api.create(&PostParams::default(), &object).await {
                Ok(created) => {
                    synced.created += 1;
                    let recorded = held.contains(id);
                    sync_hold(ctx, aws, (&api, &location), &created, recorded).await?;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(synced)
}

/// Carries out what the object's hold annotation asks (`"true"` records a
/// hold in the repository, `"false"` removes it; absent leaves the
/// repository's record as it is, another cluster's included) and shows
/// the repository's record in `status.held`.
async fn sync_hold(
    ctx: &Context,
    aws: &AwsClients,
    (api, location): (&Api<RestorePoint>, &RepositoryLocation),
    point: &RestorePoint,
    recorded: bool,
) -> Result<()> {
    let key = location.hold_key(&point.spec.id);
    let held = match point.annotations().get(HOLD_ANNOTATION).map(String::as_str) {
        Some("true") => {
            if !recorded {
                let body = serde_json::json!({
                    "restorePoint": point.spec.id,
                    "heldBy": format!(
                        "RestorePoint {}/{}",
                        point.namespace().unwrap_or_default(),
                        point.name_any()
                    ),
                    "cluster": ctx.cluster_id,
                });
                aws.repository()
                    .put_object(
                        location,
                        &key,
                        body.to_string().into_bytes(),
                        "application/json",
                    )
                    .await?;
            }
            true
        }
        Some("false") => {
            if recorded {
                aws.repository().delete_object(location, &key).await?;
            }
            false
        }
        _ => recorded,
    };
    if point.status.as_ref().map(|s| s.held) != Some(held) {
        // Only `held`: `lastVerification` is another writer's (a merge
        // patch), which this apply leaves alone.
        let status = RestorePointStatus {
            held,
            last_verification: None,
        };
        apply_status(api, point, &status, &ctx.metrics).await?;
    }
    Ok(())
}

/// Namespaces whose part this controller catalogs: they exist, are in its
/// scope, and the repository admits them.
fn catalog_namespaces(ctx: &Context, repo: &BackupRepository) -> Vec<String> {
    ctx.namespaces
        .state()
        .iter()
        .filter(|n| {
            ctx.namespace
                .as_deref()
                .is_none_or(|only| only == n.name_any())
        })
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| admits(repo.spec.namespace_selector.as_ref(), n.labels()).is_ok())
        .map(|n| n.name_any())
        .collect()
}

fn object_of(repo: &BackupRepository, ns: &str, name: &str, m: &Manifest) -> RestorePoint {
    let created = m
        .created_at
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    // Owned by the repository: the catalog goes with it (the data never
    // does). A cluster-scoped owner of namespaced objects is allowed.
    let owner = repo.uid().map(|uid| OwnerReference {
        api_version: BackupRepository::api_version(&()).to_string(),
        kind: BackupRepository::kind(&()).to_string(),
        name: repo.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    });
    let mut labels = BTreeMap::from([(REPOSITORY_LABEL.to_string(), repo.name_any())]);
    if let Some(policy) = &m.policy {
        labels.insert(crate::names::POLICY_LABEL.to_string(), policy.clone());
    }
    RestorePoint {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        status: None,
        spec: RestorePointSpec {
            repository_ref: LocalObjectReference {
                name: repo.name_any(),
            },
            id: m.id.clone(),
            resource: m.resource.clone(),
            region: m.region.clone(),
            created_at: Time(created),
            job_name: m.job_name.clone(),
            policy: m.policy.clone(),
            parent: m.parent.clone(),
            volumes: i32::try_from(m.volumes.len()).unwrap_or(i32::MAX),
            logical_bytes: i64::try_from(m.stats.bytes_total).unwrap_or(i64::MAX),
            stored_bytes: i64::try_from(m.stats.bytes_uploaded).unwrap_or(i64::MAX),
            engine: m.database.as_ref().map(|d| d.engine.clone()),
            database_snapshots: m
                .database
                .iter()
                .flat_map(|d| d.snapshots.iter().map(|s| s.arn.clone()))
                .collect(),
        },
    }
}
