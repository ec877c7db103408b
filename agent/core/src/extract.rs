//! Safe extract, the restore side. Every log dir is extracted into
//! `<target>.restoring-<id>` and checked completely (every file's hash, the
//! archive's hash) before anything at the target is touched. Only then is
//! whatever was at the target moved aside to `<target>.pre-restore-<time>`
//! (never deleted) and the restored dir renamed into place.
//!
//! The two steps can be run apart ([`prepare`], then [`Prepared::swap`]):
//! the daemon downloads and checks while the broker still runs, and stops it
//! only for the renames.

use crate::catalog::load_manifest;
use crate::logdir::{self, read_meta_properties};
use crate::storage::{fsync_dir, ColdStore};
use crate::verify::{walk, Report, Visitor};
use chrono::Utc;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::layout::SnapshotRef;
use kafka_snapshot_model::manifest::{EntryRecord, EntryType, Manifest};
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// Finished files waiting for their writeback to be started.
const WRITEBACK_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// One target per log dir of the snapshot, in manifest order.
    pub targets: Vec<PathBuf>,
    /// Restore over a dir whose meta.properties names another cluster or node.
    pub allow_other_identity: bool,
    /// Restore file owners (needs root); defaults to "when running as root".
    pub restore_owner: bool,
    /// Let [`prepare`] run while a broker holds the targets (it writes
    /// beside them only); [`Prepared::swap`] still refuses a running broker.
    pub broker_may_run: bool,
    /// Set to give up: the extraction stops at the next file.
    pub cancel: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub target: PathBuf,
    pub original_path: String,
    pub moved_aside: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractReport {
    pub verify: Report,
    pub restored: Vec<Restored>,
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when this process can give restored files their recorded owners,
/// modes and mtimes: it runs as root, or holds CAP_CHOWN and CAP_FOWNER
/// (the agent's systemd unit runs it as user `kafka-snapshot` with these as
/// ambient capabilities). The daemon's restores use this rather than
/// [`is_root`]: files restored as `kafka-snapshot` would leave the broker
/// unable to write its own log dirs.
pub fn can_restore_owners() -> bool {
    is_root()
        || std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| effective_capabilities(&s))
            .is_some_and(has_owner_capabilities)
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_owner_capabilities(caps: u64) -> bool {
    // capability(7) numbers.
    const CAP_CHOWN: u32 = 0;
    const CAP_FOWNER: u32 = 3;
    let needed = (1u64 << CAP_CHOWN) | (1u64 << CAP_FOWNER);
    caps & needed == needed
}

/// The targets `--original-paths` means: where the log dirs were.
pub fn original_targets(m: &Manifest) -> Vec<PathBuf> {
    m.log_dirs.iter().map(|d| PathBuf::from(&d.path)).collect()
}

/// Restores `snap` into `opts.targets`: [`prepare`], then [`Prepared::swap`].
pub fn extract(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    opts: &ExtractOptions,
) -> Result<ExtractReport> {
    prepare(store, snap, opts)?.swap()
}

/// A snapshot extracted and checked beside its targets, synced to disk,
/// not yet in place. Dropping it without [`Prepared::swap`] removes the
/// extracted copies; the targets are untouched either way.
pub struct Prepared {
    pub manifest: Manifest,
    pub verify: Report,
    targets: Vec<PathBuf>,
    restoring: Vec<PathBuf>,
    swapped: bool,
}

/// Extracts and checks `snap` into `<target>.restoring-<id>` beside every
/// target; touches nothing at the targets.
pub fn prepare(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    opts: &ExtractOptions,
) -> Result<Prepared> {
    let m = load_manifest(store, snap)?;
    if opts.targets.len() != m.log_dirs.len() {
        return Err(Error::Usage(format!(
            "snapshot {} holds {} log dirs ({}); give exactly one --into per log dir, in that order, or --original-paths",
            m.snapshot_id,
            m.log_dirs.len(),
            m.log_dirs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    for (i, t) in opts.targets.iter().enumerate() {
        if opts.targets[..i].contains(t) {
            return Err(Error::Usage(format!(
                "target {} is given twice",
                t.display()
            )));
        }
        precheck_target(&m, i, t, opts)?;
    }
    let restoring: Vec<PathBuf> = opts
        .targets
        .iter()
        .map(|t| sibling(t, &format!("{RESTORING}{}", m.snapshot_id)))
        .collect();
    for r in &restoring {
        if fs::symlink_metadata(r).is_ok() {
            // Ours by name: left by an interrupted restore of this snapshot.
            tracing::warn!(dir = %r.display(), "removing an interrupted restore");
            fs::remove_dir_all(r).ctx(|| format!("removing {}", r.display()))?;
        }
    }
    let mut visitor = ExtractVisitor {
        snapshot: m.snapshot_id.clone(),
        roots: restoring.clone(),
        symlinks: HashSet::new(),
        dirs: Vec::new(),
        restore_owner: opts.restore_owner,
        buf: vec![0u8; 1 << 20],
        writeback: None,
        cancel: opts.cancel.clone(),
    };
    let result = std::thread::scope(|scope| {
        // Writeback of every finished file is started on a thread of its
        // own, so the disk writes while the next files are decompressed and
        // dirty pages do not pile up. It does not wait for the disk: the
        // syncfs below makes everything durable at once. (An fsync per file
        // here cost a journal commit each: with thousands of small
        // partition files that, not the data, was most of a restore.)
        let (tx, rx) = mpsc::sync_channel::<(PathBuf, fs::File)>(WRITEBACK_DEPTH);
        let flusher = scope.spawn(move || -> Result<()> {
            for (path, f) in rx {
                start_writeback(&f).ctx(|| format!("starting writeback of {}", path.display()))?;
            }
            Ok(())
        });
        visitor.writeback = Some(tx);
        let walked = walk(store, snap, &m, &mut visitor);
        visitor.writeback = None;
        let flushed = flusher
            .join()
            .unwrap_or_else(|_| Err(Error::panicked("flushing restored files")));
        let report = walked?;
        flushed?;
        visitor.finish_dirs()?;
        for r in &restoring {
            sync_filesystem(r)?;
        }
        Ok(report)
    });
    let mut prepared = Prepared {
        manifest: m,
        verify: Report::default(),
        targets: opts.targets.clone(),
        restoring,
        swapped: false,
    };
    // On an error, dropping `prepared` removes the partial copies; nothing
    // at the targets was touched.
    prepared.verify = result?;
    Ok(prepared)
}

impl Prepared {
    /// The extracted copies, one per target.
    pub fn restoring_dirs(&self) -> &[PathBuf] {
        &self.restoring
    }

    /// Moves whatever is at each target aside to
    /// `<target>.pre-restore-<time>` and renames the extracted copy into
    /// place. Refuses (touching nothing) while a broker holds a target.
    pub fn swap(mut self) -> Result<ExtractReport> {
        for t in &self.targets {
            if let Err(e) = logdir::lock_log_dir(t) {
                return Err(target_err(
                    t,
                    format!("{e}; stop the broker before restoring"),
                ));
            }
        }
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        // From here on a failure leaves every dir where it is, for the
        // operator to finish by hand: nothing is removed.
        self.swapped = true;
        let mut restored = Vec::new();
        for ((t, r), d) in self
            .targets
            .iter()
            .zip(&self.restoring)
            .zip(&self.manifest.log_dirs)
        {
            let moved_aside = if fs::symlink_metadata(t).is_ok() {
                let aside = sibling(t, &format!("{PRE_RESTORE}{stamp}"));
                fs::rename(t, &aside)
                    .ctx(|| format!("moving {} aside to {}", t.display(), aside.display()))?;
                tracing::info!(target = %t.display(), aside = %aside.display(), "moved existing data aside");
                Some(aside)
            } else {
                None
            };
            fs::rename(r, t).ctx(|| format!("renaming {} to {}", r.display(), t.display()))?;
            let parent = t.parent().expect("absolute target has a parent");
            fsync_dir(parent).ctx(|| format!("fsync {}", parent.display()))?;
            restored.push(Restored {
                target: t.clone(),
                original_path: d.path.clone(),
                moved_aside,
            });
        }
        Ok(ExtractReport {
            verify: std::mem::take(&mut self.verify),
            restored,
        })
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.swapped {
            return;
        }
        for r in &self.restoring {
            if let Err(e) = fs::remove_dir_all(r) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %r.display(), error = %e, "could not remove an unfinished restore");
                }
            }
        }
    }
}

/// Suffix of the extracted copy beside a target: `<dir>.restoring-<id>`.
pub const RESTORING: &str = "restoring-";
/// Suffix of the data a restore moved aside: `<dir>.pre-restore-<time>`.
pub const PRE_RESTORE: &str = "pre-restore-";

/// Removes `<dir>.restoring-*` beside every dir: the unfinished copies of an
/// interrupted restore. Never touches the dirs themselves or anything
/// moved aside (`.pre-restore-*`).
pub fn remove_unfinished_restores(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for d in dirs {
        let (Some(parent), Some(name)) = (d.parent(), d.file_name()) else {
            continue;
        };
        let prefix = format!("{}.{RESTORING}", name.to_string_lossy());
        let entries = match fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("listing {}", parent.display()), e)),
        };
        for ent in entries {
            let ent = ent.ctx(|| format!("listing {}", parent.display()))?;
            let n = ent.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && n.len() > prefix.len() {
                let p = ent.path();
                tracing::warn!(dir = %p.display(), "removing the unfinished copy of an interrupted restore");
                fs::remove_dir_all(&p).ctx(|| format!("removing {}", p.display()))?;
                removed.push(p);
            }
        }
    }
    Ok(removed)
}

