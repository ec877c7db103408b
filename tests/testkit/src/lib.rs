//! Generates realistic Kafka KRaft broker log directories, as a Kafka 4.x
//! broker leaves them after a (clean) stop, for tests and benchmarks of the
//! snapshot tool.
//!
//! Everything (names, ids, file content and mtimes) is a pure function of the
//! [`Spec`], so two runs with the same spec produce byte-identical trees.
//!
//! ```no_run
//! use kafka_snapshot_testkit::{generate, Spec};
//! let spec = Spec::small("MkU3OEVBNTcwNTJENDM2Qk", 1, vec!["/tmp/kafka-logs-1".into()]);
//! let out = generate(&spec).unwrap();
//! println!("{} files, {} bytes", out.files, out.bytes);
//! ```
//!
//! Layout of one log dir:
//!
//! ```text
//! meta.properties  .lock  .kafka_cleanshutdown
//! recovery-point-offset-checkpoint  log-start-offset-checkpoint
//! replication-offset-checkpoint     cleaner-offset-checkpoint
//! bootstrap.checkpoint                          (every dir)
//! __cluster_metadata-0/                         (first dir only)
//!     00000000000000000000.{log,index,timeindex}
//!     00000000000000000100-0000000001.checkpoint  quorum-state
//!     leader-epoch-checkpoint  partition.metadata
//!     <log end offset>.snapshot                 (after a clean stop)
//! <topic>-<partition>/
//!     <20-digit base offset>.{log,index,timeindex}   (one or more segments)
//!     <log end offset>.snapshot  leader-epoch-checkpoint  partition.metadata
//! <topic>-<partition>.<32 hex>-delete/          (optional)
//! <topic>-<partition>.<32 hex>-future/          (optional)
//! ```

mod crc32c;
/// The protocol types the harnesses hand out (`MetadataResponse`, ...).
pub use kafka_protocol;
pub mod garage;
pub mod kafka;
pub mod kafka_admin;
mod kafka_files;
pub mod net;
pub mod observer;
pub mod process;
mod records;
pub mod report;
mod rng;
pub mod wire;

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};

use kafka_files::{CheckpointEntry, ProducerEntry};
use records::{BatchEncoder, BatchInfo, BatchMeta, Flavor, JsonKind, ValuePool};
use rng::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Simulated moment of the broker stop: 2026-11-20T10:00:00Z. A fixed time
/// (rather than "now") keeps mtimes part of the deterministic output.
const STOP_SECS: i64 = 1_795_168_800;
/// When `kafka-storage format` wrote meta.properties.
const FORMAT_SECS: i64 = STOP_SECS - 90 * 86_400;
/// When the broker last started (and took `.lock`).
const BROKER_START_SECS: i64 = STOP_SECS - 3 * 86_400;
/// Record timestamps of live partitions span the week before the stop.
const DATA_START_MS: i64 = (STOP_SECS - 7 * 86_400) * 1000;
const DATA_END_MS: i64 = (STOP_SECS - 30) * 1000;

/// Kafka's default `index.interval.bytes`.
const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Smallest accepted `segment_bytes`: keeps every batch well below a segment.
const MIN_SEGMENT_BYTES: u64 = 16 * KIB;
/// Smallest accepted sparse file: room for the real head and tail batches.
const MIN_SPARSE_BYTES: u64 = 64 * KIB;
/// Segment positions are i32 in Kafka's indexes, so a segment is < 2 GiB.
const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// Segment data is written in chunks of this size.
const WRITE_CHUNK: usize = 4 * MIB as usize;

const OFFSETS_TOPIC: &str = "__consumer_offsets";
const OFFSETS_PARTITIONS: u32 = 12;
const METADATA_DIR: &str = "__cluster_metadata-0";
/// Offsets in the metadata log; must exceed the snapshot's end offset (100).
const METADATA_LOG_END: i64 = 260;
/// Leader epochs of the metadata log: (epoch, start offset).
const METADATA_EPOCHS: [(i32, i64); 3] = [(1, 0), (2, 140), (3, 200)];
const METADATA_LEADER: i32 = 1;
const BROKER_EPOCH: i64 = 18;
/// Base offset of the big sparse segment (unless the log is already longer).
const SPARSE_BASE_OFFSET: i64 = 99_000_000;

/// Application topic names, cycling order / payment / click payloads so each
/// name matches its [`JsonKind`] (`JsonKind::ALL[i % 3]`).
const TOPIC_NAMES: [&str; 15] = [
    "orders",
    "payments.v2",
    "clickstream_events",
    "inventory-updates",
    "fraud_scores",
    "search-queries",
    "shipments",
    "pricing.v3",
    "user.profile.changes",
    "cart_events",
    "refunds",
    "sessions",
    "returns.v1",
    "payouts",
    "notifications.email",
];
const CONSUMER_GROUPS: [&str; 5] = [
    "billing-service",
    "fulfillment",
    "analytics-etl",
    "fraud-detector",
    "search-indexer",
];

/// What to generate. See [`Spec::small`] for a ready-made small spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Cluster id written to every `meta.properties`, e.g.
    /// `MkU3OEVBNTcwNTJENDM2Qk` (a 22-char base64url uuid, as Kafka prints).
    pub cluster_id: String,
    /// `node.id` of the broker.
    pub node_id: i32,
    /// Log dirs, created if missing (they must be empty if they exist). The
    /// first one also holds the KRaft metadata log.
    pub log_dirs: Vec<PathBuf>,
    /// Number of application topics (`__consumer_offsets` comes on top).
    pub topics: usize,
    pub partitions_per_topic: usize,
    /// Approximate total size of all `.log` segment data across all dirs,
    /// excluding the big sparse file.
    pub total_bytes: u64,
    /// A segment is rolled before it would exceed this size.
    pub segment_bytes: u64,
    /// If set, the first topic's partition 0 gets an extra segment of exactly
    /// this many bytes: a sparse file with real batches only at its start and
    /// end. Not counted in `total_bytes`.
    pub big_sparse_file_bytes: Option<u64>,
    /// Add a `<topic>-<p>.<32hex>-delete` dir (a partition being deleted).
    pub with_delete_dir: bool,
    /// Add a `<topic>-<p>.<32hex>-future` dir (intra-broker move in flight).
    pub with_future_dir: bool,
    /// Write `.kafka_cleanshutdown` in every dir; otherwise the recovery
    /// points lag behind the log end, as after a crash.
    pub clean_shutdown: bool,
    /// Create an empty `.lock` in every dir.
    pub with_lock_file: bool,
    /// Seed for all names, ids and content.
    pub seed: u64,
}

impl Spec {
    /// A small spec (6 MiB, 3 topics x 4 partitions, 1 MiB segments) with
    /// `.lock`, `.kafka_cleanshutdown` and a `-delete` dir, no future dir and
    /// no sparse file. Fast enough for unit tests in debug builds.
    pub fn small(cluster_id: &str, node_id: i32, log_dirs: Vec<PathBuf>) -> Spec {
        Spec {
            cluster_id: cluster_id.to_string(),
            node_id,
            log_dirs,
            topics: 3,
            partitions_per_topic: 4,
            total_bytes: 6 * MIB,
            segment_bytes: MIB,
            big_sparse_file_bytes: None,
            with_delete_dir: true,
            with_future_dir: false,
            clean_shutdown: true,
            with_lock_file: true,
            seed: 1,
        }
    }

    /// Checks the spec without touching the filesystem.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.log_dirs.is_empty(),
            "at least one log dir is required"
        );
        let mut seen = HashSet::new();
        for d in &self.log_dirs {
            ensure!(seen.insert(d), "log dir {} is listed twice", d.display());
        }
        ensure!(
            !self.cluster_id.is_empty()
                && self
                    .cluster_id
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '='),
            "cluster id {:?} must be non-empty printable ASCII without '=' or spaces",
            self.cluster_id
        );
        ensure!(
            self.node_id >= 0,
            "node id must be >= 0, got {}",
            self.node_id
        );
        ensure!(self.topics >= 1, "topics must be >= 1");
        ensure!(
            self.partitions_per_topic >= 1,
            "partitions per topic must be >= 1"
        );
        ensure!(
            self.topics.saturating_mul(self.partitions_per_topic) <= 100_000,
            "at most 100000 partitions in total"
        );
        ensure!(
            (MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes),
            "segment size must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES} bytes, got {}",
            self.segment_bytes
        );
        if let Some(n) = self.big_sparse_file_bytes {
            ensure!(
                (MIN_SPARSE_BYTES..=MAX_SEGMENT_BYTES).contains(&n),
                "big sparse file must be between {MIN_SPARSE_BYTES} and {MAX_SEGMENT_BYTES} bytes \
                 (a Kafka segment is < 2 GiB), got {n}"
            );
        }
        Ok(())
    }
}

