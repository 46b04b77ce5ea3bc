use super::*;

static UTC: TimeZone = TimeZone::UTC;

fn t(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn observed<'a>(schedule: &'a Schedule, active: &'a [String], now: &str) -> Observed<'a> {
    Observed {
        schedule,
        zone: &UTC,
        created: t("2026-01-01T00:00:30Z"),
        last_scheduled: None,
        starting_deadline_seconds: None,
        concurrency: ConcurrencyPolicy::Forbid,
        suspend: false,
        active,
        now: t(now),
    }
}

fn every_minute() -> Schedule {
    Schedule::parse("* * * * *").expect("valid")
}

#[test]
fn nothing_is_due_before_the_first_time() {
    let s = every_minute();
    let d = decide(&observed(&s, &[], "2026-01-01T00:00:45Z"));
    assert_eq!(d.start, None);
    assert_eq!(d.next, Some(t("2026-01-01T00:01:00Z")));
}

#[test]
fn a_due_run_starts_once() {
    let s = every_minute();
    let mut o = observed(&s, &[], "2026-01-01T00:01:02Z");
    let d = decide(&o);
    assert_eq!(d.start, Some(t("2026-01-01T00:01:00Z")));
    assert_eq!(d.missed, 0);
    // Once recorded, it is not due again.
    o.last_scheduled = d.start;
    assert_eq!(decide(&o).start, None);
}

#[test]
fn of_many_missed_runs_only_the_newest_starts() {
    let s = every_minute();
    let d = decide(&observed(&s, &[], "2026-01-01T00:10:05Z"));
    assert_eq!(d.start, Some(t("2026-01-01T00:10:00Z")));
    assert_eq!(d.missed, 9);
}

#[test]
fn the_starting_deadline_bounds_what_counts() {
    let s = every_minute();
    let mut o = observed(&s, &[], "2026-01-01T00:10:05Z");
    o.starting_deadline_seconds = Some(30);
    let d = decide(&o);
    assert_eq!(d.start, Some(t("2026-01-01T00:10:00Z")));
    assert!(d.missed >= 9, "{}", d.missed);
    // Too late for every run: none starts.
    o.now = t("2026-01-01T00:10:45Z");
    let d = decide(&o);
    assert_eq!(d.start, None);
    assert!(d.missed >= 10);
}

#[test]
fn forbid_holds_the_run_while_one_is_active_and_starts_it_late() {
    let s = every_minute();
    let active = vec!["p-1".to_string()];
    let d = decide(&observed(&s, &active, "2026-01-01T00:01:02Z"));
    assert_eq!(d.start, None);
    assert_eq!(
        d.skipped,
        Some((
            t("2026-01-01T00:01:00Z"),
            Skipped::StillActive {
                active: "p-1".into()
            }
        ))
    );
    // The active run ended 20 s later: the held run starts then.
    let d = decide(&observed(&s, &[], "2026-01-01T00:01:22Z"));
    assert_eq!(d.start, Some(t("2026-01-01T00:01:00Z")));
}

#[test]
fn replace_ends_the_active_runs_and_allow_keeps_them() {
    let s = every_minute();
    let active = vec!["p-1".to_string()];
    let mut o = observed(&s, &active, "2026-01-01T00:01:02Z");
    o.concurrency = ConcurrencyPolicy::Replace;
    let d = decide(&o);
    assert_eq!(d.replace, active);
    assert!(d.start.is_some());
    o.concurrency = ConcurrencyPolicy::Allow;
    let d = decide(&o);
    assert!(d.replace.is_empty());
    assert!(d.start.is_some());
}

#[test]
fn suspended_policies_start_nothing() {
    let s = every_minute();
    let mut o = observed(&s, &[], "2026-01-01T00:05:00Z");
    o.suspend = true;
    assert_eq!(decide(&o).start, None);
}

#[test]
fn job_names_are_the_scheduled_minute() {
    assert_eq!(
        job_name("nightly", t("2026-01-01T00:01:00Z")),
        format!("nightly-{}", t("2026-01-01T00:01:00Z").as_second() / 60)
    );
}
