//! The product against Apache Kafka itself (the release tests/lib/kafka.sh
//! installs, `KSNAP_TEST_KAFKA_HOME`): a KRaft cluster of three dedicated
//! controllers and three brokers, two log dirs each: brokers 1 and 2 on the
//! test XFS (reflink capture), broker 3 on the test ext4 (`capture =
//! "auto"` falls back to a copy there). One cluster serves the checks in
//! order, in one test, so six JVMs start once:
//!
//! 1. `kafka-snapshot-agent check` passes on the healthy cluster, and fails
//!    naming the partitions for each condition Kafka can be put into (see
//!    `real_kafka/gate.rs`).
//! 2. A rolling cycle through the coordinator and three agent daemons
//!    while a producer writes with acks=all and idempotence.
//! 3. `coordinator restore --broker 2` while the producer writes.
//!
//! After 2 and 3: every acknowledged record is read back exactly once, an
//! observer polling Metadata never saw more than one broker missing nor a
//! partition offline or under min ISR, a consumer group's committed
//! offsets are those it committed before, and every snapshot verifies.

mod common;
#[path = "real_kafka/gate.rs"]
mod gate;

use common::fleet::{observe, scratch, Fleet, FleetSpec, Seen};
use kafka_snapshot_testkit::kafka::{KafkaCluster, KafkaSpec, Mode, VERSION_ENV};
use kafka_snapshot_testkit::report;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 6;

#[test]
fn real_kafka_gate_cycle_and_restore() {
    let started = Instant::now();
    let t = scratch();
    let root = t.path().to_path_buf();
    let ext4 = ext4_scratch();
    let spec = KafkaSpec {
        data_root: Some(root.join("data")),
        broker_data_roots: vec![(3, ext4.path().join("data"))],
        ..KafkaSpec::default()
    };
    let cluster =
        Arc::new(KafkaCluster::create(&root.join("kafka"), &spec).expect("Kafka cluster"));
    cluster
        .start_all(Duration::from_secs(180))
        .expect("Kafka cluster starts");
    cluster
        .create_topic(TOPIC, PARTITIONS, 3, 2)
        .expect("topic created");
    eprintln!("cluster up after {:?}", started.elapsed());
    let committed = commit_group_offsets(&cluster.bootstrap());

    gate::gate_on_real_kafka(&cluster, &root);
    eprintln!("gate checked after {:?}", started.elapsed());

    let encryption = encryption_config(&root);
    let spec = FleetSpec {
        capture: "auto",
        ttl: "10s",
        recovery_timeout: "180s",
        // Agents on the three dedicated controllers too (KRaft).
        controllers: true,
        agent_extra: encryption.clone(),
        snapshot_extra: snapshot_mode(),
        ..FleetSpec::default()
    };
    let mut f = Fleet::around(t, cluster, spec);
    let mut acked = Vec::new();
    let cycle = rolling_cycle(&f, &mut acked);
    eprintln!("cycle done after {:?}", started.elapsed());
    let faults = controller_faults(&mut f, &mut acked);
    eprintln!("controller faults done after {:?}", started.elapsed());
    let restore = restore_broker_2(&f, &mut acked);
    eprintln!("restore done after {:?}", started.elapsed());
    if !encryption.is_empty() {
        every_snapshot_encrypted_and_verified_with_the_identity(&f);
    }
    if incremental() {
        every_snapshot_incremental_and_verified(&f);
    }
    assert_eq!(
        group_offsets(&f.cluster.bootstrap()),
        committed,
        "the consumer group's committed offsets changed"
    );
    // Last: the whole cluster is lost and restored from its newest set
    // (KRaft: the controllers' snapshots hold the metadata).
    let disasters = if f.cluster.controller_ids().is_empty() {
        Vec::new()
    } else {
        let (in_place, lost) = lose_and_restore_the_cluster(&f, &acked, &committed);
        eprintln!("whole-cluster restore done after {:?}", started.elapsed());
        let new_hosts = restore_onto_new_hosts(&mut f, &lost, &committed, &encryption);
        eprintln!("restore onto new hosts done after {:?}", started.elapsed());
        vec![
            ("whole cluster lost and restored from a snapshot set", in_place),
            (
                "whole cluster restored onto new hosts (new ports, freshly formatted dirs, a new coordinator)",
                new_hosts,
            ),
        ]
    };

    let mut cases = vec![
        (format!("rolling cycle under load ({})", label()), cycle),
        (
            format!("restore of broker 2 under load ({})", label()),
            restore,
        ),
    ];
    if let Some(faults) = faults {
        cases.push((
            format!(
                "agent killed while its controller is down, a second controller failing \
                 meanwhile; coordinator killed while a controller is down ({})",
                label()
            ),
            faults,
        ));
    }
    for (case, d) in disasters {
        report::record(
            "real_kafka",
            &format!("{case} ({})", label()),
            &[
                ("records_acked_before_the_set", d.before.acked),
                ("records_acked_before_the_set_read_back", d.before.read_back),
                ("records_acked_during_the_set", d.during_acked),
                ("records_acked_during_the_set_read_back", d.during_read_back),
                ("records_acked_after_the_set", d.after_acked),
                ("records_acked_after_the_set_read_back", d.after_read_back),
                ("nodes_restored", d.nodes),
            ],
        );
    }
    for (case, (seen, read)) in cases {
        report::record(
            "real_kafka",
            &case,
            &[
                ("records_acked", read.acked),
                ("records_read_back", read.read_back),
                ("max_brokers_missing", seen.max_missing as u64),
                ("samples", seen.samples),
                ("samples_under_min_isr", seen.samples_under_min_isr),
                ("samples_offline", seen.samples_offline),
            ],
        );
    }
}

