//! The daemon's Prometheus endpoint (`[metrics] listen`, loopback only):
//! what this agent knows about its own broker, kept in memory and updated
//! from the phase observer and the outcome of every lease. A restarted
//! agent starts from zero; the coordinator's `/metrics` keeps the history.
//!
//! The endpoint is plain HTTP/1.1 `GET /metrics`, one request per
//! connection: a loopback scraper needs nothing more, and the agent no
//! web framework.

use kafka_snapshot_model::manifest::{CaptureMode, Manifest};
use kafka_snapshot_model::protocol::{Phase, SnapshotSummary};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Every metric family the endpoint declares: (name, type, help). The
/// renderer writes `# HELP`/`# TYPE` from this table, and tests check the
/// alert rules against it.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "kafka_snapshot_agent_phase",
        "gauge",
        "1 for the phase the agent is in (label phase), 0 for the others.",
    ),
    (
        "kafka_snapshot_agent_broker_stopped_by_agent",
        "gauge",
        "1 while the broker is down because this agent stopped it.",
    ),
    (
        "kafka_snapshot_agent_lease_held",
        "gauge",
        "1 while the agent holds a lease from the coordinator.",
    ),
    (
        "kafka_snapshot_agent_last_snapshot_timestamp_seconds",
        "gauge",
        "Commit time of the last snapshot this agent took.",
    ),
    (
        "kafka_snapshot_agent_last_snapshot_size_bytes",
        "gauge",
        "Archive size of the last snapshot this agent took.",
    ),
    (
        "kafka_snapshot_agent_last_snapshot_data_bytes",
        "gauge",
        "Log dir bytes captured by the last snapshot this agent took.",
    ),
    (
        "kafka_snapshot_agent_capture_fell_back_to_copy",
        "gauge",
        "1 when the last snapshot asked for capture = auto used copy (a log dir does not support reflink): the broker stayed down while its archive was written.",
    ),
    (
        "kafka_snapshot_agent_last_downtime_seconds",
        "gauge",
        "How long the broker was down (stop command to start) for the last snapshot or restore.",
    ),
    (
        "kafka_snapshot_agent_last_unavailable_seconds",
        "gauge",
        "How long the cluster was without the broker for the last snapshot: stop command until back in every ISR (the start command of systemd returns long before).",
    ),
    (
        "kafka_snapshot_agent_phase_duration_seconds",
        "gauge",
        "Time spent in each phase of the last finished lease's work (label phase).",
    ),
    (
        "kafka_snapshot_agent_failures_total",
        "counter",
        "Leases whose work did not produce a snapshot or restore, by reason.",
    ),
    (
        "kafka_snapshot_agent_snapshots_total",
        "counter",
        "Snapshots this agent committed.",
    ),
    (
        "kafka_snapshot_agent_restores_total",
        "counter",
        "Restores this agent finished, by result (done, failed).",
    ),
    (
        "kafka_snapshot_agent_moved_aside_bytes",
        "gauge",
        "Disk space held by data restores moved aside on this host (<dir>.pre-restore-<time>), kept until removed.",
    ),
    (
        "kafka_snapshot_agent_moved_aside_dirs",
        "gauge",
        "Dirs restores moved aside on this host, kept until removed.",
    ),
    (
        "kafka_snapshot_agent_start_time_seconds",
        "gauge",
        "When this agent process started.",
    ),
];

/// Every phase, in the order of a snapshot then a restore.
const PHASES: [Phase; 9] = [
    Phase::Idle,
    Phase::Gating,
    Phase::Stopping,
    Phase::Capturing,
    Phase::Starting,
    Phase::Recovering,
    Phase::Archiving,
    Phase::Downloading,
    Phase::Restoring,
];

