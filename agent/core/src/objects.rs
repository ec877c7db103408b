//! Content objects: how an incremental snapshot stores its larger files
//! once for the whole cluster instead of once per snapshot.
//!
//! A rolled Kafka segment (`.log`, `.index`, `.timeindex`, `.txnindex`)
//! does not change until retention deletes it or the log cleaner replaces
//! it with new files, so most of a broker's bytes are the same from one
//! snapshot to the next. Every file of at least `min_size` bytes is cut
//! into chunks of `chunk_size` bytes from its start (the last one shorter),
//! and each chunk is kept as the object of its SHA-256
//! (`<cluster>/objects/<ab>/<sha256>.zst`, a zstd frame of the chunk's
//! bytes, see [`kafka_snapshot_model::layout::content_object_key`]),
//! uploaded only if no snapshot of the cluster uploaded it before.
//! Identity is by content, never by name: index files are preallocated and
//! trimmed at roll, and rebuilt after an unclean stop. Chunks fixed from
//! the start of a file are what makes the active segment cheap: Kafka
//! only appends to it, so from one snapshot to the next every full chunk
//! before its end is unchanged, and only the last chunk and the new ones
//! are uploaded. A file the same on two replicas (a size-rolled segment)
//! is the same chunks, stored once.
//!
//! The order keeps every complete snapshot whole: the objects a snapshot
//! references are all found in storage (uploaded, or listed) before its
//! manifest is written, and checked once more right before it.

use crate::fsat::Beneath;
use crate::hashcache::{rolled_segments, FileHashes, HashCache};
use crate::logdir::{Entry, EntryKind, Inventory};
use crate::source::{advise, changed, read_some, zstd_encoder};
use crate::storage::ColdStore;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::layout::{content_object_key, objects_prefix, parse_content_object_key};
use kafka_snapshot_model::manifest::ObjectsRecord;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The default `snapshot.object_chunk_size`: what Kafka appends to a
/// segment costs its last chunk again at the next snapshot (half of this
/// on average, per partition written to), and each chunk costs about 75
/// bytes of manifest (about 19 KiB per GiB of data kept as objects).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// The chunk sizes accepted: a power of two from 64 KiB to 1 GiB.
pub fn check_chunk_size(size: u64) -> std::result::Result<(), String> {
    if size.is_power_of_two() && ((64 << 10)..=(1 << 30)).contains(&size) {
        Ok(())
    } else {
        Err(format!(
            "{size} bytes: must be a power of two from 64KiB to 1GiB"
        ))
    }
}

/// The default `snapshot.object_min_size`: a rolled segment of any real
/// size and its indexes are above it; partition metadata, checkpoints and
/// the small files of near-empty partitions stay in the snapshot's own
/// archive, so a broker of many small partitions does not turn into as
/// many objects.
pub const DEFAULT_MIN_SIZE: u64 = 1 << 20;

const BUF: usize = 1 << 20;

/// How an incremental snapshot stores its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectOptions {
    /// Files of at least this many bytes become content objects.
    pub min_size: u64,
    /// The size of their chunks (each chunk is one object).
    pub chunk_size: u64,
    /// Where the hashes of rolled segment files are kept from one snapshot
    /// to the next ([`crate::hashcache`]); `None`: every file is read.
    pub hash_cache: Option<PathBuf>,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            min_size: DEFAULT_MIN_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            hash_cache: None,
        }
    }
}

/// The content objects of `cluster` in storage: SHA-256 -> stored size.
/// One listing of the cluster's `objects/` prefix.
pub fn present(store: &dyn ColdStore, cluster: &str) -> Result<HashMap<String, u64>> {
    Ok(store
        .list(&objects_prefix(cluster))?
        .into_iter()
        .filter_map(|o| parse_content_object_key(cluster, &o.key).map(|s| (s.to_string(), o.size)))
        .collect())
}

