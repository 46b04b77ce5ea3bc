//! Crash points for fault-injection tests. Built only with the
//! `fault-injection` feature (which `scripts/test` turns on): then, with
//! `TENDER_CRASH_AT=<point>` in its environment, the controller aborts on
//! the spot when it reaches that point: no destructors, no graceful
//! shutdown, like SIGKILL. Without the feature a crash point is nothing.

/// Aborts the process when `TENDER_CRASH_AT` names `point`.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: &str) {
    if std::env::var("TENDER_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("tender: crash point {point} reached (TENDER_CRASH_AT); aborting");
        std::process::abort();
    }
}

/// Aborts the process when `TENDER_CRASH_AT` names `point` (only in builds
/// with the `fault-injection` feature).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: &str) {}
