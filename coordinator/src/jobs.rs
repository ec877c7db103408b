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
    let (plan, busy) = {
        let e = s.engine();
        let inputs = (e.retention_candidates(), e.busy_brokers(), e.kept_set());
        let (cands, busy, kept) = match inputs {
            (Ok(c), Ok(b), Ok(k)) => (c, b, k),
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                return PruneResult {
                    dry_run,
                    deleted: Vec::new(),
                    held: Vec::new(),
                    error: Some(err.to_string()),
                    sets_dropped: Vec::new(),
                    abandoned_removed: Vec::new(),
                    objects: None,
                }
            }
        };
        let plan = retention::plan(
            &cands,
            &retention::Policy {
                keep_last: s.cfg().retention.keep_last as usize,
                max_age: s.cfg().retention.max_age,
            },
            &busy,
            kept.as_ref(),
            now,
        );
        (plan, busy)
    };
    let mut out = PruneResult {
        dry_run,
        deleted: Vec::new(),
        held: plan.held.clone(),
        error: None,
        sets_dropped: Vec::new(),
        abandoned_removed: Vec::new(),
        objects: None,
    };
    for d in &plan.delete {
        if !dry_run {
            match delete_one(s, d) {
                Ok(None) => {}
                Ok(Some(kept)) => {
                    out.held.push((d.broker, kept));
                    continue;
                }
                Err(e) => {
                    out.error = Some(format!(
                        "snapshot {} of broker {}: {e}",
                        d.snapshot_id, d.broker
                    ));
                    break;
                }
            }
        }
        out.deleted.push(PrunedView {
            broker: d.broker,
            snapshot_id: d.snapshot_id.clone(),
            reason: d.reason.clone(),
        });
    }
    if out.error.is_none() {
        drop_empty_sets(s, &plan, dry_run, &mut out);
    }
    if out.error.is_none() {
        if let Some(listed) = remove_abandoned(s, &busy, dry_run, &mut out) {
            sweep_objects(s, &busy, &listed, dry_run, &mut out);
        }
    }
    if !dry_run {
        if let Err(e) = s.engine().prune_done(out.error.as_deref(), Utc::now()) {
            tracing::error!("recording retention: {e}");
        }
    }
    out
}

/// Sets none of whose snapshots is left lose their record: out of cold
/// storage first, then out of the catalog, so a coordinator killed in
/// between still lists the set (with every snapshot "not in the catalog")
/// and drops it at the next run; never the other way round, which would
/// leave a record in storage that a rebuild brings back. A dry run names
/// the sets the planned deletions would empty.
fn drop_empty_sets(s: &Shared, plan: &retention::Plan, dry_run: bool, out: &mut PruneResult) {
    let going: std::collections::BTreeSet<(i32, String)> = if dry_run {
        plan.delete
            .iter()
            .map(|d| (d.broker, d.snapshot_id.clone()))
            .collect()
    } else {
        Default::default()
    };
    let empty = match s.engine().empty_sets(&going) {
        Ok(e) => e,
        Err(e) => {
            out.error = Some(format!("listing snapshot sets: {e}"));
            return;
        }
    };
    for set in empty {
        if !dry_run {
            if let Err(e) =
                kafka_snapshot::sets::delete(s.store.as_ref(), &set.cluster_id, &set.set_id)
            {
                out.error = Some(format!("the record of snapshot set {}: {e}", set.set_id));
                return;
            }
            if let Err(e) = s.engine().set_dropped(&set, Utc::now()) {
                out.error = Some(format!("snapshot set {}: {e}", set.set_id));
                return;
            }
        }
        out.sets_dropped.push(set.set_id);
    }
}

/// Incomplete snapshots of this cluster that no run will finish
/// ([`catalog::abandoned`]): agents remove their own at their next run,
/// but agents whose storage credentials may not delete (the
/// least-privilege setup) leave them, and nobody else would. They were
/// never in the catalog, so only storage changes.
///
/// Returns the cluster's snapshots in storage without those (`None` when
/// it stopped at an error, or the cluster is not known yet).
fn remove_abandoned(
    s: &Shared,
    busy: &std::collections::BTreeSet<i32>,
    dry_run: bool,
    out: &mut PruneResult,
) -> Option<Vec<catalog::Listed>> {
    let cluster = match s.engine().cluster_id() {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            out.error = Some(e.to_string());
            return None;
        }
    };
    let listed = match catalog::list(s.store.as_ref(), Some(&cluster), None) {
        Ok(l) => l,
        Err(e) => {
            out.error = Some(format!(
                "listing cold storage for incomplete snapshots: {e}"
            ));
            return None;
        }
    };
    let abandoned: Vec<SnapshotRef> = catalog::abandoned(&listed, &cluster, busy)
        .into_iter()
        .map(|l| l.snap.clone())
        .collect();
    for l in catalog::abandoned(&listed, &cluster, busy) {
        if !dry_run {
            for o in &l.objects {
                if let Err(e) = s.store.delete(&o.key) {
                    out.error = Some(format!("incomplete snapshot {}: {e}", l.snap.prefix()));
                    return None;
                }
            }
            tracing::info!(snapshot = %l.snap.snapshot_id, broker = l.snap.broker,
                objects = l.objects.len(),
                "removed an incomplete snapshot no run will finish (a newer one of this node is complete)");
        }
        out.abandoned_removed.push(l.snap.prefix());
    }
    Some(
        listed
            .into_iter()
            .filter(|l| l.snap.cluster_id == cluster && !abandoned.contains(&l.snap))
            .collect(),
    )
}

