//! `check` over every security protocol the agent supports, against
//! stand-in brokers with SSL (client certificates required), SASL_PLAINTEXT
//! and SASL_SSL listeners: the agent's protocol client (Metadata,
//! DescribeConfigs, ListPartitionReassignments) must get through, and bad
//! credentials must fail closed, saying what was wrong.

use crate::common::*;
use kafka_snapshot_standin::{Reassignment, SecurityProtocol, StandinCluster, TlsDef};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::fs;
use std::path::{Path, PathBuf};

/// A test CA, and broker and client certificates it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn pki(dir: &Path) -> Pki {
    fs::create_dir_all(dir).unwrap();
    let (ca_params, ca_key, ca_pem) = ca("kafka-snapshot test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let server = write("broker", vec!["127.0.0.1".into(), "localhost".into()]);
    let client = write("kafka-snapshot-agent", vec![]);
    let ca = dir.join("ca.pem");
    fs::write(&ca, ca_pem).unwrap();
    Pki { ca, server, client }
}

struct Secured {
    t: tempfile::TempDir,
    c: StandinCluster,
    store: PathBuf,
    pki: Pki,
}

impl Secured {
    fn new() -> Secured {
        let t = scratch("ext4");
        let pki = pki(&t.path().join("pki"));
        let tls = TlsDef {
            cert: pki.server.0.clone(),
            key: pki.server.1.clone(),
            client_ca: Some(pki.ca.clone()),
        };
        let c = standin_cluster(t.path(), |spec| {
            spec.sasl_users = vec![("agent".into(), "s3cret".into())];
            spec.tls = Some(tls);
        });
        let store = new_store(t.path());
        Secured { t, c, store, pki }
    }

    /// A config for broker 1 over `protocol` with these `[kafka]` lines.
    fn config(&self, protocol: SecurityProtocol, lines: &[String]) -> String {
        let mut cfg = AgentToml::new(&self.c, 1, &self.store);
        cfg.kafka = kafka_section(
            &self.c.bootstrap_for(protocol).expect("listener"),
            &lines.join("\n"),
        );
        cfg.write(self.t.path()).display().to_string()
    }

    fn ca_line(&self) -> String {
        format!("ssl_ca_location = {:?}", self.pki.ca.display().to_string())
    }

    fn client_cert_lines(&self) -> [String; 2] {
        [
            format!(
                "ssl_certificate_location = {:?}",
                self.pki.client.0.display().to_string()
            ),
            format!(
                "ssl_key_location = {:?}",
                self.pki.client.1.display().to_string()
            ),
        ]
    }
}

fn sasl(protocol: &str, mechanism: &str, password: &str) -> Vec<String> {
    vec![
        format!("security_protocol = {protocol:?}"),
        format!("sasl_mechanism = {mechanism:?}"),
        "sasl_username = \"agent\"".into(),
        format!("sasl_password = {password:?}"),
    ]
}

/// The gate's only failure is `cluster_reachable`, and it says `what`.
fn assert_unreachable_because(cfg: &str, what: &str) {
    let report = check(cfg, 1);
    assert_eq!(failed_ids(&report), ["cluster_reachable"], "{report}");
    let f = failure(&report, "cluster_reachable");
    assert!(f.contains(what), "{what:?} missing in:\n{report}");
}

#[test]
fn check_gets_through_ssl_and_sasl_and_fails_closed_on_bad_credentials() {
    let s = Secured::new();

    // SSL with a client certificate, as the listener requires.
    let mut ssl = vec!["security_protocol = \"SSL\"".to_string(), s.ca_line()];
    ssl.extend(s.client_cert_lines());
    assert_safe(&s.config(SecurityProtocol::Ssl, &ssl));

    // SASL_PLAINTEXT with every mechanism.
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        assert_safe(&s.config(
            SecurityProtocol::SaslPlaintext,
            &sasl("SASL_PLAINTEXT", mechanism, "s3cret"),
        ));
    }

    // SASL_SSL: TLS for the channel, SCRAM for the user.
    let mut sasl_ssl = sasl("SASL_SSL", "SCRAM-SHA-512", "s3cret");
    sasl_ssl.push(s.ca_line());
    let sasl_ssl_cfg = s.config(SecurityProtocol::SaslSsl, &sasl_ssl);
    assert_safe(&sasl_ssl_cfg);
    // ... and the raw client really lists reassignments over it.
    s.c.update_scenario(|sc| {
        sc.reassignments.push(Reassignment {
            topic: "orders".into(),
            partition: 3,
            target: vec![1, 2],
        })
    })
    .unwrap();
    assert_not_safe(
        &sasl_ssl_cfg,
        &["no_reassignment"],
        "1 partition reassignment(s) in flight",
        "orders-3 (adding [], removing [",
    );
    s.c.update_scenario(|sc| sc.reassignments.clear()).unwrap();

    // A wrong password: named mechanism and user, never "safe".
    for (protocol, listener) in [
        ("SASL_PLAINTEXT", SecurityProtocol::SaslPlaintext),
        ("SASL_SSL", SecurityProtocol::SaslSsl),
    ] {
        let mut lines = sasl(protocol, "SCRAM-SHA-256", "wrong");
        lines.push(s.ca_line());
        assert_unreachable_because(
            &s.config(listener, &lines),
            "SASL SCRAM-SHA-256 authentication as user \"agent\" failed",
        );
    }
    assert_unreachable_because(
        &s.config(
            SecurityProtocol::SaslPlaintext,
            &sasl("SASL_PLAINTEXT", "PLAIN", "wrong"),
        ),
        "SASL PLAIN authentication as user \"agent\" failed",
    );

    // No client certificate where one is required, and a CA that did not
    // sign the broker's certificate: the TLS handshake fails.
    assert_unreachable_because(
        &s.config(
            SecurityProtocol::Ssl,
            &["security_protocol = \"SSL\"".to_string(), s.ca_line()],
        ),
        "TLS handshake failed",
    );
    let other = s.t.path().join("other-ca.pem");
    fs::write(&other, ca("someone else's CA").2).unwrap();
    let mut wrong_ca = vec![
        "security_protocol = \"SSL\"".to_string(),
        format!("ssl_ca_location = {:?}", other.display().to_string()),
    ];
    wrong_ca.extend(s.client_cert_lines());
    assert_unreachable_because(
        &s.config(SecurityProtocol::Ssl, &wrong_ca),
        "TLS handshake failed",
    );
}
