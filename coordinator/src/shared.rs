//! What the HTTP handlers and the background jobs share: the engine behind
//! its lock, the config, the agents' and the admin's token digests, the
//! Kafka client the coordinator checks the cluster with, and cold storage.

use crate::config::CoordinatorConfig;
use crate::engine::Engine;
use kafka_snapshot::kafka::fetch::KafkaClient;
use kafka_snapshot::kafka::view::ClusterView;
use kafka_snapshot::storage::ColdStore;
use kafka_snapshot::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Shared {
    pub engine: Mutex<Engine>,
    pub cfg: CoordinatorConfig,
    /// sha256(token) -> broker.
    pub(crate) agents: HashMap<[u8; 32], i32>,
    pub(crate) admin: [u8; 32],
    kafka: KafkaClient,
    pub store: Arc<dyn ColdStore>,
    /// Set when the service stops: running jobs end after their current
    /// step.
    pub(crate) stopping: AtomicBool,
    pub(crate) verifying: AtomicBool,
    /// Cold storage could not be read: no verification before then.
    pub(crate) verify_after: Mutex<Option<Instant>>,
    pub(crate) pruning: AtomicBool,
    pub(crate) last_check: Mutex<Option<Instant>>,
}

impl Shared {
    pub fn new(
        cfg: CoordinatorConfig,
        engine: Engine,
        store: Arc<dyn ColdStore>,
    ) -> Result<Shared> {
        let admin = read_token(&cfg.server.admin_token_file)?;
        let mut agents = HashMap::new();
        for a in &cfg.agents {
            let mut h = [0u8; 32];
            hex::decode_to_slice(a.token_sha256.to_ascii_lowercase(), &mut h).map_err(|e| {
                Error::Usage(format!("agents token_sha256 of broker {}: {e}", a.broker))
            })?;
            agents.insert(h, a.broker);
        }
        let kafka = KafkaClient::new(&cfg.kafka).map_err(Error::Usage)?;
        Ok(Shared {
            engine: Mutex::new(engine),
            agents,
            admin: Sha256::digest(admin.as_bytes()).into(),
            kafka,
            store,
            stopping: AtomicBool::new(false),
            verifying: AtomicBool::new(false),
            verify_after: Mutex::new(None),
            pruning: AtomicBool::new(false),
            last_check: Mutex::new(None),
            cfg,
        })
    }

    pub fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // A panic while holding the lock leaves SQLite consistent (every
        // change is a transaction), so the state is still good to use.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn view(&self) -> std::result::Result<ClusterView, String> {
        self.kafka.view().await
    }
}

/// Reads a bearer token file; it must not be readable by others.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("token file {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "token file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let t = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("token file {}", path.display()), e))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(Error::Usage(format!(
            "token file {}: the token is shorter than 16 characters",
            path.display()
        )));
    }
    Ok(t)
}
