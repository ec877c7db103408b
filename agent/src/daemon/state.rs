//! The daemon's state file: what it is doing, under which lease, and
//! whether the broker is down because of it. Written atomically (temporary
//! file, fsync, rename, fsync of the directory) at every phase change,
//! before the action the phase names, so that an agent killed at any point
//! leaves a file that tells its successor what to finish.

use chrono::{DateTime, Utc};
use kafka_snapshot::storage::fsync_dir;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::protocol::Phase;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    Snapshot,
    Restore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    pub version: u32,
    /// The broker this agent acts for, remembered for when its log dirs
    /// are gone (a restore into wiped disks).
    pub broker: Option<i32>,
    pub phase: Phase,
    pub work: Option<Work>,
    /// The lease the agent works under (or the snapshot was captured
    /// under, while archiving after the release).
    pub lease_epoch: Option<u64>,
    /// Whether that lease is still held (not yet released).
    pub lease_held: bool,
    pub snapshot_id: Option<String>,
    pub restore_order: Option<i64>,
    /// True from just before the agent stops the broker until the broker
    /// runs again.
    pub broker_stopped_by_agent: bool,
    pub broker_stopped_at: Option<DateTime<Utc>>,
    pub phase_since: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

impl AgentState {
    pub fn idle(broker: Option<i32>) -> AgentState {
        let now = Utc::now();
        AgentState {
            version: STATE_VERSION,
            broker,
            phase: Phase::Idle,
            work: None,
            lease_epoch: None,
            lease_held: false,
            snapshot_id: None,
            restore_order: None,
            broker_stopped_by_agent: false,
            broker_stopped_at: None,
            phase_since: now,
            updated: now,
        }
    }

    /// Moves to `phase`, keeping track of whether the agent has the broker
    /// down: set on entering Stopping (or Restoring, which stops it), cleared
    /// once it runs again (Recovering, Archiving, Idle).
    pub fn enter(&mut self, phase: Phase) {
        let now = Utc::now();
        if phase != self.phase {
            self.phase_since = now;
        }
        self.phase = phase;
        self.updated = now;
        match phase {
            Phase::Stopping | Phase::Restoring => {
                if !self.broker_stopped_by_agent {
                    self.broker_stopped_by_agent = true;
                    self.broker_stopped_at = Some(now);
                }
            }
            Phase::Recovering | Phase::Archiving | Phase::Idle => {
                self.broker_stopped_by_agent = false;
                self.broker_stopped_at = None;
            }
            Phase::Gating | Phase::Capturing | Phase::Starting | Phase::Downloading => {}
        }
    }

    /// Back to idle after a lease and its follow-up are done; a broker the
    /// agent stopped and that does not run stays on record as the agent's.
    pub fn finish(&mut self, broker_running: bool) {
        let broker = self.broker;
        let stopped = self.broker_stopped_by_agent && !broker_running;
        let stopped_at = self.broker_stopped_at;
        *self = AgentState::idle(broker);
        // A broker that could not be started stays on record as ours.
        if stopped {
            self.phase = Phase::Starting;
            self.broker_stopped_by_agent = true;
            self.broker_stopped_at = stopped_at;
        }
    }

    /// Reads the state file; `None` if there is none (first start).
    pub fn load(path: &Path) -> Result<Option<AgentState>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::io(
                    format!("reading state file {}", path.display()),
                    e,
                ))
            }
        };
        let s: AgentState = serde_json::from_slice(&bytes).map_err(|e| Error::refused(
            format!("state file {}", path.display()),
            format!(
                "is unreadable ({e}); it records whether this agent stopped the broker. \
                 Check that the broker runs (start it if not), then move the file away and start the agent again"
            ),
        ))?;
        if s.version != STATE_VERSION {
            return Err(Error::refused(
                format!("state file {}", path.display()),
                format!(
                    "has version {} but this agent writes version {STATE_VERSION}",
                    s.version
                ),
            ));
        }
        Ok(Some(s))
    }

    /// Replaces the state file atomically and durably (temporary file,
    /// fsync, rename, fsync of the directory). An error means the file may
    /// still say what it said before: a caller about to stop the broker
    /// must not go on.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = state_dir(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| {
            Error::Internal(format!("serialising state file {}: {e}", path.display()))
        })?;
        bytes.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            fsync_dir(dir)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("writing state file {}", path.display()), e)
        })
    }
}

