//! The agent's TOML configuration. Unknown keys are errors, defaults live
//! here and only here, and [`AgentConfig::validate`] names the file and key
//! of every problem.

use crate::capture::CaptureMode;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub broker: BrokerSection,
    #[serde(default)]
    pub snapshot: SnapshotSection,
    pub storage: StorageSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// The broker's server.properties: log dirs are read from `log.dirs`
    /// and `metadata.log.dir`.
    pub server_properties: Option<PathBuf>,
    /// Or the log dirs, listed explicitly.
    pub log_dirs: Option<Vec<PathBuf>>,
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
    /// `file:///mnt/kafka-snapshots` (a local path or an NFS mount).
    pub url: String,
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
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(path)?;
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
        Ok(())
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
    Err(format!("{url:?}: unsupported store URL (use file:///path)"))
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
}
