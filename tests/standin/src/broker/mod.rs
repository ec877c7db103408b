//! The stand-in broker process: one per node, started by the start script.
//!
//! Life of a broker, as the rest of the cluster sees it:
//! 1. start: refuse if the scenario says `fail_start`; generate the log
//!    dirs if they are all empty; lock `.lock` in every dir (refuse if held);
//!    check `meta.properties`; remove `.kafka_cleanshutdown`; listen.
//!    Phase `starting`: fenced, in no ISR. Event `started`.
//! 2. after `registration_delay_ms`: phase `registered` (listed in Metadata
//!    and DescribeCluster). Event `registered`.
//! 3. after `catch_up_delay_ms` more (never, for `never_catch_up`): phase
//!    `in_sync`, back in every ISR. Event `caught_up`. While in sync it
//!    appends a record batch to every partition it leads, every
//!    `append_interval_ms`.
//! 4. SIGTERM: phase `stopping`, out of every ISR at once. Event `sigterm`.
//!    Then either exit(1) at once without the marker (`crash_on_sigterm`,
//!    event `crashed`), or wait `slow_shutdown` ms, write and fsync
//!    `.kafka_cleanshutdown` in every dir, then unlock and delete `.lock` as
//!    Kafka does (event `clean_shutdown`), and exit 0 (event `exited`). A
//!    crash leaves `.lock`, released when the process exits.

pub mod api;
mod configs;
mod sasl;
mod server;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::definition::{BrokerDef, ClusterDef, SecurityProtocol, StatePaths};
use crate::events::{Event, EventKind};
use crate::fsutil;
use crate::liveness::{self, BrokerStatus, Phase};
use crate::logdir::{self, PartitionLog};
use crate::scenario::Scenario;
use crate::view;

/// Shared by the connection threads, the ticker and the main thread.
pub(crate) struct Broker {
    pub paths: StatePaths,
    pub def: ClusterDef,
    pub me: BrokerDef,
    status: Mutex<BrokerStatus>,
}

impl Broker {
    pub fn node_id(&self) -> i32 {
        self.me.node_id
    }

    pub fn epoch(&self) -> i64 {
        self.status.lock().unwrap().epoch
    }

    /// Logs an event; returns its time.
    fn event(&self, kind: EventKind, detail: Option<String>) -> u64 {
        let mut e = Event::now(self.node_id(), kind, std::process::id() as i32);
        e.epoch = Some(self.epoch());
        e.detail = detail;
        if let Err(err) = e.append(&self.paths.events()) {
            eprintln!("broker {}: cannot append event: {err:#}", self.node_id());
        }
        e.mono_ns
    }

    /// Moves to `to` if the broker is in `from` (or in any phase when `from`
    /// is `None`). The event is logged before the status file changes, so
    /// whoever sees the new phase sees it after the event's time.
    fn transition(&self, from: Option<Phase>, to: Phase, kind: EventKind) -> Result<bool> {
        let mut status = self.status.lock().unwrap();
        if from.is_some_and(|f| f != status.phase) || status.phase == to {
            return Ok(false);
        }
        let mut e = Event::now(self.node_id(), kind, status.pid);
        e.epoch = Some(status.epoch);
        e.append(&self.paths.events())?;
        status.phase = to;
        status.phase_mono_ns = e.mono_ns;
        status.save(&self.paths)?;
        log(self.node_id(), &format!("phase {to:?}"));
        Ok(true)
    }

    fn phase(&self) -> (Phase, u64) {
        let s = self.status.lock().unwrap();
        (s.phase, s.phase_mono_ns)
    }
}

