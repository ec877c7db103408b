//! Capture: how the bytes of a stopped broker are frozen.
//!
//! - `reflink` clones every file (FICLONE) into a staging directory on the
//!   same filesystem: milliseconds however big the data, so the broker can be
//!   restarted at once and the archive is built from staging.
//! - `copy` stages nothing: the archive streams from the log dirs while the
//!   broker stays stopped.
//! - `auto` probes each log dir and picks reflink where all support it.

use crate::logdir::{EntryKind, Inventory};
use crate::settings::FreeSpace;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::manifest::CaptureMode;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the staging directory created beside each log dir (in its parent,
/// which is on the same filesystem in the usual `/data/diskN/kafka-logs`
/// layout). Never inside the log dir: Kafka refuses unknown dirs there.
pub const STAGING_DIR_NAME: &str = ".kafka-snapshot-staging";

nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Clones `src` into the new file `dst` sharing its extents.
pub fn reflink_file(src: &fs::File, dst: &fs::File) -> io::Result<()> {
    // SAFETY: both fds are valid and owned for the duration of the call.
    unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// The staging root for a log dir.
pub fn staging_root(log_dir: &Path) -> Result<PathBuf> {
    let parent = log_dir.parent().ok_or_else(|| Error::LogDir {
        path: log_dir.to_path_buf(),
        message: "a log dir at / has no parent for staging".into(),
    })?;
    Ok(parent.join(STAGING_DIR_NAME))
}

fn create_private_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Opens a staging root without following it: the broker's user can
/// usually write the log dir's parent, and a symlink or a dir of its own
/// planted there would have the agent clean up (delete) or write wherever
/// it points. Refused, naming the path; nothing behind it is touched.
fn open_staging_root(r: &Path) -> Result<fs::File> {
    let refuse = |message: String| Error::LogDir {
        path: r.to_path_buf(),
        message,
    };
    let dir = crate::fsat::open_dir(None, r).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => refuse(format!(
            "the staging directory is a symlink or not a directory ({e}); refusing to use it \
             or anything it points to. Remove it (the link itself, not what it points to) \
             if nobody needs it"
        )),
        _ => Error::io(format!("opening {}", r.display()), e),
    })?;
    let md = dir.metadata().ctx(|| format!("stat {}", r.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    // Root's (an operator's `archive create`) or this agent's: anyone else
    // could change what is in it while the agent works there.
    if md.uid() != me && md.uid() != 0 {
        return Err(refuse(format!(
            "the staging directory belongs to uid {}, not to this agent (uid {me}) or root; \
             refusing to use it",
            md.uid()
        )));
    }
    if md.permissions().mode() & 0o077 != 0 {
        dir.set_permissions(fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod 700 {}", r.display()))?;
    }
    Ok(dir)
}

/// Exclusive hold on the staging roots of a run. Taking it also removes
/// what a crashed earlier run left behind.
pub struct StagingLock {
    roots: Vec<PathBuf>,
    /// Each root, opened once without following symlinks.
    dirs: Vec<fs::File>,
    _locks: Vec<fs::File>,
}

impl StagingLock {
    pub fn acquire(log_dirs: &[PathBuf]) -> Result<StagingLock> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for d in log_dirs {
            let r = staging_root(d)?;
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
        let mut locks = Vec::new();
        let mut dirs = Vec::new();
        for r in &roots {
            create_private_dir(r)?;
            let dir = open_staging_root(r)?;
            let lock_path = r.join(".lock");
            let f = crate::fsat::open_or_create_file(&dir, Path::new(".lock"), 0o600)
                .ctx(|| format!("opening {}", lock_path.display()))?;
            // SAFETY: flock on a valid, owned fd.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(Error::LogDir {
                    path: r.clone(),
                    message: "another snapshot run holds this staging directory".into(),
                });
            }
            locks.push(f);
            dirs.push(dir);
        }
        let lock = StagingLock {
            roots,
            dirs,
            _locks: locks,
        };
        lock.remove_stale()?;
        Ok(lock)
    }

    /// The staging roots held.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Removes every staging tree: with the lock held none is in use.
    /// Through the root's fd, never following a symlink.
    fn remove_stale(&self) -> Result<()> {
        for (r, dir) in self.roots.iter().zip(&self.dirs) {
            for name in crate::fsat::names(dir).ctx(|| format!("listing {}", r.display()))? {
                // The clones kept for the next incremental snapshot are
                // no staging: the snapshot that follows replaces them.
                if name == ".lock" || name == crate::kept::KEPT_DIR_NAME {
                    continue;
                }
                let p = r.join(&name);
                tracing::warn!(staging = %p.display(), "removing stale staging left by an interrupted run");
                crate::fsat::remove_tree(dir, Path::new(&name))
                    .ctx(|| format!("removing {}", p.display()))?;
            }
        }
        Ok(())
    }

    pub fn dir_for(&self, log_dir: &Path, snapshot_id: &str, index: usize) -> Result<PathBuf> {
        let name = log_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(staging_root(log_dir)?
            .join(snapshot_id)
            .join(format!("{index}-{name}")))
    }
}

