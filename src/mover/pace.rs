//! How the mover keeps one block's trouble from failing a whole attempt,
//! and stays within the EBS direct APIs' quotas.
//!
//! AWS's quotas for the EBS direct APIs, per account and Region ("Quotas
//! for Amazon EBS",
//! <https://docs.aws.amazon.com/ebs/latest/userguide/ebs-resource-quotas.html>,
//! and "Amazon EBS endpoints and quotas",
//! <https://docs.aws.amazon.com/general/latest/gr/ebs-service.html>).
//! CompleteSnapshot, 10 per second per account, not adjustable, was read
//! there; the other rows are as issue #14 and the test world
//! (`scripts/realism/world.py`) cite them, and a given account may have
//! others (Service Quotas console):
//!
//! | request | quota |
//! |---|---|
//! | GetSnapshotBlock | 1 000 per second per snapshot; 5 000 per second per account |
//! | PutSnapshotBlock | 1 000 per second per snapshot; 5 000 per second per account |
//! | ListSnapshotBlocks, ListChangedBlocks | 50 per second per account each |
//! | StartSnapshot | 10 per second per account |
//! | CompleteSnapshot | 10 per second per account |
//! | pending snapshots | a number per account |
//!
//! One mover reads or writes one snapshot at a time, [`super::CONCURRENCY`]
//! blocks in flight, and never starts more than [`BLOCKS_PER_SECOND`]
//! block requests a second ([`Pace`]): under the per-snapshot quota with
//! room for a retry. The per-account quotas are shared by every worker of
//! the account (and anything else there), so they can throttle whatever
//! one worker does: the SDK retries each call (adaptive mode, 5 attempts),
//! and a block whose call still fails on throttling or a server error is
//! tried again on its own ([`retry_block`]), with exponential backoff and
//! full jitter, before it fails the attempt. The list, start and complete
//! calls are a handful per volume and only the SDK retries them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::aws::AwsError;

use super::MoverError;

/// Block requests (GetSnapshotBlock, PutSnapshotBlock) one mover starts per
/// second at most: 80 % of the per-snapshot quota of 1 000.
pub const BLOCKS_PER_SECOND: u32 = 800;

/// How often, and how patiently, one block's call is tried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries by the mover (each one the SDK's up to 5 attempts).
    pub tries: u32,
    /// The first backoff; each later one doubles, up to `cap`.
    pub base: Duration,
    pub cap: Duration,
}

/// What the mover uses for every block: 8 tries over up to about 30 s of
/// backoff, on top of the SDK's own retries of each.
pub const BLOCK_RETRIES: RetryPolicy = RetryPolicy {
    tries: 8,
    base: Duration::from_millis(250),
    cap: Duration::from_secs(20),
};