/// What [`generate`] created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// Regular files created.
    pub files: usize,
    /// Directories in the generated trees, the log dirs included.
    pub dirs: usize,
    /// Sum of the (apparent) sizes of all files created.
    pub bytes: u64,
    /// `directory.id` of each log dir, in `Spec::log_dirs` order.
    pub directory_ids: Vec<String>,
}

/// Generates the log dirs described by `spec`. The log dirs must be missing
/// or empty.
pub fn generate(spec: &Spec) -> Result<Generated> {
    spec.validate()?;
    let mut fsw = FsWriter::default();
    for dir in &spec.log_dirs {
        prepare_log_dir(dir)?;
        fsw.dirs += 1;
    }
    let directory_ids = directory_ids(spec);

    let pool = ValuePool::new(spec.seed, pool_bytes(spec.total_bytes));
    let ctx = Ctx {
        log_dirs: &spec.log_dirs,
        seed: spec.seed,
        segment_bytes: spec.segment_bytes,
        pool: &pool,
    };
    let topics = plan_topics(spec);
    // Checkpoint entries per log dir.
    let mut checkpoints: Vec<Vec<DirEntry>> = vec![Vec::new(); spec.log_dirs.len()];

    // Small fixed-size parts first; whatever they use is taken from the
    // budget before it is spread over the application partitions.
    let mut used = write_metadata_log(&ctx, &topics, spec.clean_shutdown, &mut fsw)?;

    // Partitions are placed round-robin over the log dirs, application
    // topics first, then __consumer_offsets.
    let n_dirs = spec.log_dirs.len();
    let app_partitions = spec.topics * spec.partitions_per_topic;
    let app_dirs: Vec<usize> = (0..app_partitions).map(|i| i % n_dirs).collect();
    used += write_consumer_offsets(
        &ctx,
        spec,
        &topics,
        app_partitions,
        &mut checkpoints,
        &mut fsw,
    )?;
    if spec.with_delete_dir {
        used += write_delete_dir(&ctx, spec, &mut fsw)?;
    }

    // Spread the rest over the application partitions, unevenly.
    let future_budget = if spec.with_future_dir {
        (spec.total_bytes / 50).min(64 * MIB)
    } else {
        0
    };
    let app_budget = spec
        .total_bytes
        .saturating_sub(used)
        .saturating_sub(future_budget);
    let mut jobs = plan_app_partitions(spec, &topics, &app_dirs, app_budget);

    if spec.with_future_dir {
        let future = plan_future(spec, &jobs, future_budget);
        jobs.push(future);
    }
    for (i, job) in jobs.iter().enumerate() {
        let res = write_partition(&ctx, job, &mut fsw)?;
        if spec.with_delete_dir && i == 0 {
            write_deleted_segment(&ctx, job, &mut fsw)?;
        }
        // Kafka keys checkpoint entries by partition, so with a single log
        // dir a future copy would share its source's entry.
        let is_future = job.dir_name.ends_with("-future");
        if !(is_future && n_dirs == 1) {
            checkpoints[job.log_dir].push(DirEntry::new(job, &res, false));
        }
    }

    for (i, dir) in spec.log_dirs.iter().enumerate() {
        write_log_dir_files(
            spec,
            i,
            dir,
            &directory_ids[i],
            &mut checkpoints[i],
            &mut fsw,
        )?;
    }
    fsw.apply_dir_times()?;

    Ok(Generated {
        files: fsw.files,
        dirs: fsw.dirs,
        bytes: fsw.bytes,
        directory_ids,
    })
}

/// `__consumer_offsets`: tiny, compacted, many partitions empty. Returns
/// the `.log` bytes written.
fn write_consumer_offsets(
    ctx: &Ctx<'_>,
    spec: &Spec,
    topics: &[Topic],
    first_placement: usize,
    checkpoints: &mut [Vec<DirEntry>],
    fsw: &mut FsWriter,
) -> Result<u64> {
    let budget = (spec.total_bytes / 40).min(u64::from(OFFSETS_PARTITIONS) * 128 * KIB);
    let mut rng = Rng::derive(spec.seed, "offsets-weights", 0);
    let weights: Vec<f64> = (0..OFFSETS_PARTITIONS)
        .map(|_| {
            if rng.chance(0.4) {
                0.0
            } else {
                0.2 + rng.unit()
            }
        })
        .collect();
    let weight_sum: f64 = weights.iter().sum();
    let flavor = Flavor::OffsetCommits {
        groups: CONSUMER_GROUPS.iter().map(|s| s.to_string()).collect(),
        topics: topics.iter().map(|t| t.name.clone()).collect(),
    };
    let topic_id = kafka_files::random_uuid(&mut Rng::derive(spec.seed, "topic-id", u64::MAX));
    let mut used = 0;
    for (p, w) in weights.iter().enumerate() {
        let target = if weight_sum > 0.0 {
            (budget as f64 * w / weight_sum) as u64
        } else {
            0
        };
        let job = PartitionJob {
            topic: OFFSETS_TOPIC.to_string(),
            partition: p as u32,
            topic_id,
            dir_name: format!("{OFFSETS_TOPIC}-{p}"),
            log_dir: (first_placement + p) % spec.log_dirs.len(),
            target_bytes: target,
            stop_after: None,
            start_offset: 0,
            flavor: flavor.clone(),
            content_seed: 1_000_000 + p as u64,
            producers: 0,
            time_range_ms: (DATA_START_MS, DATA_END_MS),
            closed_at_secs: STOP_SECS - 5,
            sparse_bytes: None,
        };
        let res = write_partition(ctx, &job, fsw)?;
        used += res.log_bytes;
        checkpoints[job.log_dir].push(DirEntry::new(&job, &res, true));
    }
    Ok(used)
}

/// A partition of a topic deleted a moment before the stop: Kafka renamed
/// the dir and would have removed it a minute later. It is in no
/// checkpoint. Returns the `.log` bytes written.
fn write_delete_dir(ctx: &Ctx<'_>, spec: &Spec, fsw: &mut FsWriter) -> Result<u64> {
    let mut rng = Rng::derive(spec.seed, "delete-dir", 0);
    let partition = rng.below(4) as u32;
    let job = PartitionJob {
        topic: "legacy_audit".to_string(),
        partition,
        topic_id: kafka_files::random_uuid(&mut rng),
        dir_name: format!(
            "legacy_audit-{partition}.{}-delete",
            kafka_files::hex32(&mut rng)
        ),
        log_dir: rng.below(spec.log_dirs.len() as u64) as usize,
        target_bytes: (spec.total_bytes / 100).clamp(4 * KIB, MIB),
        stop_after: None,
        start_offset: 0,
        flavor: Flavor::Json {
            kind: JsonKind::Click,
            keyed: false,
        },
        content_seed: 2_000_000,
        producers: 1,
        time_range_ms: (
            (STOP_SECS - 30 * 86_400) * 1000,
            (STOP_SECS - 20 * 86_400) * 1000,
        ),
        closed_at_secs: STOP_SECS - 40,
        sparse_bytes: None,
    };
    Ok(write_partition(ctx, &job, fsw)?.log_bytes)
}

/// A segment retention deleted a moment before the stop: Kafka renamed
/// its files to `*.deleted` and would have removed them
/// `file.delete.delay.ms` later; a broker that starts removes them at once.
fn write_deleted_segment(ctx: &Ctx<'_>, job: &PartitionJob, fsw: &mut FsWriter) -> Result<()> {
    let dir = ctx.log_dirs[job.log_dir].join(&job.dir_name);
    let mut rng = Rng::derive(ctx.seed, "deleted-segment", 0);
    let bytes: Vec<u8> = (0..8 * KIB).map(|_| rng.below(256) as u8).collect();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs((STOP_SECS - 90) as u64);
    for ext in ["log", "index", "timeindex"] {
        let name = format!("{:020}.{ext}.deleted", job.start_offset);
        fsw.write_file(&dir.join(name), &bytes, mtime)?;
    }
    Ok(())
}

