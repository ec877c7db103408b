//! The SHA-256 of rolled segment files as last read, so that an
//! incremental snapshot does not read a broker's whole log again to learn
//! that most of it has not changed.
//!
//! A file is taken as unchanged, without reading it, only when all of
//! these hold; otherwise it is read and hashed:
//!
//! - it is a file of a **rolled segment** (`<base offset>.log`, `.index`,
//!   `.timeindex`, `.txnindex` of a partition dir that has a newer
//!   segment): Kafka never writes to one again. The active segment's files
//!   are always read: the broker appends to its log and writes its
//!   indexes through a memory map, and trims them when the segment rolls
//!   (with reflink staging, only from near their end where their kept
//!   clone proves the bytes before unchanged, see [`crate::kept`]).
//! - its device, inode, size, mtime and **ctime** are the ones recorded
//!   when it was hashed. Nothing can set a ctime back: a write, a
//!   truncation, a rename over it, a `touch -d` all move it. The log
//!   cleaner and a rebuilt index (after an unclean stop) make new files,
//!   new inodes.
//! - the record is this node's and this cluster's, and was written by the
//!   agent (a file of mode 0600 in its state directory).
//! - the object of that hash is in storage; if not, the file is read
//!   again anyway, to be uploaded, and hashed on the way.
//!
//! The record holds only the files of the last snapshot: it does not grow
//! with the history. It also holds the active segments' files, for where
//! their chunks were cut ([`plan_cuts`]), never their hashes; and, with
//! reflink staging, where their SHA-256 stood near their end, so that an
//! appended file is read only from there on where the clone read last
//! time ([`crate::kept`]) proves the bytes before unchanged. An unreadable
//! record is ignored with a warning (every file is read once more), never
//! an error: it only saves time.

use crate::hashing::Midstate;
use crate::logdir::{Entry, EntryKind, Inventory};
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::manifest::MAX_CUTS_PER_CHUNK;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// 2: chunk hashes beside each file's hash. A record of another version
/// is ignored (every file is read once).
const VERSION: u32 = 2;

/// The largest record read: about 200 bytes a file, so room for millions.
const MAX_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    version: u32,
    cluster_id: String,
    node_id: i32,
    /// The chunk size the chunk hashes are of.
    chunk_size: u64,
    /// Absolute path -> what the file was when it was hashed.
    files: BTreeMap<String, Hashed>,
    /// The generation of the clones kept for the next snapshot
    /// ([`crate::kept`]) the files' `kept` refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept: Option<String>,
}

/// A file's SHA-256, and the SHA-256 of each chunk of it (see
/// [`crate::objects`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHashes {
    pub sha256: String,
    pub chunks: Vec<String>,
    /// Where its chunks end off the grid (see
    /// [`kafka_snapshot_model::manifest::chunk_spans`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<u64>,
    /// An active file read from a reflink clone that is kept for the next
    /// snapshot: what it takes to read it again only from near its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptHash>,
}

/// An active segment file as last read from its reflink clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptHash {
    /// The inode of that clone (kept since, see [`crate::kept`]).
    pub ino: u64,
    /// Where the file's SHA-256 stood at the start of its last chunk and
    /// at its end, each rounded down to 64 bytes.
    pub midstates: Vec<Midstate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hashed {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    hashes: FileHashes,
    /// Not a rolled segment's file when hashed: only where its chunks
    /// were cut is used again (see [`HashCache::cuts`]), never its hashes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    active: bool,
}

impl Hashed {
    fn of(e: &Entry, hashes: &FileHashes, rolled: bool) -> Hashed {
        Hashed {
            active: !rolled,
            dev: e.dev,
            ino: e.ino,
            size: e.size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            hashes: hashes.clone(),
        }
    }
}

/// The hashes known from the last snapshot, and the ones of this one.
pub struct HashCache {
    path: PathBuf,
    cluster_id: String,
    node_id: i32,
    chunk_size: u64,
    known: HashMap<String, Hashed>,
    now: BTreeMap<String, Hashed>,
    /// The kept clones' generation the known record refers to, and the
    /// one this snapshot's record will.
    kept_known: Option<String>,
    kept_now: Option<String>,
}

