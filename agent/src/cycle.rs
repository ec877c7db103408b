//! One snapshot cycle of the local broker: gate -> stop -> capture ->
//! restart -> recovery check -> commit. Whatever fails or interrupts it
//! while the broker is down, the broker is started again before anything
//! else happens; a broker this code cannot start again is an ERROR that
//! names what to do.
//!
//! The cycle reports every [`Phase`] it enters to an observer before it
//! acts, so the daemon can persist it (and tell the coordinator) ahead of
//! stopping a broker. With reflink capture the cycle pauses after the
//! recovery check ([`Cycle::stop_capture_restart`] returns the archive
//! still to build), so the daemon can give the lease back while the
//! archive is written from staging ([`Cycle::archive`]).

use crate::broker::{BrokerControl, BrokerError, Stopped};
use chrono::Utc;
use kafka_snapshot::archive::ArchiveOptions;
use kafka_snapshot::capture::{resolve_mode, staging_space, CopyRecord};
use kafka_snapshot::catalog;
use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::config::NodeRole;
use kafka_snapshot::kafka::fetch::KafkaClient;
use kafka_snapshot::kafka::gate::{recovery, GateReport, Recovery};
use kafka_snapshot::kafka::view::QUORUM_SPAN;
use kafka_snapshot::logdir;
use kafka_snapshot::snapshot::{capture, BrokerTimes, CaptureRequest, Captured};
use kafka_snapshot::storage::ColdStore;
use kafka_snapshot_model::manifest::CaptureMode;
use kafka_snapshot_model::manifest::Manifest;
use kafka_snapshot_model::protocol::Phase;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("{}", .0.summary())]
    NotSafe(Box<GateReport>),
    #[error("stopping the broker failed (it was started again): {0}")]
    StopFailed(BrokerError),
    #[error(
        "the node stopped uncleanly ({reasons}); it was started again and nothing was archived"
    )]
    UncleanStop { reasons: String },
    #[error("capture failed (the broker was started again): {0}")]
    Capture(kafka_snapshot::Error),
    #[error("BROKER LEFT STOPPED: the start command failed {attempts} times ({error}); start it by hand: {command}")]
    StartFailed {
        attempts: u32,
        error: BrokerError,
        command: String,
    },
    #[error("BROKER LEFT STOPPED: it is still shutting down {waited:?} after the stop command ({locked} still locked), so it could not be started again; start it by hand once it has exited: {command}")]
    StillStopping {
        waited: Duration,
        locked: String,
        command: String,
    },
    #[error("the broker did not recover within {timeout:?}: {}", .last.summary())]
    RecoveryTimeout {
        timeout: Duration,
        last: Box<Recovery>,
    },
    #[error("archiving failed after the broker was restarted: {0}")]
    Commit(kafka_snapshot::Error),
    #[error("interrupted by shutdown{}", if *.restarted { " (the broker was started again first)" } else { "" })]
    Interrupted { restarted: bool },
    #[error("the broker was not stopped: the agent could not record that it stops it, and a restarted agent would not know to start it again: {0}")]
    NotRecorded(String),
    #[error("the node was not stopped: {0}")]
    PreStopHook(BrokerError),
    #[error("snapshot {snapshot_id} is complete, but then {error}")]
    PostStartHook { snapshot_id: String, error: String },
    /// A copy capture refused before the stop, or given up (the node
    /// started again), by `snapshot.max_copy_downtime`.
    #[error("{message}")]
    CopyDowntime { message: String, stopped: bool },
    #[error("{0}")]
    Setup(String),
}

/// How many times a failed start is retried before the operator is told.
const START_ATTEMPTS: u32 = 3;
const START_RETRY: Duration = Duration::from_secs(5);

/// Told of every phase the cycle enters (with a progress line), before
/// the cycle acts on it. An error means the phase could not be recorded
/// durably: the phase before a stop must be, or the broker is not stopped
/// ([`Cycle::enter_stop`]); for any other phase it is only logged.
pub type PhaseObserver = Arc<dyn Fn(Phase, Option<String>) -> Result<(), String> + Send + Sync>;

/// A snapshot whose broker is back in every ISR.
pub struct Restarted {
    pub snapshot_id: String,
    /// From the stop command to the start command's success.
    pub downtime_ms: u64,
    /// From the stop command until the broker was back in every ISR (the
    /// recovery check passed): how long the cluster was without it. With
    /// a start command that returns before the JVM is ready (`systemctl
    /// start`), this is the figure that matters.
    pub unavailable_ms: u64,
    pub archive: Archive,
    /// The `post_start` hook failed after this snapshot: the snapshot is
    /// complete, the failure must still be reported loudly.
    pub post_start_error: Option<String>,
}

