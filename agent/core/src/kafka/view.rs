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
    pub voters: Vec<Voter>,
}

/// One voter as the active controller sees it. Timestamps are the
/// leader's wall clock in ms (DescribeQuorum v1+; `None` before that or
/// when the leader has not heard from the voter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub log_end_offset: i64,
    pub last_fetch_ms: Option<i64>,
    pub last_caught_up_ms: Option<i64>,
}

/// How long ago (on the leader's clock, against its own entry) a voter may
/// last have been caught up and still count as caught up: Kafka's
/// `controller.quorum.fetch.timeout.ms` default. Followers fetch every
/// 500 ms or sooner, so a live voter is always well within it; a stopped
/// one drops out 2 s after its last fetch. (Strimzi's rule for rolling
/// controllers.)
pub const QUORUM_CAUGHT_UP_MS: i64 = 2000;

/// How long the active controller may still show a voter that stopped
/// fetching (it died, or stopped) as caught up: [`QUORUM_CAUGHT_UP_MS`]
/// and a margin. A check that reads the quorum passes only when it held
/// over at least this span, and a restarted controller counts as caught
/// up only this long after its start.
pub const QUORUM_SPAN: std::time::Duration =
    std::time::Duration::from_millis(QUORUM_CAUGHT_UP_MS as u64 + 500);

/// Without timestamps (DescribeQuorum v0): how far in records a voter may
/// be behind the leader's log end. A stopped voter keeps its last offset
/// and falls behind by a few records a second, so this is the weaker test.
pub const QUORUM_MAX_LAG: i64 = 1000;

impl QuorumState {
    /// The leader's log end offset (what every voter should have reached).
    pub fn leader_end_offset(&self) -> i64 {
        self.leader
            .and_then(|l| self.voter(l))
            .map(|v| v.log_end_offset)
            .unwrap_or(self.high_watermark)
    }

    pub fn voter(&self, id: i32) -> Option<&Voter> {
        self.voters.iter().find(|v| v.id == id)
    }

    /// The leader's clock when it answered: its own entry is stamped with
    /// the time of the answer.
    fn leader_now_ms(&self) -> Option<i64> {
        self.leader
            .and_then(|l| self.voter(l))
            .and_then(|v| v.last_caught_up_ms)
    }

    /// Whether `v` is caught up: it reached the leader's log end within
    /// [`QUORUM_CAUGHT_UP_MS`] of the leader's answer, or (no timestamps)
    /// is within [`QUORUM_MAX_LAG`] records of it. `None` says why not.
    pub fn behind(&self, v: &Voter) -> Option<String> {
        if self.leader == Some(v.id) {
            return None;
        }
        match (self.leader_now_ms(), v.last_caught_up_ms) {
            (Some(now), Some(at)) => (now - at > QUORUM_CAUGHT_UP_MS).then(|| {
                format!(
                    "controller {} last caught up with the leader {} ms ago (log end offset {}, \
                     the leader's {})",
                    v.id,
                    now - at,
                    v.log_end_offset,
                    self.leader_end_offset()
                )
            }),
            (Some(now), None) => Some(format!(
                "controller {} has not caught up with the leader since it became leader ({})",
                v.id,
                match v.last_fetch_ms {
                    Some(at) => format!("last fetch {} ms ago", now - at),
                    None => "no fetch seen".to_string(),
                }
            )),
            (None, _) => {
                let behind = self.leader_end_offset() - v.log_end_offset;
                (behind > QUORUM_MAX_LAG).then(|| {
                    format!(
                        "controller {} is {behind} metadata records behind the leader",
                        v.id
                    )
                })
            }
        }
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