impl HashCache {
    /// Reads the record at `path` for `inv`'s node and chunks of
    /// `chunk_size` bytes; an absent, unreadable or foreign one gives an
    /// empty cache.
    pub fn load(path: &Path, inv: &Inventory, chunk_size: u64) -> HashCache {
        let mut cache = HashCache {
            path: path.to_path_buf(),
            cluster_id: inv.cluster_id().to_string(),
            node_id: inv.node_id(),
            chunk_size,
            known: HashMap::new(),
            now: BTreeMap::new(),
            kept_known: None,
            kept_now: None,
        };
        match read(path) {
            Ok(None) => {}
            Ok(Some(r)) if r.cluster_id == cache.cluster_id && r.node_id == cache.node_id => {
                if r.chunk_size == chunk_size {
                    cache.known = r.files.into_iter().collect();
                    cache.kept_known = r.kept;
                } else {
                    tracing::info!(file = %path.display(), was = r.chunk_size, now = chunk_size,
                        "the chunk size changed since the last snapshot; every file is read");
                }
            }
            Ok(Some(r)) => tracing::warn!(file = %path.display(), cluster = %r.cluster_id,
                node = r.node_id, "the hash record is of another node or cluster; every file is read"),
            Err(e) => tracing::warn!(file = %path.display(), error = %e,
                "the hash record cannot be used; every file is read"),
        }
        cache
    }

    /// The hashes of `e` (of log dir `log_dir`) if they can be trusted
    /// without reading the file.
    pub fn lookup(&self, log_dir: &Path, e: &Entry, rolled: bool) -> Option<&FileHashes> {
        if !rolled || !matches!(e.kind, EntryKind::File) {
            return None;
        }
        let h = self.known.get(&key(log_dir, e))?;
        (!h.active
            && h.dev == e.dev
            && h.ino == e.ino
            && h.size == e.size
            && h.mtime_ns == e.mtime_ns
            && h.ctime_ns == e.ctime_ns)
            .then_some(&h.hashes)
    }

    /// Where to cut the chunks of `e` (of log dir `log_dir`), a file read
    /// to hash it: if it is the file (device and inode) the last snapshot
    /// read, no shorter, the cuts it had, and one more where that snapshot
    /// ended it (see [`plan_cuts`]). Only where chunks end is taken from
    /// the record, never what they hold: every byte is read and hashed.
    pub fn cuts(&self, log_dir: &Path, e: &Entry, chunk_size: u64) -> Vec<u64> {
        match self.appended(log_dir, e) {
            Some((size, h)) => plan_cuts(size, &h.cuts, e.size, chunk_size),
            None => Vec::new(),
        }
    }

    /// How long `e` (of log dir `log_dir`) was and what it hashed to when
    /// the last snapshot read it, if it is the same file (device and
    /// inode) and no shorter now: a file Kafka may have appended to.
    /// Whether its bytes are still the same is for the caller to prove.
    pub fn appended(&self, log_dir: &Path, e: &Entry) -> Option<(u64, &FileHashes)> {
        match self.known.get(&key(log_dir, e)) {
            Some(h) if h.dev == e.dev && h.ino == e.ino && h.size <= e.size => {
                Some((h.size, &h.hashes))
            }
            _ => None,
        }
    }

    /// The generation of kept clones the last record refers to.
    pub fn kept_generation(&self) -> Option<&str> {
        self.kept_known.as_deref()
    }

    /// The generation of kept clones this snapshot's record refers to.
    pub fn set_kept_generation(&mut self, generation: Option<String>) {
        self.kept_now = generation;
    }

