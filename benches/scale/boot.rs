//! Plays EC2's part of booting workers: every worker instance the
//! controller writes into a job's status boots the real worker agent,
//! in-process, fed its own user data (read as the tests read it:
//! `tests/common/workers.rs`). The instance IDs come from the job watch,
//! not from polling the emulator as the tests' launcher does: on AWS,
//! booting costs the API nothing, and a harness that listed every instance
//! a few times a second would cost the emulator more than the controller's
//! own calls. The agents run in this process, not as processes of their
//! own, so that a thousand of them fit on the machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tender::aws::AwsClients;
use tender::messages::WorkerTask;
use tokio::sync::Semaphore;

use crate::workers;

#[derive(Default)]
pub struct Booter {
    pub started: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    /// When each job's worker sent its final message (by job name).
    pub final_sent: Mutex<HashMap<String, Instant>>,
}

/// Agents running at once (BENCH_AGENTS, default: every worker; the machine
/// plays all of them).
pub fn agent_slots(n: usize) -> usize {
    std::env::var("BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(n.max(1))
}

/// Boots an agent for every instance ID received, until the channel closes.
pub async fn boot_workers(
    booter: Arc<Booter>,
    ec2: aws_sdk_ec2::Client,
    agents: AwsClients,
    namespace: String,
    slots: usize,
    mut instances: futures::channel::mpsc::UnboundedReceiver<String>,
) {
    let slots = Arc::new(Semaphore::new(slots));
    while let Some(id) = instances.next().await {
        let (booter, ec2, agents, slots, namespace) = (
            booter.clone(),
            ec2.clone(),
            agents.clone(),
            slots.clone(),
            namespace.clone(),
        );
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let task = task_of(&ec2, &id).await;
            let Some(task) = task.filter(|t| t.namespace == namespace) else {
                booter.failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            booter.started.fetch_add(1, Ordering::SeqCst);
            let job = task.job_name.clone();
            let outcome = tender::worker::run(agents, task, id).await;
            booter
                .final_sent
                .lock()
                .unwrap()
                .insert(job, Instant::now());
            if outcome.is_ok() {
                booter.finished.fetch_add(1, Ordering::SeqCst);
            } else {
                booter.failed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// The task in instance `id`'s user data. EC2 always hands an instance its
/// user data: an emulator overloaded enough to fail the call is asked again.
async fn task_of(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<WorkerTask> {
    for _ in 0..30 {
        match workers::user_data_task(ec2, id).await {
            Ok(task) => return task,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    None
}
