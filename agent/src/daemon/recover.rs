//! What a starting daemon finishes before anything else: if its
//! predecessor (killed, crashed, power cut) had the broker down, start it
//! first, before the coordinator is even contacted; then clean up what the
//! interrupted work left, tell the coordinator what happened, and end the
//! old lease.

use super::state::{AgentState, Work};
use super::{Daemon, Released};
use kafka_snapshot::capture::{staging_root, StagingLock};
use kafka_snapshot::extract::remove_unfinished_restores;
use kafka_snapshot_model::error::Result;
use kafka_snapshot_model::protocol::{NoticeLevel, Outcome, Phase, ReportResult, SnapshotReport};

impl Daemon {
    pub(super) async fn recover(&mut self, previous: Option<AgentState>) -> Result<()> {
        let Some(prev) = previous else {
            return self.update(|_| {});
        };
        let interrupted = prev.phase != Phase::Idle || prev.lease_held;
        if !interrupted && !prev.broker_stopped_by_agent {
            return self.update(|_| {});
        }
        let work = match prev.work {
            Some(Work::Snapshot) => "snapshot",
            Some(Work::Restore) => "restore",
            None => "work",
        };
        tracing::warn!(
            broker = self.broker,
            phase = %prev.phase,
            epoch = ?prev.lease_epoch,
            stopped_by_agent = prev.broker_stopped_by_agent,
            "the previous agent run was interrupted; finishing what it left"
        );
        let mut what = Vec::new();
        let mut level = NoticeLevel::Warning;
        if prev.broker_stopped_by_agent || prev.phase.broker_may_be_down() {
            if self.broker_running() {
                what.push("the broker was already running again".to_string());
                self.update(|s| s.enter(Phase::Idle))?;
            } else {
                match self.start_broker_left_down().await {
                    Ok(()) => what.push(
                        "the broker it had stopped was started again and is back in every ISR"
                            .to_string(),
                    ),
                    Err(e) => {
                        level = NoticeLevel::Error;
                        what.push(e);
                    }
                }
            }
        }
        let cleaned = self.clean_leftovers();
        if !cleaned.is_empty() {
            what.push(format!("removed {}", cleaned.join(", ")));
        }
        let message = format!(
            "agent restarted after an interrupted {work} (phase {}, lease epoch {}{}): {}",
            prev.phase,
            prev.lease_epoch
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none".into()),
            prev.snapshot_id
                .as_deref()
                .map(|s| format!(", snapshot {s}"))
                .unwrap_or_default(),
            if what.is_empty() {
                "nothing was left to do".to_string()
            } else {
                what.join("; ")
            }
        );
        self.notice(level, message.clone(), prev.lease_epoch).await;
        // Whether the lease ended before this run: released by the
        // killed run (its state file not yet saying so), or expired.
        let mut ended_before = !prev.lease_held;
        if let (true, Some(epoch)) = (prev.lease_held, prev.lease_epoch) {
            let released = self
                .release(
                    epoch,
                    Outcome::Failed {
                        reason: message.clone(),
                        broker_running: self.broker_running(),
                    },
                )
                .await;
            ended_before = released == Released::Before;
        }
        // An archive the coordinator was told is being built (the lease
        // released as recovered) and that this run removed.
        if let (true, Phase::Archiving, Some(epoch), Some(id)) = (
            ended_before,
            prev.phase,
            prev.lease_epoch,
            prev.snapshot_id.clone(),
        ) {
            let r = SnapshotReport {
                broker: self.broker,
                epoch,
                result: ReportResult::Failed {
                    snapshot_id: id,
                    reason: "the agent stopped while archiving; the staged copy was removed".into(),
                },
            };
            if let Err(e) = self.coord.report(&r, self.shutdown.clone()).await {
                tracing::warn!(broker = self.broker, error = %e, "could not report the abandoned archive");
            }
        }
        let running = self.broker_running();
        self.update(|s| s.finish(running))
    }

    /// Starts the broker the agent had stopped and waits for it to be back
    /// in every ISR (progress is logged). The error says what is wrong.
    pub(super) async fn start_broker_left_down(&mut self) -> Result<(), String> {
        tracing::warn!(
            broker = self.broker,
            "the broker is down because of this agent: starting it before anything else"
        );
        let (tx, _rx) = tokio::sync::watch::channel((Phase::Starting, None));
        let mut cycle = self.cycle(None, self.shutdown.clone());
        cycle.set_observer(self.observer(tx));
        cycle.ensure_started().await.map_err(|e| e.to_string())?;
        cycle.wait_recovered().await.map_err(|e| e.to_string())?;
        self.update(|s| s.enter(Phase::Idle))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes staging and unfinished restores an interrupted run left;
    /// never the live log dirs or what a restore moved aside.
    pub(super) fn clean_leftovers(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let parents_exist = self
            .log_dirs
            .iter()
            .all(|d| d.parent().is_some_and(|p| p.is_dir()));
        if parents_exist {
            let mut staged = Vec::new();
            for d in &self.log_dirs {
                let Ok(root) = staging_root(d) else { continue };
                for ent in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                    let p = ent.path();
                    if ent.file_name() != ".lock" && !staged.contains(&p) {
                        staged.push(p);
                    }
                }
            }
            // Taking the staging lock removes whatever staging is there.
            match StagingLock::acquire(&self.log_dirs) {
                Ok(lock) => {
                    drop(lock);
                    removed.extend(staged.iter().map(|p| format!("staging {}", p.display())));
                }
                Err(e) => tracing::warn!(error = %e, "could not clean staging"),
            }
        }
        match remove_unfinished_restores(&self.log_dirs) {
            Ok(dirs) => removed.extend(dirs.iter().map(|d| d.display().to_string())),
            Err(e) => tracing::warn!(error = %e, "could not remove unfinished restores"),
        }
        removed
    }
}
