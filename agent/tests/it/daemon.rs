//! The daemon (`kafka-snapshot-agent run`) as a real process against a
//! stand-in cluster and a scripted fake coordinator: a tiny HTTP server in
//! this test process that hands out leases and records every request (with
//! the same monotonic clock as the stand-in's event log, so the order of
//! "broker started" and "agent polled" can be asserted).

use crate::common::*;
use kafka_snapshot_standin::fsutil::monotonic_ns;
use kafka_snapshot_standin::{ClusterSpec, EventKind, ReplicaRef, StandinCluster};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "agent-2-token-0123456789";

// ---------------------------------------------------------------------------
// The fake coordinator

#[derive(Clone, Debug)]
struct Req {
    path: String,
    auth: String,
    body: Value,
    mono_ns: u64,
}

type Hook = Box<dyn FnMut(&Value) -> (u16, Value) + Send>;

struct Script {
    token: String,
    /// Poll answers in order; `idle` once empty.
    actions: VecDeque<Value>,
    heartbeat: Hook,
    release: Hook,
}

struct FakeCoordinator {
    port: u16,
    reqs: Arc<Mutex<Vec<Req>>>,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
}

fn ok() -> (u16, Value) {
    (200, json!({"ok": true}))
}

impl FakeCoordinator {
    fn start(token: &str) -> FakeCoordinator {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script {
            token: token.to_string(),
            actions: VecDeque::new(),
            heartbeat: Box::new(|_| (200, json!({"ttl_ms": 1500, "abort": false}))),
            release: Box::new(|_| ok()),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (reqs, script, stop) = (reqs.clone(), script.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = serve(conn, &reqs, &script);
                    }
                }
            });
        }
        FakeCoordinator {
            port,
            reqs,
            script,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn push_action(&self, action: Value) {
        self.script.lock().unwrap().actions.push_back(action);
    }

    fn on_heartbeat(&self, hook: impl FnMut(&Value) -> (u16, Value) + Send + 'static) {
        self.script.lock().unwrap().heartbeat = Box::new(hook);
    }

    fn on_release(&self, hook: impl FnMut(&Value) -> (u16, Value) + Send + 'static) {
        self.script.lock().unwrap().release = Box::new(hook);
    }

    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    fn of(&self, path: &str) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `done` holds for the request log; panics with the log
    /// and the daemon's stderr otherwise.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        daemon: &Daemon,
        done: impl Fn(&[Req]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.requests()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}\nrequests: {:#?}\ndaemon log:\n{}",
            self.requests()
                .iter()
                .map(|r| format!("{} {}", r.path, r.body))
                .collect::<Vec<_>>(),
            daemon.log()
        );
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One HTTP/1.1 request per connection (we answer `Connection: close`).
fn serve(conn: TcpStream, reqs: &Mutex<Vec<Req>>, script: &Mutex<Script>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => auth = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let req = Req {
        path: path.clone(),
        auth: auth.clone(),
        body: body.clone(),
        mono_ns: monotonic_ns(),
    };
    let (status, answer) = {
        let mut s = script.lock().unwrap();
        if auth != format!("Bearer {}", s.token) {
            (401, json!({"error": "unknown agent token"}))
        } else {
            match path.as_str() {
                "/v1/agent/poll" => {
                    let action = s.actions.pop_front().unwrap_or(json!({"type": "idle"}));
                    (200, json!({"action": action, "poll_interval_ms": 200}))
                }
                "/v1/agent/heartbeat" => (s.heartbeat)(&body),
                "/v1/agent/release" => (s.release)(&body),
                "/v1/agent/report" | "/v1/agent/notice" => ok(),
                _ => (404, json!({"error": "no such endpoint"})),
            }
        }
    };
    reqs.lock().unwrap().push(req);
    let text = answer.to_string();
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    w.flush()
}

fn snapshot_lease(epoch: u64, gate_timeout_ms: u64) -> Value {
    json!({"type": "snapshot", "lease": {
        "epoch": epoch, "ttl_ms": 1500, "cycle_id": 1, "gate_timeout_ms": gate_timeout_ms
    }})
}

fn restore_lease(epoch: u64, order: i64, cluster: &str, snapshot: &str, force: bool) -> Value {
    json!({"type": "restore",
        "lease": {"epoch": epoch, "ttl_ms": 1500, "cycle_id": null, "gate_timeout_ms": 60000},
        "order": {"id": order, "cluster_id": cluster, "snapshot_id": snapshot, "force": force}})
}

fn restore_lease_gated(
    epoch: u64,
    order: i64,
    cluster: &str,
    snapshot: &str,
    gate_timeout_ms: u64,
) -> Value {
    let mut v = restore_lease(epoch, order, cluster, snapshot, false);
    v["lease"]["gate_timeout_ms"] = json!(gate_timeout_ms);
    v
}

// ---------------------------------------------------------------------------
// The cluster, the config and the daemon process

fn cluster(root: &Path, change: impl FnOnce(&mut ClusterSpec)) -> StandinCluster {
    let mut spec = ClusterSpec::new(3);
    spec.data_root = Some(root.join("data"));
    change(&mut spec);
    let c = StandinCluster::create(&root.join("cluster"), &spec).expect("stand-in cluster");
    c.start_all(Duration::from_secs(60))
        .expect("cluster starts");
    c
}

struct Setup {
    root: PathBuf,
    c: StandinCluster,
    store: PathBuf,
    coord: FakeCoordinator,
    /// The daemon's `[metrics] listen` port.
    metrics_port: u16,
    /// Last: dropped after the cluster, whose brokers live in it.
    _t: tempfile::TempDir,
}

fn setup(fs_kind: &str) -> Setup {
    setup_with(fs_kind, |_| {})
}

/// No appends: restored files must stay as the snapshot has them.
fn quiet(spec: &mut ClusterSpec) {
    spec.append_interval = Duration::from_secs(3600);
}

/// Enough data (24 MiB per broker) that copy capture through a 1 MiB/s
/// link keeps the broker down for seconds.
fn slow_capture(spec: &mut ClusterSpec) {
    spec.bytes_per_broker = 24 << 20;
    spec.segment_bytes = 2 << 20;
}
const SLOW_LINK: &str = "bandwidth_limit = \"1MiB\"";

fn setup_with(fs_kind: &str, change: impl FnOnce(&mut ClusterSpec)) -> Setup {
    let t = scratch(fs_kind);
    let root = t.path().to_path_buf();
    let c = cluster(&root, change);
    let store = new_store(&root);
    let coord = FakeCoordinator::start(TOKEN);
    let metrics_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Setup {
        _t: t,
        root,
        c,
        store,
        coord,
        metrics_port,
    }
}

impl Setup {
    /// The agent config of broker 2; `storage_extra` goes into [storage].
    fn config(&self, capture: &str, token: &str, storage_extra: &str) -> PathBuf {
        let token_file = self.root.join("token");
        fs::write(&token_file, format!("{token}\n")).unwrap();
        fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();
        let dirs: Vec<String> = self
            .c
            .log_dirs(2)
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        let text = format!(
            "[broker]\nlog_dirs = [{}]\nstop_command = {:?}\nstart_command = {:?}\nstop_timeout = \"60s\"\n\
             command_timeout = \"60s\"\nrecovery_timeout = \"60s\"\n\
             [snapshot]\ncapture = {capture:?}\n\
             [storage]\nurl = {:?}\n{storage_extra}\n\
             [kafka]\nbootstrap_servers = [{}]\nrequest_timeout = \"5s\"\n\
             [gate]\nstable_checks = 2\ncheck_interval = \"300ms\"\n\
             [coordinator]\nurl = {:?}\ntoken_file = {:?}\nstate_file = {:?}\n\
             poll_interval = \"200ms\"\nrequest_timeout = \"5s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{}\"\n",
            dirs.join(", "),
            self.c.stop_script(2).display().to_string(),
            self.c.start_script(2).display().to_string(),
            store_url(&self.store),
            self.c
                .bootstrap()
                .split(',')
                .map(|b| format!("{b:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.coord.url(),
            token_file.display().to_string(),
            self.state_file().display().to_string(),
            self.metrics_port,
        );
        let path = self.root.join("agent-2.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// GET /metrics of the daemon.
    fn scrape(&self) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics endpoint");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }

    /// Scrapes until `done` holds for the text; returns it.
    fn scrape_until(&self, what: &str, daemon: &Daemon, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.scrape();
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never showed {what}:\n{text}\ndaemon log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("state/state.json")
    }

    fn events_of(&self, broker: i32, kind: EventKind) -> Vec<u64> {
        self.c
            .events()
            .unwrap()
            .into_iter()
            .filter(|e| e.broker == broker && e.kind == kind)
            .map(|e| e.mono_ns)
            .collect()
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(cfg: &Path, log: &Path, failpoint: Option<&str>) -> Daemon {
        let mut cmd = Self::command(cfg, log);
        match failpoint {
            Some(f) => cmd.env("KAFKA_SNAPSHOT_FAILPOINT", f),
            None => cmd.env_remove("KAFKA_SNAPSHOT_FAILPOINT"),
        };
        Daemon {
            child: cmd.spawn().expect("spawn the daemon"),
            log: log.to_path_buf(),
        }
    }

    /// A daemon that stops the first time it passes each of `points`
    /// (`KAFKA_SNAPSHOT_PAUSE`) until [`go_on`] lets it continue.
    fn spawn_paused(cfg: &Path, log: &Path, pause_dir: &Path, points: &[&str]) -> Daemon {
        fs::create_dir_all(pause_dir).unwrap();
        let mut cmd = Self::command(cfg, log);
        cmd.env_remove("KAFKA_SNAPSHOT_FAILPOINT")
            .env("KAFKA_SNAPSHOT_PAUSE", points.join(","))
            .env("KAFKA_SNAPSHOT_PAUSE_DIR", pause_dir);
        Daemon {
            child: cmd.spawn().expect("spawn the daemon"),
            log: log.to_path_buf(),
        }
    }

    fn command(cfg: &Path, log: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-snapshot-agent"));
        cmd.args(["run", "--config", &cfg.display().to_string()])
            .env("KAFKA_SNAPSHOT_LOG", "info")
            .env_remove("KAFKA_SNAPSHOT_PAUSE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap());
        cmd
    }

    /// Waits until the daemon is paused at `point`.
    fn wait_paused(&self, pause_dir: &Path, point: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !pause_dir.join(point).exists() {
            assert!(
                Instant::now() < deadline,
                "the daemon never paused at {point}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still runs after {timeout:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets a daemon paused at `point` go on.
fn go_on(pause_dir: &Path, point: &str) {
    fs::remove_file(pause_dir.join(point)).unwrap();
}

/// A directory made immutable (`chattr +i`: nothing in it can be created,
/// renamed or removed, even by root) for as long as this lives.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Immutable {
        let out = Command::new("chattr").arg("+i").arg(dir).output().unwrap();
        check_exit(&out, &format!("chattr +i {}", dir.display()), 0);
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn releases(coord: &FakeCoordinator) -> Vec<Value> {
    coord
        .of("/v1/agent/release")
        .into_iter()
        .map(|r| r.body)
        .collect()
}

/// The value of one series (name with its labels) in a scrape.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn first_at(reqs: &[Req], path: &str) -> Option<u64> {
    reqs.iter().find(|r| r.path == path).map(|r| r.mono_ns)
}

// ---------------------------------------------------------------------------
// Snapshots under a lease

#[test]
fn reflink_snapshot_releases_at_recovery_then_reports_the_archive() {
    let s = setup("xfs");
    let cfg = s.config("reflink", TOKEN, "");
    // Clones kept while the node took incremental snapshots: a node whose
    // snapshots are full removes them.
    for dir in s.c.log_dirs(2) {
        let kept = dir
            .parent()
            .unwrap()
            .join(".kafka-snapshot-staging/kept/0-x");
        fs::create_dir_all(&kept).unwrap();
        fs::write(kept.join("00000000000000000000.log"), b"kept").unwrap();
    }
    s.coord.push_action(snapshot_lease(7, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });

    let reqs = s.coord.requests();
    assert!(
        reqs.iter().all(|r| r.auth == format!("Bearer {TOKEN}")),
        "every request carries the token"
    );
    let rel = releases(&s.coord);
    assert_eq!(rel.len(), 1, "{rel:?}");
    assert_eq!(rel[0]["epoch"], 7);
    assert_eq!(rel[0]["broker"], 2);
    assert_eq!(rel[0]["outcome"]["type"], "recovered", "{rel:?}");
    let id = rel[0]["outcome"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rel[0]["outcome"]["downtime_ms"].as_u64().is_some());

    // Heartbeats under the lease, each with epoch and phase, all before the
    // release; the report (after the release) carries the committed summary.
    let hbs = s.coord.of("/v1/agent/heartbeat");
    assert!(!hbs.is_empty(), "no heartbeat sent");
    let released_at = first_at(&reqs, "/v1/agent/release").unwrap();
    for h in &hbs {
        assert_eq!(h.body["epoch"], 7);
        assert!(h.body["phase"].is_string(), "{}", h.body);
        assert!(h.mono_ns < released_at, "heartbeat after the release");
    }
    let report = &s.coord.of("/v1/agent/report")[0];
    assert!(report.mono_ns > released_at);
    assert_eq!(report.body["epoch"], 7);
    assert_eq!(
        report.body["result"]["type"], "committed",
        "{}",
        report.body
    );
    assert_eq!(
        report.body["result"]["snapshot"]["snapshot_id"],
        id.as_str()
    );
    assert_eq!(report.body["result"]["snapshot"]["capture"], "reflink");

    // The broker went down once and is back; the snapshot verifies; no
    // staging is left but the clones an incremental snapshot (the default)
    // keeps for the next one; the state file is idle again.
    assert!(s.c.is_running(2));
    assert_eq!(s.c.max_brokers_down().unwrap(), 1);
    assert_eq!(s.events_of(2, EventKind::Sigterm).len(), 1);
    run(
        &[
            "archive",
            "verify",
            "--store",
            &store_url(&s.store),
            "--snapshot",
            &id,
        ],
        0,
    );
    for dir in s.c.log_dirs(2) {
        let staging = dir.parent().unwrap().join(".kafka-snapshot-staging");
        assert_eq!(names(&staging), vec![".lock", "kept"], "staging left");
    }
    let st = wait_idle(&s);
    assert_eq!(st["broker_stopped_by_agent"], false, "{st}");
    assert_eq!(st["lease_held"], false, "{st}");
}

/// The daemon's state file once it says `idle` (within 10 s): the daemon
/// has finished with its lease, and one killed now leaves nothing to do.
fn wait_idle(s: &Setup) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st: Value = serde_json::from_slice(&fs::read(s.state_file()).unwrap()).unwrap();
        if st["phase"] == "idle" {
            return st;
        }
        assert!(Instant::now() < deadline, "state not idle: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Grants the daemon of `cfg` snapshot lease `epoch` and waits for its
/// release: the daemon and every release the coordinator got.
fn lease_until_release(
    s: &Setup,
    cfg: &std::path::Path,
    epoch: u64,
    within: Duration,
) -> (Daemon, Vec<Value>) {
    s.coord.push_action(snapshot_lease(epoch, 60_000));
    let d = Daemon::spawn(cfg, &s.root.join("daemon.log"), None);
    s.coord.wait_for("the release", within, &d, |r| {
        r.iter().any(|r| r.path == "/v1/agent/release")
    });
    let rel = releases(&s.coord);
    (d, rel)
}

#[test]
fn copy_snapshot_commits_before_the_release() {
    let s = setup("ext4");
    let cfg = s.config("copy", TOKEN, "");
    let (d, rel) = lease_until_release(&s, &cfg, 3, Duration::from_secs(90));
    assert_eq!(rel[0]["outcome"]["type"], "committed", "{rel:?}");
    let snap = &rel[0]["outcome"]["snapshot"];
    assert_eq!(snap["capture"], "copy");
    assert_eq!(snap["broker"], 2);
    assert_eq!(snap["cluster_id"], s.c.cluster_id());
    let id = snap["snapshot_id"].as_str().unwrap();
    run(
        &[
            "archive",
            "verify",
            "--store",
            &store_url(&s.store),
            "--snapshot",
            id,
        ],
        0,
    );
    // Nothing follows the release for a committed snapshot.
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.coord.of("/v1/agent/report").is_empty());
    assert!(s.c.is_running(2));
    assert_eq!(s.c.max_brokers_down().unwrap(), 1);

    // The agent's metrics tell the same story.
    let m = s.scrape_until("the agent back to idle", &d, |t| {
        metric(t, "kafka_snapshot_agent_phase{broker=\"2\",phase=\"idle\"}") == Some(1.0)
    });
    let at = |series: &str| metric(&m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"));
    assert_eq!(
        at("kafka_snapshot_agent_snapshots_total{broker=\"2\"}"),
        1.0
    );
    assert_eq!(
        at("kafka_snapshot_agent_last_snapshot_size_bytes{broker=\"2\"}"),
        snap["archive_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        at("kafka_snapshot_agent_last_snapshot_data_bytes{broker=\"2\"}"),
        snap["data_bytes"].as_f64().unwrap()
    );
    let committed = chrono::DateTime::parse_from_rfc3339(snap["committed"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    assert_eq!(
        at("kafka_snapshot_agent_last_snapshot_timestamp_seconds{broker=\"2\"}"),
        committed
    );
    let downtime = rel[0]["outcome"]["downtime_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (at("kafka_snapshot_agent_last_downtime_seconds{broker=\"2\"}") - downtime).abs() < 1e-6,
        "{m}"
    );
    // Until back in every ISR: the downtime and then the recovery check.
    let unavailable = at("kafka_snapshot_agent_last_unavailable_seconds{broker=\"2\"}");
    assert!(
        unavailable >= downtime && unavailable < downtime + 120.0,
        "unavailable {unavailable} s, downtime {downtime} s\n{m}"
    );
    assert_eq!(
        at("kafka_snapshot_agent_broker_stopped_by_agent{broker=\"2\"}"),
        0.0
    );
    assert_eq!(at("kafka_snapshot_agent_lease_held{broker=\"2\"}"), 0.0);
    for phase in ["gating", "stopping", "capturing", "starting", "recovering"] {
        let secs = at(&format!(
            "kafka_snapshot_agent_phase_duration_seconds{{broker=\"2\",phase=\"{phase}\"}}"
        ));
        assert!((0.0..120.0).contains(&secs), "{phase}: {secs}");
    }
    assert!(!m.contains("kafka_snapshot_agent_failures_total{"), "{m}");
    assert_eq!(
        at("kafka_snapshot_agent_capture_fell_back_to_copy{broker=\"2\"}"),
        0.0,
        "copy was asked for"
    );
}

/// Reflink staging pins what the broker deletes while the archive is
/// written: with less than `snapshot.staging_min_free` free, a reflink
/// capture is refused before the broker is stopped, not after.
#[test]
fn reflink_without_free_space_is_refused_before_the_stop() {
    let s = setup("xfs");
    let cfg = s.config("reflink", TOKEN, "");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "capture = \"reflink\"",
        "capture = \"reflink\"\nstaging_min_free = \"99.9%\"",
    );
    fs::write(&cfg, text).unwrap();
    let (_daemon, rel) = lease_until_release(&s, &cfg, 6, Duration::from_secs(60));
    assert_eq!(rel[0]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[0]["outcome"]["broker_running"], true, "{rel:?}");
    let reason = rel[0]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("before stopping the broker") && reason.contains("staging_min_free"),
        "{reason}"
    );
    assert!(
        s.events_of(2, EventKind::Sigterm).is_empty(),
        "broker 2 was stopped"
    );
    assert!(s.c.is_running(2));
}

/// `capture = "auto"` on a filesystem without reflink works, by copy, with
/// the broker down for the whole archive: the metric behind the
/// KafkaSnapshotCaptureFellBackToCopy alert says so.
#[test]
fn auto_capture_falling_back_to_copy_is_a_metric() {
    let s = setup("ext4");
    let cfg = s.config("auto", TOKEN, "");
    let (d, rel) = lease_until_release(&s, &cfg, 4, Duration::from_secs(90));
    assert_eq!(rel[0]["outcome"]["type"], "committed", "{rel:?}");
    assert_eq!(rel[0]["outcome"]["snapshot"]["capture"], "copy");
    let m = s.scrape_until("the fallback counted", &d, |t| {
        metric(
            t,
            "kafka_snapshot_agent_capture_fell_back_to_copy{broker=\"2\"}",
        ) == Some(1.0)
    });
    assert!(m.contains("# TYPE kafka_snapshot_agent_capture_fell_back_to_copy gauge"));
    assert!(
        d.log().contains("capture falls back to copy"),
        "{}",
        d.log()
    );
}

/// `snapshot.max_copy_downtime`: a copy that runs past it is given up and
/// the broker started again, nothing committed.
#[test]
fn a_copy_capture_past_max_copy_downtime_is_given_up_and_the_broker_started() {
    let s = setup_with("ext4", slow_capture);
    let cfg = s.config("copy", TOKEN, SLOW_LINK);
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "capture = \"copy\"",
        "capture = \"copy\"\nmax_copy_downtime = \"3s\"",
    );
    fs::write(&cfg, text).unwrap();
    let (d, rel) = lease_until_release(&s, &cfg, 7, Duration::from_secs(90));
    assert_eq!(rel[0]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[0]["outcome"]["broker_running"], true, "{rel:?}");
    let reason = rel[0]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("given up after 3s") && reason.contains("max_copy_downtime"),
        "{reason}"
    );
    // It was stopped, and started again well before the 24 s the whole
    // copy would have taken.
    let stops = s.events_of(2, EventKind::Sigterm);
    let starts = s.events_of(2, EventKind::Started);
    assert_eq!(stops.len(), 1, "one stop");
    let started = starts
        .iter()
        .find(|t| **t > stops[0])
        .expect("started again");
    let down = Duration::from_nanos(started - stops[0]);
    assert!(down < Duration::from_secs(15), "down {down:?}");
    assert!(s.c.is_running(2));
    // Nothing was committed.
    let stored = files_under(&s.store);
    assert!(
        !stored.iter().any(|n| n.ends_with("manifest.json")),
        "{stored:?}"
    );
    s.scrape_until("the failure counted", &d, |t| {
        metric(
            t,
            "kafka_snapshot_agent_failures_total{broker=\"2\",reason=\"copy_downtime\"}",
        ) == Some(1.0)
    });
}

/// `snapshot.max_copy_downtime`: when the last copy capture of the node
/// says this one would take longer, it is refused before the stop.
#[test]
fn a_copy_capture_expected_past_max_copy_downtime_is_refused_before_the_stop() {
    let s = setup_with("ext4", slow_capture);
    // Through 1 MiB/s: seconds of copy.
    let cfg = s.config("copy", TOKEN, SLOW_LINK);
    let (d, rel) = lease_until_release(&s, &cfg, 8, Duration::from_secs(90));
    assert_eq!(rel[0]["outcome"]["type"], "committed", "{rel:?}");
    // Killed only once it has written down that it is done: a daemon
    // killed between its release and that finds the lease to finish.
    wait_idle(&s);
    drop(d);
    let first_down = rel[0]["outcome"]["downtime_ms"].as_u64().unwrap();
    assert!(first_down >= 3000, "the first copy took {first_down} ms");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "capture = \"copy\"",
        "capture = \"copy\"\nmax_copy_downtime = \"2s\"",
    );
    fs::write(&cfg, text).unwrap();
    s.coord.push_action(snapshot_lease(9, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon2.log"), None);
    s.coord
        .wait_for("the second release", Duration::from_secs(60), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    let reason = rel[1]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused before stopping node 2")
            && reason.contains(
                rel[0]["outcome"]["snapshot"]["snapshot_id"]
                    .as_str()
                    .unwrap()
            )
            && reason.contains("max_copy_downtime (2s)"),
        "{reason}\n{}",
        d.log()
    );
    assert_eq!(
        s.events_of(2, EventKind::Sigterm).len(),
        1,
        "only the first snapshot stopped broker 2"
    );
    assert!(s.c.is_running(2));
}

/// What restores moved aside is reported with every poll and, with
/// `restore.remove_moved_aside_after`, removed once that old while the
/// broker is in sync; younger data, other names and symlinks stay.
#[test]
fn moved_aside_data_is_reported_and_removed_once_due() {
    let s = setup_with("ext4", quiet);
    let cfg = s.config("copy", TOKEN, "");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str("[restore]\nremove_moved_aside_after = \"1h\"\n");
    fs::write(&cfg, text).unwrap();
    let dir = s.c.log_dirs(2)[0].clone();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let parent = dir.parent().unwrap();
    let stamp = |ago: chrono::Duration| (chrono::Utc::now() - ago).format("%Y%m%dT%H%M%SZ");
    let old = parent.join(format!(
        "{name}.pre-restore-{}",
        stamp(chrono::Duration::hours(2))
    ));
    let young = parent.join(format!(
        "{name}.pre-restore-{}",
        stamp(chrono::Duration::minutes(10))
    ));
    let by_hand = parent.join(format!("{name}.pre-restore-kept-by-hand"));
    let victim = s.root.join("victim");
    for d in [&old, &young, &by_hand, &victim] {
        fs::create_dir_all(d.join("orders-0")).unwrap();
        fs::write(
            d.join("orders-0/00000000000000000000.log"),
            vec![1u8; 1 << 20],
        )
        .unwrap();
    }
    std::os::unix::fs::symlink(&victim, old.join("link")).unwrap();
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the removal's notice", Duration::from_secs(30), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/notice")
        });
    let notice = &s.coord.of("/v1/agent/notice")[0].body;
    let msg = notice["message"].as_str().unwrap();
    assert!(
        msg.contains(&old.display().to_string()) && msg.contains("remove_moved_aside_after"),
        "{msg}"
    );
    assert!(!old.exists());
    assert!(young.exists() && by_hand.exists() && dir.join("meta.properties").exists());
    assert!(
        victim.join("orders-0/00000000000000000000.log").exists(),
        "a symlink was followed"
    );
    let polls_before = s.coord.of("/v1/agent/poll").len();
    s.coord.wait_for(
        "a poll after the removal",
        Duration::from_secs(10),
        &d,
        |r| r.iter().filter(|r| r.path == "/v1/agent/poll").count() > polls_before + 1,
    );
    let poll = s.coord.of("/v1/agent/poll").last().unwrap().body.clone();
    let reported: Vec<(String, Value)> = poll["moved_aside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_string(),
                m["remove_after"].clone(),
            )
        })
        .collect();
    assert_eq!(reported.len(), 2, "{poll}");
    let by_hand_entry = reported
        .iter()
        .find(|(p, _)| p == &by_hand.display().to_string())
        .expect("the dir named by hand is listed");
    assert!(by_hand_entry.1.is_null(), "never removed by the agent");
    let young_entry = reported
        .iter()
        .find(|(p, _)| p == &young.display().to_string())
        .expect("the young dir is listed");
    assert!(young_entry.1.is_string(), "removed after an hour: {poll}");
    let m = s.scrape_until("the moved-aside metrics", &d, |t| {
        metric(t, "kafka_snapshot_agent_moved_aside_dirs{broker=\"2\"}") == Some(2.0)
    });
    assert!(
        metric(&m, "kafka_snapshot_agent_moved_aside_bytes{broker=\"2\"}").unwrap()
            >= (2 << 20) as f64,
        "{m}"
    );
    assert!(s.c.is_running(2));
    assert!(s.events_of(2, EventKind::Sigterm).is_empty());
}

#[test]
fn gate_never_passing_skips_and_leaves_the_broker_alone() {
    let s = setup("ext4");
    // A replica of one of broker 2's partitions is out of sync elsewhere.
    let md = s.c.metadata().unwrap();
    let (topic, partition) = md
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .find(|(_, p)| p.replica_nodes.iter().any(|r| r.0 == 2))
        .map(|(t, p)| (t.name.as_ref().unwrap().0.to_string(), p.partition_index))
        .unwrap();
    s.c.update_scenario(|sc| {
        sc.out_of_sync.push(ReplicaRef {
            topic: topic.clone(),
            partition,
            broker: 3,
        })
    })
    .unwrap();
    let cfg = s.config("copy", TOKEN, "");
    s.coord.push_action(snapshot_lease(11, 1_500));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the release", Duration::from_secs(60), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/release")
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[0]["epoch"], 11);
    assert_eq!(rel[0]["outcome"]["type"], "skipped", "{rel:?}");
    let reason = rel[0]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not safe to stop") && reason.contains("OwnPartitionsInSync"),
        "{reason}"
    );
    assert!(
        s.events_of(2, EventKind::Sigterm).is_empty(),
        "broker 2 was stopped"
    );
    assert!(s.c.is_running(2));
    for h in s.coord.of("/v1/agent/heartbeat") {
        assert_eq!(h.body["phase"], "gating", "{}", h.body);
    }
    // The failure is counted before the release and the phase durations
    // are recorded after it: wait for both.
    let m = s.scrape_until("the skip counted and its phases recorded", &d, |t| {
        metric(
            t,
            "kafka_snapshot_agent_failures_total{broker=\"2\",reason=\"gate\"}",
        ) == Some(1.0)
            && t.contains("kafka_snapshot_agent_phase_duration_seconds{")
    });
    // Only the gate ran: one phase, about as long as the gate timeout.
    let gating = metric(
        &m,
        "kafka_snapshot_agent_phase_duration_seconds{broker=\"2\",phase=\"gating\"}",
    )
    .unwrap_or_else(|| panic!("{m}"));
    assert!(gating >= 1.4, "{m}");
    assert_eq!(
        m.matches("kafka_snapshot_agent_phase_duration_seconds{")
            .count(),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "kafka_snapshot_agent_snapshots_total{broker=\"2\"}"),
        Some(0.0)
    );
    assert!(
        !m.contains("kafka_snapshot_agent_last_snapshot_timestamp_seconds{"),
        "{m}"
    );
}

#[test]
fn lost_lease_while_capturing_starts_the_broker_again() {
    let s = setup_with("ext4", slow_capture);
    let cfg = s.config("copy", TOKEN, SLOW_LINK);
    s.coord.on_heartbeat(|hb| {
        if hb["phase"] == "capturing" {
            (409, json!({"error": "stale lease epoch 5, current is 6"}))
        } else {
            (200, json!({"ttl_ms": 1500, "abort": false}))
        }
    });
    s.coord.push_action(snapshot_lease(5, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord.wait_for(
        "a notice of the lost lease",
        Duration::from_secs(90),
        &d,
        |r| r.iter().any(|r| r.path == "/v1/agent/notice"),
    );
    let notice = &s.coord.of("/v1/agent/notice")[0].body;
    let msg = notice["message"].as_str().unwrap();
    assert!(
        msg.contains("lease 5 was lost") && msg.contains("runs"),
        "{msg}"
    );
    assert_eq!(notice["epoch"], 5);
    // Broker 2 was stopped, then started again; no snapshot was completed
    // and a lost lease is never released.
    assert!(s.c.is_running(2));
    let term = s.events_of(2, EventKind::Sigterm);
    let started = s.events_of(2, EventKind::Started);
    assert_eq!(term.len(), 1);
    assert!(started.iter().any(|t| *t > term[0]), "not started again");
    assert!(releases(&s.coord).is_empty(), "{:?}", releases(&s.coord));
    let out = run(
        &["archive", "list", "--store", &store_url(&s.store), "--json"],
        0,
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["complete"] == false),
        "{listed}"
    );
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    drop(d);
}

#[test]
fn killed_with_the_broker_down_the_next_daemon_starts_it_before_polling() {
    let s = setup("xfs");
    let cfg = s.config("reflink", TOKEN, "");
    s.coord.push_action(snapshot_lease(9, 60_000));
    let mut first = Daemon::spawn(&cfg, &s.root.join("daemon-1.log"), Some("after-stop"));
    let status = first.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the failpoint should have killed it");
    assert!(
        !s.c.is_running(2),
        "the broker should be down after the kill"
    );
    let st: Value = serde_json::from_slice(&fs::read(s.state_file()).unwrap()).unwrap();
    assert_eq!(st["phase"], "stopping", "{st}");
    assert_eq!(st["broker_stopped_by_agent"], true);
    assert_eq!(st["lease_epoch"], 9);

    // The coordinator expired lease 9 meanwhile: releasing it is a 409.
    s.coord
        .on_release(|_| (409, json!({"error": "lease 9 expired"})));
    let restarted_at = monotonic_ns();
    let second = Daemon::spawn(&cfg, &s.root.join("daemon-2.log"), None);
    s.coord.wait_for(
        "a poll from the new daemon",
        Duration::from_secs(60),
        &second,
        |r| {
            r.iter()
                .any(|r| r.path == "/v1/agent/poll" && r.mono_ns > restarted_at)
        },
    );
    let after: Vec<Req> = s
        .coord
        .requests()
        .into_iter()
        .filter(|r| r.mono_ns > restarted_at)
        .collect();
    let started = s
        .events_of(2, EventKind::Started)
        .into_iter()
        .find(|t| *t > restarted_at)
        .expect("broker 2 started by the new daemon");
    let first_request = after[0].mono_ns;
    assert!(
        started < first_request,
        "the broker must be started before the coordinator is contacted"
    );
    let notice_at = first_at(&after, "/v1/agent/notice").expect("a notice");
    let release_at = first_at(&after, "/v1/agent/release").expect("the old lease released");
    let poll_at = first_at(&after, "/v1/agent/poll").unwrap();
    assert!(notice_at < poll_at && release_at < poll_at);
    let notice = &after
        .iter()
        .find(|r| r.path == "/v1/agent/notice")
        .unwrap()
        .body;
    let msg = notice["message"].as_str().unwrap();
    assert!(
        msg.contains("interrupted snapshot") && msg.contains("started again"),
        "{msg}"
    );
    assert_eq!(notice["epoch"], 9);
    let rel = &after
        .iter()
        .find(|r| r.path == "/v1/agent/release")
        .unwrap()
        .body;
    assert_eq!(rel["epoch"], 9);
    assert_eq!(rel["outcome"]["type"], "failed");
    assert_eq!(rel["outcome"]["broker_running"], true);
    assert!(s.c.is_running(2));
    // The poll says idle, and the state file agrees.
    let poll = &after
        .iter()
        .find(|r| r.path == "/v1/agent/poll")
        .unwrap()
        .body;
    assert_eq!(poll["phase"], "idle");
    assert_eq!(poll["broker_running"], true);
    assert!(second.log().contains("starting it before anything else"));
    kafka_snapshot_testkit::report::record(
        "security",
        "8. killed right after the snapshot stop: the next daemon starts the broker",
        &[("inputs", 1)],
    );
}

/// Killed after the coordinator took its `recovered` release, before its
/// state file said so: the next daemon's release of the old lease is
/// refused (the coordinator keeps the first outcome), so it reports the
/// archive that release announced as failed: the staged copy is gone.
#[test]
fn killed_after_its_release_the_next_daemon_reports_the_archive_failed() {
    let s = setup("xfs");
    let cfg = s.config("reflink", TOKEN, "");
    s.coord.push_action(snapshot_lease(12, 60_000));
    let mut first = Daemon::spawn(&cfg, &s.root.join("daemon-1.log"), Some("after-release"));
    let status = first.wait_exit(Duration::from_secs(90));
    assert!(!status.success(), "the failpoint should have killed it");
    let rel = releases(&s.coord);
    assert_eq!(rel.len(), 1, "{rel:?}");
    assert_eq!(rel[0]["outcome"]["type"], "recovered", "{rel:?}");
    let id = rel[0]["outcome"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let st: Value = serde_json::from_slice(&fs::read(s.state_file()).unwrap()).unwrap();
    assert_eq!(st["phase"], "archiving", "{st}");
    assert_eq!(st["lease_held"], true, "{st}");
    assert!(s.c.is_running(2));

    s.coord.on_release(|_| {
        (
            409,
            json!({"error": "lease epoch 12 of broker 2 was already released (recovered)"}),
        )
    });
    let restarted_at = monotonic_ns();
    let second = Daemon::spawn(&cfg, &s.root.join("daemon-2.log"), None);
    s.coord.wait_for(
        "the abandoned archive reported",
        Duration::from_secs(60),
        &second,
        |r| {
            r.iter()
                .any(|r| r.path == "/v1/agent/report" && r.mono_ns > restarted_at)
        },
    );
    let rel = releases(&s.coord);
    assert_eq!(rel.len(), 2, "{rel:?}");
    assert_eq!(rel[1]["epoch"], 12);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    let report = &s.coord.of("/v1/agent/report")[0];
    assert_eq!(report.body["epoch"], 12);
    assert_eq!(report.body["result"]["type"], "failed", "{}", report.body);
    assert_eq!(report.body["result"]["snapshot_id"], id.as_str());
    assert!(s.c.is_running(2));
    assert_eq!(s.c.max_brokers_down().unwrap(), 1);
    for dir in s.c.log_dirs(2) {
        let staging = dir.parent().unwrap().join(".kafka-snapshot-staging");
        assert_eq!(names(&staging), vec![".lock".to_string()], "staging left");
    }
    let st = wait_idle(&s);
    assert_eq!(st["lease_held"], false, "{st}");
    drop(second);
}

#[test]
fn sigterm_with_the_broker_down_starts_it_then_releases_and_exits_0() {
    let s = setup_with("ext4", slow_capture);
    let cfg = s.config("copy", TOKEN, SLOW_LINK);
    s.coord.push_action(snapshot_lease(4, 60_000));
    let mut d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord.wait_for(
        "a heartbeat while capturing",
        Duration::from_secs(60),
        &d,
        |r| {
            r.iter()
                .any(|r| r.path == "/v1/agent/heartbeat" && r.body["phase"] == "capturing")
        },
    );
    assert!(!s.c.is_running(2));
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}\n{}", d.log());
    assert!(s.c.is_running(2), "the daemon exited with the broker down");
    let rel = releases(&s.coord);
    assert_eq!(rel.len(), 1, "{rel:?}");
    assert_eq!(rel[0]["epoch"], 4);
    assert_eq!(rel[0]["outcome"]["type"], "failed");
    assert_eq!(rel[0]["outcome"]["broker_running"], true);
    assert!(
        rel[0]["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{rel:?}"
    );
    let st: Value = serde_json::from_slice(&fs::read(s.state_file()).unwrap()).unwrap();
    assert_eq!(st["broker_stopped_by_agent"], false, "{st}");
    // The archive was cancelled, not finished.
    let out = run(
        &["archive", "list", "--store", &store_url(&s.store), "--json"],
        0,
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["complete"] == false),
        "{listed}"
    );
}

#[test]
fn abort_while_capturing_starts_the_broker_and_releases_failed() {
    let s = setup_with("ext4", slow_capture);
    let cfg = s.config("copy", TOKEN, SLOW_LINK);
    s.coord.on_heartbeat(|hb| {
        let abort = hb["phase"] == "capturing";
        (200, json!({"ttl_ms": 1500, "abort": abort}))
    });
    s.coord.push_action(snapshot_lease(6, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the release", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/release")
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[0]["epoch"], 6);
    assert_eq!(rel[0]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[0]["outcome"]["broker_running"], true);
    let reason = rel[0]["outcome"]["reason"].as_str().unwrap();
    assert!(reason.contains("aborted by the coordinator"), "{reason}");
    assert!(s.c.is_running(2));
    let out = run(
        &["archive", "list", "--store", &store_url(&s.store), "--json"],
        0,
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["complete"] == false),
        "{listed}"
    );
}

#[test]
fn sigterm_while_archiving_without_the_lease_cancels_and_exits_0() {
    let s = setup_with("xfs", slow_capture);
    let cfg = s.config("reflink", TOKEN, SLOW_LINK);
    s.coord.push_action(snapshot_lease(8, 60_000));
    let mut d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord.wait_for(
        "the release at recovery",
        Duration::from_secs(90),
        &d,
        |r| r.iter().any(|r| r.path == "/v1/agent/release"),
    );
    assert_eq!(releases(&s.coord)[0]["outcome"]["type"], "recovered");
    d.sigterm();
    let started = Instant::now();
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}\n{}", d.log());
    assert!(started.elapsed() < Duration::from_secs(20), "slow shutdown");
    let reports = s.coord.of("/v1/agent/report");
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].body["result"]["type"], "failed",
        "{}",
        reports[0].body
    );
    assert!(s.c.is_running(2));
    for dir in s.c.log_dirs(2) {
        let staging = dir.parent().unwrap().join(".kafka-snapshot-staging");
        assert_eq!(names(&staging), vec![".lock".to_string()], "staging left");
    }
    let out = run(
        &["archive", "list", "--store", &store_url(&s.store), "--json"],
        0,
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["complete"] == false),
        "{listed}"
    );
}

