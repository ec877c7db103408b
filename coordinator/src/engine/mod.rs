//! Every decision of the coordinator, over its SQLite state: who gets the
//! lease, when it expires, how a cycle moves on, what the catalog holds.
//!
//! The one rule all of it serves: **at most one broker is down because of
//! this tool**. There is one lease slot for the whole cluster. A lease that
//! ends badly (expired, or released with a failure) does not free the slot:
//! it goes to `settling`, and only the coordinator's own check that the
//! whole cluster is back in sync clears it (see [`crate::state`]).
//!
//! Each public method is one transaction: it reads the state through
//! [`crate::store`], decides with the pure transitions of [`crate::state`]
//! and writes the result. Methods take `now` so tests can drive time.
//!
//! - [`agents`]: what agents ask (poll, grant, heartbeat, release, report,
//!   notice);
//! - [`turns`]: how a lease ends and what that does to the broker's turn
//!   or restore order (shared by the agents' requests and the tick);
//! - [`tick`]: time passing (expiry, schedule, stuck turns, the end of a
//!   cycle);
//! - [`operators`]: what operators order (run-now, restores);
//! - [`cluster`]: whole-cluster restores (every node at once, in steps);
//! - [`catalog`]: committed snapshots, verification, retention, rebuild;
//! - [`sets`]: snapshot sets (a cycle over every node), and what retention
//!   keeps of them;
//! - [`status`]: what `status` and `/metrics` show.

mod agents;
mod catalog;
mod cluster;
mod operators;
mod sets;
mod status;
mod tick;
mod turns;

#[cfg(test)]
pub(crate) mod tests;

pub use catalog::CLOCK_SKEW_LIMIT;

use crate::config::CoordinatorConfig;
use crate::state::{EventLevel, IllegalTransition};
use crate::store::{events, Now};
use rusqlite::{Connection, Transaction};
use std::time::Duration;

/// An API-level refusal, mapped to an HTTP status by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Not possible yet, for a reason that passes without anyone acting
    /// (503: the caller retries).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

impl From<IllegalTransition> for ApiError {
    fn from(e: IllegalTransition) -> Self {
        ApiError::Internal(e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A config duration as a chrono one, capped at a century so that adding
/// it to a time can never overflow.
fn cdur(d: Duration) -> chrono::Duration {
    let century = chrono::Duration::days(36_500);
    chrono::Duration::from_std(d).map_or(century, |c| c.min(century))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What a poll leads to: an answer now, or a grant that first needs the
/// coordinator's own look at the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum PollDecision {
    Answer(kafka_snapshot_model::protocol::Action),
    Check(Candidate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    Snapshot { broker: i32, cycle_id: i64 },
    Restore { broker: i32, order_id: i64 },
}

impl Candidate {
    pub fn broker(&self) -> i32 {
        match self {
            Candidate::Snapshot { broker, .. } | Candidate::Restore { broker, .. } => *broker,
        }
    }
}

/// What the periodic tick needs from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickNeeds {
    /// A settling lease waits for the cluster to be back in sync.
    pub settle_check: bool,
    /// A cycle waits for its final in-sync check.
    pub final_check: bool,
    /// Snapshots not verified yet (with `verify_new`).
    pub verify: bool,
    /// A cycle just ended: apply retention.
    pub prune: bool,
    /// The running cycle whose `before_cycle` hook is to run.
    pub before_cycle: Option<i64>,
    /// The ended cycle whose `after_cycle` hook is to run.
    pub after_cycle: Option<i64>,
    /// An ended snapshot set's record is still to be written to cold
    /// storage.
    pub store_sets: bool,
    /// A whole-cluster restore has every node restored and waits for the
    /// cluster to be in sync.
    pub cluster_restore_check: bool,
}

pub struct Engine {
    conn: Connection,
    cfg: CoordinatorConfig,
}

impl Engine {
    pub fn new(conn: Connection, cfg: CoordinatorConfig) -> Engine {
        Engine { conn, cfg }
    }

    /// The config read again (SIGHUP); the next decision uses it.
    pub fn set_config(&mut self, cfg: CoordinatorConfig) {
        self.cfg = cfg;
    }

    /// One decision: a transaction with the config and the time in reach.
    fn begin(&mut self, now: Now) -> rusqlite::Result<Ctx<'_>> {
        Ok(Ctx {
            tx: self.conn.transaction()?,
            cfg: &self.cfg,
            now,
        })
    }
}

/// A decision in progress: its transaction, the config and the time.
/// Dropped without [`Ctx::commit`], it changes nothing.
struct Ctx<'e> {
    tx: Transaction<'e>,
    cfg: &'e CoordinatorConfig,
    now: Now,
}

impl Ctx<'_> {
    fn commit(self) -> rusqlite::Result<()> {
        self.tx.commit()
    }

    fn ttl(&self) -> chrono::Duration {
        cdur(self.cfg.lease.ttl)
    }

    /// Logs and records an event; ERROR means an operator must act.
    fn event(
        &self,
        level: EventLevel,
        broker: Option<i32>,
        epoch: Option<i64>,
        kind: &str,
        message: &str,
    ) -> rusqlite::Result<()> {
        match level {
            EventLevel::Error => tracing::error!(broker, epoch, kind, "{message}"),
            EventLevel::Warning => tracing::warn!(broker, epoch, kind, "{message}"),
            EventLevel::Info => tracing::info!(broker, epoch, kind, "{message}"),
        }
        events::insert(&self.tx, self.now, level, broker, epoch, kind, message)
    }

    fn count(&self, name: &str, label: &str) -> rusqlite::Result<()> {
        events::count(&self.tx, name, label, 1)
    }

    /// The cluster.id this coordinator works for, if known.
    fn cluster(&self) -> rusqlite::Result<Option<String>> {
        cluster_of(&self.tx, self.cfg)
    }
}

/// The cluster.id a coordinator works for: `[cluster] id`, else the one it
/// learned from the cluster (see [`Engine::learn_cluster_id`]).
fn cluster_of(c: &Connection, cfg: &CoordinatorConfig) -> rusqlite::Result<Option<String>> {
    match &cfg.cluster.id {
        Some(id) => Ok(Some(id.clone())),
        None => events::meta(c, events::Meta::ClusterId),
    }
}

/// Reads the state for tests and tools that look inside.
#[cfg(test)]
impl Engine {
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}
