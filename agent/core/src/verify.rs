//! Reading an archive back against its manifest. [`walk`] is shared by
//! verify and extract: it checks every tar entry against the manifest (in
//! order, by path, type and size), refuses unsafe entries, hashes every
//! file, and checks the whole archive's size and SHA-256 at the end.
//!
//! An encrypted snapshot is decrypted on the way (storage -> age -> zstd
//! -> tar) with an identity. Without one, [`verify`] checks what it can:
//! that the stored bytes are the ones committed (size and SHA-256 of the
//! ciphertext), and says that the contents were not checked.

use crate::catalog::load_manifest;
use crate::crypt::{self, Identities};
use crate::hashing::{drain, read_from_buffer, Buffered, HashingReader};
use crate::logdir::check_symlink_target;
use crate::storage::ColdStore;
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::layout::{content_object_key, SnapshotRef};
use kafka_snapshot_model::manifest::{check_entry_path, EntryRecord, EntryType, Manifest};
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

/// Receives every entry's data while the archive is read.
pub trait Visitor {
    /// `data` yields the entry's bytes (empty for dirs and symlinks),
    /// best read through its buffer (`fill_buf`, `consume`): an object's
    /// chunk is then handed out where it lies, with no copy. The walker
    /// checks the hash after this returns, and reads whatever the visitor
    /// left unread.
    fn entry(&mut self, rec: &EntryRecord, data: &mut dyn BufRead) -> Result<()>;

    /// Whether a file stored as content objects is also checked against
    /// its whole SHA-256 (true), or only chunk by chunk against the
    /// objects' names (false). Either checks every byte: a chunk that
    /// hashes to its name in the checksummed manifest is the chunk read
    /// when the snapshot was made. The whole hash is one more pass over
    /// the file on the thread that hands it to the visitor, and it adds
    /// only a check of the manifest against itself (that the chunks make
    /// up the file it names): `archive verify` does it, a restore, which
    /// waits on that thread, does not.
    fn whole_file_hashes(&self) -> bool {
        true
    }
}

/// Discards data: verification only.
struct Discard;

impl Visitor for Discard {
    fn entry(&mut self, _rec: &EntryRecord, data: &mut dyn BufRead) -> Result<()> {
        drain(data).map_err(|e| Error::io("reading archive", e))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub snapshot_id: String,
    /// Files and bytes checked (0 when the contents were not checked).
    pub files: u64,
    pub bytes: u64,
    pub archive_size: u64,
    pub archive_sha256: String,
    /// Every file was read and its hash checked. False only for an
    /// encrypted snapshot verified without its identity: then only the
    /// stored archive's size and SHA-256 were checked.
    pub contents_checked: bool,
    /// Fingerprints of the recipients an encrypted snapshot was encrypted to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encrypted_to: Vec<String>,
    /// Content objects (chunks) of an incremental snapshot read and checked
    /// against their hash.
    #[serde(skip_serializing_if = "is_zero")]
    pub objects_read: u64,
    /// Content objects verified before (by an earlier verification, see
    /// [`verify_known`]) and only found in storage by listing this time.
    #[serde(skip_serializing_if = "is_zero")]
    pub objects_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Verifies a snapshot in storage without extracting anything; an
/// encrypted one as far as no identity is needed ([`verify_with`]).
pub fn verify(store: &dyn ColdStore, snap: &SnapshotRef) -> Result<(Manifest, Report)> {
    verify_with(store, snap, None)
}

/// Verifies a snapshot in storage without extracting anything. An
/// encrypted snapshot is decrypted with `identity` and checked completely;
/// without an identity only its stored bytes are checked against the
/// manifest (the report says `contents_checked: false`).
pub fn verify_with(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    identity: Option<&Identities>,
) -> Result<(Manifest, Report)> {
    let mut manifest = load_manifest(store, snap)?;
    if manifest.is_encrypted() && identity.is_none() {
        let report = stored_bytes(store, snap, &manifest)?;
        return Ok((manifest, report));
    }
    crypt::unseal(&mut manifest, &snap.manifest_key(), identity)?;
    let report = walk(store, snap, &manifest, identity, &mut Discard)?;
    Ok((manifest, report))
}

/// Verifies a new snapshot of an unencrypted cluster, reading only the
/// content objects that are not `known`: its own archive is read whole
/// and every object it references must be in storage (one listing), but
/// an object an earlier verification read and checked (`known` says so:
/// objects are named after their content and never rewritten) is not
/// downloaded again. What an incremental cycle costs to verify is then
/// what it uploaded, not the whole broker. Files whose chunks were all
/// read also get their whole SHA-256 checked. `verify` reads everything.
pub fn verify_known(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    known: &dyn Fn(&str) -> bool,
) -> Result<(Manifest, Report)> {
    let manifest = load_manifest(store, snap)?;
    if manifest.is_encrypted() {
        let report = stored_bytes(store, snap, &manifest)?;
        return Ok((manifest, report));
    }
    let report = walk_known(store, snap, &manifest, None, &mut Discard, Some(known))?;
    Ok((manifest, report))
}

/// Reads the manifest of `snap` with its entries: an encrypted one's are
/// unsealed with `identity` (refused, naming the recipients, without one
/// or with one that opens none of them).
pub fn load_with_entries(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    identity: Option<&Identities>,
) -> Result<Manifest> {
    let mut m = load_manifest(store, snap)?;
    crypt::unseal(&mut m, &snap.manifest_key(), identity)?;
    Ok(m)
}

/// Checks that the stored archive is the one committed: its size, and the
/// SHA-256 of every stored byte; and that every content object it
/// references (an incremental one) is in storage. Proves nothing about the
/// contents beyond what the writer put there.
fn stored_bytes(store: &dyn ColdStore, snap: &SnapshotRef, m: &Manifest) -> Result<Report> {
    let id = &snap.snapshot_id;
    let key = snap.object_key(&m.archive.file);
    check_stored_size(store, snap, m, &key)?;
    let mut listed = 0;
    if m.is_incremental() {
        let present = crate::objects::present(store, &snap.cluster_id)?;
        let names: std::collections::BTreeSet<&String> = m.referenced_objects().collect();
        let missing: Vec<&&String> = names
            .iter()
            .filter(|n| !present.contains_key(**n))
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::ArchiveCorrupt {
                snapshot: id.clone(),
                message: format!(
                    "{} content object(s) it references are missing, the first {}",
                    missing.len(),
                    content_object_key(&snap.cluster_id, first)
                ),
            });
        }
        listed = names.len() as u64;
    }
    let mut raw = HashingReader::new(store.open(&key)?);
    io::copy(&mut raw, &mut io::sink()).map_err(|e| {
        store.error(
            &key,
            format!("reading the archive of snapshot {id} failed ({e}); nothing is known about the snapshot, verify it again later"),
        )
    })?;
    let (_, size, sha) = raw.finish();
    if size != m.archive.size || sha != m.archive.sha256 {
        return Err(Error::ArchiveCorrupt {
            snapshot: id.clone(),
            message: format!(
                "archive checksum mismatch: {size} bytes with SHA-256 {sha}, manifest says {} bytes with {}",
                m.archive.size, m.archive.sha256
            ),
        });
    }
    Ok(Report {
        snapshot_id: id.clone(),
        files: 0,
        bytes: 0,
        archive_size: size,
        archive_sha256: sha,
        contents_checked: false,
        encrypted_to: m
            .encryption
            .as_ref()
            .map(|e| e.recipients.clone())
            .unwrap_or_default(),
        objects_listed: listed,
        ..Report::default()
    })
}

