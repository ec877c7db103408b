//! Replica identity on real Apache Kafka: how much of what the three
//! replicas of a partition store is byte-identical, which is what
//! content-addressed snapshot storage (a file, or a piece of one, already
//! stored under the same SHA-256 is not uploaded again) would save across
//! brokers.
//!
//! A KRaft cluster (three controllers, three brokers, two log dirs each)
//! on the test XFS; four topics of `--partitions` partitions, RF 3, min
//! ISR 2, `segment.bytes` = `--segment-bytes` (small, so that many
//! segments roll), each filled with `--topic-bytes` of record values by
//! its own idempotent acks=all producer (keys, JSON-like values of 100 B
//! to 32 KiB, linger 5 ms, batches up to 64 KiB, up to 5 requests in
//! flight per broker, 16 MiB of buffer):
//!
//! - `plain`: no compression;
//! - `lz4`: producer compression lz4 (the broker keeps the producer's
//!   batches, `compression.type=producer`);
//! - `compacted`: no compression, `cleanup.policy=compact` over 2000 keys,
//!   each broker's log cleaner compacting when it gets to it;
//! - `rolljitter`: no compression, segments rolled by time
//!   (`segment.ms` 2 s, `segment.bytes` 8 MiB) with `segment.jitter.ms`
//!   1.5 s, which each broker draws on its own for each segment.
//!
//! All four are written at once, interleaved. Unless `--no-restart`, a
//! rolling restart of one follower happens in the middle, as in a
//! snapshot cycle: after 40 % of the data broker `--restart-broker` is
//! stopped (controlled shutdown), 20 % more is written without it, it is
//! started and catches up by fetching while 20 % more is written, then the
//! preferred leaders are elected again and the last 40 % is written.
//! Then every broker is stopped cleanly, and every partition directory of
//! every broker's log dirs (also `__cluster_metadata-0`, the brokers'
//! copy of the KRaft log) is compared across its replicas:
//!
//! - whole files: the SHA-256 of each file; per file type (`.log`,
//!   `.index`, `.timeindex`, `.txnindex`, `.snapshot`, the checkpoint
//!   files), the files and bytes whose content is on 3, 2 or only 1
//!   replica of the partition; whether the segment roll points (base
//!   offsets) are the same on every replica; for each `.log` not
//!   identical everywhere, why: a replica has no segment starting at the
//!   same offset (roll point differs), or one starting there but ending
//!   elsewhere, or the same offsets with other bytes; index files that
//!   differ although their `.log` is identical;
//! - record batches: each `.log` parsed into v2 record batches
//!   (baseOffset int64, batchLength int32, then partitionLeaderEpoch
//!   int32, magic int8, crc uint32, ...: 12 + batchLength bytes), each
//!   batch hashed as it is and with partitionLeaderEpoch zeroed; the
//!   batch bytes present on 3, 2, 1 replicas by either hash, and for every
//!   offset whose batch differs between replicas, which header fields
//!   differ;
//! - chunks: batches grouped into content-defined chunks that never
//!   straddle a segment file (a new chunk starts at the file's first batch
//!   and before every batch whose CRC-32C is a multiple of
//!   `--chunk-batches`, so about that many batches a chunk, cut at the same
//!   batches on every replica), each chunk hashed: what a store of
//!   batch-aligned pieces of a practical size would hold.
//!
//! `*.deleted` files (segments the cleaner replaced, deleted a minute
//! later, or by Kafka at its next start) are listed but left out of the
//! figures.
//!
//! Per topic it prints and writes (`--out`) the bytes of the three
//! replicas together and what each store would keep of them: whole-file
//! dedup (every distinct file content once), batch dedup (every distinct
//! batch once, plus the non-`.log` files with whole-file dedup), chunk
//! dedup (likewise with chunks); each also as a ratio of the three
//! replicas' bytes (1/3 would be: one replica's worth).
//!
//!     cargo bench -p kafka-snapshot-coordinator --bench replica_identity -- \
//!         --topic-bytes 64MiB --segment-bytes 1MiB --out target/bench/replica_identity.json
//!
//! Needs `KSNAP_TEST_XFS` (tests/lib/filesystems.sh) and
//! `KSNAP_TEST_KAFKA_HOME` (tests/lib/kafka.sh), as the real-Kafka tests
//! do; run as root, e.g.
//!
//!     source tests/lib/filesystems.sh && test_fs_setup && export KSNAP_TEST_XFS KSNAP_TEST_EXT4
//!     source tests/lib/kafka.sh && KSNAP_KAFKA_VERSION=4.0.2 kafka_setup

#[path = "../tests/common/mod.rs"]
mod common;

use kafka_snapshot_testkit::kafka::{KafkaCluster, KafkaSpec, VERSION_ENV};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A topic written by the run.
struct TopicPlan {
    name: &'static str,
    /// The producer's `compression.type`.
    compression: &'static str,
    /// Topic configs beside (or instead of) min ISR 2 and `--segment-bytes`.
    configs: &'static [(&'static str, &'static str)],
    /// Keys are `user-0` .. `user-<keys - 1>`.
    keys: u64,
}

const TOPICS: [TopicPlan; 4] = [
    TopicPlan {
        name: "plain",
        compression: "none",
        configs: &[],
        keys: 50_000,
    },
    TopicPlan {
        name: "lz4",
        compression: "lz4",
        configs: &[],
        keys: 50_000,
    },
    // Each replica's log cleaner compacts on its own schedule.
    TopicPlan {
        name: "compacted",
        compression: "none",
        configs: &[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("min.compaction.lag.ms", "0"),
        ],
        keys: 2_000,
    },
    // Time-based rolling with jitter (`segment.jitter.ms`,
    // `log.roll.jitter.ms`): each replica draws its own jitter for each
    // segment, so roll points can differ between replicas.
    TopicPlan {
        name: "rolljitter",
        compression: "none",
        configs: &[
            ("segment.bytes", "8388608"),
            ("segment.ms", "2000"),
            ("segment.jitter.ms", "1500"),
        ],
        keys: 50_000,
    },
];

