//! Small filesystem and clock helpers shared by the broker and the library.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `path` so that concurrent readers (other broker processes) see
/// either the old or the new content, never a torn file.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:?}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(content)
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Writes and fsyncs `path`, then fsyncs its directory.
pub fn write_durable(path: &Path, content: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    sync_dir(path.parent().context("path has no parent")?)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync dir {}", dir.display()))
}

/// An exclusive `flock` held until dropped: how the stand-in's processes
/// coordinate among themselves (state files). Not how Kafka locks `.lock`:
/// see [`KafkaLock`].
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Takes the lock, waiting for it.
    pub fn lock(path: &Path) -> Result<FileLock> {
        let file = open_lock_file(path)?;
        flock(&file, libc::LOCK_EX).with_context(|| format!("locking {}", path.display()))?;
        Ok(FileLock { file })
    }

    /// Takes the lock without waiting: `Ok(None)` if another open file
    /// description (another process) holds it.
    pub fn try_lock(path: &Path) -> Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}

/// Kafka's lock on `.lock`, taken exactly as the JVM takes it
/// (`FileChannel.tryLock()`): a POSIX record lock, `fcntl(F_SETLK)` with
/// `F_WRLCK` over the whole file, owned by the process and released when
/// it exits. On Linux, `flock(2)` locks and these locks do not see each
/// other: probing a running broker's `.lock` with `flock` finds it free.
/// Probe with [`KafkaLock::holder`] (`F_GETLK`), `F_SETLK` or `F_OFD_SETLK`.
///
/// Caveat of POSIX locks, as in the JVM: closing *any* descriptor of the
/// file in the holding process releases the lock.
pub struct KafkaLock {
    _file: File,
}

impl KafkaLock {
    /// Takes the lock without waiting: `Ok(None)` if another process holds
    /// a conflicting lock.
    pub fn try_lock(path: &Path) -> Result<Option<KafkaLock>> {
        let file = open_lock_file(path)?;
        let mut fl = whole_file(libc::F_WRLCK);
        // SAFETY: fcntl with a valid fd and a flock struct we own.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut fl) };
        if rc == 0 {
            return Ok(Some(KafkaLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(None),
            _ => Err(err).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// The pid of another process holding a POSIX lock on `path` (-1 for an
    /// open-file-description lock), or `None` if it is free. Takes nothing.
    pub fn holder(path: &Path) -> Result<Option<i32>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut fl = whole_file(libc::F_WRLCK);
        // SAFETY: fcntl with a valid fd and a flock struct we own.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("querying the lock on {}", path.display()));
        }
        Ok((i32::from(fl.l_type) != libc::F_UNLCK).then_some(fl.l_pid))
    }
}

fn whole_file(lock_type: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lock_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the
/// machine, so events written by different brokers can be ordered.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Kafka prints uuids (cluster, topic, directory ids) as unpadded base64url.
pub fn base64url_encode_uuid(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(B64URL[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B64URL[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

pub fn base64url_decode_uuid(text: &str) -> Option<[u8; 16]> {
    if text.len() != 22 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut n = 0;
    for c in text.bytes() {
        let v = B64URL.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if n < 16 {
                out[n] = (acc >> bits) as u8;
            }
            n += 1;
        }
        acc &= (1 << bits) - 1;
    }
    (n == 16 && acc == 0).then_some(out)
}

/// A uuid derived from a string (FNV-1a based; ids only need to be stable
/// and distinct, not random).
pub fn derived_uuid(seed: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_mut(8).enumerate() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (half as u64);
        for b in seed.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 29;
        chunk.copy_from_slice(&h.to_be_bytes());
    }
    // Version 4, variant 1, as java.util.UUID.randomUUID produces.
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trip() {
        for seed in ["a", "b", "orders", "cluster"] {
            let id = derived_uuid(seed);
            let text = base64url_encode_uuid(&id);
            assert_eq!(text.len(), 22);
            assert_eq!(base64url_decode_uuid(&text), Some(id));
        }
        assert_eq!(base64url_decode_uuid("too-short"), None);
        assert_eq!(base64url_decode_uuid("!!!!!!!!!!!!!!!!!!!!!!"), None);
    }

    #[test]
    fn kafka_lock_is_free_when_nobody_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".lock");
        assert_eq!(KafkaLock::holder(&p).unwrap(), None);
        // Our own lock does not conflict with ourselves.
        let _held = KafkaLock::try_lock(&p).unwrap().expect("free lock");
        assert_eq!(KafkaLock::holder(&p).unwrap(), None);
    }

    #[test]
    fn try_lock_sees_another_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".lock");
        let held = FileLock::try_lock(&p).unwrap().expect("free lock");
        assert!(FileLock::try_lock(&p).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_lock(&p).unwrap().is_some());
    }
}
