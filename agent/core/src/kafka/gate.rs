//! The pre-stop gate and the recovery check, as pure functions of a
//! [`ClusterView`]: every condition is evaluated and reported with its own
//! reason and the partitions involved, so `agent check` can print them and
//! tests can assert each one.

use super::view::{ClusterView, PartitionState, QuorumState};
use kafka_snapshot_model::protocol::NodeRole;
use serde::{Deserialize, Serialize};

/// What to do with topics whose replication factor is at most their
/// `min.insync.replicas`: stopping any of their brokers makes `acks=all`
/// producers fail (or takes an RF=1 partition offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LowReplicationPolicy {
    /// Not safe: the operator must change the topic or the policy.
    #[default]
    Refuse,
    /// Accept the outage of those partitions while the broker is down.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionId {
    ClusterReachable,
    BrokerRegistered,
    OwnPartitionsInSync,
    NothingOffline,
    NothingUnderMinIsr,
    StopKeepsMinIsr,
    NoReassignment,
    NoFutureDir,
    ControllerQuorumHealthy,
}

impl ConditionId {
    pub fn describe(self) -> &'static str {
        match self {
            ConditionId::ClusterReachable => "the cluster answered every query",
            ConditionId::BrokerRegistered => "this broker is registered and unfenced",
            ConditionId::OwnPartitionsInSync => {
                "every partition with a replica here has a full ISR"
            }
            ConditionId::NothingOffline => "no partition in the cluster is offline",
            ConditionId::NothingUnderMinIsr => "no partition in the cluster is under its min ISR",
            ConditionId::StopKeepsMinIsr => {
                "stopping this broker leaves every partition at or above min ISR"
            }
            ConditionId::NoReassignment => "no partition reassignment is in flight",
            ConditionId::NoFutureDir => "no intra-broker replica move (-future dir) is in flight",
            ConditionId::ControllerQuorumHealthy => {
                "every controller is caught up and a majority stays without this one"
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub id: ConditionId,
    pub ok: bool,
    /// Why it failed (empty when it passed).
    pub reason: String,
    /// The partitions (or dirs) that made it fail, at most [`MAX_LISTED`].
    pub partitions: Vec<String>,
    /// How many there were in all.
    pub count: usize,
}

/// Partitions listed per failed condition; the count says how many more.
pub const MAX_LISTED: usize = 20;

impl Condition {
    fn pass(id: ConditionId) -> Self {
        Condition {
            id,
            ok: true,
            reason: String::new(),
            partitions: Vec::new(),
            count: 0,
        }
    }

    fn fail(id: ConditionId, reason: String, items: Vec<String>) -> Self {
        let count = items.len();
        Condition {
            id,
            ok: false,
            reason,
            partitions: items.into_iter().take(MAX_LISTED).collect(),
            count,
        }
    }

    fn from_items(
        id: ConditionId,
        reason: impl FnOnce(usize) -> String,
        items: Vec<String>,
    ) -> Self {
        if items.is_empty() {
            Condition::pass(id)
        } else {
            let r = reason(items.len());
            Condition::fail(id, r, items)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub broker: i32,
    pub conditions: Vec<Condition>,
}

impl GateReport {
    pub fn safe(&self) -> bool {
        self.conditions.iter().all(|c| c.ok)
    }

    pub fn failed(&self) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(|c| !c.ok)
    }

    /// One line naming every failed condition, for logs and status.
    pub fn summary(&self) -> String {
        if self.safe() {
            return format!("broker {} is safe to stop", self.broker);
        }
        let reasons: Vec<String> = self
            .failed()
            .map(|c| format!("{:?}: {}", c.id, c.reason))
            .collect();
        format!(
            "broker {} is not safe to stop: {}",
            self.broker,
            reasons.join("; ")
        )
    }

    /// The report when the cluster could not be asked: never "safe".
    pub fn unreachable(broker: i32, error: String) -> GateReport {
        GateReport {
            broker,
            conditions: vec![Condition::fail(
                ConditionId::ClusterReachable,
                error,
                Vec::new(),
            )],
        }
    }
}

fn isr_detail(p: &PartitionState) -> String {
    format!("{} (replicas {:?}, isr {:?})", p.name(), p.replicas, p.isr)
}

/// Is it safe to stop `broker` now? `future_dirs` are `*-future` dirs found
/// in this broker's log dirs.
pub fn evaluate(
    view: &ClusterView,
    broker: i32,
    policy: LowReplicationPolicy,
    future_dirs: &[String],
) -> GateReport {
    let mut conditions = vec![Condition::pass(ConditionId::ClusterReachable)];

    conditions.push(if view.brokers.contains(&broker) {
        Condition::pass(ConditionId::BrokerRegistered)
    } else {
        Condition::fail(
            ConditionId::BrokerRegistered,
            format!(
                "broker {broker} is not among the live brokers {:?}",
                view.brokers
            ),
            Vec::new(),
        )
    });

    let own_out_of_sync: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.hosts(broker) && !p.out_of_sync().is_empty())
        .map(isr_detail)
        .collect();
    conditions.push(Condition::from_items(
        ConditionId::OwnPartitionsInSync,
        |n| format!("{n} partition(s) with a replica on broker {broker} are under-replicated"),
        own_out_of_sync,
    ));

    let offline: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.leader.is_none())
        .map(isr_detail)
        .collect();
    conditions.push(Condition::from_items(
        ConditionId::NothingOffline,
        |n| format!("{n} partition(s) have no leader"),
        offline,
    ));

    let under_min: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.isr.len() < view.effective_min_isr(p))
        .map(|p| format!("{} (min ISR {})", isr_detail(p), view.effective_min_isr(p)))
        .collect();
    conditions.push(Condition::from_items(
        ConditionId::NothingUnderMinIsr,
        |n| {
            format!(
                "{n} partition(s) are under their min ISR: acks=all producers are already failing"
            )
        },
        under_min,
    ));

