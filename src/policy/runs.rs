//! Whether a policy starts a run now: Kubernetes CronJob's rules for
//! missed runs, `startingDeadlineSeconds`, `concurrencyPolicy` and
//! `suspend`, as a pure function of what the policy's status and its jobs
//! say.
//!
//! - Runs are counted from the last scheduled run (or the policy's
//!   creation); with a starting deadline, only runs within it count.
//! - Of all the runs missed since, only the newest starts (at most one
//!   catch-up run); the others are reported as missed.
//! - `Forbid` (the default) does not start a run while one is active: the
//!   run stays due, and starts late if the active one ends within the
//!   deadline. `Replace` ends the active runs first. `Allow` starts it.
//! - A run's job is named after its scheduled minute, so that a run is
//!   never started twice, whatever restarts happen in between.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schedule::Schedule;

/// What a policy does with a run while another is active.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip the run while the previous one is still active (it starts late
    /// if the previous one ends within `startingDeadlineSeconds`).
    #[default]
    Forbid,
    /// Start the run alongside the active ones.
    Allow,
    /// End the active runs (their BackupJobs are deleted, which terminates
    /// their workers), then start the new one.
    Replace,
}

/// CronJob counts at most this many missed runs.
pub const MISSED_LIMIT: usize = 100;

/// What the decision reads.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub schedule: &'a Schedule,
    pub zone: &'a TimeZone,
    pub created: Timestamp,
    pub last_scheduled: Option<Timestamp>,
    pub starting_deadline_seconds: Option<i64>,
    pub concurrency: ConcurrencyPolicy,
    pub suspend: bool,
    /// The names of the policy's jobs that are still running.
    pub active: &'a [String],
    pub now: Timestamp,
}

/// Why a due run was not started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// `concurrencyPolicy: Forbid` and a run is active.
    StillActive { active: String },
    /// Later than `startingDeadlineSeconds` after its time.
    MissedDeadline,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The run to start now (its scheduled time), if any.
    pub start: Option<Timestamp>,
    /// Active runs to end first (`Replace`).
    pub replace: Vec<String>,
    /// A due run that was not started, and why.
    pub skipped: Option<(Timestamp, Skipped)>,
    /// How many runs were missed and never started (beyond the one
    /// catch-up run); [`MISSED_LIMIT`] means at least that many.
    pub missed: usize,
    /// The next scheduled time after now.
    pub next: Option<Timestamp>,
}

/// Decides what to do now.
pub fn decide(o: &Observed<'_>) -> Decision {
    let next = o.schedule.next_after(o.now, o.zone);
    let mut decision = Decision {
        start: None,
        replace: Vec::new(),
        skipped: None,
        missed: 0,
        next,
    };
    if o.suspend {
        return decision;
    }
    let mut earliest = o.last_scheduled.unwrap_or(o.created);
    if let Some(deadline) = o.starting_deadline_seconds
        && let Ok(window) = o.now.checked_sub(jiff::SignedDuration::from_secs(deadline))
        && window > earliest
    {
        // Runs older than the deadline are past starting; count the
        // ones the deadline hid as missed.
        let (_, hidden) = o
            .schedule
            .newest_between(earliest, window, o.zone, MISSED_LIMIT);
        decision.missed = hidden;
        earliest = window;
    }
    let (due, count) = o
        .schedule
        .newest_between(earliest, o.now, o.zone, MISSED_LIMIT);
    let Some(due) = due else {
        return decision;
    };
    decision.missed = (decision.missed + count.saturating_sub(1)).min(MISSED_LIMIT);
    if let Some(deadline) = o.starting_deadline_seconds
        && due
            .checked_add(jiff::SignedDuration::from_secs(deadline))
            .is_ok_and(|end| end < o.now)
    {
        decision.skipped = Some((due, Skipped::MissedDeadline));
        return decision;
    }
    match (o.concurrency, o.active.first()) {
        (ConcurrencyPolicy::Forbid, Some(active)) => {
            decision.skipped = Some((
                due,
                Skipped::StillActive {
                    active: active.clone(),
                },
            ));
        }
        (ConcurrencyPolicy::Replace, Some(_)) => {
            decision.replace = o.active.to_vec();
            decision.start = Some(due);
        }
        _ => decision.start = Some(due),
    }
    decision
}

/// The name of the BackupJob of the run scheduled at `scheduled`: the
/// policy's name and the scheduled minute (as CronJob names its Jobs), so
/// that a run is created at most once.
pub fn job_name(policy: &str, scheduled: Timestamp) -> String {
    format!("{policy}-{}", scheduled.as_second().div_euclid(60))
}

#[cfg(test)]
mod tests;
