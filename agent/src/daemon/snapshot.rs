//! A snapshot under a lease: gate (for at most the lease's
//! `gate_timeout_ms`), stop, capture, restart, recovery check. With reflink
//! capture the lease is released as soon as the broker is back in every ISR
//! (`Recovered`) and the archive is built from staging without it, then
//! reported; with copy capture the snapshot is committed before the restart
//! and the release says `Committed`.

use super::lease::Loss;
use super::metrics::FailureReason;
use super::state::Work;
use super::Daemon;
use crate::cycle::{Archive, CycleError, Restarted};
use kafka_snapshot_model::protocol::{
    Lease, NoticeLevel, Outcome, Phase, ReportResult, SnapshotReport, SnapshotSummary,
};
use std::time::Duration;

impl Daemon {
    pub(super) async fn run_snapshot(&mut self, lease: Lease) {
        let epoch = lease.epoch;
        tracing::info!(
            broker = self.broker,
            epoch,
            ttl_ms = lease.ttl_ms,
            gate_timeout_ms = lease.gate_timeout_ms,
            cycle = ?lease.cycle_id,
            "snapshot lease granted"
        );
        let Some((store, mut session)) = self
            .begin_lease(&lease, Work::Snapshot, Phase::Gating, None, None)
            .await
        else {
            return;
        };
        let mut cycle = self.cycle(Some(store), session.interrupt());
        cycle.set_observer(self.observer(session.progress()));

        let gate_timeout = Duration::from_millis(lease.gate_timeout_ms);
        let result = match cycle.wait_safe(gate_timeout).await {
            Ok(()) => cycle.stop_capture_restart().await,
            Err(e) => Err(e),
        };
        session.stop();
        let loss = session.loss();

        match result {
            Ok(Restarted {
                snapshot_id,
                downtime_ms,
                unavailable_ms,
                archive: Archive::Pending(pending),
                post_start_error,
            }) => {
                self.metrics.downtime(downtime_ms, Some(unavailable_ms));
                self.post_start_failed(post_start_error, &snapshot_id, epoch)
                    .await;
                // Archiving before the release is sent: an agent killed
                // after the coordinator took it, before the state file
                // said so, must report the archive abandoned.
                let _ = self.update(|s| {
                    s.snapshot_id = Some(snapshot_id.clone());
                    s.enter(Phase::Archiving);
                });
                if loss.is_none() {
                    self.release(
                        epoch,
                        Outcome::Recovered {
                            snapshot_id: snapshot_id.clone(),
                            downtime_ms,
                        },
                    )
                    .await;
                }
                // From here only a shutdown interrupts: there is no lease
                // left to lose.
                cycle.set_interrupt(self.shutdown.clone());
                let result = match cycle.archive(*pending).await {
                    Ok(m) => {
                        let snapshot = SnapshotSummary::of(&m);
                        self.metrics.snapshot_committed(&m);
                        ReportResult::Committed { snapshot }
                    }
                    Err(e) => {
                        tracing::error!(snapshot = %snapshot_id, error = %e, "archiving failed");
                        self.metrics.failed(if self.shutting_down() {
                            FailureReason::Shutdown
                        } else {
                            FailureReason::Archive
                        });
                        ReportResult::Failed {
                            snapshot_id: snapshot_id.clone(),
                            reason: e.to_string(),
                        }
                    }
                };
                let report = SnapshotReport {
                    broker: self.broker,
                    epoch,
                    result,
                };
                match self.coord.report(&report, self.shutdown.clone()).await {
                    Ok(_) => tracing::info!(snapshot = %snapshot_id, "snapshot reported"),
                    Err(e) if e.is_stale() => {
                        tracing::warn!(snapshot = %snapshot_id, error = %e, "the coordinator refused the report")
                    }
                    Err(e) => {
                        // Left as Archiving: the next start reports it failed.
                        tracing::error!(snapshot = %snapshot_id, error = %e, "could not report the snapshot");
                        return;
                    }
                }
            }
            Ok(Restarted {
                snapshot_id,
                downtime_ms,
                unavailable_ms,
                archive: Archive::Committed(m),
                post_start_error,
            }) => {
                self.metrics.downtime(downtime_ms, Some(unavailable_ms));
                self.post_start_failed(post_start_error, &snapshot_id, epoch)
                    .await;
                self.metrics.snapshot_committed(&m);
                let _ = self.update(|s| s.snapshot_id = Some(snapshot_id));
                if loss.is_none() {
                    self.release(
                        epoch,
                        Outcome::Committed {
                            snapshot: SnapshotSummary::of(&m),
                            downtime_ms,
                        },
                    )
                    .await;
                } else {
                    self.report_loss(epoch, &loss, "after the snapshot was committed")
                        .await;
                }
            }
            Err(e) => self.end_failed(epoch, e, loss).await,
        }
        self.finish();
    }

