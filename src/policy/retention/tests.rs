//! Table tests: restic's documented `forget` examples, then Tender's own
//! guarantees.

use super::*;

fn utc() -> TimeZone {
    TimeZone::UTC
}

fn at(text: &str) -> Timestamp {
    let civil: DateTime = text.parse().expect("civil time");
    civil.to_zoned(TimeZone::UTC).expect("UTC").timestamp()
}

fn points(times: &[&str]) -> Vec<Candidate> {
    times
        .iter()
        .map(|t| Candidate {
            id: (*t).to_string(),
            created: at(t),
            held: false,
        })
        .collect()
}

/// The ids kept, oldest first.
fn kept(verdicts: &[Verdict]) -> Vec<String> {
    let mut ids: Vec<String> = verdicts
        .iter()
        .filter(|v| v.kept())
        .map(|v| v.id.clone())
        .collect();
    ids.sort();
    ids
}

fn rules(spec: Retention) -> Rules {
    Rules::of(&spec).expect("valid rules")
}

/// restic's documentation, "Removing snapshots according to a policy":
/// backups every weekday for two weeks, an extra one on Fridays, and the
/// second Wednesday missed.
const WEEKDAYS: [&str; 11] = [
    "2025-04-21T11:00:00",
    "2025-04-22T11:00:00",
    "2025-04-23T11:00:00",
    "2025-04-24T11:00:00",
    "2025-04-25T11:00:00",
    "2025-04-25T23:00:00",
    "2025-04-28T11:00:00",
    "2025-04-29T11:00:00",
    "2025-05-01T11:00:00",
    "2025-05-02T11:00:00",
    "2025-05-02T23:00:00",
];

#[test]
fn keep_daily_5_keeps_last_friday_because_wednesday_was_missed() {
    let verdicts = apply(
        &rules(Retention {
            keep_daily: Some(5),
            ..Default::default()
        }),
        &utc(),
        &points(&WEEKDAYS),
        at("2025-05-03T00:00:00"),
    );
    assert_eq!(
        kept(&verdicts),
        [
            "2025-04-25T23:00:00",
            "2025-04-28T11:00:00",
            "2025-04-29T11:00:00",
            "2025-05-01T11:00:00",
            "2025-05-02T23:00:00",
        ]
    );
    assert_eq!(verdicts.iter().filter(|v| !v.kept()).count(), 6);
}

#[test]
fn keep_within_daily_7d_keeps_only_the_second_week() {
    let verdicts = apply(
        &rules(Retention {
            keep_within_daily: Some("7d".into()),
            ..Default::default()
        }),
        &utc(),
        &points(&WEEKDAYS),
        at("2025-05-03T00:00:00"),
    );
    assert_eq!(
        kept(&verdicts),
        [
            "2025-04-28T11:00:00",
            "2025-04-29T11:00:00",
            "2025-05-01T11:00:00",
            "2025-05-02T23:00:00",
        ]
    );
}

