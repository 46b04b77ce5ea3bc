//! The worker index: what the controller knows of every job's workers, by
//! configuration, kept up to date by the job watches and by the
//! controller's own status writes (as linkerd's policy controller keeps its
//! indexes). Admission reads it instead of scanning every job; the
//! configurations' `activeWorkers` comes from it; a configuration's
//! deletion asks it which jobs still need it.
//!
//! Pure and in memory: no I/O here, unit tests drive it directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;
use std::sync::Mutex;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::jiff::Timestamp;

use crate::api::{JobStatus, WorkerStatus};

/// A configuration (cluster-scoped): its name.
pub type ConfigKey = String;

/// Where a job stands in its configuration's launch queue: creation time,
/// then name, then UID (so that two jobs never tie).
pub type QueueOrder = (Option<Timestamp>, String, String);

/// What the index keeps of one job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobEntry {
    /// `BackupJob/<name>` or `RestoreJob/<name>`, for people.
    pub display: String,
    pub order: QueueOrder,
    pub configuration: Option<ConfigKey>,
    /// Workers launched and not terminated.
    pub active: usize,
    /// Workers planned and not launched yet.
    pub waiting: usize,
    pub finished: bool,
    pub suspended: bool,
}

impl JobEntry {
    /// The entry of a job from its identity and status.
    pub fn of<W: Deref<Target = WorkerStatus>>(
        identity: JobIdentity,
        status: Option<&JobStatus<W>>,
    ) -> Self {
        let workers = status.map(|s| s.workers.as_slice()).unwrap_or_default();
        Self {
            configuration: status.and_then(|s| s.worker_configuration.clone()),
            active: workers.iter().filter(|w| w.is_active()).count(),
            waiting: workers.iter().filter(|w| w.is_waiting_to_launch()).count(),
            finished: status.is_some_and(|s| s.phase.is_finished()),
            suspended: identity.suspended,
            display: identity.display,
            order: identity.order,
        }
    }

    /// Workers of this job that hold older jobs' launches back: waiting
    /// ones of an unfinished, unsuspended job.
    fn queued(&self) -> usize {
        if self.finished || self.suspended {
            0
        } else {
            self.waiting
        }
    }
}

/// Who a job is, apart from its status.
#[derive(Clone, Debug, Default)]
pub struct JobIdentity {
    pub namespace: String,
    pub display: String,
    pub order: QueueOrder,
    pub suspended: bool,
}

/// What one configuration's jobs add up to.
#[derive(Debug, Default)]
struct ConfigLoad {
    active: usize,
    /// Jobs with queued workers, in queue order, and how many.
    queued: BTreeMap<QueueOrder, usize>,
    /// Unfinished jobs (display names).
    unfinished: BTreeSet<String>,
}

/// A configuration's load as one launch decision sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Live workers of the configuration, this job's included.
    pub active: usize,
    /// This job's live workers as the index knows them.
    pub mine: usize,
    /// Queued workers of jobs ahead of this one.
    pub waiting_ahead: usize,
    /// Job entries read to answer (admission's cost).
    pub entries_read: usize,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, (JobEntry, Source)>,
    configs: HashMap<ConfigKey, ConfigLoad>,
}

/// Where an entry came from: a status this controller wrote is newer than
/// anything the watch may still bring for that job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Watch,
    Written,
}

/// See the module documentation.
#[derive(Default)]
pub struct WorkerIndex {
    inner: Mutex<Inner>,
    /// Told the configuration whose active worker count changed.
    counts: Mutex<Option<UnboundedSender<ConfigKey>>>,
}

impl WorkerIndex {
    /// Sends the key of every configuration whose active count changes.
    pub fn notify_counts(&self, tx: UnboundedSender<ConfigKey>) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// A job as its watch shows it. Its status counts unless this
    /// controller wrote a newer one.
    pub fn observe_watched(&self, uid: &str, entry: JobEntry) {
        self.update(uid, entry, Source::Watch);
    }

    /// A status this controller wrote (or is about to: a launch counts the
    /// moment RunInstances returned).
    pub fn observe_written(&self, uid: &str, entry: JobEntry) {
        self.update(uid, entry, Source::Written);
    }