/// Removes a staging tree, restoring write permission where a read-only
/// directory would stop the removal.
fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(p);
            fs::remove_dir_all(p).ctx(|| format!("removing {}", p.display()))
        }
    }
}

fn make_writable(p: &Path) {
    if let Ok(md) = fs::symlink_metadata(p) {
        if md.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

/// Why `auto` did or did not pick reflink for a log dir.
pub fn probe_reflink(log_dir: &Path) -> Result<(), String> {
    let root = staging_root(log_dir).map_err(|e| e.to_string())?;
    let dev_of = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| format!("stat {}: {e}", p.display()))
    };
    if dev_of(log_dir)? != dev_of(&root)? {
        return Err(format!(
            "{} is on a different filesystem than the log dir (is the log dir a mount point?)",
            root.display()
        ));
    }
    let src_path = log_dir.join(crate::logdir::META_PROPERTIES);
    let src = fs::File::open(&src_path).map_err(|e| format!("open {}: {e}", src_path.display()))?;
    let probe = root.join(format!(
        ".probe-{}",
        crate::random::random_hex(4, "a probe's name").map_err(|e| e.to_string())?
    ));
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|e| format!("create {}: {e}", probe.display()))?;
    let r = reflink_file(&src, &dst);
    let _ = fs::remove_file(&probe);
    r.map_err(|e| match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOTTY) => format!(
            "the filesystem of {} does not support reflink ({e}); XFS with reflink=1 or Btrfs does",
            log_dir.display()
        ),
        Some(libc::EXDEV) => format!("staging is on another filesystem ({e})"),
        _ => format!("reflink probe failed: {e}"),
    })
}

/// Whether reflink staging on `dir`'s filesystem leaves `min` free. Staging
/// costs no space when it is made, but every segment the broker deletes
/// (retention, compaction) while the archive is written stays pinned by its
/// clone, and the broker writes on meanwhile.
pub fn staging_space(dir: &Path, min: FreeSpace) -> std::result::Result<(), String> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))?;
    let unit = st.fragment_size() as u64;
    let total = st.blocks() as u64 * unit;
    let free = st.blocks_available() as u64 * unit;
    let need = min.required(total);
    if free < need {
        return Err(format!(
            "{} has {} MiB free of {} MiB, less than snapshot.staging_min_free ({min}): \
             staging would pin the segments the broker deletes while the archive is written",
            dir.display(),
            free >> 20,
            total >> 20
        ));
    }
    Ok(())
}

