//! The job watch: what the benchmark sees of every job (writes, launch,
//! end), and the worker instances it hands to the booter.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tender::api::{BackupJob, BackupJobStatus};
use tender::names::tags;

use crate::emulator;

/// What the watch saw of one job.
#[derive(Default)]
pub struct Track {
    /// Writes to the object (creation included), one watch event each.
    pub writes: u32,
    /// When a worker's instance ID first showed in status (RunInstances
    /// returned and the controller wrote it).
    pub launched: Option<Instant>,
    /// When the job was first seen finished with its workers terminated.
    pub done: Option<Instant>,
    pub status: Option<BackupJobStatus>,
}

#[derive(Default)]
pub struct Tracker {
    pub jobs: Mutex<HashMap<String, Track>>,
    pub done: AtomicUsize,
    pub restarts: AtomicU64,
    pub errors: AtomicU64,
    /// UIDs of jobs seen done, not yet handed to `forget_finished`.
    pub finished_uids: Mutex<Vec<String>>,
    /// Worker instances seen in status, each handed to the booter once.
    instances_seen: Mutex<HashSet<String>>,
    pub boot: Mutex<Option<futures::channel::mpsc::UnboundedSender<String>>>,
}

impl Tracker {
    fn observe(&self, job: &BackupJob, counted: bool) {
        let now = Instant::now();
        let mut jobs = self.jobs.lock().unwrap();
        let t = jobs.entry(job.name_any()).or_default();
        if counted {
            t.writes += 1;
        }
        let Some(status) = job.status.as_ref() else {
            return;
        };
        if t.launched.is_none() && status.workers.iter().any(|w| w.instance_id.is_some()) {
            t.launched = Some(now);
        }
        self.boot_new_instances(status);
        let terminated = status
            .workers
            .iter()
            .all(|w| w.instance_id.is_none() || w.terminated_time.is_some());
        if t.done.is_none() && status.phase.is_finished() && terminated {
            t.done = Some(now);
            self.done.fetch_add(1, Ordering::SeqCst);
            if let Some(uid) = job.uid() {
                self.finished_uids.lock().unwrap().push(uid);
            }
        }
        t.status = Some(status.clone());
    }

    /// A new worker instance (a first attempt or a retry) boots.
    fn boot_new_instances(&self, status: &BackupJobStatus) {
        let mut seen = self.instances_seen.lock().unwrap();
        for id in status.workers.iter().filter_map(|w| w.instance_id.as_ref()) {
            if seen.insert(id.clone())
                && let Some(boot) = self.boot.lock().unwrap().as_ref()
            {
                let _ = boot.unbounded_send(id.clone());
            }
        }
    }
}

pub async fn watch_jobs(api: Api<BackupJob>, tracker: Arc<Tracker>) {
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut initial = true;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(job)) => tracker.observe(&job, true),
            Ok(watcher::Event::InitApply(job)) => tracker.observe(&job, false),
            Ok(watcher::Event::Init) => {
                if !initial {
                    tracker.restarts.fetch_add(1, Ordering::SeqCst);
                }
                initial = false;
            }
            Ok(_) => {}
            Err(_) => {
                tracker.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Plays AWS dropping terminated instances from DescribeInstances (AWS does
/// after about an hour; moto never does): once a job is seen done, with its
/// worker terminated, its instance and volume lose their tags and so leave
/// the controller's tag-filtered view. Off by default: the controller no
/// longer refreshes its view often enough for the emulator's cost per
/// DescribeInstances, which grows with (instances x tags), to dominate, and
/// the untagging itself (DescribeTags and DeleteTags) loads the emulator
/// during the timed run, which the floor's run does not pay.
pub async fn forget_finished(
    ec2: aws_sdk_ec2::Client,
    tracker: Arc<Tracker>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut forgotten = 0;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let uids: Vec<String> = std::mem::take(&mut *tracker.finished_uids.lock().unwrap());
        if !uids.is_empty() {
            forgotten += emulator::forget_tagged(&ec2, tags::JOB_UID, &uids).await;
        }
        if stopping {
            return forgotten;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
