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
//! before its end is unchanged. The chunk it ended in is cut where the
//! last snapshot ended it (see [`crate::hashcache::plan_cuts`]): the part
//! before is the object stored then, and only the appended bytes are
//! uploaded. A file the same on two replicas (a size-rolled segment) is
//! the same chunks, stored once, but for the chunks the two agents cut at
//! other places.
//!
//! The order keeps every complete snapshot whole: the objects a snapshot
//! references are all found in storage (uploaded, or listed) before its
//! manifest is written, and checked once more right before it.

use crate::crypt::{ObjectKey, Recipients};
use crate::fsat::Beneath;
use crate::hashcache::{rolled_segments, FileHashes, HashCache, KeptHash};
use crate::hashing::{Midstate, Sha256Stream};
use crate::kept::Kept;
use crate::logdir::{Entry, EntryKind, Inventory};
use crate::source::{zstd_encoder, Buf, SourceFile};
use crate::storage::ColdStore;
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::layout::{content_object_key, objects_prefix, parse_content_object_key};
use kafka_snapshot_model::manifest::{chunk_spans, ObjectsRecord, SealedObjects};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
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
    /// The cluster's object key: an encrypted snapshot's objects are named
    /// by it ([`Seal`]). Needed when the snapshot is encrypted.
    pub object_key: Option<ObjectKey>,
}

/// How an encrypted snapshot writes its objects: each is the zstd frame of
/// its chunk encrypted to `recipients` (age), named by `key` (see
/// [`ObjectKey::name`]). An unencrypted snapshot names an object by its
/// chunk's SHA-256 and stores the zstd frame as it is.
#[derive(Clone, Copy)]
pub struct Seal<'a> {
    pub recipients: &'a Recipients,
    pub key: &'a ObjectKey,
}

/// How [`store_objects`] writes the objects it uploads.
#[derive(Clone, Copy)]
pub struct Writing<'a> {
    /// Encrypted and keyed names, or `None`.
    pub seal: Option<Seal<'a>>,
    /// zstd level and threads.
    pub compress: (i32, u32),
    /// Set when the agent must stop: the uploads stop with an error.
    pub cancel: Option<&'a AtomicBool>,
}

/// The name of the object of the chunk whose SHA-256 is `sha`.
fn object_name(seal: Option<Seal>, sha: &str) -> String {
    match seal {
        Some(s) => s.key.name(sha),
        None => sha.to_string(),
    }
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            min_size: DEFAULT_MIN_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            hash_cache: None,
            object_key: None,
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
    /// An encrypted snapshot's: the name of the object of each chunk's
    /// SHA-256.
    pub names: Option<HashMap<String, String>>,
}

impl Stored {
    /// The name of every object the snapshot references.
    pub fn referenced(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        let chunks = self.hashes.iter().flatten().flat_map(|h| &h.chunks);
        match &self.names {
            Some(names) => Box::new(chunks.filter_map(|c| names.get(c))),
            None => Box::new(chunks),
        }
    }

