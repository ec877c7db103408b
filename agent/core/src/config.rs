//! The agent's TOML configuration. Unknown keys are errors, defaults live
//! here and only here, and [`AgentConfig::validate`] names the file and key
//! of every problem.

use crate::crypt::{Identities, ObjectKey, Recipients};
use crate::kafka::gate::LowReplicationPolicy;
use crate::kafka::KafkaSection;
use crate::settings::{bad, duration, problems_error, FreeSpace, KeyError};
use crate::storage::StorageSection;
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::manifest::CaptureMode;
pub use kafka_snapshot_model::protocol::NodeRole;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The shortest `restore.remove_moved_aside_after`.
pub const MIN_MOVED_ASIDE_KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub broker: BrokerSection,
    #[serde(default)]
    pub snapshot: SnapshotSection,
    pub storage: StorageSection,
    /// How to reach the cluster; needed by `check` and the daemon.
    pub kafka: Option<KafkaSection>,
    #[serde(default)]
    pub gate: GateSection,
    /// How to reach the coordinator; needed by `run` only, so that the
    /// break-glass commands work without one.
    pub coordinator: Option<CoordinatorSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub hooks: HooksSection,
    /// Encryption at rest: recipients to encrypt new snapshots to, the
    /// identity to read encrypted ones with.
    #[serde(default)]
    pub encryption: EncryptionSection,
    #[serde(default)]
    pub restore: RestoreSection,
}

/// `[restore]`: what happens to the data a restore moved aside
/// (`<dir>.pre-restore-<time>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSection {
    /// Remove moved-aside data this long after the restore (`7d`), once
    /// the node runs and is back in every ISR (a quorum voter caught up,
    /// for a controller). Unset: kept until an operator removes it; the
    /// agent reports it and `status` lists it either way.
    #[serde(deserialize_with = "crate::settings::opt_duration")]
    pub remove_moved_aside_after: Option<Duration>,
}

/// `[hooks]`: commands around a snapshot's stop of the node, for
/// application-consistent snapshots (pause a MirrorMaker 2 connector, flush
/// an application). Run with `sh -c` as the agent's user, with
/// `KAFKA_SNAPSHOT_NODE_ID`, `KAFKA_SNAPSHOT_ROLE` and `KAFKA_SNAPSHOT_HOOK`
/// set (and `KAFKA_SNAPSHOT_OUTCOME` for `post_start`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// After the gate passed, before the node is stopped. A failure (exit
    /// status other than 0, or `timeout`) stops nothing: the attempt fails,
    /// naming the hook and its stderr.
    pub pre_stop: Option<String>,
    /// After the node runs again and is back in every ISR (or, when the
    /// attempt failed, once the node was started again): after every
    /// attempt `pre_stop` was run for, even a failed one, so it can undo
    /// what `pre_stop` did. `KAFKA_SNAPSHOT_OUTCOME` is `ok`, `failed` or
    /// `not_stopped`. A failure is reported loudly; the snapshot, if one
    /// was taken, stays (it is complete).
    pub post_start: Option<String>,
    /// How long each hook may run before it is killed and counts as failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            pre_stop: None,
            post_start: None,
            timeout: Duration::from_secs(300),
        }
    }
}

/// `[encryption]`: with recipients, new snapshots are encrypted (age,
/// X25519) to every one of them; without, they are not. The identity is
/// needed only to read an encrypted snapshot's contents (restore, extract,
/// a verify of the contents); a host that only takes snapshots leaves it
/// out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// `age1...` public keys.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of `age1...` lines (`#` comments), added to `recipients`.
    pub recipients_file: Option<PathBuf>,
    /// An age identity file (`AGE-SECRET-KEY-1...`), mode 0600.
    pub identity_file: Option<PathBuf>,
    /// The cluster's object key (64 hex digits), the same file on every
    /// agent of the cluster: names the content objects of encrypted
    /// incremental snapshots ([`ObjectKey`]). Needed with recipients and
    /// `snapshot.mode = "incremental"`.
    pub object_key_file: Option<PathBuf>,
    /// `recipients` and `recipients_file` read and parsed.
    #[serde(skip)]
    resolved: Option<Arc<Recipients>>,
    /// `object_key_file` read.
    #[serde(skip)]
    object_key: Option<ObjectKey>,
}

