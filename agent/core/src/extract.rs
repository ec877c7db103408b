//! Safe extract, the restore side. Every log dir is extracted into
//! `<target>.restoring-<id>` and checked completely (every file's hash, the
//! archive's hash) before anything at the target is touched. Only then is
//! whatever was at the target moved aside to `<target>.pre-restore-<time>`
//! (never deleted) and the restored dir renamed into place: all of them, or
//! none (a failed rename undoes the ones before it).
//!
//! Every step names things relative to the target's parent, opened once
//! ([`crate::fsat`]): the broker's user can usually write that parent, and
//! must not be able to swap the extracted copy for something else between
//! its check and its rename.
//!
//! The two steps can be run apart ([`prepare`], then [`Prepared::swap`]):
//! the daemon downloads and checks while the broker still runs, and stops it
//! only for the renames.

use crate::crypt::Identities;
use crate::fsat::{self, Identity};
use crate::logdir::{self, read_meta_properties};
use crate::storage::ColdStore;
use crate::verify::{load_with_entries, walk, Report, Visitor};
use chrono::Utc;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::layout::SnapshotRef;
use kafka_snapshot_model::manifest::{restored_mode, EntryRecord, EntryType, Manifest};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
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
    /// Restore over a dir of another cluster that holds no Kafka data yet
    /// (freshly formatted: see [`holds_no_data`]), as a whole-cluster
    /// restore onto new hosts does; a dir of another cluster with data is
    /// still refused.
    pub replace_formatted: bool,
    /// Restore file owners (needs root); defaults to "when running as root".
    pub restore_owner: bool,
    /// Let [`prepare`] run while a broker holds the targets (it writes
    /// beside them only); [`Prepared::swap`] still refuses a running broker.
    pub broker_may_run: bool,
    /// Set to give up: the extraction stops at the next file.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Opens an encrypted snapshot; one is refused without it, before
    /// anything is downloaded.
    pub identity: Option<Arc<Identities>>,
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