/// Parses a size such as `512MiB`, `2GiB`, `1G`, `1.5GiB`, `64KB` or
/// `1000000`. Units are case-insensitive; `K`/`M`/`G`/`T` with or without
/// `iB` are powers of 1024, `KB`/`MB`/`GB`/`TB` powers of 1000, `B` bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    ensure!(
        !number.is_empty() && number.chars().filter(|&c| c == '.').count() <= 1 && number != ".",
        "invalid size {text:?}: expected a number with an optional unit, e.g. 512MiB"
    );
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => 1024 * MIB,
        "t" | "tib" => 1024 * 1024 * MIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => bail!("invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"),
    };
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(multiplier)
            .with_context(|| format!("size {text:?} is too large"));
    }
    let value: f64 = number
        .parse()
        .with_context(|| format!("invalid size {text:?}"))?;
    let bytes = (value * multiplier as f64).round();
    ensure!(bytes < u64::MAX as f64, "size {text:?} is too large");
    Ok(bytes as u64)
}

// ---------------------------------------------------------------------------
// Planning

struct Ctx<'a> {
    log_dirs: &'a [PathBuf],
    seed: u64,
    segment_bytes: u64,
    pool: &'a ValuePool,
}

struct Topic {
    name: String,
    id: [u8; 16],
    kind: JsonKind,
}

/// Everything needed to write one partition directory.
#[derive(Clone, Debug)]
struct PartitionJob {
    topic: String,
    partition: u32,
    topic_id: [u8; 16],
    dir_name: String,
    log_dir: usize,
    /// Planned size of the `.log` data; drives batch sizes and timestamps.
    target_bytes: u64,
    /// Stop early, after this many bytes (a `-future` copy still catching
    /// up). The data is then an exact prefix of the full partition's.
    stop_after: Option<u64>,
    /// Base offset of the first segment (> 0 once retention deleted some).
    start_offset: i64,
    flavor: Flavor,
    /// Index of the random streams for the content.
    content_seed: u64,
    /// Number of idempotent producers writing to it (0: producer id -1).
    producers: u32,
    /// Record timestamps spread linearly over this range.
    time_range_ms: (i64, i64),
    /// When the log was closed (active segment indexes trimmed, producer
    /// snapshot written).
    closed_at_secs: i64,
    sparse_bytes: Option<u64>,
}

fn plan_topics(spec: &Spec) -> Vec<Topic> {
    (0..spec.topics)
        .map(|i| {
            let base = TOPIC_NAMES[i % TOPIC_NAMES.len()];
            let round = i / TOPIC_NAMES.len();
            let name = if round == 0 {
                base.to_string()
            } else {
                format!("{base}.shard{round}")
            };
            Topic {
                name,
                id: kafka_files::random_uuid(&mut Rng::derive(spec.seed, "topic-id", i as u64)),
                kind: JsonKind::ALL[i % TOPIC_NAMES.len() % 3],
            }
        })
        .collect()
}

fn plan_app_partitions(
    spec: &Spec,
    topics: &[Topic],
    dirs: &[usize],
    budget: u64,
) -> Vec<PartitionJob> {
    let mut rng = Rng::derive(spec.seed, "app-weights", 0);
    let mut weights = Vec::with_capacity(dirs.len());
    for t in 0..topics.len() {
        // Earlier topics are hotter (roughly Zipf), with some noise.
        let topic_weight = (0.5 + rng.unit()) / ((t + 1) as f64).powf(0.8);
        for _ in 0..spec.partitions_per_topic {
            // Some partitions are nearly idle (skewed keys, unused partitions).
            let p = if rng.chance(0.15) {
                0.01
            } else {
                0.3 + 1.7 * rng.unit()
            };
            weights.push(topic_weight * p);
        }
    }
    let sum: f64 = weights.iter().sum();

    let mut jobs = Vec::with_capacity(weights.len());
    for (t, topic) in topics.iter().enumerate() {
        for p in 0..spec.partitions_per_topic {
            let i = t * spec.partitions_per_topic + p;
            let target = (budget as f64 * weights[i] / sum) as u64;
            let mut r = Rng::derive(spec.seed, "partition-plan", i as u64);
            // A quarter of the busier partitions already lost old segments
            // to retention, so their first segment does not start at 0.
            let start_offset = if target > 64 * KIB && r.chance(0.25) {
                r.range(1_000, 5_000_000) as i64
            } else {
                0
            };
            jobs.push(PartitionJob {
                topic: topic.name.clone(),
                partition: p as u32,
                topic_id: topic.id,
                dir_name: format!("{}-{p}", topic.name),
                log_dir: dirs[i],
                target_bytes: target,
                stop_after: None,
                start_offset,
                flavor: Flavor::Json {
                    kind: topic.kind,
                    keyed: topic.kind != JsonKind::Click,
                },
                content_seed: i as u64,
                producers: r.range(1, 3) as u32,
                time_range_ms: (DATA_START_MS + r.below(3_600_000) as i64, DATA_END_MS),
                closed_at_secs: STOP_SECS - 5,
                sparse_bytes: if t == 0 && p == 0 {
                    spec.big_sparse_file_bytes
                } else {
                    None
                },
            });
        }
    }
    jobs
}

/// A `-future` copy of one application partition on the next log dir,
/// holding a prefix of its data (the move is still copying).
fn plan_future(spec: &Spec, jobs: &[PartitionJob], budget: u64) -> PartitionJob {
    let mut rng = Rng::derive(spec.seed, "future-dir", 0);
    // Prefer a partition big enough to hold the budget twice; never the one
    // with the sparse segment (keeps the future copy small).
    let candidates: Vec<&PartitionJob> = jobs
        .iter()
        .filter(|j| j.sparse_bytes.is_none() && j.target_bytes >= 2 * budget)
        .collect();
    let source = if candidates.is_empty() {
        jobs.iter()
            .filter(|j| j.sparse_bytes.is_none() || jobs.len() == 1)
            .max_by_key(|j| j.target_bytes)
            .expect("at least one partition")
    } else {
        rng.pick(&candidates)
    };
    let mut job = source.clone();
    job.dir_name = format!(
        "{}-{}.{}-future",
        job.topic,
        job.partition,
        kafka_files::hex32(&mut rng)
    );
    job.log_dir = (source.log_dir + 1) % spec.log_dirs.len();
    job.stop_after = Some(budget.min(source.target_bytes / 2));
    job.sparse_bytes = None;
    job.closed_at_secs = STOP_SECS - 3;
    job
}

/// Size of the pre-rendered value pool: much larger than a compressor
/// window for big runs, small for tiny specs so unit tests stay fast.
fn pool_bytes(total: u64) -> usize {
    (total / 8).clamp(192 * KIB, 24 * MIB) as usize
}

