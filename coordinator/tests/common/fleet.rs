//! The whole product as real processes, for end-to-end and fault tests:
//! three brokers on XFS (stand-in brokers, or real Kafka through
//! [`TestCluster`]), one agent daemon per broker and one coordinator. Each agent reaches the coordinator through its own TCP
//! proxy, so a test can cut one agent off; each agent can be paused at a
//! named point (`KAFKA_SNAPSHOT_PAUSE`) so a fault lands in an exact phase.
//! An [`Observer`] polls the cluster throughout.

use super::*;
use kafka_snapshot_standin::{ClusterSpec, StandinCluster};
use kafka_snapshot_testkit::kafka::KafkaCluster;
use kafka_snapshot_testkit::kafka_protocol::messages::MetadataResponse;
use kafka_snapshot_testkit::net::{Mode, Proxy};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn scratch() -> tempfile::TempDir {
    let root = std::env::var("KSNAP_TEST_XFS").unwrap_or_else(|_| {
        panic!("KSNAP_TEST_XFS is not set: run the tests through tests/run.sh, which mounts the test filesystems")
    });
    let mut t = tempfile::tempdir_in(root).expect("scratch dir on XFS");
    // To look at what a failed run left: KSNAP_KEEP_TEST_DIRS=1.
    if std::env::var_os("KSNAP_KEEP_TEST_DIRS").is_some() {
        t.disable_cleanup(true);
        eprintln!("keeping {}", t.path().display());
    }
    t
}