    /// The names of the objects of `h`'s chunks, in order: `None` when the
    /// snapshot is unencrypted (its chunks' SHA-256 are the names).
    pub fn names_of(&self, h: &FileHashes) -> Option<Vec<String>> {
        let names = self.names.as_ref()?;
        Some(h.chunks.iter().map(|c| names[c].clone()).collect())
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

/// Where the files of a snapshot are read from.
pub struct Content<'a> {
    /// Per log dir of the inventory: the log dir itself (copy capture) or
    /// its clone in staging.
    pub roots: &'a [PathBuf],
    /// The roots are reflink staging: with a hash record, the clones of
    /// the active segments' files are kept for the next snapshot, which
    /// then reads them only from near their end ([`crate::kept`]).
    pub staged: bool,
}

/// How far into an appended file the last snapshot's hashes still hold.
struct Resume {
    /// Where reading starts (a multiple of 64): the file's SHA-256 goes on
    /// from here.
    from: u64,
    /// Where the first chunk read starts (the bytes from `from` on go to
    /// the file's SHA-256 only).
    chunk_start: u64,
    whole: Sha256Stream,
    /// The hashes of the chunks before `chunk_start`.
    chunks: Vec<String>,
    /// The midstates of the last snapshot before `from`.
    midstates: Vec<Midstate>,
}

/// A file to read: its inventory index, its cuts, where its reading
/// starts if not at 0, and, for a file whose clone is kept, the inode of
/// the clone and where to save the SHA-256's state.
struct ToRead {
    index: usize,
    cuts: Vec<u64>,
    resume: Option<Resume>,
    keep: Option<(u64, Vec<u64>)>,
}

/// Hashes every file of at least `opts.min_size` bytes of `inv` (read from
/// `content.roots`) and each of its chunks, and uploads the chunks whose
/// object is not in storage yet. One read: a chunk to upload is the bytes
/// that were hashed, kept in memory and compressed and written by a few
/// worker threads ([`Uploads`]) while the next chunks are read.
pub fn store_objects(
    store: &dyn ColdStore,
    cluster: &str,
    inv: &Inventory,
    content: &Content,
    opts: &ObjectOptions,
    writing: &Writing,
) -> Result<Stored> {
    let Writing {
        seal,
        compress,
        cancel,
    } = *writing;
    let content_roots = content.roots;
    let mut trees = content_roots
        .iter()
        .map(|r| Beneath::open_root(r).map_err(|e| crate::fsat::swapped(r, e)))
        .collect::<Result<Vec<_>>>()?;
    let rolled = rolled_segments(inv);
    let mut cache = opts
        .hash_cache
        .as_deref()
        .map(|p| HashCache::load(p, inv, opts.chunk_size));
    let kept = match (&cache, content.staged) {
        (Some(c), true) => Some(Kept::beside(content_roots, c.kept_generation())),
        _ => None,
    };
    // Listed before anything is read: this snapshot's archive is already
    // in storage, incomplete, so retention removes no object from now on.
    let existing = present(store, cluster)?;
    let stored = |sha: &str| existing.contains_key(&object_name(seal, sha));
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
        resumed: 0,
        sealed: None,
    };
    // Which files must be read: the hash record's hashes count only with
    // every object stored.
    let mut hashes: Vec<Option<FileHashes>> = Vec::with_capacity(inv.entries.len());
    let mut to_read = Vec::new();
    for (i, e) in inv.entries.iter().enumerate() {
        let known = match is_object(e, opts) {
            false => None,
            true => cache
                .as_ref()
                .and_then(|c| c.lookup(&inv.dirs[e.dir_index].path, e, rolled[i]))
                .filter(|h| h.chunks.iter().all(|c| stored(c)))
                .cloned(),
        };
        if is_object(e, opts) && known.is_none() {
            let log_dir = &inv.dirs[e.dir_index].path;
            let cuts = cache
                .as_ref()
                .map_or_else(Vec::new, |c| c.cuts(log_dir, e, opts.chunk_size));
            let mut item = ToRead {
                index: i,
                cuts,
                resume: None,
                keep: None,
            };
            // A file read from its kept clone last time is read from near
            // its old end, rolled since or not; only an active one's clone
            // is kept for the next snapshot (a rolled one's hashes are).
            if let (Some(k), Some(c)) = (&kept, &cache) {
                let staged = trees[e.dir_index].open(&e.rel).map_err(|err| {
                    crate::fsat::swapped(&content_roots[e.dir_index].join(&e.rel), err)
                })?;
                item.resume = resume(
                    k,
                    c,
                    log_dir,
                    e,
                    &item.cuts,
                    opts.chunk_size,
                    &stored,
                    &staged,
                );
                let ino = staged
                    .metadata()
                    .map_err(|err| {
                        Error::io(
                            format!("stat {}", content_roots[e.dir_index].join(&e.rel).display()),
                            err,
                        )
                    })?
                    .ino();
                let spans = chunk_spans(e.size, opts.chunk_size, &item.cuts);
                let last = spans.last().map_or(0, |&(off, _)| off);
                let mut marks = vec![last / 64 * 64, e.size / 64 * 64];
                marks.dedup();
                item.keep = (!rolled[i]).then_some((ino, marks));
            }
            let from = item.resume.as_ref().map_or(0, |r| r.from);
            tracing::debug!(
                file = %log_dir.join(&e.rel).display(),
                bytes = e.size,
                from,
                rolled = rolled[i],
                "reading a file to hash it (not a rolled segment the hash record knows unchanged)"
            );
            to_read.push(item);
            record.hashed += 1;
            record.hashed_bytes += e.size - from;
            record.resumed += u64::from(from > 0);
        }
        hashes.push(known);
    }
    let uploads = Uploads::new(store, cluster, seal, compress, cancel);
    let hashed = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..uploads.workers {
            scope.spawn(|| uploads.work());
        }
        // The disk is read on a thread of its own, a chunk ahead of the
        // hashing here: direct reads are not read ahead by the kernel.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let reader = Reader {
            inv,
            content_roots,
            trees: &mut trees,
            cancel,
            chunk_size: opts.chunk_size,
        };
        let (to_read, uploads) = (&to_read, &uploads);
        scope.spawn(move || reader.run(to_read, &|| uploads.buffer(), tx));
        let mut queued = HashSet::new();
        let result = (|| {
            for item in to_read {
                let (mut whole, mut chunks, mut midstates) = match &item.resume {
                    Some(r) => (r.whole.clone(), r.chunks.clone(), r.midstates.clone()),
                    None => (Sha256Stream::new(), Vec::new(), Vec::new()),
                };
                let marks = item.keep.as_ref().map_or(&[][..], |(_, m)| &m[..]);
                loop {
                    let got = rx
                        .recv()
                        .map_err(|_| Error::Internal("the object reader thread stopped".into()))?;
                    let bytes = match got {
                        Read::Head(bytes) => {
                            feed(&mut whole, &bytes, marks, &mut midstates);
                            uploads.recycle(bytes);
                            continue;
                        }
                        Read::Chunk(bytes) => bytes,
                        Read::End => break,
                        Read::Failed(e) => return Err(e),
                    };
                    feed(&mut whole, &bytes, marks, &mut midstates);
                    let sha = hex::encode(Sha256::digest(&bytes[..]));
                    if stored(&sha) || !queued.insert(sha.clone()) {
                        uploads.recycle(bytes);
                    } else {
                        uploads.push(&sha, bytes)?;
                    }
                    chunks.push(sha);
                }
                // An empty file read from its end: its state there is all.
                feed(&mut whole, &[], marks, &mut midstates);
                midstates.retain(|m| marks.contains(&m.offset));
                hashes[item.index] = Some(FileHashes {
                    sha256: whole.finish_hex(),
                    chunks,
                    cuts: item.cuts.clone(),
                    kept: item.keep.as_ref().map(|(ino, _)| KeptHash {
                        ino: *ino,
                        midstates,
                    }),
                });
            }
            Ok(())
        })();
        // Whatever happened, the reader and the workers finish and stop.
        drop(rx);
        uploads.close();
        result
    });
    if let (Some(k), Some(c), Ok(())) = (&kept, &mut cache, &hashed) {
        let files: Vec<(usize, &Path)> = inv
            .entries
            .iter()
            .zip(&hashes)
            .filter(|(_, h)| h.as_ref().is_some_and(|h| h.kept.is_some()))
            .map(|(e, _)| (e.dir_index, e.rel.as_path()))
            .collect();
        match k.replace(content_roots, &files) {
            Ok(generation) => c.set_kept_generation(Some(generation)),
            Err(e) => tracing::warn!(error = %e,
                "the clones of the active segments were not kept; the next snapshot reads them whole"),
        }
    }
    if let Some(c) = &mut cache {
        for (i, e) in inv.entries.iter().enumerate() {
            if let Some(h) = &hashes[i] {
                c.record(&inv.dirs[e.dir_index].path, e, rolled[i], h);
            }
        }
    }
    let done = uploads.finish()?;
    hashed?;
    record.uploaded = done.objects;
    record.uploaded_bytes = done.bytes;
    record.uploaded_stored_bytes = done.stored_bytes;
    if let Some(c) = &cache {
        // Only time is lost without it.
        if let Err(e) = c.save() {
            tracing::warn!(error = %e, "the hash record was not saved; the next snapshot reads every file");
        }
    }
    let mut seen = HashSet::new();
    for (e, h) in inv.entries.iter().zip(&hashes) {
        let Some(h) = h else { continue };
        record.files += 1;
        record.bytes += e.size;
        record.objects += h.chunks.iter().filter(|c| seen.insert(c.as_str())).count() as u64;
    }
    let names = seal.map(|s| {
        seen.iter()
            .map(|sha| (sha.to_string(), s.key.name(sha)))
            .collect::<HashMap<_, _>>()
    });
    if let (Some(s), Some(names)) = (seal, &names) {
        let mut listed: Vec<String> = names.values().cloned().collect();
        listed.sort_unstable();
        record.sealed = Some(SealedObjects {
            key: s.key.fingerprint().to_string(),
            names: listed,
        });
    }
    Ok(Stored {
        hashes,
        record,
        names,
    })
}

