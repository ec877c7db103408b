//! This node's part of a whole-cluster restore, under a lease every node of
//! the cluster holds at once. The cluster is lost: nothing here asks it
//! whether a node may stop. What keeps the nodes in step is the
//! coordinator's answer to each heartbeat ([`ClusterGo`]):
//!
//! 1. Preparing: check the snapshot is of the order's cluster and of this
//!    node, that this host has as many log dirs as the snapshot, then
//!    extract, decrypt and verify it beside the log dirs; a controller's
//!    copy loses its `quorum-state` (see
//!    [`kafka_snapshot::extract::Prepared::drop_quorum_state`]).
//!    The node is not touched; a failure here fails the order with every
//!    node untouched.
//! 2. Prepared: wait until every node is ([`ClusterGo::Swap`]).
//! 3. Stop the node if it runs (recorded first in the state file), move
//!    its log dirs aside and the restored ones in (a host whose log dirs
//!    are missing or empty, such as a new host, gets them created).
//! 4. Swapped: wait until the node may start ([`ClusterGo::Start`]):
//!    controllers once every node is swapped, brokers once every
//!    controller saw the quorum elect a leader.
//! 5. Start it. A controller waits until its controllers' quorum has a
//!    leader with this node among the voters; a broker until it is
//!    registered. Then the lease is released `Restored`; the coordinator
//!    waits for the whole cluster to be in sync.
//!
//! An abort (the order failed elsewhere, or was cancelled), a lost lease or
//! a shutdown before the stop leaves the node as it was; after the stop,
//! the node is started again on whatever data is in place.

use super::lease::LeaseSession;
use super::state::Work;
use super::Daemon;
use crate::broker::Stopped;
use crate::cycle::Cycle;
use chrono::Utc;
use kafka_snapshot::catalog;
use kafka_snapshot::extract::{can_restore_owners, prepare, ExtractOptions};
use kafka_snapshot_model::protocol::{
    ClusterGo, ClusterRestoreOrder, ClusterStep, Lease, Outcome, Phase,
};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a started node looks whether it is up.
const UP_POLL: Duration = Duration::from_millis(500);

impl Daemon {
    pub(super) async fn run_cluster_restore(&mut self, lease: Lease, order: ClusterRestoreOrder) {
        let epoch = lease.epoch;
        tracing::warn!(
            broker = self.broker,
            epoch,
            order = order.id,
            set = %order.set_id,
            snapshot = %order.snapshot_id,
            cluster = %order.cluster_id,
            "whole-cluster restore: this node's part begins"
        );
        let Some((store, mut session)) = self
            .begin_lease(
                &lease,
                Work::Restore,
                Phase::Downloading,
                Some(order.snapshot_id.clone()),
                None,
            )
            .await
        else {
            return;
        };
        session.set_step(ClusterStep::Preparing);
        let mut cycle = self.cycle(Some(store.clone()), session.interrupt());
        cycle.set_observer(self.observer(session.progress()));
        let result = self
            .cluster_restore(&mut cycle, store, &order, &session)
            .await;
        session.stop();
        let loss = session.loss();
        self.metrics
            .restore_finished(result.is_ok() && loss.is_none());
        let outcome = match (result, &loss) {
            (Ok(downtime_ms), None) => {
                self.metrics.downtime(downtime_ms, None);
                tracing::info!(
                    broker = self.broker,
                    snapshot = %order.snapshot_id,
                    "whole-cluster restore: this node runs on the set's data"
                );
                Outcome::Restored {
                    snapshot_id: order.snapshot_id.clone(),
                    downtime_ms,
                }
            }
            (result, _) => {
                let e = result.err().unwrap_or_else(|| {
                    "this node's part finished, but the lease ended before it could be released"
                        .into()
                });
                let why = match (&loss, self.shutting_down()) {
                    (Some(super::lease::Loss::Aborted), _) => {
                        format!("aborted by the coordinator: {e}")
                    }
                    (Some(l), _) => format!("lease lost ({l:?}): {e}"),
                    (None, true) => format!("the agent is shutting down: {e}"),
                    (None, false) => e,
                };
                tracing::error!(broker = self.broker, "whole-cluster restore failed: {why}");
                Outcome::Failed {
                    reason: why,
                    broker_running: self.broker_running(),
                }
            }
        };
        self.release(epoch, outcome).await;
        self.finish();
    }

