//! The Kafka side of the agent: reading the cluster ([`view`], [`fetch`]),
//! deciding whether a broker may stop and whether it recovered ([`gate`]),
//! and the raw protocol client for what `rdkafka` lacks ([`wire`]).

pub mod fetch;
pub mod gate;
pub mod view;
pub mod wire;
