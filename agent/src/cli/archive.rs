//! `kafka-snapshot-agent archive ...`: create, list, verify and extract
//! snapshots directly against cold storage.

use clap::{Args, Subcommand};
use kafka_snapshot::archive::ArchiveOptions;
use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::crypt::{Identities, ObjectKey, Recipients};
use kafka_snapshot::extract::{can_restore_owners, extract, original_targets, ExtractOptions};
use kafka_snapshot::objects::ObjectOptions;
use kafka_snapshot::settings::parse_byte_size;
use kafka_snapshot::snapshot::{capture, BrokerTimes, CaptureRequest};
use kafka_snapshot::storage::{self, ColdStore, StoreOptions};
use kafka_snapshot::{catalog, logdir, verify, Error, Result};
use kafka_snapshot_model::layout::SnapshotRef;
use kafka_snapshot_model::manifest::CaptureMode;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Snapshot log dirs whose broker is already stopped.
    Create(CreateArgs),
    /// List snapshots in a store.
    List(ListArgs),
    /// Re-read a snapshot and check every byte against its manifest.
    Verify(VerifyArgs),
    /// Restore a snapshot; existing data is moved aside, never deleted.
    Extract(ExtractArgs),
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Cold storage URL (file:///path or s3://bucket/prefix); defaults to the
    /// config's storage.url. Without --config, S3 settings come from the
    /// AWS_* environment variables and ~/.aws/credentials.
    #[arg(long)]
    store: Option<String>,
    /// Agent config file to take defaults from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bytes per second to and from the store (e.g. 100MiB); overrides
    /// storage.bandwidth_limit.
    #[arg(long, value_parser = parse_rate)]
    bandwidth_limit: Option<u64>,
}

fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    match parse_byte_size(s)? {
        0 => Err("must be more than 0".into()),
        n => Ok(n),
    }
}

impl StoreArgs {
    fn config(&self) -> Result<Option<AgentConfig>> {
        self.config.as_deref().map(AgentConfig::load).transpose()
    }

    fn open(&self, cfg: Option<&AgentConfig>) -> Result<Box<dyn ColdStore>> {
        let url = match (&self.store, cfg) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => c.storage.url.clone(),
            (None, None) => return Err(Error::Usage("give --store URL or --config FILE".into())),
        };
        let mut opts = cfg
            .map(|c| StoreOptions::from_config(&c.storage))
            .unwrap_or_default();
        if self.bandwidth_limit.is_some() {
            opts.bandwidth_limit = self.bandwidth_limit;
        }
        storage::open(&url, &opts)
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Log dirs, comma separated, absolute.
    #[arg(long, value_delimiter = ',', conflicts_with = "server_properties")]
    log_dirs: Vec<PathBuf>,
    /// Read log.dirs and metadata.log.dir from this server.properties.
    #[arg(long)]
    server_properties: Option<PathBuf>,
    #[arg(long, value_enum)]
    capture: Option<CaptureMode>,
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: Option<i32>,
    #[arg(long)]
    zstd_threads: Option<u32>,
    /// Archive dirs without .kafka_cleanshutdown (crash-consistent snapshot).
    #[arg(long)]
    allow_unclean: bool,
    /// `incremental`: files of at least --object-min-size are stored once
    /// per cluster as content objects; or `full`. Unset: snapshot.mode of
    /// --config, else incremental.
    #[arg(long, value_parser = ["full", "incremental"])]
    mode: Option<String>,
    /// With `--mode incremental`: the smallest file kept as a content
    /// object, like `1MiB` (snapshot.object_min_size).
    #[arg(long, value_parser = parse_byte_size)]
    object_min_size: Option<u64>,
    /// With `--mode incremental`: the size of the chunks those files are
    /// cut into, each one object, like `4MiB` (snapshot.object_chunk_size).
    #[arg(long, value_parser = parse_byte_size)]
    object_chunk_size: Option<u64>,
    /// With `--mode incremental`: keep the hashes of rolled segment files
    /// in this file, so that the next snapshot need not read them again
    /// (snapshot.hash_cache).
    #[arg(long)]
    hash_cache: Option<PathBuf>,
    /// Encrypt to this age recipient (age1...); repeat for several.
    /// Replaces encryption.recipients and recipients_file of --config.
    #[arg(long = "recipient")]
    recipients: Vec<String>,
    /// Encrypt to the recipients in this file (one age1... per line); with
    /// --recipient, to both.
    #[arg(long)]
    recipients_file: Option<PathBuf>,
    /// Encrypted and incremental: the cluster's object key, which names the
    /// content objects (encryption.object_key_file).
    #[arg(long)]
    object_key_file: Option<PathBuf>,
    /// Print the manifest summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long)]
    broker: Option<i32>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    snapshot: String,
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long)]
    broker: Option<i32>,
    /// age identity file (mode 0600) that opens an encrypted snapshot;
    /// defaults to encryption.identity_file of --config.
    #[arg(long)]
    identity: Option<PathBuf>,
}