impl EncryptionSection {
    /// The inline recipients, checked; a problem is (key, message).
    fn inline(&self) -> std::result::Result<Recipients, KeyError> {
        let items = self
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("encryption.recipients[{i}]"), r.as_str()));
        Recipients::parse(items).map_err(|m| match m.split_once(": ") {
            Some((key, rest)) => bad(key, rest.to_string()),
            None => bad("encryption.recipients", m),
        })
    }

    /// Reads `recipients_file` and joins it to the inline recipients.
    fn resolve(&mut self) -> std::result::Result<(), KeyError> {
        if self.inline().is_err() {
            // Reported by `problems`.
            return Ok(());
        }
        let mut items: Vec<(String, String)> = self
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("encryption.recipients[{i}]"), r.clone()))
            .collect();
        if let Some(f) = &self.recipients_file {
            items.extend(
                Recipients::read_file(f).map_err(|m| bad("encryption.recipients_file", m))?,
            );
        }
        let all = Recipients::parse(items.iter().map(|(s, r)| (s.clone(), r.as_str())))
            .map_err(|m| bad("encryption.recipients_file", m))?;
        self.resolved = (!all.is_empty()).then(|| Arc::new(all));
        Ok(())
    }

    /// Reads `object_key_file`: only where it is used (encrypted
    /// incremental snapshots), so that a config rendered for another root
    /// still validates where the key is not needed.
    fn resolve_object_key(&mut self) -> std::result::Result<(), KeyError> {
        if let Some(f) = self.object_key_file.as_ref().filter(|f| f.is_absolute()) {
            self.object_key =
                Some(ObjectKey::load(f).map_err(|m| bad("encryption.object_key_file", m))?);
        }
        Ok(())
    }

    /// The cluster's object key, read with the config.
    pub fn object_key(&self) -> Option<&ObjectKey> {
        self.object_key.as_ref()
    }

    /// The recipients new snapshots are encrypted to; `None`: unencrypted.
    pub fn recipients(&self) -> Option<Arc<Recipients>> {
        self.resolved.clone()
    }

    /// Reads `identity_file`, if set. Done when a snapshot is read, not
    /// when the config is parsed: the key stays on disk until needed, and
    /// a replaced file is read anew.
    pub fn identity(&self, config_path: &Path) -> Result<Option<Arc<Identities>>> {
        let Some(f) = &self.identity_file else {
            return Ok(None);
        };
        Identities::load(f)
            .map(|i| Some(Arc::new(i)))
            .map_err(|m| Error::Config {
                file: config_path.to_path_buf(),
                message: format!("encryption.identity_file: {m}"),
            })
    }
}

/// `[coordinator]`: the daemon (`run`) polls it for leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// `https://coordinator.example.internal:8443` (or `http://`).
    pub url: String,
    /// The bearer token of this broker's agent; the file must not be
    /// readable by group or others.
    pub token_file: PathBuf,
    /// PEM CA certificate(s) to trust for an `https://` URL instead of the
    /// system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Where the daemon records what it is doing, so that a restarted agent
    /// can finish what a killed one left (start a broker it had stopped).
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// How often to poll when the coordinator does not say.
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Limit on every request to the coordinator, connecting included.
    #[serde(default = "default_coordinator_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
}

fn default_state_file() -> PathBuf {
    PathBuf::from("/var/lib/kafka-snapshot-agent/state.json")
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_coordinator_timeout() -> Duration {
    Duration::from_secs(10)
}

impl CoordinatorSection {
    /// Reads the bearer token from `token_file`. Done when the daemon
    /// starts, not when the config is parsed, so that `validate` can check a
    /// config rendered for another root (Ansible validates before it
    /// installs anything).
    pub fn read_token(&self, config_path: &Path) -> Result<String> {
        read_token(&self.token_file).map_err(|m| Error::Config {
            file: config_path.to_path_buf(),
            message: format!("coordinator.token_file: {m}"),
        })
    }
}

/// `[metrics]`: the Prometheus endpoint of the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// A loopback address and port (`127.0.0.1:9641`, `[::1]:9641`): the
    /// endpoint has no authentication.
    pub listen: std::net::SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9641)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// The broker's server.properties: log dirs are read from `log.dirs`
    /// and `metadata.log.dir`.
    pub server_properties: Option<PathBuf>,
    /// Or the log dirs, listed explicitly.
    pub log_dirs: Option<Vec<PathBuf>>,
    /// What this node is: `broker`, `controller` (a dedicated KRaft
    /// controller) or `combined`. Read from `process.roles` in
    /// `server_properties` when that is set (this key must then agree);
    /// `broker` when neither says.
    pub role: Option<NodeRole>,
    /// Stops the broker; returns once the stop is requested.
    #[serde(default = "default_stop_command")]
    pub stop_command: String,
    /// Starts the broker.
    #[serde(default = "default_start_command")]
    pub start_command: String,
    /// How long the broker may take to exit after the stop command
    /// (controlled shutdown can take minutes on a large broker).
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    pub stop_timeout: Duration,
    /// How long the start command itself may run.
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// How long a restarted broker may take to be back in every ISR before
    /// the agent reports a failed recovery (still catching up until then).
    #[serde(default = "default_recovery_timeout", deserialize_with = "duration")]
    pub recovery_timeout: Duration,
}

fn default_stop_command() -> String {
    "systemctl stop kafka".into()
}
fn default_start_command() -> String {
    "systemctl start kafka".into()
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_recovery_timeout() -> Duration {
    Duration::from_secs(2 * 3600)
}

/// The pre-stop gate's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSection {
    /// Consecutive passing checks required before the broker is stopped.
    pub stable_checks: u32,
    #[serde(deserialize_with = "duration")]
    pub check_interval: Duration,
    /// Topics with replication factor <= min.insync.replicas.
    pub low_replication_policy: LowReplicationPolicy,
}

