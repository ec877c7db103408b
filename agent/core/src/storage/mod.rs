//! Cold storage behind one small trait. Objects are addressed by
//! `/`-separated keys; an object becomes visible only once it is complete
//! (`ObjectWriter::finish`), so a crash never leaves a half-written object
//! under its final name.
//!
//! Layout: `<cluster.id>/broker-<N>/<snapshot-id>/{archive.tar.zst,manifest.json}`,
//! and the coordinator's snapshot set records, `<cluster.id>/sets/<set-id>.json`.
//!
//! Backends: [`FileStore`] (`file://`, a local dir or NFS mount) and
//! [`S3Store`] (`s3://bucket/prefix`, AWS S3 or any S3-compatible server).

mod file;
mod s3;
mod section;
mod throttle;

pub use file::FileStore;
pub use s3::{parse_s3_url, S3Store};
pub use section::{check_store_url, S3Section, StorageSection, VerifyUpload};
pub use throttle::Throttle;

use kafka_snapshot_model::error::{Error, Result};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Marker in the name of objects still being written.
pub const TEMP_MARKER: &str = ".tmp-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// An upload that was started and never completed nor aborted (the writer
/// crashed). Invisible to `list`, but it holds storage (and on S3 is billed)
/// until aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    /// When the upload started, as the store reports it.
    pub initiated: String,
}

/// A storage backend. Blocking on purpose: the archive pipeline is a chain
/// of `Read`/`Write` adapters on threads of its own.
pub trait ColdStore: Send + Sync {
    /// Where this store is, safe to print (no secrets).
    fn location(&self) -> String;
    /// Starts writing `key`; nothing is visible under `key` until `finish`.
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Like `create`, for an object expected to stay below `size_hint`
    /// bytes: lets a backend with a part-count limit (S3: 10,000) size its
    /// parts. A wrong hint costs memory or a clear error, never data.
    fn create_sized(&self, key: &str, size_hint: u64) -> Result<Box<dyn ObjectWriter>> {
        let _ = size_hint;
        self.create(key)
    }
    /// Writes a small object in one go, atomically.
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let mut w = self.create(key)?;
        w.write_all(data)
            .map_err(|e| self.error(key, format!("writing: {e}")))?;
        w.finish()?;
        Ok(())
    }
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// A hint that `key` is read soon: a store that can start fetching it
    /// without holding it in memory (a file store: into the page cache)
    /// does; the others ignore it. Never fails: a key it cannot hint is
    /// opened as usual when read.
    fn will_read(&self, key: &str) {
        let _ = key;
    }
    /// Size of `key`, or `None` if it does not exist.
    fn stat(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    fn delete(&self, key: &str) -> Result<()>;
    /// Uploads under `prefix` that were started and never finished nor
    /// aborted. Only backends whose writers leave no visible object (S3)
    /// have any; elsewhere leftovers are listed objects.
    fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let _ = prefix;
        Ok(Vec::new())
    }
    /// Aborts a pending upload, freeing what it holds.
    fn abort_upload(&self, upload: &PendingUpload) -> Result<()> {
        let _ = upload;
        Ok(())
    }

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

/// How to open a store, besides its URL: the `[storage]` settings of the
/// config, if there is one.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Bytes per second, both directions, shared by every transfer.
    pub bandwidth_limit: Option<u64>,
    /// `[storage.s3]`; without it the S3 settings come from the standard
    /// AWS environment variables and credentials file.
    pub s3: Option<S3Section>,
}

impl StoreOptions {
    pub fn from_config(storage: &StorageSection) -> StoreOptions {
        StoreOptions {
            bandwidth_limit: storage.bandwidth_limit,
            s3: storage.s3.clone(),
        }
    }
}

/// Opens a store from a URL (`file:///path`, a plain absolute path, or
/// `s3://bucket/prefix`) with settings from the environment only.
pub fn open_url(url: &str) -> Result<Box<dyn ColdStore>> {
    open(url, &StoreOptions::default())
}

/// Opens a store from a URL and the config's storage settings. An S3
/// store is contacted once, so that a wrong endpoint, bucket or key fails
/// here, naming the setting, rather than in the middle of a snapshot.
pub fn open(url: &str, opts: &StoreOptions) -> Result<Box<dyn ColdStore>> {
    let throttle = opts
        .bandwidth_limit
        .filter(|b| *b > 0)
        .map(|b| Arc::new(Throttle::new(b)));
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Usage(format!(
                "store URL {url:?}: file:// URLs need an absolute path (file:///mnt/backup)"
            )));
        }
        return Ok(Box::new(
            FileStore::new(PathBuf::from(path))?.with_throttle(throttle),
        ));
    }
    if url.starts_with('/') {
        return Ok(Box::new(
            FileStore::new(PathBuf::from(url))?.with_throttle(throttle),
        ));
    }
    if url.starts_with("s3://") {
        let env = |k: &str| std::env::var(k).ok();
        let settings = s3::S3Settings::resolve(url, opts.s3.as_ref(), &env)
            .map_err(|m| Error::Usage(format!("store URL {url:?}: {m}")))?;
        return Ok(Box::new(S3Store::open(settings, throttle)?));
    }
    Err(Error::Usage(format!(
        "store URL {url:?}: unsupported scheme (use file:///path or s3://bucket/prefix)"
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
        return Err(Error::Internal(format!("invalid storage key {key:?}")));
    }
    Ok(())
}

/// fsyncs a directory so a rename or create in it survives a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
