//! Applying the messages the queue pumps filed for a job (see
//! `controller::reports`): each is first checked against the job and its
//! worker (`core::binding`: the queue, the sequence, the restore point,
//! a session's host), and a refused one is dropped, logged and counted,
//! never applied.

use std::collections::HashMap;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::warn;

use super::core::{self, binding};
use super::kind::WorkerJob;
use super::{Pass, job_access};
use crate::api::{JobStatus, WorkerConfiguration, WorkerStatus};
use crate::controller::Result;
use crate::controller::reports::Receipt;
use crate::messages::{WorkerEvent, WorkerMessage};

/// Applies the job's filed messages that pass the checks; returns the
/// receipts to delete from SQS once the status is written (applied, stale
/// and refused messages alike).
pub(super) async fn apply_messages<K: WorkerJob>(
    pass: &Pass<'_, K>,
    config: &WorkerConfiguration,
    status: &mut JobStatus<K::Worker>,
    now: Timestamp,
) -> Result<Vec<Receipt>> {
    let pending = pass.ctx.reports.pending(&pass.uid);
    let addresses = session_addresses(pass, status, &pending).await?;
    let job_name = pass.job.name_any();
    let expected = binding::Expected {
        operation: K::OPERATION,
        job_name: &job_name,
        queue_url: config.status.as_ref().and_then(|s| s.queue_url.as_deref()),
        addresses: &addresses,
        trusted_browser_hosts: &pass.ctx.trusted_browser_hosts,
        now,
    };
    let mut settled = Vec::new();
    let mut admitted = Vec::new();
    for (message, receipt) in &pending {
        let worker = status
            .workers
            .iter()
            .find(|w| w.resource == message.resource);
        let worker: Option<&WorkerStatus> = worker.map(|w| &**w);
        match binding::refusal(message, &receipt.queue_url, worker, &expected) {
            Some(refusal) => {
                warn!(
                    queue_url = receipt.queue_url,
                    resource = message.resource,
                    instance_id = message.instance_id,
                    sequence = message.sequence,
                    %refusal,
                    "dropping worker message that its worker cannot have sent"
                );
                pass.ctx.metrics.message_refused(refusal.as_str());
                settled.push(receipt.clone());
            }
            None => admitted.push((message, receipt)),
        }
    }
    let messages: Vec<&WorkerMessage> = admitted.iter().map(|(m, _)| *m).collect();
    let applied = core::apply_messages(&mut status.workers, &messages, now, K::record);
    super::publish(pass, applied.notices).await;
    settled.extend(applied.settled.into_iter().map(|i| admitted[i].1.clone()));
    Ok(settled)
}

/// The addresses EC2 reports for the instances of workers that announce a
/// browser session in a pending message, by instance ID: a fresh view
/// (sessions are rare, and a new instance's addresses may be newer than
/// the shared view).
async fn session_addresses<K: WorkerJob>(
    pass: &Pass<'_, K>,
    status: &JobStatus<K::Worker>,
    pending: &[(WorkerMessage, Receipt)],
) -> Result<HashMap<String, Vec<String>>> {
    let mut out = HashMap::new();
    let announcing = pending.iter().filter_map(|(m, _)| match &m.event {
        WorkerEvent::Progress {
            session: Some(_), ..
        } => Some(m.instance_id.as_str()),
        _ => None,
    });
    for instance in announcing {
        if out.contains_key(instance) {
            continue;
        }
        let Some(w) = status
            .workers
            .iter()
            .find(|w| w.instance_id.as_deref() == Some(instance))
        else {
            continue;
        };
        let access = job_access(pass.job, w.access.as_ref());
        let aws = pass.ctx.aws.scoped(&access).await;
        let view = pass
            .ctx
            .instances
            .snapshot(&aws, access.account_key(), &w.region, Instant::now())
            .await?;
        if let Some(observed) = view.get(instance) {
            out.insert(instance.to_string(), observed.addresses.clone());
        }
    }
    Ok(out)
}
