//! Whether the Kafka node that used a log dir stopped cleanly, from what
//! real Kafka leaves behind (observed on 3.9.1, 4.0.2 and 4.4.0):
//!
//! - A broker's log manager writes `.kafka_cleanshutdown` into every log
//!   dir it manages once all its partition logs are closed. Without it,
//!   Kafka itself recovers those logs at the next start.
//! - The metadata log (`__cluster_metadata-0`, KRaft) is not the log
//!   manager's: a dedicated controller writes no marker at all, and a
//!   broker whose `metadata.log.dir` is a dir of its own leaves none
//!   there. What a clean close of that log does leave is a producer-state
//!   snapshot `<log end offset>.snapshot` (the log takes one at its end
//!   offset as it closes) and a last segment made of whole record batches.
//!   A killed node leaves the batches it appended after its last snapshot,
//!   so no snapshot names the log end offset.
//!
//! A dir is clean when both hold for what it contains: the marker where it
//! holds partition logs, the closed metadata log where it holds one. A dir
//! with neither (a controller's extra log dir, a broker dir with no
//! partition yet) has nothing Kafka would have to recover.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What a broker's log manager writes into each log dir it closed.
pub const CLEAN_SHUTDOWN: &str = ".kafka_cleanshutdown";

/// The KRaft metadata log's partition dir.
pub const METADATA_LOG: &str = "__cluster_metadata-0";

/// Record batch v2 header fields up to and including the CRC, and the
/// smallest valid batch (a header with no records).
const BATCH_LENGTH_OFFSET: usize = 8;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const LOG_OVERHEAD: usize = 12;
const MIN_BATCH_LENGTH: i32 = 49;
/// Kafka refuses batches larger than this anyway (message.max.bytes is far
/// lower); a length beyond it is garbage, not a batch.
const MAX_BATCH_LENGTH: i32 = 1 << 30;

/// How a dir proved a clean stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanProof {
    /// `.kafka_cleanshutdown` is there (and was needed).
    pub marker: bool,
    /// The metadata log's end offset, with its closing snapshot.
    pub metadata_log_end: Option<i64>,
}

/// Whether the broker's log manager closed `dir` (it holds no partition
/// log, or has `.kafka_cleanshutdown`): what a stop can wait on. The
/// metadata log may still be closing then: on a broker or combined node
/// the log manager releases `.lock` before the metadata log is closed.
pub fn partitions_closed(dir: &Path) -> Result<bool, String> {
    let (partitions, _) = contents(dir)?;
    Ok(!partitions || dir.join(CLEAN_SHUTDOWN).exists())
}

/// (holds partition logs, holds the metadata log)
fn contents(dir: &Path) -> Result<(bool, bool), String> {
    let mut partitions = false;
    let mut metadata = false;
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", entry.path().display()))?
            .is_dir();
        if !is_dir {
            continue;
        }
        if entry.file_name() == METADATA_LOG {
            metadata = true;
        } else {
            partitions = true;
        }
    }
    Ok((partitions, metadata))
}

/// Whether the node that used `dir` stopped cleanly; the error says what
/// is missing, for the operator.
pub fn check(dir: &Path) -> Result<CleanProof, String> {
    let (partitions, metadata) = contents(dir)?;
    let marker = dir.join(CLEAN_SHUTDOWN).exists();
    if partitions && !marker {
        return Err(format!(
            "no {CLEAN_SHUTDOWN} in {}: the broker did not close its partition logs cleanly",
            dir.display()
        ));
    }
    let metadata_log_end = match metadata {
        true => Some(metadata_log_closed(&dir.join(METADATA_LOG))?),
        false => None,
    };
    Ok(CleanProof {
        marker: partitions,
        metadata_log_end,
    })
}

/// The end offset of the metadata log in `log` (a `__cluster_metadata-0`
/// dir) if it was closed cleanly: its last segment is whole record batches
/// to the last byte, the last batch's CRC holds, and a producer-state
/// snapshot sits at the end offset.
pub fn metadata_log_closed(log: &Path) -> Result<i64, String> {
    let last = last_segment(log)?;
    let Some((base, segment)) = last else {
        return Err(format!(
            "{} holds no log segment: not a metadata log Kafka closed",
            log.display()
        ));
    };
    let end = segment_end_offset(&segment, base)?;
    let snapshot = log.join(format!("{end:020}.snapshot"));
    if !snapshot.is_file() {
        return Err(format!(
            "the metadata log in {} ends at offset {end} but has no {} (written when Kafka \
             closes the log): the node did not stop cleanly",
            log.display(),
            snapshot.file_name().and_then(|n| n.to_str()).unwrap_or("")
        ));
    }
    Ok(end)
}

