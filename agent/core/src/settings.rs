//! What the config sections are made of: durations (`30s`, `1h30m`), byte
//! sizes (`100MiB`) and the (key, message) a section's `validate` reports.
//! A leaf module: every section (in [`crate::config`], [`crate::kafka`],
//! [`crate::storage`]) builds on it.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A setting's full key (`storage.url`) and what is wrong with it.
pub type KeyError = (String, String);

pub fn bad(key: &str, message: String) -> KeyError {
    (key.to_string(), message)
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `1h30m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(format!("{text:?} is not a duration like 30s, 10m or 1h30m"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        let unit = &rest[digits..digits + unit_len];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ))
            }
        };
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// Serde helper: a duration as seconds or text (see [`parse_duration`]).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Serde helper for an optional duration (absent: `None`).
pub fn opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Parses `1048576`, `512KiB`, `16MiB`, `1GiB` (powers of 1024) or `100MB`
/// (powers of 1000); a trailing `/s` is allowed for rates.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("{text:?} is not a size like 100MiB or 1048576"));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("{text:?}: number too large"))?;
    let mult: u64 = match t[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        unit => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?}: number too large"))
}

/// Free space to keep on a filesystem: a share of it (`5%`) or a size
/// (`50GiB`); `0` keeps nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    Percent(f64),
    Bytes(u64),
}

impl FreeSpace {
    pub fn parse(text: &str) -> Result<FreeSpace, String> {
        match text.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if (0.0..100.0).contains(&v) => Ok(FreeSpace::Percent(v)),
                _ => Err(format!("{text:?} is not a share like 5% (0 to under 100)")),
            },
            None => parse_byte_size(text).map(FreeSpace::Bytes),
        }
    }

    /// The bytes to keep free on a filesystem of `total` bytes.
    pub fn required(self, total: u64) -> u64 {
        match self {
            FreeSpace::Percent(p) => (total as f64 * p / 100.0).ceil() as u64,
            FreeSpace::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for FreeSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreeSpace::Percent(p) => write!(f, "{p}%"),
            FreeSpace::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

pub fn free_space<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<FreeSpace, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(b) => Ok(FreeSpace::Bytes(b)),
        Raw::Text(t) => FreeSpace::parse(&t).map_err(serde::de::Error::custom),
    }
}

pub fn byte_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

pub fn opt_byte_size<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

/// One error for every problem found in config `file`: a single problem
/// reads `config FILE: key: message`, several are listed one per line under
/// `config FILE: N problems:`. `Ok` when there are none.
pub fn problems_error(
    file: &std::path::Path,
    problems: Vec<KeyError>,
) -> kafka_snapshot_model::error::Result<()> {
    let message = match problems.as_slice() {
        [] => return Ok(()),
        [(key, m)] => format!("{key}: {m}"),
        all => all
            .iter()
            .fold(format!("{} problems:", all.len()), |text, (key, m)| {
                format!("{text}\n  - {key}: {m}")
            }),
    };
    Err(kafka_snapshot_model::error::Error::Config {
        file: file.to_path_buf(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_a_share_or_a_size() {
        assert_eq!(FreeSpace::parse("5%"), Ok(FreeSpace::Percent(5.0)));
        assert_eq!(FreeSpace::parse(" 12.5 %"), Ok(FreeSpace::Percent(12.5)));
        assert_eq!(FreeSpace::parse("50GiB"), Ok(FreeSpace::Bytes(50 << 30)));
        assert_eq!(FreeSpace::parse("0"), Ok(FreeSpace::Bytes(0)));
        for bad in ["100%", "-1%", "much", "5 percent"] {
            assert!(FreeSpace::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(FreeSpace::Percent(5.0).required(1000), 50);
        assert_eq!(FreeSpace::Percent(0.1).required(1001), 2, "rounded up");
        assert_eq!(FreeSpace::Bytes(7).required(1 << 40), 7);
    }
}