    /// Tells the coordinator (an error event and the node's last error in
    /// `status`) and the metrics that the `post_start` hook failed after a
    /// snapshot that is itself complete.
    async fn post_start_failed(&self, error: Option<String>, snapshot_id: &str, epoch: u64) {
        let Some(error) = error else {
            return;
        };
        self.metrics.failed(FailureReason::Hook);
        let msg = format!(
            "the post_start hook failed after snapshot {snapshot_id} of node {} (the snapshot \
             is complete; whatever pre_stop paused may still be paused): {error}",
            self.broker
        );
        self.notice(NoticeLevel::Error, msg, Some(epoch)).await;
    }

    /// A lease whose work did not finish: say why, in the way the
    /// coordinator expects (a lost lease cannot be released).
    async fn end_failed(&mut self, epoch: u64, e: CycleError, loss: Option<Loss>) {
        let phase = self.snapshot_state().phase;
        self.metrics.failed(match (&e, &loss) {
            (_, Some(_)) => FailureReason::Lease,
            (_, None) if self.shutting_down() => FailureReason::Shutdown,
            (CycleError::NotSafe(_), None) => FailureReason::Gate,
            (CycleError::StopFailed(_) | CycleError::UncleanStop { .. }, None) => {
                FailureReason::Stop
            }
            (CycleError::Capture(_), None) => FailureReason::Capture,
            (CycleError::StartFailed { .. } | CycleError::StillStopping { .. }, None) => {
                FailureReason::Start
            }
            (CycleError::RecoveryTimeout { .. }, None) => FailureReason::Recovery,
            (CycleError::Commit(_), None) => FailureReason::Archive,
            (CycleError::Interrupted { .. }, None) => FailureReason::Shutdown,
            (CycleError::Setup(_) | CycleError::NotRecorded(_), None) => FailureReason::Setup,
            (CycleError::PreStopHook(_) | CycleError::PostStartHook { .. }, None) => {
                FailureReason::Hook
            }
            (CycleError::CopyDowntime { .. }, None) => FailureReason::CopyDowntime,
        });
        match (&e, &loss) {
            (_, Some(Loss::Stale(_))) => {
                self.report_loss(epoch, &loss, &format!("during {phase} ({e})"))
                    .await
            }
            (CycleError::NotSafe(report), None) => {
                tracing::warn!(reason = %report.summary(), "gate never passed: skipping");
                self.release(
                    epoch,
                    Outcome::Skipped {
                        reason: report.summary(),
                    },
                )
                .await;
            }
            _ => {
                let why = match (&loss, self.shutting_down()) {
                    (Some(Loss::Aborted), _) => {
                        format!("aborted by the coordinator: {}", gave_up(&e))
                    }
                    (Some(Loss::Expired(why)), _) => {
                        format!("lease expired on the agent ({why}): {}", gave_up(&e))
                    }
                    (_, true) => format!("the agent is shutting down: {e}"),
                    _ => e.to_string(),
                };
                match &e {
                    CycleError::StartFailed { .. } => tracing::error!("{why}"),
                    _ => tracing::warn!("{why}"),
                }
                self.release(
                    epoch,
                    Outcome::Failed {
                        reason: why,
                        broker_running: self.broker_running(),
                    },
                )
                .await;
            }
        }
    }
}

/// What an interrupted cycle did, for a reason that is not a shutdown.
fn gave_up(e: &CycleError) -> String {
    match e {
        CycleError::Interrupted { restarted: true } => {
            "gave up the snapshot; the broker was started again".into()
        }
        CycleError::Interrupted { restarted: false } => {
            "gave up the snapshot before the broker was stopped".into()
        }
        other => other.to_string(),
    }
}

impl Daemon {
    /// The lease was lost (409): it cannot be released; tell the operator.
    pub(super) async fn report_loss(&self, epoch: u64, loss: &Option<Loss>, when: &str) {
        let detail = match loss {
            Some(Loss::Stale(m)) => m.clone(),
            Some(Loss::Aborted) => "aborted".into(),
            Some(Loss::Expired(why)) => why.clone(),
            None => String::new(),
        };
        let running = self.broker_running();
        let message = format!(
            "lease {epoch} was lost {when}: {detail}; the work was given up and the broker {}",
            if running {
                "runs"
            } else {
                "IS DOWN (it could not be started)"
            }
        );
        let level = if running {
            NoticeLevel::Warning
        } else {
            NoticeLevel::Error
        };
        self.notice(level, message, Some(epoch)).await;
    }

    /// Back to idle; a broker that could not be started stays on record.
    pub(super) fn finish(&self) {
        let running = self.broker_running();
        if let Err(e) = self.update(|s| s.finish(running)) {
            tracing::error!(error = %e, "could not write the state file");
        }
    }
}