/// A v2 record batch up to its records: baseOffset (8), batchLength (4),
/// partitionLeaderEpoch (4), magic (1), crc (4), attributes (2),
/// lastOffsetDelta (4), baseTimestamp (8), maxTimestamp (8), producerId
/// (8), producerEpoch (2), baseSequence (4), recordsCount (4).
const BATCH_HEADER_LEN: usize = 61;
/// baseOffset and batchLength: `batchLength` counts the bytes after them.
const LOG_OVERHEAD: usize = 12;
/// Where each header field starts in a batch, and the records after them.
const FIELDS: [(usize, &str); 14] = [
    (0, "baseOffset"),
    (8, "batchLength"),
    (12, "partitionLeaderEpoch"),
    (16, "magic"),
    (17, "crc"),
    (21, "attributes"),
    (23, "lastOffsetDelta"),
    (27, "baseTimestamp"),
    (35, "maxTimestamp"),
    (43, "producerId"),
    (51, "producerEpoch"),
    (53, "baseSequence"),
    (57, "recordsCount"),
    (61, "records"),
];

type Hash = [u8; 32];

struct Args {
    topic_bytes: u64,
    segment_bytes: u64,
    partitions: i32,
    restart: Option<i32>,
    chunk_batches: u32,
    out: PathBuf,
}

fn parse_size(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("bad size {s:?}"));
    let m = match unit {
        "" | "B" => 1u64,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => panic!("bad size unit in {s:?}: use KiB, MiB or GiB"),
    };
    (n * m as f64) as u64
}

fn args() -> Args {
    let mut a = Args {
        topic_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        partitions: 6,
        restart: Some(3),
        chunk_batches: 16,
        out: PathBuf::from("target/bench/replica_identity.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--topic-bytes" => a.topic_bytes = parse_size(&value()),
            "--segment-bytes" => a.segment_bytes = parse_size(&value()),
            "--partitions" => a.partitions = value().parse().expect("--partitions N"),
            "--restart-broker" => a.restart = Some(value().parse().expect("--restart-broker ID")),
            "--no-restart" => a.restart = None,
            "--chunk-batches" => {
                a.chunk_batches = value().parse().expect("--chunk-batches N");
                assert!(a.chunk_batches > 0, "--chunk-batches must be at least 1");
            }
            "--out" => a.out = value().into(),
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => panic!(
                "unknown argument {other} (--topic-bytes SIZE --segment-bytes SIZE --partitions N \
                 --restart-broker ID | --no-restart --chunk-batches N --out FILE)"
            ),
        }
    }
    a
}

fn log(msg: &str) {
    eprintln!("[replica-identity] {msg}");
}

fn main() {
    let a = args();
    let scratch = common::fleet::scratch();
    let root = scratch.path();
    let spec = KafkaSpec {
        data_root: Some(root.join("data")),
        ..KafkaSpec::default()
    };
    let cluster = KafkaCluster::create(&root.join("kafka"), &spec).expect("Kafka cluster");
    cluster
        .start_all(Duration::from_secs(180))
        .expect("Kafka cluster starts");
    let brokers = cluster.broker_ids();
    if let Some(b) = a.restart {
        assert!(brokers.contains(&b), "--restart-broker {b}: no such broker");
    }
    let segment_bytes = a.segment_bytes.to_string();
    for plan in &TOPICS {
        // Preferred leaders spread over the brokers.
        let replicas: Vec<Vec<i32>> = (0..a.partitions as usize)
            .map(|p| (0..3).map(|i| brokers[(p + i) % brokers.len()]).collect())
            .collect();
        let mut configs: Vec<(&str, &str)> = [
            ("min.insync.replicas", "2"),
            ("segment.bytes", segment_bytes.as_str()),
            ("compression.type", "producer"),
        ]
        .into_iter()
        .filter(|(k, _)| !plan.configs.iter().any(|(o, _)| o == k))
        .collect();
        configs.extend_from_slice(plan.configs);
        cluster
            .create_topic_on(plan.name, &replicas, &configs)
            .unwrap_or_else(|e| panic!("creating topic {}: {e:#}", plan.name));
    }

    let t = Instant::now();
    let produced = produce_with_restart(&cluster, &a);
    log(&format!("produced in {:.0?}", t.elapsed()));
    cluster
        .wait_in_sync(Duration::from_secs(300))
        .expect("every replica in sync before the stop");
    // Followers learn the final high watermark on their next fetch.
    std::thread::sleep(Duration::from_secs(3));
    for &id in &brokers {
        cluster
            .stop(id)
            .unwrap_or_else(|e| panic!("clean stop of broker {id}: {e:#}"));
    }
    log("every broker stopped cleanly");
    for id in cluster.controller_ids() {
        if let Err(e) = cluster.stop(id) {
            log(&format!(
                "controller {id}: {e:#} (its data is not looked at)"
            ));
        }
    }

    let t = Instant::now();
    let (partitions, skipped) = scan(&cluster, &brokers, a.chunk_batches);
    let mut topics: BTreeMap<String, TopicStats> = BTreeMap::new();
    for ((topic, partition), replicas) in &partitions {
        topics
            .entry(topic.clone())
            .or_default()
            .add_partition(*partition, replicas);
    }
    log(&format!(
        "scanned {} partition dirs in {:.0?}",
        partitions.values().map(Vec::len).sum::<usize>(),
        t.elapsed()
    ));
    let all = topics.values().fold(TopicStats::default(), |mut acc, t| {
        acc.merge(t);
        acc
    });
    print_tables(&topics, &all);

    let mut per_topic = Map::new();
    for (name, t) in &topics {
        per_topic.insert(name.clone(), t.to_json());
    }
    let out = json!({
        "replica_identity": {
            "kafka_version": std::env::var(VERSION_ENV).ok(),
            "topic_bytes": a.topic_bytes,
            "segment_bytes": a.segment_bytes,
            "partitions_per_topic": a.partitions,
            "restarted_follower": a.restart,
            "chunk_batches": a.chunk_batches,
            "produced": produced,
            "skipped_dirs": skipped,
            "topics": per_topic,
            "all": all.to_json(),
        }
    });
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).expect("creating the --out dir");
    }
    std::fs::write(
        &a.out,
        serde_json::to_string_pretty(&out).expect("JSON of the summary"),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", a.out.display()));
    log(&format!("wrote {}", a.out.display()));
}

