//! `kafka-snapshot-agent run`: the daemon. SIGTERM or SIGINT ends it; if
//! the broker is down because of the agent at that moment, it is started
//! again first and the lease released, then the agent exits 0.

use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::Result;
use std::path::Path;
use std::process::ExitCode;

pub fn run(config: &Path) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    // Checked before anything starts, so a missing section exits 2 at once.
    cfg.coordinator(config)?;
    cfg.kafka(config, "the daemon")?;
    super::with_shutdown(
        "a broker this agent stopped is started again first, then the lease released",
        |rx| async move {
            kafka_snapshot_agent::daemon::run(cfg, config, rx).await?;
            Ok(ExitCode::SUCCESS)
        },
    )
}
