//! Broker control: stop and start the local broker with the configured
//! commands, and know from the log dirs themselves (Kafka's `.lock`) when
//! the process is really gone, whatever the process manager says.

use kafka_snapshot::config::BrokerSection;
use kafka_snapshot::logdir::{self, CLEAN_SHUTDOWN};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often the log dirs' locks are probed while waiting for a stop. A
/// probe is an open and a non-blocking flock per log dir; every poll
/// interval of delay after the broker exited is downtime.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{what} command `{command}` failed: {detail}")]
    Command {
        what: &'static str,
        command: String,
        detail: String,
    },
    #[error("broker did not exit within {timeout:?} after `{command}`: {locked} still locked")]
    StopTimeout {
        command: String,
        timeout: Duration,
        locked: String,
    },
    #[error("checking log dir locks: {0}")]
    Lock(String),
}

/// How the broker stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Every log dir has `.kafka_cleanshutdown`.
    Clean,
    /// These dirs lack it: the broker died or was killed; do not archive.
    Unclean { missing: Vec<PathBuf> },
}

pub struct BrokerControl {
    cfg: BrokerSection,
    log_dirs: Vec<PathBuf>,
}

impl BrokerControl {
    pub fn new(cfg: &BrokerSection, log_dirs: Vec<PathBuf>) -> Self {
        BrokerControl {
            cfg: cfg.clone(),
            log_dirs,
        }
    }

    /// Runs the stop command, then waits until no process holds any log
    /// dir's `.lock`. On [`BrokerError::StopTimeout`] the caller must start
    /// the broker again.
    pub async fn stop(&self) -> Result<Stopped, BrokerError> {
        let started = Instant::now();
        run("stop", &self.cfg.stop_command, self.cfg.command_timeout).await?;
        let locked = self
            .wait_exited(self.cfg.stop_timeout.saturating_sub(started.elapsed()))
            .await?;
        if !locked.is_empty() {
            return Err(BrokerError::StopTimeout {
                command: self.cfg.stop_command.clone(),
                timeout: self.cfg.stop_timeout,
                locked: locked.join(", "),
            });
        }
        let missing: Vec<PathBuf> = self
            .log_dirs
            .iter()
            .filter(|d| !d.join(CLEAN_SHUTDOWN).exists())
            .cloned()
            .collect();
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            clean = missing.is_empty(),
            "broker stopped"
        );
        Ok(if missing.is_empty() {
            Stopped::Clean
        } else {
            Stopped::Unclean { missing }
        })
    }

    /// Waits up to `limit` until no process holds any log dir's `.lock`;
    /// returns the dirs still locked (empty once the broker has exited).
    pub async fn wait_exited(&self, limit: Duration) -> Result<Vec<String>, BrokerError> {
        let started = Instant::now();
        loop {
            let locked = self.locked_dirs()?;
            if locked.is_empty() || started.elapsed() >= limit {
                return Ok(locked);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn stop_timeout(&self) -> Duration {
        self.cfg.stop_timeout
    }

    pub async fn start(&self) -> Result<(), BrokerError> {
        run("start", &self.cfg.start_command, self.cfg.command_timeout).await?;
        tracing::info!("broker start command succeeded");
        Ok(())
    }

    /// Log dirs whose `.lock` some process holds (the broker runs).
    pub fn locked_dirs(&self) -> Result<Vec<String>, BrokerError> {
        let mut locked = Vec::new();
        for d in &self.log_dirs {
            match logdir::lock_log_dir(d) {
                Ok(_held_briefly) => {}
                Err(kafka_snapshot::Error::BrokerRunning { .. }) => {
                    locked.push(d.display().to_string())
                }
                Err(e) => return Err(BrokerError::Lock(e.to_string())),
            }
        }
        Ok(locked)
    }

    pub fn is_running(&self) -> Result<bool, BrokerError> {
        Ok(!self.locked_dirs()?.is_empty())
    }
}

/// Runs `command` with `sh -c`, killing it after `timeout`.
async fn run(what: &'static str, command: &str, timeout: Duration) -> Result<(), BrokerError> {
    let fail = |detail: String| BrokerError::Command {
        what,
        command: command.to_string(),
        detail,
    };
    tracing::info!(command, "running {what} command");
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run: {e}")))?;
    let mut stderr = child.stderr.take().expect("piped");
    let waited = tokio::time::timeout(timeout, async {
        let mut err = Vec::new();
        // Keep the tail only: a chatty script must not grow our memory.
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    err.extend_from_slice(&buf[..n]);
                    if err.len() > 8192 {
                        err.drain(..err.len() - 8192);
                    }
                }
            }
        }
        (child.wait().await, err)
    })
    .await;
    match waited {
        Err(_) => Err(fail(format!("still running after {timeout:?}; killed"))),
        Ok((Err(e), _)) => Err(fail(format!("waiting for it: {e}"))),
        Ok((Ok(status), err)) if !status.success() => {
            let tail = String::from_utf8_lossy(&err).trim().to_string();
            Err(fail(format!(
                "{status}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            )))
        }
        Ok(_) => Ok(()),
    }
}
