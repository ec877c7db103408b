//! A restore under a lease, with as little downtime as possible:
//!
//! 1. Downloading: find the snapshot, check it is of this cluster (the live
//!    cluster's cluster.id) and of this broker (node.id) and, if it is
//!    encrypted, that `encryption.identity_file` opens it; extract, decrypt
//!    and verify it into `<dir>.restoring-<id>` beside every log dir while the
//!    broker may still run.
//! 2. Gating: if the broker runs, the same gate as before a snapshot, for
//!    at most the lease's `gate_timeout_ms` (the download may have taken
//!    hours, and another broker may have gone down meanwhile). If it never
//!    passes, the order fails naming the partitions, the broker untouched
//!    and the extracted copy removed. A dead broker needs no gate.
//! 3. Restoring: record the stop in the state file (or give up, the broker
//!    untouched), stop the broker if it runs, move the log dirs aside to
//!    `<dir>.pre-restore-<time>` (never deleted), rename the restored dirs
//!    into place.
//! 4. Starting, Recovering: start the broker and wait until it is back in
//!    every ISR; release with `Restored`.
//!
//! Any failure after the stop starts the broker again (on its old data if
//! the swap had not happened yet) and releases with `Failed`.

use super::lease::Loss;
use super::state::Work;
use super::Daemon;
use crate::broker::Stopped;
use crate::cycle::{Cycle, CycleError};
use chrono::Utc;
use kafka_snapshot::catalog;
use kafka_snapshot::extract::{can_restore_owners, prepare, ExtractOptions, Prepared};
use kafka_snapshot::kafka::gate::GateReport;
use kafka_snapshot_model::manifest::Manifest;
use kafka_snapshot_model::protocol::{Lease, Outcome, Phase, RestoreOrder};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

