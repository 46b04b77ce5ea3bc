//! What jobs saw of their workers' way to AWS, per WorkerConfiguration: a
//! worker lost before its first message never reached SQS, which says more
//! about the network than any route table. The configuration's reconcile
//! shows it in `NetworkReady` until a worker of it is heard from again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{Phase, WorkerConfiguration, WorkerStatus};
use crate::aws::instance_state::InstanceState;
use crate::reasons::FailureReason;

/// How long a worker's report that it could not reach AWS counts.
const REPORT_COUNTS_FOR: SignedDuration = SignedDuration::from_secs(120);

/// Notes per configuration name, and a way to wake its reconcile.
pub struct WorkerReach {
    notes: Mutex<HashMap<String, String>>,
    wake: UnboundedSender<ObjectRef<WorkerConfiguration>>,
}

impl WorkerReach {
    pub fn new(wake: UnboundedSender<ObjectRef<WorkerConfiguration>>) -> Self {
        Self {
            notes: Mutex::default(),
            wake,
        }
    }

    /// A worker of `config` was lost before its first message.
    pub fn lost_unheard(&self, config: &str, message: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.insert(config.to_string(), message.clone()) != Some(message) {
            let _ = self.wake.unbounded_send(ObjectRef::new(config));
        }
    }

    /// A worker of `config` reported: its workers reach SQS.
    pub fn heard(&self, config: &str) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.remove(config).is_some() {
            let _ = self.wake.unbounded_send(ObjectRef::new(config));
        }
    }

    /// What was last seen of `config`'s workers not reaching AWS.
    pub fn note(&self, config: &str) -> Option<String> {
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        notes.get(config).cloned()
    }
}

/// A worker lost to silence before its first message, its instance still
/// up (`instance_state` as EC2 last said): it never reached SQS.
pub fn never_reached_aws(w: &WorkerStatus, instance_state: Option<&str>) -> bool {
    let instance_went = instance_state
        .map(InstanceState::from)
        .is_some_and(|s| s.is_going() || s.is_stopped());
    let silent = match w.reason.as_deref().map(FailureReason::parse) {
        Some(FailureReason::WorkerLost) => true,
        // Not a network problem when its console says the agent was refused
        // or could not run (see `user_data`).
        Some(FailureReason::WorkerBootTimeout) => !w.message.as_deref().is_some_and(|m| {
            m.contains("digest mismatch") || m.contains("does not run on this image")
        }),
        _ => false,
    };
    w.phase == Phase::Failed && silent && w.last_sequence == 0 && !instance_went
}

/// What a worker of `job` (`<kind> <namespace>/<name>`) lost before its
/// first message says about the network.
pub fn unreached_note(job: &str, w: &WorkerStatus, timeout: Duration) -> String {
    format!(
        "worker {} of {job} in {} never reported within bootTimeoutSeconds ({} s): it most likely could not reach S3 or SQS in {}; check that subnet's way to AWS (public IP and internet gateway, NAT gateway, or VPC endpoints) and outbound TCP 443 in its security groups",
        w.instance_id.as_deref().unwrap_or("?"),
        w.subnet_id.as_deref().unwrap_or("its subnet"),
        timeout.as_secs(),
        w.region
    )
}

/// A worker that reported, within the last two minutes, that it could not
/// reach an AWS endpoint (`AwsUnreachable`): what it said.
pub fn reported_unreachable(job: &str, w: &WorkerStatus, now: Timestamp) -> Option<String> {
    let recent = w
        .finished_time
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0) < REPORT_COUNTS_FOR);
    let unreachable = w.reason.as_deref() == Some(FailureReason::AwsUnreachable.as_str());
    (w.phase == Phase::Failed && unreachable && recent).then(|| {
        format!(
            "worker {} of {job} in {} could not reach AWS: {}; check that subnet's way to AWS (public IP and internet gateway, NAT gateway, or VPC endpoints)",
            w.instance_id.as_deref().unwrap_or("?"),
            w.subnet_id.as_deref().unwrap_or("its subnet"),
            w.message.as_deref().unwrap_or("no detail")
        )
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn failed(reason: FailureReason, heard: i64) -> WorkerStatus {
        WorkerStatus {
            phase: Phase::Failed,
            reason: Some(reason.as_str().to_string()),
            last_sequence: heard,
            instance_id: Some("i-1".into()),
            subnet_id: Some("subnet-1".into()),
            region: "us-east-1".into(),
            message: Some("S3 GetObject could not be sent: dns error".into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_silence_from_the_start_with_the_instance_up_means_no_way_out() {
        let silent = failed(FailureReason::WorkerLost, 0);
        assert!(never_reached_aws(&silent, Some("running")));
        assert!(never_reached_aws(&silent, None));
        assert!(
            !never_reached_aws(&silent, Some("terminated")),
            "the instance went"
        );
        assert!(!never_reached_aws(
            &failed(FailureReason::WorkerLost, 3),
            Some("running")
        ));
        assert!(!never_reached_aws(
            &failed(FailureReason::ChunkMissing, 0),
            None
        ));
        let note = unreached_note("BackupJob a/b", &silent, Duration::from_secs(300));
        assert!(note.contains("i-1") && note.contains("subnet-1") && note.contains("300 s"));
    }

    #[test]
    fn a_recent_report_of_an_unreachable_endpoint_counts() {
        let now = Timestamp::now();
        let mut w = failed(FailureReason::AwsUnreachable, 4);
        w.finished_time = Some(Time(now));
        let note = reported_unreachable("RestoreJob a/b", &w, now).expect("counts");
        assert!(note.contains("dns error"), "{note}");
        w.finished_time = Some(Time(now - SignedDuration::from_secs(600)));
        assert!(
            reported_unreachable("RestoreJob a/b", &w, now).is_none(),
            "old news"
        );
        w.finished_time = Some(Time(now));
        w.reason = Some(FailureReason::ChunkMissing.as_str().into());
        assert!(reported_unreachable("RestoreJob a/b", &w, now).is_none());
    }
}
