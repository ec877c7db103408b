//! Building the archive: one pass over the files, tar -> zstd (multithreaded)
//! -> [age encryption, when recipients are set] -> storage, hashing every
//! file and the whole archive as stored on the way, with memory bounded by
//! a few fixed read buffers, zstd's window and age's 64 KiB chunk.
//!
//! A reader thread reads and hashes the files ahead, in archive order,
//! into a small pool of buffers; the calling thread frames them as tar and
//! feeds zstd. Reading (and waiting for the disk) and hashing overlap with
//! compression instead of taking turns with it.

use crate::crypt::{EncryptingWriter, Recipients};
use crate::hashing::HashingWriter;
use crate::logdir::{Entry, EntryKind, Inventory};
use crate::source::{zstd_encoder, Buf, SourceFile};
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::manifest::{archive_prefix, EntryRecord, EntryType};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

const BLOCK: usize = 512;
const READ_BUF: usize = 1 << 20;
/// Read buffers in flight between the reader thread and the compressor.
const READ_BUFS: usize = 4;

#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// zstd level, 1..=19.
    pub zstd_level: i32,
    /// zstd worker threads; 0 means one per CPU, at most 4.
    pub zstd_threads: u32,
    /// Set by the agent when it must stop (the broker must start again):
    /// the archive stops between chunks with an error.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Encrypt the archive (and the manifest's entries) to these.
    pub encrypt_to: Option<Arc<Recipients>>,
    /// An incremental snapshot: larger files become content objects
    /// shared by the cluster's snapshots ([`crate::objects`]).
    pub objects: Option<crate::objects::ObjectOptions>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            zstd_level: 3,
            zstd_threads: 0,
            cancel: None,
            encrypt_to: None,
            objects: None,
        }
    }
}

/// Below zstd: the stored bytes, encrypted or not, hashed as stored.
enum Sink<W: Write> {
    Plain(HashingWriter<W>),
    Encrypted(EncryptingWriter<HashingWriter<W>>),
}

impl<W: Write> Sink<W> {
    fn finish(self) -> io::Result<HashingWriter<W>> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Encrypted(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Encrypted(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Encrypted(w) => w.flush(),
        }
    }
}

/// What was written: manifest entries with their hashes, and the archive's
/// own size and hash as stored (of the ciphertext, when encrypted).
pub struct Written {
    pub entries: Vec<EntryRecord>,
    pub size: u64,
    pub sha256: String,
}

/// The path an inventory entry has inside the archive.
pub fn archive_path(e: &Entry) -> String {
    let prefix = archive_prefix(e.dir_index);
    if e.rel.as_os_str().is_empty() {
        prefix
    } else {
        format!("{prefix}/{}", e.rel.to_string_lossy())
    }
}

/// Writes the archive of `inv`, reading file contents from `content_roots`
/// (the log dirs themselves for copy capture, staging for reflink).
pub fn write_archive<W: Write>(
    inv: &Inventory,
    content_roots: &[PathBuf],
    opts: &ArchiveOptions,
    out: W,
) -> Result<(W, Written)> {
    let zerr = |e: io::Error| Error::io("setting up zstd", e);
    let sink = match &opts.encrypt_to {
        None => Sink::Plain(HashingWriter::new(out)),
        Some(r) => Sink::Encrypted(
            r.encrypt(HashingWriter::new(out))
                .map_err(|e| Error::io("starting the encrypted archive", e))?,
        ),
    };
    let enc = zstd_encoder(sink, opts.zstd_level, opts.zstd_threads).map_err(zerr)?;
    let mut tar = TarWriter { w: enc };
    let mut entries = Vec::with_capacity(inv.entries.len());
    std::thread::scope(|scope| -> Result<()> {
        let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(READ_BUFS);
        let (free_tx, free_rx) = mpsc::sync_channel::<Buf>(READ_BUFS);
        for _ in 0..READ_BUFS {
            free_tx
                .send(Buf::new(READ_BUF))
                .expect("room for every buffer");
        }
        let cancel = opts.cancel.as_deref();
        let reader = std::thread::Builder::new()
            .name("archive-reader".into())
            .spawn_scoped(scope, move || {
                read_files(inv, content_roots, cancel, free_rx, full_tx)
            })
            .map_err(|e| Error::io("starting the archive reader thread", e))?;
        let written = write_entries(inv, &mut tar, &mut entries, &full_rx, &free_tx);
        // Unblocks a reader waiting for a buffer or for room to send one.
        drop(full_rx);
        drop(free_tx);
        let _ = reader.join();
        written
    })?;
    // End of archive: two zero blocks.
    tar.w
        .write_all(&[0u8; 2 * BLOCK])
        .ctx(|| "writing the archive trailer".into())?;
    let sink = tar.w.finish().ctx(|| "finishing the zstd stream".into())?;
    let hw = sink
        .finish()
        .ctx(|| "finishing the encrypted archive".into())?;
    let (out, size, sha256) = hw.finish();
    Ok((
        out,
        Written {
            entries,
            size,
            sha256,
        },
    ))
}

