//! Damaged archives and manifests: verify and extract must fail, name the
//! problem, and leave the restore target exactly as it was.

use crate::common::*;
use std::fs;
use std::path::PathBuf;

struct Fixture {
    _t: tempfile::TempDir,
    store: PathBuf,
    id: String,
    archive: PathBuf,
    manifest: PathBuf,
    target: PathBuf,
}

fn fixture() -> Fixture {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 5);
    let store = new_store(t.path());
    let created = create(&dirs[..1], &store, "copy");
    let id = created["snapshot_id"].as_str().unwrap().to_string();
    let snap = snapshot_dir(&store, 5, &id);
    // A restore target that already holds data the operator cares about.
    let target = t.path().join("target/kafka-logs");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("precious"), b"keep me").unwrap();
    Fixture {
        store,
        id,
        archive: snap.join("archive.tar.zst"),
        manifest: snap.join("manifest.json"),
        target,
        _t: t,
    }
}

impl Fixture {
    fn verify(&self, want: i32) -> String {
        let out = run(
            &[
                "archive",
                "verify",
                "--store",
                &store_url(&self.store),
                "--snapshot",
                &self.id,
            ],
            want,
        );
        stderr(&out)
    }

    /// Extract must fail and leave the target and its parent untouched.
    fn extract_fails(&self) -> String {
        let parent = self.target.parent().unwrap();
        let before = (names(parent), tree(&self.target, &[]));
        let target = self.target.display().to_string();
        let out = run(
            &[
                "archive",
                "extract",
                "--store",
                &store_url(&self.store),
                "--snapshot",
                &self.id,
                "--into",
                &target,
            ],
            1,
        );
        assert_eq!(
            (names(parent), tree(&self.target, &[])),
            before,
            "extract touched the target"
        );
        stderr(&out)
    }
}

/// A small deterministic PRNG (splitmix64) for reproducible positions.
fn positions(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed;
    let mut out: Vec<usize> = vec![0, 1, 4, 5, len / 2, len - 9, len - 4, len - 1];
    while out.len() < n {
        s = s.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        out.push(((z ^ (z >> 31)) % len as u64) as usize);
    }
    out
}

/// Where the bytes of a zstd archive are: frame headers, block headers,
/// block contents and the content checksums that end each frame
/// (RFC 8878 section 3.1.1).
#[derive(Default)]
struct Layout {
    header: Vec<usize>,
    block_header: Vec<usize>,
    data: Vec<usize>,
    trailer: Vec<usize>,
}