fn rolling_cycle(f: &Fleet<KafkaCluster>, acked: &mut Vec<u64>) -> (Seen, ReadBack) {
    let observer = observe(&f.cluster);
    let nodes = NodeWatch::start(&f.cluster);
    let producer = Producer::start(&f.cluster.bootstrap(), 0);
    f.coord.cli_ok(&["run-now"], 0);
    let st = f.wait_cycle_end(Duration::from_secs(600));
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    // Brokers first, the dedicated controllers last.
    let controllers = f.cluster.controller_ids();
    let expected: Vec<i64> = [1, 2, 3]
        .into_iter()
        .chain(controllers.iter().copied())
        .map(i64::from)
        .collect();
    let order: Vec<i64> = st["cycle"]["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["broker"].as_i64().unwrap())
        .collect();
    assert_eq!(order, expected, "{st:#}");
    let snaps = f.snapshots();
    let mut snapped: Vec<i64> = snaps
        .iter()
        .map(|s| s["broker"].as_i64().unwrap())
        .collect();
    snapped.sort_unstable();
    assert_eq!(snapped, expected, "{snaps:#?}");
    for s in &snaps {
        // Broker 3's log dirs are on ext4: `auto` copies there.
        let want = if s["broker"] == 3 { "copy" } else { "reflink" };
        assert_eq!(s["capture"], want, "{s:#}");
        // A controller's clean stop is proven by its closed metadata log.
        assert_eq!(s["clean_shutdown"], true, "{s:#}");
    }
    f.wait_all_verified(Duration::from_secs(120));
    let from = acked.len();
    acked.extend(producer.finish());
    let seen = observer.finish();
    let down = nodes.finish();
    assert!(
        down <= 1,
        "rolling cycle: {down} nodes (brokers and controllers) were down at once\n{}",
        f.logs()
    );
    let read = after_load(f, &seen, acked, from, "rolling cycle");
    (seen, read)
}

/// The fault cases of a controller's snapshot, on real controllers (KRaft
/// only), while the producer writes:
/// - the agent of controller B is SIGKILLed while B is down for its
///   snapshot, and controller C fails meanwhile (the quorum is down to A);
/// - the gate of A then refuses (C is not a caught-up voter), and the
///   coordinator grants nothing while the quorum is not whole;
/// - the restarted agent starts B again before anything else; once C is
///   back the cycle finishes, and nothing acknowledged was lost;
/// - then the coordinator is SIGKILLed while controller A is down for its
///   snapshot and started again: A runs again, the cycle ends `done`, and
///   no second node was down meanwhile.
fn controller_faults(
    f: &mut Fleet<KafkaCluster>,
    acked: &mut Vec<u64>,
) -> Option<(Seen, ReadBack)> {
    let ids = f.cluster.controller_ids();
    let [a, b, c] = ids[..] else {
        return None;
    };
    let observer = observe(&f.cluster);
    let first = acked.iter().max().map_or(0, |m| m + 1);
    let producer = Producer::start(&f.cluster.bootstrap(), first);
    f.agent(b).terminate();
    f.agent(b).start_with(&["phase-capturing"]);
    f.coord.cli_ok(&["run-now", "--broker", &b.to_string()], 0);
    f.agent(b)
        .wait_paused("phase-capturing", Duration::from_secs(180));
    assert!(
        !f.cluster.is_running(b),
        "controller {b} runs while its agent captures"
    );
    // The agent dies with its controller down; a second controller fails.
    f.agent(b).kill();
    f.cluster.kill(c);
    // The restarted agent starts its controller again first thing.
    f.agent(b).start();
    wait_for(
        "the controller its agent stopped started again",
        Duration::from_secs(120),
        || f.cluster.is_running(b),
    );
    // A's gate refuses while C is down, naming it.
    wait_for(
        "controller A's gate to refuse",
        Duration::from_secs(60),
        || {
            let (code, out, _) = check_controller(f, a);
            code == 1 && out.contains(&format!("controller {c}"))
        },
    );
    // The lease the killed agent held ended badly: nothing is granted
    // until the cluster, quorum included, is whole again.
    f.wait_status("the lease settling", Duration::from_secs(60), |st| {
        st["lease"]["state"] == "settling"
    });
    f.cluster.start(c).expect("controller C starts");
    let st = f.wait_cycle_end(Duration::from_secs(300));
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    let (code, out, _) = check_controller(f, a);
    assert_eq!(code, 0, "{out}");

    // The coordinator is SIGKILLed while controller A is down for its
    // snapshot, and comes back: A runs again, the cycle ends done, and no
    // second node was down meanwhile.
    let nodes = NodeWatch::start(&f.cluster);
    f.agent(a).terminate();
    f.agent(a).start_with(&["phase-capturing"]);
    f.coord.cli_ok(&["run-now", "--broker", &a.to_string()], 0);
    f.agent(a)
        .wait_paused("phase-capturing", Duration::from_secs(180));
    assert!(
        !f.cluster.is_running(a),
        "controller {a} runs while its agent captures"
    );
    f.coord.kill();
    f.agent(a).resume("phase-capturing");
    std::thread::sleep(Duration::from_secs(3));
    f.coord.start();
    let st = f.wait_cycle_end(Duration::from_secs(300));
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    assert!(f.cluster.is_running(a), "controller {a} does not run");
    let down = nodes.finish();
    assert!(
        down <= 1,
        "coordinator killed: {down} nodes were down at once\n{}",
        f.logs()
    );
    let (code, out, _) = check_controller(f, a);
    assert_eq!(code, 0, "{out}");
    let from = acked.len();
    acked.extend(producer.finish());
    let seen = observer.finish();
    let read = after_load(f, &seen, acked, from, "controller faults");
    Some((seen, read))
}

/// `kafka-snapshot-agent check` with controller `node`'s own config.
fn check_controller(f: &Fleet<KafkaCluster>, node: i32) -> (i32, String, String) {
    f.agent_cli_of(node, &["check"])
}

/// Watches every node's process (brokers and controllers) every 50 ms: the
/// most that were down at once.
struct NodeWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl NodeWatch {
    fn start(cluster: &Arc<KafkaCluster>) -> NodeWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c) = (stop.clone(), cluster.clone());
        let ids: Vec<i32> = c
            .broker_ids()
            .into_iter()
            .chain(c.controller_ids())
            .collect();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !s.load(Ordering::Relaxed) {
                let down = ids.iter().filter(|id| !c.is_running(**id)).count();
                most = most.max(down);
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        });
        NodeWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn restore_broker_2(f: &Fleet<KafkaCluster>, acked: &mut Vec<u64>) -> (Seen, ReadBack) {
    let snap2: Value = f
        .snapshots()
        .into_iter()
        .find(|s| s["broker"] == 2)
        .expect("a snapshot of broker 2");
    let id2 = snap2["snapshot_id"].as_str().unwrap().to_string();
    let observer = observe(&f.cluster);
    // Keys after the cycle's: one sequence over the whole test.
    let first = acked.iter().max().map_or(0, |m| m + 1);
    let producer = Producer::start(&f.cluster.bootstrap(), first);
    std::thread::sleep(Duration::from_secs(2));
    let out = f.coord.cli_ok(&["restore", "--broker", "2", "--yes"], 0);
    assert!(
        out.contains(&format!("from snapshot {id2}")) && out.contains("done"),
        "{out}\n{}",
        f.logs()
    );
    f.cluster
        .wait_in_sync(Duration::from_secs(120))
        .expect("broker 2 back in every ISR");
    std::thread::sleep(Duration::from_secs(2));
    let from = acked.len();
    acked.extend(producer.finish());
    let seen = observer.finish();
    let read = after_load(f, &seen, acked, from, "restore");
    (seen, read)
}