/// An agents' `[encryption]` section: a new identity made by
/// `kafka-snapshot-agent key generate` in `dir` (its recipient, and the
/// identity file so `archive verify` with an agent's config checks every
/// byte), and with `object_key` the cluster's object key (`key
/// generate-object-key`), one file every agent reads, as encrypted
/// incremental snapshots need.
pub fn encryption_section(dir: &Path, object_key: bool) -> String {
    // `key COMMAND --output FILE`: what it prints.
    let make = |command: &str, file: &Path| {
        let out = Command::new(bin("kafka-snapshot-agent"))
            .args(["key", command, "--output"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "key {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let identity = dir.join("identity.txt");
    let recipient = make("generate", &identity);
    assert!(recipient.starts_with("age1"), "{recipient}");
    let mut section = format!(
        "[encryption]\nrecipients = [{recipient:?}]\nidentity_file = {:?}\n",
        identity.display().to_string()
    );
    if object_key {
        let key = dir.join("object.key");
        make("generate-object-key", &key);
        section.push_str(&format!(
            "object_key_file = {:?}\n",
            key.display().to_string()
        ));
    }
    section
}

pub struct Agent {
    pub n: i32,
    child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    pub pause_dir: PathBuf,
    /// Between this agent and the coordinator.
    pub link: Proxy,
}

impl Agent {
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the daemon; `pause` lists pausepoints it stops at.
    pub fn start_with(&mut self, pause: &[&str]) {
        assert!(self.child.is_none(), "agent {} already runs", self.n);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        fs::create_dir_all(&self.pause_dir).unwrap();
        self.child = Some(
            Command::new(bin("kafka-snapshot-agent"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("KAFKA_SNAPSHOT_LOG", "info")
                .env("KAFKA_SNAPSHOT_PAUSE", pause.join(","))
                .env("KAFKA_SNAPSHOT_PAUSE_DIR", &self.pause_dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start agent"),
        );
    }

    /// SIGKILL: nothing of the agent runs after this.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok().and_then(|s| s.code())
    }

    pub fn runs(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits until the daemon stops at `point`.
    pub fn wait_paused(&self, point: &str, timeout: Duration) {
        let marker = self.pause_dir.join(point);
        let deadline = Instant::now() + timeout;
        while !marker.exists() {
            assert!(
                Instant::now() < deadline,
                "agent {} never reached {point}\n{}",
                self.n,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets a paused daemon go on.
    pub fn resume(&self, point: &str) {
        let _ = fs::remove_file(self.pause_dir.join(point));
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

#[allow(unused_imports)] // not every test binary names them
pub use kafka_snapshot_testkit::observer::{Observer, Seen};

/// What a fleet needs of the cluster under test: the stand-in or real Kafka.
pub trait TestCluster: Send + Sync + 'static {
    fn bootstrap(&self) -> String;
    fn cluster_id(&self) -> &str;
    fn log_dirs(&self, broker: i32) -> &[PathBuf];
    fn start_script(&self, broker: i32) -> PathBuf;
    fn stop_script(&self, broker: i32) -> PathBuf;
    fn metadata(&self) -> anyhow::Result<MetadataResponse>;
    /// Dedicated KRaft controllers (none by default).
    fn controllers(&self) -> Vec<i32> {
        Vec::new()
    }
    /// The server.properties an agent of node `n` reads instead of listing
    /// its log dirs, if any: a controller's agent finds its quorum there.
    fn server_properties(&self, _n: i32) -> Option<PathBuf> {
        None
    }
}

impl TestCluster for StandinCluster {
    fn bootstrap(&self) -> String {
        StandinCluster::bootstrap(self)
    }
    fn cluster_id(&self) -> &str {
        StandinCluster::cluster_id(self)
    }
    fn log_dirs(&self, broker: i32) -> &[PathBuf] {
        StandinCluster::log_dirs(self, broker)
    }
    fn start_script(&self, broker: i32) -> PathBuf {
        StandinCluster::start_script(self, broker)
    }
    fn stop_script(&self, broker: i32) -> PathBuf {
        StandinCluster::stop_script(self, broker)
    }
    fn metadata(&self) -> anyhow::Result<MetadataResponse> {
        StandinCluster::metadata(self)
    }
}

impl TestCluster for KafkaCluster {
    fn bootstrap(&self) -> String {
        KafkaCluster::bootstrap(self)
    }
    fn cluster_id(&self) -> &str {
        KafkaCluster::cluster_id(self)
    }
    fn log_dirs(&self, broker: i32) -> &[PathBuf] {
        KafkaCluster::log_dirs(self, broker)
    }
    fn start_script(&self, broker: i32) -> PathBuf {
        KafkaCluster::start_script(self, broker)
    }
    fn stop_script(&self, broker: i32) -> PathBuf {
        KafkaCluster::stop_script(self, broker)
    }
    fn metadata(&self) -> anyhow::Result<MetadataResponse> {
        KafkaCluster::metadata(self)
    }
    fn controllers(&self) -> Vec<i32> {
        self.controller_ids()
    }
    fn server_properties(&self, n: i32) -> Option<PathBuf> {
        self.controller_ids()
            .contains(&n)
            .then(|| self.properties(n).to_path_buf())
    }
}

/// Starts an [`Observer`] of a three-broker cluster whose partitions all
/// have min ISR 2.
pub fn observe<C: TestCluster>(c: &Arc<C>) -> Observer {
    let c = c.clone();
    Observer::start(3, 2, move || c.metadata())
}

/// How a fleet is set up.
pub struct FleetSpec {
    pub capture: &'static str,
    /// `[storage]` url; default a file:// store on the scratch XFS.
    pub store_url: Option<String>,
    /// Extra lines of the agents' and the coordinator's `[storage]`
    /// section (after `url`), e.g. a `[storage.s3]` table.
    pub storage_extra: String,
    /// The coordinator's instead, if it differs (it may reach cold storage
    /// by another way than the agents).
    pub coordinator_storage_extra: Option<String>,
    pub ttl: &'static str,
    pub recovery_timeout: &'static str,
    pub max_attempts: u32,
    /// Agents on the cluster's dedicated controllers too.
    pub controllers: bool,
    /// The coordinator's `[cluster] id` (default: learned from the cluster).
    pub cluster_id: Option<String>,
    /// Appended to every agent's config (whole sections, e.g.
    /// `[encryption]`).
    pub agent_extra: String,
    /// The coordinator's `[retention]` lines (default `keep_last = 7`).
    pub retention: Option<&'static str>,
    /// More lines of the agents' `[snapshot]` section (after `capture`).
    pub snapshot_extra: &'static str,
}

impl Default for FleetSpec {
    fn default() -> FleetSpec {
        FleetSpec {
            capture: "reflink",
            store_url: None,
            storage_extra: String::new(),
            coordinator_storage_extra: None,
            ttl: "6s",
            recovery_timeout: "90s",
            max_attempts: 3,
            controllers: false,
            cluster_id: None,
            agent_extra: String::new(),
            retention: None,
            snapshot_extra: "",
        }
    }
}

/// Fields drop in order: agents, coordinator, cluster, then the dir.
pub struct Fleet<C: TestCluster = StandinCluster> {
    pub agents: Vec<Agent>,
    pub coord: Coordinator,
    pub cluster: Arc<C>,
    pub root: PathBuf,
    pub store_url: String,
    /// Last: dropped after the cluster, whose brokers live in it.
    _t: tempfile::TempDir,
}

fn toml_list(csv: &str) -> String {
    csv.split(',')
        .map(|b| format!("{b:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::with(|_| {})
    }

    pub fn with(change: impl FnOnce(&mut ClusterSpec)) -> Fleet {
        Fleet::build(FleetSpec::default(), change)
    }

    pub fn build(fs_spec: FleetSpec, change: impl FnOnce(&mut ClusterSpec)) -> Fleet {
        let t = scratch();
        let root = t.path().to_path_buf();
        let mut spec = ClusterSpec::new(3);
        spec.data_root = Some(root.join("data"));
        // No appends: restored files must stay as the snapshot has them.
        spec.append_interval = Duration::from_secs(3600);
        change(&mut spec);
        let cluster =
            Arc::new(StandinCluster::create(&root.join("cluster"), &spec).expect("stand-in"));
        cluster
            .start_all(Duration::from_secs(60))
            .expect("cluster starts");
        Fleet::around(t, cluster, fs_spec)
    }
}

impl<C: TestCluster> Fleet<C> {
    /// A coordinator and three agent daemons (brokers 1, 2, 3) for a
    /// running `cluster` whose data lives in the scratch dir `t`.
    pub fn around(t: tempfile::TempDir, cluster: Arc<C>, fs_spec: FleetSpec) -> Fleet<C> {
        let root = t.path().to_path_buf();
        let store_url = fs_spec
            .store_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", root.join("store").display()));
        let mut cs = CoordinatorSpec::new(&[1, 2, 3], &cluster.bootstrap(), &store_url);
        if fs_spec.controllers {
            cs.controllers = cluster.controllers();
        }
        cs.cluster = fs_spec.cluster_id.clone();
        if let Some(r) = fs_spec.retention {
            cs.retention = r.to_string();
        }
        cs.lease = format!("ttl = {:?}\npoll_interval = \"300ms\"\n", fs_spec.ttl);
        cs.schedule = format!(
            "suspend = true\ngate_timeout = \"2m\"\nmax_attempts = {}\n",
            fs_spec.max_attempts
        );
        cs.storage_extra = fs_spec
            .coordinator_storage_extra
            .clone()
            .unwrap_or_else(|| fs_spec.storage_extra.clone());
        let mut coord = Coordinator::create(&root.join("coordinator"), &cs);
        coord.start();
        let mut agents = Vec::new();
        let nodes: Vec<i32> = [1, 2, 3]
            .into_iter()
            .chain(cs.controllers.iter().copied())
            .collect();
        for n in nodes {
            let dir = root.join(format!("agent-{n}"));
            fs::create_dir_all(&dir).unwrap();
            let link = Proxy::start(&format!("127.0.0.1:{}", coord.port)).expect("proxy");
            let config = write_agent_config(
                &dir,
                n,
                &*cluster,
                &fs_spec,
                &store_url,
                &format!("http://127.0.0.1:{}", link.port()),
                &dir.join("state.json"),
            );
            let mut a = Agent {
                n,
                child: None,
                config,
                log: dir.join("agent.log"),
                pause_dir: dir.join("pause"),
                link,
            };
            a.start();
            agents.push(a);
        }
        Fleet {
            _t: t,
            root,
            cluster,
            coord,
            agents,
            store_url,
        }
    }

    pub fn agent(&mut self, n: i32) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.n == n)
            .unwrap_or_else(|| panic!("no agent for node {n}"))
    }

    /// Cuts agent `n` off the coordinator (or reconnects it).
    pub fn link(&self, n: i32, mode: Mode) {
        let a = self.agents.iter().find(|a| a.n == n);
        a.unwrap_or_else(|| panic!("no agent for node {n}"))
            .link
            .set(mode);
    }

    pub fn logs(&self) -> String {
        let mut s = format!("--- coordinator\n{}", self.coord.logs());
        for a in &self.agents {
            s.push_str(&format!("--- agent {}\n{}", a.n, a.logs()));
        }
        s
    }

    /// Waits until `f(status)` holds.
    pub fn wait_status(&self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.coord.status();
            if f(&st) {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nstatus: {st:#}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn wait_cycle_end(&self, timeout: Duration) -> Value {
        self.wait_status("the cycle to end", timeout, |st| {
            matches!(
                st["cycle"]["state"].as_str(),
                Some("done" | "partial" | "failed")
            )
        })
    }

    /// Waits until the coordinator has read back every broker's last
    /// snapshot.
    pub fn wait_all_verified(&self, timeout: Duration) {
        self.wait_status("every snapshot verified", timeout, |st| {
            st["brokers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["last_verified"] == true)
        });
    }

    pub fn snapshots(&self) -> Vec<Value> {
        serde_json::from_str(&self.coord.cli_ok(&["snapshots", "--json"], 0)).unwrap()
    }

    /// `archive verify` of one snapshot in the fleet's store: (exit code,
    /// stdout, stderr).
    pub fn verify_snapshot(&self, id: &str, broker: &str) -> (i32, String, String) {
        self.verify_snapshot_as(self.agents[0].n, id, broker, &[])
    }

    /// [`Fleet::verify_snapshot`] with node `n`'s agent config (its
    /// identity, when encrypted) and `extra` arguments (`--json`).
    pub fn verify_snapshot_as(
        &self,
        n: i32,
        id: &str,
        broker: &str,
        extra: &[&str],
    ) -> (i32, String, String) {
        let mut args = vec![
            "archive",
            "verify",
            "--store",
            &self.store_url,
            "--snapshot",
            id,
            "--broker",
            broker,
        ];
        args.extend_from_slice(extra);
        self.agent_cli_of(n, &args)
    }

    /// Runs `kafka-snapshot-agent` with `args` and agent 1's config (for
    /// its storage settings); returns (exit code, stdout, stderr).
    pub fn agent_cli(&self, args: &[&str]) -> (i32, String, String) {
        self.agent_cli_of(self.agents[0].n, args)
    }

    /// [`Fleet::agent_cli`] with the config of node `n`'s agent.
    pub fn agent_cli_of(&self, n: i32, args: &[&str]) -> (i32, String, String) {
        let agent = self.agents.iter().find(|a| a.n == n);
        let config = &agent
            .unwrap_or_else(|| panic!("no agent for node {n}"))
            .config;
        let out = Command::new(bin("kafka-snapshot-agent"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("KAFKA_SNAPSHOT_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The agent config of broker `n`, written into `dir`.
pub fn write_agent_config(
    dir: &Path,
    n: i32,
    cluster: &impl TestCluster,
    spec: &FleetSpec,
    store_url: &str,
    coordinator_url: &str,
    state_file: &Path,
) -> PathBuf {
    let token_file = dir.join("token");
    write_secret(&token_file, &token(n));
    let dirs: Vec<String> = cluster
        .log_dirs(n)
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    // From server.properties (log dirs, role, the controllers' quorum) the
    // way an operator would point a controller's agent at its node, else
    // the log dirs alone.
    let node = match cluster.server_properties(n) {
        Some(p) => format!("server_properties = {:?}\n", p.display().to_string()),
        None if cluster.controllers().contains(&n) => {
            format!("log_dirs = [{}]\nrole = \"controller\"\n", dirs.join(", "))
        }
        None => format!("log_dirs = [{}]\n", dirs.join(", ")),
    };
    let text = format!(
        "[broker]\n{node}stop_command = {:?}\nstart_command = {:?}\n\
         stop_timeout = \"60s\"\ncommand_timeout = \"60s\"\nrecovery_timeout = {:?}\n\
         [snapshot]\ncapture = {:?}\n{}\
         [storage]\nurl = {:?}\n{}\n\
         [kafka]\nbootstrap_servers = [{}]\nrequest_timeout = \"5s\"\n\
         [gate]\nstable_checks = 2\ncheck_interval = \"300ms\"\n\
         [coordinator]\nurl = {:?}\ntoken_file = {:?}\nstate_file = {:?}\npoll_interval = \"300ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        cluster.stop_script(n).display().to_string(),
        cluster.start_script(n).display().to_string(),
        spec.recovery_timeout,
        spec.capture,
        spec.snapshot_extra,
        store_url,
        spec.storage_extra,
        toml_list(&cluster.bootstrap()),
        coordinator_url,
        token_file.display().to_string(),
        state_file.display().to_string(),
        spec.agent_extra,
    );
    let config = dir.join("agent.toml");
    fs::write(&config, text).unwrap();
    config
}