/// Runs broker `node_id` of the cluster in `state_dir` until SIGTERM.
/// Returns the process exit code.
pub fn run(state_dir: &Path, node_id: i32) -> Result<i32> {
    let paths = StatePaths::new(state_dir);
    let def = ClusterDef::load(&paths.cluster())?;
    let me = def.broker(node_id)?.clone();
    let started = match start(&paths, &def, &me) {
        Ok(s) => s,
        Err(e) => {
            let mut ev = Event::now(node_id, EventKind::StartFailed, std::process::id() as i32);
            ev.detail = Some(format!("{e:#}"));
            let _ = ev.append(&paths.events());
            return Err(e);
        }
    };
    let Started {
        broker,
        signals,
        locks,
    } = started;

    let stop_ticker = Arc::new(AtomicBool::new(false));
    let ticker = {
        let broker = broker.clone();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || ticker(&broker, &stop))?
    };

    // Blocks until SIGTERM or SIGINT; every thread has them blocked.
    let signal = signals.wait().context("waiting for a signal")?;
    log(node_id, &format!("received {signal:?}: shutting down"));
    broker.transition(None, Phase::Stopping, EventKind::Sigterm)?;

    let scenario = Scenario::load(&paths.scenario()).unwrap_or_default();
    if scenario.crash_on_sigterm.contains(&node_id) {
        broker.event(EventKind::Crashed, Some("scenario crash_on_sigterm".into()));
        log(
            node_id,
            "scenario crash_on_sigterm: exiting without .kafka_cleanshutdown",
        );
        return Ok(1);
    }
    let slow = scenario.slow_shutdown_ms(node_id);
    if slow > 0 {
        log(
            node_id,
            &format!("scenario slow_shutdown: shutting down for {slow} ms"),
        );
        std::thread::sleep(Duration::from_millis(slow));
    }
    stop_ticker.store(true, Ordering::SeqCst);
    let _ = ticker.join();
    logdir::write_clean_shutdown_markers(&me.log_dirs, broker.epoch())?;
    logdir::close_metadata_log(&me.log_dirs)?;
    // Kafka's LogManager.shutdown: unlock and delete `.lock` in every dir
    // (FileLock.destroy), after the markers.
    drop(locks);
    logdir::remove_lock_files(&me.log_dirs)?;
    broker.event(EventKind::CleanShutdown, None);
    {
        let mut status = broker.status.lock().unwrap();
        status.phase = Phase::Stopped;
        status.phase_mono_ns = fsutil::monotonic_ns();
        status.save(&paths)?;
    }
    let _ = std::fs::remove_file(paths.pid_file(node_id));
    broker.event(EventKind::Exited, None);
    log(node_id, "shut down cleanly");
    Ok(0)
}

struct Started {
    broker: Arc<Broker>,
    signals: SigSet,
    locks: Vec<fsutil::KafkaLock>,
}

fn start(paths: &StatePaths, def: &ClusterDef, me: &BrokerDef) -> Result<Started> {
    let node_id = me.node_id;
    let scenario = Scenario::load(&paths.scenario())?;
    if scenario.fail_start.contains(&node_id) {
        bail!("scenario fail_start: broker {node_id} refuses to start");
    }
    // Signals are handled by the main thread only: block them before any
    // thread is spawned, so every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    // A daemon: out of the starter's session and process group.
    let _ = nix::unistd::setsid();

    if logdir::all_empty(&me.log_dirs)? {
        log(node_id, "log dirs are empty: generating them");
        logdir::generate_broker(def, node_id)?;
    }
    let locks = logdir::lock_log_dirs(&me.log_dirs)?;
    logdir::check_meta_properties(&def.cluster_id, node_id, &me.log_dirs)?;
    logdir::remove_clean_shutdown_markers(&me.log_dirs)?;
    logdir::remove_deleted_files(&me.log_dirs)?;
    logdir::append_metadata_record(&me.log_dirs)?;
    logdir::ensure_partition_dirs(def, node_id)?;
    // Every listener is bound before the start script sees the pid file.
    let mut listeners = Vec::new();
    for protocol in SecurityProtocol::ALL {
        let Some(port) = me.port_for(protocol) else {
            continue;
        };
        let tls = match (&def.tls, protocol.uses_tls()) {
            (Some(t), true) => Some(server::tls_config(t, protocol == SecurityProtocol::Ssl)?),
            _ => None,
        };
        let l = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding 127.0.0.1:{port} ({protocol:?})"))?;
        listeners.push((protocol, l, tls));
    }

    let pid = std::process::id() as i32;
    let now = fsutil::monotonic_ns();
    let status = BrokerStatus {
        node_id,
        pid,
        proc_start: liveness::proc_start_time(pid).context("reading own /proc/self/stat")?,
        epoch: liveness::next_broker_epoch(paths)?,
        phase: Phase::Starting,
        started_mono_ns: now,
        phase_mono_ns: now,
    };
    let broker = Arc::new(Broker {
        paths: paths.clone(),
        def: def.clone(),
        me: me.clone(),
        status: Mutex::new(status.clone()),
    });
    // The registration delay counts from the `started` event.
    let started_at = broker.event(EventKind::Started, None);
    let status = {
        let mut s = broker.status.lock().unwrap();
        s.started_mono_ns = started_at;
        s.phase_mono_ns = started_at;
        s.clone()
    };
    status.save(paths)?;
    fsutil::write_atomic(&paths.pid_file(node_id), pid.to_string().as_bytes())?;
    log(
        node_id,
        &format!(
            "started: pid {pid}, epoch {}, listening on 127.0.0.1:{}",
            status.epoch, me.port
        ),
    );

    for (protocol, l, tls) in listeners {
        let b = broker.clone();
        std::thread::Builder::new()
            .name(format!("acceptor-{protocol:?}"))
            .spawn(move || server::accept_loop(b, l, protocol, tls))?;
    }
    Ok(Started {
        broker,
        signals,
        locks,
    })
}

