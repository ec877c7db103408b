//! Snapshot sets: for every cycle that covered every node, the snapshot
//! each node committed in it. A set is made when its cycle starts, filled
//! in from the cycle's turns as snapshots commit, closed when the cycle
//! ends, then written to cold storage (`stored_at`) by a background job.
//! Whether a set is verified is not stored: it is read from the catalog,
//! which tracks every snapshot's verification.

use super::{ts, Name, Now};
use crate::state::CycleBrokerState;
use rusqlite::{params, Connection, OptionalExtension};

/// A set as stored, with each node's snapshot and what the catalog says
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub set_id: String,
    pub cluster_id: Option<String>,
    pub cycle_id: i64,
    pub source: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub complete: bool,
    pub stored_at: Option<String>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub node: i32,
    pub snapshot_id: Option<String>,
    pub manifest_sha256: Option<String>,
    pub status: NodeStatus,
}

/// A node's snapshot, as the catalog sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Verified,
    NotVerified,
    FailedVerification,
    /// Named by the set but no longer listed (retention deleted it, or a
    /// rebuild did not find it in storage).
    NotInCatalog,
    /// Its cycle ended without a snapshot of this node.
    Missing,
    /// Its cycle still runs.
    Pending,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Verified => "verified",
            NodeStatus::NotVerified => "not verified",
            NodeStatus::FailedVerification => "failed verification",
            NodeStatus::NotInCatalog => "not in the catalog",
            NodeStatus::Missing => "missing",
            NodeStatus::Pending => "pending",
        }
    }
}

impl Set {
    /// Complete, and every snapshot of it listed and verified.
    pub fn verified(&self) -> bool {
        self.finished_at.is_some()
            && self.complete
            && self.nodes.iter().all(|n| n.status == NodeStatus::Verified)
    }
}

/// A new set for cycle `cycle`, started at `now`, over `nodes`.
pub fn insert(
    c: &Connection,
    set_id: &str,
    cycle: i64,
    nodes: &[i32],
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO sets(set_id, cycle_id, source, started_at) VALUES (?, ?, 'cycle', ?)",
        params![set_id, cycle, ts(now)],
    )?;
    for n in nodes {
        c.execute(
            "INSERT INTO set_nodes(set_id, node) VALUES (?, ?)",
            params![set_id, n],
        )?;
    }
    Ok(())
}

/// The set this coordinator's cycle `cycle` fills, while the cycle runs.
pub fn open_of_cycle(c: &Connection, cycle: i64) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT set_id FROM sets WHERE cycle_id = ? AND source = 'cycle' AND finished_at IS NULL",
        [cycle],
        |r| r.get(0),
    )
    .optional()
}

/// Each node of the set of `cycle` takes the snapshot its turn committed
/// (a turn that is `done`), with that snapshot's manifest checksum from
/// the catalog of `cluster`, which the set is of from then on.
pub fn sync_from_cycle(
    c: &Connection,
    set_id: &str,
    cycle: i64,
    cluster: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE sets SET cluster_id = coalesce(?, cluster_id) WHERE set_id = ?",
        params![cluster, set_id],
    )?;
    c.execute(
        "UPDATE set_nodes SET
            snapshot_id = (SELECT cb.snapshot_id FROM cycle_brokers cb
                WHERE cb.cycle_id = ?1 AND cb.broker = set_nodes.node AND cb.state = ?2),
            manifest_sha256 = (SELECT s.manifest_sha256 FROM cycle_brokers cb
                JOIN snapshots s ON s.broker = cb.broker AND s.snapshot_id = cb.snapshot_id
                WHERE cb.cycle_id = ?1 AND cb.broker = set_nodes.node AND cb.state = ?2
                    AND s.cluster_id = ?3)
         WHERE set_id = ?4",
        params![
            cycle,
            Name(CycleBrokerState::Done.as_str()),
            cluster,
            set_id
        ],
    )?;
    Ok(())
}

/// Closes a set when its cycle ends: of `cluster`, complete when every
/// node has its snapshot. Returns (nodes, nodes with a snapshot).
pub fn finish(
    c: &Connection,
    set_id: &str,
    cluster: Option<&str>,
    now: Now,
) -> rusqlite::Result<(i64, i64)> {
    let (nodes, with): (i64, i64) = c.query_row(
        "SELECT count(*), count(snapshot_id) FROM set_nodes WHERE set_id = ?",
        [set_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    c.execute(
        "UPDATE sets SET finished_at = ?, complete = ?, cluster_id = ? WHERE set_id = ?",
        params![ts(now), nodes > 0 && nodes == with, cluster, set_id],
    )?;
    Ok((nodes, with))
}

/// Out of the catalog (its nodes go with it).
pub fn delete(c: &Connection, set_id: &str) -> rusqlite::Result<bool> {
    Ok(c.execute("DELETE FROM sets WHERE set_id = ?", [set_id])? > 0)
}

/// Its record is in cold storage. False if the set is gone meanwhile.
pub fn set_stored(c: &Connection, set_id: &str, now: Now) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE sets SET stored_at = ? WHERE set_id = ?",
        params![ts(now), set_id],
    )? > 0)
}