/// The targets `--original-paths` means: where the log dirs were, each of
/// which must be one of `configured`, the log dirs this node's own
/// configuration names. The paths come from a manifest in storage: trusted
/// as they are, a planted one naming `/etc/cron.d` would have that moved
/// aside and replaced.
pub fn original_targets(m: &Manifest, configured: &[PathBuf]) -> Result<Vec<PathBuf>> {
    m.log_dirs
        .iter()
        .map(|d| {
            let p = PathBuf::from(&d.path);
            let plain = p.is_absolute() && p.components().all(|c| c != Component::ParentDir);
            if plain && configured.contains(&p) {
                return Ok(p);
            }
            Err(target_err(
                &p,
                format!(
                    "snapshot {} records this as log dir {}, but it is not one of the log dirs \
                     this node is configured with ({}); refusing to restore there \
                     (give the targets with --into)",
                    m.snapshot_id,
                    d.archive_prefix,
                    configured
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        })
        .collect()
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
/// The KRaft election state file in the metadata log dir.
const QUORUM_STATE: &str = "quorum-state";

pub struct Prepared {
    pub manifest: Manifest,
    pub verify: Report,
    targets: Vec<PathBuf>,
    restoring: Vec<PathBuf>,
    /// Each target's parent, opened once: the copies are made, checked and
    /// renamed relative to it.
    parents: Vec<fs::File>,
    /// Each extracted copy as it was created; checked right before and
    /// right after its rename. `None` where it was never created.
    copies: Vec<Option<Identity>>,
    swapped: bool,
}

/// Extracts and checks `snap` into `<target>.restoring-<id>` beside every
/// target; touches nothing at the targets.
pub fn prepare(
    store: &dyn ColdStore,
    snap: &SnapshotRef,
    opts: &ExtractOptions,
) -> Result<Prepared> {
    let identity = opts.identity.as_deref();
    let m = load_with_entries(store, snap, identity)?;
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
    let mut parents = Vec::new();
    for (t, r) in opts.targets.iter().zip(&restoring) {
        let parent = t.parent().unwrap_or(Path::new("/"));
        // The parent itself may be reached through a symlink (`/data` ->
        // `/mnt/data`): that is the operator's layout, not a name in it.
        let p = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(parent)
            .ctx(|| format!("opening {}", parent.display()))?;
        if fsat::lstat(&p, Path::new(&file_name(r)))
            .ctx(|| format!("stat {}", r.display()))?
            .is_some()
        {
            // Ours by name: left by an interrupted restore of this snapshot.
            // Removed without following any symlink in it.
            tracing::warn!(dir = %r.display(), "removing an interrupted restore");
            fsat::remove_tree(&p, Path::new(&file_name(r)))
                .ctx(|| format!("removing {}", r.display()))?;
        }
        parents.push(p);
    }
    let mut visitor = ExtractVisitor {
        snapshot: m.snapshot_id.clone(),
        parents: &parents,
        restoring: restoring.clone(),
        roots: restoring.iter().map(|_| None).collect(),
        symlinks: HashSet::new(),
        dirs: Vec::new(),
        restore_owner: opts.restore_owner,
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
        let walked = walk(store, snap, &m, identity, &mut visitor);
        visitor.writeback = None;
        let flushed = flusher
            .join()
            .unwrap_or_else(|_| Err(Error::panicked("flushing restored files")));
        let report = walked?;
        flushed?;
        visitor.finish_dirs()?;
        for (root, r) in visitor.roots.iter().zip(&restoring) {
            if let Some(root) = root {
                sync_filesystem(root, r)?;
            }
        }
        Ok(report)
    });
    let copies = visitor
        .roots
        .iter()
        .map(|root| root.as_ref().and_then(|f| Identity::of(f).ok()))
        .collect();
    drop(visitor);
    let mut prepared = Prepared {
        manifest: m,
        verify: Report::default(),
        targets: opts.targets.clone(),
        restoring,
        parents,
        copies,
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

    /// Takes the KRaft election state (`__cluster_metadata-0/quorum-state`:
    /// the epoch, leader and vote this controller had when its snapshot was
    /// taken) out of the extracted copies, for a whole-cluster restore.
    ///
    /// The controllers of a set were snapshotted one after the other, and
    /// leadership moved between them meanwhile: restored as taken, one
    /// controller remembers a leader at an epoch that another's log has
    /// moved past, and when that one names it leader of an epoch it never
    /// knew, Kafka stops it ("Received request or response with leader ...
    /// which is inconsistent with current leader", a fatal fault, seen on
    /// Kafka 4.0). Without the file, Kafka starts the controller unattached
    /// at the last epoch of its own log, and the quorum elects a leader
    /// among the restored logs by the usual rule (the most complete log
    /// wins). The metadata log itself is untouched. Returns the files
    /// removed (none for a broker).
    pub fn drop_quorum_state(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for (i, r) in self.restoring.iter().enumerate() {
            let copy = fsat::open_dir(Some(&self.parents[i]), Path::new(&file_name(r)))
                .ctx(|| format!("opening {}", r.display()))?;
            let meta_dir = Path::new(crate::cleanstop::METADATA_LOG);
            let dir = match fsat::open_dir(Some(&copy), meta_dir) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("opening {}", r.join(meta_dir).display()),
                        e,
                    ))
                }
            };
            let state = r.join(meta_dir).join(QUORUM_STATE);
            if fsat::lstat(&dir, Path::new(QUORUM_STATE))
                .ctx(|| format!("stat {}", state.display()))?
                .is_some()
            {
                fsat::remove_tree(&dir, Path::new(QUORUM_STATE))
                    .ctx(|| format!("removing {}", state.display()))?;
                dir.sync_all()
                    .ctx(|| format!("fsync {}", r.join(meta_dir).display()))?;
                removed.push(state);
            }
        }
        Ok(removed)
    }

    /// Moves whatever is at each target aside to
    /// `<target>.pre-restore-<time>` and renames the extracted copy into
    /// place, every target or none: when a rename fails, the ones already
    /// done are undone in reverse. Refuses (touching nothing) while a
    /// broker holds a target, and holds every target's Kafka lock until the
    /// last rename is done, so that no broker starts on a half-swapped set.
    pub fn swap(mut self) -> Result<ExtractReport> {
        let mut locks = Vec::new();
        for t in &self.targets {
            match logdir::lock_log_dir(t) {
                Ok(lock) => locks.push(lock),
                Err(e) => {
                    return Err(target_err(
                        t,
                        format!("{e}; stop the broker before restoring"),
                    ))
                }
            }
        }
        let stamp = Utc::now().format(STAMP_FORMAT).to_string();
        // From here on nothing is removed, whatever happens: the copies
        // stay unless every rename was undone.
        self.swapped = true;
        let mut done = Vec::new();
        let mut restored = Vec::new();
        for i in 0..self.targets.len() {
            match self.swap_one(i, &stamp, &mut done) {
                Ok(moved_aside) => restored.push(Restored {
                    target: self.targets[i].clone(),
                    original_path: self.manifest.log_dirs[i].path.clone(),
                    moved_aside,
                }),
                Err(e) => return Err(self.roll_back(i, e, &done)),
            }
        }
        drop(locks);
        Ok(ExtractReport {
            verify: std::mem::take(&mut self.verify),
            restored,
        })
    }

    /// Checks that the copy at `<target>.restoring-<id>` is the one
    /// extracted and verified, not something put there since.
    fn check_copy(&self, i: usize, name: &OsString, place: &Path) -> Result<()> {
        let found = fsat::lstat(&self.parents[i], Path::new(name))
            .ctx(|| format!("stat {}", place.display()))?;
        match (found, self.copies[i]) {
            (Some(f), Some(want)) if f.identity == want && f.is_dir => Ok(()),
            (None, _) => Err(target_err(
                &self.targets[i],
                format!("the verified copy {} is gone", place.display()),
            )),
            _ => Err(target_err(
                &self.targets[i],
                format!(
                    "{} is not the copy that was extracted and verified (it was replaced since): \
                     refusing to put it in place",
                    place.display()
                ),
            )),
        }
    }

    /// Moves target `i` aside and its copy into place, recording each
    /// rename in `done`; returns where the previous data went.
    fn swap_one(&self, i: usize, stamp: &str, done: &mut Vec<Step>) -> Result<Option<PathBuf>> {
        let (t, r, parent) = (&self.targets[i], &self.restoring[i], &self.parents[i]);
        let (tname, rname) = (file_name(t), file_name(r));
        self.check_copy(i, &rname, r)?;
        let existing =
            fsat::lstat(parent, Path::new(&tname)).ctx(|| format!("stat {}", t.display()))?;
        let moved_aside = match existing {
            Some(_) => {
                let aside = sibling(t, &format!("{PRE_RESTORE}{stamp}"));
                fsat::rename_noreplace(parent, &tname, &file_name(&aside))
                    .ctx(|| format!("moving {} aside to {}", t.display(), aside.display()))?;
                tracing::info!(target = %t.display(), aside = %aside.display(), "moved existing data aside");
                done.push(Step::MovedAside(i, aside.clone()));
                Some(aside)
            }
            None => None,
        };
        fsat::rename_noreplace(parent, &rname, &tname)
            .ctx(|| format!("renaming {} to {}", r.display(), t.display()))?;
        done.push(Step::Placed(i));
        // And what landed is that copy: a swap between the check and the
        // rename is undone with the rest.
        self.check_copy(i, &tname, t)?;
        parent
            .sync_all()
            .ctx(|| format!("fsync {}", t.parent().unwrap_or(t).display()))?;
        Ok(moved_aside)
    }

    /// Undoes the renames in `done`, last first, after target `failed`
    /// failed with `cause`; the error says what failed and where every dir
    /// is now.
    fn roll_back(&mut self, failed: usize, cause: Error, done: &[Step]) -> Error {
        let mut problems = Vec::new();
        // Dirs left holding the restored copy, and dirs left missing.
        let mut still_placed = HashSet::new();
        let mut still_aside = HashSet::new();
        for step in done.iter().rev() {
            match step {
                Step::Placed(i) => {
                    let (t, r) = (&self.targets[*i], &self.restoring[*i]);
                    if let Err(e) =
                        fsat::rename_noreplace(&self.parents[*i], &file_name(t), &file_name(r))
                    {
                        problems.push(format!(
                            "renaming {} back to {}: {e}",
                            t.display(),
                            r.display()
                        ));
                        still_placed.insert(*i);
                    }
                }
                Step::MovedAside(i, aside) => {
                    let t = &self.targets[*i];
                    if still_placed.contains(i) {
                        still_aside.insert(*i);
                        continue;
                    }
                    if let Err(e) =
                        fsat::rename_noreplace(&self.parents[*i], &file_name(aside), &file_name(t))
                    {
                        problems.push(format!(
                            "moving {} back to {}: {e}",
                            aside.display(),
                            t.display()
                        ));
                        still_aside.insert(*i);
                    }
                }
            }
        }
        for p in &self.parents {
            if let Err(e) = p.sync_all() {
                problems.push(format!("fsync of a target's parent: {e}"));
            }
        }
        let t = &self.targets[failed];
        if done.is_empty() && problems.is_empty() {
            // Refused before anything was renamed.
            self.swapped = false;
            return cause;
        }
        if problems.is_empty() {
            tracing::warn!(target = %t.display(), "swap failed; every log dir was put back");
            // Every rename was undone: the copies may go with `self`.
            self.swapped = false;
            return target_err(
                t,
                format!(
                    "{cause}; rolled back: the {} rename(s) already done were undone, \
                     every log dir holds what it held before the restore",
                    done.len()
                ),
            );
        }
        let aside_of = |i: usize| {
            done.iter().find_map(|s| match s {
                Step::MovedAside(j, a) if *j == i => Some(a.clone()),
                _ => None,
            })
        };
        let states: Vec<String> = (0..self.targets.len())
            .map(|i| {
                let (t, r) = (self.targets[i].display(), self.restoring[i].display());
                match (
                    still_placed.contains(&i),
                    still_aside.contains(&i),
                    aside_of(i),
                ) {
                    (true, _, Some(a)) => format!(
                        "{t} holds the RESTORED snapshot, its previous data is in {}",
                        a.display()
                    ),
                    (true, _, None) => {
                        format!("{t} holds the RESTORED snapshot (nothing was there before)")
                    }
                    (false, true, Some(a)) => format!(
                        "{t} is MISSING: its previous data is in {}, the restored copy in {r}",
                        a.display()
                    ),
                    _ => format!("{t} holds its previous data (the restored copy is in {r})"),
                }
            })
            .collect();
        tracing::error!(target = %t.display(), "swap failed and could not be rolled back");
        target_err(
            t,
            format!(
                "{cause}; ROLLBACK FAILED ({}). Nothing was deleted; the log dirs are now: {}. \
                 Put them back by hand before starting the broker",
                problems.join("; "),
                states.join("; ")
            ),
        )
    }
}