impl Default for GateSection {
    fn default() -> Self {
        GateSection {
            stable_checks: 3,
            check_interval: Duration::from_secs(10),
            low_replication_policy: LowReplicationPolicy::Refuse,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    pub capture: CaptureMode,
    pub zstd_level: i32,
    /// zstd worker threads; 0 means one per CPU, at most 4.
    pub zstd_threads: u32,
    /// Archive log dirs without `.kafka_cleanshutdown` (crash-consistent).
    pub allow_unclean: bool,
    /// Free space reflink staging leaves on a log dir's filesystem (`5%`,
    /// `50GiB`): staging pins every segment the broker deletes while the
    /// archive is written. Below it, `auto` copies and `reflink` refuses.
    #[serde(deserialize_with = "crate::settings::free_space")]
    pub staging_min_free: FreeSpace,
    /// The longest a copy capture may keep the node down (`20m`): with
    /// copy capture the node stays stopped while its whole archive is
    /// written. A copy that the last copy capture of this node says would
    /// take longer is refused before the stop; one that runs past it is
    /// given up and the node started again. Unset: no limit.
    #[serde(deserialize_with = "crate::settings::opt_duration")]
    pub max_copy_downtime: Option<Duration>,
    /// `incremental` (the default): files of at least `object_min_size`
    /// are content objects shared by the cluster's snapshots and uploaded
    /// once ([`crate::objects`]). `full`: every snapshot's archive holds
    /// every file.
    pub mode: SnapshotMode,
    /// The smallest file an incremental snapshot keeps as content objects.
    #[serde(deserialize_with = "crate::settings::byte_size")]
    pub object_min_size: u64,
    /// The size of the chunks those files are cut into, each one object
    /// (a power of two from 64 KiB to 1 GiB). Smaller: less is uploaded
    /// again of what Kafka appends to its segments; larger: fewer objects
    /// and a smaller manifest (about 75 bytes per chunk).
    #[serde(deserialize_with = "crate::settings::byte_size")]
    pub object_chunk_size: u64,
    /// Where an incremental snapshot keeps the hashes of rolled segment
    /// files for the next one ([`crate::hashcache`]). Unset: beside the
    /// daemon's state file, `hash-cache.json` (no record without one).
    pub hash_cache: Option<PathBuf>,
}

/// `snapshot.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    Full,
    Incremental,
}

impl SnapshotSection {
    /// How snapshots store their files by this section alone (no hash
    /// record beside a state file, no object key): `None` for full ones.
    pub fn object_options(&self) -> Option<crate::objects::ObjectOptions> {
        (self.mode == SnapshotMode::Incremental).then(|| crate::objects::ObjectOptions {
            min_size: self.object_min_size,
            chunk_size: self.object_chunk_size,
            hash_cache: self.hash_cache.clone(),
            object_key: None,
        })
    }
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection {
            capture: CaptureMode::Auto,
            zstd_level: 3,
            zstd_threads: 0,
            allow_unclean: false,
            staging_min_free: FreeSpace::Percent(5.0),
            max_copy_downtime: None,
            mode: SnapshotMode::Incremental,
            object_min_size: crate::objects::DEFAULT_MIN_SIZE,
            object_chunk_size: crate::objects::DEFAULT_CHUNK_SIZE,
            hash_cache: None,
        }
    }
}

impl AgentConfig {
    /// How snapshots store their files: `None` for full snapshots.
    pub fn object_options(&self) -> Option<crate::objects::ObjectOptions> {
        self.snapshot
            .object_options()
            .map(|o| crate::objects::ObjectOptions {
                hash_cache: o.hash_cache.or_else(|| {
                    self.coordinator
                        .as_ref()
                        .and_then(|c| c.state_file.parent())
                        .map(|d| d.join("hash-cache.json"))
                }),
                object_key: self.encryption.object_key().cloned(),
                ..o
            })
    }

    pub fn load(path: &Path) -> Result<AgentConfig> {
        Self::load_under(path, None)
    }

