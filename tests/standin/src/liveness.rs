//! Per-broker liveness, shared through the state dir: each broker process
//! keeps `brokers/broker-N.status.json` (pid, epoch, phase) up to date, and
//! every broker reads all of them to answer Metadata. A broker counts as
//! alive only while its process exists, is not a zombie and started at the
//! recorded time (no pid reuse), so a SIGKILLed broker drops out at once.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::definition::StatePaths;
use crate::fsutil::{self, FileLock};

/// Where a broker is in its life. Only the broker process writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Listening, but fenced: not in Metadata's broker list, no ISR.
    Starting,
    /// Unfenced and listed, still catching up: in no ISR.
    Registered,
    /// Back in the ISR of every partition it is a replica of.
    InSync,
    /// SIGTERM received: controlled shutdown, out of every ISR.
    Stopping,
    /// Exited after writing `.kafka_cleanshutdown`.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStatus {
    pub node_id: i32,
    pub pid: i32,
    /// `starttime` of the process in `/proc/<pid>/stat` (clock ticks since
    /// boot): tells the broker from a later process with the same pid.
    pub proc_start: u64,
    pub epoch: i64,
    pub phase: Phase,
    pub started_mono_ns: u64,
    /// When the phase last changed.
    pub phase_mono_ns: u64,
}

impl BrokerStatus {
    pub fn load(paths: &StatePaths, node_id: i32) -> Result<Option<BrokerStatus>> {
        let path = paths.status(node_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, paths: &StatePaths) -> Result<()> {
        let bytes = serde_json::to_vec(self).context("serializing broker status")?;
        fsutil::write_atomic(&paths.status(self.node_id), &bytes)
    }

    /// Whether the process this status describes is still running.
    pub fn process_alive(&self) -> bool {
        proc_start_time(self.pid) == Some(self.proc_start)
    }
}

/// What the rest of the cluster sees of one broker right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// The process runs and is not shutting down.
    pub alive: bool,
    /// Alive and unfenced (listed in Metadata and DescribeCluster).
    pub registered: bool,
    /// Registered and caught up: eligible for every ISR.
    pub in_sync: bool,
    pub epoch: i64,
}

impl Liveness {
    pub fn of(status: Option<&BrokerStatus>) -> Liveness {
        let Some(s) = status else {
            return Liveness::default();
        };
        let alive = matches!(s.phase, Phase::Starting | Phase::Registered | Phase::InSync)
            && s.process_alive();
        Liveness {
            alive,
            registered: alive && matches!(s.phase, Phase::Registered | Phase::InSync),
            in_sync: alive && s.phase == Phase::InSync,
            epoch: s.epoch,
        }
    }

    pub fn read(paths: &StatePaths, node_id: i32) -> Liveness {
        // An unreadable status file counts as down (fail closed).
        Liveness::of(BrokerStatus::load(paths, node_id).ok().flatten().as_ref())
    }
}

/// The process that owns a cluster (see [`StatePaths::owner`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: i32,
    pub proc_start: u64,
}

impl Owner {
    /// The current process.
    pub fn current() -> Result<Owner> {
        let pid = std::process::id() as i32;
        let proc_start = proc_start_time(pid).context("reading /proc/self/stat")?;
        Ok(Owner { pid, proc_start })
    }

    pub fn save(&self, paths: &StatePaths) -> Result<()> {
        let bytes = serde_json::to_vec(self).context("serializing owner")?;
        fsutil::write_atomic(&paths.owner(), &bytes)
    }

    /// `Some(false)` if the cluster has an owner and it is gone.
    pub fn owner_alive(paths: &StatePaths) -> Option<bool> {
        let bytes = std::fs::read(paths.owner()).ok()?;
        let owner: Owner = serde_json::from_slice(&bytes).ok()?;
        Some(proc_start_time(owner.pid) == Some(owner.proc_start))
    }
}

/// `starttime` of a live, non-zombie process, or `None`.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Hands out the next broker epoch, cluster-wide and increasing (in KRaft
/// it is the offset of the broker's registration record).
pub fn next_broker_epoch(paths: &StatePaths) -> Result<i64> {
    let _lock = FileLock::lock(&paths.root.join("broker-epoch.lock"))?;
    let path = paths.epoch_counter();
    let last = read_i64(&path)?.unwrap_or(100);
    let next = last + 1 + (fsutil::monotonic_ns() % 7) as i64;
    fsutil::write_atomic(&path, next.to_string().as_bytes())?;
    Ok(next)
}

fn read_i64(path: &Path) -> Result<Option<i64>> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_pid_reuse_is_detected() {
        let pid = std::process::id() as i32;
        let start = proc_start_time(pid).expect("own /proc entry");
        let mut s = BrokerStatus {
            node_id: 1,
            pid,
            proc_start: start,
            epoch: 5,
            phase: Phase::InSync,
            started_mono_ns: 0,
            phase_mono_ns: 0,
        };
        assert!(Liveness::of(Some(&s)).in_sync);
        s.proc_start += 1;
        assert_eq!(
            Liveness::of(Some(&s)),
            Liveness {
                epoch: 5,
                ..Default::default()
            }
        );
        s.proc_start -= 1;
        s.phase = Phase::Stopping;
        assert!(!Liveness::of(Some(&s)).alive);
    }

    #[test]
    fn epochs_increase() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path());
        let a = next_broker_epoch(&paths).unwrap();
        let b = next_broker_epoch(&paths).unwrap();
        assert!(b > a, "{b} > {a}");
    }
}