/// Registration, catch-up and appends to led partitions.
fn ticker(broker: &Broker, stop: &AtomicBool) {
    let tick = Duration::from_millis(20);
    let append_every = Duration::from_millis(broker.def.append_interval_ms);
    let mut since_append = Duration::ZERO;
    let mut since_owner_check = Duration::ZERO;
    let mut logs: HashMap<(String, i32), PartitionLog> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        since_append += tick;
        since_owner_check += tick;
        if since_owner_check >= Duration::from_secs(1) {
            since_owner_check = Duration::ZERO;
            // The owner is gone, or so is the cluster's state dir (a test's
            // temporary dir removed before the brokers were killed): nobody
            // can stop this broker any more, so it stops itself.
            let state_gone = broker.paths.owner().parent().is_some_and(|d| !d.exists());
            if state_gone || liveness::Owner::owner_alive(&broker.paths) == Some(false) {
                broker.event(
                    EventKind::Crashed,
                    Some("the process that owns the cluster is gone".into()),
                );
                log(
                    broker.node_id(),
                    "the process that owns the cluster is gone: exiting",
                );
                std::process::exit(3);
            }
        }
        if let Err(e) = step(broker) {
            log(broker.node_id(), &format!("ticker: {e:#}"));
        }
        if since_append >= append_every {
            since_append = Duration::ZERO;
            if let Err(e) = append_to_led_partitions(broker, &mut logs) {
                log(broker.node_id(), &format!("appending: {e:#}"));
            }
        }
    }
}

fn step(broker: &Broker) -> Result<()> {
    let scenario = Scenario::load(&broker.paths.scenario())?;
    let (phase, since) = broker.phase();
    let elapsed_ms = (fsutil::monotonic_ns().saturating_sub(since)) / 1_000_000;
    match phase {
        Phase::Starting if elapsed_ms >= scenario.registration_delay_ms => {
            broker.transition(
                Some(Phase::Starting),
                Phase::Registered,
                EventKind::Registered,
            )?;
        }
        Phase::Registered
            if elapsed_ms >= scenario.catch_up_delay_ms
                && !scenario.never_catch_up.contains(&broker.node_id()) =>
        {
            broker.transition(Some(Phase::Registered), Phase::InSync, EventKind::CaughtUp)?;
        }
        _ => {}
    }
    Ok(())
}

fn append_to_led_partitions(
    broker: &Broker,
    logs: &mut HashMap<(String, i32), PartitionLog>,
) -> Result<()> {
    if broker.phase().0 != Phase::InSync {
        return Ok(());
    }
    let (view, _) = view::current(&broker.paths, &broker.def)?;
    for p in view
        .partitions
        .iter()
        .filter(|p| p.leader == broker.node_id())
    {
        let key = (p.topic.clone(), p.partition);
        if !logs.contains_key(&key) {
            let Some(dir) = find_partition_dir(&broker.me.log_dirs, &p.topic, p.partition)? else {
                continue;
            };
            logs.insert(key.clone(), PartitionLog::open(&dir)?);
        }
        let log = logs.get_mut(&key).expect("inserted above");
        log.append(p.leader_epoch, broker.def.append_record_bytes)?;
    }
    Ok(())
}

pub(crate) fn find_partition_dir(
    log_dirs: &[PathBuf],
    topic: &str,
    partition: i32,
) -> Result<Option<PathBuf>> {
    for dir in log_dirs {
        for pd in logdir::scan_partition_dirs(dir)? {
            if !pd.future && pd.topic == topic && pd.partition == partition {
                return Ok(Some(pd.path));
            }
        }
    }
    Ok(None)
}

/// One line on stderr (the broker's log file): time, broker, message.
pub(crate) fn log(node_id: i32, msg: &str) {
    eprintln!("[{}] broker {node_id}: {msg}", fsutil::unix_ms());
}