/// What a whole-cluster restore brought back, by when each record was
/// acknowledged: before the set's cycle started, during it, after it.
struct Disaster {
    before: ReadBack,
    during_acked: u64,
    during_read_back: u64,
    after_acked: u64,
    after_read_back: u64,
    nodes: u64,
}

/// A lost cluster: the set to restore it from and the records
/// acknowledged before, during and after that set's cycle.
struct Lost {
    cluster_id: String,
    set_id: String,
    before: Vec<u64>,
    during: Vec<u64>,
    after: Vec<u64>,
}

const DR_TOPIC: &str = "dr-config";
const DR_RETENTION: &str = "86400123";
const DR_AFTER_TOPIC: &str = "dr-after-the-set";

/// The cluster is lost: after a cycle that records a complete, verified
/// set, every node is killed and its log dirs are deleted (the same hosts
/// with empty disks). `restore --cluster` brings every node back from the
/// set: controllers first, then brokers. What is checked is in
/// [`check_restored`].
fn lose_and_restore_the_cluster(
    f: &Fleet<KafkaCluster>,
    acked: &[u64],
    committed: &[(i32, i64)],
) -> (Disaster, Lost) {
    f.cluster
        .create_topic(DR_TOPIC, 3, 3, 2)
        .expect("dr-config topic created");
    f.cluster
        .alter_topic_config(DR_TOPIC, &[("retention.ms", Some(DR_RETENTION))])
        .expect("retention.ms set");
    // Acknowledged before the cycle: with every key of the test so far.
    let key = acked.iter().max().map_or(0, |m| m + 1);
    let producer = Producer::start(&f.cluster.bootstrap(), key);
    std::thread::sleep(Duration::from_secs(2));
    let mut before: Vec<u64> = acked.to_vec();
    let before_from = before.len();
    before.extend(producer.finish());
    assert!(
        before.len() - before_from > 100,
        "only {} records acknowledged just before the set's cycle",
        before.len() - before_from
    );
    // During the cycle that records the set.
    let key = before.iter().max().map_or(0, |m| m + 1);
    let producer = Producer::start(&f.cluster.bootstrap(), key);
    f.coord.cli_ok(&["run-now"], 0);
    let st = f.wait_cycle_end(Duration::from_secs(600));
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    let during = producer.finish();
    f.wait_all_verified(Duration::from_secs(180));
    let sets: Value = serde_json::from_str(&f.coord.cli_ok(&["snapshots", "--sets", "--json"], 0))
        .expect("sets as JSON");
    let set = sets
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .expect("a snapshot set");
    assert_eq!(set["complete"], true, "{set:#}");
    assert_eq!(set["verified"], true, "{set:#}");
    let set_id = set["set_id"].as_str().unwrap().to_string();
    // After the set: a config change, a new topic, more records.
    f.cluster
        .alter_topic_config(DR_TOPIC, &[("retention.ms", Some("999999"))])
        .expect("retention.ms changed after the set");
    f.cluster
        .create_topic(DR_AFTER_TOPIC, 1, 3, 2)
        .expect("topic created after the set");
    let key = during.iter().max().map_or(key, |m| m + 1);
    let producer = Producer::start(&f.cluster.bootstrap(), key);
    std::thread::sleep(Duration::from_secs(2));
    let after = producer.finish();

    // A cluster that serves clients is not restored without --force.
    let out = f.coord.cli(&["restore", "--cluster", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("serving clients"), "{err}");

    // The disaster: every node dies, every log dir is gone.
    f.cluster.kill_all();
    for n in all_nodes(&f.cluster) {
        for d in f.cluster.log_dirs(n) {
            std::fs::remove_dir_all(d).unwrap_or_else(|e| panic!("removing {}: {e}", d.display()));
        }
    }
    let lost = Lost {
        cluster_id: f.cluster.cluster_id().to_string(),
        set_id,
        before,
        during,
        after,
    };
    let d = restore_cluster_and_check(f, &lost, committed);
    (d, lost)
}

/// The same set onto new hosts: a second cluster of the same node ids on
/// other ports and dirs, formatted by its installer (another cluster.id:
/// those dirs are moved aside), with its own agents and a new coordinator
/// that knows nothing but the store (`catalog rebuild`) and the lost
/// cluster's id. The old cluster's agents and coordinator are gone.
fn restore_onto_new_hosts(
    f: &mut Fleet<KafkaCluster>,
    lost: &Lost,
    committed: &[(i32, i64)],
    agent_extra: &str,
) -> Disaster {
    f.cluster.kill_all();
    for n in all_nodes(&f.cluster) {
        f.agent(n).kill();
    }
    f.coord.kill();
    let t = scratch();
    let spec = KafkaSpec {
        data_root: Some(t.path().join("data")),
        ..KafkaSpec::default()
    };
    let cluster = Arc::new(
        KafkaCluster::create(&t.path().join("kafka"), &spec).expect("the new hosts' cluster"),
    );
    assert_ne!(cluster.cluster_id(), lost.cluster_id);
    let spec = FleetSpec {
        capture: "auto",
        ttl: "10s",
        recovery_timeout: "180s",
        controllers: true,
        store_url: Some(f.store_url.clone()),
        cluster_id: Some(lost.cluster_id.clone()),
        // The new hosts get the identity from the safe.
        agent_extra: agent_extra.to_string(),
        ..FleetSpec::default()
    };
    let g = Fleet::around(t, cluster, spec);
    // A new coordinator: the catalog and the sets from the store, every
    // snapshot read back once more.
    let rebuilt = g.coord.cli_ok(&["catalog", "rebuild"], 0);
    g.coord.cli_ok(&["verify", "--all"], 0);
    let sets = g.coord.cli_ok(&["snapshots", "--sets"], 0);
    assert!(
        sets.contains(&format!("set {}", lost.set_id)) && sets.contains("complete, verified"),
        "{rebuilt}\n{sets}"
    );
    restore_cluster_and_check(&g, lost, committed)
}

fn all_nodes(c: &KafkaCluster) -> Vec<i32> {
    c.controller_ids()
        .into_iter()
        .chain(c.broker_ids())
        .collect()
}

/// `restore --cluster --set` and what the restored cluster holds:
/// - every record acknowledged (acks=all) before the set's cycle started
///   is read back exactly once, and no record is read twice;
/// - records acknowledged after the set are gone;
/// - the consumer group's committed offsets are those committed before;
/// - topics and their configs are those of the set's controller
///   snapshots (a topic created and a config changed after the set are
///   not there);
/// - every node runs and the cluster is in sync.
///
/// Records acknowledged during the cycle are counted: each broker's data
/// is as of its own snapshot.
fn restore_cluster_and_check(
    f: &Fleet<KafkaCluster>,
    lost: &Lost,
    committed: &[(i32, i64)],
) -> Disaster {
    let nodes = all_nodes(&f.cluster);
    let res = f
        .coord
        .cli(&["restore", "--cluster", "--set", &lost.set_id, "--yes"]);
    let out = String::from_utf8_lossy(&res.stdout).into_owned();
    assert_eq!(
        res.status.code(),
        Some(0),
        "restore --cluster failed\nstdout: {out}\nstderr: {}\n{}\n{}",
        String::from_utf8_lossy(&res.stderr),
        node_logs(&f.cluster, &nodes),
        f.logs()
    );
    assert!(
        out.contains(&format!("from set {}", lost.set_id)) && out.contains("done"),
        "{out}\n{}",
        f.logs()
    );
    for &n in &nodes {
        assert!(f.cluster.is_running(n), "node {n} does not run\n{out}");
    }
    f.cluster
        .wait_in_sync(Duration::from_secs(180))
        .expect("the restored cluster in sync");
    let st = f.coord.status();
    assert_eq!(st["cluster_restore"]["state"], "done", "{st:#}");

    let bootstrap = f.cluster.bootstrap();
    let counts = read_all(&bootstrap);
    let twice: Vec<(&u64, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "records read more than once: {:?}",
        first(&twice)
    );
    let gone: Vec<&u64> = lost
        .before
        .iter()
        .filter(|k| !counts.contains_key(k))
        .collect();
    assert!(
        gone.is_empty(),
        "{} of {} records acknowledged before the set's cycle are gone, e.g. {:?}",
        gone.len(),
        lost.before.len(),
        first(&gone)
    );
    let back_after: Vec<&u64> = lost
        .after
        .iter()
        .filter(|k| counts.contains_key(k))
        .collect();
    assert!(
        back_after.is_empty(),
        "records acknowledged after the set came back: {:?}",
        first(&back_after)
    );
    assert_eq!(
        group_offsets(&bootstrap),
        committed,
        "the consumer group's committed offsets after the whole-cluster restore"
    );
    assert_eq!(
        topic_config(&bootstrap, DR_TOPIC, "retention.ms").as_deref(),
        Some(DR_RETENTION),
        "the topic config of the set's controller snapshot"
    );
    assert!(
        !topic_exists(&bootstrap, DR_AFTER_TOPIC),
        "a topic created after the set exists after the restore"
    );
    let during_read_back = lost
        .during
        .iter()
        .filter(|k| counts.contains_key(k))
        .count() as u64;
    eprintln!(
        "whole-cluster restore: {} records acknowledged during the set's cycle, {during_read_back} \
         read back",
        lost.during.len()
    );
    Disaster {
        before: ReadBack {
            acked: lost.before.len() as u64,
            read_back: lost
                .before
                .iter()
                .filter(|k| counts.get(k) == Some(&1))
                .count() as u64,
        },
        during_acked: lost.during.len() as u64,
        during_read_back,
        after_acked: lost.after.len() as u64,
        after_read_back: back_after.len() as u64,
        nodes: nodes.len() as u64,
    }
}

/// The warnings and errors in each node's Kafka log, last ones first.
fn node_logs(cluster: &KafkaCluster, nodes: &[i32]) -> String {
    let mut out = String::new();
    for &n in nodes {
        let text = std::fs::read_to_string(cluster.log_file(n)).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("FATAL"))
            .collect();
        out.push_str(&format!(
            "--- node {n} ({} warnings/errors; running: {})\n",
            lines.len(),
            cluster.is_running(n)
        ));
        for l in &lines[lines.len().saturating_sub(15)..] {
            out.push_str(&format!("{}\n", &l[..l.len().min(600)]));
        }
        // A fatal fault's stack trace follows it on lines of its own.
        if let Some(at) = text.lines().position(|l| l.contains("fatal fault")) {
            for l in text.lines().skip(at).take(25) {
                out.push_str(&format!("  {}\n", &l[..l.len().min(300)]));
            }
        }
    }
    out
}

