//! The agents alone: the same N backups by the same agent code, without a
//! controller, an API server or instances.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tender::aws::AwsClients;
use tender::messages::WorkerTask;

use crate::boot::agent_slots;
use crate::system::{cpu_delta, env_cpu};
use crate::world::{World, job_name};
use crate::{HEARTBEAT_SECONDS, REGION, run_timeout};

pub struct AgentsResult {
    pub wall: f64,
    /// Backups that ended (well or not) before the timeout.
    pub ended: usize,
    pub failed: usize,
    pub env_cpu: BTreeMap<String, f64>,
}

/// The agents' share of the work, measured alone: the same N backups by
/// the same agent code (`tender::worker::run`, the same snapshots, a fresh
/// repository, all at once), each fed the task the controller would have
/// given it, reporting to a queue that a minimal consumer drains (receive
/// ten, delete them: the emulator's SendMessage slows down with every
/// message left in the queue). No controller, no API server, no instances.
/// On this machine every process shares two cores, so Tender's run pays
/// for this work on top of the floor's.
pub async fn agents_run(w: &World, n: usize) -> AgentsResult {
    let queue_url = w
        .sqs
        .create_queue()
        .queue_name(format!("tender-bench-agents-{}-{n}", w.tag))
        .send()
        .await
        .expect("create the agents' queue")
        .queue_url()
        .unwrap()
        .to_string();
    let agents = AwsClients::from_env().await;
    let tasks: Vec<WorkerTask> = (0..n).map(|i| task(w, n, i, &queue_url)).collect();
    let drain_stop = Arc::new(AtomicBool::new(false));
    let drain = tokio::spawn(drain(w.sqs.clone(), queue_url.clone(), drain_stop.clone()));
    let cpu_start = env_cpu();
    let t0 = Instant::now();
    let outcomes: Arc<Mutex<Vec<bool>>> = Arc::default();
    let all = futures::stream::iter(tasks.into_iter().enumerate())
        .map(|(i, task)| {
            let (agents, outcomes) = (agents.clone(), outcomes.clone());
            async move {
                let ok = tender::worker::run(agents, task, format!("i-{i:017x}"))
                    .await
                    .is_ok();
                outcomes.lock().unwrap().push(ok);
            }
        })
        .buffer_unordered(agent_slots(n))
        .collect::<Vec<()>>();
    if tokio::time::timeout(run_timeout(n), all).await.is_err() {
        eprintln!("  agents alone N={n}: timed out");
    }
    let wall = t0.elapsed().as_secs_f64();
    let outcomes = outcomes.lock().unwrap().clone();
    let env_cpu = cpu_delta(&cpu_start, &env_cpu());
    drain_stop.store(true, Ordering::SeqCst);
    let _ = drain.await;
    let _ = w.sqs.delete_queue().queue_url(&queue_url).send().await;
    AgentsResult {
        wall,
        ended: outcomes.len(),
        failed: outcomes.iter().filter(|ok| !**ok).count(),
        env_cpu,
    }
}

/// The task the controller would have given job `i`'s worker.
fn task(w: &World, n: usize, i: usize, queue_url: &str) -> WorkerTask {
    WorkerTask {
        version: tender::messages::PROTOCOL_VERSION,
        operation: tender::messages::Operation::Backup,
        namespace: format!("bench-agents-{}-{n}", w.tag),
        job_name: job_name(i),
        job_uid: format!("agents-{}-{n}-{i}", w.tag),
        resource: w.protected[i % w.protected.len()].clone(),
        resource_region: REGION.into(),
        attempt: 1,
        queue_url: queue_url.to_string(),
        queue_region: REGION.into(),
        heartbeat_seconds: HEARTBEAT_SECONDS.parse().unwrap(),
        cluster_id: None,
        source_access: None,
        repository: Some(
            tender::mover::manifest::RepositoryLocation::new(&w.bucket, "", REGION)
                .with_mac_key(&w.mac_key),
        ),
        restore_point: None,
        device: None,
        all_volumes: false,
        file_level: None,
        policy: None,
        gc_grace_seconds: None,
        retention: None,
        database: None,
    }
}

/// The minimal consumer: receive ten messages, delete them, until stopped.
async fn drain(sqs: aws_sdk_sqs::Client, url: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(out) = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
        else {
            continue;
        };
        let entries: Vec<aws_sdk_sqs::types::DeleteMessageBatchRequestEntry> = out
            .messages()
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        if !entries.is_empty() {
            let _ = sqs
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await;
        }
    }
}
