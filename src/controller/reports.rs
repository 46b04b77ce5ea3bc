//! Worker messages, from SQS to the job's status.
//!
//! One pump per configuration queue long-polls SQS and files each message
//! in the [`ReportStore`] under its job, then wakes that job's reconcile.
//! A message is deleted from SQS only after the reconcile has written what
//! it says into the job's status (or found it stale), so a controller that
//! dies in between gets it again after the visibility timeout: delivery is
//! at least once, application idempotent (by sequence number).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::api::{BackupJob, RestoreJob};
use crate::aws::AwsClients;
use crate::messages::{WorkerEvent, WorkerMessage};

/// Where a message came from, to delete it once applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub region: String,
    pub queue_url: String,
    pub receipt_handle: String,
}

#[derive(Default)]
struct Inbox {
    messages: Vec<(WorkerMessage, Receipt)>,
}

/// Key of one worker attempt: job UID, resource, attempt.
type AttemptKey = (String, String, i32);

/// Messages received for each job (by UID) and not yet written to status,
/// and when each worker attempt was last heard from (heartbeats included;
/// kept in memory only, since writing every heartbeat would be a status
/// write every few seconds per worker).
#[derive(Default)]
pub struct ReportStore {
    inboxes: Mutex<HashMap<String, Inbox>>,
    last_heard: Mutex<HashMap<AttemptKey, Timestamp>>,
}

impl ReportStore {
    /// Records that a worker attempt was heard from now.
    pub fn heard(&self, message: &WorkerMessage) {
        let key = (
            message.job_uid.clone(),
            message.resource.clone(),
            message.attempt,
        );
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Timestamp::now());
    }

    /// When a worker attempt was last heard from by this process.
    pub fn last_heard(&self, job_uid: &str, resource: &str, attempt: i32) -> Option<Timestamp> {
        let key = (job_uid.to_string(), resource.to_string(), attempt);
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
    }

    pub fn file(&self, message: WorkerMessage, receipt: Receipt) {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        inboxes
            .entry(message.job_uid.clone())
            .or_default()
            .messages
            .push((message, receipt));
    }

    /// The messages waiting for a job, oldest first.
    pub fn pending(&self, job_uid: &str) -> Vec<(WorkerMessage, Receipt)> {
        let inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        inboxes
            .get(job_uid)
            .map(|i| i.messages.clone())
            .unwrap_or_default()
    }

    /// Removes the given receipts, once their messages were written to status
    /// or found stale.
    pub fn settle(&self, job_uid: &str, settled: &[Receipt]) {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inbox) = inboxes.get_mut(job_uid) {
            inbox.messages.retain(|(_, r)| !settled.contains(r));
            if inbox.messages.is_empty() {
                inboxes.remove(job_uid);
            }
        }
    }

    /// Forgets a job (deleted).
    pub fn forget(&self, job_uid: &str) -> Vec<Receipt> {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(uid, _, _), _| uid != job_uid);
        let mut inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        inboxes
            .remove(job_uid)
            .map(|i| i.messages.into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default()
    }
}

/// Deletes settled messages from their queues; a failure only means they
/// come back later and are found stale.
pub async fn delete_receipts(aws: &AwsClients, receipts: &[Receipt]) {
    let mut by_queue: HashMap<(&str, &str), Vec<String>> = HashMap::new();
    for r in receipts {
        by_queue
            .entry((r.region.as_str(), r.queue_url.as_str()))
            .or_default()
            .push(r.receipt_handle.clone());
    }
    for ((region, queue_url), handles) in by_queue {
        if let Err(e) = aws
            .queues()
            .delete_messages(region, queue_url, &handles)
            .await
        {
            warn!(queue_url, error = %e, "could not delete applied messages; they will be redelivered and ignored");
        }
    }
}

/// The running pumps, one per queue URL.
pub struct QueuePumps {
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    triggers: Triggers,
}

/// The jobs messages can be for.
#[derive(Clone)]
pub struct JobStores {
    pub backups: Store<BackupJob>,
    pub restores: Store<RestoreJob>,
}

/// Wake a job's reconcile, by kind.
#[derive(Clone)]
pub struct Triggers {
    pub backups: UnboundedSender<ObjectRef<BackupJob>>,
    pub restores: UnboundedSender<ObjectRef<RestoreJob>>,
}

/// Long-poll wait of one ReceiveMessage call.
const RECEIVE_WAIT: Duration = Duration::from_secs(5);

