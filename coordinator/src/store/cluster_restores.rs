//! Whole-cluster restore orders and where each of their nodes stands.

use super::{names_where, state, ts, Name, Now};
use crate::state::{ClusterNodeState, ClusterRestoreState};
use kafka_snapshot_model::api::{ClusterRestoreNodeView, ClusterRestoreView};
use kafka_snapshot_model::protocol::{ClusterRestoreOrder, NodeRole};
use rusqlite::{params, Connection, OptionalExtension};

/// A node of an order, as the engine decides with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: i32,
    pub role: NodeRole,
    pub snapshot_id: String,
    pub state: ClusterNodeState,
    pub epoch: Option<i64>,
}

/// The open (running or recovering) order, with its state.
pub fn open(c: &Connection) -> rusqlite::Result<Option<(i64, ClusterRestoreState)>> {
    c.query_row(
        "SELECT id, state FROM cluster_restores WHERE state IN (SELECT value FROM json_each(?))
         ORDER BY id LIMIT 1",
        [names_where(
            ClusterRestoreState::ALL,
            ClusterRestoreState::is_open,
        )],
        |r| Ok((r.get(0)?, state(r, 1)?)),
    )
    .optional()
}

pub fn latest(c: &Connection) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT id FROM cluster_restores ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

pub fn state_of(c: &Connection, id: i64) -> rusqlite::Result<Option<ClusterRestoreState>> {
    c.query_row(
        "SELECT state FROM cluster_restores WHERE id = ?",
        [id],
        |r| state(r, 0),
    )
    .optional()
}

pub fn insert(
    c: &Connection,
    set_id: &str,
    cluster_id: &str,
    force: bool,
    nodes: &[(i32, NodeRole, String)],
    now: Now,
) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO cluster_restores(set_id, cluster_id, force, state, created_at, updated_at)
         VALUES (?,?,?,?,?,?)",
        params![
            set_id,
            cluster_id,
            force,
            Name(ClusterRestoreState::Running.as_str()),
            ts(now),
            ts(now)
        ],
    )?;
    let id = c.last_insert_rowid();
    for (node, role, snapshot_id) in nodes {
        c.execute(
            "INSERT INTO cluster_restore_nodes(order_id, node, role, snapshot_id, state,
                progress, updated_at)
             VALUES (?,?,?,?,?, 'waiting for its agent to poll', ?)",
            params![
                id,
                node,
                role.as_str(),
                snapshot_id,
                Name(ClusterNodeState::Waiting.as_str()),
                ts(now)
            ],
        )?;
    }
    Ok(id)
}

pub fn nodes(c: &Connection, id: i64) -> rusqlite::Result<Vec<NodeRow>> {
    let mut st = c.prepare(
        "SELECT node, role, snapshot_id, state, epoch FROM cluster_restore_nodes
         WHERE order_id = ? ORDER BY node",
    )?;
    let rows = st.query_map([id], |r| {
        let role: String = r.get(1)?;
        Ok(NodeRow {
            node: r.get(0)?,
            role: match role.as_str() {
                "controller" => NodeRole::Controller,
                "combined" => NodeRole::Combined,
                _ => NodeRole::Broker,
            },
            snapshot_id: r.get(2)?,
            state: state(r, 3)?,
            epoch: r.get(4)?,
        })
    })?;
    rows.collect()
}

pub fn node(c: &Connection, id: i64, node: i32) -> rusqlite::Result<Option<NodeRow>> {
    Ok(nodes(c, id)?.into_iter().find(|n| n.node == node))
}

/// Node `node` of order `id` got lease `epoch`.
pub fn node_granted(
    c: &Connection,
    id: i64,
    node: i32,
    epoch: i64,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cluster_restore_nodes SET state = ?, epoch = ?, progress = 'lease granted',
            updated_at = ? WHERE order_id = ? AND node = ?",
        params![
            Name(ClusterNodeState::Preparing.as_str()),
            epoch,
            ts(now),
            id,
            node
        ],
    )?;
    Ok(())
}

