//! Leases: one row per grant of the cluster's lease slot (the epoch is the
//! fencing token), and when each phase of a lease was first reported.

use super::{names_where, state, ts, Name, Now};
use crate::state::{LeaseKind, LeaseState};
use kafka_snapshot_model::api::LeaseView;
use rusqlite::{params, Connection, OptionalExtension};

/// A lease as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub epoch: i64,
    pub broker: i32,
    pub kind: LeaseKind,
    pub state: LeaseState,
    pub cycle_id: Option<i64>,
    pub order_id: Option<i64>,
    /// The last phase a heartbeat reported; none until the first one.
    pub phase: Option<String>,
    pub holder_instance: Option<String>,
    pub holder_host: Option<String>,
    /// An operator cancelled what the lease was granted for: its agent is
    /// told to abort.
    pub abort_requested: Option<String>,
}

const COLUMNS: &str = "epoch, broker, kind, state, cycle_id, order_id, phase, holder_instance, \
                       holder_host, abort_requested";

/// The states that hold the slot.
fn holding() -> String {
    names_where(LeaseState::ALL, LeaseState::holds_slot)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow {
        epoch: r.get(0)?,
        broker: r.get(1)?,
        kind: state(r, 2)?,
        state: state(r, 3)?,
        cycle_id: r.get(4)?,
        order_id: r.get(5)?,
        phase: r.get(6)?,
        holder_instance: r.get(7)?,
        holder_host: r.get(8)?,
        abort_requested: r.get(9)?,
    })
}

pub fn get(c: &Connection, epoch: i64) -> rusqlite::Result<Option<LeaseRow>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM leases WHERE epoch = ?"),
        [epoch],
        row,
    )
    .optional()
}

/// The lease that keeps the slot closed, if any (see
/// [`LeaseState::holds_slot`]).
pub fn slot(c: &Connection) -> rusqlite::Result<Option<LeaseRow>> {
    c.query_row(
        &format!(
            "SELECT {COLUMNS} FROM leases WHERE state IN (SELECT value FROM json_each(?))
             ORDER BY epoch LIMIT 1"
        ),
        [holding()],
        row,
    )
    .optional()
}

/// The latest lease granted for restore order `order`.
pub fn of_order(c: &Connection, order: i64) -> rusqlite::Result<Option<LeaseRow>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM leases WHERE order_id = ? ORDER BY epoch DESC LIMIT 1"),
        [order],
        row,
    )
    .optional()
}

/// The active lease of `broker`, if it holds one.
pub fn active_of(c: &Connection, broker: i32) -> rusqlite::Result<Option<LeaseRow>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM leases WHERE broker = ? AND state = ?"),
        params![broker, Name(LeaseState::Active.as_str())],
        row,
    )
    .optional()
}

pub fn latest_epoch_of(c: &Connection, broker: i32) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT max(epoch) FROM leases WHERE broker = ?",
        [broker],
        |r| r.get(0),
    )
}

/// A new grant; returns its epoch.
pub struct Grant<'a> {
    pub broker: i32,
    pub kind: LeaseKind,
    pub cycle_id: Option<i64>,
    pub order_id: Option<i64>,
    pub expires: Now,
    pub holder_instance: Option<&'a str>,
    pub holder_host: &'a str,
}

pub fn insert(c: &Connection, g: &Grant<'_>, now: Now) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO leases(broker, kind, cycle_id, order_id, state, granted_at, expires_at,
            holder_instance, holder_host)
         VALUES (?,?,?,?,?,?,?,?,?)",
        params![
            g.broker,
            Name(g.kind.as_str()),
            g.cycle_id,
            g.order_id,
            Name(LeaseState::Active.as_str()),
            ts(now),
            ts(g.expires),
            g.holder_instance,
            g.holder_host
        ],
    )?;
    Ok(c.last_insert_rowid())
}

pub fn extend(c: &Connection, epoch: i64, expires: Now) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET expires_at = ? WHERE epoch = ?",
        params![ts(expires), epoch],
    )?;
    Ok(())
}

/// A heartbeat at `now`: renewed until `expires`, in `phase`. With
/// `may_be_down`, `now` is kept as the first time the broker may have been
/// down under this lease.
pub fn renew(
    c: &Connection,
    epoch: i64,
    now: Now,
    expires: Now,
    phase: &str,
    progress: Option<&str>,
    may_be_down: bool,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET expires_at = ?, phase = ?, progress = ?,
            stopped_at = coalesce(stopped_at, ?) WHERE epoch = ?",
        params![
            ts(expires),
            phase,
            progress,
            may_be_down.then(|| ts(now)),
            epoch
        ],
    )?;
    // The first heartbeat in a phase marks its start: as precise as the
    // heartbeats (ttl / 3), which is enough to see where time goes.
    c.execute(
        "INSERT OR IGNORE INTO lease_phases(epoch, phase, started_at) VALUES (?,?,?)",
        params![epoch, phase, ts(now)],
    )?;
    Ok(())
}