/// A topic's config value, as the cluster describes it.
fn topic_config(bootstrap: &str, topic: &str, key: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("DescribeConfigs");
    let resource = res.into_iter().next()?.ok()?;
    resource
        .entries
        .into_iter()
        .find(|e| e.name == key)
        .and_then(|e| e.value)
}

fn topic_exists(bootstrap: &str, topic: &str) -> bool {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("Metadata");
    md.topics().iter().any(|t| t.name() == topic)
}

/// How many records a phase's producer had acknowledged, and how many of
/// them were read back exactly once.
struct ReadBack {
    acked: u64,
    read_back: u64,
}

/// The checks after a phase under load; `acked` holds every key
/// acknowledged so far in the test, this phase's from index `from` on.
fn after_load(
    f: &Fleet<KafkaCluster>,
    seen: &Seen,
    acked: &[u64],
    from: usize,
    label: &str,
) -> ReadBack {
    assert!(
        seen.samples > 10,
        "{label}: the observer got only {} Metadata answers",
        seen.samples
    );
    assert!(
        seen.max_missing <= 1,
        "{label}: {} brokers missing at once\n{}",
        seen.max_missing,
        f.logs()
    );
    assert!(
        seen.under_min_isr.is_empty() && seen.offline.is_empty(),
        "{label}: under min ISR: {:?}; offline: {:?}",
        first(&seen.under_min_isr),
        first(&seen.offline)
    );
    let counts = read_all(&f.cluster.bootstrap());
    let twice: Vec<(&u64, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{label}: records read more than once: {:?}",
        first(&twice)
    );
    let lost: Vec<&u64> = acked.iter().filter(|k| !counts.contains_key(k)).collect();
    assert!(
        lost.is_empty(),
        "{label}: {} of {} acknowledged records are gone, e.g. {:?}\n{}",
        lost.len(),
        acked.len(),
        first(&lost),
        where_lost(&f.cluster, &lost)
    );
    let phase = &acked[from..];
    assert!(
        phase.len() > 100,
        "{label}: only {} records acknowledged",
        phase.len()
    );
    for s in f.snapshots() {
        let id = s["snapshot_id"].as_str().unwrap();
        let (code, _, err) = f.verify_snapshot(id, &s["broker"].to_string());
        assert_eq!(code, 0, "{label}: snapshot {id} does not verify: {err}");
    }
    ReadBack {
        acked: phase.len() as u64,
        read_back: phase.iter().filter(|k| counts.get(k) == Some(&1)).count() as u64,
    }
}