    // What stopping this broker would do to each partition it is in sync for.
    let mut would_break = Vec::new();
    let mut low_rf = Vec::new();
    for p in view.partitions.iter().filter(|p| p.in_isr(broker)) {
        let rf = p.replicas.len();
        let configured = view.configured_min_isr(&p.topic).max(1) as usize;
        if rf <= configured {
            low_rf.push(format!(
                "{} (RF {rf}, min.insync.replicas {configured})",
                p.name()
            ));
            continue;
        }
        if p.isr.len() - 1 < view.effective_min_isr(p) {
            would_break.push(format!(
                "{} (min ISR {})",
                isr_detail(p),
                view.effective_min_isr(p)
            ));
        }
    }
    let low_rf_refused = policy == LowReplicationPolicy::Refuse && !low_rf.is_empty();
    let mut items = would_break;
    let mut reasons = Vec::new();
    if !items.is_empty() {
        reasons.push(format!(
            "{} partition(s) would drop below min ISR",
            items.len()
        ));
    }
    if low_rf_refused {
        reasons.push(format!(
            "{} partition(s) have replication factor <= min.insync.replicas, so stopping any replica \
             blocks acks=all writes (or takes the partition offline); raise their replication factor \
             or set gate.low_replication_policy = \"allow\"",
            low_rf.len()
        ));
        items.append(&mut low_rf);
    }
    conditions.push(if reasons.is_empty() && !low_rf.is_empty() {
        // Allowed on purpose (a one-broker backup cluster, MirrorMaker's
        // sink): passes, saying what it costs.
        let count = low_rf.len();
        Condition {
            id: ConditionId::StopKeepsMinIsr,
            ok: true,
            reason: format!(
                "allowed by gate.low_replication_policy = \"allow\": {count} partition(s) with \
                 replication factor <= min.insync.replicas go offline or refuse acks=all writes \
                 while this broker is down"
            ),
            partitions: low_rf.into_iter().take(MAX_LISTED).collect(),
            count,
        }
    } else if reasons.is_empty() {
        Condition::pass(ConditionId::StopKeepsMinIsr)
    } else {
        Condition::fail(ConditionId::StopKeepsMinIsr, reasons.join("; "), items)
    });

    let moving: Vec<String> = view
        .reassignments
        .iter()
        .map(|r| {
            format!(
                "{}-{} (adding {:?}, removing {:?})",
                r.topic, r.partition, r.adding, r.removing
            )
        })
        .collect();
    conditions.push(Condition::from_items(
        ConditionId::NoReassignment,
        |n| format!("{n} partition reassignment(s) in flight"),
        moving,
    ));

    conditions.push(Condition::from_items(
        ConditionId::NoFutureDir,
        |n| format!("{n} -future dir(s) in this broker's log dirs"),
        future_dirs.to_vec(),
    ));

