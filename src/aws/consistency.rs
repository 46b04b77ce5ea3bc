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

/// How long a call made right after a create is retried in place while
/// EC2 does not know the new resource yet; past it the error goes to the
/// caller (a reconcile, retried with backoff).
pub const IN_PLACE_WAIT: Duration = Duration::from_secs(30);

/// Runs `call` until it stops failing with an error `not_found` accepts,
/// for at most [`IN_PLACE_WAIT`] after `created` (when the resource was
/// created), waiting as [`recheck_after`] says between tries.
pub async fn retry_while_unknown<T, F, Fut>(
    created: std::time::Instant,
    not_found: impl Fn(&super::AwsError) -> bool,
    mut call: F,
) -> Result<T, super::AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, super::AwsError>>,
{
    loop {
        match call().await {
            Err(e) if not_found(&e) && created.elapsed() < IN_PLACE_WAIT => {
                tokio::time::sleep(recheck_after(created.elapsed())).await;
            }
            other => return other,
        }
    }
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

    fn unknown() -> crate::aws::AwsError {
        crate::aws::AwsError::Service {
            operation: "DescribeSecurityGroups",
            code: "InvalidGroup.NotFound".into(),
            message: "The security group 'sg-1' does not exist".into(),
        }
    }

    fn is_unknown(e: &crate::aws::AwsError) -> bool {
        e.code() == Some("InvalidGroup.NotFound")
    }

    #[tokio::test]
    async fn a_call_right_after_a_create_is_retried_until_ec2_knows_it() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let out = retry_while_unknown(std::time::Instant::now(), is_unknown, || async {
            match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err(unknown()),
                n => Ok(n),
            }
        })
        .await;
        assert!(matches!(out, Ok(1)), "{out:?}");
    }

    #[tokio::test]
    async fn long_after_a_create_not_found_means_gone() {
        let long_ago = std::time::Instant::now()
            .checked_sub(IN_PLACE_WAIT)
            .unwrap_or_else(std::time::Instant::now);
        let tries = std::sync::atomic::AtomicU32::new(0);
        let out: Result<(), _> = retry_while_unknown(long_ago, is_unknown, || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(unknown())
        })
        .await;
        assert!(out.is_err());
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
