//! `[kafka]`: how the agent's Kafka protocol client reaches the
//! cluster.

use crate::settings::{bad, duration, KeyError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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

/// How the agent's Kafka protocol client reaches the cluster.
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

impl KafkaSection {
    /// Reads `sasl_password_file`, if set.
    pub fn resolve_secrets(&mut self) -> std::result::Result<(), KeyError> {
        if let Some(f) = &self.sasl_password_file {
            let pw = std::fs::read_to_string(f).map_err(|e| {
                bad(
                    "kafka.sasl_password_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            self.resolved_password = Some(pw.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(())
    }

    /// Checks what serde cannot; the problems are (key, message).
    pub fn validate(&self) -> std::result::Result<(), Vec<KeyError>> {
        let mut problems = Vec::new();
        if self.bootstrap_servers.is_empty() {
            problems.push(bad("kafka.bootstrap_servers", "is empty".into()));
        } else if let Some(b) = self.bootstrap_servers.iter().find(|b| !b.contains(':')) {
            problems.push(bad(
                "kafka.bootstrap_servers",
                format!("{b:?} is not host:port"),
            ));
        }
        if self.request_timeout.is_zero() {
            problems.push(bad("kafka.request_timeout", "must be more than 0".into()));
        }
        if self.security_protocol.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                problems.push(bad(
                    "kafka.sasl_mechanism",
                    format!("required with {:?}", self.security_protocol),
                ));
            }
            if self.sasl_username.is_none() {
                problems.push(bad("kafka.sasl_username", "required with SASL".into()));
            }
            match (&self.sasl_password, &self.sasl_password_file) {
                (Some(_), Some(_)) => problems.push(bad(
                    "kafka.sasl_password_file",
                    "set sasl_password or sasl_password_file, not both".into(),
                )),
                (None, None) => problems.push(bad(
                    "kafka.sasl_password",
                    "required with SASL (or sasl_password_file)".into(),
                )),
                _ => {}
            }
        } else if self.sasl_mechanism.is_some() {
            problems.push(bad(
                "kafka.sasl_mechanism",
                format!(
                    "set, but security_protocol {:?} does not use SASL",
                    self.security_protocol
                ),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