/// What the reader thread sends, in archive order: a file's bytes in one
/// or more `Data` chunks, then `Done`; `Failed` ends the stream.
enum Chunk {
    Data(Buf),
    Done,
    Failed(Error),
}

/// Writes every entry's tar header and, for files, the chunks the reader
/// thread sends, returning each buffer to it once written.
fn write_entries<W: Write>(
    inv: &Inventory,
    tar: &mut TarWriter<W>,
    entries: &mut Vec<EntryRecord>,
    chunks: &mpsc::Receiver<Chunk>,
    free: &mpsc::SyncSender<Buf>,
) -> Result<()> {
    let reader_gone = || Error::Internal("the archive reader thread stopped".into());
    for e in &inv.entries {
        let path = archive_path(e);
        let (kind, link_target, sha256) = match &e.kind {
            EntryKind::Dir => {
                tar.header(&format!("{path}/"), e, tar::EntryType::Directory, 0, None)?;
                (EntryType::Dir, None, None)
            }
            EntryKind::Symlink { target } => {
                let t = target.to_string_lossy().into_owned();
                tar.header(&path, e, tar::EntryType::Symlink, 0, Some(&t))?;
                (EntryType::Symlink, Some(t), None)
            }
            EntryKind::File => {
                tar.header(&path, e, tar::EntryType::Regular, e.size, None)?;
                let mut hasher = Sha256::new();
                let sha = loop {
                    match chunks.recv().map_err(|_| reader_gone())? {
                        Chunk::Data(buf) => {
                            hasher.update(&buf[..]);
                            tar.w
                                .write_all(&buf)
                                .ctx(|| format!("writing {path} to the archive"))?;
                            // The reader may have stopped: then it needs no buffers.
                            let _ = free.send(buf);
                        }
                        Chunk::Done => break hex::encode(hasher.finalize()),
                        Chunk::Failed(err) => return Err(err),
                    }
                };
                tar.pad(e.size).ctx(|| "writing the archive".into())?;
                (EntryType::File, None, Some(sha))
            }
        };
        entries.push(EntryRecord {
            path,
            kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime_ns: e.mtime_ns,
            sha256,
            link_target,
            chunks: None,
            cuts: Vec::new(),
            objects: None,
        });
    }
    Ok(())
}