// ---------------------------------------------------------------------------
// Producing

/// The delivery reports of every producer: how many, and the first error.
#[derive(Default)]
struct DeliveryCounts {
    ok: AtomicU64,
    ok_bytes: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

#[derive(Clone, Default)]
struct Deliveries(Arc<DeliveryCounts>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.0
                    .ok_bytes
                    .fetch_add(m.payload_len() as u64, Ordering::Relaxed);
                self.0.ok.fetch_add(1, Ordering::Relaxed)
            }
            Err((e, _)) => {
                let mut first = self.0.first_error.lock().expect("delivery error lock");
                first.get_or_insert_with(|| e.to_string());
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// splitmix64: deterministic keys, sizes and values from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
}

const WORDS: [&str; 32] = [
    "checkout",
    "payment",
    "refund",
    "login",
    "logout",
    "search",
    "view",
    "cart",
    "shipping",
    "invoice",
    "EUR",
    "USD",
    "mobile",
    "desktop",
    "tablet",
    "accepted",
    "declined",
    "pending",
    "warehouse-7",
    "berlin",
    "lisbon",
    "oslo",
    "premium",
    "standard",
    "trial",
    "campaign",
    "newsletter",
    "coupon",
    "sku",
    "category",
    "electronics",
    "garden",
];

/// One event as an application would write it: a JSON object whose size
/// mostly stays small, with a long tail (about half under 600 B, one in
/// 33 over 8 KiB), and content that compresses like such data does:
/// words from a small vocabulary and random numbers and ids.
fn event(rng: &mut Rng, seq: u64) -> Vec<u8> {
    let size = match rng.below(100) {
        0..=49 => rng.range(100, 600),
        50..=84 => rng.range(600, 2_500),
        85..=96 => rng.range(2_500, 8_000),
        _ => rng.range(8_000, 32_000),
    } as usize;
    let mut s = format!(
        "{{\"seq\":{seq},\"user\":\"user-{}\",\"event\":\"{}\",\"amount\":{}.{:02},\"attrs\":[",
        rng.below(50_000),
        WORDS[rng.below(WORDS.len() as u64) as usize],
        rng.below(1_000),
        rng.below(100),
    );
    while s.len() + 2 < size {
        if rng.below(10) < 7 {
            s.push_str(&format!(
                "\"{}\",",
                WORDS[rng.below(WORDS.len() as u64) as usize]
            ));
        } else {
            s.push_str(&format!("\"{:016x}\",", rng.next()));
        }
    }
    s.push_str("]}");
    s.into_bytes()
}

fn producer(bootstrap: &str, compression: &str, ctx: Deliveries) -> BaseProducer<Deliveries> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("batch.size", "65536")
        .set("compression.type", compression)
        // Bounded as the Java client's buffer.memory (32 MiB) bounds it:
        // the producer waits instead of queueing the whole run, so each
        // phase below ends with its data delivered but for this much.
        .set("queue.buffering.max.kbytes", "16384")
        // Longer than the restart: a record is delivered or the run fails.
        .set("message.timeout.ms", "300000")
        .create_with_context(ctx)
        .expect("producer")
}

/// Writes every topic, interleaved, up to a number of value bytes each.
struct Writer {
    producers: Vec<(&'static TopicPlan, BaseProducer<Deliveries>)>,
    rng: Rng,
    seq: u64,
    records: u64,
    /// Value bytes written to each topic so far.
    value_bytes: Vec<u64>,
}

impl Writer {
    fn write_until(&mut self, until: u64) {
        let Writer {
            producers,
            rng,
            seq,
            records,
            value_bytes,
        } = self;
        while value_bytes.iter().any(|&b| b < until) {
            for ((plan, p), written) in producers.iter().zip(value_bytes.iter_mut()) {
                if *written >= until {
                    continue;
                }
                let key = format!("user-{}", rng.below(plan.keys));
                let value = event(rng, *seq);
                let mut rec = BaseRecord::to(plan.name).key(&key).payload(&value);
                loop {
                    match p.send(rec) {
                        Ok(()) => break,
                        // Queue full: let it drain.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            rec = r;
                            p.poll(Duration::from_millis(20));
                        }
                        Err((e, _)) => panic!("producing to {}: {e}", plan.name),
                    }
                }
                p.poll(Duration::ZERO);
                *written += value.len() as u64;
                *records += 1;
            }
            *seq += 1;
        }
    }
}

