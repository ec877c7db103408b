//! The gate, `check` and a full `snapshot` cycle against a stand-in cluster:
//! real broker processes speaking the Kafka protocol, stopped and started by
//! the agent through scripts, observed from the cluster's own event log.

use crate::common::*;
use kafka_snapshot_standin::ReplicaRef;
use std::time::Duration;

#[test]
fn check_reports_each_condition_against_the_live_cluster() {
    let t = scratch("ext4");
    let c = standin_cluster(t.path(), |_| {});
    let store = new_store(t.path());
    let cfg = AgentToml::new(&c, 1, &store).write(t.path());
    let cfg_s = cfg.display().to_string();

    let out = run(&["check", "--config", &cfg_s], 0);
    let text = stdout(&out);
    assert!(
        text.contains("safe to stop") && text.matches("PASS").count() == 8,
        "{text}"
    );

    // One of broker 1's replicas falls out of sync somewhere: not safe, and
    // the report names the condition and the partition.
    let md = c.metadata().unwrap();
    let (topic, partition) = md
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .find(|(_, p)| {
            p.replica_nodes.iter().any(|r| r.0 == 1) && p.replica_nodes.iter().any(|r| r.0 == 2)
        })
        .map(|(t, p)| (t.name.as_ref().unwrap().0.to_string(), p.partition_index))
        .expect("a partition on brokers 1 and 2");
    c.update_scenario(|s| {
        s.out_of_sync.push(ReplicaRef {
            topic: topic.clone(),
            partition,
            broker: 2,
        })
    })
    .unwrap();
    let out = run(&["check", "--config", &cfg_s, "--json"], 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = v["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"own_partitions_in_sync"), "{v}");
    assert!(
        v.to_string().contains(&format!("{topic}-{partition}")),
        "{v}"
    );

    // The cluster unreachable: not safe, never "safe".
    c.update_scenario(|s| s.out_of_sync.clear()).unwrap();
    c.kill_all();
    let out = run(&["check", "--config", &cfg_s], 1);
    assert!(
        stdout(&out).contains("cluster_reachable"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn snapshot_cycle_stops_one_broker_and_brings_it_back() {
    let t = scratch("xfs");
    let c = standin_cluster(t.path(), |_| {});
    let store = new_store(t.path());
    let cfg = AgentToml::new(&c, 2, &store).write(t.path());
    let out = run(
        &[
            "snapshot",
            "--config",
            &cfg.display().to_string(),
            "--gate-timeout",
            "60s",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("snapshot --json output");
    assert_eq!(v["broker"], 2);
    assert_eq!(v["capture"], "reflink");
    let down = v["broker_downtime_ms"]
        .as_u64()
        .expect("broker_downtime_ms");
    // Stop until back in every ISR: at least the downtime, plus the
    // stand-in's catch-up delay seen by the recovery check.
    let unavailable = v["broker_unavailable_ms"]
        .as_u64()
        .expect("broker_unavailable_ms");
    assert!(unavailable >= down, "{v}");

    // Observed from the cluster: broker 2 went down once and is back.
    assert!(c.is_running(2));
    assert_eq!(c.max_brokers_down().unwrap(), 1);
    c.wait_in_sync(Duration::from_secs(30)).unwrap();
    let id = v["snapshot_id"].as_str().unwrap();
    run(
        &[
            "archive",
            "verify",
            "--store",
            &store_url(&store),
            "--snapshot",
            id,
        ],
        0,
    );
}
