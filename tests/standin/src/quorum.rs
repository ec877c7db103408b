//! The KRaft controller quorum as DescribeQuorum (key 55) reports it, from
//! the scenario's [`Quorum`](crate::scenario::Quorum) and the liveness of
//! the voters that are stand-in brokers (combined broker+controller nodes;
//! other voter ids are controllers not modelled as processes, always up).
//!
//! Rules (Raft as KRaft runs it):
//! - The metadata log grows by 100 records a second (the leader's no-op
//!   records and metadata changes): the leader's log end offset is the
//!   time in 10 ms units.
//! - A voter that is up fetches continuously: its log end offset is the
//!   leader's minus its scenario `lag`. A voter that is down stopped
//!   fetching when it went down: its offset stays there, so its lag grows.
//! - The scenario leader leads while it is up; otherwise the first voter
//!   that is up, if a majority is up; without a majority there is no leader.
//! - The high watermark is the offset a majority of voters has reached.

use crate::scenario::Quorum;

/// Metadata log records per second.
const RECORDS_PER_SEC: u64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoterLife {
    Up,
    /// Down since this monotonic time (ms).
    Down {
        since_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterView {
    pub id: i32,
    pub log_end_offset: i64,
    /// Unix ms of its last fetch and of the last time it had caught up.
    pub last_fetch_ms: i64,
    pub last_caught_up_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumView {
    /// `None` without a majority of voters up.
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<VoterView>,
}

/// The quorum at monotonic time `now_ms` (`unix_now_ms` is the same
/// moment on the wall clock).
pub fn compute(
    q: &Quorum,
    now_ms: u64,
    unix_now_ms: i64,
    life: impl Fn(i32) -> VoterLife,
) -> QuorumView {
    let offset = |ms: u64| (ms * RECORDS_PER_SEC / 1000) as i64;
    let unix = |ms: u64| unix_now_ms - now_ms.saturating_sub(ms) as i64;
    let lag_ms = |records: i64| records.max(0) as u64 * 1000 / RECORDS_PER_SEC;
    let up: Vec<i32> = q
        .voters
        .iter()
        .copied()
        .filter(|v| life(*v) == VoterLife::Up)
        .collect();
    let majority = q.voters.len() / 2 + 1;
    let leader = if up.contains(&q.leader) {
        Some(q.leader)
    } else if up.len() >= majority {
        up.first().copied()
    } else {
        None
    };
    let voters: Vec<VoterView> = q
        .voters
        .iter()
        .map(|&id| {
            let lag = q.lag_of(id);
            let (at_ms, fetch_ms) = match life(id) {
                VoterLife::Up => (now_ms, now_ms),
                VoterLife::Down { since_ms } => (since_ms, since_ms),
            };
            VoterView {
                id,
                log_end_offset: (offset(at_ms) - lag).max(0),
                last_fetch_ms: unix(fetch_ms),
                last_caught_up_ms: unix(at_ms.saturating_sub(lag_ms(lag))),
            }
        })
        .collect();
    let mut offsets: Vec<i64> = voters.iter().map(|v| v.log_end_offset).collect();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    QuorumView {
        leader,
        leader_epoch: if leader == Some(q.leader) { 1 } else { 2 },
        high_watermark: offsets.get(majority - 1).copied().unwrap_or(0),
        voters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::VoterLag;

    fn quorum() -> Quorum {
        Quorum {
            voters: vec![1, 2, 3],
            leader: 1,
            lag: vec![VoterLag {
                voter: 3,
                records: 500,
            }],
        }
    }

    #[test]
    fn lag_and_a_voter_that_went_down() {
        let q = quorum();
        let v = compute(&q, 100_000, 1_000_000, |_| VoterLife::Up);
        assert_eq!(v.leader, Some(1));
        let leo: Vec<i64> = v.voters.iter().map(|v| v.log_end_offset).collect();
        assert_eq!(leo, vec![10_000, 10_000, 9_500]);
        assert_eq!(v.high_watermark, 10_000);
        assert_eq!(v.voters[2].last_caught_up_ms, 1_000_000 - 5_000);
        // The leader goes down at 90 s: voter 2 leads; 1 stops at 9,000.
        let v = compute(&q, 100_000, 1_000_000, |id| {
            if id == 1 {
                VoterLife::Down { since_ms: 90_000 }
            } else {
                VoterLife::Up
            }
        });
        assert_eq!((v.leader, v.leader_epoch), (Some(2), 2));
        assert_eq!(v.voters[0].log_end_offset, 9_000);
        assert_eq!(v.high_watermark, 9_500);
        // Two of three down: no leader.
        let v = compute(&q, 100_000, 1_000_000, |id| {
            if id == 3 {
                VoterLife::Up
            } else {
                VoterLife::Down { since_ms: 1 }
            }
        });
        assert_eq!(v.leader, None);
    }
}