fn produce_with_restart(cluster: &KafkaCluster, a: &Args) -> Value {
    let deliveries = Deliveries::default();
    let bootstrap = cluster.bootstrap();
    let producers = TOPICS
        .iter()
        .map(|plan| {
            (
                plan,
                producer(&bootstrap, plan.compression, deliveries.clone()),
            )
        })
        .collect();
    let mut w = Writer {
        producers,
        rng: Rng(0x5eed),
        seq: 0,
        records: 0,
        value_bytes: vec![0; TOPICS.len()],
    };
    let part = |n: u64| a.topic_bytes * n / 10;
    let delivered = || {
        format!(
            "{} of {} delivered",
            mib(deliveries.0.ok_bytes.load(Ordering::Relaxed)),
            mib(a.topic_bytes * TOPICS.len() as u64)
        )
    };
    match a.restart {
        None => w.write_until(a.topic_bytes),
        Some(b) => {
            w.write_until(part(4));
            log(&format!(
                "stopping broker {b} (controlled shutdown), {}",
                delivered()
            ));
            cluster
                .stop(b)
                .unwrap_or_else(|e| panic!("stopping broker {b}: {e:#}"));
            w.write_until(part(6));
            log(&format!(
                "starting broker {b}: it catches up by fetching, {}",
                delivered()
            ));
            cluster
                .start(b)
                .unwrap_or_else(|e| panic!("starting broker {b}: {e:#}"));
            w.write_until(part(8));
            cluster
                .wait_in_sync(Duration::from_secs(300))
                .expect("the restarted broker back in every ISR");
            cluster
                .elect_preferred_leaders(Duration::from_secs(120))
                .expect("preferred leaders elected");
            log(&format!(
                "broker {b} back in every ISR and leading again, {}",
                delivered()
            ));
            w.write_until(a.topic_bytes);
        }
    }
    for (plan, p) in &w.producers {
        p.flush(Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("flushing the producer of {}: {e}", plan.name));
    }
    let failed = deliveries.0.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "{failed} records not delivered; first error: {:?}",
        deliveries
            .0
            .first_error
            .lock()
            .expect("delivery error lock")
    );
    json!({
        "records": w.records,
        "delivered": deliveries.0.ok.load(Ordering::Relaxed),
        "value_bytes": TOPICS.iter().map(|t| t.name).zip(w.value_bytes).collect::<BTreeMap<_, _>>(),
    })
}

// ---------------------------------------------------------------------------
// Reading the replicas

/// A file of a partition dir.
struct FileInfo {
    name: String,
    path: PathBuf,
    /// [`file_type`].
    ty: &'static str,
    len: u64,
    sha: Hash,
}

/// One record batch of a `.log`.
struct Batch {
    base_offset: i64,
    last_offset: i64,
    /// 12 + batchLength.
    len: u64,
    sha: Hash,
    /// With partitionLeaderEpoch zeroed.
    sha_no_epoch: Hash,
    /// Where it starts in its file.
    pos: u64,
}

/// One `.log` of a replica, parsed.
struct Segment {
    /// From the file name.
    base: i64,
    /// Index of its `.log` in [`Replica::files`].
    file: usize,
    batches: Vec<Batch>,
    /// The content-defined chunks: hash and length.
    chunks: Vec<(Hash, u64)>,
    /// Bytes after the last whole batch (none after a clean shutdown).
    unparsed: u64,
}

impl Segment {
    fn last_offset(&self) -> Option<i64> {
        self.batches.last().map(|b| b.last_offset)
    }
}

/// One broker's copy of a partition.
struct Replica {
    broker: i32,
    files: Vec<FileInfo>,
    segments: Vec<Segment>,
}

impl Replica {
    fn file(&self, name: &str) -> Option<&FileInfo> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Partition dirs by (topic, partition), each with its replicas.
type Partitions = BTreeMap<(String, i32), Vec<Replica>>;

/// The pseudo-topic of the log dirs' own files: the checkpoints of all
/// their partitions together, `meta.properties` (node and directory ids),
/// `.kafka_cleanshutdown`, `.lock`; one "replica" of it per broker.
const LOG_DIR_FILES: &str = "(log dir files)";

/// Every partition dir of every broker's log dirs, the log dirs' own
/// files as partition 0 of [`LOG_DIR_FILES`], and the dirs that are not a
/// partition's (`-delete`, `-future`, `-stray`).
fn scan(cluster: &KafkaCluster, brokers: &[i32], chunk_batches: u32) -> (Partitions, Vec<String>) {
    let mut parts = Partitions::new();
    let mut skipped = Vec::new();
    for &b in brokers {
        let mut own = Replica {
            broker: b,
            files: Vec::new(),
            segments: Vec::new(),
        };
        for dir in cluster.log_dirs(b) {
            let entries =
                std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            for e in entries {
                let e = e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
                let path = e.path();
                if !path.is_dir() {
                    // Named with their dir: every log dir has its own.
                    let mut f = whole_file(&path);
                    if let Some(d) = dir.file_name() {
                        f.name = format!("{}/{}", d.to_string_lossy(), f.name);
                    }
                    own.files.push(f);
                    continue;
                }
                match partition_of(&e.file_name().to_string_lossy()) {
                    Some(tp) => {
                        parts
                            .entry(tp)
                            .or_default()
                            .push(read_replica(b, &path, chunk_batches))
                    }
                    None => skipped.push(path.display().to_string()),
                }
            }
        }
        parts
            .entry((LOG_DIR_FILES.to_string(), 0))
            .or_default()
            .push(own);
    }
    (parts, skipped)
}

/// A file that is not a `.log`: hashed whole.
fn whole_file(path: &Path) -> FileInfo {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    FileInfo {
        ty: file_type(&name),
        name,
        path: path.to_path_buf(),
        len: bytes.len() as u64,
        sha: Sha256::digest(&bytes).into(),
    }
}

/// `orders-3` -> (orders, 3).
fn partition_of(dir_name: &str) -> Option<(String, i32)> {
    let (topic, p) = dir_name.rsplit_once('-')?;
    Some((topic.to_string(), p.parse().ok()?))
}

fn file_type(name: &str) -> &'static str {
    const EXTS: [&str; 8] = [
        ".log",
        ".index",
        ".timeindex",
        ".txnindex",
        ".snapshot",
        ".checkpoint",
        DELETED,
        ".swap",
    ];
    if let Some(ext) = EXTS.into_iter().find(|e| name.ends_with(*e)) {
        return ext;
    }
    const NAMES: [&str; 9] = [
        "leader-epoch-checkpoint",
        "partition.metadata",
        "quorum-state",
        "meta.properties",
        "recovery-point-offset-checkpoint",
        "replication-offset-checkpoint",
        "log-start-offset-checkpoint",
        "cleaner-offset-checkpoint",
        ".kafka_cleanshutdown",
    ];
    NAMES.into_iter().find(|n| *n == name).unwrap_or("other")
}

