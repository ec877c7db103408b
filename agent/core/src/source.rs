//! What the archive and the content objects share when they read a log
//! dir's files and compress them: direct reads ([`SourceFile`]), the error
//! for a file that changed under us, and zstd set up the same way for both.

use crate::logdir::Entry;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The alignment of a direct read's buffer, file offset and length: the
/// page size, a multiple of the logical block size of the disks in use.
pub(crate) const ALIGN: usize = 4096;

/// The most one read asks for (a cancel is noticed between reads).
const PIECE: usize = 1 << 20;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// A byte buffer that starts on an [`ALIGN`] boundary and holds a whole
/// number of blocks, as direct reads need; its contents are its first
/// `len` bytes.
pub(crate) struct Buf {
    blocks: Vec<Block>,
    len: usize,
}

impl Buf {
    /// An empty buffer with room for at least `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Buf {
        Buf {
            blocks: vec![Block([0; ALIGN]); capacity.div_ceil(ALIGN)],
            len: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.blocks.len() * ALIGN
    }

    /// Room for at least `capacity` bytes (contents kept).
    pub(crate) fn reserve(&mut self, capacity: usize) {
        let blocks = capacity.div_ceil(ALIGN);
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, Block([0; ALIGN]));
        }
    }

    /// The whole capacity, as bytes.
    fn room(&mut self) -> &mut [u8] {
        let n = self.capacity();
        // SAFETY: `Block` is a plain byte array (repr(C), no padding), so
        // the blocks are `n` initialised, contiguous bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), n) }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: as in `room`; `len <= capacity` always holds.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }
}

/// A log dir file being read into an archive or content objects.
///
/// Read through the page cache, advised sequential and dropped after. With
/// `KAFKA_SNAPSHOT_DIRECT_READS=1` in the agent's environment, read with
/// `O_DIRECT` where the filesystem allows it instead: the bytes of a whole
/// broker then go from disk to the agent's buffers without evicting what
/// the running broker keeps cached, and without the CPU time of filling
/// the cache (on a 2-CPU VM a buffered read cost 2.1 s of system time per
/// GiB, a direct one 0.1 s). Not the default: without the kernel's
/// readahead, reads wait on the device one at a time, and on a loop
/// device (the benchmark's ext4 image) full archives took up to twice as
/// long. Where a filesystem refuses direct reads the file is read through
/// the cache.
pub(crate) struct SourceFile<'a> {
    f: fs::File,
    direct: bool,
    /// Bytes of the file read so far.
    at: u64,
    src: &'a Path,
    e: &'a Entry,
    log_dir: &'a Path,
}

impl<'a> SourceFile<'a> {
    /// `f`, opened at `src` for the inventory entry `e` of `log_dir`.
    /// Direct reads only with `KAFKA_SNAPSHOT_DIRECT_READS=1`.
    pub(crate) fn new(f: fs::File, src: &'a Path, e: &'a Entry, log_dir: &'a Path) -> Self {
        let direct = std::env::var_os("KAFKA_SNAPSHOT_DIRECT_READS").is_some_and(|v| v == "1");
        Self::with(f, src, e, log_dir, direct)
    }

    fn with(f: fs::File, src: &'a Path, e: &'a Entry, log_dir: &'a Path, direct: bool) -> Self {
        let direct = direct && set_direct(&f, true);
        if !direct {
            advise(&f, libc::POSIX_FADV_SEQUENTIAL);
        }
        SourceFile {
            f,
            direct,
            at: 0,
            src,
            e,
            log_dir,
        }
    }

    /// Reads on from `offset` (at most the file's size): the bytes before
    /// are not read.
    pub(crate) fn skip_to(&mut self, offset: u64) {
        debug_assert!(offset <= self.e.size);
        self.at = offset.min(self.e.size);
    }

    /// Bytes of the file not read yet, by its inventory size.
    pub(crate) fn left(&self) -> u64 {
        self.e.size - self.at
    }

    /// Fills `buf` with the next `n` bytes of the file (`n` at most what
    /// is left; `buf` grows if it must). A file that ends first shrank.
    pub(crate) fn fill(
        &mut self,
        buf: &mut Buf,
        n: usize,
        cancel: Option<&AtomicBool>,
    ) -> Result<()> {
        debug_assert!(n as u64 <= self.left());
        // A direct read asks for whole blocks: the last one of the file
        // may be partial, read up to the end of its block.
        buf.reserve(n.next_multiple_of(ALIGN));
        buf.len = 0;
        let mut got = 0;
        while got < n {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::unavailable(
                    "archiving cancelled",
                    "the agent is shutting down",
                ));
            }
            let end = n.min(got + PIECE);
            let ask = if self.direct {
                end.next_multiple_of(ALIGN)
            } else {
                end
            };
            let read = self.read_at(&mut buf.room()[got..ask], self.at + got as u64)?;
            if read == 0 {
                return Err(changed(self.log_dir, self.e, "shrank"));
            }
            got = end.min(got + read);
        }
        buf.len = n;
        self.at += n as u64;
        Ok(())
    }

    /// Once every byte was read: fails if the file grew meanwhile.
    pub(crate) fn finish(mut self) -> Result<()> {
        debug_assert_eq!(self.left(), 0);
        // The file's last (partial) block: exactly its tail must be there.
        let size = self.e.size;
        let tail = size % ALIGN as u64;
        let mut probe = Buf::new(ALIGN);
        let read = self.read_at(probe.room(), size - tail)?;
        if read as u64 > tail {
            return Err(changed(self.log_dir, self.e, "grew"));
        }
        if !self.direct {
            // Leave the page cache to the running broker.
            advise(&self.f, libc::POSIX_FADV_DONTNEED);
        }
        Ok(())
    }

    /// One read at `offset`; a direct read the filesystem refuses
    /// (`EINVAL`: an alignment it wants larger, or no direct I/O at all)
    /// is made again through the page cache, and so is the rest.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        loop {
            match self.f.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(file = %self.src.display(), "direct read refused; reading through the page cache");
                    set_direct(&self.f, false);
                    self.direct = false;
                    advise(&self.f, libc::POSIX_FADV_SEQUENTIAL);
                }
                r => return r.ctx(|| format!("reading {}", self.src.display())),
            }
        }
    }
}