/// Why a lease's work ended without a result, as the `reason` label of
/// `kafka_snapshot_agent_failures_total` (a failed restore is counted in
/// `kafka_snapshot_agent_restores_total` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// The pre-stop gate never passed (the lease was released as skipped).
    Gate,
    /// Stopping the broker failed or it stopped uncleanly.
    Stop,
    Capture,
    /// The broker could not be started again: it is left stopped.
    Start,
    Recovery,
    /// Building, uploading or reporting the archive.
    Archive,
    /// The lease was lost or aborted by the coordinator.
    Lease,
    /// The agent was shutting down.
    Shutdown,
    /// Cold storage or the agent's own state could not be used.
    Setup,
    /// A `[hooks]` command failed (`pre_stop`: nothing was stopped).
    Hook,
    /// A copy capture refused or given up by `snapshot.max_copy_downtime`.
    CopyDowntime,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Gate => "gate",
            FailureReason::Stop => "stop",
            FailureReason::Capture => "capture",
            FailureReason::Start => "start",
            FailureReason::Recovery => "recovery",
            FailureReason::Archive => "archive",
            FailureReason::Lease => "lease",
            FailureReason::Shutdown => "shutdown",
            FailureReason::Setup => "setup",
            FailureReason::Hook => "hook",
            FailureReason::CopyDowntime => "copy_downtime",
        }
    }
}

#[derive(Debug)]
struct Inner {
    broker: i32,
    phase: Phase,
    phase_since: Instant,
    broker_stopped: bool,
    lease_held: bool,
    /// Phases of the work in progress, in order, with their durations.
    current: Vec<(Phase, Duration)>,
    /// Those of the last finished work.
    last: Vec<(Phase, Duration)>,
    last_snapshot: Option<(f64, u64, u64)>,
    /// The last snapshot's capture = auto ended up a copy.
    fell_back: Option<bool>,
    last_downtime: Option<Duration>,
    last_unavailable: Option<Duration>,
    failures: BTreeMap<FailureReason, u64>,
    snapshots: u64,
    restores_done: u64,
    restores_failed: u64,
    /// Dirs restores moved aside here and the space they take.
    moved_aside: Option<(usize, u64)>,
    started: f64,
}

/// The agent's metrics, shared between the daemon and the endpoint.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Mutex<Inner>>);

