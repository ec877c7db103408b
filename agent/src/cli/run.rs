//! `kafka-snapshot-agent run`: the daemon. SIGTERM or SIGINT ends it; if
//! the broker is down because of the agent at that moment, it is started
//! again first and the lease released, then the agent exits 0.

use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::{Error, Result};
use std::path::Path;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

pub fn run(config: &Path) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    // Checked before anything starts, so a missing section exits 2 at once.
    cfg.coordinator(config)?;
    cfg.kafka(config, "the daemon")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| Error::io("installing SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| Error::io("installing SIGINT handler", e))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!(
                "shutdown requested: a broker this agent stopped is started again first, then the lease released"
            );
            kafka_snapshot::service::notify_stopping();
            let _ = tx.send(true);
        });
        kafka_snapshot::daemon::run(cfg, config, rx).await?;
        Ok(ExitCode::SUCCESS)
    })
}