/// Hashes `bytes` into `whole`, saving its state at each of `marks` it
/// passes (or stands at) that is not saved yet.
fn feed(whole: &mut Sha256Stream, mut bytes: &[u8], marks: &[u64], saved: &mut Vec<Midstate>) {
    loop {
        let at = whole.len();
        let end = at + bytes.len() as u64;
        let next = marks
            .iter()
            .copied()
            .filter(|&m| m >= at && m <= end && !saved.iter().any(|s| s.offset == m))
            .min();
        let Some(m) = next else {
            whole.update(bytes);
            return;
        };
        let (before, after) = bytes.split_at((m - at) as usize);
        whole.update(before);
        saved.extend(whole.midstate());
        bytes = after;
    }
}

/// At most this many bytes before where an appended file is read from
/// are compared with its kept clone when their blocks differ: the block
/// its old end was in, which the append wrote to.
const COMPARE_MAX: u64 = 64 << 10;

/// Where `e`, a file the last snapshot read from a clone that is kept,
/// can be read from now, if that is past its start: the chunks before are
/// the last snapshot's (same spans, objects stored), the file's SHA-256
/// stood there at a saved midstate, and the clone staged now (`staged`)
/// maps every byte before to the same blocks as the kept clone.
#[allow(clippy::too_many_arguments)]
fn resume(
    kept: &Kept,
    cache: &HashCache,
    log_dir: &Path,
    e: &Entry,
    cuts: &[u64],
    chunk_size: u64,
    stored: &dyn Fn(&str) -> bool,
    staged: &std::fs::File,
) -> Option<Resume> {
    let (size, h) = cache.appended(log_dir, e)?;
    let k = h.kept.as_ref()?;
    let old = chunk_spans(size, chunk_size, &h.cuts);
    if old.len() != h.chunks.len() {
        return None;
    }
    let new = chunk_spans(e.size, chunk_size, cuts);
    let same = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let chunk_start = new.get(same).map_or(e.size, |&(off, _)| off);
    let from = chunk_start / 64 * 64;
    let m = k.midstates.iter().find(|m| m.offset == from)?;
    if from == 0 || !h.chunks[..same].iter().all(|c| stored(c)) {
        return None;
    }
    let clone = kept.open(e.dir_index, &e.rel, k.ino, size)?;
    let mut proven = crate::extents::same_prefix(staged, &clone, chunk_start);
    // The block the last snapshot ended the file in was written since
    // (Kafka appended to it), so it is a copy of its own: compared byte
    // for byte instead, up to where the file then ended.
    if proven < chunk_start
        && chunk_start - proven <= COMPARE_MAX
        && crate::extents::same_bytes(staged, &clone, proven, chunk_start)
    {
        proven = chunk_start;
    }
    if proven < chunk_start {
        tracing::debug!(file = %log_dir.join(&e.rel).display(), proven, needed = chunk_start,
            "the kept clone does not share the blocks; reading the file whole");
        return None;
    }
    Some(Resume {
        from,
        chunk_start,
        whole: Sha256Stream::resume(m)?,
        chunks: h.chunks[..same].to_vec(),
        midstates: k
            .midstates
            .iter()
            .filter(|m| m.offset < from)
            .cloned()
            .collect(),
    })
}

