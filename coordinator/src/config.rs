//! The coordinator's TOML configuration. Unknown keys are errors and every
//! problem names the file and the key. Cold storage and Kafka are
//! configured with exactly the same sections (and checks) as the agent's.

use crate::schedule::Schedule;
use kafka_snapshot::kafka::gate::LowReplicationPolicy;
use kafka_snapshot::kafka::KafkaSection;
use kafka_snapshot::settings::{duration, problems_error};
use kafka_snapshot::storage::StorageSection;
use kafka_snapshot::{Error, Result};
use kafka_snapshot_model::protocol::NodeRole;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub server: ServerSection,
    /// One entry per broker: the agent's token is known by its SHA-256.
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    #[serde(default)]
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub lease: LeaseSection,
    #[serde(default)]
    pub retention: RetentionSection,
    pub storage: StorageSection,
    pub kafka: KafkaSection,
    #[serde(default)]
    pub gate: CoordinatorGate,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub hooks: CycleHooks,
    /// Set after parsing: the schedule, checked.
    #[serde(skip)]
    pub parsed_schedule: Option<Schedule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Where the HTTP API (agents, operator CLI, /metrics) listens.
    pub listen: SocketAddr,
    /// The URL the operator CLI uses; defaults to `listen` on loopback.
    pub url: Option<String>,
    /// The SQLite database holding all state.
    pub database: PathBuf,
    /// Bearer token of the operator CLI (file, mode 0600).
    pub admin_token_file: PathBuf,
    /// TLS: both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA the operator CLI trusts when `url` is https (defaults to
    /// `tls_cert`, which works for a self-signed certificate).
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The Kafka node id (`node.id`, or `broker.id` in ZooKeeper mode) of
    /// the node this agent runs on; `node` is the same key.
    #[serde(alias = "node")]
    pub broker: i32,
    /// What the node is: `broker` (the default), `controller` (a dedicated
    /// KRaft controller) or `combined`. A cycle takes brokers first and
    /// controllers last; an agent whose `process.roles` says otherwise is
    /// refused.
    #[serde(default)]
    pub role: NodeRole,
    /// Hex SHA-256 of the agent's bearer token (`sha256sum` of the token
    /// without a trailing newline).
    pub token_sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// `@every 24h` or a 5-field cron expression in UTC (`0 2 * * *`).
    pub schedule: String,
    /// A cycle that could not start within this long of its due time is
    /// skipped (the coordinator was down); the next due time counts.
    #[serde(deserialize_with = "duration")]
    pub starting_deadline: Duration,
    /// No scheduled cycles (manual `run-now` and restores still work).
    pub suspend: bool,
    /// How long one broker may wait for its turn to pass the gates
    /// (the coordinator's and its agent's) before it is skipped for now.
    #[serde(deserialize_with = "duration")]
    pub gate_timeout: Duration,
    /// How often a broker is tried per cycle (skips are retried at the end).
    pub max_attempts: u32,
    /// How long an agent may take to build and upload an archive after
    /// its broker is back, before the snapshot counts as failed.
    #[serde(deserialize_with = "duration")]
    pub archive_timeout: Duration,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            schedule: "@every 24h".into(),
            starting_deadline: Duration::from_secs(3600),
            suspend: false,
            gate_timeout: Duration::from_secs(30 * 60),
            max_attempts: 3,
            archive_timeout: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSection {
    /// A lease not renewed by a heartbeat within this long expires; the
    /// slot then stays closed until the cluster is back in sync.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// How often agents poll when idle.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
}