/// The state file's directory, created (private) if it is missing.
fn state_dir(path: &Path) -> Result<&Path> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Usage(format!("state file {} has no directory", path.display())))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Held for the daemon's lifetime: one daemon per state file. Two
/// daemons acting for the same broker from one host would both believe
/// they own the broker's state (and could both stop it).
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
    pub path: std::path::PathBuf,
}

impl StateLock {
    /// Locks `<state file>.lock` (flock, released when the process dies);
    /// an error names the file and the pid of the daemon holding it.
    pub fn acquire(state_path: &Path) -> Result<StateLock> {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        state_dir(state_path)?;
        let mut name = state_path.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a valid, owned fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            // The user's class (exit 2), not a refusal: two daemons set up
            // for one state file is a mistake in how the host is set up.
            return Err(Error::Usage(format!(
                "another agent daemon{} holds {} (state file {}): only one may run per broker host; \
                 stop it first",
                match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                },
                path.display(),
                state_path.display()
            )));
        }
        let pid = format!("{}\n", std::process::id());
        let write = |f: &mut fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(pid.as_bytes())
        };
        write(&mut f).ctx(|| format!("writing {}", path.display()))?;
        Ok(StateLock { _file: f, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_daemon_per_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let held = StateLock::acquire(&path).unwrap();
        let e = StateLock::acquire(&path).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id()))
                && e.contains(&held.path.display().to_string()),
            "{e}"
        );
        drop(held);
        StateLock::acquire(&path).expect("free again once the holder is gone");
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(AgentState::load(&path).unwrap(), None);
        let mut s = AgentState::idle(Some(2));
        s.work = Some(Work::Snapshot);
        s.lease_epoch = Some(7);
        s.lease_held = true;
        s.enter(Phase::Gating);
        s.save(&path).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), Some(s.clone()));
        s.enter(Phase::Stopping);
        s.save(&path).unwrap();
        let back = AgentState::load(&path).unwrap().unwrap();
        assert_eq!(back.phase, Phase::Stopping);
        assert!(back.broker_stopped_by_agent);
        // No temporary file is left beside it; the file is private.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["state.json".to_string()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn stopped_flag_follows_the_phases() {
        let mut s = AgentState::idle(Some(1));
        s.enter(Phase::Gating);
        assert!(!s.broker_stopped_by_agent);
        s.enter(Phase::Stopping);
        let at = s.broker_stopped_at.expect("stop time recorded");
        for p in [Phase::Capturing, Phase::Starting] {
            s.enter(p);
            assert!(s.broker_stopped_by_agent, "{p}");
            assert_eq!(s.broker_stopped_at, Some(at), "{p}");
        }
        s.enter(Phase::Recovering);
        assert!(!s.broker_stopped_by_agent);
        s.enter(Phase::Archiving);
        assert!(!s.broker_stopped_by_agent);
        s.finish(true);
        assert_eq!(s.phase, Phase::Idle);
        assert_eq!(s.lease_epoch, None);

        // Restore: downloading with the broker up, then stopped for the swap.
        s.enter(Phase::Downloading);
        assert!(!s.broker_stopped_by_agent);
        s.enter(Phase::Restoring);
        assert!(s.broker_stopped_by_agent);
        // Started again: idle. Could not be started: it stays recorded as
        // ours, so the daemon keeps trying to start it.
        s.enter(Phase::Starting);
        let mut started = s.clone();
        started.finish(true);
        assert!(!started.broker_stopped_by_agent);
        assert_eq!(started.phase, Phase::Idle);
        s.finish(false);
        assert!(s.broker_stopped_by_agent);
        assert!(s.phase.broker_may_be_down());
    }

    #[test]
    fn damaged_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{\"version\":1,\"phase\":\"stop").unwrap();
        let e = AgentState::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("broker runs"),
            "{e}"
        );
        fs::write(&path, b"{\"version\":1,\"phase\":\"idle\",\"evil\":1}").unwrap();
        assert!(AgentState::load(&path).is_err());
    }
}