/// Reads the files of a snapshot's inventory from its content roots.
struct Reader<'a> {
    inv: &'a Inventory,
    content_roots: &'a [PathBuf],
    trees: &'a mut [Beneath],
    cancel: Option<&'a AtomicBool>,
    chunk_size: u64,
}

/// What the reader thread sends: a file's chunks, then `End`; before the
/// chunks of a file read from near its end, the bytes before the first
/// chunk read, for the file's SHA-256 only.
enum Read {
    Head(Buf),
    Chunk(Buf),
    End,
    Failed(Error),
}

impl Reader<'_> {
    /// Reads the entries `to_read`, in order, each in chunks (cut where
    /// it says, from where it says), into buffers from `buffer`; stops at
    /// the first error (sent) or when the receiver is gone.
    fn run(
        mut self,
        to_read: &[ToRead],
        buffer: &dyn Fn() -> Buf,
        tx: std::sync::mpsc::SyncSender<Read>,
    ) {
        for item in to_read {
            let result = self.read(&self.inv.entries[item.index], item, buffer, &tx);
            let msg = match result {
                Ok(true) => Read::End,
                Ok(false) => return,
                Err(e) => Read::Failed(e),
            };
            let failed = matches!(msg, Read::Failed(_));
            if tx.send(msg).is_err() || failed {
                return;
            }
        }
    }

    /// Sends the chunks of `e`; false when the receiver is gone.
    fn read(
        &mut self,
        e: &Entry,
        item: &ToRead,
        buffer: &dyn Fn() -> Buf,
        tx: &std::sync::mpsc::SyncSender<Read>,
    ) -> Result<bool> {
        let src = self.content_roots[e.dir_index].join(&e.rel);
        let f = self.trees[e.dir_index]
            .open(&e.rel)
            .map_err(|err| crate::fsat::swapped(&src, err))?;
        let log_dir = &self.inv.dirs[e.dir_index].path;
        let mut f = SourceFile::new(f, &src, e, log_dir);
        let (from, chunk_start) = item
            .resume
            .as_ref()
            .map_or((0, 0), |r| (r.from, r.chunk_start));
        if from > 0 {
            f.skip_to(from);
        }
        if chunk_start > from {
            let mut bytes = buffer();
            f.fill(&mut bytes, (chunk_start - from) as usize, self.cancel)?;
            if tx.send(Read::Head(bytes)).is_err() {
                return Ok(false);
            }
        }
        for (_, len) in chunk_spans(e.size, self.chunk_size, &item.cuts)
            .into_iter()
            .filter(|&(off, _)| off >= chunk_start)
        {
            let mut bytes = buffer();
            f.fill(&mut bytes, len as usize, self.cancel)?;
            if tx.send(Read::Chunk(bytes)).is_err() {
                return Ok(false);
            }
        }
        f.finish()?;
        Ok(true)
    }
}

