//! The catalog: every committed snapshot the coordinator knows of, with its
//! verification. Deletion is a mark (`deleted_at`), so a snapshot taken out
//! of the catalog can be put back.
//!
//! Everything that lists, picks or counts takes the coordinator's own
//! cluster.id: a store shared by two clusters, or a catalog rebuilt before
//! that rule, may hold rows of another cluster, and those are never
//! listed, kept, deleted nor restored by this coordinator. `None` (the
//! coordinator does not know its cluster yet) matches nothing.
//!
//! Order and age come from `seen_at`, the coordinator's own clock when it
//! learned of the snapshot, never from the agent's `committed`: a broker
//! host with a wrong clock must not decide which snapshot is the newest.

use super::{names_where, ts, Now};
use crate::state::{ClusterRestoreState, RestoreState};
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

/// When the coordinator learned of a snapshot, by its own clock, and how
/// far the agent's `committed` time is from it (`committed - seen`), when
/// known.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Now,
    pub skew_ms: Option<i64>,
}

impl Seen {
    /// An agent's report that arrived at `now`: the snapshot was committed
    /// just before, so the whole difference is the agent's clock (or a
    /// report held back while the coordinator was unreachable).
    pub fn reported(committed: Now, now: Now) -> Seen {
        Seen {
            at: now,
            skew_ms: Some((committed - now).num_milliseconds()),
        }
    }

    /// A snapshot found in cold storage at `now` (a rebuild) that the
    /// catalog did not have. The coordinator never saw it being made: the
    /// best it honestly knows is that it existed by `now`, so it counts as
    /// seen at its `committed` time, but never later than `now`. A commit
    /// time in the future is a known skew; one in the past may be wrong
    /// too, but nothing here can tell.
    pub fn found(committed: Now, now: Now) -> Seen {
        Seen {
            at: committed.min(now),
            skew_ms: (committed > now).then(|| (committed - now).num_milliseconds()),
        }
    }
}

/// Into the catalog (again, if it was deleted from it). A snapshot the
/// catalog had keeps the time it was first seen.
pub fn upsert(
    c: &Connection,
    s: &SnapshotSummary,
    source: &str,
    seen: Seen,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO snapshots(snapshot_id, cluster_id, broker, host, committed, capture,
            clean_shutdown, downtime_ms, files, data_bytes, archive_bytes, archive_sha256,
            manifest_sha256, source, seen_at, clock_skew_ms)
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
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
            source,
            ts(seen.at),
            seen.skew_ms,
        ],
    )?;
    Ok(())
}

/// A listed snapshot chosen for a restore: (snapshot_id, cluster_id,
/// broker, verify_ok).
pub type Chosen = (String, String, i32, Option<bool>);

