//! What only the agent does, on top of the engine (`kafka_snapshot`): one
//! snapshot or restore cycle ([`cycle`]), stopping and starting the broker
//! ([`broker`]), and the daemon that takes its orders from the coordinator
//! ([`daemon`]). The binary's command line is in `main.rs` and `cli/`.

pub mod broker;
pub mod cycle;
pub mod daemon;
