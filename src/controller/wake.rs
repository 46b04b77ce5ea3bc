//! Which jobs a WorkerConfiguration's change wakes (see [`ConfigChanges`]),
//! and a BackupRepository's (see [`RepositoryChanges`]).

use std::collections::HashMap;
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::job::kind::WorkerJob;
use crate::api::{BackupRepository, WorkerConfiguration};

/// Which jobs a configuration's change wakes. Its `activeWorkers` changes
/// with every worker that starts or ends, and no job but those queued for a
/// launch slot reads it: waking every unfinished job of the namespace for
/// it would cost a reconcile per job per change (with a thousand jobs
/// running, a thousand reconciles each time a worker ends). So: every
/// unfinished job when anything else changed (spec, deletion, finalizers,
/// status) or when the configuration is first seen; the queued ones when
/// the worker count dropped under a `maxConcurrentWorkers` limit; none
/// otherwise.
#[derive(Default)]
pub struct ConfigChanges {
    /// Per configuration UID: the fingerprint of what jobs read, and the
    /// active worker count, as last seen.
    seen: Mutex<HashMap<String, (u64, i32)>>,
}

impl ConfigChanges {
    pub fn wake<K: WorkerJob>(
        &self,
        store: &Store<K>,
        cfg: &WorkerConfiguration,
    ) -> Vec<ObjectRef<K>> {
        let active = cfg.status.as_ref().map_or(0, |s| s.active_workers);
        let fingerprint = config_fingerprint(cfg);
        let previous = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cfg.uid().unwrap_or_default(), (fingerprint, active));
        match previous {
            Some((before, _)) if before != fingerprint => unfinished_in(store, cfg),
            None => unfinished_in(store, cfg),
            Some((_, before)) if active < before && cfg.spec.max_concurrent_workers.is_some() => {
                queued_in(store, cfg)
            }
            Some(_) => Vec::new(),
        }
    }
}

/// Which jobs a repository's change wakes: the unfinished ones that name it,
/// when it is first seen (created, or a controller start), when its spec
/// changed (its `namespaceSelector` may admit them now), and when its
/// reconciler has seen that spec (`status.observedGeneration`): jobs read
/// the repository from the store that reconciler's watch fills, which may
/// lag behind this watch; by the time its status says so, it holds that
/// spec. Jobs read nothing else of its status, which is rewritten at every
/// check: that wakes nobody.
#[derive(Default)]
pub struct RepositoryChanges {
    /// Per repository UID: its generation and observed generation, as last
    /// seen.
    seen: Mutex<HashMap<String, Generations>>,
}

/// `metadata.generation` and `status.observedGeneration`.
type Generations = (Option<i64>, Option<i64>);

impl RepositoryChanges {
    pub fn wake<K: WorkerJob>(
        &self,
        store: &Store<K>,
        repo: &BackupRepository,
    ) -> Vec<ObjectRef<K>> {
        let generations = (
            repo.metadata.generation,
            repo.status.as_ref().and_then(|s| s.observed_generation),
        );
        let previous = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo.uid().unwrap_or_default(), generations);
        if previous == Some(generations) {
            return Vec::new();
        }
        let name = repo.name_any();
        store
            .state()
            .into_iter()
            .filter(|j| {
                j.repository_ref()
                    .into_iter()
                    .chain(j.other_repository_refs())
                    .any(|r| r.name == name)
            })
            .filter(|j| !j.job_status().is_some_and(|s| s.phase.is_finished()))
            .map(|j| ObjectRef::from_obj(&*j))
            .collect()
    }
}

/// A hash of what jobs read of a configuration: all of it but the active
/// worker count.
fn config_fingerprint(cfg: &WorkerConfiguration) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut status = cfg.status.clone();
    if let Some(s) = status.as_mut() {
        s.active_workers = 0;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_string(&(
        &cfg.metadata.generation,
        &cfg.metadata.deletion_timestamp,
        &cfg.metadata.finalizers,
        &status,
    ))
    .unwrap_or_default()
    .hash(&mut hasher);
    hasher.finish()
}

/// Whether a job uses `cfg`, or has no configuration yet (and may be
/// waiting for this one).
fn may_use<K: WorkerJob>(job: &K, cfg: &WorkerConfiguration) -> bool {
    job.job_status()
        .and_then(|s| s.worker_configuration.as_deref())
        .is_none_or(|name| name == cfg.name_any())
}

/// The jobs of a configuration waiting for a launch slot.
fn queued_in<K: WorkerJob>(store: &Store<K>, cfg: &WorkerConfiguration) -> Vec<ObjectRef<K>> {
    store
        .state()
        .into_iter()
        .filter(|j| may_use(&**j, cfg))
        .filter(|j| j.job_status().is_some_and(|s| s.queue_position.is_some()))
        .map(|j| ObjectRef::from_obj(&*j))
        .collect()
}