fn check_stored_size(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    m: &Manifest,
    key: &str,
) -> Result<()> {
    let corrupt = |message: String| Error::ArchiveCorrupt {
        snapshot: snap.snapshot_id.clone(),
        message,
    };
    match store.stat(key)? {
        None => Err(corrupt(format!("archive {key} is missing"))),
        Some(size) if size != m.archive.size => Err(corrupt(format!(
            "archive {key} is {size} bytes but the manifest says {} (truncated or replaced)",
            m.archive.size
        ))),
        Some(_) => Ok(()),
    }
}

/// Streams the archive of `snap` through `visitor`, checking it completely.
/// `m` must have its entries (an encrypted manifest unsealed with
/// `identity`, which decrypts the archive).
pub fn walk(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    m: &Manifest,
    identity: Option<&Identities>,
    visitor: &mut dyn Visitor,
) -> Result<Report> {
    walk_known(store, snap, m, identity, visitor, None)
}

/// [`walk`], reading only the content objects that are not `known` (the
/// visitor then sees no file kept as objects).
fn walk_known(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    m: &Manifest,
    identity: Option<&Identities>,
    visitor: &mut dyn Visitor,
    known: Option<&dyn Fn(&str) -> bool>,
) -> Result<Report> {
    let id = &snap.snapshot_id;
    let corrupt = |message: String| Error::ArchiveCorrupt {
        snapshot: id.clone(),
        message,
    };
    let identity = match (m.is_encrypted(), identity, m.has_entries()) {
        (false, _, _) => None,
        (true, Some(i), true) => Some(i),
        _ => {
            return Err(Error::Internal(format!(
                "snapshot {id}: an encrypted archive read without its identity or entries"
            )))
        }
    };
    let key = snap.object_key(&m.archive.file);
    check_stored_size(store, snap, m, &key)?;
    if m.is_incremental() {
        // One listing first: a missing object fails the snapshot before a
        // byte is read or extracted.
        let present = crate::objects::present(store, &snap.cluster_id)?;
        let missing: Vec<(&EntryRecord, &String)> = m
            .object_entries()
            .flat_map(|e| e.object_names().iter().map(move |c| (e, c)))
            .filter(|(_, c)| !present.contains_key(*c))
            .collect();
        if let Some((first, chunk)) = missing.first() {
            let distinct: std::collections::HashSet<&String> =
                missing.iter().map(|(_, c)| *c).collect();
            return Err(corrupt(format!(
                "{} content object(s) it references are missing, the first {} (of {})",
                distinct.len(),
                content_object_key(&snap.cluster_id, chunk),
                first.path
            )));
        }
    }
    let failed = Arc::new(OnceLock::new());
    let source = SourceReader {
        inner: store.open(&key)?,
        read: 0,
        failed: failed.clone(),
    };
    let broken = Arc::new(AtomicBool::new(false));
    // A storage read that failed makes the decoder and the tar reader fail
    // too, and they report it as damage: it is not. Neither was the
    // archive read, so nothing is known about it (the Unavailable class:
    // a verification that ends so is retried, never recorded as failed).
    let unreadable = |e: &String| {
        store.error(
            &key,
            format!("reading the archive of snapshot {id} failed ({e}); nothing is known about the snapshot, verify it again later"),
        )
    };
    // Decompression (and the archive hash) run on a thread of their own so
    // they overlap with hashing and writing the files on this one.
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
        let decoder = scope.spawn(move || decode(source, tx, identity));
        let result = check_entries(snap, m, visitor, ChunkReader::new(rx, broken.clone()));
        // Dropping the receiver (inside check_entries) stops the decoder
        // early when the entries failed.
        let raw = decoder
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the decoder thread panicked")));
        // The entries failed on the decoder's error, and that error was a
        // storage read: unreadable. Entries that failed on data read
        // intact are damage, even if a read ahead failed meanwhile.
        if let (Err(_), Some(e)) = (&result, failed.get()) {
            if broken.load(Ordering::SeqCst) {
                return Err(unreadable(e));
            }
        }
        let report = result?;
        let (size, sha) = raw.map_err(|e| match failed.get() {
            Some(read) => unreadable(read),
            None => corrupt(format!("reading archive: {e}")),
        })?;
        if size != m.archive.size || sha != m.archive.sha256 {
            return Err(corrupt(format!(
                "archive checksum mismatch: {size} bytes with SHA-256 {sha}, manifest says {} bytes with {}",
                m.archive.size, m.archive.sha256
            )));
        }
        let report = check_objects(store, snap, m, identity, visitor, report, known)?;
        Ok(Report {
            archive_size: size,
            archive_sha256: sha,
            contents_checked: true,
            encrypted_to: m
                .encryption
                .as_ref()
                .map(|e| e.recipients.clone())
                .unwrap_or_default(),
            ..report
        })
    })
}