fn directory_ids(spec: &Spec) -> Vec<String> {
    let mut rng = Rng::derive(spec.seed, "directory-id", 0);
    let mut ids: Vec<String> = Vec::new();
    while ids.len() < spec.log_dirs.len() {
        let id = kafka_files::uuid_base64url(&kafka_files::random_uuid(&mut rng));
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

// ---------------------------------------------------------------------------
// Filesystem helpers

/// Creates files and dirs with fixed modes and counts what it created.
/// Directory mtimes are applied at the very end, since creating entries in a
/// directory bumps its mtime.
#[derive(Default)]
struct FsWriter {
    files: usize,
    dirs: usize,
    bytes: u64,
    dir_times: Vec<(PathBuf, SystemTime)>,
}

impl FsWriter {
    fn create_file(&mut self, path: &Path) -> Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        // The umask may have removed bits; set the exact mode.
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", path.display()))?;
        self.files += 1;
        Ok(file)
    }

    fn write_file(&mut self, path: &Path, content: &[u8], mtime: SystemTime) -> Result<()> {
        let mut file = self.create_file(path)?;
        file.write_all(content)
            .with_context(|| format!("writing {}", path.display()))?;
        self.bytes += content.len() as u64;
        set_times(&file, path, mtime)
    }

    fn create_dir(&mut self, path: &Path) -> Result<()> {
        fs::create_dir(path).with_context(|| format!("creating dir {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        self.dirs += 1;
        Ok(())
    }

    /// Records the mtime to give `path` once everything is written.
    fn set_dir_time_later(&mut self, path: &Path, mtime: SystemTime) {
        self.dir_times.push((path.to_path_buf(), mtime));
    }

    fn apply_dir_times(&mut self) -> Result<()> {
        // Deepest first, so setting a child's times cannot disturb a parent's.
        self.dir_times
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, t) in self.dir_times.drain(..) {
            let dir =
                File::open(&path).with_context(|| format!("opening dir {}", path.display()))?;
            set_times(&dir, &path, t)?;
        }
        Ok(())
    }
}

fn set_times(file: &File, path: &Path, t: SystemTime) -> Result<()> {
    file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .with_context(|| format!("setting times of {}", path.display()))
}

/// Seconds since the epoch plus a nanosecond part, so restored mtimes can
/// be checked to full precision.
fn at(secs: i64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos % 1_000_000_000)
}

fn at_ms(ms: i64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_millis(ms as u64)
        + Duration::from_nanos(u64::from(nanos % 1_000_000))
}

fn prepare_log_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        ensure!(
            dir.is_dir(),
            "{} exists and is not a directory",
            dir.display()
        );
        let mut entries =
            fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "log dir {} is not empty; refusing to generate into it",
                dir.display()
            );
        }
    } else {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Segments

/// The segment currently being written.
struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    log: File,
    /// Logical size: bytes written, buffered, or skipped over (holes).
    size: u64,
    /// Offset index entries: relative offset i32, position i32.
    index: Vec<u8>,
    /// Time index entries: timestamp i64, relative offset i32.
    time_index: Vec<u8>,
    last_time_entry: Option<i64>,
    bytes_since_index: u64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
}

impl Segment {
    fn relative(&self, offset: i64) -> [u8; 4] {
        ((offset - self.base_offset) as i32).to_be_bytes()
    }

    fn maybe_append_time_entry(&mut self, ts: i64, offset: i64) {
        if self.last_time_entry.is_none_or(|last| ts > last) {
            self.time_index.extend_from_slice(&ts.to_be_bytes());
            let rel = self.relative(offset);
            self.time_index.extend_from_slice(&rel);
            self.last_time_entry = Some(ts);
        }
    }
}

/// Appends batches to a partition's log, rolling segments and maintaining
/// indexes the way Kafka's `LogSegment.append` does.
struct LogWriter<'a> {
    dir: PathBuf,
    segment_bytes: u64,
    enc: BatchEncoder<'a>,
    /// The batch being encoded.
    scratch: Vec<u8>,
    /// Unwritten `.log` bytes of the current segment.
    buf: Vec<u8>,
    seg: Segment,
    next_offset: i64,
    /// `.log` bytes written to this partition (holes excluded).
    log_bytes: u64,
    times: LogTimes,
    /// Newest mtime of anything in the partition dir.
    newest: SystemTime,
}

/// Inputs for the mtimes a [`LogWriter`] gives its files.
struct LogTimes {
    /// mtime of segments that never got data.
    created: SystemTime,
    /// When the log was closed: the active segment's indexes were trimmed.
    closed_at_secs: i64,
    /// Source of sub-second parts.
    jitter: Rng,
}

impl<'a> LogWriter<'a> {
    fn new(
        fsw: &mut FsWriter,
        dir: PathBuf,
        segment_bytes: u64,
        enc: BatchEncoder<'a>,
        start_offset: i64,
        times: LogTimes,
    ) -> Result<LogWriter<'a>> {
        let seg = open_segment(fsw, &dir, start_offset)?;
        Ok(LogWriter {
            dir,
            segment_bytes,
            enc,
            scratch: Vec::with_capacity(64 * KIB as usize),
            buf: Vec::with_capacity(WRITE_CHUNK + 64 * KIB as usize),
            seg,
            next_offset: start_offset,
            log_bytes: 0,
            newest: times.created,
            times,
        })
    }

    /// Encodes one batch of about `target_len` bytes and appends it, rolling
    /// to a new segment first if it would not fit.
    fn append(
        &mut self,
        fsw: &mut FsWriter,
        meta: BatchMeta,
        target_len: usize,
        max_records: u32,
    ) -> Result<BatchInfo> {
        self.scratch.clear();
        let info = self
            .enc
            .encode(&mut self.scratch, meta, target_len, max_records);
        if self.seg.size > 0 && self.seg.size + info.len as u64 > self.segment_bytes {
            self.roll(fsw, meta.base_offset)?;
        }
        self.write_scratch(info)?;
        Ok(info)
    }

    /// Appends the encoded batch in `scratch` at the current position.
    fn write_scratch(&mut self, info: BatchInfo) -> Result<()> {
        let seg = &mut self.seg;
        let position = seg.size;
        if info.max_timestamp > seg.max_timestamp {
            seg.max_timestamp = info.max_timestamp;
            seg.offset_of_max_timestamp = info.last_offset;
        }
        if seg.bytes_since_index > INDEX_INTERVAL_BYTES {
            let rel = seg.relative(info.last_offset);
            seg.index.extend_from_slice(&rel);
            seg.index
                .extend_from_slice(&(position as i32).to_be_bytes());
            let (ts, off) = (seg.max_timestamp, seg.offset_of_max_timestamp);
            seg.maybe_append_time_entry(ts, off);
            seg.bytes_since_index = 0;
        }
        seg.bytes_since_index += info.len as u64;
        seg.size += info.len as u64;
        self.log_bytes += info.len as u64;
        self.next_offset = info.last_offset + 1;
        self.buf.extend_from_slice(&self.scratch);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.seg
                .log
                .write_all(&self.buf)
                .with_context(|| format!("writing {}", self.seg.log_path.display()))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Leaves a hole: continues writing at `position` (> current size).
    fn skip_to(&mut self, position: u64) -> Result<()> {
        self.flush()?;
        self.seg.log.seek(SeekFrom::Start(position))?;
        self.seg.bytes_since_index += position - self.seg.size;
        self.seg.size = position;
        Ok(())
    }

    /// Closes the current segment and starts a new one at `new_base`.
    fn roll(&mut self, fsw: &mut FsWriter, new_base: i64) -> Result<()> {
        self.close_segment(fsw, true)?;
        self.seg = open_segment(fsw, &self.dir, new_base)?;
        Ok(())
    }

    /// Writes out the current segment's remaining data and its indexes.
    /// `rolled`: the segment became inactive (rather than the log closing).
    fn close_segment(&mut self, fsw: &mut FsWriter, rolled: bool) -> Result<()> {
        self.flush()?;
        let seg = &mut self.seg;
        if rolled && seg.max_timestamp >= 0 {
            // Kafka adds a final time index entry when a segment becomes inactive.
            let (ts, off) = (seg.max_timestamp, seg.offset_of_max_timestamp);
            seg.maybe_append_time_entry(ts, off);
        }
        fsw.bytes += seg.size;
        // The .log was last written with its newest batch; a rolled
        // segment's indexes were trimmed right then, the active segment's
        // at shutdown.
        let log_mtime = if seg.max_timestamp >= 0 {
            at_ms(seg.max_timestamp, self.times.jitter.below(1_000_000) as u32)
        } else {
            self.times.created
        };
        let index_mtime = if rolled {
            log_mtime
        } else {
            at(
                self.times.closed_at_secs,
                self.times.jitter.below(1_000_000_000) as u32,
            )
        };
        set_times(&seg.log, &seg.log_path, log_mtime)?;
        let base = seg.base_offset;
        fsw.write_file(
            &self.dir.join(kafka_files::segment_name(base, "index")),
            &seg.index,
            index_mtime,
        )?;
        fsw.write_file(
            &self.dir.join(kafka_files::segment_name(base, "timeindex")),
            &seg.time_index,
            index_mtime,
        )?;
        self.newest = self.newest.max(log_mtime).max(index_mtime);
        Ok(())
    }

    /// Closes the active segment; returns (log end offset, `.log` bytes
    /// written, newest mtime in the partition dir).
    fn finish(mut self, fsw: &mut FsWriter) -> Result<(i64, u64, SystemTime)> {
        self.close_segment(fsw, false)?;
        Ok((self.next_offset, self.log_bytes, self.newest))
    }
}