impl Daemon {
    pub(super) async fn run_restore(&mut self, lease: Lease, order: RestoreOrder) {
        let epoch = lease.epoch;
        tracing::info!(
            broker = self.broker,
            epoch,
            order = order.id,
            snapshot = %order.snapshot_id,
            cluster = %order.cluster_id,
            force = order.force,
            "restore lease granted"
        );
        let Some((store, mut session)) = self
            .begin_lease(
                &lease,
                Work::Restore,
                Phase::Downloading,
                Some(order.snapshot_id.clone()),
                Some(order.id),
            )
            .await
        else {
            return;
        };
        let mut cycle = self.cycle(Some(store.clone()), session.interrupt());
        cycle.set_observer(self.observer(session.progress()));
        let gate_timeout = Duration::from_millis(lease.gate_timeout_ms);
        let result = self.restore(&mut cycle, store, &order, gate_timeout).await;
        session.stop();
        let loss = session.loss();
        match (&result, &loss) {
            (Ok(downtime_ms), None) => {
                self.metrics.downtime(*downtime_ms, None);
                self.metrics.restore_finished(true);
            }
            _ => self.metrics.restore_finished(false),
        }
        match (result, &loss) {
            (_, Some(Loss::Stale(_))) => {
                let phase = self.snapshot_state().phase;
                self.report_loss(epoch, &loss, &format!("during restore ({phase})"))
                    .await;
            }
            (Ok(downtime_ms), None) => {
                tracing::info!(
                    broker = self.broker,
                    snapshot = %order.snapshot_id,
                    downtime_ms,
                    "restore finished; the broker is back in every ISR"
                );
                self.release(
                    epoch,
                    Outcome::Restored {
                        snapshot_id: order.snapshot_id.clone(),
                        downtime_ms,
                    },
                )
                .await;
            }
            (result, _) => {
                let e = match result {
                    Err(e) => e,
                    Ok(_) => {
                        "the restore finished, but the lease ended before it could be released"
                            .into()
                    }
                };
                let why = match (&loss, self.shutting_down()) {
                    (Some(Loss::Aborted), _) => format!("aborted by the coordinator: {e}"),
                    (Some(Loss::Expired(why)), _) => {
                        format!("lease expired on the agent ({why}): {e}")
                    }
                    (_, true) => format!("the agent is shutting down: {e}"),
                    _ => e,
                };
                tracing::error!(broker = self.broker, snapshot = %order.snapshot_id, "restore failed: {why}");
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
        self.finish();
    }

    /// The restore itself; returns the downtime in ms, or why it failed
    /// (having started the broker again where it could).
    async fn restore(
        &mut self,
        cycle: &mut Cycle,
        store: Arc<dyn kafka_snapshot::storage::ColdStore>,
        order: &RestoreOrder,
        gate_timeout: Duration,
    ) -> Result<u64, String> {
        let (snap, m) = {
            let store = store.clone();
            let id = order.snapshot_id.clone();
            let cluster = order.cluster_id.clone();
            tokio::task::spawn_blocking(move || {
                let snap = catalog::find(store.as_ref(), &id, Some(&cluster), None)?;
                let m = catalog::load_manifest(store.as_ref(), &snap)?;
                Ok::<_, kafka_snapshot::Error>((snap, m))
            })
            .await
            .map_err(|e| format!("worker thread: {e}"))?
            .map_err(|e| e.to_string())?
        };
        self.check_identity(cycle, &m, order).await?;
        let targets = self.targets(&m)?;
        // An encrypted snapshot needs the identity before anything is
        // downloaded: read now (a replaced file is read anew), and checked
        // against the snapshot's recipients first thing in `prepare`.
        let identity = match &m.encryption {
            None => None,
            Some(_) => self
                .cfg
                .encryption
                .identity(&self.config_path)
                .map_err(|e| e.to_string())?,
        };

        let cancel = Arc::new(AtomicBool::new(false));
        let opts = ExtractOptions {
            targets: targets.clone(),
            allow_other_identity: order.force,
            replace_formatted: false,
            restore_owner: can_restore_owners(),
            broker_may_run: true,
            cancel: Some(cancel.clone()),
            identity,
        };
        let prepared: Prepared = {
            let snap = snap.clone();
            cycle
                .blocking(cancel, move || prepare(store.as_ref(), &snap, &opts))
                .await
                .map_err(|e| e.to_string())?
        };
        if cycle.shutting_down() {
            return Err("interrupted while downloading; the broker was not touched".into());
        }
        tracing::info!(
            broker = self.broker,
            snapshot = %m.snapshot_id,
            files = prepared.verify.files,
            bytes = prepared.verify.bytes,
            "snapshot extracted and verified beside the log dirs"
        );
        // After a download that may take hours: a test changes the cluster here.
        kafka_snapshot::pausepoint("restore-extracted");

        let running = cycle.control().is_running().map_err(|e| e.to_string())?;
        if running {
            // The download may have taken hours, and the cluster may have
            // lost another broker meanwhile: check it again, as before a
            // snapshot. A dead broker is restored without: stopping nothing
            // costs the cluster nothing.
            if let Err(e) = cycle.wait_safe(gate_timeout).await {
                return Err(not_stopped(e));
            }
        }
        // The broker goes down from here on: not without a record of it.
        cycle.enter_stop(Phase::Restoring).map_err(not_stopped)?;
        let stopped_at = Utc::now();
        if running {
            match cycle.control().stop().await {
                Ok(Stopped::Clean) => {}
                Ok(Stopped::Unclean { reasons }) => tracing::warn!(
                    reasons = reasons.join("; "),
                    "the broker stopped uncleanly; its data is being replaced anyway"
                ),
                Err(e) => {
                    drop(prepared);
                    let started = self.start_again(cycle).await;
                    return Err(format!("stopping the broker failed: {e}{started}"));
                }
            }
            kafka_snapshot::failpoint("after-stop");
        } else {
            tracing::info!(
                broker = self.broker,
                "the broker is not running: restoring a dead broker"
            );
        }
        if cycle.shutting_down() {
            drop(prepared);
            let started = self.start_again(cycle).await;
            return Err(format!(
                "interrupted before the log dirs were swapped{started}"
            ));
        }
        let swapped = tokio::task::spawn_blocking(move || prepared.swap())
            .await
            .map_err(|e| format!("worker thread: {e}"));
        match swapped {
            Ok(Ok(report)) => {
                for r in &report.restored {
                    tracing::info!(
                        target = %r.target.display(),
                        aside = ?r.moved_aside,
                        "log dir restored"
                    );
                }
            }
            Ok(Err(e)) => {
                let started = self.start_again(cycle).await;
                return Err(format!("swapping the log dirs failed: {e}{started}"));
            }
            Err(e) => {
                let started = self.start_again(cycle).await;
                return Err(format!("{e}{started}"));
            }
        }
        let restarted_at = cycle.ensure_started().await.map_err(|e| e.to_string())?;
        cycle.wait_recovered().await.map_err(|e| e.to_string())?;
        Ok((restarted_at - stopped_at).num_milliseconds().max(0) as u64)
    }

    /// Starts the broker after a failed restore; says how that went.
    pub(super) async fn start_again(&self, cycle: &Cycle) -> String {
        match cycle.ensure_started().await {
            Ok(_) => "; the broker was started again".into(),
            Err(e) => format!("; {e}"),
        }
    }

    /// The snapshot must be of the live cluster and of this broker, unless
    /// the order forces it.
    async fn check_identity(
        &self,
        cycle: &Cycle,
        m: &Manifest,
        order: &RestoreOrder,
    ) -> Result<(), String> {
        let force = order.force;
        match cycle.client().cluster_id().await {
            Ok(live) if live == m.cluster_id => {}
            Ok(live) => {
                let msg = format!(
                    "snapshot {} is of cluster {} but the live cluster is {live}",
                    m.snapshot_id, m.cluster_id
                );
                if !force {
                    return Err(format!(
                        "{msg}; refusing (force the order to restore anyway)"
                    ));
                }
                tracing::warn!("{msg}; restoring anyway (forced)");
            }
            Err(e) => {
                let msg = format!(
                    "cannot confirm that snapshot {} (cluster {}) is of the live cluster: {e}",
                    m.snapshot_id, m.cluster_id
                );
                if !force {
                    return Err(format!(
                        "{msg}; refusing (force the order if the whole cluster is being rebuilt)"
                    ));
                }
                tracing::warn!("{msg}; restoring anyway (forced)");
            }
        }
        let local = super::local_node_id(&self.cfg, &self.log_dirs)
            .unwrap_or((self.broker, "the agent's state file".into()));
        if local.0 != m.node_id {
            let msg = format!(
                "snapshot {} is of broker {} but this is broker {} ({})",
                m.snapshot_id, m.node_id, local.0, local.1
            );
            if !force {
                return Err(format!(
                    "{msg}; refusing (force the order to restore anyway)"
                ));
            }
            tracing::warn!("{msg}; restoring anyway (forced)");
        }
        Ok(())
    }

    /// Where each of the snapshot's log dirs goes: the configured log dir
    /// with the same path, else (same number of dirs) the one at the same
    /// position.
    pub(super) fn targets(&self, m: &Manifest) -> Result<Vec<PathBuf>, String> {
        let by_path: Option<Vec<PathBuf>> = m
            .log_dirs
            .iter()
            .map(|d| {
                let p = PathBuf::from(&d.path);
                self.log_dirs.contains(&p).then_some(p)
            })
            .collect();
        if let Some(t) = by_path {
            return Ok(t);
        }
        if m.log_dirs.len() == self.log_dirs.len() {
            tracing::warn!(
                "the snapshot's log dirs ({}) are not this broker's; restoring them in order into {}",
                m.log_dirs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>().join(", "),
                self.log_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            );
            return Ok(self.log_dirs.clone());
        }
        Err(format!(
            "snapshot {} holds {} log dirs ({}) but this broker has {} ({})",
            m.snapshot_id,
            m.log_dirs.len(),
            m.log_dirs
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.log_dirs.len(),
            self.log_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Why a restore ended before the broker was stopped (the extracted copy
/// is removed as the restore returns).
fn not_stopped(e: CycleError) -> String {
    let why = match e {
        CycleError::NotSafe(report) => format!(
            "{}; the gate did not pass within the lease's gate timeout",
            gate_detail(&report)
        ),
        CycleError::NotRecorded(_) => return e.to_string(),
        other => other.to_string(),
    };
    format!("the broker was not stopped: {why}")
}

/// The gate's summary with the partitions (or dirs) behind each failed
/// condition, so that the failed order says what to look at.
fn gate_detail(report: &GateReport) -> String {
    let listed: Vec<String> = report
        .failed()
        .filter(|c| !c.partitions.is_empty())
        .map(|c| {
            let more = c.count.saturating_sub(c.partitions.len());
            format!(
                "{:?}: {}{}",
                c.id,
                c.partitions.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        })
        .collect();
    if listed.is_empty() {
        report.summary()
    } else {
        format!("{} [{}]", report.summary(), listed.join("; "))
    }
}