impl Default for LeaseSection {
    fn default() -> Self {
        LeaseSection {
            ttl: Duration::from_secs(60),
            poll_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Snapshots kept per broker, newest first.
    pub keep_last: u32,
    /// Older snapshots go (beyond `keep_last`... see [`crate::retention`]).
    #[serde(deserialize_with = "opt_duration")]
    pub max_age: Option<Duration>,
    /// Read every new snapshot back from cold storage and verify it.
    pub verify_new: bool,
    /// Apply retention after every cycle.
    pub prune_after_cycle: bool,
    /// How long a content object of incremental snapshots must have been
    /// referenced by no snapshot, seen so by two sweeps, before retention
    /// removes it.
    #[serde(deserialize_with = "duration")]
    pub object_grace: Duration,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            keep_last: 7,
            max_age: None,
            verify_new: true,
            prune_after_cycle: true,
            object_grace: Duration::from_secs(3600),
        }
    }
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Which Kafka cluster this coordinator works for. Cold storage may be
/// shared by several clusters (one coordinator each): only snapshots of
/// this cluster.id are listed, kept, deleted or restored, and an agent
/// reporting a snapshot of another cluster is refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The `cluster.id` of the brokers' `meta.properties`. Without it the
    /// coordinator asks the cluster (Metadata) the first time it reaches
    /// it and keeps the answer in its database; with it, a cluster that
    /// answers with another id is refused. Set it to rebuild the catalog
    /// of a cluster that cannot be reached (a restore after losing it).
    pub id: Option<String>,
}