// ---------------------------------------------------------------------------
// Restores under a lease

#[test]
fn restore_into_wiped_log_dirs_puts_the_snapshot_back() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    s.coord.push_action(snapshot_lease(1, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });
    let report = &s.coord.of("/v1/agent/report")[0].body;
    let id = report["result"]["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Broker 2 dies and loses its disks.
    s.c.kill(2).unwrap();
    for dir in s.c.log_dirs(2) {
        fs::remove_dir_all(dir).unwrap();
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("left-by-the-operator"), b"x").unwrap();
    }
    s.coord
        .push_action(restore_lease(2, 42, s.c.cluster_id(), &id, false));
    s.coord
        .wait_for("the restore's release", Duration::from_secs(90), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["epoch"], 2);
    assert_eq!(rel[1]["outcome"]["type"], "restored", "{rel:?}");
    assert_eq!(rel[1]["outcome"]["snapshot_id"], id.as_str());
    let phases: Vec<String> = s
        .coord
        .of("/v1/agent/heartbeat")
        .iter()
        .filter(|h| h.body["epoch"] == 2)
        .map(|h| h.body["phase"].as_str().unwrap().to_string())
        .collect();
    assert!(!phases.is_empty());

    // Every file of the snapshot is back, byte for byte (the stand-in only
    // removes .kafka_cleanshutdown at start and, as Kafka does, appends to
    // its metadata log; partition appends are off).
    let manifest: Value = serde_json::from_slice(
        &fs::read(snapshot_dir_of(&s.store, s.c.cluster_id(), &id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let dirs = s.c.log_dirs(2);
    let mut checked = 0;
    for e in manifest["entries"].as_array().unwrap() {
        if e["type"] != "file" {
            continue;
        }
        let path = e["path"].as_str().unwrap();
        let (prefix, rel) = path.split_once('/').unwrap();
        if rel == ".kafka_cleanshutdown" {
            continue;
        }
        let i: usize = prefix.strip_prefix("logdir-").unwrap().parse().unwrap();
        let restored = dirs[i].join(rel);
        let got = restored_sha256(&restored, rel, e["size"].as_u64().unwrap());
        assert_eq!(got, e["sha256"].as_str().unwrap(), "{}", restored.display());
        checked += 1;
    }
    assert!(checked > 10, "only {checked} files checked");
    // What was there is moved aside, not deleted; nothing half-done is left.
    for dir in dirs {
        let parent = dir.parent().unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let aside: Vec<String> = names(parent)
            .into_iter()
            .filter(|n| n.starts_with(&format!("{name}.pre-restore-")))
            .collect();
        assert_eq!(aside.len(), 1, "{:?}", names(parent));
        assert!(parent.join(&aside[0]).join("left-by-the-operator").exists());
        assert!(!names(parent).iter().any(|n| n.contains(".restoring-")));
    }
    // The polls after it report what was moved aside, kept (no
    // restore.remove_moved_aside_after) for status to list.
    let polls_before = s.coord.of("/v1/agent/poll").len();
    s.coord.wait_for(
        "a poll after the restore",
        Duration::from_secs(10),
        &d,
        |r| r.iter().filter(|r| r.path == "/v1/agent/poll").count() > polls_before + 1,
    );
    let poll = s.coord.of("/v1/agent/poll").last().unwrap().body.clone();
    let reported = poll["moved_aside"]
        .as_array()
        .expect("moved_aside in the poll");
    assert_eq!(reported.len(), s.c.log_dirs(2).len(), "{poll}");
    for m in reported {
        assert!(m["path"].as_str().unwrap().contains(".pre-restore-"), "{m}");
        assert!(m["moved_at"].is_string(), "{m}");
        assert!(m["bytes"].as_u64().unwrap() > 0, "{m}");
        assert!(
            m["remove_after"].is_null(),
            "kept until removed by hand: {m}"
        );
    }
    assert!(s.c.is_running(2));
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    kafka_snapshot_testkit::report::record(
        "security",
        "1. restore of a dead broker stops nothing and needs no gate",
        &[("inputs", 1)],
    );
}

fn cluster_restore_lease(epoch: u64, cluster: &str, snapshot: &str) -> Value {
    json!({"type": "cluster_restore",
        "lease": {"epoch": epoch, "ttl_ms": 1500, "cycle_id": null, "gate_timeout_ms": 60000},
        "order": {"id": 7, "cluster_id": cluster, "set_id": "set-1", "snapshot_id": snapshot}})
}

/// A node of a whole-cluster restore goes no further than the
/// coordinator lets it: it downloads and verifies with the broker running
/// until told to swap, stops and swaps, then waits (stopped) until told to
/// start. Then it starts the broker and releases `restored` once it is
/// registered. Every step is in its heartbeats.
#[test]
fn a_cluster_restore_node_waits_for_the_coordinator_at_every_step() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    s.coord.push_action(snapshot_lease(1, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });
    let report = &s.coord.of("/v1/agent/report")[0].body;
    let id = report["result"]["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let go = Arc::new(Mutex::new("prepare"));
    {
        let go = go.clone();
        s.coord.on_heartbeat(move |_| {
            let g = *go.lock().unwrap();
            (200, json!({"ttl_ms": 1500, "abort": false, "go": g}))
        });
    }
    s.coord
        .push_action(cluster_restore_lease(2, s.c.cluster_id(), &id));
    let step_seen = |step: &'static str| {
        move |r: &[Req]| {
            r.iter()
                .any(|r| r.path == "/v1/agent/heartbeat" && r.body["cluster_step"] == step)
        }
    };
    s.coord.wait_for(
        "step prepared",
        Duration::from_secs(60),
        &d,
        step_seen("prepared"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.c.is_running(2),
        "the broker was stopped before every node was prepared"
    );
    assert!(
        !step_seen("swapped")(&s.coord.requests()),
        "swapped before the coordinator said so"
    );
    *go.lock().unwrap() = "swap";
    s.coord.wait_for(
        "step swapped",
        Duration::from_secs(60),
        &d,
        step_seen("swapped"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !s.c.is_running(2),
        "the broker started before the coordinator said so"
    );
    assert!(releases(&s.coord).len() == 1, "released before the start");
    *go.lock().unwrap() = "start";
    s.coord
        .wait_for("the release", Duration::from_secs(90), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["epoch"], 2);
    assert_eq!(
        rel[1]["outcome"]["type"],
        "restored",
        "{rel:?}\n{}",
        d.log()
    );
    assert_eq!(rel[1]["outcome"]["snapshot_id"], id.as_str());
    assert!(s.c.is_running(2));
    let steps: Vec<String> = s
        .coord
        .of("/v1/agent/heartbeat")
        .iter()
        .filter(|h| h.body["epoch"] == 2)
        .filter_map(|h| h.body["cluster_step"].as_str().map(str::to_string))
        .collect();
    let mut order = steps.clone();
    order.dedup();
    assert_eq!(
        order,
        ["preparing", "prepared", "swapped", "started"],
        "{steps:?}"
    );
    // What was there is moved aside.
    for dir in s.c.log_dirs(2) {
        let parent = dir.parent().unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            names(parent)
                .iter()
                .any(|n| n.starts_with(&format!("{name}.pre-restore-"))),
            "{:?}",
            names(parent)
        );
    }
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
}

/// A node told to restore, for an order of another cluster, a snapshot
/// that is not of that cluster fails its part before anything is
/// downloaded, the broker untouched.
#[test]
fn a_cluster_restore_node_refuses_a_snapshot_of_another_cluster_touching_nothing() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    s.coord.push_action(snapshot_lease(1, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });
    let id = s.coord.of("/v1/agent/report")[0].body["result"]["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The order names a cluster this snapshot is not of.
    s.coord
        .push_action(cluster_restore_lease(2, "AnotherClusterIdAAAAAA", &id));
    s.coord
        .wait_for("the release", Duration::from_secs(60), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[1]["outcome"]["broker_running"], true, "{rel:?}");
    assert!(s.c.is_running(2));
    for dir in s.c.log_dirs(2) {
        let parent = dir.parent().unwrap();
        assert!(
            !names(parent)
                .iter()
                .any(|n| n.contains(".pre-restore-") || n.contains(".restoring-")),
            "{:?}",
            names(parent)
        );
    }
}

/// A host with another number of log dirs than the snapshot (a new host
/// set up differently) fails its part before anything is downloaded or
/// stopped, naming both.
#[test]
fn a_cluster_restore_onto_a_host_with_fewer_log_dirs_fails_before_the_stop() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    s.coord.push_action(snapshot_lease(1, 60_000));
    let mut d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });
    let id = s.coord.of("/v1/agent/report")[0].body["result"]["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    d.sigterm();
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    // The same node, configured with its first log dir only.
    let text = fs::read_to_string(&cfg).unwrap();
    let one: String = text
        .lines()
        .map(|l| match l.strip_prefix("log_dirs = [") {
            Some(rest) => format!(
                "log_dirs = [{}]",
                rest.split(", ").next().unwrap().trim_end_matches(']')
            ),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg1 = s.root.join("agent-2-one-dir.toml");
    fs::write(&cfg1, one + "\n").unwrap();
    let d = Daemon::spawn(&cfg1, &s.root.join("daemon-1.log"), None);
    s.coord
        .push_action(cluster_restore_lease(2, s.c.cluster_id(), &id));
    s.coord
        .wait_for("the release", Duration::from_secs(60), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    let reason = rel[1]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("holds 2 log dirs") && reason.contains("this broker has 1"),
        "{reason}"
    );
    assert_eq!(rel[1]["outcome"]["broker_running"], true);
    assert!(s.c.is_running(2));
    let steps: Vec<Value> = s
        .coord
        .of("/v1/agent/heartbeat")
        .iter()
        .filter(|h| h.body["epoch"] == 2)
        .map(|h| h.body["cluster_step"].clone())
        .collect();
    assert!(
        steps.iter().all(|st| st == "preparing"),
        "went past preparing: {steps:?}"
    );
}

/// The snapshot dir in a file store for any cluster.
fn snapshot_dir_of(store: &Path, cluster: &str, id: &str) -> PathBuf {
    store.join(cluster).join("broker-2").join(id)
}

#[test]
fn restore_of_another_clusters_snapshot_is_refused_unless_forced() {
    let s = setup("ext4");
    // A snapshot of "broker 2" of another cluster, with two log dirs too.
    let foreign = vec![
        s.root.join("foreign/disk1/kafka-logs"),
        s.root.join("foreign/disk2/kafka-logs"),
    ];
    generate_spec(&kafka_snapshot_testkit::Spec::small(
        CLUSTER,
        2,
        foreign.clone(),
    ));
    let created = create(&foreign, &s.store, "copy");
    let id = created["snapshot_id"].as_str().unwrap().to_string();
    assert_ne!(CLUSTER, s.c.cluster_id());

    let cfg = s.config("copy", TOKEN, "");
    s.coord
        .push_action(restore_lease(21, 1, CLUSTER, &id, false));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the refusal", Duration::from_secs(60), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/release")
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[0]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[0]["outcome"]["broker_running"], true);
    let reason = rel[0]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(CLUSTER) && reason.contains(s.c.cluster_id()) && reason.contains("force"),
        "{reason}"
    );
    assert!(
        s.events_of(2, EventKind::Sigterm).is_empty(),
        "broker 2 was stopped"
    );
    for dir in s.c.log_dirs(2) {
        let parent = dir.parent().unwrap();
        assert!(
            !names(parent)
                .iter()
                .any(|n| n.contains(".restoring-") || n.contains(".pre-restore-")),
            "{:?}",
            names(parent)
        );
    }

    // Forced, the check no longer stops it: the data is downloaded and
    // swapped in. (The stand-in broker, like Kafka, then refuses to start
    // on another cluster's meta.properties: the release says so.)
    s.coord
        .push_action(restore_lease(22, 2, CLUSTER, &id, true));
    s.coord.wait_for(
        "the forced restore's release",
        Duration::from_secs(120),
        &d,
        |r| r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2,
    );
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["epoch"], 22);
    let reason = rel[1]["outcome"]["reason"].as_str().unwrap_or_default();
    assert!(!reason.contains("refusing"), "{rel:?}");
    assert!(d.log().contains("restoring anyway (forced)"), "{}", d.log());
    for dir in s.c.log_dirs(2) {
        let parent = dir.parent().unwrap();
        assert!(
            names(parent).iter().any(|n| n.contains(".pre-restore-")),
            "{:?}",
            names(parent)
        );
        assert!(
            fs::read_to_string(dir.join("meta.properties"))
                .unwrap()
                .contains(CLUSTER),
            "the foreign data is in place"
        );
    }
}

