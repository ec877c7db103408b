//! Snapshot sets: a cycle that covers every node the coordinator has
//! agents for records the snapshot each node commits in it. The set is
//! made when the cycle starts, filled in as snapshots commit, and closed
//! when the cycle ends (done, partial, failed or cancelled); a background
//! job then writes its record to cold storage (`jobs.rs`). Retention keeps
//! every snapshot of the newest complete, verified set, and drops a set
//! once none of its snapshots is left.

use super::{ApiError, ApiResult, Ctx, Engine};
use crate::retention::KeptSet;
use crate::state::EventLevel;
use crate::store::{parse_ts, sets, Now};
use kafka_snapshot_model::api::{SetNodeView, SetView};
use kafka_snapshot_model::sets::{format_set_id, SetNode, SetRecord, SET_FORMAT_VERSION};
use std::collections::BTreeSet;

/// A set whose every snapshot is gone (or, in a dry run, would go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptySet {
    pub set_id: String,
    pub cluster_id: String,
}

/// The newest complete set whose snapshots are all listed and verified.
pub(super) fn newest_kept(all: &[sets::Set]) -> Option<&sets::Set> {
    all.iter().rev().find(|s| s.verified())
}

fn view(s: &sets::Set, kept: Option<&str>) -> SetView {
    SetView {
        set_id: s.set_id.clone(),
        cluster_id: s.cluster_id.clone(),
        cycle_id: s.cycle_id,
        started_at: s.started_at.clone(),
        finished_at: s.finished_at.clone(),
        complete: s.complete,
        verified: s.verified(),
        kept: kept == Some(s.set_id.as_str()),
        stored: s.stored_at.is_some(),
        source: s.source.clone(),
        nodes: s
            .nodes
            .iter()
            .map(|n| SetNodeView {
                node: n.node,
                snapshot_id: n.snapshot_id.clone(),
                status: n.status.as_str().to_string(),
            })
            .collect(),
    }
}

impl Ctx<'_> {
    /// Whether a cycle over `brokers` snapshots every node the coordinator
    /// has agents for, and so records a set.
    fn covers_every_node(&self, brokers: &[i32]) -> bool {
        let mut b = brokers.to_vec();
        b.sort_unstable();
        b.dedup();
        let mut all = self.cfg.nodes();
        all.sort_unstable();
        !b.is_empty() && b == all
    }

    /// A cycle just started: its set, if it covers every node.
    pub(super) fn open_set(&self, cycle: i64, brokers: &[i32]) -> ApiResult<()> {
        if !self.covers_every_node(brokers) {
            return Ok(());
        }
        let id = format_set_id(self.now, cycle);
        sets::insert(&self.tx, &id, cycle, brokers, self.now)?;
        Ok(())
    }

    /// A snapshot of `cycle` committed: its set takes it.
    pub(super) fn sync_set(&self, cycle: i64) -> ApiResult<()> {
        if let Some(id) = sets::open_of_cycle(&self.tx, cycle)? {
            sets::sync_from_cycle(&self.tx, &id, cycle, self.cluster()?.as_deref())?;
        }
        Ok(())
    }

    /// `cycle` ended: its set is closed, complete or not, and waits to be
    /// written to cold storage. A set no node committed a snapshot to says
    /// nothing the cycle's own record does not: it is not kept.
    pub(super) fn close_set(&self, cycle: i64) -> ApiResult<()> {
        let Some(id) = sets::open_of_cycle(&self.tx, cycle)? else {
            return Ok(());
        };
        let cluster = self.cluster()?;
        sets::sync_from_cycle(&self.tx, &id, cycle, cluster.as_deref())?;
        let (nodes, with) = sets::finish(&self.tx, &id, cluster.as_deref(), self.now)?;
        if with == 0 {
            sets::delete(&self.tx, &id)?;
            return Ok(());
        }
        let set = sets::get(&self.tx, &id)?
            .ok_or_else(|| ApiError::Internal(format!("set {id} vanished")))?;
        let missing: Vec<i32> = set
            .nodes
            .iter()
            .filter(|n| n.snapshot_id.is_none())
            .map(|n| n.node)
            .collect();
        let (level, what) = if missing.is_empty() {
            (EventLevel::Info, format!("complete: all {nodes} nodes"))
        } else {
            (
                EventLevel::Warning,
                format!("INCOMPLETE: {with} of {nodes} nodes, no snapshot of {missing:?}"),
            )
        };
        self.event(
            level,
            None,
            None,
            "set_recorded",
            &format!("snapshot set {id} of cycle {cycle} recorded, {what}"),
        )?;
        Ok(())
    }
}