/// `[hooks]`: commands around a rolling cycle, for application-consistent
/// snapshot sets (for example pausing MirrorMaker 2's connectors on a
/// backup cluster for the length of the cycle). Run by the coordinator
/// with `sh -c` as its own user, with `KAFKA_SNAPSHOT_CYCLE_ID` and
/// `KAFKA_SNAPSHOT_HOOK` set (and `KAFKA_SNAPSHOT_CYCLE_STATE` for
/// `after_cycle`). A coordinator restarted while a hook ran runs it again:
/// hooks must be safe to repeat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleHooks {
    /// Before the cycle's first lease. A failure ends the cycle `failed`
    /// before any node is touched (`after_cycle` still runs).
    pub before_cycle: Option<String>,
    /// Once the cycle has ended, whatever its end (done, partial, failed,
    /// cancelled). A failure is an error event and is added to the
    /// cycle's message.
    pub after_cycle: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for CycleHooks {
    fn default() -> Self {
        CycleHooks {
            before_cycle: None,
            after_cycle: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// The coordinator's own cluster check before it grants a lease.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorGate {
    /// Topics with replication factor <= min.insync.replicas (the agent has
    /// the same setting; keep them equal).
    pub low_replication_policy: LowReplicationPolicy,
    /// How often the coordinator looks at the cluster while a slot waits
    /// for it to be back in sync, and at the end of a cycle.
    #[serde(deserialize_with = "duration")]
    pub check_interval: Duration,
}

impl Default for CoordinatorGate {
    fn default() -> Self {
        CoordinatorGate {
            low_replication_policy: LowReplicationPolicy::Refuse,
            check_interval: Duration::from_secs(10),
        }
    }
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<CoordinatorConfig> {
        let mut cfg: CoordinatorConfig = toml::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = Vec::new();
        match Schedule::parse(&cfg.schedule.schedule) {
            Ok(schedule) => cfg.parsed_schedule = Some(schedule),
            Err(m) => problems.push(("schedule.schedule".to_string(), m)),
        }
        problems.extend(cfg.problems());
        if let Err(p) = cfg.kafka.resolve_secrets() {
            problems.push(p);
        }
        problems_error(path, problems)?;
        Ok(cfg)
    }

    /// Every problem serde cannot see, as (key, message).
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |k: &str, m: String| problems.push((k.to_string(), m));
        if !self.server.database.is_absolute() {
            bad(
                "server.database",
                format!("{} is not an absolute path", self.server.database.display()),
            );
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => bad("server.tls_key", "required with tls_cert".into()),
            (None, Some(_)) => bad("server.tls_cert", "required with tls_key".into()),
            _ => {}
        }
        if let Some(url) = &self.server.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bad("server.url", format!("{url:?} is not an http(s):// URL"));
            }
        }
        let mut seen = BTreeMap::new();
        for (i, a) in self.agents.iter().enumerate() {
            let key = format!("agents[{i}].token_sha256");
            if a.broker < 0 {
                bad(&format!("agents[{i}].broker"), "must be >= 0".into());
            }
            if a.token_sha256.len() != 64 || !a.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                bad(&key, "is not a hex SHA-256 (64 hex digits)".into());
            }
            if let Some(j) = seen.insert(a.broker, i) {
                bad(
                    &format!("agents[{i}].broker"),
                    format!("broker {} is listed twice (agents[{j}])", a.broker),
                );
            }
        }
        if self.agents.iter().enumerate().any(|(i, a)| {
            self.agents[..i]
                .iter()
                .any(|b| b.token_sha256.eq_ignore_ascii_case(&a.token_sha256))
        }) {
            bad(
                "agents.token_sha256",
                "two brokers share a token: every agent needs its own".into(),
            );
        }
        if self.lease.ttl < Duration::from_secs(3) {
            bad("lease.ttl", "must be at least 3s".into());
        }
        if self.lease.poll_interval.is_zero() {
            bad("lease.poll_interval", "must be more than 0".into());
        } else if self.lease.poll_interval >= self.lease.ttl {
            bad(
                "lease.poll_interval",
                format!(
                    "{:?} is not shorter than lease.ttl {:?}",
                    self.lease.poll_interval, self.lease.ttl
                ),
            );
        }
        if self.schedule.max_attempts == 0 {
            bad("schedule.max_attempts", "must be at least 1".into());
        }
        if self.schedule.gate_timeout.is_zero() {
            bad("schedule.gate_timeout", "must be more than 0".into());
        }
        if self.retention.keep_last == 0 {
            bad(
                "retention.keep_last",
                "must be at least 1 (the newest verified snapshot is always kept)".into(),
            );
        }
        if self.retention.max_age == Some(Duration::ZERO) {
            bad("retention.max_age", "must be more than 0".into());
        }
        if self.gate.check_interval.is_zero() {
            bad("gate.check_interval", "must be more than 0".into());
        }
        if let Some(id) = &self.cluster.id {
            // The first component of every key in cold storage.
            let ok = !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                bad(
                    "cluster.id",
                    format!("{id:?} is not a Kafka cluster.id (letters, digits, '-' and '_')"),
                );
            }
        }
        if let Err(found) = self.storage.validate() {
            problems.extend(found);
        }
        if let Err(found) = self.kafka.validate() {
            problems.extend(found);
        }
        problems
    }

    pub fn schedule(&self) -> &Schedule {
        self.parsed_schedule.as_ref().expect("set by parse")
    }

    /// The URL the CLI talks to.
    pub fn api_url(&self) -> String {
        if let Some(u) = &self.server.url {
            return u.trim_end_matches('/').to_string();
        }
        let scheme = if self.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let port = self.server.listen.port();
        let host = match self.server.listen.ip() {
            ip if ip.is_unspecified() => "localhost".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("{scheme}://{host}:{port}")
    }

    /// Every node with an agent, in the order a cycle takes them: brokers,
    /// then combined nodes, then dedicated controllers (so the metadata in
    /// a cycle's snapshots is the newest), by id within each.
    pub fn nodes(&self) -> Vec<i32> {
        let mut n: Vec<(NodeRole, i32)> = self.agents.iter().map(|a| (a.role, a.broker)).collect();
        n.sort_unstable();
        n.into_iter().map(|(_, id)| id).collect()
    }

    /// The nodes that are brokers (dedicated or combined), by id: those
    /// Metadata must list.
    pub fn brokers(&self) -> Vec<i32> {
        self.ids_where(NodeRole::is_broker)
    }

    /// The nodes that are KRaft controllers (dedicated or combined), by id:
    /// those the controller quorum must hold as caught-up voters.
    pub fn controllers(&self) -> Vec<i32> {
        self.ids_where(NodeRole::is_controller)
    }

    fn ids_where(&self, f: impl Fn(NodeRole) -> bool) -> Vec<i32> {
        let mut b: Vec<i32> = self
            .agents
            .iter()
            .filter(|a| f(a.role))
            .map(|a| a.broker)
            .collect();
        b.sort_unstable();
        b
    }

    /// The configured role of node `id`.
    pub fn role_of(&self, id: i32) -> Option<NodeRole> {
        self.agents.iter().find(|a| a.broker == id).map(|a| a.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CoordinatorConfig> {
        CoordinatorConfig::parse(text, Path::new("/etc/coordinator.toml"))
    }

    #[test]
    fn example_config_parses() {
        let cfg = parse(include_str!("../coordinator.example.toml")).unwrap();
        assert_eq!(cfg.brokers(), vec![1, 2, 3]);
        assert_eq!(cfg.retention.keep_last, 7);
        assert_eq!(cfg.api_url(), "http://localhost:9640");
    }

    const MIN: &str = r#"
[server]
listen = "127.0.0.1:9640"
database = "/var/lib/c/state.db"
admin_token_file = "/etc/t"
[storage]
url = "file:///mnt/s"
[kafka]
bootstrap_servers = ["k1:9092"]
"#;

    fn err_of(extra: &str) -> String {
        parse(&format!("{MIN}{extra}")).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_has_safe_defaults() {
        let cfg = parse(MIN).unwrap();
        assert_eq!(cfg.lease.ttl, Duration::from_secs(60));
        assert!(!cfg.schedule.suspend);
        assert_eq!(
            cfg.gate.low_replication_policy,
            LowReplicationPolicy::Refuse
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse(&format!(
            "{}[retention]\nkeep_last = 0\n[gate]\ncheck_interval = \"0s\"\n",
            MIN.replace("/var/lib/c/state.db", "state.db")
        ))
        .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("config /etc/coordinator.toml: 3 problems:\n  - "),
            "{e}"
        );
        for key in [
            "server.database",
            "retention.keep_last",
            "gate.check_interval",
        ] {
            assert!(e.contains(&format!("\n  - {key}: ")), "{key}: {e}");
        }
        // A bad schedule is one of the problems, not a stop.
        let e = err_of("[schedule]\nschedule = \"61 * * * *\"\n[retention]\nkeep_last = 0\n");
        assert!(
            e.contains("2 problems:")
                && e.contains("schedule.schedule")
                && e.contains("retention.keep_last"),
            "{e}"
        );
        // One problem reads as it always has.
        assert_eq!(
            err_of("[retention]\nkeep_last = 0\n"),
            "config /etc/coordinator.toml: retention.keep_last: must be at least 1 \
             (the newest verified snapshot is always kept)"
        );
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = err_of("[lease]\nttl = \"10s\"\npoll_interval = \"20s\"\n");
        assert!(
            e.contains("/etc/coordinator.toml") && e.contains("lease.poll_interval"),
            "{e}"
        );
        let e = err_of("[schedule]\nschedule = \"61 * * * *\"\n");
        assert!(e.contains("schedule.schedule"), "{e}");
        let e = err_of("[retention]\nkeep_last = 0\n");
        assert!(e.contains("retention.keep_last"), "{e}");
        let e = err_of("[[agents]]\nbroker = 1\ntoken_sha256 = \"abc\"\n");
        assert!(e.contains("agents[0].token_sha256"), "{e}");
        let h = "a".repeat(64);
        let e = err_of(&format!(
            "[[agents]]\nbroker = 1\ntoken_sha256 = \"{h}\"\n[[agents]]\nbroker = 2\ntoken_sha256 = \"{h}\"\n"
        ));
        assert!(e.contains("share a token"), "{e}");
        let e = err_of("[retention]\nkeep_lats = 3\n");
        assert!(
            e.contains("unknown field") && e.contains("keep_lats"),
            "{e}"
        );
        let e = parse(&MIN.replace("file:///mnt/s", "ftp://x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.url"), "{e}");
    }
}
