//! Status conditions shared by every kind, kstatus-compatible: `Ready`, plus
//! `Reconciling` and `Stalled` while they apply, so that Flux and Argo CD can
//! judge health without custom code.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// What a reconcile wants one condition to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Builds the new condition list from the old one. A condition that keeps
/// its status keeps its `lastTransitionTime`; conditions that are not
/// desired any more are dropped (kstatus reads an absent `Reconciling` or
/// `Stalled` as false).
pub fn merge(
    old: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let last_transition_time = old
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// True when `conditions` has `type_` with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let first = merge(
            &[],
            &[DesiredCondition::new(READY, false, "Launching", "a")],
            Some(1),
            ts(100),
        );
        let second = merge(
            &first,
            &[DesiredCondition::new(READY, false, "Running", "b")],
            Some(2),
            ts(200),
        );
        assert_eq!(second[0].last_transition_time, Time(ts(100)));
        assert_eq!(second[0].reason, "Running");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let first = merge(
            &[],
            &[DesiredCondition::new(READY, false, "Launching", "a")],
            Some(1),
            ts(100),
        );
        let second = merge(
            &first,
            &[DesiredCondition::new(READY, true, "Succeeded", "b")],
            Some(1),
            ts(200),
        );
        assert_eq!(second[0].last_transition_time, Time(ts(200)));
        assert!(is_true(&second, READY));
    }

    #[test]
    fn drops_conditions_that_are_no_longer_desired() {
        let first = merge(
            &[],
            &[
                DesiredCondition::new(READY, false, "Launching", "a"),
                DesiredCondition::new(RECONCILING, true, "Launching", "a"),
            ],
            Some(1),
            ts(100),
        );
        let second = merge(
            &first,
            &[DesiredCondition::new(READY, true, "Succeeded", "b")],
            Some(1),
            ts(200),
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].type_, READY);
    }
}