/// `<dir>.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

fn target_err(t: &Path, message: String) -> Error {
    Error::Target {
        path: t.to_path_buf(),
        message,
    }
}

/// Everything that can be known before reading the archive: the target is
/// absolute, not a mount point, not in use by a broker, of the same cluster
/// and node (unless allowed), and there is room for the data.
fn precheck_target(m: &Manifest, index: usize, t: &Path, opts: &ExtractOptions) -> Result<()> {
    if !t.is_absolute() || t.parent().is_none() {
        return Err(target_err(
            t,
            "targets must be absolute paths below /".into(),
        ));
    }
    let parent = t.parent().expect("checked");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .ctx(|| format!("creating {}", parent.display()))?;
    if let Ok(md) = fs::symlink_metadata(t) {
        if !md.is_dir() {
            return Err(target_err(t, "exists and is not a directory".into()));
        }
        let pmd = fs::metadata(parent).ctx(|| format!("stat {}", parent.display()))?;
        if pmd.dev() != md.dev() {
            return Err(target_err(
                t,
                "is a mount point and cannot be moved aside; restore into a directory on it \
                 (for example <mount>/kafka-logs) and point log.dirs there"
                    .into(),
            ));
        }
        if !opts.broker_may_run {
            if let Err(e) = logdir::lock_log_dir(t) {
                return Err(target_err(
                    t,
                    format!("{e}; stop the broker before restoring"),
                ));
            }
        }
        if t.join(logdir::META_PROPERTIES).exists() && !opts.allow_other_identity {
            let have = read_meta_properties(t)?;
            if have.cluster_id != m.cluster_id {
                return Err(target_err(
                    t,
                    format!(
                        "holds cluster {} but snapshot {} is of cluster {}; pass --allow-other-identity to restore anyway",
                        have.cluster_id, m.snapshot_id, m.cluster_id
                    ),
                ));
            }
            if have.node_id != m.node_id {
                return Err(target_err(
                    t,
                    format!(
                        "holds broker {} but snapshot {} is of broker {}; pass --allow-other-identity to restore anyway",
                        have.node_id, m.snapshot_id, m.node_id
                    ),
                ));
            }
        }
    }
    let need: u64 = m.entries_of(index).map(|e| e.size).sum();
    let st = nix::sys::statvfs::statvfs(parent)
        .map_err(|e| Error::io(format!("statvfs {}", parent.display()), e.into()))?;
    let avail = st.blocks_available() as u64 * st.fragment_size() as u64;
    // Leave 1% or 64 MiB of slack for directories and metadata.
    let slack = (need / 100).max(64 << 20);
    if need + slack > avail {
        return Err(target_err(
            t,
            format!(
                "needs {need} bytes (+{slack} slack) but {} has only {avail} available",
                parent.display()
            ),
        ));
    }
    Ok(())
}