pub enum Archive {
    /// Copy capture: archived and committed while the broker was down.
    Committed(Box<Manifest>),
    /// Reflink capture: the clones wait in staging for [`Cycle::archive`].
    Pending(Box<Pending>),
}

pub struct Pending {
    captured: Captured,
    opts: ArchiveOptions,
    times: BrokerTimes,
    cancel: Arc<AtomicBool>,
}

pub struct Cycle {
    cfg: AgentConfig,
    log_dirs: Vec<PathBuf>,
    broker: i32,
    role: NodeRole,
    /// When the start command last succeeded.
    started_at: std::sync::Mutex<Option<Instant>>,
    client: Arc<KafkaClient>,
    control: BrokerControl,
    store: Option<Arc<dyn ColdStore>>,
    shutdown: watch::Receiver<bool>,
    observer: Option<PhaseObserver>,
    /// [`Restarted::unavailable_ms`] of the last stop.
    last_unavailable_ms: Option<u64>,
}

impl Cycle {
    pub fn new(
        cfg: AgentConfig,
        config_path: &std::path::Path,
        store: Arc<dyn ColdStore>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Cycle, kafka_snapshot::Error> {
        let log_dirs = cfg.log_dirs()?;
        let broker = logdir::read_meta_properties(&log_dirs[0])?.node_id;
        let role = cfg.role(config_path)?;
        let client = KafkaClient::new(cfg.kafka(config_path, "a snapshot cycle")?)
            .map_err(kafka_snapshot::Error::Usage)?
            .with_quorum(role.is_controller());
        Ok(Cycle::with_parts(
            cfg,
            log_dirs,
            broker,
            role,
            Arc::new(client),
            Some(store),
            shutdown,
        ))
    }

    /// A cycle for a broker whose id and log dirs the caller resolved, with
    /// a shared Kafka client. `shutdown` turning true interrupts the cycle
    /// (starting the broker first if it is down), whatever the reason.
    /// Without a store only broker control and the checks work.
    pub fn with_parts(
        cfg: AgentConfig,
        log_dirs: Vec<PathBuf>,
        broker: i32,
        role: NodeRole,
        client: Arc<KafkaClient>,
        store: Option<Arc<dyn ColdStore>>,
        shutdown: watch::Receiver<bool>,
    ) -> Cycle {
        let control = BrokerControl::new(&cfg.broker, log_dirs.clone());
        Cycle {
            cfg,
            log_dirs,
            broker,
            role,
            started_at: std::sync::Mutex::new(None),
            client,
            control,
            store,
            shutdown,
            observer: None,
            last_unavailable_ms: None,
        }
    }

    pub fn set_observer(&mut self, observer: PhaseObserver) {
        self.observer = Some(observer);
    }

    pub(crate) fn phase(&self, phase: Phase, progress: Option<String>) {
        // The observer logs a phase it could not record; only the one
        // before a stop must be recorded ([`Cycle::enter_stop`]).
        let _ = self.observe(phase, progress);
        // Recorded (state file, heartbeats) before a test may stop here.
        kafka_snapshot::pausepoint(&format!("phase-{phase}"));
    }

    fn observe(&self, phase: Phase, progress: Option<String>) -> Result<(), String> {
        match &self.observer {
            Some(o) => o(phase, progress),
            None => Ok(()),
        }
    }

    /// The last step before the broker is stopped, by a snapshot
    /// (`Stopping`) or a restore (`Restoring`): the phase is recorded
    /// durably first, since a record is all a restarted agent has to know
    /// that it must start the broker again; without one, or without the
    /// lease (lost while the gate ran or the phase was recorded), the
    /// broker is not stopped.
    pub fn enter_stop(&self, phase: Phase) -> Result<(), CycleError> {
        self.observe(phase, None).map_err(CycleError::NotRecorded)?;
        kafka_snapshot::pausepoint(&format!("phase-{phase}"));
        if self.shutting_down() {
            return Err(CycleError::Interrupted { restarted: false });
        }
        Ok(())
    }

    pub fn broker(&self) -> i32 {
        self.broker
    }

    pub fn role(&self) -> NodeRole {
        self.role
    }

    pub fn control(&self) -> &BrokerControl {
        &self.control
    }

    pub fn client(&self) -> &KafkaClient {
        &self.client
    }

    fn store(&self) -> Result<Arc<dyn ColdStore>, CycleError> {
        self.store
            .clone()
            .ok_or_else(|| CycleError::Setup("no cold store for this cycle".into()))
    }

    /// Replaces what interrupts the cycle (e.g. a lease's loss no longer
    /// matters once the lease is released).
    pub fn set_interrupt(&mut self, shutdown: watch::Receiver<bool>) {
        self.shutdown = shutdown;
    }

    pub fn log_dirs(&self) -> &[PathBuf] {
        &self.log_dirs
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps, returning early (true) when shutdown is requested.
    async fn sleep_or_shutdown(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.shutting_down(),
            _ = self.shutdown.changed() => true,
        }
    }

    /// One gate evaluation against the live cluster.
    pub async fn check(&self) -> GateReport {
        kafka_snapshot::kafka::check_now(
            &self.client,
            self.broker,
            self.role,
            self.cfg.gate.low_replication_policy,
            &self.log_dirs,
        )
        .await
    }

    /// Waits until the gate passes `stable_checks` times in a row, for at
    /// most `deadline`.
    pub async fn wait_safe(&mut self, deadline: Duration) -> Result<(), CycleError> {
        let started = Instant::now();
        let mut streak = 0;
        let mut streak_since = Instant::now();
        self.phase(Phase::Gating, None);
        loop {
            let report = self.check().await;
            self.phase(
                Phase::Gating,
                Some(if report.safe() {
                    format!(
                        "gate passed {} of {} times in a row",
                        streak + 1,
                        self.cfg.gate.stable_checks
                    )
                } else {
                    report.summary()
                }),
            );
            if report.safe() {
                if streak == 0 {
                    streak_since = Instant::now();
                }
                streak += 1;
                tracing::info!(
                    broker = self.broker,
                    streak,
                    need = self.cfg.gate.stable_checks,
                    "gate passed"
                );
                // A controller's gate reads the quorum, which shows a voter
                // that just died as caught up for up to QUORUM_SPAN: the
                // passes must span at least that.
                let spans = !self.role.is_controller() || streak_since.elapsed() >= QUORUM_SPAN;
                if streak >= self.cfg.gate.stable_checks && spans {
                    return Ok(());
                }
            } else {
                streak = 0;
                tracing::warn!(broker = self.broker, reason = %report.summary(), "gate not passed");
                if started.elapsed() >= deadline {
                    return Err(CycleError::NotSafe(Box::new(report)));
                }
            }
            let interval = self.cfg.gate.check_interval;
            if self.sleep_or_shutdown(interval).await {
                return Err(CycleError::Interrupted { restarted: false });
            }
        }
    }

    /// Starts the broker, retrying; the error says loudly that it is down.
    pub async fn ensure_started(&self) -> Result<chrono::DateTime<Utc>, CycleError> {
        self.phase(Phase::Starting, None);
        let mut last = None;
        for attempt in 1..=START_ATTEMPTS {
            match self.control.start().await {
                Ok(()) => {
                    *self.started_at.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    return Ok(Utc::now());
                }
                Err(e) => {
                    tracing::error!(broker = self.broker, attempt, error = %e, "starting the broker failed");
                    last = Some(e);
                    if attempt < START_ATTEMPTS {
                        tokio::time::sleep(START_RETRY).await;
                    }
                }
            }
        }
        let err = CycleError::StartFailed {
            attempts: START_ATTEMPTS,
            error: last.expect("at least one attempt"),
            command: self.cfg.broker.start_command.clone(),
        };
        tracing::error!(broker = self.broker, "{err}");
        Err(err)
    }

    /// After a stop timeout: waits until the broker has exited, or says
    /// loudly that it is still shutting down and will be left stopped.
    async fn wait_exited_after_timeout(&self) -> Result<(), CycleError> {
        let limit = self.control.stop_timeout();
        tracing::warn!(
            broker = self.broker,
            "the broker is still shutting down after broker.stop_timeout; waiting up to {limit:?} more for it to exit before starting it again"
        );
        let locked = self
            .control
            .wait_exited(limit)
            .await
            .map_err(CycleError::StopFailed)?;
        if locked.is_empty() {
            return Ok(());
        }
        let err = CycleError::StillStopping {
            waited: limit * 2,
            locked: locked.join(", "),
            command: self.cfg.broker.start_command.clone(),
        };
        tracing::error!(broker = self.broker, "{err}");
        Err(err)
    }

    /// Runs one full cycle. The gate must already have passed
    /// ([`Cycle::wait_safe`]); this re-checks it once right before stopping.
    /// From the last stop until the broker was back in every ISR.
    pub fn last_unavailable_ms(&self) -> Option<u64> {
        self.last_unavailable_ms
    }

    pub async fn run(&mut self) -> Result<Manifest, CycleError> {
        let restarted = self.stop_capture_restart().await?;
        let manifest = match restarted.archive {
            Archive::Committed(m) => *m,
            Archive::Pending(p) => self.archive(*p).await?,
        };
        match restarted.post_start_error {
            None => Ok(manifest),
            Some(error) => Err(CycleError::PostStartHook {
                snapshot_id: manifest.snapshot_id,
                error,
            }),
        }
    }

    /// Stop, capture, restart, recovery check. With copy capture the
    /// snapshot is committed on the way (before the restart); with reflink
    /// capture the archive is left for [`Cycle::archive`].
    pub async fn stop_capture_restart(&mut self) -> Result<Restarted, CycleError> {
        let store = self.store()?;
        let report = self.check().await;
        if !report.safe() {
            return Err(CycleError::NotSafe(Box::new(report)));
        }
        // A reflink capture without enough free space for its staging is
        // known before the broker goes down: it must not cost a stop.
        // (`auto` copies instead, decided by the capture itself.)
        if self.cfg.snapshot.capture == CaptureMode::Reflink {
            let min_free = self.cfg.snapshot.staging_min_free;
            if let Some(why) = self
                .log_dirs
                .iter()
                .find_map(|d| staging_space(d, min_free).err())
            {
                return Err(CycleError::Setup(format!(
                    "capture refused before stopping the broker: {why}"
                )));
            }
        }
        self.check_copy_downtime(&store).await?;
        let Some(pre_stop) = self.cfg.hooks.pre_stop.clone() else {
            let result = self.stop_and_capture(store).await;
            return self.after_post_start(result).await;
        };
        if let Err(e) = self.hook("pre_stop", &pre_stop, None).await {
            let result = Err(CycleError::PreStopHook(e));
            return self.after_post_start(result).await;
        }
        let result = self.stop_and_capture(store).await;
        self.after_post_start(result).await
    }

    /// Runs the `post_start` hook (when one is configured) after an attempt
    /// with `result`. A failing hook after a snapshot is carried in
    /// [`Restarted::post_start_error`]; after a failed attempt it is logged
    /// beside the attempt's own error.
    async fn after_post_start(
        &mut self,
        mut result: Result<Restarted, CycleError>,
    ) -> Result<Restarted, CycleError> {
        let Some(post_start) = self.cfg.hooks.post_start.clone() else {
            return result;
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(
                CycleError::NotSafe(_) | CycleError::PreStopHook(_) | CycleError::NotRecorded(_),
            ) => "not_stopped",
            Err(CycleError::CopyDowntime { stopped: false, .. }) => "not_stopped",
            Err(CycleError::Interrupted { restarted: false }) => "not_stopped",
            Err(_) => "failed",
        };
        if let Err(e) = self.hook("post_start", &post_start, Some(outcome)).await {
            let msg = e.to_string();
            tracing::error!(broker = self.broker, error = %msg, outcome, "the post_start hook failed");
            if let Ok(r) = &mut result {
                r.post_start_error = Some(msg);
            }
        }
        result
    }

    /// Runs hook `name` (`command`) with the node's id, role and, for
    /// `post_start`, the attempt's outcome in its environment.
    async fn hook(
        &self,
        name: &'static str,
        command: &str,
        outcome: Option<&str>,
    ) -> Result<(), BrokerError> {
        let mut env = vec![
            ("KAFKA_SNAPSHOT_NODE_ID", self.broker.to_string()),
            ("KAFKA_SNAPSHOT_ROLE", self.role.to_string()),
            ("KAFKA_SNAPSHOT_HOOK", name.to_string()),
        ];
        if let Some(o) = outcome {
            env.push(("KAFKA_SNAPSHOT_OUTCOME", o.to_string()));
        }
        let what = if name == "pre_stop" {
            "pre_stop hook"
        } else {
            "post_start hook"
        };
        tracing::info!(broker = self.broker, hook = name, "running hook");
        crate::broker::run_command(what, command, self.cfg.hooks.timeout, &env).await
    }

    /// From the recorded stop to the recovery check: the part of a
    /// snapshot the hooks run around.
    async fn stop_and_capture(
        &mut self,
        store: Arc<dyn ColdStore>,
    ) -> Result<Restarted, CycleError> {
        self.enter_stop(Phase::Stopping)?;
        let stopped_at = Utc::now();
        match self.control.stop().await {
            Ok(Stopped::Clean) => {}
            Ok(Stopped::Unclean { reasons }) => {
                self.ensure_started().await?;
                return Err(CycleError::UncleanStop {
                    reasons: reasons.join("; "),
                });
            }
            Err(e) => {
                if matches!(e, BrokerError::StopTimeout { .. }) {
                    // It is still shutting down, and a start now would fail
                    // against its `.lock`: it cannot serve again before it
                    // has exited. Give it one more stop_timeout (a process
                    // manager's own stop timeout kills it by then).
                    self.wait_exited_after_timeout().await?;
                }
                // Whatever state it is in, make sure it runs.
                self.ensure_started().await?;
                return Err(CycleError::StopFailed(e));
            }
        }
        kafka_snapshot::failpoint("after-stop");
        if self.shutting_down() {
            self.ensure_started().await?;
            return Err(CycleError::Interrupted { restarted: true });
        }

        self.phase(Phase::Capturing, None);
        let cancel = Arc::new(AtomicBool::new(false));
        let opts = ArchiveOptions {
            zstd_level: self.cfg.snapshot.zstd_level,
            zstd_threads: self.cfg.snapshot.zstd_threads,
            cancel: Some(cancel.clone()),
            encrypt_to: self.cfg.encryption.recipients(),
            objects: self.cfg.object_options(),
        };
        let req = CaptureRequest {
            log_dirs: self.log_dirs.clone(),
            mode: self.cfg.snapshot.capture,
            allow_unclean: false,
            staging_min_free: self.cfg.snapshot.staging_min_free,
        };
        let captured = match self.blocking(cancel.clone(), move || capture(&req)).await {
            Ok(c) => c,
            Err(e) => {
                self.ensure_started().await?;
                return Err(self.interrupted_or(CycleError::Capture(e)));
            }
        };
        let snapshot_id = captured.snapshot_id.clone();
        if opts.objects.is_none() {
            // Full snapshots: clones kept while this node was incremental
            // are no use any more.
            captured.drop_kept_clones();
        }

        // Copy capture reads the log dirs themselves: archive before the start.
        let archive = if captured.used == CaptureMode::Copy {
            self.phase(
                Phase::Capturing,
                Some("archiving from the log dirs (copy capture)".into()),
            );
            let times = BrokerTimes {
                stopped: Some(stopped_at),
                restarted: None,
            };
            let o = opts.clone();
            let limit = self.cfg.snapshot.max_copy_downtime;
            let deadline = limit.map(|l| {
                let down = (Utc::now() - stopped_at).to_std().unwrap_or_default();
                tokio::time::Instant::now() + l.saturating_sub(down)
            });
            let r = self
                .blocking_until(cancel.clone(), deadline, move || {
                    captured.commit(store.as_ref(), &o, times)
                })
                .await;
            match r {
                Ok(m) => Archive::Committed(Box::new(m)),
                Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                    self.ensure_started().await?;
                    let limit = limit.unwrap_or_default();
                    return Err(self.interrupted_or(CycleError::CopyDowntime {
                        message: format!(
                            "copy capture given up after {}s of downtime \
                             (snapshot.max_copy_downtime); the node was started again and \
                             nothing was committed: use reflink capture (XFS with reflink=1) \
                             or raise the limit",
                            limit.as_secs()
                        ),
                        stopped: true,
                    }));
                }
                Err(e) => {
                    self.ensure_started().await?;
                    return Err(self.interrupted_or(CycleError::Commit(e)));
                }
            }
        } else {
            Archive::Pending(Box::new(Pending {
                captured,
                opts,
                times: BrokerTimes {
                    stopped: Some(stopped_at),
                    restarted: None,
                },
                cancel,
            }))
        };

        let restarted_at = self.ensure_started().await?;
        let downtime_ms = (restarted_at - stopped_at).num_milliseconds().max(0) as u64;
        tracing::info!(
            broker = self.broker,
            downtime_seconds = downtime_ms as f64 / 1000.0,
            "broker started again"
        );
        let archive = match archive {
            Archive::Pending(mut p) => {
                p.times.restarted = Some(restarted_at);
                Archive::Pending(p)
            }
            done => done,
        };
        self.wait_recovered().await?;
        let unavailable_ms = (Utc::now() - stopped_at).num_milliseconds().max(0) as u64;
        tracing::info!(
            broker = self.broker,
            unavailable_seconds = unavailable_ms as f64 / 1000.0,
            downtime_seconds = downtime_ms as f64 / 1000.0,
            "broker back in every ISR"
        );
        self.last_unavailable_ms = Some(unavailable_ms);
        Ok(Restarted {
            snapshot_id,
            downtime_ms,
            unavailable_ms,
            archive,
            post_start_error: None,
        })
    }