fn open_segment(fsw: &mut FsWriter, dir: &Path, base_offset: i64) -> Result<Segment> {
    let log_path = dir.join(kafka_files::segment_name(base_offset, "log"));
    let log = fsw.create_file(&log_path)?;
    Ok(Segment {
        base_offset,
        log_path,
        log,
        size: 0,
        index: Vec::new(),
        time_index: Vec::new(),
        last_time_entry: None,
        bytes_since_index: 0,
        max_timestamp: -1,
        offset_of_max_timestamp: -1,
    })
}

// ---------------------------------------------------------------------------
// Partitions

struct PartitionResult {
    log_end_offset: i64,
    log_bytes: u64,
}

/// A partition's entries in its log dir's checkpoint files.
#[derive(Clone, Debug)]
struct DirEntry {
    topic: String,
    partition: u32,
    log_start_offset: i64,
    log_end_offset: i64,
    /// Compacted topics have a cleaner checkpoint.
    compacted: bool,
}

impl DirEntry {
    fn new(job: &PartitionJob, res: &PartitionResult, compacted: bool) -> DirEntry {
        DirEntry {
            topic: job.topic.clone(),
            partition: job.partition,
            log_start_offset: job.start_offset,
            log_end_offset: res.log_end_offset,
            compacted,
        }
    }
}

/// A producer's state while writing, for the producer snapshot.
struct Producer {
    entry: ProducerEntry,
    next_sequence: i32,
}

fn write_partition(
    ctx: &Ctx<'_>,
    job: &PartitionJob,
    fsw: &mut FsWriter,
) -> Result<PartitionResult> {
    let dir = ctx.log_dirs[job.log_dir].join(&job.dir_name);
    let created_ms = job.time_range_ms.0 - 3_600_000;
    let mut rng = Rng::derive(ctx.seed, "partition", job.content_seed);
    fsw.create_dir(&dir)?;

    // Files written once at creation / at broker start.
    fsw.write_file(
        &dir.join("partition.metadata"),
        kafka_files::partition_metadata(&job.topic_id).as_bytes(),
        at_ms(created_ms, rng.below(1_000_000) as u32),
    )?;
    fsw.write_file(
        &dir.join("leader-epoch-checkpoint"),
        kafka_files::leader_epoch_checkpoint(&[(0, job.start_offset)]).as_bytes(),
        at(BROKER_START_SECS + 20, rng.below(1_000_000_000) as u32),
    )?;

    let enc = BatchEncoder::new(
        ctx.pool,
        job.flavor.clone(),
        Rng::derive(ctx.seed, "records", job.content_seed),
    );
    let mut w = LogWriter::new(
        fsw,
        dir.clone(),
        ctx.segment_bytes,
        enc,
        job.start_offset,
        LogTimes {
            created: at_ms(created_ms, 0),
            closed_at_secs: job.closed_at_secs,
            jitter: Rng::derive(ctx.seed, "mtime-jitter", job.content_seed),
        },
    )?;

    let mut producers: Vec<Producer> = (0..job.producers)
        .map(|_| Producer {
            entry: ProducerEntry {
                producer_id: rng.range(1_000, 900_000) as i64,
                epoch: rng.below(3) as i16,
                last_sequence: -1,
                last_offset: -1,
                offset_delta: 0,
                timestamp: -1,
            },
            next_sequence: 0,
        })
        .collect();

    let limit = job
        .stop_after
        .unwrap_or(job.target_bytes)
        .min(job.target_bytes);
    let (t0, t1) = job.time_range_ms;
    // Producer batches: mostly a few KiB, up to ~20 KiB (batch.size 16 KiB
    // plus large records), never a big part of a segment.
    let max_batch = (ctx.segment_bytes / 4) as usize;
    while w.log_bytes < limit {
        let written = w.log_bytes;
        let remaining = (job.target_bytes - written) as usize;
        let u = rng.unit();
        let desired = ((512.0 + u * u * 20_000.0) as usize)
            .min(remaining)
            .min(max_batch);
        let ts = t0 + ((t1 - t0) as f64 * (written as f64 / job.target_bytes as f64)) as i64;
        let producer = if producers.is_empty() {
            None
        } else {
            Some(rng.below(producers.len() as u64) as usize)
        };
        let meta = BatchMeta {
            base_offset: w.next_offset,
            leader_epoch: 0,
            base_timestamp: ts,
            producer_id: producer.map_or(-1, |p| producers[p].entry.producer_id),
            producer_epoch: producer.map_or(-1, |p| producers[p].entry.epoch),
            base_sequence: producer.map_or(-1, |p| producers[p].next_sequence),
        };
        let info = w.append(fsw, meta, desired, 2_000)?;
        if let Some(p) = producer {
            let pr = &mut producers[p];
            pr.next_sequence += info.records as i32;
            pr.entry.last_sequence = pr.next_sequence - 1;
            pr.entry.last_offset = info.last_offset;
            pr.entry.offset_delta = info.records as i32 - 1;
            pr.entry.timestamp = info.max_timestamp;
        }
    }

    if let Some(n) = job.sparse_bytes {
        // An extra, mostly hollow segment: a few KiB of batches at the start,
        // one batch that ends exactly at byte n, nothing in between.
        let base = SPARSE_BASE_OFFSET.max((w.next_offset / 1_000_000 + 1) * 1_000_000);
        w.roll(fsw, base)?;
        w.next_offset = base;
        w.seg
            .log
            .set_len(n)
            .with_context(|| format!("set_len {}", w.seg.log_path.display()))?;
        let mut ts = t1;
        let mut head = 0;
        while head < 4 * KIB {
            let meta = simple_meta(w.next_offset, ts);
            head += w.append(fsw, meta, KIB as usize, 100)?.len as u64;
            ts += 5;
        }
        w.flush()?;
        w.scratch.clear();
        let info = w.enc.encode(
            &mut w.scratch,
            simple_meta(w.next_offset, ts),
            3 * KIB as usize,
            100,
        );
        w.skip_to(n - info.len as u64)?;
        w.write_scratch(info)?;
    }

    let (log_end_offset, log_bytes, mut newest) = w.finish(fsw)?;
    if log_end_offset > job.start_offset {
        // Producer state snapshot taken at shutdown, named by the log end offset.
        let mut entries: Vec<ProducerEntry> = producers
            .iter()
            .filter(|p| p.entry.last_offset >= 0)
            .map(|p| p.entry.clone())
            .collect();
        entries.sort_by_key(|e| e.producer_id);
        let t = at(job.closed_at_secs, rng.below(1_000_000_000) as u32);
        fsw.write_file(
            &dir.join(kafka_files::segment_name(log_end_offset, "snapshot")),
            &kafka_files::producer_snapshot(&entries),
            t,
        )?;
        newest = newest.max(t);
    }
    // A dir's mtime is that of its newest entry.
    fsw.set_dir_time_later(&dir, newest);
    Ok(PartitionResult {
        log_end_offset,
        log_bytes,
    })
}

/// A producer-state snapshot with no producers (what the metadata log
/// leaves at its end offset when Kafka closes it).
pub fn empty_producer_snapshot() -> Vec<u8> {
    kafka_files::producer_snapshot(&[])
}

/// Batch metadata for non-idempotent appends.
fn simple_meta(base_offset: i64, ts: i64) -> BatchMeta {
    BatchMeta {
        base_offset,
        leader_epoch: 0,
        base_timestamp: ts,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    }
}

