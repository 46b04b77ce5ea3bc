//! When a policy runs: a cron schedule in an IANA time zone, with the
//! rules Kubernetes' CronJob has for runs that were missed.
//!
//! The syntax is CronJob's (`minute hour day-of-month month day-of-week`,
//! with `*`, `?`, lists, ranges, `/steps`, month and weekday names, and
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly`); as there, when both day fields are restricted a day
//! matching either runs. `TZ=`/`CRON_TZ=` prefixes are refused: the zone
//! is the policy's `timeZone`.
//!
//! Times are civil times of the zone, each run at most once: a time that
//! a daylight-saving jump skips (02:30 when clocks go from 02:00 to 03:00)
//! runs at the same offset after the jump (03:30), and a time that
//! happens twice (01:30 when clocks go back) runs the first time only. So
//! a daily schedule never skips nor doubles a day.
//!
//! A hand-written parser rather than a crate: the cron crates use chrono
//! and a seconds field, and CronJob's syntax (which users copy) is small.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed cron schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// A day field given as `*` or `?` (without a step): then both day
    /// fields must match, else either.
    any_day_of_month: bool,
    any_day_of_week: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far ahead a schedule's next time is looked for (CronJob's library
/// gives up after five years too: `0 0 30 2 *` never runs).
const HORIZON_DAYS: i64 = 5 * 366;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name's number (1 for months, 0 for weekdays).
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    Field {
        name: "day of week",
        // 7 is Sunday too, as in most crons.
        min: 0,
        max: 7,
        names: &WEEKDAYS,
        names_from: 0,
    },
];

impl Field {
    fn number(&self, text: &str) -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        let n = match self.names.iter().position(|n| *n == lower) {
            Some(i) => i as u32 + self.names_from,
            None => text.parse::<u32>().map_err(|_| {
                format!(
                    "{:?} is not a valid {} (use a number{})",
                    text,
                    self.name,
                    {
                        if self.names.is_empty() {
                            ""
                        } else {
                            " or a name"
                        }
                    }
                )
            })?,
        };
        if n < self.min || n > self.max {
            return Err(format!(
                "{} {n} is out of range {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(n)
    }

    /// The bits of one field, and whether it was an unrestricted `*`/`?`.
    fn parse(&self, text: &str) -> Result<(u64, bool), String> {
        let mut bits = 0u64;
        let mut star = false;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 =
                        s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                            format!("{s:?} is not a valid step in the {}", self.name)
                        })?;
                    (r, Some(step))
                }
                None => (part, None),
            };
            let (low, high) = if range == "*" || range == "?" {
                star |= step.is_none_or(|s| s == 1);
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.number(a)?, self.number(b)?)
            } else {
                let a = self.number(range)?;
                (a, if step.is_some() { self.max } else { a })
            };
            if low > high {
                return Err(format!("{} range {range:?} goes backwards", self.name));
            }
            let step = step.unwrap_or(1);
            let mut n = low;
            while n <= high {
                bits |= 1 << n;
                n += step;
            }
        }
        Ok((bits, star))
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("TZ=") || text.starts_with("CRON_TZ=") {
            return Err("a time zone in the schedule is not supported: set spec.timeZone".into());
        }
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "{other:?} is not a supported descriptor (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"
                ));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; a schedule has five: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        }
        let mut parsed = [(0u64, false); 5];
        for (i, (field, text)) in FIELDS.iter().zip(&fields).enumerate() {
            parsed[i] = field.parse(text)?;
        }
        let mut days_of_week = parsed[4].0;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & !(1 << 7);
        }
        Ok(Self {
            minutes: parsed[0].0,
            hours: parsed[1].0,
            days_of_month: parsed[2].0,
            months: parsed[3].0,
            days_of_week,
            any_day_of_month: parsed[2].1,
            any_day_of_week: parsed[4].1,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day_of_month || self.any_day_of_week {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `after`, in `zone`; `None`
    /// when there is none within five years (`0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(zone.clone()).datetime();
        let floor = local.with().second(0).subsec_nanosecond(0).build().ok()?;
        let start = local.date();
        for offset in 0..HORIZON_DAYS {
            let date = start.checked_add(offset.days()).ok()?;
            if !self.day_matches(date) {
                continue;
            }
            for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                    let civil = DateTime::from_parts(date, jiff::civil::time(hour, minute, 0, 0));
                    if civil < floor {
                        continue;
                    }
                    let Ok(zoned) = zone.to_ambiguous_zoned(civil).compatible() else {
                        continue;
                    };
                    let instant = zoned.timestamp();
                    if instant > after && self.is_first_occurrence(civil, instant, zone) {
                        return Some(instant);
                    }
                }
            }
        }
        None
    }

    /// A skipped civil time maps forward onto the instant of a later civil
    /// time; when that later time is scheduled too, it runs once.
    fn is_first_occurrence(&self, civil: DateTime, instant: Timestamp, zone: &TimeZone) -> bool {
        let real = instant.to_zoned(zone.clone()).datetime();
        real == civil || !self.matches(real)
    }

    fn matches(&self, t: DateTime) -> bool {
        t.second() == 0
            && self.minutes & (1 << t.minute()) != 0
            && self.hours & (1 << t.hour()) != 0
            && self.day_matches(t.date())
    }

    /// The newest scheduled time in `(after, until]`, and how many there
    /// were, counted up to `limit` (CronJob stops counting at 100 too).
    pub fn newest_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        zone: &TimeZone,
        limit: usize,
    ) -> (Option<Timestamp>, usize) {
        let mut newest = None;
        let mut count = 0;
        let mut cursor = after;
        while let Some(t) = self.next_after(cursor, zone).filter(|t| *t <= until) {
            newest = Some(t);
            count += 1;
            cursor = t;
            if count == limit {
                // More than can be walked one by one: look back from
                // `until` in widening windows for the newest.
                return (self.newest_near(cursor, until, zone).or(newest), limit);
            }
        }
        (newest, count)
    }

    /// The newest scheduled time in `(after, until]`, walking only the
    /// last hour, day, month, year… before `until` that holds one.
    fn newest_near(
        &self,
        after: Timestamp,
        until: Timestamp,
        zone: &TimeZone,
    ) -> Option<Timestamp> {
        for hours in [1, 24, 24 * 32, 24 * 367, 24 * 367 * 5] {
            let from = until
                .checked_sub(jiff::SignedDuration::from_hours(hours))
                .ok()?
                .max(after);
            let mut newest = None;
            let mut cursor = from;
            while let Some(t) = self.next_after(cursor, zone).filter(|t| *t <= until) {
                newest = Some(t);
                cursor = t;
            }
            if newest.is_some() || from == after {
                return newest;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