/// Segment files the log cleaner (or retention) replaced, left for
/// deletion `file.delete.delay.ms` later; Kafka deletes any left at its
/// next start. Listed, but not in the bytes or the dedup figures.
const DELETED: &str = ".deleted";

fn is_index(ty: &str) -> bool {
    matches!(ty, ".index" | ".timeindex" | ".txnindex")
}

fn read_replica(broker: i32, dir: &Path, chunk_batches: u32) -> Replica {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())))
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut r = Replica {
        broker,
        files: Vec::new(),
        segments: Vec::new(),
    };
    for name in names {
        let path = dir.join(&name);
        if file_type(&name) != ".log" {
            r.files.push(whole_file(&path));
            continue;
        }
        let s = scan_log(&path, chunk_batches)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let base = name
            .trim_end_matches(".log")
            .parse()
            .unwrap_or_else(|_| panic!("{}: not <base offset>.log", path.display()));
        r.segments.push(Segment {
            base,
            file: r.files.len(),
            batches: s.batches,
            chunks: s.chunks,
            unparsed: s.unparsed,
        });
        r.files.push(FileInfo {
            name,
            path,
            ty: ".log",
            len: s.len,
            sha: s.sha,
        });
    }
    r
}

struct LogScan {
    len: u64,
    sha: Hash,
    batches: Vec<Batch>,
    chunks: Vec<(Hash, u64)>,
    unparsed: u64,
}

/// One pass over a `.log`: its SHA-256, its batches with theirs, and the
/// content-defined chunks (see the module doc).
fn scan_log(path: &Path, chunk_batches: u32) -> std::io::Result<LogScan> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut whole = Sha256::new();
    let mut batches = Vec::new();
    let mut chunks = Vec::new();
    let mut chunk: Option<(Sha256, u64)> = None;
    let mut pos = 0u64;
    let mut body = Vec::new();
    while len - pos >= BATCH_HEADER_LEN as u64 {
        let mut head = [0u8; LOG_OVERHEAD];
        r.read_exact(&mut head)?;
        whole.update(head);
        let base_offset = i64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
        let batch_len = i32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let total = LOG_OVERHEAD as u64 + batch_len.max(0) as u64;
        if batch_len < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 || pos + total > len {
            // Not a batch: the rest of the file is counted as unparsed.
            break;
        }
        body.resize(batch_len as usize, 0);
        r.read_exact(&mut body)?;
        whole.update(&body);
        if body[4] != 2 {
            // magic: an older message format (not written by Kafka 4).
            break;
        }
        let sha: Hash = Sha256::new()
            .chain_update(head)
            .chain_update(&body)
            .finalize()
            .into();
        let sha_no_epoch: Hash = Sha256::new()
            .chain_update(head)
            .chain_update([0u8; 4])
            .chain_update(&body[4..])
            .finalize()
            .into();
        let crc = u32::from_be_bytes(body[5..9].try_into().expect("4 bytes"));
        let last_delta = i32::from_be_bytes(body[11..15].try_into().expect("4 bytes"));
        if chunk.is_none() || crc % chunk_batches == 0 {
            if let Some((h, n)) = chunk.take() {
                chunks.push((h.finalize().into(), n));
            }
            chunk = Some((Sha256::new(), 0));
        }
        let (h, n) = chunk.as_mut().expect("a chunk is open");
        h.update(head);
        h.update(&body);
        *n += total;
        batches.push(Batch {
            base_offset,
            last_offset: base_offset + i64::from(last_delta),
            len: total,
            sha,
            sha_no_epoch,
            pos,
        });
        pos += total;
    }
    if let Some((h, n)) = chunk.take() {
        chunks.push((h.finalize().into(), n));
    }
    let parsed: u64 = batches.iter().map(|b| b.len).sum();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    whole.update(&rest);
    Ok(LogScan {
        len,
        sha: whole.finalize().into(),
        batches,
        chunks,
        unparsed: len - parsed,
    })
}

fn read_batch(path: &Path, b: &Batch) -> Vec<u8> {
    let mut buf = vec![0; b.len as usize];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, b.pos))
        .unwrap_or_else(|e| panic!("reading {} at {}: {e}", path.display(), b.pos));
    buf
}