    async fn cluster_restore(
        &mut self,
        cycle: &mut Cycle,
        store: Arc<dyn kafka_snapshot::storage::ColdStore>,
        order: &ClusterRestoreOrder,
        session: &LeaseSession,
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
        if m.cluster_id != order.cluster_id {
            return Err(format!(
                "snapshot {} is of cluster {}, not {} as the order says",
                m.snapshot_id, m.cluster_id, order.cluster_id
            ));
        }
        let local = super::local_node_id(&self.cfg, &self.log_dirs)
            .unwrap_or((self.broker, "the agent's state file".into()));
        if local.0 != m.node_id {
            return Err(format!(
                "snapshot {} is of node {} but this is node {} ({}); nothing was touched",
                m.snapshot_id, m.node_id, local.0, local.1
            ));
        }
        // Before anything is downloaded: a host with another number of log
        // dirs fails here, and no node of the cluster is stopped.
        let targets = self.targets(&m)?;
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
            targets,
            allow_other_identity: false,
            replace_formatted: true,
            restore_owner: can_restore_owners(),
            broker_may_run: true,
            cancel: Some(cancel.clone()),
            identity,
        };
        let prepared = {
            let snap = snap.clone();
            cycle
                .blocking(cancel, move || prepare(store.as_ref(), &snap, &opts))
                .await
                .map_err(|e| format!("{e}; nothing was touched"))?
        };
        if cycle.shutting_down() {
            return Err("interrupted while downloading; nothing was touched".into());
        }
        tracing::info!(
            broker = self.broker,
            snapshot = %m.snapshot_id,
            files = prepared.verify.files,
            bytes = prepared.verify.bytes,
            "snapshot extracted and verified beside the log dirs; waiting for every node"
        );
        if self.role.is_controller() {
            let removed = prepared
                .drop_quorum_state()
                .map_err(|e| format!("{e}; nothing was touched"))?;
            for f in removed {
                tracing::info!(
                    file = %f.display(),
                    "the snapshot's election state left out: the restored quorum elects anew"
                );
            }
        }
        session.set_step(ClusterStep::Prepared);
        self.wait_go(
            session,
            ClusterGo::Swap,
            Phase::Downloading,
            "extracted and verified; waiting until every node is",
        )
        .await
        .map_err(|e| format!("{e}; nothing was touched"))?;

        let running = cycle.control().is_running().map_err(|e| e.to_string())?;
        cycle
            .enter_stop(Phase::Restoring)
            .map_err(|e| format!("the node was not stopped: {e}"))?;
        let stopped_at = Utc::now();
        if running {
            match cycle.control().stop().await {
                Ok(Stopped::Clean) => {}
                Ok(Stopped::Unclean { reasons }) => tracing::warn!(
                    reasons = reasons.join("; "),
                    "the node stopped uncleanly; its data is being replaced anyway"
                ),
                Err(e) => {
                    drop(prepared);
                    let started = self.start_again(cycle).await;
                    return Err(format!("stopping the node failed: {e}{started}"));
                }
            }
        }
        let swapped = tokio::task::spawn_blocking(move || prepared.swap())
            .await
            .map_err(|e| format!("worker thread: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match swapped {
            Ok(report) => {
                for r in &report.restored {
                    tracing::info!(target = %r.target.display(), aside = ?r.moved_aside, "log dir restored");
                }
            }
            Err(e) => {
                let started = self.start_again(cycle).await;
                return Err(format!("swapping the log dirs failed: {e}{started}"));
            }
        }
        session.set_step(ClusterStep::Swapped);
        let waited = self
            .wait_go(
                session,
                ClusterGo::Start,
                Phase::Restoring,
                if self.role.is_controller() {
                    "log dirs restored; waiting until every node is"
                } else {
                    "log dirs restored; waiting until every node is, and the controllers' quorum has a leader"
                },
            )
            .await;
        if let Err(e) = waited {
            let started = self.start_again(cycle).await;
            return Err(format!("{e} (the log dirs were restored){started}"));
        }
        let restarted_at = cycle.ensure_started().await.map_err(|e| e.to_string())?;
        self.wait_up(cycle, session).await?;
        Ok((restarted_at - stopped_at).num_milliseconds().max(0) as u64)
    }