// ---------------------------------------------------------------------------
// Authentication

#[test]
fn wrong_token_is_logged_and_retried_without_touching_the_broker() {
    let s = setup("ext4");
    let cfg = s.config("copy", "not-the-right-token", "");
    s.coord.push_action(snapshot_lease(1, 60_000));
    let mut d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("three refused polls", Duration::from_secs(30), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/poll").count() >= 3
        });
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon gave up");
    let log = d.log();
    assert!(
        log.contains("401") && log.contains("coordinator.token_file") && log.contains("ERROR"),
        "{log}"
    );
    assert!(
        s.coord
            .requests()
            .iter()
            .all(|r| r.path == "/v1/agent/poll"),
        "only polls"
    );
    assert!(s.events_of(2, EventKind::Sigterm).is_empty());
    assert!(s.c.is_running(2));
    d.sigterm();
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

// ---------------------------------------------------------------------------
// Restores: the cluster is checked again before the stop

/// Takes a reflink snapshot of broker 2 under lease `epoch` and returns its
/// id once reported.
fn snapshot_of_broker_2(s: &Setup, d: &Daemon, epoch: u64) -> String {
    s.coord.push_action(snapshot_lease(epoch, 60_000));
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });
    let report = &s.coord.of("/v1/agent/report")[0].body;
    assert_eq!(report["result"]["type"], "committed", "{report}");
    report["result"]["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

impl Setup {
    /// When broker `n` was sent SIGTERM after `since` (monotonic ns).
    fn stops_since(&self, n: i32, since: u64) -> Vec<u64> {
        self.events_of(n, EventKind::Sigterm)
            .into_iter()
            .filter(|t| *t > since)
            .collect()
    }

    /// Stops broker `n` and waits until its process is gone.
    fn stop_and_wait(&self, n: i32) {
        self.c.stop(n).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.c.is_running(n) {
            assert!(Instant::now() < deadline, "broker {n} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that no restore is half done beside broker 2's log dirs and
    /// that nothing was moved aside (the swap never happened).
    fn assert_untouched_by_restore(&self) {
        for dir in self.c.log_dirs(2) {
            let parent = dir.parent().unwrap();
            assert!(
                !names(parent)
                    .iter()
                    .any(|n| n.contains(".restoring-") || n.contains(".pre-restore-")),
                "{:?}",
                names(parent)
            );
        }
    }
}

/// Partitions with replicas on both `a` and `b` ("topic-p").
fn shared_partitions(c: &StandinCluster, a: i32, b: i32) -> Vec<String> {
    let md = c.metadata().unwrap();
    md.topics
        .iter()
        .flat_map(|t| {
            let name = t.name.as_ref().unwrap().0.to_string();
            t.partitions
                .iter()
                .filter(|p| {
                    p.replica_nodes.iter().any(|r| r.0 == a)
                        && p.replica_nodes.iter().any(|r| r.0 == b)
                })
                .map(move |p| format!("{name}-{}", p.partition_index))
        })
        .collect()
}

/// Another broker dies while the snapshot is downloaded: the restore
/// checks the cluster again before stopping the broker, waits while the
/// gate does not pass, and stops it only once the other broker is back.
#[test]
fn restore_waits_for_the_gate_while_another_broker_is_down() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    let pause = s.root.join("pause");
    let d = Daemon::spawn_paused(
        &cfg,
        &s.root.join("daemon.log"),
        &pause,
        &["restore-extracted"],
    );
    let id = snapshot_of_broker_2(&s, &d, 1);
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();

    let ordered_at = monotonic_ns();
    s.coord
        .push_action(restore_lease(2, 42, s.c.cluster_id(), &id, false));
    d.wait_paused(&pause, "restore-extracted", Duration::from_secs(60));
    // Downloaded and verified; meanwhile broker 3 goes down.
    s.stop_and_wait(3);
    go_on(&pause, "restore-extracted");

    // Several gate intervals (300 ms) later broker 2 still runs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.stops_since(2, ordered_at),
        Vec::<u64>::new(),
        "broker 2 was stopped while broker 3 was down\n{}",
        d.log()
    );
    assert!(s.c.is_running(2));
    assert_eq!(releases(&s.coord).len(), 1, "{:?}", releases(&s.coord));
    let gating = s
        .coord
        .of("/v1/agent/heartbeat")
        .iter()
        .filter(|h| h.body["epoch"] == 2 && h.body["phase"] == "gating")
        .count();
    assert!(gating > 0, "no heartbeat says the restore is gating");

    // Broker 3 is back: the restore goes on.
    let back_at = monotonic_ns();
    s.c.start(3).unwrap();
    s.coord
        .wait_for("the restore's release", Duration::from_secs(90), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["epoch"], 2);
    assert_eq!(rel[1]["outcome"]["type"], "restored", "{rel:?}");
    let stopped = s.stops_since(2, ordered_at);
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    let caught_up = s
        .events_of(3, EventKind::CaughtUp)
        .into_iter()
        .find(|t| *t > back_at)
        .expect("broker 3 back in every ISR");
    assert!(
        stopped[0] > caught_up,
        "broker 2 was stopped before broker 3 was back in every ISR"
    );
    assert_eq!(s.c.max_brokers_down().unwrap(), 1);
    assert!(s.c.is_running(2));
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    kafka_snapshot_testkit::report::record(
        "security",
        "1. restore waits for the gate while another broker is down",
        &[("inputs", 1)],
    );
}

/// The other broker stays down for longer than the lease's gate timeout:
/// the order fails naming the partitions, the broker under restore is
/// never stopped and the extracted copy is removed.
#[test]
fn restore_whose_gate_never_passes_fails_naming_the_partitions() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    let pause = s.root.join("pause");
    let d = Daemon::spawn_paused(
        &cfg,
        &s.root.join("daemon.log"),
        &pause,
        &["restore-extracted"],
    );
    let id = snapshot_of_broker_2(&s, &d, 1);
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    let shared = shared_partitions(&s.c, 2, 3);
    assert!(!shared.is_empty());

    let ordered_at = monotonic_ns();
    s.coord
        .push_action(restore_lease_gated(2, 43, s.c.cluster_id(), &id, 1_500));
    d.wait_paused(&pause, "restore-extracted", Duration::from_secs(60));
    s.stop_and_wait(3);
    go_on(&pause, "restore-extracted");
    s.coord
        .wait_for("the restore's release", Duration::from_secs(60), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["epoch"], 2);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[1]["outcome"]["broker_running"], true, "{rel:?}");
    let reason = rel[1]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not safe to stop") && reason.contains("was not stopped"),
        "{reason}"
    );
    assert!(
        shared
            .iter()
            .any(|p| reason.contains(&format!("{p} (replicas"))),
        "no partition of {shared:?} named in: {reason}"
    );
    assert_eq!(s.stops_since(2, ordered_at), Vec::<u64>::new());
    assert!(s.c.is_running(2));
    s.assert_untouched_by_restore();
    assert_eq!(s.c.max_brokers_down().unwrap(), 1);
    kafka_snapshot_testkit::report::record(
        "security",
        "1. restore whose gate never passes fails naming the partitions",
        &[("inputs", 1)],
    );
}