/// Removes the content objects that no snapshot references any more (see
/// [`retention::plan_objects`]). Nothing goes while a node takes a
/// snapshot (`busy`), while an incomplete snapshot of the cluster is in
/// storage (its run decides which objects exist after writing its
/// archive), or while a manifest cannot be read. Right before removing,
/// the snapshots in storage are listed again: one that appeared since the
/// plan defers the removal to the next run. Right after, any snapshot that
/// appeared meanwhile and references a removed object is reported loudly.
fn sweep_objects(
    s: &Shared,
    busy: &std::collections::BTreeSet<i32>,
    listed: &[catalog::Listed],
    dry_run: bool,
    out: &mut PruneResult,
) {
    let Some(cluster) = listed
        .first()
        .map(|l| l.snap.cluster_id.clone())
        .or_else(|| s.engine().cluster_id().ok().flatten())
    else {
        return;
    };
    let store = s.store.as_ref();
    let present = match kafka_snapshot::objects::present(store, &cluster) {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(format!("listing content objects: {e}"));
            return;
        }
    };
    let mut referenced = std::collections::HashSet::new();
    let mut blocked = None;
    for l in listed {
        match &l.status {
            catalog::Status::Complete(m) => referenced.extend(m.referenced_objects().cloned()),
            catalog::Status::Damaged(why) => {
                blocked = Some(format!(
                    "the manifest of snapshot {} of node {} cannot be read ({why}); it may \
                     reference any object",
                    l.snap.snapshot_id, l.snap.broker
                ))
            }
            catalog::Status::Incomplete => {
                blocked = Some(format!(
                    "snapshot {} of node {} is being written (or was left incomplete)",
                    l.snap.snapshot_id, l.snap.broker
                ))
            }
        }
    }
    if !busy.is_empty() {
        blocked = Some(format!("node(s) {busy:?} are taking a snapshot"));
    }
    let blocked_now = blocked.is_some();
    if present.is_empty() && referenced.is_empty() && blocked.is_none() {
        // No object, but maybe what an interrupted first upload left.
        match kafka_snapshot::objects::leftovers(store, &cluster) {
            Ok((t, u)) if t.is_empty() && u.is_empty() => return,
            Ok(_) => {}
            Err(e) => {
                out.error = Some(format!("listing content objects: {e}"));
                return;
            }
        }
    } else if present.is_empty() && referenced.is_empty() {
        return;
    }
    let grace = s.cfg().retention.object_grace;
    let mut plan = {
        let mut since = s
            .unreferenced_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if dry_run {
            let mut copy = since.clone();
            retention::plan_objects(&present, &referenced, blocked, &mut copy, Utc::now(), grace)
        } else {
            retention::plan_objects(
                &present,
                &referenced,
                blocked,
                &mut since,
                Utc::now(),
                grace,
            )
        }
    };
    if plan.sweep.deferred.is_none() && !blocked_now {
        match kafka_snapshot::objects::leftovers(store, &cluster) {
            Ok((temporary, uploads)) => {
                plan.sweep.leftovers_removed = (temporary.len() + uploads.len()) as u64;
                if !dry_run {
                    let removed = temporary
                        .iter()
                        .try_for_each(|k| store.delete(k))
                        .and_then(|()| uploads.iter().try_for_each(|u| store.abort_upload(u)));
                    if let Err(e) = removed {
                        out.error = Some(format!("removing what interrupted uploads left: {e}"));
                        return;
                    }
                }
            }
            Err(e) => {
                out.error = Some(format!("listing content objects: {e}"));
                return;
            }
        }
    }
    if dry_run || plan.remove.is_empty() {
        out.objects = Some(plan.sweep);
        return;
    }
    let before: std::collections::BTreeSet<&SnapshotRef> = listed.iter().map(|l| &l.snap).collect();
    let appeared = |now: &[SnapshotRef]| -> Vec<SnapshotRef> {
        now.iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect()
    };
    match snapshot_refs(store, &cluster) {
        Ok(now) if appeared(&now).is_empty() => {}
        Ok(now) => {
            let new = appeared(&now);
            plan.sweep.removed = 0;
            plan.sweep.removed_bytes = 0;
            plan.sweep.deferred = Some(format!(
                "snapshot {} of node {} appeared while the sweep ran",
                new[0].snapshot_id, new[0].broker
            ));
            out.objects = Some(plan.sweep);
            return;
        }
        Err(e) => {
            out.error = Some(format!("listing snapshots before removing objects: {e}"));
            return;
        }
    }
    kafka_snapshot::failpoint("before-object-removal");
    {
        // An object uploaded again after this removal is read again.
        let mut verified = s.verified_objects.lock().unwrap_or_else(|p| p.into_inner());
        for (sha, _) in &plan.remove {
            if let Some(k) = object_id(sha) {
                verified.remove(&k);
            }
        }
    }
    let mut removed = std::collections::HashSet::new();
    for (sha, _) in &plan.remove {
        let key = kafka_snapshot_model::layout::content_object_key(&cluster, sha);
        if let Err(e) = store.delete(&key) {
            out.error = Some(format!("content object {key}: {e}"));
            break;
        }
        removed.insert(sha.clone());
    }
    tracing::info!(
        objects = removed.len(),
        bytes = plan.sweep.removed_bytes,
        "removed content objects no snapshot references"
    );
    // A snapshot that slipped in between the last listing and the removal.
    if let Ok(now) = snapshot_refs(store, &cluster) {
        for snap in appeared(&now) {
            let Ok(m) = catalog::load_manifest(store, &snap) else {
                continue;
            };
            // An encrypted manifest's entries are sealed: its names say
            // whether, not which file.
            let hit = m
                .referenced_objects()
                .find(|h| removed.contains(*h))
                .map(|h| {
                    m.object_entries()
                        .find(|e| e.object_names().contains(h))
                        .map_or_else(|| format!("object {h}"), |e| e.path.clone())
                });
            if let Some(path) = hit {
                let msg = format!(
                    "snapshot {} of node {} was committed while retention removed content \
                     objects, and references one of them ({path}): it is not complete; take a \
                     new snapshot of that node",
                    snap.snapshot_id, snap.broker
                );
                tracing::error!("{msg}");
                out.error = Some(msg);
            }
        }
    }
    if removed.len() < plan.remove.len() {
        plan.sweep.removed = removed.len() as u64;
        plan.sweep.removed_bytes = plan
            .remove
            .iter()
            .filter(|(h, _)| removed.contains(h))
            .map(|(_, n)| n)
            .sum();
    }
    out.objects = Some(plan.sweep);
}

