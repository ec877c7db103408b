//! File operations relative to an open directory (`openat` and friends)
//! that never follow a symlink in the name they are given.
//!
//! Staging and restore dirs sit beside the log dirs, in a parent the broker's
//! user can usually write to. Whoever runs as that user can rename what is
//! there and put a symlink in its place between two steps that name it by
//! path. A directory opened once stays the same directory, whatever is
//! renamed meanwhile: every step after the open goes through its fd.

use std::ffi::{CStr, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode};
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Which object a name stood for: a rename keeps it, a replacement does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
}

impl Identity {
    pub fn of(f: &fs::File) -> io::Result<Identity> {
        let md = f.metadata()?;
        Ok(Identity {
            dev: md.dev(),
            ino: md.ino(),
        })
    }
}

/// What `lstat` says about a name in a directory.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub identity: Identity,
    pub is_dir: bool,
}

fn file_from(fd: std::os::unix::io::RawFd) -> fs::File {
    // SAFETY: `fd` was just returned by a successful open and is owned by
    // nobody else.
    unsafe { fs::File::from_raw_fd(fd) }
}

/// Opens the directory `name` inside `dir` (or `name` itself when `dir` is
/// `None`); a symlink as the last component is refused (`ELOOP`).
pub fn open_dir(dir: Option<&fs::File>, name: &Path) -> io::Result<fs::File> {
    let fd = openat(
        dir.map(|d| d.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(file_from(fd))
}

/// Opens the files of one tree by their paths relative to it, following
/// no symlink in any component: a directory or file someone swapped for a
/// symlink after the inventory is refused (`ELOOP`/`ENOTDIR`), never
/// followed out of the tree, and what opens must be a regular file. The
/// last parent directory stays open (an inventory lists a partition dir's
/// files together), so a file costs one `openat`.
pub struct Beneath {
    root: fs::File,
    parent: Option<(std::path::PathBuf, fs::File)>,
}

impl Beneath {
    /// Opens the tree's root `dir` itself. Its path is the operator's (a
    /// configured log dir may well be a symlink): only what is below it
    /// is held to no symlinks.
    pub fn open_root(dir: &Path) -> io::Result<Beneath> {
        Ok(Beneath {
            root: open_root_dir(dir)?,
            parent: None,
        })
    }

    /// A tree whose root is already open.
    pub fn from_root(root: fs::File) -> Beneath {
        Beneath { root, parent: None }
    }

    /// Opens the regular file `rel` (plain relative components only).
    pub fn open(&mut self, rel: &Path) -> io::Result<fs::File> {
        let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
        let name = rel.file_name().ok_or_else(invalid)?;
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let cached = matches!(&self.parent, Some((p, _)) if p == parent_rel);
        if !cached {
            let mut cur = self.root.try_clone()?;
            for c in parent_rel.components() {
                match c {
                    std::path::Component::Normal(n) => cur = open_dir(Some(&cur), Path::new(n))?,
                    _ => return Err(invalid()),
                }
            }
            self.parent = Some((parent_rel.to_path_buf(), cur));
        }
        let (_, dir) = self.parent.as_ref().expect("set above");
        // O_NONBLOCK: a fifo put in a file's place must not block the open
        // (it is refused below); it changes nothing for a regular file.
        let fd = openat(
            Some(dir.as_raw_fd()),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let f = file_from(fd);
        if !f.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file any more",
            ));
        }
        Ok(f)
    }
}

/// Opens directory `dir` by its path, following symlinks: for the roots
/// of [`Beneath`] trees.
pub fn open_root_dir(dir: &Path) -> io::Result<fs::File> {
    let fd = openat(
        None,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(file_from(fd))
}

/// The error for `path`, a file of a log dir that [`Beneath::open`]
/// refused: a symlink, or something other than a regular file, where the
/// inventory found a directory or file is named as such.
pub fn swapped(path: &Path, e: io::Error) -> kafka_snapshot_model::error::Error {
    let swapped = matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
        || e.kind() == io::ErrorKind::InvalidData;
    if swapped {
        kafka_snapshot_model::error::Error::LogDir {
            path: path.to_path_buf(),
            message: format!(
                "a symlink or another kind of file is where the inventory found this file or \
                 its directory ({e}); refusing to follow it: something changed the log dir \
                 while the broker was stopped"
            ),
        }
    } else {
        kafka_snapshot_model::error::Error::io(format!("opening {}", path.display()), e)
    }
}

/// Creates the file `name` in `dir`; fails if anything exists there.
pub fn create_file(dir: &fs::File, name: &Path, mode: u32) -> io::Result<fs::File> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    Ok(file_from(fd))
}

