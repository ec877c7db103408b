//! The Kafka side of the agent: reading the cluster ([`view`], [`fetch`]),
//! deciding whether a broker may stop and whether it recovered ([`gate`]),
//! and the raw protocol client for what `rdkafka` lacks ([`wire`]).

pub mod fetch;
pub mod gate;
pub mod scram;
mod section;
pub mod security;
pub mod view;
pub mod wire;

use crate::{logdir, props, Error};
use gate::{evaluate, GateReport, LowReplicationPolicy};
pub use section::{KafkaSection, SaslMechanism, SecurityProtocol};
use std::path::{Path, PathBuf};

/// Whether this node is a KRaft controller: `process.roles` in the
/// broker's server.properties includes `controller`. Unknown (false) when
/// the config lists `broker.log_dirs` instead of `server_properties`
/// (`server_properties` is `None`).
pub fn is_controller(server_properties: Option<&Path>) -> crate::Result<bool> {
    let Some(path) = server_properties else {
        return Ok(false);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(props::parse(&text)
        .get("process.roles")
        .is_some_and(|roles| roles.split(',').any(|r| r.trim() == "controller")))
}

/// The gate once, now: the live cluster as `client` sees it plus this
/// broker's own log dirs (for `-future` dirs). Never "safe" on an error.
pub async fn check_now(
    client: &fetch::KafkaClient,
    broker: i32,
    policy: LowReplicationPolicy,
    log_dirs: &[PathBuf],
) -> GateReport {
    let future = match logdir::future_dirs(log_dirs) {
        Ok(f) => f,
        Err(e) => return GateReport::unreachable(broker, e.to_string()),
    };
    match client.view().await {
        Ok(v) => evaluate(&v, broker, policy, &future),
        Err(e) => GateReport::unreachable(broker, e),
    }
}
