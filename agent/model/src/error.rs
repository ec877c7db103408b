//! Errors an operator can act on: every variant names the file, key,
//! snapshot or broker involved.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line or configuration: exit code 2.
    #[error("{0}")]
    Usage(String),

    #[error("config {file}: {message}")]
    Config { file: PathBuf, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("log dir {path}: {message}")]
    LogDir { path: PathBuf, message: String },

    #[error(
        "log dir {path} holds {name}: an intra-broker replica move is in flight; \
         refusing to capture until it finishes"
    )]
    FutureDir { path: PathBuf, name: String },

    #[error(
        "log dir {path} is locked by a running process (its .lock is held): stop the broker first"
    )]
    BrokerRunning { path: PathBuf },

    #[error("storage {location}: {message}")]
    Storage { location: String, message: String },

    #[error("snapshot {snapshot}: manifest {key}: {message}")]
    Manifest {
        snapshot: String,
        key: String,
        message: String,
    },

    #[error("snapshot {snapshot}: file {path}: checksum mismatch (manifest {expected}, archive {actual})")]
    ChecksumMismatch {
        snapshot: String,
        path: String,
        expected: String,
        actual: String,
    },

    #[error("snapshot {snapshot}: {message}")]
    ArchiveCorrupt { snapshot: String, message: String },

    #[error("snapshot {snapshot}: archive entry {path:?} refused: {reason}")]
    UnsafeEntry {
        snapshot: String,
        path: String,
        reason: String,
    },

    #[error("snapshot {snapshot} not found in {location}{hint}")]
    SnapshotNotFound {
        snapshot: String,
        location: String,
        hint: String,
    },

    #[error("restore target {path}: {message}")]
    Target { path: PathBuf, message: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error says only that cold storage (or a disk) could
    /// not be read just now (unreachable, timed out, an I/O error), and
    /// nothing about whether the snapshot is good. A verification that
    /// ends so must be retried, not recorded as a failed snapshot.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Error::Storage { .. } | Error::Io { .. })
    }

    /// Process exit code for the CLI: 2 for usage and configuration errors,
    /// 1 for everything else (failed checks, corrupt archives, I/O).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } => 2,
            _ => 1,
        }
    }
}

/// Adds "what we were doing" to an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
