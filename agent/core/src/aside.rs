//! What restores moved aside: `<dir>.pre-restore-<time>` beside a log dir
//! holds the data a restore replaced. A restore never deletes it; it is
//! listed (the agent reports it, `status` shows it) and removed only by
//! an operator or, when `restore.remove_moved_aside_after` is set, by the
//! agent once that long has passed and the node is healthy.

use crate::extract::{PRE_RESTORE, STAMP_FORMAT};
use crate::fsat;
use chrono::{DateTime, NaiveDateTime, Utc};
use kafka_snapshot_model::error::{Error, IoContext, Result};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One dir a restore moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    pub path: PathBuf,
    /// The log dir it was.
    pub log_dir: PathBuf,
    /// From its name; `None` for a name this tool did not write, which is
    /// listed but never removed.
    pub moved_at: Option<DateTime<Utc>>,
    /// Disk space its files take (allocated blocks).
    pub bytes: u64,
}

/// The time in a moved-aside name's suffix.
pub fn parse_stamp(suffix: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(suffix, STAMP_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// Lists the dirs moved aside beside `log_dirs`: real directories (a
/// symlink with such a name is not data this tool moved and is skipped)
/// named `<log dir name>.pre-restore-*` in each log dir's parent.
/// `sizes` caches the size of each path between calls (what is moved
/// aside is not written to), so a listing costs a directory read.
pub fn list(log_dirs: &[PathBuf], sizes: &mut HashMap<PathBuf, u64>) -> Result<Vec<MovedAside>> {
    let mut out = Vec::new();
    for d in log_dirs {
        let (Some(parent), Some(name)) = (d.parent(), d.file_name()) else {
            continue;
        };
        let prefix = format!("{}.{PRE_RESTORE}", name.to_string_lossy());
        let entries = match fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("listing {}", parent.display()), e)),
        };
        for ent in entries {
            let ent = ent.ctx(|| format!("listing {}", parent.display()))?;
            let n = ent.file_name().to_string_lossy().into_owned();
            let Some(suffix) = n.strip_prefix(&prefix) else {
                continue;
            };
            let path = ent.path();
            let is_dir = ent
                .file_type()
                .ctx(|| format!("stat {}", path.display()))?
                .is_dir();
            if !is_dir {
                continue;
            }
            let bytes = match sizes.get(&path) {
                Some(b) => *b,
                None => {
                    let b = disk_usage(&path).ctx(|| format!("measuring {}", path.display()))?;
                    sizes.insert(path.clone(), b);
                    b
                }
            };
            out.push(MovedAside {
                moved_at: parse_stamp(suffix),
                log_dir: d.clone(),
                path,
                bytes,
            });
        }
    }
    sizes.retain(|p, _| out.iter().any(|m| &m.path == p));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Allocated bytes of every file below `p`, never following a symlink.
fn disk_usage(p: &Path) -> io::Result<u64> {
    let md = fs::symlink_metadata(p)?;
    let mut total = md.blocks() * 512;
    if md.is_dir() {
        for e in fs::read_dir(p)? {
            total += match disk_usage(&e?.path()) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
        }
    }
    Ok(total)
}

/// The moved-aside dirs among `listed` whose time is `older_than` or
/// more before `now`.
pub fn due(
    listed: &[MovedAside],
    older_than: std::time::Duration,
    now: DateTime<Utc>,
) -> Vec<MovedAside> {
    let Ok(age) = chrono::Duration::from_std(older_than) else {
        return Vec::new();
    };
    listed
        .iter()
        .filter(|m| m.moved_at.is_some_and(|t| now - t >= age))
        .cloned()
        .collect()
}

/// Removes a moved-aside dir through its parent's fd: a symlink put in
/// its place (or anywhere below it) is removed itself, never followed.
pub fn remove(m: &MovedAside) -> Result<()> {
    let (Some(parent), Some(name)) = (m.path.parent(), m.path.file_name()) else {
        return Err(Error::Internal(format!(
            "{} has no parent to remove it from",
            m.path.display()
        )));
    };
    let dir = fsat::open_dir(None, parent).ctx(|| format!("opening {}", parent.display()))?;
    fsat::remove_tree(&dir, Path::new(name)).ctx(|| format!("removing {}", m.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "aside-{}-{}",
            std::process::id(),
            crate::random::random_hex(4, "test").unwrap()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lists_what_restores_moved_aside_and_nothing_else() {
        let root = tmp();
        let log_dir = root.join("kafka-logs");
        fs::create_dir_all(&log_dir).unwrap();
        let aside = root.join("kafka-logs.pre-restore-20261101T120000Z");
        fs::create_dir_all(aside.join("orders-0")).unwrap();
        fs::write(
            aside.join("orders-0/00000000000000000000.log"),
            vec![7u8; 64 << 10],
        )
        .unwrap();
        fs::create_dir_all(root.join("kafka-logs.pre-restore-by-hand")).unwrap();
        fs::create_dir_all(root.join("other.pre-restore-20261101T120000Z")).unwrap();
        fs::create_dir_all(root.join("kafka-logs.restoring-x")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("kafka-logs.pre-restore-20261101T130000Z"))
            .unwrap();
        let mut sizes = HashMap::new();
        let listed = list(std::slice::from_ref(&log_dir), &mut sizes).unwrap();
        let names: Vec<String> = listed
            .iter()
            .map(|m| m.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "kafka-logs.pre-restore-20261101T120000Z",
                "kafka-logs.pre-restore-by-hand"
            ]
        );
        assert!(listed[0].bytes >= 64 << 10, "{listed:?}");
        assert_eq!(
            listed[0].moved_at,
            Some("2026-11-01T12:00:00Z".parse().unwrap())
        );
        assert_eq!(listed[1].moved_at, None, "a name this tool did not write");

        // Due: only the stamped one, once old enough.
        let now: DateTime<Utc> = "2026-11-08T12:00:00Z".parse().unwrap();
        let week = Duration::from_secs(7 * 86400);
        assert_eq!(due(&listed, week, now).len(), 1);
        assert!(due(&listed, week, now - chrono::Duration::seconds(1)).is_empty());

        remove(&listed[0]).unwrap();
        assert!(!aside.exists());
        let listed = list(std::slice::from_ref(&log_dir), &mut sizes).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(sizes.len(), 1, "the removed dir's size is forgotten");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn removing_follows_no_symlink_put_in_its_place() {
        let root = tmp();
        let victim = root.join("victim");
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("keep"), b"x").unwrap();
        let aside = root.join("kafka-logs.pre-restore-20261101T120000Z");
        fs::create_dir_all(&aside).unwrap();
        std::os::unix::fs::symlink(&victim, aside.join("link")).unwrap();
        let m = MovedAside {
            path: aside.clone(),
            log_dir: root.join("kafka-logs"),
            moved_at: parse_stamp("20261101T120000Z"),
            bytes: 0,
        };
        remove(&m).unwrap();
        assert!(!aside.exists());
        assert!(victim.join("keep").exists());
        // The moved-aside name itself replaced by a symlink.
        std::os::unix::fs::symlink(&victim, &aside).unwrap();
        remove(&m).unwrap();
        assert!(victim.join("keep").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