impl SnapshotArgs {
    /// The identity from --identity, else from the config.
    fn identity(&self, cfg: Option<&AgentConfig>) -> Result<Option<Arc<Identities>>> {
        match (&self.identity, cfg, &self.store.config) {
            (Some(f), _, _) => Identities::load(f)
                .map(|i| Some(Arc::new(i)))
                .map_err(|m| Error::Usage(format!("--identity: {m}"))),
            (None, Some(c), Some(path)) => c.encryption.identity(path),
            _ => Ok(None),
        }
    }
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    snap: SnapshotArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    #[command(flatten)]
    snap: SnapshotArgs,
    /// One target dir per log dir of the snapshot, in manifest order.
    #[arg(long, num_args = 1.., required_unless_present = "original_paths", conflicts_with = "original_paths")]
    into: Vec<PathBuf>,
    /// Restore every log dir to the path it was snapshotted from; each must
    /// be one of this node's log dirs, read from --server-properties or from
    /// the log dirs of --config.
    #[arg(long)]
    original_paths: bool,
    /// This node's server.properties (log.dirs, metadata.log.dir): the only
    /// paths --original-paths restores into.
    #[arg(long, requires = "original_paths")]
    server_properties: Option<PathBuf>,
    /// Restore over dirs whose meta.properties names another cluster or broker.
    #[arg(long)]
    allow_other_identity: bool,
    /// Do not restore file owners (the default as root is to restore them).
    #[arg(long)]
    no_owner: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ArchiveCommand) -> Result<ExitCode> {
    match cmd {
        ArchiveCommand::Create(a) => create(a),
        ArchiveCommand::List(a) => list(a),
        ArchiveCommand::Verify(a) => verify_cmd(a),
        ArchiveCommand::Extract(a) => extract_cmd(a),
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

fn create(a: CreateArgs) -> Result<ExitCode> {
    let cfg = a.store.config()?;
    let store = a.store.open(cfg.as_ref())?;
    let log_dirs = if !a.log_dirs.is_empty() {
        a.log_dirs.clone()
    } else if let Some(p) = &a.server_properties {
        logdir::log_dirs_from_server_properties(p)?
    } else if let Some(c) = &cfg {
        c.log_dirs()?
    } else {
        return Err(Error::Usage(
            "give --log-dirs, --server-properties or --config".into(),
        ));
    };
    let snap_cfg = cfg.as_ref().map(|c| c.snapshot.clone()).unwrap_or_default();
    let req = CaptureRequest {
        log_dirs,
        mode: a.capture.unwrap_or(snap_cfg.capture),
        allow_unclean: a.allow_unclean || snap_cfg.allow_unclean,
        staging_min_free: snap_cfg.staging_min_free,
    };
    let encrypt_to = if a.recipients.is_empty() && a.recipients_file.is_none() {
        cfg.as_ref().and_then(|c| c.encryption.recipients())
    } else {
        let mut items: Vec<(String, String)> = a
            .recipients
            .iter()
            .map(|r| ("--recipient".to_string(), r.clone()))
            .collect();
        if let Some(f) = &a.recipients_file {
            items.extend(
                Recipients::read_file(f)
                    .map_err(|m| Error::Usage(format!("--recipients-file: {m}")))?,
            );
        }
        let r = Recipients::parse(items.iter().map(|(s, r)| (s.clone(), r.as_str())))
            .map_err(Error::Usage)?;
        Some(Arc::new(r))
    };
    let object_key = a
        .object_key_file
        .as_deref()
        .map(ObjectKey::load)
        .transpose()
        .map_err(|m| Error::Usage(format!("--object-key-file: {m}")))?;
    let opts = ArchiveOptions {
        zstd_level: a.zstd_level.unwrap_or(snap_cfg.zstd_level),
        zstd_threads: a.zstd_threads.unwrap_or(snap_cfg.zstd_threads),
        cancel: None,
        objects: match a.mode.as_deref() {
            Some("full") => None,
            Some(_) => Some(ObjectOptions {
                min_size: a.object_min_size.unwrap_or(snap_cfg.object_min_size),
                chunk_size: match a.object_chunk_size {
                    Some(size) => {
                        kafka_snapshot::objects::check_chunk_size(size)
                            .map_err(|why| Error::Usage(format!("--object-chunk-size {why}")))?;
                        size
                    }
                    None => snap_cfg.object_chunk_size,
                },
                hash_cache: a.hash_cache.clone().or(snap_cfg.hash_cache.clone()),
                object_key: object_key.clone().or_else(|| {
                    cfg.as_ref()
                        .and_then(|c| c.encryption.object_key().cloned())
                }),
            }),
            // snapshot.mode of --config, else its default (incremental).
            None => cfg
                .as_ref()
                .map_or_else(|| snap_cfg.object_options(), |c| c.object_options())
                .map(|o| ObjectOptions {
                    hash_cache: a.hash_cache.clone().or(o.hash_cache),
                    object_key: object_key.clone().or(o.object_key),
                    ..o
                }),
        },
        encrypt_to,
    };
    let captured = capture(&req)?;
    let m = captured.commit(store.as_ref(), &opts, BrokerTimes::default())?;
    if a.json {
        print_json(&serde_json::json!({
            "snapshot_id": m.snapshot_id,
            "cluster_id": m.cluster_id,
            "broker": m.node_id,
            "capture": m.capture.used,
            "capture_reason": m.capture.reason,
            "files": m.totals.files,
            "data_bytes": m.totals.bytes,
            "archive_bytes": m.archive.size,
            "archive_sha256": m.archive.sha256,
            "clean_shutdown": m.clean_shutdown,
            "encrypted_to": m.encryption.as_ref().map(|e| &e.recipients),
            "objects": m.objects,
        }));
    } else {
        println!("{}", m.snapshot_id);
    }
    Ok(ExitCode::SUCCESS)
}

fn list(a: ListArgs) -> Result<ExitCode> {
    let cfg = a.store.config()?;
    let store = a.store.open(cfg.as_ref())?;
    let listed = catalog::list(store.as_ref(), a.cluster.as_deref(), a.broker)?;
    if a.json {
        print_json(&catalog::to_json(&listed));
    } else {
        print!("{}", catalog::format_table(&listed));
    }
    Ok(ExitCode::SUCCESS)
}

type Found = (Box<dyn ColdStore>, SnapshotRef, Option<Arc<Identities>>);

/// The store, the snapshot and the identity to open it with (read before
/// the store is touched: a bad identity file fails at once).
fn find(a: &SnapshotArgs) -> Result<Found> {
    let cfg = a.store.config()?;
    let identity = a.identity(cfg.as_ref())?;
    let store = a.store.open(cfg.as_ref())?;
    let snap = catalog::find(store.as_ref(), &a.snapshot, a.cluster.as_deref(), a.broker)?;
    Ok((store, snap, identity))
}

fn verify_cmd(a: VerifyArgs) -> Result<ExitCode> {
    let (store, snap, identity) = find(&a.snap)?;
    let (_, report) = verify::verify_with(store.as_ref(), &snap, identity.as_deref())?;
    if a.json {
        print_json(&report);
    } else if !report.contents_checked {
        let objects = match report.objects_listed {
            0 => String::new(),
            n => format!(", its {n} content objects are in storage"),
        };
        println!(
            "snapshot {}: stored archive intact ({} bytes, sha256 {}){objects}; it is encrypted \
             to [{}] and its contents were NOT checked (give --identity FILE to check every file)",
            report.snapshot_id,
            report.archive_size,
            report.archive_sha256,
            report.encrypted_to.join(", ")
        );
    } else {
        println!(
            "snapshot {} ok: {} files, {} bytes, archive {} bytes sha256 {}",
            report.snapshot_id,
            report.files,
            report.bytes,
            report.archive_size,
            report.archive_sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn extract_cmd(a: ExtractArgs) -> Result<ExitCode> {
    let (store, snap, identity) = find(&a.snap)?;
    let targets = if a.original_paths {
        // The manifest says where the dirs were; only this node's own
        // configuration says where log dirs may be.
        let configured = match (&a.server_properties, a.snap.store.config()?) {
            (Some(p), _) => logdir::log_dirs_from_server_properties(p)?,
            (None, Some(cfg)) => cfg.log_dirs()?,
            (None, None) => {
                return Err(Error::Usage(
                    "--original-paths restores only into this node's configured log dirs: \
                     give --server-properties FILE or --config FILE to name them"
                        .into(),
                ))
            }
        };
        original_targets(&catalog::load_manifest(store.as_ref(), &snap)?, &configured)?
    } else {
        a.into.clone()
    };
    let opts = ExtractOptions {
        targets,
        allow_other_identity: a.allow_other_identity,
        replace_formatted: false,
        restore_owner: can_restore_owners() && !a.no_owner,
        broker_may_run: false,
        cancel: None,
        identity,
    };
    let report = extract(store.as_ref(), &snap, &opts)?;
    if a.json {
        print_json(&report);
    } else {
        for r in &report.restored {
            match &r.moved_aside {
                Some(aside) => println!(
                    "restored {} (from {}); previous contents moved to {}",
                    r.target.display(),
                    r.original_path,
                    aside.display()
                ),
                None => println!("restored {} (from {})", r.target.display(), r.original_path),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
