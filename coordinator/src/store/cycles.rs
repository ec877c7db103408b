//! Rolling cycles and each broker's turn in them.

use super::{names_where, state, ts, Name, Now};
use crate::state::{CycleBrokerState, CycleState, Turn};
use kafka_snapshot_model::api::{CycleBrokerView, CycleView};
use rusqlite::{params, Connection, OptionalExtension};

/// The open cycle (running or finishing), if any.
pub fn open(c: &Connection) -> rusqlite::Result<Option<(i64, CycleState)>> {
    c.query_row(
        "SELECT id, state FROM cycles WHERE state IN (SELECT value FROM json_each(?))
         ORDER BY id LIMIT 1",
        [names_where(CycleState::ALL, CycleState::is_open)],
        |r| Ok((r.get(0)?, state(r, 1)?)),
    )
    .optional()
}

/// A new running cycle over `brokers`, in that order.
pub fn insert(c: &Connection, trigger: &str, brokers: &[i32], now: Now) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO cycles(trigger, state, started_at) VALUES (?, ?, ?)",
        params![trigger, Name(CycleState::Running.as_str()), ts(now)],
    )?;
    let id = c.last_insert_rowid();
    for (i, b) in brokers.iter().enumerate() {
        c.execute(
            "INSERT INTO cycle_brokers(cycle_id, broker, position, state, updated_at)
             VALUES (?, ?, ?, ?, ?)",
            params![
                id,
                b,
                i as i64,
                Name(CycleBrokerState::Pending.as_str()),
                ts(now)
            ],
        )?;
    }
    Ok(id)
}

pub fn set_state(c: &Connection, cycle: i64, to: CycleState) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycles SET state = ? WHERE id = ?",
        params![Name(to.as_str()), cycle],
    )?;
    Ok(())
}

pub fn finish(
    c: &Connection,
    cycle: i64,
    to: CycleState,
    message: &str,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycles SET state = ?, message = ?, finished_at = ? WHERE id = ?",
        params![Name(to.as_str()), message, ts(now), cycle],
    )?;
    Ok(())
}

pub fn set_message(c: &Connection, cycle: i64, message: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycles SET message = ? WHERE id = ?",
        params![message, cycle],
    )?;
    Ok(())
}

/// The state of `cycle` as stored, if it exists.
pub fn state_name(c: &Connection, cycle: i64) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT state FROM cycles WHERE id = ?", [cycle], |r| {
        r.get(0)
    })
    .optional()
}

/// Adds `more` to the cycle's message (after its end).
pub fn append_message(c: &Connection, cycle: i64, more: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycles SET message = CASE WHEN message IS NULL OR message = '' THEN ?1
                                          ELSE message || '; ' || ?1 END
         WHERE id = ?2",
        params![more, cycle],
    )?;
    Ok(())
}

/// When a broker of `cycle` last moved.
pub fn last_update(c: &Connection, cycle: i64) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT max(updated_at) FROM cycle_brokers WHERE cycle_id = ?",
        [cycle],
        |r| r.get(0),
    )
}

/// The newest cycle with its brokers in line order, as `status` shows it.
pub fn latest_view(c: &Connection) -> rusqlite::Result<Option<CycleView>> {
    let cycle = c
        .query_row(
            "SELECT id, trigger, state, started_at, finished_at, message FROM cycles
             ORDER BY id DESC LIMIT 1",
            [],
            |r| {
                Ok(CycleView {
                    id: r.get(0)?,
                    trigger: r.get(1)?,
                    state: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    message: r.get(5)?,
                    brokers: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut cv) = cycle else {
        return Ok(None);
    };
    let mut st = c.prepare(
        "SELECT broker, state, attempts, snapshot_id, reason FROM cycle_brokers
         WHERE cycle_id = ? ORDER BY position",
    )?;
    let rows = st.query_map([cv.id], |r| {
        Ok(CycleBrokerView {
            broker: r.get(0)?,
            state: r.get(1)?,
            attempts: r.get(2)?,
            snapshot_id: r.get(3)?,
            reason: r.get(4)?,
        })
    })?;
    cv.brokers = rows.collect::<rusqlite::Result<_>>()?;
    Ok(Some(cv))
}

// ----- a broker's turn --------------------------------------------------------

/// Every broker's place in `cycle`.
pub fn turns(c: &Connection, cycle: i64) -> rusqlite::Result<Vec<Turn>> {
    let mut st =
        c.prepare("SELECT broker, position, state FROM cycle_brokers WHERE cycle_id = ?")?;
    let rows = st.query_map([cycle], |r| {
        Ok(Turn {
            broker: r.get(0)?,
            position: r.get(1)?,
            state: state(r, 2)?,
        })
    })?;
    rows.collect()
}

/// One broker's turn in a cycle, as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRow {
    pub state: CycleBrokerState,
    pub attempts: i64,
    /// The lease of its latest attempt (-1 for a wait that timed out).
    pub epoch: Option<i64>,
    pub reason: Option<String>,
    pub waiting_since: Option<String>,
}

pub fn turn(c: &Connection, cycle: i64, broker: i32) -> rusqlite::Result<Option<TurnRow>> {
    c.query_row(
        "SELECT state, attempts, epoch, reason, waiting_since FROM cycle_brokers
         WHERE cycle_id = ? AND broker = ?",
        params![cycle, broker],
        |r| {
            Ok(TurnRow {
                state: state(r, 0)?,
                attempts: r.get(1)?,
                epoch: r.get(2)?,
                reason: r.get(3)?,
                waiting_since: r.get(4)?,
            })
        },
    )
    .optional()
}

/// Granted: one more attempt, under lease `epoch`.
pub fn granted(
    c: &Connection,
    cycle: i64,
    broker: i32,
    to: CycleBrokerState,
    epoch: i64,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET state = ?, attempts = attempts + 1, epoch = ?,
            reason = NULL, updated_at = ? WHERE cycle_id = ? AND broker = ?",
        params![Name(to.as_str()), epoch, ts(now), cycle, broker],
    )?;
    Ok(())
}

/// A wait for its turn that timed out counts as an attempt (so a dead
/// agent cannot hold a cycle forever), under no lease (epoch -1).
pub fn count_wait(c: &Connection, cycle: i64, broker: i32) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET attempts = attempts + 1, epoch = -1
         WHERE cycle_id = ? AND broker = ?",
        params![cycle, broker],
    )?;
    Ok(())
}