/// Zero bytes accepted after the end-of-archive marker. This tool writes
/// the two zero blocks of the marker and nothing more; GNU and BSD tar pad
/// the archive to a whole record of 20 blocks (10 KiB), which is the most
/// any tar writer adds with the default blocking factor. How much of the
/// marker the tar reader consumed varies, so a full record is allowed on
/// top of it.
pub const MAX_TAR_PADDING: u64 = 10 * 1024;

const PIPELINE_DEPTH: usize = 4;
const CHUNK: usize = 1 << 20;

/// Reads the compressed (and maybe encrypted) archive, hashing every byte
/// of it as stored, and sends the decompressed stream in chunks. Returns
/// the archive's size and SHA-256.
fn decode(
    source: SourceReader,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    identity: Option<&Identities>,
) -> io::Result<(u64, String)> {
    let mut raw = HashingReader::new(source);
    match identity {
        None => decompress(&mut raw, tx)?,
        Some(ids) => {
            let opened = ids.decrypt(&mut raw).and_then(|r| {
                r.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the archive is not encrypted to identity file {}, though its \
                             manifest is: damaged or replaced",
                            ids.path().display()
                        ),
                    )
                })
            });
            let mut plain = match opened {
                Ok(p) => Decrypting(p),
                Err(e) => {
                    let e = io::Error::new(e.kind(), format!("the encrypted archive: {e}"));
                    let msg = e.to_string();
                    let _ = tx.send(Err(e));
                    return Err(io::Error::other(msg));
                }
            };
            decompress(&mut plain, tx)?;
            // To the end of the age stream: its last chunk is authenticated
            // as the last one, so a cut-off archive is told from a whole one.
            io::copy(&mut plain, &mut io::sink())?;
        }
    }
    // Whatever follows is part of the archive's hash too.
    io::copy(&mut raw, &mut io::sink())?;
    let (_, size, sha) = raw.finish();
    Ok((size, sha))
}

/// Decrypted archive bytes; an error from it is (apart from storage read
/// errors, told apart by [`SourceReader`]) a chunk that failed
/// authentication: damaged or altered ciphertext.
struct Decrypting<R>(R);

impl<R: Read> Read for Decrypting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(
                    e.kind(),
                    format!(
                        "decrypting the archive: {e} (the ciphertext is damaged or was altered)"
                    ),
                )
            }
        })
    }
}

/// Decompresses `input` and sends it in chunks; an error is sent too, so
/// that the entries fail on it. The stream ends (`tx` is dropped) when the
/// zstd data does.
fn decompress<R: Read>(input: R, tx: mpsc::SyncSender<io::Result<Vec<u8>>>) -> io::Result<()> {
    let mut decoder = zstd::stream::read::Decoder::new(input)?;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            match decoder.read(&mut chunk[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let msg = e.to_string();
                    let _ = tx.send(Err(e));
                    return Err(io::Error::other(msg));
                }
            }
        }
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        if tx.send(Ok(chunk)).is_err() {
            // The reader gave up; its error is the one to report.
            return Err(io::Error::other("archive reading stopped early"));
        }
    }
    Ok(())
}