fn first<T: std::fmt::Debug>(v: &[T]) -> &[T] {
    &v[..v.len().min(10)]
}

/// Where each acknowledged key was written (partition, offset), for
/// explaining a loss.
static PLACED: Mutex<BTreeMap<u64, (i32, i64)>> = Mutex::new(BTreeMap::new());

/// Why `lost` keys are gone, as far as Kafka tells: by partition, the
/// offsets they were acknowledged at against the partition's offsets now,
/// and what each broker logged about the partition's start offset and
/// truncation.
fn where_lost(cluster: &KafkaCluster, lost: &[&u64]) -> String {
    let placed = PLACED.lock().unwrap();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for k in lost {
        let (p, o) = placed.get(k).copied().unwrap_or((-1, -1));
        by_partition.entry(p).or_default().push(o);
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("consumer");
    let mut s = String::new();
    for (p, offsets) in &by_partition {
        let now = consumer.fetch_watermarks(TOPIC, *p, Duration::from_secs(30));
        s.push_str(&format!(
            "{TOPIC}-{p}: {} acknowledged at offsets {}..={}; (start, high) now {now:?}\n",
            offsets.len(),
            offsets.iter().min().unwrap(),
            offsets.iter().max().unwrap(),
        ));
        let needle = format!("{TOPIC}-{p}");
        for id in cluster.broker_ids() {
            let log = std::fs::read_to_string(cluster.log_file(id)).unwrap_or_default();
            for line in log.lines().filter(|l| {
                l.contains(&needle)
                    && ["start offset", "runcat", "Deleting", "unclean", "Unclean"]
                        .iter()
                        .any(|w| l.contains(w))
            }) {
                s.push_str(&format!("  broker {id}: {line}\n"));
            }
        }
    }
    s
}

/// Records every acknowledged key.
struct Acks(Arc<Mutex<Vec<u64>>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, key: Self::DeliveryOpaque) {
        if let Ok(m) = result {
            PLACED
                .lock()
                .unwrap()
                .insert(*key, (m.partition(), m.offset()));
            self.0.lock().unwrap().push(*key);
        }
    }
}

