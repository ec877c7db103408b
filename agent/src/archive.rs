//! Building the archive: one pass over the files, tar -> zstd (multithreaded)
//! -> storage, hashing every file and the whole archive on the way, with
//! memory bounded by a fixed read buffer and zstd's window.

use crate::error::{Error, IoContext, Result};
use crate::hashing::HashingWriter;
use crate::logdir::{Entry, EntryKind, Inventory};
use crate::manifest::{archive_prefix, EntryRecord, EntryType};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const BLOCK: usize = 512;
const READ_BUF: usize = 1 << 20;
const JOB_SIZE: u32 = 4 << 20;

#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// zstd level, 1..=19.
    pub zstd_level: i32,
    /// zstd worker threads; 0 means one per CPU.
    pub zstd_threads: u32,
    /// Set by the agent when it must stop (the broker must start again):
    /// the archive stops between chunks with an error.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            zstd_level: 3,
            zstd_threads: 0,
            cancel: None,
        }
    }
}

/// What was written: manifest entries with their hashes, and the archive's
/// own size and hash.
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

fn worker_threads(requested: u32) -> u32 {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
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
    let mut enc =
        zstd::stream::Encoder::new(HashingWriter::new(out), opts.zstd_level).map_err(zerr)?;
    enc.include_checksum(true).map_err(zerr)?;
    let threads = worker_threads(opts.zstd_threads);
    if threads > 1 {
        enc.multithread(threads).map_err(zerr)?;
        // Smaller jobs than zstd's default (4 windows, 8 MiB at level 3)
        // keep the agent's memory bounded with little cost in ratio.
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))
            .map_err(zerr)?;
    }
    let mut tar = TarWriter { w: enc };
    let mut buf = vec![0u8; READ_BUF];
    let mut entries = Vec::with_capacity(inv.entries.len());
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
                let src = content_roots[e.dir_index].join(&e.rel);
                tar.header(&path, e, tar::EntryType::Regular, e.size, None)?;
                let sha = tar.file_data(
                    &src,
                    e,
                    &inv.dirs[e.dir_index].path,
                    &mut buf,
                    opts.cancel.as_deref(),
                )?;
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
        });
    }
    // End of archive: two zero blocks.
    tar.w
        .write_all(&[0u8; 2 * BLOCK])
        .ctx(|| "writing the archive trailer".into())?;
    let hw = tar.w.finish().ctx(|| "finishing the zstd stream".into())?;
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

    /// Streams exactly `e.size` bytes of `src` into the archive and returns
    /// their SHA-256. A file that is shorter or longer than the inventory
    /// said was changed by someone: the snapshot fails rather than lies.
    fn file_data(
        &mut self,
        src: &PathBuf,
        e: &Entry,
        log_dir: &std::path::Path,
        buf: &mut [u8],
        cancel: Option<&AtomicBool>,
    ) -> Result<String> {
        let mut f = fs::File::open(src).ctx(|| format!("opening {}", src.display()))?;
        advise(&f, libc::POSIX_FADV_SEQUENTIAL);
        let mut hasher = Sha256::new();
        let mut left = e.size;
        while left > 0 {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Usage(
                    "archiving cancelled: the agent is shutting down".into(),
                ));
            }
            let want = buf.len().min(left as usize);
            let n =
                read_some(&mut f, &mut buf[..want]).ctx(|| format!("reading {}", src.display()))?;
            if n == 0 {
                return Err(changed(log_dir, e, "shrank"));
            }
            hasher.update(&buf[..n]);
            self.w
                .write_all(&buf[..n])
                .ctx(|| format!("writing {} to the archive", src.display()))?;
            left -= n as u64;
        }
        if read_some(&mut f, &mut buf[..1]).ctx(|| format!("reading {}", src.display()))? != 0 {
            return Err(changed(log_dir, e, "grew"));
        }
        // Leave the page cache to the running broker.
        advise(&f, libc::POSIX_FADV_DONTNEED);
        self.pad(e.size).ctx(|| "writing the archive".into())?;
        Ok(hex::encode(hasher.finalize()))
    }
}

fn changed(log_dir: &std::path::Path, e: &Entry, how: &str) -> Error {
    Error::LogDir {
        path: log_dir.to_path_buf(),
        message: format!(
            "{} {how} while it was archived (expected {} bytes): something is writing to the log dir",
            e.rel.display(),
            e.size
        ),
    }
}

fn read_some(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn advise(f: &fs::File, advice: libc::c_int) {
    // SAFETY: advisory call on a valid fd; failure is harmless.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice);
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
