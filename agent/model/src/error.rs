//! Errors an operator can act on: every variant names the file, key,
//! snapshot or broker involved.
//!
//! # Policy
//!
//! Every variant belongs to one [`ErrorKind`], and what happens next follows
//! from the kind, not from where the error happened:
//!
//! - **User** ([`Error::Usage`], [`Error::Config`]): a bad command line,
//!   setting or config file, or a step the operator must confirm. Fixed by
//!   the operator, never retried. Exit code 2.
//! - **Unavailable** ([`Error::Io`], [`Error::Storage`],
//!   [`Error::Unavailable`]): something needed could not be reached or read
//!   just now: cold storage unreachable or timing out, a disk I/O error, the
//!   coordinator unreachable over HTTP or answering 5xx, a busy database. It
//!   says nothing about the data; retrying later is right
//!   ([`Error::is_retryable`]). A verification that ends so is "not
//!   verified", never "failed". Exit code 1.
//! - **Corrupt** ([`Error::Manifest`], [`Error::ChecksumMismatch`],
//!   [`Error::ArchiveCorrupt`], [`Error::UnsafeEntry`]): a snapshot is
//!   damaged or hostile. Retrying reads the same bytes: never retried, the
//!   snapshot must not be trusted. Exit code 1.
//! - **Refused** ([`Error::LogDir`], [`Error::FutureDir`],
//!   [`Error::BrokerRunning`], [`Error::SnapshotNotFound`],
//!   [`Error::Target`], [`Error::Refused`]): the operation would be unsafe or
//!   has nothing to act on (the broker runs, a replica move is in flight, a
//!   restore target is not as expected, no such snapshot). Nothing was
//!   changed; the operator fixes the situation first. Exit code 1.
//! - **Internal** ([`Error::Internal`]): a bug: a worker thread panicked, an
//!   invariant of this program broke. Reported with what was being done,
//!   never retried. Exit code 70 (`EX_SOFTWARE` of sysexits.h).
//!
//! Unavailable keeps exit code 1 rather than sysexits' `EX_TEMPFAIL` (75):
//! scripts and timers already read 1 as "this run failed, the next one may
//! succeed", and the message says which it was.

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

    /// Something other than storage or a disk (the coordinator over HTTP, a
    /// database) could not be reached or was busy; worth a retry.
    #[error("{what}: {message}")]
    Unavailable { what: String, message: String },

    /// An operation refused because it is unsafe or has nothing to act on.
    #[error("{what}: {message}")]
    Refused { what: String, message: String },

    /// A bug: a thread panicked or an invariant broke.
    #[error("internal error (a bug, please report it): {0}")]
    Internal(String),
}

/// The classes of [`Error`]; see the module's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    User,
    Unavailable,
    Corrupt,
    Refused,
    Internal,
}

impl ErrorKind {
    /// Process exit code of a command that ends with an error of this kind.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::User => 2,
            ErrorKind::Unavailable | ErrorKind::Corrupt | ErrorKind::Refused => 1,
            ErrorKind::Internal => 70,
        }
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn unavailable(what: impl Into<String>, message: impl ToString) -> Self {
        Error::Unavailable {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub fn refused(what: impl Into<String>, message: impl ToString) -> Self {
        Error::Refused {
            what: what.into(),
            message: message.to_string(),
        }
    }

    /// A worker thread that ended without an answer: `what` names its job.
    pub fn panicked(what: &str) -> Self {
        Error::Internal(format!("{what}: the worker thread panicked"))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) | Error::Config { .. } => ErrorKind::User,
            Error::Io { .. } | Error::Storage { .. } | Error::Unavailable { .. } => {
                ErrorKind::Unavailable
            }
            Error::Manifest { .. }
            | Error::ChecksumMismatch { .. }
            | Error::ArchiveCorrupt { .. }
            | Error::UnsafeEntry { .. } => ErrorKind::Corrupt,
            Error::LogDir { .. }
            | Error::FutureDir { .. }
            | Error::BrokerRunning { .. }
            | Error::SnapshotNotFound { .. }
            | Error::Target { .. }
            | Error::Refused { .. } => ErrorKind::Refused,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same operation may succeed later without anyone acting:
    /// the Unavailable class.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// True when the error says only that cold storage (or a disk) could
    /// not be read just now (unreachable, timed out, an I/O error), and
    /// nothing about whether the snapshot is good. A verification that
    /// ends so must be retried, not recorded as a failed snapshot. The
    /// Unavailable class: verification reaches no coordinator or database,
    /// so for it this is exactly storage and I/O errors.
    pub fn is_unreadable(&self) -> bool {
        self.is_retryable()
    }

    /// Process exit code for the CLI, from the error's class (see the
    /// module's policy): 2 user, 1 unavailable, corrupt or refused, 70 a bug.
    pub fn exit_code(&self) -> i32 {
        self.kind().exit_code()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_class() {
        let io = Error::io("reading x", io::Error::other("boom"));
        assert_eq!((io.kind(), io.exit_code()), (ErrorKind::Unavailable, 1));
        assert!(io.is_unreadable() && io.is_retryable());
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        let corrupt = Error::ArchiveCorrupt {
            snapshot: "s".into(),
            message: "m".into(),
        };
        assert_eq!((corrupt.exit_code(), corrupt.is_retryable()), (1, false));
        assert_eq!(Error::refused("restore", "no").exit_code(), 1);
        assert_eq!(Error::panicked("flusher").exit_code(), 70);
        assert!(!Error::panicked("flusher").is_unreadable());
    }
}