/// Opens `name` in `dir` for writing, creating it if needed; a symlink
/// there is refused rather than followed.
pub fn open_or_create_file(dir: &fs::File, name: &Path, mode: u32) -> io::Result<fs::File> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    Ok(file_from(fd))
}

pub fn mkdir(dir: &fs::File, name: &Path, mode: u32) -> io::Result<()> {
    Ok(mkdirat(
        Some(dir.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
    )?)
}

pub fn symlink(target: &Path, dir: &fs::File, name: &Path) -> io::Result<()> {
    Ok(symlinkat(target, Some(dir.as_raw_fd()), name)?)
}

/// Changes the owner of `name` itself, a symlink included.
pub fn lchown(dir: &fs::File, name: &Path, uid: u32, gid: u32) -> io::Result<()> {
    Ok(fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// `lstat` of `name` in `dir`; `None` when nothing has that name.
pub fn lstat(dir: &fs::File, name: &Path) -> io::Result<Option<Found>> {
    match fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(Found {
            identity: Identity {
                dev: st.st_dev,
                ino: st.st_ino,
            },
            is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        })),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Renames `from` to `to`, both in `dir`, never replacing anything at `to`
/// (`RENAME_NOREPLACE`; where a filesystem lacks it, a check just before a
/// plain rename).
pub fn rename_noreplace(dir: &fs::File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let c = |s: &OsStr| {
        std::ffi::CString::new(s.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))
    };
    let (f, t) = (c(from)?, c(to)?);
    let fd = dir.as_raw_fd();
    // SAFETY: valid fd and NUL-terminated names.
    if unsafe { libc::renameat2(fd, f.as_ptr(), fd, t.as_ptr(), libc::RENAME_NOREPLACE) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    if lstat(dir, Path::new(to))?.is_some() {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    // SAFETY: as above.
    if unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names in `dir` (without `.` and `..`).
pub fn names(dir: &fs::File) -> io::Result<Vec<OsString>> {
    // fdopendir takes the fd over: give it a duplicate of ours.
    let fd = nix::unistd::dup(dir.as_raw_fd())?;
    // SAFETY: `fd` is a valid, owned directory fd; on success the DIR owns it.
    let dirp = unsafe { libc::fdopendir(fd) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        drop(file_from(fd));
        return Err(e);
    }
    // The duplicate shares its offset with `dir`: start from the beginning.
    // SAFETY: valid DIR.
    unsafe { libc::rewinddir(dirp) };
    let mut out = Vec::new();
    let result = loop {
        nix::errno::Errno::clear();
        // SAFETY: valid DIR; the entry is read before the next call.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            match nix::errno::Errno::last_raw() {
                0 => break Ok(()),
                e => break Err(io::Error::from_raw_os_error(e)),
            }
        }
        // SAFETY: d_name is NUL-terminated inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: valid DIR, closed once (this also closes `fd`).
    unsafe { libc::closedir(dirp) };
    result.map(|()| out)
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// Removes `name` from `dir` and, if it is a directory, everything below
/// it. A symlink anywhere is removed itself, never followed; a directory
/// whose mode stops the removal is made writable first (it is below `dir`,
/// which the caller has checked is its own).
pub fn remove_tree(dir: &fs::File, name: &Path) -> io::Result<()> {
    let Some(found) = lstat(dir, name)? else {
        return Ok(());
    };
    if !found.is_dir {
        return match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            r => Ok(r?),
        };
    }
    let sub = match open_dir(Some(dir), name) {
        Err(e) if is_denied(&e) => {
            // Opening with O_PATH and no follow, then fchmod through
            // /proc would be the only other way; the dir is ours (below a
            // checked dir), so its mode can be changed by name.
            nix::sys::stat::fchmodat(
                Some(dir.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o700),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
            open_dir(Some(dir), name)?
        }
        r => r?,
    };
    let mut made_writable = false;
    for n in names(&sub)? {
        match remove_tree(&sub, Path::new(&n)) {
            Err(e) if is_denied(&e) && !made_writable => {
                fchmod(sub.as_raw_fd(), Mode::from_bits_truncate(0o700))?;
                made_writable = true;
                remove_tree(&sub, Path::new(&n))?;
            }
            r => r?,
        }
    }
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir) {
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        r => Ok(r?),
    }
}