/// What an interrupted upload of an object leaves under the cluster's
/// `objects/` prefix: temporary objects (a file store's) and unfinished
/// multipart uploads (S3's). Only the coordinator's retention removes
/// them, and only while no snapshot is being written.
pub fn leftovers(
    store: &dyn ColdStore,
    cluster: &str,
) -> Result<(Vec<String>, Vec<crate::storage::PendingUpload>)> {
    let prefix = objects_prefix(cluster);
    let temporary = store
        .list(&prefix)?
        .into_iter()
        .filter(|o| parse_content_object_key(cluster, &o.key).is_none())
        .map(|o| o.key)
        .collect();
    Ok((temporary, store.pending_uploads(&prefix)?))
}

/// What [`store_objects`] did: the hashes of every inventory entry kept
/// as objects (`None` for the entries the snapshot's archive holds), and
/// the summary the manifest records.
#[derive(Debug)]
pub struct Stored {
    pub hashes: Vec<Option<FileHashes>>,
    pub record: ObjectsRecord,
}

impl Stored {
    /// Every object the snapshot references.
    pub fn referenced(&self) -> impl Iterator<Item = &String> {
        self.hashes.iter().flatten().flat_map(|h| &h.chunks)
    }
}

/// Whether `e` is kept as content objects under `opts`.
fn is_object(e: &Entry, opts: &ObjectOptions) -> bool {
    matches!(e.kind, EntryKind::File) && e.size >= opts.min_size
}

/// `inv` without the entries kept as objects: what the snapshot's own
/// archive holds.
pub fn archived(inv: &Inventory, opts: &ObjectOptions) -> Inventory {
    Inventory {
        dirs: inv.dirs.clone(),
        entries: inv
            .entries
            .iter()
            .filter(|e| !is_object(e, opts))
            .cloned()
            .collect(),
        skipped_deleting: inv.skipped_deleting.clone(),
    }
}

/// Hashes every file of at least `opts.min_size` bytes of `inv` (read from
/// `content_roots`) and each of its chunks, and uploads the chunks whose
/// object is not in storage yet. A file that changes between the two
/// reads fails the snapshot, and the object is never made visible.
pub fn store_objects(
    store: &dyn ColdStore,
    cluster: &str,
    inv: &Inventory,
    content_roots: &[PathBuf],
    opts: &ObjectOptions,
    compress: (i32, u32),
    cancel: Option<&AtomicBool>,
) -> Result<Stored> {
    let mut trees = content_roots
        .iter()
        .map(|r| Beneath::open_root(r).map_err(|e| crate::fsat::swapped(r, e)))
        .collect::<Result<Vec<_>>>()?;
    let mut buf = vec![0u8; BUF];
    let rolled = rolled_segments(inv);
    let mut cache = opts
        .hash_cache
        .as_deref()
        .map(|p| HashCache::load(p, inv, opts.chunk_size));
    let mut reader = Reader {
        inv,
        content_roots,
        trees: &mut trees,
        buf: &mut buf,
        cancel,
        chunk_size: opts.chunk_size,
    };
    let mut hashes = Vec::with_capacity(inv.entries.len());
    let mut trusted = vec![false; inv.entries.len()];
    for (i, e) in inv.entries.iter().enumerate() {
        if !is_object(e, opts) {
            hashes.push(None);
            continue;
        }
        let log_dir = &inv.dirs[e.dir_index].path;
        let known = cache
            .as_ref()
            .and_then(|c| c.lookup(log_dir, e, rolled[i]))
            .cloned();
        trusted[i] = known.is_some();
        let h = match known {
            Some(h) => h,
            None => reader.hash(e)?,
        };
        if let Some(c) = &mut cache {
            c.record(log_dir, e, rolled[i], &h);
        }
        hashes.push(Some(h));
    }
    let existing = present(store, cluster)?;
    // Hashes taken from the record with an object that is not stored: the
    // file is read after all (to be uploaded), and hashed from its bytes.
    for i in 0..hashes.len() {
        let stored = |h: &FileHashes| h.chunks.iter().all(|c| existing.contains_key(c));
        if trusted[i] && !hashes[i].as_ref().is_some_and(stored) {
            trusted[i] = false;
            let e = &inv.entries[i];
            let log_dir = &inv.dirs[e.dir_index].path;
            let h = reader.hash(e)?;
            if let Some(c) = &mut cache {
                c.forget(log_dir, e);
                c.record(log_dir, e, rolled[i], &h);
            }
            hashes[i] = Some(h);
        }
    }
    if let Some(c) = &cache {
        // Only time is lost without it.
        if let Err(e) = c.save() {
            tracing::warn!(error = %e, "the hash record was not saved; the next snapshot reads every file");
        }
    }
    let mut record = ObjectsRecord {
        min_size: opts.min_size,
        chunk_size: opts.chunk_size,
        files: 0,
        bytes: 0,
        objects: 0,
        uploaded: 0,
        uploaded_bytes: 0,
        uploaded_stored_bytes: 0,
        hashed: 0,
        hashed_bytes: 0,
    };
    let mut seen = HashSet::new();
    for ((e, h), trusted) in inv.entries.iter().zip(&hashes).zip(&trusted) {
        let Some(h) = h else { continue };
        record.files += 1;
        record.bytes += e.size;
        if !trusted {
            record.hashed += 1;
            record.hashed_bytes += e.size;
        }
        let mut missing = Vec::new();
        for (index, c) in h.chunks.iter().enumerate() {
            if !seen.insert(c.as_str()) {
                continue;
            }
            record.objects += 1;
            if !existing.contains_key(c) {
                missing.push(index);
            }
        }
        if !missing.is_empty() {
            reader.upload(
                store,
                cluster,
                e,
                &h.chunks,
                &missing,
                compress.0,
                &mut record,
            )?;
        }
    }
    Ok(Stored { hashes, record })
}