    /// Waits until the coordinator lets this node go as far as `to`,
    /// telling it `progress` meanwhile. Gives up when the lease does
    /// (aborted, lost, shutdown).
    async fn wait_go(
        &self,
        session: &LeaseSession,
        to: ClusterGo,
        phase: Phase,
        progress: &str,
    ) -> Result<(), String> {
        let mut go = session.go();
        let mut interrupt = session.interrupt();
        session
            .progress()
            .send_replace((phase, Some(progress.to_string())));
        loop {
            if *interrupt.borrow() {
                return Err(format!("given up while {progress}"));
            }
            if go.borrow().is_some_and(|g| g >= to) {
                return Ok(());
            }
            tokio::select! {
                r = go.changed() => if r.is_err() {
                    return Err("the heartbeats stopped".into());
                },
                _ = interrupt.changed() => {}
            }
        }
    }

    /// After the start: a controller until its quorum has a leader and
    /// this node is a caught-up voter by fetches of its new process (asked
    /// on the controllers' listener, since no broker may run yet); a
    /// broker until it is registered. For at most `broker.recovery_timeout`.
    async fn wait_up(&self, cycle: &Cycle, session: &LeaseSession) -> Result<(), String> {
        let started = Instant::now();
        let timeout = self.cfg.broker.recovery_timeout;
        let controllers = match self.role.is_controller() {
            true => Some(self.controller_endpoints()?),
            false => None,
        };
        let interrupt = session.interrupt();
        let progress = session.progress();
        let mut quorum_up = controllers.is_none();
        loop {
            if !quorum_up {
                if let Some((addrs, plaintext)) = &controllers {
                    let why = match cycle.client().controllers_quorum(addrs, *plaintext).await {
                        // A caught-up voter, by fetches of this process
                        // (the leader's entry may predate the restart).
                        Ok(q)
                            if q.leader.is_some()
                                && q.voter(self.broker).is_some_and(|v| q.behind(v).is_none())
                                && cycle.voter_entry_is_fresh() =>
                        {
                            quorum_up = true;
                            session.set_step(ClusterStep::Started);
                            tracing::info!(
                                broker = self.broker,
                                leader = ?q.leader,
                                "the controllers' quorum has a leader"
                            );
                            None
                        }
                        Ok(q) => Some(match (q.leader, q.voter(self.broker)) {
                            (None, _) => "the quorum has no leader".to_string(),
                            (Some(_), None) => {
                                format!("controller {} is not a voter of the quorum", self.broker)
                            }
                            (Some(l), Some(v)) => q.behind(v).unwrap_or_else(|| {
                                format!("leader {l}; this voter's entry is not fresh yet")
                            }),
                        }),
                        Err(e) => Some(e),
                    };
                    if let Some(why) = why {
                        cycle.phase(
                            Phase::Recovering,
                            Some(format!("waiting for the quorum: {why}")),
                        );
                    }
                }
            }
            if quorum_up {
                if !self.role.is_broker() {
                    return Ok(());
                }
                session.set_step(ClusterStep::Started);
                match cycle.client().view_with(false).await {
                    Ok(v) if v.brokers.contains(&self.broker) => return Ok(()),
                    Ok(v) => cycle.phase(
                        Phase::Recovering,
                        Some(format!(
                            "waiting to be registered (registered: {:?})",
                            v.brokers
                        )),
                    ),
                    Err(e) => cycle.phase(
                        Phase::Recovering,
                        Some(format!("waiting to be registered: {e}")),
                    ),
                }
            }
            if started.elapsed() >= timeout {
                let (_, last) = progress.borrow().clone();
                return Err(format!(
                    "started, but not up within broker.recovery_timeout ({}s): {}; the node runs",
                    timeout.as_secs(),
                    last.unwrap_or_default()
                ));
            }
            if sleep_or(&interrupt, UP_POLL).await {
                return Err("given up while waiting for the started node; it runs".into());
            }
        }
    }

    /// The controllers' addresses and whether their listener is plaintext,
    /// from this node's server.properties.
    fn controller_endpoints(&self) -> Result<(Vec<String>, bool), String> {
        let path = self.cfg.broker.server_properties.as_ref().ok_or(
            "a controller's part in a whole-cluster restore needs broker.server_properties, \
             to find its quorum",
        )?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        kafka_snapshot::kafka::controller_endpoints(&kafka_snapshot::props::parse(&text))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Sleeps `d`; true if `interrupt` turned (or is) true.
async fn sleep_or(interrupt: &watch::Receiver<bool>, d: Duration) -> bool {
    let mut i = interrupt.clone();
    if *i.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *i.borrow(),
        r = i.changed() => r.is_ok() && *i.borrow(),
    }
}
