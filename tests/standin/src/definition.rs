//! The cluster definition every broker process reads at start: cluster id,
//! brokers (ports, log dirs), topics (ids, replica assignments, per-topic
//! `min.insync.replicas`) and the broker default `min.insync.replicas`.
//! It is written once by [`crate::StandinCluster::create`] and never changes
//! while the cluster runs; what changes at runtime is the
//! [`Scenario`](crate::Scenario).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// `cluster.toml` in the state dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterDef {
    /// 22-char base64url id, the same in every `meta.properties`.
    pub cluster_id: String,
    /// `min.insync.replicas` in every broker's (imagined) server.properties:
    /// the effective value of topics without an override.
    pub broker_min_insync_replicas: i32,
    /// How often a broker appends a record batch to every partition it leads.
    pub append_interval_ms: u64,
    /// Value size of the records it appends.
    pub append_record_bytes: usize,
    /// What the broker regenerates with the testkit when it finds all its
    /// log dirs empty at start.
    pub data: DataDef,
    /// Users of the SASL_PLAINTEXT listeners (PLAIN and SCRAM-SHA-256/512).
    /// When set, every broker also listens on its `sasl_port`.
    #[serde(default)]
    pub sasl_users: Vec<SaslUser>,
    /// Certificate and key of the SSL (and, with SASL users, SASL_SSL)
    /// listeners. When set, every broker also listens on its `ssl_port`.
    #[serde(default)]
    pub tls: Option<TlsDef>,
    pub brokers: Vec<BrokerDef>,
    pub topics: Vec<TopicDef>,
}

/// Parameters handed to `kafka_snapshot_testkit::generate` for every broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDef {
    pub topics: usize,
    pub partitions_per_topic: usize,
    pub bytes_per_broker: u64,
    pub segment_bytes: u64,
    pub with_delete_dir: bool,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerDef {
    pub node_id: i32,
    /// PLAINTEXT listener on 127.0.0.1.
    pub port: u16,
    /// SASL_PLAINTEXT listener on 127.0.0.1, if the cluster has SASL users.
    #[serde(default)]
    pub sasl_port: Option<u16>,
    /// SSL listener on 127.0.0.1, if the cluster has TLS.
    #[serde(default)]
    pub ssl_port: Option<u16>,
    /// SASL_SSL listener on 127.0.0.1, if the cluster has TLS and SASL users.
    #[serde(default)]
    pub sasl_ssl_port: Option<u16>,
    /// `log.dirs`; the first one is also the metadata log dir.
    pub log_dirs: Vec<PathBuf>,
}

