//! Content objects: how an incremental snapshot stores its larger files
//! once for the whole cluster instead of once per snapshot.
//!
//! A rolled Kafka segment (`.log`, `.index`, `.timeindex`, `.txnindex`)
//! does not change until retention deletes it or the log cleaner replaces
//! it with new files, so most of a broker's bytes are the same from one
//! snapshot to the next. Every file of at least `min_size` bytes is kept
//! as the object of its SHA-256 (`<cluster>/objects/<ab>/<sha256>.zst`, a
//! zstd frame of the file's bytes, see
//! [`kafka_snapshot_model::layout::content_object_key`]) and uploaded only
//! if no snapshot of the cluster uploaded it before. Identity is by
//! content, never by name: index files are preallocated and trimmed at
//! roll, and rebuilt after an unclean stop.
//!
//! The order keeps every complete snapshot whole: the objects a snapshot
//! references are all found in storage (uploaded, or listed) before its
//! manifest is written, and checked once more right before it.

use crate::fsat::Beneath;
use crate::hashcache::{rolled_segments, HashCache};
use crate::logdir::{Entry, EntryKind, Inventory};
use crate::source::{advise, changed, read_some, zstd_encoder};
use crate::storage::ColdStore;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::layout::{content_object_key, objects_prefix, parse_content_object_key};
use kafka_snapshot_model::manifest::ObjectsRecord;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Where the hashes of rolled segment files are kept from one snapshot
    /// to the next ([`crate::hashcache`]); `None`: every file is read.
    pub hash_cache: Option<PathBuf>,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            min_size: DEFAULT_MIN_SIZE,
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

/// What [`store_objects`] did: the SHA-256 of every inventory entry kept
/// as an object (`None` for the entries the snapshot's archive holds), and
/// the summary the manifest records.
#[derive(Debug)]
pub struct Stored {
    pub shas: Vec<Option<String>>,
    pub record: ObjectsRecord,
}

/// Whether `e` is kept as a content object under `opts`.
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
/// `content_roots`), and uploads the ones whose object is not in storage
/// yet. A file that changes between the two reads fails the snapshot, and
/// its object is never made visible.
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
    let mut cache = opts.hash_cache.as_deref().map(|p| HashCache::load(p, inv));
    let mut reader = Reader {
        inv,
        content_roots,
        trees: &mut trees,
        buf: &mut buf,
        cancel,
    };
    let mut shas = Vec::with_capacity(inv.entries.len());
    let mut trusted = vec![false; inv.entries.len()];
    for (i, e) in inv.entries.iter().enumerate() {
        if !is_object(e, opts) {
            shas.push(None);
            continue;
        }
        let log_dir = &inv.dirs[e.dir_index].path;
        let known = cache
            .as_ref()
            .and_then(|c| c.lookup(log_dir, e, rolled[i]))
            .map(str::to_string);
        trusted[i] = known.is_some();
        let sha = match known {
            Some(sha) => sha,
            None => reader.hash(e)?,
        };
        if let Some(c) = &mut cache {
            c.record(log_dir, e, rolled[i], &sha);
        }
        shas.push(Some(sha));
    }
    let existing = present(store, cluster)?;
    // A hash taken from the record whose object is not stored: the file is
    // read after all (to be uploaded), and its hash taken from its bytes.
    for i in 0..shas.len() {
        if trusted[i] && !shas[i].as_ref().is_some_and(|s| existing.contains_key(s)) {
            trusted[i] = false;
            let e = &inv.entries[i];
            let log_dir = &inv.dirs[e.dir_index].path;
            let sha = reader.hash(e)?;
            if let Some(c) = &mut cache {
                c.forget(log_dir, e);
                c.record(log_dir, e, rolled[i], &sha);
            }
            shas[i] = Some(sha);
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
    for ((e, sha), trusted) in inv.entries.iter().zip(&shas).zip(&trusted) {
        let Some(sha) = sha else { continue };
        record.files += 1;
        record.bytes += e.size;
        if !trusted {
            record.hashed += 1;
            record.hashed_bytes += e.size;
        }
        if !seen.insert(sha.as_str()) {
            continue;
        }
        record.objects += 1;
        if existing.contains_key(sha) {
            continue;
        }
        let stored = reader.upload(store, &content_object_key(cluster, sha), e, sha, compress)?;
        record.uploaded += 1;
        record.uploaded_bytes += e.size;
        record.uploaded_stored_bytes += stored;
    }
    Ok(Stored { shas, record })
}

/// Reads the files of a snapshot's inventory from its content roots.
struct Reader<'a> {
    inv: &'a Inventory,
    content_roots: &'a [PathBuf],
    trees: &'a mut [Beneath],
    buf: &'a mut [u8],
    cancel: Option<&'a AtomicBool>,
}

