//! What is in a Kafka log dir: `meta.properties`, where the log dirs are
//! (`server.properties`), and the inventory of files a snapshot holds.

use crate::props;
use kafka_snapshot_model::error::{Error, IoContext, Result};
use kafka_snapshot_model::manifest::{check_entry_mode, EntryType};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const META_PROPERTIES: &str = "meta.properties";
pub use crate::cleanstop::CLEAN_SHUTDOWN;
pub const LOCK_FILE: &str = ".lock";

/// The identity a log dir carries in its `meta.properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    /// 0 for ZooKeeper-era brokers (`broker.id`), 1 for KRaft (`node.id`).
    pub version: u32,
    pub cluster_id: String,
    pub node_id: i32,
    /// Only in version 1.
    pub directory_id: Option<String>,
}

pub fn read_meta_properties(dir: &Path) -> Result<MetaProperties> {
    let path = dir.join(META_PROPERTIES);
    let text = fs::read_to_string(&path).map_err(|e| Error::LogDir {
        path: dir.to_path_buf(),
        message: format!(
            "cannot read {}: {e} (has this broker ever started?)",
            path.display()
        ),
    })?;
    parse_meta_properties(&text).map_err(|message| Error::LogDir {
        path: dir.to_path_buf(),
        message: format!("{}: {message}", path.display()),
    })
}

pub fn parse_meta_properties(text: &str) -> Result<MetaProperties, String> {
    let p = props::parse(text);
    let version: u32 = match p.get("version") {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("version {v:?} is not a number"))?,
        None => 0,
    };
    let id_key = match version {
        0 => "broker.id",
        1 => "node.id",
        v => return Err(format!("unsupported meta.properties version {v}")),
    };
    let node_id = p
        .get(id_key)
        .ok_or_else(|| format!("missing {id_key}"))?
        .trim()
        .parse::<i32>()
        .map_err(|_| format!("{id_key} is not an integer"))?;
    let cluster_id = p
        .get("cluster.id")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or("missing cluster.id")?;
    let directory_id = p.get("directory.id").map(|s| s.trim().to_string());
    if version == 1 && directory_id.is_none() {
        return Err("version 1 without directory.id".into());
    }
    Ok(MetaProperties {
        version,
        cluster_id,
        node_id,
        directory_id,
    })
}

/// The log dirs a broker uses, read from its `server.properties`: every entry
/// of `log.dirs` (or `log.dir`), plus `metadata.log.dir` when it is separate.
pub fn log_dirs_from_server_properties(path: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))?;
    let p = props::parse(&text);
    let list = p
        .get("log.dirs")
        .or_else(|| p.get("log.dir"))
        .cloned()
        // Kafka's own default for log.dir.
        .unwrap_or_else(|| "/tmp/kafka-logs".to_string());
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        push_unique(&mut dirs, PathBuf::from(d));
    }
    if let Some(m) = p
        .get("metadata.log.dir")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        push_unique(&mut dirs, PathBuf::from(m));
    }
    if dirs.is_empty() {
        return Err(Error::Config {
            file: path.to_path_buf(),
            message: "log.dirs is empty".into(),
        });
    }
    Ok(dirs)
}

fn push_unique(dirs: &mut Vec<PathBuf>, d: PathBuf) {
    if !dirs.contains(&d) {
        dirs.push(d);
    }
}

/// Checks that no process holds the Kafka `.lock` of `dir` by taking it
/// ourselves (non-blocking, exclusive, the same kind of lock Kafka takes). The returned guard keeps it: a broker
/// cannot start on the dir while we read it.
pub fn lock_log_dir(dir: &Path) -> Result<Option<fs::File>> {
    let path = dir.join(LOCK_FILE);
    let file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    // Kafka locks `.lock` through the JVM (FileChannel.tryLock), which on
    // Linux is a POSIX record lock (fcntl F_SETLK) on the whole file; flock(2)
    // would not see it. An open-file-description lock conflicts with POSIX
    // record locks of any process, and is held for as long as `file` is open.
    // SAFETY: an all-zero flock is valid; fcntl on a valid, owned fd.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            return Err(Error::BrokerRunning {
                path: dir.to_path_buf(),
            });
        }
        return Err(Error::io(format!("locking {}", path.display()), e));
    }
    Ok(Some(file))
}