impl QueuePumps {
    pub fn new(triggers: Triggers) -> Self {
        Self {
            tasks: Mutex::default(),
            triggers,
        }
    }

    /// Starts the pump of a queue unless it runs already.
    pub fn ensure(
        &self,
        aws: &AwsClients,
        region: &str,
        queue_url: &str,
        jobs: JobStores,
        reports: Arc<ReportStore>,
    ) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.get(queue_url).is_some_and(|t| !t.is_finished()) {
            return;
        }
        info!(queue_url, "starting queue pump");
        let pump = Pump {
            aws: aws.clone(),
            region: region.to_string(),
            queue_url: queue_url.to_string(),
            jobs,
            reports,
            triggers: self.triggers.clone(),
        };
        tasks.insert(queue_url.to_string(), tokio::spawn(pump.run()));
    }

    /// Stops the pump of a queue (its configuration is going away).
    pub fn stop(&self, queue_url: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = tasks.remove(queue_url) {
            task.abort();
        }
    }

    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, task) in tasks.drain() {
            task.abort();
        }
    }
}

struct Pump {
    aws: AwsClients,
    region: String,
    queue_url: String,
    jobs: JobStores,
    reports: Arc<ReportStore>,
    triggers: Triggers,
}

impl Pump {
    async fn run(self) {
        // A message for a job this controller has not listed yet would be
        // dropped as a stranger's: receive only once both kinds are listed.
        super::garbage_collector::wait_until_ready(&self.jobs.backups).await;
        super::garbage_collector::wait_until_ready(&self.jobs.restores).await;
        let mut failures = 0u32;
        loop {
            match self
                .aws
                .queues()
                .receive_messages(&self.region, &self.queue_url, RECEIVE_WAIT)
                .await
            {
                Ok(messages) => {
                    failures = 0;
                    let mut drop = Vec::new();
                    for m in messages {
                        if let Some(handle) = self.route(&m.body, &m.receipt_handle) {
                            drop.push(handle);
                        }
                    }
                    if !drop.is_empty()
                        && let Err(e) = self
                            .aws
                            .queues()
                            .delete_messages(&self.region, &self.queue_url, &drop)
                            .await
                    {
                        warn!(queue_url = self.queue_url, error = %e, "could not delete dropped messages");
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_secs(1u64 << failures.min(5));
                    warn!(queue_url = self.queue_url, error = %e, retry_in_s = delay.as_secs(), "receiving worker messages failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Files a message under its job, or returns its receipt handle when it
    /// is to be deleted now (a heartbeat, which is applied here; a malformed
    /// message; a message for a job this controller does not have).
    fn route(&self, body: &str, receipt_handle: &str) -> Option<String> {
        let message = match WorkerMessage::parse(body) {
            Ok(m) => m,
            Err(e) => {
                warn!(queue_url = self.queue_url, error = %e, "dropping malformed worker message");
                return Some(receipt_handle.to_string());
            }
        };
        let uid = Some(message.job_uid.as_str());
        let backup = ObjectRef::<BackupJob>::new(&message.job_name).within(&message.namespace);
        let restore = ObjectRef::<RestoreJob>::new(&message.job_name).within(&message.namespace);
        let is_backup = self
            .jobs
            .backups
            .get(&backup)
            .is_some_and(|job| job.metadata.uid.as_deref() == uid);
        let is_restore = self
            .jobs
            .restores
            .get(&restore)
            .is_some_and(|job| job.metadata.uid.as_deref() == uid);
        if !is_backup && !is_restore {
            warn!(
                namespace = message.namespace,
                job = message.job_name,
                job_uid = message.job_uid,
                "dropping worker message for a job that does not exist"
            );
            return Some(receipt_handle.to_string());
        }
        debug!(
            job = message.job_name,
            sequence = message.sequence,
            "worker message"
        );
        self.reports.heard(&message);
        if message.event == WorkerEvent::Heartbeat {
            // Liveness only: nothing to write, nothing to wake.
            return Some(receipt_handle.to_string());
        }
        self.reports.file(
            message,
            Receipt {
                region: self.region.clone(),
                queue_url: self.queue_url.clone(),
                receipt_handle: receipt_handle.to_string(),
            },
        );
        if is_backup {
            let _ = self.triggers.backups.unbounded_send(backup);
        } else {
            let _ = self.triggers.restores.unbounded_send(restore);
        }
        None
    }
}