    /// A job that is gone.
    pub fn forget(&self, uid: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, _)) = inner.jobs.remove(uid) {
            let before = inner.counts(&[&old]);
            inner.subtract(&old);
            let changed = inner.changed_counts(before);
            drop(inner);
            self.tell(changed);
        }
    }

    fn update(&self, uid: &str, mut entry: JobEntry, source: Source) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let previous = inner.jobs.get(uid).cloned();
        let source = match (&previous, source) {
            (Some((old, Source::Written)), Source::Watch) => {
                // Keep what was written; take only what the spec says.
                let suspended = entry.suspended;
                entry = JobEntry {
                    suspended,
                    ..old.clone()
                };
                Source::Written
            }
            (_, s) => s,
        };
        if previous.as_ref() == Some(&(entry.clone(), source)) {
            return;
        }
        let before = match &previous {
            Some((old, _)) => inner.counts(&[old, &entry]),
            None => inner.counts(&[&entry]),
        };
        if let Some((old, _)) = &previous {
            inner.subtract(old);
        }
        if let Some(key) = entry.configuration.clone() {
            let load = inner.configs.entry(key).or_default();
            load.active += entry.active;
            if entry.queued() > 0 {
                load.queued.insert(entry.order.clone(), entry.queued());
            }
            if !entry.finished {
                load.unfinished.insert(entry.display.clone());
            }
        }
        let changed = inner.changed_counts(before);
        inner.jobs.insert(uid.to_string(), (entry, source));
        drop(inner);
        self.tell(changed);
    }

    fn tell(&self, changed: Vec<ConfigKey>) {
        if let Some(tx) = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            for key in changed {
                let _ = tx.unbounded_send(key);
            }
        }
    }

    /// The load a launch decision of job `uid` (in queue place `order`)
    /// sees on a configuration: reads only the jobs queued ahead of it.
    pub fn load(&self, config: &ConfigKey, uid: &str, order: &QueueOrder) -> Load {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mine = inner
            .jobs
            .get(uid)
            .filter(|(e, _)| e.configuration.as_ref() == Some(config))
            .map_or(0, |(e, _)| e.active);
        let Some(load) = inner.configs.get(config) else {
            return Load {
                mine,
                ..Load::default()
            };
        };
        let ahead = load.queued.range(..order.clone());
        let (mut waiting_ahead, mut entries_read) = (0, 0);
        for (_, n) in ahead {
            waiting_ahead += n;
            entries_read += 1;
        }
        Load {
            active: load.active,
            mine,
            waiting_ahead,
            entries_read,
        }
    }

    /// Live workers of a configuration.
    pub fn active(&self, config: &ConfigKey) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.configs.get(config).map_or(0, |l| l.active)
    }

    /// Unfinished jobs that use a configuration (`Kind/name`), sorted.
    pub fn unfinished(&self, config: &ConfigKey) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .configs
            .get(config)
            .map(|l| l.unfinished.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Inner {
    /// The active counts of the configurations these entries use.
    fn counts(&self, entries: &[&JobEntry]) -> Vec<(ConfigKey, usize)> {
        let mut out: Vec<(ConfigKey, usize)> = Vec::new();
        for key in entries.iter().filter_map(|e| e.configuration.as_ref()) {
            if !out.iter().any(|(k, _)| k == key) {
                let active = self.configs.get(key).map_or(0, |l| l.active);
                out.push((key.clone(), active));
            }
        }
        out
    }

    /// The configurations whose active count is not what `before` says.
    fn changed_counts(&self, before: Vec<(ConfigKey, usize)>) -> Vec<ConfigKey> {
        before
            .into_iter()
            .filter(|(key, n)| self.configs.get(key).map_or(0, |l| l.active) != *n)
            .map(|(key, _)| key)
            .collect()
    }

    /// Takes a job's old entry out of its configuration's sums.
    fn subtract(&mut self, old: &JobEntry) {
        let Some(key) = &old.configuration else {
            return;
        };
        let Some(load) = self.configs.get_mut(key) else {
            return;
        };
        load.active = load.active.saturating_sub(old.active);
        load.queued.remove(&old.order);
        load.unfinished.remove(&old.display);
        let empty = load.active == 0 && load.queued.is_empty() && load.unfinished.is_empty();
        if empty {
            self.configs.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConfigKey {
        "workers".into()
    }

    fn entry(name: &str, created: i64, active: usize, waiting: usize) -> JobEntry {
        JobEntry {
            display: format!("BackupJob/{name}"),
            order: (
                Some(Timestamp::from_second(created).expect("time")),
                name.into(),
                name.into(),
            ),
            configuration: Some(key()),
            active,
            waiting,
            finished: false,
            suspended: false,
        }
    }

    #[test]
    fn admission_reads_only_the_jobs_queued_ahead() {
        let index = WorkerIndex::default();
        // A thousand running jobs, two queued ones ahead, one behind.
        for i in 0..1000 {
            index.observe_watched(&format!("run-{i}"), entry(&format!("run-{i}"), 1, 1, 0));
        }
        index.observe_watched("q1", entry("q1", 2, 0, 1));
        index.observe_watched("q2", entry("q2", 3, 0, 2));
        index.observe_watched("q4", entry("q4", 5, 0, 1));
        let me = entry("q3", 4, 0, 1);
        index.observe_watched("q3", me.clone());
        let load = index.load(&key(), "q3", &me.order);
        assert_eq!(load.active, 1000);
        assert_eq!(load.waiting_ahead, 3);
        assert_eq!(load.mine, 0);
        assert_eq!(load.entries_read, 2, "only q1 and q2 are read");
    }

    #[test]
    fn finished_and_suspended_jobs_hold_nobody_back() {
        let index = WorkerIndex::default();
        let mut done = entry("done", 1, 0, 1);
        done.finished = true;
        let mut paused = entry("paused", 2, 0, 1);
        paused.suspended = true;
        index.observe_watched("done", done);
        index.observe_watched("paused", paused);
        let me = entry("me", 3, 0, 1);
        assert_eq!(index.load(&key(), "me", &me.order).waiting_ahead, 0);
        assert_eq!(index.unfinished(&key()), ["BackupJob/paused"]);
    }

    #[test]
    fn a_written_status_wins_over_an_older_watch_event() {
        let index = WorkerIndex::default();
        index.observe_written("a", entry("a", 1, 1, 0));
        // The watch still shows the job before its launch.
        index.observe_watched("a", entry("a", 1, 0, 1));
        assert_eq!(index.active(&key()), 1);
        let me = entry("b", 2, 0, 1);
        assert_eq!(index.load(&key(), "b", &me.order).waiting_ahead, 0);
        // Suspension is the spec's: it is taken from the watch.
        let mut suspended = entry("a", 1, 0, 1);
        suspended.suspended = true;
        index.observe_watched("a", suspended);
        assert_eq!(index.active(&key()), 1);
    }

    #[test]
    fn counts_follow_updates_and_deletions_and_are_announced() {
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let index = WorkerIndex::default();
        index.notify_counts(tx);
        index.observe_written("a", entry("a", 1, 2, 0));
        index.observe_written("b", entry("b", 2, 1, 0));
        assert_eq!(index.active(&key()), 3);
        index.observe_written("a", entry("a", 1, 0, 0));
        assert_eq!(index.active(&key()), 1);
        index.forget("b");
        assert_eq!(index.active(&key()), 0);
        assert_eq!(index.unfinished(&key()), ["BackupJob/a"]);
        let mut told = 0;
        while let Ok(k) = rx.try_recv() {
            assert_eq!(k, key());
            told += 1;
        }
        assert_eq!(told, 4, "each change of an active count is announced");
        // The same count again (a progress update, say) is not.
        index.observe_written(
            "a",
            JobEntry {
                waiting: 0,
                ..entry("a", 1, 0, 0)
            },
        );
        let mut progressed = entry("c", 3, 1, 0);
        index.observe_written("c", progressed.clone());
        assert!(rx.try_recv().is_ok(), "c's first worker is counted");
        progressed.finished = false;
        progressed.waiting = 1;
        index.observe_written("c", progressed);
        assert!(rx.try_recv().is_err(), "c's count did not change");
        index.forget("c");
        assert!(rx.try_recv().is_ok());
        // A change that leaves every count alone is not.
        index.observe_written("d", entry("d", 4, 0, 1));
        assert!(rx.try_recv().is_err());
    }
}
