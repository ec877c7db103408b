//! The cluster as every broker reports it: leaders, ISRs and replica sets,
//! computed from the cluster definition, the scenario and the liveness of
//! every broker.
//!
//! Rules (the stand-in's "controller"):
//! - A replica is in the ISR when its broker is alive, registered and caught
//!   up ([`Phase::InSync`](crate::liveness::Phase)), and no scenario switch
//!   keeps it out (`out_of_sync`, `offline`, an adding replica of a
//!   reassignment in flight).
//! - The leader is the first in-sync replica in assignment order. (Kafka
//!   keeps a leader until it leaves the ISR and moves leadership back to the
//!   preferred replica only at the next leader rebalance; the stand-in moves
//!   it back at once.)
//! - A partition with no in-sync replica is offline: leader -1 and error
//!   LEADER_NOT_AVAILABLE. As in Kafka, its ISR keeps the last replica that
//!   was in it. Simplified: if several replicas left at once (between two
//!   computations), the last of them in assignment order is kept; and any
//!   replica that catches up rejoins, where Kafka (without unclean leader
//!   election) waits for that last in-sync replica.
//! - During a reassignment the replica set is the target followed by the
//!   replicas being removed, as in KRaft.
//! - `offline_replicas` are the replicas on brokers that are not registered.
//!
//! Leader epochs must only grow, across all broker processes, so the last
//! computed leaders, epochs and ISRs are kept in `partitions.json` in the
//! state dir, read and updated under a lock by whichever broker computes
//! the view.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::definition::{ClusterDef, StatePaths};
use crate::fsutil::{self, FileLock};
use crate::liveness::Liveness;
use crate::scenario::Scenario;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub internal: bool,
    pub partition: i32,
    /// Assignment order; during a reassignment, target then removing.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1 when offline.
    pub leader: i32,
    pub leader_epoch: i32,
    pub offline_replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

#[derive(Clone, Debug)]
pub struct ClusterView {
    pub brokers: BTreeMap<i32, Liveness>,
    pub partitions: Vec<PartitionView>,
}

