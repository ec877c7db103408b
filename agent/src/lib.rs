//! The snapshot engine shared by the agent and the coordinator.
//!
//! A snapshot is made in two steps so that a broker is down for as short a
//! time as possible:
//!
//! 1. [`snapshot::capture`] runs while the broker is stopped: it takes an
//!    inventory of the log dirs ([`logdir`]) and, with reflink capture,
//!    clones every file into a staging directory ([`capture`]).
//! 2. [`snapshot::Captured::commit`] builds the checksummed `tar.zst`
//!    ([`archive`]) on cold storage ([`storage`]) and writes the
//!    [`manifest`] last: its presence is what makes a snapshot complete.
//!
//! [`verify`] re-reads an archive against its manifest and [`extract`]
//! restores it without ever deleting what was at the target.

pub mod archive;
pub mod broker;
pub mod capture;
pub mod catalog;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod error;
pub mod extract;
pub mod hashing;
pub mod kafka;
pub mod logdir;
pub mod manifest;
pub mod props;
pub mod protocol;
pub mod service;
pub mod snapshot;
pub mod storage;
pub mod verify;

pub use error::{Error, Result};

/// Version of this build, recorded in every manifest.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Crash-test hook: aborts the process at the named point when the
/// environment variable `KAFKA_SNAPSHOT_FAILPOINT` names it, the way a power
/// cut or SIGKILL would stop it there. Tests use it to prove crash safety.
pub fn failpoint(name: &str) {
    if std::env::var("KAFKA_SNAPSHOT_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