struct ExtractVisitor {
    snapshot: String,
    roots: Vec<PathBuf>,
    /// Symlinks already created: nothing is ever written through one.
    symlinks: HashSet<String>,
    dirs: Vec<(PathBuf, EntryRecord)>,
    restore_owner: bool,
    buf: Vec<u8>,
    /// Finished files go here to be flushed.
    writeback: Option<mpsc::SyncSender<(PathBuf, fs::File)>>,
    cancel: Option<Arc<AtomicBool>>,
}

impl ExtractVisitor {
    fn dest(&self, rec: &EntryRecord) -> Result<PathBuf> {
        let (prefix, rest) = match rec.path.split_once('/') {
            Some((p, r)) => (p, r),
            None => (rec.path.as_str(), ""),
        };
        let index: usize = prefix
            .strip_prefix("logdir-")
            .and_then(|n| n.parse().ok())
            .filter(|&i| i < self.roots.len())
            .ok_or_else(|| Error::UnsafeEntry {
                snapshot: self.snapshot.clone(),
                path: rec.path.clone(),
                reason: "not under a log dir prefix of this snapshot".into(),
            })?;
        // Refuse to write below a symlink the archive created.
        let mut ancestor = rec.path.as_str();
        while let Some((head, _)) = ancestor.rsplit_once('/') {
            if self.symlinks.contains(head) {
                return Err(Error::UnsafeEntry {
                    snapshot: self.snapshot.clone(),
                    path: rec.path.clone(),
                    reason: format!("would be written through the symlink {head}"),
                });
            }
            ancestor = head;
        }
        Ok(if rest.is_empty() {
            self.roots[index].clone()
        } else {
            self.roots[index].join(rest)
        })
    }

