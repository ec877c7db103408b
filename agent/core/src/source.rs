//! What the archive and the content objects share when they read a log
//! dir's files and compress them: reads that retry on EINTR, page cache
//! advice, the error for a file that changed under us, and zstd set up the
//! same way for both.

use crate::logdir::Entry;
use kafka_snapshot_model::error::Error;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// zstd's job size with several workers: smaller than its default (4
/// windows, 8 MiB at level 3), which keeps the agent's memory bounded with
/// little cost in ratio.
const JOB_SIZE: u32 = 4 << 20;

/// A zstd stream with its checksum, on `threads` workers (0: one per CPU).
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

fn worker_threads(requested: u32) -> u32 {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

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

pub(crate) fn read_some(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

pub(crate) fn advise(f: &fs::File, advice: libc::c_int) {
    // SAFETY: advisory call on a valid fd; failure is harmless.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice);
    }
}
