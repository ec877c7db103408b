//! Finding snapshots in cold storage. A snapshot is complete when its
//! manifest is present and intact; anything else under a snapshot prefix is
//! listed as incomplete or damaged, never as complete.

use crate::storage::{ColdStore, ObjectMeta};
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::layout::{
    broker_prefix, is_snapshot_id, list_prefix, parse_key, SnapshotRef,
};
use kafka_snapshot_model::manifest::{too_large, Manifest, MAX_MANIFEST_BYTES};
use std::collections::BTreeMap;
use std::io::Read;

#[derive(Debug, Clone)]
pub enum Status {
    Complete(Box<Manifest>),
    /// No manifest: the run that wrote it did not finish.
    Incomplete,
    /// A manifest that cannot be trusted.
    Damaged(String),
}

#[derive(Debug, Clone)]
pub struct Listed {
    pub snap: SnapshotRef,
    pub status: Status,
    pub objects: Vec<ObjectMeta>,
}

/// Lists the snapshots in `store`, optionally of one cluster and broker,
/// oldest first.
pub fn list(
    store: &dyn ColdStore,
    cluster: Option<&str>,
    broker: Option<i32>,
) -> Result<Vec<Listed>> {
    let prefix = list_prefix(cluster, broker);
    let mut groups: BTreeMap<SnapshotRef, Vec<ObjectMeta>> = BTreeMap::new();
    for obj in store.list(&prefix)? {
        if let Some((snap, _)) = parse_key(&obj.key) {
            if broker.is_some_and(|b| b != snap.broker) {
                continue;
            }
            groups.entry(snap).or_default().push(obj);
        }
    }
    let mut out = Vec::new();
    for (snap, objects) in groups {
        let has_manifest = objects.iter().any(|o| o.key == snap.manifest_key());
        let status = if !has_manifest {
            Status::Incomplete
        } else {
            match load_manifest(store, &snap) {
                Ok(m) => Status::Complete(Box::new(m)),
                Err(e) => Status::Damaged(e.to_string()),
            }
        };
        out.push(Listed {
            snap,
            status,
            objects,
        });
    }
    out.sort_by(|a, b| {
        (&a.snap.snapshot_id, &a.snap.cluster_id, a.snap.broker).cmp(&(
            &b.snap.snapshot_id,
            &b.snap.cluster_id,
            b.snap.broker,
        ))
    });
    Ok(out)
}

/// Finds a snapshot by id, optionally narrowed to a cluster and broker.
pub fn find(
    store: &dyn ColdStore,
    id: &str,
    cluster: Option<&str>,
    broker: Option<i32>,
) -> Result<SnapshotRef> {
    if !is_snapshot_id(id) {
        return Err(Error::Usage(format!("{id:?} is not a snapshot id")));
    }
    let found: Vec<SnapshotRef> = list(store, cluster, broker)?
        .into_iter()
        .map(|l| l.snap)
        .filter(|s| s.snapshot_id == id)
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(Error::SnapshotNotFound {
            snapshot: id.to_string(),
            location: store.location(),
            hint: match (cluster, broker) {
                (None, None) => String::new(),
                _ => format!(" (looked only at cluster {cluster:?} broker {broker:?})"),
            },
        }),
        _ => {
            Err(Error::Usage(format!(
            "snapshot id {id} exists for several brokers or clusters ({}); pass --broker/--cluster",
            found.iter().map(|s| s.prefix()).collect::<Vec<_>>().join(", ")
        )))
        }
    }
}

/// Reads and checks the manifest of `snap`: intact, and about the cluster,
/// broker and snapshot its location says.
pub fn load_manifest(store: &dyn ColdStore, snap: &SnapshotRef) -> Result<Manifest> {
    let key = snap.manifest_key();
    let err = |message: String| Error::Manifest {
        snapshot: snap.snapshot_id.clone(),
        key: key.clone(),
        message,
    };
    match store.stat(&key)? {
        None => {
            return Err(err(
                "missing: the snapshot is incomplete (the run that wrote it did not finish)".into(),
            ))
        }
        Some(size) if size > MAX_MANIFEST_BYTES => return Err(err(too_large(size))),
        Some(_) => {}
    }
    // Read through the limit too: the object may have grown since the stat.
    let mut bytes = Vec::new();
    store
        .open(&key)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| store.error(&key, format!("reading: {e}")))?;
    let m = Manifest::from_bytes(&bytes, &snap.snapshot_id, &key)?;
    if m.cluster_id != snap.cluster_id {
        return Err(err(format!(
            "belongs to cluster {} but is stored under cluster {}",
            m.cluster_id, snap.cluster_id
        )));
    }
    if m.node_id != snap.broker {
        return Err(err(format!(
            "belongs to broker {} but is stored under broker {}",
            m.node_id, snap.broker
        )));
    }
    if m.snapshot_id != snap.snapshot_id {
        return Err(err(format!(
            "is the manifest of snapshot {}, not of {}",
            m.snapshot_id, snap.snapshot_id
        )));
    }
    Ok(m)
}