/// Every snapshot of `cluster` in storage, complete or not: keys only.
fn snapshot_refs(store: &dyn ColdStore, cluster: &str) -> Result<Vec<SnapshotRef>> {
    let mut refs: Vec<SnapshotRef> = store
        .list(&kafka_snapshot_model::layout::list_prefix(
            Some(cluster),
            None,
        ))?
        .into_iter()
        .filter_map(|o| kafka_snapshot_model::layout::parse_key(&o.key).map(|(r, _)| r))
        .collect();
    refs.dedup();
    Ok(refs)
}

/// Out of the catalog first, then out of cold storage (see
/// `Engine::begin_deletion`). Each engine call is its own statement: the
/// engine lock must not be held while storage is worked on. `Some`: kept,
/// and why (a restore order made since the plan reads it).
fn delete_one(s: &Shared, d: &retention::Deletion) -> std::result::Result<Option<String>, String> {
    let begun = s.engine().begin_deletion(d, Utc::now());
    if let Some(kept) = begun.map_err(|e| e.to_string())? {
        return Ok(Some(kept));
    }
    if let Err(e) = delete_from_store(s.store.as_ref(), d) {
        let e = e.to_string();
        let recorded = s.engine().deletion_failed(d, &e, Utc::now());
        if let Err(e2) = recorded {
            tracing::error!("recording a failed deletion: {e2}");
        }
        return Err(e);
    }
    let done = s.engine().mark_deleted(d, Utc::now());
    done.map(|()| None).map_err(|e| e.to_string())
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

/// Rebuilds the catalog from the manifests in cold storage: of this
/// coordinator's cluster only. Another cluster's snapshots in the same
/// store are counted and logged, never listed (so never kept, deleted or
/// restored by this coordinator).
pub fn rebuild_catalog(s: &Shared) -> std::result::Result<RebuildResult, RebuildError> {
    let ours = s
        .engine()
        .cluster_id()
        .map_err(RebuildError::Engine)?
        .ok_or_else(|| {
            RebuildError::Engine(ApiError::Unavailable(
                "catalog rebuild: this coordinator does not know its cluster.id yet (it has not \
                 reached the cluster): set [cluster] id in its config, or wait until it reaches \
                 the cluster; nothing was changed"
                    .into(),
            ))
        })?;
    let listed = catalog::list(s.store.as_ref(), None, None)
        .map_err(|e| RebuildError::Storage(format!("listing cold storage: {e}")))?;
    let mut found = Vec::new();
    let mut referenced = std::collections::HashSet::new();
    let mut skipped = Vec::new();
    let mut others: std::collections::BTreeMap<String, usize> = Default::default();
    // Snapshot id -> cluster, of other clusters' complete snapshots: a set
    // record of this cluster naming one of them is not trusted.
    let mut foreign: std::collections::BTreeMap<String, String> = Default::default();
    for l in listed {
        if l.snap.cluster_id != ours {
            if matches!(l.status, catalog::Status::Complete(_)) {
                *others.entry(l.snap.cluster_id.clone()).or_default() += 1;
                foreign.insert(l.snap.snapshot_id.clone(), l.snap.cluster_id.clone());
            }
            continue;
        }
        match l.status {
            catalog::Status::Complete(m) => {
                referenced.extend(m.referenced_objects().cloned());
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
    let listed_sets = kafka_snapshot::sets::list(s.store.as_ref(), &ours)
        .map_err(|e| RebuildError::Storage(format!("listing snapshot set records: {e}")))?;
    let (sets, sets_rejected) = check_sets(listed_sets, &found, &foreign);
    let others: Vec<(String, usize)> = others.into_iter().collect();
    for (cluster, n) in &others {
        tracing::info!(
            cluster = %cluster,
            snapshots = n,
            "catalog rebuild: cold storage holds snapshots of another cluster; left alone"
        );
    }
    let present = kafka_snapshot::objects::present(s.store.as_ref(), &ours)
        .map_err(|e| RebuildError::Storage(format!("listing content objects: {e}")))?;
    let objects = (!present.is_empty()).then(|| retention::object_usage(&present, &referenced));
    let (before, after) = s
        .engine()
        .rebuild_catalog(&found, &others, &sets, &sets_rejected, Utc::now())
        .map_err(RebuildError::Engine)?;
    Ok(RebuildResult {
        before,
        after,
        skipped,
        other_clusters: others,
        sets: sets.len(),
        sets_rejected,
        objects,
    })
}

/// Which set records a rebuild trusts: intact, of this cluster (both
/// checked as they are read), and naming no snapshot of another cluster
/// nor a snapshot of this one with another manifest than it recorded. A
/// snapshot it names that storage no longer holds (retention deleted it)
/// is no reason to distrust it: the set lists that node as not in the
/// catalog. The others are returned as "key: why".
fn check_sets(
    listed: Vec<kafka_snapshot::sets::FoundSet>,
    found: &[kafka_snapshot_model::protocol::SnapshotSummary],
    foreign: &std::collections::BTreeMap<String, String>,
) -> (Vec<kafka_snapshot_model::sets::SetRecord>, Vec<String>) {
    let mut trusted = Vec::new();
    let mut rejected = Vec::new();
    for f in listed {
        let checked = f.record.and_then(|r| {
            for n in &r.nodes {
                let Some(id) = &n.snapshot_id else { continue };
                let ours = found
                    .iter()
                    .find(|s| s.broker == n.node && &s.snapshot_id == id);
                match (ours, foreign.get(id)) {
                    (Some(s), _) if n.manifest_sha256.as_deref() != Some(&s.manifest_sha256) => {
                        return Err(format!(
                            "names snapshot {id} of node {} with manifest {}, but the one in \
                             storage has manifest {}",
                            n.node,
                            n.manifest_sha256.as_deref().unwrap_or("(none)"),
                            s.manifest_sha256
                        ))
                    }
                    (Some(_), _) => {}
                    (None, Some(other)) => {
                        return Err(format!(
                            "names snapshot {id} of node {}, which is a snapshot of cluster \
                             {other}",
                            n.node
                        ))
                    }
                    (None, None) => {}
                }
            }
            Ok(r)
        });
        match checked {
            Ok(r) => trusted.push(r),
            Err(why) => {
                tracing::warn!(key = %f.key, "catalog rebuild: set record not trusted: {why}");
                rejected.push(format!("{}: {why}", f.key));
            }
        }
    }
    (trusted, rejected)
}

/// Writes the records of ended snapshot sets to cold storage, oldest
/// first, and marks each stored. Returns false at the first storage error
/// (nothing is marked; the set is written again later). A set retention
/// dropped while its record was being written gets that record deleted
/// again, so none is left behind to be brought back by a rebuild.
fn store_sets(s: &Shared) -> bool {
    // What a coordinator killed while writing a record left: only this
    // job writes there, so none of it is in use.
    let cluster = s.engine().cluster_id();
    if let Ok(Some(cluster)) = cluster {
        if let Err(e) = kafka_snapshot::sets::remove_leftovers(s.store.as_ref(), &cluster) {
            tracing::warn!(error = %e, "cannot clean up set records in cold storage now");
            return false;
        }
    }
    while !s.stopping.load(Ordering::SeqCst) {
        // Its own statement: the engine lock must not be held while
        // storage is written.
        let next = s.engine().next_unstored_set();
        let mut record = match next {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::error!("reading the snapshot sets to store: {e}");
                break;
            }
        };
        if let Err(e) = kafka_snapshot::sets::write(s.store.as_ref(), &mut record) {
            tracing::warn!(
                set = %record.set_id,
                error = %e,
                "cannot write the snapshot set record to cold storage now; trying again in {:?}",
                VERIFY_RETRY
            );
            return false;
        }
        let stored = s.engine().set_stored(&record.set_id, Utc::now());
        match stored {
            Ok(true) => tracing::info!(set = %record.set_id, "snapshot set record stored"),
            Ok(false) => {
                let gone = kafka_snapshot::sets::delete(
                    s.store.as_ref(),
                    &record.cluster_id,
                    &record.set_id,
                );
                if let Err(e) = gone {
                    tracing::warn!(set = %record.set_id, error = %e,
                        "deleting the record of a set dropped meanwhile");
                }
            }
            Err(e) => {
                tracing::error!(set = %record.set_id, "recording a stored set: {e}");
                break;
            }
        }
    }
    true
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
    let verified = |sha: &str| {
        let set = s.verified_objects.lock().unwrap_or_else(|p| p.into_inner());
        object_id(sha).is_some_and(|k| set.contains(&k))
    };
    let result = match kafka_snapshot::verify::verify_known(s.store.as_ref(), &snap, &verified) {
        Ok((m, report)) => {
            if m.is_incremental() {
                tracing::info!(
                    broker,
                    snapshot = id,
                    objects_read = report.objects_read,
                    objects_listed = report.objects_listed,
                    "verified an incremental snapshot: its new content objects read, those verified before found by listing"
                );
                let mut set = s.verified_objects.lock().unwrap_or_else(|p| p.into_inner());
                set.extend(m.referenced_objects().filter_map(|sha| object_id(sha)));
            }
            Ok(Some(report.contents_checked))
        }
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

/// A content object's name (hex SHA-256) as bytes.
fn object_id(sha: &str) -> Option<[u8; 32]> {
    hex::decode(sha).ok()?.try_into().ok()
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

/// Runs the `before_cycle` (`before`) or `after_cycle` hook of `cycle`
/// and records how it ended. The engine is not held while it runs.
async fn run_cycle_hook(s: &Arc<Shared>, cycle: i64, before: bool) {
    let cfg = s.cfg();
    let (name, command) = match before {
        true => ("before_cycle", cfg.hooks.before_cycle.clone()),
        false => ("after_cycle", cfg.hooks.after_cycle.clone()),
    };
    let Some(command) = command else {
        return;
    };
    let mut env = vec![
        ("KAFKA_SNAPSHOT_CYCLE_ID", cycle.to_string()),
        ("KAFKA_SNAPSHOT_HOOK", name.to_string()),
    ];
    if !before {
        let state = s
            .engine()
            .cycle_state(cycle)
            .ok()
            .flatten()
            .unwrap_or_default();
        env.push(("KAFKA_SNAPSHOT_CYCLE_STATE", state));
    }
    tracing::info!(cycle, hook = name, "running hook");
    let result = kafka_snapshot::command::run(&command, cfg.hooks.timeout, &env)
        .await
        .map_err(|e| format!("`{command}`: {e}"));
    if let Err(e) = &result {
        tracing::error!(cycle, hook = name, "hook failed: {e}");
    }
    let now = Utc::now();
    let recorded = match before {
        true => s.engine().before_cycle_ran(cycle, result, now),
        false => s.engine().after_cycle_ran(cycle, result, now),
    };
    if let Err(e) = recorded {
        tracing::error!(cycle, hook = name, "recording the hook's result: {e}");
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
        if let Some(cycle) = needs.before_cycle {
            run_cycle_hook(s, cycle, true).await;
        }
        if let Some(cycle) = needs.after_cycle {
            run_cycle_hook(s, cycle, false).await;
        }
        // Even with nothing to check, look at the cluster every minute so
        // that brokers no agent covers are noticed.
        if !needs.settle_check
            && !needs.final_check
            && !needs.cluster_restore_check
            && s.last_look().is_none_or(|t| t.elapsed() >= UNCOVERED_LOOK)
        {
            if let Err(e) = s.view().await {
                tracing::debug!("looking at the cluster: {e}");
            }
        }
        if needs.settle_check || needs.final_check || needs.cluster_restore_check {
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
                    Ok(v) => health::in_sync(&v, &s.cfg().brokers(), &s.cfg().controllers()),
                    Err(e) => Err(format!("cluster not reachable: {e}")),
                };
                let check = s.sustained(check);
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
        let store_due = s
            .store_sets_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| Instant::now() >= t);
        if needs.store_sets && store_due && !s.storing_sets.swap(true, Ordering::SeqCst) {
            let s2 = s.clone();
            jobs.spawn_blocking(move || {
                if !store_sets(&s2) {
                    *s2.store_sets_after
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + VERIFY_RETRY);
                }
                s2.storing_sets.store(false, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use kafka_snapshot::archive::ArchiveOptions;
    use kafka_snapshot::snapshot::{capture, BrokerTimes, CaptureRequest};
    use kafka_snapshot::storage::{FileStore, ObjectMeta, ObjectWriter};
    use kafka_snapshot_model::manifest::CaptureMode;
    use std::io::Read;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    const OURS: &str = "JobsTestClusterAAAAAAA";
    const THEIRS: &str = "JobsTestClusterBBBBBBB";

    fn record(case: &str, inputs: u64) {
        kafka_snapshot_testkit::report::record("security", case, &[("inputs", inputs)]);
    }

    /// Commits a snapshot of `broker` of `cluster` (small generated log
    /// dirs under `root`) to the file store at `store`.
    fn commit(root: &Path, store: &Path, cluster: &str, broker: i32, seed: u64) -> String {
        let dirs = vec![root.join(format!("data/{cluster}-{broker}-{seed}/logs"))];
        let mut spec = kafka_snapshot_testkit::Spec::small(cluster, broker, dirs.clone());
        spec.seed = seed;
        kafka_snapshot_testkit::generate(&spec).unwrap();
        let c = capture(&CaptureRequest {
            log_dirs: dirs,
            mode: CaptureMode::Copy,
            allow_unclean: false,
            staging_min_free: kafka_snapshot::settings::FreeSpace::Percent(1.0),
        })
        .unwrap();
        let store = FileStore::new(store.to_path_buf()).unwrap();
        let times = BrokerTimes {
            stopped: None,
            restarted: None,
        };
        c.commit(&store, &ArchiveOptions::default(), times)
            .unwrap()
            .snapshot_id
    }

    /// The file store, except that while `failing` every archive read
    /// fails once half of the object has been read: a connection reset in
    /// the middle of the stream, as S3 or an NFS mount going away does.
    struct HalfReadable {
        inner: FileStore,
        failing: Arc<AtomicBool>,
    }

    struct FailsHalfway {
        inner: Box<dyn Read + Send>,
        left: u64,
    }

    impl Read for FailsHalfway {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "operation timed out",
                ));
            }
            let max = buf.len().min(self.left as usize);
            let n = self.inner.read(&mut buf[..max])?;
            self.left -= n as u64;
            Ok(n)
        }
    }

    impl ColdStore for HalfReadable {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
            self.inner.create(key)
        }
        fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
            let inner = self.inner.open(key)?;
            if !self.failing.load(Ordering::SeqCst) || !key.ends_with("archive.tar.zst") {
                return Ok(inner);
            }
            let size = self.inner.stat(key)?.unwrap_or(0);
            Ok(Box::new(FailsHalfway {
                inner,
                left: size / 2,
            }))
        }
        fn stat(&self, key: &str) -> Result<Option<u64>> {
            self.inner.stat(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
    }

    fn shared(dir: &Path, store: Arc<dyn ColdStore>, keep_last: u32) -> Shared {
        let mut cfg = crate::shared::tests::config(dir, &format!("[cluster]\nid = \"{OURS}\""));
        cfg.retention.keep_last = keep_last;
        let engine = Engine::new(crate::store::open_in_memory(), cfg.clone());
        Shared::new(cfg, engine, store).unwrap()
    }

    /// Commits an incremental snapshot of `dirs` (files of 64 KiB and more
    /// as 64 KiB chunks) to the file store at `store`.
    fn commit_incremental(dirs: &[std::path::PathBuf], store: &Path) -> String {
        let c = capture(&CaptureRequest {
            log_dirs: dirs.to_vec(),
            mode: CaptureMode::Copy,
            allow_unclean: false,
            staging_min_free: kafka_snapshot::settings::FreeSpace::Percent(1.0),
        })
        .unwrap();
        let opts = ArchiveOptions {
            objects: Some(kafka_snapshot::objects::ObjectOptions {
                min_size: 64 << 10,
                chunk_size: 64 << 10,
                hash_cache: None,
                object_key: None,
            }),
            ..ArchiveOptions::default()
        };
        let store = FileStore::new(store.to_path_buf()).unwrap();
        c.commit(&store, &opts, BrokerTimes::default())
            .unwrap()
            .snapshot_id
    }

    /// The verification of each new incremental snapshot reads the objects
    /// no earlier verification read, finds the others by listing, and
    /// still fails on one that is gone; `verify` reads everything.
    #[test]
    fn verifying_a_new_incremental_snapshot_reads_only_its_new_objects() {
        let t = tempfile::tempdir().unwrap();
        let dirs = vec![t.path().join("data/logs")];
        let mut spec = kafka_snapshot_testkit::Spec::small(OURS, 1, dirs.clone());
        spec.total_bytes = 4 << 20;
        spec.segment_bytes = 512 << 10;
        kafka_snapshot_testkit::generate(&spec).unwrap();
        let first = commit_incremental(&dirs, t.path());
        let fs_store: Arc<dyn ColdStore> =
            Arc::new(FileStore::new(t.path().to_path_buf()).unwrap());
        let s = shared(t.path(), fs_store.clone(), 7);
        rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        assert!(verify_one(&s, OURS, 1, &first));
        let all = kafka_snapshot::objects::present(fs_store.as_ref(), OURS).unwrap();
        assert!(all.len() > 8, "{} objects", all.len());
        assert_eq!(s.verified_objects.lock().unwrap().len(), all.len());

        // Another snapshot after an append to one segment: only the
        // chunks from the one the append began in are new.
        let log = walk_files(&dirs[0])
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&[7u8; 100_000]);
        std::fs::write(&log, &bytes).unwrap();
        let second = commit_incremental(&dirs, t.path());
        let snap = |id: &str| SnapshotRef {
            cluster_id: OURS.into(),
            broker: 1,
            snapshot_id: id.into(),
        };
        let known = |sha: &str| {
            let set = s.verified_objects.lock().unwrap();
            object_id(sha).is_some_and(|k| set.contains(&k))
        };
        let (m, r) =
            kafka_snapshot::verify::verify_known(fs_store.as_ref(), &snap(&second), &known)
                .unwrap();
        let distinct: std::collections::HashSet<&String> = m.referenced_objects().collect();
        let new = distinct.iter().filter(|c| !known(c)).count() as u64;
        assert!((2..=3).contains(&new), "{new} new objects");
        assert_eq!(
            (r.objects_read, r.objects_listed),
            (new, distinct.len() as u64 - new)
        );
        assert!(r.contents_checked);
        assert!(verify_one(&s, OURS, 1, &second));
        assert_eq!(
            s.verified_objects.lock().unwrap().len(),
            all.len() + new as usize
        );

        // An object verified before and damaged since is not read again
        // by the next one's verification; `verify` (all of it) finds it.
        let victim = m
            .referenced_objects()
            .find(|c| all.contains_key(*c))
            .unwrap()
            .clone();
        let key = kafka_snapshot_model::layout::content_object_key(OURS, &victim);
        let path = t.path().join(&key);
        let mut stored = std::fs::read(&path).unwrap();
        let mid = stored.len() / 2;
        stored[mid] ^= 0xff;
        std::fs::write(&path, stored).unwrap();
        let (_, r) =
            kafka_snapshot::verify::verify_known(fs_store.as_ref(), &snap(&second), &known)
                .unwrap();
        assert_eq!(r.objects_read, 0);
        let err = kafka_snapshot::verify::verify(fs_store.as_ref(), &snap(&second)).unwrap_err();
        assert!(err.to_string().contains(&victim), "{err}");
        // One that is gone fails it either way.
        std::fs::remove_file(&path).unwrap();
        let err = kafka_snapshot::verify::verify_known(fs_store.as_ref(), &snap(&second), &known)
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// Hole 5: cold storage failing in the middle of reading an archive
    /// back made the coordinator record the snapshot as FAILED for good.
    /// It is not verified, retried, and verified once storage reads again.
    #[test]
    fn a_storage_error_in_the_middle_of_verification_is_retried_not_recorded() {
        let t = tempfile::tempdir().unwrap();
        let id = commit(t.path(), t.path(), OURS, 1, 1);
        let failing = Arc::new(AtomicBool::new(true));
        let store = HalfReadable {
            inner: FileStore::new(t.path().to_path_buf()).unwrap(),
            failing: failing.clone(),
        };
        let s = shared(t.path(), Arc::new(store), 7);
        rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        for attempt in 0..3 {
            assert!(
                !verify_one(&s, OURS, 1, &id),
                "attempt {attempt}: an unreadable archive is not a verification result"
            );
            let rows = s.engine().snapshots(None).unwrap();
            assert_eq!(
                (rows[0].verify_ok, rows[0].verified_at.as_deref()),
                (None, None),
                "attempt {attempt}: {:?}",
                rows[0].verify_message
            );
        }
        assert_eq!(
            s.engine().next_unverified().unwrap().map(|n| n.2),
            Some(id.clone()),
            "still waiting for its verification"
        );
        // The protection stays: it is the newest snapshot not known to be bad.
        let order = s
            .engine()
            .create_restore(1, None, false, Utc::now())
            .unwrap();
        assert_eq!(order.snapshot_id, id);
        failing.store(false, Ordering::SeqCst);
        assert!(verify_one(&s, OURS, 1, &id));
        let rows = s.engine().snapshots(None).unwrap();
        assert_eq!(
            rows[0].verify_ok,
            Some(true),
            "{:?}",
            rows[0].verify_message
        );
        record(
            "5. a storage error mid-verification is retried, never recorded as failed",
            3,
        );
    }

    /// A rebuilt coordinator gets its snapshot sets back from the records in
    /// cold storage; a record that fails its checksum, names another
    /// cluster's snapshot or is of another cluster is reported and not
    /// listed. Once every snapshot of a set is gone, retention drops its
    /// record from storage, then from the catalog.
    #[test]
    fn a_rebuild_reads_set_records_back_and_distrusts_bad_ones() {
        use kafka_snapshot_model::layout::set_key;
        use kafka_snapshot_model::sets::{format_set_id, SetNode, SetRecord, SET_FORMAT_VERSION};
        let t = tempfile::tempdir().unwrap();
        let a1 = commit(t.path(), t.path(), OURS, 1, 1);
        let a2 = commit(t.path(), t.path(), OURS, 2, 2);
        let theirs = commit(t.path(), t.path(), THEIRS, 2, 3);
        let fs = FileStore::new(t.path().to_path_buf()).unwrap();
        let manifest = |b: i32, id: &str| {
            let snap = SnapshotRef {
                cluster_id: OURS.into(),
                broker: b,
                snapshot_id: id.into(),
            };
            catalog::load_manifest(&fs, &snap).unwrap().manifest_sha256
        };
        let record = |cycle: i64, cluster: &str, nodes: Vec<(i32, &str)>| {
            let at = Utc::now() - chrono::Duration::hours(10 - cycle);
            SetRecord {
                format_version: SET_FORMAT_VERSION,
                set_id: format_set_id(at, cycle),
                cluster_id: cluster.into(),
                cycle_id: cycle,
                started_at: at,
                finished_at: at,
                complete: true,
                nodes: nodes
                    .into_iter()
                    .map(|(node, id)| SetNode {
                        node,
                        snapshot_id: Some(id.into()),
                        manifest_sha256: Some(if id == theirs {
                            "00".repeat(32)
                        } else {
                            manifest(node, id)
                        }),
                    })
                    .collect(),
                record_sha256: String::new(),
            }
        };
        let mut good = record(1, OURS, vec![(1, &a1), (2, &a2)]);
        kafka_snapshot::sets::write(&fs, &mut good).unwrap();
        let mut foreign = record(2, OURS, vec![(1, &a1), (2, &theirs)]);
        kafka_snapshot::sets::write(&fs, &mut foreign).unwrap();
        let mut edited = record(3, OURS, vec![(1, &a1), (2, &a2)]);
        let text = String::from_utf8(edited.to_bytes())
            .unwrap()
            .replace("\"cycle_id\": 3", "\"cycle_id\": 4");
        fs.put(&set_key(OURS, &edited.set_id), text.as_bytes())
            .unwrap();
        let mut other = record(4, THEIRS, vec![(2, &theirs)]);
        fs.put(&set_key(OURS, &other.set_id), &other.to_bytes())
            .unwrap();

        let s = shared(t.path(), Arc::new(fs), 1);
        let r = rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!((r.after, r.sets), (2, 1), "{r:#?}");
        let why = r.sets_rejected.join("\n");
        assert_eq!(r.sets_rejected.len(), 3, "{why}");
        assert!(
            why.contains(&format!(
                "names snapshot {theirs} of node 2, which is a snapshot of cluster {THEIRS}"
            )),
            "{why}"
        );
        assert!(
            why.contains(&edited.set_id) && why.contains("checksum mismatch"),
            "{why}"
        );
        assert!(
            why.contains(&format!("names snapshots of cluster {THEIRS}")),
            "{why}"
        );
        let events = s.engine().status(Utc::now()).unwrap().recent_events;
        assert_eq!(
            events.iter().filter(|e| e.kind == "set_rejected").count(),
            3,
            "{events:#?}"
        );

        let sets = s.engine().sets().unwrap();
        assert_eq!(sets.len(), 1);
        let set = &sets[0];
        assert_eq!(
            (set.set_id.as_str(), set.source.as_str()),
            (good.set_id.as_str(), "rebuild")
        );
        assert!(set.complete && set.stored && !set.verified);
        // Verified once its snapshots are read back.
        assert!(verify_one(&s, OURS, 1, &a1));
        assert!(verify_one(&s, OURS, 2, &a2));
        assert!(s.engine().sets().unwrap()[0].kept);

        // Newer snapshots, keep_last 1: the set's snapshots stay.
        let b1 = commit(t.path(), t.path(), OURS, 1, 5);
        rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        assert!(verify_one(&s, OURS, 1, &b1));
        let r = run_retention(&s, true);
        assert_eq!(r.error, None);
        assert!(r.deleted.is_empty(), "{r:#?}");
        assert!(
            r.held.contains(&(
                1,
                format!(
                    "snapshot {a1} kept: in set {}, the newest complete verified set",
                    good.set_id
                )
            )),
            "{r:#?}"
        );

        // Its snapshots gone from storage (an operator, another tool): the
        // rebuild lists them no more, and retention drops the set.
        for (b, id) in [(1, &a1), (2, &a2)] {
            std::fs::remove_dir_all(t.path().join(OURS).join(format!("broker-{b}")).join(id))
                .unwrap();
        }
        rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        let key = t.path().join(set_key(OURS, &good.set_id));
        assert!(key.exists());
        let r = run_retention(&s, true);
        assert_eq!(r.sets_dropped, [good.set_id.clone()], "{r:#?}");
        assert!(key.exists(), "a dry run deletes nothing");
        let r = run_retention(&s, false);
        assert_eq!((r.error, r.sets_dropped), (None, vec![good.set_id.clone()]));
        assert!(!key.exists());
        assert!(s.engine().sets().unwrap().is_empty());
    }

    /// Agents with least-privilege credentials cannot delete what an
    /// interrupted run left; retention does, for a node with a newer
    /// complete snapshot only, never for another cluster, and never for a
    /// node at work (its newest incomplete snapshot may be in progress).
    #[test]
    fn retention_removes_incomplete_snapshots_no_run_will_finish() {
        let t = tempfile::tempdir().unwrap();
        let old = commit(t.path(), t.path(), OURS, 1, 1);
        let newest = commit(t.path(), t.path(), OURS, 1, 2);
        let only = commit(t.path(), t.path(), OURS, 2, 3);
        let theirs_old = commit(t.path(), t.path(), THEIRS, 1, 4);
        commit(t.path(), t.path(), THEIRS, 1, 5);
        // Interrupted at the commit: the archive is there, no manifest.
        let unmanifest = |cluster: &str, broker: i32, id: &str| {
            let dir = t
                .path()
                .join(cluster)
                .join(format!("broker-{broker}"))
                .join(id);
            std::fs::remove_file(dir.join("manifest.json")).unwrap();
            dir
        };
        let gone = unmanifest(OURS, 1, &old);
        let in_progress = unmanifest(OURS, 2, &only);
        let other = unmanifest(THEIRS, 1, &theirs_old);
        let store = FileStore::new(t.path().to_path_buf()).unwrap();
        let listed = catalog::list(&store, None, None).unwrap();
        let busy: std::collections::BTreeSet<i32> = [1].into();
        assert!(catalog::abandoned(&listed, OURS, &busy).is_empty());
        let s = shared(t.path(), Arc::new(store), 7);
        rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        let dry = run_retention(&s, true);
        let want = vec![format!("{OURS}/broker-1/{old}")];
        assert_eq!((dry.error, &dry.abandoned_removed), (None, &want));
        assert!(gone.exists(), "a dry run deletes nothing");
        let r = run_retention(&s, false);
        assert_eq!((r.error, r.abandoned_removed), (None, want));
        assert!(!gone.exists());
        assert!(t.path().join(OURS).join("broker-1").join(&newest).exists());
        assert!(
            in_progress.exists(),
            "no newer snapshot of broker 2 is complete"
        );
        assert!(other.exists(), "another cluster's");
    }

    /// Hole 2: two clusters share one store. The rebuild lists only this
    /// coordinator's cluster (counting the other's), and retention never
    /// deletes the other's snapshots of a broker with the same id.
    #[test]
    fn rebuild_and_retention_leave_another_clusters_snapshots_alone() {
        let t = tempfile::tempdir().unwrap();
        let a1 = commit(t.path(), t.path(), OURS, 1, 1);
        let a2 = commit(t.path(), t.path(), OURS, 1, 2);
        let b: Vec<String> = (3..=5)
            .map(|seed| commit(t.path(), t.path(), THEIRS, 1, seed))
            .collect();
        let store = FileStore::new(t.path().to_path_buf()).unwrap();
        let s = shared(t.path(), Arc::new(store), 1);
        let r = rebuild_catalog(&s).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(r.after, 2);
        assert_eq!(r.other_clusters, vec![(THEIRS.to_string(), 3)]);
        let listed: Vec<String> = s
            .engine()
            .snapshots(None)
            .unwrap()
            .into_iter()
            .map(|r| r.snapshot_id)
            .collect();
        assert_eq!(listed, [a1.clone(), a2.clone()]);
        let pruned = run_retention(&s, false);
        assert_eq!(pruned.error, None);
        let gone: Vec<&str> = pruned
            .deleted
            .iter()
            .map(|d| d.snapshot_id.as_str())
            .collect();
        assert_eq!(gone, [a1.as_str()]);
        for id in &b {
            let m = t
                .path()
                .join(THEIRS)
                .join("broker-1")
                .join(id)
                .join("manifest.json");
            assert!(m.exists(), "{} was deleted", m.display());
        }
        assert!(t.path().join(OURS).join("broker-1").join(&a2).exists());
        record(
            "2. a rebuild and retention leave another cluster's snapshots alone",
            5,
        );
    }
}