/// "suppose you make one backup every day for 100 years. Then `forget
/// --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75` would
/// keep the most recent 7 daily snapshots and 4 last-day-of-the-week ones
/// (since the 7 dailies already include 1 weekly). Additionally, 12 or 11
/// last-day-of-the-month snapshots will be kept (…) And finally 75 or 74
/// last-day-of-the-year snapshots."
#[test]
fn a_hundred_years_of_dailies_keep_7_daily_4_more_weekly_and_month_and_year_ends() {
    // Ending on a Sunday, as the example's arithmetic assumes (seven
    // dailies are one ISO week).
    let start: DateTime = "1924-12-30T03:00:00".parse().expect("date");
    let list: Vec<Candidate> = (0..36_525)
        .map(|d| {
            let t = start
                .checked_add(i64::from(d).days())
                .expect("in range")
                .to_zoned(TimeZone::UTC)
                .expect("UTC")
                .timestamp();
            Candidate {
                id: t.to_string(),
                created: t,
                held: false,
            }
        })
        .collect();
    let verdicts = apply(
        &rules(Retention {
            keep_daily: Some(7),
            keep_weekly: Some(5),
            keep_monthly: Some(12),
            keep_yearly: Some(75),
            ..Default::default()
        }),
        &utc(),
        &list,
        at("2030-01-01T00:00:00"),
    );
    let kept: Vec<&Verdict> = verdicts.iter().filter(|v| v.kept()).collect();
    let dailies = kept
        .iter()
        .filter(|v| v.kept_because.iter().any(|r| r == "daily"))
        .count();
    assert_eq!(dailies, 7, "7 dailies");
    let weekly_only = kept
        .iter()
        .filter(|v| v.kept_because.iter().any(|r| r == "weekly"))
        .filter(|v| !v.kept_because.iter().any(|r| r == "daily"))
        .count();
    assert_eq!(weekly_only, 4, "4 weekly beyond the dailies");
    let monthly_only = kept
        .iter()
        .filter(|v| v.kept_because == ["monthly"] || v.kept_because == ["monthly", "yearly"])
        .count();
    assert!((11..=12).contains(&monthly_only), "{monthly_only} monthly");
    let yearly_only = kept.iter().filter(|v| v.kept_because == ["yearly"]).count();
    assert!((74..=75).contains(&yearly_only), "{yearly_only} yearly");
    // Every kept weekly is a Sunday, monthly the last day of its month,
    // yearly the 31st of December.
    // (The newest is the current month's and year's.)
    for v in kept.iter().skip(1) {
        let day =
            v.id.parse::<Timestamp>()
                .expect("ts")
                .to_zoned(utc())
                .date();
        if v.kept_because.iter().any(|r| r == "weekly") {
            assert_eq!(day.weekday(), jiff::civil::Weekday::Sunday, "{v:?}");
        }
        if v.kept_because.iter().any(|r| r == "monthly") {
            assert_eq!(day, day.last_of_month(), "{v:?}");
        }
        if v.kept_because.iter().any(|r| r == "yearly") {
            assert_eq!((day.month(), day.day()), (12, 31), "{v:?}");
        }
    }
    assert!(
        (7 + 4 + 11 + 74..=7 + 4 + 12 + 75).contains(&kept.len()),
        "{} kept",
        kept.len()
    );
}

#[test]
fn keep_last_2_keeps_the_two_newest() {
    let verdicts = apply(
        &rules(Retention {
            keep_last: Some(2),
            ..Default::default()
        }),
        &utc(),
        &points(&WEEKDAYS),
        at("2025-05-03T00:00:00"),
    );
    assert_eq!(
        kept(&verdicts),
        ["2025-05-02T11:00:00", "2025-05-02T23:00:00"]
    );
}

#[test]
fn a_rule_with_counts_left_keeps_the_oldest_too() {
    // restic: "If there are not enough snapshots to keep one for each
    // duration related option, the oldest snapshot is kept additionally".
    let verdicts = apply(
        &rules(Retention {
            keep_daily: Some(10),
            ..Default::default()
        }),
        &utc(),
        &points(&["2025-04-25T11:00:00", "2025-04-25T23:00:00"]),
        at("2025-05-03T00:00:00"),
    );
    assert!(verdicts.iter().all(Verdict::kept));
    assert!(
        verdicts[1]
            .kept_because
            .contains(&"oldest daily".to_string())
    );
}

#[test]
fn unlimited_keeps_the_newest_of_every_month_and_the_oldest() {
    let verdicts = apply(
        &rules(Retention {
            keep_monthly: Some(-1),
            ..Default::default()
        }),
        &utc(),
        &points(&WEEKDAYS),
        at("2025-05-03T00:00:00"),
    );
    assert_eq!(
        kept(&verdicts),
        [
            "2025-04-21T11:00:00",
            "2025-04-29T11:00:00",
            "2025-05-02T23:00:00"
        ]
    );
}

