//! EC2's eventual consistency: a resource just created may be unknown to
//! the next call for a while. AWS: "if you run a command to modify or
//! describe the resource that you just created, its ID might not have
//! propagated throughout the system, and you will get an error responding
//! that the resource does not exist"; retry with backoff "up to a few
//! minutes" (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>,
//! which names `InvalidInstanceID.NotFound` and `InvalidGroup.NotFound`;
//! snapshots, volumes and images behave the same).
//!
//! So a Describe that does not find what Tender created counts as "not yet"
//! for [`VISIBILITY_WINDOW`] after the create, and as "gone" only after.

use std::time::Duration;

/// How long after its creation a resource may still be unknown to EC2's
/// Describe calls before Tender believes it is gone.
pub const VISIBILITY_WINDOW: Duration = Duration::from_secs(300);

/// What a Describe that did not find a resource Tender created means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absence {
    /// Created too recently to be visible everywhere: ask again later.
    NotYetVisible,
    /// Long enough after its creation: it is gone (deleted, failed).
    Gone,
}

/// Classifies a resource Describe did not find, `since_created` after the
/// call that created it (or after a moment known to come later).
pub fn absence(since_created: Duration) -> Absence {
    if since_created < VISIBILITY_WINDOW {
        Absence::NotYetVisible
    } else {
        Absence::Gone
    }
}

/// How long to wait before asking again about a resource created
/// `since_created` ago that is not yet visible or not yet ready: a couple
/// of seconds at first, growing to a minute, as AWS advises.
pub fn recheck_after(since_created: Duration) -> Duration {
    let secs = since_created.as_secs();
    Duration::from_secs(match secs {
        0..60 => 2,
        60..600 => 10,
        600..3600 => 30,
        _ => 60,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_right_after_a_create_is_not_yet_and_later_is_gone() {
        assert_eq!(absence(Duration::ZERO), Absence::NotYetVisible);
        assert_eq!(absence(Duration::from_secs(1)), Absence::NotYetVisible);
        assert_eq!(absence(Duration::from_secs(299)), Absence::NotYetVisible);
        assert_eq!(absence(VISIBILITY_WINDOW), Absence::Gone);
        assert_eq!(absence(Duration::from_secs(3600)), Absence::Gone);
    }

    #[test]
    fn rechecks_start_short_and_back_off() {
        assert_eq!(
            recheck_after(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        assert!(recheck_after(Duration::from_secs(120)) > recheck_after(Duration::ZERO));
        assert_eq!(
            recheck_after(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }
}