    fn write_file(&mut self, dest: &Path, rec: &EntryRecord, data: &mut dyn Read) -> Result<()> {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .ctx(|| format!("creating {}", dest.display()))?;
        let mut off = 0u64;
        loop {
            let n = read_full(data, &mut self.buf).map_err(|e| Error::ArchiveCorrupt {
                snapshot: self.snapshot.clone(),
                message: format!("reading {}: {e}", rec.path),
            })?;
            if n == 0 {
                break;
            }
            // All-zero blocks become holes: sparse files stay sparse.
            for chunk in self.buf[..n].chunks(64 * 1024) {
                if !is_zero(chunk) {
                    f.write_all_at(chunk, off)
                        .ctx(|| format!("writing {}", dest.display()))?;
                }
                off += chunk.len() as u64;
            }
        }
        f.set_len(off)
            .ctx(|| format!("sizing {}", dest.display()))?;
        self.apply_metadata_fd(&f, dest, rec)?;
        if let Some(tx) = &self.writeback {
            // A closed channel means the flusher failed; it reports why.
            let _ = tx.send((dest.to_path_buf(), f));
        }
        Ok(())
    }

    fn apply_metadata_fd(&self, f: &fs::File, dest: &Path, rec: &EntryRecord) -> Result<()> {
        if self.restore_owner {
            std::os::unix::fs::fchown(f, Some(rec.uid), Some(rec.gid))
                .ctx(|| format!("chown {}", dest.display()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(rec.mode))
            .ctx(|| format!("chmod {}", dest.display()))?;
        set_times(f.as_raw_fd(), rec.mtime_ns)
            .ctx(|| format!("setting mtime of {}", dest.display()))
    }

    /// Directory modes, owners and mtimes go last (deepest first): creating
    /// their children would change the mtimes, and a read-only mode would
    /// stop the extraction.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (dest, rec) in dirs.iter().rev() {
            let f = fs::File::open(dest).ctx(|| format!("opening {}", dest.display()))?;
            self.apply_metadata_fd(&f, dest, rec)?;
        }
        Ok(())
    }
}

