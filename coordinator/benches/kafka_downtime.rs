//! Broker downtime on real Apache Kafka: what `kafka-snapshot-agent
//! snapshot` (reflink capture) costs beside a plain stop + start of the
//! same broker, on the same data, measured back to back.
//!
//! A KRaft cluster (three controllers, three brokers, two log dirs each)
//! on the test XFS; a topic of 6 partitions, RF 3, min ISR 2, filled to
//! each `--sizes` per broker. For every size, `--pairs` pairs of:
//!
//! - plain: broker 1's stop script (SIGTERM, controlled shutdown, waits
//!   for the exit), its start script, then until Metadata shows broker 1
//!   back in the ISR of every partition it holds;
//! - agent: `kafka-snapshot-agent snapshot` of broker 1, from the moment
//!   its stop command runs until the same condition.
//!
//! The two alternate which goes first. Downtime in both is measured the
//! same way, from outside (a stop-script wrapper writes the time it was
//! called, a 25 ms Metadata poll sees the broker back). The agent's own
//! figures are kept too: its `broker_downtime_ms` (stop command to start
//! command's return) and its whole run.
//!
//!     cargo bench -p kafka-snapshot-coordinator --bench kafka_downtime -- \
//!         --sizes 1GiB,8GiB --pairs 3 --out target/bench/kafka.json
//!
//! Needs `KSNAP_TEST_XFS` (a reflink XFS) and `KSNAP_TEST_KAFKA_HOME`
//! (tests/lib/kafka.sh), as the real-Kafka tests do; tests/bench/run.sh
//! sets both.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bin;
use common::fleet::{write_agent_config, FleetSpec};
use kafka_snapshot_testkit::kafka::{KafkaCluster, KafkaSpec};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BROKER: i32 = 1;
const TOPIC: &str = "bench";
const PARTITIONS: i32 = 6;
/// Each record's value: compressible text, so archives stay small and the
/// fill is quick; the broker stores it as sent (no producer compression).
const VALUE_BYTES: usize = 64 << 10;

struct Args {
    sizes: Vec<(String, u64)>,
    pairs: usize,
    out: PathBuf,
}

