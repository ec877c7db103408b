//! `kafka-snapshot-agent snapshot`: one full cycle of the local broker,
//! without a coordinator: wait for the gate, stop, capture, restart, wait
//! for recovery, commit. SIGTERM or SIGINT while the broker is down starts
//! it again before the agent exits.

use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::settings::parse_duration;
use kafka_snapshot::storage::{open, StoreOptions};
use kafka_snapshot::{Error, Result};
use kafka_snapshot_agent::cycle::{Cycle, CycleError};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(config: &Path, gate_timeout: &str) -> Result<ExitCode> {
    let gate_timeout =
        parse_duration(gate_timeout).map_err(|e| Error::Usage(format!("--gate-timeout: {e}")))?;
    let cfg = AgentConfig::load(config)?;
    let store: Arc<dyn kafka_snapshot::storage::ColdStore> = Arc::from(open(
        &cfg.storage.url,
        &StoreOptions::from_config(&cfg.storage),
    )?);
    super::with_shutdown(
        "the broker is started again first if it is down",
        |rx| async move {
            let mut cycle = Cycle::new(cfg, config, store, rx)?;
            let result = match cycle.wait_safe(gate_timeout).await {
                Ok(()) => cycle.run().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(m) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "snapshot_id": m.snapshot_id,
                            "broker": m.node_id,
                            "capture": m.capture.used,
                            "broker_downtime_ms": m.broker_downtime_ms,
                            "broker_unavailable_ms": cycle.last_unavailable_ms(),
                            "files": m.totals.files,
                            "data_bytes": m.totals.bytes,
                            "archive_bytes": m.archive.size,
                        }))
                        .expect("serialisable")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    match &e {
                        CycleError::StartFailed { .. } | CycleError::StillStopping { .. } => {
                            tracing::error!("{e}")
                        }
                        _ => tracing::warn!("{e}"),
                    }
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        },
    )
}