/// Reads the files of a snapshot's inventory from its content roots.
struct Reader<'a> {
    inv: &'a Inventory,
    content_roots: &'a [PathBuf],
    trees: &'a mut [Beneath],
    buf: &'a mut [u8],
    cancel: Option<&'a AtomicBool>,
    chunk_size: u64,
}

impl Reader<'_> {
    fn open(&mut self, e: &Entry) -> Result<(fs::File, PathBuf)> {
        let src = self.content_roots[e.dir_index].join(&e.rel);
        let f = self.trees[e.dir_index]
            .open(&e.rel)
            .map_err(|err| crate::fsat::swapped(&src, err))?;
        Ok((f, src))
    }

    /// The SHA-256 of `e`'s bytes and of each of its chunks: one read.
    fn hash(&mut self, e: &Entry) -> Result<FileHashes> {
        let (mut f, src) = self.open(e)?;
        let log_dir = &self.inv.dirs[e.dir_index].path;
        advise(&f, libc::POSIX_FADV_SEQUENTIAL);
        let mut chunks = ChunkHasher::new(self.chunk_size);
        let sha256 = copy_range(
            &mut f,
            &src,
            e,
            log_dir,
            (0, e.size),
            self.cancel,
            self.buf,
            &mut chunks,
        )?;
        let mut probe = [0u8; 1];
        if read_some(&mut f, &mut probe).ctx(|| format!("reading {}", src.display()))? != 0 {
            return Err(changed(log_dir, e, "grew"));
        }
        // Leave the page cache to the running broker.
        advise(&f, libc::POSIX_FADV_DONTNEED);
        Ok(FileHashes {
            sha256,
            chunks: chunks.finish(),
        })
    }

    /// Uploads chunks `missing` of `e` (whose chunk hashes are `chunks`),
    /// each compressed as the object of its hash, and made visible only if
    /// the bytes sent hash to it.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &mut self,
        store: &dyn ColdStore,
        cluster: &str,
        e: &Entry,
        chunks: &[String],
        missing: &[usize],
        level: i32,
        record: &mut ObjectsRecord,
    ) -> Result<()> {
        let (mut f, src) = self.open(e)?;
        let log_dir = &self.inv.dirs[e.dir_index].path;
        for &index in missing {
            let offset = index as u64 * self.chunk_size;
            let len = self.chunk_size.min(e.size.saturating_sub(offset));
            let key = content_object_key(cluster, &chunks[index]);
            // Incompressible data grows by no more than zstd's framing.
            let hint = len + len / 100 + (64 << 10);
            let writer = store.create_sized(&key, hint)?;
            // A chunk is one zstd job: more workers would not share it.
            let mut enc =
                zstd_encoder(writer, level, 1).map_err(|e| Error::io("setting up zstd", e))?;
            let sent = copy_range(
                &mut f,
                &src,
                e,
                log_dir,
                (offset, len),
                self.cancel,
                self.buf,
                &mut enc,
            )?;
            if sent != chunks[index] {
                // Dropping the writer unfinished discards the upload.
                return Err(changed(log_dir, e, "changed"));
            }
            let writer = enc
                .finish()
                .map_err(|err| store.error(&key, format!("writing: {err}")))?;
            crate::failpoint("before-object-finish");
            record.uploaded_stored_bytes += writer.finish()?;
            record.uploaded += 1;
            record.uploaded_bytes += len;
        }
        advise(&f, libc::POSIX_FADV_DONTNEED);
        Ok(())
    }
}

