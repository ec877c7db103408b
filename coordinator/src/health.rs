//! The coordinator's own look at the cluster, as pure functions of a
//! [`ClusterView`]. The agent's gate is the second check before a broker
//! stops, not the only one.

use kafka_snapshot::kafka::gate::{evaluate_node, ConditionId, GateReport, LowReplicationPolicy};
use kafka_snapshot::kafka::view::ClusterView;
use kafka_snapshot_model::protocol::NodeRole;

/// Partitions listed in a message; the count says how many more.
const LISTED: usize = 5;

fn listing(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LISTED {
        s.push_str(&format!(" and {} more", items.len() - LISTED));
    }
    s
}

/// May `broker` (a node of `role`) be stopped for a snapshot? The agent's
/// gate without the local-disk condition the coordinator cannot see.
pub fn snapshot_check(
    view: &ClusterView,
    broker: i32,
    role: NodeRole,
    policy: LowReplicationPolicy,
) -> Result<(), String> {
    let mut report: GateReport = evaluate_node(view, broker, role, policy, &[]);
    report
        .conditions
        .retain(|c| c.id != ConditionId::NoFutureDir);
    if report.safe() {
        Ok(())
    } else {
        Err(report.summary())
    }
}

/// May `broker` be restored? It may be down (a dead disk, a replaced host),
/// but every other broker must be healthy: every partition is fully in sync
/// except for `broker`'s own replicas, and if `broker` runs, stopping it
/// must keep every partition at or above min ISR.
///
/// For a controller, the quorum must have a leader and every other
/// controller must be caught up (`controllers` are the configured ones).
pub fn restore_check(
    view: &ClusterView,
    broker: i32,
    expected: &[i32],
    controllers: &[i32],
) -> Result<(), String> {
    let mut problems = quorum_problems(view, controllers, Some(broker));
    let missing: Vec<i32> = expected
        .iter()
        .copied()
        .filter(|b| *b != broker && !view.brokers.contains(b))
        .collect();
    if !missing.is_empty() {
        problems.push(format!("broker(s) {missing:?} are not registered"));
    }
    let others_behind: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.out_of_sync().iter().any(|b| *b != broker))
        .map(|p| format!("{} (replicas {:?}, isr {:?})", p.name(), p.replicas, p.isr))
        .collect();
    if !others_behind.is_empty() {
        problems.push(format!(
            "{} partition(s) are under-replicated on other brokers: {}",
            others_behind.len(),
            listing(&others_behind)
        ));
    }
    if !view.reassignments.is_empty() {
        problems.push(format!(
            "{} partition reassignment(s) in flight",
            view.reassignments.len()
        ));
    }
    let would_break: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.in_isr(broker) && p.isr.len() - 1 < view.effective_min_isr(p))
        .map(|p| p.name())
        .collect();
    if !would_break.is_empty() {
        problems.push(format!(
            "stopping broker {broker} would leave {} partition(s) under min ISR: {}",
            would_break.len(),
            listing(&would_break)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What is wrong with the controller quorum, for the configured
/// `controllers` (none: nothing to check), leaving `except` out.
fn quorum_problems(view: &ClusterView, controllers: &[i32], except: Option<i32>) -> Vec<String> {
    if controllers.is_empty() {
        return Vec::new();
    }
    let Some(q) = &view.quorum else {
        return vec!["the controller quorum was not described".into()];
    };
    if q.leader.is_none() {
        return vec!["the controller quorum has no leader".into()];
    }
    controllers
        .iter()
        .filter(|c| Some(**c) != except)
        .filter_map(|&c| match q.voter(c) {
            None => Some(format!(
                "controller {c} is not a voter of the metadata quorum"
            )),
            Some(v) => q.behind(v),
        })
        .collect()
}

/// Whether the cluster serves clients, and what was seen: a broker
/// registered and a partition with a leader. `None` for a cluster that
/// answers but serves nothing (every partition offline).
pub fn serving(view: &ClusterView) -> Option<String> {
    let led = view
        .partitions
        .iter()
        .filter(|p| p.leader.is_some())
        .count();
    if view.brokers.is_empty() || (led == 0 && !view.partitions.is_empty()) {
        return None;
    }
    let brokers: Vec<i32> = view.brokers.iter().copied().collect();
    Some(format!(
        "brokers {brokers:?} registered, {led} of {} partition(s) with a leader",
        view.partitions.len()
    ))
}

/// Is the whole cluster back in sync: every expected broker registered,
/// every partition led and with its full replica set in ISR?
///
/// With controllers configured, also: the quorum has a leader and every
/// one of them is a caught-up voter.
pub fn in_sync(view: &ClusterView, expected: &[i32], controllers: &[i32]) -> Result<(), String> {
    let mut problems = quorum_problems(view, controllers, None);
    let missing: Vec<i32> = expected
        .iter()
        .copied()
        .filter(|b| !view.brokers.contains(b))
        .collect();
    if !missing.is_empty() {
        problems.push(format!("broker(s) {missing:?} are not registered"));
    }
    let offline: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| p.leader.is_none())
        .map(|p| p.name())
        .collect();
    if !offline.is_empty() {
        problems.push(format!(
            "{} partition(s) offline: {}",
            offline.len(),
            listing(&offline)
        ));
    }
    let behind: Vec<String> = view
        .partitions
        .iter()
        .filter(|p| !p.out_of_sync().is_empty())
        .map(|p| format!("{} (missing {:?})", p.name(), p.out_of_sync()))
        .collect();
    if !behind.is_empty() {
        problems.push(format!(
            "{} partition(s) under-replicated: {}",
            behind.len(),
            listing(&behind)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_snapshot::kafka::view::{PartitionState, QuorumState, Voter};

    pub fn view(brokers: &[i32], parts: &[(&str, i32, &[i32], &[i32])]) -> ClusterView {
        ClusterView {
            brokers: brokers.iter().copied().collect(),
            partitions: parts
                .iter()
                .map(|(t, p, replicas, isr)| PartitionState {
                    topic: t.to_string(),
                    partition: *p,
                    leader: isr.first().copied(),
                    replicas: replicas.to_vec(),
                    isr: isr.to_vec(),
                })
                .collect(),
            min_isr: [("orders".to_string(), 2)].into_iter().collect(),
            reassignments: Vec::new(),
            ..ClusterView::default()
        }
    }

    #[test]
    fn healthy_cluster() {
        let v = view(&[1, 2, 3], &[("orders", 0, &[1, 2, 3], &[1, 2, 3])]);
        assert_eq!(in_sync(&v, &[1, 2, 3], &[]), Ok(()));
        assert_eq!(
            snapshot_check(&v, 2, NodeRole::Broker, LowReplicationPolicy::Refuse),
            Ok(())
        );
        assert_eq!(restore_check(&v, 2, &[1, 2, 3], &[]), Ok(()));
    }

    #[test]
    fn a_missing_replica_is_not_in_sync() {
        let v = view(&[1, 3], &[("orders", 0, &[1, 2, 3], &[1, 3])]);
        let e = in_sync(&v, &[1, 2, 3], &[]).unwrap_err();
        assert!(e.contains("[2] are not registered"), "{e}");
        assert!(e.contains("orders-0 (missing [2])"), "{e}");
        // Broker 1 may not stop: broker 2 is already out.
        let e = snapshot_check(&v, 1, NodeRole::Broker, LowReplicationPolicy::Refuse).unwrap_err();
        assert!(
            e.contains("under-replicated") || e.contains("min ISR"),
            "{e}"
        );
    }

    #[test]
    fn restore_is_allowed_for_the_broker_that_is_down_only() {
        let v = view(&[1, 3], &[("orders", 0, &[1, 2, 3], &[1, 3])]);
        assert_eq!(restore_check(&v, 2, &[1, 2, 3], &[]), Ok(()));
        let e = restore_check(&v, 3, &[1, 2, 3], &[]).unwrap_err();
        assert!(e.contains("broker(s) [2] are not registered"), "{e}");
        assert!(e.contains("under-replicated on other brokers"), "{e}");
    }

    #[test]
    fn restore_of_a_running_broker_keeps_min_isr() {
        // orders needs 2 in ISR; only 2 and 3 are in: restoring 3 would break it.
        let v = view(&[1, 2, 3], &[("orders", 0, &[1, 2, 3], &[2, 3])]);
        let e = restore_check(&v, 3, &[1, 2, 3], &[]).unwrap_err();
        assert!(e.contains("under min ISR"), "{e}");
    }

    #[test]
    fn offline_partitions_are_named() {
        let mut v = view(&[1, 2, 3], &[("orders", 4, &[2], &[])]);
        v.partitions[0].leader = None;
        let e = in_sync(&v, &[1, 2, 3], &[]).unwrap_err();
        assert!(e.contains("1 partition(s) offline: orders-4"), "{e}");
    }

    fn quorum(ago: &[(i32, i64)]) -> QuorumState {
        let now = 1_700_000_000_000;
        QuorumState {
            leader: Some(101),
            high_watermark: 900,
            voters: ago
                .iter()
                .map(|&(id, ms)| Voter {
                    id,
                    log_end_offset: 900,
                    last_fetch_ms: Some(now - ms),
                    last_caught_up_ms: Some(now - ms),
                })
                .collect(),
        }
    }

    #[test]
    fn controllers_must_be_caught_up_voters_for_the_cluster_to_be_in_sync() {
        let mut v = view(&[1, 2, 3], &[("orders", 0, &[1, 2, 3], &[1, 2, 3])]);
        let controllers = [100, 101, 102];
        let e = in_sync(&v, &[1, 2, 3], &controllers).unwrap_err();
        assert_eq!(e, "the controller quorum was not described");
        v.quorum = Some(quorum(&[(100, 200), (101, 0), (102, 300)]));
        assert_eq!(in_sync(&v, &[1, 2, 3], &controllers), Ok(()));
        // Controller 100 was stopped 5 s ago: its entry has aged.
        v.quorum = Some(quorum(&[(100, 5_000), (101, 0), (102, 300)]));
        let e = in_sync(&v, &[1, 2, 3], &controllers).unwrap_err();
        assert!(
            e.contains("controller 100 last caught up with the leader 5000 ms ago"),
            "{e}"
        );
        // It may be restored (it is the one down), but not controller 102.
        assert_eq!(restore_check(&v, 100, &[1, 2, 3], &controllers), Ok(()));
        let e = restore_check(&v, 102, &[1, 2, 3], &controllers).unwrap_err();
        assert!(e.contains("controller 100"), "{e}");
        // A dedicated controller's snapshot gate is the quorum's.
        let e = snapshot_check(&v, 102, NodeRole::Controller, LowReplicationPolicy::Refuse)
            .unwrap_err();
        assert!(e.contains("ControllerQuorumHealthy"), "{e}");
        v.quorum = Some(quorum(&[(100, 100), (101, 0), (102, 300)]));
        assert_eq!(
            snapshot_check(&v, 102, NodeRole::Controller, LowReplicationPolicy::Refuse),
            Ok(())
        );
        // A configured controller the quorum does not know.
        let e = in_sync(&v, &[1, 2, 3], &[100, 101, 103]).unwrap_err();
        assert!(e.contains("controller 103 is not a voter"), "{e}");
    }
}
