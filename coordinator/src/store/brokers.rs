//! What the coordinator last heard from each broker's agent.

use super::{ts, Now};
use kafka_snapshot_model::protocol::{MovedAsideDir, Phase, PollRequest};
use rusqlite::{params, Connection, OptionalExtension};

/// A poll: the agent is alive, and this is where it stands.
pub fn seen_poll(c: &Connection, req: &PollRequest, now: Now) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO brokers(id, hostname, agent_version, last_seen, phase, broker_running,
            moved_aside)
         VALUES (?1,?2,?3,?4,?5,?6,?7)
         ON CONFLICT(id) DO UPDATE SET hostname=?2, agent_version=?3, last_seen=?4,
            phase=?5, broker_running=?6, moved_aside=?7",
        params![
            req.broker,
            req.hostname,
            req.agent_version,
            ts(now),
            req.phase.as_str(),
            req.broker_running,
            serde_json::to_string(&req.moved_aside).unwrap_or_else(|_| "[]".into())
        ],
    )?;
    Ok(())
}

/// A heartbeat: the agent is alive, in `phase`.
pub fn seen_phase(c: &Connection, broker: i32, phase: Phase, now: Now) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE brokers SET phase = ?, last_seen = ? WHERE id = ?",
        params![phase.as_str(), ts(now), broker],
    )?;
    Ok(())
}

pub fn set_error(c: &Connection, broker: i32, message: &str, now: Now) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE brokers SET last_error = ?, last_error_at = ? WHERE id = ?",
        params![message, ts(now), broker],
    )?;
    Ok(())
}

pub fn clear_error(c: &Connection, broker: i32) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE brokers SET last_error = NULL WHERE id = ?",
        [broker],
    )?;
    Ok(())
}

/// When the broker's agent last polled or sent a heartbeat.
pub fn last_seen(c: &Connection, broker: i32) -> rusqlite::Result<Option<String>> {
    Ok(c.query_row(
        "SELECT last_seen FROM brokers WHERE id = ?",
        [broker],
        |r| r.get(0),
    )
    .optional()?
    .flatten())
}

/// The agent as `status` shows it.
#[derive(Debug, Clone)]
pub struct Agent {
    pub hostname: Option<String>,
    pub last_seen: Option<String>,
    pub phase: String,
    pub broker_running: Option<bool>,
    pub last_error: Option<String>,
    /// What restores moved aside on its host, as its last poll said.
    pub moved_aside: Vec<MovedAsideDir>,
}

pub fn agent(c: &Connection, broker: i32) -> rusqlite::Result<Option<Agent>> {
    c.query_row(
        "SELECT hostname, last_seen, phase, broker_running, last_error, moved_aside
         FROM brokers WHERE id = ?",
        [broker],
        |r| {
            Ok(Agent {
                hostname: r.get(0)?,
                last_seen: r.get(1)?,
                phase: r.get(2)?,
                broker_running: r.get(3)?,
                last_error: r.get(4)?,
                // Written by this code from a parsed poll: unreadable only
                // if edited by hand, then shown as nothing.
                moved_aside: r
                    .get::<_, Option<String>>(5)?
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default(),
            })
        },
    )
    .optional()
}
