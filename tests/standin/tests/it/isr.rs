//! The shared cluster view: ISR shrink and rejoin, fencing, scenario
//! switches that keep replicas out, and the max-brokers-down observer.

use std::time::Duration;

use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse, MetadataResponse};
use kafka_snapshot_standin::{EventKind, PartitionRef, ReplicaRef};

use crate::common::*;

/// Every (topic, partition, leader, replicas, isr, offline replicas, error).
type Row = (String, i32, i32, Vec<i32>, Vec<i32>, Vec<i32>, i16);

fn rows(md: &MetadataResponse) -> Vec<Row> {
    let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    let mut out = Vec::new();
    for t in &md.topics {
        for p in &t.partitions {
            out.push((
                t.name.as_ref().unwrap().0.to_string(),
                p.partition_index,
                p.leader_id.0,
                ids(&p.replica_nodes),
                ids(&p.isr_nodes),
                ids(&p.offline_replicas),
                p.error_code,
            ));
        }
    }
    out
}

fn listed(md: &MetadataResponse) -> Vec<i32> {
    let mut v: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    v.sort();
    v
}

fn describe_cluster(c: &TestCluster, via: i32) -> DescribeClusterResponse {
    let mut conn = c.connect(via).unwrap();
    conn.send(
        &DescribeClusterRequest::default().with_include_fenced_brokers(true),
        2,
    )
    .unwrap()
}

fn fenced(d: &DescribeClusterResponse, id: i32) -> Option<bool> {
    d.brokers
        .iter()
        .find(|b| b.broker_id.0 == id)
        .map(|b| b.is_fenced)
}

#[test]
fn stopped_broker_leaves_every_isr_and_rejoins_after_the_catch_up_delay() {
    let c = running(3);
    c.update_scenario(|s| {
        s.registration_delay_ms = 1000;
        s.catch_up_delay_ms = 1500;
    })
    .unwrap();
    c.stop(2).unwrap();
    c.wait_exited(2, TIMEOUT).unwrap();
    let md = c.metadata().unwrap();
    assert_eq!(listed(&md), vec![1, 3]);
    for (t, p, leader, replicas, isr, offline, err) in rows(&md) {
        assert_eq!(replicas.len(), 3, "{t}-{p}");
        assert!(!isr.contains(&2), "{t}-{p} ISR {isr:?}");
        assert_ne!(leader, 2);
        assert_eq!(leader, isr[0], "{t}-{p}: first in-sync replica leads");
        assert_eq!(offline, vec![2], "{t}-{p}");
        assert_eq!(err, 0);
    }
    assert_eq!(fenced(&describe_cluster(&c, 1), 2), Some(true));

    c.start(2).unwrap();
    // Fenced until registered, then listed but still out of the ISRs.
    assert_eq!(fenced(&describe_cluster(&c, 2), 2), Some(true));
    assert!(!listed(&c.metadata().unwrap()).contains(&2));
    kafka_snapshot_standin::wait_until(TIMEOUT, || Ok(listed(&c.metadata()?).contains(&2)))
        .unwrap();
    assert_eq!(fenced(&describe_cluster(&c, 3), 2), Some(false));
    let md = c.metadata().unwrap();
    assert!(
        rows(&md).iter().all(|r| !r.4.contains(&2)),
        "not caught up yet"
    );
    c.wait_in_sync(TIMEOUT).unwrap();
    let md = c.metadata().unwrap();
    for (t, p, leader, replicas, isr, _, _) in rows(&md) {
        assert_eq!(isr, replicas, "{t}-{p}");
        assert_eq!(leader, replicas[0], "{t}-{p}: preferred leader again");
    }
    let ev = c.events().unwrap();
    let at = |kind| {
        ev.iter()
            .rev()
            .find(|e| e.broker == 2 && e.kind == kind)
            .unwrap()
            .mono_ns
    };
    let ms = |ns: u64| ns / 1_000_000;
    assert!(ms(at(EventKind::Registered) - at(EventKind::Started)) >= 1000);
    assert!(ms(at(EventKind::CaughtUp) - at(EventKind::Registered)) >= 1500);
}