/// The reader thread: every file of the inventory, in order, read into
/// buffers from `free` and sent with its hash. Stops at the first error
/// (sent as `Failed`) or when the receiving side is gone.
fn read_files(
    inv: &Inventory,
    content_roots: &[PathBuf],
    cancel: Option<&AtomicBool>,
    free: mpsc::Receiver<Buf>,
    out: mpsc::SyncSender<Chunk>,
) {
    // Each root opened once; every file below it through that fd, never
    // following a symlink put in place since the inventory.
    let mut trees = Vec::new();
    for r in content_roots {
        match crate::fsat::Beneath::open_root(r) {
            Ok(t) => trees.push(t),
            Err(e) => {
                let _ = out.send(Chunk::Failed(crate::fsat::swapped(r, e)));
                return;
            }
        }
    }
    for e in inv
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File))
    {
        let src = content_roots[e.dir_index].join(&e.rel);
        let opened = trees[e.dir_index]
            .open(&e.rel)
            .map_err(|err| crate::fsat::swapped(&src, err));
        let msg = match opened
            .and_then(|f| read_file(f, &src, e, &inv.dirs[e.dir_index].path, cancel, &free, &out))
        {
            Ok(true) => Chunk::Done,
            Ok(false) => return,
            Err(err) => Chunk::Failed(err),
        };
        let failed = matches!(msg, Chunk::Failed(_));
        if out.send(msg).is_err() || failed {
            return;
        }
    }
}

/// Sends exactly `e.size` bytes of `src` (false when the receiving side is
/// gone; the writer hashes them, so this thread only waits for the disk
/// and keeps it busy). A file that is shorter or longer than
/// the inventory said was changed by someone: the snapshot fails rather
/// than lies.
fn read_file(
    f: fs::File,
    src: &std::path::Path,
    e: &Entry,
    log_dir: &std::path::Path,
    cancel: Option<&AtomicBool>,
    free: &mpsc::Receiver<Buf>,
    out: &mpsc::SyncSender<Chunk>,
) -> Result<bool> {
    let mut f = SourceFile::new(f, src, e, log_dir);
    while f.left() > 0 {
        let Ok(mut buf) = free.recv() else {
            return Ok(false);
        };
        let want = f.left().min(READ_BUF as u64) as usize;
        f.fill(&mut buf, want, cancel)?;
        if out.send(Chunk::Data(buf)).is_err() {
            return Ok(false);
        }
    }
    f.finish()?;
    Ok(true)
}

struct TarWriter<W: Write> {
    w: W,
}