/// The header fields (and `records`, the rest) in which two batches differ.
fn differing_fields(a: &[u8], b: &[u8]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (i, &(start, name)) in FIELDS.iter().enumerate() {
        let end = FIELDS
            .get(i + 1)
            .map_or(a.len().max(b.len()), |&(next, _)| next);
        let part = |x: &[u8]| {
            x.get(start.min(x.len())..end.min(x.len()))
                .map(<[u8]>::to_vec)
        };
        if part(a) != part(b) {
            out.push(name);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Comparing them

/// Files (or batches) and their bytes.
#[derive(Default, Clone, Copy)]
struct Count {
    n: u64,
    bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.n += 1;
        self.bytes += bytes;
    }

    fn merge(&mut self, o: &Count) {
        self.n += o.n;
        self.bytes += o.bytes;
    }

    fn to_json(self) -> Value {
        json!({ "count": self.n, "bytes": self.bytes })
    }
}

/// Why a `.log` is not byte-identical on every replica.
const START_DIFFERS: &str = "start_differs";
const END_DIFFERS: &str = "end_differs";
const SAME_OFFSETS_OTHER_BYTES: &str = "same_offsets_other_bytes";

/// Everything counted over the partitions of one topic (or all).
#[derive(Default)]
struct TopicStats {
    partitions: u64,
    replicas: u64,
    /// (file type, replicas of the partition holding that content).
    files: BTreeMap<(&'static str, usize), Count>,
    /// Distinct contents and their lengths: every file; the files other
    /// than `.log`; batches; chunks.
    whole_files: HashMap<Hash, u64>,
    non_log_files: HashMap<Hash, u64>,
    distinct_batches: HashMap<Hash, u64>,
    distinct_chunks: HashMap<Hash, u64>,
    /// `.log` bytes that are not whole batches (stored as they are).
    unparsed: u64,
    partitions_same_roll_points: u64,
    segment_files: u64,
    /// Segment files starting at an offset where every replica of the
    /// partition has a segment starting.
    segment_files_start_everywhere: u64,
    /// `.log` files not identical on every replica, by why.
    log_differs: BTreeMap<&'static str, Count>,
    /// Index files that differ from another replica's although that
    /// replica's `.log` of the segment is identical.
    index_differs_with_identical_log: Count,
    batches: Count,
    /// Replicas holding a batch's exact bytes -> its bytes; likewise with
    /// partitionLeaderEpoch zeroed.
    batch_holders: BTreeMap<usize, u64>,
    batch_holders_no_epoch: BTreeMap<usize, u64>,
    /// Offsets where 2+ replicas have a batch starting; of them, those
    /// whose batches differ, and differ also with the epoch zeroed.
    offsets_compared: u64,
    offsets_differing: u64,
    offsets_differing_beyond_epoch: u64,
    /// For each pair of differing batches: the fields that differ.
    differing_fields: BTreeMap<String, u64>,
    /// A few files per type that are not identical on every replica.
    examples: BTreeMap<&'static str, Vec<String>>,
}

/// Examples kept per file type.
const EXAMPLES: usize = 4;

fn holders_of<'a>(items: impl Iterator<Item = (i32, &'a Hash)>) -> HashMap<Hash, BTreeSet<i32>> {
    let mut m: HashMap<Hash, BTreeSet<i32>> = HashMap::new();
    for (broker, h) in items {
        m.entry(*h).or_default().insert(broker);
    }
    m
}

impl TopicStats {
    fn add_partition(&mut self, partition: i32, replicas: &[Replica]) {
        self.partitions += 1;
        self.replicas += replicas.len() as u64;
        let n = replicas.len();

        // Whole files.
        let holders = holders_of(
            replicas
                .iter()
                .flat_map(|r| r.files.iter().map(move |f| (r.broker, &f.sha))),
        );
        for r in replicas {
            for f in &r.files {
                let on = &holders[&f.sha];
                self.files.entry((f.ty, on.len())).or_default().add(f.len);
                let examples = self.examples.entry(f.ty).or_default();
                if on.len() < n && examples.len() < EXAMPLES {
                    examples.push(format!(
                        "partition {partition}, broker {}: {} ({} B) identical on brokers {on:?}",
                        r.broker, f.name, f.len
                    ));
                }
                if f.ty == DELETED {
                    continue;
                }
                self.whole_files.insert(f.sha, f.len);
                if f.ty != ".log" {
                    self.non_log_files.insert(f.sha, f.len);
                }
            }
        }

        // Roll points, and why each `.log` differs where it does.
        let bases: Vec<BTreeSet<i64>> = replicas
            .iter()
            .map(|r| r.segments.iter().map(|s| s.base).collect())
            .collect();
        if bases.windows(2).all(|w| w[0] == w[1]) {
            self.partitions_same_roll_points += 1;
        }
        for r in replicas {
            for s in &r.segments {
                self.segment_files += 1;
                if bases.iter().all(|b| b.contains(&s.base)) {
                    self.segment_files_start_everywhere += 1;
                }
                let log = &r.files[s.file];
                let others: Vec<&Replica> =
                    replicas.iter().filter(|o| o.broker != r.broker).collect();
                let same_start: Vec<Option<&Segment>> = others
                    .iter()
                    .map(|o| o.segments.iter().find(|t| t.base == s.base))
                    .collect();
                if holders[&log.sha].len() < n {
                    let why = if same_start.iter().any(Option::is_none) {
                        START_DIFFERS
                    } else if same_start
                        .iter()
                        .flatten()
                        .any(|t| t.last_offset() != s.last_offset())
                    {
                        END_DIFFERS
                    } else {
                        SAME_OFFSETS_OTHER_BYTES
                    };
                    self.log_differs.entry(why).or_default().add(log.len);
                }
                self.compare_indexes(r, s, &others);
            }
        }

        // Batches and chunks.
        let all_batches = || {
            replicas.iter().flat_map(|r| {
                r.segments
                    .iter()
                    .flat_map(move |s| s.batches.iter().map(move |b| (r, s, b)))
            })
        };
        let exact = holders_of(all_batches().map(|(r, _, b)| (r.broker, &b.sha)));
        let no_epoch = holders_of(all_batches().map(|(r, _, b)| (r.broker, &b.sha_no_epoch)));
        let mut by_offset: BTreeMap<i64, Vec<(&Replica, &Segment, &Batch)>> = BTreeMap::new();
        for (r, s, b) in all_batches() {
            self.batches.add(b.len);
            *self.batch_holders.entry(exact[&b.sha].len()).or_default() += b.len;
            *self
                .batch_holders_no_epoch
                .entry(no_epoch[&b.sha_no_epoch].len())
                .or_default() += b.len;
            self.distinct_batches.insert(b.sha, b.len);
            by_offset.entry(b.base_offset).or_default().push((r, s, b));
        }
        for r in replicas {
            for s in &r.segments {
                self.unparsed += s.unparsed;
                self.distinct_chunks.extend(s.chunks.iter().copied());
            }
        }
        for v in by_offset.values().filter(|v| v.len() > 1) {
            self.offsets_compared += 1;
            let (r0, s0, b0) = v[0];
            if v.iter().all(|(_, _, b)| b.sha == b0.sha) {
                continue;
            }
            self.offsets_differing += 1;
            if v.iter().any(|(_, _, b)| b.sha_no_epoch != b0.sha_no_epoch) {
                self.offsets_differing_beyond_epoch += 1;
            }
            let bytes0 = read_batch(&r0.files[s0.file].path, b0);
            for &(r, s, b) in &v[1..] {
                if b.sha != b0.sha {
                    let bytes = read_batch(&r.files[s.file].path, b);
                    *self
                        .differing_fields
                        .entry(differing_fields(&bytes0, &bytes).join("+"))
                        .or_default() += 1;
                }
            }
        }
    }

    /// Counts `s`'s index files that differ from those of another replica
    /// whose `.log` of the same segment is byte-identical.
    fn compare_indexes(&mut self, r: &Replica, s: &Segment, others: &[&Replica]) {
        let log = &r.files[s.file];
        let stem = log.name.trim_end_matches(".log");
        for f in r.files.iter().filter(|f| is_index(f.ty)) {
            if f.name.trim_end_matches(f.ty) != stem {
                continue;
            }
            let differs = others.iter().any(|o| {
                o.file(&log.name).is_some_and(|l| l.sha == log.sha)
                    && o.file(&f.name).map(|x| x.sha) != Some(f.sha)
            });
            if differs {
                self.index_differs_with_identical_log.add(f.len);
            }
        }
    }

    fn merge(&mut self, o: &TopicStats) {
        self.partitions += o.partitions;
        self.replicas += o.replicas;
        for (k, c) in &o.files {
            self.files.entry(*k).or_default().merge(c);
        }
        self.whole_files.extend(&o.whole_files);
        self.non_log_files.extend(&o.non_log_files);
        self.distinct_batches.extend(&o.distinct_batches);
        self.distinct_chunks.extend(&o.distinct_chunks);
        self.unparsed += o.unparsed;
        self.partitions_same_roll_points += o.partitions_same_roll_points;
        self.segment_files += o.segment_files;
        self.segment_files_start_everywhere += o.segment_files_start_everywhere;
        for (k, c) in &o.log_differs {
            self.log_differs.entry(k).or_default().merge(c);
        }
        self.index_differs_with_identical_log
            .merge(&o.index_differs_with_identical_log);
        self.batches.merge(&o.batches);
        for (k, v) in &o.batch_holders {
            *self.batch_holders.entry(*k).or_default() += v;
        }
        for (k, v) in &o.batch_holders_no_epoch {
            *self.batch_holders_no_epoch.entry(*k).or_default() += v;
        }
        self.offsets_compared += o.offsets_compared;
        self.offsets_differing += o.offsets_differing;
        self.offsets_differing_beyond_epoch += o.offsets_differing_beyond_epoch;
        for (k, v) in &o.differing_fields {
            *self.differing_fields.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.examples {
            let mine = self.examples.entry(k).or_default();
            let room = EXAMPLES.saturating_sub(mine.len());
            mine.extend(v.iter().take(room).cloned());
        }
    }

    /// Every file's bytes but [`DELETED`]'s.
    fn total_bytes(&self) -> u64 {
        self.bytes_of(|t| t != DELETED)
    }

    fn bytes_of(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.files
            .iter()
            .filter(|((ty, _), _)| keep(ty))
            .map(|(_, c)| c.bytes)
            .sum()
    }

    fn whole_file_stored(&self) -> u64 {
        self.whole_files.values().sum()
    }

    fn non_log_stored(&self) -> u64 {
        self.non_log_files.values().sum()
    }

    fn batch_stored(&self) -> u64 {
        self.distinct_batches.values().sum::<u64>() + self.unparsed + self.non_log_stored()
    }

    fn chunk_stored(&self) -> u64 {
        self.distinct_chunks.values().sum::<u64>() + self.unparsed + self.non_log_stored()
    }

    /// Stored bytes as a share of the replicas' bytes.
    fn ratio(&self, stored: u64) -> f64 {
        stored as f64 / self.total_bytes().max(1) as f64
    }

    /// Stored bytes in replicas' worth (1.0: as much as one replica).
    fn replicas_worth(&self, stored: u64) -> f64 {
        self.ratio(stored) * self.replicas as f64 / self.partitions.max(1) as f64
    }

    fn to_json(&self) -> Value {
        let store = |stored: u64, extra: Value| {
            let mut v = json!({
                "stored_bytes": stored,
                "ratio": self.ratio(stored),
                "replicas_worth": self.replicas_worth(stored),
            });
            if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
                obj.extend(extra);
            }
            v
        };
        let mut files = Map::new();
        for ((ty, holders), c) in &self.files {
            let e = files.entry(ty.to_string()).or_insert_with(|| json!({}));
            e[format!("on_{holders}")] = c.to_json();
        }
        let holders = |m: &BTreeMap<usize, u64>| {
            m.iter()
                .map(|(k, v)| (format!("on_{k}"), json!(v)))
                .collect::<Map<_, _>>()
        };
        let chunk_bytes: u64 = self.distinct_chunks.values().sum();
        json!({
            "partitions": self.partitions,
            "replicas": self.replicas,
            "bytes": self.total_bytes(),
            "log_bytes": self.bytes_of(|t| t == ".log"),
            "index_bytes": self.bytes_of(is_index),
            "other_bytes": self.bytes_of(|t| t != ".log" && !is_index(t) && t != DELETED),
            "deleted_bytes_not_counted": self.bytes_of(|t| t == DELETED),
            "whole_file_dedup": store(self.whole_file_stored(), json!({
                "distinct_files": self.whole_files.len(),
            })),
            "batch_dedup": store(self.batch_stored(), json!({
                "distinct_batches": self.distinct_batches.len(),
                "non_log_stored_bytes": self.non_log_stored(),
            })),
            "chunk_dedup": store(self.chunk_stored(), json!({
                "distinct_chunks": self.distinct_chunks.len(),
                "mean_chunk_bytes": chunk_bytes / (self.distinct_chunks.len().max(1) as u64),
            })),
            "files_by_holders": files,
            "roll_points": {
                "partitions_identical": self.partitions_same_roll_points,
                "segment_files": self.segment_files,
                "segment_files_start_on_every_replica": self.segment_files_start_everywhere,
            },
            "log_files_not_identical": self.log_differs.iter()
                .map(|(k, c)| (k.to_string(), c.to_json()))
                .collect::<Map<_, _>>(),
            "index_files_differing_with_identical_log": self.index_differs_with_identical_log.to_json(),
            "batches": {
                "count": self.batches.n,
                "bytes": self.batches.bytes,
                "bytes_by_holders": holders(&self.batch_holders),
                "bytes_by_holders_epoch_zeroed": holders(&self.batch_holders_no_epoch),
                "offsets_on_2_or_more_replicas": self.offsets_compared,
                "offsets_with_differing_batches": self.offsets_differing,
                "offsets_differing_beyond_leader_epoch": self.offsets_differing_beyond_epoch,
                "differing_fields": self.differing_fields,
            },
            "unparsed_log_bytes": self.unparsed,
            "examples_not_identical": self.examples,
        })
    }
}

// ---------------------------------------------------------------------------
// Output

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn pct(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

fn print_tables(topics: &BTreeMap<String, TopicStats>, all: &TopicStats) {
    let stored = |t: &TopicStats, s: u64| {
        format!(
            "{:>10} {:.3} ({:.2})",
            mib(s),
            t.ratio(s),
            t.replicas_worth(s)
        )
    };
    println!();
    println!(
        "{:<20} {:>5} {:>12}  {:<26} {:<26} {:<26}",
        "topic", "parts", "replicas", "whole-file dedup", "batch dedup", "chunk dedup"
    );
    let rows = topics.iter().map(|(n, t)| (n.as_str(), t));
    for (name, t) in rows.chain([("(all)", all)]) {
        println!(
            "{:<20} {:>5} {:>12}  {:<26} {:<26} {:<26}",
            name,
            t.partitions,
            mib(t.total_bytes()),
            stored(t, t.whole_file_stored()),
            stored(t, t.batch_stored()),
            stored(t, t.chunk_stored()),
        );
    }
    println!("(stored bytes, share of the replicas' bytes, replicas' worth)");
    for (name, t) in topics {
        println!();
        println!(
            "{name}: {} partitions, {} replicas, {}",
            t.partitions,
            t.replicas,
            mib(t.total_bytes())
        );
        let types: BTreeSet<&str> = t.files.keys().map(|(ty, _)| *ty).collect();
        for ty in types {
            let of_type: Vec<(usize, Count)> = t
                .files
                .iter()
                .filter(|((x, _), _)| *x == ty)
                .map(|((_, h), c)| (*h, *c))
                .collect();
            let total = of_type.iter().fold(Count::default(), |mut a, (_, c)| {
                a.merge(c);
                a
            });
            let shares: Vec<String> = (1..=3)
                .rev()
                .map(|h| {
                    let c = of_type.iter().filter(|(x, _)| *x == h).fold(
                        Count::default(),
                        |mut a, (_, c)| {
                            a.merge(c);
                            a
                        },
                    );
                    format!("on {h}: {:>4} files {:>6}", c.n, pct(c.bytes, total.bytes))
                })
                .collect();
            println!(
                "  {ty:<34} {:>5} files {:>10}   {}",
                total.n,
                mib(total.bytes),
                shares.join("  ")
            );
        }
        if t.segment_files == 0 {
            print_examples(t);
            continue;
        }
        println!(
            "  roll points identical on {} of {} partitions; {} of {} segment files start where \
             every replica has a segment",
            t.partitions_same_roll_points,
            t.partitions,
            t.segment_files_start_everywhere,
            t.segment_files
        );
        let why: Vec<String> = t
            .log_differs
            .iter()
            .map(|(k, c)| format!("{k}: {} files {}", c.n, mib(c.bytes)))
            .collect();
        println!("  .log not identical everywhere: {}", why.join(", "));
        println!(
            "  index files differing although the .log is identical: {}",
            t.index_differs_with_identical_log.n
        );
        let by = |m: &BTreeMap<usize, u64>| {
            (1..=3)
                .rev()
                .map(|h| {
                    format!(
                        "on {h}: {}",
                        pct(m.get(&h).copied().unwrap_or(0), t.batches.bytes)
                    )
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!(
            "  batches: {} ({}), bytes {}; epoch zeroed {}",
            t.batches.n,
            mib(t.batches.bytes),
            by(&t.batch_holders),
            by(&t.batch_holders_no_epoch)
        );
        println!(
            "  offsets on 2+ replicas: {}, batches differing at {} (beyond the leader epoch: {}) {:?}",
            t.offsets_compared,
            t.offsets_differing,
            t.offsets_differing_beyond_epoch,
            t.differing_fields
        );
        println!(
            "  chunks: {} distinct, mean {}; non-.log files stored {}; unparsed .log bytes {}",
            t.distinct_chunks.len(),
            mib(t.distinct_chunks.values().sum::<u64>() / t.distinct_chunks.len().max(1) as u64),
            mib(t.non_log_stored()),
            t.unparsed
        );
        print_examples(t);
    }
}

fn print_examples(t: &TopicStats) {
    for (ty, examples) in &t.examples {
        for e in examples {
            println!("  not identical everywhere, {ty}: {e}");
        }
    }
}