/// The listed snapshot of `cluster` with this id.
pub fn find(
    c: &Connection,
    cluster: Option<&str>,
    snapshot_id: &str,
) -> rusqlite::Result<Option<Chosen>> {
    c.query_row(
        "SELECT snapshot_id, cluster_id, broker, verify_ok FROM snapshots
         WHERE cluster_id = ? AND snapshot_id = ? AND deleted_at IS NULL",
        params![cluster, snapshot_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
}

/// The newest listed snapshot of `broker` of `cluster` not known to be
/// bad, newest as the coordinator saw them.
pub fn newest_usable(
    c: &Connection,
    cluster: Option<&str>,
    broker: i32,
) -> rusqlite::Result<Option<Chosen>> {
    c.query_row(
        "SELECT snapshot_id, cluster_id, broker, verify_ok FROM snapshots
         WHERE cluster_id = ? AND broker = ? AND deleted_at IS NULL
            AND coalesce(verify_ok, 1) = 1
         ORDER BY coalesce(seen_at, committed) DESC, snapshot_id DESC LIMIT 1",
        params![cluster, broker],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
}

/// Listed snapshots of `cluster`, of every broker or one, by broker and
/// the time the coordinator saw them.
pub fn list(
    c: &Connection,
    cluster: Option<&str>,
    broker: Option<i32>,
) -> rusqlite::Result<Vec<SnapshotRow>> {
    let mut st = c.prepare(
        "SELECT snapshot_id, cluster_id, broker, host, committed, capture, clean_shutdown,
            downtime_ms, files, data_bytes, archive_bytes, archive_sha256, manifest_sha256,
            verified_at, verify_ok, verify_message, source, coalesce(seen_at, committed),
            clock_skew_ms, verify_contents
         FROM snapshots
         WHERE cluster_id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR broker = ?2)
         ORDER BY broker, coalesce(seen_at, committed), snapshot_id",
    )?;
    let rows = st.query_map(params![cluster, broker], |r| {
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
            seen_at: r.get(17)?,
            clock_skew_ms: r.get(18)?,
            verified_contents: r.get(19)?,
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
    result: &Result<Option<bool>, String>,
    now: Now,
) -> rusqlite::Result<bool> {
    let n = c.execute(
        "UPDATE snapshots SET verified_at = ?, verify_ok = ?, verify_message = ?,
            verify_contents = ?
         WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
        params![
            ts(now),
            result.is_ok(),
            result.as_ref().err(),
            result.as_ref().ok().copied().flatten(),
            k.cluster_id,
            k.broker,
            k.snapshot_id
        ],
    )?;
    Ok(n > 0)
}

/// The oldest listed snapshot of `cluster` never verified: (cluster_id,
/// broker, snapshot_id).
pub fn next_unverified(
    c: &Connection,
    cluster: Option<&str>,
) -> rusqlite::Result<Option<(String, i32, String)>> {
    c.query_row(
        "SELECT cluster_id, broker, snapshot_id FROM snapshots
         WHERE cluster_id = ? AND verified_at IS NULL AND deleted_at IS NULL
         ORDER BY coalesce(seen_at, committed) LIMIT 1",
        [cluster],
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
    /// When the coordinator saw it (its own clock).
    pub seen_at: String,
    pub archive_bytes: i64,
    pub downtime_ms: Option<i64>,
    pub verify_ok: Option<bool>,
}

pub fn newest(
    c: &Connection,
    cluster: Option<&str>,
    broker: i32,
) -> rusqlite::Result<Option<Newest>> {
    c.query_row(
        "SELECT snapshot_id, committed, archive_bytes, downtime_ms, verify_ok,
            coalesce(seen_at, committed)
         FROM snapshots WHERE cluster_id = ? AND broker = ? AND deleted_at IS NULL
         ORDER BY coalesce(seen_at, committed) DESC, snapshot_id DESC LIMIT 1",
        params![cluster, broker],
        |r| {
            Ok(Newest {
                snapshot_id: r.get(0)?,
                committed: r.get(1)?,
                archive_bytes: r.get(2)?,
                downtime_ms: r.get(3)?,
                verify_ok: r.get(4)?,
                seen_at: r.get(5)?,
            })
        },
    )
    .optional()
}

pub fn count(c: &Connection, cluster: Option<&str>, broker: i32) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT count(*) FROM snapshots WHERE cluster_id = ? AND broker = ? AND deleted_at IS NULL",
        params![cluster, broker],
        |r| r.get(0),
    )
}

/// Listed snapshots of `broker` whose agent's commit time is further than
/// `limit_ms` from when the coordinator saw them.
pub fn skewed(
    c: &Connection,
    cluster: Option<&str>,
    broker: i32,
    limit_ms: i64,
) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT count(*) FROM snapshots WHERE cluster_id = ? AND broker = ?
            AND deleted_at IS NULL AND abs(clock_skew_ms) > ?",
        params![cluster, broker, limit_ms],
        |r| r.get(0),
    )
}

/// Per broker, the listed snapshots of `cluster` never verified: (broker,
/// how many, when the coordinator saw the oldest).
pub fn unverified(
    c: &Connection,
    cluster: Option<&str>,
) -> rusqlite::Result<Vec<(i32, i64, String)>> {
    let mut st = c.prepare(
        "SELECT broker, count(*), min(coalesce(seen_at, committed)) FROM snapshots
         WHERE cluster_id = ? AND verified_at IS NULL AND deleted_at IS NULL
         GROUP BY broker ORDER BY broker",
    )?;
    let rows = st.query_map([cluster], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Snapshots of `cluster` named by a restore order that is not over
/// (pending or running), of one broker or of the whole cluster: (which
/// order, snapshot's broker, snapshot id). A
/// forced restore may read another broker's snapshot: the order's broker
/// is not the snapshot's, so the snapshot is found by its id.
pub fn read_by_open_restores(
    c: &Connection,
    cluster: Option<&str>,
) -> rusqlite::Result<Vec<(String, i32, String)>> {
    let open = names_where(RestoreState::ALL, RestoreState::is_open);
    let open_cluster = names_where(ClusterRestoreState::ALL, ClusterRestoreState::is_open);
    let mut st = c.prepare(
        "SELECT 'restore order ' || r.id, s.broker, s.snapshot_id FROM restores r
         JOIN snapshots s ON s.cluster_id = r.cluster_id AND s.snapshot_id = r.snapshot_id
         WHERE r.cluster_id = ?1 AND r.state IN (SELECT value FROM json_each(?2))
         UNION ALL
         SELECT 'cluster restore order ' || o.id, n.node, n.snapshot_id FROM cluster_restores o
         JOIN cluster_restore_nodes n ON n.order_id = o.id
         WHERE o.cluster_id = ?1 AND o.state IN (SELECT value FROM json_each(?3))",
    )?;
    let rows = st.query_map(params![cluster, open, open_cluster], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}
