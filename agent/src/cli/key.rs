//! `kafka-snapshot-agent key ...`: make an identity for encryption at rest
//! and the cluster's object key, and show the fingerprints manifests
//! record, so an operator can tell which key opens (or named) which
//! snapshot.

use clap::Subcommand;
use kafka_snapshot::crypt::{generate_identity_file, Identities, ObjectKey, Recipients};
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
    /// Write a new object key to a new file, mode 0600, and print its
    /// fingerprint. Encrypted incremental snapshots name their content
    /// objects with it (encryption.object_key_file): install the same file
    /// on every agent of the cluster.
    GenerateObjectKey {
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the fingerprint of recipients (age1...), of the identities in
    /// an identity file (what `archive list` shows as ENCRYPTED_TO) and of
    /// an object key (what a manifest records as objects.sealed.key).
    Fingerprint {
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long)]
        object_key: Option<PathBuf>,
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
        KeyCommand::GenerateObjectKey { output } => {
            let fp = ObjectKey::generate_file(&output).map_err(Error::Usage)?;
            eprintln!(
                "object key written to {} (mode 0600); install the same file on every agent of \
                 the cluster as encryption.object_key_file, and keep a copy with the identities",
                output.display()
            );
            println!("{fp}");
        }
        KeyCommand::Fingerprint {
            identity,
            object_key,
            recipients,
        } => {
            if identity.is_none() && object_key.is_none() && recipients.is_empty() {
                return Err(Error::Usage(
                    "give recipients (age1...), --identity FILE or --object-key FILE".into(),
                ));
            }
            if let Some(f) = &object_key {
                let k =
                    ObjectKey::load(f).map_err(|m| Error::Usage(format!("--object-key: {m}")))?;
                println!("{}  (object key in {})", k.fingerprint(), f.display());
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