    /// Builds and commits the archive of a reflink capture from staging
    /// while the broker runs. Interrupting it cancels the archive; the
    /// staging is removed (or, if the process dies, at the next run).
    pub async fn archive(&mut self, p: Pending) -> Result<Manifest, CycleError> {
        self.phase(Phase::Archiving, None);
        let store = self.store()?;
        let Pending {
            captured,
            opts,
            times,
            cancel,
        } = p;
        self.blocking(cancel, move || {
            captured.commit(store.as_ref(), &opts, times)
        })
        .await
        .map_err(|e| self.interrupted_or(CycleError::Commit(e)))
    }

    /// Before the stop, with `snapshot.max_copy_downtime` set: a capture
    /// that would copy is refused when the newest earlier copy capture of
    /// this node says it would keep the node down longer. Without such a
    /// record (or when the store cannot be read) the copy goes ahead, and
    /// the limit ends it if it runs past.
    async fn check_copy_downtime(&mut self, store: &Arc<dyn ColdStore>) -> Result<(), CycleError> {
        let Some(limit) = self.cfg.snapshot.max_copy_downtime else {
            return Ok(());
        };
        let requested = self.cfg.snapshot.capture;
        if requested == CaptureMode::Reflink {
            return Ok(());
        }
        let (dirs, min_free) = (self.log_dirs.clone(), self.cfg.snapshot.staging_min_free);
        let (store, broker) = (store.clone(), self.broker);
        let looked = self
            .blocking(Arc::new(AtomicBool::new(false)), move || {
                let (used, _) = resolve_mode(requested, &dirs, min_free)?;
                if used != CaptureMode::Copy {
                    return Ok(None);
                }
                let inv = logdir::scan(&dirs)?;
                let earlier: Vec<Manifest> =
                    catalog::list(store.as_ref(), Some(inv.cluster_id()), Some(broker))?
                        .into_iter()
                        .filter_map(|l| match l.status {
                            catalog::Status::Complete(m) => Some(*m),
                            _ => None,
                        })
                        .collect();
                Ok(Some((inv.total_bytes(), CopyRecord::newest(&earlier))))
            })
            .await;
        match looked {
            Ok(None) => Ok(()),
            Ok(Some((bytes, Some(rec)))) => {
                let expected = rec.estimate(bytes);
                if expected > limit {
                    return Err(CycleError::CopyDowntime {
                        message: format!(
                            "copy capture refused before stopping node {broker}: its last copy \
                             capture ({}, {} MiB) kept it down {}s, so {} MiB now would take \
                             about {}s, more than snapshot.max_copy_downtime ({}s). Use reflink \
                             capture (XFS with reflink=1) or raise the limit",
                            rec.snapshot_id,
                            rec.bytes >> 20,
                            rec.downtime.as_secs(),
                            bytes >> 20,
                            expected.as_secs(),
                            limit.as_secs()
                        ),
                        stopped: false,
                    });
                }
                tracing::info!(
                    broker,
                    expected_seconds = expected.as_secs_f64(),
                    limit_seconds = limit.as_secs_f64(),
                    from = %rec.snapshot_id,
                    "copy capture expected within snapshot.max_copy_downtime"
                );
                Ok(())
            }
            Ok(Some((bytes, None))) => {
                tracing::info!(
                    broker,
                    mib = bytes >> 20,
                    limit_seconds = limit.as_secs_f64(),
                    "no earlier copy capture of this node to estimate the downtime from; \
                     the copy is given up if it runs past snapshot.max_copy_downtime"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    broker,
                    error = %e,
                    "could not estimate the copy capture's downtime; \
                     the copy is given up if it runs past snapshot.max_copy_downtime"
                );
                Ok(())
            }
        }
    }