/// Writes records with keys `first, first + 1, ...` to [`TOPIC`] with
/// acks=all and idempotence, about 200 a second, until finished.
struct Producer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    acked: Arc<Mutex<Vec<u64>>>,
}

impl Producer {
    fn start(bootstrap: &str, first: u64) -> Producer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let producer: ThreadedProducer<Acks> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Longer than any broker's downtime here: a record is either
            // acknowledged or the test fails, never silently dropped.
            .set("message.timeout.ms", "300000")
            .create_with_context(Acks(acked.clone()))
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut key = first;
            while !s.load(Ordering::Relaxed) {
                let k = key.to_string();
                let v = format!("record {key} written during the test");
                let rec = BaseRecord::with_opaque_to(TOPIC, Box::new(key))
                    .key(&k)
                    .payload(&v);
                match producer.send(rec) {
                    Ok(()) => key += 1,
                    // Queue full: let it drain.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            producer
                .flush(Duration::from_secs(120))
                .expect("every record delivered or failed within 120 s");
        });
        Producer {
            stop,
            thread: Some(thread),
            acked,
        }
    }

    /// Stops writing, waits for every outstanding acknowledgement, and
    /// returns the acknowledged keys.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The (start, high watermark) of partition `p` of [`TOPIC`]. Right after
