//! `kafka-snapshot-agent key ...`: make an identity for encryption at rest
//! and show the fingerprints manifests record, so an operator can tell
//! which key opens which snapshot.

use clap::Subcommand;
use kafka_snapshot::crypt::{generate_identity_file, Identities, Recipients};
use kafka_snapshot::{Error, Result};
use kafka_snapshot_model::manifest::recipient_fingerprint;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a new age identity (private key) to a new file, mode 0600, and
    /// print its recipient (public key) for encryption.recipients. Keep the
    /// file off the broker hosts that only take snapshots.
    Generate {
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the fingerprint of recipients (age1...) and of the identities
    /// in an identity file: what `archive list` shows as ENCRYPTED_TO.
    Fingerprint {
        #[arg(long)]
        identity: Option<PathBuf>,
        recipients: Vec<String>,
    },
}

pub fn run(cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Generate { output } => {
            let recipient = generate_identity_file(&output).map_err(Error::Usage)?;
            eprintln!(
                "identity written to {} (mode 0600); its recipient, fingerprint {}:",
                output.display(),
                recipient_fingerprint(&recipient)
            );
            println!("{recipient}");
        }
        KeyCommand::Fingerprint {
            identity,
            recipients,
        } => {
            if identity.is_none() && recipients.is_empty() {
                return Err(Error::Usage(
                    "give recipients (age1...) or --identity FILE".into(),
                ));
            }
            let parsed = Recipients::parse(
                recipients
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("recipient {}", i + 1), r.as_str())),
            )
            .map_err(Error::Usage)?;
            for (r, fp) in parsed.to_strings().iter().zip(parsed.fingerprints()) {
                println!("{fp}  {r}");
            }
            if let Some(f) = identity {
                let ids =
                    Identities::load(&f).map_err(|m| Error::Usage(format!("--identity: {m}")))?;
                for fp in ids.fingerprints() {
                    println!("{fp}  (identity in {})", f.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
