//! Whether a worker message may count at all (issue #13): it came on the
//! queue of the job's configuration, from the worker instance's own
//! credentials, and it says only what that worker could have said. Pure:
//! the queue pumps and the reconciler bring what was observed (SQS's
//! `SenderId`, the configuration's queue, the instance's addresses as EC2
//! reports them). A refused message is deleted, logged and counted
//! (`tender_worker_messages_refused_total{reason}`), never applied.

use std::collections::HashMap;
use std::fmt;

use k8s_openapi::jiff::Timestamp;

use crate::api::WorkerStatus;
use crate::messages::{MessageError, Operation, WorkerEvent, WorkerMessage};
use crate::mover::manifest::restore_point_id;

/// Why a message was refused: the `reason` label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not JSON, or another protocol version.
    Malformed,
    /// Over a size bound (`messages::bounds`).
    Oversized,
    /// For a job this controller does not have.
    UnknownJob,
    /// Not on the queue of the job's configuration.
    WrongQueue,
    /// SQS named no sender.
    MissingSender,
    /// SQS named a sender other than the worker instance itself.
    ForeignSender,
    /// A sequence number beyond what the worker can have sent by now.
    SequenceJump,
    /// A completion that names another restore point than this attempt's.
    WrongRestorePoint,
    /// A verification's outcome that contradicts itself or its event (a
    /// completion without one, a damaged one reported as a success, counts
    /// that do not add up).
    InconsistentOutcome,
    /// A browser session at a host that is not the worker's own address.
    ForeignBrowserHost,
    /// For a resource the job does not have, or an attempt it cannot have
    /// launched yet.
    UnknownWorker,
    /// For a worker attempt whose recorded instance is another one.
    ForeignInstance,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "Malformed",
            Refusal::Oversized => "Oversized",
            Refusal::UnknownJob => "UnknownJob",
            Refusal::WrongQueue => "WrongQueue",
            Refusal::MissingSender => "MissingSender",
            Refusal::ForeignSender => "ForeignSender",
            Refusal::SequenceJump => "SequenceJump",
            Refusal::WrongRestorePoint => "WrongRestorePoint",
            Refusal::InconsistentOutcome => "InconsistentOutcome",
            Refusal::ForeignBrowserHost => "ForeignBrowserHost",
            Refusal::UnknownWorker => "UnknownWorker",
            Refusal::ForeignInstance => "ForeignInstance",
        }
    }

    /// The refusal of a body that did not parse.
    pub fn of_parse_error(e: &MessageError) -> Self {
        match e {
            MessageError::TooLarge(_) | MessageError::Oversized { .. } => Refusal::Oversized,
            MessageError::Malformed(_) | MessageError::UnsupportedVersion(_) => Refusal::Malformed,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a message that arrived on `arrived_on` may be for a job whose
/// configuration's queue is `expected` (unknown: none may).
pub fn queue_refusal(arrived_on: &str, expected: Option<&str>) -> Option<Refusal> {
    (expected != Some(arrived_on)).then_some(Refusal::WrongQueue)
}

/// What the job knows of the worker a message speaks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct KnownWorker<'a> {
    /// Whether the message's resource is one of the job's.
    pub resource_is_the_jobs: bool,
    /// The attempts the backoff limit allows before any is recorded.
    pub first_attempts: i32,
    /// The job's recorded worker of that resource: its attempt, and its
    /// instance once known.
    pub recorded: Option<(i32, Option<&'a str>)>,
}

/// Whether a message may speak for the worker it names, before it counts
/// even as a heartbeat: its resource must be the job's and its attempt one
/// the job can have launched (so that a worker cannot grow the
/// controller's memory with made-up workers), and once the job's status
/// names that attempt's instance, it must come from that instance (so that
/// one worker cannot keep another job's hung worker alive).
pub fn worker_refusal(known: KnownWorker<'_>, message: &WorkerMessage) -> Option<Refusal> {
    // One attempt past the recorded one: a retry's record may lag.
    let max_attempt = known
        .recorded
        .map_or(known.first_attempts, |(attempt, _)| attempt + 1);
    if !known.resource_is_the_jobs || message.attempt < 1 || message.attempt > max_attempt {
        return Some(Refusal::UnknownWorker);
    }
    match known.recorded {
        Some((attempt, Some(id))) if attempt == message.attempt && id != message.instance_id => {
            Some(Refusal::ForeignInstance)
        }
        _ => None,
    }
}

/// Whether SQS's `SenderId` is the worker instance `instance_id` itself.
/// With instance-profile credentials SQS reports the role session,
/// `<role unique ID>:<instance ID>` (`AROA…:i-…`); an IAM user (`AIDA…`)
/// or any other session is someone else. The queue policy lets only
/// instance credentials send at all (`ec2:SourceInstanceARN`), so a
/// session named after the instance is that instance's.
pub fn sender_refusal(sender_id: Option<&str>, instance_id: &str) -> Option<Refusal> {
    let Some(sender) = sender_id.filter(|s| !s.is_empty()) else {
        return Some(Refusal::MissingSender);
    };
    match sender.split_once(':') {
        Some((role, session))
            if role.starts_with("AROA") && !instance_id.is_empty() && session == instance_id =>
        {
            None
        }
        _ => Some(Refusal::ForeignSender),
    }
}

/// Sequence numbers a worker may use right after its launch (started, a
/// session, a failure: a handful; the rest is margin).
pub const SEQUENCE_SLACK: i64 = 100;
/// Messages per second no worker reaches: the agent sends one per
/// heartbeat period, which is at least a second, plus a few once.
pub const MAX_MESSAGES_PER_SECOND: i64 = 10;

/// The highest sequence number a worker launched at `launched` can have
/// sent by `now`. Sequences restart at 1 with every attempt, so this bound
/// is absolute: a message above it (say `i64::MAX`, which would make every
/// later real message look stale) is refused, and the worker's own
/// messages, far below it, still apply.
pub fn sequence_bound(launched: Timestamp, now: Timestamp) -> i64 {
    let secs = now.duration_since(launched).as_secs().max(0);
    SEQUENCE_SLACK.saturating_add(MAX_MESSAGES_PER_SECOND.saturating_mul(secs))
}

/// Whether a completion names the restore point this attempt works on: a
/// backup writes `<job>/<resource>` (in the job's namespace, which the
/// message names too), a restore reads its resource.
pub fn restore_point_refusal(
    operation: Operation,
    job_name: &str,
    resource: &str,
    event: &WorkerEvent,
) -> Option<Refusal> {
    // A verification names what it read, and only a verification does.
    let verified = match event {
        WorkerEvent::Completed { verification, .. } | WorkerEvent::Failed { verification, .. } => {
            verification.as_deref()
        }
        _ => None,
    };
    if let Some(v) = verified
        && (operation != Operation::Verification || v.restore_point != resource)
    {
        return Some(Refusal::WrongRestorePoint);
    }
    if operation == Operation::Verification
        && let Some(refusal) = outcome_refusal(event, verified)
    {
        return Some(refusal);
    }
    let WorkerEvent::Completed { restore_point, .. } = event else {
        return None;
    };
    let expected = match operation {
        Operation::Backup => restore_point_id(job_name, resource),
        Operation::Restore | Operation::Verification => resource.to_string(),
        // A retention run writes no restore point and names none.
        Operation::Retention => {
            return restore_point.as_ref().map(|_| Refusal::WrongRestorePoint);
        }
    };
    match (operation, restore_point) {
        (_, Some(point)) if *point != expected => Some(Refusal::WrongRestorePoint),
        (Operation::Backup, None) => Some(Refusal::WrongRestorePoint),
        _ => None,
    }
}

/// Whether a verification worker's final message holds together: a
/// completion carries an outcome that found everything intact, a failure
/// that carries one found damage, and its counts add up. What a lying
/// worker could still claim is bounded by its own restore point (checked
/// above).
fn outcome_refusal(
    event: &WorkerEvent,
    found: Option<&crate::api::VerificationOutcome>,
) -> Option<Refusal> {
    use crate::api::VerificationResult::{Damaged, Unverified, Verified};
    let consistent = |v: &crate::api::VerificationOutcome| match v.result {
        Verified => v.intact_chunks == v.chunks && v.missing_chunks + v.corrupt_chunks == 0,
        Damaged => {
            v.missing_chunks + v.corrupt_chunks > 0
                && v.intact_chunks
                    .checked_add(v.missing_chunks + v.corrupt_chunks)
                    == Some(v.chunks)
        }
        Unverified => v.chunks == 0,
    };
    let ok = match (event, found) {
        (WorkerEvent::Completed { .. }, Some(v)) => v.result == Verified && consistent(v),
        (WorkerEvent::Completed { .. }, None) => false,
        (WorkerEvent::Failed { .. }, Some(v)) => v.result != Verified && consistent(v),
        _ => true,
    };
    (!ok).then_some(Refusal::InconsistentOutcome)
}

/// Whether a browser session is at one of the worker instance's own
/// addresses (`addresses`, as EC2 reports them) or at a host the operator
/// trusts (`trusted`: agents outside EC2, as in tests), over HTTPS. The
/// URL is read as a browser reads it (WHATWG URL rules).
pub fn browser_host_refusal(
    event: &WorkerEvent,
    addresses: &[String],
    trusted: &[String],
) -> Option<Refusal> {
    let WorkerEvent::Progress {
        session: Some(session),
        ..
    } = event
    else {
        return None;
    };
    let Ok(url) = url::Url::parse(&session.url) else {
        return Some(Refusal::ForeignBrowserHost);
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Some(Refusal::ForeignBrowserHost),
    };
    let plain = url.scheme() == "https" && url.username().is_empty() && url.password().is_none();
    let known = addresses
        .iter()
        .chain(trusted)
        .any(|a| a.eq_ignore_ascii_case(&host));
    (!plain || !known).then_some(Refusal::ForeignBrowserHost)
}

/// What a filed message is checked against when its job reconciles.
pub struct Expected<'a> {
    pub operation: Operation,
    pub job_name: &'a str,
    /// The queue of the job's configuration.
    pub queue_url: Option<&'a str>,
    /// The addresses EC2 reports for worker instances with a session to
    /// announce, by instance ID.
    pub addresses: &'a HashMap<String, Vec<String>>,
    /// Hosts a session may be at besides the instance's own addresses.
    pub trusted_browser_hosts: &'a [String],
    pub now: Timestamp,
}

/// Why a message filed for a job must not count, if it must not. `worker`
/// is the job's worker of the message's resource. A message for another
/// attempt or instance, or for a worker whose launch is not recorded yet,
/// is judged by the queue alone here: applying it changes nothing, and a
/// message that waits for its launch is judged again on the next pass.
pub fn refusal(
    msg: &WorkerMessage,
    arrived_on: &str,
    worker: Option<&WorkerStatus>,
    expected: &Expected<'_>,
) -> Option<Refusal> {
    if let Some(r) = queue_refusal(arrived_on, expected.queue_url) {
        return Some(r);
    }
    let w = worker?;
    let launched = w.launch_time.as_ref().map(|t| t.0);
    let current = msg.attempt == w.attempt && w.instance_id.as_deref() == Some(&msg.instance_id);
    let (true, Some(launched)) = (current, launched) else {
        return None;
    };
    if msg.sequence > sequence_bound(launched, expected.now) {
        return Some(Refusal::SequenceJump);
    }
    let addresses = expected
        .addresses
        .get(&msg.instance_id)
        .map_or(&[][..], Vec::as_slice);
    restore_point_refusal(
        expected.operation,
        expected.job_name,
        &w.resource,
        &msg.event,
    )
    .or_else(|| browser_host_refusal(&msg.event, addresses, expected.trusted_browser_hosts))
}

#[cfg(test)]
mod tests;
