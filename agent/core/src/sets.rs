//! Snapshot set records in cold storage (`<cluster.id>/sets/<set-id>.json`,
//! format in `kafka_snapshot_model::sets`): writing one, reading every one
//! of a cluster back, and deleting one. A record that cannot be read or
//! checked is returned with the reason, never silently skipped.

use crate::storage::ColdStore;
use kafka_snapshot_model::error::Result;
use kafka_snapshot_model::layout::{parse_set_key, set_key, sets_prefix};
use kafka_snapshot_model::sets::{SetRecord, MAX_SET_RECORD_BYTES};
use std::io::Read;

/// Writes `record` (its checksum filled in) under its key, atomically:
/// an interrupted write leaves no record, never half of one.
pub fn write(store: &dyn ColdStore, record: &mut SetRecord) -> Result<()> {
    let key = set_key(&record.cluster_id, &record.set_id);
    store.put(&key, &record.to_bytes())
}

/// One record found under a cluster's `sets/` prefix.
#[derive(Debug, Clone)]
pub struct FoundSet {
    pub key: String,
    /// The set id its key names.
    pub set_id: String,
    /// The record, or why it cannot be trusted.
    pub record: std::result::Result<SetRecord, String>,
}

/// Every set record of `cluster`, by key. A storage error listing the
/// prefix fails the whole call (nothing is known); one reading a single
/// record is that record's reason, so the others still count.
pub fn list(store: &dyn ColdStore, cluster: &str) -> Result<Vec<FoundSet>> {
    let mut out = Vec::new();
    for obj in store.list(&sets_prefix(cluster))? {
        let Some(set_id) = parse_set_key(cluster, &obj.key) else {
            continue;
        };
        let record = if obj.size > MAX_SET_RECORD_BYTES {
            Err(format!(
                "{} bytes, more than the {MAX_SET_RECORD_BYTES} a set record may have",
                obj.size
            ))
        } else {
            read(store, &obj.key).and_then(|bytes| SetRecord::from_bytes(&bytes))
        };
        let record = record.and_then(|r| {
            if r.set_id != set_id {
                Err(format!(
                    "is the record of set {}, stored under set {set_id}",
                    r.set_id
                ))
            } else if r.cluster_id != cluster {
                Err(format!(
                    "names snapshots of cluster {}, but is stored under cluster {cluster}",
                    r.cluster_id
                ))
            } else {
                Ok(r)
            }
        });
        out.push(FoundSet {
            key: obj.key.clone(),
            set_id: set_id.to_string(),
            record,
        });
    }
    Ok(out)
}

fn read(store: &dyn ColdStore, key: &str) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    // Through the limit too: the object may have grown since it was listed.
    store
        .open(key)
        .map_err(|e| format!("reading: {e}"))?
        .take(MAX_SET_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading: {e}"))?;
    Ok(bytes)
}

/// Deletes what an interrupted write of a set record left under the
/// `sets/` prefix of `cluster`: temporary objects and uploads never
/// completed. Only the coordinator of that cluster writes there, one
/// record at a time, so the caller calls this before it writes and nothing
/// of it is in use. Returns how many it removed.
pub fn remove_leftovers(store: &dyn ColdStore, cluster: &str) -> Result<usize> {
    let prefix = sets_prefix(cluster);
    let mut removed = 0;
    for obj in store.list(&prefix)? {
        if obj.key.contains(crate::storage::TEMP_MARKER) {
            tracing::warn!(key = %obj.key, "removing an object left by an interrupted set record write");
            store.delete(&obj.key)?;
            removed += 1;
        }
    }
    for u in store.pending_uploads(&prefix)? {
        tracing::warn!(key = %u.key, "aborting an upload left by an interrupted set record write");
        store.abort_upload(&u)?;
        removed += 1;
    }
    Ok(removed)
}

/// Deletes the record of set `set_id` of `cluster` (nothing if it is not
/// there).
pub fn delete(store: &dyn ColdStore, cluster: &str, set_id: &str) -> Result<()> {
    store.delete(&set_key(cluster, set_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStore;
    use kafka_snapshot_model::sets::{format_set_id, SetNode, SET_FORMAT_VERSION};

    fn record(cluster: &str, cycle: i64) -> SetRecord {
        let t = chrono::DateTime::from_timestamp(1_700_000_000 + cycle, 0).unwrap();
        SetRecord {
            format_version: SET_FORMAT_VERSION,
            set_id: format_set_id(t, cycle),
            cluster_id: cluster.into(),
            cycle_id: cycle,
            started_at: t,
            finished_at: t,
            complete: true,
            nodes: vec![SetNode {
                node: 1,
                snapshot_id: Some("20231114T221320.005Z-0a1b2c3d".into()),
                manifest_sha256: Some("ab".repeat(32)),
            }],
            record_sha256: String::new(),
        }
    }

    #[test]
    fn records_are_written_listed_and_deleted_and_bad_ones_say_why() {
        let t = tempfile::tempdir().unwrap();
        let store = FileStore::new(t.path().to_path_buf()).unwrap();
        let mut good = record("c1", 1);
        write(&store, &mut good).unwrap();
        // A record copied under another set's name, and one of another
        // cluster copied into this cluster's prefix.
        let mut other = record("c2", 2);
        let bytes = other.to_bytes();
        store.put(&set_key("c1", &other.set_id), &bytes).unwrap();
        let moved = record("c1", 3);
        store
            .put(&set_key("c1", &moved.set_id), &good.to_bytes())
            .unwrap();
        // An edited one.
        let mut edited = record("c1", 4);
        let text = String::from_utf8(edited.to_bytes())
            .unwrap()
            .replace("\"complete\": true", "\"complete\": false");
        store
            .put(&set_key("c1", &edited.set_id), text.as_bytes())
            .unwrap();
        let found = list(&store, "c1").unwrap();
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[0].record.as_ref().unwrap(), &good);
        let why = |i: usize| found[i].record.clone().unwrap_err();
        assert!(
            why(1).contains("names snapshots of cluster c2"),
            "{}",
            why(1)
        );
        assert!(why(2).contains("stored under set"), "{}", why(2));
        assert!(why(3).contains("checksum mismatch"), "{}", why(3));
        // The snapshot listing does not see them.
        assert!(crate::catalog::list(&store, Some("c1"), None)
            .unwrap()
            .is_empty());
        delete(&store, "c1", &good.set_id).unwrap();
        delete(&store, "c1", &good.set_id).unwrap();
        assert_eq!(list(&store, "c1").unwrap().len(), 3);
        // What a write killed half-way leaves is not a record, and goes.
        let mut w = store.create(&set_key("c1", &good.set_id)).unwrap();
        std::io::Write::write_all(&mut w, b"{\"format_version\"").unwrap();
        std::mem::forget(w);
        assert_eq!(list(&store, "c1").unwrap().len(), 3);
        assert_eq!(remove_leftovers(&store, "c1").unwrap(), 1);
        assert_eq!(remove_leftovers(&store, "c1").unwrap(), 0);
        let left = store.list("c1/sets/").unwrap();
        assert_eq!(left.len(), 3, "{left:?}");
    }
}