    /// [`Self::load`], reading the files the config names under `root`
    /// ([`Self::parse_under`]).
    pub fn load_under(path: &Path, root: Option<&Path>) -> Result<AgentConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_under(&text, path, root)
    }

    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig> {
        Self::parse_under(text, path, None)
    }

    /// [`Self::parse`], reading the files the config names
    /// (`kafka.sasl_password_file`, `encryption.recipients_file`,
    /// `encryption.object_key_file`) under `root` when given, as the host
    /// whose filesystem is installed there will: for a config installed
    /// into an image or a staging root (`validate --root`). The config
    /// keeps the paths it names.
    pub fn parse_under(text: &str, path: &Path, root: Option<&Path>) -> Result<AgentConfig> {
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = cfg.problems();
        let named: Vec<PathBuf> = cfg.files_read().iter().map(|p| p.to_path_buf()).collect();
        if let Some(root) = root {
            for p in cfg.files_read() {
                if let Ok(rel) = p.strip_prefix("/") {
                    *p = root.join(rel);
                }
            }
        }
        problems.extend(cfg.resolve_secrets());
        for (p, named) in cfg.files_read().into_iter().zip(named) {
            *p = named;
        }
        problems_error(path, problems)?;
        Ok(cfg)
    }

    /// The paths of the files [`Self::resolve_secrets`] reads.
    fn files_read(&mut self) -> Vec<&mut PathBuf> {
        let mut files = Vec::new();
        if let Some(k) = self.kafka.as_mut() {
            files.extend(k.sasl_password_file.as_mut());
        }
        files.extend(self.encryption.recipients_file.as_mut());
        files.extend(self.encryption.object_key_file.as_mut());
        files
    }

    /// Cross-field checks serde cannot express: one error that names every
    /// problem found.
    pub fn validate(&self, path: &Path) -> Result<()> {
        problems_error(path, self.problems())
    }

    /// Every problem [`Self::validate`] reports, as (key, message).
    fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        let mut err = |key: &str, message: String| problems.push(bad(key, message));
        match (&self.broker.server_properties, &self.broker.log_dirs) {
            (Some(_), Some(_)) => err(
                "broker.log_dirs",
                "set either broker.server_properties or broker.log_dirs, not both".into(),
            ),
            (None, None) => err(
                "broker.server_properties",
                "missing: set broker.server_properties (or broker.log_dirs)".into(),
            ),
            (None, Some(dirs)) => {
                if dirs.is_empty() {
                    err("broker.log_dirs", "is empty".into());
                } else if let Some(d) = dirs.iter().find(|d| !d.is_absolute()) {
                    err(
                        "broker.log_dirs",
                        format!("{} is not an absolute path", d.display()),
                    );
                }
            }
            (Some(p), None) => {
                if !p.is_absolute() {
                    err(
                        "broker.server_properties",
                        format!("{} is not an absolute path", p.display()),
                    );
                }
            }
        }
        if !(1..=19).contains(&self.snapshot.zstd_level) {
            err(
                "snapshot.zstd_level",
                format!("{} is outside 1..=19", self.snapshot.zstd_level),
            );
        }
        if self.snapshot.max_copy_downtime.is_some_and(|d| d.is_zero()) {
            err(
                "snapshot.max_copy_downtime",
                "must be more than 0 (leave it out for no limit)".into(),
            );
        }
        if self
            .restore
            .remove_moved_aside_after
            .is_some_and(|d| d < MIN_MOVED_ASIDE_KEEP)
        {
            err(
                "restore.remove_moved_aside_after",
                format!(
                    "must be at least {}h: the data a restore replaced is the way back from \
                     a wrong restore (leave it out to keep it until removed by hand)",
                    MIN_MOVED_ASIDE_KEEP.as_secs() / 3600
                ),
            );
        }
        if self.snapshot.object_min_size == 0 {
            err(
                "snapshot.object_min_size",
                "must be more than 0 bytes".into(),
            );
        }
        if let Err(why) = crate::objects::check_chunk_size(self.snapshot.object_chunk_size) {
            err("snapshot.object_chunk_size", why);
        }
        if self.snapshot.mode == SnapshotMode::Incremental
            && (!self.encryption.recipients.is_empty() || self.encryption.recipients_file.is_some())
            && self.encryption.object_key_file.is_none()
        {
            err(
                "encryption.object_key_file",
                "missing: encrypted incremental snapshots (snapshot.mode = \"incremental\", \
                 the default) name their content objects with the cluster's object key, the \
                 same file on every agent of the cluster (make one with \
                 `kafka-snapshot-agent key generate-object-key --output FILE`), or set \
                 snapshot.mode = \"full\""
                    .into(),
            );
        }
        if self.snapshot.zstd_threads > 256 {
            err("snapshot.zstd_threads", "must be at most 256".into());
        }
        if let Err(found) = self.storage.validate() {
            found.into_iter().for_each(|(k, m)| err(&k, m));
        }
        if self.broker.stop_command.trim().is_empty() {
            err("broker.stop_command", "is empty".into());
        }
        if self.broker.start_command.trim().is_empty() {
            err("broker.start_command", "is empty".into());
        }
        if self.broker.stop_timeout.is_zero() {
            err("broker.stop_timeout", "must be more than 0".into());
        }
        if self.gate.stable_checks == 0 {
            err("gate.stable_checks", "must be at least 1".into());
        }
        if self.broker.recovery_timeout <= self.gate.check_interval {
            err(
                "broker.recovery_timeout",
                format!(
                    "{:?} must exceed gate.check_interval ({:?}): the recovery check could not run twice",
                    self.broker.recovery_timeout, self.gate.check_interval
                ),
            );
        }
        if let Some(c) = &self.coordinator {
            let rest = c
                .url
                .strip_prefix("https://")
                .or_else(|| c.url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                err(
                    "coordinator.url",
                    format!("{:?} is not an http:// or https:// URL", c.url),
                );
            }
            if c.ca_file.is_some() && !c.url.starts_with("https://") {
                err(
                    "coordinator.ca_file",
                    format!("is set, but coordinator.url {:?} is not https://", c.url),
                );
            }
            if !c.state_file.is_absolute() {
                err(
                    "coordinator.state_file",
                    format!("{} is not an absolute path", c.state_file.display()),
                );
            }
            if c.poll_interval.is_zero() {
                err("coordinator.poll_interval", "must be more than 0".into());
            }
            if c.request_timeout.is_zero() {
                err("coordinator.request_timeout", "must be more than 0".into());
            }
        }
        if !self.metrics.listen.ip().is_loopback() {
            err(
                "metrics.listen",
                format!(
                    "{} is not a loopback address: the metrics endpoint has no authentication; \
                     use 127.0.0.1 or [::1] (and a scraper on the host, or a proxy)",
                    self.metrics.listen
                ),
            );
        }
        if let Some(k) = &self.kafka {
            if let Err(found) = k.validate() {
                found.into_iter().for_each(|(key, m)| err(&key, m));
            }
        }
        if let Err((key, m)) = self.encryption.inline() {
            err(&key, m);
        }
        for (key, p) in [
            (
                "encryption.recipients_file",
                &self.encryption.recipients_file,
            ),
            ("encryption.identity_file", &self.encryption.identity_file),
            (
                "encryption.object_key_file",
                &self.encryption.object_key_file,
            ),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                err(key, format!("{} is not an absolute path", p.display()));
            }
        }
        problems
    }

    /// Reads what is referenced by path (`kafka.sasl_password_file`,
    /// `encryption.recipients_file`); the problems are (key, message).
    fn resolve_secrets(&mut self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        if let Some(k) = self.kafka.as_mut() {
            problems.extend(k.resolve_secrets().err());
        }
        problems.extend(self.encryption.resolve().err());
        if self.snapshot.mode == SnapshotMode::Incremental && self.encryption.resolved.is_some() {
            problems.extend(self.encryption.resolve_object_key().err());
        }
        problems
    }

    /// The Kafka section, or a config error saying it is needed.
    pub fn kafka(&self, path: &Path, what: &str) -> Result<&KafkaSection> {
        self.kafka.as_ref().ok_or_else(|| Error::Config {
            file: path.to_path_buf(),
            message: format!("kafka.bootstrap_servers: missing; {what} needs the [kafka] section"),
        })
    }

    /// The coordinator section, or a config error saying `run` needs it.
    pub fn coordinator(&self, path: &Path) -> Result<&CoordinatorSection> {
        self.coordinator.as_ref().ok_or_else(|| Error::Config {
            file: path.to_path_buf(),
            message: "coordinator.url: missing; `run` needs the [coordinator] section \
                      (url, token_file)"
                .into(),
        })
    }

    /// The log dirs to snapshot, from the config or server.properties.
    /// What this node is ([`BrokerSection::role`]): `process.roles` from
    /// server.properties (absent there: a ZooKeeper-mode broker), else the
    /// `broker.role` key, else a broker.
    pub fn role(&self, config_path: &Path) -> Result<NodeRole> {
        let Some(path) = &self.broker.server_properties else {
            return Ok(self.broker.role.unwrap_or_default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let from_props = match crate::props::parse(&text).get("process.roles") {
            Some(roles) => NodeRole::from_process_roles(roles).map_err(|m| Error::Config {
                file: path.clone(),
                message: m,
            })?,
            None => NodeRole::Broker,
        };
        match self.broker.role {
            Some(r) if r != from_props => Err(Error::Config {
                file: config_path.to_path_buf(),
                message: format!(
                    "broker.role is {r}, but process.roles in {} makes this node a {from_props}: \
                     remove broker.role (server.properties says what the node is)",
                    path.display()
                ),
            }),
            _ => Ok(from_props),
        }
    }

    pub fn log_dirs(&self) -> Result<Vec<PathBuf>> {
        match (&self.broker.log_dirs, &self.broker.server_properties) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(p)) => crate::logdir::log_dirs_from_server_properties(p),
            (None, None) => Err(Error::Usage("no log dirs configured".into())),
        }
    }
}