    GateReport { broker, conditions }
}

/// Is it safe to stop the dedicated controller `node` now? Only the
/// quorum matters: it hosts no partition and serves no client.
pub fn evaluate_controller(view: &ClusterView, node: i32) -> GateReport {
    let conditions = vec![
        Condition::pass(ConditionId::ClusterReachable),
        match &view.quorum {
            Some(q) => quorum_condition(q, node),
            None => Condition::fail(
                ConditionId::ControllerQuorumHealthy,
                "the controller quorum was not described".into(),
                Vec::new(),
            ),
        },
    ];
    GateReport {
        broker: node,
        conditions,
    }
}

/// The gate for a node of `role`: [`evaluate`] for a broker,
/// [`evaluate_controller`] for a dedicated controller, both for a combined
/// node. A broker is not gated on the quorum even when the view holds it
/// (the coordinator reads it once controllers have agents).
pub fn evaluate_node(
    view: &ClusterView,
    node: i32,
    role: NodeRole,
    policy: LowReplicationPolicy,
    future_dirs: &[String],
) -> GateReport {
    match role {
        NodeRole::Controller => evaluate_controller(view, node),
        NodeRole::Broker => evaluate(view, node, policy, future_dirs),
        NodeRole::Combined => {
            let mut report = evaluate(view, node, policy, future_dirs);
            report.conditions.extend(
                evaluate_controller(view, node)
                    .conditions
                    .into_iter()
                    .skip(1),
            );
            report
        }
    }
}

/// For a controller node: the quorum has a leader, this node is one of its
/// voters, every voter is caught up ([`QuorumState::behind`]), and without
/// this node a majority of voters is still caught up (Strimzi's rule for
/// rolling controllers).
fn quorum_condition(q: &QuorumState, node: i32) -> Condition {
    let id = ConditionId::ControllerQuorumHealthy;
    if q.leader.is_none() {
        return Condition::fail(id, "the controller quorum has no leader".into(), Vec::new());
    }
    if q.voter(node).is_none() {
        let voters: Vec<i32> = q.voters.iter().map(|v| v.id).collect();
        return Condition::fail(
            id,
            format!("controller {node} is not a voter of the metadata quorum (voters {voters:?})"),
            Vec::new(),
        );
    }
    let lagging: Vec<String> = q.voters.iter().filter_map(|v| q.behind(v)).collect();
    let majority = q.voters.len() / 2 + 1;
    let remaining = q
        .voters
        .iter()
        .filter(|v| v.id != node && q.behind(v).is_none())
        .count();
    let mut reasons = Vec::new();
    if !lagging.is_empty() {
        reasons.push(format!(
            "{} voter(s) are not caught up with the leader {}",
            lagging.len(),
            q.leader.unwrap_or(-1)
        ));
    }
    if remaining < majority {
        reasons.push(format!(
            "without controller {node}, {remaining} of {} voters are caught up, fewer than the majority of {majority}",
            q.voters.len()
        ));
    }
    if reasons.is_empty() {
        Condition::pass(id)
    } else {
        Condition::fail(id, reasons.join("; "), lagging)
    }
}

/// Where a restarted broker stands on its way back.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub broker: i32,
    pub role: NodeRole,
    pub registered: bool,
    /// Partitions hosted here whose ISR does not hold this broker yet.
    pub catching_up: Vec<String>,
    pub catching_up_count: usize,
    /// Partitions offline or under min ISR anywhere in the cluster.
    pub unhealthy: Vec<String>,
    pub unhealthy_count: usize,
    /// On a controller node: why the quorum is not back to full health
    /// (no leader, or this voter still behind); `None` when it is.
    pub quorum_behind: Option<String>,
}

impl Recovery {
    pub fn recovered(&self) -> bool {
        self.registered
            && self.catching_up_count == 0
            && self.unhealthy_count == 0
            && self.quorum_behind.is_none()
    }