impl Metrics {
    pub fn new(broker: i32) -> Metrics {
        Metrics(Arc::new(Mutex::new(Inner {
            broker,
            phase: Phase::Idle,
            phase_since: Instant::now(),
            broker_stopped: false,
            lease_held: false,
            current: Vec::new(),
            last: Vec::new(),
            last_snapshot: None,
            fell_back: None,
            last_downtime: None,
            last_unavailable: None,
            failures: BTreeMap::new(),
            snapshots: 0,
            restores_done: 0,
            restores_failed: 0,
            moved_aside: None,
            started: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain counters: still right after a panic elsewhere.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the daemon's state: its phase, whether it has the broker
    /// down, whether it holds a lease. Back to idle ends the work: its
    /// phase durations become the last ones.
    pub fn observe(&self, phase: Phase, broker_stopped: bool, lease_held: bool) {
        let mut m = self.lock();
        m.broker_stopped = broker_stopped;
        m.lease_held = lease_held;
        if phase == m.phase {
            return;
        }
        let now = Instant::now();
        let (was, since) = (m.phase, m.phase_since);
        if was != Phase::Idle {
            m.current.push((was, now - since));
        }
        m.phase = phase;
        m.phase_since = now;
        if phase == Phase::Idle && !m.current.is_empty() {
            m.last = std::mem::take(&mut m.current);
        }
    }

    pub fn snapshot_committed(&self, manifest: &Manifest) {
        let s = SnapshotSummary::of(manifest);
        let mut m = self.lock();
        m.snapshots += 1;
        m.fell_back = Some(
            manifest.capture.requested == CaptureMode::Auto
                && manifest.capture.used == CaptureMode::Copy,
        );
        m.last_snapshot = Some((
            s.committed.timestamp_millis() as f64 / 1000.0,
            s.archive_bytes,
            s.data_bytes,
        ));
    }

    /// The last stop's downtime (to the start command's return) and, when
    /// known, how long until the broker was back in every ISR.
    pub fn downtime(&self, ms: u64, unavailable_ms: Option<u64>) {
        let mut m = self.lock();
        m.last_downtime = Some(Duration::from_millis(ms));
        if let Some(u) = unavailable_ms {
            m.last_unavailable = Some(Duration::from_millis(u));
        }
    }

    pub fn failed(&self, reason: FailureReason) {
        *self.lock().failures.entry(reason).or_default() += 1;
    }

    pub fn restore_finished(&self, ok: bool) {
        let mut m = self.lock();
        if ok {
            m.restores_done += 1;
        } else {
            m.restores_failed += 1;
        }
    }

    /// What restores moved aside on this host: dirs and bytes.
    pub fn moved_aside(&self, dirs: usize, bytes: u64) {
        self.lock().moved_aside = Some((dirs, bytes));
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let m = self.lock();
        let b = m.broker.to_string();
        let mut o = String::new();
        let family = |o: &mut String, name: &str| {
            let (_, kind, help) = FAMILIES
                .iter()
                .find(|f| f.0 == name)
                .expect("every rendered family is in FAMILIES");
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let sample = |o: &mut String, name: &str, labels: &[(&str, &str)], v: f64| {
            let mut l = format!("broker=\"{b}\"");
            for (k, val) in labels {
                let _ = write!(l, ",{k}=\"{val}\"");
            }
            let _ = writeln!(o, "{name}{{{l}}} {v}");
        };
        let flag = |x: bool| if x { 1.0 } else { 0.0 };

        family(&mut o, "kafka_snapshot_agent_phase");
        for p in PHASES {
            sample(
                &mut o,
                "kafka_snapshot_agent_phase",
                &[("phase", p.as_str())],
                flag(p == m.phase),
            );
        }
        family(&mut o, "kafka_snapshot_agent_broker_stopped_by_agent");
        sample(
            &mut o,
            "kafka_snapshot_agent_broker_stopped_by_agent",
            &[],
            flag(m.broker_stopped),
        );
        family(&mut o, "kafka_snapshot_agent_lease_held");
        sample(
            &mut o,
            "kafka_snapshot_agent_lease_held",
            &[],
            flag(m.lease_held),
        );
        let (ts, size, data) = (
            "kafka_snapshot_agent_last_snapshot_timestamp_seconds",
            "kafka_snapshot_agent_last_snapshot_size_bytes",
            "kafka_snapshot_agent_last_snapshot_data_bytes",
        );
        for name in [ts, size, data] {
            family(&mut o, name);
            if let Some((t, s, d)) = m.last_snapshot {
                let v = match name {
                    n if n == ts => t,
                    n if n == size => s as f64,
                    _ => d as f64,
                };
                sample(&mut o, name, &[], v);
            }
        }
        family(&mut o, "kafka_snapshot_agent_capture_fell_back_to_copy");
        if let Some(f) = m.fell_back {
            sample(
                &mut o,
                "kafka_snapshot_agent_capture_fell_back_to_copy",
                &[],
                flag(f),
            );
        }
        family(&mut o, "kafka_snapshot_agent_last_downtime_seconds");
        if let Some(d) = m.last_downtime {
            sample(
                &mut o,
                "kafka_snapshot_agent_last_downtime_seconds",
                &[],
                d.as_secs_f64(),
            );
        }
        family(&mut o, "kafka_snapshot_agent_last_unavailable_seconds");
        if let Some(d) = m.last_unavailable {
            sample(
                &mut o,
                "kafka_snapshot_agent_last_unavailable_seconds",
                &[],
                d.as_secs_f64(),
            );
        }
        family(&mut o, "kafka_snapshot_agent_phase_duration_seconds");
        let mut durations: BTreeMap<&str, f64> = BTreeMap::new();
        for (p, d) in &m.last {
            *durations.entry(p.as_str()).or_default() += d.as_secs_f64();
        }
        for (p, d) in durations {
            sample(
                &mut o,
                "kafka_snapshot_agent_phase_duration_seconds",
                &[("phase", p)],
                d,
            );
        }
        family(&mut o, "kafka_snapshot_agent_failures_total");
        for (r, n) in &m.failures {
            sample(
                &mut o,
                "kafka_snapshot_agent_failures_total",
                &[("reason", r.as_str())],
                *n as f64,
            );
        }
        family(&mut o, "kafka_snapshot_agent_snapshots_total");
        sample(
            &mut o,
            "kafka_snapshot_agent_snapshots_total",
            &[],
            m.snapshots as f64,
        );
        family(&mut o, "kafka_snapshot_agent_restores_total");
        for (result, n) in [("done", m.restores_done), ("failed", m.restores_failed)] {
            sample(
                &mut o,
                "kafka_snapshot_agent_restores_total",
                &[("result", result)],
                n as f64,
            );
        }
        for (name, pick) in [
            ("kafka_snapshot_agent_moved_aside_bytes", true),
            ("kafka_snapshot_agent_moved_aside_dirs", false),
        ] {
            family(&mut o, name);
            if let Some((dirs, bytes)) = m.moved_aside {
                let v = if pick { bytes as f64 } else { dirs as f64 };
                sample(&mut o, name, &[], v);
            }
        }
        family(&mut o, "kafka_snapshot_agent_start_time_seconds");
        sample(
            &mut o,
            "kafka_snapshot_agent_start_time_seconds",
            &[],
            m.started,
        );
        o
    }
}

/// Binds the endpoint. A failure is the caller's to report: the agent
/// keeps its brokers' snapshots going without metrics.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Serves `GET /metrics` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let m = metrics.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), answer(conn, &m)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Reads one request head (at most 8 KiB) and answers it.
async fn answer(mut conn: TcpStream, m: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".into(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn phases_of_a_finished_lease_become_the_last_durations() {
        let m = Metrics::new(2);
        m.observe(Phase::Gating, false, true);
        m.observe(Phase::Stopping, true, true);
        std::thread::sleep(Duration::from_millis(30));
        m.observe(Phase::Capturing, true, true);
        let t = m.render();
        assert_eq!(
            value(
                &t,
                "kafka_snapshot_agent_phase{broker=\"2\",phase=\"capturing\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                "kafka_snapshot_agent_phase{broker=\"2\",phase=\"idle\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &t,
                "kafka_snapshot_agent_broker_stopped_by_agent{broker=\"2\"}"
            ),
            Some(1.0)
        );
        // Nothing finished yet: no durations.
        assert!(!t.contains("kafka_snapshot_agent_phase_duration_seconds{"));
        m.observe(Phase::Starting, true, true);
        m.observe(Phase::Recovering, false, true);
        m.observe(Phase::Idle, false, false);
        let t = m.render();
        let stopping = value(
            &t,
            "kafka_snapshot_agent_phase_duration_seconds{broker=\"2\",phase=\"stopping\"}",
        )
        .unwrap();
        assert!(stopping >= 0.03, "{t}");
        for p in ["gating", "capturing", "starting", "recovering"] {
            assert!(
                value(
                    &t,
                    &format!(
                        "kafka_snapshot_agent_phase_duration_seconds{{broker=\"2\",phase=\"{p}\"}}"
                    )
                )
                .is_some(),
                "{p}: {t}"
            );
        }
        assert!(!t.contains("phase_duration_seconds{broker=\"2\",phase=\"idle\"}"));
        assert_eq!(
            value(&t, "kafka_snapshot_agent_lease_held{broker=\"2\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn every_family_is_declared_once_and_counters_end_in_total() {
        let m = Metrics::new(1);
        m.failed(FailureReason::Gate);
        m.failed(FailureReason::Gate);
        m.restore_finished(false);
        let t = m.render();
        for (name, kind, _) in FAMILIES {
            assert_eq!(
                t.matches(&format!("# TYPE {name} {kind}\n")).count(),
                1,
                "{name}"
            );
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{name}");
        }
        assert_eq!(
            value(
                &t,
                "kafka_snapshot_agent_failures_total{broker=\"1\",reason=\"gate\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &t,
                "kafka_snapshot_agent_restores_total{broker=\"1\",result=\"failed\"}"
            ),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics_only() {
        let m = Metrics::new(3);
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(l, m, rx));
        let get = |req: &'static str| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("kafka_snapshot_agent_phase{broker=\"3\",phase=\"idle\"} 1\n"));
        let other = get("GET / HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }
}
