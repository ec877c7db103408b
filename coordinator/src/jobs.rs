//! The coordinator's background work: the loop that expires leases,
//! starts cycles and checks the cluster (through the engine's tick), and
//! the jobs that read or change cold storage: verification of new
//! snapshots, retention, and rebuilding the catalog. Storage is never
//! worked on while the engine's lock is held.

use crate::config::CoordinatorConfig;
use crate::engine::ApiError;
use crate::shared::Shared;
use crate::{health, retention};
use chrono::Utc;
use kafka_snapshot::catalog;
use kafka_snapshot::storage::{self, ColdStore, StoreOptions};
use kafka_snapshot::{Error, Result};
use kafka_snapshot_model::api::{PruneResult, PrunedView, RebuildResult};
use kafka_snapshot_model::layout::SnapshotRef;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens cold storage off the runtime: the S3 store runs its own I/O
/// runtime and blocks on it, which is not allowed on a runtime thread.
pub async fn open_store(cfg: &CoordinatorConfig) -> Result<Box<dyn ColdStore>> {
    let url = cfg.storage.url.clone();
    let opts = StoreOptions::from_config(&cfg.storage);
    tokio::task::spawn_blocking(move || storage::open(&url, &opts))
        .await
        .map_err(|_| Error::panicked("opening cold storage"))?
}

/// Plans retention and, unless `dry_run`, deletes in plan order, stopping
/// at the first storage error.
pub fn run_retention(s: &Shared, dry_run: bool) -> PruneResult {
    let now = Utc::now();
    let plan = {
        let e = s.engine();
        let (cands, busy) = match (e.retention_candidates(), e.busy_brokers()) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(err), _) | (_, Err(err)) => {
                return PruneResult {
                    dry_run,
                    deleted: Vec::new(),
                    held: Vec::new(),
                    error: Some(err.to_string()),
                }
            }
        };
        retention::plan(
            &cands,
            &retention::Policy {
                keep_last: s.cfg().retention.keep_last as usize,
                max_age: s.cfg().retention.max_age,
            },
            &busy,
            now,
        )
    };
    let mut out = PruneResult {
        dry_run,
        deleted: Vec::new(),
        held: plan.held.clone(),
        error: None,
    };
    for d in &plan.delete {
        if !dry_run {
            let r = delete_one(s, d);
            if let Err(e) = r {
                out.error = Some(format!(
                    "snapshot {} of broker {}: {e}",
                    d.snapshot_id, d.broker
                ));
                break;
            }
        }
        out.deleted.push(PrunedView {
            broker: d.broker,
            snapshot_id: d.snapshot_id.clone(),
            reason: d.reason.clone(),
        });
    }
    if !dry_run {
        if let Err(e) = s.engine().prune_done(out.error.as_deref(), Utc::now()) {
            tracing::error!("recording retention: {e}");
        }
    }
    out
}

/// Out of the catalog first, then out of cold storage (see
/// `Engine::begin_deletion`). Each engine call is its own statement: the
/// engine lock must not be held while storage is worked on.
fn delete_one(s: &Shared, d: &retention::Deletion) -> std::result::Result<(), String> {
    let begun = s.engine().begin_deletion(d, Utc::now());
    begun.map_err(|e| e.to_string())?;
    if let Err(e) = delete_from_store(s.store.as_ref(), d) {
        let e = e.to_string();
        let recorded = s.engine().deletion_failed(d, &e, Utc::now());
        if let Err(e2) = recorded {
            tracing::error!("recording a failed deletion: {e2}");
        }
        return Err(e);
    }
    let done = s.engine().mark_deleted(d, Utc::now());
    done.map_err(|e| e.to_string())
}

fn delete_from_store(store: &dyn ColdStore, d: &retention::Deletion) -> Result<()> {
    let listed = catalog::list(store, Some(&d.cluster_id), Some(d.broker))?;
    match listed.iter().find(|l| l.snap.snapshot_id == d.snapshot_id) {
        Some(l) => catalog::delete_snapshot(store, l),
        // Already gone from storage: the catalog just catches up.
        None => Ok(()),
    }
}

/// Why a catalog rebuild did not happen.
#[derive(Debug)]
pub enum RebuildError {
    /// Cold storage could not be listed.
    Storage(String),
    Engine(ApiError),
}

pub fn rebuild_catalog(s: &Shared) -> std::result::Result<RebuildResult, RebuildError> {
    let listed = catalog::list(s.store.as_ref(), None, None)
        .map_err(|e| RebuildError::Storage(format!("listing cold storage: {e}")))?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for l in listed {
        match l.status {
            catalog::Status::Complete(m) => {
                found.push(kafka_snapshot_model::protocol::SnapshotSummary::of(&m))
            }
            catalog::Status::Incomplete => {
                skipped.push(format!("{}: incomplete (no manifest)", l.snap.prefix()))
            }
            catalog::Status::Damaged(e) => {
                skipped.push(format!("{}: damaged: {e}", l.snap.prefix()))
            }
        }
    }
    let (before, after) = s
        .engine()
        .rebuild_catalog(&found, Utc::now())
        .map_err(RebuildError::Engine)?;
    Ok(RebuildResult {
        before,
        after,
        skipped,
    })
}

