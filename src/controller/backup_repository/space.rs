//! A repository's space from its retention runs: each namespace's last
//! successful RetentionJob on it says what that namespace part holds, what
//! it references and what waits to be deleted. Pure.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::{Phase, RepositorySpace, RetentionJob};
use crate::aws::ebs::BLOCK_SIZE;

/// The space of repository `name` from `jobs` (any, of any namespace).
pub fn space(name: &str, jobs: &[&RetentionJob]) -> Option<RepositorySpace> {
    let mut newest: BTreeMap<String, &RetentionJob> = BTreeMap::new();
    for job in jobs.iter().copied() {
        let ours = job
            .spec
            .repository_ref
            .as_ref()
            .is_some_and(|r| r.name == name);
        let status = job.status.as_ref();
        let done = status.is_some_and(|s| s.phase == Phase::Succeeded);
        let has_outcome = status.is_some_and(|s| s.workers.iter().any(|w| w.outcome.is_some()));
        if !(ours && done && has_outcome) {
            continue;
        }
        let ns = job.namespace().unwrap_or_default();
        if newest.get(&ns).is_none_or(|n| finished(n) < finished(job)) {
            newest.insert(ns, job);
        }
    }
    let last = newest.values().max_by_key(|j| finished(j))?;
    let mut space = RepositorySpace::default();
    let mut live_chunks: i64 = 0;
    for job in newest.values() {
        let Some(o) = outcome(job) else { continue };
        space.logical_bytes += clamp(o.logical_bytes);
        space.live_bytes += clamp(o.live_bytes);
        live_chunks += clamp(o.live_chunks);
        space.reclaimable_bytes += clamp(o.pending_bytes);
        if let Some(at) = &o.reclaimable_at
            && space.reclaimable_at.as_ref().is_none_or(|t| at.0 < t.0)
        {
            space.reclaimable_at = Some(at.clone());
        }
    }
    let unique = live_chunks.saturating_mul(BLOCK_SIZE as i64);
    space.deduplication_ratio = ratio(space.logical_bytes, unique);
    space.compression_ratio = ratio(unique, space.live_bytes);
    space.last_retention = Some(format!(
        "{}/{}",
        last.namespace().unwrap_or_default(),
        last.name_any()
    ));
    space.last_retention_time = last.status.as_ref().and_then(|s| s.completion_time.clone());
    if let Some(o) = outcome(last) {
        space.last_retention_expired = clamp(o.expired_restore_points);
        space.last_retention_deleted_bytes = clamp(o.deleted_bytes);
    }
    Some(space)
}

fn outcome(job: &RetentionJob) -> Option<&crate::api::RetentionOutcome> {
    job.status
        .as_ref()?
        .workers
        .iter()
        .find_map(|w| w.outcome.as_ref())
}

fn finished(job: &RetentionJob) -> Option<k8s_openapi::jiff::Timestamp> {
    job.status.as_ref()?.completion_time.as_ref().map(|t| t.0)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `a / b` with two decimals, when both are known.
fn ratio(a: i64, b: i64) -> Option<String> {
    (a > 0 && b > 0).then(|| format!("{:.2}", a as f64 / b as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RetentionOutcome, RetentionWorkerStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn run(ns: &str, name: &str, repo: &str, minute: i64, o: RetentionOutcome) -> RetentionJob {
        let mut job: RetentionJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "RetentionJob",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"repositoryRef": {"name": repo}, "region": "eu-west-1"}
        }))
        .expect("a job");
        let at = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + minute * 60).expect("t");
        job.status = Some(crate::api::RetentionJobStatus {
            phase: Phase::Succeeded,
            completion_time: Some(Time(at)),
            workers: vec![RetentionWorkerStatus {
                outcome: Some(o),
                ..Default::default()
            }],
            ..Default::default()
        });
        job
    }

    #[test]
    fn each_namespace_counts_as_of_its_last_run() {
        let block = BLOCK_SIZE as u64;
        let outcome = |logical: u64, chunks: u64, live: u64, pending: u64| RetentionOutcome {
            logical_bytes: logical,
            live_chunks: chunks,
            live_bytes: live,
            pending_bytes: pending,
            expired_restore_points: 2,
            deleted_bytes: 7,
            ..Default::default()
        };
        let jobs = [
            run("a", "old", "main", 1, outcome(1, 1, 1, 1)),
            run("a", "new", "main", 2, outcome(40 * block, 10, 5 * block, 3)),
            run(
                "b",
                "only",
                "main",
                3,
                outcome(20 * block, 10, 5 * block, 4),
            ),
            run("c", "elsewhere", "other", 4, outcome(9, 9, 9, 9)),
        ];
        let refs: Vec<&RetentionJob> = jobs.iter().collect();
        let s = space("main", &refs).expect("space");
        assert_eq!(s.logical_bytes, 60 * BLOCK_SIZE as i64);
        assert_eq!(s.deduplication_ratio.as_deref(), Some("3.00"));
        assert_eq!(s.compression_ratio.as_deref(), Some("2.00"));
        assert_eq!(s.reclaimable_bytes, 7);
        assert_eq!(s.last_retention.as_deref(), Some("b/only"));
        assert_eq!(
            (s.last_retention_expired, s.last_retention_deleted_bytes),
            (2, 7)
        );
        assert_eq!(space("none", &refs), None);
    }
}