impl<W: Write> TarWriter<W> {
    /// Writes a GNU tar header (with a long-name entry first when the path or
    /// link target does not fit in 100 bytes).
    fn header(
        &mut self,
        path: &str,
        e: &Entry,
        kind: tar::EntryType,
        size: u64,
        link: Option<&str>,
    ) -> Result<()> {
        let werr = |err: io::Error| Error::io(format!("writing archive entry {path}"), err);
        if path.len() > 100 {
            self.long_name(tar::EntryType::GNULongName, path)
                .map_err(werr)?;
        }
        if let Some(l) = link {
            if l.len() > 100 {
                self.long_name(tar::EntryType::GNULongLink, l)
                    .map_err(werr)?;
            }
        }
        let mut h = tar::Header::new_gnu();
        fill_name(&mut h.as_old_mut().name, path);
        if let Some(l) = link {
            fill_name(&mut h.as_old_mut().linkname, l);
        }
        h.set_mode(e.mode);
        h.set_uid(e.uid as u64);
        h.set_gid(e.gid as u64);
        h.set_mtime(e.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        h.set_size(size);
        h.set_entry_type(kind);
        h.set_cksum();
        self.w.write_all(h.as_bytes()).map_err(werr)
    }

    fn long_name(&mut self, kind: tar::EntryType, name: &str) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        fill_name(&mut h.as_old_mut().name, "././@LongLink");
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(name.len() as u64 + 1);
        h.set_entry_type(kind);
        h.set_cksum();
        self.w.write_all(h.as_bytes())?;
        self.w.write_all(name.as_bytes())?;
        self.w.write_all(&[0])?;
        self.pad(name.len() as u64 + 1)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

fn fill_name(field: &mut [u8], name: &str) {
    let b = name.as_bytes();
    let n = b.len().min(field.len());
    field[..n].copy_from_slice(&b[..n]);
    for x in &mut field[n..] {
        *x = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logdir;
    use std::io::Read;

    /// A log dir with one partition holding `files` (name, bytes).
    fn log_dir(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kafka-logs");
        let part = dir.join("orders-0");
        fs::create_dir_all(&part).unwrap();
        fs::write(
            dir.join("meta.properties"),
            "version=1\nnode.id=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\ndirectory.id=BBBBBBBBBBBBBBBBBBBBBB\n",
        )
        .unwrap();
        fs::write(dir.join(logdir::CLEAN_SHUTDOWN), "{}").unwrap();
        for (name, data) in files {
            fs::write(part.join(name), data).unwrap();
        }
        (tmp, dir)
    }

    fn archive(dir: &PathBuf, opts: &ArchiveOptions) -> Result<(Vec<u8>, Written)> {
        let inv = logdir::scan(std::slice::from_ref(dir)).unwrap();
        write_archive(&inv, std::slice::from_ref(dir), opts, Vec::new())
    }

    #[test]
    fn files_larger_than_the_read_buffers_round_trip_with_their_hashes() {
        // More than READ_BUFS buffers' worth, not a multiple of the buffer.
        let big: Vec<u8> = (0..(READ_BUF * (READ_BUFS + 2) + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let (_tmp, dir) = log_dir(&[
            ("00000000000000000000.log", big.clone()),
            ("00000000000000000000.index", Vec::new()),
            ("leader-epoch-checkpoint", b"0\n1\n0 0\n".to_vec()),
        ]);
        let (bytes, written) = archive(&dir, &ArchiveOptions::default()).unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(written.sha256, crate::hashing::sha256_hex(&bytes));
        let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(&bytes[..]).unwrap());
        let mut seen = 0;
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let rec = written
                .entries
                .iter()
                .find(|r| path.trim_end_matches('/') == r.path)
                .unwrap_or_else(|| panic!("{path} not in the manifest entries"));
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if rec.kind == EntryType::File {
                assert_eq!(
                    rec.sha256.as_deref(),
                    Some(&*crate::hashing::sha256_hex(&data))
                );
                if path.ends_with(".log") {
                    assert_eq!(data, big);
                }
                seen += 1;
            }
        }
        assert_eq!(
            seen, 5,
            "3 partition files, meta.properties, the clean shutdown marker"
        );
    }

    #[test]
    fn a_file_that_shrank_or_grew_after_the_inventory_fails_the_archive() {
        for (how, change) in [("shrank", 100usize), ("grew", READ_BUF * 3)] {
            let (_tmp, dir) = log_dir(&[
                ("00000000000000000000.log", vec![1u8; READ_BUF * 2 + 7]),
                ("00000000000000000001.log", vec![2u8; 1000]),
            ]);
            let inv = logdir::scan(std::slice::from_ref(&dir)).unwrap();
            let f = dir.join("orders-0/00000000000000000000.log");
            fs::write(&f, vec![1u8; change]).unwrap();
            let err = write_archive(
                &inv,
                std::slice::from_ref(&dir),
                &ArchiveOptions::default(),
                Vec::new(),
            )
            .err()
            .expect("the archive must fail");
            assert!(err.to_string().contains(how), "expected {how}, got: {err}");
        }
    }

    #[test]
    fn a_cancelled_archive_stops_with_an_error() {
        let (_tmp, dir) = log_dir(&[("00000000000000000000.log", vec![3u8; READ_BUF * 3])]);
        let opts = ArchiveOptions {
            cancel: Some(Arc::new(AtomicBool::new(true))),
            ..ArchiveOptions::default()
        };
        let err = archive(&dir, &opts).err().expect("cancelled");
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    #[test]
    fn a_failing_output_stops_the_reader_thread() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // Incompressible, so zstd has output to write long before the end.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..READ_BUF * 40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (_tmp, dir) = log_dir(&[("00000000000000000000.log", noise)]);
        let inv = logdir::scan(std::slice::from_ref(&dir)).unwrap();
        // Single-threaded zstd writes through at once; returning at all
        // shows the reader did not wait forever for its buffers.
        let opts = ArchiveOptions {
            zstd_threads: 1,
            zstd_level: 1,
            ..ArchiveOptions::default()
        };
        let err = write_archive(&inv, std::slice::from_ref(&dir), &opts, Full)
            .err()
            .expect("the output fails");
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