#[test]
fn sigkilled_broker_drops_out_at_once() {
    let c = running(3);
    let pid = c.pid(3).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // No waiting for the broker: its process is gone (or a zombie).
    kafka_snapshot_standin::wait_until(Duration::from_secs(2), || {
        Ok(!listed(&c.metadata()?).contains(&3))
    })
    .unwrap();
    assert!(rows(&c.metadata().unwrap())
        .iter()
        .all(|r| !r.4.contains(&3)));
    for d in c.log_dirs(3) {
        assert!(!d.join(".kafka_cleanshutdown").exists());
    }
}

#[test]
fn a_broker_that_never_catches_up_stays_out_of_every_isr() {
    let c = running(3);
    c.update_scenario(|s| s.never_catch_up.push(3)).unwrap();
    c.stop(3).unwrap();
    c.wait_exited(3, TIMEOUT).unwrap();
    c.start(3).unwrap();
    kafka_snapshot_standin::wait_until(TIMEOUT, || Ok(listed(&c.metadata()?).contains(&3)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let md = c.metadata().unwrap();
    assert_eq!(listed(&md), vec![1, 2, 3]);
    for (t, p, _, replicas, isr, offline, _) in rows(&md) {
        assert!(replicas.contains(&3));
        assert!(!isr.contains(&3), "{t}-{p}");
        assert!(offline.is_empty(), "registered brokers are not offline");
    }
    assert!(c.liveness(3).registered);
    assert!(!c.liveness(3).in_sync);
    c.update_scenario(|s| s.never_catch_up.clear()).unwrap();
    c.wait_in_sync(TIMEOUT).unwrap();
}

#[test]
fn offline_and_under_replicated_partitions() {
    let c = running(3);
    c.update_scenario(|s| {
        s.offline.push(PartitionRef {
            topic: "orders".into(),
            partition: 1,
        });
        s.out_of_sync.push(ReplicaRef {
            topic: "payments.v2".into(),
            partition: 0,
            broker: 3,
        });
    })
    .unwrap();
    let md = c.metadata().unwrap();
    for (t, p, leader, replicas, isr, _, err) in rows(&md) {
        match (t.as_str(), p) {
            ("orders", 1) => {
                assert_eq!(leader, -1);
                assert_eq!(err, 5, "LEADER_NOT_AVAILABLE");
                assert_eq!(isr.len(), 1, "Kafka keeps the last in-sync replica");
            }
            ("payments.v2", 0) => {
                assert!(!isr.contains(&3));
                assert_eq!(isr.len(), 2);
                assert_ne!(leader, 3);
                assert_eq!(err, 0);
            }
            _ => {
                assert_eq!(isr, replicas, "{t}-{p}");
                assert_eq!(err, 0);
            }
        }
    }
    // wait_in_sync does not wait for what the scenario keeps out.
    c.wait_in_sync(TIMEOUT).unwrap();
    c.update_scenario(|s| {
        s.offline.clear();
        s.out_of_sync.clear();
    })
    .unwrap();
    let md = c.metadata().unwrap();
    assert!(rows(&md).iter().all(|r| r.3 == r.4 && r.6 == 0));
    // Leader epochs only grow: orders-1 went offline and back.
    let p = &md
        .topics
        .iter()
        .find(|t| t.name.as_ref().unwrap().0.as_str() == "orders")
        .unwrap()
        .partitions[1];
    assert!(p.leader_epoch >= 3, "epoch {}", p.leader_epoch);
}

#[test]
fn observer_sees_one_broker_down_in_a_rolling_restart_and_two_when_they_overlap() {
    let c = running(3);
    assert_eq!(c.max_brokers_down().unwrap(), 0);
    for id in c.node_ids() {
        c.stop(id).unwrap();
        c.wait_exited(id, TIMEOUT).unwrap();
        c.start(id).unwrap();
        c.wait_in_sync(TIMEOUT).unwrap();
    }
    assert_eq!(c.max_brokers_down().unwrap(), 1);
    // Stopping the next broker before the previous one caught up.
    c.update_scenario(|s| s.catch_up_delay_ms = 5000).unwrap();
    c.stop(1).unwrap();
    c.wait_exited(1, TIMEOUT).unwrap();
    c.start(1).unwrap();
    c.stop(2).unwrap();
    c.wait_exited(2, TIMEOUT).unwrap();
    assert_eq!(c.max_brokers_down().unwrap(), 2);
    // SIGKILL through the library is seen too.
    c.kill(3).unwrap();
    assert_eq!(c.max_brokers_down().unwrap(), 3);
}
