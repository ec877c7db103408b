//! Scenario switches: `scenario.toml` in the state dir. Every broker
//! re-reads it on every request and every tick, so a test changes the
//! cluster's behaviour at runtime with
//! [`StandinCluster::update_scenario`](crate::StandinCluster::update_scenario).
//! The file is replaced atomically; a missing file means the defaults.
//!
//! ```toml
//! registration_delay_ms = 200   # started -> registered (unfenced)
//! catch_up_delay_ms = 500       # registered -> back in every ISR
//! never_catch_up = [3]          # registered but never back in any ISR
//! slow_shutdown = [{ broker = 2, ms = 3000 }]
//! crash_on_sigterm = [1]        # exit without .kafka_cleanshutdown
//! fail_start = [2]              # exit 1 at start
//! out_of_sync = [{ topic = "orders", partition = 0, broker = 3 }]
//! offline = [{ topic = "orders", partition = 1 }]
//! reassignments = [{ topic = "orders", partition = 2, target = [1, 2, 4] }]
//! future_dirs = [{ topic = "orders", partition = 0, broker = 1 }]
//! quorum = { voters = [1, 2, 3], leader = 1, lag = [{ voter = 3, records = 5000 }] }
//! ```

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::definition::ClusterDef;
use crate::fsutil;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// After start, a broker is fenced (absent from Metadata and
    /// DescribeCluster) for this long, then registered.
    pub registration_delay_ms: u64,
    /// After registration, a broker stays out of the ISRs for this long,
    /// then rejoins the ISR of every partition it is a replica of.
    pub catch_up_delay_ms: u64,
    /// Brokers that register but never rejoin any ISR.
    pub never_catch_up: Vec<i32>,
    /// Brokers that take this long after SIGTERM before they write
    /// `.kafka_cleanshutdown` and exit (out of every ISR meanwhile).
    pub slow_shutdown: Vec<SlowShutdown>,
    /// Brokers that exit(1) on SIGTERM without `.kafka_cleanshutdown`.
    pub crash_on_sigterm: Vec<i32>,
    /// Brokers that exit(1) at start, before locking their log dirs.
    pub fail_start: Vec<i32>,
    /// Replicas forced out of the ISR (an under-replicated partition).
    pub out_of_sync: Vec<ReplicaRef>,
    /// Partitions with every replica forced out of the ISR: leader -1.
    pub offline: Vec<PartitionRef>,
    /// Reassignments in flight (never complete while listed).
    pub reassignments: Vec<Reassignment>,
    /// A `<topic>-<p>.<hex>-future` dir (intra-broker move in flight) in
    /// the broker's last log dir. The library creates and removes the dirs
    /// when it writes the scenario; DescribeLogDirs reports what is on disk.
    pub future_dirs: Vec<ReplicaRef>,
    /// The KRaft controller quorum DescribeQuorum reports; `None`: one
    /// separate controller, node [`Quorum::SEPARATE_CONTROLLER`], always up.
    pub quorum: Option<Quorum>,
}

/// A KRaft controller quorum (see [`crate::quorum`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    /// Voter node ids: stand-in brokers are combined broker+controller
    /// nodes, up while their process serves; other ids are controllers
    /// that are not modelled as processes, always up.
    pub voters: Vec<i32>,
    /// The elected leader (while it is up).
    pub leader: i32,
    /// Records a voter stays behind the leader while it is up.
    #[serde(default)]
    pub lag: Vec<VoterLag>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoterLag {
    pub voter: i32,
    pub records: i64,
}

impl Quorum {
    /// The node id of the default quorum's only controller.
    pub const SEPARATE_CONTROLLER: i32 = 3000;