/// Turns `O_DIRECT` on or off for `f`; whether it is now as asked.
fn set_direct(f: &fs::File, on: bool) -> bool {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a valid fd owned by `f`.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let want = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        want == flags || libc::fcntl(fd, libc::F_SETFL, want) == 0
    }
}

/// zstd's job size with several workers: a quarter of its default (4
/// windows, 8 MiB at level 3). Each worker holds a job's input and its
/// compressed output: with 4 MiB jobs a full archive of 2 GiB of
/// incompressible data on 2 workers peaked at 70 MiB, with 2 MiB at 43 MiB
/// (30 MiB of compressible data, 43 before), the archive the same size
/// within 0.02 % and no slower.
const JOB_SIZE: u32 = 2 << 20;

/// A zstd stream with its checksum, on `threads` workers (0: one per CPU, at most 4).
pub(crate) fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
    threads: u32,
) -> io::Result<zstd::stream::Encoder<'static, W>> {
    let mut enc = zstd::stream::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    let threads = worker_threads(threads);
    if threads > 1 {
        enc.multithread(threads)?;
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
    }
    Ok(enc)
}

/// Workers for `snapshot.zstd_threads`: `0` is one per CPU, at most
/// [`AUTO_THREADS`].
fn worker_threads(requested: u32) -> u32 {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .min(AUTO_THREADS)
}

/// At most this many zstd workers unless configured: the agent shares the
/// broker's host, each worker holds about 10 MiB, and 4 compress faster
/// (about 1.5 GB/s at level 3) than disks and networks carry a snapshot.
const AUTO_THREADS: u32 = 4;

/// A file that is shorter or longer than the inventory said was changed
/// by someone: the snapshot fails rather than lies.
pub(crate) fn changed(log_dir: &Path, e: &Entry, how: &str) -> Error {
    Error::LogDir {
        path: log_dir.to_path_buf(),
        message: format!(
            "{} {how} while it was archived (expected {} bytes): something is writing to the log dir",
            e.rel.display(),
            e.size
        ),
    }
}

pub(crate) fn advise(f: &fs::File, advice: libc::c_int) {
    // SAFETY: advisory call on a valid fd; failure is harmless.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logdir::EntryKind;

    fn entry(size: u64) -> Entry {
        Entry {
            dir_index: 0,
            rel: "t-0/00000000000000000000.log".into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            dev: 0,
            ino: 0,
            ctime_ns: 0,
        }
    }

    /// Reads the whole of `path` (inventory size `size`) in `piece`-byte
    /// fills; the bytes, or the error.
    fn read(path: &Path, size: u64, piece: usize, direct: bool) -> Result<Vec<u8>> {
        let e = entry(size);
        let f = fs::File::open(path).unwrap();
        let mut f = SourceFile::with(f, path, &e, path, direct);
        let mut out = Vec::new();
        let mut buf = Buf::new(0);
        while f.left() > 0 {
            let n = f.left().min(piece as u64) as usize;
            f.fill(&mut buf, n, None)?;
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
            out.extend_from_slice(&buf);
        }
        f.finish()?;
        Ok(out)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn reads_every_byte_direct_or_not_whatever_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for size in [
            0,
            1,
            4095,
            4096,
            4097,
            (1 << 20) + 3,
            3 << 20,
            (5 << 20) + 4096 + 17,
        ] {
            let data = pattern(size);
            fs::write(&path, &data).unwrap();
            for direct in [true, false] {
                for piece in [64 << 10, 1 << 20, 4 << 20] {
                    let got = read(&path, size as u64, piece, direct).unwrap();
                    assert!(got == data, "size {size}, direct {direct}, piece {piece}");
                }
            }
        }
    }

    #[test]
    fn a_file_that_grew_or_shrank_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for size in [4096usize, 10_000, 2 << 20] {
            fs::write(&path, pattern(size)).unwrap();
            for direct in [true, false] {
                // Longer than the inventory said: grew.
                let err = read(&path, size as u64 - 1, 1 << 20, direct).unwrap_err();
                assert!(err.to_string().contains("grew"), "{err}");
                // Shorter: shrank.
                let err = read(&path, size as u64 + 1, 1 << 20, direct).unwrap_err();
                assert!(err.to_string().contains("shrank"), "{err}");
                let err = read(&path, size as u64 + 5000, 1 << 20, direct).unwrap_err();
                assert!(err.to_string().contains("shrank"), "{err}");
            }
        }
    }
}