/// a leader moves, the new leader answers `OFFSET_NOT_AVAILABLE` until its
/// high watermark has caught up (a retriable error in Kafka's protocol),
/// so this asks again for up to a minute.
fn watermarks(consumer: &BaseConsumer, p: i32) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(30)) {
            Ok(w) => return w,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {TOPIC}-{p}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("watermarks of {TOPIC}-{p} for a minute: {e}"),
        }
    }
}

/// Reads every partition of [`TOPIC`] from the start to its high
/// watermark: how often each key was read.
fn read_all(bootstrap: &str) -> HashMap<u64, u32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ksnap-read-back")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // A fetch out of range must never skip records to the end.
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = watermarks(&consumer, p);
        ends.insert(p, high);
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut counts: HashMap<u64, u32> = HashMap::new();
    let mut done: HashMap<i32, bool> = ends.iter().map(|(p, h)| (*p, *h == 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.values().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "reading {TOPIC} back did not reach the ends {ends:?}"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.expect("consuming");
        let key: u64 = std::str::from_utf8(msg.key().expect("a key"))
            .unwrap()
            .parse()
            .unwrap();
        *counts.entry(key).or_default() += 1;
        if msg.offset() + 1 >= ends[&msg.partition()] {
            done.insert(msg.partition(), true);
        }
    }
    counts
}

/// "Kafka <version>, <mode>", for the report.
fn label() -> String {
    let version = std::env::var(VERSION_ENV).unwrap_or_else(|_| "?".into());
    let encrypted = if encrypted() {
        ", encrypted at rest"
    } else {
        ""
    };
    let incremental = if incremental() {
        ", incremental snapshots"
    } else {
        ""
    };
    format!(
        "Kafka {version}, {}{encrypted}{incremental}",
        Mode::from_env().name()
    )
}

/// Set to `full`, every agent of the run takes full snapshots
/// (`snapshot.mode = "full"`). Otherwise they take the default,
/// incremental ones, with files of 4 KiB and more kept as content objects
/// in 64 KiB chunks (the test's partitions hold little data): the rolling
/// cycle, the restore of broker 2 and both whole-cluster restores then
/// read content objects.
const SNAPSHOT_MODE_ENV: &str = "KSNAP_TEST_SNAPSHOT_MODE";

fn incremental() -> bool {
    !std::env::var(SNAPSHOT_MODE_ENV).is_ok_and(|v| v == "full")
}

/// The agents' `[snapshot]` lines for the run's snapshot mode: no `mode`
/// for incremental, the default.
fn snapshot_mode() -> &'static str {
    if incremental() {
        "object_min_size = \"4KiB\"\nobject_chunk_size = \"64KiB\"\n"
    } else {
        "mode = \"full\"\n"
    }
}

/// Set to 1, every snapshot of the run is encrypted ([encryption] in
/// every agent's config, with the identity too, so restores and
/// `archive verify` open them).
const ENCRYPT_ENV: &str = "KSNAP_TEST_ENCRYPT";