    /// Records the hashes of `e` for the next snapshot: a rolled segment's
    /// to be used again while it is unchanged, any other's for where its
    /// chunks were cut.
    pub fn record(&mut self, log_dir: &Path, e: &Entry, rolled: bool, hashes: &FileHashes) {
        self.now
            .insert(key(log_dir, e), Hashed::of(e, hashes, rolled));
    }

    /// Forgets what `e` was recorded as: its object turned out not to be
    /// stored, so its hash is taken again from its bytes.
    pub fn forget(&mut self, log_dir: &Path, e: &Entry) {
        let k = key(log_dir, e);
        self.known.remove(&k);
        self.now.remove(&k);
    }

    /// Replaces the record with this snapshot's hashes: written to a
    /// temporary file (mode 0600), synced, renamed into place.
    pub fn save(&self) -> Result<()> {
        let record = Record {
            version: VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            chunk_size: self.chunk_size,
            files: self.now.clone(),
            kept: self.kept_now.clone(),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| Error::Internal(format!("serialising the hash record: {e}")))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                crate::storage::fsync_dir(dir)?;
            }
            Ok(())
        };
        write().ctx(|| format!("writing the hash record {}", self.path.display()))
    }
}

/// A chunk is cut where an earlier snapshot ended a file only if the
/// part before (from the chunk's start or its last cut) is at least this
/// fraction of a chunk: a smaller one is cheaper uploaded again than kept
/// as an object of its own.
const MIN_CUT_PART: u64 = 16;

/// The cuts of a file that was `before` bytes long with cuts `cuts` at the
/// last snapshot and is `size` bytes now (Kafka appended to it): the old
/// ones, and one where it ended, so the chunk stored for its end then is
/// used again and only the bytes after it are new. A partition that
/// appends less than a chunk between snapshots cuts the same chunk again
/// each time, so what it uploads again is at most 1/[`MIN_CUT_PART`] of a
/// chunk per snapshot, and a chunk is at most
/// [`MAX_CUTS_PER_CHUNK`]` + 1` objects.
pub fn plan_cuts(before: u64, cuts: &[u64], size: u64, chunk_size: u64) -> Vec<u64> {
    let chunk_size = chunk_size.max(1);
    let mut out: Vec<u64> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < size && c % chunk_size != 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    let chunk = before / chunk_size;
    let in_chunk = || out.iter().filter(move |&&c| c / chunk_size == chunk);
    // Where the part that ends at `before` starts.
    let start = in_chunk()
        .copied()
        .filter(|&c| c < before)
        .max()
        .unwrap_or(chunk * chunk_size);
    if before < size
        && before % chunk_size != 0
        && before - start >= chunk_size / MIN_CUT_PART
        && in_chunk().count() < MAX_CUTS_PER_CHUNK
        && !out.contains(&before)
    {
        out.push(before);
        out.sort_unstable();
    }
    out
}

fn key(log_dir: &Path, e: &Entry) -> String {
    log_dir.join(&e.rel).to_string_lossy().into_owned()
}