/// The archive as cold storage yields it, remembering the first read
/// error: once zstd and tar have wrapped it, it can no longer be told from
/// damage to the archive.
struct SourceReader {
    inner: Box<dyn Read + Send>,
    read: u64,
    failed: Arc<OnceLock<String>>,
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    let at = self.read;
                    self.failed
                        .get_or_init(|| format!("read error after {at} bytes: {e}"));
                }
                Err(e)
            }
        }
    }
}

/// `Read` over the chunks the decoder thread sends.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
    /// Set when the stream ended with the decoder's error.
    broken: Arc<AtomicBool>,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>, broken: Arc<AtomicBool>) -> Self {
        ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
            broken,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    self.broken.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Checks the decompressed tar stream entry by entry against the manifest.
fn check_entries(
    snap: &SnapshotRef,
    m: &Manifest,
    visitor: &mut dyn Visitor,
    stream: ChunkReader,
) -> Result<Report> {
    let id = &snap.snapshot_id;
    let corrupt = |message: String| Error::ArchiveCorrupt {
        snapshot: id.clone(),
        message,
    };
    let mut archive = tar::Archive::new(stream);
    // Content objects are not in the archive (format 3): checked after it.
    let mut expected = m.entries.iter().filter(|e| !e.is_object());
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut last = String::from("the start of the archive");
    // Nothing may sit below a symlink: extraction would write through it.
    let mut symlinks: Vec<String> = Vec::new();
    // Every entry is read through this one buffer: a restore writes from it.
    let mut entry_buf = vec![0u8; 1 << 20];
    let entries = archive
        .entries()
        .map_err(|e| corrupt(format!("cannot read the archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| corrupt(format!("archive unreadable after {last}: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw_path)
            .map_err(|_| corrupt(format!("entry after {last} has a path that is not UTF-8")))?;
        let unsafe_entry = |reason: String| Error::UnsafeEntry {
            snapshot: id.clone(),
            path: path.clone(),
            reason,
        };
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryType::File,
            tar::EntryType::Directory => EntryType::Dir,
            tar::EntryType::Symlink => EntryType::Symlink,
            tar::EntryType::Link => {
                return Err(unsafe_entry(
                    "hard links are never archived by this tool".into(),
                ))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry("device files are refused".into()))
            }
            tar::EntryType::Fifo => return Err(unsafe_entry("fifos are refused".into())),
            other => return Err(unsafe_entry(format!("unexpected entry type {other:?}"))),
        };
        let clean = if kind == EntryType::Dir {
            path.trim_end_matches('/')
        } else {
            path.as_str()
        };
        check_entry_path(clean, m.log_dirs.len()).map_err(&unsafe_entry)?;
        if let Some(l) = symlinks
            .iter()
            .find(|l| clean.starts_with(&format!("{l}/")))
        {
            return Err(unsafe_entry(format!("lies below the symlink {l}")));
        }
        let link_target = if kind == EntryType::Symlink {
            let t = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| unsafe_entry("symlink without a target".into()))?;
            check_symlink_target(Path::new(&t)).map_err(&unsafe_entry)?;
            symlinks.push(clean.to_string());
            Some(t)
        } else {
            None
        };
        let declared = header
            .size()
            .map_err(|e| corrupt(format!("entry {clean}: bad size field: {e}")))?;
        let rec = expected.next().ok_or_else(|| {
            corrupt(format!("entry {clean} is not in the manifest (the archive has more entries than the manifest lists)"))
        })?;
        if rec.path != clean || rec.kind != kind {
            return Err(corrupt(format!(
                "entry {clean} ({kind:?}) found where the manifest expects {} ({:?})",
                rec.path, rec.kind
            )));
        }
        if declared != rec.size {
            return Err(unsafe_entry(format!(
                "declares {declared} bytes but the manifest says {}",
                rec.size
            )));
        }
        if rec.link_target != link_target {
            return Err(corrupt(format!(
                "symlink {clean} points to {link_target:?}, manifest says {:?}",
                rec.link_target
            )));
        }
        let mut hashed = HashingReader::new(Buffered::new(
            Recording {
                inner: &mut entry,
                error: None,
            },
            &mut entry_buf,
        ));
        let visited = visitor.entry(rec, &mut hashed);
        let drained =
            visited.and_then(|()| drain(&mut hashed).map_err(|e| Error::io("reading archive", e)));
        let (reader, n, sha) = hashed.finish();
        if let Some(e) = reader.into_inner().error {
            // A read error is the archive's fault, whatever the visitor made of it.
            return Err(corrupt(format!("archive unreadable in {clean}: {e}")));
        }
        drained?;
        if n != rec.size {
            return Err(corrupt(format!(
                "{clean}: read {n} bytes, expected {} (truncated archive)",
                rec.size
            )));
        }
        if kind == EntryType::File {
            let want = rec.sha256.as_deref().unwrap_or_default();
            if sha != want {
                return Err(Error::ChecksumMismatch {
                    snapshot: id.clone(),
                    path: clean.to_string(),
                    expected: want.to_string(),
                    actual: sha,
                });
            }
            files += 1;
            bytes = bytes.checked_add(n).ok_or_else(|| {
                corrupt(format!(
                    "file sizes add up to more than {} bytes at {clean}",
                    u64::MAX
                ))
            })?;
        }
        last = format!("entry {clean}");
    }
    if let Some(rec) = expected.next() {
        return Err(corrupt(format!(
            "archive ends after {last}, before {} (truncated archive)",
            rec.path
        )));
    }
    // Past the end-of-archive marker only zero padding may follow, and only
    // as much as a tar writer makes: reading on would let a small archive
    // of compressed zeros keep a verification busy for as long as it likes.
    let mut rest = archive.into_inner().take(MAX_TAR_PADDING + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut padding = 0u64;
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| corrupt(format!("archive unreadable after its last entry: {e}")))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(corrupt(
                "unexpected data after the end of the tar archive".into(),
            ));
        }
        padding += n as u64;
        if padding > MAX_TAR_PADDING {
            return Err(corrupt(format!(
                "more than {MAX_TAR_PADDING} bytes of padding after the end of the tar archive \
                 (a tar writer pads to one 10 KiB record at most): damaged or hostile"
            )));
        }
    }
    Ok(Report {
        snapshot_id: id.clone(),
        files,
        bytes,
        archive_size: 0,
        archive_sha256: String::new(),
        contents_checked: true,
        ..Report::default()
    })
}