/// `*-future` dirs (intra-broker replica moves in flight) in the log dirs.
pub fn future_dirs(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for d in paths {
        for ent in fs::read_dir(d).ctx(|| format!("listing {}", d.display()))? {
            let ent = ent.ctx(|| format!("listing {}", d.display()))?;
            if ent.file_name().to_string_lossy().ends_with("-future") {
                out.push(ent.path().display().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What kind of filesystem object an inventory entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink { target: PathBuf },
}

/// One object of one log dir, as found while the broker was stopped.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir_index: usize,
    /// Relative to the log dir; empty for the log dir itself.
    pub rel: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Which file it was and when it last changed in any way (not
    /// archived): how an incremental snapshot tells a file it hashed before
    /// ([`crate::hashcache`]).
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i64,
}

/// A log dir taking part in a snapshot.
#[derive(Debug, Clone)]
pub struct LogDir {
    pub path: PathBuf,
    pub meta: MetaProperties,
    /// The node stopped cleanly as far as this dir shows
    /// ([`crate::cleanstop::check`]).
    pub clean_shutdown: bool,
    /// Why it is not clean.
    pub unclean_reason: Option<String>,
    /// Holds `__cluster_metadata-0`.
    pub is_metadata_dir: bool,
}

/// Everything a snapshot will hold, in archive order.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub dirs: Vec<LogDir>,
    pub entries: Vec<Entry>,
    /// Partition dirs skipped because Kafka is deleting them.
    pub skipped_deleting: Vec<PathBuf>,
}

impl Inventory {
    pub fn cluster_id(&self) -> &str {
        &self.dirs[0].meta.cluster_id
    }

    pub fn node_id(&self) -> i32 {
        self.dirs[0].meta.node_id
    }

    pub fn clean_shutdown(&self) -> bool {
        self.dirs.iter().all(|d| d.clean_shutdown)
    }

    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// Walks the log dirs and records every file to archive. Refuses on a
/// `*-future` dir, skips `*-delete` dirs, `*.deleted` files and `.lock`,
/// and checks that all
/// dirs belong to the same cluster and node with distinct directory ids.
pub fn scan(paths: &[PathBuf]) -> Result<Inventory> {
    if paths.is_empty() {
        return Err(Error::Usage("no log dirs given".into()));
    }
    let mut dirs = Vec::new();
    let mut entries = Vec::new();
    let mut skipped_deleting = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        if !path.is_absolute() {
            return Err(Error::LogDir {
                path: path.clone(),
                message: "log dirs must be absolute paths".into(),
            });
        }
        let md = fs::symlink_metadata(path).map_err(|e| Error::LogDir {
            path: path.clone(),
            message: format!("cannot stat: {e}"),
        })?;
        if !md.is_dir() {
            return Err(Error::LogDir {
                path: path.clone(),
                message: "not a directory".into(),
            });
        }
        check_entry_mode(EntryType::Dir, md.permissions().mode() & 0o7777).map_err(|message| {
            Error::LogDir {
                path: path.clone(),
                message,
            }
        })?;
        let meta = read_meta_properties(path)?;
        let clean = crate::cleanstop::check(path);
        let is_metadata_dir = path.join(crate::cleanstop::METADATA_LOG).is_dir();
        entries.push(entry_from_metadata(index, PathBuf::new(), &md, None));
        walk(
            index,
            path,
            Path::new(""),
            &mut entries,
            &mut skipped_deleting,
        )?;
        dirs.push(LogDir {
            path: path.clone(),
            meta,
            clean_shutdown: clean.is_ok(),
            unclean_reason: clean.err(),
            is_metadata_dir,
        });
    }
    check_identity(&dirs)?;
    Ok(Inventory {
        dirs,
        entries,
        skipped_deleting,
    })
}

fn check_identity(dirs: &[LogDir]) -> Result<()> {
    let first = &dirs[0];
    for d in &dirs[1..] {
        if d.meta.cluster_id != first.meta.cluster_id {
            return Err(Error::LogDir {
                path: d.path.clone(),
                message: format!(
                    "cluster.id {} differs from {} in {}",
                    d.meta.cluster_id,
                    first.meta.cluster_id,
                    first.path.display()
                ),
            });
        }
        if d.meta.node_id != first.meta.node_id {
            return Err(Error::LogDir {
                path: d.path.clone(),
                message: format!(
                    "node.id {} differs from {} in {}",
                    d.meta.node_id,
                    first.meta.node_id,
                    first.path.display()
                ),
            });
        }
    }
    for (i, a) in dirs.iter().enumerate() {
        for b in &dirs[i + 1..] {
            if a.meta.directory_id.is_some() && a.meta.directory_id == b.meta.directory_id {
                return Err(Error::LogDir {
                    path: b.path.clone(),
                    message: format!(
                        "directory.id {} is also used by {}",
                        a.meta.directory_id.as_deref().unwrap_or_default(),
                        a.path.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

fn entry_from_metadata(
    dir_index: usize,
    rel: PathBuf,
    md: &fs::Metadata,
    link: Option<PathBuf>,
) -> Entry {
    let kind = match link {
        Some(target) => EntryKind::Symlink { target },
        None if md.is_dir() => EntryKind::Dir,
        None => EntryKind::File,
    };
    let size = if kind == EntryKind::File { md.len() } else { 0 };
    Entry {
        dir_index,
        rel,
        kind,
        size,
        mode: md.permissions().mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
        dev: md.dev(),
        ino: md.ino(),
        ctime_ns: md
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.ctime_nsec()),
    }
}

/// The suffix Kafka gives the files of a segment (and a KRaft snapshot)
/// it has scheduled for deletion.
pub const DELETED_SUFFIX: &str = ".deleted";

fn walk(
    index: usize,
    root: &Path,
    rel: &Path,
    entries: &mut Vec<Entry>,
    skipped_deleting: &mut Vec<PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .ctx(|| format!("listing {}", dir.display()))?;
    // Byte order makes archives of the same tree identical.
    names.sort();
    let top = rel.as_os_str().is_empty();
    for name in names {
        let name_str = name.to_string_lossy();
        let path = dir.join(&name);
        let child_rel = rel.join(&name);
        let md = fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
        if top && name_str == LOCK_FILE {
            continue;
        }
        if top && md.is_dir() && name_str.ends_with("-future") {
            return Err(Error::FutureDir {
                path: root.to_path_buf(),
                name: name_str.into_owned(),
            });
        }
        if top && md.is_dir() && name_str.ends_with("-delete") {
            tracing::info!(dir = %path.display(), "skipping partition dir being deleted");
            skipped_deleting.push(path);
            continue;
        }
        // A segment (or KRaft snapshot) file Kafka deletes after
        // `file.delete.delay.ms`, and a broker that starts deletes at once
        // (`LogLoader`, `KafkaMetadataLog`): nothing a restore could use.
        if !top && md.is_file() && name_str.ends_with(DELETED_SUFFIX) {
            tracing::debug!(file = %path.display(), "skipping file Kafka is deleting");
            continue;
        }
        let ft = md.file_type();
        // What a restore would refuse is refused here, so that every
        // snapshot taken also verifies.
        let kind = if ft.is_dir() {
            Some(EntryType::Dir)
        } else if ft.is_file() {
            Some(EntryType::File)
        } else {
            None
        };
        if let Some(kind) = kind {
            check_entry_mode(kind, md.permissions().mode() & 0o7777).map_err(|message| {
                Error::LogDir {
                    path: root.to_path_buf(),
                    message: format!("{}: {message}", child_rel.display()),
                }
            })?;
        }
        if ft.is_symlink() {
            let target = fs::read_link(&path).ctx(|| format!("readlink {}", path.display()))?;
            check_symlink_target(&target).map_err(|message| Error::LogDir {
                path: root.to_path_buf(),
                message: format!("symlink {}: {message}", child_rel.display()),
            })?;
            entries.push(entry_from_metadata(index, child_rel, &md, Some(target)));
        } else if ft.is_dir() {
            entries.push(entry_from_metadata(index, child_rel.clone(), &md, None));
            walk(index, root, &child_rel, entries, skipped_deleting)?;
        } else if ft.is_file() {
            entries.push(entry_from_metadata(index, child_rel, &md, None));
        } else {
            return Err(Error::LogDir {
                path: root.to_path_buf(),
                message: format!(
                    "{} is a special file (device, fifo or socket); Kafka log dirs hold none",
                    child_rel.display()
                ),
            });
        }
    }
    Ok(())
}

/// A symlink may only point inside its own log dir, by a relative path with
/// no `..`: anything else could make a restore write outside the target.
pub fn check_symlink_target(target: &Path) -> Result<(), String> {
    use std::path::Component;
    if target.as_os_str().is_empty() {
        return Err("empty symlink target".into());
    }
    for c in target.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("target {} contains '..'", target.display()))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("target {} is absolute", target.display()))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_properties_v1_and_v0() {
        let m = parse_meta_properties(
            "#\n#Sat\nnode.id=2\ndirectory.id=abc\nversion=1\ncluster.id=CL\n",
        )
        .unwrap();
        assert_eq!(m.node_id, 2);
        assert_eq!(m.directory_id.as_deref(), Some("abc"));
        let m = parse_meta_properties("version=0\nbroker.id=7\ncluster.id=CL\n").unwrap();
        assert_eq!((m.version, m.node_id, m.directory_id), (0, 7, None));
        assert!(parse_meta_properties("version=1\nnode.id=1\ncluster.id=CL\n").is_err());
        assert!(
            parse_meta_properties("version=1\nnode.id=x\ncluster.id=C\ndirectory.id=d")
                .unwrap_err()
                .contains("node.id")
        );
    }

    #[test]
    fn server_properties_dirs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("server.properties");
        fs::write(&p, "log.dirs=/a, /b ,/a\nmetadata.log.dir=/m\n").unwrap();
        let dirs = log_dirs_from_server_properties(&p).unwrap();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/m")
            ]
        );
        fs::write(&p, "log.dir=/x\n").unwrap();
        assert_eq!(
            log_dirs_from_server_properties(&p).unwrap(),
            vec![PathBuf::from("/x")]
        );
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target(Path::new("b/c")).is_ok());
        assert!(check_symlink_target(Path::new("../b")).is_err());
        assert!(check_symlink_target(Path::new("/etc")).is_err());
    }
}
