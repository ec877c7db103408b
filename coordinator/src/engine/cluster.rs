//! Whole-cluster restores: an operator declared the cluster lost (or its
//! data corrupted) and orders every node restored from one snapshot set.
//!
//! This is the one time the tool takes more than one node down, on
//! purpose: every node of the set gets a lease of kind `cluster_restore` at
//! once. What keeps it safe is the order of steps ([`state::cluster_go`]):
//! every node downloads and verifies its snapshot beside its log dirs
//! first, with nothing stopped, so a node that cannot (no snapshot, a host
//! with another number of log dirs, a storage error) fails the order with
//! every node untouched; then every node stops and swaps (current data
//! moved aside); then the controllers start, and the brokers once every
//! controller saw the quorum elect a leader; last the coordinator waits
//! until every partition has a leader and the cluster is in sync.
//!
//! A node that fails fails the order: nodes without a lease are never
//! touched, and every other lease is aborted (its agent starts its node
//! again on whatever data is in place and says so).

use super::{ApiError, ApiResult, Ctx, Engine};
use crate::state::{
    self, ClusterNodeState, ClusterRestoreState, EventLevel, LeaseKind, LeaseState,
};
use crate::store::{cluster_restores, cycles, leases, parse_ts, restores, sets, Now};
use kafka_snapshot_model::api::ClusterRestoreView;
use kafka_snapshot_model::protocol::{Action, ClusterGo, Heartbeat, PollRequest};

