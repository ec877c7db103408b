//! `kafka-snapshot-agent check` against real Kafka: it passes on a healthy
//! cluster and fails, naming the partitions, for every gate condition the
//! cluster can really be put into: a topic whose replication factor is at
//! most its min ISR, a partition reassignment held in flight by a
//! replication throttle, an intra-broker replica move (a `-future` dir)
//! held by its own throttle, and another broker down.

use super::{wait_for, TOPIC};
use crate::common::bin;
use crate::common::fleet::{write_agent_config, FleetSpec};
use kafka_snapshot_testkit::kafka::KafkaCluster;
use kafka_snapshot_testkit::report;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::ClientConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A throttle low enough that a few MiB stay in flight for minutes.
const THROTTLE: &str = "1024";
/// What the throttled partition holds: more than one replica fetch
/// (`replica.fetch.max.bytes`, 1 MiB) can carry before the quota bites.
const MOVING_BYTES: usize = 6 << 20;

struct Checker {
    cfg: PathBuf,
}

impl Checker {
    fn new(cluster: &KafkaCluster, root: &Path) -> Checker {
        Checker::of(cluster, root, 1)
    }

    /// The config of node `node` (a controller's says `role = "controller"`).
    fn of(cluster: &KafkaCluster, root: &Path, node: i32) -> Checker {
        let dir = root.join(format!("check-{node}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = write_agent_config(
            &dir,
            node,
            cluster,
            &FleetSpec::default(),
            &format!("file://{}", root.join("store").display()),
            "http://127.0.0.1:9",
            &dir.join("state.json"),
        );
        Checker { cfg }
    }

    /// Exit code and output of `check --broker N`.
    fn run(&self, broker: i32) -> (i32, String) {
        let out = Command::new(bin("kafka-snapshot-agent"))
            .args(["check", "--broker", &broker.to_string(), "--config"])
            .arg(&self.cfg)
            .env("KAFKA_SNAPSHOT_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn passes(&self, broker: i32, when: &str) {
        let (code, out) = self.run(broker);
        assert_eq!(code, 0, "check of broker {broker} {when}:\n{out}");
        assert!(out.contains("safe to stop"), "{out}");
    }

    /// `check` fails, the condition `id` is among the failed ones and the
    /// output names `partition`.
    fn fails(&self, broker: i32, id: &str, partition: &str, when: &str) {
        let (code, out) = self.run(broker);
        assert_eq!(code, 1, "check of broker {broker} {when}:\n{out}");
        assert!(out.contains("NOT safe to stop"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("FAIL") && l.contains(id)),
            "check of broker {broker} {when}: {id} did not fail:\n{out}"
        );
        assert!(
            out.contains(partition),
            "check of broker {broker} {when}: {partition} not named:\n{out}"
        );
    }

    /// Waits until `check --broker N` passes; returns that output.
    fn passing_output(&self, broker: i32, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (code, out) = self.run(broker);
            if code == 0 {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "check of broker {broker} still fails after {what}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until `check --broker N` passes again (a move finishing).
    fn wait_passes(&self, broker: i32, what: &str) {
        self.passing_output(broker, what);
    }
}

fn record(case: &str) {
    report::record("real_kafka", &format!("{case} ({})", super::label()), &[]);
}

pub fn gate_on_real_kafka(cluster: &Arc<KafkaCluster>, root: &Path) {
    let check = Checker::new(cluster, root);
    for b in cluster.broker_ids() {
        check.passes(b, "on a healthy cluster");
    }
    record("gate passes on a healthy cluster");

    low_replication(cluster, &check);
    reassignment_in_flight(cluster, &check);
    future_dir(cluster, &check);
    broker_down_elsewhere(cluster, &check);
    controllers(cluster, root);
}

/// The dedicated controllers (KRaft): each passes its own gate (the
/// quorum's, not the brokers'); with another controller stopped, stopping
/// one more would leave fewer than a majority caught up, and the gate
/// refuses naming it. A controller stopped with SIGTERM proves its clean
/// stop by what Kafka leaves in its metadata log; a killed one does not.
fn controllers(cluster: &KafkaCluster, root: &Path) {
    let ids = cluster.controller_ids();
    let [a, b, c] = ids[..] else {
        assert!(ids.is_empty(), "controllers {ids:?}");
        return; // ZooKeeper mode: no controller nodes.
    };
    let check = Checker::of(cluster, root, a);
    for id in [a, b, c] {
        // A leader knows a voter as caught up only once it has fetched to
        // the end of its log since the leader's election (on a loaded
        // machine a young quorum may still elect again).
        let out = check.passing_output(id, "the quorum settled");
        assert!(out.contains("controller_quorum_healthy"), "{out}");
        assert!(!out.contains("own_partitions_in_sync"), "{out}");
    }
    record("gate of a dedicated controller is the quorum's, and passes");

    cluster.stop(c).expect("controller stops");
    let metadata = cluster
        .log_dirs(c)
        .iter()
        .find(|d| d.join("__cluster_metadata-0").is_dir());
    let metadata = metadata.expect("the controller's metadata log dir").clone();
    let proof = kafka_snapshot::cleanstop::check(&metadata)
        .unwrap_or_else(|e| panic!("controller {c} stopped with SIGTERM: {e}"));
    assert!(
        proof.metadata_log_end.is_some_and(|end| end > 0),
        "{proof:?}"
    );
    // Its last caught-up time ages past 2 s on the leader (or, if it was
    // the leader, the new one has never seen it fetch).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out) = check.run(a);
        if code == 1 {
            assert!(out.contains("controller_quorum_healthy"), "{out}");
            assert!(
                out.contains(&format!("controller {c} last caught up"))
                    || out.contains(&format!(
                        "controller {c} has not caught up with the leader since it became leader"
                    )),
                "{out}"
            );
            assert!(out.contains("fewer than the majority"), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "check of controller {a} still passes with controller {c} down:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.start(c).expect("controller starts");
    check.wait_passes(a, "the stopped controller started again");
    record("gate refuses a controller while another is down, naming it");

    cluster.kill(c);
    let e = kafka_snapshot::cleanstop::check(&metadata).expect_err("a killed controller");
    assert!(e.contains("did not stop cleanly"), "{e}");
    cluster.start(c).expect("controller starts");
    check.wait_passes(a, "the killed controller started again");
    record("a controller's clean stop is told from a kill by its metadata log");
}

/// RF 2 with min.insync.replicas 2 on brokers 1 and 2: stopping either
/// blocks acks=all writes, so the gate refuses them, and not broker 3.
fn low_replication(cluster: &KafkaCluster, check: &Checker) {
    cluster
        .create_topic_on("thin", &[vec![1, 2]], &[("min.insync.replicas", "2")])
        .expect("topic thin");
    check.fails(1, "stop_keeps_min_isr", "thin-0", "with RF 2 = min ISR");
    check.passes(3, "which holds no replica of thin");
    cluster.delete_topic("thin").expect("topic thin deleted");
    check.wait_passes(1, "deleting thin");
    record("gate refuses a topic with RF <= min ISR, naming it");
}

/// Fills `moving` (one partition on brokers 1 and 2), throttles
/// replication to a crawl and reassigns it to 1, 2, 3: while the new
/// replica copies, every broker's check refuses, naming the partition.
fn reassignment_in_flight(cluster: &KafkaCluster, check: &Checker) {
    cluster
        .create_topic_on("moving", &[vec![1, 2]], &[])
        .expect("topic moving");
    fill(&cluster.bootstrap(), "moving", MOVING_BYTES);
    let rates = [
        ("leader.replication.throttled.rate", Some(THROTTLE)),
        ("follower.replication.throttled.rate", Some(THROTTLE)),
    ];
    for b in cluster.broker_ids() {
        cluster.alter_broker_config(b, &rates).expect("throttle");
    }
    cluster
        .alter_topic_config(
            "moving",
            &[
                ("leader.replication.throttled.replicas", Some("0:1,0:2")),
                ("follower.replication.throttled.replicas", Some("0:3")),
            ],
        )
        .expect("throttled replicas");
    cluster
        .reassign("moving", 0, Some(&[1, 2, 3]))
        .expect("reassignment");
    for b in cluster.broker_ids() {
        check.fails(b, "no_reassignment", "moving-0", "during a reassignment");
    }
    // Lift the throttle: the copy finishes in a moment.
    let unset = [
        ("leader.replication.throttled.rate", None),
        ("follower.replication.throttled.rate", None),
    ];
    for b in cluster.broker_ids() {
        cluster.alter_broker_config(b, &unset).expect("unthrottle");
    }
    cluster
        .alter_topic_config(
            "moving",
            &[
                ("leader.replication.throttled.replicas", None),
                ("follower.replication.throttled.replicas", None),
            ],
        )
        .expect("unthrottled replicas");
    for b in cluster.broker_ids() {
        check.wait_passes(b, "the reassignment finished");
    }
    record("gate refuses during a partition reassignment, naming the partition");
}

/// Moves broker 1's replica of `moving-0` to its other log dir with the
/// intra-broker copy throttled: Kafka copies it into a `-future` dir
/// there, and broker 1's check refuses, naming it.
fn future_dir(cluster: &KafkaCluster, check: &Checker) {
    let dirs = cluster.log_dirs(1).to_vec();
    let (from, to) = if dirs[0].join("moving-0").is_dir() {
        (&dirs[0], &dirs[1])
    } else {
        (&dirs[1], &dirs[0])
    };
    assert!(
        from.join("moving-0").is_dir(),
        "moving-0 in no dir of broker 1: {dirs:?}"
    );
    let key = "replica.alter.log.dirs.io.max.bytes.per.second";
    cluster
        .alter_broker_config(1, &[(key, Some(THROTTLE))])
        .expect("throttle");
    cluster
        .move_replica_dir(1, "moving", 0, to)
        .expect("replica move");
    let future = || {
        std::fs::read_dir(to).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("moving-0.") && n.ends_with("-future"))
        })
    };
    wait_for(
        "the -future dir of moving-0",
        Duration::from_secs(60),
        || future().is_some(),
    );
    check.fails(1, "no_future_dir", "moving-0", "during a replica move");
    cluster
        .alter_broker_config(1, &[(key, None)])
        .expect("unthrottle");
    check.wait_passes(1, "the replica move finished");
    assert!(
        to.join("moving-0").is_dir() && !from.join("moving-0").exists(),
        "moving-0 did not move from {} to {}",
        from.display(),
        to.display()
    );
    cluster
        .delete_topic("moving")
        .expect("topic moving deleted");
    record("gate refuses during an intra-broker move (-future dir), naming it");
}

/// Broker 3 stopped: stopping broker 1 too would leave the partitions
/// they share with one in-sync replica, under min ISR 2.
fn broker_down_elsewhere(cluster: &KafkaCluster, check: &Checker) {
    cluster.stop(3).expect("broker 3 stops");
    // Out of every ISR and no longer a registered broker: until its
    // session ends Kafka (seen on 3.9) still lists it, and a check then
    // fails closed on the queries it cannot answer instead of naming the
    // partitions.
    wait_for(
        "broker 3 out of every ISR and the cluster",
        Duration::from_secs(60),
        || {
            cluster.metadata().is_ok_and(|md| {
                md.brokers.iter().all(|b| b.node_id.0 != 3)
                    && md.topics.iter().all(|t| {
                        t.partitions
                            .iter()
                            .all(|p| !p.isr_nodes.iter().any(|b| b.0 == 3))
                    })
            })
        },
    );
    check.fails(
        1,
        "stop_keeps_min_isr",
        &format!("{TOPIC}-"),
        "with broker 3 down",
    );
    cluster.start(3).expect("broker 3 starts");
    cluster
        .wait_in_sync(Duration::from_secs(120))
        .expect("broker 3 back in every ISR");
    record("gate refuses with another broker down, naming the partitions");
}

/// Writes about `bytes` of 1 KiB records to `topic` with acks=all.
fn fill(bootstrap: &str, topic: &str, bytes: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let value = vec![b'x'; 1024];
    for i in 0..bytes / value.len() {
        let key = i.to_string();
        let mut rec = BaseRecord::<String, [u8]>::to(topic)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every record of the fill delivered");
}