/// The oldest ended set of `cluster` whose record is not in cold storage
/// yet.
pub fn next_unstored(c: &Connection, cluster: Option<&str>) -> rusqlite::Result<Option<Set>> {
    let id: Option<String> = c
        .query_row(
            "SELECT set_id FROM sets WHERE cluster_id = ? AND finished_at IS NOT NULL
                AND stored_at IS NULL ORDER BY set_id LIMIT 1",
            [cluster],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => get(c, &id),
        None => Ok(None),
    }
}

/// The sets of `cluster` (and those of a cycle still running before the
/// cluster was known), oldest first.
pub fn list(c: &Connection, cluster: Option<&str>) -> rusqlite::Result<Vec<Set>> {
    let ids: Vec<String> = {
        let mut st = c.prepare(
            "SELECT set_id FROM sets WHERE cluster_id = ?1
                OR (cluster_id IS NULL AND finished_at IS NULL) ORDER BY set_id",
        )?;
        let rows = st.query_map([cluster], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::new();
    for id in ids {
        out.extend(get(c, &id)?);
    }
    Ok(out)
}

pub fn get(c: &Connection, set_id: &str) -> rusqlite::Result<Option<Set>> {
    let set = c
        .query_row(
            "SELECT set_id, cluster_id, cycle_id, source, started_at, finished_at,
                coalesce(complete, 0), stored_at FROM sets WHERE set_id = ?",
            [set_id],
            |r| {
                Ok(Set {
                    set_id: r.get(0)?,
                    cluster_id: r.get(1)?,
                    cycle_id: r.get(2)?,
                    source: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    complete: r.get(6)?,
                    stored_at: r.get(7)?,
                    nodes: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut set) = set else {
        return Ok(None);
    };
    // A snapshot counts only if the catalog lists it with the manifest the
    // set names: the same id with another manifest is not the same data.
    let mut st = c.prepare(
        "SELECT n.node, n.snapshot_id, n.manifest_sha256, st.finished_at IS NOT NULL,
            s.snapshot_id IS NOT NULL, s.verify_ok
         FROM set_nodes n JOIN sets st ON st.set_id = n.set_id
         LEFT JOIN snapshots s ON s.cluster_id = st.cluster_id AND s.broker = n.node
            AND s.snapshot_id = n.snapshot_id AND s.deleted_at IS NULL
            AND (n.manifest_sha256 IS NULL OR s.manifest_sha256 = n.manifest_sha256)
         WHERE n.set_id = ? ORDER BY n.node",
    )?;
    let rows = st.query_map([set_id], |r| {
        let snapshot_id: Option<String> = r.get(1)?;
        let finished: bool = r.get(3)?;
        let listed: bool = r.get(4)?;
        let verify_ok: Option<bool> = r.get(5)?;
        let status = match (&snapshot_id, finished, listed, verify_ok) {
            (None, false, _, _) => NodeStatus::Pending,
            (None, true, _, _) => NodeStatus::Missing,
            (Some(_), _, false, _) => NodeStatus::NotInCatalog,
            (Some(_), _, true, Some(true)) => NodeStatus::Verified,
            (Some(_), _, true, Some(false)) => NodeStatus::FailedVerification,
            (Some(_), _, true, None) => NodeStatus::NotVerified,
        };
        Ok(Node {
            node: r.get(0)?,
            snapshot_id,
            manifest_sha256: r.get(2)?,
            status,
        })
    })?;
    set.nodes = rows.collect::<rusqlite::Result<_>>()?;
    Ok(Some(set))
}

/// A set read back from cold storage by a rebuild, as stored. A set the
/// catalog already has keeps its row (and is marked stored).
pub fn upsert_found(
    c: &Connection,
    r: &kafka_snapshot_model::sets::SetRecord,
    now: Now,
) -> rusqlite::Result<()> {
    let inserted = c.execute(
        "INSERT OR IGNORE INTO sets(set_id, cluster_id, cycle_id, source, started_at,
            finished_at, complete, stored_at)
         VALUES (?, ?, ?, 'rebuild', ?, ?, ?, ?)",
        params![
            r.set_id,
            r.cluster_id,
            r.cycle_id,
            ts(r.started_at),
            ts(r.finished_at),
            r.complete,
            ts(now)
        ],
    )?;
    if inserted == 0 {
        c.execute(
            "UPDATE sets SET stored_at = coalesce(stored_at, ?) WHERE set_id = ?",
            params![ts(now), r.set_id],
        )?;
        return Ok(());
    }
    for n in &r.nodes {
        c.execute(
            "INSERT INTO set_nodes(set_id, node, snapshot_id, manifest_sha256)
             VALUES (?, ?, ?, ?)",
            params![r.set_id, n.node, n.snapshot_id, n.manifest_sha256],
        )?;
    }
    Ok(())
}

/// After a rebuild: the sets of `cluster` recorded as stored whose record
/// cold storage no longer holds (`found` lists those it does) leave the
/// catalog; sets not stored yet stay (their record is still to be
/// written). Returns how many left.
pub fn drop_stored_except(
    c: &Connection,
    cluster: &str,
    found: &[String],
) -> rusqlite::Result<usize> {
    let keep = serde_json::to_string(found).unwrap_or_else(|_| "[]".into());
    c.execute(
        "DELETE FROM sets WHERE cluster_id = ? AND stored_at IS NOT NULL
            AND set_id NOT IN (SELECT value FROM json_each(?))",
        params![cluster, keep],
    )
}