fn parse_size(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("bad size {s:?}"));
    let m = match unit {
        "" | "B" => 1u64,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => panic!("bad size unit in {s:?}: use KiB, MiB or GiB"),
    };
    (n * m as f64) as u64
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![("1GiB".into(), 1 << 30)],
        pairs: 3,
        out: PathBuf::from("target/bench/kafka.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--sizes" => {
                a.sizes = it
                    .next()
                    .expect("--sizes LIST")
                    .split(',')
                    .map(|s| (s.to_string(), parse_size(s)))
                    .collect()
            }
            "--pairs" => a.pairs = it.next().expect("--pairs N").parse().expect("--pairs N"),
            "--out" => a.out = it.next().expect("--out FILE").into(),
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn log(msg: &str) {
    eprintln!("[kafka-bench] {msg}");
}

fn main() {
    let a = args();
    let xfs = std::env::var("KSNAP_TEST_XFS").expect("KSNAP_TEST_XFS: a reflink XFS mount");
    let mut results = Vec::new();
    for (label, bytes) in &a.sizes {
        let t = tempfile::tempdir_in(&xfs).expect("scratch dir");
        results.push(one_size(t.path(), label, *bytes, a.pairs));
    }
    let out = json!({ "kafka_downtime": results });
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    log(&format!("wrote {}", a.out.display()));
}

fn one_size(root: &Path, label: &str, bytes: u64, pairs: usize) -> Value {
    let spec = KafkaSpec {
        data_root: Some(root.join("data")),
        ..KafkaSpec::default()
    };
    let cluster = KafkaCluster::create(&root.join("kafka"), &spec).expect("Kafka cluster");
    cluster
        .start_all(Duration::from_secs(180))
        .expect("Kafka cluster starts");
    cluster
        .create_topic(TOPIC, PARTITIONS, 3, 2)
        .expect("topic created");
    log(&format!(
        "{label}: filling {TOPIC} with {bytes} bytes per broker"
    ));
    let t = Instant::now();
    fill(&cluster.bootstrap(), bytes);
    log(&format!("{label}: filled in {:.0?}", t.elapsed()));
    let data_bytes: u64 = cluster.log_dirs(BROKER).iter().map(|d| du(d)).sum();

    // The stop command of both variants: records when it was called.
    let marker = root.join("stop-called");
    let stop = root.join("stop-wrapper.sh");
    std::fs::write(
        &stop,
        format!(
            "#!/bin/bash\ndate +%s%N >{}\nexec {}\n",
            marker.display(),
            cluster.stop_script(BROKER).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stop, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent_dir = root.join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let store = root.join("store");
    let cfg = write_agent_config(
        &agent_dir,
        BROKER,
        &cluster,
        // Full snapshots, as the README's rows were measured before
        // incremental became the default (tests/bench/incremental_bench.py).
        &FleetSpec {
            snapshot_extra: "mode = \"full\"\n",
            ..FleetSpec::default()
        },
        &format!("file://{}", store.display()),
        "http://127.0.0.1:9",
        &agent_dir.join("state.json"),
    );
    // The agent stops through the wrapper too.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!(
            "stop_command = {:?}",
            cluster.stop_script(BROKER).display().to_string()
        ),
        &format!("stop_command = {:?}", stop.display().to_string()),
    );
    assert!(text.contains(&stop.display().to_string()), "{text}");
    std::fs::write(&cfg, text).unwrap();

    let mut runs = Vec::new();
    for i in 0..pairs {
        let mut pair = json!({});
        let order: [&str; 2] = if i % 2 == 0 {
            ["plain", "agent"]
        } else {
            ["agent", "plain"]
        };
        for which in order {
            settle(&cluster);
            let r = match which {
                "plain" => plain(&cluster, &stop, &marker),
                _ => agent(&cluster, &cfg, &marker, &store),
            };
            log(&format!("{label} pair {}: {which} {r}", i + 1));
            pair[which] = r;
        }
        runs.push(pair);
    }
    json!({
        "size": label,
        "data_bytes": data_bytes,
        "pairs": runs,
    })
}

/// Waits until every broker is in every ISR with its preferred
/// leaderships back, then a little longer: each run starts from the same
/// state (a broker that leads nothing stops faster) and the previous run's
/// restart must not overlap the next one's stop.
fn settle(cluster: &KafkaCluster) {
    cluster
        .wait_in_sync(Duration::from_secs(300))
        .expect("cluster in sync");
    cluster
        .elect_preferred_leaders(Duration::from_secs(120))
        .expect("preferred leaders");
    std::thread::sleep(Duration::from_secs(5));
}

/// Whether `BROKER` is listed and in the ISR of every partition it holds.
fn in_sync(cluster: &KafkaCluster) -> bool {
    let Ok(md) = cluster.metadata() else {
        return false;
    };
    md.brokers.iter().any(|b| b.node_id.0 == BROKER)
        && md.topics.iter().all(|t| {
            t.partitions.iter().all(|p| {
                !p.replica_nodes.iter().any(|r| r.0 == BROKER)
                    || p.isr_nodes.iter().any(|r| r.0 == BROKER)
            })
        })
}

/// From the stop command's call (the marker) until `BROKER` is back in
/// every ISR, having first left the cluster.
fn until_in_sync(cluster: &KafkaCluster, marker: &Path) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut left = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "broker {BROKER} not back in 600 s"
        );
        let ok = in_sync(cluster);
        if !ok && marker.exists() {
            left = true;
        }
        if ok && left {
            let end = now_ns();
            let start: u128 = std::fs::read_to_string(marker)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            return (end - start) as f64 / 1e9;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn plain(cluster: &KafkaCluster, stop: &Path, marker: &Path) -> Value {
    let _ = std::fs::remove_file(marker);
    let t = Instant::now();
    let st = Command::new(stop).status().unwrap();
    assert!(st.success(), "stop of broker {BROKER}");
    let stop_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    cluster.start(BROKER).expect("start");
    let start_s = t.elapsed().as_secs_f64();
    let down = until_in_sync(cluster, marker);
    json!({ "downtime_s": down, "stop_s": stop_s, "start_command_s": start_s })
}

fn agent(cluster: &KafkaCluster, cfg: &Path, marker: &Path, store: &Path) -> Value {
    let _ = std::fs::remove_file(marker);
    // Each run's archive only: the store holds one snapshot at a time.
    let _ = std::fs::remove_dir_all(store);
    std::fs::create_dir_all(store).unwrap();
    let log_path = store.with_extension("agent.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let t = Instant::now();
    let child = Command::new(bin("kafka-snapshot-agent"))
        .args(["snapshot", "--gate-timeout", "5m", "--config"])
        .arg(cfg)
        .env("KAFKA_SNAPSHOT_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let down = until_in_sync(cluster, marker);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kafka-snapshot-agent snapshot: {}",
        out.status
    );
    let out = out.stdout;
    let whole_s = t.elapsed().as_secs_f64();
    let v: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("agent output: {e}: {}", String::from_utf8_lossy(&out)));
    assert_eq!(v["capture"], "reflink", "{v}");
    let phases = phases(&std::fs::read_to_string(&log_path).unwrap());
    json!({
        "downtime_s": down,
        "agent_broker_downtime_ms": v["broker_downtime_ms"],
        "agent_unavailable_ms": v["broker_unavailable_ms"],
        "agent_run_s": whole_s,
        "archive_bytes": v["archive_bytes"],
        "agent_phases": phases,
    })
}

/// The agent's own phase figures, from its log (tracing's text format):
/// the stop (stop command until the log dirs are unlocked and closed
/// cleanly), the stop's end until the start command returned (capture and
/// start), and the recovery check (start until it saw the broker in every
/// ISR), in seconds. A recovery check that could not reach the cluster
/// says so in `recovery_errors`.
fn phases(log: &str) -> Value {
    let at = |msg: &str| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(msg))?;
        let ts = line.split_whitespace().next()?;
        let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
        Some(t.timestamp_micros() as f64 / 1e6)
    };
    let field = |msg: &str, key: &str| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(msg))?;
        let v = line.split(&format!("{key}=")).nth(1)?;
        v.split_whitespace().next()?.parse().ok()
    };
    let stopped = at("broker stopped");
    let started = at("broker start command succeeded");
    json!({
        "stop_s": field("broker stopped", "seconds"),
        "capture_and_start_s": stopped.zip(started).map(|(a, b)| b - a),
        "recovery_check_s": field("broker recovered", "seconds"),
        "recovery_errors": log.lines().filter(|l| l.contains("cluster not reachable while waiting for recovery")).count(),
    })
}

/// Bytes under `dir`.
fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    n
}

/// Writes `bytes` of records into [`TOPIC`] (replicated to every broker).
fn fill(bootstrap: &str, bytes: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1048576")
        .set("message.max.bytes", "1000000")
        .create()
        .expect("producer");
    let line = b"kafka-snapshot benchmark record, compressible on purpose. ";
    let value: Vec<u8> = line.iter().copied().cycle().take(VALUE_BYTES).collect();
    let n = bytes / VALUE_BYTES as u64;
    for i in 0..n {
        let key = i.to_string();
        let mut rec = BaseRecord::<String, [u8]>::to(TOPIC)
            .key(&key)
            .payload(&value)
            .partition((i % PARTITIONS as u64) as i32);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(600))
        .expect("the fill delivered");
}
