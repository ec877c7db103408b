//! The agent daemon, `kafka-snapshot-agent run`: polls the coordinator and
//! does what it is leased to do, one thing at a time.
//!
//! - [`client`]: the HTTP client to the coordinator.
//! - [`state`]: the state file that survives the agent.
//! - [`lease`]: heartbeats and losing a lease.
//! - `recover`: what a (re)started daemon finishes first: the broker its
//!   predecessor stopped is started before the coordinator is contacted.
//! - `snapshot`, `restore` and `cluster_restore`: the work under a lease.
//! - [`metrics`]: the Prometheus endpoint on `[metrics] listen`.
//!
//! The broker is never left stopped because of the agent: a lost lease,
//! an abort, a failure or SIGTERM while it is down starts it again first.

mod aside;
pub mod client;
mod cluster_restore;
pub mod lease;
pub mod metrics;
mod recover;
mod restore;
mod snapshot;
pub mod state;

use crate::broker::BrokerControl;
use crate::cycle::{Cycle, PhaseObserver};
use client::{CallError, CoordinatorClient};
use kafka_snapshot::config::{AgentConfig, CoordinatorSection, NodeRole};
use kafka_snapshot::kafka::fetch::KafkaClient;
use kafka_snapshot::logdir;
use kafka_snapshot::storage::{ColdStore, StoreOptions};
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::protocol::{
    Action, Lease, Notice, NoticeLevel, Outcome, Phase, PollRequest, Release, PROTOCOL_VERSION,
};
use lease::{LeaseSession, Progress};
use state::{AgentState, Work};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a release is retried in normal operation, and at shutdown
/// (which must finish within a few minutes).
const RELEASE_DEADLINE: Duration = Duration::from_secs(300);
const RELEASE_DEADLINE_AT_SHUTDOWN: Duration = Duration::from_secs(30);

/// Runs the daemon until `shutdown` turns true.
pub async fn run(
    cfg: AgentConfig,
    config_path: &Path,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let coord_cfg = cfg.coordinator(config_path)?.clone();
    let kafka_cfg = cfg.kafka(config_path, "the daemon")?.clone();
    let log_dirs = cfg.log_dirs()?;
    let _lock = state::StateLock::acquire(&coord_cfg.state_file)?;
    let previous = AgentState::load(&coord_cfg.state_file)?;
    let broker = resolve_broker(&cfg, &log_dirs, previous.as_ref())?;
    let role = cfg.role(config_path)?;
    let kafka = Arc::new(
        KafkaClient::new(&kafka_cfg)
            .map_err(Error::Usage)?
            .with_quorum(role.is_controller()),
    );
    let coord = Arc::new(CoordinatorClient::new(&coord_cfg, config_path, broker)?);
    let control = BrokerControl::new(&cfg.broker, log_dirs.clone());
    let state = previous
        .clone()
        .map(|mut s| {
            s.broker = Some(broker);
            s
        })
        .unwrap_or_else(|| AgentState::idle(Some(broker)));
    let metrics = metrics::Metrics::new(broker);
    metrics.observe(state.phase, state.broker_stopped_by_agent, state.lease_held);
    // Up before the recovery, so a broker left down shows while it is
    // started again. Without the endpoint the agent still does its work.
    match metrics::bind(cfg.metrics.listen).await {
        Ok(l) => {
            tracing::info!(broker, listen = %cfg.metrics.listen, "metrics endpoint listening");
            tokio::spawn(metrics::serve(l, metrics.clone(), shutdown.clone()));
        }
        Err(e) => tracing::error!(
            broker,
            listen = %cfg.metrics.listen,
            error = %e,
            "cannot listen for metrics (metrics.listen); snapshots go on without the endpoint"
        ),
    }
    let mut d = Daemon {
        state_path: coord_cfg.state_file.clone(),
        coord_cfg,
        cfg,
        config_path: config_path.to_path_buf(),
        broker,
        role,
        log_dirs,
        kafka,
        coord,
        control,
        state: Arc::new(Mutex::new(state)),
        metrics,
        shutdown,
        instance: instance_id()?,
        aside: aside::AsideCache::default(),
    };
    tracing::info!(broker, instance = %d.instance, state_file = %d.state_path.display(), "agent daemon starting");
    d.recover(previous).await?;
    d.on_ready();
    d.serve().await;
    tracing::info!(broker, "agent daemon stopped");
    Ok(())
}