/// The unfinished jobs that use a configuration or may be waiting for it.
fn unfinished_in<K: WorkerJob>(store: &Store<K>, cfg: &WorkerConfiguration) -> Vec<ObjectRef<K>> {
    store
        .state()
        .into_iter()
        .filter(|j| may_use(&**j, cfg))
        .filter(|j| !j.job_status().is_some_and(|s| s.phase.is_finished()))
        .map(|j| ObjectRef::from_obj(&*j))
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};

    use super::*;
    use crate::api::BackupJob;

    fn config(active: i32, max: Option<i32>, ready: &str) -> WorkerConfiguration {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
            "metadata": {"name": "workers", "namespace": "ns", "uid": "cfg-1", "generation": 1},
            "spec": {"region": "us-east-1", "imageId": "ami-0123456789abcdef0", "maxConcurrentWorkers": max},
            "status": {
                "activeWorkers": active,
                "conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": "",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
        }))
        .expect("a configuration")
    }

    /// Jobs `running` (no queue position) and `queued` (position 1), both
    /// unfinished, and `done` (Succeeded).
    fn jobs() -> Store<BackupJob> {
        let (reader, mut writer) = reflector::store::<BackupJob>();
        for (name, status) in [
            ("running", serde_json::json!({"phase": "Running"})),
            (
                "queued",
                serde_json::json!({"phase": "Provisioning", "queuePosition": 1}),
            ),
            ("done", serde_json::json!({"phase": "Succeeded"})),
        ] {
            let job: BackupJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
                "metadata": {"name": name, "namespace": "ns", "uid": name},
                "spec": {"resources": [{"instanceId": "i-0123456789abcdef0", "region": "us-east-1"}],
                         "repositoryRef": {"name": "backups"}},
                "status": status,
            }))
            .expect("a job");
            writer.apply_watcher_event(&watcher::Event::Apply(job));
        }
        reader
    }

    fn names(refs: Vec<ObjectRef<BackupJob>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_configuration_wakes_only_the_jobs_its_change_concerns() {
        let store = jobs();
        let changes = ConfigChanges::default();
        // First sight (a controller start): every unfinished job.
        assert_eq!(
            names(changes.wake(&store, &config(3, Some(3), "True"))),
            ["queued", "running"]
        );
        // Only the worker count went up: nobody.
        assert!(changes.wake(&store, &config(4, Some(3), "True")).is_empty());
        // It went down under a limit: the jobs waiting for a slot.
        assert_eq!(
            names(changes.wake(&store, &config(2, Some(3), "True"))),
            ["queued"]
        );
        // Anything else changed (here Ready): every unfinished job.
        assert_eq!(
            names(changes.wake(&store, &config(2, Some(3), "False"))),
            ["queued", "running"]
        );
        // Without a limit a falling count wakes nobody.
        let unlimited = ConfigChanges::default();
        unlimited.wake(&store, &config(5, None, "True"));
        assert!(unlimited.wake(&store, &config(1, None, "True")).is_empty());
    }

    fn repository(name: &str, generation: i64, restore_points: i64) -> BackupRepository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": name, "uid": name, "generation": generation},
            "spec": {"bucket": "backups", "region": "us-east-1", "expectedBucketOwner": "123456789012"},
            "status": {"restorePoints": restore_points, "observedGeneration": 1},
        }))
        .expect("a repository")
    }

    #[test]
    fn a_repository_wakes_the_unfinished_jobs_that_name_it_when_its_spec_changes() {
        let store = jobs();
        let changes = RepositoryChanges::default();
        // First sight (created, or a controller start).
        let mut created = repository("backups", 1, 0);
        created.status = None;
        assert_eq!(names(changes.wake(&store, &created)), ["queued", "running"]);
        // Its reconciler saw it.
        assert_eq!(
            names(changes.wake(&store, &repository("backups", 1, 0))),
            ["queued", "running"]
        );
        // Its status, rewritten at every check: nobody.
        assert!(
            changes
                .wake(&store, &repository("backups", 1, 7))
                .is_empty()
        );
        // Its spec (say, whom it admits).
        assert_eq!(
            names(changes.wake(&store, &repository("backups", 2, 7))),
            ["queued", "running"]
        );
        assert!(
            changes
                .wake(&store, &repository("backups", 2, 8))
                .is_empty()
        );
        // A repository no job names.
        assert!(
            changes
                .wake(&store, &repository("elsewhere", 1, 0))
                .is_empty()
        );
    }
}
