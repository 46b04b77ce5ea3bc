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

use super::index::ConfigKey;
use super::job::core::binding::{self, Refusal};
use super::job::kind::WorkerJob;
use crate::api::{BackupJob, RestoreJob, RetentionJob, VerificationJob};
use crate::aws::AwsClients;
use crate::aws::queues::ReceivedMessage;
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
    /// Accept a message only when SQS names its worker instance as the
    /// sender (`--require-worker-sender`).
    require_sender: bool,
}

/// The jobs messages can be for.
#[derive(Clone)]
pub struct JobStores {
    pub backups: Store<BackupJob>,
    pub restores: Store<RestoreJob>,
    pub retentions: Store<RetentionJob>,
    pub verifications: Store<VerificationJob>,
}

/// Wake a job's reconcile, by kind.
#[derive(Clone)]
pub struct Triggers {
    pub backups: UnboundedSender<ObjectRef<BackupJob>>,
    pub restores: UnboundedSender<ObjectRef<RestoreJob>>,
    pub retentions: UnboundedSender<ObjectRef<RetentionJob>>,
    pub verifications: UnboundedSender<ObjectRef<VerificationJob>>,
}

/// Long-poll wait of one ReceiveMessage call.
const RECEIVE_WAIT: Duration = Duration::from_secs(5);

impl QueuePumps {
    pub fn new(triggers: Triggers, require_sender: bool) -> Self {
        Self {
            tasks: Mutex::default(),
            triggers,
            require_sender,
        }
    }

    /// Starts the pump of a configuration's queue unless it runs already.
    pub fn ensure(
        &self,
        aws: &AwsClients,
        (region, queue_url): (&str, &str),
        configuration: ConfigKey,
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
            configuration,
            require_sender: self.require_sender,
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
    /// The configuration whose queue this is.
    configuration: ConfigKey,
    require_sender: bool,
    jobs: JobStores,
    reports: Arc<ReportStore>,
    triggers: Triggers,
}

/// The job a message is for.
enum JobRef {
    Backup(ObjectRef<BackupJob>),
    Restore(ObjectRef<RestoreJob>),
    Retention(ObjectRef<RetentionJob>),
    Verification(ObjectRef<VerificationJob>),
}

impl Pump {
    async fn run(self) {
        // A message for a job this controller has not listed yet would be
        // dropped as a stranger's: receive only once both kinds are listed.
        super::garbage_collector::wait_until_ready(&self.jobs.backups).await;
        super::garbage_collector::wait_until_ready(&self.jobs.restores).await;
        super::garbage_collector::wait_until_ready(&self.jobs.retentions).await;
        super::garbage_collector::wait_until_ready(&self.jobs.verifications).await;
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
                    let drop: Vec<String> = messages.iter().filter_map(|m| self.route(m)).collect();
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
    /// is to be deleted now: a heartbeat, which is applied here, or a
    /// message refused (counted by reason).
    fn route(&self, received: &ReceivedMessage) -> Option<String> {
        let drop = Some(received.receipt_handle.clone());
        let (message, job) = match self.admit(received) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.aws.metrics().message_refused(refusal.as_str());
                return drop;
            }
        };
        debug!(
            job = message.job_name,
            sequence = message.sequence,
            "worker message"
        );
        self.reports.heard(&message);
        if message.event == WorkerEvent::Heartbeat {
            // Liveness only: nothing to write, nothing to wake.
            return drop;
        }
        self.reports.file(
            message,
            Receipt {
                region: self.region.clone(),
                queue_url: self.queue_url.clone(),
                receipt_handle: received.receipt_handle.clone(),
            },
        );
        match job {
            JobRef::Backup(r) => {
                let _ = self.triggers.backups.unbounded_send(r);
            }
            JobRef::Restore(r) => {
                let _ = self.triggers.restores.unbounded_send(r);
            }
            JobRef::Retention(r) => {
                let _ = self.triggers.retentions.unbounded_send(r);
            }
            JobRef::Verification(r) => {
                let _ = self.triggers.verifications.unbounded_send(r);
            }
        }
        None
    }