/// `__cluster_metadata-0` in the first log dir. Returns its `.log` bytes.
/// A clean stop leaves the producer-state snapshot Kafka takes at the
/// metadata log's end offset as it closes the log (no `.kafka_cleanshutdown`
/// is written for this log: it is not the log manager's).
fn write_metadata_log(
    ctx: &Ctx<'_>,
    topics: &[Topic],
    clean: bool,
    fsw: &mut FsWriter,
) -> Result<u64> {
    let dir = ctx.log_dirs[0].join(METADATA_DIR);
    let mut rng = Rng::derive(ctx.seed, "metadata-log", 0);
    fsw.create_dir(&dir)?;
    fsw.set_dir_time_later(&dir, at(STOP_SECS - 4, rng.below(1_000_000_000) as u32));
    fsw.write_file(
        &dir.join("partition.metadata"),
        kafka_files::partition_metadata(&kafka_files::METADATA_TOPIC_ID).as_bytes(),
        at(FORMAT_SECS + 60, 0),
    )?;
    fsw.write_file(
        &dir.join("leader-epoch-checkpoint"),
        kafka_files::leader_epoch_checkpoint(&METADATA_EPOCHS).as_bytes(),
        at(BROKER_START_SECS + 15, rng.below(1_000_000_000) as u32),
    )?;
    fsw.write_file(
        &dir.join("quorum-state"),
        kafka_files::quorum_state(METADATA_LEADER, METADATA_EPOCHS[2].0).as_bytes(),
        at(BROKER_START_SECS + 14, rng.below(1_000_000_000) as u32),
    )?;

    let flavor = Flavor::Metadata {
        topics: topics.iter().map(|t| (t.name.clone(), t.id)).collect(),
    };
    // The controller snapshot at offset 100 holds the same kind of records.
    {
        let mut enc = BatchEncoder::new(
            ctx.pool,
            flavor.clone(),
            Rng::derive(ctx.seed, "metadata-snapshot", 0),
        );
        let mut buf = Vec::new();
        let mut offset = 0;
        let mut ts = (BROKER_START_SECS - 86_400) * 1000;
        while buf.len() < 6 * KIB as usize {
            let mut meta = simple_meta(offset, ts);
            meta.leader_epoch = 1;
            offset = enc.encode(&mut buf, meta, 512, 20).last_offset + 1;
            ts += 50;
        }
        fsw.write_file(
            &dir.join("00000000000000000100-0000000001.checkpoint"),
            &buf,
            at(BROKER_START_SECS - 86_400, rng.below(1_000_000_000) as u32),
        )?;
    }

    let enc = BatchEncoder::new(
        ctx.pool,
        flavor,
        Rng::derive(ctx.seed, "metadata-records", 0),
    );
    let mut w = LogWriter::new(
        fsw,
        dir.clone(),
        ctx.segment_bytes,
        enc,
        0,
        LogTimes {
            created: at(FORMAT_SECS + 60, 0),
            closed_at_secs: STOP_SECS - 4,
            jitter: Rng::derive(ctx.seed, "metadata-jitter", 0),
        },
    )?;
    let t0 = (FORMAT_SECS + 120) * 1000;
    let t1 = (STOP_SECS - 60) * 1000;
    while w.next_offset < METADATA_LOG_END {
        let offset = w.next_offset;
        // Batches never straddle a leader epoch change.
        let (epoch, next_epoch_start) = match METADATA_EPOCHS.iter().position(|&(_, s)| s > offset)
        {
            Some(i) => (METADATA_EPOCHS[i - 1].0, METADATA_EPOCHS[i].1),
            None => (
                METADATA_EPOCHS[METADATA_EPOCHS.len() - 1].0,
                METADATA_LOG_END,
            ),
        };
        let max_records = (next_epoch_start - offset).min(rng.range(1, 12) as i64) as u32;
        let mut meta = simple_meta(offset, t0 + (t1 - t0) * offset / METADATA_LOG_END);
        meta.leader_epoch = epoch;
        w.append(fsw, meta, 4 * KIB as usize, max_records)?;
    }
    let (_, log_bytes, _) = w.finish(fsw)?;
    if clean {
        fsw.write_file(
            &dir.join(kafka_files::segment_name(METADATA_LOG_END, "snapshot")),
            &kafka_files::producer_snapshot(&[]),
            at(STOP_SECS - 4, rng.below(1_000_000_000) as u32),
        )?;
    }
    Ok(log_bytes)
}

// ---------------------------------------------------------------------------
// Log dir root files

