//! The catalog: every committed snapshot the coordinator knows of, with its
//! verification. Deletion is a mark (`deleted_at`), so a snapshot taken out
//! of the catalog can be put back.

use super::{ts, Now};
use kafka_snapshot_model::api::SnapshotRow;
use kafka_snapshot_model::protocol::SnapshotSummary;
use rusqlite::{params, Connection, OptionalExtension};

/// Which snapshot: the catalog's key.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub cluster_id: &'a str,
    pub broker: i32,
    pub snapshot_id: &'a str,
}

/// Into the catalog (again, if it was deleted from it).
pub fn upsert(c: &Connection, s: &SnapshotSummary, source: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO snapshots(snapshot_id, cluster_id, broker, host, committed, capture,
            clean_shutdown, downtime_ms, files, data_bytes, archive_bytes, archive_sha256,
            manifest_sha256, source)
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
         ON CONFLICT(cluster_id, broker, snapshot_id) DO UPDATE SET deleted_at = NULL",
        params![
            s.snapshot_id,
            s.cluster_id,
            s.broker,
            s.host,
            ts(s.committed),
            s.capture,
            s.clean_shutdown,
            s.downtime_ms.map(|d| d as i64),
            s.files as i64,
            s.data_bytes as i64,
            s.archive_bytes as i64,
            s.archive_sha256,
            s.manifest_sha256,
            source
        ],
    )?;
    Ok(())
}

/// A listed snapshot chosen for a restore: (snapshot_id, cluster_id,
/// broker, verify_ok).
pub type Chosen = (String, String, i32, Option<bool>);

/// The listed snapshot with this id.
pub fn find(c: &Connection, snapshot_id: &str) -> rusqlite::Result<Option<Chosen>> {
    c.query_row(
        "SELECT snapshot_id, cluster_id, broker, verify_ok FROM snapshots
         WHERE snapshot_id = ? AND deleted_at IS NULL",
        [snapshot_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
}

/// The newest listed snapshot of `broker` not known to be bad.
pub fn newest_usable(c: &Connection, broker: i32) -> rusqlite::Result<Option<Chosen>> {
    c.query_row(
        "SELECT snapshot_id, cluster_id, broker, verify_ok FROM snapshots
         WHERE broker = ? AND deleted_at IS NULL AND coalesce(verify_ok, 1) = 1
         ORDER BY committed DESC, snapshot_id DESC LIMIT 1",
        [broker],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
}

/// Listed snapshots, of every broker or one, by broker and time.
pub fn list(c: &Connection, broker: Option<i32>) -> rusqlite::Result<Vec<SnapshotRow>> {
    let mut st = c.prepare(
        "SELECT snapshot_id, cluster_id, broker, host, committed, capture, clean_shutdown,
            downtime_ms, files, data_bytes, archive_bytes, archive_sha256, manifest_sha256,
            verified_at, verify_ok, verify_message, source
         FROM snapshots WHERE deleted_at IS NULL AND (?1 IS NULL OR broker = ?1)
         ORDER BY broker, committed, snapshot_id",
    )?;
    let rows = st.query_map([broker], |r| {
        Ok(SnapshotRow {
            snapshot_id: r.get(0)?,
            cluster_id: r.get(1)?,
            broker: r.get(2)?,
            host: r.get(3)?,
            committed: r.get(4)?,
            capture: r.get(5)?,
            clean_shutdown: r.get(6)?,
            downtime_ms: r.get(7)?,
            files: r.get(8)?,
            data_bytes: r.get(9)?,
            archive_bytes: r.get(10)?,
            archive_sha256: r.get(11)?,
            manifest_sha256: r.get(12)?,
            verified_at: r.get(13)?,
            verify_ok: r.get(14)?,
            verify_message: r.get(15)?,
            source: r.get(16)?,
        })
    })?;
    rows.collect()
}

/// Whether the catalog has the snapshot and marks it deleted; `None` if it
/// never had it.
pub fn is_deleted(c: &Connection, k: Key<'_>) -> rusqlite::Result<Option<bool>> {
    c.query_row(
        "SELECT deleted_at IS NOT NULL FROM snapshots
         WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
        params![k.cluster_id, k.broker, k.snapshot_id],
        |r| r.get(0),
    )
    .optional()
}

/// Records a verification; returns whether the catalog has the snapshot.
pub fn set_verified(
    c: &Connection,
    k: Key<'_>,
    result: &Result<(), String>,
    now: Now,
) -> rusqlite::Result<bool> {
    let n = c.execute(
        "UPDATE snapshots SET verified_at = ?, verify_ok = ?, verify_message = ?
         WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
        params![
            ts(now),
            result.is_ok(),
            result.as_ref().err(),
            k.cluster_id,
            k.broker,
            k.snapshot_id
        ],
    )?;
    Ok(n > 0)
}

/// The oldest listed snapshot never verified: (cluster_id, broker, snapshot_id).
pub fn next_unverified(c: &Connection) -> rusqlite::Result<Option<(String, i32, String)>> {
    c.query_row(
        "SELECT cluster_id, broker, snapshot_id FROM snapshots
         WHERE verified_at IS NULL AND deleted_at IS NULL ORDER BY committed LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// Out of the catalog (`deleted`) or back into it.
pub fn set_deleted(c: &Connection, k: Key<'_>, deleted: Option<Now>) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE snapshots SET deleted_at = ? WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
        params![deleted.map(ts), k.cluster_id, k.broker, k.snapshot_id],
    )?;
    Ok(())
}

/// Every listed snapshot out of the catalog; returns how many there were.
pub fn delete_all(c: &Connection, now: Now) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE snapshots SET deleted_at = ? WHERE deleted_at IS NULL",
        [ts(now)],
    )
}

/// The newest listed snapshot of a broker, as `status` shows it, and how
/// many it has.
#[derive(Debug, Clone)]
pub struct Newest {
    pub snapshot_id: String,
    pub committed: String,
    pub archive_bytes: i64,
    pub downtime_ms: Option<i64>,
    pub verify_ok: Option<bool>,
}

pub fn newest(c: &Connection, broker: i32) -> rusqlite::Result<Option<Newest>> {
    c.query_row(
        "SELECT snapshot_id, committed, archive_bytes, downtime_ms, verify_ok FROM snapshots
         WHERE broker = ? AND deleted_at IS NULL ORDER BY committed DESC LIMIT 1",
        [broker],
        |r| {
            Ok(Newest {
                snapshot_id: r.get(0)?,
                committed: r.get(1)?,
                archive_bytes: r.get(2)?,
                downtime_ms: r.get(3)?,
                verify_ok: r.get(4)?,
            })
        },
    )
    .optional()
}

pub fn count(c: &Connection, broker: i32) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT count(*) FROM snapshots WHERE broker = ? AND deleted_at IS NULL",
        [broker],
        |r| r.get(0),
    )
}

/// Per broker, the listed snapshots never verified: (broker, how many, the
/// commit time of the oldest).
pub fn unverified(c: &Connection) -> rusqlite::Result<Vec<(i32, i64, String)>> {
    let mut st = c.prepare(
        "SELECT broker, count(*), min(committed) FROM snapshots
         WHERE verified_at IS NULL AND deleted_at IS NULL GROUP BY broker ORDER BY broker",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}