// ---------------------------------------------------------------------------
// No stop without a durable record of it

/// The state file's directory turns read-only while the gate runs: the
/// phase before the stop cannot be recorded, so the broker is not stopped
/// and the lease is released failed, saying why.
#[test]
fn snapshot_is_given_up_when_the_stop_cannot_be_recorded() {
    let s = setup("ext4");
    let cfg = s.config("copy", TOKEN, "");
    let pause = s.root.join("pause");
    let d = Daemon::spawn_paused(&cfg, &s.root.join("daemon.log"), &pause, &["phase-gating"]);
    s.coord.push_action(snapshot_lease(3, 60_000));
    d.wait_paused(&pause, "phase-gating", Duration::from_secs(60));
    let before = fs::read(s.state_file()).unwrap();
    let st: Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(st["phase"], "gating", "{st}");
    let frozen = Immutable::new(s.state_file().parent().unwrap());
    go_on(&pause, "phase-gating");
    s.coord
        .wait_for("the release", Duration::from_secs(60), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/release")
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[0]["epoch"], 3);
    assert_eq!(rel[0]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[0]["outcome"]["broker_running"], true, "{rel:?}");
    let reason = rel[0]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("was not stopped")
            && reason.contains(&s.state_file().display().to_string()),
        "{reason}"
    );
    assert!(
        s.events_of(2, EventKind::Sigterm).is_empty(),
        "broker 2 was stopped without a record of it\n{}",
        d.log()
    );
    assert!(s.c.is_running(2));
    // Nothing was written meanwhile: what is on disk is still true.
    assert_eq!(fs::read(s.state_file()).unwrap(), before);
    drop(frozen);
    kafka_snapshot_testkit::report::record(
        "security",
        "8. snapshot given up when the stop cannot be recorded",
        &[("inputs", 1)],
    );
}

