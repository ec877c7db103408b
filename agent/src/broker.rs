//! Broker control: stop and start the local broker with the configured
//! commands, and know from the log dirs themselves (Kafka's `.lock`) when
//! the process is really gone, whatever the process manager says.

use kafka_snapshot::cleanstop;
use kafka_snapshot::config::BrokerSection;
use kafka_snapshot::logdir;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Every log dir shows a clean stop ([`cleanstop::check`]: the broker's
    /// `.kafka_cleanshutdown`, a closed metadata log).
    Clean,
    /// Why not, per dir: the node died or was killed; do not archive.
    Unclean { reasons: Vec<String> },
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
        let reasons = self
            .metadata_log_closed(self.cfg.stop_timeout.saturating_sub(started.elapsed()))
            .await;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            clean = reasons.is_empty(),
            "broker stopped"
        );
        Ok(if reasons.is_empty() {
            Stopped::Clean
        } else {
            Stopped::Unclean { reasons }
        })
    }

    /// Why the node did not stop cleanly, per dir (empty: it did). On a
    /// broker or combined node the log manager releases `.lock` once the
    /// partition logs are closed, while the process still closes its
    /// metadata log (seen under systemd with `stop --no-block`): while every
    /// dir's partition logs are closed and only a metadata log is not yet,
    /// this waits for it, up to `limit` (at most 60 s).
    async fn metadata_log_closed(&self, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        let limit = limit.min(Duration::from_secs(60));
        loop {
            let failing: Vec<(&PathBuf, String)> = self
                .log_dirs
                .iter()
                .filter_map(|d| cleanstop::check(d).err().map(|e| (d, e)))
                .collect();
            let closing = !failing.is_empty()
                && failing
                    .iter()
                    .all(|(d, _)| cleanstop::partitions_closed(d).unwrap_or(false));
            if !closing || started.elapsed() >= limit {
                return failing.into_iter().map(|(_, e)| e).collect();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
    run_command(what, command, timeout, &[]).await
}

/// Runs `command` with `sh -c` and `env` added to its environment,
/// killing it after `timeout`; the error holds the tail of its stderr.
pub async fn run_command(
    what: &'static str,
    command: &str,
    timeout: Duration,
    env: &[(&str, String)],
) -> Result<(), BrokerError> {
    tracing::info!(command, "running {what} command");
    kafka_snapshot::command::run(command, timeout, env)
        .await
        .map_err(|detail| BrokerError::Command {
            what,
            command: command.to_string(),
            detail,
        })
}
