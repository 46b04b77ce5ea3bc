//! What a policy's BackupJobs say: which runs are active, which finished
//! runs to delete (history limits), the newest restore point of each
//! resource, and when the last fully successful run ended. Pure.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::api::{BackupJob, MissingResource, Phase, ProtectedResource};

/// A policy's runs, from its jobs.
#[derive(Debug, Default, PartialEq)]
pub struct Runs {
    /// Jobs still running, by name.
    pub active: Vec<String>,
    /// Finished jobs beyond the history limits, to delete.
    pub prune: Vec<String>,
    /// When the newest run that succeeded for every resource finished.
    pub last_successful: Option<Timestamp>,
    /// resource → (restore point, when its run finished), the newest.
    pub newest: BTreeMap<String, (String, Timestamp)>,
}

fn finished_at(job: &BackupJob) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
}

fn phase(job: &BackupJob) -> Phase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Reads `jobs` (the policy's own) against its history limits.
pub fn runs(jobs: &[&BackupJob], successful_limit: i32, failed_limit: i32) -> Runs {
    let mut out = Runs::default();
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for job in jobs {
        let phase = phase(job);
        if !phase.is_finished() {
            out.active.push(job.name_any());
            continue;
        }
        let done = finished_at(job).unwrap_or(Timestamp::UNIX_EPOCH);
        if phase == Phase::Succeeded {
            succeeded.push((done, job.name_any()));
            if out.last_successful.is_none_or(|t| t < done) {
                out.last_successful = Some(done);
            }
        } else {
            failed.push((done, job.name_any()));
        }
        for worker in job.status.iter().flat_map(|s| s.workers.iter()) {
            let (Phase::Succeeded, Some(point)) = (worker.phase, &worker.restore_point) else {
                continue;
            };
            let newer = out
                .newest
                .get(&worker.resource)
                .is_none_or(|(_, t)| *t < done);
            if newer {
                out.newest
                    .insert(worker.resource.clone(), (point.clone(), done));
            }
        }
    }
    out.active.sort();
    for (mut list, limit) in [(succeeded, successful_limit), (failed, failed_limit)] {
        // Newest first; keep `limit`.
        list.sort_by(|a, b| b.cmp(a));
        let keep = usize::try_from(limit).unwrap_or(0);
        out.prune
            .extend(list.into_iter().skip(keep).map(|(_, name)| name));
    }
    out.prune.sort();
    out
}

/// An age as people read it: `45s`, `12m`, `3h`, `2d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(since.as_second()).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The per-resource status: every resource protected now (`protected`,
/// with where it came from), plus every one seen before, each with its
/// newest restore point (from the jobs still kept, else as the status
/// said before).
pub fn protected_resources(
    before: &[ProtectedResource],
    protected: &BTreeMap<String, &'static str>,
    newest: &BTreeMap<String, (String, Timestamp)>,
    now: Timestamp,
) -> Vec<ProtectedResource> {
    let ids: BTreeSet<&String> = before
        .iter()
        .map(|r| &r.id)
        .chain(protected.keys())
        .collect();
    ids.into_iter()
        .map(|id| {
            let old = before.iter().find(|r| &r.id == id);
            let from_jobs = newest
                .get(id)
                .map(|(p, t)| (Some(p.clone()), Some(Time(*t))));
            let from_before = old.map(|o| {
                (
                    o.newest_restore_point.clone(),
                    o.newest_restore_point_time.clone(),
                )
            });
            let (point, time) = match (from_jobs, from_before) {
                (Some(jobs), Some(before)) if before.1 > jobs.1 => before,
                (Some(jobs), _) => jobs,
                (None, Some(before)) => before,
                (None, None) => (None, None),
            };
            let source = protected
                .get(id)
                .map(|s| (*s).to_string())
                .or_else(|| old.map(|o| o.source.clone()))
                .unwrap_or_default();
            ProtectedResource {
                id: id.clone(),
                source,
                age: time.as_ref().map(|t| age(t.0, now)),
                newest_restore_point: point,
                newest_restore_point_time: time,
            }
        })
        .collect()
}

/// The missing resources after a run looked for them: those named by ID
/// and not found, and those a selector matched before (in `before`) and
/// matches no more. Each keeps the time it was first missed.
pub fn missing_resources(
    before_missing: &[MissingResource],
    before_protected: &[ProtectedResource],
    named: &[String],
    found: &BTreeSet<String>,
    now: Timestamp,
) -> Vec<MissingResource> {
    let since = |id: &str| {
        before_missing
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.since.clone())
            .unwrap_or(Time(now))
    };
    let mut missing: Vec<MissingResource> = named
        .iter()
        .filter(|id| !found.contains(*id))
        .map(|id| MissingResource {
            id: id.clone(),
            reason: "not found, terminated or being deleted: it is left out of the runs until it exists again"
                .into(),
            since: since(id),
        })
        .collect();
    missing.extend(
        before_protected
            .iter()
            .filter(|r| {
                (r.source == SELECTED || r.source == DATABASE_SELECTED)
                    && !found.contains(&r.id)
                    && !named.contains(&r.id)
            })
            .map(|r| MissingResource {
                id: r.id.clone(),
                reason: if r.source == SELECTED {
                    "no longer matches any instanceSelector (untagged, or terminated)".into()
                } else {
                    "no longer matches any databaseSelector (untagged, being deleted, or deleted)"
                        .into()
                },
                since: since(&r.id),
            }),
    );
    missing.sort_by(|a, b| a.id.cmp(&b.id));
    missing
}

/// Where a protected resource came from.
pub const NAMED: &str = "resources";
pub const SELECTED: &str = "instanceSelectors";
pub const DATABASE_SELECTED: &str = "databaseSelectors";

#[cfg(test)]
mod tests;
