//! What the HTTP handlers and the background jobs share: the engine behind
//! its lock, the config, the agents' and the admin's token digests, the
//! Kafka client the coordinator checks the cluster with, and cold storage.

use crate::config::CoordinatorConfig;
use crate::engine::Engine;
use kafka_snapshot::kafka::fetch::KafkaClient;
use kafka_snapshot::kafka::view::ClusterView;
use kafka_snapshot::kafka::view::QUORUM_SPAN;
use kafka_snapshot::storage::ColdStore;
use kafka_snapshot::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub struct Shared {
    pub engine: Mutex<Engine>,
    /// What a reload (SIGHUP) replaces, swapped as one.
    settings: RwLock<Arc<Settings>>,
    kafka: KafkaClient,
    pub store: Arc<dyn ColdStore>,
    /// Set when the service stops: running jobs end after their current
    /// step.
    pub(crate) stopping: AtomicBool,
    pub(crate) verifying: AtomicBool,
    /// Cold storage could not be read: no verification before then.
    pub(crate) verify_after: Mutex<Option<Instant>>,
    pub(crate) pruning: AtomicBool,
    pub(crate) storing_sets: AtomicBool,
    /// Cold storage could not be written: no set record before then.
    pub(crate) store_sets_after: Mutex<Option<Instant>>,
    pub(crate) last_check: Mutex<Option<Instant>>,
    /// Since when the cluster has looked in sync without a break.
    in_sync_since: Mutex<Option<Instant>>,
    /// Brokers the cluster listed, at the last look, that no `[[agents]]`
    /// entry covers; and when that look was.
    uncovered: Mutex<(Option<Instant>, BTreeSet<i32>)>,
    /// The cluster answered with this coordinator's cluster.id (asked once
    /// per process, at the first look that reaches it).
    cluster_checked: AtomicBool,
    /// Content objects retention found referenced by no snapshot, and when
    /// it first did (`retention.object_grace` runs from then). Kept in
    /// memory only: a restarted coordinator starts the grace again, which
    /// only delays a removal.
    pub(crate) unreferenced_objects: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    /// Content objects (by SHA-256) a verification of a new snapshot read
    /// and checked: the next ones find them by listing instead of reading
    /// them again (objects are named after their content and never
    /// rewritten; one retention removes leaves this set first). Kept in
    /// memory only: a restarted coordinator reads every object of the next
    /// snapshot it verifies once more. `coordinator verify` reads all.
    pub(crate) verified_objects: Mutex<HashSet<[u8; 32]>>,
}

/// The config and what is derived from it for authentication.
pub struct Settings {
    pub cfg: Arc<CoordinatorConfig>,
    /// sha256(token) -> broker.
    pub agents: HashMap<[u8; 32], i32>,
    /// sha256 of the admin token.
    pub admin: [u8; 32],
}

impl Settings {
    fn of(cfg: CoordinatorConfig) -> Result<Settings> {
        let admin = read_token(&cfg.server.admin_token_file)?;
        let mut agents = HashMap::new();
        for a in &cfg.agents {
            let mut h = [0u8; 32];
            hex::decode_to_slice(a.token_sha256.to_ascii_lowercase(), &mut h).map_err(|e| {
                Error::Usage(format!("agents token_sha256 of broker {}: {e}", a.broker))
            })?;
            agents.insert(h, a.broker);
        }
        Ok(Settings {
            cfg: Arc::new(cfg),
            agents,
            admin: Sha256::digest(admin.as_bytes()).into(),
        })
    }
}

/// The sections a reload applies; the others need a restart (the listener,
/// the database, cold storage and the Kafka client are built from them).
const RELOADABLE: &str = "[schedule], [retention], [lease], [gate], [[agents]] and the admin token";

impl Shared {
    pub fn new(
        cfg: CoordinatorConfig,
        engine: Engine,
        store: Arc<dyn ColdStore>,
    ) -> Result<Shared> {
        let kafka = KafkaClient::new(&cfg.kafka).map_err(Error::Usage)?;
        Ok(Shared {
            engine: Mutex::new(engine),
            settings: RwLock::new(Arc::new(Settings::of(cfg)?)),
            kafka,
            store,
            stopping: AtomicBool::new(false),
            verifying: AtomicBool::new(false),
            verify_after: Mutex::new(None),
            pruning: AtomicBool::new(false),
            storing_sets: AtomicBool::new(false),
            store_sets_after: Mutex::new(None),
            last_check: Mutex::new(None),
            in_sync_since: Mutex::new(None),
            uncovered: Mutex::new((None, BTreeSet::new())),
            cluster_checked: AtomicBool::new(false),
            unreferenced_objects: Mutex::new(HashMap::new()),
            verified_objects: Mutex::new(HashSet::new()),
        })
    }

