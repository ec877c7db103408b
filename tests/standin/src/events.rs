//! The events log, `events.jsonl` in the state dir: one JSON object per
//! line, appended by every broker process (and by the library when it kills
//! a broker), stamped with `CLOCK_MONOTONIC`, which all processes on the
//! machine share. Replaying it tells how many brokers were not serving at
//! any moment.
//!
//! ```text
//! {"mono_ns":81234,"unix_ms":1795168800123,"broker":2,"kind":"sigterm","pid":4242,"epoch":117}
//! ```

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Log dirs locked, port open; fenced until registered.
    Started,
    /// Unfenced: listed in Metadata and DescribeCluster.
    Registered,
    /// Back in the ISR of every partition (serving again).
    CaughtUp,
    /// SIGTERM received: leaves every ISR at once.
    Sigterm,
    /// `.kafka_cleanshutdown` written in every log dir.
    CleanShutdown,
    /// The process exits after a clean shutdown.
    Exited,
    /// The process exits without `.kafka_cleanshutdown` (crash scenario).
    Crashed,
    /// The process refused to start (scenario, `.lock` held, bad dirs).
    StartFailed,
    /// SIGKILLed by the library.
    Killed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub mono_ns: u64,
    pub unix_ms: i64,
    pub broker: i32,
    pub kind: EventKind,
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    pub fn now(broker: i32, kind: EventKind, pid: i32) -> Event {
        Event {
            mono_ns: fsutil::monotonic_ns(),
            unix_ms: fsutil::unix_ms(),
            broker,
            kind,
            pid,
            epoch: None,
            detail: None,
        }
    }

    /// Appends the event as one line with one `write` on an `O_APPEND` file,
    /// so lines from concurrent processes do not interleave.
    pub fn append(&self, path: &Path) -> Result<()> {
        let mut line = serde_json::to_vec(self).context("serializing event")?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening events log {}", path.display()))?;
        f.write_all(&line)
            .with_context(|| format!("appending to events log {}", path.display()))
    }
}

/// All events, ordered by time. A missing log is empty.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: bad event", path.display(), i + 1))?;
        events.push(e);
    }
    events.sort_by_key(|e| e.mono_ns);
    Ok(events)
}

/// The largest number of `brokers` not serving at the same moment.
///
/// A broker serves from `caught_up` until `sigterm`, `crashed`, `exited`,
/// `clean_shutdown` or `killed`; it does not serve before its first
/// `caught_up`. The count starts at the first moment every broker served
/// (a cluster being brought up is not "down"); if that never happened it
/// covers the whole log. A broker SIGKILLed by someone other than the
/// library leaves no event and is not seen.
pub fn max_brokers_down(events: &[Event], brokers: &[i32]) -> usize {
    let initial: BTreeMap<i32, bool> = brokers.iter().map(|&b| (b, false)).collect();
    let down = |s: &BTreeMap<i32, bool>| s.values().filter(|v| !**v).count();
    let mut serving = initial.clone();
    let first_all_up = events.iter().position(|e| {
        apply(&mut serving, e);
        down(&serving) == 0
    });
    let mut serving = initial;
    let mut max = if first_all_up.is_none() {
        brokers.len()
    } else {
        0
    };
    for (i, e) in events.iter().enumerate() {
        apply(&mut serving, e);
        if first_all_up.is_none_or(|first| i >= first) {
            max = max.max(down(&serving));
        }
    }
    max
}

fn apply(serving: &mut BTreeMap<i32, bool>, e: &Event) {
    if let Some(state) = serving.get_mut(&e.broker) {
        match e.kind {
            EventKind::CaughtUp => *state = true,
            EventKind::Sigterm
            | EventKind::CleanShutdown
            | EventKind::Exited
            | EventKind::Crashed
            | EventKind::Killed => *state = false,
            EventKind::Started | EventKind::Registered | EventKind::StartFailed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, broker: i32, kind: EventKind) -> Event {
        Event {
            mono_ns: t,
            unix_ms: 0,
            broker,
            kind,
            pid: 1,
            epoch: None,
            detail: None,
        }
    }

    #[test]
    fn rolling_restart_is_one_down_and_overlap_is_two() {
        use EventKind::*;
        let mut events = vec![
            ev(1, 1, Started),
            ev(2, 2, Started),
            ev(3, 1, CaughtUp),
            ev(4, 2, CaughtUp),
            ev(5, 1, Sigterm),
            ev(6, 1, Exited),
            ev(7, 1, Started),
            ev(8, 1, CaughtUp),
            ev(9, 2, Sigterm),
            ev(10, 2, Started),
            ev(11, 2, CaughtUp),
        ];
        assert_eq!(max_brokers_down(&events, &[1, 2]), 1);
        events.push(ev(12, 1, Killed));
        events.push(ev(13, 2, Sigterm));
        assert_eq!(max_brokers_down(&events, &[1, 2]), 2);
    }

    #[test]
    fn never_fully_up_counts_everything() {
        use EventKind::*;
        let events = vec![ev(1, 1, Started), ev(2, 1, CaughtUp)];
        assert_eq!(max_brokers_down(&events, &[1, 2]), 2);
    }

    #[test]
    fn append_and_read_back_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        ev(20, 1, EventKind::Sigterm).append(&p).unwrap();
        ev(10, 2, EventKind::Started).append(&p).unwrap();
        let got = read_events(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].mono_ns, 10);
    }
}