fn encrypted() -> bool {
    std::env::var(ENCRYPT_ENV).is_ok_and(|v| v == "1")
}

/// The agents' `[encryption]` section for this run ("" unencrypted): a
/// new identity in `root`, and with incremental snapshots the cluster's
/// object key ([`common::fleet::encryption_section`]).
fn encryption_config(root: &std::path::Path) -> String {
    if !encrypted() {
        return String::new();
    }
    common::fleet::encryption_section(root, incremental())
}

/// Every snapshot in the catalog is encrypted (format 2, or 4 when
/// incremental) and `archive verify` with the agents' identity checks
/// every file of it.
fn every_snapshot_encrypted_and_verified_with_the_identity(f: &Fleet<KafkaCluster>) {
    // The coordinator holds no identity: what it verified, it verified as
    // stored, and its catalog says so rather than plain "verified".
    f.wait_all_verified(Duration::from_secs(300));
    let snaps = f.snapshots();
    // At least one of every node with an agent (ZooKeeper mode: brokers).
    assert!(snaps.len() >= f.agents.len(), "{snaps:?}");
    let verified: Vec<&Value> = snaps.iter().filter(|s| s["verify_ok"] == true).collect();
    assert!(!verified.is_empty(), "{snaps:?}");
    for s in verified {
        assert_eq!(s["verified_contents"], false, "{s}");
    }
    for s in &snaps {
        let report = archive_verify(f, s);
        assert_eq!(report["contents_checked"], true, "{report}");
        assert!(report["files"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(
            report["encrypted_to"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
    }
}

/// `archive verify --json` of the catalog row `s` run by broker 2's agent
/// (with its config, so its identity when encrypted); its report.
fn archive_verify(f: &Fleet<KafkaCluster>, s: &Value) -> Value {
    let id = s["snapshot_id"].as_str().unwrap();
    let broker = s["broker"].to_string();
    let (code, out, err) = f.verify_snapshot_as(2, id, &broker, &["--json"]);
    assert_eq!(code, 0, "verify {id}: {out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// Every snapshot in the catalog passed the coordinator's verification
/// and `archive verify` (every byte) passes too; the brokers' snapshots
/// keep their segments as content objects, shared from one to the next.
fn every_snapshot_incremental_and_verified(f: &Fleet<KafkaCluster>) {
    f.wait_all_verified(Duration::from_secs(300));
    let snaps = f.snapshots();
    assert!(snaps.len() >= f.agents.len(), "{snaps:?}");
    let mut objects_by_broker: HashMap<i64, Vec<u64>> = HashMap::new();
    for s in &snaps {
        assert_eq!(s["verify_ok"], true, "{s}");
        let report = archive_verify(f, s);
        assert_eq!(report["contents_checked"], true, "{report}");
        objects_by_broker
            .entry(s["broker"].as_i64().unwrap())
            .or_default()
            .push(report["objects_read"].as_u64().unwrap_or(0));
    }
    for b in f.cluster.broker_ids() {
        let objects = objects_by_broker
            .get(&(b as i64))
            .cloned()
            .unwrap_or_default();
        assert!(
            objects.iter().any(|&n| n > 0),
            "broker {b}: no snapshot of it kept any file as content objects: {objects:?}"
        );
    }
}

/// A scratch dir on the test ext4 (no reflink).
fn ext4_scratch() -> tempfile::TempDir {
    let root = std::env::var("KSNAP_TEST_EXT4").unwrap_or_else(|_| {
        panic!("KSNAP_TEST_EXT4 is not set: run the tests through tests/run.sh, which mounts the test filesystems")
    });
    tempfile::tempdir_in(root).expect("scratch dir on ext4")
}

const GROUP: &str = "ksnap-committed";

/// Commits offsets of [`GROUP`] on every partition of [`TOPIC`] (after a
/// few records written for it) and returns them as the group reads them
/// back.
fn commit_group_offsets(bootstrap: &str) -> Vec<(i32, i64)> {
    let producer = Producer::start(bootstrap, u64::MAX / 2);
    std::thread::sleep(Duration::from_secs(1));
    let keys = producer.finish();
    assert!(!keys.is_empty(), "no record acknowledged before the cycle");
    let consumer = group_consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = watermarks(&consumer, p);
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(high / 2 + p as i64))
            .unwrap();
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("offsets committed");
    let offsets = group_offsets(bootstrap);
    assert_eq!(offsets.len(), PARTITIONS as usize, "{offsets:?}");
    offsets
}

fn group_consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The committed offsets of [`GROUP`] on [`TOPIC`], by partition.
fn group_offsets(bootstrap: &str) -> Vec<(i32, i64)> {
    let consumer = group_consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .collect()
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