/// A chunk to upload: its SHA-256 and bytes.
type Chunk = (String, Buf);

/// What the upload workers did.
#[derive(Debug, Default)]
struct Uploaded {
    objects: u64,
    bytes: u64,
    stored_bytes: u64,
    error: Option<Error>,
}

/// Chunks to upload, each compressed (one zstd frame, on one thread) and
/// written as the object of its hash by one of a few workers. At most one
/// chunk waits per worker: the memory this takes is about two chunks per
/// worker.
struct Uploads<'a> {
    store: &'a dyn ColdStore,
    cluster: &'a str,
    seal: Option<Seal<'a>>,
    level: i32,
    cancel: Option<&'a AtomicBool>,
    workers: usize,
    queue: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<Chunk>>>,
    jobs: std::sync::Mutex<std::sync::mpsc::Receiver<Chunk>>,
    done: std::sync::Mutex<Uploaded>,
    /// Chunk buffers to use again: allocated once, not per chunk (handed
    /// from thread to thread, freed ones were kept in each thread's heap
    /// and the peak grew with every worker).
    free: std::sync::Mutex<Vec<Buf>>,
}

impl<'a> Uploads<'a> {
    fn new(
        store: &'a dyn ColdStore,
        cluster: &'a str,
        seal: Option<Seal<'a>>,
        (level, threads): (i32, u32),
        cancel: Option<&'a AtomicBool>,
    ) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match threads {
            0 => cpus,
            n => n as usize,
        }
        .clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel(workers.saturating_sub(1));
        Uploads {
            store,
            cluster,
            seal,
            level,
            cancel,
            workers,
            queue: std::sync::Mutex::new(Some(tx)),
            jobs: std::sync::Mutex::new(rx),
            done: std::sync::Mutex::new(Uploaded::default()),
            free: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A buffer for the next chunk: a used one when there is one.
    fn buffer(&self) -> Buf {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Buf::new(0))
    }

