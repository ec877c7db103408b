//! Where a file's bytes are on disk (`FS_IOC_FIEMAP`), and how much of two
//! reflink clones provably holds the same bytes without reading them.
//!
//! Two clones of a file taken at different times (both frozen since, in
//! the agent's private staging) hold the same bytes wherever they map the
//! same physical blocks: a block shared by reflink is never written in
//! place. Whoever writes to it (the broker to its live file, which the
//! second clone was taken from) gets a copy of its own, and the block the
//! first clone maps keeps its bytes for as long as that clone maps it. So
//! a range both clones map to the same physical range, through extents
//! that hold plain written data, was not written between the two clones.
//!
//! Anything less plain counts as different: holes, unwritten
//! (preallocated) extents, delayed allocation, encoded (compressed or
//! encrypted) or inline data, extents the filesystem reports as unknown
//! or not block-aligned. Where the ioctl is not supported (tmpfs, NFS),
//! nothing is known to be the same.

use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;

const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_MERGED: u32 = 0x1000;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// The only flags an extent of plain written data may carry here.
const PLAIN: u32 = FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED | FIEMAP_EXTENT_SHARED;

/// Extents asked for per call.
const BATCH: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Request {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [RawExtent; BATCH],
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`, the struct being the
/// 32-byte header the extents follow.
const FS_IOC_FIEMAP: libc::c_ulong = nix::request_code_readwrite!(b'f', 11, 32) as libc::c_ulong;

/// One extent of a file: `length` bytes at `logical` in the file are at
/// `physical` on the filesystem's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    fn end(&self) -> u64 {
        self.logical.saturating_add(self.length)
    }

    fn plain(&self) -> bool {
        self.flags & !PLAIN == 0
    }
}

/// The extents of the first `len` bytes of `f`, in file order.
pub fn extents(f: &fs::File, len: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut req = Box::new(Request {
        start: 0,
        length: 0,
        flags: 0,
        mapped_extents: 0,
        extent_count: 0,
        reserved: 0,
        extents: [RawExtent::default(); BATCH],
    });
    while start < len {
        req.start = start;
        req.length = len - start;
        req.flags = FIEMAP_FLAG_SYNC;
        req.mapped_extents = 0;
        req.extent_count = BATCH as u32;
        // SAFETY: `req` is a valid, exclusively borrowed `struct fiemap`
        // with room for `extent_count` extents after its header.
        let r =
            unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *req as *mut Request) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (req.mapped_extents as usize).min(BATCH);
        if n == 0 {
            break;
        }
        let mut last = false;
        for raw in &req.extents[..n] {
            let e = Extent {
                logical: raw.logical,
                physical: raw.physical,
                length: raw.length,
                flags: raw.flags,
            };
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
            if e.length == 0 || e.logical < start {
                // Not the order the ioctl promises: trust none of it.
                return Err(io::Error::other("FIEMAP returned extents out of order"));
            }
            start = e.end();
            out.push(e);
        }
        if last {
            break;
        }
    }
    Ok(out)
}

/// How many bytes from the start of `a` and `b` (each at least `len` long)
/// the two map to the same physical blocks with plain written data, at
/// most `len`: bytes that are the same in both without reading them (see
/// the module). 0 when the two are on different filesystems or the
/// filesystem does not say where their bytes are.
pub fn same_prefix(a: &fs::File, b: &fs::File, len: u64) -> u64 {
    let same_fs = match (a.metadata(), b.metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    };
    if !same_fs || len == 0 {
        return 0;
    }
    match (extents(a, len), extents(b, len)) {
        (Ok(x), Ok(y)) => common_prefix(&x, &y, len),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "the filesystem does not say where a file's bytes are");
            0
        }
    }
}

/// Whether `a` and `b` hold the same bytes in `[from, to)` (read and
/// compared; false if either cannot be read there).
pub fn same_bytes(a: &fs::File, b: &fs::File, from: u64, to: u64) -> bool {
    let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(x.len());
        if a.read_exact_at(&mut x[..n], at).is_err()
            || b.read_exact_at(&mut y[..n], at).is_err()
            || x[..n] != y[..n]
        {
            return false;
        }
        at += n as u64;
    }
    true
}

/// The length of the longest prefix of `[0, len)` that `a` and `b` (each
/// in file order) both map, through plain extents, to the same physical
/// bytes.
pub fn common_prefix(a: &[Extent], b: &[Extent], len: u64) -> u64 {
    let (mut i, mut j, mut at) = (0, 0, 0u64);
    while at < len {
        while i < a.len() && a[i].end() <= at {
            i += 1;
        }
        while j < b.len() && b[j].end() <= at {
            j += 1;
        }
        let (Some(x), Some(y)) = (a.get(i), b.get(j)) else {
            break;
        };
        if x.logical > at || y.logical > at || !x.plain() || !y.plain() {
            break;
        }
        if x.physical + (at - x.logical) != y.physical + (at - y.logical) {
            break;
        }
        at = x.end().min(y.end()).min(len);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64, flags: u32) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags,
        }
    }

    #[test]
    fn the_prefix_ends_where_the_blocks_differ() {
        let a = [
            ext(0, 1000, 100, 0),
            ext(100, 5000, 100, FIEMAP_EXTENT_LAST),
        ];
        // Split differently, same blocks: all the same.
        let b = [
            ext(0, 1000, 40, FIEMAP_EXTENT_SHARED),
            ext(40, 1040, 60, 0),
            ext(100, 5000, 100, 0),
        ];
        assert_eq!(common_prefix(&a, &b, 200), 200);
        assert_eq!(common_prefix(&a, &b, 150), 150);
        // Another block in the middle.
        let c = [
            ext(0, 1000, 100, 0),
            ext(100, 5000, 50, 0),
            ext(150, 9000, 50, 0),
        ];
        assert_eq!(common_prefix(&a, &c, 200), 150);
        // A hole, an unwritten, delayed or unknown extent: not the same.
        let hole = [ext(0, 1000, 60, 0), ext(80, 1080, 120, 0)];
        assert_eq!(common_prefix(&a, &hole, 200), 60);
        for flags in [0x800, 0x4, 0x2, 0x8, 0x100, 0x200] {
            let odd = [ext(0, 1000, 30, 0), ext(30, 1030, 170, flags)];
            assert_eq!(common_prefix(&a, &odd, 200), 30, "flags {flags:#x}");
        }
        // Nothing mapped, or nothing asked.
        assert_eq!(common_prefix(&a, &[], 200), 0);
        assert_eq!(common_prefix(&a, &a, 0), 0);
        // A file shorter than asked: as far as both go.
        assert_eq!(common_prefix(&a[..1], &b, 200), 100);
    }

    #[test]
    fn files_not_shared_are_never_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a"), vec![7u8; 1 << 16]).unwrap();
        std::fs::write(p("b"), vec![7u8; 1 << 16]).unwrap();
        let a = fs::File::open(p("a")).unwrap();
        let b = fs::File::open(p("b")).unwrap();
        // Same bytes, other blocks (or no FIEMAP at all): nothing known.
        assert_eq!(same_prefix(&a, &b, 1 << 16), 0);
        // Compared byte for byte, they are the same; then not.
        assert!(same_bytes(&a, &b, 100, 1 << 16));
        std::fs::write(p("b"), [vec![7u8; 1000], vec![8u8]].concat()).unwrap();
        assert!(same_bytes(&a, &b, 0, 1000));
        assert!(!same_bytes(&a, &b, 0, 1001), "a byte differs");
        assert!(!same_bytes(&a, &b, 0, 2000), "b is shorter");
    }
}
