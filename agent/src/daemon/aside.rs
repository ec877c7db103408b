//! What restores moved aside on this host (`<dir>.pre-restore-<time>`):
//! reported with every poll (the coordinator's `status` lists it), counted
//! in the metrics, and removed only when `restore.remove_moved_aside_after`
//! is set, that long after the restore, while the agent is idle and the
//! node runs and is back in every ISR.

use super::Daemon;
use chrono::Utc;
use kafka_snapshot::aside::{self, MovedAside};
use kafka_snapshot::kafka::gate::recovery;
use kafka_snapshot_model::protocol::{MovedAsideDir, NoticeLevel, Phase};

impl Daemon {
    /// Lists what restores moved aside, removes what is due, and returns
    /// what is left as the poll reports it. A listing that fails keeps
    /// the last one (logged): the dirs did not go away.
    pub(super) async fn moved_aside(&mut self) -> Vec<MovedAsideDir> {
        let mut listed = match self.list_moved_aside().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(broker = self.broker, error = %e, "cannot list what restores moved aside");
                return self.aside.reported.clone();
            }
        };
        let keep = self.cfg.restore.remove_moved_aside_after;
        if let Some(keep) = keep {
            let due = aside::due(&listed, keep, Utc::now());
            let due: Vec<MovedAside> = due
                .into_iter()
                .filter(|m| {
                    self.aside
                        .failed
                        .get(&m.path)
                        .is_none_or(|at| at.elapsed() >= RETRY_FAILED_REMOVAL)
                })
                .collect();
            if !due.is_empty() && self.healthy_for_removal().await {
                for m in due {
                    if self.remove_moved_aside(&m, keep).await {
                        listed.retain(|l| l.path != m.path);
                    }
                }
            }
        }
        let bytes = listed.iter().map(|m| m.bytes).sum();
        self.metrics.moved_aside(listed.len(), bytes);
        let reported: Vec<MovedAsideDir> = listed
            .iter()
            .map(|m| MovedAsideDir {
                path: m.path.display().to_string(),
                moved_at: m.moved_at,
                bytes: m.bytes,
                remove_after: keep.and_then(|k| {
                    let k = chrono::Duration::from_std(k).ok()?;
                    m.moved_at.map(|t| t + k)
                }),
            })
            .collect();
        self.aside.reported = reported.clone();
        reported
    }

    async fn list_moved_aside(&mut self) -> Result<Vec<MovedAside>, String> {
        let dirs = self.log_dirs.clone();
        let mut sizes = std::mem::take(&mut self.aside.sizes);
        let (listed, sizes) = tokio::task::spawn_blocking(move || {
            let l = aside::list(&dirs, &mut sizes);
            (l, sizes)
        })
        .await
        .map_err(|e| format!("worker thread: {e}"))?;
        self.aside.sizes = sizes;
        let listed = listed.map_err(|e| e.to_string())?;
        // A log dir is never what was moved aside, whatever it is named.
        Ok(listed
            .into_iter()
            .filter(|m| !self.log_dirs.contains(&m.path))
            .collect())
    }

    /// Idle, the node running and back in every ISR (a caught-up voter,
    /// for a controller): the restore that moved the data aside is
    /// behind it.
    async fn healthy_for_removal(&self) -> bool {
        let s = self.snapshot_state();
        if s.lease_held || s.phase != Phase::Idle || s.broker_stopped_by_agent {
            return false;
        }
        if !self.broker_running() {
            tracing::info!(
                broker = self.broker,
                "moved-aside data is due for removal, but the node is not running: kept"
            );
            return false;
        }
        match self.kafka.view().await {
            Ok(v) => {
                let r = recovery(&v, self.broker, self.role);
                if !r.recovered() {
                    tracing::info!(
                        broker = self.broker,
                        progress = %r.summary(),
                        "moved-aside data is due for removal, but the node is not back in sync: kept"
                    );
                }
                r.recovered()
            }
            Err(e) => {
                tracing::info!(
                    broker = self.broker,
                    error = %e,
                    "moved-aside data is due for removal, but the cluster cannot be read: kept"
                );
                false
            }
        }
    }

    /// Removes one moved-aside dir and tells the coordinator; whether it
    /// is gone.
    async fn remove_moved_aside(&mut self, m: &MovedAside, keep: std::time::Duration) -> bool {
        let target = m.clone();
        let removed = tokio::task::spawn_blocking(move || aside::remove(&target))
            .await
            .map_err(|e| format!("worker thread: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let when = m
            .moved_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        match removed {
            Ok(()) => {
                let message = format!(
                    "removed {} ({} MiB), the data of {} a restore moved aside at {when}: \
                     restore.remove_moved_aside_after ({}s) has passed and node {} is in sync",
                    m.path.display(),
                    m.bytes >> 20,
                    m.log_dir.display(),
                    keep.as_secs(),
                    self.broker
                );
                tracing::warn!(broker = self.broker, path = %m.path.display(), "{message}");
                self.notice(NoticeLevel::Info, message, None).await;
                self.aside.failed.remove(&m.path);
                true
            }
            Err(e) => {
                let message = format!(
                    "could not remove {}, moved aside by a restore at {when}: {e}",
                    m.path.display()
                );
                tracing::error!(broker = self.broker, "{message}");
                self.notice(NoticeLevel::Warning, message, None).await;
                self.aside
                    .failed
                    .insert(m.path.clone(), std::time::Instant::now());
                false
            }
        }
    }
}

/// What the daemon keeps between polls about moved-aside data.
#[derive(Debug, Default)]
pub(super) struct AsideCache {
    /// The size of each dir, measured once.
    sizes: std::collections::HashMap<std::path::PathBuf, u64>,
    /// What the last poll reported.
    reported: Vec<MovedAsideDir>,
    /// Removals that failed, and when: tried again after
    /// [`RETRY_FAILED_REMOVAL`], not at every poll.
    failed: std::collections::HashMap<std::path::PathBuf, std::time::Instant>,
}

const RETRY_FAILED_REMOVAL: std::time::Duration = std::time::Duration::from_secs(3600);