    fn interrupted_or(&self, e: CycleError) -> CycleError {
        if self.shutting_down() {
            CycleError::Interrupted { restarted: true }
        } else {
            e
        }
    }

    /// Runs blocking work; a shutdown request sets `cancel`, which the
    /// archive checks between chunks, so the broker can be started soon.
    pub async fn blocking<T: Send + 'static>(
        &mut self,
        cancel: Arc<AtomicBool>,
        f: impl FnOnce() -> kafka_snapshot::Result<T> + Send + 'static,
    ) -> kafka_snapshot::Result<T> {
        let task = tokio::task::spawn_blocking(f);
        await_cancelling(task, &mut self.shutdown, &cancel)
            .await
            .map_err(|e| kafka_snapshot::Error::Internal(format!("worker thread: {e}")))?
    }

    /// [`Cycle::blocking`], also cancelled when `deadline` passes (the
    /// work then ends with the error its cancellation gives).
    async fn blocking_until<T: Send + 'static>(
        &mut self,
        cancel: Arc<AtomicBool>,
        deadline: Option<tokio::time::Instant>,
        f: impl FnOnce() -> kafka_snapshot::Result<T> + Send + 'static,
    ) -> kafka_snapshot::Result<T> {
        let Some(deadline) = deadline else {
            return self.blocking(cancel, f).await;
        };
        let flag = cancel.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            flag.store(true, Ordering::Relaxed);
        });
        let r = self.blocking(cancel, f).await;
        timer.abort();
        r
    }

    /// Waits until the restarted broker is registered and back in every
    /// ISR, reporting progress; only `recovery_timeout` makes it a failure.
    pub async fn wait_recovered(&mut self) -> Result<(), CycleError> {
        let started = Instant::now();
        let timeout = self.cfg.broker.recovery_timeout;
        let mut last = None;
        let mut polls = 0;
        self.phase(Phase::Recovering, None);
        loop {
            match self.client.view().await {
                Ok(v) => {
                    let r = recovery(&v, self.broker, self.role);
                    self.phase(Phase::Recovering, Some(r.summary()));
                    if r.recovered() && self.voter_entry_is_fresh() {
                        tracing::info!(
                            broker = self.broker,
                            seconds = started.elapsed().as_secs_f64(),
                            "broker recovered"
                        );
                        return Ok(());
                    }
                    tracing::info!(broker = self.broker, progress = %r.summary(), "still catching up");
                    last = Some(r);
                }
                Err(e) => {
                    tracing::warn!(broker = self.broker, error = %e, "cluster not reachable while waiting for recovery")
                }
            }
            if started.elapsed() >= timeout {
                let last = last.unwrap_or(Recovery {
                    broker: self.broker,
                    role: self.role,
                    registered: false,
                    catching_up: Vec::new(),
                    catching_up_count: 0,
                    unhealthy: Vec::new(),
                    unhealthy_count: 0,
                    quorum_behind: None,
                });
                return Err(CycleError::RecoveryTimeout {
                    timeout,
                    last: Box::new(last),
                });
            }
            polls += 1;
            let interval = recovery_poll(polls, self.cfg.gate.check_interval);
            if self.sleep_or_shutdown(interval).await {
                // The broker runs; stopping the wait is safe.
                return Err(CycleError::Interrupted { restarted: true });
            }
        }
    }
}