/// Resolves `auto` to `reflink` or `copy`, with the reason to record:
/// reflink where every log dir supports it and keeps `min_free` free.
pub fn resolve_mode(
    requested: CaptureMode,
    log_dirs: &[PathBuf],
    min_free: FreeSpace,
) -> Result<(CaptureMode, String)> {
    if requested == CaptureMode::Copy {
        return Ok((CaptureMode::Copy, "copy requested".into()));
    }
    for d in log_dirs {
        if let Err(why) = probe_reflink(d).and_then(|()| staging_space(d, min_free)) {
            if requested == CaptureMode::Reflink {
                return Err(Error::LogDir {
                    path: d.clone(),
                    message: format!("capture = \"reflink\" is impossible: {why}"),
                });
            }
            let reason = format!("auto: copy, because {why}");
            // The broker stays down while the whole archive is written:
            // worth an operator's look (a metric and an alert say so too).
            tracing::warn!(log_dir = %d.display(), %reason, "capture falls back to copy");
            return Ok((CaptureMode::Copy, reason));
        }
    }
    let reason = match requested {
        CaptureMode::Auto => "auto: reflink, every log dir supports it".to_string(),
        _ => "reflink requested".to_string(),
    };
    tracing::info!(%reason, "capture mode chosen");
    Ok((CaptureMode::Reflink, reason))
}

/// Threads cloning files: a clone is a few metadata transactions, mostly
/// spent waiting for the filesystem, not the CPU.
const CLONE_THREADS: usize = 8;

/// Clones every inventory entry of every log dir into `staging[i]`:
/// directories and symlinks first, in inventory order (parents before
/// children), then the files on [`CLONE_THREADS`] threads. The broker is
/// down meanwhile, and a broker with thousands of partitions has tens of
/// thousands of files.
pub fn clone_into_staging(inv: &Inventory, staging: &[PathBuf]) -> Result<()> {
    for d in staging {
        if let Some(parent) = d.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .ctx(|| format!("creating {}", parent.display()))?;
        }
    }
    let mut files = Vec::new();
    for e in &inv.entries {
        let dst = staging[e.dir_index].join(&e.rel);
        match &e.kind {
            EntryKind::Dir => fs::DirBuilder::new()
                .mode(0o700)
                .create(&dst)
                .ctx(|| format!("creating {}", dst.display()))?,
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &dst)
                .ctx(|| format!("creating symlink {}", dst.display()))?,
            EntryKind::File => files.push(e),
        }
    }
    let per_thread = files.len().div_ceil(CLONE_THREADS).max(1);
    // Each log dir opened once: every file below it is opened through that
    // fd, never following a symlink someone put in place since the scan.
    let roots: Vec<fs::File> = inv
        .dirs
        .iter()
        .map(|d| {
            crate::fsat::open_root_dir(&d.path).ctx(|| format!("opening {}", d.path.display()))
        })
        .collect::<Result<_>>()?;
    let roots = &roots;
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> Result<()> {
                    let mut trees = Vec::new();
                    for (r, d) in roots.iter().zip(&inv.dirs) {
                        let root = r
                            .try_clone()
                            .ctx(|| format!("opening {}", d.path.display()))?;
                        trees.push(crate::fsat::Beneath::from_root(root));
                    }
                    chunk
                        .iter()
                        .try_for_each(|e| clone_file(inv, &mut trees, staging, e))
                })
            })
            .collect();
        // Every worker finishes (each stops at its own first error); the
        // first error in inventory order is reported.
        let results: Vec<Result<()>> = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::panicked("cloning log dir files")))
            })
            .collect();
        results.into_iter().collect::<Result<()>>()
    })
}

fn clone_file(
    inv: &Inventory,
    trees: &mut [crate::fsat::Beneath],
    staging: &[PathBuf],
    e: &crate::logdir::Entry,
) -> Result<()> {
    let src = inv.dirs[e.dir_index].path.join(&e.rel);
    let dst = staging[e.dir_index].join(&e.rel);
    let s = trees[e.dir_index]
        .open(&e.rel)
        .map_err(|err| crate::fsat::swapped(&src, err))?;
    let t = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dst)
        .ctx(|| format!("creating {}", dst.display()))?;
    reflink_file(&s, &t).ctx(|| format!("reflink {} -> {}", src.display(), dst.display()))?;
    let len = t
        .metadata()
        .ctx(|| format!("stat {}", dst.display()))?
        .len();
    if len != e.size {
        return Err(Error::LogDir {
            path: inv.dirs[e.dir_index].path.clone(),
            message: format!(
                "{} changed size during capture ({} -> {len} bytes): is the broker really stopped?",
                e.rel.display(),
                e.size
            ),
        });
    }
    Ok(())
}

