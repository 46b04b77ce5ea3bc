//! Whether a launched worker is still alive: when it was last heard from,
//! and how long it may take to boot and to stay silent.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{Phase, WorkerStatus};
use crate::aws::instance_state::InstanceState;
use crate::reasons::FailureReason;

/// When the worker was last heard from: its last message in this process,
/// else its launch or start, and never before this process started (a
/// restarted controller gives every worker a full timeout to be heard).
pub fn last_heard(
    w: &WorkerStatus,
    in_memory: Option<Timestamp>,
    process_start: Timestamp,
) -> Timestamp {
    [
        in_memory,
        w.launch_time.as_ref().map(|t| t.0),
        w.started_time.as_ref().map(|t| t.0),
        Some(process_start),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(process_start)
}

/// How long a worker may take: to send `started` after its launch
/// (`bootTimeoutSeconds`), and to stay silent once started
/// (`heartbeatTimeoutSeconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub boot: Duration,
    pub heartbeat: Duration,
}

impl From<Duration> for Timeouts {
    /// The same limit for both.
    fn from(d: Duration) -> Self {
        Self {
            boot: d,
            heartbeat: d,
        }
    }
}

impl Timeouts {
    /// The limit that applies to `w` now: the boot timeout until it has
    /// reported that it started.
    pub fn of(&self, w: &WorkerStatus) -> Duration {
        if is_booting(w) {
            self.boot
        } else {
            self.heartbeat
        }
    }
}

/// A launched worker that has not reported anything yet.
fn is_booting(w: &WorkerStatus) -> bool {
    w.phase == Phase::Provisioning && w.started_time.is_none() && w.last_sequence == 0
}

/// Why an active worker is lost, if it is: its instance is gone or stopped
/// (`WorkerLost`), it has not started within the boot timeout
/// (`WorkerBootTimeout`), or it has been silent for longer than the
/// heartbeat timeout (`WorkerLost`).
pub fn lost_reason(
    w: &WorkerStatus,
    observed_state: Option<&str>,
    last_heard: Timestamp,
    timeouts: impl Into<Timeouts>,
    now: Timestamp,
) -> Option<(FailureReason, String)> {
    let active = matches!(w.phase, Phase::Provisioning | Phase::Running)
        && w.instance_id.is_some()
        && w.terminated_time.is_none();
    if !active {
        return None;
    }
    let id = w.instance_id.as_deref().unwrap_or_default();
    if let Some(state) = observed_state.map(InstanceState::from)
        && (state.is_going() || state.is_stopped())
    {
        return Some((
            FailureReason::WorkerLost,
            format!("worker instance {id} is {state}"),
        ));
    }
    let timeouts = timeouts.into();
    let limit = timeouts.of(w);
    let silent = now.duration_since(last_heard);
    if silent < SignedDuration::try_from(limit).unwrap_or(SignedDuration::MAX) {
        return None;
    }
    Some(if is_booting(w) {
        (
            FailureReason::WorkerBootTimeout,
            format!(
                "worker {id} did not report that it started within {} s of its launch (bootTimeoutSeconds is {})",
                silent.as_secs(),
                limit.as_secs()
            ),
        )
    } else {
        (
            FailureReason::WorkerLost,
            format!(
                "no message from worker {id} for {} s (heartbeatTimeoutSeconds is {})",
                silent.as_secs(),
                limit.as_secs()
            ),
        )
    })
}
