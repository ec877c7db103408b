//! The SASL_PLAINTEXT listener: PLAIN and SCRAM-SHA-256 through librdkafka,
//! and the handshake rules on the wire.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_snapshot_standin::wire::Connection;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::common::*;

fn sasl_cluster() -> TestCluster {
    let mut spec = fast_spec(3);
    spec.sasl_users = vec![("agent".into(), "s3cret".into())];
    let c = create(&spec);
    c.start_all(TIMEOUT).unwrap();
    c
}

fn sasl_admin(
    bootstrap: &str,
    mechanism: &str,
    password: &str,
) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", mechanism)
        .set("sasl.username", "agent")
        .set("sasl.password", password)
        .create()
        .expect("admin client")
}

#[test]
fn librdkafka_authenticates_with_plain_and_scram() {
    let c = sasl_cluster();
    let bootstrap = c.sasl_bootstrap().unwrap();
    let mut sasl_ports: Vec<i32> = c
        .node_ids()
        .into_iter()
        .map(|id| {
            c.sasl_address(id)
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    sasl_ports.sort();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let admin = sasl_admin(&bootstrap, mechanism, "s3cret");
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        // The brokers advertise their SASL listener to SASL clients.
        let mut ports: Vec<i32> = md.brokers().iter().map(|b| b.port()).collect();
        ports.sort();
        assert_eq!(ports, sasl_ports, "{mechanism}");
        assert!(md.topics().iter().any(|t| t.name() == "orders"));
    }
    let admin = sasl_admin(&bootstrap, "SCRAM-SHA-256", "wrong");
    assert!(admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(3))
        .is_err());
    // The plaintext listener still works without credentials.
    let md = c.metadata().unwrap();
    assert_eq!(md.brokers.len(), 3);
}

#[test]
fn sasl_listener_requires_a_handshake_first() {
    let c = sasl_cluster();
    let addr = c.sasl_address(1).unwrap();
    let mut conn = Connection::connect(&addr, Duration::from_secs(5)).unwrap();
    assert!(
        conn.send(&MetadataRequest::default(), 12).is_err(),
        "Metadata before authentication closes the connection"
    );

    let mut conn = Connection::connect(&addr, Duration::from_secs(5)).unwrap();
    let r = conn
        .send(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
            1,
        )
        .unwrap();
    assert_eq!(r.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(offered, vec!["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    let r = conn
        .send(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
            1,
        )
        .unwrap();
    assert_eq!(r.error_code, 0);
    let r = conn
        .send(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0agent\0s3cret")),
            2,
        )
        .unwrap();
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    let md = conn
        .send(&MetadataRequest::default().with_topics(None), 12)
        .unwrap();
    let ports: Vec<i32> = md.brokers.iter().map(|b| b.port).collect();
    let want: i32 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(ports.contains(&want));

    // A wrong password: SASL_AUTHENTICATION_FAILED, then the connection closes.
    let mut conn = Connection::connect(&addr, Duration::from_secs(5)).unwrap();
    conn.send(
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        1,
    )
    .unwrap();
    let r = conn
        .send(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0agent\0nope")),
            1,
        )
        .unwrap();
    assert_eq!(r.error_code, 58);
    assert!(conn.send(&MetadataRequest::default(), 12).is_err());
}
