//! Which restore points a policy keeps: restic's `forget` rules, evaluated
//! per resource, in the policy's time zone, plus Tender's own guarantees.
//!
//! Restic's semantics (`internal/data/snapshot_policy.go`, and the
//! examples of its `forget` documentation, which the table tests replay):
//! - restore points are taken newest first;
//! - `keepLast n` keeps the `n` newest; `keepHourly`/`Daily`/`Weekly`/
//!   `Monthly`/`Yearly n` keep the newest restore point of each of the `n`
//!   newest hours, days, ISO weeks (Monday to Sunday), months or years
//!   *that have one* (calendar boundaries in the policy's zone, not
//!   relative to now); `-1` means every one;
//! - when a rule still has counts left at the oldest restore point, that
//!   one is kept too ("oldest daily"), which keeps the history as long as
//!   possible;
//! - `keepWithin` keeps everything within a duration (`2y5m7d3h`) of the
//!   newest restore point that is not in the future; `keepWithinDaily`
//!   and its siblings keep the newest of each day (hour, …) within it;
//! - a restore point matching any rule is kept; no rule at all keeps
//!   everything (restic refuses an empty policy; Tender never deletes by
//!   default).
//!
//! Tender adds, whatever the rules say: the newest restore point of a
//! resource (and, when a clock ran ahead, the newest not in the future)
//! is never deleted (a restore point exists only once its backup
//! succeeded, so that is the newest successful one); a held restore point
//! (`tender.dev/hold`) is never deleted; one made after `now` (a clock
//! ahead) is never deleted.

use std::collections::BTreeMap;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long restore points are kept, per resource (restic's `forget`
/// rules). A restore point that any rule keeps is kept.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the `n` newest restore points (`-1`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub keep_last: Option<i32>,
    /// For the `n` newest hours that have a restore point, keep the newest
    /// of each (`-1`: every hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub keep_hourly: Option<i32>,
    /// For the `n` newest days (in the policy's time zone) that have a
    /// restore point, keep the newest of each (`-1`: every day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub keep_daily: Option<i32>,
    /// For the `n` newest ISO weeks (Monday 00:00 to Sunday 23:59) that
    /// have a restore point, keep the newest of each (`-1`: every week).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub keep_weekly: Option<i32>,
    /// For the `n` newest months that have a restore point, keep the
    /// newest of each (`-1`: every month).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub keep_monthly: Option<i32>,
    /// For the `n` newest years that have a restore point, keep the newest
    /// of each (`-1`: every year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub keep_yearly: Option<i32>,
    /// Keep every restore point made within this long of the newest one,
    /// in years, months, days and hours: `2y5m7d3h`, `14d`, `36h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"),
        length(min = 2, max = 32)
    )]
    pub keep_within: Option<String>,
    /// Within this long of the newest restore point, keep the newest of
    /// each hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"),
        length(min = 2, max = 32)
    )]
    pub keep_within_hourly: Option<String>,
    /// Within this long of the newest restore point, keep the newest of
    /// each day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"),
        length(min = 2, max = 32)
    )]
    pub keep_within_daily: Option<String>,
    /// Within this long of the newest restore point, keep the newest of
    /// each ISO week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"),
        length(min = 2, max = 32)
    )]
    pub keep_within_weekly: Option<String>,
    /// Within this long of the newest restore point, keep the newest of
    /// each month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"),
        length(min = 2, max = 32)
    )]
    pub keep_within_monthly: Option<String>,
    /// Within this long of the newest restore point, keep the newest of
    /// each year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+y)?([0-9]+m)?([0-9]+d)?([0-9]+h)?$"),
        length(min = 2, max = 32)
    )]
    pub keep_within_yearly: Option<String>,
}

/// A duration as restic writes it: years, months, days, hours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Within {
    pub years: i64,
    pub months: i64,
    pub days: i64,
    pub hours: i64,
}

impl Within {
    /// Parses `2y5m7d3h` (each part optional, in that order, at least one).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a duration such as 2y5m7d3h, 14d or 36h");
        let mut within = Within::default();
        let mut number = String::new();
        let mut order = 0;
        for c in text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let (rank, slot) = match c {
                'y' => (1, &mut within.years),
                'm' => (2, &mut within.months),
                'd' => (3, &mut within.days),
                'h' => (4, &mut within.hours),
                _ => return Err(bad()),
            };
            if rank <= order || number.is_empty() || number.len() > 6 {
                return Err(bad());
            }
            *slot = number.parse().map_err(|_| bad())?;
            number.clear();
            order = rank;
        }
        if order == 0 || !number.is_empty() {
            return Err(bad());
        }
        Ok(within)
    }

    fn span(&self) -> Span {
        self.years
            .years()
            .months(self.months)
            .days(self.days)
            .hours(self.hours)
    }
}

/// The rules, checked and parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// last, hourly, daily, weekly, monthly, yearly: `None` unset, `Some(-1)`
    /// unlimited.
    counts: [Option<i32>; 6],
    within: Option<Within>,
    /// hourly, daily, weekly, monthly, yearly within.
    within_buckets: [Option<Within>; 5],
}

