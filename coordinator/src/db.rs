//! The coordinator's state in SQLite: every decision is one transaction, so
//! a coordinator killed at any moment restarts from a consistent state.

use kafka_snapshot::{Error, Result};
use rusqlite::Connection;
use std::path::Path;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS brokers (
    id INTEGER PRIMARY KEY,
    hostname TEXT,
    agent_version TEXT,
    last_seen TEXT,
    phase TEXT NOT NULL DEFAULT 'idle',
    broker_running INTEGER,
    last_error TEXT,
    last_error_at TEXT
);
-- One row per grant; the epoch is the fencing token.
-- state: active -> released | settling -> cleared
CREATE TABLE IF NOT EXISTS leases (
    epoch INTEGER PRIMARY KEY AUTOINCREMENT,
    broker INTEGER NOT NULL,
    kind TEXT NOT NULL,
    cycle_id INTEGER,
    order_id INTEGER,
    state TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    phase TEXT,
    progress TEXT,
    outcome TEXT,
    reason TEXT,
    stopped_at TEXT,
    ended_at TEXT,
    holder_instance TEXT,
    holder_host TEXT
);
CREATE INDEX IF NOT EXISTS leases_state ON leases(state);
-- state: running -> finishing -> done | partial | failed
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    message TEXT
);
-- state: pending -> leased -> archiving -> done | failed (skips go back to pending)
CREATE TABLE IF NOT EXISTS cycle_brokers (
    cycle_id INTEGER NOT NULL,
    broker INTEGER NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER,
    snapshot_id TEXT,
    reason TEXT,
    waiting_since TEXT,
    archiving_since TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (cycle_id, broker)
);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    broker INTEGER NOT NULL,
    host TEXT NOT NULL,
    committed TEXT NOT NULL,
    capture TEXT NOT NULL,
    clean_shutdown INTEGER NOT NULL,
    downtime_ms INTEGER,
    files INTEGER NOT NULL,
    data_bytes INTEGER NOT NULL,
    archive_bytes INTEGER NOT NULL,
    archive_sha256 TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    verified_at TEXT,
    verify_ok INTEGER,
    verify_message TEXT,
    deleted_at TEXT,
    source TEXT NOT NULL,
    PRIMARY KEY (cluster_id, broker, snapshot_id)
);
-- state: pending -> running -> done | failed
CREATE TABLE IF NOT EXISTS restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    broker INTEGER NOT NULL,
    cluster_id TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    force INTEGER NOT NULL,
    state TEXT NOT NULL,
    epoch INTEGER,
    phase TEXT,
    progress TEXT,
    message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    level TEXT NOT NULL,
    broker INTEGER,
    epoch INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
-- When each phase of a lease was first reported (by a heartbeat), for the
-- phase durations of the latest lease of every broker in /metrics.
CREATE TABLE IF NOT EXISTS lease_phases (
    epoch INTEGER NOT NULL,
    phase TEXT NOT NULL,
    started_at TEXT NOT NULL,
    PRIMARY KEY (epoch, phase)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, label)
);
"#;

pub fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
    init(&conn).map_err(|e| db_err(path, e))?;
    Ok(conn)
}

#[cfg(test)]
pub fn open_in_memory() -> Connection {
    let conn = Connection::open_in_memory().expect("in-memory database");
    init(&conn).expect("schema");
    conn
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    // WAL + FULL: a committed transaction survives a crash or power cut.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(SCHEMA)?;
    // Added after schema version 1 shipped: which agent process a lease
    // was handed to.
    for (table, column) in [("leases", "holder_instance"), ("leases", "holder_host")] {
        let present: bool = conn.query_row(
            &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?"),
            [column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"), [])?;
        }
    }
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1')",
        [],
    )?;
    Ok(())
}

pub fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Usage(format!("database {}: {e}", path.display()))
}
