//! Clones of the active segments' files kept from one incremental snapshot
//! to the next, so that an appended file is read only from near its old
//! end (reflink staging only).
//!
//! Kafka appends to the active segment of every partition written to, and
//! a steady cycle would otherwise read each of them whole: up to a whole
//! segment (1 GiB by default) per partition for a few MiB appended. Kafka
//! may also truncate an active segment in place (a follower after a leader
//! change) and append again, so its size and inode prove nothing about its
//! first bytes. The clone read for the last snapshot does: where the new
//! clone maps the same physical blocks as the kept one, the bytes were not
//! written in between ([`crate::extents`]). The hash record keeps where
//! the file's SHA-256 stood near the end of the kept clone
//! ([`crate::hashcache::KeptHash`]), and the file is read from there.
//!
//! The kept clones of a staging root are `<staging root>/kept/<index>-<log
//! dir name>/<partition>/<file>` (the same names as the staging of a
//! snapshot), with a `GENERATION` file naming the hash record they belong
//! to. Each incremental snapshot replaces them whole: the files it read
//! from staging are moved into `kept.new`, which then replaces `kept`.
//! They cost no space while the broker keeps those segments (every block
//! is shared with the live file); a segment the broker deletes before the
//! next snapshot stays pinned by its clone until then. An incremental
//! snapshot captured by copy removes them (its hash record names none),
//! and so does the daemon's snapshot of a node whose snapshots are full;
//! a full `archive create` run by hand leaves them.

use crate::random::random_hex;
use kafka_snapshot_model::error::{IoContext, Result};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The kept clones' dir in a staging root.
pub const KEPT_DIR_NAME: &str = "kept";
const NEW_DIR_NAME: &str = "kept.new";
const MARKER: &str = "GENERATION";

/// The kept clones for the log dirs of one snapshot, staged (reflink) at
/// the given content roots.
pub struct Kept {
    /// Per log dir: its staging root, the name of its dir below it, and
    /// whether the clones kept there are of the expected generation.
    dirs: Vec<(PathBuf, PathBuf, bool)>,
}

impl Kept {
    /// The kept clones beside the staging `content_roots` (each
    /// `<staging root>/<snapshot id>/<index>-<name>`), usable only where
    /// their generation is `expected`.
    pub fn beside(content_roots: &[PathBuf], expected: Option<&str>) -> Kept {
        let dirs = content_roots
            .iter()
            .map(|c| {
                let root = c
                    .parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let sub = PathBuf::from(c.file_name().unwrap_or_default());
                let ok = expected.is_some_and(|g| {
                    fs::read_to_string(root.join(KEPT_DIR_NAME).join(MARKER))
                        .is_ok_and(|m| m.trim() == g)
                });
                (root, sub, ok)
            })
            .collect();
        Kept { dirs }
    }

    /// The kept clone of `rel` in log dir `index`, if it is the one of
    /// inode `ino` and `size` bytes.
    pub fn open(&self, index: usize, rel: &Path, ino: u64, size: u64) -> Option<fs::File> {
        let (root, sub, ok) = self.dirs.get(index)?;
        if !ok {
            return None;
        }
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(root.join(KEPT_DIR_NAME).join(sub).join(rel))
            .ok()?;
        let md = f.metadata().ok()?;
        (md.is_file() && md.ino() == ino && md.len() == size).then_some(f)
    }

    /// Replaces the kept clones with `files` (log dir index, path below
    /// it), moved from the content roots they were staged at, under the
    /// new generation returned. A file that cannot be moved is not kept
    /// (it is read whole next time).
    pub fn replace(&self, content_roots: &[PathBuf], files: &[(usize, &Path)]) -> Result<String> {
        let generation = random_hex(8, "the kept clones' generation")?;
        let mut roots: Vec<&Path> = Vec::new();
        for (root, _, _) in &self.dirs {
            if !roots.contains(&root.as_path()) {
                roots.push(root);
            }
        }
        for root in &roots {
            let new = root.join(NEW_DIR_NAME);
            remove(&new)?;
            mkdir(&new)?;
            let mut m = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(new.join(MARKER))
                .ctx(|| format!("creating {}", new.join(MARKER).display()))?;
            m.write_all(generation.as_bytes())
                .ctx(|| format!("writing {}", new.join(MARKER).display()))?;
        }
        for &(i, rel) in files {
            let (root, sub, _) = &self.dirs[i];
            let to = root.join(NEW_DIR_NAME).join(sub).join(rel);
            let from = content_roots[i].join(rel);
            let moved = to
                .parent()
                .map_or(Ok(()), |p| {
                    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
                })
                .and_then(|()| fs::rename(&from, &to));
            if let Err(e) = moved {
                tracing::warn!(file = %from.display(), error = %e,
                    "cannot keep this clone for the next snapshot; it reads the file whole");
            }
        }
        for root in &roots {
            remove(&root.join(KEPT_DIR_NAME))?;
            fs::rename(root.join(NEW_DIR_NAME), root.join(KEPT_DIR_NAME))
                .ctx(|| format!("renaming {} into place", root.join(NEW_DIR_NAME).display()))?;
        }
        Ok(generation)
    }
}

/// Removes the kept clones of the staging root `root` (a snapshot that
/// keeps none: full, or not from reflink staging).
pub fn remove_all(root: &Path) -> Result<()> {
    remove(&root.join(NEW_DIR_NAME))?;
    remove(&root.join(KEPT_DIR_NAME))
}

fn mkdir(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(p)
        .ctx(|| format!("creating {}", p.display()))
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).ctx(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}