/// The same for a restore: the state file cannot be written after the
/// download, so the broker is not stopped, the order fails and the
/// extracted copy is removed.
#[test]
fn restore_is_given_up_when_the_stop_cannot_be_recorded() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    let pause = s.root.join("pause");
    let d = Daemon::spawn_paused(
        &cfg,
        &s.root.join("daemon.log"),
        &pause,
        &["restore-extracted"],
    );
    let id = snapshot_of_broker_2(&s, &d, 1);
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    let ordered_at = monotonic_ns();
    s.coord
        .push_action(restore_lease(2, 44, s.c.cluster_id(), &id, false));
    d.wait_paused(&pause, "restore-extracted", Duration::from_secs(60));
    let frozen = Immutable::new(s.state_file().parent().unwrap());
    go_on(&pause, "restore-extracted");
    s.coord
        .wait_for("the restore's release", Duration::from_secs(60), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["epoch"], 2);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    assert_eq!(rel[1]["outcome"]["broker_running"], true, "{rel:?}");
    let reason = rel[1]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("was not stopped")
            && reason.contains(&s.state_file().display().to_string()),
        "{reason}"
    );
    assert_eq!(
        s.stops_since(2, ordered_at),
        Vec::<u64>::new(),
        "broker 2 was stopped without a record of it\n{}",
        d.log()
    );
    assert!(s.c.is_running(2));
    s.assert_untouched_by_restore();
    drop(frozen);
    kafka_snapshot_testkit::report::record(
        "security",
        "8. restore given up when the stop cannot be recorded",
        &[("inputs", 1)],
    );
}

