//! Crash points for fault-injection tests. With `TENDER_CRASH_AT=<point>`
//! in its environment, the controller aborts on the spot when it reaches
//! that point: no destructors, no graceful shutdown, like SIGKILL. Unset in
//! production, where each check is one environment lookup.

/// Aborts the process when `TENDER_CRASH_AT` names `point`.
pub fn crash_point(point: &str) {
    if std::env::var("TENDER_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("tender: crash point {point} reached (TENDER_CRASH_AT); aborting");
        std::process::abort();
    }
}