pub fn set_reason(
    c: &Connection,
    cycle: i64,
    broker: i32,
    reason: &str,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET reason = ?, updated_at = ? WHERE cycle_id = ? AND broker = ?",
        params![reason, ts(now), cycle, broker],
    )?;
    Ok(())
}

pub fn set_waiting_since(
    c: &Connection,
    cycle: i64,
    broker: i32,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET waiting_since = ? WHERE cycle_id = ? AND broker = ?",
        params![ts(now), cycle, broker],
    )?;
    Ok(())
}

/// Every broker of `cycle` waiting for its turn starts its wait afresh.
pub fn reset_waits(c: &Connection, cycle: i64) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET waiting_since = NULL WHERE cycle_id = ?",
        [cycle],
    )?;
    Ok(())
}

/// Its snapshot `snapshot_id` moved on under lease `epoch` (archiving or
/// done); news of an older lease changes nothing.
pub fn snapshot_moved(
    c: &Connection,
    cycle: i64,
    broker: i32,
    epoch: i64,
    to: CycleBrokerState,
    snapshot_id: &str,
    now: Now,
) -> rusqlite::Result<()> {
    let archiving = (to == CycleBrokerState::Archiving).then(|| ts(now));
    c.execute(
        "UPDATE cycle_brokers SET state = ?, snapshot_id = ?,
            archiving_since = coalesce(?, archiving_since),
            reason = CASE WHEN ? THEN NULL ELSE reason END, updated_at = ?
         WHERE cycle_id = ? AND broker = ? AND epoch = ?",
        params![
            Name(to.as_str()),
            snapshot_id,
            archiving,
            to == CycleBrokerState::Done,
            ts(now),
            cycle,
            broker,
            epoch
        ],
    )?;
    Ok(())
}

/// Back to the end of the line for another attempt.
pub fn requeue(
    c: &Connection,
    cycle: i64,
    broker: i32,
    reason: &str,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET state = ?1, reason = ?2, waiting_since = NULL,
            position = (SELECT max(position) + 1 FROM cycle_brokers WHERE cycle_id = ?3),
            updated_at = ?4 WHERE cycle_id = ?3 AND broker = ?5",
        params![
            Name(CycleBrokerState::Pending.as_str()),
            reason,
            cycle,
            ts(now),
            broker
        ],
    )?;
    Ok(())
}

/// No snapshot of this broker this cycle.
pub fn fail(
    c: &Connection,
    cycle: i64,
    broker: i32,
    reason: &str,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cycle_brokers SET state = ?, reason = ?, updated_at = ?
         WHERE cycle_id = ? AND broker = ?",
        params![
            Name(CycleBrokerState::Failed.as_str()),
            reason,
            ts(now),
            cycle,
            broker
        ],
    )?;
    Ok(())
}

/// Archives of `cycle` that started before `before` and never reported:
/// (broker, epoch).
pub fn archiving_since_before(
    c: &Connection,
    cycle: i64,
    before: Now,
) -> rusqlite::Result<Vec<(i32, i64)>> {
    let mut st = c.prepare(
        "SELECT broker, epoch FROM cycle_brokers WHERE cycle_id = ? AND state = ?
         AND archiving_since < ?",
    )?;
    let rows = st.query_map(
        params![
            cycle,
            Name(CycleBrokerState::Archiving.as_str()),
            ts(before)
        ],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    rows.collect()
}

/// Brokers of `cycle` with no snapshot this cycle, by id.
pub fn failed_brokers(c: &Connection, cycle: i64) -> rusqlite::Result<Vec<i32>> {
    let mut st = c.prepare(
        "SELECT broker FROM cycle_brokers WHERE cycle_id = ? AND state = ? ORDER BY broker",
    )?;
    let rows = st.query_map(
        params![cycle, Name(CycleBrokerState::Failed.as_str())],
        |r| r.get(0),
    )?;
    rows.collect()
}

/// Brokers of the open cycle whose snapshot is in progress.
pub fn busy_brokers(c: &Connection) -> rusqlite::Result<Vec<i32>> {
    let Some((cycle, _)) = open(c)? else {
        return Ok(Vec::new());
    };
    Ok(turns(c, cycle)?
        .into_iter()
        .filter(|t| t.state.is_busy())
        .map(|t| t.broker)
        .collect())
}
