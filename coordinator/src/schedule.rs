//! When rolling cycles are due: `@every <duration>` or a 5-field cron
//! expression (minute hour day-of-month month day-of-week, in UTC), plus the
//! usual aliases (`@daily`, `@hourly`, `@weekly`, `@monthly`).

use chrono::{DateTime, Utc};
use croner::Cron;
use kafka_snapshot::settings::parse_duration;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron { expr: String, cron: Box<Cron> },
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        if let Some(d) = t.strip_prefix("@every") {
            let d = parse_duration(d.trim()).map_err(|e| format!("{text:?}: {e}"))?;
            if d < Duration::from_secs(60) {
                return Err(format!("{text:?}: the interval must be at least 1m"));
            }
            return Ok(Schedule::Every(d));
        }
        let expr = match t {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "{text:?}: unknown alias (use @every <duration>, @hourly, @daily, @weekly, @monthly)"
                ))
            }
            other => other,
        };
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "{text:?}: a cron expression has 5 fields (minute hour day-of-month month day-of-week), not {fields}"
            ));
        }
        let cron = Cron::from_str(expr).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Schedule::Cron {
            expr: expr.to_string(),
            cron: Box::new(cron),
        })
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(d) => {
                t + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::days(1))
            }
            Schedule::Cron { cron, .. } => cron
                .find_next_occurrence(&t, false)
                // A valid 5-field expression always has a next time; if the
                // library disagrees, fall back to a day so we never spin.
                .unwrap_or(t + chrono::Duration::days(1)),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "@every {}", humantime(*d)),
            Schedule::Cron { expr, .. } => write!(f, "{expr} (UTC)"),
        }
    }
}

/// `90s` -> `1m30s`, `86400s` -> `24h`.
pub fn humantime(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, n) in [("d", 86400 * 100), ("h", 3600), ("m", 60), ("s", 1)] {
        // Days only past 99 hours: "48h" reads better than "2d" for schedules.
        if s >= n {
            out.push_str(&format!("{}{unit}", s / n));
            s %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, 0).unwrap()
    }

    #[test]
    fn every() {
        let s = Schedule::parse("@every 24h").unwrap();
        assert_eq!(
            s.next_after(at(1, 0)),
            at(1, 0) + chrono::Duration::hours(24)
        );
        assert_eq!(s.to_string(), "@every 24h");
        assert!(Schedule::parse("@every 10s").is_err());
        assert!(Schedule::parse("@every often").is_err());
    }

    #[test]
    fn cron_in_utc() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(s.next_after(at(1, 0)), at(2, 30));
        assert_eq!(
            s.next_after(at(2, 30)),
            at(2, 30) + chrono::Duration::days(1)
        );
        let d = Schedule::parse("@daily").unwrap();
        assert_eq!(d.next_after(at(1, 0)), at(0, 0) + chrono::Duration::days(1));
    }

    #[test]
    fn bad_expressions_say_why() {
        let e = Schedule::parse("0 2 * *").unwrap_err();
        assert!(e.contains("5 fields"), "{e}");
        let e = Schedule::parse("0 0 2 * * *").unwrap_err();
        assert!(e.contains("not 6"), "{e}");
        assert!(Schedule::parse("61 2 * * *").is_err());
        assert!(Schedule::parse("@yearly-ish").is_err());
    }

    #[test]
    fn human_durations() {
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime(Duration::from_secs(86400)), "24h");
    }
}
