//! The `file://` backend: a local directory or a mounted network
//! filesystem (NFS). Objects are written to a temporary name, fsynced,
//! renamed into place, and the directory fsynced.
//!
//! The agents write snapshots and the coordinator, another user (often on
//! another host), reads them to verify and deletes them to prune. They
//! share the store through its group: every directory the store creates is
//! `2770` (group-writable, so the coordinator can delete; set-group-ID, so
//! everything below the root keeps the root's group) and every object
//! `0640`, whatever the process's umask. Make the root
//! `root:<snapshot group> 2770` and put the agents' and the coordinator's
//! users in that group (the Ansible roles do).

use super::throttle::{Throttle, Throttled};
use super::{check_key, fsync_dir, ColdStore, ObjectMeta, ObjectWriter, TEMP_MARKER};
use kafka_snapshot_model::error::{Error, Result};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Directories the store creates: group-writable (and set-group-ID,
/// inherited from the root).
const DIR_PERMISSIONS: u32 = 0o770;
/// Objects being written: the group (the coordinator) reads them.
const FILE_MODE: u32 = 0o640;
/// Committed objects are never written again: read-only for everyone, so
/// that no member of the store's group opens one for writing (over NFS the
/// server enforces it whatever capabilities a client process has). Their
/// deletion is a matter of the directory's permissions.
const COMMITTED_MODE: u32 = 0o440;

/// Objects up to this size are asked into the page cache whole when
/// opened (content objects, manifests); larger ones (archives) are left
/// to the kernel's readahead.
const WHOLE_READAHEAD: u64 = 32 << 20;

/// Asks the kernel to read `f` into the page cache now, if it is at most
/// [`WHOLE_READAHEAD`] bytes (a content object, a manifest; an archive is
/// left to the kernel's readahead as it is read).
fn read_ahead_whole(f: &fs::File, step: u64) {
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return;
    };
    if len > WHOLE_READAHEAD {
        return;
    }
    // One request reads no more than `step` ([`readahead_step`]): a 4 MiB
    // object in one request would be read ahead only in part. Requests
    // smaller than that are not merged on every device: 128 KiB ones
    // made a loop device read 17 000 requests of 122 KiB for 2 GiB.
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(f);
    for off in (0..len.max(1)).step_by(step as usize) {
        // SAFETY: advisory call on a valid fd; failure is harmless.
        unsafe {
            libc::posix_fadvise(
                fd,
                off as libc::off_t,
                step as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }
}

/// The kernel's default readahead size: what one read-ahead request covers
/// at least.
const MIN_READAHEAD_STEP: u64 = 128 << 10;
const MAX_READAHEAD_STEP: u64 = 16 << 20;

/// How much one `POSIX_FADV_WILLNEED` reads at most on the filesystem of
/// `md`: the larger of its device's readahead size and its largest request
/// (the kernel's limit for a readahead asked for), from sysfs (a block
/// device's queue; for NFS and other filesystems without one, its
/// backing device's readahead size). 128 KiB where sysfs does not say.
fn readahead_step(md: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    readahead_step_in(
        Path::new("/sys"),
        libc::major(md.dev()),
        libc::minor(md.dev()),
    )
}

/// [`readahead_step`] of device `major:minor` from the sysfs at `sys`.
fn readahead_step_in(sys: &Path, major: u32, minor: u32) -> u64 {
    let kib = |p: &Path| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let block = sys.join(format!("dev/block/{major}:{minor}"));
    // A partition's limits are its disk's.
    let queue = if block.join("partition").exists() {
        block.join("../queue")
    } else {
        block.join("queue")
    };
    let readahead = kib(&queue.join("read_ahead_kb"))
        .or_else(|| kib(&sys.join(format!("class/bdi/{major}:{minor}/read_ahead_kb"))));
    let request = kib(&queue.join("max_sectors_kb"));
    (readahead.unwrap_or(0).max(request.unwrap_or(0)) << 10)
        .clamp(MIN_READAHEAD_STEP, MAX_READAHEAD_STEP)
}

/// A local directory or a mounted network filesystem (NFS).
pub struct FileStore {
    root: PathBuf,
    throttle: Option<Arc<Throttle>>,
    /// What one readahead request of an object covers ([`readahead_step`]).
    readahead_step: u64,
}

impl FileStore {
    pub fn new(root: PathBuf) -> Result<Self> {
        let md = fs::metadata(&root).map_err(|e| Error::Storage {
            location: format!("file://{}", root.display()),
            message: format!("cannot open store root: {e}"),
        })?;
        if !md.is_dir() {
            return Err(Error::Storage {
                location: format!("file://{}", root.display()),
                message: "store root is not a directory".into(),
            });
        }
        Ok(FileStore {
            readahead_step: readahead_step(&md),
            root,
            throttle: None,
        })
    }

    /// Limits the bytes per second written and read (`storage.bandwidth_limit`).
    pub fn with_throttle(mut self, throttle: Option<Arc<Throttle>>) -> Self {
        self.throttle = throttle;
        self
    }

    /// Creates `dir` and every missing directory between it and the root,
    /// `2770` each (see the module doc). Directories that exist are left as
    /// they are.
    ///
    /// The set-group-ID bit is never asked for: the kernel gives it to a
    /// directory made in a set-group-ID parent, and systemd's
    /// `RestrictSUIDSGID=` (in the agent's unit) refuses any mkdir or chmod
    /// whose mode carries it. Under the unit's `UMask=0007` the new
    /// directory is right as made; with a stricter umask its permission
    /// bits are set again, keeping the bit it inherited.
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        let Ok(below) = dir.strip_prefix(&self.root) else {
            return fs::create_dir_all(dir);
        };
        let mut at = self.root.clone();
        for part in below.components() {
            at.push(part);
            match fs::DirBuilder::new().mode(DIR_PERMISSIONS).create(&at) {
                Ok(()) => {
                    let mode = fs::metadata(&at)?.permissions().mode() & 0o7777;
                    if mode & 0o777 != DIR_PERMISSIONS {
                        let keep = mode & 0o2000;
                        fs::set_permissions(
                            &at,
                            fs::Permissions::from_mode(DIR_PERMISSIONS | keep),
                        )?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

impl ColdStore for FileStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(key)?;
        let dir = path.parent().expect("key has a parent").to_path_buf();
        self.create_dirs(&dir)
            .map_err(|e| self.error(key, format!("creating directory: {e}")))?;
        let name = path.file_name().expect("key has a name").to_string_lossy();
        let rnd = crate::random::random_hex(4, "a temporary file's name")
            .map_err(|e| self.error(key, e.to_string()))?;
        let tmp = dir.join(format!(".{name}{TEMP_MARKER}{rnd}"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(|e| self.error(key, format!("creating {}: {e}", tmp.display())))?;
        // The umask may have taken the group's read bit.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| self.error(key, format!("mode of {}: {e}", tmp.display())))?;
        Ok(Box::new(FileObjectWriter {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path,
            location: self.location(),
            key: key.to_string(),
            throttle: self.throttle.clone(),
        }))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let path = self.path(key)?;
        let f = fs::File::open(&path).map_err(|e| self.error(key, format!("opening: {e}")))?;
        // A content object is read whole right after: one request for all
        // of it, not readahead's ramp from a small window, which restores
        // and verifications of many objects wait on.
        read_ahead_whole(&f, self.readahead_step);
        Ok(match &self.throttle {
            Some(t) => Box::new(Throttled {
                inner: f,
                throttle: t.clone(),
            }),
            None => Box::new(f),
        })
    }

    fn will_read(&self, key: &str) {
        // The kernel reads it in the background: the reads of the objects
        // a restore wants next are queued together, not one at a time.
        if let Ok(f) = self
            .path(key)
            .and_then(|p| fs::File::open(&p).map_err(|e| self.error(key, format!("opening: {e}"))))
        {
            read_ahead_whole(&f, self.readahead_step);
        }
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        match fs::metadata(self.path(key)?) {
            Ok(md) => Ok(Some(md.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(key, format!("stat: {e}"))),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Walk only the deepest directory the prefix names completely.
        let start_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if start_rel.is_empty() {
            self.root.clone()
        } else {
            self.path(start_rel)?
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, start_rel.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.error(&rel, format!("listing: {e}"))),
            };
            for ent in rd {
                let ent = ent.map_err(|e| self.error(&rel, format!("listing: {e}")))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ft = ent
                    .file_type()
                    .map_err(|e| self.error(&key, format!("stat: {e}")))?;
                if ft.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((ent.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(ObjectMeta { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::Refused {
                    what: format!("storage {}/{key}", self.location()),
                    message: format!(
                        "this user may not delete it ({e}); deleting committed snapshots is \
                         the coordinator's job"
                    ),
                })
            }
            Err(e) => return Err(self.error(key, format!("deleting: {e}"))),
        }
        let dir = path.parent().expect("key has a parent");
        fsync_dir(dir).map_err(|e| self.error(key, format!("fsync of directory: {e}")))?;
        // Drop directories left empty, up to the store root.
        let mut d = dir.to_path_buf();
        while d != self.root && fs::remove_dir(&d).is_ok() {
            d.pop();
        }
        Ok(())
    }
}

struct FileObjectWriter {
    out: Option<BufWriter<fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
    location: String,
    key: String,
    throttle: Option<Arc<Throttle>>,
}

impl Write for FileObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.as_mut().expect("not finished").write(buf)?;
        if let Some(t) = &self.throttle {
            t.consume(n);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not finished").flush()
    }
}

impl ObjectWriter for FileObjectWriter {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        let out = self.out.take().expect("finish once");
        let result = commit_file(out, &self.tmp, &self.path);
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result.map_err(|m| Error::Storage {
            location: format!("{}/{}", self.location, self.key),
            message: m,
        })
    }
}

/// fsync the temporary file, rename it into place, fsync the directory.
fn commit_file(out: BufWriter<fs::File>, tmp: &Path, path: &Path) -> Result<u64, String> {
    let file = out
        .into_inner()
        .map_err(|e| format!("writing: {}", e.error()))?;
    file.set_permissions(fs::Permissions::from_mode(COMMITTED_MODE))
        .map_err(|e| format!("making it read-only: {e}"))?;
    file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let size = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
    drop(file);
    fs::rename(tmp, path).map_err(|e| format!("rename into place: {e}"))?;
    let dir = path.parent().expect("has parent");
    fsync_dir(dir).map_err(|e| format!("fsync of directory: {e}"))?;
    Ok(size)
}

impl Drop for FileObjectWriter {
    fn drop(&mut self) {
        // Not finished: the temporary file is ours and incomplete.
        if self.out.is_some() {
            self.out = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs laid out as the kernel's: `dev/block/M:N` links to the
    /// device's dir under `block/`, a partition's dir sits in its disk's.
    fn sysfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let write = |rel: &str, text: &str| {
            let p = sys.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        // A loop device: readahead 128 KiB, requests of up to 2.5 MiB.
        write("block/loop1/queue/read_ahead_kb", "128\n");
        write("block/loop1/queue/max_sectors_kb", "2560\n");
        // A disk with a partition: readahead 4 MiB, requests of 1.25 MiB.
        write("block/sda/queue/read_ahead_kb", "4096\n");
        write("block/sda/queue/max_sectors_kb", "1280\n");
        write("block/sda/sda1/partition", "1\n");
        // A disk that asks for more than the largest step.
        write("block/nvme0n1/queue/read_ahead_kb", "131072\n");
        // NFS and the like: a backing device with a readahead size only.
        write("class/bdi/0:53/read_ahead_kb", "15360\n");
        // One whose files do not hold numbers.
        write("block/sdb/queue/read_ahead_kb", "none\n");
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        for (dev, target) in [
            ("7:1", "loop1"),
            ("8:0", "sda"),
            ("8:1", "sda/sda1"),
            ("259:0", "nvme0n1"),
            ("8:16", "sdb"),
        ] {
            std::os::unix::fs::symlink(
                format!("../../block/{target}"),
                sys.join("dev/block").join(dev),
            )
            .unwrap();
        }
        t
    }

    #[test]
    fn the_readahead_step_is_the_devices_larger_limit_within_bounds() {
        let t = sysfs();
        let step = |major, minor| readahead_step_in(t.path(), major, minor);
        assert_eq!(step(7, 1), 2560 << 10, "the largest request");
        assert_eq!(step(8, 0), 4 << 20, "the readahead size");
        assert_eq!(step(8, 1), 4 << 20, "a partition: its disk's");
        assert_eq!(step(259, 0), MAX_READAHEAD_STEP);
        assert_eq!(step(0, 53), 15 << 20, "no block queue: the bdi's");
        assert_eq!(step(8, 16), MIN_READAHEAD_STEP, "unreadable values");
        assert_eq!(step(1, 2), MIN_READAHEAD_STEP, "sysfs says nothing");
    }
}
