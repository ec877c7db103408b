//! Command-line front end of the log dir generator, for benchmarks and demos.
//!
//! Exit codes: 0 success, 1 I/O or other runtime failure, 2 bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kafka_snapshot_testkit::{generate, parse_size, Spec};

/// Generate realistic Kafka KRaft broker log directories (deterministic for a seed).
#[derive(Parser, Debug)]
#[command(name = "ksnap-gen-logdirs", version)]
struct Args {
    /// Cluster id written to every meta.properties (22-char base64url, like Kafka's).
    #[arg(long)]
    cluster_id: String,
    /// Broker node.id.
    #[arg(long)]
    node_id: i32,
    /// A log dir to create or fill (must be empty); repeat for several. The
    /// first one also gets the KRaft metadata log.
    #[arg(long = "dir", required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Approximate total .log bytes, e.g. 512MiB, 2GiB, 1G, 1000000.
    #[arg(long, default_value = "1GiB", value_parser = parse_size_arg)]
    size: u64,
    /// Segment roll size.
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    segment_size: u64,
    /// Number of application topics (__consumer_offsets is added on top).
    #[arg(long, default_value_t = 8)]
    topics: usize,
    /// Partitions per application topic.
    #[arg(long, default_value_t = 6)]
    partitions: usize,
    /// Add a sparse extra segment of exactly this size to the first topic's partition 0.
    #[arg(long, value_parser = parse_size_arg, value_name = "SIZE")]
    big_sparse: Option<u64>,
    /// Add a "<topic>-<p>.<hex>-delete" dir (partition being deleted).
    #[arg(long)]
    delete_dir: bool,
    /// Add a "<topic>-<p>.<hex>-future" dir (intra-broker move in flight).
    #[arg(long)]
    future_dir: bool,
    /// Leave out .kafka_cleanshutdown (and make recovery points lag, as after a crash).
    #[arg(long)]
    no_clean_shutdown: bool,
    /// Leave out the empty .lock files.
    #[arg(long)]
    no_lock_file: bool,
    /// Seed for all names, ids and content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = Spec {
        cluster_id: args.cluster_id,
        node_id: args.node_id,
        log_dirs: args.dirs,
        topics: args.topics,
        partitions_per_topic: args.partitions,
        total_bytes: args.size,
        segment_bytes: args.segment_size,
        big_sparse_file_bytes: args.big_sparse,
        with_delete_dir: args.delete_dir,
        with_future_dir: args.future_dir,
        clean_shutdown: !args.no_clean_shutdown,
        with_lock_file: !args.no_lock_file,
        seed: args.seed,
    };
    if let Err(e) = spec.validate() {
        eprintln!("ksnap-gen-logdirs: invalid arguments: {e:#}");
        return ExitCode::from(2);
    }
    // A non-empty target dir is a usage error too (generate refuses it).
    for dir in &spec.log_dirs {
        let non_empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if non_empty || (dir.exists() && !dir.is_dir()) {
            eprintln!(
                "ksnap-gen-logdirs: invalid arguments: {} exists and is not an empty directory",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    match generate(&spec) {
        Ok(g) => {
            println!(
                "generated {} files in {} dirs, {} bytes",
                g.files, g.dirs, g.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ksnap-gen-logdirs: {e:#}");
            ExitCode::from(1)
        }
    }
}
