//! A broker's log dirs: generating them with the testkit, Kafka's start-up
//! checks (`.lock`, `meta.properties`), the clean-shutdown marker, scanning
//! partition dirs and appending record batches to active segments.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::definition::{ClusterDef, DataDef, TopicDef};
use crate::fsutil::{self, KafkaLock};

pub const LOCK_FILE: &str = ".lock";
pub const CLEAN_SHUTDOWN_FILE: &str = ".kafka_cleanshutdown";
pub const META_PROPERTIES: &str = "meta.properties";
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";
const CHECKPOINT_FILES: [&str; 4] = [
    "recovery-point-offset-checkpoint",
    "log-start-offset-checkpoint",
    "replication-offset-checkpoint",
    "cleaner-offset-checkpoint",
];

/// A partition directory found in a log dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionDir {
    pub topic: String,
    pub partition: i32,
    /// `<topic>-<p>.<hex>-future`: the target of an intra-broker move.
    pub future: bool,
    pub path: PathBuf,
}

/// Parses `<topic>-<p>` and `<topic>-<p>.<32 hex>-future`; `None` for
/// anything else (`-delete` and `-stray` dirs, the metadata log, files).
pub fn parse_partition_dir_name(name: &str) -> Option<(String, i32, bool)> {
    if name == METADATA_LOG_DIR {
        return None;
    }
    let (base, future) = match name.strip_suffix("-future") {
        Some(rest) => {
            let (base, hex) = rest.rsplit_once('.')?;
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            (base, true)
        }
        None if name.ends_with("-delete") || name.ends_with("-stray") => return None,
        None => (name, false),
    };
    let (topic, p) = base.rsplit_once('-')?;
    if topic.is_empty() || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((topic.to_string(), p.parse().ok()?, future))
}

