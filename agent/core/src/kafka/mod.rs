//! The Kafka side of the agent: reading the cluster ([`view`], [`fetch`]),
//! deciding whether a broker may stop and whether it recovered ([`gate`]),
//! and the Kafka protocol client all of it goes through ([`wire`]).

pub mod fetch;
pub mod gate;
pub mod scram;
mod section;
pub mod security;
pub mod view;
pub mod wire;

use crate::logdir;
use gate::{evaluate_node, GateReport, LowReplicationPolicy};
use kafka_snapshot_model::protocol::NodeRole;
pub use section::{KafkaSection, SaslMechanism, SecurityProtocol};
use std::path::PathBuf;

/// The gate once, now: the live cluster as `client` sees it plus this
/// broker's own log dirs (for `-future` dirs). Never "safe" on an error.
pub async fn check_now(
    client: &fetch::KafkaClient,
    broker: i32,
    role: NodeRole,
    policy: LowReplicationPolicy,
    log_dirs: &[PathBuf],
) -> GateReport {
    let future = match logdir::future_dirs(log_dirs) {
        Ok(f) => f,
        Err(e) => return GateReport::unreachable(broker, e.to_string()),
    };
    match client.view().await {
        Ok(v) => evaluate_node(&v, broker, role, policy, &future),
        Err(e) => GateReport::unreachable(broker, e),
    }
}

/// Where a node's controllers listen, from its server.properties: the
/// addresses of `controller.quorum.bootstrap.servers` (or the voters of
/// `controller.quorum.voters`), and whether the controller listener
/// (`controller.listener.names`, through `listener.security.protocol.map`)
/// is PLAINTEXT. With no map, a controller listener whose name is not a
/// security protocol is PLAINTEXT, as Kafka does.
pub fn controller_endpoints(
    props: &std::collections::BTreeMap<String, String>,
) -> Result<(Vec<String>, bool), String> {
    let list = |key: &str| {
        props
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut addrs = list("controller.quorum.bootstrap.servers");
    if addrs.is_empty() {
        addrs = list("controller.quorum.voters")
            .into_iter()
            .filter_map(|v| v.split_once('@').map(|(_, a)| a.to_string()))
            .collect();
    }
    if addrs.is_empty() {
        return Err(
            "neither controller.quorum.bootstrap.servers nor controller.quorum.voters is set"
                .into(),
        );
    }
    let name = list("controller.listener.names")
        .into_iter()
        .next()
        .ok_or("controller.listener.names is not set")?;
    let protocol = list("listener.security.protocol.map")
        .into_iter()
        .filter_map(|e| {
            e.split_once(':')
                .map(|(n, p)| (n.trim().to_string(), p.trim().to_string()))
        })
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, p)| p)
        .unwrap_or_else(|| match name.to_ascii_uppercase().as_str() {
            p @ ("SSL" | "SASL_SSL" | "SASL_PLAINTEXT") => p.to_string(),
            _ => "PLAINTEXT".to_string(),
        });
    Ok((addrs, protocol.eq_ignore_ascii_case("PLAINTEXT")))
}

#[cfg(test)]
mod controller_tests {
    use super::controller_endpoints;

    fn props(lines: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        lines
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_controllers_are_found_from_either_quorum_key() {
        let p = props(&[
            ("controller.quorum.voters", "100@c1:9093,101@c2:9093"),
            ("controller.listener.names", "CONTROLLER"),
        ]);
        assert_eq!(
            controller_endpoints(&p).unwrap(),
            (vec!["c1:9093".to_string(), "c2:9093".to_string()], true)
        );
        let p = props(&[
            ("controller.quorum.bootstrap.servers", "c1:9093, c2:9093"),
            ("controller.listener.names", "CONTROLLER"),
            (
                "listener.security.protocol.map",
                "CONTROLLER:SSL,PLAINTEXT:PLAINTEXT",
            ),
        ]);
        assert_eq!(
            controller_endpoints(&p).unwrap(),
            (vec!["c1:9093".to_string(), "c2:9093".to_string()], false)
        );
        let e = controller_endpoints(&props(&[])).unwrap_err();
        assert!(e.contains("controller.quorum.voters"), "{e}");
    }
}
