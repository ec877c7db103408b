//! The snapshot set record: which snapshot of each node one rolling cycle
//! committed, kept in cold storage beside the snapshots
//! (`<cluster.id>/sets/<set-id>.json`, see [`crate::layout::set_key`]) so
//! that the day the cluster and the coordinator host are both lost, the
//! store alone still says which snapshots belong together.
//!
//! Like the manifest it carries its own SHA-256 (of the canonical JSON of
//! everything else): an edited or truncated record is refused, never
//! trusted. It is small (one line per node), and read whole only up to
//! [`MAX_SET_RECORD_BYTES`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const SET_FORMAT_VERSION: u32 = 1;

/// The largest set record read from storage: a node takes about 200
/// bytes, so this is room for thousands of nodes while bounding what a
/// damaged or hostile object can make the coordinator read.
pub const MAX_SET_RECORD_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRecord {
    pub format_version: u32,
    pub set_id: String,
    pub cluster_id: String,
    /// The coordinator's number of the cycle (a coordinator rebuilt on a
    /// new host numbers its cycles afresh: the set id is the key).
    pub cycle_id: i64,
    /// When the cycle started and ended, by the coordinator's clock.
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Every node of the cycle committed a snapshot in it.
    pub complete: bool,
    /// Every node of the cycle, by id, with its snapshot (`None`: it
    /// committed none in this cycle).
    pub nodes: Vec<SetNode>,
    /// SHA-256 of the canonical JSON of everything above.
    pub record_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNode {
    pub node: i32,
    pub snapshot_id: Option<String>,
    /// The snapshot's `manifest_sha256`: ties the record to exactly that
    /// snapshot, not just to its id.
    pub manifest_sha256: Option<String>,
}

/// The id of the set of cycle `cycle` started at `started` (coordinator
/// clock): sorts by time like snapshot ids, and stays unique when a
/// coordinator rebuilt elsewhere numbers its cycles from 1 again (two
/// cycles never start in the same millisecond on one coordinator).
pub fn format_set_id(started: DateTime<Utc>, cycle: i64) -> String {
    format!("{}-cycle{cycle}", started.format("%Y%m%dT%H%M%S%.3fZ"))
}

impl SetRecord {
    /// Serialises the record with its checksum filled in.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        self.record_sha256 = String::new();
        let value = serde_json::to_value(&*self).expect("set record serialises");
        self.record_sha256 = canonical_hash(&value);
        let mut out = serde_json::to_vec_pretty(&*self).expect("set record serialises");
        out.push(b'\n');
        out
    }

    /// Parses and checks a record read from `key`: valid JSON of a known
    /// format version, an intact checksum, and the shape every record this
    /// coordinator writes has (unique nodes; `complete` true exactly when
    /// every node has a snapshot). The message says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<SetRecord, String> {
        if bytes.len() as u64 > MAX_SET_RECORD_BYTES {
            return Err(format!(
                "{} bytes, more than the {MAX_SET_RECORD_BYTES} a set record may have",
                bytes.len()
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("not valid JSON ({e}): truncated or edited"))?;
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SET_FORMAT_VERSION as u64 => {}
            Some(v) => {
                return Err(format!(
                    "format_version {v} is not supported (this build reads \
                     {SET_FORMAT_VERSION})"
                ))
            }
            None => return Err("format_version is missing".into()),
        }
        let recorded = value
            .get("record_sha256")
            .and_then(|v| v.as_str())
            .ok_or("record_sha256 is missing")?
            .to_string();
        let actual = canonical_hash(&value);
        if recorded != actual {
            return Err(format!(
                "checksum mismatch (recorded {recorded}, computed {actual}): the record was \
                 edited or damaged after it was written"
            ));
        }
        let r: SetRecord =
            serde_json::from_value(value).map_err(|e| format!("unexpected content: {e}"))?;
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        if !crate::layout::is_snapshot_id(&self.set_id) {
            return Err(format!("set id {:?} is not a valid id", self.set_id));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.node) {
                return Err(format!("node {} is listed twice", n.node));
            }
            if let Some(id) = &n.snapshot_id {
                if !crate::layout::is_snapshot_id(id) {
                    return Err(format!("node {}: {id:?} is not a snapshot id", n.node));
                }
            }
        }
        if self.nodes.is_empty() {
            return Err("lists no nodes".into());
        }
        let all = self.nodes.iter().all(|n| n.snapshot_id.is_some());
        if self.complete != all {
            return Err(format!(
                "says complete = {} but {} node(s) have no snapshot",
                self.complete,
                self.nodes
                    .iter()
                    .filter(|n| n.snapshot_id.is_none())
                    .count()
            ));
        }
        Ok(())
    }
}

/// SHA-256 over the record as a JSON value with `record_sha256` removed,
/// serialised with sorted keys: independent of field order and whitespace.
fn canonical_hash(value: &serde_json::Value) -> String {
    let mut v = value.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("record_sha256");
    }
    crate::manifest::canonical_hash(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SetRecord {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        SetRecord {
            format_version: SET_FORMAT_VERSION,
            set_id: format_set_id(t, 7),
            cluster_id: "c1".into(),
            cycle_id: 7,
            started_at: t,
            finished_at: t + chrono::Duration::minutes(5),
            complete: false,
            nodes: vec![
                SetNode {
                    node: 1,
                    snapshot_id: Some("20231114T221320.005Z-0a1b2c3d".into()),
                    manifest_sha256: Some("ab".repeat(32)),
                },
                SetNode {
                    node: 2,
                    snapshot_id: None,
                    manifest_sha256: None,
                },
            ],
            record_sha256: String::new(),
        }
    }

    #[test]
    fn a_record_round_trips_and_its_id_sorts_by_time() {
        let mut r = record();
        assert_eq!(r.set_id, "20231114T221320.000Z-cycle7");
        let bytes = r.to_bytes();
        assert_eq!(SetRecord::from_bytes(&bytes).unwrap(), r);
    }

    #[test]
    fn an_edited_or_inconsistent_record_is_refused_saying_why() {
        let mut r = record();
        let bytes = String::from_utf8(r.to_bytes()).unwrap();
        let edited = bytes.replace("\"cycle_id\": 7", "\"cycle_id\": 8");
        assert_ne!(edited, bytes);
        let e = SetRecord::from_bytes(edited.as_bytes()).unwrap_err();
        assert!(e.contains("checksum mismatch"), "{e}");
        let e = SetRecord::from_bytes(&bytes.as_bytes()[..bytes.len() / 2]).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        // Consistent checksum, inconsistent content: a record claiming to
        // be complete with a node missing.
        let mut r = record();
        r.complete = true;
        let e = SetRecord::from_bytes(&r.to_bytes()).unwrap_err();
        assert!(e.contains("complete = true") && e.contains("1 node"), "{e}");
        let mut r = record();
        r.nodes[1].node = 1;
        let e = SetRecord::from_bytes(&r.to_bytes()).unwrap_err();
        assert!(e.contains("node 1 is listed twice"), "{e}");
        let mut r = record();
        r.format_version = 2;
        let e = SetRecord::from_bytes(&r.to_bytes()).unwrap_err();
        assert!(e.contains("format_version 2"), "{e}");
    }
}
