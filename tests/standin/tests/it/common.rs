//! Shared set-up: small, fast clusters in their own temp dirs.

use std::path::PathBuf;
use std::time::Duration;

use kafka_snapshot_standin::{ClusterSpec, Scenario, StandinCluster};

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct TestCluster {
    pub cluster: StandinCluster,
    // Dropped after the cluster: brokers are killed before their dirs go.
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestCluster {
    type Target = StandinCluster;
    fn deref(&self) -> &StandinCluster {
        &self.cluster
    }
}

/// A spec with short delays so tests run quickly.
pub fn fast_spec(brokers: usize) -> ClusterSpec {
    let mut spec = ClusterSpec::new(brokers);
    spec.broker_binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_ksnap-standin-broker")));
    spec.append_interval = Duration::from_millis(50);
    spec.scenario = Scenario {
        registration_delay_ms: 50,
        catch_up_delay_ms: 150,
        ..Scenario::default()
    };
    spec
}

pub fn create(spec: &ClusterSpec) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = StandinCluster::create(dir.path(), spec).expect("create cluster");
    TestCluster { cluster, _dir: dir }
}

/// A running 3-broker cluster, in sync.
pub fn running(brokers: usize) -> TestCluster {
    let c = create(&fast_spec(brokers));
    c.start_all(TIMEOUT).expect("start all");
    c
}