impl Rules {
    pub fn of(spec: &Retention) -> Result<Self, String> {
        let parse = |field: &str, v: &Option<String>| {
            v.as_deref()
                .map(Within::parse)
                .transpose()
                .map_err(|e| format!("retention.{field}: {e}"))
        };
        let counts = [
            spec.keep_last,
            spec.keep_hourly,
            spec.keep_daily,
            spec.keep_weekly,
            spec.keep_monthly,
            spec.keep_yearly,
        ];
        if let Some(n) = counts.iter().flatten().find(|n| **n < -1) {
            return Err(format!("retention counts are -1 (all) or more, not {n}"));
        }
        Ok(Self {
            counts,
            within: parse("keepWithin", &spec.keep_within)?,
            within_buckets: [
                parse("keepWithinHourly", &spec.keep_within_hourly)?,
                parse("keepWithinDaily", &spec.keep_within_daily)?,
                parse("keepWithinWeekly", &spec.keep_within_weekly)?,
                parse("keepWithinMonthly", &spec.keep_within_monthly)?,
                parse("keepWithinYearly", &spec.keep_within_yearly)?,
            ],
        })
    }

    /// No rule at all: everything is kept.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| c.is_none_or(|n| n == 0))
            && self.within.is_none()
            && self.within_buckets.iter().all(Option::is_none)
    }
}

/// One restore point of one resource, as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created: Timestamp,
    /// Held (`tender.dev/hold`): never deleted.
    pub held: bool,
}

/// Why a restore point is kept (restic's words, plus Tender's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub id: String,
    /// Empty: delete it.
    pub kept_because: Vec<String>,
}

impl Verdict {
    pub fn kept(&self) -> bool {
        !self.kept_because.is_empty()
    }
}

const COUNT_RULES: [&str; 6] = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];
const WITHIN_RULES: [&str; 5] = ["hourly", "daily", "weekly", "monthly", "yearly"];

/// The calendar bucket of `t` for rule `rule` (0 last … 5 yearly); `nr` is
/// its position, newest first (the `last` rule's bucket).
fn bucket(rule: usize, t: &DateTime, nr: usize) -> i64 {
    let (y, m, d, h) = (
        i64::from(t.year()),
        i64::from(t.month()),
        i64::from(t.day()),
        i64::from(t.hour()),
    );
    match rule {
        0 => nr as i64,
        1 => y * 1_000_000 + m * 10_000 + d * 100 + h,
        2 => y * 10_000 + m * 100 + d,
        3 => {
            let week = t.date().iso_week_date();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }
        4 => y * 100 + m,
        _ => y,
    }
}

/// Applies `rules` to the restore points of one resource. Returns a verdict
/// per restore point, newest first.
pub fn apply(rules: &Rules, zone: &TimeZone, points: &[Candidate], now: Timestamp) -> Vec<Verdict> {
    let mut list: Vec<&Candidate> = points.iter().collect();
    // Newest first; equal times in a stable order.
    list.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    let Some(newest) = list.first().map(|c| c.created) else {
        return Vec::new();
    };
    // The newest restore point not in the future: what `within` counts from.
    let latest = list
        .iter()
        .map(|c| c.created)
        .find(|t| *t <= now)
        .unwrap_or(newest);
    let since = |w: &Within| {
        latest
            .to_zoned(zone.clone())
            .checked_sub(w.span())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MIN)
    };
    let mut counts = rules.counts;
    let mut last: [Option<i64>; 6] = [None; 6];
    let mut last_within: [Option<i64>; 5] = [None; 5];
    let oldest = list.len() - 1;
    let mut verdicts = Vec::with_capacity(list.len());
    for (nr, point) in list.iter().enumerate() {
        let local = point.created.to_zoned(zone.clone()).datetime();
        let mut reasons = Vec::new();
        if nr == 0 || (point.created == latest && newest > now) {
            reasons.push("newest restore point".to_string());
        }
        if point.held {
            reasons.push("held".to_string());
        }
        if point.created > now {
            reasons.push("made in the future".to_string());
        }
        if let Some(w) = &rules.within
            && point.created > since(w)
        {
            reasons.push("within".to_string());
        }
        for (rule, count) in counts.iter_mut().enumerate() {
            let Some(n) = *count else { continue };
            if n == 0 {
                continue;
            }
            let value = bucket(rule, &local, nr);
            if Some(value) != last[rule] || nr == oldest {
                let oldest_too = Some(value) == last[rule];
                last[rule] = Some(value);
                if n > 0 {
                    *count = Some(n - 1);
                }
                let name = COUNT_RULES[rule];
                reasons.push(if oldest_too {
                    format!("oldest {name}")
                } else {
                    name.to_string()
                });
            }
        }
        for (rule, within) in rules.within_buckets.iter().enumerate() {
            let Some(w) = within else { continue };
            if point.created <= since(w) {
                continue;
            }
            let value = bucket(rule + 1, &local, nr);
            if Some(value) != last_within[rule] || nr == oldest {
                let oldest_too = Some(value) == last_within[rule];
                last_within[rule] = Some(value);
                let name = WITHIN_RULES[rule];
                reasons.push(if oldest_too {
                    format!("oldest {name} within")
                } else {
                    format!("{name} within")
                });
            }
        }
        if rules.is_empty() {
            reasons.push("no retention rule".to_string());
        }
        verdicts.push(Verdict {
            id: point.id.clone(),
            kept_because: reasons,
        });
    }
    verdicts
}

/// Applies `rules` to many resources' restore points at once:
/// `(resource, candidates)` → the verdicts of each resource.
pub fn apply_per_resource(
    rules: &Rules,
    zone: &TimeZone,
    points: BTreeMap<String, Vec<Candidate>>,
    now: Timestamp,
) -> BTreeMap<String, Vec<Verdict>> {
    points
        .into_iter()
        .map(|(resource, list)| {
            let verdicts = apply(rules, zone, &list, now);
            (resource, verdicts)
        })
        .collect()
}

#[cfg(test)]
mod tests;