impl ClusterView {
    /// Brokers listed in Metadata: alive and unfenced, in id order.
    pub fn registered_brokers(&self) -> Vec<i32> {
        self.brokers
            .iter()
            .filter(|(_, l)| l.registered)
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionView> {
        self.partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

/// Keyed by `"<topic>/<partition>"`.
pub type PartitionStates = BTreeMap<String, PartitionState>;

fn key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Computes the view from its inputs; pure, so the rules are unit-tested
/// without processes. Returns the new persisted partition states.
pub fn compute(
    def: &ClusterDef,
    scenario: &Scenario,
    brokers: &BTreeMap<i32, Liveness>,
    prev: &PartitionStates,
) -> (Vec<PartitionView>, PartitionStates) {
    let live = |b: &i32| brokers.get(b).copied().unwrap_or_default();
    let mut views = Vec::new();
    let mut next = PartitionStates::new();
    for topic in &def.topics {
        let topic_id = fsutil::base64url_decode_uuid(&topic.topic_id).unwrap_or_default();
        for (p, assigned) in topic.replicas.iter().enumerate() {
            let p = p as i32;
            let (replicas, adding, removing) = match scenario.reassignment(&topic.name, p) {
                Some(r) => {
                    let removing: Vec<i32> = assigned
                        .iter()
                        .copied()
                        .filter(|b| !r.target.contains(b))
                        .collect();
                    let adding: Vec<i32> = r
                        .target
                        .iter()
                        .copied()
                        .filter(|b| !assigned.contains(b))
                        .collect();
                    let mut all = r.target.clone();
                    all.extend(&removing);
                    (all, adding, removing)
                }
                None => (assigned.clone(), Vec::new(), Vec::new()),
            };
            let offline_forced = scenario.is_offline(&topic.name, p);
            let in_sync: Vec<i32> = replicas
                .iter()
                .copied()
                .filter(|b| {
                    live(b).in_sync
                        && !offline_forced
                        && !adding.contains(b)
                        && !scenario.is_out_of_sync(&topic.name, p, *b)
                })
                .collect();
            let before = prev.get(&key(&topic.name, p));
            let (leader, isr) = match in_sync.first() {
                Some(&l) => (l, in_sync.clone()),
                None => {
                    let kept = before
                        .and_then(|s| s.isr.last().copied())
                        .filter(|b| replicas.contains(b))
                        .or_else(|| replicas.last().copied());
                    (-1, kept.into_iter().collect())
                }
            };
            let leader_epoch = match before {
                None => 1,
                Some(s) if s.leader != leader => s.leader_epoch + 1,
                Some(s) => s.leader_epoch,
            };
            next.insert(
                key(&topic.name, p),
                PartitionState {
                    leader,
                    leader_epoch,
                    isr: isr.clone(),
                },
            );
            views.push(PartitionView {
                topic: topic.name.clone(),
                topic_id,
                internal: topic.internal,
                partition: p,
                offline_replicas: replicas
                    .iter()
                    .copied()
                    .filter(|b| !live(b).registered)
                    .collect(),
                replicas,
                isr,
                leader,
                leader_epoch,
                adding,
                removing,
            });
        }
    }
    (views, next)
}

/// Reads every broker's liveness and the scenario, computes the view and
/// persists the partition states.
pub fn current(paths: &StatePaths, def: &ClusterDef) -> Result<(ClusterView, Scenario)> {
    let scenario = Scenario::load(&paths.scenario())?;
    let brokers: BTreeMap<i32, Liveness> = def
        .brokers
        .iter()
        .map(|b| (b.node_id, Liveness::read(paths, b.node_id)))
        .collect();
    let _lock = FileLock::lock(&paths.partition_state_lock())?;
    let state_path = paths.partition_state();
    let prev: PartitionStates = match std::fs::read(&state_path) {
        // A torn or foreign file is ignored: epochs restart from 1.
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PartitionStates::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
    };
    let (partitions, next) = compute(def, &scenario, &brokers, &prev);
    if next != prev {
        let bytes = serde_json::to_vec_pretty(&next).context("serializing partition states")?;
        fsutil::write_atomic(&state_path, &bytes)?;
    }
    Ok((
        ClusterView {
            brokers,
            partitions,
        },
        scenario,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{BrokerDef, DataDef, TopicDef};
    use crate::scenario::{PartitionRef, Reassignment, ReplicaRef};

    fn def() -> ClusterDef {
        ClusterDef {
            cluster_id: "MkU3OEVBNTcwNTJENDM2Qk".into(),
            broker_min_insync_replicas: 2,
            append_interval_ms: 100,
            append_record_bytes: 100,
            data: DataDef {
                topics: 1,
                partitions_per_topic: 1,
                bytes_per_broker: 1,
                segment_bytes: 1,
                with_delete_dir: false,
                seed: 1,
            },
            sasl_users: Vec::new(),
            tls: None,
            brokers: (1..=4)
                .map(|i| BrokerDef {
                    node_id: i,
                    port: 9000 + i as u16,
                    sasl_port: None,
                    ssl_port: None,
                    sasl_ssl_port: None,
                    log_dirs: vec![format!("/tmp/b{i}").into()],
                })
                .collect(),
            topics: vec![TopicDef {
                name: "t".into(),
                topic_id: fsutil::base64url_encode_uuid(&fsutil::derived_uuid("t")),
                internal: false,
                min_insync_replicas: None,
                replicas: vec![vec![1, 2, 3], vec![2, 3, 1]],
                cleanup_policy: "delete".into(),
            }],
        }
    }

    fn up(ids: &[i32]) -> BTreeMap<i32, Liveness> {
        (1..=4)
            .map(|i| {
                let on = ids.contains(&i);
                (
                    i,
                    Liveness {
                        alive: on,
                        registered: on,
                        in_sync: on,
                        epoch: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn stopped_broker_leaves_isr_and_leadership_moves() {
        let d = def();
        let s = Scenario::default();
        let (v, st) = compute(&d, &s, &up(&[1, 2, 3]), &PartitionStates::new());
        assert_eq!(v[0].isr, vec![1, 2, 3]);
        assert_eq!(v[0].leader, 1);
        assert_eq!(v[0].leader_epoch, 1);
        let (v, st2) = compute(&d, &s, &up(&[2, 3]), &st);
        assert_eq!(v[0].isr, vec![2, 3]);
        assert_eq!(v[0].leader, 2);
        assert_eq!(v[0].leader_epoch, 2);
        assert_eq!(v[0].offline_replicas, vec![1]);
        assert_eq!(v[1].leader, 2);
        assert_eq!(v[1].leader_epoch, 1);
        let (v, _) = compute(&d, &s, &up(&[1, 2, 3]), &st2);
        assert_eq!((v[0].leader, v[0].leader_epoch), (1, 3));
    }

    #[test]
    fn offline_partition_keeps_last_isr_member() {
        let d = def();
        let s = Scenario::default();
        let (_, st) = compute(&d, &s, &up(&[3]), &PartitionStates::new());
        let (v, _) = compute(&d, &s, &up(&[]), &st);
        assert_eq!(v[0].leader, -1);
        assert_eq!(v[0].isr, vec![3]);
        let forced = Scenario {
            offline: vec![PartitionRef {
                topic: "t".into(),
                partition: 1,
            }],
            ..Scenario::default()
        };
        let (v, _) = compute(&d, &forced, &up(&[1, 2, 3]), &PartitionStates::new());
        assert_eq!(v[1].leader, -1);
        assert_eq!(v[1].isr.len(), 1);
        assert_eq!(v[0].leader, 1);
    }

    #[test]
    fn out_of_sync_and_reassignment() {
        let d = def();
        let s = Scenario {
            out_of_sync: vec![ReplicaRef {
                topic: "t".into(),
                partition: 0,
                broker: 3,
            }],
            reassignments: vec![Reassignment {
                topic: "t".into(),
                partition: 1,
                target: vec![4, 2, 3],
            }],
            ..Scenario::default()
        };
        let (v, _) = compute(&d, &s, &up(&[1, 2, 3, 4]), &PartitionStates::new());
        assert_eq!(v[0].isr, vec![1, 2]);
        assert_eq!(v[1].replicas, vec![4, 2, 3, 1]);
        assert_eq!(v[1].adding, vec![4]);
        assert_eq!(v[1].removing, vec![1]);
        assert_eq!(v[1].isr, vec![2, 3, 1]);
        assert_eq!(v[1].leader, 2);
    }
}