/// What a heartbeat of the node reported.
pub fn node_progress(
    c: &Connection,
    id: i64,
    node: i32,
    to: ClusterNodeState,
    phase: &str,
    progress: Option<&str>,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cluster_restore_nodes SET state = ?, phase = ?, progress = ?, updated_at = ?
         WHERE order_id = ? AND node = ?",
        params![Name(to.as_str()), phase, progress, ts(now), id, node],
    )?;
    Ok(())
}

pub fn node_finish(
    c: &Connection,
    id: i64,
    node: i32,
    to: ClusterNodeState,
    message: &str,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cluster_restore_nodes SET state = ?, message = ?, updated_at = ?
         WHERE order_id = ? AND node = ?",
        params![Name(to.as_str()), message, ts(now), id, node],
    )?;
    Ok(())
}

pub fn set_state(
    c: &Connection,
    id: i64,
    to: ClusterRestoreState,
    message: Option<&str>,
    now: Now,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cluster_restores SET state = ?, message = coalesce(?, message), updated_at = ?
         WHERE id = ?",
        params![Name(to.as_str()), message, ts(now), id],
    )?;
    Ok(())
}

/// The coordinator's last look at the cluster while recovering (the time
/// of the order's last change stays as it was).
pub fn set_progress(c: &Connection, id: i64, progress: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE cluster_restores SET progress = ? WHERE id = ?",
        params![progress, id],
    )?;
    Ok(())
}

pub fn created_at(c: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT created_at FROM cluster_restores WHERE id = ?",
        [id],
        |r| r.get(0),
    )
    .optional()
}

pub fn updated_at(c: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT updated_at FROM cluster_restores WHERE id = ?",
        [id],
        |r| r.get(0),
    )
    .optional()
}

/// What the agent of `node` is told to restore.
pub fn order(c: &Connection, id: i64, node: i32) -> rusqlite::Result<ClusterRestoreOrder> {
    c.query_row(
        "SELECT o.id, o.cluster_id, o.set_id, n.snapshot_id FROM cluster_restores o
         JOIN cluster_restore_nodes n ON n.order_id = o.id WHERE o.id = ? AND n.node = ?",
        params![id, node],
        |r| {
            Ok(ClusterRestoreOrder {
                id: r.get(0)?,
                cluster_id: r.get(1)?,
                set_id: r.get(2)?,
                snapshot_id: r.get(3)?,
            })
        },
    )
}

pub fn view(c: &Connection, id: i64) -> rusqlite::Result<Option<ClusterRestoreView>> {
    let order = c
        .query_row(
            "SELECT id, set_id, cluster_id, force, state, progress, message, created_at,
                updated_at FROM cluster_restores WHERE id = ?",
            [id],
            |r| {
                Ok(ClusterRestoreView {
                    id: r.get(0)?,
                    set_id: r.get(1)?,
                    cluster_id: r.get(2)?,
                    force: r.get(3)?,
                    state: r.get(4)?,
                    progress: r.get(5)?,
                    message: r.get(6)?,
                    created_at: r.get(7)?,
                    updated_at: r.get(8)?,
                    nodes: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut order) = order else {
        return Ok(None);
    };
    let mut st = c.prepare(
        "SELECT node, role, snapshot_id, state, phase, progress, message, epoch
         FROM cluster_restore_nodes WHERE order_id = ? ORDER BY node",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(ClusterRestoreNodeView {
            node: r.get(0)?,
            role: r.get(1)?,
            snapshot_id: r.get(2)?,
            state: r.get(3)?,
            phase: r.get(4)?,
            progress: r.get(5)?,
            message: r.get(6)?,
            epoch: r.get(7)?,
        })
    })?;
    order.nodes = rows.collect::<rusqlite::Result<_>>()?;
    Ok(Some(order))
}