/// Reads the content objects of every file an incremental snapshot keeps
/// as objects (after its archive, in manifest order: their dirs came with
/// the archive), chunk by chunk, checking each chunk's size and SHA-256
/// and the whole file's, and hands the file's bytes to `visitor`. An
/// object that is missing, damaged or does not hash to its name is damage
/// to the snapshot; a storage read that failed says nothing about it.
///
/// Chunks are fetched and decompressed ahead, a few at a time on worker
/// threads ([`Prefetch`]), while this thread hashes and writes: the
/// restore of an incremental snapshot is not held to one core.
fn check_objects(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    m: &Manifest,
    identity: Option<&Identities>,
    visitor: &mut dyn Visitor,
    mut report: Report,
    known: Option<&dyn Fn(&str) -> bool>,
) -> Result<Report> {
    let id = &snap.snapshot_id;
    let chunk_size = m.objects.as_ref().map_or(1, |o| o.chunk_size.max(1));
    let records: Vec<&EntryRecord> = m.object_entries().collect();
    let is_known = |sha: &str| known.is_some_and(|k| k(sha));
    // Every chunk to read, file by file; a chunk two files share is read
    // for each (a restore writes both).
    let mut tasks = Vec::new();
    let mut read = std::collections::HashSet::new();
    let mut listed = std::collections::HashSet::new();
    for rec in &records {
        let spans = rec.chunk_spans(chunk_size);
        for ((sha, name), (_, len)) in rec.chunk_shas().iter().zip(rec.object_names()).zip(spans) {
            if is_known(name) {
                listed.insert(name.as_str());
                continue;
            }
            read.insert(name.as_str());
            tasks.push(ChunkTask {
                key: content_object_key(&snap.cluster_id, name),
                sha,
                len,
            });
        }
    }
    report.objects_read = read.len() as u64;
    report.objects_listed = listed.difference(&read).count() as u64;
    let prefetch = Prefetch::new(&tasks, chunk_size, identity);
    std::thread::scope(|scope| {
        for _ in 0..prefetch.workers {
            scope.spawn(|| prefetch.work(store));
        }
        scope.spawn(|| prefetch.hint_ahead(store));
        let result = (|| {
            let mut first = 0;
            for rec in &records {
                let shas = rec.object_names();
                let n = shas.iter().filter(|s| !is_known(s)).count();
                let chunks = first..first + n;
                first += n;
                if n == shas.len() {
                    let r = check_object(store, id, rec, visitor, &prefetch, chunks)?;
                    report.files += 1;
                    report.bytes = report.bytes.saturating_add(r);
                } else {
                    // Some chunks were verified before: the others are
                    // each checked (length and hash), the file's whole
                    // hash cannot be without every byte.
                    let r = check_chunks(store, id, rec, &prefetch, chunks)?;
                    report.bytes = report.bytes.saturating_add(r);
                }
            }
            Ok(report)
        })();
        // Whatever happened, the workers stop.
        prefetch.cancel();
        result
    })
}

/// Reads chunks `chunks` of the prefetch (some of the chunks of `rec`),
/// which checks each; returns their bytes.
fn check_chunks(
    store: &dyn ColdStore,
    id: &str,
    rec: &EntryRecord,
    prefetch: &Prefetch,
    chunks: std::ops::Range<usize>,
) -> Result<u64> {
    let mut source = ObjectReader::new(prefetch, chunks);
    let drained = drain(&mut source);
    object_problem(store, id, rec, source.problem)?;
    drained.map_err(|e| Error::io("reading an object", e))
}