    /// Keeps `b` for another chunk (at most one more than can be in
    /// flight).
    fn recycle(&self, b: Buf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() <= self.workers * 2 {
            free.push(b);
        }
    }

    fn failed(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .is_some()
    }

    /// Queues a chunk; fails at once when an upload has failed.
    fn push(&self, sha: &str, bytes: Buf) -> Result<()> {
        if self.failed() {
            return Err(Error::Internal("an upload failed".into()));
        }
        let tx = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match tx {
            Some(tx) if tx.send((sha.to_string(), bytes)).is_ok() => Ok(()),
            _ => Err(Error::Internal("the upload workers stopped".into())),
        }
    }

    /// No more chunks: the workers stop once the queue is empty.
    fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn work(&self) {
        loop {
            let job = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok((sha, bytes)) = job else { return };
            if self.failed() {
                continue;
            }
            let r = self.upload(&sha, &bytes);
            let len = bytes.len() as u64;
            self.recycle(bytes);
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(stored) => {
                    done.objects += 1;
                    done.bytes += len;
                    done.stored_bytes += stored;
                }
                Err(e) => {
                    done.error.get_or_insert(e);
                }
            }
        }
    }

    fn upload(&self, sha: &str, bytes: &[u8]) -> Result<u64> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::unavailable(
                "archiving cancelled",
                "the agent is shutting down",
            ));
        }
        let key = content_object_key(self.cluster, &object_name(self.seal, sha));
        let len = bytes.len() as u64;
        // Incompressible data grows by no more than zstd's framing (and
        // age's: a header, 16 bytes per 64 KiB).
        let writer = self
            .store
            .create_sized(&key, len + len / 100 + (64 << 10))?;
        let failed = |err: std::io::Error| self.store.error(&key, format!("writing: {err}"));
        // A chunk is one zstd job: more threads would not share it.
        let writer = match self.seal {
            None => {
                let mut enc = zstd_encoder(writer, self.level, 1)
                    .map_err(|e| Error::io("setting up zstd", e))?;
                enc.write_all(bytes).map_err(failed)?;
                enc.finish().map_err(failed)?
            }
            Some(seal) => {
                let sealed = seal.recipients.encrypt(writer).map_err(failed)?;
                let mut enc = zstd_encoder(sealed, self.level, 1)
                    .map_err(|e| Error::io("setting up zstd", e))?;
                enc.write_all(bytes).map_err(failed)?;
                enc.finish().map_err(failed)?.finish().map_err(failed)?
            }
        };
        crate::failpoint("before-object-finish");
        writer.finish()
    }

    /// What the workers did, once they have stopped; the first failure.
    fn finish(self) -> Result<Uploaded> {
        let mut done = self.done.into_inner().unwrap_or_else(|p| p.into_inner());
        match done.error.take() {
            Some(e) => Err(e),
            None => Ok(done),
        }
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
