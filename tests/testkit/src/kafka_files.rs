//! Renderers for the small metadata files a Kafka broker keeps next to its
//! segments. Each function returns the exact bytes Kafka would write.

use crate::crc32c::crc32c;
use crate::rng::Rng;

/// Unpadded base64url of 16 bytes: how Kafka prints a `Uuid` (22 chars).
pub fn uuid_base64url(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // 3 bytes -> 4 chars; the final single byte -> 2 chars.
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

/// A random Kafka `Uuid`, avoiding the values `Uuid.randomUuid()` rejects:
/// the reserved ids (all with a zero high half, e.g. the metadata topic id)
/// and ids whose string form starts with '-' (awkward on command lines).
pub fn random_uuid(rng: &mut Rng) -> [u8; 16] {
    loop {
        let mut b = [0u8; 16];
        rng.fill(&mut b);
        if b[..8].iter().any(|&x| x != 0) && !uuid_base64url(&b).starts_with('-') {
            return b;
        }
    }
}

/// The fixed topic id of `__cluster_metadata` (`new Uuid(0L, 1L)`).
pub const METADATA_TOPIC_ID: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// 32 lowercase hex chars: the unique suffix of `-delete` / `-future` dirs
/// (a `java.util.UUID` with the dashes removed).
pub fn hex32(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// A segment/index file name: base offset zero-padded to 20 digits.
pub fn segment_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// `java.util.Date#toString()` in UTC, e.g. `Sat Aug 22 10:00:00 UTC 2026`.
pub fn java_date(unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4).
    let weekday = DAYS[(days + 4).rem_euclid(7) as usize];
    format!(
        "{weekday} {} {d:02} {:02}:{:02}:{:02} UTC {y}",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (Howard Hinnant's well-known algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `meta.properties` as written by `kafka-storage format` (v1, KRaft).
pub fn meta_properties(
    node_id: i32,
    directory_id: &str,
    cluster_id: &str,
    written_at: i64,
) -> String {
    format!(
        "#\n#{}\nnode.id={node_id}\ndirectory.id={directory_id}\nversion=1\ncluster.id={cluster_id}\n",
        java_date(written_at)
    )
}

/// One `topic partition offset` line of an offset checkpoint file.
pub struct CheckpointEntry<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: i64,
}

/// Offset checkpoint files (`recovery-point-offset-checkpoint` etc.):
/// version `0`, the entry count, then one entry per line.
pub fn offset_checkpoint(entries: &[CheckpointEntry<'_>]) -> String {
    let mut s = format!("0\n{}\n", entries.len());
    for e in entries {
        s.push_str(&format!("{} {} {}\n", e.topic, e.partition, e.offset));
    }
    s
}

/// `leader-epoch-checkpoint`: version 0, count, `epoch startOffset` lines.
pub fn leader_epoch_checkpoint(entries: &[(i32, i64)]) -> String {
    let mut s = format!("0\n{}\n", entries.len());
    for (epoch, start) in entries {
        s.push_str(&format!("{epoch} {start}\n"));
    }
    s
}

/// `partition.metadata`: the partition's topic id.
pub fn partition_metadata(topic_id: &[u8; 16]) -> String {
    format!("version: 0\ntopic_id: {}\n", uuid_base64url(topic_id))
}

/// `.kafka_cleanshutdown` (Kafka 3.6+ records the broker epoch in it).
pub fn clean_shutdown_marker(broker_epoch: i64) -> String {
    format!("{{\"version\":0,\"brokerEpoch\":{broker_epoch}}}")
}

/// `__cluster_metadata-0/quorum-state` of a broker that follows leader `leader_id`.
pub fn quorum_state(leader_id: i32, leader_epoch: i32) -> String {
    format!(
        "{{\"leaderId\":{leader_id},\"leaderEpoch\":{leader_epoch},\"votedId\":-1,\"appliedOffset\":0,\"currentVoters\":null,\"data_version\":1}}"
    )
}

/// State of one idempotent producer, as stored in a producer snapshot.
#[derive(Clone, Debug)]
pub struct ProducerEntry {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_offset: i64,
    pub offset_delta: i32,
    pub timestamp: i64,
}

/// A producer-state snapshot file (`<offset>.snapshot`, version 1): version,
/// CRC-32C of the rest, then the producer entries.
pub fn producer_snapshot(entries: &[ProducerEntry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + entries.len() * 46);
    body.extend_from_slice(&(entries.len() as i32).to_be_bytes());
    for e in entries {
        body.extend_from_slice(&e.producer_id.to_be_bytes());
        body.extend_from_slice(&e.epoch.to_be_bytes());
        body.extend_from_slice(&e.last_sequence.to_be_bytes());
        body.extend_from_slice(&e.last_offset.to_be_bytes());
        body.extend_from_slice(&e.offset_delta.to_be_bytes());
        body.extend_from_slice(&e.timestamp.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes()); // coordinator epoch
        body.extend_from_slice(&(-1i64).to_be_bytes()); // no open transaction
    }
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&1i16.to_be_bytes());
    out.extend_from_slice(&crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_strings() {
        assert_eq!(uuid_base64url(&METADATA_TOPIC_ID), "AAAAAAAAAAAAAAAAAAAAAQ");
        assert_eq!(uuid_base64url(&[0xff; 16]), "_____________________w");
        let mut rng = Rng::new(5);
        for _ in 0..100 {
            let s = uuid_base64url(&random_uuid(&mut rng));
            assert_eq!(s.len(), 22);
            assert!(!s.starts_with('-'));
        }
    }

    #[test]
    fn dates() {
        assert_eq!(java_date(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(java_date(1_795_168_800), "Fri Nov 20 10:00:00 UTC 2026");
        assert_eq!(java_date(951_782_400), "Tue Feb 29 00:00:00 UTC 2000");
    }

    #[test]
    fn text_formats() {
        let e = [
            CheckpointEntry {
                topic: "orders",
                partition: 0,
                offset: 42,
            },
            CheckpointEntry {
                topic: "orders",
                partition: 3,
                offset: 0,
            },
        ];
        assert_eq!(offset_checkpoint(&e), "0\n2\norders 0 42\norders 3 0\n");
        assert_eq!(offset_checkpoint(&[]), "0\n0\n");
        assert_eq!(leader_epoch_checkpoint(&[(0, 0)]), "0\n1\n0 0\n");
        assert_eq!(segment_name(99_000_000, "log"), "00000000000099000000.log");
        let p = meta_properties(2, "dir", "cid", 0);
        assert!(p.starts_with("#\n#Thu Jan 01 00:00:00 UTC 1970\nnode.id=2\n"));
        assert_eq!(producer_snapshot(&[]).len(), 10);
    }
}
