//! The manifest: written last, its presence is what makes a snapshot
//! complete. It carries its own SHA-256 so an edited or truncated manifest is
//! refused, and it is the authority for every file's size, mode, owner, mtime
//! and hash.

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Component, Path};

/// The format of a manifest of an unencrypted snapshot: the first one,
/// still written as it was so that every agent and coordinator reads it.
pub const FORMAT_VERSION: u32 = 1;
/// The format of a manifest of an encrypted snapshot: an `encryption`
/// section holds the entries (their paths name topics) sealed to the
/// recipients, and the archive is an age file.
pub const FORMAT_VERSION_ENCRYPTED: u32 = 2;
/// The format of a manifest of an incremental snapshot: the bytes of its
/// larger files are content objects shared by every snapshot of the
/// cluster (`<cluster>/objects/`, see [`crate::layout::content_object_key`]):
/// each such file is cut into chunks of `objects.chunk_size` bytes (the
/// last one shorter), and each chunk is the object named by its SHA-256.
/// Only the rest is in the snapshot's own archive. Its entries say which
/// (`chunks`), and `objects` sums them up.
pub const FORMAT_VERSION_INCREMENTAL: u32 = 3;
/// The format of a manifest of a snapshot both encrypted (format 2) and
/// incremental (format 3). Its content objects are age files of their zstd
/// frames, named not by the SHA-256 of their bytes, which anyone holding a
/// guess of a file could test, but by a keyed hash of it (the cluster's
/// object key, see [`SealedObjects`]); the sealed entries map every chunk
/// to its object's name (`objects`), and `objects.sealed` lists the names
/// in the clear for retention.
pub const FORMAT_VERSION_ENCRYPTED_INCREMENTAL: u32 = 4;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const ARCHIVE_FILE: &str = "archive.tar.zst";
/// The archive of an encrypted snapshot: `archive.tar.zst` in the age
/// format, readable with `age -d` as well.
pub const ENCRYPTED_ARCHIVE_FILE: &str = "archive.tar.zst.age";
/// The one encryption scheme: age (X25519 recipients, STREAM payload).
pub const AGE_SCHEME: &str = "age";

/// The largest manifest read from storage. A manifest is read whole and
/// parsed in memory, so a hostile or damaged one must not decide how much:
/// one entry takes about 330 bytes of pretty-printed JSON (path, type,
/// size, mode, owners, mtime, a 64-digit SHA-256), a partition dir about
/// ten entries (the dir, `partition.metadata`, `leader-epoch-checkpoint`
/// and three or four files per segment), so a large broker of 10,000
/// partitions with a few segments each writes 20 to 40 MiB. 64 MiB leaves
/// room above that and still bounds the memory a manifest can take.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub snapshot_id: String,
    pub cluster_id: String,
    pub node_id: i32,
    pub host: String,
    pub agent_version: String,
    pub capture: CaptureRecord,
    /// Every log dir held `.kafka_cleanshutdown`: the broker stopped cleanly
    /// and a restored copy starts without log recovery.
    pub clean_shutdown: bool,
    pub log_dirs: Vec<LogDirRecord>,
    pub timestamps: Timestamps,
    /// Broker stopped -> broker started again, when the agent drove both.
    pub broker_downtime_ms: Option<u64>,
    pub archive: ArchiveRecord,
    pub totals: Totals,
    /// Format 2: the archive is encrypted, and `entries` is empty in the
    /// stored manifest; they are sealed in here. Absent in format 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
    /// Format 3: what the entries stored as content objects add up to.
    /// Absent in formats 1 and 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectsRecord>,
    /// Every archive entry, in archive order. In an encrypted manifest as
    /// stored, empty: [`Manifest::unseal`] fills it in from the sealed copy.
    pub entries: Vec<EntryRecord>,
    /// SHA-256 of the canonical JSON of everything above (see [`canonical_hash`]).
    pub manifest_sha256: String,
}

/// How the log dirs were (or are to be) captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    Auto,
    Reflink,
    Copy,
}

