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