impl Reader<'_> {
    fn open(&mut self, e: &Entry) -> Result<(fs::File, PathBuf)> {
        let src = self.content_roots[e.dir_index].join(&e.rel);
        let f = self.trees[e.dir_index]
            .open(&e.rel)
            .map_err(|err| crate::fsat::swapped(&src, err))?;
        Ok((f, src))
    }

    /// The SHA-256 of `e`'s bytes.
    fn hash(&mut self, e: &Entry) -> Result<String> {
        let (f, src) = self.open(e)?;
        let log_dir = &self.inv.dirs[e.dir_index].path;
        copy_exactly(f, &src, e, log_dir, self.cancel, self.buf, &mut io::sink())
    }

    /// Uploads `e` as the object `key`, compressed, and makes it visible
    /// only if the bytes sent hash to `sha`. Returns the stored size.
    fn upload(
        &mut self,
        store: &dyn ColdStore,
        key: &str,
        e: &Entry,
        sha: &str,
        (level, threads): (i32, u32),
    ) -> Result<u64> {
        let (f, src) = self.open(e)?;
        let log_dir = &self.inv.dirs[e.dir_index].path;
        // Incompressible data grows by no more than zstd's framing.
        let hint = e.size + e.size / 100 + (1 << 20);
        let writer = store.create_sized(key, hint)?;
        let mut enc =
            zstd_encoder(writer, level, threads).map_err(|e| Error::io("setting up zstd", e))?;
        let again = copy_exactly(f, &src, e, log_dir, self.cancel, self.buf, &mut enc)?;
        if again != sha {
            // Dropping the writer unfinished discards the upload.
            return Err(changed(log_dir, e, "changed"));
        }
        let writer = enc
            .finish()
            .map_err(|err| store.error(key, format!("writing: {err}")))?;
        crate::failpoint("before-object-finish");
        writer.finish()
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

/// Reads exactly `e.size` bytes of `f` into `out` and returns their
/// SHA-256; fails if the file is shorter or longer than the inventory said.
fn copy_exactly(
    mut f: fs::File,
    src: &Path,
    e: &Entry,
    log_dir: &Path,
    cancel: Option<&AtomicBool>,
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<String> {
    advise(&f, libc::POSIX_FADV_SEQUENTIAL);
    let mut hasher = Sha256::new();
    let mut left = e.size;
    while left > 0 {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::unavailable(
                "archiving cancelled",
                "the agent is shutting down",
            ));
        }
        let want = buf.len().min(left as usize);
        let n = read_some(&mut f, &mut buf[..want]).ctx(|| format!("reading {}", src.display()))?;
        if n == 0 {
            return Err(changed(log_dir, e, "shrank"));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .ctx(|| format!("writing {} to storage", src.display()))?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if read_some(&mut f, &mut probe).ctx(|| format!("reading {}", src.display()))? != 0 {
        return Err(changed(log_dir, e, "grew"));
    }
    // Leave the page cache to the running broker.
    advise(&f, libc::POSIX_FADV_DONTNEED);
    Ok(hex::encode(hasher.finalize()))
}
