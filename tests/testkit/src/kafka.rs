//! A real Apache Kafka cluster for tests: KRaft, dedicated controllers
//! (node ids 100, 101, 102) and brokers (1, 2, 3), every node a JVM on free
//! loopback ports, run from the jars tests/lib/kafka.sh resolved
//! (`KSNAP_TEST_KAFKA_HOME`).
//!
//! Each node has a start and a stop script in the cluster dir that behave
//! like `systemctl start/stop kafka`, so they serve as the agent's
//! `broker.start_command` / `broker.stop_command`: start launches the node
//! in the background, writes its pid file and returns; stop sends SIGTERM
//! (a controlled shutdown) and returns once the process has exited.
//! Dropping the cluster SIGKILLs every node, also when a test panics.
//!
//! ```no_run
//! # use kafka_snapshot_testkit::kafka::{KafkaCluster, KafkaSpec};
//! # use std::time::Duration;
//! let dir = std::path::Path::new("/mnt/xfs/test");
//! let cluster = KafkaCluster::create(dir, &KafkaSpec::default()).unwrap();
//! cluster.start_all(Duration::from_secs(120)).unwrap();
//! cluster.create_topic("orders", 6, 3, 2).unwrap();
//! ```

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka_files::uuid_base64url;
use crate::process::{alive, free_ports, run_script};
use crate::wire::Connection;

/// Where tests/lib/kafka.sh put the Kafka release: `libs/` and
/// `log4j2.properties`.
pub const HOME_ENV: &str = "KSNAP_TEST_KAFKA_HOME";
pub const VERSION_ENV: &str = "KSNAP_TEST_KAFKA_VERSION";
/// `kraft` (the default) or `zookeeper`: how the cluster is run.
pub const MODE_ENV: &str = "KSNAP_TEST_KAFKA_MODE";

/// How the brokers agree on metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dedicated KRaft controllers (100, 101, 102).
    KRaft,
    /// One ZooKeeper server and no controller nodes: a controller is
    /// elected among the brokers, `meta.properties` is `version=0` with
    /// `broker.id`, written by each broker at its first start (Kafka 3.x).
    ZooKeeper,
}

