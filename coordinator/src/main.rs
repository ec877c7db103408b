//! `kafka-snapshot-coordinator`: leases brokers one at a time, schedules
//! rolling cycles and keeps the catalog. This build carries the catalog
//! commands; they read cold storage through the same engine as the agent.

use clap::{Parser, Subcommand};
use kafka_snapshot::{catalog, storage};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kafka-snapshot-coordinator",
    version,
    about = "Coordinator for rolling cold snapshots of Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The catalog of snapshots in cold storage.
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Subcommand, Debug)]
enum CatalogCommand {
    /// List every snapshot found in a store, complete or not.
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

fn run(cli: Cli) -> kafka_snapshot::Result<()> {
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
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