impl Engine {
    /// Orders a restore of every node from set `set_id` (the newest
    /// complete, verified set of this cluster by default). `serving` is
    /// what the coordinator saw if the cluster answers and serves clients:
    /// refused then, unless `force` (which also allows a set not verified).
    pub fn create_cluster_restore(
        &mut self,
        set_id: Option<&str>,
        force: bool,
        serving: Option<String>,
        now: Now,
    ) -> ApiResult<ClusterRestoreView> {
        let cx = self.begin(now)?;
        if let Some((id, st)) = cluster_restores::open(&cx.tx)? {
            return Err(ApiError::Conflict(format!(
                "cluster restore order {id} is still {st}"
            )));
        }
        if restores::any_open(&cx.tx)? {
            return Err(ApiError::Conflict(
                "a restore order of a single broker is still open: let it end or cancel it \
                 (`coordinator cancel --restore ID`)"
                    .into(),
            ));
        }
        if let Some((cycle, st)) = cycles::open(&cx.tx)? {
            return Err(ApiError::Conflict(format!(
                "cycle {cycle} is {st}: cancel it first (`coordinator cancel --cycle`)"
            )));
        }
        if let Some(l) = leases::slot(&cx.tx)?.filter(|l| l.state == LeaseState::Active) {
            return Err(ApiError::Conflict(format!(
                "lease {} of node {} ({}) is held: wait until it ends",
                l.epoch, l.broker, l.kind
            )));
        }
        let Some(cluster) = cx.cluster()? else {
            return Err(ApiError::Unavailable(
                "this coordinator does not know its cluster.id (it never reached the cluster, \
                 and the config sets no [cluster] id): set [cluster] id to the id of the lost \
                 cluster"
                    .into(),
            ));
        };
        let set = cx.set_to_restore(&cluster, set_id, force)?;
        let configured = cx.cfg.nodes();
        let in_set: Vec<i32> = set.nodes.iter().map(|n| n.node).collect();
        let unconfigured: Vec<i32> = in_set
            .iter()
            .copied()
            .filter(|n| !configured.contains(n))
            .collect();
        let outside: Vec<i32> = configured
            .iter()
            .copied()
            .filter(|n| !in_set.contains(n))
            .collect();
        if !unconfigured.is_empty() || !outside.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "set {} holds nodes {in_set:?} but the coordinator's [[agents]] are {configured:?}{}{}: \
                 a whole-cluster restore restores exactly the nodes of the set, each by its agent",
                set.set_id,
                if unconfigured.is_empty() {
                    String::new()
                } else {
                    format!("; no agent is configured for {unconfigured:?}")
                },
                if outside.is_empty() {
                    String::new()
                } else {
                    format!("; {outside:?} are not in the set (nodes added after it?)")
                },
            )));
        }
        if let Some(what) = &serving {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "the cluster is serving clients ({what}): a whole-cluster restore stops every \
                     node and brings back the data of set {}; for a cluster that is lost or \
                     corrupted. Stop it first, or use --force",
                    set.set_id
                )));
            }
        }
        // A lease left settling by a cluster that went down will never see
        // it back in sync: the operator's order takes over from it.
        while let Some(l) = leases::slot(&cx.tx)?.filter(|l| l.state == LeaseState::Settling) {
            leases::set_state(&cx.tx, l.epoch, LeaseState::Cleared)?;
            cx.event(
                EventLevel::Warning,
                Some(l.broker),
                Some(l.epoch),
                "slot_free",
                &format!(
                    "lease {} of node {} no longer waits for the cluster: a whole-cluster \
                     restore was ordered",
                    l.epoch, l.broker
                ),
            )?;
        }
        let nodes: Vec<(i32, _, String)> = set
            .nodes
            .iter()
            .map(|n| {
                (
                    n.node,
                    cx.cfg.role_of(n.node).unwrap_or_default(),
                    n.snapshot_id.clone().unwrap_or_default(),
                )
            })
            .collect();
        let id = cluster_restores::insert(&cx.tx, &set.set_id, &cluster, force, &nodes, now)?;
        cx.event(
            EventLevel::Warning,
            None,
            None,
            "cluster_restore_ordered",
            &format!(
                "cluster restore order {id}: every node ({in_set:?}) of cluster {cluster} from \
                 set {}{}{}",
                set.set_id,
                if force { " (forced)" } else { "" },
                serving
                    .map(|s| format!("; the cluster was serving: {s}"))
                    .unwrap_or_default()
            ),
        )?;
        cx.commit()?;
        self.cluster_restore(id)
    }

    pub fn cluster_restore(&self, id: i64) -> ApiResult<ClusterRestoreView> {
        cluster_restores::view(&self.conn, id)?
            .ok_or_else(|| ApiError::NotFound(format!("cluster restore order {id} does not exist")))
    }

    /// The newest cluster restore order, for `status`.
    pub fn latest_cluster_restore(&self) -> ApiResult<Option<ClusterRestoreView>> {
        match cluster_restores::latest(&self.conn)? {
            Some(id) => Ok(cluster_restores::view(&self.conn, id)?),
            None => Ok(None),
        }
    }

    /// Cancels cluster restore order `id`: nodes without a lease are never
    /// touched; every lease is aborted (its agent stops at its next safe
    /// point and starts its node again if it had stopped it).
    pub fn cancel_cluster_restore(&mut self, id: i64, now: Now) -> ApiResult<ClusterRestoreView> {
        let cx = self.begin(now)?;
        let Some(st) = cluster_restores::state_of(&cx.tx, id)? else {
            return Err(ApiError::NotFound(format!(
                "cluster restore order {id} does not exist"
            )));
        };
        if !st.is_open() {
            return Err(ApiError::Conflict(format!(
                "cluster restore order {id} already ended ({st})"
            )));
        }
        cx.end_cluster_restore(
            id,
            ClusterRestoreState::Cancelled,
            "cancelled by an operator",
        )?;
        cx.commit()?;
        self.cluster_restore(id)
    }
}