    /// The config in force.
    pub fn cfg(&self) -> Arc<CoordinatorConfig> {
        self.settings().cfg.clone()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a config read again (SIGHUP): the schedule, retention, lease
    /// and gate settings, the agents and the admin token. A config that
    /// changes what needs a restart is refused whole, naming what changed;
    /// the running config stays. Returns the sections that changed.
    pub fn reload(&self, new: CoordinatorConfig) -> Result<Vec<&'static str>> {
        let old = self.cfg();
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let fixed: Vec<&str> = [
            ("[server]", differs(&old.server, &new.server)),
            ("[storage]", differs(&old.storage, &new.storage)),
            ("[kafka]", differs(&old.kafka, &new.kafka)),
            ("[cluster]", differs(&old.cluster, &new.cluster)),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !fixed.is_empty() {
            return Err(Error::Usage(format!(
                "{} changed: restart the coordinator to apply that (a reload applies {RELOADABLE}); \
                 nothing was reloaded",
                fixed.join(", ")
            )));
        }
        let changed: Vec<&'static str> = [
            ("[schedule]", differs(&old.schedule, &new.schedule)),
            ("[retention]", differs(&old.retention, &new.retention)),
            ("[lease]", differs(&old.lease, &new.lease)),
            ("[gate]", differs(&old.gate, &new.gate)),
            ("[[agents]]", differs(&old.agents, &new.agents)),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        let settings = Arc::new(Settings::of(new)?);
        self.engine().set_config((*settings.cfg).clone());
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
        Ok(changed)
    }

    pub fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // A panic while holding the lock leaves SQLite consistent (every
        // change is a transaction), so the state is still good to use.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The coordinator's own look at the cluster; every successful look
    /// also notes which brokers no agent covers.
    /// The first look that reaches the cluster also asks its cluster.id:
    /// the coordinator learns it (without `[cluster] id`), and a cluster
    /// of another id fails every look, so nothing is granted on it.
    pub async fn view(&self) -> std::result::Result<ClusterView, String> {
        // The quorum too once a controller has an agent (a reload may add
        // the first one).
        let v = self
            .kafka
            .view_with(!self.cfg().controllers().is_empty())
            .await?;
        if !self.cluster_checked.load(Ordering::SeqCst) {
            let live = self.kafka.cluster_id().await?;
            self.engine()
                .learn_cluster_id(&live, chrono::Utc::now())
                .map_err(|e| e.to_string())?;
            self.cluster_checked.store(true, Ordering::SeqCst);
        }
        let configured = self.cfg().brokers();
        let uncovered = v
            .brokers
            .iter()
            .copied()
            .filter(|b| !configured.contains(b))
            .collect();
        *self.uncovered.lock().unwrap_or_else(|p| p.into_inner()) =
            (Some(Instant::now()), uncovered);
        Ok(v)
    }

    /// The in-sync check as the slot and the end of a cycle may use it:
    /// with controllers, only once the cluster has looked in sync for
    /// [`QUORUM_SPAN`] without a break, since the active controller shows
    /// a voter that just died as caught up for that long.
    pub fn sustained(
        &self,
        check: std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let mut since = self.in_sync_since.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = check {
            *since = None;
            return Err(e);
        }
        if self.cfg().controllers().is_empty() {
            return Ok(());
        }
        let t = *since.get_or_insert_with(Instant::now);
        if t.elapsed() >= QUORUM_SPAN {
            Ok(())
        } else {
            Err(format!(
                "in sync for {:.1}s: the controller quorum must look whole for {:.1}s (a voter \
                 that just died still looks caught up that long)",
                t.elapsed().as_secs_f64(),
                QUORUM_SPAN.as_secs_f64()
            ))
        }
    }

    /// Brokers in the cluster that no agent covers, as last seen.
    pub fn uncovered(&self) -> BTreeSet<i32> {
        self.uncovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// When the cluster was last looked at (for the background loop, which
    /// looks at least every minute so `uncovered` stays current).
    pub fn last_look(&self) -> Option<Instant> {
        self.uncovered.lock().unwrap_or_else(|p| p.into_inner()).0
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
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A coordinator config of broker 1 over `dir` (database, admin token,
    /// file store), with `extra` TOML after its `[[agents]]` entry; the
    /// schedule is suspended when `extra` is empty. No Kafka is reachable.
    pub(crate) fn config(dir: &std::path::Path, extra: &str) -> CoordinatorConfig {
        let token = dir.join("admin.token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:1"
database = "{db}"
admin_token_file = "{token}"
[[agents]]
broker = 1
token_sha256 = "{t1}"
{extra}
[schedule]
schedule = "@every 24h"
suspend = {suspend}
[storage]
url = "file://{store}"
[kafka]
bootstrap_servers = ["127.0.0.1:1"]
"#,
            db = dir.join("state.db").display(),
            token = token.display(),
            store = dir.display(),
            t1 = "1".repeat(64),
            suspend = extra.is_empty(),
        );
        CoordinatorConfig::parse(&text, &dir.join("c.toml")).unwrap()
    }

    /// SIGHUP: schedule, retention, lease, gate, agents and the admin token
    /// apply at once; what the listener, database, store and Kafka client
    /// were built from needs a restart, and such a config is refused whole.
    #[test]
    fn a_reload_applies_what_it_can_and_refuses_the_rest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "");
        let engine = Engine::new(crate::store::open_in_memory(), cfg.clone());
        let store: Arc<dyn ColdStore> =
            Arc::new(kafka_snapshot::storage::FileStore::new(dir.path().into()).unwrap());
        let s = Shared::new(cfg, engine, store).unwrap();
        let two = format!(
            "[[agents]]\nbroker = 2\ntoken_sha256 = \"{}\"",
            "2".repeat(64)
        );
        let mut moved = config(dir.path(), &two);
        moved.server.listen = "127.0.0.1:2".parse().unwrap();
        let e = s.reload(moved).unwrap_err().to_string();
        assert!(
            e.contains("[server]") && e.contains("restart") && e.contains("nothing was reloaded"),
            "{e}"
        );
        assert_eq!(s.cfg().brokers(), vec![1], "nothing applied");
        let changed = s.reload(config(dir.path(), &two)).unwrap();
        assert_eq!(changed, vec!["[schedule]", "[[agents]]"]);
        assert_eq!(s.cfg().brokers(), vec![1, 2]);
        assert!(s.settings().agents.values().any(|b| *b == 2));
        let now = chrono::Utc::now();
        assert!(
            !s.engine().status(now).unwrap().suspended,
            "the engine has it too"
        );
        assert_eq!(
            s.reload(config(dir.path(), &two)).unwrap(),
            Vec::<&str>::new()
        );
    }

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