/// One rename of a swap, to be undone if a later one fails.
enum Step {
    /// Target `i` was moved aside to this path.
    MovedAside(usize, PathBuf),
    /// The copy of target `i` was renamed into its place.
    Placed(usize),
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.swapped {
            return;
        }
        for (i, r) in self.restoring.iter().enumerate() {
            let name = file_name(r);
            // Only the copy this restore made: whatever else has that name
            // now is not ours to remove.
            match fsat::lstat(&self.parents[i], Path::new(&name)) {
                Ok(Some(f)) if Some(f.identity) == self.copies[i] => {
                    if let Err(e) = fsat::remove_tree(&self.parents[i], Path::new(&name)) {
                        tracing::warn!(dir = %r.display(), error = %e, "could not remove an unfinished restore");
                    }
                }
                Ok(None) => {}
                Ok(Some(_)) => {
                    tracing::warn!(dir = %r.display(), "not removing an unfinished restore: it is not the copy this restore made")
                }
                Err(e) => {
                    tracing::warn!(dir = %r.display(), error = %e, "could not remove an unfinished restore")
                }
            }
        }
    }
}

/// Suffix of the extracted copy beside a target: `<dir>.restoring-<id>`.
pub const RESTORING: &str = "restoring-";
/// Suffix of the data a restore moved aside: `<dir>.pre-restore-<time>`.
pub const PRE_RESTORE: &str = "pre-restore-";
/// The time in a `.pre-restore-<time>` name (`20261202T101500Z`, UTC).
pub const STAMP_FORMAT: &str = "%Y%m%dT%H%M%SZ";

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
        // Through the parent's fd: a name swapped for a symlink meanwhile
        // is removed itself, and nothing it points to.
        let dir = match fsat::open_dir(None, parent) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("opening {}", parent.display()), e)),
        };
        for n in fsat::names(&dir).ctx(|| format!("listing {}", parent.display()))? {
            let n = n.to_string_lossy().into_owned();
            if n.starts_with(&prefix) && n.len() > prefix.len() {
                let p = parent.join(&n);
                tracing::warn!(dir = %p.display(), "removing the unfinished copy of an interrupted restore");
                fsat::remove_tree(&dir, Path::new(&n))
                    .ctx(|| format!("removing {}", p.display()))?;
                removed.push(p);
            }
        }
    }
    Ok(removed)
}

