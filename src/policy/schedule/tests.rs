use super::*;

fn zoned(text: &str, zone: &str) -> Timestamp {
    let civil: DateTime = text.parse().expect("civil time");
    civil
        .to_zoned(TimeZone::get(zone).expect("bundled zone"))
        .expect("valid time")
        .timestamp()
}

fn next(schedule: &str, after: &str, zone: &str) -> String {
    let tz = TimeZone::get(zone).expect("zone");
    Schedule::parse(schedule)
        .expect("valid")
        .next_after(zoned(after, zone), &tz)
        .map(|t| t.to_zoned(tz).datetime().to_string())
        .unwrap_or_else(|| "never".into())
}

#[test]
fn next_times_follow_cron_syntax() {
    let cases = [
        ("* * * * *", "2026-03-01T10:00:00", "2026-03-01T10:01:00"),
        ("* * * * *", "2026-03-01T10:00:30", "2026-03-01T10:01:00"),
        ("*/15 * * * *", "2026-03-01T10:01:00", "2026-03-01T10:15:00"),
        ("5/20 * * * *", "2026-03-01T10:30:00", "2026-03-01T10:45:00"),
        ("0 2 * * *", "2026-03-01T02:00:00", "2026-03-02T02:00:00"),
        ("30 1-3 * * *", "2026-03-01T02:31:00", "2026-03-01T03:30:00"),
        ("0 0 1,15 * *", "2026-03-02T00:00:00", "2026-03-15T00:00:00"),
        (
            "0 0 * * MON-FRI",
            "2026-03-06T12:00:00",
            "2026-03-09T00:00:00",
        ),
        ("0 0 * * 7", "2026-03-02T00:00:00", "2026-03-08T00:00:00"),
        ("0 0 * Feb *", "2026-03-02T00:00:00", "2027-02-01T00:00:00"),
        ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
        ("0 0 30 2 *", "2026-03-01T00:00:00", "never"),
        ("@hourly", "2026-03-01T10:59:59", "2026-03-01T11:00:00"),
        ("@weekly", "2026-03-01T10:00:00", "2026-03-08T00:00:00"),
        ("@yearly", "2026-03-01T10:00:00", "2027-01-01T00:00:00"),
        // Both day fields restricted: either matches (the 13th, or a Friday).
        ("0 0 13 * 5", "2026-03-01T00:00:00", "2026-03-06T00:00:00"),
        ("0 0 13 * 5", "2026-03-12T00:00:00", "2026-03-13T00:00:00"),
        // One of them `*`: both must.
        ("0 0 13 * *", "2026-03-01T00:00:00", "2026-03-13T00:00:00"),
        ("0 0 */2 * 5", "2026-03-01T00:00:00", "2026-03-03T00:00:00"),
    ];
    for (schedule, after, want) in cases {
        assert_eq!(
            next(schedule, after, "UTC"),
            want,
            "{schedule} after {after}"
        );
    }
}

#[test]
fn daylight_saving_neither_skips_nor_doubles_a_day() {
    // Europe/Berlin: 2026-03-29 02:00 → 03:00; 2026-10-25 03:00 → 02:00.
    assert_eq!(
        next("30 2 * * *", "2026-03-28T03:00:00", "Europe/Berlin"),
        "2026-03-29T03:30:00",
        "the skipped 02:30 runs at 03:30"
    );
    assert_eq!(
        next("30 2 * * *", "2026-03-29T04:00:00", "Europe/Berlin"),
        "2026-03-30T02:30:00"
    );
    let tz = TimeZone::get("Europe/Berlin").expect("zone");
    let s = Schedule::parse("30 2 * * *").expect("valid");
    let first = s
        .next_after(zoned("2026-10-25T00:00:00", "Europe/Berlin"), &tz)
        .expect("runs");
    assert_eq!(
        first.to_string(),
        "2026-10-25T00:30:00Z",
        "the first 02:30 (CEST)"
    );
    let second = s.next_after(first, &tz).expect("runs");
    assert_eq!(
        second.to_string(),
        "2026-10-26T01:30:00Z",
        "not the second 02:30 (CET)"
    );
    // An hourly schedule at the skipped hour: 03:30 once, not twice.
    let hourly = Schedule::parse("30 * * * *").expect("valid");
    let a = hourly
        .next_after(zoned("2026-03-29T01:45:00", "Europe/Berlin"), &tz)
        .expect("runs");
    let b = hourly.next_after(a, &tz).expect("runs");
    assert_eq!(
        a.to_zoned(tz.clone()).datetime().to_string(),
        "2026-03-29T03:30:00"
    );
    assert_eq!(b.to_zoned(tz).datetime().to_string(), "2026-03-29T04:30:00");
}

#[test]
fn zones_other_than_utc_schedule_in_their_own_time() {
    let tz = TimeZone::get("America/New_York").expect("zone");
    let t = Schedule::parse("0 9 * * *")
        .expect("valid")
        .next_after(zoned("2026-07-01T00:00:00", "UTC"), &tz)
        .expect("runs");
    assert_eq!(t.to_string(), "2026-07-01T13:00:00Z");
}

#[test]
fn bad_schedules_say_what_is_wrong() {
    for (bad, says) in [
        ("* * * *", "five"),
        ("60 * * * *", "minute 60 is out of range"),
        ("* 24 * * *", "hour 24"),
        ("* * 0 * *", "day of month 0"),
        ("* * * 13 *", "month 13"),
        ("* * * * 8", "day of week 8"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("* * * FOO *", "FOO"),
        ("@every 5m", "descriptor"),
        ("TZ=UTC 0 * * * *", "spec.timeZone"),
        ("CRON_TZ=UTC 0 * * * *", "spec.timeZone"),
    ] {
        let e = Schedule::parse(bad).expect_err(bad);
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn newest_between_counts_and_finds_the_newest_of_many() {
    let tz = TimeZone::UTC;
    let s = Schedule::parse("* * * * *").expect("valid");
    let from = zoned("2026-01-01T00:00:00", "UTC");
    let (newest, count) = s.newest_between(from, zoned("2026-01-01T00:05:30", "UTC"), &tz, 100);
    assert_eq!(count, 5);
    assert_eq!(newest, Some(zoned("2026-01-01T00:05:00", "UTC")));
    // A year of minutes: counted to the limit, the newest still exact.
    let (newest, count) = s.newest_between(from, zoned("2027-01-01T00:00:30", "UTC"), &tz, 100);
    assert_eq!(count, 100);
    assert_eq!(newest, Some(zoned("2027-01-01T00:00:00", "UTC")));
    let monthly = Schedule::parse("0 0 1 * *").expect("valid");
    let (newest, count) =
        monthly.newest_between(from, zoned("2036-01-15T00:00:00", "UTC"), &tz, 100);
    assert_eq!(count, 100);
    assert_eq!(newest, Some(zoned("2036-01-01T00:00:00", "UTC")));
}