impl Engine {
    /// The snapshot sets of this coordinator's cluster, oldest first.
    pub fn sets(&self) -> ApiResult<Vec<SetView>> {
        let cluster = self.cluster_id()?;
        let all = sets::list(&self.conn, cluster.as_deref())?;
        let kept = newest_kept(&all).map(|s| s.set_id.clone());
        Ok(all.iter().map(|s| view(s, kept.as_deref())).collect())
    }

    /// The newest complete set whose snapshots are all listed and
    /// verified: retention keeps all of them.
    pub fn kept_set(&self) -> ApiResult<Option<KeptSet>> {
        let cluster = self.cluster_id()?;
        let all = sets::list(&self.conn, cluster.as_deref())?;
        Ok(newest_kept(&all).map(|s| KeptSet {
            set_id: s.set_id.clone(),
            snapshots: s
                .nodes
                .iter()
                .filter_map(|n| n.snapshot_id.clone().map(|id| (n.node, id)))
                .collect(),
        }))
    }

    /// The ended sets none of whose snapshots is listed once the snapshots
    /// in `going` are gone too: their records are dropped (cold storage
    /// first, then the catalog).
    pub fn empty_sets(&self, going: &BTreeSet<(i32, String)>) -> ApiResult<Vec<EmptySet>> {
        let Some(cluster) = self.cluster_id()? else {
            return Ok(Vec::new());
        };
        let all = sets::list(&self.conn, Some(&cluster))?;
        Ok(all
            .into_iter()
            .filter(|s| s.finished_at.is_some())
            .filter(|s| {
                s.nodes.iter().all(|n| match &n.snapshot_id {
                    None => true,
                    Some(id) => {
                        n.status == sets::NodeStatus::NotInCatalog
                            || going.contains(&(n.node, id.clone()))
                    }
                })
            })
            .map(|s| EmptySet {
                set_id: s.set_id,
                cluster_id: cluster.clone(),
            })
            .collect())
    }

    /// The record of set `s` is gone from cold storage: the set leaves the
    /// catalog.
    pub fn set_dropped(&mut self, s: &EmptySet, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        if sets::delete(&cx.tx, &s.set_id)? {
            cx.event(
                EventLevel::Info,
                None,
                None,
                "set_dropped",
                &format!(
                    "snapshot set {} dropped: none of its snapshots is left",
                    s.set_id
                ),
            )?;
        }
        cx.commit()?;
        Ok(())
    }

    /// The next ended set whose record is still to be written to cold
    /// storage, as its record.
    pub fn next_unstored_set(&self) -> ApiResult<Option<SetRecord>> {
        let cluster = self.cluster_id()?;
        let Some(s) = sets::next_unstored(&self.conn, cluster.as_deref())? else {
            return Ok(None);
        };
        let (Some(cluster_id), Some(finished)) = (s.cluster_id.clone(), s.finished_at.clone())
        else {
            return Err(ApiError::Internal(format!(
                "set {} is to be stored but has no cluster or end",
                s.set_id
            )));
        };
        Ok(Some(SetRecord {
            format_version: SET_FORMAT_VERSION,
            set_id: s.set_id.clone(),
            cluster_id,
            cycle_id: s.cycle_id,
            started_at: parse_ts(&s.started_at),
            finished_at: parse_ts(&finished),
            complete: s.complete,
            nodes: s
                .nodes
                .iter()
                .map(|n| SetNode {
                    node: n.node,
                    snapshot_id: n.snapshot_id.clone(),
                    manifest_sha256: n.manifest_sha256.clone(),
                })
                .collect(),
            record_sha256: String::new(),
        }))
    }

    /// The record of set `set_id` is in cold storage. False if the set
    /// left the catalog meanwhile (retention dropped it): the caller
    /// deletes the record it just wrote.
    pub fn set_stored(&mut self, set_id: &str, now: Now) -> ApiResult<bool> {
        let cx = self.begin(now)?;
        let stored = sets::set_stored(&cx.tx, set_id, now)?;
        cx.commit()?;
        Ok(stored)
    }
}