/// Deletes what interrupted runs left for one broker: snapshots with no
/// manifest, and uploads never completed (S3 multipart uploads, invisible
/// but billed), other than those of `keep`. Only the agent of that broker
/// writes there, and it holds its staging lock while it does, so none of
/// them is in use. Returns how many snapshots and uploads were removed.
///
/// Storage that refuses the agent deletes (credentials with no
/// `s3:DeleteObject`, the least-privilege setup) keeps those objects: they
/// are left for the coordinator, whose retention removes superseded
/// incomplete snapshots ([`abandoned`]). Aborting an upload needs only
/// `s3:AbortMultipartUpload`, which touches nothing committed.
pub fn remove_incomplete(
    store: &dyn ColdStore,
    cluster: &str,
    broker: i32,
    keep: &str,
) -> Result<usize> {
    let mut removed = 0;
    'snapshots: for l in list(store, Some(cluster), Some(broker))? {
        if matches!(l.status, Status::Incomplete) && l.snap.snapshot_id != keep {
            for o in &l.objects {
                tracing::warn!(key = %o.key, "removing an object left by an interrupted snapshot");
                match store.delete(&o.key) {
                    Ok(()) => {}
                    Err(e @ Error::Refused { .. }) => {
                        tracing::warn!(snapshot = %l.snap.snapshot_id, error = %e,
                            "the storage does not let this agent delete; the interrupted \
                             snapshot is left for the coordinator's retention to remove");
                        continue 'snapshots;
                    }
                    Err(e) => return Err(e),
                }
            }
            removed += 1;
        }
    }
    let keep_prefix = format!("{}{keep}/", broker_prefix(cluster, broker));
    for u in store.pending_uploads(&broker_prefix(cluster, broker))? {
        if !u.key.starts_with(&keep_prefix) {
            tracing::warn!(key = %u.key, initiated = %u.initiated,
                "aborting an upload left by an interrupted snapshot");
            store.abort_upload(&u)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Incomplete snapshots of `cluster` that no run will finish: those of a
/// node with a complete snapshot taken after them (its agent has moved on)
/// and not in `busy` (nodes holding a lease or in a running cycle, whose
/// newest incomplete snapshot may be the one being written). Their agents
/// remove them at their next run when the storage lets them; with
/// least-privilege credentials it does not, and the coordinator does.
pub fn abandoned(
    listed: &[Listed],
    cluster: &str,
    busy: &std::collections::BTreeSet<i32>,
) -> Vec<Listed> {
    let mut newest_complete: BTreeMap<i32, &str> = BTreeMap::new();
    for l in listed.iter().filter(|l| l.snap.cluster_id == cluster) {
        if matches!(l.status, Status::Complete(_)) {
            let e = newest_complete.entry(l.snap.broker).or_default();
            if l.snap.snapshot_id.as_str() > *e {
                *e = &l.snap.snapshot_id;
            }
        }
    }
    listed
        .iter()
        .filter(|l| l.snap.cluster_id == cluster && matches!(l.status, Status::Incomplete))
        .filter(|l| !busy.contains(&l.snap.broker))
        .filter(|l| {
            newest_complete
                .get(&l.snap.broker)
                .is_some_and(|newest| l.snap.snapshot_id.as_str() < *newest)
        })
        .cloned()
        .collect()
}

/// Deletes one snapshot, manifest first: a snapshot whose deletion is
/// interrupted is left incomplete, never complete with a missing archive.
pub fn delete_snapshot(store: &dyn ColdStore, listed: &Listed) -> Result<()> {
    let manifest = listed.snap.manifest_key();
    if listed.objects.iter().any(|o| o.key == manifest) {
        store.delete(&manifest)?;
    }
    for o in listed.objects.iter().filter(|o| o.key != manifest) {
        store.delete(&o.key)?;
    }
    tracing::info!(snapshot = %listed.snap.snapshot_id, broker = listed.snap.broker,
        objects = listed.objects.len(), "snapshot deleted");
    Ok(())
}

/// Retention for one broker: keeps the newest `keep_last` complete
/// snapshots and deletes the complete ones older than those. Incomplete
/// and damaged snapshots are left alone (the next snapshot run removes
/// incomplete ones; damaged ones need a person). Returns what was deleted.
pub fn prune(
    store: &dyn ColdStore,
    cluster: &str,
    broker: i32,
    keep_last: usize,
) -> Result<Vec<SnapshotRef>> {
    let complete: Vec<Listed> = list(store, Some(cluster), Some(broker))?
        .into_iter()
        .filter(|l| matches!(l.status, Status::Complete(_)))
        .collect();
    let excess = complete.len().saturating_sub(keep_last);
    let mut deleted = Vec::new();
    // `list` is oldest first.
    for l in &complete[..excess] {
        delete_snapshot(store, l)?;
        deleted.push(l.snap.clone());
    }
    Ok(deleted)
}

/// One line per snapshot, for `archive list` and `catalog list`.
pub fn format_table(listed: &[Listed]) -> String {
    let mut out = format!(
        "{:<32} {:<24} {:>6} {:<10} {:>8} {:>14} {:>14}  {:<20}  {}\n",
        "SNAPSHOT",
        "CLUSTER",
        "BROKER",
        "STATUS",
        "CAPTURE",
        "DATA_BYTES",
        "ARCHIVE_BYTES",
        "COMMITTED",
        "ENCRYPTED_TO"
    );
    for l in listed {
        let dash = || "-".to_string();
        let (status, capture, data, archive, committed, key) = match &l.status {
            Status::Complete(m) => (
                "complete".to_string(),
                m.capture.used.to_string(),
                m.totals.bytes.to_string(),
                m.archive.size.to_string(),
                m.timestamps
                    .committed
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                m.encryption
                    .as_ref()
                    .map(|e| e.recipients.join(","))
                    .unwrap_or_else(dash),
            ),
            Status::Incomplete => ("INCOMPLETE".into(), dash(), dash(), dash(), dash(), dash()),
            // The reason last: it is the longest.
            Status::Damaged(why) => (
                "DAMAGED".into(),
                dash(),
                dash(),
                dash(),
                dash(),
                why.clone(),
            ),
        };
        out.push_str(&format!(
            "{:<32} {:<24} {:>6} {:<10} {:>8} {:>14} {:>14}  {:<20}  {}\n",
            l.snap.snapshot_id,
            l.snap.cluster_id,
            l.snap.broker,
            status,
            capture,
            data,
            archive,
            committed,
            key
        ));
    }
    out
}

/// The JSON form of a listing (`--json`).
pub fn to_json(listed: &[Listed]) -> serde_json::Value {
    serde_json::Value::Array(
        listed
            .iter()
            .map(|l| {
                let mut v = serde_json::json!({
                    "snapshot_id": l.snap.snapshot_id,
                    "cluster_id": l.snap.cluster_id,
                    "broker": l.snap.broker,
                    "complete": matches!(l.status, Status::Complete(_)),
                });
                match &l.status {
                    Status::Complete(m) => {
                        v["status"] = "complete".into();
                        v["capture"] = m.capture.used.to_string().into();
                        v["data_bytes"] = m.totals.bytes.into();
                        v["files"] = m.totals.files.into();
                        v["archive_bytes"] = m.archive.size.into();
                        v["archive_sha256"] = m.archive.sha256.clone().into();
                        v["clean_shutdown"] = m.clean_shutdown.into();
                        v["committed"] = m.timestamps.committed.to_rfc3339().into();
                        v["broker_downtime_ms"] = serde_json::json!(m.broker_downtime_ms);
                        // Which identity a restore needs: fingerprints of
                        // the recipients, null when not encrypted.
                        v["encrypted_to"] =
                            serde_json::json!(m.encryption.as_ref().map(|e| &e.recipients));
                    }
                    Status::Incomplete => v["status"] = "incomplete".into(),
                    Status::Damaged(why) => {
                        v["status"] = "damaged".into();
                        v["error"] = why.clone().into();
                    }
                }
                v
            })
            .collect(),
    )
}
