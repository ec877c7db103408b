//! Cold storage behind one small trait. Objects are addressed by
//! `/`-separated keys; an object becomes visible only once it is complete
//! (`ObjectWriter::finish`), so a crash never leaves a half-written object
//! under its final name.
//!
//! Layout: `<cluster.id>/broker-<N>/<snapshot-id>/{archive.tar.zst,manifest.json}`.

mod file;

pub use file::FileStore;

use crate::error::{Error, Result};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Marker in the name of objects still being written.
pub const TEMP_MARKER: &str = ".tmp-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// A storage backend. Blocking on purpose: the archive pipeline is a chain
/// of `Read`/`Write` adapters on threads of its own.
pub trait ColdStore: Send + Sync {
    /// Where this store is, safe to print (no secrets).
    fn location(&self) -> String;
    /// Starts writing `key`; nothing is visible under `key` until `finish`.
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Writes a small object in one go, atomically.
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let mut w = self.create(key)?;
        w.write_all(data)
            .map_err(|e| self.error(key, format!("writing: {e}")))?;
        w.finish()?;
        Ok(())
    }
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Size of `key`, or `None` if it does not exist.
    fn stat(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    fn delete(&self, key: &str) -> Result<()>;

    fn error(&self, key: &str, message: String) -> Error {
        Error::Storage {
            location: format!("{}/{key}", self.location().trim_end_matches('/')),
            message,
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(key)?
            .read_to_end(&mut buf)
            .map_err(|e| self.error(key, format!("reading: {e}")))?;
        Ok(buf)
    }
}

/// An object being written. Dropping it without `finish` discards it.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and visible under its key; returns its size.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// Opens a store from a URL: `file:///path`, or a plain absolute path.
pub fn open_url(url: &str) -> Result<Box<dyn ColdStore>> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Usage(format!(
                "store URL {url:?}: file:// URLs need an absolute path (file:///mnt/backup)"
            )));
        }
        return Ok(Box::new(FileStore::new(PathBuf::from(path))?));
    }
    if url.starts_with('/') {
        return Ok(Box::new(FileStore::new(PathBuf::from(url))?));
    }
    if url.starts_with("s3://") {
        return Err(Error::Usage(format!(
            "store URL {url:?}: the s3:// backend is not available in this build"
        )));
    }
    Err(Error::Usage(format!(
        "store URL {url:?}: unsupported scheme (use file:///path)"
    )))
}

/// Checks a key before it is turned into a path or URL: relative, no `..`, no
/// empty components.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Usage(format!("invalid storage key {key:?}")));
    }
    Ok(())
}

/// fsyncs a directory so a rename or create in it survives a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