#[test]
fn keep_within_counts_from_the_newest_restore_point_not_from_now() {
    let verdicts = apply(
        &rules(Retention {
            keep_within: Some("2d".into()),
            ..Default::default()
        }),
        &utc(),
        &points(&WEEKDAYS),
        at("2026-01-01T00:00:00"),
    );
    assert_eq!(
        kept(&verdicts),
        [
            "2025-05-01T11:00:00",
            "2025-05-02T11:00:00",
            "2025-05-02T23:00:00"
        ]
    );
}

#[test]
fn days_are_the_policy_zones_days() {
    // 23:30 UTC on the 1st is already the 2nd in Berlin: with keepDaily 1,
    // UTC keeps only the newest (the 1st's 23:30 beats its 08:00), Berlin
    // sees two different days and keeps one per day... of which only one.
    let list = points(&["2025-05-01T08:00:00", "2025-05-01T23:30:00"]);
    let rules = rules(Retention {
        keep_daily: Some(2),
        ..Default::default()
    });
    let now = at("2025-05-03T00:00:00");
    let in_utc = apply(&rules, &utc(), &list, now);
    let berlin = TimeZone::get("Europe/Berlin").expect("bundled tz data");
    let in_berlin = apply(&rules, &berlin, &list, now);
    // UTC: one day, so the older is kept only as "oldest daily".
    assert!(in_utc[1].kept_because.contains(&"oldest daily".to_string()));
    // Berlin: two days, so the older is a daily in its own right.
    assert!(in_berlin[1].kept_because.contains(&"daily".to_string()));
}

#[test]
fn held_and_future_restore_points_are_never_deleted() {
    let mut list = points(&WEEKDAYS);
    list[0].held = true;
    list.push(Candidate {
        id: "future".into(),
        created: at("2030-01-01T00:00:00"),
        held: false,
    });
    let verdicts = apply(
        &rules(Retention {
            keep_last: Some(1),
            ..Default::default()
        }),
        &utc(),
        &list,
        at("2025-05-03T00:00:00"),
    );
    let kept = kept(&verdicts);
    assert_eq!(
        kept,
        ["2025-04-21T11:00:00", "2025-05-02T23:00:00", "future"]
    );
    let newest = verdicts.iter().find(|v| v.id == "future").expect("there");
    assert!(
        newest
            .kept_because
            .contains(&"made in the future".to_string())
    );
}

#[test]
fn no_rule_keeps_everything() {
    for spec in [
        Retention::default(),
        Retention {
            keep_last: Some(0),
            ..Default::default()
        },
    ] {
        let verdicts = apply(
            &rules(spec),
            &utc(),
            &points(&WEEKDAYS),
            at("2026-01-01T00:00:00"),
        );
        assert!(verdicts.iter().all(Verdict::kept));
    }
}

#[test]
fn the_newest_is_kept_whatever_the_rules() {
    let verdicts = apply(
        &rules(Retention {
            keep_within_yearly: Some("1h".into()),
            ..Default::default()
        }),
        &utc(),
        &points(&WEEKDAYS),
        at("2026-01-01T00:00:00"),
    );
    assert_eq!(kept(&verdicts), ["2025-05-02T23:00:00"]);
    assert!(
        verdicts[0]
            .kept_because
            .contains(&"newest restore point".to_string())
    );
}

#[test]
fn durations_parse_as_restic_writes_them() {
    assert_eq!(
        Within::parse("2y5m7d3h"),
        Ok(Within {
            years: 2,
            months: 5,
            days: 7,
            hours: 3
        })
    );
    assert_eq!(Within::parse("36h").map(|w| w.hours), Ok(36));
    for bad in ["", "7", "1w", "3h2d", "d", "1d1d", "9999999d"] {
        assert!(Within::parse(bad).is_err(), "{bad:?}");
    }
    assert!(
        Rules::of(&Retention {
            keep_within: Some("1w".into()),
            ..Default::default()
        })
        .unwrap_err()
        .contains("keepWithin")
    );
}