impl Visitor for ExtractVisitor {
    fn entry(&mut self, rec: &EntryRecord, data: &mut dyn Read) -> Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(Error::unavailable(
                format!("restore of snapshot {}", self.snapshot),
                "cancelled: the agent is shutting down",
            ));
        }
        let dest = self.dest(rec)?;
        match rec.kind {
            EntryType::Dir => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dest)
                    .ctx(|| format!("creating {}", dest.display()))?;
                self.dirs.push((dest, rec.clone()));
            }
            EntryType::File => self.write_file(&dest, rec, data)?,
            EntryType::Symlink => {
                let target = rec.link_target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &dest)
                    .ctx(|| format!("creating symlink {}", dest.display()))?;
                if self.restore_owner {
                    std::os::unix::fs::lchown(&dest, Some(rec.uid), Some(rec.gid))
                        .ctx(|| format!("chown {}", dest.display()))?;
                }
                self.symlinks.insert(rec.path.clone());
            }
        }
        Ok(())
    }
}

/// Whether a block is all zeros; folds whole words so it vectorises.
fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(8);
    let acc = words.by_ref().fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    });
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn set_times(fd: i32, mtime_ns: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid fd and a two-element timespec array.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to start writing a file's dirty pages to disk without
/// waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability
/// comes from [`sync_filesystem`] afterwards.
fn start_writeback(f: &fs::File) -> io::Result<()> {
    // SAFETY: valid fd; offset 0 and length 0 mean the whole file.
    if unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flushes the filesystem holding `dir` (one syncfs instead of an fsync per
/// file): data, metadata and the journal, as `sync -f` does.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    // SAFETY: valid fd.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::io(
            format!("syncfs {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_restorable_with_chown_and_fowner_capabilities() {
        let status = |eff: &str| {
            format!("Name:\tkafka-snapshot-agent\nUid:\t998\t998\t998\t998\nCapInh:\t0000000000000000\nCapPrm:\t{eff}\nCapEff:\t{eff}\n")
        };
        // What the agent's unit grants: CAP_CHOWN, CAP_DAC_OVERRIDE,
        // CAP_DAC_READ_SEARCH, CAP_FOWNER.
        let agent = effective_capabilities(&status("000000000000000f")).unwrap();
        assert!(has_owner_capabilities(agent));
        // Root's full set.
        let root = effective_capabilities(&status("000001ffffffffff")).unwrap();
        assert!(has_owner_capabilities(root));
        // CAP_CHOWN alone: chown works, the following chmod and futimens of
        // a file now owned by kafka would not.
        assert!(!has_owner_capabilities(
            effective_capabilities(&status("0000000000000001")).unwrap()
        ));
        assert!(!has_owner_capabilities(0));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_judged_by_its_own_capabilities() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let caps = effective_capabilities(&status).expect("CapEff in /proc/self/status");
        assert_eq!(
            can_restore_owners(),
            is_root() || has_owner_capabilities(caps)
        );
    }
}
