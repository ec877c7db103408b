//! How the raw client secures its connections, from the same `[kafka]`
//! keys librdkafka uses: TLS (rustls) for SSL and SASL_SSL with
//! `ssl_ca_location` and an optional client certificate
//! (`ssl_certificate_location` + `ssl_key_location`, PEM), and SASL PLAIN or
//! SCRAM-SHA-256/512 for SASL_PLAINTEXT and SASL_SSL.

use super::section::{KafkaSection, SaslMechanism};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The settings every raw connection is made with, checked once.
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub sasl: Option<SaslCredentials>,
}

#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

// By hand: the password never reaches a log line.
impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Reads the CA and client certificate files; an error names the key
    /// and the file.
    pub fn from_config(cfg: &KafkaSection) -> Result<Security, String> {
        let protocol = cfg.security_protocol;
        let tls = if protocol.uses_tls() {
            Some(Arc::new(tls_config(cfg)?))
        } else {
            None
        };
        let sasl = if protocol.uses_sasl() {
            let missing = |key: &str| format!("kafka.{key} is required with {protocol:?}");
            Some(SaslCredentials {
                mechanism: cfg
                    .sasl_mechanism
                    .ok_or_else(|| missing("sasl_mechanism"))?,
                username: cfg
                    .sasl_username
                    .clone()
                    .ok_or_else(|| missing("sasl_username"))?,
                password: cfg
                    .sasl_password()
                    .ok_or_else(|| missing("sasl_password"))?
                    .to_string(),
            })
        } else {
            None
        };
        Ok(Security { tls, sasl })
    }
}

fn tls_config(cfg: &KafkaSection) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ssl_ca_location {
        Some(ca) => {
            for cert in read_certs(ca, "kafka.ssl_ca_location")? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "kafka.ssl_ca_location: {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
        }
        None => {
            roots.add_parsable_certificates(system_roots()?);
        }
    }
    let builder = builder.with_root_certificates(roots);
    match (&cfg.ssl_certificate_location, &cfg.ssl_key_location) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "kafka.ssl_certificate_location")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "kafka.ssl_key_location: {}: no unencrypted PEM private key: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("kafka.ssl_key_location: {}: {e}", key.display()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => {
            Err("kafka.ssl_key_location is required with ssl_certificate_location".into())
        }
        (None, Some(_)) => {
            Err("kafka.ssl_certificate_location is required with ssl_key_location".into())
        }
    }
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Without `ssl_ca_location`, librdkafka trusts the system's CA bundle;
/// so does this client (Debian's /etc/ssl/certs/ca-certificates.crt).
fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
    ];
    for b in BUNDLES {
        let p = Path::new(b);
        if p.is_file() {
            return read_certs(p, "the system CA bundle");
        }
    }
    Err(format!(
        "no kafka.ssl_ca_location and no system CA bundle ({})",
        BUNDLES.join(", ")
    ))
}