/// Spaces the start of block requests `1 / rate` apart.
pub struct Pace {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Whether a block's call is worth trying again as it is: throttling
/// (ThrottlingException, RequestThrottledException, SlowDown, a bare 429 or
/// 503), a server error, or no answer at all. Access, validation and
/// not-found errors are not.
pub fn worth_retrying(e: &MoverError) -> bool {
    match e {
        MoverError::Aws(e) => e.is_transient() || is_server_error(e),
        _ => false,
    }
}

fn is_server_error(e: &AwsError) -> bool {
    e.code().is_some_and(|c| {
        matches!(
            c,
            "InternalServerException"
                | "InternalError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "ServiceUnavailableException"
                | "Http500"
                | "Http502"
                | "Http504"
        )
    })
}

impl RetryPolicy {
    /// The backoff before retry `n` (1-based): a random duration up to
    /// `min(cap, base * 2^(n-1))` ("full jitter"), so that throttled
    /// workers do not come back in step.
    pub fn backoff(&self, n: u32, random: u64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.cap);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(random % (micros.saturating_add(1)))
    }
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness from the OS the backoff is still bounded; only
    // the jitter is lost.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Retries by the mover, counted where progress is reported.
#[derive(Debug, Default)]
pub struct Retries {
    /// Blocks that needed at least one retry by the mover (counted by the
    /// caller, once per block whatever the number of its calls retried).
    pub blocks: AtomicU64,
    /// Retries made, all blocks together.
    pub tries: AtomicU64,
}

/// Runs `call` (one request of one block) until it succeeds, fails with
/// what a retry cannot fix, or has been tried `policy.tries` times.
/// Returns whether it needed a retry; counts each retry in
/// `retries.tries`.
pub async fn retry_block<T, F, Fut>(
    policy: &RetryPolicy,
    retries: &Retries,
    what: impl Fn() -> String,
    mut call: F,
) -> Result<(T, bool), MoverError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MoverError>>,
{
    let mut n = 0;
    loop {
        match call().await {
            Ok(v) => return Ok((v, n > 0)),
            Err(e) if n + 1 < policy.tries && worth_retrying(&e) => {
                n += 1;
                retries.tries.fetch_add(1, Ordering::Relaxed);
                let wait = policy.backoff(n, random());
                tracing::info!(block = what(), error = %e, retry = n, ?wait, "retrying one block");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(code: &str) -> MoverError {
        MoverError::Aws(AwsError::Service {
            operation: "GetSnapshotBlock",
            code: code.into(),
            message: String::new(),
        })
    }

    #[test]
    fn throttling_and_server_errors_are_retried_nothing_else() {
        for code in [
            "ThrottlingException",
            "RequestThrottledException",
            "SlowDown",
            "Http429",
            "Http503",
            "InternalServerException",
            "ConcurrentLimitExceededException",
        ] {
            assert!(worth_retrying(&aws(code)), "{code}");
        }
        for code in [
            "AccessDeniedException",
            "ValidationException",
            "ResourceNotFoundException",
            "Http403",
        ] {
            assert!(!worth_retrying(&aws(code)), "{code}");
        }
        assert!(!worth_retrying(&MoverError::NoIntegrityKey));
    }

    const QUICK: RetryPolicy = RetryPolicy {
        tries: 8,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(4),
    };

    #[test]
    fn backoff_doubles_up_to_its_cap_with_full_jitter() {
        let p = BLOCK_RETRIES;
        let ms = Duration::from_millis;
        assert_eq!(p.backoff(1, 250_000), ms(250));
        assert_eq!(p.backoff(1, 250_001), ms(0));
        assert_eq!(p.backoff(2, 500_000), ms(500));
        assert_eq!(p.backoff(3, 1_000_000), ms(1000));
        assert_eq!(p.backoff(30, 20_000_000), p.cap);
        assert_eq!(p.backoff(30, 20_000_001), Duration::ZERO);
        assert_eq!(p.backoff(2, 0), Duration::ZERO);
        for n in 1..40 {
            assert!(p.backoff(n, u64::MAX) <= p.cap);
        }
    }

    #[tokio::test]
    async fn a_block_is_retried_alone_until_it_passes_or_its_tries_run_out() {
        let retries = Retries::default();
        let mut failures = 3;
        let (v, retried) = retry_block(
            &QUICK,
            &retries,
            || "block 7".into(),
            || {
                let fail = failures > 0;
                failures -= 1;
                async move {
                    if fail {
                        Err(aws("RequestThrottledException"))
                    } else {
                        Ok(7)
                    }
                }
            },
        )
        .await
        .expect("passes on the fourth try");
        assert_eq!((v, retried), (7, true));
        assert_eq!(retries.tries.load(Ordering::Relaxed), 3);

        let mut calls = 0;
        let e = retry_block(
            &QUICK,
            &retries,
            || "block 8".into(),
            || {
                calls += 1;
                async { Err::<(), _>(aws("SlowDown")) }
            },
        )
        .await;
        assert!(e.is_err());
        assert_eq!(calls, QUICK.tries);

        let mut calls = 0;
        let e = retry_block(
            &QUICK,
            &retries,
            || "block 9".into(),
            || {
                calls += 1;
                async { Err::<(), _>(aws("AccessDeniedException")) }
            },
        )
        .await;
        assert!(e.is_err());
        assert_eq!(calls, 1, "what a retry cannot fix fails at once");
    }

    #[tokio::test]
    async fn the_pace_spaces_requests_to_the_rate() {
        let pace = Pace::new(1000);
        let start = Instant::now();
        for _ in 0..21 {
            pace.wait().await;
        }
        // The first goes at once, the 21st 20 intervals of 1 ms later.
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
