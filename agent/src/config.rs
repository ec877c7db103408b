//! The agent's TOML configuration. Unknown keys are errors, defaults live
//! here and only here, and [`AgentConfig::validate`] names the file and key
//! of every problem.

use crate::capture::CaptureMode;
use crate::error::{Error, Result};
use crate::kafka::gate::LowReplicationPolicy;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// The broker's server.properties: log dirs are read from `log.dirs`
    /// and `metadata.log.dir`.
    pub server_properties: Option<PathBuf>,
    /// Or the log dirs, listed explicitly.
    pub log_dirs: Option<Vec<PathBuf>>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SecurityProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// One section for both Kafka clients (rdkafka and the raw client).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub bootstrap_servers: Vec<String>,
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    /// Prefer `sasl_password_file` (mode 0600) to a password in the config.
    pub sasl_password: Option<String>,
    pub sasl_password_file: Option<PathBuf>,
    pub ssl_ca_location: Option<PathBuf>,
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Read from `sasl_password_file` when the config is loaded.
    #[serde(skip)]
    resolved_password: Option<String>,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl KafkaSection {
    pub fn sasl_password(&self) -> Option<&str> {
        self.resolved_password
            .as_deref()
            .or(self.sasl_password.as_deref())
    }
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

/// Parses `500ms`, `30s`, `10m`, `2h`, `1h30m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(format!("{text:?} is not a duration like 30s, 10m or 1h30m"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        let unit = &rest[digits..digits + unit_len];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ))
            }
        };
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    pub capture: CaptureMode,
    pub zstd_level: i32,
    /// zstd worker threads; 0 means one per CPU.
    pub zstd_threads: u32,
    /// Archive log dirs without `.kafka_cleanshutdown` (crash-consistent).
    pub allow_unclean: bool,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection {
            capture: CaptureMode::Auto,
            zstd_level: 3,
            zstd_threads: 0,
            allow_unclean: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `file:///mnt/kafka-snapshots` (a local path or an NFS mount) or
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Bytes per second for everything sent to or read from the store, by
    /// either backend (`"100MiB"` or an integer). Unlimited when unset.
    #[serde(default, deserialize_with = "opt_byte_size")]
    pub bandwidth_limit: Option<u64>,
    /// Settings of the `s3://` backend; without this section they come from
    /// the standard AWS environment variables and credentials file.
    pub s3: Option<S3Section>,
}

/// `[storage.s3]`. Credentials come from here when set, otherwise from
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, otherwise from the shared
/// credentials file (`~/.aws/credentials`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    /// `http(s)://host:port` of an S3-compatible server (MinIO, Ceph RGW,
    /// Garage); unset means AWS S3 in `region`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`;
    /// defaults to true when `endpoint` is set, false for AWS.
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    /// Prefer `credentials_file` (mode 0600) to a secret in this file.
    pub secret_access_key: Option<String>,
    /// An AWS shared credentials file, read for `profile`.
    pub credentials_file: Option<PathBuf>,
    pub profile: Option<String>,
    /// Limit on every single request, connection included.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Limit on one whole object transfer, retries included.
    #[serde(deserialize_with = "duration")]
    pub deadline: Duration,
    /// Multipart part size (also the ranged-read size); with
    /// `parts_in_flight` it bounds the memory a transfer uses.
    #[serde(deserialize_with = "byte_size")]
    pub part_size: u64,
    pub parts_in_flight: usize,
    /// Attempts after the first for a failed request (with backoff).
    pub retries: usize,
    /// How an upload is confirmed before the manifest is written.
    pub verify_upload: VerifyUpload,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            credentials_file: None,
            profile: None,
            request_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(24 * 3600),
            part_size: 8 << 20,
            parts_in_flight: 2,
            retries: 10,
            verify_upload: VerifyUpload::Checksum,
        }
    }
}

// By hand, so that the secret never reaches a log line.
impl std::fmt::Debug for S3Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Section")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("credentials_file", &self.credentials_file)
            .field("profile", &self.profile)
            .field("request_timeout", &self.request_timeout)
            .field("deadline", &self.deadline)
            .field("part_size", &self.part_size)
            .field("parts_in_flight", &self.parts_in_flight)
            .field("retries", &self.retries)
            .field("verify_upload", &self.verify_upload)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyUpload {
    /// Compare the SHA-256 checksums the server verified and stored for
    /// every part with those of the bytes sent; read the object back when
    /// the server keeps no checksums.
    Checksum,
    /// Always read the whole object back and hash it.
    ReadBack,
}