/// PEM files of the TLS listeners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsDef {
    /// The broker certificate chain (leaf first), valid for 127.0.0.1.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, the SSL listener requires a client certificate signed by
    /// this CA (`ssl.client.auth=required`); the SASL_SSL listener never
    /// does (clients authenticate with SASL there).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A listener's security protocol, as in Kafka's `listener.security.protocol.map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    SaslPlaintext,
    Ssl,
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslSsl,
    ];

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl BrokerDef {
    /// The broker's port for `protocol`, if it has that listener.
    pub fn port_for(&self, protocol: SecurityProtocol) -> Option<u16> {
        match protocol {
            SecurityProtocol::Plaintext => Some(self.port),
            SecurityProtocol::SaslPlaintext => self.sasl_port,
            SecurityProtocol::Ssl => self.ssl_port,
            SecurityProtocol::SaslSsl => self.sasl_ssl_port,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslUser {
    pub name: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    pub name: String,
    /// Base64url topic id, as in `partition.metadata`.
    pub topic_id: String,
    /// `__consumer_offsets` is internal.
    #[serde(default)]
    pub internal: bool,
    /// Topic-level `min.insync.replicas` override, if any.
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// Replica assignment of each partition, preferred leader first.
    pub replicas: Vec<Vec<i32>>,
    /// Topic-level `cleanup.policy`.
    #[serde(default = "default_cleanup_policy")]
    pub cleanup_policy: String,
}

fn default_cleanup_policy() -> String {
    "delete".to_string()
}

impl ClusterDef {
    pub fn load(path: &Path) -> Result<ClusterDef> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading cluster definition {}", path.display()))?;
        let def: ClusterDef = toml::from_str(&text)
            .with_context(|| format!("parsing cluster definition {}", path.display()))?;
        def.validate()
            .with_context(|| format!("invalid cluster definition {}", path.display()))?;
        Ok(def)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let text = toml::to_string_pretty(self).context("serializing cluster definition")?;
        fsutil::write_atomic(path, text.as_bytes())
    }

    /// Cross-field checks: unique ids, ports and dirs, assignments naming
    /// known brokers without duplicates, sane `min.insync.replicas`.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.brokers.is_empty(), "the cluster has no brokers");
        ensure!(
            self.broker_min_insync_replicas >= 1,
            "broker min.insync.replicas must be >= 1, got {}",
            self.broker_min_insync_replicas
        );
        ensure!(
            self.append_interval_ms >= 10,
            "append_interval_ms must be >= 10"
        );
        let mut ids = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        for b in &self.brokers {
            ensure!(b.node_id >= 0, "node id {} must be >= 0", b.node_id);
            ensure!(
                ids.insert(b.node_id),
                "node id {} is listed twice",
                b.node_id
            );
            for protocol in SecurityProtocol::ALL {
                let wanted = (!protocol.uses_sasl() || !self.sasl_users.is_empty())
                    && (!protocol.uses_tls() || self.tls.is_some());
                match b.port_for(protocol) {
                    Some(p) => {
                        ensure!(ports.insert(p), "port {p} is used twice");
                        ensure!(
                            wanted,
                            "broker {} has a {protocol:?} port but the cluster has no such listener",
                            b.node_id
                        );
                    }
                    None => ensure!(
                        !wanted,
                        "broker {} has no {protocol:?} port but the cluster has that listener",
                        b.node_id
                    ),
                }
            }
            ensure!(
                !b.log_dirs.is_empty(),
                "broker {} has no log dirs",
                b.node_id
            );
            for d in &b.log_dirs {
                ensure!(
                    d.is_absolute(),
                    "log dir {} of broker {} must be absolute",
                    d.display(),
                    b.node_id
                );
                ensure!(
                    dirs.insert(d.clone()),
                    "log dir {} is used twice",
                    d.display()
                );
            }
        }
        let mut names = BTreeSet::new();
        for t in &self.topics {
            ensure!(names.insert(&t.name), "topic {} is listed twice", t.name);
            ensure!(
                !t.name.is_empty()
                    && t.name.len() <= 249
                    && t.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "invalid topic name {:?}",
                t.name
            );
            ensure!(
                crate::fsutil::base64url_decode_uuid(&t.topic_id).is_some(),
                "topic {}: topic id {:?} is not a base64url uuid",
                t.name,
                t.topic_id
            );
            ensure!(!t.replicas.is_empty(), "topic {} has no partitions", t.name);
            if let Some(m) = t.min_insync_replicas {
                ensure!(m >= 1, "topic {}: min.insync.replicas must be >= 1", t.name);
            }
            for (p, replicas) in t.replicas.iter().enumerate() {
                ensure!(
                    !replicas.is_empty(),
                    "partition {}-{p} has no replicas",
                    t.name
                );
                let mut seen = BTreeSet::new();
                for r in replicas {
                    ensure!(
                        ids.contains(r),
                        "partition {}-{p} names unknown broker {r}",
                        t.name
                    );
                    ensure!(
                        seen.insert(r),
                        "partition {}-{p} lists broker {r} twice",
                        t.name
                    );
                }
            }
        }
        Ok(())
    }

    pub fn broker(&self, node_id: i32) -> Result<&BrokerDef> {
        match self.brokers.iter().find(|b| b.node_id == node_id) {
            Some(b) => Ok(b),
            None => bail!(
                "node id {node_id} is not in the cluster definition (brokers: {:?})",
                self.node_ids()
            ),
        }
    }

    pub fn node_ids(&self) -> Vec<i32> {
        self.brokers.iter().map(|b| b.node_id).collect()
    }

    pub fn topic(&self, name: &str) -> Option<&TopicDef> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// The effective `min.insync.replicas` setting of a topic (before
    /// Kafka's `min(minISR, replica count)`).
    pub fn min_insync_replicas(&self, topic: &TopicDef) -> i32 {
        topic
            .min_insync_replicas
            .unwrap_or(self.broker_min_insync_replicas)
    }

    /// `(topic, partition)` of every partition with a replica on `node_id`.
    pub fn partitions_of(&self, node_id: i32) -> Vec<(&TopicDef, i32)> {
        let mut out = Vec::new();
        for t in &self.topics {
            for (p, replicas) in t.replicas.iter().enumerate() {
                if replicas.contains(&node_id) {
                    out.push((t, p as i32));
                }
            }
        }
        out
    }
}

/// Where everything lives in a state dir.
#[derive(Clone, Debug)]
pub struct StatePaths {
    pub root: PathBuf,
}

impl StatePaths {
    pub fn new(root: &Path) -> StatePaths {
        StatePaths {
            root: root.to_path_buf(),
        }
    }
    pub fn cluster(&self) -> PathBuf {
        self.root.join("cluster.toml")
    }
    pub fn scenario(&self) -> PathBuf {
        self.root.join("scenario.toml")
    }
    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    /// Leaders, leader epochs and ISRs as last computed by any broker.
    pub fn partition_state(&self) -> PathBuf {
        self.root.join("partitions.json")
    }
    pub fn partition_state_lock(&self) -> PathBuf {
        self.root.join("partitions.lock")
    }
    /// The last broker epoch handed out (KRaft: registration record offset).
    pub fn epoch_counter(&self) -> PathBuf {
        self.root.join("broker-epoch")
    }
    pub fn status(&self, node_id: i32) -> PathBuf {
        self.root
            .join("brokers")
            .join(format!("broker-{node_id}.status.json"))
    }
    /// Written by the broker once it listens, removed at a clean exit.
    pub fn pid_file(&self, node_id: i32) -> PathBuf {
        self.root.join("run").join(format!("broker-{node_id}.pid"))
    }
    /// The process that created the cluster (a test): brokers exit when it
    /// is gone, so a killed test run leaves no broker behind.
    pub fn owner(&self) -> PathBuf {
        self.root.join("owner.json")
    }
    pub fn log_file(&self, node_id: i32) -> PathBuf {
        self.root.join("logs").join(format!("broker-{node_id}.log"))
    }
    pub fn start_script(&self, node_id: i32) -> PathBuf {
        self.root
            .join("bin")
            .join(format!("start-broker-{node_id}.sh"))
    }
    pub fn stop_script(&self, node_id: i32) -> PathBuf {
        self.root
            .join("bin")
            .join(format!("stop-broker-{node_id}.sh"))
    }
    /// Creates the sub-directories.
    pub fn create_dirs(&self) -> Result<()> {
        for d in ["brokers", "run", "logs", "bin"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        Ok(())
    }
}