    pub fn summary(&self) -> String {
        if self.recovered() {
            return format!("broker {} is back in every ISR", self.broker);
        }
        if !self.registered {
            let why = self.quorum_behind.as_deref().unwrap_or("");
            return match self.role {
                NodeRole::Controller => {
                    format!(
                        "controller {} is not a caught-up voter yet: {why}",
                        self.broker
                    )
                }
                _ => format!("broker {} is not registered (or still fenced)", self.broker),
            };
        }
        format!(
            "broker {}: {} partition(s) still catching up{}; {} partition(s) offline or under min ISR",
            self.broker,
            self.catching_up_count,
            if self.catching_up.is_empty() { String::new() } else { format!(" ({})", self.catching_up.join(", ")) },
            self.unhealthy_count
        ) + &self
            .quorum_behind
            .as_ref()
            .map(|q| format!("; {q}"))
            .unwrap_or_default()
    }
}

/// The recovery check after a restart: registered and unfenced, back in
/// the ISR of every partition it hosts, nothing offline or under min ISR;
/// a controller (dedicated or combined) is also a caught-up voter again.
/// A dedicated controller is "registered" once it is a voter the leader
/// has caught up with (it never appears among the brokers).
pub fn recovery(view: &ClusterView, broker: i32, role: NodeRole) -> Recovery {
    let catching_up: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.hosts(broker) && !p.in_isr(broker))
        .map(|p| p.name())
        .collect();
    let unhealthy: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.leader.is_none() || p.isr.len() < view.effective_min_isr(p))
        .map(isr_detail)
        .collect();
    // The next node's pre-stop check needs this voter caught up too.
    let quorum_behind = match (role.is_controller(), &view.quorum) {
        (false, _) => None,
        (true, None) => Some("the controller quorum was not described".to_string()),
        (true, Some(q)) => match (q.leader, q.voter(broker)) {
            (None, _) => Some("the controller quorum has no leader".to_string()),
            (Some(_), None) => Some(format!(
                "controller {broker} is not a voter of the metadata quorum"
            )),
            (Some(_), Some(v)) => q.behind(v),
        },
    };
    let registered = match role {
        NodeRole::Controller => quorum_behind.is_none(),
        NodeRole::Broker | NodeRole::Combined => view.brokers.contains(&broker),
    };
    Recovery {
        broker,
        role,
        quorum_behind,
        registered,
        catching_up_count: catching_up.len(),
        catching_up: catching_up.into_iter().take(MAX_LISTED).collect(),
        unhealthy_count: unhealthy.len(),
        unhealthy: unhealthy.into_iter().take(MAX_LISTED).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::view::{Reassignment, Voter, QUORUM_MAX_LAG};

    fn p(topic: &str, partition: i32, replicas: &[i32], isr: &[i32]) -> PartitionState {
        PartitionState {
            topic: topic.into(),
            partition,
            leader: isr.first().copied(),
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
        }
    }

    /// Three brokers, RF 3, min ISR 2, everything in sync.
    fn healthy() -> ClusterView {
        let mut v = ClusterView {
            brokers: [1, 2, 3].into(),
            ..Default::default()
        };
        for i in 0..6 {
            v.partitions.push(p("orders", i, &[1, 2, 3], &[1, 2, 3]));
        }
        v.partitions.push(p("logs", 0, &[2, 3], &[2, 3]));
        v.min_isr.insert("orders".into(), 2);
        v.min_isr.insert("logs".into(), 1);
        v
    }

    fn failed(r: &GateReport) -> Vec<ConditionId> {
        r.failed().map(|c| c.id).collect()
    }

    #[test]
    fn healthy_cluster_is_safe() {
        let r = evaluate(&healthy(), 1, LowReplicationPolicy::Refuse, &[]);
        assert!(r.safe(), "{}", r.summary());
        assert_eq!(r.conditions.len(), 8);
    }

    #[test]
    fn own_partition_out_of_sync_is_not_safe() {
        let mut v = healthy();
        // Broker 3 is out of orders-0's ISR; broker 1 is asked.
        v.partitions[0].isr = vec![1, 2];
        v.min_isr.insert("orders".into(), 1);
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert_eq!(failed(&r), vec![ConditionId::OwnPartitionsInSync]);
        assert_eq!(
            r.conditions[2].partitions,
            vec!["orders-0 (replicas [1, 2, 3], isr [1, 2])"]
        );
    }

    #[test]
    fn unrelated_under_replication_does_not_block() {
        // A dead replica elsewhere (logs-0 on broker 3) must not deadlock
        // broker 1, which hosts no replica of it, as long as min ISR holds.
        let mut v = healthy();
        v.partitions[6].isr = vec![2];
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert!(r.safe(), "{}", r.summary());
    }

    #[test]
    fn offline_partition_anywhere_is_not_safe() {
        let mut v = healthy();
        v.partitions[6].leader = None;
        v.partitions[6].isr = vec![];
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert!(failed(&r).contains(&ConditionId::NothingOffline));
        assert!(failed(&r).contains(&ConditionId::NothingUnderMinIsr));
    }

    #[test]
    fn under_min_isr_anywhere_is_not_safe() {
        let mut v = healthy();
        v.partitions.push(p("payments", 0, &[2, 3, 4], &[2]));
        v.min_isr.insert("payments".into(), 2);
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert_eq!(failed(&r), vec![ConditionId::NothingUnderMinIsr]);
    }

    #[test]
    fn stop_that_would_break_min_isr_is_not_safe() {
        // orders-1 has ISR [1, 2] = min ISR 2 with broker 1 in it: stopping
        // broker 1 leaves 1 < 2. (Own partition out of sync fails too.)
        let mut v = healthy();
        v.partitions[1].isr = vec![1, 2];
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert!(
            failed(&r).contains(&ConditionId::StopKeepsMinIsr),
            "{}",
            r.summary()
        );
        // Broker 3 is out of that ISR already: stopping 3 changes nothing
        // for orders-1, but its own partition is under-replicated.
        let r = evaluate(&v, 3, LowReplicationPolicy::Refuse, &[]);
        assert!(
            !failed(&r).contains(&ConditionId::StopKeepsMinIsr),
            "{}",
            r.summary()
        );
        assert!(failed(&r).contains(&ConditionId::OwnPartitionsInSync));
    }

    #[test]
    fn effective_min_isr_is_capped_by_replica_count() {
        let mut v = healthy();
        // min.insync.replicas 5 on an RF 3 topic: effective 3.
        v.min_isr.insert("orders".into(), 5);
        assert_eq!(v.effective_min_isr(&v.partitions[0]), 3);
    }

    #[test]
    fn low_replication_topics_follow_the_policy() {
        let mut v = healthy();
        v.partitions.push(p("audit", 0, &[1, 2], &[1, 2]));
        v.min_isr.insert("audit".into(), 2);
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert_eq!(failed(&r), vec![ConditionId::StopKeepsMinIsr]);
        let c = r.failed().next().unwrap();
        assert!(c.reason.contains("low_replication_policy"), "{}", c.reason);
        assert_eq!(c.partitions, vec!["audit-0 (RF 2, min.insync.replicas 2)"]);
        let r = evaluate(&v, 1, LowReplicationPolicy::Allow, &[]);
        assert!(r.safe(), "{}", r.summary());
        // RF 1: stopping it takes the partition offline; refused by default.
        v.partitions.push(p("scratch", 0, &[1], &[1]));
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert!(r
            .failed()
            .next()
            .unwrap()
            .partitions
            .iter()
            .any(|s| s.starts_with("scratch-0")));
    }

    #[test]
    fn reassignment_and_future_dirs_are_not_safe() {
        let mut v = healthy();
        v.reassignments.push(Reassignment {
            topic: "orders".into(),
            partition: 2,
            adding: vec![4],
            removing: vec![3],
        });
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        assert_eq!(failed(&r), vec![ConditionId::NoReassignment]);
        let r = evaluate(
            &healthy(),
            1,
            LowReplicationPolicy::Refuse,
            &["/d/orders-0.abc-future".into()],
        );
        assert_eq!(failed(&r), vec![ConditionId::NoFutureDir]);
    }

    #[test]
    fn unregistered_broker_and_unreachable_cluster_are_not_safe() {
        let r = evaluate(&healthy(), 4, LowReplicationPolicy::Refuse, &[]);
        assert_eq!(failed(&r), vec![ConditionId::BrokerRegistered]);
        let r = GateReport::unreachable(1, "timed out".into());
        assert!(!r.safe());
    }

    /// Voters without timestamps (DescribeQuorum v0): judged by offsets.
    fn quorum(leader: Option<i32>, voters: &[(i32, i64)]) -> QuorumState {
        QuorumState {
            leader,
            high_watermark: 10_000,
            voters: voters
                .iter()
                .map(|&(id, log_end_offset)| Voter {
                    id,
                    log_end_offset,
                    last_fetch_ms: None,
                    last_caught_up_ms: None,
                })
                .collect(),
        }
    }

    /// Voters with the leader's timestamps: (id, ms before the leader's
    /// answer that it last caught up); the leader is at 0.
    fn timed(leader: i32, ago: &[(i32, i64)]) -> QuorumState {
        let now = 1_700_000_000_000;
        QuorumState {
            leader: Some(leader),
            high_watermark: 500,
            voters: ago
                .iter()
                .map(|&(id, ms)| Voter {
                    id,
                    // A stopped voter keeps an end offset a few records
                    // behind: offsets alone would call it caught up.
                    log_end_offset: 500 - ms / 500,
                    last_fetch_ms: Some(now - ms),
                    last_caught_up_ms: Some(now - ms),
                })
                .collect(),
        }
    }

    fn quorum_failure(q: QuorumState, node: i32) -> Option<Condition> {
        let v = ClusterView {
            quorum: Some(q),
            ..healthy()
        };
        let r = evaluate_node(
            &v,
            node,
            NodeRole::Combined,
            LowReplicationPolicy::Refuse,
            &[],
        );
        assert_eq!(r.conditions.len(), 9);
        // A broker is not gated on the quorum, whatever the view holds.
        let b = evaluate_node(
            &v,
            node,
            NodeRole::Broker,
            LowReplicationPolicy::Refuse,
            &[],
        );
        assert_eq!(b.conditions.len(), 8);
        assert!(b.safe(), "{}", b.summary());
        let first = r.failed().next().cloned();
        first
    }

    #[test]
    fn controller_quorum_must_stay_caught_up_and_keep_a_majority() {
        // Three voters within the bound: safe for any of them.
        let ok = quorum(
            Some(1),
            &[(1, 10_000), (2, 10_000 - QUORUM_MAX_LAG), (3, 9_990)],
        );
        assert!(quorum_failure(ok.clone(), 2).is_none());
        assert!(quorum_failure(ok, 1).is_none());
        // One voter one record too far behind: not safe, named.
        let lag = quorum(
            Some(1),
            &[(1, 10_000), (2, 10_000), (3, 10_000 - QUORUM_MAX_LAG - 1)],
        );
        let c = quorum_failure(lag, 2).unwrap();
        assert_eq!(c.id, ConditionId::ControllerQuorumHealthy);
        assert_eq!(
            c.partitions,
            vec!["controller 3 is 1001 metadata records behind the leader"]
        );
        // A lagging voter and this one stopped: 1 of 3 left, no majority.
        assert!(
            c.reason.contains("1 of 3 voters are caught up"),
            "{}",
            c.reason
        );
        // A single controller, or two: stopping one loses the majority.
        let c = quorum_failure(quorum(Some(2), &[(2, 10_000)]), 2).unwrap();
        assert!(c.reason.contains("0 of 1 voters"), "{}", c.reason);
        let c = quorum_failure(quorum(Some(1), &[(1, 10_000), (2, 10_000)]), 2).unwrap();
        assert!(
            c.reason.contains("fewer than the majority of 2"),
            "{}",
            c.reason
        );
        // No leader.
        let c = quorum_failure(quorum(None, &[(1, 0), (2, 0), (3, 0)]), 2).unwrap();
        assert_eq!(c.reason, "the controller quorum has no leader");
        // The leader's own end offset is the reference, not the high
        // watermark, which a lagging majority holds back.
        let q = quorum(Some(1), &[(1, 50_000), (2, 10_000), (3, 10_000)]);
        assert!(quorum_failure(q, 3).is_some());
    }

    #[test]
    fn failed_lists_are_capped_but_counted() {
        let mut v = healthy();
        for i in 0..50 {
            v.partitions.push(p("wide", i, &[1, 2, 3], &[1, 2]));
        }
        let r = evaluate(&v, 1, LowReplicationPolicy::Refuse, &[]);
        let c = r.failed().next().unwrap();
        assert_eq!((c.partitions.len(), c.count), (MAX_LISTED, 50));
    }

    #[test]
    fn recovery_waits_for_every_isr_and_cluster_health() {
        let mut v = healthy();
        v.brokers.remove(&1);
        assert!(!recovery(&v, 1, NodeRole::Broker).recovered());
        v.brokers.insert(1);
        v.partitions[0].isr = vec![2, 3];
        let r = recovery(&v, 1, NodeRole::Broker);
        assert!(!r.recovered());
        assert_eq!(r.catching_up, vec!["orders-0"]);
        v.partitions[0].isr = vec![2, 3, 1];
        assert!(recovery(&v, 1, NodeRole::Broker).recovered());
        v.partitions[6].leader = None;
        assert!(!recovery(&v, 1, NodeRole::Broker).recovered());
    }

    #[test]
    fn recovery_of_a_controller_waits_for_its_voter() {
        let mut v = healthy();
        v.quorum = Some(quorum(Some(2), &[(1, 5_000), (2, 10_000), (3, 10_000)]));
        let r = recovery(&v, 1, NodeRole::Combined);
        assert!(!r.recovered());
        assert!(
            r.summary()
                .contains("controller 1 is 5000 metadata records behind the leader"),
            "{}",
            r.summary()
        );
        v.quorum = Some(quorum(Some(2), &[(1, 9_999), (2, 10_000), (3, 10_000)]));
        assert!(recovery(&v, 1, NodeRole::Combined).recovered());
        v.quorum = Some(quorum(None, &[(1, 0), (2, 0), (3, 0)]));
        assert!(!recovery(&v, 1, NodeRole::Combined).recovered());
    }

    #[test]
    fn a_dedicated_controller_recovers_as_a_caught_up_voter_not_a_broker() {
        // Controllers never appear among the brokers of a Metadata answer.
        let mut v = healthy();
        v.quorum = Some(timed(101, &[(100, 4_800), (101, 0), (102, 300)]));
        let r = recovery(&v, 100, NodeRole::Controller);
        assert!(!r.recovered());
        assert!(
            r.summary().starts_with(
                "controller 100 is not a caught-up voter yet: controller 100 last caught up \
                 with the leader 4800 ms ago"
            ),
            "{}",
            r.summary()
        );
        v.quorum = Some(timed(101, &[(100, 450), (101, 0), (102, 300)]));
        assert!(recovery(&v, 100, NodeRole::Controller).recovered());
        // A partition offline anywhere still holds the lease.
        v.partitions[6].leader = None;
        assert!(!recovery(&v, 100, NodeRole::Controller).recovered());
        // A node the quorum does not know is not a voter.
        let mut v = healthy();
        v.quorum = Some(timed(101, &[(101, 0), (102, 300)]));
        let r = recovery(&v, 100, NodeRole::Controller);
        assert!(r.summary().contains("not a voter"), "{}", r.summary());
    }

    #[test]
    fn a_dedicated_controller_is_gated_on_the_quorum_only() {
        // Brokers' conditions do not apply: no partition lives here, and a
        // broker's under-replicated partition is not this node's concern.
        let mut v = healthy();
        v.partitions[0].isr = vec![2, 3];
        v.quorum = Some(timed(101, &[(100, 300), (101, 0), (102, 400)]));
        let r = evaluate_node(
            &v,
            100,
            NodeRole::Controller,
            LowReplicationPolicy::Refuse,
            &[],
        );
        assert!(r.safe(), "{}", r.summary());
        assert_eq!(
            r.conditions.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![
                ConditionId::ClusterReachable,
                ConditionId::ControllerQuorumHealthy
            ]
        );
        // A stopped voter: its offset is close to the leader's, but it has
        // not fetched for 6 s. Stopping another would lose the majority.
        v.quorum = Some(timed(101, &[(100, 300), (101, 0), (102, 6_000)]));
        let r = evaluate_node(
            &v,
            100,
            NodeRole::Controller,
            LowReplicationPolicy::Refuse,
            &[],
        );
        let c = r.failed().next().unwrap();
        assert_eq!(c.id, ConditionId::ControllerQuorumHealthy);
        assert!(
            c.reason.contains("1 of 3 voters are caught up"),
            "{}",
            c.reason
        );
        assert_eq!(
            c.partitions,
            vec!["controller 102 last caught up with the leader 6000 ms ago (log end offset 488, the leader's 500)"]
        );
        // Not a voter at all.
        v.quorum = Some(timed(101, &[(101, 0), (102, 0), (103, 0)]));
        let r = evaluate_node(
            &v,
            100,
            NodeRole::Controller,
            LowReplicationPolicy::Refuse,
            &[],
        );
        assert!(r.summary().contains("not a voter"), "{}", r.summary());
        // Without the quorum described, never safe.
        v.quorum = None;
        assert!(!evaluate_controller(&v, 100).safe());
    }
}
