//! `ksnap-standin-broker --state-dir DIR --node-id N`: runs one stand-in
//! Kafka broker of the cluster defined in `DIR/cluster.toml` until SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 1 when it cannot start (or a
//! scenario makes it fail or crash), 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: ksnap-standin-broker --state-dir DIR --node-id N");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut state_dir: Option<PathBuf> = None;
    let mut node_id: Option<i32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state-dir" => state_dir = args.next().map(PathBuf::from),
            "--node-id" => match args.next().map(|v| v.parse()) {
                Some(Ok(n)) => node_id = Some(n),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    let (Some(state_dir), Some(node_id)) = (state_dir, node_id) else {
        return usage();
    };
    match kafka_snapshot_standin::broker::run(&state_dir, node_id) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("broker {node_id}: fatal: {e:#}");
            ExitCode::from(1)
        }
    }
}
