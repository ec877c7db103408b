//! `kafka-snapshot-coordinator`: leases brokers one at a time, schedules
//! rolling cycles, keeps the catalog, applies retention and drives
//! restores. `serve` runs the service; every other command is an operator
//! command that talks to it (or, for `catalog list`, to cold storage).

mod cli;
mod config;
mod engine;
mod health;
mod jobs;
mod metrics;
mod retention;
mod schedule;
mod server;
mod shared;
mod state;
mod store;
mod tls;

use clap::{Parser, Subcommand};
use config::CoordinatorConfig;
use kafka_snapshot::{catalog, storage, Error};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/kafka-snapshot/coordinator.toml";

#[derive(Parser, Debug)]
#[command(
    name = "kafka-snapshot-coordinator",
    version,
    about = "Coordinator for rolling cold snapshots of Kafka"
)]
struct Cli {
    /// The coordinator's config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the coordinator service (HTTP API, schedule, retention).
    Serve,
    /// Check the config file and exit (0 valid, 2 invalid).
    Validate,
    /// Every broker: state, lease, last snapshot, downtime, next due.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The snapshots in the catalog, or (`--sets`) the snapshot sets: the
    /// snapshot of every node from one cycle.
    Snapshots {
        #[arg(long, conflicts_with = "sets")]
        broker: Option<i32>,
        /// List snapshot sets: id, cycle, start and end, every node's
        /// snapshot, complete and verified or not.
        #[arg(long)]
        sets: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start a rolling cycle now, of every broker or of one.
    RunNow {
        #[arg(long)]
        broker: Option<i32>,
    },
    /// Suspend: no scheduled cycle starts and no snapshot lease is granted
    /// until `resume` (a lease in progress finishes; restores still go).
    /// Kept across restarts.
    Suspend {
        /// Shown by `status` and in the event log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a `suspend`.
    Resume,
    /// Cancel the running cycle, or a restore order. A lease in progress is
    /// aborted safely: its agent starts the broker again if it stopped it.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["cycle", "restore", "cluster_restore"])))]
    Cancel {
        /// The running cycle.
        #[arg(long)]
        cycle: bool,
        /// With --cycle: only if the running cycle is this one.
        #[arg(long, requires = "cycle")]
        id: Option<i64>,
        /// A restore order, by id.
        #[arg(long)]
        restore: Option<i64>,
        /// A whole-cluster restore order, by id.
        #[arg(long)]
        cluster_restore: Option<i64>,
    },
    /// Restore a broker from a snapshot (its newest by default), or with
    /// --cluster every node of a lost cluster from a snapshot set (the
    /// newest complete, verified one by default). Waits and shows progress
    /// until the order ends; exit 1 if it failed.
    #[command(group(clap::ArgGroup::new("whom").required(true).args(["broker", "cluster"])))]
    Restore {
        #[arg(long)]
        broker: Option<i32>,
        #[arg(long, conflicts_with = "cluster")]
        snapshot: Option<String>,
        /// Every node of the cluster, from one snapshot set: for a cluster
        /// that is lost or corrupted.
        #[arg(long)]
        cluster: bool,
        /// With --cluster: the set (see `snapshots --sets`).
        #[arg(long, requires = "cluster")]
        set: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Restore even if the snapshot's cluster.id or node.id do not
        /// match; with --cluster: even though the cluster serves clients,
        /// or the set is not verified.
        #[arg(long)]
        force: bool,
        /// Return once the order is created.
        #[arg(long)]
        no_wait: bool,
    },
    /// Read snapshots back from cold storage and check every byte: one
    /// (`--snapshot ID`) or every snapshot in the catalog (`--all`).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["snapshot", "all"])))]
    Verify {
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Apply retention now (or show what it would delete).
    Prune {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The catalog of snapshots.
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Subcommand, Debug)]
enum CatalogCommand {
    /// Rebuild the catalog from the manifests in cold storage.
    Rebuild {
        #[arg(long)]
        json: bool,
    },
    /// List every snapshot found in a store, complete or not (no
    /// coordinator needed).
    List {
        #[arg(long)]
        store: String,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        broker: Option<i32>,
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> kafka_snapshot::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
}

fn load(path: &Path) -> kafka_snapshot::Result<CoordinatorConfig> {
    CoordinatorConfig::load(path)
}

fn run(cli: Cli) -> kafka_snapshot::Result<ExitCode> {
    let ok = |b: bool| {
        if b {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    };
    match cli.command {
        Command::Catalog(CatalogCommand::List {
            store,
            cluster,
            broker,
            json,
        }) => {
            let store = storage::open_url(&store)?;
            let listed = catalog::list(store.as_ref(), cluster.as_deref(), broker)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&catalog::to_json(&listed)).expect("JSON")
                );
            } else {
                print!("{}", catalog::format_table(&listed));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate => {
            let cfg = load(&cli.config)?;
            println!(
                "{}: ok ({} agents: {:?}; schedule {})",
                cli.config.display(),
                cfg.agents.len(),
                cfg.nodes(),
                cfg.schedule()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let cfg = load(&cli.config)?;
            runtime()?.block_on(async {
                let shutdown = shutdown_signal()?;
                let reloads = reload_signal(cli.config.clone())?;
                let listener = tokio::net::TcpListener::bind(cfg.server.listen)
                    .await
                    .map_err(|e| Error::io(format!("listening on {}", cfg.server.listen), e))?;
                server::serve(cfg, listener, shutdown, reloads, || {
                    kafka_snapshot::service::spawn_watchdog();
                    kafka_snapshot::service::notify_ready();
                })
                .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        cmd => {
            let cfg = load(&cli.config)?;
            let api = cli::Api::new(&cfg)?;
            runtime()?.block_on(async {
                Ok(match cmd {
                    Command::Status { json } => ok(cli::status(&api, json).await.map(|_| true)?),
                    Command::Snapshots {
                        sets: true, json, ..
                    } => {
                        cli::sets(&api, json).await?;
                        ExitCode::SUCCESS
                    }
                    Command::Snapshots { broker, json, .. } => {
                        cli::snapshots(&api, broker, json).await?;
                        ExitCode::SUCCESS
                    }
                    Command::Suspend { reason } => {
                        cli::suspend(&api, reason).await?;
                        ExitCode::SUCCESS
                    }
                    Command::Resume => {
                        cli::resume(&api).await?;
                        ExitCode::SUCCESS
                    }
                    Command::Cancel {
                        cycle,
                        id,
                        restore,
                        cluster_restore,
                    } => {
                        let what = match (cycle, restore, cluster_restore) {
                            (true, _, _) => cli::Cancelled::Cycle(id),
                            (false, Some(r), _) => cli::Cancelled::Restore(r),
                            (false, None, Some(r)) => cli::Cancelled::ClusterRestore(r),
                            (false, None, None) => unreachable!(
                                "clap requires --cycle, --restore or --cluster-restore"
                            ),
                        };
                        cli::cancel(&api, what).await?;
                        ExitCode::SUCCESS
                    }
                    Command::RunNow { broker } => {
                        cli::run_now(&api, broker).await?;
                        ExitCode::SUCCESS
                    }
                    Command::Restore {
                        broker,
                        snapshot,
                        cluster,
                        set,
                        yes,
                        force,
                        no_wait,
                    } => match (broker, cluster) {
                        (_, true) => {
                            ok(cli::restore_cluster(&api, set, force, yes, !no_wait).await?)
                        }
                        (Some(broker), false) => {
                            ok(cli::restore(&api, broker, snapshot, force, yes, !no_wait).await?)
                        }
                        (None, false) => unreachable!("clap requires --broker or --cluster"),
                    },
                    Command::Verify {
                        snapshot,
                        all,
                        json,
                    } => {
                        let which = match (snapshot, all) {
                            (Some(id), false) => cli::Which::One(id),
                            _ => cli::Which::All,
                        };
                        ok(cli::verify(&api, &cfg, which, json).await?)
                    }
                    Command::Prune { dry_run, json } => ok(cli::prune(&api, dry_run, json).await?),
                    Command::Catalog(CatalogCommand::Rebuild { json }) => {
                        cli::rebuild(&api, json).await?;
                        ExitCode::SUCCESS
                    }
                    Command::Catalog(CatalogCommand::List { .. })
                    | Command::Validate
                    | Command::Serve => unreachable!("handled above"),
                })
            })
        }
    }
}

/// Completes on the first SIGTERM or SIGINT, after telling systemd the
/// service is stopping. Installed before the service starts: a coordinator
/// that could not be stopped cleanly does not start at all.
fn shutdown_signal() -> kafka_snapshot::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::io("installing the SIGINT handler", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        kafka_snapshot::service::notify_stopping();
    })
}

/// On every SIGHUP (`systemctl reload`), the config file read again and
/// checked like `validate`; a file with problems is logged and the running
/// config stays.
fn reload_signal(
    path: PathBuf,
) -> kafka_snapshot::Result<tokio::sync::mpsc::Receiver<CoordinatorConfig>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| Error::io("installing the SIGHUP handler", e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match load(&path) {
                Ok(cfg) => {
                    if tx.send(cfg).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("config reload refused: {e}; the running config stays"),
            }
        }
    });
    Ok(rx)
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAFKA_SNAPSHOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_asks_which_snapshots() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(["kafka-snapshot-coordinator"].iter().chain(args));
        let e = parse(&["verify"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("--snapshot") && e.to_string().contains("--all"),
            "{e}"
        );
        assert!(parse(&["verify", "--snapshot", "s1", "--all"]).is_err());
        assert!(matches!(
            parse(&["verify", "--all"]).unwrap().command,
            Command::Verify {
                all: true,
                snapshot: None,
                ..
            }
        ));
        assert!(matches!(
            parse(&["verify", "--snapshot", "s1", "--json"])
                .unwrap()
                .command,
            Command::Verify {
                all: false,
                snapshot: Some(_),
                json: true
            }
        ));
    }
}
