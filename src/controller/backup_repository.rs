//! BackupRepository reconciler: checks that the bucket answers, is owned
//! by the expected account and takes writes, counts the restore points and
//! bytes it holds, and says so in status. It runs on its own changes and on
//! the recheck timer; it never deletes anything (restore points outlive
//! the resource that named them).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::instrument;

use super::{Context, Result, apply_status};
use crate::api::conditions::{self, DesiredCondition, READY, STALLED};
use crate::api::{BackupRepository, BackupRepositoryStatus};
use crate::aws::AwsClients;
use crate::aws::accounts::Access;
use crate::aws::repository::{Bucket, Listing};
use crate::controller::events;
use crate::mover::manifest::RepositoryLocation;

mod catalog;
mod space;

/// What the check found wrong, for `Ready`.
#[derive(Debug, PartialEq, Eq)]
struct Finding {
    reason: &'static str,
    message: String,
}

#[instrument(skip_all, fields(repository = repo.name_any()))]
pub async fn reconcile(repo: Arc<BackupRepository>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<BackupRepository> = Api::all(ctx.client.clone());
    ctx.metrics
        .reconciles
        .get_or_create(&super::kind_labels("BackupRepository"))
        .inc();
    let access = Access::new(repo.spec.access.as_ref(), &["repository", &repo.name_any()]);
    let aws = ctx.aws.scoped(&access).await;
    let before = repo.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.observed_generation = repo.metadata.generation;
    let interval = SignedDuration::try_from(ctx.repository_count).unwrap_or(SignedDuration::MAX);
    let recount = counts_are_due(
        &before,
        repo.metadata.generation,
        Timestamp::now(),
        interval,
    );
    let (phase, desired) = match check(&aws, &repo, &ctx.cluster_id, recount).await {
        Ok(listing) => {
            if let Some(listing) = listing {
                count(&mut status, &repo, &listing);
                status.last_checked_time = Some(Time(Timestamp::now()));
                catalog(&ctx, &aws, &repo, &listing).await;
            }
            let message = format!(
                "s3://{}/{} is reachable, owned by {} and writable; it holds {} restore points",
                repo.spec.bucket,
                repo.spec.prefix,
                repo.spec.expected_bucket_owner,
                status.restore_points
            );
            (
                "Ready",
                vec![
                    DesiredCondition::new(READY, true, "Checked", message),
                    DesiredCondition::new(STALLED, false, "Checked", String::new()),
                ],
            )
        }
        Err(f) => (
            "NotReady",
            vec![
                DesiredCondition::new(READY, false, f.reason, f.message.clone()),
                DesiredCondition::new(STALLED, true, f.reason, f.message),
            ],
        ),
    };
    let runs = ctx.retentions.state();
    let runs: Vec<&crate::api::RetentionJob> = runs.iter().map(|j| j.as_ref()).collect();
    status.space = space::space(&repo.name_any(), &runs);
    status.phase = Some(phase.into());
    status.conditions = conditions::merge(
        &status.conditions,
        &desired,
        repo.metadata.generation,
        Timestamp::now(),
    );
    let was_ready = conditions::is_true(&before.conditions, READY);
    let ready = conditions::is_true(&status.conditions, READY);
    if was_ready != ready || before.phase.is_none() {
        let condition = status.conditions.iter().find(|c| c.type_ == READY);
        let (reason, note) = condition
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_default();
        let type_ = if ready {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.event(&*repo, type_, &reason, "CheckRepository", note)
            .await;
    }
    if status != before {
        apply_status(&api, &*repo, &status, &ctx.metrics).await?;
    }
    Ok(Action::requeue(
        ctx.network_recheck.min(ctx.repository_count),
    ))
}

/// Whether to list the repository again: never counted, counted for an
/// older spec, or counted `interval` ago or more. A listing costs one call
/// per 1 000 objects, which a large repository should not pay at every
/// reachability check (`--repository-count-seconds`, an hour by default).
fn counts_are_due(
    before: &BackupRepositoryStatus,
    generation: Option<i64>,
    now: Timestamp,
    interval: SignedDuration,
) -> bool {
    match &before.last_checked_time {
        Some(t) if before.observed_generation == generation => now.duration_since(t.0) >= interval,
        _ => true,
    }
}

/// Whether the bucket answers for its expected owner and takes a write;
/// then, when `recount`, what it holds under the prefix.
async fn check(
    aws: &AwsClients,
    repo: &BackupRepository,
    cluster_id: &str,
    recount: bool,
) -> std::result::Result<Option<Listing>, Finding> {
    let spec = &repo.spec;
    if spec.integrity.is_none() {
        return Err(Finding {
            reason: events::INTEGRITY_KEY_MISSING,
            message: "spec.integrity.macKeyId is not set: restore points cannot be authenticated, so jobs wait; set it to a KMS key with KeySpec HMAC_256 and KeyUsage GENERATE_VERIFY_MAC".into(),
        });
    }
    let bucket = Bucket {
        region: &spec.region,
        name: &spec.bucket,
        expected_owner: &spec.expected_bucket_owner,
    };
    let base = RepositoryLocation::new(&spec.bucket, &spec.prefix, &spec.region);
    aws.repository()
        .head_bucket(bucket)
        .await
        .map_err(|e| Finding {
            reason: events::BUCKET_UNREACHABLE,
            message: format!(
                "cannot reach bucket {:?} in {} as owned by account {}: {e}; check that it exists there, that spec.expectedBucketOwner is its owner, and that Tender may s3:ListBucket it",
                spec.bucket, spec.region, spec.expected_bucket_owner
            ),
        })?;
    let probe = format!("{}.tender-probe/{cluster_id}", base.prefix);
    let kms = spec.encryption.kms_key();
    aws.repository()
        .probe_write(bucket, &probe, kms)
        .await
        .map_err(|e| Finding {
            reason: events::BUCKET_NOT_WRITABLE,
            message: format!(
                "cannot write s3://{}/{probe}: {e}; grant Tender s3:PutObject and s3:DeleteObject on {}.tender-probe/* (and the KMS key's kms:GenerateDataKey with SSE-KMS)",
                spec.bucket, base.prefix
            ),
        })?;
    if !recount {
        return Ok(None);
    }
    let prefix = base.prefix.clone();
    aws.repository()
        .list_prefix(bucket, &base.prefix, |key| {
            restore_point_namespace(&prefix, key).is_some() || hold_of(&prefix, key).is_some()
        })
        .await
        .map_err(|e| Finding {
            reason: events::BUCKET_UNREACHABLE,
            message: format!(
                "cannot list s3://{}/{}: {e}; grant Tender s3:ListBucket on the bucket",
                spec.bucket, base.prefix
            ),
        })
        .map(Some)
}

/// Keeps the RestorePoint objects in line with the listing; a failure is
/// logged and tried again at the next count (the bucket itself is fine).
async fn catalog(ctx: &Context, aws: &AwsClients, repo: &BackupRepository, listing: &Listing) {
    let prefix =
        RepositoryLocation::new(&repo.spec.bucket, &repo.spec.prefix, &repo.spec.region).prefix;
    let mut ids: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut holds: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for key in &listing.kept {
        if let Some(ns) = restore_point_namespace(&prefix, key) {
            let start = prefix.len() + ns.len() + "/restore-points/".len();
            let id = &key[start..key.len() - ".json".len()];
            ids.entry(ns.to_string())
                .or_default()
                .insert(id.to_string());
        } else if let Some((ns, id)) = hold_of(&prefix, key) {
            holds
                .entry(ns.to_string())
                .or_default()
                .insert(id.to_string());
        }
    }
    match catalog::sync(ctx, aws, repo, (&ids, &holds)).await {
        Ok(synced) if !synced.unverified.is_empty() => {
            let note = format!(
                "{} restore point(s) do not verify with the repository's integrity key and are not listed as RestorePoints (nor restorable): {}; find out who else writes to the bucket",
                synced.unverified.len(),
                synced.unverified.join(", ")
            );
            ctx.event(
                repo,
                EventType::Warning,
                "RestorePointUnverified",
                "Catalog",
                note,
            )
            .await;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "the restore-point catalog is behind; trying again at the next count")
        }
    }
}

