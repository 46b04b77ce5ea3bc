//! Playing a worker, or someone forging one, on SQS: messages as the agent
//! would send them, what the controller counted as refused, and whether a
//! queue has been drained.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use kube::{Resource, ResourceExt};
use tender::api::WorkerStatus;
use tender::messages::{PROTOCOL_VERSION, WorkerEvent, WorkerMessage};

use super::TestEnv;

/// A message of `worker` of `job`, as its agent would send it.
pub fn message<K: Resource>(
    job: &K,
    worker: &WorkerStatus,
    sequence: i64,
    event: WorkerEvent,
) -> String {
    serde_json::to_string(&WorkerMessage {
        version: PROTOCOL_VERSION,
        namespace: job.namespace().expect("a namespaced job"),
        job_name: job.name_any(),
        job_uid: job.uid().expect("a created job has a UID"),
        resource: worker.resource.clone(),
        instance_id: worker.instance_id.clone().expect("the worker was launched"),
        attempt: worker.attempt,
        sequence,
        event,
    })
    .expect("a message serializes")
}

/// Sends `body` to the queue, with the test's (not a worker's) credentials.
pub async fn send(queue_url: &str, body: String) {
    super::sqs()
        .await
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .expect("send a message");
}

/// How many messages the controller that serves `metrics` refused for
/// `reason` (`tender_worker_messages_refused_total`).
pub fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("tender_worker_messages_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl TestEnv {
    /// A test world whose worker instances boot no agent, so that the test
    /// plays their part (or forges it); with its controller's metrics port.
    pub async fn with_silent_workers(name: &str) -> (Self, u16) {
        let env = Self::without_controller(name).await;
        env.boot_workers.store(false, Ordering::SeqCst);
        let port = env.start_controller_with(&[], &[]);
        (env, port)
    }

    /// Waits until the controller on `port` has refused `count` messages
    /// for `reason`.
    pub async fn wait_refused(&self, port: u16, reason: &str, count: u64) {
        super::eventually(Duration::from_secs(60), || async move {
            (refused(&self.metrics(port).await, reason) >= count).then_some(())
        })
        .await;
    }
}

/// Waits until no message is left on the queue, visible or in flight.
pub async fn wait_drained(queue_url: &str) {
    let sqs = super::sqs().await;
    super::eventually(Duration::from_secs(90), || {
        let sqs = sqs.clone();
        async move {
            let out = sqs
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .ok()?;
            let attrs = out.attributes()?;
            let visible = &attrs[&QueueAttributeName::ApproximateNumberOfMessages];
            let in_flight = &attrs[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible];
            (visible == "0" && in_flight == "0").then_some(())
        }
    })
    .await;
}