/// One file of [`check_objects`]: its chunks are tasks `chunks` of the
/// prefetch. Returns its size.
fn check_object(
    store: &dyn ColdStore,
    id: &str,
    rec: &EntryRecord,
    visitor: &mut dyn Visitor,
    prefetch: &Prefetch,
    chunks: std::ops::Range<usize>,
) -> Result<u64> {
    let sha = rec.sha256.as_deref().unwrap_or_default();
    let whole = visitor.whole_file_hashes();
    let mut hashed = HashingReader::new(ObjectReader::new(prefetch, chunks));
    if !whole {
        hashed = hashed.counting_only();
    }
    let visited = visitor.entry(rec, &mut hashed);
    let drained =
        visited.and_then(|()| drain(&mut hashed).map_err(|e| Error::io("reading an object", e)));
    let (reader, n, actual) = hashed.finish();
    object_problem(store, id, rec, reader.problem)?;
    drained?;
    if n != rec.size {
        return Err(Error::ArchiveCorrupt {
            snapshot: id.to_string(),
            message: format!(
                "the content objects of {} hold {n} bytes, the file has {}",
                rec.path, rec.size
            ),
        });
    }
    if whole && actual != sha {
        return Err(Error::ChecksumMismatch {
            snapshot: id.to_string(),
            path: rec.path.clone(),
            expected: sha.to_string(),
            actual,
        });
    }
    Ok(n)
}

/// The error for what went wrong reading the content objects of `rec`.
fn object_problem(
    store: &dyn ColdStore,
    id: &str,
    rec: &EntryRecord,
    problem: Option<ObjectProblem>,
) -> Result<()> {
    match problem {
        None => Ok(()),
        Some(ObjectProblem::Storage(e)) => Err(e),
        Some(ObjectProblem::Unreadable { key, message }) => Err(store.error(
            &key,
            format!(
                "reading content object of {} for snapshot {id} failed ({message}); \
                 nothing is known about the snapshot, verify it again later",
                rec.path
            ),
        )),
        Some(ObjectProblem::Corrupt { key, message }) => Err(Error::ArchiveCorrupt {
            snapshot: id.to_string(),
            message: format!("content object {key} of {}: {message}", rec.path),
        }),
    }
}

/// What went wrong reading a file's content objects.
enum ObjectProblem {
    /// Storage refused to open one.
    Storage(Error),
    /// A read from storage failed: nothing is known about the object.
    Unreadable { key: String, message: String },
    /// The object is not the chunk it is named after.
    Corrupt { key: String, message: String },
}

/// One chunk to fetch: its object, SHA-256 and length.
struct ChunkTask<'a> {
    key: String,
    sha: &'a str,
    len: u64,
}

/// Chunks fetched, decompressed and checked ahead of the reader, by a few
/// worker threads, at most `window` chunks beyond the one being read (the
/// memory this takes: `window` chunks).
struct Prefetch<'a> {
    tasks: &'a [ChunkTask<'a>],
    /// Decrypts the objects of an encrypted snapshot.
    identity: Option<&'a Identities>,
    workers: usize,
    window: usize,
    /// How many tasks beyond the one the reader is at storage is told
    /// are read soon ([`ColdStore::will_read`]), by a thread of its own
    /// ([`Prefetch::hint_ahead`]).
    hint: usize,
    state: std::sync::Mutex<PrefetchState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct PrefetchState {
    /// The next task a worker takes.
    next: usize,
    /// Tasks before this one were taken by the reader.
    consumed: usize,
    done: std::collections::BTreeMap<usize, std::result::Result<Vec<u8>, ObjectProblem>>,
    /// Chunk buffers the reader is done with, for the workers to fill
    /// again: a new 4 MiB buffer per chunk was faulted in and zeroed by
    /// the kernel every time.
    free: Vec<Vec<u8>>,
    cancelled: bool,
}