    /// The message and the job it is for, or why it is dropped (logged
    /// here): it does not parse or is over a bound, its job does not exist,
    /// its job's status names another configuration, or SQS does not name
    /// its worker instance as the sender. What only the job's worker entry
    /// can tell is checked when the job reconciles (`core::binding`).
    fn admit(&self, received: &ReceivedMessage) -> Result<(WorkerMessage, JobRef), Refusal> {
        let message = WorkerMessage::parse(&received.body).map_err(|e| {
            let refusal = Refusal::of_parse_error(&e);
            match refusal {
                Refusal::Oversized => {
                    warn!(queue_url = self.queue_url, error = %e, "dropping oversized worker message")
                }
                _ => warn!(queue_url = self.queue_url, error = %e, "dropping malformed worker message"),
            }
            refusal
        })?;
        let Some((job, configuration, worker)) = self.job_of(&message) else {
            warn!(
                namespace = message.namespace,
                job = message.job_name,
                job_uid = message.job_uid,
                "dropping worker message for a job that does not exist"
            );
            return Err(Refusal::UnknownJob);
        };
        // The job's configuration must be this queue's.
        if let Some(name) = configuration
            && name != self.configuration
        {
            warn!(
                queue_url = self.queue_url,
                job = message.job_name,
                "dropping worker message that came on another configuration's queue"
            );
            return Err(Refusal::WrongQueue);
        }
        if let Some(refusal) = worker {
            warn!(
                queue_url = self.queue_url,
                job = message.job_name,
                resource = message.resource,
                attempt = message.attempt,
                instance_id = message.instance_id,
                %refusal,
                "dropping worker message that does not speak for one of its job's workers"
            );
            return Err(refusal);
        }
        let sender = received.sender_id.as_deref();
        if self.require_sender
            && let Some(refusal) = binding::sender_refusal(sender, &message.instance_id)
        {
            warn!(
                queue_url = self.queue_url,
                job = message.job_name,
                instance_id = message.instance_id,
                sender = sender.unwrap_or("<none>"),
                %refusal,
                "dropping worker message that its worker instance did not send"
            );
            return Err(refusal);
        }
        Ok((message, job))
    }

    /// The job a message names (namespace, name and UID must match), the
    /// configuration its status names, and why the message may not speak
    /// for the worker it names, if so.
    fn job_of(&self, message: &WorkerMessage) -> Option<(JobRef, Option<String>, Option<Refusal>)> {
        let uid = Some(message.job_uid.as_str());
        let backup = ObjectRef::<BackupJob>::new(&message.job_name).within(&message.namespace);
        if let Some(job) = self.jobs.backups.get(&backup)
            && job.metadata.uid.as_deref() == uid
        {
            let (configuration, worker) = binding_of(&*job, message);
            return Some((JobRef::Backup(backup), configuration, worker));
        }
        let restore = ObjectRef::<RestoreJob>::new(&message.job_name).within(&message.namespace);
        if let Some(job) = self.jobs.restores.get(&restore)
            && job.metadata.uid.as_deref() == uid
        {
            let (configuration, worker) = binding_of(&*job, message);
            return Some((JobRef::Restore(restore), configuration, worker));
        }
        let retention =
            ObjectRef::<RetentionJob>::new(&message.job_name).within(&message.namespace);
        if let Some(job) = self.jobs.retentions.get(&retention)
            && job.metadata.uid.as_deref() == uid
        {
            let (configuration, worker) = binding_of(&*job, message);
            return Some((JobRef::Retention(retention), configuration, worker));
        }
        let verification =
            ObjectRef::<VerificationJob>::new(&message.job_name).within(&message.namespace);
        let job = self.jobs.verifications.get(&verification)?;
        (job.metadata.uid.as_deref() == uid).then(|| {
            let (configuration, worker) = binding_of(&*job, message);
            (JobRef::Verification(verification), configuration, worker)
        })
    }
}

/// The configuration a job's status names, and whether `message` may speak
/// for the worker it names (see `binding::worker_refusal`).
fn binding_of<K: WorkerJob>(job: &K, message: &WorkerMessage) -> (Option<String>, Option<Refusal>) {
    let status = job.job_status();
    let recorded = status.and_then(|s| s.workers.iter().find(|w| w.resource == message.resource));
    let known = binding::KnownWorker {
        resource_is_the_jobs: job.targets().iter().any(|t| t.id == message.resource),
        first_attempts: job.limits().backoff_limit.max(0) + 1,
        recorded: recorded.map(|w| (w.attempt, w.instance_id.as_deref())),
    };
    (
        status.and_then(|s| s.worker_configuration.clone()),
        binding::worker_refusal(known, message),
    )
}
