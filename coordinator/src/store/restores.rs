//! Operators' restore orders.

use super::{names_where, state, ts, Name, Now};
use crate::state::RestoreState;
use kafka_snapshot_model::api::RestoreView;
use kafka_snapshot_model::protocol::RestoreOrder;
use rusqlite::{params, Connection, OptionalExtension};

/// The oldest pending order of `broker`.
pub fn pending_of(c: &Connection, broker: i32) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT id FROM restores WHERE state = ? AND broker = ? ORDER BY id LIMIT 1",
        params![Name(RestoreState::Pending.as_str()), broker],
        |r| r.get(0),
    )
    .optional()
}

/// Whether any broker has a pending order.
pub fn any_pending(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) > 0 FROM restores WHERE state = ?",
        [Name(RestoreState::Pending.as_str())],
        |r| r.get(0),
    )
}

/// Whether any order is open (pending or running).
pub fn any_open(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) > 0 FROM restores WHERE state IN (SELECT value FROM json_each(?))",
        [names_where(RestoreState::ALL, RestoreState::is_open)],
        |r| r.get(0),
    )
}

/// The open (pending or running) order of `broker`.
pub fn open_of(c: &Connection, broker: i32) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT id FROM restores WHERE broker = ? AND state IN (SELECT value FROM json_each(?))",
        params![
            broker,
            names_where(RestoreState::ALL, RestoreState::is_open)
        ],
        |r| r.get(0),
    )
    .optional()
}

pub fn state_of(c: &Connection, id: i64) -> rusqlite::Result<Option<RestoreState>> {
    c.query_row("SELECT state FROM restores WHERE id = ?", [id], |r| {
        state(r, 0)
    })
    .optional()
}

pub fn insert(
    c: &Connection,
    broker: i32,
    cluster_id: &str,
    snapshot_id: &str,
    force: bool,
    now: Now,
) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO restores(broker, cluster_id, snapshot_id, force, state, progress,
            created_at, updated_at)
         VALUES (?,?,?,?,?, 'waiting for the lease', ?, ?)",
        params![
            broker,
            cluster_id,
            snapshot_id,
            force,
            Name(RestoreState::Pending.as_str()),
            ts(now),
            ts(now)
        ],
    )?;
    Ok(c.last_insert_rowid())
}

/// Granted under lease `epoch`.
pub fn granted(
    c: &Connection,
    id: i64,
    to: RestoreState,
    epoch: i64,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE restores SET state = ?, epoch = ?, progress = 'lease granted', updated_at = ?
         WHERE id = ?",
        params![Name(to.as_str()), epoch, ts(now), id],
    )?;
    Ok(())
}

pub fn set_progress(c: &Connection, id: i64, progress: &str, now: Now) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE restores SET progress = ?, updated_at = ? WHERE id = ?",
        params![progress, ts(now), id],
    )?;
    Ok(())
}

pub fn set_phase(
    c: &Connection,
    id: i64,
    phase: &str,
    progress: Option<&str>,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE restores SET phase = ?, progress = ?, updated_at = ? WHERE id = ?",
        params![phase, progress, ts(now), id],
    )?;
    Ok(())
}

pub fn finish(
    c: &Connection,
    id: i64,
    to: RestoreState,
    message: &str,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE restores SET state = ?, message = ?, updated_at = ? WHERE id = ?",
        params![Name(to.as_str()), message, ts(now), id],
    )?;
    Ok(())
}

/// What the agent is told to restore.
pub fn order(c: &Connection, id: i64) -> rusqlite::Result<RestoreOrder> {
    c.query_row(
        "SELECT id, cluster_id, snapshot_id, force FROM restores WHERE id = ?",
        [id],
        |r| {
            Ok(RestoreOrder {
                id: r.get(0)?,
                cluster_id: r.get(1)?,
                snapshot_id: r.get(2)?,
                force: r.get(3)?,
            })
        },
    )
}

pub fn view(c: &Connection, id: i64) -> rusqlite::Result<Option<RestoreView>> {
    c.query_row(
        "SELECT id, broker, snapshot_id, cluster_id, force, state, phase, progress, message,
            created_at, updated_at FROM restores WHERE id = ?",
        [id],
        |r| {
            Ok(RestoreView {
                id: r.get(0)?,
                broker: r.get(1)?,
                snapshot_id: r.get(2)?,
                cluster_id: r.get(3)?,
                force: r.get(4)?,
                state: r.get(5)?,
                phase: r.get(6)?,
                progress: r.get(7)?,
                message: r.get(8)?,
                created_at: r.get(9)?,
                updated_at: r.get(10)?,
            })
        },
    )
    .optional()
}