    pub fn lag_of(&self, voter: i32) -> i64 {
        self.lag
            .iter()
            .filter(|l| l.voter == voter)
            .map(|l| l.records)
            .max()
            .unwrap_or(0)
    }
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            registration_delay_ms: 200,
            catch_up_delay_ms: 500,
            never_catch_up: Vec::new(),
            slow_shutdown: Vec::new(),
            crash_on_sigterm: Vec::new(),
            fail_start: Vec::new(),
            out_of_sync: Vec::new(),
            offline: Vec::new(),
            reassignments: Vec::new(),
            future_dirs: Vec::new(),
            quorum: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowShutdown {
    pub broker: i32,
    pub ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRef {
    pub topic: String,
    pub partition: i32,
    pub broker: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRef {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    /// The target replica set (preferred leader first).
    pub target: Vec<i32>,
}

impl Scenario {
    /// Reads `path`; a missing file is the default scenario.
    pub fn load(path: &Path) -> Result<Scenario> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("parsing scenario {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Scenario::default()),
            Err(e) => Err(e).with_context(|| format!("reading scenario {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("serializing scenario")?;
        fsutil::write_atomic(path, text.as_bytes())
    }

    /// Checks every broker, topic and partition named exists.
    pub fn validate(&self, def: &ClusterDef) -> Result<()> {
        let ids = def.node_ids();
        let broker_ok = |b: &i32, what: &str| {
            ensure!(ids.contains(b), "scenario {what}: unknown broker {b}");
            Ok(())
        };
        let partition_ok = |topic: &str, p: i32, what: &str| {
            let t = def
                .topic(topic)
                .with_context(|| format!("scenario {what}: unknown topic {topic}"))?;
            ensure!(
                p >= 0 && (p as usize) < t.replicas.len(),
                "scenario {what}: topic {topic} has no partition {p}"
            );
            Ok(t)
        };
        for b in &self.never_catch_up {
            broker_ok(b, "never_catch_up")?;
        }
        for s in &self.slow_shutdown {
            broker_ok(&s.broker, "slow_shutdown")?;
        }
        for b in &self.crash_on_sigterm {
            broker_ok(b, "crash_on_sigterm")?;
        }
        for b in &self.fail_start {
            broker_ok(b, "fail_start")?;
        }
        for r in &self.out_of_sync {
            partition_ok(&r.topic, r.partition, "out_of_sync")?;
            broker_ok(&r.broker, "out_of_sync")?;
        }
        for r in &self.offline {
            partition_ok(&r.topic, r.partition, "offline")?;
        }
        for r in &self.reassignments {
            partition_ok(&r.topic, r.partition, "reassignments")?;
            ensure!(
                !r.target.is_empty(),
                "scenario reassignments: empty target for {}-{}",
                r.topic,
                r.partition
            );
            for b in &r.target {
                broker_ok(b, "reassignments")?;
            }
        }
        for r in &self.future_dirs {
            let t = partition_ok(&r.topic, r.partition, "future_dirs")?;
            ensure!(
                t.replicas[r.partition as usize].contains(&r.broker),
                "scenario future_dirs: broker {} holds no replica of {}-{}",
                r.broker,
                r.topic,
                r.partition
            );
        }
        if let Some(q) = &self.quorum {
            ensure!(!q.voters.is_empty(), "scenario quorum: no voters");
            ensure!(
                q.voters.contains(&q.leader),
                "scenario quorum: leader {} is not a voter",
                q.leader
            );
            for l in &q.lag {
                ensure!(
                    q.voters.contains(&l.voter) && l.records >= 0,
                    "scenario quorum: lag of {} records for {}, not a voter",
                    l.records,
                    l.voter
                );
            }
        }
        Ok(())
    }

    /// The quorum DescribeQuorum reports.
    pub fn quorum(&self) -> Quorum {
        self.quorum.clone().unwrap_or(Quorum {
            voters: vec![Quorum::SEPARATE_CONTROLLER],
            leader: Quorum::SEPARATE_CONTROLLER,
            lag: Vec::new(),
        })
    }

    pub fn slow_shutdown_ms(&self, broker: i32) -> u64 {
        self.slow_shutdown
            .iter()
            .filter(|s| s.broker == broker)
            .map(|s| s.ms)
            .max()
            .unwrap_or(0)
    }

    pub fn is_out_of_sync(&self, topic: &str, partition: i32, broker: i32) -> bool {
        self.out_of_sync
            .iter()
            .any(|r| r.topic == topic && r.partition == partition && r.broker == broker)
    }

    pub fn is_offline(&self, topic: &str, partition: i32) -> bool {
        self.offline
            .iter()
            .any(|r| r.topic == topic && r.partition == partition)
    }

    pub fn reassignment(&self, topic: &str, partition: i32) -> Option<&Reassignment> {
        self.reassignments
            .iter()
            .find(|r| r.topic == topic && r.partition == partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let text = r#"
registration_delay_ms = 200
catch_up_delay_ms = 500
never_catch_up = [3]
slow_shutdown = [{ broker = 2, ms = 3000 }]
crash_on_sigterm = [1]
fail_start = [2]
out_of_sync = [{ topic = "orders", partition = 0, broker = 3 }]
offline = [{ topic = "orders", partition = 1 }]
reassignments = [{ topic = "orders", partition = 2, target = [1, 2, 4] }]
future_dirs = [{ topic = "orders", partition = 0, broker = 1 }]
quorum = { voters = [1, 2, 3], leader = 1, lag = [{ voter = 3, records = 5000 }] }
"#;
        let s: Scenario = toml::from_str(text).unwrap();
        assert_eq!(s.slow_shutdown_ms(2), 3000);
        assert!(s.is_out_of_sync("orders", 0, 3));
        assert!(s.is_offline("orders", 1));
        assert_eq!(s.reassignment("orders", 2).unwrap().target, vec![1, 2, 4]);
        assert_eq!(s.quorum().lag_of(3), 5000);
        let round: Scenario = toml::from_str(&toml::to_string_pretty(&s).unwrap()).unwrap();
        assert_eq!(round, s);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Scenario>("slow_shutdown_ms = 3").is_err());
    }
}