impl Ctx<'_> {
    /// The set a whole-cluster restore uses: `set_id`, or the newest
    /// complete, verified one of `cluster`. Every node of it must still
    /// have its snapshot listed; verified unless `force`.
    fn set_to_restore(
        &self,
        cluster: &str,
        set_id: Option<&str>,
        force: bool,
    ) -> ApiResult<sets::Set> {
        let set = match set_id {
            Some(id) => sets::get(&self.tx, id)?
                .filter(|s| s.cluster_id.as_deref() == Some(cluster))
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "set {id} is not a set of cluster {cluster} in the catalog (`snapshots \
                         --sets` lists them; `catalog rebuild` reads them back from storage)"
                    ))
                })?,
            None => sets::list(&self.tx, Some(cluster))?
                .into_iter()
                .rev()
                .find(|s| s.verified())
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "cluster {cluster} has no complete, verified snapshot set (`snapshots \
                         --sets` lists them; name one with --set)"
                    ))
                })?,
        };
        if set.finished_at.is_none() {
            return Err(ApiError::Conflict(format!(
                "set {} is still being taken (its cycle runs)",
                set.set_id
            )));
        }
        let unusable: Vec<String> = set
            .nodes
            .iter()
            .filter(|n| {
                !matches!(
                    n.status,
                    sets::NodeStatus::Verified | sets::NodeStatus::NotVerified
                ) || n.snapshot_id.is_none()
            })
            .map(|n| format!("node {}: {}", n.node, n.status.as_str()))
            .collect();
        if !set.complete || !unusable.is_empty() {
            return Err(ApiError::Conflict(format!(
                "set {} cannot restore the cluster: {}",
                set.set_id,
                if unusable.is_empty() {
                    "it is not complete".to_string()
                } else {
                    unusable.join(", ")
                }
            )));
        }
        let unverified: Vec<i32> = set
            .nodes
            .iter()
            .filter(|n| n.status == sets::NodeStatus::NotVerified)
            .map(|n| n.node)
            .collect();
        if !unverified.is_empty() && !force {
            return Err(ApiError::Conflict(format!(
                "the snapshots of nodes {unverified:?} in set {} are not verified yet (`coordinator \
                 verify`), or use --force",
                set.set_id
            )));
        }
        Ok(set)
    }

    /// A poll while cluster restore `order` is open: the node's lease if it
    /// has none yet (no look at the cluster: it is lost), else nothing.
    pub(super) fn cluster_restore_poll(
        &self,
        req: &PollRequest,
        order: i64,
        st: ClusterRestoreState,
    ) -> ApiResult<Action> {
        let Some(node) = cluster_restores::node(&self.tx, order, req.broker)? else {
            return Ok(Action::Idle);
        };
        if st != ClusterRestoreState::Running || node.state != ClusterNodeState::Waiting {
            return Ok(Action::Idle);
        }
        let epoch = leases::insert(
            &self.tx,
            &leases::Grant {
                broker: req.broker,
                kind: LeaseKind::ClusterRestore,
                cycle_id: None,
                order_id: Some(order),
                expires: self.now + self.ttl(),
                holder_instance: req.instance.as_deref(),
                holder_host: &req.hostname,
            },
            self.now,
        )?;
        cluster_restores::node_granted(&self.tx, order, req.broker, epoch, self.now)?;
        self.event(
            EventLevel::Info,
            Some(req.broker),
            Some(epoch),
            "lease_granted",
            &format!(
                "lease {epoch} granted to node {} for its part of cluster restore order {order} \
                 (snapshot {})",
                req.broker, node.snapshot_id
            ),
        )?;
        self.lease_action(epoch)
    }

    /// A heartbeat under a cluster restore lease: records how far the node
    /// got; answers how far it may go.
    pub(super) fn cluster_heartbeat(
        &self,
        lease: &leases::LeaseRow,
        hb: &Heartbeat,
    ) -> ApiResult<Option<ClusterGo>> {
        let Some(order) = lease.order_id else {
            return Ok(None);
        };
        let nodes = cluster_restores::nodes(&self.tx, order)?;
        let Some(me) = nodes.iter().find(|n| n.node == hb.broker) else {
            return Ok(None);
        };
        let to = match hb.cluster_step {
            Some(step) => me.state.on_step(step),
            None => me.state,
        };
        cluster_restores::node_progress(
            &self.tx,
            order,
            hb.broker,
            to,
            hb.phase.as_str(),
            hb.progress.as_deref(),
            self.now,
        )?;
        if to != me.state {
            self.event(
                EventLevel::Info,
                Some(hb.broker),
                Some(lease.epoch),
                "cluster_restore_step",
                &format!("cluster restore order {order}: node {} {to}", hb.broker),
            )?;
        }
        let standing: Vec<_> = nodes
            .iter()
            .map(|n| (n.role, if n.node == hb.broker { to } else { n.state }))
            .collect();
        Ok(Some(state::cluster_go(&standing, me.role)))
    }

    /// Node `node` released its lease restored: once every node did, the
    /// order waits for the cluster to be in sync.
    pub(super) fn cluster_node_restored(
        &self,
        order: i64,
        node: i32,
        message: &str,
    ) -> ApiResult<()> {
        cluster_restores::node_finish(
            &self.tx,
            order,
            node,
            ClusterNodeState::Restored,
            message,
            self.now,
        )?;
        let nodes = cluster_restores::nodes(&self.tx, order)?;
        let st = cluster_restores::state_of(&self.tx, order)?;
        if st == Some(ClusterRestoreState::Running)
            && nodes.iter().all(|n| n.state == ClusterNodeState::Restored)
        {
            cluster_restores::set_state(
                &self.tx,
                order,
                ClusterRestoreState::Running.on_all_restored()?,
                Some("every node restored and started; waiting until every partition has a leader and the cluster is in sync"),
                self.now,
            )?;
            self.event(
                EventLevel::Info,
                None,
                None,
                "cluster_restore_step",
                &format!("cluster restore order {order}: every node restored and started"),
            )?;
        }
        Ok(())
    }

    /// Node `node` failed (its agent said so, or lost its lease): the
    /// order fails, naming it.
    pub(super) fn cluster_node_failed(&self, order: i64, node: i32, reason: &str) -> ApiResult<()> {
        if let Some(row) = cluster_restores::node(&self.tx, order, node)? {
            if row.state.is_open() {
                cluster_restores::node_finish(
                    &self.tx,
                    order,
                    node,
                    ClusterNodeState::Failed,
                    reason,
                    self.now,
                )?;
            }
        }
        if cluster_restores::state_of(&self.tx, order)?.is_some_and(|s| s.is_open()) {
            self.end_cluster_restore(
                order,
                ClusterRestoreState::Failed,
                &format!("node {node} failed: {reason}"),
            )?;
        }
        Ok(())
    }

    /// Ends open order `order` (failed or cancelled): nodes still waiting
    /// for their lease are never touched, every lease still held is
    /// aborted, and the message says what each node is left with.
    fn end_cluster_restore(&self, order: i64, to: ClusterRestoreState, why: &str) -> ApiResult<()> {
        let nodes = cluster_restores::nodes(&self.tx, order)?;
        let mut untouched = Vec::new();
        let mut aborted = Vec::new();
        for n in &nodes {
            match n.state {
                ClusterNodeState::Waiting => {
                    cluster_restores::node_finish(
                        &self.tx,
                        order,
                        n.node,
                        ClusterNodeState::Cancelled,
                        &format!("never touched: the order ended ({why})"),
                        self.now,
                    )?;
                    untouched.push(n.node);
                }
                s if s.is_open() => {
                    if let Some(l) = n
                        .epoch
                        .and_then(|e| leases::get(&self.tx, e).ok().flatten())
                        .filter(|l| l.state == LeaseState::Active)
                    {
                        self.abort_lease(
                            &l,
                            &format!("cluster restore order {order} ended: {why}"),
                        )?;
                        aborted.push(n.node);
                    }
                }
                _ => {}
            }
        }
        let restored: Vec<i32> = nodes
            .iter()
            .filter(|n| n.state == ClusterNodeState::Restored)
            .map(|n| n.node)
            .collect();
        let mut message = why.to_string();
        if !aborted.is_empty() {
            message.push_str(&format!(
                "; nodes {aborted:?} were told to abort (each stops at its next safe point: one \
                 that had not stopped its node leaves it as it was, one that had starts it again \
                 on whatever data is in place)"
            ));
        }
        if !untouched.is_empty() {
            message.push_str(&format!("; nodes {untouched:?} were never touched"));
        }
        if !restored.is_empty() {
            message.push_str(&format!("; nodes {restored:?} run on the set's data"));
        }
        message.push_str(
            "; see each node's message in `coordinator status`, \
             fix the cause, then order the whole-cluster restore again (nodes moved their \
             previous data aside, nothing was deleted)",
        );
        let from = cluster_restores::state_of(&self.tx, order)?.unwrap_or(to);
        cluster_restores::set_state(&self.tx, order, from.end(to), Some(&message), self.now)?;
        self.event(
            EventLevel::Error,
            None,
            None,
            "cluster_restore_finished",
            &format!("cluster restore order {order} {to}: {message}"),
        )?;
        Ok(())
    }

    /// The coordinator's in-sync check, for an order whose nodes are all
    /// restored: done once it passes, failed if it does not within
    /// `schedule.gate_timeout` of the last node's restore.
    pub(super) fn cluster_restore_check(&self, check: &Result<(), String>) -> ApiResult<()> {
        let Some((order, ClusterRestoreState::Recovering)) = cluster_restores::open(&self.tx)?
        else {
            return Ok(());
        };
        match check {
            Ok(()) => {
                cluster_restores::set_state(
                    &self.tx,
                    order,
                    ClusterRestoreState::Done,
                    Some("every node restored; every partition has a leader and the cluster is in sync"),
                    self.now,
                )?;
                cluster_restores::set_progress(&self.tx, order, "in sync")?;
                self.event(
                    EventLevel::Info,
                    None,
                    None,
                    "cluster_restore_finished",
                    &format!("cluster restore order {order} done: the cluster is in sync"),
                )?;
            }
            Err(e) => {
                let since = cluster_restores::updated_at(&self.tx, order)?
                    .map(|t| parse_ts(&t))
                    .unwrap_or(self.now);
                let waited = (self.now - since).to_std().unwrap_or_default();
                if waited > self.cfg.schedule.gate_timeout {
                    let message = format!(
                        "every node was restored and started, but the cluster was not in sync \
                         within schedule.gate_timeout ({}s): {e}",
                        self.cfg.schedule.gate_timeout.as_secs()
                    );
                    cluster_restores::set_state(
                        &self.tx,
                        order,
                        ClusterRestoreState::Failed,
                        Some(&message),
                        self.now,
                    )?;
                    self.event(
                        EventLevel::Error,
                        None,
                        None,
                        "cluster_restore_finished",
                        &format!("cluster restore order {order} failed: {message}"),
                    )?;
                } else {
                    cluster_restores::set_progress(&self.tx, order, &format!("waiting: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// A running order whose node's agent never came for its lease within
    /// `schedule.gate_timeout` of the order fails, naming the node: the
    /// others would wait for it forever, downloaded and verified.
    pub(super) fn cluster_restore_timeouts(&self) -> ApiResult<()> {
        let Some((order, ClusterRestoreState::Running)) = cluster_restores::open(&self.tx)? else {
            return Ok(());
        };
        let since = cluster_restores::created_at(&self.tx, order)?
            .map(|t| parse_ts(&t))
            .unwrap_or(self.now);
        let timeout = self.cfg.schedule.gate_timeout;
        if (self.now - since).to_std().unwrap_or_default() <= timeout {
            return Ok(());
        }
        let nodes = cluster_restores::nodes(&self.tx, order)?;
        if let Some(n) = nodes.iter().find(|n| n.state == ClusterNodeState::Waiting) {
            self.cluster_node_failed(
                order,
                n.node,
                &format!(
                    "its agent did not come for its part within schedule.gate_timeout ({}s) of \
                     the order: is it running, on the node's host, with this coordinator's URL \
                     and its token?",
                    timeout.as_secs()
                ),
            )?;
        }
        Ok(())
    }

    /// Whether a whole-cluster restore is open: nothing else is granted or
    /// started meanwhile.
    pub(super) fn cluster_restore_open(&self) -> ApiResult<Option<i64>> {
        Ok(cluster_restores::open(&self.tx)?.map(|(id, _)| id))
    }
}
