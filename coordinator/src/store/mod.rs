//! The coordinator's state in SQLite, and every SQL statement that reads or
//! writes it: one module per table (group), each a set of small functions
//! over a connection or a transaction. The engine decides; this module only
//! stores. Every decision is one transaction, so a coordinator killed at
//! any moment restarts from a consistent state.
//!
//! States are stored by name ([`crate::state`]); timestamps as RFC 3339
//! text in UTC with milliseconds, which sorts as time does.

pub mod brokers;
pub mod cluster_restores;
pub mod cycles;
pub mod events;
pub mod leases;
pub mod restores;
pub mod sets;
pub mod snapshots;

use chrono::{DateTime, Utc};
use kafka_snapshot::{Error, Result};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql};
use std::path::Path;

pub type Now = DateTime<Utc>;

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
    last_error_at TEXT,
    moved_aside TEXT
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
    holder_host TEXT,
    abort_requested TEXT
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
    verify_contents INTEGER,
    deleted_at TEXT,
    source TEXT NOT NULL,
    seen_at TEXT,
    clock_skew_ms INTEGER,
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
-- A snapshot set: the committed snapshot of every node of one cycle that
-- covered every node. Made when such a cycle starts (finished_at NULL
-- until it ends); stored_at once its record is in cold storage. source:
-- 'cycle' (this coordinator's) or 'rebuild' (read back from storage).
-- cycle_id is informational: a rebuilt coordinator numbers cycles afresh.
CREATE TABLE IF NOT EXISTS sets (
    set_id TEXT PRIMARY KEY,
    cluster_id TEXT,
    cycle_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    complete INTEGER,
    stored_at TEXT
);
CREATE INDEX IF NOT EXISTS sets_cycle ON sets(cycle_id);
-- Every node of a set; snapshot_id NULL while (or if) it has none.
CREATE TABLE IF NOT EXISTS set_nodes (
    set_id TEXT NOT NULL REFERENCES sets(set_id) ON DELETE CASCADE,
    node INTEGER NOT NULL,
    snapshot_id TEXT,
    manifest_sha256 TEXT,
    PRIMARY KEY (set_id, node)
);
-- state: running -> recovering -> done | failed | cancelled
CREATE TABLE IF NOT EXISTS cluster_restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    set_id TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    force INTEGER NOT NULL,
    state TEXT NOT NULL,
    progress TEXT,
    message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- Every node of a whole-cluster restore, with its snapshot of the set.
-- state: waiting -> preparing -> prepared -> swapped -> started -> restored
--        (or failed / cancelled)
CREATE TABLE IF NOT EXISTS cluster_restore_nodes (
    order_id INTEGER NOT NULL REFERENCES cluster_restores(id),
    node INTEGER NOT NULL,
    role TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    state TEXT NOT NULL,
    epoch INTEGER,
    phase TEXT,
    progress TEXT,
    message TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (order_id, node)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, label)
);
"#;

/// The schema version this build writes. Each step of [`MIGRATIONS`]
/// brings a database one version up; a database of a newer version than
/// this is refused (a downgraded coordinator must not guess).
pub const SCHEMA_VERSION: u32 = 8;

/// `(version reached, what it changes)`, applied in order, each in the
/// transaction that also records the new version.
const MIGRATIONS: &[(u32, Migration)] = &[
    (2, v2_lease_holder),
    (3, v3_lease_abort),
    (4, v4_snapshot_seen),
    (5, v5_snapshot_sets),
    (6, v6_cluster_restores),
    (7, v7_moved_aside),
    (8, v8_verify_contents),
];

type Migration = fn(&Connection) -> rusqlite::Result<()>;

/// Version 2: which agent process and host a lease was handed to (so a
/// second agent acting as the same broker gets nothing), and the
/// coordinator no longer keeps a copy of `schedule.max_attempts` in `meta`.
fn v2_lease_holder(conn: &Connection) -> rusqlite::Result<()> {
    for column in ["holder_instance", "holder_host"] {
        add_column(conn, "leases", column)?;
    }
    conn.execute("DELETE FROM meta WHERE key = 'max_attempts'", [])?;
    Ok(())
}

/// Version 3: an operator may cancel a cycle or a restore order while its
/// lease is held; the lease records that its agent is to abort.
fn v3_lease_abort(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "leases", "abort_requested")
}