/// SIGKILL right after the restore stopped the broker (before the swap):
/// the state file says so, and the next daemon starts the broker (on its
/// old data) before it contacts the coordinator, and removes the
/// extracted copy.
#[test]
fn killed_right_after_the_restore_stop_the_next_daemon_starts_the_broker() {
    let s = setup_with("xfs", quiet);
    let cfg = s.config("reflink", TOKEN, "");
    let mut first = Daemon::spawn(&cfg, &s.root.join("daemon-1.log"), None);
    let id = snapshot_of_broker_2(&s, &first, 1);
    s.coord.wait_for(
        "the state back to idle",
        Duration::from_secs(30),
        &first,
        |_| {
            fs::read(s.state_file())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|st| st["phase"] == "idle")
        },
    );
    first.sigterm();
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();

    let pause = s.root.join("pause");
    let mut second =
        Daemon::spawn_paused(&cfg, &s.root.join("daemon-2.log"), &pause, &["after-stop"]);
    s.coord
        .push_action(restore_lease(2, 45, s.c.cluster_id(), &id, false));
    second.wait_paused(&pause, "after-stop", Duration::from_secs(60));
    assert!(!s.c.is_running(2), "the broker should be down");
    let st: Value = serde_json::from_slice(&fs::read(s.state_file()).unwrap()).unwrap();
    assert_eq!(st["phase"], "restoring", "{st}");
    assert_eq!(st["broker_stopped_by_agent"], true, "{st}");
    assert_eq!(st["lease_epoch"], 2, "{st}");
    second.child.kill().unwrap();
    second.wait_exit(Duration::from_secs(10));
    go_on(&pause, "after-stop");

    let restarted_at = monotonic_ns();
    let third = Daemon::spawn(&cfg, &s.root.join("daemon-3.log"), None);
    s.coord.wait_for(
        "a poll from the new daemon",
        Duration::from_secs(60),
        &third,
        |r| {
            r.iter()
                .any(|r| r.path == "/v1/agent/poll" && r.mono_ns > restarted_at)
        },
    );
    let after: Vec<Req> = s
        .coord
        .requests()
        .into_iter()
        .filter(|r| r.mono_ns > restarted_at)
        .collect();
    let started = s
        .events_of(2, EventKind::Started)
        .into_iter()
        .find(|t| *t > restarted_at)
        .expect("broker 2 started by the new daemon");
    assert!(
        started < after[0].mono_ns,
        "the broker must be started before the coordinator is contacted"
    );
    let notice = &after
        .iter()
        .find(|r| r.path == "/v1/agent/notice")
        .expect("a notice")
        .body;
    let msg = notice["message"].as_str().unwrap();
    assert!(
        msg.contains("interrupted restore") && msg.contains("started again"),
        "{msg}"
    );
    let rel = &after
        .iter()
        .find(|r| r.path == "/v1/agent/release")
        .expect("the old lease released")
        .body;
    assert_eq!(rel["epoch"], 2);
    assert_eq!(rel["outcome"]["type"], "failed");
    assert_eq!(rel["outcome"]["broker_running"], true);
    assert!(s.c.is_running(2));
    s.assert_untouched_by_restore();
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    kafka_snapshot_testkit::report::record(
        "security",
        "8. killed right after the restore stop: the next daemon starts the broker",
        &[("inputs", 1)],
    );
}