/// The outcome the lease was released with (JSON), if it was released.
pub fn outcome(c: &Connection, epoch: i64) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT outcome FROM leases WHERE epoch = ?", [epoch], |r| {
        r.get(0)
    })
    .optional()
    .map(Option::flatten)
}

pub fn set_outcome(c: &Connection, epoch: i64, outcome_json: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET outcome = ? WHERE epoch = ?",
        params![outcome_json, epoch],
    )?;
    Ok(())
}

/// The lease ends (released or settling), with the reason if it ended badly.
pub fn end(
    c: &Connection,
    epoch: i64,
    to: LeaseState,
    reason: Option<&str>,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET state = ?, reason = coalesce(?, reason), ended_at = ? WHERE epoch = ?",
        params![Name(to.as_str()), reason, ts(now), epoch],
    )?;
    Ok(())
}

pub fn set_state(c: &Connection, epoch: i64, to: LeaseState) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET state = ? WHERE epoch = ?",
        params![Name(to.as_str()), epoch],
    )?;
    Ok(())
}

/// Tells the lease's agent to abort (its next heartbeat answer says so).
pub fn request_abort(c: &Connection, epoch: i64, why: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET abort_requested = ? WHERE epoch = ?",
        params![why, epoch],
    )?;
    Ok(())
}

pub fn set_progress(c: &Connection, epoch: i64, progress: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE leases SET progress = ? WHERE epoch = ?",
        params![progress, epoch],
    )?;
    Ok(())
}

/// Active leases not renewed by `now`: (epoch, broker, last phase).
pub fn expired(c: &Connection, now: Now) -> rusqlite::Result<Vec<(i64, i32, Option<String>)>> {
    let mut st =
        c.prepare("SELECT epoch, broker, phase FROM leases WHERE state = ? AND expires_at < ?")?;
    let rows = st.query_map(params![Name(LeaseState::Active.as_str()), ts(now)], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}

/// The lease holding the slot, as `status` shows it.
pub fn slot_view(c: &Connection) -> rusqlite::Result<Option<LeaseView>> {
    c.query_row(
        "SELECT epoch, broker, kind, state, phase, progress, expires_at, reason, granted_at
         FROM leases WHERE state IN (SELECT value FROM json_each(?)) ORDER BY epoch LIMIT 1",
        [holding()],
        |r| {
            Ok(LeaseView {
                epoch: r.get(0)?,
                broker: r.get(1)?,
                kind: r.get(2)?,
                state: r.get(3)?,
                phase: r.get(4)?,
                progress: r.get(5)?,
                expires_at: r.get(6)?,
                reason: r.get(7)?,
                granted_at: r.get(8)?,
            })
        },
    )
    .optional()
}

/// One reported phase of a broker's latest lease that reported any.
#[derive(Debug, Clone)]
pub struct PhaseRow {
    pub broker: i32,
    pub epoch: i64,
    pub kind: String,
    pub granted_at: String,
    pub ended_at: Option<String>,
    pub phase: String,
    pub started_at: String,
}

/// Every phase of each broker's latest lease that reported a phase, in the
/// order they were first reported.
pub fn latest_phases(c: &Connection) -> rusqlite::Result<Vec<PhaseRow>> {
    let mut st = c.prepare(
        "SELECT l.broker, l.epoch, l.kind, l.granted_at, l.ended_at, p.phase, p.started_at
         FROM leases l JOIN lease_phases p ON p.epoch = l.epoch
         WHERE l.epoch IN (SELECT max(epoch) FROM lease_phases
                           JOIN leases USING (epoch) GROUP BY broker)
         ORDER BY l.broker, p.started_at, p.rowid",
    )?;
    let rows = st.query_map([], |r| {
        Ok(PhaseRow {
            broker: r.get(0)?,
            epoch: r.get(1)?,
            kind: r.get(2)?,
            granted_at: r.get(3)?,
            ended_at: r.get(4)?,
            phase: r.get(5)?,
            started_at: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Brokers that hold the slot (`active` or `settling`).
pub fn slot_brokers(c: &Connection) -> rusqlite::Result<Vec<i32>> {
    let mut st =
        c.prepare("SELECT broker FROM leases WHERE state IN (SELECT value FROM json_each(?))")?;
    let rows = st.query_map([holding()], |r| r.get(0))?;
    rows.collect()
}
