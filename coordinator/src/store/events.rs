//! The event log, the counters behind `/metrics`, and `meta` (schedule and
//! housekeeping flags).

use super::{ts, Name, Now};
use crate::state::EventLevel;
use kafka_snapshot_model::api::EventView;
use rusqlite::{params, Connection, OptionalExtension};

pub fn insert(
    c: &Connection,
    now: Now,
    level: EventLevel,
    broker: Option<i32>,
    epoch: Option<i64>,
    kind: &str,
    message: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO events(at, level, broker, epoch, kind, message) VALUES (?,?,?,?,?,?)",
        params![ts(now), Name(level.as_str()), broker, epoch, kind, message],
    )?;
    Ok(())
}

/// Whether an event of `kind` was recorded for lease `epoch`.
pub fn seen(c: &Connection, kind: &str, epoch: i64) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) > 0 FROM events WHERE kind = ? AND epoch = ?",
        params![kind, epoch],
        |r| r.get(0),
    )
}

pub fn recent(c: &Connection, limit: u32) -> rusqlite::Result<Vec<EventView>> {
    let mut st =
        c.prepare("SELECT at, level, broker, kind, message FROM events ORDER BY id DESC LIMIT ?")?;
    let rows = st.query_map([limit], |r| {
        Ok(EventView {
            at: r.get(0)?,
            level: r.get(1)?,
            broker: r.get(2)?,
            kind: r.get(3)?,
            message: r.get(4)?,
        })
    })?;
    rows.collect()
}

pub fn count(c: &Connection, name: &str, label: &str, by: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO counters(name, label, value) VALUES (?,?,?)
         ON CONFLICT(name, label) DO UPDATE SET value = value + excluded.value",
        params![name, label, by],
    )?;
    Ok(())
}

pub fn counters(c: &Connection) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let mut st = c.prepare("SELECT name, label, value FROM counters ORDER BY name, label")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// The `meta` keys the coordinator keeps.
#[derive(Debug, Clone, Copy)]
pub enum Meta {
    /// When the next scheduled cycle is due.
    NextDue,
    /// A cycle ended: retention is to be applied.
    PruneDue,
    /// An operator suspended the schedule (`coordinator suspend`): why,
    /// who and when.
    Suspended,
    /// The cluster.id learned from the cluster the first time the
    /// coordinator reached it (unless the config names one).
    ClusterId,
    /// The cluster.id of a cluster that answered with another id than the
    /// coordinator's, already reported (so it is reported once).
    ClusterMismatch,
    /// The cycle whose `before_cycle` hook succeeded.
    BeforeCycleRan,
    /// The ended cycle whose `after_cycle` hook is still to run.
    AfterCycleDue,
}

impl Meta {
    fn key(self) -> &'static str {
        match self {
            Meta::NextDue => "next_due",
            Meta::PruneDue => "prune_due",
            Meta::Suspended => "suspended",
            Meta::ClusterId => "cluster_id",
            Meta::ClusterMismatch => "cluster_mismatch",
            Meta::BeforeCycleRan => "before_cycle_ran",
            Meta::AfterCycleDue => "after_cycle_due",
        }
    }
}

pub fn meta(c: &Connection, key: Meta) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT value FROM meta WHERE key = ?", [key.key()], |r| {
        r.get(0)
    })
    .optional()
}

pub fn set_meta(c: &Connection, key: Meta, value: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
        params![key.key(), value],
    )?;
    Ok(())
}

pub fn clear_meta(c: &Connection, key: Meta) -> rusqlite::Result<()> {
    c.execute("DELETE FROM meta WHERE key = ?", [key.key()])?;
    Ok(())
}