/// 64 random bits, hex: which agent process polls.
fn instance_id() -> Result<String> {
    kafka_snapshot::random::random_hex(8, "the agent's instance id")
}

/// The broker this host runs: `node.id` (or `broker.id`) from
/// server.properties, else a log dir's meta.properties, else what the state
/// file remembers (log dirs wiped before a restore).
fn resolve_broker(
    cfg: &AgentConfig,
    log_dirs: &[PathBuf],
    state: Option<&AgentState>,
) -> Result<i32> {
    if let Some((id, source)) = local_node_id(cfg, log_dirs) {
        if let Some(remembered) = state.and_then(|s| s.broker).filter(|b| *b != id) {
            tracing::warn!(
                broker = id,
                remembered,
                source,
                "the state file names another broker; using the local config"
            );
        }
        return Ok(id);
    }
    if let Some(b) = state.and_then(|s| s.broker) {
        tracing::warn!(
            broker = b,
            "no node.id in server.properties and no meta.properties in the log dirs; \
             using the broker id the state file remembers"
        );
        return Ok(b);
    }
    Err(Error::Usage(format!(
        "cannot tell which broker this is: no node.id/broker.id in broker.server_properties and no \
         meta.properties in {}; set node.id in server.properties",
        log_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The broker id the local config and data say, and where it came from.
pub fn local_node_id(cfg: &AgentConfig, log_dirs: &[PathBuf]) -> Option<(i32, String)> {
    if let Some(p) = &cfg.broker.server_properties {
        if let Ok(text) = std::fs::read_to_string(p) {
            let props = kafka_snapshot::props::parse(&text);
            for key in ["node.id", "broker.id"] {
                if let Some(id) = props.get(key).and_then(|v| v.trim().parse::<i32>().ok()) {
                    if id >= 0 {
                        return Some((id, format!("{key} in {}", p.display())));
                    }
                }
            }
        }
    }
    for d in log_dirs {
        if let Ok(m) = logdir::read_meta_properties(d) {
            return Some((
                m.node_id,
                format!("{}/{}", d.display(), logdir::META_PROPERTIES),
            ));
        }
    }
    None
}

pub(crate) struct Daemon {
    cfg: AgentConfig,
    /// Where `cfg` came from: named in errors about its settings.
    config_path: PathBuf,
    coord_cfg: CoordinatorSection,
    state_path: PathBuf,
    broker: i32,
    role: NodeRole,
    log_dirs: Vec<PathBuf>,
    kafka: Arc<KafkaClient>,
    coord: Arc<CoordinatorClient>,
    control: BrokerControl,
    state: Arc<Mutex<AgentState>>,
    metrics: metrics::Metrics,
    shutdown: watch::Receiver<bool>,
    /// This process's id towards the coordinator (see `PollRequest::instance`).
    instance: String,
    /// What restores moved aside here, between polls.
    aside: aside::AsideCache,
}

/// What became of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Released {
    /// The coordinator took this outcome.
    Now,
    /// The coordinator had ended the lease already (released before,
    /// expired, or a newer lease exists): this outcome was not taken.
    Before,
    /// No answer: the lease expires on the coordinator.
    Unanswered,
}

impl Daemon {
    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn on_ready(&self) {
        tracing::info!(broker = self.broker, coordinator = %self.coord_cfg.url, "agent daemon ready");
        kafka_snapshot::service::spawn_watchdog();
        kafka_snapshot::service::notify_ready();
        kafka_snapshot::service::notify_status(&format!("broker {}: idle", self.broker));
    }

    /// Changes the state and writes it out.
    fn update(&self, f: impl FnOnce(&mut AgentState)) -> Result<()> {
        let mut s = self.state.lock().expect("state lock");
        f(&mut s);
        self.metrics
            .observe(s.phase, s.broker_stopped_by_agent, s.lease_held);
        s.save(&self.state_path)
    }

    fn snapshot_state(&self) -> AgentState {
        self.state.lock().expect("state lock").clone()
    }

    /// Persists every phase change before the cycle acts on it, and passes
    /// phase and progress on to the heartbeats. A phase that could not be
    /// written is an error (the cycle does not stop the broker on one) and
    /// is not taken on: what the daemon holds stays what the file says, and
    /// the next report of the phase tries again.
    fn observer(&self, progress: watch::Sender<Progress>) -> PhaseObserver {
        let state = self.state.clone();
        let path = self.state_path.clone();
        let broker = self.broker;
        let metrics = self.metrics.clone();
        Arc::new(move |phase: Phase, line: Option<String>| {
            let recorded = {
                let mut s = state.lock().expect("state lock");
                if s.phase == phase {
                    Ok(())
                } else {
                    let mut next = s.clone();
                    next.enter(phase);
                    match next.save(&path) {
                        Ok(()) => {
                            *s = next;
                            metrics.observe(s.phase, s.broker_stopped_by_agent, s.lease_held);
                            tracing::info!(broker, %phase, "phase");
                            Ok(())
                        }
                        Err(e) => {
                            tracing::error!(broker, %phase, error = %e, "could not write the state file");
                            Err(e.to_string())
                        }
                    }
                }
            };
            progress.send_replace((phase, line));
            recorded
        })
    }

    /// A cycle for this broker, interrupted by `interrupt`.
    fn cycle(&self, store: Option<Arc<dyn ColdStore>>, interrupt: watch::Receiver<bool>) -> Cycle {
        Cycle::with_parts(
            self.cfg.clone(),
            self.log_dirs.clone(),
            self.broker,
            self.role,
            self.kafka.clone(),
            store,
            interrupt,
        )
    }

    /// Opens cold storage (an S3 store is contacted once), off the runtime.
    async fn open_store(&self) -> Result<Arc<dyn ColdStore>, String> {
        let url = self.cfg.storage.url.clone();
        let opts = StoreOptions::from_config(&self.cfg.storage);
        tokio::task::spawn_blocking(move || kafka_snapshot::storage::open(&url, &opts))
            .await
            .map_err(|e| format!("opening cold storage: {e}"))?
            .map(Arc::from)
            .map_err(|e| e.to_string())
    }

    fn broker_running(&self) -> bool {
        match self.control.is_running() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the broker runs");
                false
            }
        }
    }

    /// Ends a lease. A 409 means the coordinator already ended it.
    async fn release(&self, epoch: u64, outcome: Outcome) -> Released {
        let deadline = if self.shutting_down() {
            RELEASE_DEADLINE_AT_SHUTDOWN
        } else {
            RELEASE_DEADLINE
        };
        let r = Release {
            broker: self.broker,
            epoch,
            outcome: outcome.clone(),
        };
        let released = match self.coord.release(&r, deadline).await {
            Ok(_) => {
                tracing::info!(broker = self.broker, epoch, ?outcome, "lease released");
                // Released, not yet recorded so in the state file.
                kafka_snapshot::failpoint("after-release");
                Released::Now
            }
            Err(e) if e.is_stale() => {
                tracing::warn!(broker = self.broker, epoch, error = %e, "the coordinator had already ended the lease");
                Released::Before
            }
            Err(e) => {
                tracing::error!(broker = self.broker, epoch, error = %e, "could not release the lease; it expires on the coordinator");
                Released::Unanswered
            }
        };
        let _ = self.update(|s| s.lease_held = false);
        released
    }

    /// Sends a notice, retrying until the coordinator answers (or shutdown).
    async fn notice(&self, level: NoticeLevel, message: String, epoch: Option<u64>) -> bool {
        let n = Notice {
            broker: self.broker,
            level,
            message: message.clone(),
            epoch,
        };
        match self.coord.notice(&n, self.shutdown.clone()).await {
            Ok(_) => {
                tracing::info!(broker = self.broker, ?level, message, "notice sent");
                true
            }
            Err(e) => {
                tracing::error!(broker = self.broker, error = %e, message, "could not send a notice");
                false
            }
        }
    }

    /// Polls until shutdown, doing each action it is given.
    async fn serve(&mut self) {
        let mut interval = self.coord_cfg.poll_interval;
        let mut failures = 0u32;
        while !self.shutting_down() {
            if self.snapshot_state().broker_stopped_by_agent && !self.broker_running() {
                if let Err(e) = self.start_broker_left_down().await {
                    tracing::error!(broker = self.broker, error = %e, "the broker this agent stopped is still down");
                }
            }
            let moved_aside = self.moved_aside().await;
            let state = self.snapshot_state();
            let req = PollRequest {
                protocol: PROTOCOL_VERSION,
                broker: self.broker,
                agent_version: kafka_snapshot::AGENT_VERSION.to_string(),
                hostname: kafka_snapshot::snapshot::hostname(),
                phase: state.phase,
                lease_epoch: state.lease_held.then_some(state.lease_epoch).flatten(),
                broker_running: self.broker_running(),
                instance: Some(self.instance.clone()),
                role: Some(self.role),
                moved_aside,
            };
            match self.coord.poll(&req).await {
                Ok(resp) => {
                    if failures > 0 {
                        tracing::info!(broker = self.broker, "coordinator reachable again");
                    }
                    failures = 0;
                    if resp.poll_interval_ms > 0 {
                        interval = Duration::from_millis(resp.poll_interval_ms);
                    }
                    match resp.action {
                        Action::Idle => {}
                        Action::Snapshot { lease } => {
                            self.run_snapshot(lease).await;
                            continue;
                        }
                        Action::Restore { lease, order } => {
                            self.run_restore(lease, order).await;
                            continue;
                        }
                        Action::ClusterRestore { lease, order } => {
                            self.run_cluster_restore(lease, order).await;
                            continue;
                        }
                    }
                }
                Err(e @ CallError::Unauthorized { .. }) => {
                    failures += 1;
                    tracing::error!(broker = self.broker, failures, error = %e, "poll refused; the broker is left alone, retrying");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(broker = self.broker, failures, error = %e, "poll failed; retrying");
                }
            }
            let mut shutdown = self.shutdown.clone();
            let sleep = tokio::time::sleep(interval);
            tokio::pin!(sleep);
            tokio::select! {
                _ = &mut sleep => {}
                changed = shutdown.changed() => if changed.is_err() {
                    // No shutdown can come any more: wait out the interval
                    // rather than poll the coordinator in a tight loop.
                    sleep.await;
                },
            }
        }
    }

    /// Refuses a lease outright (nothing was touched).
    async fn refuse(&self, epoch: u64, reason: String) {
        tracing::error!(broker = self.broker, epoch, reason, "refusing the lease");
        self.metrics.failed(metrics::FailureReason::Setup);
        self.release(
            epoch,
            Outcome::Failed {
                reason,
                broker_running: self.broker_running(),
            },
        )
        .await;
    }

    /// Starts work under `lease`, the same way for every kind of work:
    /// records it in the state file (in phase `first`), opens cold storage
    /// and starts the heartbeats. `None` when the lease was refused instead.
    async fn begin_lease(
        &self,
        lease: &Lease,
        work: Work,
        first: Phase,
        snapshot_id: Option<String>,
        restore_order: Option<i64>,
    ) -> Option<(Arc<dyn ColdStore>, LeaseSession)> {
        let epoch = lease.epoch;
        if let Err(e) = self.update(|s| {
            s.work = Some(work);
            s.lease_epoch = Some(epoch);
            s.lease_held = true;
            s.snapshot_id = snapshot_id;
            s.restore_order = restore_order;
            s.enter(first);
        }) {
            // Without a state file the agent could not recover a broker it
            // stopped: touch nothing.
            self.refuse(epoch, format!("cannot record the agent's state: {e}"))
                .await;
            return None;
        }
        let store = match self.open_store().await {
            Ok(s) => s,
            Err(e) => {
                self.refuse(epoch, format!("cold storage: {e}")).await;
                self.finish();
                return None;
            }
        };
        let session = LeaseSession::start(self.coord.clone(), lease, first, self.shutdown.clone());
        Some((store, session))
    }
}