impl S3Section {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err((
                    "storage.s3.endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(("storage.s3.region", "is empty".into()));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return Err((
                    "storage.s3.secret_access_key",
                    "missing: set it with access_key_id (or use credentials_file)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "storage.s3.access_key_id",
                    "missing: set it with secret_access_key (or use credentials_file)".into(),
                ))
            }
            (Some(_), Some(_)) if self.credentials_file.is_some() => {
                return Err((
                    "storage.s3.credentials_file",
                    "set either access_key_id/secret_access_key or credentials_file, not both"
                        .into(),
                ))
            }
            _ => {}
        }
        if self.profile.is_some() && self.access_key_id.is_some() {
            return Err((
                "storage.s3.profile",
                "names a profile of a credentials file, but access_key_id is set".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(("storage.s3.request_timeout", "must be more than 0".into()));
        }
        if self.deadline <= self.request_timeout {
            return Err((
                "storage.s3.deadline",
                format!(
                    "{:?} must exceed request_timeout ({:?})",
                    self.deadline, self.request_timeout
                ),
            ));
        }
        // S3's limits: parts of 5 MiB to 5 GiB.
        if !(5 << 20..=5 << 30).contains(&self.part_size) {
            return Err((
                "storage.s3.part_size",
                format!("{} bytes is outside 5MiB..=5GiB", self.part_size),
            ));
        }
        if !(1..=16).contains(&self.parts_in_flight) {
            return Err((
                "storage.s3.parts_in_flight",
                format!("{} is outside 1..=16", self.parts_in_flight),
            ));
        }
        if self.retries > 100 {
            return Err(("storage.s3.retries", "must be at most 100".into()));
        }
        Ok(())
    }
}

/// Parses `1048576`, `512KiB`, `16MiB`, `1GiB` (powers of 1024) or `100MB`
/// (powers of 1000); a trailing `/s` is allowed for rates.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("{text:?} is not a size like 100MiB or 1048576"));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("{text:?}: number too large"))?;
    let mult: u64 = match t[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        unit => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?}: number too large"))
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