/// Version 4: retention and the restore pick order snapshots by when the
/// coordinator itself learned of them (`seen_at`), not by the agent's
/// `committed` clock, and the catalog keeps how far the two were apart
/// (`clock_skew_ms`, `committed - seen_at`). Snapshots already listed get
/// what a rebuild gives a snapshot it finds
/// ([`snapshots::Seen::found`]): their commit time, but never later than
/// now (the migration), since they existed by then; a commit time in the
/// future is recorded as skew, one in the past is taken as it is.
fn v4_snapshot_seen(conn: &Connection) -> rusqlite::Result<()> {
    add_typed_column(conn, "snapshots", "seen_at", "TEXT")?;
    add_typed_column(conn, "snapshots", "clock_skew_ms", "INTEGER")?;
    conn.execute(
        "UPDATE snapshots SET
            seen_at = min(committed, ?1),
            clock_skew_ms = CASE WHEN committed > ?1 THEN
                CAST(round((julianday(committed) - julianday(?1)) * 86400000.0) AS INTEGER)
            END
         WHERE seen_at IS NULL",
        [ts(Utc::now())],
    )?;
    Ok(())
}

/// Version 5: snapshot sets (`sets`, `set_nodes`). Their tables come
/// from [`SCHEMA`] like every table; what the version adds is the rule
/// that retention keeps the newest complete, verified set, so a
/// coordinator that predates sets (and would prune their snapshots) must
/// refuse this database. Cycles that ended before it recorded no set:
/// there is nothing to fill in.
fn v5_snapshot_sets(_conn: &Connection) -> rusqlite::Result<()> {
    Ok(())
}

/// Version 6: whole-cluster restores (`cluster_restores`,
/// `cluster_restore_nodes`), from [`SCHEMA`]. While one is open every node
/// holds a lease at once and nothing else is granted: a coordinator that
/// predates them would grant snapshot leases beside it, so it must refuse
/// this database.
fn v6_cluster_restores(_conn: &Connection) -> rusqlite::Result<()> {
    Ok(())
}

/// Version 7: what restores moved aside on each agent's host
/// (`brokers.moved_aside`, JSON from the agent's polls), for `status`
/// and `/metrics`.
fn v7_moved_aside(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "brokers", "moved_aside")
}

/// Version 8: whether a verification read the contents or only the
/// stored bytes of an encrypted archive (`snapshots.verify_contents`).
/// Verifications recorded before are left unknown.
fn v8_verify_contents(conn: &Connection) -> rusqlite::Result<()> {
    add_typed_column(conn, "snapshots", "verify_contents", "INTEGER")
}

fn add_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<()> {
    add_typed_column(conn, table, column, "TEXT")
}

fn add_typed_column(
    conn: &Connection,
    table: &str,
    column: &str,
    kind: &str,
) -> rusqlite::Result<()> {
    let present: bool = conn.query_row(
        &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?"),
        [column],
        |r| r.get(0),
    )?;
    if !present {
        conn.execute(
            &format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"),
            [],
        )?;
    }
    Ok(())
}

pub fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut conn = Connection::open(path).map_err(|e| db_err(path, e))?;
    init(&mut conn, path)?;
    Ok(conn)
}

#[cfg(test)]
pub fn open_in_memory() -> Connection {
    let mut conn = Connection::open_in_memory().expect("in-memory database");
    init(&mut conn, Path::new(":memory:")).expect("schema");
    conn
}