/// Reads a bearer token file: private to its owner, one non-empty line.
fn read_token(file: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: a token must not be readable by group or others; \
             run `chmod 600 {}`",
            file.display(),
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    if token.contains(char::is_whitespace) || !token.is_ascii() {
        return Err(format!(
            "{} must hold the token alone on one line (printable ASCII, no spaces)",
            file.display()
        ));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{parse_byte_size, parse_duration};
    use crate::storage::VerifyUpload;

    fn parse(text: &str) -> Result<AgentConfig> {
        AgentConfig::parse(text, Path::new("/etc/agent.toml"))
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../agent.example.toml");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.snapshot.zstd_level, 3);
    }

    #[test]
    fn snapshot_mode() {
        let base = "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n";
        let cfg = parse(base).unwrap();
        assert_eq!(
            cfg.object_options(),
            Some(crate::objects::ObjectOptions {
                min_size: crate::objects::DEFAULT_MIN_SIZE,
                chunk_size: crate::objects::DEFAULT_CHUNK_SIZE,
                hash_cache: None,
                object_key: None,
            }),
            "incremental is the default"
        );
        let cfg = parse(&format!("{base}[snapshot]\nmode='full'\n")).unwrap();
        assert_eq!(cfg.object_options(), None);
        let cfg = parse(&format!(
            "{base}[snapshot]\nmode='incremental'\nobject_min_size='256KiB'\n\
             object_chunk_size='1MiB'\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.object_options(),
            Some(crate::objects::ObjectOptions {
                min_size: 256 << 10,
                chunk_size: 1 << 20,
                hash_cache: None,
                object_key: None,
            })
        );
        for bad in ["0", "'3MiB'", "'32KiB'", "'2GiB'"] {
            let e = parse(&format!(
                "{base}[snapshot]\nmode='incremental'\nobject_chunk_size={bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("snapshot.object_chunk_size") && e.contains("power of two"),
                "{bad}: {e}"
            );
        }
        // A daemon keeps its hash record beside its state file.
        let cfg = parse(&format!(
            "{base}[snapshot]\nmode='incremental'\n[coordinator]\nurl='http://c:1'\n\
             token_file='/t'\nstate_file='/var/lib/a/state.json'\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.object_options().and_then(|o| o.hash_cache),
            Some(PathBuf::from("/var/lib/a/hash-cache.json"))
        );
        let e = parse(&format!("{base}[snapshot]\nmode='differential'\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("differential") && e.contains("incremental"),
            "{e}"
        );
        let e = parse(&format!(
            "{base}[snapshot]\nmode='incremental'\nobject_min_size=0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("snapshot.object_min_size"), "{e}");
        // Encrypted and incremental: the object key is needed, read with
        // the config, and must be kept from others.
        let (r, _) = crate::crypt::tests::keypair();
        for mode in ["mode='incremental'\n", ""] {
            let e = parse(&format!(
                "{base}[snapshot]\n{mode}[encryption]\nrecipients=[{r:?}]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("encryption.object_key_file: missing: ")
                    && e.contains("generate-object-key --output FILE")
                    && e.contains("snapshot.mode = \"full\""),
                "{mode}: {e}"
            );
        }
        let full = format!("{base}[snapshot]\nmode='full'\n[encryption]\nrecipients=[{r:?}]\n");
        assert_eq!(parse(&full).unwrap().object_options(), None);
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("object.key");
        let fp = ObjectKey::generate_file(&key).unwrap();
        let with_key = format!(
            "{base}[snapshot]\nmode='incremental'\n[encryption]\nrecipients=[{r:?}]\n\
             object_key_file={key:?}\n"
        );
        let cfg = parse(&with_key).unwrap();
        let o = cfg.object_options().unwrap();
        assert_eq!(
            o.object_key.map(|k| k.fingerprint().to_string()),
            Some(fp.clone())
        );
        // Installed under a root: read from there, the config's path kept.
        let installed = format!(
            "{base}[encryption]\nrecipients=[{r:?}]\nobject_key_file='/etc/ks/object.key'\n"
        );
        let e = parse(&installed).unwrap_err().to_string();
        assert!(e.contains("cannot read /etc/ks/object.key"), "{e}");
        std::fs::create_dir_all(tmp.path().join("etc/ks")).unwrap();
        std::fs::copy(&key, tmp.path().join("etc/ks/object.key")).unwrap();
        let cfg =
            AgentConfig::parse_under(&installed, Path::new("/etc/agent.toml"), Some(tmp.path()))
                .unwrap();
        assert_eq!(
            cfg.object_options()
                .unwrap()
                .object_key
                .map(|k| k.fingerprint().to_string()),
            Some(fp)
        );
        assert_eq!(
            cfg.encryption.object_key_file,
            Some(PathBuf::from("/etc/ks/object.key"))
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&with_key).unwrap_err().to_string();
        assert!(
            e.contains("encryption.object_key_file: ") && e.contains("chmod o-rwx"),
            "{e}"
        );
        let e = parse(&format!(
            "{base}[encryption]\nrecipients=[{r:?}]\nobject_key_file='key'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("encryption.object_key_file: key is not an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[broker]\nlog_dirs=['/a']\nlog_dir='/b'\n[storage]\nurl='file:///x'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/agent.toml") && e.contains("log_dir"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_missing_and_contradictions() {
        let e = parse("[broker]\nlog_dirs='/a'\n[storage]\nurl='file:///x'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_dirs"), "{e}");
        let e = parse("[broker]\nlog_dirs=['/a']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage"), "{e}");
        let e = parse(
            "[broker]\nlog_dirs=['/a']\nserver_properties='/s'\n[storage]\nurl='file:///x'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = parse(
            "[broker]\nlog_dirs=['/a']\n[snapshot]\nzstd_level=30\n[storage]\nurl='file:///x'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("snapshot.zstd_level"), "{e}");
        let e = parse("[broker]\nlog_dirs=['/a']\n[storage]\nurl='ftp://x'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.url"), "{e}");
    }

    #[test]
    fn copy_downtime_and_moved_aside_limits_are_checked() {
        let base = "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n";
        let cfg = parse(&format!(
            "{base}[snapshot]\nmax_copy_downtime='20m'\n[restore]\nremove_moved_aside_after='7d'\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.snapshot.max_copy_downtime,
            Some(Duration::from_secs(1200))
        );
        assert_eq!(
            cfg.restore.remove_moved_aside_after,
            Some(Duration::from_secs(7 * 86400))
        );
        let cfg = parse(base).unwrap();
        assert_eq!(cfg.snapshot.max_copy_downtime, None, "no limit by default");
        assert_eq!(
            cfg.restore.remove_moved_aside_after, None,
            "kept by default"
        );
        let e = parse(&format!(
            "{base}[snapshot]\nmax_copy_downtime='0s'\n[restore]\nremove_moved_aside_after='10m'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("snapshot.max_copy_downtime")
                && e.contains("restore.remove_moved_aside_after"),
            "{e}"
        );
        let e = parse(&format!("{base}[restore]\nkeep='1d'\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("keep"), "{e}");
    }

    #[test]
    fn the_role_comes_from_process_roles_or_the_key() {
        let t = tempfile::tempdir().unwrap();
        let props = t.path().join("server.properties");
        let cfg = |role: &str| {
            parse(&format!(
                "[broker]\nserver_properties={:?}\n{role}[storage]\nurl='file:///x'\n",
                props.display().to_string()
            ))
            .unwrap()
        };
        let at = Path::new("/etc/agent.toml");
        std::fs::write(&props, "process.roles=controller\nnode.id=100\n").unwrap();
        assert_eq!(cfg("").role(at).unwrap(), NodeRole::Controller);
        std::fs::write(&props, "process.roles = broker, controller\n").unwrap();
        assert_eq!(cfg("").role(at).unwrap(), NodeRole::Combined);
        // ZooKeeper mode: no process.roles.
        std::fs::write(&props, "broker.id=1\n").unwrap();
        assert_eq!(cfg("").role(at).unwrap(), NodeRole::Broker);
        // The key must agree with the file.
        let e = cfg("role='controller'\n").role(at).unwrap_err().to_string();
        assert!(
            e.contains("broker.role is controller, but process.roles in") && e.contains("broker"),
            "{e}"
        );
        std::fs::write(&props, "process.roles=brokre\n").unwrap();
        let e = cfg("").role(at).unwrap_err().to_string();
        assert!(e.contains("unknown role \"brokre\""), "{e}");
        assert!(e.contains("server.properties"), "{e}");
        // Without server.properties: the key, else a broker.
        let c = parse("[broker]\nlog_dirs=['/a']\nrole='controller'\n[storage]\nurl='file:///x'\n")
            .unwrap();
        assert_eq!(c.role(at).unwrap(), NodeRole::Controller);
        let c = parse("[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n").unwrap();
        assert_eq!(c.role(at).unwrap(), NodeRole::Broker);
        let e = parse("[broker]\nlog_dirs=['/a']\nrole='voter'\n[storage]\nurl='file:///x'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `voter`"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse(
            "[broker]\nlog_dirs=['/a']\n[snapshot]\nzstd_level=30\n[storage]\nurl='ftp://x'\n\
             [metrics]\nlisten = \"0.0.0.0:9641\"\n",
        )
        .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("config /etc/agent.toml: 3 problems:\n  - "),
            "{e}"
        );
        for key in ["snapshot.zstd_level", "storage.url", "metrics.listen"] {
            assert!(e.contains(&format!("\n  - {key}: ")), "{key}: {e}");
        }
        // One problem reads as it always has.
        let e = parse(
            "[broker]\nlog_dirs=['/a']\n[snapshot]\nzstd_level=30\n[storage]\nurl='file:///x'\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "config /etc/agent.toml: snapshot.zstd_level: 30 is outside 1..=19"
        );
    }

    #[test]
    fn a_missing_password_file_is_reported_with_the_other_problems() {
        let e = parse(
            "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\nbandwidth_limit = 0\n\
             [kafka]\nbootstrap_servers = ['k:9092']\nsecurity_protocol = 'SASL_SSL'\n\
             sasl_mechanism = 'PLAIN'\nsasl_username = 'u'\n\
             sasl_password_file = '/nonexistent/kafka-password'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2 problems:"), "{e}");
        assert!(
            e.contains("storage.bandwidth_limit") && e.contains("kafka.sasl_password_file"),
            "{e}"
        );
    }

    #[test]
    fn encryption_section_parses_and_names_every_bad_key() {
        let (r1, _) = crate::crypt::tests::keypair();
        let (r2, _) = crate::crypt::tests::keypair();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("recipients.txt");
        std::fs::write(&file, format!("# break-glass\n{r2}\n\n{r1}\n")).unwrap();
        // Full snapshots: the object key is checked in `snapshot_mode`.
        let base =
            "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n[snapshot]\nmode='full'\n";
        let cfg = parse(&format!(
            "{base}[encryption]\nrecipients = [{r1:?}]\nrecipients_file = {:?}\n\
             identity_file = '/etc/kafka-snapshot/identity.txt'\n",
            file.display().to_string()
        ))
        .unwrap();
        let r = cfg.encryption.recipients().expect("recipients");
        assert_eq!(
            r.to_strings(),
            vec![r1.clone(), r2.clone()],
            "duplicates dropped"
        );
        // No [encryption], or one without recipients: not encrypted.
        assert!(parse(base).unwrap().encryption.recipients().is_none());

        let e = parse(&format!(
            "{base}[encryption]\nrecipients = [{r1:?}, 'age1nope']\nidentity_file = 'rel/key'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("2 problems:"), "{e}");
        assert!(
            e.contains(
                "\n  - encryption.recipients[1]: \"age1nope\" is not an age X25519 recipient"
            ),
            "{e}"
        );
        assert!(
            e.contains("\n  - encryption.identity_file: rel/key is not an absolute path"),
            "{e}"
        );

        std::fs::write(&file, "AGE-SECRET-KEY-1NOTARECIPIENT\n").unwrap();
        let e = parse(&format!(
            "{base}[encryption]\nrecipients_file = {:?}\n",
            file.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("encryption.recipients_file: ") && e.contains(" line 1: "),
            "{e}"
        );
        let e = parse(&format!("{base}[encryption]\nrecipient = 'x'\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/agent.toml") && e.contains("recipient"),
            "{e}"
        );
    }

    #[test]
    fn an_identity_file_others_can_read_is_a_config_error_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("identity");
        crate::crypt::generate_identity_file(&key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = parse(&format!(
            "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n[encryption]\nidentity_file = {:?}\n",
            key.display().to_string()
        ))
        .unwrap();
        let e = cfg
            .encryption
            .identity(Path::new("/etc/agent.toml"))
            .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("config /etc/agent.toml: encryption.identity_file: ")
                && e.contains("0644"),
            "{e}"
        );
    }

    const S3_BASE: &str = "[broker]\nlog_dirs=['/a']\n[storage]\nurl='s3://kafka-snapshots/prod'\n";

    #[test]
    fn s3_section_parses_and_hides_its_secret() {
        let cfg = parse(&format!(
            "{S3_BASE}bandwidth_limit = \"100MiB\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:3900\"\n\
             region = \"garage\"\npath_style = true\naccess_key_id = \"GK1\"\n\
             secret_access_key = \"topsecret\"\nrequest_timeout = \"30s\"\ndeadline = \"6h\"\n\
             part_size = \"32MiB\"\nparts_in_flight = 4\nretries = 5\nverify_upload = \"read-back\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.storage.bandwidth_limit, Some(100 << 20));
        let s3 = cfg.storage.s3.as_ref().unwrap();
        assert_eq!(s3.part_size, 32 << 20);
        assert_eq!(s3.deadline, Duration::from_secs(6 * 3600));
        assert_eq!(s3.verify_upload, VerifyUpload::ReadBack);
        assert!(!format!("{cfg:?}").contains("topsecret"));
        // Defaults when the section is empty.
        let cfg = parse(&format!("{S3_BASE}[storage.s3]\n")).unwrap();
        assert_eq!(cfg.storage.s3.unwrap().part_size, 8 << 20);
    }

    #[test]
    fn s3_mistakes_are_named() {
        let cases = [
            (
                "[storage.s3]\npart_size = \"1MiB\"\n",
                "storage.s3.part_size",
            ),
            (
                "[storage.s3]\nparts_in_flight = 0\n",
                "storage.s3.parts_in_flight",
            ),
            (
                "[storage.s3]\nsecret_access_key = \"x\"\n",
                "storage.s3.access_key_id",
            ),
            (
                "[storage.s3]\nendpoint = \"127.0.0.1:9000\"\n",
                "storage.s3.endpoint",
            ),
            (
                "[storage.s3]\nrequest_timeout = \"2h\"\ndeadline = \"1h\"\n",
                "storage.s3.deadline",
            ),
            ("[storage.s3]\nverify_upload = \"never\"\n", "verify_upload"),
            ("[storage.s3]\nendpont = \"http://x\"\n", "endpont"),
        ];
        for (extra, key) in cases {
            let e = parse(&format!("{S3_BASE}{extra}")).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("/etc/agent.toml"),
                "{extra}: {e}"
            );
        }
        let e = parse("[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n[storage.s3]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.s3") && e.contains("not an s3://"),
            "{e}"
        );
        let e = parse("[broker]\nlog_dirs=['/a']\n[storage]\nurl='s3://Bad_Bucket'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.url"), "{e}");
        let e = parse(&format!("{S3_BASE}bandwidth_limit = \"fast\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bandwidth_limit"), "{e}");
    }

    /// A base config plus `[coordinator]` with a token file of `mode`.
    fn with_coordinator(dir: &Path, mode: u32, extra: &str) -> Result<AgentConfig> {
        use std::os::unix::fs::PermissionsExt;
        let token = dir.join("token");
        std::fs::write(&token, "s3cr3t-token\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        parse(&format!(
            "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n\
             [coordinator]\nurl = \"https://coord.example:8443\"\ntoken_file = {:?}\n{extra}",
            token.display().to_string()
        ))
    }

    #[test]
    fn coordinator_section_defaults_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = with_coordinator(dir.path(), 0o600, "").unwrap();
        let c = cfg.coordinator(Path::new("/etc/agent.toml")).unwrap();
        assert_eq!(
            c.read_token(Path::new("/etc/agent.toml")).unwrap(),
            "s3cr3t-token"
        );
        assert_eq!(
            c.state_file,
            PathBuf::from("/var/lib/kafka-snapshot-agent/state.json")
        );
        assert_eq!(c.poll_interval, Duration::from_secs(10));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(cfg.metrics.listen.to_string(), "127.0.0.1:9641");
        let cfg = with_coordinator(
            dir.path(),
            0o400,
            "poll_interval = \"2s\"\nrequest_timeout = \"500ms\"\nca_file = \"/etc/ca.pem\"\n\
             state_file = \"/run/agent.json\"\n[metrics]\nlisten = \"[::1]:9000\"\n",
        )
        .unwrap();
        let c = cfg.coordinator.as_ref().unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert_eq!(c.state_file, PathBuf::from("/run/agent.json"));
        assert_eq!(cfg.metrics.listen.port(), 9000);
    }

    #[test]
    fn coordinator_is_optional_but_run_names_it() {
        let cfg = parse("[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n").unwrap();
        let e = cfg
            .coordinator(Path::new("/etc/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/agent.toml") && e.contains("coordinator.url"),
            "{e}"
        );
    }

    #[test]
    fn coordinator_mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let token_err = |mode| {
            let cfg = with_coordinator(dir.path(), mode, "").unwrap();
            let c = cfg.coordinator.unwrap();
            c.read_token(Path::new("/etc/agent.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = token_err(0o644);
        assert!(
            e.contains("coordinator.token_file") && e.contains("0644") && e.contains("chmod 600"),
            "{e}"
        );
        let e = token_err(0o640);
        assert!(e.contains("coordinator.token_file"), "{e}");
        let cases = [
            ("poll_interval = \"0s\"\n", "coordinator.poll_interval"),
            ("request_timeout = \"soon\"\n", "request_timeout"),
            ("state_file = \"state.json\"\n", "coordinator.state_file"),
            ("tokenfile = \"/x\"\n", "tokenfile"),
            ("[metrics]\nlisten = \"0.0.0.0:9641\"\n", "metrics.listen"),
            ("[metrics]\nlisten = \"10.1.2.3:9641\"\n", "metrics.listen"),
            ("[metrics]\nlisten = \"localhost\"\n", "listen"),
            ("[metrics]\nport = 1\n", "port"),
        ];
        for (extra, key) in cases {
            let e = with_coordinator(dir.path(), 0o600, extra)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) && e.contains("/etc/agent.toml"),
                "{extra}: {e}"
            );
        }
        for (url, key) in [
            ("ftp://coord", "coordinator.url"),
            ("https://", "coordinator.url"),
            ("coord:8443", "coordinator.url"),
        ] {
            let token = dir.path().join("token");
            let e = parse(&format!(
                "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n\
                 [coordinator]\nurl = {url:?}\ntoken_file = {:?}\n",
                token.display().to_string()
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{url}: {e}");
        }
        let token = dir.path().join("token");
        let e = parse(&format!(
            "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n\
             [coordinator]\nurl = \"http://c:80\"\ntoken_file = {:?}\nca_file = \"/ca.pem\"\n",
            token.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("coordinator.ca_file"), "{e}");
        std::fs::write(&token, "\n").unwrap();
        let cfg = parse(&format!(
            "[broker]\nlog_dirs=['/a']\n[storage]\nurl='file:///x'\n\
             [coordinator]\nurl = \"http://c:80\"\ntoken_file = {:?}\n",
            token.display().to_string()
        ))
        .unwrap();
        let e = cfg
            .coordinator
            .unwrap()
            .read_token(Path::new("/etc/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coordinator.token_file") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("100 MB/s"), Ok(100_000_000));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert!(parse_byte_size("16 megs").is_err());
        assert!(parse_byte_size("MiB").is_err());
    }
}