impl std::fmt::Display for CaptureMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptureMode::Auto => "auto",
            CaptureMode::Reflink => "reflink",
            CaptureMode::Copy => "copy",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRecord {
    pub requested: CaptureMode,
    /// `reflink` or `copy`.
    pub used: CaptureMode,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogDirRecord {
    /// Archive entries of this dir live under `<archive_prefix>/`.
    pub archive_prefix: String,
    /// The original absolute path on the broker host.
    pub path: String,
    pub meta_version: u32,
    pub directory_id: Option<String>,
    pub is_metadata_dir: bool,
    pub clean_shutdown: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamps {
    pub broker_stopped: Option<DateTime<Utc>>,
    pub capture_started: DateTime<Utc>,
    pub capture_finished: DateTime<Utc>,
    pub broker_restarted: Option<DateTime<Utc>>,
    pub archive_finished: DateTime<Utc>,
    pub committed: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRecord {
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub compression: String,
    pub zstd_level: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

impl Totals {
    /// Counts files, dirs, symlinks and file bytes of `entries`. The sizes
    /// of a manifest read back are untrusted: sizes that add up to more
    /// than a u64 holds are refused, never wrapped.
    pub fn of(entries: &[EntryRecord]) -> Result<Totals, String> {
        let mut t = Totals {
            files: 0,
            dirs: 0,
            symlinks: 0,
            bytes: 0,
        };
        for e in entries {
            match e.kind {
                EntryType::File => {
                    t.files += 1;
                    t.bytes = t.bytes.checked_add(e.size).ok_or_else(|| {
                        format!(
                            "file sizes add up to more than {} bytes at {} ({} bytes)",
                            u64::MAX,
                            e.path,
                            e.size
                        )
                    })?;
                }
                EntryType::Dir => t.dirs += 1,
                EntryType::Symlink => t.symlinks += 1,
            }
        }
        Ok(t)
    }
}

/// What an incremental snapshot (format 3) keeps as content objects: every
/// file of at least `min_size` bytes, cut into chunks of `chunk_size`
/// bytes from its start (the last one shorter). Each chunk is the object
/// of its SHA-256 under the cluster's `objects/` prefix; the snapshot's
/// own archive holds every other entry. Fixed chunks from the start of the
/// file keep what Kafka appends to a segment from costing the segment's
/// earlier bytes again: only its last chunk and the new ones change, and
/// a file's `cuts` split its last chunk of before where it ended then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsRecord {
    /// Files at least this large were stored as objects.
    pub min_size: u64,
    /// The size of every chunk but a file's last.
    pub chunk_size: u64,
    /// Files whose bytes are objects, and their bytes (as files).
    pub files: u64,
    pub bytes: u64,
    /// Distinct objects (chunks) they reference: equal chunks, in one file
    /// or in two, share one.
    pub objects: u64,
    /// Of those, the objects this snapshot uploaded: they were not in
    /// storage yet. The others were written by an earlier snapshot (of
    /// this node or another of the cluster).
    pub uploaded: u64,
    /// Their bytes as files, and as stored (compressed).
    pub uploaded_bytes: u64,
    pub uploaded_stored_bytes: u64,
    /// Files whose bytes were read to hash them. The others were rolled
    /// segment files the agent had hashed before and found unchanged
    /// (same inode, size, mtime and ctime), with their object in storage.
    pub hashed: u64,
    pub hashed_bytes: u64,
    /// Of the files read, those read only from near where the last
    /// snapshot ended them: an active segment whose earlier bytes were
    /// proven unchanged against the clone kept from then (reflink capture).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u64,
    /// Format 4 (encrypted): the names of the objects, which the sealed
    /// entries map the chunks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedObjects>,
}

/// The content objects of an encrypted incremental snapshot. Each is named
/// by the HMAC-SHA256, under the cluster's object key (a secret every
/// agent of the cluster holds the same), of its chunk's SHA-256: equal
/// chunks still share one object across snapshots and brokers, and a name
/// says nothing about the bytes to whoever reads the store without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedObjects {
    /// The fingerprint of the object key that named them (see
    /// `ObjectKey::fingerprint`): never the key itself.
    pub key: String,
    /// Every object the snapshot references, sorted, each once: what
    /// retention keeps and a verify without the identity finds in storage.
    pub names: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How an encrypted snapshot was encrypted. What stays in the clear is what
/// the coordinator needs to list, keep and check the stored bytes: ids,
/// sizes, times, the SHA-256 of the stored (encrypted) archive. What names
/// topics (the entries: paths, and with them sizes and hashes per file) is
/// sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionRecord {
    /// [`AGE_SCHEME`].
    pub scheme: String,
    /// Fingerprints of the recipients the archive and the entries were
    /// encrypted to (see [`recipient_fingerprint`]): which identity a
    /// restore needs. Never the keys themselves.
    pub recipients: Vec<String>,
    /// The entries: an age file (to the same recipients) of the
    /// zstd-compressed JSON of [`SealedEntries`], in standard base64.
    pub sealed_entries: String,
}

/// What [`EncryptionRecord::sealed_entries`] decrypts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEntries {
    /// The snapshot they belong to: sealed entries copied from another
    /// snapshot's manifest are refused.
    pub snapshot_id: String,
    pub entries: Vec<EntryRecord>,
}

/// The fingerprint a manifest records for a recipient (`age1...`): the
/// first 8 bytes of the SHA-256 of its text, hex, prefixed `age:`. Enough
/// to tell keys apart and to match an identity to a snapshot, and says
/// nothing more about the key.
pub fn recipient_fingerprint(recipient: &str) -> String {
    let digest = Sha256::digest(recipient.as_bytes());
    format!("age:{}", hex::encode(&digest[..8]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    Dir,
    File,
    Symlink,
}

/// One archive entry, in archive order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRecord {
    /// Path inside the archive: `<archive_prefix>/<path in the log dir>`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// Format 3: the file's bytes are not in the snapshot's archive but
    /// these content objects, one per `objects.chunk_size` bytes of the
    /// file in order, each named by the SHA-256 of its bytes. `sha256`
    /// stays the hash of the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<String>>,
    /// Format 3: where the file's chunks end off the grid of
    /// `objects.chunk_size` (ascending, at most [`MAX_CUTS_PER_CHUNK`] in
    /// one grid chunk). A segment Kafka appended to since the last snapshot
    /// is cut where that snapshot ended it, so the chunk it stored then is
    /// used again and only the new bytes are uploaded. See [`chunk_spans`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<u64>,
    /// Format 4 (encrypted, so only in the sealed entries): the names of
    /// the content objects its chunks are, in the order of `chunks`, which
    /// stay the SHA-256 of each chunk's bytes (see [`SealedObjects`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<String>>,
}

/// The `(offset, length)` of each chunk of a file of `size` bytes: one
/// per `chunk_size` bytes from its start (the last one shorter), each one
/// a `cut` falls in split in two there. Cuts outside the file or on the
/// grid split nothing.
pub fn chunk_spans(size: u64, chunk_size: u64, cuts: &[u64]) -> Vec<(u64, u64)> {
    let chunk_size = chunk_size.max(1);
    let mut ends: Vec<u64> = (1..size.div_ceil(chunk_size))
        .map(|i| i * chunk_size)
        .chain(cuts.iter().copied().filter(|&c| c > 0 && c < size))
        .chain(std::iter::once(size))
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let mut start = 0;
    ends.into_iter()
        .filter(|&end| end > 0)
        .map(|end| {
            let span = (start, end - start);
            start = end;
            span
        })
        .collect()
}

/// How many cuts one chunk of the grid may have: it is then at most this
/// many objects plus one.
pub const MAX_CUTS_PER_CHUNK: usize = 15;

/// Why `cuts` are not cuts of a file of `size` bytes in chunks of
/// `chunk_size`: each strictly inside the file, off the grid, ascending,
/// at most [`MAX_CUTS_PER_CHUNK`] in one grid chunk.
pub fn check_cuts(size: u64, chunk_size: u64, cuts: &[u64]) -> Result<(), String> {
    let chunk_size = chunk_size.max(1);
    let mut last_chunk = None;
    let mut in_chunk = 0;
    let mut last = 0;
    for &c in cuts {
        if c == 0 || c >= size || c % chunk_size == 0 || c <= last {
            return Err(format!(
                "cut at {c} is not strictly inside the file ({size} bytes), off the grid of \
                 {chunk_size}-byte chunks, after the one before"
            ));
        }
        if last_chunk == Some(c / chunk_size) {
            in_chunk += 1;
        } else {
            in_chunk = 1;
        }
        if in_chunk > MAX_CUTS_PER_CHUNK {
            return Err(format!(
                "cut at {c}: a chunk is cut at most {MAX_CUTS_PER_CHUNK} times"
            ));
        }
        last_chunk = Some(c / chunk_size);
        last = c;
    }
    Ok(())
}

impl EntryRecord {
    /// Whether the file's bytes are content objects (format 3).
    pub fn is_object(&self) -> bool {
        self.chunks.is_some()
    }

    /// The content objects the file's bytes are, in order (none for an
    /// entry of the archive).
    pub fn chunk_shas(&self) -> &[String] {
        self.chunks.as_deref().unwrap_or_default()
    }

    /// The names of the content objects its chunks are, in the order of
    /// [`Self::chunk_shas`]: in an encrypted snapshot, keyed names (see
    /// [`SealedObjects`]); otherwise the chunks' SHA-256.
    pub fn object_names(&self) -> &[String] {
        match &self.objects {
            Some(names) => names,
            None => self.chunk_shas(),
        }
    }

    /// The `(offset, length)` of each of its chunks, in the order of
    /// [`Self::chunk_shas`].
    pub fn chunk_spans(&self, chunk_size: u64) -> Vec<(u64, u64)> {
        chunk_spans(self.size, chunk_size, &self.cuts)
    }
}

/// Whether `h` is a SHA-256 as written here: 64 lower-case hex digits.
fn is_sha256(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The archive prefix of the log dir with this index.
pub fn archive_prefix(index: usize) -> String {
    format!("logdir-{index}")
}

/// SHA-256 over the manifest as a JSON value with `manifest_sha256` removed,
/// serialised with sorted keys: independent of field order and whitespace.
pub fn canonical_hash(value: &serde_json::Value) -> String {
    let mut v = value.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("manifest_sha256");
    }
    // serde_json's Map is a BTreeMap (no preserve_order feature): sorted keys.
    hex::encode(Sha256::digest(
        serde_json::to_vec(&v).expect("JSON value serialises"),
    ))
}

impl Manifest {
    /// Serialises the manifest with its checksum filled in.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        self.manifest_sha256 = String::new();
        let value = serde_json::to_value(&*self).expect("manifest serialises");
        self.manifest_sha256 = canonical_hash(&value);
        let mut out = serde_json::to_vec_pretty(&*self).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses and checks a manifest read from `key`: valid JSON of a known
    /// format version, an intact checksum, and entries that are safe.
    pub fn from_bytes(bytes: &[u8], snapshot: &str, key: &str) -> Result<Manifest> {
        let err = |message: String| Error::Manifest {
            snapshot: snapshot.to_string(),
            key: key.to_string(),
            message,
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(err(too_large(bytes.len() as u64)));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            err(format!(
                "not valid JSON ({e}); the manifest is truncated or was edited"
            ))
        })?;
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v)
                if v == FORMAT_VERSION as u64
                    || v == FORMAT_VERSION_ENCRYPTED as u64
                    || v == FORMAT_VERSION_INCREMENTAL as u64
                    || v == FORMAT_VERSION_ENCRYPTED_INCREMENTAL as u64 => {}
            Some(v) => {
                return Err(err(format!(
                    "format_version {v} is not supported by agent {} \
                     (supports {FORMAT_VERSION}, {FORMAT_VERSION_ENCRYPTED}, \
                     {FORMAT_VERSION_INCREMENTAL} and {FORMAT_VERSION_ENCRYPTED_INCREMENTAL})",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            None => return Err(err("format_version is missing".into())),
        }
        let recorded = value
            .get("manifest_sha256")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("manifest_sha256 is missing".into()))?
            .to_string();
        let actual = canonical_hash(&value);
        if recorded != actual {
            return Err(err(format!(
                "checksum mismatch (recorded {recorded}, computed {actual}): the manifest was edited or damaged after it was written"
            )));
        }
        let m: Manifest =
            serde_json::from_value(value).map_err(|e| err(format!("unexpected content: {e}")))?;
        m.check_consistency().map_err(err)?;
        Ok(m)
    }

    /// Whether the snapshot is encrypted (format 2).
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// Whether the snapshot keeps its larger files as shared content
    /// objects (format 3).
    pub fn is_incremental(&self) -> bool {
        self.objects.is_some()
    }

    /// The entries whose bytes are content objects, in manifest order.
    pub fn object_entries(&self) -> impl Iterator<Item = &EntryRecord> {
        self.entries.iter().filter(|e| e.is_object())
    }

    /// The name of every content object the snapshot references: in an
    /// unencrypted one, their SHA-256 in manifest order (a chunk shared by
    /// two files, or twice by one, comes twice); in an encrypted one the
    /// names listed in the clear (`objects.sealed`), which need no
    /// identity.
    pub fn referenced_objects(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        match self.objects.as_ref().and_then(|o| o.sealed.as_ref()) {
            Some(sealed) => Box::new(sealed.names.iter()),
            None => Box::new(self.object_entries().flat_map(|e| e.chunk_shas())),
        }
    }

    /// Whether the entries are at hand: always for an unencrypted
    /// manifest, after [`Manifest::unseal`] for an encrypted one.
    pub fn has_entries(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Puts the entries decrypted from `encryption.sealed_entries` (the
    /// JSON of [`SealedEntries`]) in place and checks them as an
    /// unencrypted manifest's entries are checked.
    pub fn unseal(&mut self, sealed_json: &[u8], key: &str) -> Result<()> {
        let err = |message: String| Error::Manifest {
            snapshot: self.snapshot_id.clone(),
            key: key.to_string(),
            message,
        };
        let sealed: SealedEntries = serde_json::from_slice(sealed_json)
            .map_err(|e| err(format!("the sealed entries are not valid: {e}")))?;
        if sealed.snapshot_id != self.snapshot_id {
            return Err(err(format!(
                "the sealed entries belong to snapshot {}, not to this one",
                sealed.snapshot_id
            )));
        }
        self.entries = sealed.entries;
        self.check_entries().map_err(err)
    }

    /// Cross-field checks that hold for every manifest this agent writes.
    fn check_consistency(&self) -> Result<(), String> {
        let (version, file) = match &self.encryption {
            None if self.objects.is_some() => (FORMAT_VERSION_INCREMENTAL, ARCHIVE_FILE),
            None => (FORMAT_VERSION, ARCHIVE_FILE),
            Some(enc) => {
                if enc.scheme != AGE_SCHEME {
                    return Err(format!(
                        "encryption scheme {:?} is not supported (only {AGE_SCHEME:?})",
                        enc.scheme
                    ));
                }
                if enc.recipients.is_empty() {
                    return Err("is encrypted to no recipients".into());
                }
                if !self.entries.is_empty() {
                    return Err("is encrypted but lists its entries in the clear".into());
                }
                match &self.objects {
                    Some(_) => (FORMAT_VERSION_ENCRYPTED_INCREMENTAL, ENCRYPTED_ARCHIVE_FILE),
                    None => (FORMAT_VERSION_ENCRYPTED, ENCRYPTED_ARCHIVE_FILE),
                }
            }
        };
        if let Some(o) = &self.objects {
            match (&o.sealed, self.is_encrypted()) {
                (Some(_), false) => {
                    return Err("names its content objects by a key, but is not encrypted".into())
                }
                (None, true) => {
                    return Err(
                        "is encrypted and incremental, but does not name its content objects"
                            .into(),
                    )
                }
                (Some(sealed), true) => {
                    if let Some(bad) = sealed.names.iter().find(|n| !is_sha256(n)) {
                        return Err(format!("objects.sealed: name {bad:?} is not 64 hex digits"));
                    }
                    if !sealed.names.windows(2).all(|w| w[0] < w[1]) {
                        return Err("objects.sealed: the names are not sorted, each once".into());
                    }
                    if sealed.names.len() as u64 != o.objects {
                        return Err(format!(
                            "objects.sealed lists {} names for {} objects",
                            sealed.names.len(),
                            o.objects
                        ));
                    }
                }
                (None, false) => {}
            }
        }
        if self.format_version != version {
            return Err(format!(
                "format_version {} does not fit a{} snapshot (format {version})",
                self.format_version,
                if self.is_encrypted() && self.is_incremental() {
                    "n encrypted incremental"
                } else if self.is_encrypted() {
                    "n encrypted"
                } else if self.is_incremental() {
                    "n incremental"
                } else {
                    " full unencrypted"
                }
            ));
        }
        if self.archive.file != file {
            return Err(format!(
                "archive file {:?} is not {file:?}",
                self.archive.file
            ));
        }
        if self.log_dirs.is_empty() {
            return Err("lists no log dirs".into());
        }
        for (i, d) in self.log_dirs.iter().enumerate() {
            if d.archive_prefix != archive_prefix(i) {
                return Err(format!("log dir {i} has prefix {:?}", d.archive_prefix));
            }
        }
        if self.is_encrypted() {
            // The entries are checked once they are unsealed.
            return Ok(());
        }
        self.check_entries()
    }

    /// Checks of the entries against the log dirs and the totals.
    fn check_entries(&self) -> Result<(), String> {
        // Every log dir's root comes first among its entries, once, and is
        // a directory: a symlink or file there would be renamed into the
        // target's place.
        let mut roots = vec![false; self.log_dirs.len()];
        for e in &self.entries {
            if e.kind == EntryType::File && !e.sha256.as_deref().is_some_and(is_sha256) {
                return Err(format!("file {} has no valid sha256", e.path));
            }
            if e.chunks.is_none() && (!e.cuts.is_empty() || e.objects.is_some()) {
                return Err(format!(
                    "entry {:?} has cuts or object names but is not stored as content objects",
                    e.path
                ));
            }
            if let Some(chunks) = &e.chunks {
                if e.kind != EntryType::File {
                    return Err(format!(
                        "entry {:?} is a {:?} stored as a content object; only files are",
                        e.path, e.kind
                    ));
                }
                let Some(o) = &self.objects else {
                    return Err(format!(
                        "entry {:?} is stored as a content object, but the snapshot is not \
                         incremental (format {})",
                        e.path, self.format_version
                    ));
                };
                if let Some(bad) = chunks.iter().find(|c| !is_sha256(c)) {
                    return Err(format!(
                        "entry {:?}: chunk {bad:?} is not a SHA-256",
                        e.path
                    ));
                }
                match (&e.objects, self.is_encrypted()) {
                    (Some(names), true) if names.len() == chunks.len() => {
                        if let Some(bad) = names.iter().find(|n| !is_sha256(n)) {
                            return Err(format!(
                                "entry {:?}: object name {bad:?} is not 64 hex digits",
                                e.path
                            ));
                        }
                    }
                    (Some(names), true) => {
                        return Err(format!(
                            "entry {:?}: {} object names for {} chunks",
                            e.path,
                            names.len(),
                            chunks.len()
                        ))
                    }
                    (None, true) => {
                        return Err(format!(
                            "entry {:?}: an encrypted snapshot's chunks must be named",
                            e.path
                        ))
                    }
                    (Some(_), false) => {
                        return Err(format!(
                            "entry {:?} names its objects by a key, but the snapshot is not \
                             encrypted",
                            e.path
                        ))
                    }
                    (None, false) => {}
                }
                check_cuts(e.size, o.chunk_size, &e.cuts)
                    .map_err(|r| format!("entry {:?}: {r}", e.path))?;
                let want = e.size.div_ceil(o.chunk_size.max(1)) + e.cuts.len() as u64;
                if chunks.len() as u64 != want || e.size < o.min_size {
                    return Err(format!(
                        "entry {:?}: {} chunks for {} bytes, where chunks of {} bytes and {} \
                         cut(s) make {want} (and files below {} bytes are not objects)",
                        e.path,
                        chunks.len(),
                        e.size,
                        o.chunk_size,
                        e.cuts.len(),
                        o.min_size
                    ));
                }
            }
            check_entry_path(&e.path, self.log_dirs.len())
                .map_err(|r| format!("entry {:?}: {r}", e.path))?;
            check_entry_mode(e.kind, e.mode).map_err(|r| format!("entry {:?}: {r}", e.path))?;
            let (prefix, rest) = e.path.split_once('/').unwrap_or((&e.path, ""));
            let index = (0..self.log_dirs.len())
                .find(|&i| archive_prefix(i) == prefix)
                .ok_or_else(|| format!("entry {:?}: no log dir prefix", e.path))?;
            if rest.is_empty() {
                if e.kind != EntryType::Dir {
                    return Err(format!(
                        "entry {:?}: the root of log dir {index} is a {:?}, not a directory",
                        e.path, e.kind
                    ));
                }
                if roots[index] {
                    return Err(format!("entry {:?}: listed twice", e.path));
                }
                roots[index] = true;
            } else if !roots[index] {
                return Err(format!(
                    "entry {:?} comes before the root of its log dir",
                    e.path
                ));
            }
        }
        if let Some(i) = roots.iter().position(|&seen| !seen) {
            return Err(format!("log dir {i} has no root directory entry"));
        }
        let totals = Totals::of(&self.entries)?;
        if totals != self.totals {
            return Err(format!(
                "totals {:?} do not match its entries {:?}",
                self.totals, totals
            ));
        }
        if let Some(o) = &self.objects {
            let (files, bytes) = self
                .object_entries()
                .fold((0u64, 0u64), |(n, b), e| (n + 1, b.saturating_add(e.size)));
            let distinct: std::collections::HashSet<&String> = self.referenced_objects().collect();
            if o.files != files || o.bytes != bytes || o.objects != distinct.len() as u64 {
                return Err(format!(
                    "objects {{files: {}, bytes: {}, objects: {}}} do not match its entries \
                     ({files} files of {bytes} bytes in {} objects)",
                    o.files,
                    o.bytes,
                    o.objects,
                    distinct.len()
                ));
            }
            if let Some(sealed) = &o.sealed {
                // The names the entries use are the names retention keeps,
                // and one chunk is one object.
                let mut named = std::collections::HashMap::new();
                for e in self.object_entries() {
                    for (sha, name) in e.chunk_shas().iter().zip(e.object_names()) {
                        if named.insert(sha, name).is_some_and(|n| n != name) {
                            return Err(format!(
                                "entry {:?}: chunk {sha} is named twice, differently",
                                e.path
                            ));
                        }
                    }
                }
                let mut used: Vec<&String> = named.into_values().collect();
                used.sort_unstable();
                used.dedup();
                if !used.iter().copied().eq(sealed.names.iter()) {
                    return Err(format!(
                        "the entries name {} objects, which are not the {} objects.sealed lists",
                        used.len(),
                        sealed.names.len()
                    ));
                }
            }
            if o.chunk_size == 0 || o.min_size == 0 {
                return Err(format!(
                    "objects: chunk_size {} and min_size {} must be more than 0",
                    o.chunk_size, o.min_size
                ));
            }
            if o.uploaded > o.objects || o.hashed > o.files {
                return Err(format!(
                    "says it uploaded {} objects of the {} it references and hashed {} files \
                     of {}",
                    o.uploaded, o.objects, o.hashed, o.files
                ));
            }
        }
        Ok(())
    }

    /// Entries of the log dir with this index.
    pub fn entries_of(&self, index: usize) -> impl Iterator<Item = &EntryRecord> {
        let prefix = archive_prefix(index);
        self.entries.iter().filter(move |e| {
            e.path == prefix
                || e.path
                    .strip_prefix(&prefix)
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
}

/// Why a manifest of more than [`MAX_MANIFEST_BYTES`] is refused.
pub fn too_large(size: u64) -> String {
    format!(
        "is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have \
         (far above what a real broker's manifest needs): damaged or hostile"
    )
}

/// Mode bits no Kafka log dir holds on a file: Kafka creates files with
/// `0666 & !umask` and never changes their mode, so setuid, setgid or
/// sticky bits on one mean the snapshot was not made from a log dir.
const FILE_REFUSED: u32 = 0o7000;
/// On a directory, setuid and sticky are refused the same way. Setgid is
/// not: a dir created inside a setgid dir inherits the bit (an operator's
/// `chmod g+s` on the log dir, or a Kubernetes `fsGroup` volume), so genuine
/// snapshots hold setgid dirs; a restore clears it ([`restored_mode`]).
const DIR_REFUSED: u32 = 0o5000;

/// Whether an entry's recorded mode is one a Kafka log dir can hold.
/// Refused at capture, verify and extract alike, naming the entry.
pub fn check_entry_mode(kind: EntryType, mode: u32) -> Result<(), String> {
    if mode & !0o7777 != 0 {
        return Err(format!("mode {mode:o} has bits other than permissions"));
    }
    let refused = match kind {
        EntryType::File => FILE_REFUSED,
        EntryType::Dir => DIR_REFUSED,
        // Linux ignores a symlink's mode; a restore never sets it.
        EntryType::Symlink => 0,
    };
    if mode & refused != 0 {
        return Err(format!(
            "mode {mode:04o} has the setuid, setgid or sticky bit, which Kafka never gives a {}; \
             refusing to restore it",
            match kind {
                EntryType::Dir => "directory",
                _ => "file",
            }
        ));
    }
    Ok(())
}

/// The mode a restore gives an entry: the recorded one without
/// world-write and without setgid. Neither is refused when verifying
/// because a genuine snapshot can hold them (a broker run under umask 0
/// writes 0666 files and 0777 dirs; setgid dirs, see [`DIR_REFUSED`]), but
/// a restore must not leave a tree any local user may write into or one
/// that hands new files a group the snapshot chose; the broker needs
/// neither.
pub fn restored_mode(kind: EntryType, mode: u32) -> u32 {
    match kind {
        EntryType::Symlink => mode,
        _ => mode & 0o0775,
    }
}

/// An archive path is `logdir-<i>` or `logdir-<i>/<relative path>` with
/// `i` a known log dir, and nothing that could leave it: no absolute path,
/// no `..`, no `.` or empty components.
pub fn check_entry_path(path: &str, log_dirs: usize) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\0') {
        return Err("NUL in path".into());
    }
    let mut parts = path.split('/');
    let first = parts.next().unwrap_or_default();
    let known = (0..log_dirs).any(|i| archive_prefix(i) == first);
    if !known {
        return Err(format!(
            "{first:?} is not a log dir prefix of this snapshot"
        ));
    }
    for p in parts {
        match p {
            "" => return Err("empty path component".into()),
            "." => return Err("'.' path component".into()),
            ".." => return Err("'..' path component".into()),
            _ => {}
        }
    }
    // Belt and braces: the platform's own view of the path.
    if Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err("path is not plainly relative".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let now = Utc::now();
        Manifest {
            format_version: FORMAT_VERSION,
            snapshot_id: "20261122T000000.000Z-00000000".into(),
            cluster_id: "CL".into(),
            node_id: 1,
            host: "h".into(),
            agent_version: "0".into(),
            capture: CaptureRecord {
                requested: CaptureMode::Auto,
                used: CaptureMode::Copy,
                reason: "test".into(),
            },
            clean_shutdown: true,
            log_dirs: vec![LogDirRecord {
                archive_prefix: "logdir-0".into(),
                path: "/d".into(),
                meta_version: 1,
                directory_id: Some("x".into()),
                is_metadata_dir: true,
                clean_shutdown: true,
            }],
            timestamps: Timestamps {
                broker_stopped: None,
                capture_started: now,
                capture_finished: now,
                broker_restarted: None,
                archive_finished: now,
                committed: now,
            },
            broker_downtime_ms: None,
            archive: ArchiveRecord {
                file: ARCHIVE_FILE.into(),
                size: 1,
                sha256: "0".repeat(64),
                compression: "zstd".into(),
                zstd_level: 3,
            },
            totals: Totals {
                files: 1,
                dirs: 1,
                symlinks: 0,
                bytes: 5,
            },
            encryption: None,
            objects: None,
            entries: vec![
                EntryRecord {
                    path: "logdir-0".into(),
                    kind: EntryType::Dir,
                    size: 0,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                    sha256: None,
                    link_target: None,
                    chunks: None,
                    cuts: Vec::new(),
                    objects: None,
                },
                EntryRecord {
                    path: "logdir-0/meta.properties".into(),
                    kind: EntryType::File,
                    size: 5,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                    sha256: Some("a".repeat(64)),
                    link_target: None,
                    chunks: None,
                    cuts: Vec::new(),
                    objects: None,
                },
            ],
            manifest_sha256: String::new(),
        }
    }

    /// `sample` as an incremental snapshot whose one file is an object.
    fn incremental_sample() -> Manifest {
        let mut m = sample();
        m.format_version = FORMAT_VERSION_INCREMENTAL;
        m.entries[1].chunks = Some(vec!["b".repeat(64), "c".repeat(64)]);
        m.objects = Some(ObjectsRecord {
            min_size: 1,
            chunk_size: 4,
            files: 1,
            bytes: 5,
            objects: 2,
            uploaded: 1,
            uploaded_bytes: 5,
            uploaded_stored_bytes: 14,
            hashed: 1,
            hashed_bytes: 5,
            resumed: 0,
            sealed: None,
        });
        m
    }

    #[test]
    fn chunk_spans_follow_the_grid_and_the_cuts() {
        assert_eq!(chunk_spans(10, 4, &[]), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(chunk_spans(8, 4, &[]), vec![(0, 4), (4, 4)]);
        assert_eq!(chunk_spans(3, 4, &[]), vec![(0, 3)]);
        assert_eq!(
            chunk_spans(10, 4, &[1, 6]),
            vec![(0, 1), (1, 3), (4, 2), (6, 2), (8, 2)]
        );
        // Cuts on the grid, at the ends or past them split nothing.
        assert_eq!(chunk_spans(10, 4, &[0, 4, 10, 12]), chunk_spans(10, 4, &[]));
        assert!(check_cuts(10, 4, &[1, 6, 9]).is_ok());
        assert!(check_cuts(10, 4, &[6, 1]).is_err());
        // Several cuts in one chunk (a partition appending little between
        // snapshots), up to the limit.
        assert_eq!(
            chunk_spans(10, 8, &[2, 5]),
            vec![(0, 2), (2, 3), (5, 3), (8, 2)]
        );
        let many: Vec<u64> = (1..=MAX_CUTS_PER_CHUNK as u64 + 1).map(|i| i * 6).collect();
        let (limit, over) = many.split_at(MAX_CUTS_PER_CHUNK);
        assert!(check_cuts(1000, 100, limit).is_ok());
        let e = check_cuts(1000, 100, &many).unwrap_err();
        assert!(
            e.contains(&format!("cut at {}", over[0])) && e.contains("at most 15 times"),
            "{e}"
        );
        // The limit is per chunk of the grid.
        let spread: Vec<u64> = limit.iter().chain(&[101, 102]).copied().collect();
        assert!(check_cuts(1000, 100, &spread).is_ok());
    }

    #[test]
    fn incremental_manifests_round_trip_and_are_checked() {
        let mut m = incremental_sample();
        let back = Manifest::from_bytes(&m.to_bytes(), "s", "k").unwrap();
        assert_eq!(back, m);
        assert_eq!(back.object_entries().count(), 1);

        let refused = |mut m: Manifest| {
            Manifest::from_bytes(&m.to_bytes(), "s", "k")
                .unwrap_err()
                .to_string()
        };
        // An object in a full snapshot.
        let mut full = sample();
        full.entries[1].chunks = Some(vec!["b".repeat(64)]);
        let e = refused(full);
        assert!(e.contains("not incremental"), "{e}");
        // The summary must add up.
        let mut wrong = incremental_sample();
        wrong.objects.as_mut().unwrap().bytes = 6;
        let e = refused(wrong);
        assert!(e.contains("do not match its entries"), "{e}");
        // A dir is never an object.
        let mut dir = incremental_sample();
        dir.entries[0].chunks = Some(Vec::new());
        let e = refused(dir);
        assert!(e.contains("only files are"), "{e}");
        // An object's name comes from its hash: it must be one.
        let mut bad = incremental_sample();
        bad.entries[1].sha256 = Some("A".repeat(64));
        let e = refused(bad);
        assert!(e.contains("no valid sha256"), "{e}");
        let mut bad = incremental_sample();
        bad.entries[1].chunks.as_mut().unwrap()[1] = "../x".into();
        let e = refused(bad);
        assert!(e.contains("is not a SHA-256"), "{e}");
        // As many chunks as the size makes: 5 bytes in chunks of 4 are 2.
        let mut short = incremental_sample();
        short.entries[1].chunks.as_mut().unwrap().pop();
        let e = refused(short);
        assert!(e.contains("1 chunks for 5 bytes"), "{e}");
        // A cut makes one chunk more, and must be inside, off the grid,
        // ascending.
        let mut cut = incremental_sample();
        cut.entries[1].cuts = vec![2];
        let e = refused(cut.clone());
        assert!(e.contains("2 chunks for 5 bytes"), "{e}");
        cut.entries[1].chunks.as_mut().unwrap().push("d".repeat(64));
        cut.objects.as_mut().unwrap().objects = 3;
        Manifest::from_bytes(&cut.to_bytes(), "s", "k").unwrap();
        for (cuts, why) in [
            (vec![4], "off the grid"),
            (vec![5], "strictly inside"),
            (vec![3, 1], "after the one before"),
        ] {
            let mut bad = cut.clone();
            bad.entries[1].cuts = cuts;
            let e = refused(bad);
            assert!(e.contains(why), "{e}");
        }
        let mut bad = incremental_sample();
        bad.entries[0].cuts = vec![1];
        let e = refused(bad);
        assert!(
            e.contains("has cuts or object names but is not stored as content objects"),
            "{e}"
        );
        // Two chunks with the same bytes are one object.
        let mut same = incremental_sample();
        same.entries[1].chunks = Some(vec!["b".repeat(64), "b".repeat(64)]);
        let e = refused(same.clone());
        assert!(e.contains("do not match its entries"), "{e}");
        same.objects.as_mut().unwrap().objects = 1;
        Manifest::from_bytes(&same.to_bytes(), "s", "k").unwrap();
        // Format 3 says incremental.
        let mut v1 = incremental_sample();
        v1.format_version = FORMAT_VERSION;
        let e = refused(v1);
        assert!(e.contains("does not fit an incremental snapshot"), "{e}");
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let mut m = sample();
        let bytes = m.to_bytes();
        let back = Manifest::from_bytes(&bytes, "s", "k").unwrap();
        assert_eq!(back, m);

        let text = String::from_utf8(bytes.clone()).unwrap();
        let edited = text.replace("\"node_id\": 1", "\"node_id\": 2");
        assert_ne!(edited, text);
        let e = Manifest::from_bytes(edited.as_bytes(), "s", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");

        let e = Manifest::from_bytes(&bytes[..bytes.len() / 2], "s", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn unsafe_entry_paths_are_refused_even_with_a_valid_checksum() {
        let mut m = sample();
        m.entries[1].path = "logdir-0/../../etc/passwd".into();
        let bytes = m.to_bytes();
        let e = Manifest::from_bytes(&bytes, "s", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains(".."), "{e}");
    }

    #[test]
    fn an_encrypted_manifest_keeps_its_entries_sealed_and_its_format_straight() {
        let plain = sample();
        let mut m = sample();
        m.format_version = FORMAT_VERSION_ENCRYPTED;
        m.archive.file = ENCRYPTED_ARCHIVE_FILE.into();
        m.encryption = Some(EncryptionRecord {
            scheme: AGE_SCHEME.into(),
            recipients: vec![recipient_fingerprint("age1x")],
            sealed_entries: "AAAA".into(),
        });
        let entries = std::mem::take(&mut m.entries);
        let bytes = m.to_bytes();
        let mut back = Manifest::from_bytes(&bytes, "s", "k").unwrap();
        assert!(back.is_encrypted() && !back.has_entries());
        let sealed = |id: &str| {
            serde_json::to_vec(&SealedEntries {
                snapshot_id: id.into(),
                entries: entries.clone(),
            })
            .unwrap()
        };
        let e = back
            .clone()
            .unseal(&sealed("another"), "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("belong to snapshot another"), "{e}");
        back.unseal(&sealed(&plain.snapshot_id), "k").unwrap();
        assert_eq!(back.entries, plain.entries);

        // What a format-2 manifest must be, and a format-1 must not.
        for (what, edit) in [
            ("lists its entries in the clear", {
                let e = entries.clone();
                Box::new(move |m: &mut Manifest| m.entries = e.clone())
                    as Box<dyn Fn(&mut Manifest)>
            }),
            (
                "does not fit",
                Box::new(|m: &mut Manifest| m.format_version = FORMAT_VERSION),
            ),
            (
                "is not \"archive.tar.zst.age\"",
                Box::new(|m: &mut Manifest| m.archive.file = ARCHIVE_FILE.into()),
            ),
            (
                "no recipients",
                Box::new(|m: &mut Manifest| m.encryption.as_mut().unwrap().recipients.clear()),
            ),
            (
                "does not fit",
                Box::new(|m: &mut Manifest| {
                    m.encryption = None;
                    m.entries = plain.entries.clone();
                }),
            ),
        ] {
            let mut bad = m.clone();
            edit(&mut bad);
            let e = Manifest::from_bytes(&bad.to_bytes(), "s", "k")
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    /// `incremental_sample` encrypted: its entries sealed, its chunks named
    /// by a key.
    fn encrypted_incremental_sample() -> (Manifest, Vec<EntryRecord>) {
        let mut m = incremental_sample();
        m.format_version = FORMAT_VERSION_ENCRYPTED_INCREMENTAL;
        m.archive.file = ENCRYPTED_ARCHIVE_FILE.into();
        m.encryption = Some(EncryptionRecord {
            scheme: AGE_SCHEME.into(),
            recipients: vec![recipient_fingerprint("age1x")],
            sealed_entries: "AAAA".into(),
        });
        m.entries[1].objects = Some(vec!["e".repeat(64), "d".repeat(64)]);
        m.objects.as_mut().unwrap().sealed = Some(SealedObjects {
            key: "hmac:0011223344556677".into(),
            names: vec!["d".repeat(64), "e".repeat(64)],
        });
        let entries = std::mem::take(&mut m.entries);
        (m, entries)
    }

    #[test]
    fn an_encrypted_incremental_manifest_lists_its_object_names_and_seals_the_rest() {
        let (mut m, entries) = encrypted_incremental_sample();
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            !text.contains(&"b".repeat(64)),
            "a chunk's SHA-256 in the clear"
        );
        let mut back = Manifest::from_bytes(&bytes, "s", "k").unwrap();
        // Retention needs no identity: the names are in the clear.
        let clear: Vec<&String> = back.referenced_objects().collect();
        assert_eq!(clear, [&"d".repeat(64), &"e".repeat(64)]);
        let sealed = |entries: &[EntryRecord]| {
            serde_json::to_vec(&SealedEntries {
                snapshot_id: m.snapshot_id.clone(),
                entries: entries.to_vec(),
            })
            .unwrap()
        };
        back.clone().unseal(&sealed(&entries), "k").unwrap();
        back.unseal(&sealed(&entries), "k").unwrap();
        assert_eq!(
            back.entries[1].object_names(),
            ["e".repeat(64), "d".repeat(64)]
        );
        assert_eq!(
            back.entries[1].chunk_shas(),
            ["b".repeat(64), "c".repeat(64)]
        );

        // The sealed entries must use exactly the names listed.
        for (what, edit) in [
            ("are not the 2 objects.sealed lists", {
                Box::new(|e: &mut Vec<EntryRecord>| {
                    e[1].objects = Some(vec!["e".repeat(64), "f".repeat(64)])
                }) as Box<dyn Fn(&mut Vec<EntryRecord>)>
            }),
            (
                "1 object names for 2 chunks",
                Box::new(|e: &mut Vec<EntryRecord>| e[1].objects = Some(vec!["e".repeat(64)])),
            ),
            (
                "chunks must be named",
                Box::new(|e: &mut Vec<EntryRecord>| e[1].objects = None),
            ),
            (
                "is named twice, differently",
                Box::new(|e: &mut Vec<EntryRecord>| {
                    e[1].chunks = Some(vec!["b".repeat(64), "b".repeat(64)])
                }),
            ),
        ] {
            let mut bad = entries.clone();
            edit(&mut bad);
            let (mut fresh, _) = encrypted_incremental_sample();
            let mut fresh = Manifest::from_bytes(&fresh.to_bytes(), "s", "k").unwrap();
            let e = fresh.unseal(&sealed(&bad), "k").unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
        // And the clear part must hold together on its own.
        fn names(m: &mut Manifest) -> &mut Vec<String> {
            &mut m.objects.as_mut().unwrap().sealed.as_mut().unwrap().names
        }
        for (what, edit) in [
            ("not sorted, each once", {
                Box::new(|m: &mut Manifest| names(m).reverse()) as Box<dyn Fn(&mut Manifest)>
            }),
            (
                "lists 1 names for 2 objects",
                Box::new(|m: &mut Manifest| {
                    names(m).pop();
                }),
            ),
            (
                "does not name its content objects",
                Box::new(|m: &mut Manifest| m.objects.as_mut().unwrap().sealed = None),
            ),
            (
                "does not fit an encrypted incremental snapshot (format 4)",
                Box::new(|m: &mut Manifest| m.format_version = FORMAT_VERSION_INCREMENTAL),
            ),
        ] {
            let (mut bad, _) = encrypted_incremental_sample();
            edit(&mut bad);
            let e = Manifest::from_bytes(&bad.to_bytes(), "s", "k")
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
        // An unencrypted manifest names its objects by their SHA-256 only.
        let mut plain = incremental_sample();
        plain.entries[1].objects = Some(vec!["e".repeat(64), "d".repeat(64)]);
        let e = Manifest::from_bytes(&plain.to_bytes(), "s", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("but the snapshot is not encrypted"), "{e}");
        let mut plain = incremental_sample();
        plain.objects.as_mut().unwrap().sealed =
            encrypted_incremental_sample().0.objects.unwrap().sealed;
        let e = Manifest::from_bytes(&plain.to_bytes(), "s", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("by a key, but is not encrypted"), "{e}");
    }
}