fn init(conn: &mut Connection, path: &Path) -> Result<()> {
    let fail = |e| db_err(path, e);
    // WAL + FULL: a committed transaction survives a crash or power cut.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    let fresh: bool = tx
        .query_row(
            "SELECT count(*) = 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )
        .map_err(fail)?;
    tx.execute_batch(SCHEMA).map_err(fail)?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(fail)?;
    // A new database gets the whole schema at once; one written before
    // versions were recorded is version 1.
    let version = match stored {
        None if fresh => SCHEMA_VERSION,
        None => 1,
        Some(v) => v.parse::<u32>().map_err(|_| Error::Config {
            file: path.to_path_buf(),
            message: format!("schema_version {v:?} is not a number: not a coordinator database"),
        })?,
    };
    if version > SCHEMA_VERSION {
        return Err(Error::Config {
            file: path.to_path_buf(),
            message: format!(
                "the database is of schema version {version}, written by a newer coordinator; \
                 this one knows versions up to {SCHEMA_VERSION}: run the newer coordinator"
            ),
        });
    }
    for (to, step) in MIGRATIONS {
        if *to > version {
            step(&tx).map_err(fail)?;
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
        [SCHEMA_VERSION.to_string()],
    )
    .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(())
}

/// The database could not be opened, read or written (missing directory
/// permissions, a full disk, locked by another process): nothing about
/// the state is known to be wrong, so it is "unavailable".
pub fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::unavailable(format!("database {}", path.display()), e)
}

/// A time as the database stores it.
pub fn ts(t: Now) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time the database stored ([`ts`]); the epoch if it is not one.
pub fn parse_ts(s: &str) -> Now {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A state column: stored by name, read back into its type.
pub struct Stored<T>(pub T);

impl<T: std::str::FromStr<Err = crate::state::UnknownState>> FromSql for Stored<T> {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = v.as_str()?;
        s.parse()
            .map(Stored)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Read a state column.
pub fn state<T: std::str::FromStr<Err = crate::state::UnknownState>>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    r.get::<_, Stored<T>>(i).map(|s| s.0)
}

/// The names of every state of a machine that `pred` holds for, as a
/// JSON array: `state IN (SELECT value FROM json_each(?))` then selects
/// rows by the same predicate the state machine defines, so the SQL cannot
/// drift from it.
pub fn names_where<T: Copy + std::fmt::Display>(all: &[T], pred: impl Fn(T) -> bool) -> String {
    let names: Vec<String> = all
        .iter()
        .filter(|s| pred(**s))
        .map(|s| s.to_string())
        .collect();
    serde_json::to_string(&names).unwrap_or_else(|_| "[]".to_string())
}

/// Write a state column.
pub struct Name(pub &'static str);

impl ToSql for Name {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // What the first release created: no holder columns, version
            // 1, and a copy of max_attempts in meta.
            let conn = Connection::open(&path).unwrap();
            let v1 = SCHEMA
                .replace(
                    "    holder_instance TEXT,\n    holder_host TEXT,\n    abort_requested TEXT\n",
                    "",
                )
                .replace("    ended_at TEXT,\n", "    ended_at TEXT\n")
                .replace("    seen_at TEXT,\n    clock_skew_ms INTEGER,\n", "");
            conn.execute_batch(&v1).unwrap();
            conn.execute_batch(
                "INSERT INTO meta VALUES ('schema_version', '1'), ('max_attempts', '3');
                 INSERT INTO leases(broker, kind, state, granted_at, expires_at)
                 VALUES (1, 'snapshot', 'released', 't', 't');",
            )
            .unwrap();
            let cols: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('leases') WHERE name LIKE 'holder%'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(cols, 0, "the fixture is a version 1 schema");
        }
        let conn = open(&path).unwrap();
        let meta = |k: &str| -> Option<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?", [k], |r| r.get(0))
                .optional()
                .unwrap()
        };
        assert_eq!(meta("schema_version"), Some(SCHEMA_VERSION.to_string()));
        assert_eq!(meta("max_attempts"), None);
        let (n, holder): (i64, Option<String>) = conn
            .query_row(
                "SELECT count(*), max(holder_instance) FROM leases",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, holder), (1, None));
        drop(conn);
        // Opening again changes nothing.
        let conn = open(&path).unwrap();
        let v: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION.to_string());
    }

    #[test]
    fn a_version_3_catalog_gets_seen_times_no_later_than_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            let v3 = SCHEMA.replace("    seen_at TEXT,\n    clock_skew_ms INTEGER,\n", "");
            assert_ne!(v3, SCHEMA);
            conn.execute_batch(&v3).unwrap();
            conn.execute_batch(
                "INSERT INTO meta VALUES ('schema_version', '3');
                 INSERT INTO snapshots(snapshot_id, cluster_id, broker, host, committed, capture,
                    clean_shutdown, files, data_bytes, archive_bytes, archive_sha256,
                    manifest_sha256, source)
                 VALUES ('past', 'c', 1, 'h', '2020-01-01T00:00:00.000Z', 'copy', 1, 1, 1, 1,
                    'a', 'm', 'agent'),
                    ('future', 'c', 1, 'h', '2100-01-01T00:00:00.000Z', 'copy', 1, 1, 1, 1,
                    'a', 'm', 'agent');",
            )
            .unwrap();
        }
        let before = Utc::now();
        let conn = open(&path).unwrap();
        let row = |id: &str| -> (String, Option<i64>) {
            conn.query_row(
                "SELECT seen_at, clock_skew_ms FROM snapshots WHERE snapshot_id = ?",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(row("past"), ("2020-01-01T00:00:00.000Z".to_string(), None));
        let (seen, skew) = row("future");
        let seen = parse_ts(&seen);
        assert!(
            seen >= before - chrono::Duration::seconds(1) && seen <= Utc::now(),
            "{seen}"
        );
        let want = (parse_ts("2100-01-01T00:00:00.000Z") - seen).num_milliseconds();
        assert!(
            skew.is_some_and(|s| (s - want).abs() < 5),
            "{skew:?} vs {want}"
        );
    }

    #[test]
    fn a_database_of_a_newer_coordinator_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE meta SET value = '9' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let e = open(&path).unwrap_err().to_string();
        assert!(
            e.contains("state.db") && e.contains("schema version 9") && e.contains("newer"),
            "{e}"
        );
    }
}
