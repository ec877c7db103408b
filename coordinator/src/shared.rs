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

/// Reads the admin token file. Others may not read it and its group may
/// not write it; its group may read it: the deployment makes it
/// `root:<the coordinator's group> 0640`, so that the service and the
/// operators in that group (who run the CLI) can read it and nobody else.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("token file {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(Error::Usage(format!(
            "token file {} has mode {mode:04o}: others must not read it and its group must not \
             write it; chmod 640 it (group read is for the coordinator's operators) or 600",
            path.display(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Regression: the Ansible role installs the admin token as
    /// root:<coordinator group> 0640, and serve refused any group bit, so
    /// the coordinator it deployed did not start.
    #[test]
    fn the_admin_token_may_be_read_by_its_group_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let with_mode = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            read_token(&path)
        };
        for mode in [0o600, 0o400, 0o640, 0o440] {
            assert_eq!(with_mode(mode).unwrap(), "0123456789abcdef0123", "{mode:o}");
        }
        for mode in [0o644, 0o604, 0o660, 0o620, 0o666] {
            let e = with_mode(mode).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let e = e.to_string();
            assert!(
                e.contains("admin.token")
                    && e.contains(&format!("{mode:04o}"))
                    && e.contains("chmod 640"),
                "{e}"
            );
        }
    }
}