/// The namespace and restore point of a hold's key
/// (`<prefix><namespace>/holds/<job>/<resource>`).
fn hold_of<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str)> {
    let (namespace, rest) = key.strip_prefix(prefix)?.split_once('/')?;
    let id = rest.strip_prefix("holds/")?;
    (!namespace.is_empty() && id.contains('/')).then_some((namespace, id))
}

/// The namespace whose restore point manifest `key` is
/// (`<prefix><namespace>/restore-points/<job>/<resource>.json`).
fn restore_point_namespace<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    let (namespace, rest) = rest.split_once('/')?;
    let manifest = rest.strip_prefix("restore-points/")?;
    let valid_namespace = !namespace.is_empty()
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (valid_namespace && manifest.ends_with(".json")).then_some(namespace)
}

fn count(status: &mut BackupRepositoryStatus, repo: &BackupRepository, listing: &Listing) {
    let prefix =
        RepositoryLocation::new(&repo.spec.bucket, &repo.spec.prefix, &repo.spec.region).prefix;
    let mut by_namespace: BTreeMap<String, i64> = BTreeMap::new();
    for key in &listing.kept {
        if let Some(ns) = restore_point_namespace(&prefix, key) {
            *by_namespace.entry(ns.to_string()).or_default() += 1;
        }
    }
    status.restore_points = by_namespace.values().sum();
    status.restore_points_by_namespace = by_namespace;
    status.stored_bytes = i64::try_from(listing.bytes).unwrap_or(i64::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_at_first_on_a_new_spec_and_hourly() {
        let at = |secs: i64| Timestamp::from_second(1_700_000_000 + secs).expect("time");
        let counted = |secs: i64, generation: i64| BackupRepositoryStatus {
            observed_generation: Some(generation),
            last_checked_time: Some(Time(at(secs))),
            ..Default::default()
        };
        let cases = [
            (
                "never counted",
                BackupRepositoryStatus::default(),
                Some(1),
                true,
            ),
            ("counted a minute ago", counted(0, 1), Some(1), false),
            ("counted an hour ago", counted(-3600, 1), Some(1), true),
            ("counted for an older spec", counted(0, 1), Some(2), true),
        ];
        for (name, before, generation, due) in cases {
            let hour = SignedDuration::from_hours(1);
            assert_eq!(
                counts_are_due(&before, generation, at(60), hour),
                due,
                "{name}"
            );
        }
    }

    #[test]
    fn only_manifests_under_a_namespace_count_as_restore_points() {
        let cases = [
            (
                "prod/team-a/restore-points/nightly/i-1.json",
                Some("team-a"),
            ),
            ("prod/team-a/restore-points/j/snap-1.json", Some("team-a")),
            ("prod/team-a/chunks/ab/abcdef", None),
            ("prod/team-a/latest/us-east-1/i-1.json", None),
            ("prod/_restored/team-a/job/etc/restore-points/x.json", None),
            ("prod/.tender-probe/cluster", None),
            ("other/team-a/restore-points/j/i-1.json", None),
            ("prod/team-a/restore-points/j/i-1.txt", None),
        ];
        for (key, want) in cases {
            assert_eq!(restore_point_namespace("prod/", key), want, "{key}");
        }
        assert_eq!(
            restore_point_namespace("", "ns/restore-points/j/i-1.json"),
            Some("ns")
        );
    }
}