fn opt_byte_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig> {
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(path)?;
        cfg.resolve_secrets(path)?;
        Ok(cfg)
    }

    /// Cross-field checks serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |key: &str, message: String| Error::Config {
            file: path.to_path_buf(),
            message: format!("{key}: {message}"),
        };
        match (&self.broker.server_properties, &self.broker.log_dirs) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "broker.log_dirs",
                    "set either broker.server_properties or broker.log_dirs, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "broker.server_properties",
                    "missing: set broker.server_properties (or broker.log_dirs)".into(),
                ))
            }
            (None, Some(dirs)) => {
                if dirs.is_empty() {
                    return Err(err("broker.log_dirs", "is empty".into()));
                }
                if let Some(d) = dirs.iter().find(|d| !d.is_absolute()) {
                    return Err(err(
                        "broker.log_dirs",
                        format!("{} is not an absolute path", d.display()),
                    ));
                }
            }
            (Some(p), None) => {
                if !p.is_absolute() {
                    return Err(err(
                        "broker.server_properties",
                        format!("{} is not an absolute path", p.display()),
                    ));
                }
            }
        }
        if !(1..=19).contains(&self.snapshot.zstd_level) {
            return Err(err(
                "snapshot.zstd_level",
                format!("{} is outside 1..=19", self.snapshot.zstd_level),
            ));
        }
        if self.snapshot.zstd_threads > 256 {
            return Err(err("snapshot.zstd_threads", "must be at most 256".into()));
        }
        check_store_url(&self.storage.url).map_err(|m| err("storage.url", m))?;
        if self.storage.bandwidth_limit == Some(0) {
            return Err(err(
                "storage.bandwidth_limit",
                "must be more than 0 (leave it out for no limit)".into(),
            ));
        }
        if let Some(s3) = &self.storage.s3 {
            if !self.storage.url.starts_with("s3://") {
                return Err(err(
                    "storage.s3",
                    format!(
                        "is set, but storage.url {:?} is not an s3:// URL",
                        self.storage.url
                    ),
                ));
            }
            s3.validate().map_err(|(key, m)| err(key, m))?;
        }
        if self.broker.stop_command.trim().is_empty() {
            return Err(err("broker.stop_command", "is empty".into()));
        }
        if self.broker.start_command.trim().is_empty() {
            return Err(err("broker.start_command", "is empty".into()));
        }
        if self.broker.stop_timeout.is_zero() {
            return Err(err("broker.stop_timeout", "must be more than 0".into()));
        }
        if self.gate.stable_checks == 0 {
            return Err(err("gate.stable_checks", "must be at least 1".into()));
        }
        if let Some(k) = &self.kafka {
            if k.bootstrap_servers.is_empty() {
                return Err(err("kafka.bootstrap_servers", "is empty".into()));
            }
            if let Some(b) = k.bootstrap_servers.iter().find(|b| !b.contains(':')) {
                return Err(err(
                    "kafka.bootstrap_servers",
                    format!("{b:?} is not host:port"),
                ));
            }
            if k.request_timeout.is_zero() {
                return Err(err("kafka.request_timeout", "must be more than 0".into()));
            }
            if k.security_protocol.uses_sasl() {
                if k.sasl_mechanism.is_none() {
                    return Err(err(
                        "kafka.sasl_mechanism",
                        format!("required with {:?}", k.security_protocol),
                    ));
                }
                if k.sasl_username.is_none() {
                    return Err(err("kafka.sasl_username", "required with SASL".into()));
                }
                match (&k.sasl_password, &k.sasl_password_file) {
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "kafka.sasl_password_file",
                            "set sasl_password or sasl_password_file, not both".into(),
                        ))
                    }
                    (None, None) => {
                        return Err(err(
                            "kafka.sasl_password",
                            "required with SASL (or sasl_password_file)".into(),
                        ))
                    }
                    _ => {}
                }
            } else if k.sasl_mechanism.is_some() {
                return Err(err(
                    "kafka.sasl_mechanism",
                    format!(
                        "set, but security_protocol {:?} does not use SASL",
                        k.security_protocol
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads secrets referenced by path (`kafka.sasl_password_file`).
    fn resolve_secrets(&mut self, path: &Path) -> Result<()> {
        if let Some(k) = &mut self.kafka {
            if let Some(f) = &k.sasl_password_file {
                let pw = std::fs::read_to_string(f).map_err(|e| Error::Config {
                    file: path.to_path_buf(),
                    message: format!("kafka.sasl_password_file: cannot read {}: {e}", f.display()),
                })?;
                k.resolved_password = Some(pw.trim_end_matches(['\n', '\r']).to_string());
            }
        }
        Ok(())
    }

    /// The Kafka section, or a config error saying it is needed.
    pub fn kafka(&self, path: &Path, what: &str) -> Result<&KafkaSection> {
        self.kafka.as_ref().ok_or_else(|| Error::Config {
            file: path.to_path_buf(),
            message: format!("kafka.bootstrap_servers: missing; {what} needs the [kafka] section"),
        })
    }

    /// The log dirs to snapshot, from the config or server.properties.
    pub fn log_dirs(&self) -> Result<Vec<PathBuf>> {
        match (&self.broker.log_dirs, &self.broker.server_properties) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(p)) => crate::logdir::log_dirs_from_server_properties(p),
            (None, None) => Err(Error::Usage("no log dirs configured".into())),
        }
    }
}

/// Checks the shape of a store URL without touching the store.
pub fn check_store_url(url: &str) -> Result<(), String> {
    if let Some(p) = url.strip_prefix("file://") {
        if p.starts_with('/') {
            return Ok(());
        }
        return Err(format!(
            "{url:?}: file:// needs an absolute path, e.g. file:///mnt/kafka-snapshots"
        ));
    }
    if url.starts_with('/') {
        return Ok(());
    }
    if url.starts_with("s3://") {
        return crate::storage::parse_s3_url(url).map(|_| ());
    }
    Err(format!(
        "{url:?}: unsupported store URL (use file:///path or s3://bucket/prefix)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig> {
        AgentConfig::parse(text, Path::new("/etc/agent.toml"))
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../agent.example.toml");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.snapshot.zstd_level, 3);
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