impl Mode {
    /// [`MODE_ENV`], default KRaft.
    pub fn from_env() -> Mode {
        match std::env::var(MODE_ENV).as_deref() {
            Ok("zookeeper") => Mode::ZooKeeper,
            Ok("kraft") | Err(_) => Mode::KRaft,
            Ok(other) => panic!("{MODE_ENV}={other:?}: expected kraft or zookeeper"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::KRaft => "KRaft",
            Mode::ZooKeeper => "ZooKeeper",
        }
    }
}

/// The node id the ZooKeeper server goes by in the cluster dir
/// (`node-0/`): not a Kafka node id.
const ZOOKEEPER_NODE: i32 = 0;

/// The Kafka home from [`HOME_ENV`]; panics with what to do when unset.
pub fn home_from_env() -> PathBuf {
    match std::env::var_os(HOME_ENV) {
        Some(h) if Path::new(&h).join("libs").is_dir() => PathBuf::from(h),
        Some(h) => panic!(
            "{HOME_ENV}={} has no libs/: run tests/lib/kafka.sh's kafka_setup again",
            Path::new(&h).display()
        ),
        None => panic!(
            "{HOME_ENV} is not set: run the tests through tests/run.sh, which installs Apache Kafka \
             (or: source tests/lib/kafka.sh && kafka_setup)"
        ),
    }
}

/// What cluster to create.
#[derive(Clone, Debug)]
pub struct KafkaSpec {
    /// The release (`libs/`, `log4j2.properties`); default [`home_from_env`].
    pub home: PathBuf,
    /// Default [`Mode::from_env`]. `controllers` is ignored in ZooKeeper
    /// mode.
    pub mode: Mode,
    pub controllers: Vec<i32>,
    pub brokers: Vec<i32>,
    pub log_dirs_per_broker: usize,
    /// Where the log dirs go: `<data_root>/broker-N/logs-M` and
    /// `<data_root>/controller-N`; default `<cluster dir>/data`.
    pub data_root: Option<PathBuf>,
    /// Brokers whose log dirs go under another root than `data_root`
    /// (another filesystem: ext4 for copy capture beside XFS).
    pub broker_data_roots: Vec<(i32, PathBuf)>,
    /// JVM flags of every node: a small heap, so that six JVMs fit on a
    /// small CI machine.
    pub jvm_flags: Vec<String>,
    /// Extra `key=value` lines of every broker's server.properties.
    pub broker_properties: Vec<(String, String)>,
}

impl Default for KafkaSpec {
    fn default() -> KafkaSpec {
        KafkaSpec {
            home: home_from_env(),
            mode: Mode::from_env(),
            controllers: vec![100, 101, 102],
            brokers: vec![1, 2, 3],
            log_dirs_per_broker: 2,
            data_root: None,
            broker_data_roots: Vec::new(),
            jvm_flags: [
                "-Xms128m",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                // C1 only: far less compile work at start-up on two cores.
                "-XX:TieredStopAtLevel=1",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
            ]
            .map(String::from)
            .to_vec(),
            broker_properties: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Controller,
    Broker,
    ZooKeeper,
}

#[derive(Clone, Debug)]
struct Node {
    id: i32,
    role: Role,
    port: u16,
    log_dirs: Vec<PathBuf>,
    properties: PathBuf,
}

/// A running (or startable) Kafka cluster; see the module doc.
pub struct KafkaCluster {
    dir: PathBuf,
    home: PathBuf,
    mode: Mode,
    /// Set at creation in KRaft mode (storage is formatted with it); in
    /// ZooKeeper mode the brokers' first start makes it, and
    /// [`KafkaCluster::start_all`] reads it from Metadata.
    cluster_id: std::sync::OnceLock<String>,
    nodes: Vec<Node>,
}

impl KafkaCluster {
    /// Writes every node's server.properties and scripts into `dir` and
    /// formats its storage (`kafka.tools.StorageTool format`). Starts nothing.
    pub fn create(dir: &Path, spec: &KafkaSpec) -> Result<KafkaCluster> {
        let controllers: &[i32] = match spec.mode {
            Mode::KRaft => &spec.controllers,
            Mode::ZooKeeper => &[ZOOKEEPER_NODE],
        };
        ensure!(
            !spec.brokers.is_empty() && !controllers.is_empty(),
            "a cluster needs brokers and controllers"
        );
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data_root = spec.data_root.clone().unwrap_or_else(|| dir.join("data"));
        let ports = free_ports(controllers.len() + spec.brokers.len())?;
        let mut ports = ports.into_iter();
        let mut nodes = Vec::new();
        for &id in controllers {
            nodes.push(match spec.mode {
                Mode::KRaft => Node {
                    id,
                    role: Role::Controller,
                    port: ports.next().unwrap(),
                    log_dirs: vec![data_root.join(format!("controller-{id}"))],
                    properties: dir.join(format!("node-{id}/server.properties")),
                },
                Mode::ZooKeeper => Node {
                    id,
                    role: Role::ZooKeeper,
                    port: ports.next().unwrap(),
                    log_dirs: vec![data_root.join("zookeeper")],
                    properties: dir.join(format!("node-{id}/zoo.cfg")),
                },
            });
        }
        for &id in &spec.brokers {
            let root = spec
                .broker_data_roots
                .iter()
                .find(|(b, _)| *b == id)
                .map_or(&data_root, |(_, r)| r);
            nodes.push(Node {
                id,
                role: Role::Broker,
                port: ports.next().unwrap(),
                log_dirs: (1..=spec.log_dirs_per_broker)
                    .map(|m| root.join(format!("broker-{id}/logs-{m}")))
                    .collect(),
                properties: dir.join(format!("node-{id}/server.properties")),
            });
        }
        let cluster = KafkaCluster {
            dir: dir.to_path_buf(),
            home: spec.home.clone(),
            mode: spec.mode,
            cluster_id: std::sync::OnceLock::new(),
            nodes,
        };
        if spec.mode == Mode::KRaft {
            let _ = cluster.cluster_id.set(random_cluster_id()?);
        }
        let voters = cluster
            .nodes
            .iter()
            .filter(|n| n.role == Role::Controller)
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.port))
            .collect::<Vec<_>>()
            .join(",");
        for n in &cluster.nodes {
            fs::create_dir_all(cluster.node_dir(n.id))?;
            let props = match (n.role, spec.mode) {
                (Role::Controller, _) => controller_properties(n, &voters),
                (Role::ZooKeeper, _) => zookeeper_properties(n),
                (Role::Broker, Mode::KRaft) => {
                    broker_properties(n, &kraft_lines(n, &voters), &spec.broker_properties)
                }
                (Role::Broker, Mode::ZooKeeper) => {
                    let zk = cluster.zookeeper_connect();
                    broker_properties(n, &zookeeper_lines(n, &zk), &spec.broker_properties)
                }
            };
            fs::write(&n.properties, props)?;
            cluster.write_scripts(n, &spec.jvm_flags)?;
        }
        if spec.mode == Mode::KRaft {
            cluster.format()?;
        }
        Ok(cluster)
    }

    fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no Kafka node {id} in this cluster"))
    }

    fn node_dir(&self, id: i32) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster.id; in ZooKeeper mode known only once
    /// [`KafkaCluster::start_all`] has returned.
    pub fn cluster_id(&self) -> &str {
        self.cluster_id
            .get()
            .expect("the cluster.id of a ZooKeeper-mode cluster is known once it started")
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `host:port` of the ZooKeeper server (ZooKeeper mode).
    fn zookeeper_connect(&self) -> String {
        self.address(ZOOKEEPER_NODE)
    }

    pub fn broker_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Broker)
            .map(|n| n.id)
            .collect()
    }

    /// The KRaft controllers (none in ZooKeeper mode).
    pub fn controller_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Controller)
            .map(|n| n.id)
            .collect()
    }

    /// `127.0.0.1:<port>` of every broker, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.broker_ids()
            .iter()
            .map(|&id| self.address(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn address(&self, id: i32) -> String {
        format!("127.0.0.1:{}", self.node(id).port)
    }

    pub fn log_dirs(&self, id: i32) -> &[PathBuf] {
        &self.node(id).log_dirs
    }

    pub fn properties(&self, id: i32) -> &Path {
        &self.node(id).properties
    }

    /// Starts the node in the background and returns (`systemctl start`).
    pub fn start_script(&self, id: i32) -> PathBuf {
        self.node_dir(id).join("start.sh")
    }

    /// SIGTERM, then returns once the process has exited (`systemctl stop`).
    pub fn stop_script(&self, id: i32) -> PathBuf {
        self.node_dir(id).join("stop.sh")
    }

    /// The node's log4j log (its stdout/stderr go to `stdout.log` beside it).
    pub fn log_file(&self, id: i32) -> PathBuf {
        self.node_dir(id).join("server.log")
    }

    fn pid_file(&self, id: i32) -> PathBuf {
        self.node_dir(id).join("kafka.pid")
    }

    /// The last `lines` lines of the node's log, for failure messages.
    pub fn log_tail(&self, id: i32, lines: usize) -> String {
        let text = fs::read_to_string(self.log_file(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn start(&self, id: i32) -> Result<()> {
        run_script(&self.start_script(id)).with_context(|| format!("starting Kafka node {id}"))
    }

    pub fn stop(&self, id: i32) -> Result<()> {
        run_script(&self.stop_script(id)).with_context(|| format!("stopping Kafka node {id}"))
    }

    /// Pid of the node's JVM if it runs.
    pub fn pid(&self, id: i32) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file(id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    pub fn is_running(&self, id: i32) -> bool {
        self.pid(id).is_some()
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&self, id: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILLs every node (what Drop does).
    pub fn kill_all(&self) {
        for n in &self.nodes {
            self.kill(n.id);
        }
    }

    /// Starts the controllers, then the brokers, and waits until every
    /// broker is registered and unfenced (listed by Metadata).
    pub fn start_all(&self, timeout: Duration) -> Result<()> {
        for n in self.nodes.iter().filter(|n| n.role != Role::Broker) {
            self.start(n.id)?;
        }
        if self.mode == Mode::ZooKeeper {
            let zk = self.zookeeper_connect();
            self.wait_for(timeout, "ZooKeeper to accept connections", || {
                std::net::TcpStream::connect(&zk).is_ok()
            })?;
        }
        for id in self.broker_ids() {
            self.start(id)?;
        }
        self.wait_registered(timeout)?;
        if self.cluster_id.get().is_none() {
            let md = self.metadata()?;
            let id = md
                .cluster_id
                .context("Metadata gave no cluster.id")?
                .to_string();
            let _ = self.cluster_id.set(id);
        }
        Ok(())
    }

    /// Waits until Metadata lists every broker.
    pub fn wait_registered(&self, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        let ok = self.wait_until(timeout, || match self.metadata() {
            Ok(md) => {
                let listed: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
                let missing: Vec<i32> = self
                    .broker_ids()
                    .into_iter()
                    .filter(|id| !listed.contains(id))
                    .collect();
                last = format!("brokers {missing:?} not listed by Metadata");
                missing.is_empty()
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        });
        ok.with_context(|| format!("Kafka brokers not registered after {timeout:?}: {last}"))
    }

    /// Waits until every broker is listed and in the ISR of every
    /// partition it is a replica of, and every partition has a leader.
    pub fn wait_in_sync(&self, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        let ok = self.wait_until(timeout, || match self.metadata() {
            Ok(md) => match in_sync_problem(&self.broker_ids(), &md) {
                Some(p) => {
                    last = p;
                    false
                }
                None => true,
            },
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        });
        ok.with_context(|| format!("Kafka cluster not in sync after {timeout:?}: {last}"))
    }

    /// Polls `check` every 100 ms; on timeout the error names the nodes
    /// that died.
    fn wait_until(&self, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let dead: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| !self.is_running(n.id))
                    .map(|n| {
                        format!(
                            "node {} is not running; its log:\n{}",
                            n.id,
                            self.log_tail(n.id, 30)
                        )
                    })
                    .collect();
                bail!("timed out. {}", dead.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Metadata (v12, all topics) from the first broker that answers and
    /// serves: one that lists itself among the brokers. A broker that is
    /// still starting can answer before it has the cluster's metadata; its
    /// answer is not the cluster's view (in ZooKeeper mode a restarted
    /// broker serves Metadata from an empty cache until the controller's
    /// UpdateMetadata reaches it: a run counted all three brokers missing
    /// at once, in a sample where no partition was under min ISR).
    pub fn metadata(&self) -> Result<MetadataResponse> {
        let mut errors = Vec::new();
        let ids = self.broker_ids();
        for (i, &id) in ids.iter().enumerate() {
            match self.metadata_from(id) {
                Ok(mut md) => {
                    if self.mode == Mode::ZooKeeper {
                        self.leaders_from_other_caches(&mut md, &ids[i + 1..]);
                    }
                    return Ok(md);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no serving broker answered Metadata: {}", errors.join("; "))
    }

    /// Metadata from broker `id`, if it lists itself (a broker that does
    /// not answers from a cache it has not been sent yet).
    fn metadata_from(&self, id: i32) -> Result<MetadataResponse> {
        let addr = self.address(id);
        let md = Connection::connect(&addr, Duration::from_secs(2))
            .and_then(|mut c| c.send(&MetadataRequest::default().with_topics(None), 12))
            .with_context(|| addr.clone())?;
        if !md.brokers.iter().any(|b| b.node_id.0 == id) {
            bail!(
                "{addr}: broker {id} does not list itself yet ({} brokers listed)",
                md.brokers.len()
            );
        }
        Ok(md)
    }

    /// ZooKeeper mode: each broker's metadata cache is filled by the
    /// controller's UpdateMetadata requests, one broker at a time, and a
    /// broker answers leader -1 (LEADER_NOT_AVAILABLE) for a partition
    /// whose leader its cache does not list as alive yet, with the ISR
    /// still full. Such a partition is not offline: another broker's cache
    /// names its leader. A partition counts as leaderless only when no
    /// serving broker knows a leader for it; its entry is taken from the
    /// first broker that does.
    fn leaders_from_other_caches(&self, md: &mut MetadataResponse, others: &[i32]) {
        let leaderless = |md: &MetadataResponse| {
            md.topics
                .iter()
                .any(|t| t.partitions.iter().any(|p| p.leader_id.0 < 0))
        };
        for &id in others {
            if !leaderless(md) {
                return;
            }
            let Ok(other) = self.metadata_from(id) else {
                continue;
            };
            for t in md.topics.iter_mut() {
                let Some(ot) = other.topics.iter().find(|o| o.name == t.name) else {
                    continue;
                };
                for p in t.partitions.iter_mut().filter(|p| p.leader_id.0 < 0) {
                    if let Some(op) = ot
                        .partitions
                        .iter()
                        .find(|o| o.partition_index == p.partition_index && o.leader_id.0 >= 0)
                    {
                        *p = op.clone();
                    }
                }
            }
        }
    }

    /// Creates a topic and waits until every partition has a leader and
    /// all `replication_factor` replicas in its ISR.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        min_insync_replicas: i32,
    ) -> Result<()> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("min.insync.replicas"))
                .with_value(Some(StrBytes::from_string(
                    min_insync_replicas.to_string(),
                )))]);
        self.send_create_topic(name, topic)?;
        self.wait_topic_ready(name, partitions as usize, replication_factor as usize)
    }

    /// Waits until `name` has `partitions` partitions, each with a leader
    /// and `replication_factor` replicas in its ISR.
    pub(crate) fn wait_topic_ready(
        &self,
        name: &str,
        partitions: usize,
        replication_factor: usize,
    ) -> Result<()> {
        let mut last = String::new();
        self.wait_until(Duration::from_secs(60), || {
            let Ok(md) = self.metadata() else {
                return false;
            };
            let Some(t) = md
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
            else {
                last = "not in Metadata yet".into();
                return false;
            };
            last = format!("{:?}", t.partitions);
            t.partitions.len() == partitions
                && t.partitions
                    .iter()
                    .all(|p| p.leader_id.0 >= 0 && p.isr_nodes.len() == replication_factor)
        })
        .with_context(|| format!("topic {name} not ready: {last}"))
    }

    /// Polls `check` every 100 ms until it holds; the error says `what`
    /// did not happen.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl FnMut() -> bool,
    ) -> Result<()> {
        self.wait_until(timeout, check)
            .with_context(|| format!("waiting for {what}"))
    }

    fn write_scripts(&self, n: &Node, jvm_flags: &[String]) -> Result<()> {
        let dir = self.node_dir(n.id);
        let java = std::env::var("JAVA").unwrap_or_else(|_| "java".into());
        let mut cmd = vec![shell_quote(&java)];
        cmd.extend(jvm_flags.iter().map(|f| shell_quote(f)));
        cmd.push(shell_quote(&format!(
            "-Dlog4j2.configurationFile={}",
            self.home.join("log4j2.properties").display()
        )));
        cmd.push(shell_quote(&format!(
            "-Dksnap.log={}",
            self.log_file(n.id).display()
        )));
        cmd.push("-cp".into());
        cmd.push(shell_quote(&format!(
            "{}/*",
            self.home.join("libs").display()
        )));
        cmd.push(match n.role {
            Role::ZooKeeper => "org.apache.zookeeper.server.ZooKeeperServerMain".into(),
            _ => "kafka.Kafka".into(),
        });
        cmd.push(shell_quote(&n.properties.display().to_string()));
        let pid_file = shell_quote(&self.pid_file(n.id).display().to_string());
        let stdout = shell_quote(&dir.join("stdout.log").display().to_string());
        let start = format!(
            "#!/bin/bash\n\
             # Starts Kafka node {id} in the background and returns, as `systemctl start` does.\n\
             set -eu\n\
             pidfile={pid_file}\n\
             {alive_fn}\
             if [[ -f $pidfile ]] && alive \"$(cat \"$pidfile\")\"; then exit 0; fi\n\
             # Its own session, all descriptors redirected: the caller's pipes close at once.\n\
             setsid {cmd} >>{stdout} 2>&1 </dev/null &\n\
             echo $! >\"$pidfile\"\n",
            id = n.id,
            alive_fn = ALIVE_FN,
            cmd = cmd.join(" "),
        );
        let stop = format!(
            "#!/bin/bash\n\
             # Stops Kafka node {id} as `systemctl stop` does: SIGTERM (a controlled\n\
             # shutdown), wait until the process has exited, SIGKILL after 120 s.\n\
             set -u\n\
             pidfile={pid_file}\n\
             {alive_fn}\
             [[ -f $pidfile ]] || exit 0\n\
             pid=$(cat \"$pidfile\")\n\
             alive \"$pid\" || exit 0\n\
             kill -TERM \"$pid\" 2>/dev/null || exit 0\n\
             for _ in $(seq 2400); do\n\
             \x20   alive \"$pid\" || exit 0\n\
             \x20   sleep 0.05\n\
             done\n\
             kill -KILL \"$pid\" 2>/dev/null\n\
             echo \"node {id} did not stop within 120 s: killed\" >&2\n\
             exit 1\n",
            id = n.id,
            alive_fn = ALIVE_FN,
        );
        for (name, text) in [("start.sh", start), ("stop.sh", stop)] {
            let p = dir.join(name);
            fs::write(&p, text)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }

    /// `StorageTool format` for every node, in parallel.
    fn format(&self) -> Result<()> {
        let mut children = Vec::new();
        for n in &self.nodes {
            let child = Command::new(std::env::var("JAVA").unwrap_or_else(|_| "java".into()))
                .args(["-Xmx128m", "-XX:TieredStopAtLevel=1", "-cp"])
                .arg(format!("{}/*", self.home.join("libs").display()))
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    self.home.join("log4j2.properties").display()
                ))
                .arg(format!(
                    "-Dksnap.log={}",
                    self.node_dir(n.id).join("format.log").display()
                ))
                .args([
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self.cluster_id(),
                    "-c",
                ])
                .arg(&n.properties)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running java (is a JDK 17+ installed?)")?;
            children.push((n.id, child));
        }
        let mut failed = Vec::new();
        for (id, child) in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                failed.push(format!(
                    "node {id}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        ensure!(
            failed.is_empty(),
            "formatting Kafka storage failed: {}",
            failed.join("\n")
        );
        Ok(())
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// [`alive`] in bash, for the scripts.
const ALIVE_FN: &str = "alive() { local s; s=$(cat \"/proc/$1/stat\" 2>/dev/null) || return 1; s=${s##*) }; [[ ${s:0:1} != Z ]]; }\n";

fn controller_properties(n: &Node, voters: &str) -> String {
    format!(
        "process.roles=controller\n\
         node.id={id}\n\
         listeners=CONTROLLER://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT\n\
         controller.quorum.voters={voters}\n\
         log.dirs={dirs}\n\
         num.io.threads=2\n\
         num.network.threads=2\n\
         background.threads=2\n",
        id = n.id,
        port = n.port,
        dirs = n.log_dirs[0].display(),
    )
}

/// A single ZooKeeper server, its data under the node's one "log dir".
fn zookeeper_properties(n: &Node) -> String {
    format!(
        "dataDir={dir}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         tickTime=2000\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n",
        dir = n.log_dirs[0].display(),
        port = n.port,
    )
}

/// A KRaft broker's identity and controller quorum.
fn kraft_lines(n: &Node, voters: &str) -> String {
    format!(
        "process.roles=broker\n\
         node.id={id}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         controller.quorum.voters={voters}\n",
        id = n.id,
    )
}

/// A ZooKeeper-mode broker (Kafka 3.x): `broker.id`, no process.roles.
fn zookeeper_lines(n: &Node, zookeeper: &str) -> String {
    format!(
        "broker.id={id}\n\
         zookeeper.connect={zookeeper}\n\
         zookeeper.session.timeout.ms=18000\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT\n",
        id = n.id,
    )
}

fn broker_properties(n: &Node, identity: &str, extra: &[(String, String)]) -> String {
    let dirs: Vec<String> = n.log_dirs.iter().map(|d| d.display().to_string()).collect();
    let mut s = format!(
        "{identity}\
         listeners=PLAINTEXT://127.0.0.1:{port}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={dirs}\n\
         auto.create.topics.enable=false\n\
         default.replication.factor=3\n\
         min.insync.replicas=2\n\
         offsets.topic.replication.factor=3\n\
         offsets.topic.num.partitions=6\n\
         transaction.state.log.replication.factor=3\n\
         transaction.state.log.min.isr=2\n\
         transaction.state.log.num.partitions=6\n\
         group.initial.rebalance.delay.ms=0\n\
         num.io.threads=2\n\
         num.network.threads=2\n\
         background.threads=2\n\
         num.replica.fetchers=1\n\
         log.cleaner.threads=1\n\
         num.recovery.threads.per.data.dir=1\n",
        port = n.port,
        dirs = dirs.join(","),
    );
    for (k, v) in extra {
        s.push_str(&format!("{k}={v}\n"));
    }
    s
}

/// Why the cluster is not in sync yet, or `None` if it is.
fn in_sync_problem(brokers: &[i32], md: &MetadataResponse) -> Option<String> {
    let listed: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    if let Some(id) = brokers.iter().find(|id| !listed.contains(id)) {
        return Some(format!("broker {id} is not listed by Metadata"));
    }
    for t in &md.topics {
        let name = t.name.as_ref().map(|n| n.0.as_str()).unwrap_or_default();
        for p in &t.partitions {
            if p.leader_id.0 < 0 {
                return Some(format!("{name}-{} has no leader", p.partition_index));
            }
            if let Some(r) = p.replica_nodes.iter().find(|r| !p.isr_nodes.contains(r)) {
                return Some(format!(
                    "broker {} is not in the ISR of {name}-{}",
                    r.0, p.partition_index
                ));
            }
        }
    }
    None
}

/// A KRaft cluster id: 16 random bytes as Kafka prints a uuid (what
/// `kafka-storage random-uuid` prints, which never starts with '-').
fn random_cluster_id() -> Result<String> {
    let mut f = fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    loop {
        let mut bytes = [0u8; 16];
        f.read_exact(&mut bytes).context("reading /dev/urandom")?;
        let id = uuid_base64url(&bytes);
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
