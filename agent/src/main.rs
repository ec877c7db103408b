//! `kafka-snapshot-agent`: the per-broker agent and its break-glass CLI.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::init_logging();
    let args = <cli::Cli as clap::Parser>::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