fn layout(bytes: &[u8]) -> Layout {
    let mut l = Layout::default();
    let mut p = 0;
    while p < bytes.len() {
        assert_eq!(
            &bytes[p..p + 4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "a zstd frame at {p}"
        );
        let fhd = bytes[p + 4];
        let single_segment = fhd & 0x20 != 0;
        let checksum = fhd & 0x04 != 0;
        let dict = [0, 1, 2, 4][(fhd & 0x03) as usize];
        let fcs = match fhd >> 6 {
            0 if single_segment => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let len = 5 + usize::from(!single_segment) + dict + fcs;
        l.header.extend(p..p + len);
        p += len;
        loop {
            let h =
                u32::from(bytes[p]) | u32::from(bytes[p + 1]) << 8 | u32::from(bytes[p + 2]) << 16;
            l.block_header.extend(p..p + 3);
            p += 3;
            let size = (h >> 3) as usize;
            let stored = if (h >> 1) & 3 == 1 { 1 } else { size };
            l.data.extend(p..p + stored);
            p += stored;
            if h & 1 == 1 {
                break;
            }
        }
        if checksum {
            l.trailer.extend(p..p + 4);
            p += 4;
        }
    }
    l
}

/// `n` positions of `from`, spread evenly (all of them if it has fewer).
fn spread(from: &[usize], n: usize) -> Vec<usize> {
    if from.len() <= n {
        return from.to_vec();
    }
    (0..n).map(|i| from[i * from.len() / n]).collect()
}

/// The archive decompressed, changed by `edit`, compressed again: a valid
/// zstd stream whose tar content is damaged (corruption before the
/// compressor, or a re-packed archive).
fn repack(orig: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut tar = zstd::decode_all(orig).unwrap();
    edit(&mut tar);
    zstd::encode_all(&tar[..], 3).unwrap()
}

/// Offsets of the tar headers and of the file data in a tar stream.
fn tar_layout(tar: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let (mut headers, mut data) = (Vec::new(), Vec::new());
    let mut p = 0;
    while p + 512 <= tar.len() && tar[p..p + 512].iter().any(|b| *b != 0) {
        let h = tar::Header::from_byte_slice(&tar[p..p + 512]);
        let size = h.entry_size().unwrap() as usize;
        headers.push(p);
        data.extend(p + 512..p + 512 + size);
        p += 512 + size.div_ceil(512) * 512;
    }
    (headers, data)
}

#[test]
fn single_byte_corruption_of_every_class_is_caught_before_the_target_is_touched() {
    let f = fixture();
    f.verify(0);
    let orig = fs::read(&f.archive).unwrap();
    let l = layout(&orig);
    assert!(!l.header.is_empty() && !l.trailer.is_empty() && l.data.len() > 1000);
    let randoms = |from: &[usize], n: usize, seed: u64| -> Vec<usize> {
        positions(from.len(), n, seed)
            .into_iter()
            .map(|i| from[i])
            .collect()
    };
    let mut classes: Vec<(&str, Vec<usize>)> = vec![
        ("zstd frame header", l.header.clone()),
        ("zstd block header", spread(&l.block_header, 24)),
        ("zstd frame checksum (trailer)", l.trailer.clone()),
        ("compressed data", randoms(&l.data, 160, 11)),
    ];
    classes[0].1.truncate(6);
    let mut tried = 0;
    // Each damaged archive goes through verify and extract.
    let mut try_class = |class: &str, at: &[usize], damage: &dyn Fn(usize) -> Vec<u8>| {
        for &pos in at {
            fs::write(&f.archive, damage(pos)).unwrap();
            let err = f.verify(1);
            assert!(
                err.contains(&f.id),
                "{class}: flip at {pos}: the error does not name the snapshot: {err}"
            );
            f.extract_fails();
            tried += 1;
        }
        kafka_snapshot_testkit::report::record(
            "corruption",
            class,
            &[("positions", at.len() as u64)],
        );
    };
    let flipped = |pos: usize| {
        let mut bad = orig.clone();
        bad[pos] ^= 0x5a;
        bad
    };
    for (class, at) in &classes {
        try_class(class, at, &flipped);
    }
    // Damage inside the tar stream under a valid zstd frame: the tar
    // headers (names, sizes, modes, checksums) and the file data (offsets
    // into the tar stream).
    let tar = zstd::decode_all(&orig[..]).unwrap();
    let (headers, data) = tar_layout(&tar);
    let header_bytes: Vec<usize> = headers
        .iter()
        .flat_map(|h| [*h, h + 100, h + 124, h + 148, h + 156])
        .collect();
    let repacked = |pos: usize| repack(&orig, |t| t[pos] ^= 0x5a);
    try_class(
        "tar header (valid zstd)",
        &spread(&header_bytes, 20),
        &repacked,
    );
    try_class("file data (valid zstd)", &randoms(&data, 20, 13), &repacked);
    assert!(tried >= 200, "only {tried} positions");
    fs::write(&f.archive, &orig).unwrap();
    f.verify(0);
}

#[test]
fn truncated_archive_is_detected() {
    let f = fixture();
    let orig = fs::read(&f.archive).unwrap();
    fs::write(&f.archive, &orig[..orig.len() / 2]).unwrap();
    let err = f.verify(1);
    assert!(err.contains("truncated"), "{err}");
    let err = f.extract_fails();
    assert!(err.contains("truncated"), "{err}");
    report("truncated archive");
}

fn report(case: &str) {
    kafka_snapshot_testkit::report::record("snapshots", case, &[("inputs", 1)]);
}

#[test]
fn edited_or_truncated_manifest_is_refused() {
    let f = fixture();
    let orig = fs::read_to_string(&f.manifest).unwrap();
    let edited = orig.replacen("\"zstd_level\": 3", "\"zstd_level\": 4", 1);
    assert_ne!(edited, orig);
    fs::write(&f.manifest, &edited).unwrap();
    let err = f.verify(1);
    assert!(
        err.contains("manifest") && err.contains("checksum mismatch"),
        "{err}"
    );
    f.extract_fails();
    report("edited manifest");

    fs::write(&f.manifest, &orig[..orig.len() - 100]).unwrap();
    let err = f.verify(1);
    assert!(err.contains("truncated"), "{err}");
    f.extract_fails();
    report("truncated manifest");
}

#[test]
fn manifest_of_another_broker_or_cluster_is_refused() {
    let f = fixture();
    let src = f.manifest.parent().unwrap();
    // The same snapshot, copied under broker 6 and under another cluster.
    let as_broker6 = f.store.join(CLUSTER).join("broker-6").join(&f.id);
    let as_other = f
        .store
        .join("OtherClusterIdAAAAAAAA")
        .join("broker-5")
        .join(&f.id);
    for dst in [&as_broker6, &as_other] {
        fs::create_dir_all(dst).unwrap();
        for n in ["archive.tar.zst", "manifest.json"] {
            fs::copy(src.join(n), dst.join(n)).unwrap();
        }
    }
    let url = store_url(&f.store);
    let out = run(
        &[
            "archive",
            "verify",
            "--store",
            &url,
            "--snapshot",
            &f.id,
            "--broker",
            "6",
        ],
        1,
    );
    assert!(
        stderr(&out).contains("belongs to broker 5 but is stored under broker 6"),
        "{}",
        stderr(&out)
    );
    report("manifest of another broker");
    let out = run(
        &[
            "archive",
            "verify",
            "--store",
            &url,
            "--snapshot",
            &f.id,
            "--cluster",
            "OtherClusterIdAAAAAAAA",
            "--broker",
            "5",
        ],
        1,
    );
    assert!(
        stderr(&out).contains("belongs to cluster"),
        "{}",
        stderr(&out)
    );
    report("manifest of another cluster");
    // Ambiguous without narrowing: a usage error that lists the candidates.
    let out = run(
        &["archive", "verify", "--store", &url, "--snapshot", &f.id],
        2,
    );
    assert!(stderr(&out).contains("--broker"), "{}", stderr(&out));
    // The listing shows them as damaged, never as complete.
    let out = run(&["archive", "list", "--store", &url, "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let complete: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["complete"] == true)
        .collect();
    assert_eq!(complete.len(), 1, "{v}");
    assert_eq!(complete[0]["broker"], 5);
}

#[test]
fn restore_into_a_dir_of_another_cluster_is_refused() {
    let f = fixture();
    fs::write(
        f.target.join("meta.properties"),
        "version=1\nnode.id=5\ncluster.id=SomeOtherCluster\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let err = f.extract_fails();
    assert!(
        err.contains("SomeOtherCluster") && err.contains("--allow-other-identity"),
        "{err}"
    );
    report("restore over another cluster's log dir");
}

/// Cold storage whose archive reads fail after `fail_after` bytes, the way
/// an S3 connection reset or an NFS server gone away fails a read in the
/// middle of the stream. Everything else is the real file store.
struct FailingStore {
    inner: Box<dyn kafka_snapshot::storage::ColdStore>,
    fail_after: u64,
}

struct FailingReader {
    inner: Box<dyn std::io::Read + Send>,
    left: u64,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ));
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl kafka_snapshot::storage::ColdStore for FailingStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(
        &self,
        key: &str,
    ) -> kafka_snapshot::Result<Box<dyn kafka_snapshot::storage::ObjectWriter>> {
        self.inner.create(key)
    }
    fn open(&self, key: &str) -> kafka_snapshot::Result<Box<dyn std::io::Read + Send>> {
        let inner = self.inner.open(key)?;
        if !key.ends_with("archive.tar.zst") {
            return Ok(inner);
        }
        Ok(Box::new(FailingReader {
            inner,
            left: self.fail_after,
        }))
    }
    fn stat(&self, key: &str) -> kafka_snapshot::Result<Option<u64>> {
        self.inner.stat(key)
    }
    fn list(
        &self,
        prefix: &str,
    ) -> kafka_snapshot::Result<Vec<kafka_snapshot::storage::ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> kafka_snapshot::Result<()> {
        self.inner.delete(key)
    }
}

/// Security hole 5: a storage read that fails in the middle of `verify`
/// was reported as a corrupt archive (zstd and tar wrap the reader's
/// error), so an S3 outage marked a good snapshot FAILED for good. It is
/// "unreadable" (the Unavailable class, retried), names the archive's key,
/// and an intact read of the same archive still verifies.
#[test]
fn a_read_error_in_the_middle_of_verify_is_unreadable_not_corrupt() {
    use kafka_snapshot_model::error::ErrorKind;
    use kafka_snapshot_model::layout::SnapshotRef;
    let f = fixture();
    let len = fs::metadata(&f.archive).unwrap().len();
    assert!(len > 1000, "the archive is {len} bytes");
    let snap = SnapshotRef {
        cluster_id: CLUSTER.into(),
        broker: 5,
        snapshot_id: f.id.clone(),
    };
    let open = || kafka_snapshot::storage::open_url(&store_url(&f.store)).unwrap();
    let cuts = [0, 1, 100, len / 3, len / 2, len - 10, len - 1];
    for fail_after in cuts {
        let store = FailingStore {
            inner: open(),
            fail_after,
        };
        let e = kafka_snapshot::verify::verify(&store, &snap)
            .map(|_| ())
            .expect_err("a failed read cannot verify");
        let msg = e.to_string();
        assert_eq!(
            e.kind(),
            ErrorKind::Unavailable,
            "read failing after {fail_after} of {len} bytes: {msg}"
        );
        assert!(e.is_unreadable(), "{msg}");
        assert!(
            msg.contains("archive.tar.zst") && msg.contains(&f.id) && msg.contains("reset"),
            "the error names the object, the snapshot and the cause: {msg}"
        );
    }
    // The same store reading to the end: the archive is good.
    let whole = FailingStore {
        inner: open(),
        fail_after: u64::MAX,
    };
    kafka_snapshot::verify::verify(&whole, &snap).unwrap();
    // Real damage read without a read error is still corrupt.
    let mut bad = fs::read(&f.archive).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x5a;
    fs::write(&f.archive, &bad).unwrap();
    let e = kafka_snapshot::verify::verify(&whole, &snap)
        .map(|_| ())
        .expect_err("a flipped byte");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    kafka_snapshot_testkit::report::record(
        "security",
        "5. a storage read failing mid-verify is unreadable, not corrupt",
        &[("inputs", cuts.len() as u64)],
    );
}