#[test]
fn encrypted_snapshot_restores_through_the_daemon_with_the_identity_it_names() {
    use kafka_snapshot::crypt::{generate_identity_file, Identities};
    let s = setup_with("xfs", quiet);
    let keys = s.root.join("keys");
    fs::create_dir(&keys).unwrap();
    let daily = generate_identity_file(&keys.join("daily")).unwrap();
    let break_glass = generate_identity_file(&keys.join("break-glass")).unwrap();
    generate_identity_file(&keys.join("unrelated")).unwrap();
    // The identity the daemon reads at each restore, not at start.
    let identity_file = s.root.join("identity");
    fs::copy(keys.join("unrelated"), &identity_file).unwrap();
    // Incremental, the default: the objects are named with the object key.
    let object_key = keys.join("object.key");
    kafka_snapshot::crypt::ObjectKey::generate_file(&object_key).unwrap();
    let cfg = s.config(
        "reflink",
        TOKEN,
        &format!(
            "[encryption]\nrecipients = [{daily:?}, {break_glass:?}]\nidentity_file = {:?}\n\
             object_key_file = {:?}\n",
            identity_file.display().to_string(),
            object_key.display().to_string()
        ),
    );
    s.coord.push_action(snapshot_lease(1, 60_000));
    let d = Daemon::spawn(&cfg, &s.root.join("daemon.log"), None);
    s.coord
        .wait_for("the snapshot report", Duration::from_secs(90), &d, |r| {
            r.iter().any(|r| r.path == "/v1/agent/report")
        });
    let report = &s.coord.of("/v1/agent/report")[0].body;
    let id = report["result"]["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let snap_dir = snapshot_dir_of(&s.store, s.c.cluster_id(), &id);
    assert_eq!(
        names(&snap_dir),
        vec!["archive.tar.zst.age", "manifest.json"]
    );
    let manifest: Value =
        serde_json::from_slice(&fs::read(snap_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format_version"], 4);
    assert_eq!(manifest["entries"], json!([]));
    assert_eq!(
        manifest["encryption"]["recipients"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A wrong identity: refused before the broker is touched.
    s.coord
        .push_action(restore_lease(2, 41, s.c.cluster_id(), &id, false));
    s.coord
        .wait_for("the refused restore", Duration::from_secs(60), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 2
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[1]["outcome"]["type"], "failed", "{rel:?}");
    let reason = rel[1]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("snapshot {id} is encrypted to recipients"))
            && reason.contains("holds none of them"),
        "{reason}"
    );
    assert!(s.c.is_running(2), "a refused restore stopped the broker");

    // Broker 2 dies and loses its disks; the operator puts the break-glass
    // identity in place.
    fs::copy(keys.join("break-glass"), &identity_file).unwrap();
    s.c.kill(2).unwrap();
    for dir in s.c.log_dirs(2) {
        fs::remove_dir_all(dir).unwrap();
        fs::create_dir(dir).unwrap();
    }
    s.coord
        .push_action(restore_lease(3, 42, s.c.cluster_id(), &id, false));
    s.coord
        .wait_for("the restore's release", Duration::from_secs(90), &d, |r| {
            r.iter().filter(|r| r.path == "/v1/agent/release").count() == 3
        });
    let rel = releases(&s.coord);
    assert_eq!(rel[2]["outcome"]["type"], "restored", "{rel:?}");

    // Every file is back, checked against the entries the identity unseals.
    let store = kafka_snapshot::storage::open(&store_url(&s.store), &Default::default()).unwrap();
    let snap = kafka_snapshot::catalog::find(store.as_ref(), &id, None, None).unwrap();
    let ids = Identities::load(&identity_file).unwrap();
    let m = kafka_snapshot::verify::load_with_entries(store.as_ref(), &snap, Some(&ids)).unwrap();
    let dirs = s.c.log_dirs(2);
    let mut checked = 0;
    for e in m.entries.iter().filter(|e| e.sha256.is_some()) {
        let (prefix, rel) = e.path.split_once('/').unwrap();
        if rel == ".kafka_cleanshutdown" {
            continue;
        }
        let i: usize = prefix.strip_prefix("logdir-").unwrap().parse().unwrap();
        assert_eq!(
            Some(restored_sha256(&dirs[i].join(rel), rel, e.size)),
            e.sha256,
            "{}",
            e.path
        );
        checked += 1;
    }
    assert!(checked > 10, "only {checked} files checked");
    assert!(s.c.is_running(2));
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    kafka_snapshot_testkit::report::record(
        "security",
        "encryption: the daemon snapshots encrypted, refuses a wrong identity with the broker running, restores with the break-glass one",
        &[("inputs", 2)],
    );
}

/// The SHA-256 of a restored file as the snapshot had it: a restarted node
/// appends to its metadata log at start (as Kafka does), after the
/// snapshot's `size` bytes, so only those count there.
fn restored_sha256(path: &Path, rel: &str, size: u64) -> String {
    if rel.starts_with("__cluster_metadata-0/") && rel.ends_with(".log") {
        let bytes = fs::read(path).unwrap();
        assert!(bytes.len() as u64 >= size, "{}", path.display());
        hex::encode(Sha256::digest(&bytes[..size as usize]))
    } else {
        file_sha256(path)
    }
}