fn read(path: &Path) -> std::result::Result<Option<Record>, String> {
    let md = match fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if md.len() > MAX_BYTES {
        return Err(format!("{} bytes is more than a record holds", md.len()));
    }
    if std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o022 != 0 {
        return Err("others than its owner may write it".into());
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let r: Record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if r.version != VERSION {
        return Err(format!("version {} is not {VERSION}", r.version));
    }
    Ok(Some(r))
}

/// For every entry of `inv`: whether it is a file of a rolled segment, one
/// Kafka never writes again (a partition dir's `<base offset>.<ext>` with
/// a newer `.log` beside it).
pub fn rolled_segments(inv: &Inventory) -> Vec<bool> {
    let mut newest: HashMap<(usize, &Path), u64> = HashMap::new();
    for e in &inv.entries {
        if let Some((dir, base, "log")) = segment(e) {
            let n = newest.entry((e.dir_index, dir)).or_insert(base);
            *n = (*n).max(base);
        }
    }
    inv.entries
        .iter()
        .map(|e| match segment(e) {
            Some((dir, base, "log" | "index" | "timeindex" | "txnindex")) => {
                newest.get(&(e.dir_index, dir)).is_some_and(|&n| base < n)
            }
            _ => false,
        })
        .collect()
}

/// `(partition dir, base offset, extension)` of a segment file
/// (`00000000000000001234.log`).
fn segment(e: &Entry) -> Option<(&Path, u64, &str)> {
    if !matches!(e.kind, EntryKind::File) {
        return None;
    }
    let dir = e.rel.parent()?;
    let name = e.rel.file_name()?.to_str()?;
    let (base, ext) = name.split_once('.')?;
    if base.len() != 20 || !base.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((dir, base.parse().ok()?, ext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logdir::{LogDir, MetaProperties};

    const CHUNK: u64 = 4 << 20;

    fn entry(rel: &str, ino: u64) -> Entry {
        Entry {
            dir_index: 0,
            rel: PathBuf::from(rel),
            kind: EntryKind::File,
            size: 10,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 5,
            dev: 1,
            ino,
            ctime_ns: 6,
        }
    }

    fn inventory(entries: Vec<Entry>) -> Inventory {
        Inventory {
            dirs: vec![LogDir {
                path: PathBuf::from("/d"),
                meta: MetaProperties {
                    version: 1,
                    cluster_id: "C".into(),
                    node_id: 1,
                    directory_id: None,
                },
                clean_shutdown: true,
                unclean_reason: None,
                is_metadata_dir: false,
            }],
            entries,
            skipped_deleting: Vec::new(),
        }
    }

    #[test]
    fn only_files_of_older_segments_are_rolled() {
        let inv = inventory(vec![
            entry("t-0/00000000000000000000.log", 1),
            entry("t-0/00000000000000000000.index", 2),
            entry("t-0/00000000000000000100.log", 3),
            entry("t-0/00000000000000000100.index", 4),
            entry("t-0/00000000000000000100.snapshot", 5),
            entry("t-0/leader-epoch-checkpoint", 6),
            entry("t-1/00000000000000000000.log", 7),
            entry("t-1/00000000000000000000.timeindex", 8),
        ]);
        assert_eq!(
            rolled_segments(&inv),
            vec![true, true, false, false, false, false, false, false]
        );
    }

    #[test]
    fn a_hash_is_trusted_only_for_the_same_unchanged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hash-cache.json");
        let e = entry("t-0/00000000000000000000.log", 1);
        let inv = inventory(vec![e.clone()]);
        let mut c = HashCache::load(&path, &inv, CHUNK);
        assert_eq!(c.lookup(Path::new("/d"), &e, true), None);
        let hashes = FileHashes {
            sha256: "a".repeat(64),
            chunks: vec!["b".repeat(64)],
            cuts: Vec::new(),
            kept: None,
        };
        c.record(Path::new("/d"), &e, true, &hashes);
        c.save().unwrap();
        let c = HashCache::load(&path, &inv, CHUNK);
        assert_eq!(c.lookup(Path::new("/d"), &e, true), Some(&hashes));
        // Chunk hashes of another chunk size are not these chunks'.
        assert_eq!(
            HashCache::load(&path, &inv, CHUNK * 2).lookup(Path::new("/d"), &e, true),
            None
        );
        assert_eq!(c.lookup(Path::new("/d"), &e, false), None, "active segment");
        for changed in [
            Entry {
                ino: 2,
                ..e.clone()
            },
            Entry {
                size: 11,
                ..e.clone()
            },
            Entry {
                mtime_ns: 4,
                ..e.clone()
            },
            Entry {
                ctime_ns: 7,
                ..e.clone()
            },
            Entry {
                dev: 9,
                ..e.clone()
            },
        ] {
            assert_eq!(
                c.lookup(Path::new("/d"), &changed, true),
                None,
                "{changed:?}"
            );
        }
        assert_eq!(c.lookup(Path::new("/other"), &e, true), None);
        // Another node's record is not used.
        let mut other = inventory(vec![e.clone()]);
        other.dirs[0].meta.node_id = 2;
        assert_eq!(
            HashCache::load(&path, &other, CHUNK).lookup(Path::new("/d"), &e, true),
            None
        );
        // A record others may write is not used.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        assert_eq!(
            HashCache::load(&path, &inv, CHUNK).lookup(Path::new("/d"), &e, true),
            None
        );
        // Nor a damaged one.
        fs::write(&path, b"{").unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert_eq!(
            HashCache::load(&path, &inv, CHUNK).lookup(Path::new("/d"), &e, true),
            None
        );
    }

    #[test]
    fn an_active_file_keeps_where_it_was_cut_never_its_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hash-cache.json");
        let e = Entry {
            size: CHUNK + CHUNK / 2,
            ..entry("t-0/00000000000000000000.log", 1)
        };
        let inv = inventory(vec![e.clone()]);
        let mut c = HashCache::load(&path, &inv, CHUNK);
        let hashes = FileHashes {
            sha256: "a".repeat(64),
            chunks: vec!["b".repeat(64), "c".repeat(64)],
            cuts: Vec::new(),
            kept: None,
        };
        c.record(Path::new("/d"), &e, false, &hashes);
        c.save().unwrap();
        let c = HashCache::load(&path, &inv, CHUNK);
        // Its hashes are not trusted, even once it rolled unchanged.
        assert_eq!(c.lookup(Path::new("/d"), &e, true), None);
        // Appended to: cut where the last snapshot ended it.
        let grown = Entry {
            size: 3 * CHUNK,
            ctime_ns: 9,
            ..e.clone()
        };
        assert_eq!(c.cuts(Path::new("/d"), &grown, CHUNK), vec![e.size]);
        // The same size: no new cut; shorter (truncated), or another file: none.
        assert_eq!(c.cuts(Path::new("/d"), &e, CHUNK), Vec::<u64>::new());
        for other in [
            Entry {
                size: CHUNK,
                ..e.clone()
            },
            Entry {
                ino: 2,
                ..grown.clone()
            },
        ] {
            assert_eq!(c.cuts(Path::new("/d"), &other, CHUNK), Vec::<u64>::new());
        }
    }

    #[test]
    fn cuts_are_few_and_only_where_they_save_bytes() {
        let c = 64u64;
        // Where it ended, if the part before in its chunk is big enough.
        assert_eq!(plan_cuts(100, &[], 300, c), vec![100]);
        assert_eq!(plan_cuts(129, &[], 300, c), Vec::<u64>::new());
        assert_eq!(plan_cuts(128, &[], 300, c), Vec::<u64>::new());
        // Old cuts stay; a chunk cut already is cut again where the part
        // since its last cut is big enough.
        assert_eq!(plan_cuts(200, &[100], 300, c), vec![100, 200]);
        assert_eq!(plan_cuts(120, &[100], 300, c), vec![100, 120]);
        assert_eq!(plan_cuts(102, &[100], 300, c), vec![100]);
        assert_eq!(plan_cuts(124, &[100, 120], 300, c), vec![100, 120, 124]);
        // A cut above the old end (cut, truncated, grown again) stays and
        // does not count as the start of the part.
        assert_eq!(plan_cuts(70, &[90], 300, c), vec![70, 90]);
        // At most MAX_CUTS_PER_CHUNK in one grid chunk: here the parts
        // (6 bytes of a 100-byte chunk) would allow one more.
        let full: Vec<u64> = (1..=MAX_CUTS_PER_CHUNK as u64).map(|i| i * 6).collect();
        assert_eq!(plan_cuts(96, &full, 300, 100), full);
        assert_eq!(
            plan_cuts(196, &full, 300, 100),
            [&full[..], &[196]].concat()
        );
        // Cuts past the end (a file cut then truncated) go.
        assert_eq!(plan_cuts(50, &[100], 90, c), vec![50]);
        // Not grown: nothing new.
        assert_eq!(plan_cuts(300, &[100], 300, c), vec![100]);
    }
}
