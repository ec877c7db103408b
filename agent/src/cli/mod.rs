//! Command-line front end: parsing and dispatch only; the work is in the
//! library.

mod archive;
mod check;
mod key;
mod run;
mod snapshot;

use clap::{Parser, Subcommand};
use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kafka-snapshot-agent",
    version,
    about = "Cold filesystem snapshots of a Kafka broker"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One value per process, parsed once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Check a config file and exit (0 valid, 2 invalid).
    Validate {
        #[arg(long)]
        config: PathBuf,
        /// Read the files the config names (SASL password, recipients,
        /// object key) under this dir, where a host's filesystem is being
        /// installed (an image, a staging root).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Run the pre-stop gate once against the live cluster and print every
    /// condition (exit 0 safe, 1 not safe, 2 config error).
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Check for this broker id instead of the one in meta.properties.
        #[arg(long)]
        broker: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// One full snapshot cycle of this broker without a coordinator: gate,
    /// stop, capture, restart, recovery check, commit.
    Snapshot {
        #[arg(long)]
        config: PathBuf,
        /// How long to wait for the gate to pass before giving up.
        #[arg(long, default_value = "30m")]
        gate_timeout: String,
    },
    /// The agent daemon: poll the coordinator, take snapshots and restore
    /// under its leases (needs [coordinator] in the config).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Break-glass archive commands: work with no coordinator at all.
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
    /// Keys for encryption at rest: make an identity, show fingerprints.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAFKA_SNAPSHOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { config, root } => {
            let cfg = AgentConfig::load_under(&config, root.as_deref())?;
            let dirs = cfg.log_dirs()?;
            println!(
                "{}: ok ({} log dirs: {})",
                config.display(),
                dirs.len(),
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            broker,
            json,
        } => check::run(&config, broker, json),
        Command::Snapshot {
            config,
            gate_timeout,
        } => snapshot::run(&config, &gate_timeout),
        Command::Run { config } => run::run(&config),
        Command::Archive(cmd) => archive::run(cmd),
        Command::Key(cmd) => key::run(cmd),
    }
}

/// Runs `body` on a two-thread runtime with a shutdown channel that turns
/// true on SIGTERM or SIGINT (logging `why` and telling systemd).
pub(crate) fn with_shutdown<F, Fut>(why: &'static str, body: F) -> Result<ExitCode>
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode>>,
{
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| kafka_snapshot::Error::io("starting the async runtime", e))?;
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| kafka_snapshot::Error::io("installing SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| kafka_snapshot::Error::io("installing SIGINT handler", e))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("shutdown requested: {why}");
            kafka_snapshot::service::notify_stopping();
            let _ = tx.send(true);
        });
        body(rx).await
    })
}