/// The SHA-256 of every `size` bytes written to it, in order.
struct ChunkHasher {
    size: u64,
    filled: u64,
    current: Sha256,
    done: Vec<String>,
}

impl ChunkHasher {
    fn new(size: u64) -> Self {
        ChunkHasher {
            size,
            filled: 0,
            current: Sha256::new(),
            done: Vec::new(),
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.filled > 0 {
            self.done.push(hex::encode(self.current.finalize()));
        }
        self.done
    }
}

impl Write for ChunkHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (self.size - self.filled).min(buf.len() as u64) as usize;
        self.current.update(&buf[..room]);
        self.filled += room as u64;
        if self.filled == self.size {
            let full = std::mem::replace(&mut self.current, Sha256::new());
            self.done.push(hex::encode(full.finalize()));
            self.filled = 0;
        }
        Ok(room)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks that every object in `shas` is in storage: the last step before
/// a manifest that references them is written.
pub fn check_present<'a>(
    store: &dyn ColdStore,
    cluster: &str,
    snapshot: &str,
    shas: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    let existing = present(store, cluster)?;
    let missing: Vec<&String> = shas
        .into_iter()
        .filter(|s| !existing.contains_key(*s))
        .collect();
    if let Some(first) = missing.first() {
        return Err(store.error(
            &content_object_key(cluster, first),
            format!(
                "snapshot {snapshot}: {} of the content objects it references {} not in \
                 storage after they were uploaded or found; the snapshot is not committed",
                missing.len(),
                if missing.len() == 1 { "is" } else { "are" }
            ),
        ));
    }
    Ok(())
}

/// Reads the `len` bytes of `f` from `offset` into `out` and returns
/// their SHA-256; fails if the file ends before them.
#[allow(clippy::too_many_arguments)]
fn copy_range(
    f: &mut fs::File,
    src: &Path,
    e: &Entry,
    log_dir: &Path,
    (offset, len): (u64, u64),
    cancel: Option<&AtomicBool>,
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<String> {
    f.seek(SeekFrom::Start(offset))
        .ctx(|| format!("reading {}", src.display()))?;
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::unavailable(
                "archiving cancelled",
                "the agent is shutting down",
            ));
        }
        let want = buf.len().min(left as usize);
        let n = read_some(f, &mut buf[..want]).ctx(|| format!("reading {}", src.display()))?;
        if n == 0 {
            return Err(changed(log_dir, e, "shrank"));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .ctx(|| format!("writing {} to storage", src.display()))?;
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}