/// The last component of a target or of a name beside it.
/// Whether log dir `dir` holds no Kafka data: what `kafka-storage format`
/// leaves (`meta.properties`, `bootstrap.checkpoint`, the lock) and at
/// most a metadata log without records (no non-empty `.log` segment, a
/// bootstrap `.checkpoint` allowed). Any partition dir is data.
pub fn holds_no_data(dir: &Path) -> Result<bool> {
    for e in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let e = e.ctx(|| format!("listing {}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        match name.as_ref() {
            logdir::META_PROPERTIES | "bootstrap.checkpoint" | ".lock" => {}
            crate::cleanstop::METADATA_LOG => {
                let meta = e.path();
                for f in fs::read_dir(&meta).ctx(|| format!("listing {}", meta.display()))? {
                    let f = f.ctx(|| format!("listing {}", meta.display()))?;
                    let md = f
                        .metadata()
                        .ctx(|| format!("stat {}", f.path().display()))?;
                    let n = f.file_name();
                    if n.to_string_lossy().ends_with(".log") && md.len() > 0 {
                        return Ok(false);
                    }
                }
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn file_name(p: &Path) -> OsString {
    p.file_name().unwrap_or_default().to_os_string()
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
            if have.cluster_id != m.cluster_id && opts.replace_formatted && holds_no_data(t)? {
                tracing::warn!(
                    target = %t.display(),
                    formatted_for = %have.cluster_id,
                    snapshot_cluster = %m.cluster_id,
                    "a freshly formatted log dir of another cluster is moved aside"
                );
            } else if have.cluster_id != m.cluster_id && opts.replace_formatted {
                return Err(target_err(
                    t,
                    format!(
                        "holds data of cluster {} (more than `kafka-storage format` leaves) but \
                         snapshot {} is of cluster {}: move it away first if it is to be replaced",
                        have.cluster_id, m.snapshot_id, m.cluster_id
                    ),
                ));
            } else if have.cluster_id != m.cluster_id {
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
    // Sizes from the manifest: a sum past u64 is refused, not wrapped.
    let overflow = || Error::Manifest {
        snapshot: m.snapshot_id.clone(),
        key: kafka_snapshot_model::manifest::MANIFEST_FILE.into(),
        message: format!(
            "the sizes of log dir {index} add up to more than {} bytes",
            u64::MAX
        ),
    };
    let need = m
        .entries_of(index)
        .try_fold(0u64, |sum, e| sum.checked_add(e.size))
        .ok_or_else(overflow)?;
    let st = nix::sys::statvfs::statvfs(parent)
        .map_err(|e| Error::io(format!("statvfs {}", parent.display()), e.into()))?;
    let avail = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    // Leave 1% or 64 MiB of slack for directories and metadata.
    let slack = (need / 100).max(64 << 20);
    if need.checked_add(slack).is_none_or(|total| total > avail) {
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

struct ExtractVisitor<'a> {
    snapshot: String,
    /// Each target's parent, where the copies are created.
    parents: &'a [fs::File],
    /// `<target>.restoring-<id>` of each target, for messages and its name.
    restoring: Vec<PathBuf>,
    /// Each copy's root, opened right after it was created; everything
    /// below is created relative to it. Nobody else can write below it
    /// (mode 0700) until [`ExtractVisitor::finish_dirs`].
    roots: Vec<Option<fs::File>>,
    /// Symlinks already created: nothing is ever written through one.
    symlinks: HashSet<String>,
    /// Log dir index and path below its root of every dir, in archive order.
    dirs: Vec<(usize, String, EntryRecord)>,
    restore_owner: bool,
    /// Finished files go here to be flushed.
    writeback: Option<mpsc::SyncSender<(PathBuf, fs::File)>>,
    cancel: Option<Arc<AtomicBool>>,
}

impl ExtractVisitor<'_> {
    /// The log dir index of an entry and its path below that log dir's
    /// root ("" for the root itself).
    fn dest<'r>(&self, rec: &'r EntryRecord) -> Result<(usize, &'r str)> {
        let (prefix, rest) = match rec.path.split_once('/') {
            Some((p, r)) => (p, r),
            None => (rec.path.as_str(), ""),
        };
        let index: usize = prefix
            .strip_prefix("logdir-")
            .and_then(|n| n.parse().ok())
            .filter(|&i| i < self.roots.len())
            .ok_or_else(|| self.unsafe_entry(rec, "not under a log dir prefix of this snapshot"))?;
        // Refuse to write below a symlink the archive created.
        let mut ancestor = rec.path.as_str();
        while let Some((head, _)) = ancestor.rsplit_once('/') {
            if self.symlinks.contains(head) {
                return Err(
                    self.unsafe_entry(rec, &format!("would be written through the symlink {head}"))
                );
            }
            ancestor = head;
        }
        Ok((index, rest))
    }

    fn unsafe_entry(&self, rec: &EntryRecord, reason: &str) -> Error {
        Error::UnsafeEntry {
            snapshot: self.snapshot.clone(),
            path: rec.path.clone(),
            reason: reason.into(),
        }
    }

    /// Where an entry goes, for messages.
    fn shown(&self, index: usize, rest: &str) -> PathBuf {
        if rest.is_empty() {
            self.restoring[index].clone()
        } else {
            self.restoring[index].join(rest)
        }
    }

    /// The root of log dir `index`, created by its first entry.
    fn root(&self, index: usize, rec: &EntryRecord) -> Result<&fs::File> {
        self.roots[index]
            .as_ref()
            .ok_or_else(|| self.unsafe_entry(rec, "comes before the root of its log dir"))
    }

    fn write_file(
        &mut self,
        index: usize,
        rest: &str,
        rec: &EntryRecord,
        data: &mut dyn BufRead,
    ) -> Result<()> {
        let dest = self.shown(index, rest);
        let f = fsat::create_file(self.root(index, rec)?, Path::new(rest), 0o600)
            .ctx(|| format!("creating {}", dest.display()))?;
        let mut off = 0u64;
        loop {
            // Written from where the reader holds the bytes: a chunk of a
            // content object as it was decompressed, or the archive's
            // buffer.
            let bytes = data.fill_buf().map_err(|e| Error::ArchiveCorrupt {
                snapshot: self.snapshot.clone(),
                message: format!("reading {}: {e}", rec.path),
            })?;
            if bytes.is_empty() {
                break;
            }
            let n = bytes.len();
            write_sparse(&f, bytes, off).ctx(|| format!("writing {}", dest.display()))?;
            off += n as u64;
            data.consume(n);
        }
        f.set_len(off)
            .ctx(|| format!("sizing {}", dest.display()))?;
        self.apply_metadata_fd(&f, &dest, rec)?;
        if let Some(tx) = &self.writeback {
            // A closed channel means the flusher failed; it reports why.
            let _ = tx.send((dest, f));
        }
        Ok(())
    }

    /// Owner, mode and mtime as recorded, except the mode bits a restore
    /// never sets ([`restored_mode`]). The owner goes first: a chown clears
    /// setuid and setgid bits.
    fn apply_metadata_fd(&self, f: &fs::File, dest: &Path, rec: &EntryRecord) -> Result<()> {
        if self.restore_owner {
            std::os::unix::fs::fchown(f, Some(rec.uid), Some(rec.gid))
                .ctx(|| format!("chown {}", dest.display()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(restored_mode(
            rec.kind, rec.mode,
        )))
        .ctx(|| format!("chmod {}", dest.display()))?;
        set_times(f.as_raw_fd(), rec.mtime_ns)
            .ctx(|| format!("setting mtime of {}", dest.display()))
    }

    /// Directory modes, owners and mtimes go last (deepest first): creating
    /// their children would change the mtimes, and a read-only mode would
    /// stop the extraction. Every dir's ancestors are still ours (0700)
    /// when it is opened: they come later in this order.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (index, rest, rec) in dirs.iter().rev() {
            let dest = self.shown(*index, rest);
            let root = self.root(*index, rec)?;
            let f = if rest.is_empty() {
                root.try_clone()
            } else {
                fsat::open_dir(Some(root), Path::new(rest))
            }
            .ctx(|| format!("opening {}", dest.display()))?;
            self.apply_metadata_fd(&f, &dest, rec)?;
        }
        Ok(())
    }
}

impl Visitor for ExtractVisitor<'_> {
    /// A restore checks content objects chunk by chunk only (every byte,
    /// see [`Visitor::whole_file_hashes`]): the whole-file hash would be
    /// a second pass on the thread that writes.
    fn whole_file_hashes(&self) -> bool {
        false
    }

    fn entry(&mut self, rec: &EntryRecord, data: &mut dyn BufRead) -> Result<()> {
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
        let (index, rest) = self.dest(rec)?;
        let dest = self.shown(index, rest);
        match rec.kind {
            EntryType::Dir if rest.is_empty() => {
                if self.roots[index].is_some() {
                    return Err(self.unsafe_entry(rec, "a log dir root listed twice"));
                }
                let parent = &self.parents[index];
                let name = file_name(&self.restoring[index]);
                fsat::mkdir(parent, Path::new(&name), 0o700)
                    .ctx(|| format!("creating {}", dest.display()))?;
                let root = fsat::open_dir(Some(parent), Path::new(&name))
                    .ctx(|| format!("opening {}", dest.display()))?;
                self.roots[index] = Some(root);
                self.dirs.push((index, String::new(), rec.clone()));
            }
            EntryType::Dir => {
                fsat::mkdir(self.root(index, rec)?, Path::new(rest), 0o700)
                    .ctx(|| format!("creating {}", dest.display()))?;
                self.dirs.push((index, rest.to_string(), rec.clone()));
            }
            EntryType::File => self.write_file(index, rest, rec, data)?,
            // The manifest and the archive both refuse a root that is not a
            // directory; this is the last line.
            EntryType::Symlink if rest.is_empty() => {
                return Err(self.unsafe_entry(rec, "the root of a log dir must be a directory"))
            }
            EntryType::Symlink => {
                let target = rec.link_target.as_deref().unwrap_or_default();
                let root = self.root(index, rec)?;
                fsat::symlink(Path::new(target), root, Path::new(rest))
                    .ctx(|| format!("creating symlink {}", dest.display()))?;
                if self.restore_owner {
                    fsat::lchown(root, Path::new(rest), rec.uid, rec.gid)
                        .ctx(|| format!("chown {}", dest.display()))?;
                }
                self.symlinks.insert(rec.path.clone());
            }
        }
        Ok(())
    }
}

/// The size of the blocks [`write_sparse`] writes, or leaves as holes
/// when all zero.
const HOLE_BLOCK: u64 = 64 * 1024;

/// Writes `bytes` at `off` block by block ([`HOLE_BLOCK`], aligned in the
/// file), except the blocks that are all zero: sparse files stay sparse.
/// (Writing runs of blocks in one call of up to 4 MiB measured more system
/// time, not less, on ext4.)
fn write_sparse(f: &fs::File, bytes: &[u8], off: u64) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let room = HOLE_BLOCK - (off + at as u64) % HOLE_BLOCK;
        let end = bytes.len().min(at + room as usize);
        let block = &bytes[at..end];
        if !is_zero(block) {
            f.write_all_at(block, off + at as u64)?;
        }
        at = end;
    }
    Ok(())
}

/// Whether a block is all zeros; folds whole words so it vectorises.
fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(8);
    let acc = words.by_ref().fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    });
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
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
fn sync_filesystem(f: &fs::File, dir: &Path) -> Result<()> {
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
    fn zero_blocks_become_holes_wherever_the_writes_fall() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let block = HOLE_BLOCK as usize;
        // data, 3 blocks of zeros, data, a zero block, a short zero tail.
        let mut content = vec![7u8; block + 100];
        content.extend(vec![0u8; 3 * block - 100]);
        content.extend(vec![9u8; 2 * block]);
        content.extend(vec![0u8; block]);
        content.extend(vec![0u8; 1000]);
        // Handed to write_sparse in pieces that do not fall on blocks.
        for piece in [block * 8, 5000, block + 3] {
            let path = t.path().join(format!("f{piece}"));
            let f = fs::File::create(&path).unwrap();
            let mut off = 0;
            for bytes in content.chunks(piece) {
                write_sparse(&f, bytes, off as u64).unwrap();
                off += bytes.len();
            }
            f.set_len(content.len() as u64).unwrap();
            assert_eq!(fs::read(&path).unwrap(), content, "pieces of {piece}");
            // Data in blocks 0, 1, 4 and 5 only (the filesystem may
            // allocate in smaller blocks, never in more).
            let allocated = f.metadata().unwrap().blocks() * 512;
            assert!(
                allocated <= 4 * HOLE_BLOCK,
                "pieces of {piece}: {allocated} bytes allocated"
            );
        }
    }

    #[test]
    fn unfinished_restores_are_removed_without_following_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let log_dir = t.path().join("kafka-logs");
        fs::create_dir(&log_dir).unwrap();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keep"), b"precious").unwrap();
        let copy = t.path().join("kafka-logs.restoring-a");
        fs::create_dir_all(copy.join("orders-0")).unwrap();
        fs::write(copy.join("orders-0/x.log"), b"..").unwrap();
        std::os::unix::fs::symlink(&victim, copy.join("orders-1")).unwrap();
        let planted = t.path().join("kafka-logs.restoring-b");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let aside = t.path().join("kafka-logs.pre-restore-20261101T000000Z");
        fs::create_dir(&aside).unwrap();
        let removed = remove_unfinished_restores(std::slice::from_ref(&log_dir)).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(fs::symlink_metadata(&copy).is_err() && fs::symlink_metadata(&planted).is_err());
        assert_eq!(fs::read(victim.join("keep")).unwrap(), b"precious");
        assert!(aside.exists() && log_dir.exists());
    }

    #[test]
    fn a_freshly_formatted_dir_holds_no_data_and_one_with_records_does() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join(logdir::META_PROPERTIES), "cluster.id=x\nnode.id=1\n").unwrap();
        fs::write(d.join("bootstrap.checkpoint"), b"..").unwrap();
        assert!(holds_no_data(d).unwrap());
        let meta = d.join(crate::cleanstop::METADATA_LOG);
        fs::create_dir(&meta).unwrap();
        fs::write(meta.join("00000000000000000000.log"), b"").unwrap();
        fs::write(
            meta.join("00000000000000000000-0000000000.checkpoint"),
            b"..",
        )
        .unwrap();
        assert!(holds_no_data(d).unwrap(), "an empty metadata log");
        fs::write(meta.join("00000000000000000000.log"), b"records").unwrap();
        assert!(!holds_no_data(d).unwrap(), "a metadata log with records");
        fs::remove_file(meta.join("00000000000000000000.log")).unwrap();
        fs::create_dir(d.join("orders-0")).unwrap();
        assert!(!holds_no_data(d).unwrap(), "a partition dir");
    }

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