/// The `.log` file with the highest base offset.
fn last_segment(log: &Path) -> Result<Option<(i64, std::path::PathBuf)>, String> {
    let mut best: Option<(i64, std::path::PathBuf)> = None;
    let entries = fs::read_dir(log).map_err(|e| format!("cannot list {}: {e}", log.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", log.display()))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        let Ok(base) = stem.parse::<i64>() else {
            continue;
        };
        if stem.len() == 20 && best.as_ref().is_none_or(|(b, _)| base > *b) {
            best = Some((base, entry.path()));
        }
    }
    Ok(best)
}

/// Walks the batch headers of a segment (seeking over their records) and
/// returns the offset after its last record; the last batch is read whole
/// and its CRC-32C checked. An empty segment ends at its base offset.
fn segment_end_offset(segment: &Path, base: i64) -> Result<i64, String> {
    let bad = |what: String| format!("{}: {what}", segment.display());
    let mut f = File::open(segment).map_err(|e| bad(format!("cannot open: {e}")))?;
    let size = f
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    let mut pos: u64 = 0;
    let mut last: Option<(u64, usize)> = None;
    let mut header = [0u8; LAST_OFFSET_DELTA_OFFSET + 4];
    while pos < size {
        if size - pos < header.len() as u64 {
            return Err(bad(format!(
                "{} byte(s) at position {pos} are not a whole record batch (a torn tail)",
                size - pos
            )));
        }
        f.seek(SeekFrom::Start(pos))
            .and_then(|_| f.read_exact(&mut header))
            .map_err(|e| bad(format!("cannot read at position {pos}: {e}")))?;
        let length = i32::from_be_bytes(
            header[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4]
                .try_into()
                .expect("4 bytes"),
        );
        if header[MAGIC_OFFSET] != 2 || !(MIN_BATCH_LENGTH..=MAX_BATCH_LENGTH).contains(&length) {
            return Err(bad(format!(
                "no record batch at position {pos} (magic {}, length {length})",
                header[MAGIC_OFFSET]
            )));
        }
        let total = LOG_OVERHEAD + length as usize;
        if pos + total as u64 > size {
            return Err(bad(format!(
                "the record batch at position {pos} needs {total} bytes, {} are left (a torn tail)",
                size - pos
            )));
        }
        last = Some((pos, total));
        pos += total as u64;
    }
    let Some((at, total)) = last else {
        return Ok(base);
    };
    let mut batch = vec![0u8; total];
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.read_exact(&mut batch))
        .map_err(|e| bad(format!("cannot read at position {at}: {e}")))?;
    let stored = u32::from_be_bytes(
        batch[CRC_OFFSET..CRC_OFFSET + 4]
            .try_into()
            .expect("4 bytes"),
    );
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    if stored != computed {
        return Err(bad(format!(
            "the last record batch (position {at}) fails its CRC (stored {stored:08x}, \
             computed {computed:08x})"
        )));
    }
    let first = i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes"));
    let delta = i32::from_be_bytes(
        batch[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .try_into()
            .expect("4 bytes"),
    );
    Ok(first + delta as i64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 batch of `records` records (their bytes are opaque here).
    fn batch(base: i64, records: i32, payload: usize) -> Vec<u8> {
        let mut body = Vec::new(); // from attributes on
        body.extend_from_slice(&0i16.to_be_bytes()); // attributes
        body.extend_from_slice(&(records - 1).to_be_bytes()); // last offset delta
        body.extend_from_slice(&0i64.to_be_bytes()); // base timestamp
        body.extend_from_slice(&0i64.to_be_bytes()); // max timestamp
        body.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
        body.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
        body.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
        body.extend_from_slice(&records.to_be_bytes());
        body.extend(std::iter::repeat_n(7u8, payload));
        let mut out = Vec::new();
        out.extend_from_slice(&base.to_be_bytes());
        out.extend_from_slice(&((body.len() + 9) as i32).to_be_bytes());
        out.extend_from_slice(&3i32.to_be_bytes()); // partition leader epoch
        out.push(2);
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn metadata_dir(root: &Path, log: &[u8], snapshot_at: Option<i64>) -> std::path::PathBuf {
        let dir = root.join(METADATA_LOG);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("00000000000000000000.log"), log).unwrap();
        if let Some(at) = snapshot_at {
            fs::write(dir.join(format!("{at:020}.snapshot")), [0u8; 10]).unwrap();
        }
        dir
    }

    fn log(batches: &[(i64, i32)]) -> Vec<u8> {
        batches.iter().flat_map(|&(b, n)| batch(b, n, 40)).collect()
    }

    #[test]
    fn a_closed_metadata_log_ends_where_its_snapshot_is() {
        let t = tempfile::tempdir().unwrap();
        let dir = metadata_dir(t.path(), &log(&[(0, 3), (3, 1), (4, 5)]), Some(9));
        assert_eq!(metadata_log_closed(&dir), Ok(9));
        // A dedicated controller's dir: no marker needed.
        let proof = check(t.path()).unwrap();
        assert_eq!(proof.metadata_log_end, Some(9));
        assert!(!proof.marker);
    }

    #[test]
    fn a_killed_node_has_no_snapshot_at_its_log_end() {
        let t = tempfile::tempdir().unwrap();
        // The snapshot of an earlier clean stop, then more batches.
        let dir = metadata_dir(t.path(), &log(&[(0, 3), (3, 1), (4, 5)]), Some(4));
        let e = metadata_log_closed(&dir).unwrap_err();
        assert!(e.contains("ends at offset 9"), "{e}");
        assert!(e.contains("00000000000000000009.snapshot"), "{e}");
        assert!(check(t.path()).is_err());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_not_clean() {
        let t = tempfile::tempdir().unwrap();
        let mut bytes = log(&[(0, 3), (3, 1)]);
        bytes.truncate(bytes.len() - 5);
        let dir = metadata_dir(t.path(), &bytes, Some(4));
        let e = metadata_log_closed(&dir).unwrap_err();
        assert!(e.contains("torn tail"), "{e}");

        let t = tempfile::tempdir().unwrap();
        let mut bytes = log(&[(0, 3), (3, 1)]);
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        let dir = metadata_dir(t.path(), &bytes, Some(4));
        let e = metadata_log_closed(&dir).unwrap_err();
        assert!(e.contains("fails its CRC"), "{e}");

        let t = tempfile::tempdir().unwrap();
        let mut bytes = log(&[(0, 3)]);
        bytes.extend_from_slice(&[0u8; 64]); // preallocated zeros
        let dir = metadata_dir(t.path(), &bytes, Some(3));
        let e = metadata_log_closed(&dir).unwrap_err();
        assert!(e.contains("no record batch at position"), "{e}");
    }

    #[test]
    fn the_last_segment_counts_and_an_empty_one_ends_at_its_base() {
        let t = tempfile::tempdir().unwrap();
        let dir = metadata_dir(t.path(), &log(&[(0, 3)]), None);
        fs::write(dir.join("00000000000000000003.log"), b"").unwrap();
        fs::write(dir.join("00000000000000000003.snapshot"), [0u8; 10]).unwrap();
        assert_eq!(metadata_log_closed(&dir), Ok(3));
    }

    #[test]
    fn partition_logs_need_the_marker_and_empty_dirs_need_nothing() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            check(t.path()),
            Ok(CleanProof {
                marker: false,
                metadata_log_end: None
            })
        );
        fs::create_dir(t.path().join("orders-0")).unwrap();
        let e = check(t.path()).unwrap_err();
        assert!(e.contains(".kafka_cleanshutdown"), "{e}");
        fs::write(t.path().join(CLEAN_SHUTDOWN), b"{}").unwrap();
        assert!(check(t.path()).unwrap().marker);
        // A combined node: the marker and a closed metadata log.
        metadata_dir(t.path(), &log(&[(0, 2)]), Some(1));
        assert!(check(t.path()).is_err());
        fs::write(
            t.path()
                .join(METADATA_LOG)
                .join("00000000000000000002.snapshot"),
            [0u8; 10],
        )
        .unwrap();
        assert_eq!(check(t.path()).unwrap().metadata_log_end, Some(2));
    }
}
