//! What the agent knows about the cluster at one moment: live brokers,
//! every partition's leader, replicas and ISR, the effective
//! `min.insync.replicas`, and partition reassignments in flight.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    /// `None` when the partition has no leader (offline).
    pub leader: Option<i32>,
    /// During a reassignment this is the union of old and new replicas.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl PartitionState {
    pub fn name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    pub fn hosts(&self, broker: i32) -> bool {
        self.replicas.contains(&broker)
    }

    pub fn in_isr(&self, broker: i32) -> bool {
        self.isr.contains(&broker)
    }

    /// Replicas that are not in the ISR.
    pub fn out_of_sync(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.isr.contains(r))
            .collect()
    }
}

/// A partition reassignment in flight (ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Registered, unfenced brokers (those the Metadata response lists).
    pub brokers: BTreeSet<i32>,
    pub partitions: Vec<PartitionState>,
    /// Effective `min.insync.replicas` per topic (topic override or broker
    /// default), from DescribeConfigs.
    pub min_isr: BTreeMap<String, i32>,
    pub reassignments: Vec<Reassignment>,
    /// The KRaft controller quorum (DescribeQuorum), read only when this
    /// node is a controller.
    pub quorum: Option<QuorumState>,
}

/// DescribeQuorum of `__cluster_metadata-0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// `None` when the quorum has no leader.
    pub leader: Option<i32>,
    pub high_watermark: i64,
    /// Voter id and log end offset.
    pub voters: Vec<(i32, i64)>,
}

impl QuorumState {
    /// The leader's log end offset (what every voter should have reached).
    pub fn leader_end_offset(&self) -> i64 {
        self.leader
            .and_then(|l| self.voters.iter().find(|(id, _)| *id == l))
            .map(|(_, leo)| *leo)
            .unwrap_or(self.high_watermark)
    }
}

impl ClusterView {
    /// `min(min.insync.replicas, replica count)`: what the partition needs in
    /// its ISR to accept `acks=all` writes. Missing config counts as 1, the
    /// Kafka default.
    pub fn effective_min_isr(&self, p: &PartitionState) -> usize {
        let configured = self.min_isr.get(&p.topic).copied().unwrap_or(1).max(1) as usize;
        configured.min(p.replicas.len().max(1))
    }

    /// The configured (not capped) `min.insync.replicas` of a topic.
    pub fn configured_min_isr(&self, topic: &str) -> i32 {
        self.min_isr.get(topic).copied().unwrap_or(1)
    }
}
