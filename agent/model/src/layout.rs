//! Where a snapshot lives in cold storage:
//! `<root>/<cluster.id>/broker-<N>/<snapshot-id>/{archive.tar.zst,manifest.json}`
//! (`archive.tar.zst.age` instead for an encrypted snapshot; the store's
//! URL is the root, so keys start at the cluster id), where a snapshot
//! set's record lives (`<cluster.id>/sets/<set-id>.json`, beside the
//! brokers' prefixes, see [`crate::sets`]), and the shape of a snapshot id.
//! Pure naming and parsing: no store is touched.

use crate::manifest::{ARCHIVE_FILE, MANIFEST_FILE};
use chrono::{DateTime, Utc};

/// One snapshot's place in cold storage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotRef {
    pub cluster_id: String,
    pub broker: i32,
    pub snapshot_id: String,
}

impl SnapshotRef {
    pub fn prefix(&self) -> String {
        format!(
            "{}/{}",
            broker_prefix(&self.cluster_id, self.broker).trim_end_matches('/'),
            self.snapshot_id
        )
    }
    /// The key of an unencrypted snapshot's archive; an encrypted one's is
    /// [`SnapshotRef::object_key`] of the manifest's `archive.file`.
    pub fn archive_key(&self) -> String {
        self.object_key(ARCHIVE_FILE)
    }
    /// The key of the file `file` of this snapshot.
    pub fn object_key(&self, file: &str) -> String {
        format!("{}/{file}", self.prefix())
    }
    pub fn manifest_key(&self) -> String {
        format!("{}/{MANIFEST_FILE}", self.prefix())
    }
}

/// The prefix (with its trailing `/`) of every snapshot of one broker.
pub fn broker_prefix(cluster: &str, broker: i32) -> String {
    format!("{cluster}/broker-{broker}/")
}

/// The prefix to list: one broker, one cluster, or the whole store.
pub fn list_prefix(cluster: Option<&str>, broker: Option<i32>) -> String {
    match (cluster, broker) {
        (Some(c), Some(b)) => broker_prefix(c, b),
        (Some(c), None) => format!("{c}/"),
        _ => String::new(),
    }
}

/// The prefix (with its trailing `/`) of the content objects of one
/// cluster: the files incremental snapshots share, named by SHA-256.
/// `objects` never parses as a broker prefix (`broker-<N>`), so listing
/// snapshots skips them.
pub fn objects_prefix(cluster: &str) -> String {
    format!("{cluster}/objects/")
}

/// Where the content object of a file whose SHA-256 is `sha256` (64
/// lowercase hex digits) is kept: `<cluster>/objects/<first two digits>/
/// <sha256>.zst`, a zstd frame of the file's bytes. The two-digit level
/// keeps any one listing or directory to 1/256 of the objects.
pub fn content_object_key(cluster: &str, sha256: &str) -> String {
    let fan = sha256.get(..2).unwrap_or("00");
    format!("{}{fan}/{sha256}.zst", objects_prefix(cluster))
}

/// The SHA-256 a key under [`objects_prefix`] of `cluster` names; `None`
/// for any other key (a temporary object, a stray file).
pub fn parse_content_object_key<'k>(cluster: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(&objects_prefix(cluster))?;
    let (fan, name) = rest.split_once('/')?;
    let sha = name.strip_suffix(".zst")?;
    (sha.len() == 64
        && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && sha.get(..2) == Some(fan))
    .then_some(sha)
}

/// The prefix (with its trailing `/`) of every set record of one cluster.
/// `sets` never parses as a broker prefix (`broker-<N>`), so listing
/// snapshots skips the records.
pub fn sets_prefix(cluster: &str) -> String {
    format!("{cluster}/sets/")
}

/// Where the record of set `set_id` of `cluster` is kept.
pub fn set_key(cluster: &str, set_id: &str) -> String {
    format!("{}{set_id}.json", sets_prefix(cluster))
}

/// The set id of a key under [`sets_prefix`] of `cluster`; `None` for
/// any other key (a temporary object, a stray file).
pub fn parse_set_key<'k>(cluster: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(&sets_prefix(cluster))?;
    let id = rest.strip_suffix(".json")?;
    is_snapshot_id(id).then_some(id)
}

/// Splits a key into the snapshot it belongs to and the file name below the
/// snapshot's prefix; `None` for a key outside the layout.
pub fn parse_key(key: &str) -> Option<(SnapshotRef, &str)> {
    let mut it = key.splitn(4, '/');
    let cluster = it.next()?;
    let broker = it.next()?.strip_prefix("broker-")?.parse().ok()?;
    let id = it.next()?;
    let file = it.next()?;
    if !is_snapshot_id(id) {
        return None;
    }
    Some((
        SnapshotRef {
            cluster_id: cluster.to_string(),
            broker,
            snapshot_id: id.to_string(),
        },
        file,
    ))
}

/// A snapshot id: UTC time to the millisecond, then `suffix` (random hex),
/// so ids sort by time and never collide.
pub fn format_snapshot_id(at: DateTime<Utc>, suffix: &str) -> String {
    format!("{}-{suffix}", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Whether a string has the shape of a snapshot id (safe as a key part).
pub fn is_snapshot_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_object_keys_round_trip() {
        let sha = "ab".repeat(32);
        let key = content_object_key("c1", &sha);
        assert_eq!(key, format!("c1/objects/ab/{sha}.zst"));
        assert_eq!(parse_content_object_key("c1", &key), Some(sha.as_str()));
        assert_eq!(parse_content_object_key("c2", &key), None);
        assert!(parse_key(&key).is_none(), "objects are no snapshot");
        for bad in [
            format!("c1/objects/cd/{sha}.zst"),
            format!("c1/objects/ab/{sha}.zst.tmp"),
            "c1/objects/ab/abab.zst".to_string(),
            format!("c1/objects/AB/{}.zst", "AB".repeat(32)),
        ] {
            assert_eq!(parse_content_object_key("c1", &bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let snap = SnapshotRef {
            cluster_id: "c1".into(),
            broker: 2,
            snapshot_id: format_snapshot_id(
                DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap(),
                "0a1b2c3d",
            ),
        };
        assert_eq!(snap.snapshot_id, "20231114T221320.005Z-0a1b2c3d");
        assert_eq!(
            snap.manifest_key(),
            "c1/broker-2/20231114T221320.005Z-0a1b2c3d/manifest.json"
        );
        let key = snap.archive_key();
        let (parsed, file) = parse_key(&key).unwrap();
        assert_eq!((parsed, file), (snap, ARCHIVE_FILE));
        assert!(parse_key("c1/broker-x/id/manifest.json").is_none());
        assert!(parse_key("c1/broker-2/../manifest.json").is_none());
        assert_eq!(list_prefix(Some("c1"), None), "c1/");
        assert_eq!(list_prefix(None, Some(2)), "");
        let set = set_key("c1", "20231114T221320.005Z-cycle3");
        assert_eq!(set, "c1/sets/20231114T221320.005Z-cycle3.json");
        assert_eq!(
            parse_set_key("c1", &set),
            Some("20231114T221320.005Z-cycle3")
        );
        assert_eq!(parse_set_key("c2", &set), None);
        assert!(parse_key(&set).is_none(), "a set record is no snapshot");
        assert_eq!(parse_set_key("c1", "c1/sets/x.json.tmp-1"), None);
    }
}
