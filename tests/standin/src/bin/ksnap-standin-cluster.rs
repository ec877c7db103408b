//! `ksnap-standin-cluster --dir DIR [--brokers N] [--data-root DIR]
//! [--size BYTES] [--segment-size BYTES] [--topics N] [--partitions N]
//! [--small-partitions N] [--append-interval-ms MS] --info FILE`: creates
//! a stand-in cluster, starts every
//! broker, writes what an agent needs to FILE as JSON (bootstrap servers,
//! cluster id, and per broker its start/stop scripts and log dirs), then
//! keeps the cluster alive until SIGTERM or SIGINT. For the demo, the
//! benchmarks and manual experiments; tests use the library directly.
//!
//! `--topics`/`--partitions` size the generated topics (their data is
//! `--size` per broker, in segments of up to `--segment-size`);
//! `--small-partitions N` adds N more partitions, as topics of 100
//! partitions (`small-<i>`, replicated like the rest), that hold only their
//! empty first segment, indexes and metadata files.
//!
//! Exit codes: 0 after a signal, 1 when the cluster cannot start, 2 on bad
//! arguments.

use kafka_snapshot_standin::{ClusterSpec, StandinCluster, TopicSpec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: ksnap-standin-cluster --dir DIR [--brokers N] [--data-root DIR] [--size BYTES] \
         [--segment-size BYTES] [--topics N] [--partitions N] [--small-partitions N] \
         [--append-interval-ms MS] --info FILE"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut dir: Option<PathBuf> = None;
    let mut info: Option<PathBuf> = None;
    let mut spec = ClusterSpec::new(3);
    let mut small_partitions = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--dir", Some(v)) => dir = Some(PathBuf::from(v)),
            ("--info", Some(v)) => info = Some(PathBuf::from(v)),
            ("--data-root", Some(v)) => spec.data_root = Some(PathBuf::from(v)),
            ("--brokers", Some(v)) => match v.parse::<usize>() {
                // The defaults that depend on the broker count, as in
                // `ClusterSpec::new`.
                Ok(n) if n >= 1 => {
                    spec.brokers = n;
                    spec.replication_factor = n.min(3);
                    spec.broker_min_insync_replicas = n.min(2) as i32;
                }
                _ => return usage(),
            },
            ("--size", Some(v)) => match kafka_snapshot_testkit::parse_size(&v) {
                Ok(n) => spec.bytes_per_broker = n,
                Err(_) => return usage(),
            },
            ("--segment-size", Some(v)) => match kafka_snapshot_testkit::parse_size(&v) {
                Ok(n) if n > 0 => spec.segment_bytes = n,
                _ => return usage(),
            },
            ("--topics", Some(v)) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => spec.generated_topics = n,
                _ => return usage(),
            },
            ("--partitions", Some(v)) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => spec.partitions_per_topic = n,
                _ => return usage(),
            },
            ("--small-partitions", Some(v)) => match v.parse::<usize>() {
                Ok(n) => small_partitions = n,
                Err(_) => return usage(),
            },
            ("--append-interval-ms", Some(v)) => match v.parse::<u64>() {
                Ok(n) if n >= 1 => spec.append_interval = Duration::from_millis(n),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    let (Some(dir), Some(info)) = (dir, info) else {
        return usage();
    };
    let mut left = small_partitions;
    let rf = spec.replication_factor;
    while left > 0 {
        let n = left.min(100);
        let name = format!("small-{}", spec.extra_topics.len());
        spec.extra_topics
            .push(TopicSpec::new(&name, n, rf, spec.brokers));
        left -= n;
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let cluster = match StandinCluster::create(&dir, &spec)
        .and_then(|c| c.start_all(Duration::from_secs(120)).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stand-in cluster: {e:#}");
            return ExitCode::from(1);
        }
    };
    let brokers: Vec<serde_json::Value> = cluster
        .node_ids()
        .into_iter()
        .map(|n| {
            serde_json::json!({
                "node_id": n,
                "start_script": cluster.start_script(n),
                "stop_script": cluster.stop_script(n),
                "log_dirs": cluster.log_dirs(n),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "bootstrap": cluster.bootstrap(),
        "cluster_id": cluster.cluster_id(),
        "brokers": brokers,
    });
    let tmp = info.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("JSON"))
        .and_then(|()| std::fs::rename(&tmp, &info))
    {
        eprintln!("writing {}: {e}", info.display());
        return ExitCode::from(1);
    }
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Dropping the cluster SIGKILLs its brokers.
    ExitCode::SUCCESS
}