impl<'a> Prefetch<'a> {
    fn new(tasks: &'a [ChunkTask<'a>], chunk_size: u64, identity: Option<&'a Identities>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // About 12 MiB of chunks ahead, and at least one per worker: with
        // the workers' buffers for stored objects (a chunk each), the
        // archive paths stay within 64 MiB.
        let workers = cpus.clamp(1, 4).min(tasks.len().max(1));
        let window = ((12u64 << 20) / chunk_size.max(1)).clamp(workers as u64, 64) as usize;
        // About 64 MiB hinted ahead: page cache the kernel may drop, not
        // memory of this process.
        let hint = ((64u64 << 20) / chunk_size.max(1)).clamp(window as u64, 256) as usize;
        Prefetch {
            tasks,
            identity,
            workers,
            window,
            hint,
            state: std::sync::Mutex::new(PrefetchState::default()),
            ready: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrefetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cancel(&self) {
        self.lock().cancelled = true;
        self.ready.notify_all();
    }

    /// A worker: takes the next task while it is within the window.
    fn work(&self, store: &dyn ColdStore) {
        // One decompression context and one buffer for the stored bytes,
        // used again for every object this worker reads.
        let mut scratch = Scratch::new();
        loop {
            let (k, buffer) = {
                let mut st = self.lock();
                while !st.cancelled
                    && st.next < self.tasks.len()
                    && st.next >= st.consumed + self.window
                {
                    st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.cancelled || st.next >= self.tasks.len() {
                    return;
                }
                st.next += 1;
                (st.next - 1, st.free.pop().unwrap_or_default())
            };
            // A worker that panicked would leave the reader waiting for its
            // chunk for good: the panic becomes that chunk's error.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fetch_chunk(store, &self.tasks[k], self.identity, &mut scratch, buffer)
            }))
            .unwrap_or_else(|_| {
                Err(ObjectProblem::Storage(Error::Internal(format!(
                    "reading content object {} panicked",
                    self.tasks[k].key
                ))))
            });
            self.lock().done.insert(k, r);
            self.ready.notify_all();
        }
    }

    /// Tells storage which objects are read soon, up to `hint` tasks
    /// beyond the reader. On a thread of its own: opening an object to
    /// hint it waits for its directory entry and inode to be read, which
    /// the workers, hinting as they went, waited for too.
    fn hint_ahead(&self, store: &dyn ColdStore) {
        let mut next = 0;
        loop {
            let end = {
                let mut st = self.lock();
                while !st.cancelled && next < self.tasks.len() && next >= st.consumed + self.hint {
                    st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.cancelled || next >= self.tasks.len() {
                    return;
                }
                (st.consumed + self.hint).min(self.tasks.len())
            };
            for t in &self.tasks[next..end] {
                store.will_read(&t.key);
            }
            next = end;
        }
    }

    /// Gives back a chunk's buffer the reader is done with. At most one
    /// per chunk that can be in flight is kept.
    fn recycle(&self, buffer: Vec<u8>) {
        let mut st = self.lock();
        if buffer.capacity() > 0 && st.free.len() <= self.window {
            st.free.push(buffer);
        }
    }

    /// Task `k`'s chunk, once a worker has it.
    fn take(&self, k: usize) -> std::result::Result<Vec<u8>, ObjectProblem> {
        let mut st = self.lock();
        loop {
            if let Some(r) = st.done.remove(&k) {
                st.consumed = k + 1;
                drop(st);
                self.ready.notify_all();
                return r;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What a prefetch worker keeps from one object to the next: a zstd
/// decompression context and the small buffer an object's stored
/// (decrypted) bytes pass through.
///
/// An object is read in pieces of [`OBJECT_READ`] into that buffer, which
/// stays in the core's cache, and decompressed from there straight into
/// the chunk (zstd's stable output buffer: no window of its own), which is
/// hashed piece by piece while the piece is still in cache. Reading a
/// whole object into a buffer of its size cost the kernel four times the
/// system time: every byte was copied into memory that had left the
/// cache, then read again from memory to decompress it and once more to
/// hash it.
struct Scratch {
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
    input: Vec<u8>,
}

/// How much of an object is read at a time.
const OBJECT_READ: usize = 128 << 10;

impl Scratch {
    fn new() -> Self {
        let zstd = zstd::zstd_safe::DCtx::try_create().and_then(|mut d| {
            d.set_parameter(zstd::zstd_safe::DParameter::StableOutBuffer(true))
                .ok()?;
            Some(d)
        });
        Scratch {
            zstd,
            input: vec![0u8; OBJECT_READ],
        }
    }
}

/// The most an object of a chunk of `len` bytes can hold: zstd's bound
/// for one frame of that size (the writer's frame stays within it: its
/// blocks are at most raw blocks of the data).
fn packed_bound(len: u64) -> u64 {
    zstd::zstd_safe::compress_bound(usize::try_from(len).unwrap_or(usize::MAX)) as u64
}

/// Reads one chunk object (decrypted with `identity` in an encrypted
/// snapshot): it must decompress to exactly the chunk's length and bytes
/// whose SHA-256 is the chunk's. Decompressed into `buffer` as it is read
/// ([`Scratch`]).
fn fetch_chunk(
    store: &dyn ColdStore,
    t: &ChunkTask,
    identity: Option<&Identities>,
    scratch: &mut Scratch,
    buffer: Vec<u8>,
) -> std::result::Result<Vec<u8>, ObjectProblem> {
    let key = t.key.clone();
    let inner = match store.open(&key) {
        Ok(r) => r,
        // Gone since the listing: the snapshot has lost it.
        Err(e) => {
            return Err(match store.stat(&key) {
                Ok(None) => ObjectProblem::Corrupt {
                    key,
                    message: "missing".into(),
                },
                _ => ObjectProblem::Storage(e),
            })
        }
    };
    let failed = Arc::new(OnceLock::new());
    let source = SourceReader {
        inner,
        read: 0,
        failed: failed.clone(),
    };
    let corrupt = |message: String| ObjectProblem::Corrupt {
        key: key.clone(),
        message,
    };
    let unreadable = |e: io::Error| match failed.get() {
        Some(read) => ObjectProblem::Unreadable {
            key: key.clone(),
            message: read.clone(),
        },
        None => corrupt(format!("cannot be decrypted: {e}")),
    };
    let mut source: Box<dyn Read> = match identity {
        None => Box::new(source),
        Some(identity) => match identity.decrypt(source) {
            Ok(Some(r)) => Box::new(r),
            Ok(None) => {
                return Err(corrupt(format!(
                    "is not encrypted to identity file {}, though its snapshot is: damaged or \
                     altered",
                    identity.path().display()
                )))
            }
            Err(e) => return Err(unreadable(e)),
        },
    };
    let Some(zstd) = scratch.zstd.as_mut() else {
        return Err(ObjectProblem::Storage(Error::Internal(
            "cannot allocate a zstd decompression context".into(),
        )));
    };
    // A context an earlier object left mid-frame starts afresh.
    if zstd
        .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .is_err()
    {
        return Err(ObjectProblem::Storage(Error::Internal(
            "cannot reset a zstd decompression context".into(),
        )));
    }
    let len = usize::try_from(t.len).unwrap_or(usize::MAX);
    // Room for the chunk and no more: an object that decodes to more is
    // not this chunk. A recycled buffer is already initialised.
    let mut out = buffer;
    if out.len() < len {
        out.resize(len, 0);
    }
    out.truncate(len);
    // An object larger than any frame of its chunk is not this chunk, and
    // is not read on.
    let bound = packed_bound(t.len);
    let mut stored = 0u64;
    let mut produced = 0usize;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    // Whether a frame was started and not finished.
    let mut in_frame = false;
    loop {
        let n = match source.read(&mut scratch.input) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
        };
        stored += n as u64;
        if stored > bound {
            return Err(corrupt(format!(
                "holds more than {bound} bytes, more than any compression of its chunk of {} bytes",
                t.len
            )));
        }
        let mut input = zstd::zstd_safe::InBuffer::around(&scratch.input[..n]);
        while input.pos() < n {
            let before = (input.pos(), produced);
            // The same output buffer every call, as a stable one must be.
            let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut out[..], produced);
            let r = zstd.decompress_stream(&mut output, &mut input);
            let end = output.pos();
            sha2::Digest::update(&mut hasher, &out[produced..end]);
            produced = end;
            match r {
                Ok(hint) => in_frame = hint != 0,
                // A frame that declares more than the chunk, or one that
                // runs past it.
                Err(code)
                    if produced == len
                        || zstd::zstd_safe::get_error_name(code).contains("too small") =>
                {
                    return Err(corrupt(format!(
                        "holds more than {} bytes, its chunk has {}",
                        t.len, t.len
                    )));
                }
                Err(code) => {
                    return Err(corrupt(format!(
                        "cannot be decompressed: {}",
                        zstd::zstd_safe::get_error_name(code)
                    )))
                }
            }
            if (input.pos(), produced) == before {
                // No progress with input left: the chunk is full.
                return Err(corrupt(format!(
                    "holds more than {} bytes, its chunk has {}",
                    t.len, t.len
                )));
            }
        }
    }
    if in_frame {
        return Err(corrupt(
            "cannot be decompressed: it ends in the middle of a zstd frame".into(),
        ));
    }
    if produced != len {
        return Err(corrupt(format!(
            "holds {produced} bytes, its chunk has {}",
            t.len
        )));
    }
    let actual = hex::encode(sha2::Digest::finalize(hasher));
    if actual != t.sha {
        return Err(corrupt(format!(
            "does not hold its chunk: its bytes hash to {actual}, the chunk's SHA-256 is {}",
            t.sha
        )));
    }
    Ok(out)
}

/// `Read` over a file's bytes: its chunks, in order, from the prefetch.
/// The first problem is kept in `problem` and ends the read with an error.
struct ObjectReader<'a> {
    prefetch: &'a Prefetch<'a>,
    next: usize,
    end: usize,
    current: Vec<u8>,
    pos: usize,
    problem: Option<ObjectProblem>,
}

impl<'a> ObjectReader<'a> {
    /// Reads tasks `chunks` of `prefetch`, in order.
    fn new(prefetch: &'a Prefetch<'a>, chunks: std::ops::Range<usize>) -> Self {
        ObjectReader {
            prefetch,
            next: chunks.start,
            end: chunks.end,
            current: Vec::new(),
            pos: 0,
            problem: None,
        }
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_from_buffer(self, buf)
    }
}

/// The current chunk is the buffer: it is handed out where the worker
/// decompressed it.
impl BufRead for ObjectReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.problem.is_some() {
            return Err(io::Error::other("reading the content objects failed"));
        }
        while self.pos == self.current.len() {
            if self.next == self.end {
                return Ok(&[]);
            }
            match self.prefetch.take(self.next) {
                Ok(chunk) => {
                    self.prefetch
                        .recycle(std::mem::replace(&mut self.current, chunk));
                    self.pos = 0;
                    self.next += 1;
                }
                Err(problem) => {
                    let e = io::Error::other(match &problem {
                        ObjectProblem::Storage(e) => e.to_string(),
                        ObjectProblem::Unreadable { message, .. }
                        | ObjectProblem::Corrupt { message, .. } => message.clone(),
                    });
                    self.problem = Some(problem);
                    return Err(e);
                }
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.current.len());
    }
}

/// Remembers the first read error, so that a visitor's error caused by a
/// damaged archive is reported as damage to the archive.
struct Recording<R> {
    inner: R,
    error: Option<String>,
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.error.get_or_insert_with(|| e.to_string());
        })
    }
}