impl Cycle {
    /// The leader's entry for a controller may still show the fetches it
    /// made before it stopped (or died): only once [`QUORUM_SPAN`] has
    /// passed since it was started again does a caught-up entry prove
    /// fetches of the new process. Whatever path started it (a cycle, or
    /// an agent restarted after a crash).
    pub(crate) fn voter_entry_is_fresh(&self) -> bool {
        let started = *self.started_at.lock().unwrap_or_else(|p| p.into_inner());
        !self.role.is_controller() || started.is_none_or(|t| t.elapsed() >= QUORUM_SPAN)
    }
}

/// The pause before recovery check number `polls + 1`. The lease (and the
/// next broker's turn) waits for this check, and a broker usually rejoins
/// every ISR within seconds of starting: look every 250 ms at first, then
/// back off, doubling every fourth look, to `gate.check_interval` (at most
/// 5 s) for a broker that takes long to catch up. A metadata request is
/// cheap; a check that comes 10 s late holds the lease 10 s longer.
fn recovery_poll(polls: u32, check_interval: Duration) -> Duration {
    let cap = check_interval.min(Duration::from_secs(5));
    let step = Duration::from_millis(250) * 2u32.pow((polls.saturating_sub(1) / 4).min(5));
    step.min(cap)
}

/// Awaits `task`, setting `cancel` once `shutdown` turns true. A closed
/// channel (its sender dropped) holds its last value for good: no shutdown
/// can come any more, so only the task is awaited from then on (`changed()`
/// would fail at once, again and again).
async fn await_cancelling<T>(
    mut task: tokio::task::JoinHandle<T>,
    shutdown: &mut watch::Receiver<bool>,
    cancel: &AtomicBool,
) -> Result<T, tokio::task::JoinError> {
    let mut open = true;
    loop {
        tokio::select! {
            r = &mut task => return r,
            changed = shutdown.changed(), if open => {
                open = changed.is_ok();
                if *shutdown.borrow() {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU time this thread has used.
    fn thread_cpu_time() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill in.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        assert_eq!(rc, 0, "clock_gettime");
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// Awaits a blocking job of `sleep` on this thread (a current-thread
    /// runtime): what it returned, whether it was asked to cancel, and the
    /// CPU time this thread spent waiting for it.
    async fn wait_for_job(
        shutdown: &mut watch::Receiver<bool>,
        sleep: Duration,
    ) -> (u32, bool, Duration) {
        let cancel = AtomicBool::new(false);
        let task = tokio::task::spawn_blocking(move || {
            std::thread::sleep(sleep);
            7
        });
        let cpu = thread_cpu_time();
        let r = await_cancelling(task, shutdown, &cancel).await.unwrap();
        (r, cancel.load(Ordering::Relaxed), thread_cpu_time() - cpu)
    }

    #[test]
    fn recovery_is_checked_often_at_first_then_at_the_check_interval() {
        let ten = Duration::from_secs(10);
        let pauses: Vec<u128> = (1..=24)
            .map(|n| recovery_poll(n, ten).as_millis())
            .collect();
        assert_eq!(&pauses[..4], &[250; 4]);
        assert_eq!(&pauses[4..8], &[500; 4]);
        assert_eq!(&pauses[8..12], &[1000; 4]);
        assert_eq!(&pauses[12..16], &[2000; 4]);
        assert_eq!(&pauses[16..20], &[4000; 4]);
        assert_eq!(&pauses[20..], &[5000; 4], "capped at 5 s");
        // Never slower than the configured check interval.
        assert!(
            (1..100).all(|n| recovery_poll(n, Duration::from_secs(2)) <= Duration::from_secs(2))
        );
        assert_eq!(
            recovery_poll(1, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        // The first seconds after a start are covered closely.
        let first: Duration = (1..=8).map(|n| recovery_poll(n, ten)).sum();
        assert_eq!(first, Duration::from_secs(3));
    }

    /// Regression: with its sender dropped, `changed()` fails at once, and
    /// the wait for an archive spun on it at full CPU until the archive
    /// was done (after every SIGTERM: the signal task drops the sender
    /// once it has sent `true`).
    #[tokio::test]
    async fn a_closed_shutdown_channel_is_not_polled_in_a_loop() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let (r, cancelled, cpu) = wait_for_job(&mut rx, Duration::from_millis(300)).await;
        assert_eq!(r, 7);
        assert!(
            cpu < Duration::from_millis(60),
            "the wait used {cpu:?} of CPU"
        );
        assert!(!cancelled, "no shutdown was asked for");

        // Shutdown asked for, then the sender gone: cancelled, still no spin.
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        drop(tx);
        let (r, cancelled, cpu) = wait_for_job(&mut rx, Duration::from_millis(300)).await;
        assert_eq!(r, 7);
        assert!(cancelled, "the shutdown must reach the job");
        assert!(
            cpu < Duration::from_millis(60),
            "the wait used {cpu:?} of CPU"
        );
    }

    #[tokio::test]
    async fn a_shutdown_while_the_job_runs_cancels_it() {
        let (tx, mut rx) = watch::channel(false);
        let cancel = Arc::new(AtomicBool::new(false));
        let seen = cancel.clone();
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            while !seen.load(Ordering::Relaxed) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "never cancelled"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            "cancelled"
        });
        let ask = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(true).unwrap();
            tx
        });
        let r = await_cancelling(task, &mut rx, &cancel).await.unwrap();
        assert_eq!(r, "cancelled");
        drop(ask.await.unwrap());
    }
}