/// A staging tree that is removed when dropped (after commit, or on failure).
pub struct Staging {
    pub dir: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.dir) {
            tracing::error!(staging = %self.dir.display(), error = %e, "could not remove staging; it will be removed at the next run");
        }
    }
}

/// What an earlier copy capture of a node cost: the base of the estimate
/// `snapshot.max_copy_downtime` is checked against before a stop.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRecord {
    pub snapshot_id: String,
    /// The data it archived.
    pub bytes: u64,
    /// From the stop command to the start command's success (or, as a
    /// copy's manifest records it, to the archive's end).
    pub downtime: std::time::Duration,
    /// From the capture to the archive's end: the copy itself.
    pub copy: std::time::Duration,
}

impl CopyRecord {
    /// The newest copy capture among `earlier` (oldest first) whose stop
    /// was recorded (an agent's, not a CLI run against a stopped broker).
    /// A copy is committed before the node starts again, so its downtime
    /// runs from the stop to the archive's end unless the manifest has
    /// the whole of it.
    pub fn newest(earlier: &[kafka_snapshot_model::manifest::Manifest]) -> Option<CopyRecord> {
        let m = earlier.iter().rev().find(|m| {
            m.capture.used == CaptureMode::Copy && m.timestamps.broker_stopped.is_some()
        })?;
        let t = &m.timestamps;
        let span = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
            (to - from).to_std().unwrap_or_default()
        };
        let downtime = match m.broker_downtime_ms {
            Some(ms) => std::time::Duration::from_millis(ms),
            None => span(t.broker_stopped?, t.archive_finished),
        };
        Some(CopyRecord {
            snapshot_id: m.snapshot_id.clone(),
            bytes: m.totals.bytes,
            downtime,
            copy: span(t.capture_started, t.archive_finished),
        })
    }

    /// The downtime a copy capture of `bytes` is expected to cost: this
    /// one's stop and start again, and its copy scaled to the data.
    pub fn estimate(&self, bytes: u64) -> std::time::Duration {
        let copy = self.copy.min(self.downtime);
        let fixed = self.downtime - copy;
        let per_byte = copy.as_secs_f64() / self.bytes.max(1) as f64;
        fixed + std::time::Duration::from_secs_f64(per_byte * bytes as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(bytes: u64, downtime: u64, copy: u64) -> CopyRecord {
        CopyRecord {
            snapshot_id: "s".into(),
            bytes,
            downtime: Duration::from_secs(downtime),
            copy: Duration::from_secs(copy),
        }
    }

    #[test]
    fn a_copy_estimate_scales_the_copy_and_keeps_the_stop_and_start() {
        // 10 GiB copied in 100 s within 130 s of downtime: 30 s of stop
        // and start, 100 s per 10 GiB.
        let r = record(10 << 30, 130, 100);
        assert_eq!(r.estimate(10 << 30), Duration::from_secs(130));
        assert_eq!(r.estimate(20 << 30), Duration::from_secs(230));
        assert_eq!(r.estimate(0), Duration::from_secs(30));
    }

    #[test]
    fn a_copy_estimate_survives_odd_records() {
        // A copy recorded longer than the downtime (clocks) counts as the
        // whole downtime; an empty earlier snapshot scales from one byte.
        let r = record(1000, 10, 20);
        assert_eq!(r.estimate(1000), Duration::from_secs(10));
        let empty = record(0, 5, 0);
        assert_eq!(empty.estimate(1 << 40), Duration::from_secs(5));
    }
}
