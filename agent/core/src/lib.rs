//! The snapshot engine shared by the agent and the coordinator. The
//! formats it writes and reads (manifest, storage layout, wire types) are in
//! `kafka_snapshot_model`.
//!
//! A snapshot is made in two steps so that a broker is down for as short a
//! time as possible:
//!
//! 1. [`snapshot::capture`] runs while the broker is stopped: it takes an
//!    inventory of the log dirs ([`logdir`]) and, with reflink capture,
//!    clones every file into a staging directory ([`capture`]).
//! 2. [`snapshot::Captured::commit`] builds the checksummed `tar.zst`
//!    ([`archive`]) on cold storage ([`storage`]) and writes the
//!    manifest last: its presence is what makes a snapshot complete.
//!
//! With recipients configured the archive is encrypted on its way out
//! (tar -> zstd -> age) and the manifest's entries are sealed ([`crypt`]).
//!
//! [`verify`] re-reads an archive against its manifest and [`extract`]
//! restores it without ever deleting what was at the target.

pub mod archive;
pub mod aside;
pub mod capture;
pub mod catalog;
pub mod cleanstop;
pub mod command;
pub mod config;
pub mod crypt;
pub mod extents;
pub mod extract;
pub mod fsat;
pub mod hashcache;
pub mod hashing;
pub mod kafka;
pub mod kept;
pub mod logdir;
pub mod objects;
pub mod props;
pub mod random;
pub mod service;
pub mod sets;
pub mod settings;
pub mod snapshot;
pub(crate) mod source;
pub mod storage;
pub mod verify;

pub use kafka_snapshot_model::{Error, Result};

/// Version of this build, recorded in every manifest. Every package of the
/// workspace takes its version from the workspace, so this is the version of
/// the agent and coordinator binaries too.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Crash-test hook: aborts the process at the named point when the
/// environment variable `KAFKA_SNAPSHOT_FAILPOINT` names it, the way a power
/// cut or SIGKILL would stop it there. Tests use it to prove crash safety.
pub fn failpoint(name: &str) {
    if std::env::var("KAFKA_SNAPSHOT_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    pausepoint(name);
}

/// Fault-injection hook: when `KAFKA_SNAPSHOT_PAUSE` lists `name`
/// (comma-separated) the process stops here the first time it passes,
/// creates `$KAFKA_SNAPSHOT_PAUSE_DIR/<name>` (holding its pid) and waits
/// until that file is removed. A test uses the pause to inject a fault at
/// an exact point (SIGKILL the agent, kill the coordinator, cut the
/// network, fill the disk) and then lets the process go on. Heartbeats and
/// the other tasks keep running meanwhile.
pub fn pausepoint(name: &str) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static PASSED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    let Ok(points) = std::env::var("KAFKA_SNAPSHOT_PAUSE") else {
        return;
    };
    if !points.split(',').any(|p| p.trim() == name) {
        return;
    }
    {
        let mut passed = PASSED.lock().unwrap_or_else(|e| e.into_inner());
        if !passed
            .get_or_insert_with(HashSet::new)
            .insert(name.to_string())
        {
            return;
        }
    }
    let dir = std::env::var_os("KAFKA_SNAPSHOT_PAUSE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let marker = dir.join(name);
    let wait = || {
        if let Err(e) = std::fs::write(&marker, format!("{}\n", std::process::id())) {
            eprintln!("pausepoint {name}: cannot write {}: {e}", marker.display());
            return;
        }
        tracing::warn!(point = name, marker = %marker.display(), "pausepoint: paused");
        while marker.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!(point = name, "pausepoint: going on");
    };
    // On a runtime worker, hand its other tasks (heartbeats) to another
    // worker while this one waits.
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