/// Verifies one snapshot and records the result. Returns false when cold
/// storage could not be read (nothing is recorded: the snapshot is not
/// known to be bad, and is verified again later).
fn verify_one(s: &Shared, cluster: &str, broker: i32, id: &str) -> bool {
    let snap = SnapshotRef {
        cluster_id: cluster.to_string(),
        broker,
        snapshot_id: id.to_string(),
    };
    let result = match kafka_snapshot::verify::verify(s.store.as_ref(), &snap) {
        Ok(_) => Ok(()),
        Err(e) if e.is_unreadable() => {
            tracing::warn!(
                broker,
                snapshot = id,
                error = %e,
                "cannot read the snapshot back from cold storage now; verifying it again in {:?}",
                VERIFY_RETRY
            );
            return false;
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = s
        .engine()
        .record_verification(cluster, broker, id, result, Utc::now())
    {
        tracing::error!("recording the verification of {id}: {e}");
    }
    true
}

/// How often the background loop looks at the cluster when nothing else
/// does, to notice brokers no agent covers.
const UNCOVERED_LOOK: Duration = Duration::from_secs(60);

/// Pause before verifying again after cold storage could not be read.
const VERIFY_RETRY: Duration = Duration::from_secs(10);

// ----- the background loop ---------------------------------------------------

/// Every second: the engine's tick, the cluster checks it asks for, and
/// verification and retention on blocking threads, one job of each kind
/// at a time. Returns once `shutdown` fires and the jobs it started have
/// ended (each ends after the step it is in).
pub async fn background(s: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut jobs = tokio::task::JoinSet::new();
    tick_loop(&s, &mut shutdown, &mut jobs).await;
    s.stopping.store(true, Ordering::SeqCst);
    while let Some(done) = jobs.join_next().await {
        if let Err(e) = done {
            tracing::error!("a background job failed: {e}");
        }
    }
}

async fn tick_loop(
    s: &Arc<Shared>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    jobs: &mut tokio::task::JoinSet<()>,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        while jobs.try_join_next().is_some() {}
        let needs = match s.engine().tick(Utc::now()) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("coordinator tick: {e}");
                continue;
            }
        };
        // Even with nothing to check, look at the cluster every minute so
        // that brokers no agent covers are noticed.
        if !needs.settle_check
            && !needs.final_check
            && s.last_look().is_none_or(|t| t.elapsed() >= UNCOVERED_LOOK)
        {
            if let Err(e) = s.view().await {
                tracing::debug!("looking at the cluster: {e}");
            }
        }
        if needs.settle_check || needs.final_check {
            let due = {
                let mut last = s.last_check.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= s.cfg().gate.check_interval);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                let check = match s.view().await {
                    Ok(v) => health::in_sync(&v, &s.cfg().brokers()),
                    Err(e) => Err(format!("cluster not reachable: {e}")),
                };
                if let Err(e) = s.engine().apply_cluster_check(check, Utc::now()) {
                    tracing::error!("applying the cluster check: {e}");
                }
            }
        }
        let verify_due = s
            .verify_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| Instant::now() >= t);
        if needs.verify && verify_due && !s.verifying.swap(true, Ordering::SeqCst) {
            let s2 = s.clone();
            jobs.spawn_blocking(move || {
                while !s2.stopping.load(Ordering::SeqCst) {
                    // Its own statement: the engine lock must not be held
                    // while verifying (verify_one records the result).
                    let next = s2.engine().next_unverified();
                    let Ok(Some((c, b, id))) = next else { break };
                    if !verify_one(&s2, &c, b, &id) {
                        *s2.verify_after.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now() + VERIFY_RETRY);
                        break;
                    }
                }
                s2.verifying.store(false, Ordering::SeqCst);
            });
        }
        if needs.prune
            && s.cfg().retention.prune_after_cycle
            && !s.pruning.swap(true, Ordering::SeqCst)
        {
            let s2 = s.clone();
            jobs.spawn_blocking(move || {
                let r = run_retention(&s2, false);
                tracing::info!(deleted = r.deleted.len(), error = ?r.error, "retention applied");
                s2.pruning.store(false, Ordering::SeqCst);
            });
        } else if needs.prune && !s.cfg().retention.prune_after_cycle {
            let _ = s.engine().prune_done(None, Utc::now());
        }
    }
}