fn write_log_dir_files(
    spec: &Spec,
    index: usize,
    dir: &Path,
    directory_id: &str,
    entries: &mut [DirEntry],
    fsw: &mut FsWriter,
) -> Result<()> {
    let mut rng = Rng::derive(spec.seed, "log-dir-files", index as u64);
    let mut jitter = || rng.below(1_000_000_000) as u32;
    fsw.write_file(
        &dir.join("meta.properties"),
        kafka_files::meta_properties(spec.node_id, directory_id, &spec.cluster_id, FORMAT_SECS)
            .as_bytes(),
        at(FORMAT_SECS, jitter()),
    )?;
    {
        // `kafka-storage format` also leaves the bootstrap metadata, in
        // every log dir (observed on Kafka 4.0.2; each dir's own copy, so
        // the bytes differ).
        let mut buf = Vec::new();
        let pool = ValuePool::new(spec.seed, 0);
        let mut enc = BatchEncoder::new(
            &pool,
            Flavor::Metadata { topics: Vec::new() },
            Rng::derive(spec.seed, "bootstrap", index as u64),
        );
        enc.encode(&mut buf, simple_meta(0, FORMAT_SECS * 1000), usize::MAX, 3);
        fsw.write_file(
            &dir.join("bootstrap.checkpoint"),
            &buf,
            at(FORMAT_SECS, jitter()),
        )?;
    }
    if spec.with_lock_file {
        fsw.write_file(&dir.join(".lock"), b"", at(BROKER_START_SECS, jitter()))?;
    }

    entries.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let checkpoint = |f: &dyn Fn(&DirEntry) -> Option<i64>| {
        let list: Vec<CheckpointEntry<'_>> = entries
            .iter()
            .filter_map(|e| {
                f(e).map(|offset| CheckpointEntry {
                    topic: &e.topic,
                    partition: e.partition,
                    offset,
                })
            })
            .collect();
        kafka_files::offset_checkpoint(&list)
    };
    let clean = spec.clean_shutdown;
    // After a crash the recovery points are from the last periodic flush.
    let recovery = checkpoint(&|e| {
        Some(if clean {
            e.log_end_offset
        } else {
            e.log_start_offset + (e.log_end_offset - e.log_start_offset) * 9 / 10
        })
    });
    let log_start = checkpoint(&|e| Some(e.log_start_offset));
    let replication = checkpoint(&|e| Some(e.log_end_offset));
    let cleaner = checkpoint(&|e| {
        (e.compacted && e.log_end_offset > e.log_start_offset)
            .then(|| e.log_start_offset + (e.log_end_offset - e.log_start_offset) * 3 / 4)
    });
    let files: [(&str, String, i64); 4] = [
        ("cleaner-offset-checkpoint", cleaner, STOP_SECS - 1_800),
        ("replication-offset-checkpoint", replication, STOP_SECS - 2),
        ("log-start-offset-checkpoint", log_start, STOP_SECS - 1),
        ("recovery-point-offset-checkpoint", recovery, STOP_SECS - 1),
    ];
    for (name, content, secs) in files {
        fsw.write_file(&dir.join(name), content.as_bytes(), at(secs, jitter()))?;
    }
    if spec.clean_shutdown {
        fsw.write_file(
            &dir.join(".kafka_cleanshutdown"),
            kafka_files::clean_shutdown_marker(BROKER_EPOCH).as_bytes(),
            at(STOP_SECS, jitter()),
        )?;
    }
    fsw.set_dir_time_later(dir, at(STOP_SECS, jitter()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::MetadataExt;

    const CLUSTER: &str = "MkU3OEVBNTcwNTJENDM2Qk";

    fn dirs(root: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| root.join(format!("kafka-logs-{i}")))
            .collect()
    }

    /// All paths below `root` (dirs and files), sorted.
    fn walk(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
        out.sort();
        out
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn name(p: &Path) -> String {
        p.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// Parses an offset checkpoint file into (topic, partition) -> offset.
    fn parse_checkpoint(p: &Path) -> BTreeMap<(String, u32), i64> {
        let text = read(p);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("0"), "{}", p.display());
        let n: usize = lines.next().unwrap().parse().unwrap();
        let mut map = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 3, "{line:?}");
            map.insert(
                (f[0].to_string(), f[1].parse().unwrap()),
                f[2].parse().unwrap(),
            );
        }
        assert_eq!(map.len(), n, "{}", p.display());
        map
    }

    /// `orders-3` -> ("orders", 3); also for `-future` dirs. None for others.
    fn topic_partition(dir_name: &str) -> Option<(String, u32)> {
        if dir_name.ends_with("-delete") || dir_name == METADATA_DIR {
            return None;
        }
        let base = match dir_name.strip_suffix("-future") {
            Some(rest) => rest.rsplit_once('.').unwrap().0,
            None => dir_name,
        };
        let (topic, p) = base.rsplit_once('-')?;
        Some((topic.to_string(), p.parse().ok()?))
    }

    fn is_segment_file(n: &str) -> bool {
        let (stem, ext) = n.split_once('.').unwrap_or((n, ""));
        stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && ["log", "index", "timeindex", "snapshot"].contains(&ext)
    }

    fn be_i32(b: &[u8], at: usize) -> i32 {
        i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn be_i64(b: &[u8], at: usize) -> i64 {
        i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Walks the batches of a (non-sparse) segment, checking framing and
    /// CRCs. Returns (start position, base offset, last offset) per batch.
    fn batches(log: &[u8], base_offset: i64) -> Vec<(usize, i64, i64)> {
        let mut pos = 0;
        let mut next = base_offset;
        let mut out = Vec::new();
        while pos < log.len() {
            let base = be_i64(log, pos);
            let len = be_i32(log, pos + 8) as usize + 12;
            let batch = &log[pos..pos + len];
            assert!(base >= next, "offsets must increase");
            assert_eq!(batch[16], 2, "magic");
            let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
            assert_eq!(crc, crc32c::crc32c(&batch[21..]), "crc at {pos}");
            let last = base + i64::from(be_i32(batch, 23));
            assert_eq!(
                i64::from(be_i32(batch, 57)),
                last - base + 1,
                "record count"
            );
            assert!(
                be_i64(batch, 35) >= be_i64(batch, 27),
                "max timestamp >= base timestamp"
            );
            out.push((pos, base, last));
            next = last + 1;
            pos += len;
        }
        assert_eq!(pos, log.len());
        out
    }

    fn hash_tree(root: &Path) -> String {
        let mut h = Sha256::new();
        for p in walk(root) {
            let md = fs::symlink_metadata(&p).unwrap();
            h.update(p.strip_prefix(root).unwrap().to_string_lossy().as_bytes());
            h.update(md.mode().to_be_bytes());
            if md.is_file() {
                h.update(md.mtime().to_be_bytes());
                h.update(md.mtime_nsec().to_be_bytes());
                h.update(fs::read(&p).unwrap());
            }
        }
        hex::encode(h.finalize())
    }

    #[test]
    fn small_spec_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec::small(CLUSTER, 2, dirs(tmp.path(), 3));
        let g = generate(&spec).unwrap();

        // Counts match what is on disk.
        let all: Vec<PathBuf> = spec.log_dirs.iter().flat_map(|d| walk(d)).collect();
        let files: Vec<&PathBuf> = all.iter().filter(|p| p.is_file()).collect();
        assert_eq!(g.files, files.len());
        assert_eq!(g.dirs, all.len() - files.len() + spec.log_dirs.len());
        assert_eq!(
            g.bytes,
            files
                .iter()
                .map(|p| p.metadata().unwrap().len())
                .sum::<u64>()
        );

        let mut dir_ids = BTreeSet::new();
        let mut topic_ids: BTreeMap<String, String> = BTreeMap::new();
        let mut delete_dirs = 0;
        for (i, dir) in spec.log_dirs.iter().enumerate() {
            // meta.properties
            let props = read(&dir.join("meta.properties"));
            let lines: Vec<&str> = props.lines().collect();
            assert_eq!(lines[0], "#");
            assert!(lines[1].starts_with('#') && lines[1].ends_with(" UTC 2026"));
            let kv: BTreeMap<&str, &str> = lines[2..]
                .iter()
                .map(|l| l.split_once('=').unwrap())
                .collect();
            assert_eq!(kv["cluster.id"], CLUSTER);
            assert_eq!(kv["node.id"], "2");
            assert_eq!(kv["version"], "1");
            assert_eq!(kv["directory.id"].len(), 22);
            assert_eq!(kv["directory.id"], g.directory_ids[i]);
            assert!(dir_ids.insert(kv["directory.id"].to_string()));

            assert_eq!(
                read(&dir.join(".kafka_cleanshutdown")),
                "{\"version\":0,\"brokerEpoch\":18}"
            );
            assert_eq!(fs::metadata(dir.join(".lock")).unwrap().len(), 0);
            assert_eq!(dir.join(METADATA_DIR).is_dir(), i == 0);
            assert!(dir.join("bootstrap.checkpoint").is_file());

            // Checkpoints list exactly the partitions hosted here.
            let mut hosted = BTreeSet::new();
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let n = name(&p);
                if p.is_dir() {
                    if n.ends_with("-delete") {
                        delete_dirs += 1;
                    }
                    if let Some(tp) = topic_partition(&n) {
                        hosted.insert(tp);
                    }
                }
            }
            assert!(!hosted.is_empty());
            let recovery = parse_checkpoint(&dir.join("recovery-point-offset-checkpoint"));
            let replication = parse_checkpoint(&dir.join("replication-offset-checkpoint"));
            let log_start = parse_checkpoint(&dir.join("log-start-offset-checkpoint"));
            let cleaner = parse_checkpoint(&dir.join("cleaner-offset-checkpoint"));
            for cp in [&recovery, &replication, &log_start] {
                assert_eq!(
                    cp.keys().cloned().collect::<BTreeSet<_>>(),
                    hosted,
                    "{}",
                    dir.display()
                );
            }
            assert!(cleaner.keys().all(|(t, _)| t == OFFSETS_TOPIC));

            for tp in &hosted {
                let pdir = dir.join(format!("{}-{}", tp.0, tp.1));
                let topic_id = read(&pdir.join("partition.metadata"));
                let id = topic_id
                    .strip_prefix("version: 0\ntopic_id: ")
                    .unwrap()
                    .trim_end()
                    .to_string();
                assert_eq!(id.len(), 22);
                assert_eq!(
                    topic_ids.entry(tp.0.clone()).or_insert_with(|| id.clone()),
                    &id
                );
                let epochs = read(&pdir.join("leader-epoch-checkpoint"));
                assert_eq!(epochs, format!("0\n1\n0 {}\n", log_start[tp]));
                check_partition(&pdir, log_start[tp], recovery[tp]);
            }
        }
        assert_eq!(delete_dirs, 1);
        assert!(topic_ids.contains_key(OFFSETS_TOPIC));
        assert_eq!(topic_ids.len(), 4, "3 topics + __consumer_offsets");

        // Metadata log dir contents.
        let meta = spec.log_dirs[0].join(METADATA_DIR);
        for f in [
            "00000000000000000000.log",
            "00000000000000000000.index",
            "00000000000000000000.timeindex",
            "00000000000000000100-0000000001.checkpoint",
            "leader-epoch-checkpoint",
            "partition.metadata",
            "quorum-state",
        ] {
            assert!(meta.join(f).is_file(), "{f}");
        }
        assert!(read(&meta.join("quorum-state")).contains("\"leaderEpoch\":3"));
        assert!(read(&meta.join("partition.metadata")).contains("AAAAAAAAAAAAAAAAAAAAAQ"));
        let log = fs::read(meta.join("00000000000000000000.log")).unwrap();
        let b = batches(&log, 0);
        assert_eq!(b.last().unwrap().2 + 1, METADATA_LOG_END);

        // Modes.
        for p in &all {
            let mode = fs::metadata(p).unwrap().mode() & 0o7777;
            assert_eq!(
                mode,
                if p.is_dir() { 0o755 } else { 0o644 },
                "{}",
                p.display()
            );
        }
    }

    /// Checks one partition dir: segment naming, index sizes and entries,
    /// batch validity, offsets continuity and mtime order.
    fn check_partition(pdir: &Path, log_start: i64, recovery: i64) {
        let mut bases = Vec::new();
        let mut snapshots = Vec::new();
        for e in fs::read_dir(pdir).unwrap() {
            let n = name(&e.unwrap().path());
            // What Kafka deletes at its next start (`write_deleted_segment`).
            if n == "leader-epoch-checkpoint"
                || n == "partition.metadata"
                || n.ends_with(".deleted")
            {
                continue;
            }
            assert!(
                is_segment_file(&n),
                "unexpected file {n} in {}",
                pdir.display()
            );
            let (stem, ext) = n.split_once('.').unwrap();
            match ext {
                "log" => bases.push(stem.parse::<i64>().unwrap()),
                "snapshot" => snapshots.push(stem.parse::<i64>().unwrap()),
                _ => {}
            }
        }
        bases.sort();
        assert_eq!(bases[0], log_start);
        let mut next = log_start;
        let mut prev_mtime = None;
        for base in &bases {
            let seg = |ext| pdir.join(kafka_files::segment_name(*base, ext));
            let index = fs::read(seg("index")).unwrap();
            let time_index = fs::read(seg("timeindex")).unwrap();
            assert_eq!(index.len() % 8, 0);
            assert_eq!(time_index.len() % 12, 0);
            let log = fs::read(seg("log")).unwrap();
            let b = batches(&log, *base);
            if let Some(first) = b.first() {
                assert_eq!(first.1, *base, "segment starts at its base offset");
                assert_eq!(*base, next, "offsets continue across segments");
                next = b.last().unwrap().2 + 1;
            }
            // Every index entry points at a batch start holding that offset.
            for e in index.chunks(8) {
                let rel = i64::from(be_i32(e, 0));
                let pos = be_i32(e, 4) as usize;
                let batch = b
                    .iter()
                    .find(|x| x.0 == pos)
                    .expect("index points at a batch");
                assert!(batch.1 <= base + rel && base + rel <= batch.2);
            }
            let mut last_ts = i64::MIN;
            for e in time_index.chunks(12) {
                let ts = be_i64(e, 0);
                assert!(ts > last_ts);
                last_ts = ts;
            }
            // Older segments are older.
            let mtime = fs::metadata(seg("log")).unwrap().modified().unwrap();
            if let Some(prev) = prev_mtime {
                assert!(
                    mtime >= prev,
                    "segment mtimes increase in {}",
                    pdir.display()
                );
            }
            prev_mtime = Some(mtime);
        }
        assert_eq!(recovery, next, "recovery point is the log end offset");
        if next > log_start {
            assert_eq!(snapshots, vec![next]);
        } else {
            assert!(snapshots.is_empty());
        }
    }

    #[test]
    fn total_bytes_close_to_spec() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = Spec::small(CLUSTER, 1, dirs(tmp.path(), 2));
        spec.total_bytes = 20 * MIB;
        spec.topics = 5;
        spec.with_future_dir = true;
        generate(&spec).unwrap();
        let total: u64 = walk(tmp.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| p.metadata().unwrap().len())
            .sum();
        let diff = (total as f64 - spec.total_bytes as f64).abs() / spec.total_bytes as f64;
        assert!(
            diff < 0.10,
            "total .log bytes {total} vs {}",
            spec.total_bytes
        );
        // Uneven: the biggest partition holds much more than the smallest.
        let mut sizes: Vec<u64> = Vec::new();
        for d in &spec.log_dirs {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() && !name(&p).starts_with("__") {
                    sizes.push(walk(&p).iter().map(|f| f.metadata().unwrap().len()).sum());
                }
            }
        }
        sizes.sort();
        assert!(sizes[sizes.len() - 1] > 10 * sizes[0].max(1));
    }

    #[test]
    fn deterministic_for_a_seed() {
        let hashes: Vec<String> = [7, 7, 8]
            .iter()
            .map(|&seed| {
                let tmp = tempfile::tempdir().unwrap();
                let mut spec = Spec::small(CLUSTER, 3, dirs(tmp.path(), 2));
                spec.seed = seed;
                spec.with_future_dir = true;
                spec.big_sparse_file_bytes = Some(MIB);
                generate(&spec).unwrap();
                hash_tree(tmp.path())
            })
            .collect();
        assert_eq!(hashes[0], hashes[1]);
        assert_ne!(hashes[0], hashes[2]);
    }

    #[test]
    fn future_delete_and_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = Spec::small(CLUSTER, 1, dirs(tmp.path(), 2));
        spec.with_future_dir = true;
        let sparse = 3 * MIB + 123;
        spec.big_sparse_file_bytes = Some(sparse);
        generate(&spec).unwrap();

        let find = |suffix: &str| -> Vec<PathBuf> {
            walk(tmp.path())
                .into_iter()
                .filter(|p| p.is_dir() && name(p).ends_with(suffix))
                .collect()
        };
        let deletes = find("-delete");
        assert_eq!(deletes.len(), 1);
        let n = name(&deletes[0]);
        let hex = n
            .strip_suffix("-delete")
            .unwrap()
            .rsplit_once('.')
            .unwrap()
            .1;
        assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));

        // The future copy is a prefix of its source, on the other log dir.
        let futures = find("-future");
        assert_eq!(futures.len(), 1);
        let future = &futures[0];
        let (topic, partition) = topic_partition(&name(future)).unwrap();
        let source = spec
            .log_dirs
            .iter()
            .map(|d| d.join(format!("{topic}-{partition}")))
            .find(|p| p.is_dir())
            .unwrap();
        assert_ne!(source.parent(), future.parent());
        let first_log = |d: &Path| {
            let mut logs: Vec<PathBuf> = walk(d)
                .into_iter()
                .filter(|p| name(p).ends_with(".log"))
                .collect();
            logs.sort();
            fs::read(&logs[0]).unwrap()
        };
        let (src, fut) = (first_log(&source), first_log(future));
        assert!(!fut.is_empty() && fut.len() <= src.len());
        assert_eq!(&src[..fut.len()], &fut[..]);
        assert_eq!(
            read(&source.join("partition.metadata")),
            read(&future.join("partition.metadata"))
        );
        let cp = parse_checkpoint(
            &future
                .parent()
                .unwrap()
                .join("recovery-point-offset-checkpoint"),
        );
        assert!(cp.contains_key(&(topic, partition)));

        // The sparse segment: exact length, mostly holes, batches at both ends.
        let big = spec.log_dirs[0]
            .join("orders-0")
            .join("00000000000099000000.log");
        let big = if big.exists() {
            big
        } else {
            spec.log_dirs[1].join("orders-0/00000000000099000000.log")
        };
        let md = fs::metadata(&big).unwrap();
        assert_eq!(md.len(), sparse);
        assert!(md.blocks() * 512 < sparse / 2, "file is sparse");
        let data = fs::read(&big).unwrap();
        assert_eq!(be_i64(&data, 0), SPARSE_BASE_OFFSET);
        assert_eq!(data[16], 2);
        let index = fs::read(big.with_extension("index")).unwrap();
        let last = index.chunks(8).last().unwrap();
        let tail = be_i32(last, 4) as usize;
        let tail_len = be_i32(&data, tail + 8) as usize + 12;
        assert_eq!(
            tail + tail_len,
            data.len(),
            "last batch ends at the end of the file"
        );
        assert_eq!(
            crc32c::crc32c(&data[tail + 21..]),
            u32::from_be_bytes(data[tail + 17..tail + 21].try_into().unwrap())
        );
    }

    #[test]
    fn unclean_shutdown_without_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = Spec::small(CLUSTER, 1, dirs(tmp.path(), 1));
        spec.clean_shutdown = false;
        spec.with_lock_file = false;
        spec.with_delete_dir = false;
        generate(&spec).unwrap();
        let dir = &spec.log_dirs[0];
        assert!(!dir.join(".kafka_cleanshutdown").exists());
        assert!(!dir.join(".lock").exists());
        assert!(walk(dir).iter().all(|p| !name(p).ends_with("-delete")));
        let recovery = parse_checkpoint(&dir.join("recovery-point-offset-checkpoint"));
        let replication = parse_checkpoint(&dir.join("replication-offset-checkpoint"));
        assert!(recovery.iter().all(|(k, v)| *v <= replication[k]));
        assert!(recovery.iter().any(|(k, v)| *v < replication[k]));
    }

    #[test]
    fn refuses_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("logs");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("something"), b"x").unwrap();
        let err = generate(&Spec::small(CLUSTER, 1, vec![d.clone()])).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");

        let ok = Spec::small(CLUSTER, 1, vec![tmp.path().join("a")]);
        let bad: [fn(&mut Spec); 9] = [
            |s| s.log_dirs.clear(),
            |s| s.log_dirs.push(s.log_dirs[0].clone()),
            |s| s.cluster_id = "has space".into(),
            |s| s.node_id = -1,
            |s| s.topics = 0,
            |s| s.partitions_per_topic = 0,
            |s| s.segment_bytes = 100,
            |s| s.big_sparse_file_bytes = Some(10),
            |s| s.big_sparse_file_bytes = Some(3 << 30),
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut s = ok.clone();
            f(&mut s);
            assert!(s.validate().is_err(), "case {i} should be rejected");
        }
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("512MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("64 kib").unwrap(), 64 * KIB);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("7b").unwrap(), 7);
        for bad in [
            "",
            "MiB",
            "1.2.3G",
            "12XB",
            "-5",
            "99999999999999999999TiB",
            ".",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
