//! Watches a cluster from outside while a test runs: polls Metadata every
//! 100 ms and records what operators care about: the most brokers missing
//! at once, and every sample where a partition was offline (no leader) or
//! had fewer in-sync replicas than its min ISR. Works against the stand-in
//! and against real Kafka alike: it only needs a Metadata response.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use kafka_protocol::messages::MetadataResponse;

/// What the observer saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Metadata responses looked at.
    pub samples: u64,
    /// The most brokers missing from Metadata at the same moment.
    pub max_missing: usize,
    /// Samples with at least one partition under its min ISR.
    pub samples_under_min_isr: u64,
    /// Samples with at least one partition without a leader.
    pub samples_offline: u64,
    /// Each partition seen under min ISR, with its ISR then
    /// (`orders-3 isr [1] leader 1`), in the order seen.
    pub under_min_isr: Vec<String>,
    /// Each partition seen without a leader, the same way.
    pub offline: Vec<String>,
}

struct Shared {
    stop: AtomicBool,
    seen: Mutex<Seen>,
}

pub struct Observer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    /// Polls `metadata` until [`Observer::finish`]. `brokers` is how many
    /// brokers the cluster has; `min_isr` the min ISR of every partition.
    pub fn start(
        brokers: usize,
        min_isr: usize,
        metadata: impl Fn() -> Result<MetadataResponse> + Send + 'static,
    ) -> Observer {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            seen: Mutex::new(Seen::default()),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                if let Ok(md) = metadata() {
                    s.seen.lock().unwrap().sample(&md, brokers, min_isr);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Observer {
            shared,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Seen {
        self.stop_thread();
        self.shared.seen.lock().unwrap().clone()
    }

    fn stop_thread(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl Seen {
    fn sample(&mut self, md: &MetadataResponse, brokers: usize, min_isr: usize) {
        self.samples += 1;
        self.max_missing = self
            .max_missing
            .max(brokers.saturating_sub(md.brokers.len()));
        let (mut under, mut offline) = (false, false);
        for t in &md.topics {
            let name = t.name.as_ref().map(|n| n.0.as_str()).unwrap_or_default();
            for p in &t.partitions {
                let isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
                let what = || {
                    format!(
                        "{name}-{} isr {isr:?} leader {}",
                        p.partition_index, p.leader_id.0
                    )
                };
                if isr.len() < min_isr {
                    under = true;
                    self.under_min_isr.push(what());
                }
                if p.leader_id.0 < 0 {
                    offline = true;
                    self.offline.push(what());
                }
            }
        }
        self.samples_under_min_isr += u64::from(under);
        self.samples_offline += u64::from(offline);
    }
}