/// All partition dirs (current and future) of one log dir, sorted by name.
pub fn scan_partition_dirs(log_dir: &Path) -> Result<Vec<PartitionDir>> {
    let mut out = Vec::new();
    let entries =
        fs::read_dir(log_dir).with_context(|| format!("listing log dir {}", log_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing log dir {}", log_dir.display()))?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((topic, partition, future)) = parse_partition_dir_name(&name) {
            out.push(PartitionDir {
                topic,
                partition,
                future,
                path: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Sum of the `.log` segment sizes, as Kafka reports a replica's size.
pub fn partition_size(dir: &Path) -> u64 {
    segments(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// `.log` segments of a partition dir, by base offset.
fn segments(dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = name.strip_suffix(".log") {
            if base.len() == 20 {
                if let Ok(offset) = base.parse::<i64>() {
                    out.push((offset, entry.path()));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The next offset of a partition: the end of the last complete batch of
/// its active (last) segment, or the segment's base offset if it is empty.
pub fn log_end_offset(dir: &Path) -> Result<i64> {
    let segs = segments(dir)?;
    let Some((base, path)) = segs.last() else {
        return Ok(0);
    };
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut next = *base;
    // Like Kafka, start from the last offset index entry (the position of
    // a batch) instead of reading every batch header of a segment that can
    // be a gigabyte: a start from a cold page cache would read it all.
    let mut pos = last_indexed_position(&path.with_extension("index"))
        .filter(|&p| p < len)
        .unwrap_or(0);
    let mut head = [0u8; 27];
    // Batch header: baseOffset i64, batchLength i32, partitionLeaderEpoch
    // i32, magic i8, crc u32, attributes i16, lastOffsetDelta i32.
    while pos + 27 <= len {
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut head)?;
        let base_offset = i64::from_be_bytes(head[0..8].try_into().unwrap());
        let batch_len = i32::from_be_bytes(head[8..12].try_into().unwrap());
        let last_delta = i32::from_be_bytes(head[23..27].try_into().unwrap());
        if batch_len < 15 || pos + 12 + batch_len as u64 > len {
            break;
        }
        next = base_offset + i64::from(last_delta) + 1;
        pos += 12 + batch_len as u64;
    }
    Ok(next)
}

/// The position of the last entry of an offset index (8-byte entries:
/// relative offset, position), if it has one.
fn last_indexed_position(index: &Path) -> Option<u64> {
    let mut f = fs::File::open(index).ok()?;
    let len = f.metadata().ok()?.len();
    if len < 8 || len % 8 != 0 {
        return None;
    }
    let mut entry = [0u8; 8];
    f.seek(SeekFrom::Start(len - 8)).ok()?;
    f.read_exact(&mut entry).ok()?;
    let position = i32::from_be_bytes(entry[4..8].try_into().unwrap());
    u64::try_from(position).ok().filter(|&p| p > 0)
}

/// Appends record batches to the active segment of one partition.
#[derive(Debug)]
pub struct PartitionLog {
    pub segment: PathBuf,
    pub next_offset: i64,
}

impl PartitionLog {
    pub fn open(dir: &Path) -> Result<PartitionLog> {
        let next_offset = log_end_offset(dir)?;
        let segment = match segments(dir)?.pop() {
            Some((_, p)) => p,
            None => dir.join(format!("{next_offset:020}.log")),
        };
        Ok(PartitionLog {
            segment,
            next_offset,
        })
    }

    /// Appends one batch holding one record of `value_bytes` bytes.
    pub fn append(&mut self, leader_epoch: i32, value_bytes: usize) -> Result<()> {
        let now = fsutil::unix_ms();
        let mut value = format!(
            "{{\"standin\":true,\"offset\":{},\"ts\":{now},\"pad\":\"",
            self.next_offset
        )
        .into_bytes();
        while value.len() + 2 < value_bytes {
            value.push(b'x');
        }
        value.extend_from_slice(b"\"}");
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: leader_epoch,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: self.next_offset,
            sequence: -1,
            timestamp: now,
            key: None,
            value: Some(Bytes::from(value)),
            headers: IndexMap::new(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .context("encoding record batch")?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.segment)
            .with_context(|| format!("opening {}", self.segment.display()))?;
        f.write_all(&buf)
            .with_context(|| format!("appending to {}", self.segment.display()))?;
        self.next_offset += 1;
        Ok(())
    }
}

/// Takes Kafka's exclusive lock on `.lock` in every log dir (as the JVM
/// does, see [`KafkaLock`]), or fails with Kafka's message if another
/// process holds one.
pub fn lock_log_dirs(dirs: &[PathBuf]) -> Result<Vec<KafkaLock>> {
    let mut locks = Vec::new();
    for dir in dirs {
        match KafkaLock::try_lock(&dir.join(LOCK_FILE))? {
            Some(l) => locks.push(l),
            None => bail!(
                "Failed to acquire lock on file .lock in {}. A Kafka instance in another \
                 process or thread is using this directory.",
                dir.display()
            ),
        }
    }
    Ok(locks)
}

/// Kafka's `meta.properties` checks: every dir names this cluster and node,
/// and no two dirs share a `directory.id`.
pub fn check_meta_properties(cluster_id: &str, node_id: i32, dirs: &[PathBuf]) -> Result<()> {
    let mut directory_ids = BTreeMap::new();
    for dir in dirs {
        let path = dir.join(META_PROPERTIES);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let props = parse_properties(&text);
        let get = |k: &str| props.get(k).map(String::as_str).unwrap_or("");
        ensure!(
            get("cluster.id") == cluster_id,
            "Invalid cluster.id in: {}. Expected {cluster_id}, but read {}",
            path.display(),
            get("cluster.id")
        );
        ensure!(
            get("node.id") == node_id.to_string(),
            "Stored node id {} doesn't match previous node id {node_id} in {}",
            get("node.id"),
            path.display()
        );
        let id = get("directory.id").to_string();
        if let Some(other) = directory_ids.insert(id.clone(), dir.clone()) {
            bail!(
                "Duplicate directory ID {id} found in {} and {}",
                other.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

pub fn remove_clean_shutdown_markers(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        let path = dir.join(CLEAN_SHUTDOWN_FILE);
        match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// Writes and fsyncs `.kafka_cleanshutdown` in every dir, as Kafka 3.6+ does.
pub fn write_clean_shutdown_markers(dirs: &[PathBuf], broker_epoch: i64) -> Result<()> {
    let content = format!("{{\"version\":0,\"brokerEpoch\":{broker_epoch}}}");
    for dir in dirs {
        fsutil::write_durable(&dir.join(CLEAN_SHUTDOWN_FILE), content.as_bytes())?;
    }
    Ok(())
}

/// The metadata log (`__cluster_metadata-0`) in whichever dir holds it.
fn metadata_log(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(METADATA_LOG_DIR))
        .find(|d| d.is_dir())
}

/// A running KRaft node appends to its metadata log (here one batch at
/// start, standing for its registration), so a node that is killed leaves
/// a log that ends past its last producer-state snapshot.
pub fn append_metadata_record(dirs: &[PathBuf]) -> Result<()> {
    if let Some(dir) = metadata_log(dirs) {
        PartitionLog::open(&dir)?.append(3, 64)?;
    }
    Ok(())
}

/// What Kafka's clean close of the metadata log leaves: a producer-state
/// snapshot named by its end offset (no `.kafka_cleanshutdown`: that is the
/// log manager's, for partition logs).
pub fn close_metadata_log(dirs: &[PathBuf]) -> Result<()> {
    if let Some(dir) = metadata_log(dirs) {
        let end = log_end_offset(&dir)?;
        fsutil::write_durable(
            &dir.join(format!("{end:020}.snapshot")),
            &kafka_snapshot_testkit::empty_producer_snapshot(),
        )?;
    }
    Ok(())
}

/// Deletes `.lock` in every dir, as Kafka does at a clean shutdown.
pub fn remove_lock_files(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        let p = dir.join(LOCK_FILE);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

/// Whether every dir is missing or empty (a broker that was never started).
pub fn all_empty(dirs: &[PathBuf]) -> Result<bool> {
    for dir in dirs {
        match fs::read_dir(dir) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        }
    }
    Ok(true)
}

/// Fills a broker's (missing or empty) log dirs: the testkit's realistic
/// layout, cut down to the partitions the definition assigns to this
/// broker, with a distinct `directory.id` per dir, plus minimal dirs for
/// assigned partitions the testkit does not make.
pub fn generate_broker(def: &ClusterDef, node_id: i32) -> Result<()> {
    let broker = def.broker(node_id)?;
    generate_raw(&def.cluster_id, &def.data, node_id, &broker.log_dirs)?;
    fit_to_definition(def, node_id)
}

/// Runs the testkit for one broker (shared seed: replicas hold the same
/// topics, topic ids and data).
pub fn generate_raw(
    cluster_id: &str,
    data: &DataDef,
    node_id: i32,
    dirs: &[PathBuf],
) -> Result<()> {
    let spec = kafka_snapshot_testkit::Spec {
        cluster_id: cluster_id.to_string(),
        node_id,
        log_dirs: dirs.to_vec(),
        topics: data.topics,
        partitions_per_topic: data.partitions_per_topic,
        total_bytes: data.bytes_per_broker,
        segment_bytes: data.segment_bytes,
        big_sparse_file_bytes: None,
        with_delete_dir: data.with_delete_dir,
        with_future_dir: false,
        clean_shutdown: true,
        with_lock_file: true,
        seed: data.seed,
    };
    kafka_snapshot_testkit::generate(&spec)
        .with_context(|| format!("generating log dirs of broker {node_id}"))?;
    Ok(())
}

/// Cuts generated dirs down to the partitions the definition assigns to the
/// broker, gives every dir a distinct `directory.id` and adds minimal dirs
/// for assigned partitions the testkit did not make.
pub fn fit_to_definition(def: &ClusterDef, node_id: i32) -> Result<()> {
    let broker = def.broker(node_id)?;
    let assigned: BTreeSet<(String, i32)> = def
        .partitions_of(node_id)
        .into_iter()
        .map(|(t, p)| (t.name.clone(), p))
        .collect();
    for (i, dir) in broker.log_dirs.iter().enumerate() {
        for pd in scan_partition_dirs(dir)? {
            if !assigned.contains(&(pd.topic.clone(), pd.partition)) {
                fs::remove_dir_all(&pd.path)
                    .with_context(|| format!("removing {}", pd.path.display()))?;
            }
        }
        prune_checkpoints(dir, &assigned)?;
        let directory_id = fsutil::base64url_encode_uuid(&fsutil::derived_uuid(&format!(
            "{}/{node_id}/{i}",
            def.cluster_id
        )));
        rewrite_directory_id(dir, &directory_id)?;
    }
    ensure_partition_dirs(def, node_id)
}

/// Topics found in generated log dirs: name -> (partition count, topic id).
pub fn discover_topics(dirs: &[PathBuf]) -> Result<BTreeMap<String, (usize, String)>> {
    let mut out: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for dir in dirs {
        for pd in scan_partition_dirs(dir)? {
            if pd.future {
                continue;
            }
            let meta = pd.path.join("partition.metadata");
            let text =
                fs::read_to_string(&meta).with_context(|| format!("reading {}", meta.display()))?;
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("topic_id:"))
                .map(|s| s.trim().to_string())
                .with_context(|| format!("{}: no topic_id", meta.display()))?;
            let e = out.entry(pd.topic).or_insert((0, id));
            e.0 = e.0.max(pd.partition as usize + 1);
        }
    }
    Ok(out)
}

fn prune_checkpoints(dir: &Path, keep: &BTreeSet<(String, i32)>) -> Result<()> {
    for name in CHECKPOINT_FILES {
        let path = dir.join(name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let mut lines = text.lines();
        let version = lines.next().unwrap_or("0");
        let _count = lines.next();
        let kept: Vec<&str> = lines
            .filter(|l| {
                let mut it = l.split(' ');
                match (it.next(), it.next().and_then(|p| p.parse::<i32>().ok())) {
                    (Some(t), Some(p)) => keep.contains(&(t.to_string(), p)),
                    _ => false,
                }
            })
            .collect();
        let mut out = format!("{version}\n{}\n", kept.len());
        for l in kept {
            out.push_str(l);
            out.push('\n');
        }
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn rewrite_directory_id(dir: &Path, directory_id: &str) -> Result<()> {
    let path = dir.join(META_PROPERTIES);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let out: String = text
        .lines()
        .map(|l| {
            if l.starts_with("directory.id=") {
                format!("directory.id={directory_id}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}

/// Removes the `*.deleted` files of every partition dir (and the metadata
/// log's), as Kafka's `LogLoader` and `KafkaMetadataLog` do when a broker
/// starts: segments and snapshots scheduled for deletion before the stop.
pub fn remove_deleted_files(log_dirs: &[PathBuf]) -> Result<()> {
    for dir in log_dirs {
        for part in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let part = part?.path();
            if !part.is_dir() {
                continue;
            }
            for f in fs::read_dir(&part).with_context(|| format!("listing {}", part.display()))? {
                let f = f?.path();
                if f.is_file() && f.to_string_lossy().ends_with(".deleted") {
                    fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Creates a minimal partition dir (empty active segment and indexes,
/// `partition.metadata`, `leader-epoch-checkpoint`) for every partition
/// assigned to the broker that has none yet, in the log dir holding the
/// fewest partitions, as Kafka places new replicas.
pub fn ensure_partition_dirs(def: &ClusterDef, node_id: i32) -> Result<()> {
    let broker = def.broker(node_id)?;
    let mut present = BTreeSet::new();
    let mut counts = Vec::new();
    for dir in &broker.log_dirs {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pds = scan_partition_dirs(dir)?;
        counts.push(pds.len());
        for pd in pds.into_iter().filter(|pd| !pd.future) {
            present.insert((pd.topic, pd.partition));
        }
    }
    for (topic, p) in def.partitions_of(node_id) {
        if present.contains(&(topic.name.clone(), p)) {
            continue;
        }
        let i = (0..counts.len()).min_by_key(|&i| counts[i]).unwrap_or(0);
        create_empty_partition(
            &broker.log_dirs[i].join(format!("{}-{p}", topic.name)),
            topic,
        )?;
        counts[i] += 1;
    }
    Ok(())
}

fn create_empty_partition(path: &Path, topic: &TopicDef) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    for ext in ["log", "index", "timeindex"] {
        fs::write(path.join(format!("{:020}.{ext}", 0)), b"")?;
    }
    fs::write(path.join("leader-epoch-checkpoint"), "0\n0\n")?;
    fs::write(
        path.join("partition.metadata"),
        format!("version: 0\ntopic_id: {}\n", topic.topic_id),
    )
    .with_context(|| format!("writing {}/partition.metadata", path.display()))
}

/// Creates `<topic>-<p>.<hex>-future` in the broker's last log dir: a
/// copy of the partition's files, as an intra-broker move leaves while
/// it copies. Returns its path.
pub fn create_future_dir(log_dirs: &[PathBuf], topic: &str, partition: i32) -> Result<PathBuf> {
    let mut source = None;
    for dir in log_dirs {
        for pd in scan_partition_dirs(dir)? {
            if pd.topic == topic && pd.partition == partition {
                if pd.future {
                    return Ok(pd.path);
                }
                source = Some(pd.path);
            }
        }
    }
    let source = source.with_context(|| format!("no partition dir for {topic}-{partition}"))?;
    let hex: String = fsutil::derived_uuid(&format!("{topic}-{partition}-future"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let target_dir = log_dirs.last().context("no log dirs")?;
    let target = target_dir.join(format!("{topic}-{partition}.{hex}-future"));
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    for entry in fs::read_dir(&source)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), target.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(target)
}

/// Removes every `-future` dir of the partition (the move completed or was
/// cancelled).
pub fn remove_future_dirs(log_dirs: &[PathBuf], topic: &str, partition: i32) -> Result<()> {
    for dir in log_dirs {
        for pd in scan_partition_dirs(dir)? {
            if pd.future && pd.topic == topic && pd.partition == partition {
                fs::remove_dir_all(&pd.path)
                    .with_context(|| format!("removing {}", pd.path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_names() {
        assert_eq!(
            parse_partition_dir_name("payments.v2-3"),
            Some(("payments.v2".into(), 3, false))
        );
        assert_eq!(
            parse_partition_dir_name("inventory-updates-11"),
            Some(("inventory-updates".into(), 11, false))
        );
        assert_eq!(
            parse_partition_dir_name("orders-0.0123456789abcdef0123456789abcdef-future"),
            Some(("orders".into(), 0, true))
        );
        assert_eq!(
            parse_partition_dir_name("orders-0.0123456789abcdef0123456789abcdef-delete"),
            None
        );
        assert_eq!(parse_partition_dir_name("__cluster_metadata-0"), None);
        assert_eq!(parse_partition_dir_name("orders"), None);
    }

    #[test]
    fn appended_batches_extend_the_log_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t-0");
        fs::create_dir(&p).unwrap();
        fs::write(p.join(format!("{:020}.log", 40)), b"").unwrap();
        let mut log = PartitionLog::open(&p).unwrap();
        assert_eq!(log.next_offset, 40);
        log.append(3, 200).unwrap();
        log.append(3, 200).unwrap();
        assert_eq!(log_end_offset(&p).unwrap(), 42);
        let size = partition_size(&p);
        assert!(size > 400, "{size}");
        // Batches decode as Kafka record batches.
        let mut bytes = Bytes::from(fs::read(&log.segment).unwrap());
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).unwrap();
        let offsets: Vec<i64> = sets
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        assert_eq!(offsets, vec![40, 41]);
    }
}
