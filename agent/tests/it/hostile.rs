//! Hostile archives: entries that try to leave the target, devices, hard
//! links, lies about sizes. All are refused by verify and by extract, and
//! nothing is written anywhere.

use crate::common::*;
use kafka_snapshot::hashing::sha256_hex;
use kafka_snapshot_model::manifest::CaptureMode;
use kafka_snapshot_model::manifest::{
    ArchiveRecord, CaptureRecord, EntryRecord, EntryType, LogDirRecord, Manifest, Timestamps,
    Totals, FORMAT_VERSION,
};
use std::fs;
use std::path::{Path, PathBuf};

const ID: &str = "20261122T000000.000Z-0badc0de";
const NODE: i32 = 9;

/// One raw tar entry, written with no validation at all.
struct Raw {
    name: String,
    kind: tar::EntryType,
    data: Vec<u8>,
    declared_size: Option<u64>,
    link: Option<String>,
}

fn raw(name: &str, kind: tar::EntryType, data: &[u8]) -> Raw {
    Raw {
        name: name.into(),
        kind,
        data: data.to_vec(),
        declared_size: None,
        link: None,
    }
}

fn build_tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = e.name.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = &e.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_mode(0o644);
        h.set_size(e.declared_size.unwrap_or(e.data.len() as u64));
        h.set_entry_type(e.kind);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn record(path: &str, kind: EntryType, data: &[u8], link: Option<&str>) -> EntryRecord {
    EntryRecord {
        path: path.into(),
        kind,
        size: if kind == EntryType::File {
            data.len() as u64
        } else {
            0
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        sha256: (kind == EntryType::File).then(|| sha256_hex(data)),
        link_target: link.map(str::to_string),
    }
}

/// Writes a snapshot whose manifest is valid (its own checksum is right)
/// and lists `records`, with `tar` as its archive.
fn plant(store: &Path, tar: &[u8], records: Vec<EntryRecord>) {
    let archive = zstd::encode_all(tar, 3).unwrap();
    let dir = snapshot_dir(store, NODE, ID);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("archive.tar.zst"), &archive).unwrap();
    let totals = Totals::of(&records);
    let now = chrono::Utc::now();
    let mut m = Manifest {
        format_version: FORMAT_VERSION,
        snapshot_id: ID.into(),
        cluster_id: CLUSTER.into(),
        node_id: NODE,
        host: "attacker".into(),
        agent_version: "0".into(),
        capture: CaptureRecord {
            requested: CaptureMode::Copy,
            used: CaptureMode::Copy,
            reason: "x".into(),
        },
        clean_shutdown: true,
        log_dirs: vec![LogDirRecord {
            archive_prefix: "logdir-0".into(),
            path: "/data/kafka-logs".into(),
            meta_version: 1,
            directory_id: Some("x".into()),
            is_metadata_dir: true,
            clean_shutdown: true,
        }],
        timestamps: Timestamps {
            broker_stopped: None,
            capture_started: now,
            capture_finished: now,
            broker_restarted: None,
            archive_finished: now,
            committed: now,
        },
        broker_downtime_ms: None,
        archive: ArchiveRecord {
            file: "archive.tar.zst".into(),
            size: archive.len() as u64,
            sha256: sha256_hex(&archive),
            compression: "zstd".into(),
            zstd_level: 3,
        },
        totals,
        entries: records,
        manifest_sha256: String::new(),
    };
    fs::write(dir.join("manifest.json"), m.to_bytes()).unwrap();
}

struct Case {
    t: tempfile::TempDir,
    store: PathBuf,
    target: PathBuf,
}

fn case() -> Case {
    let t = scratch("ext4");
    let store = t.path().join("store");
    let target = t.path().join("restore/kafka-logs");
    fs::create_dir_all(&store).unwrap();
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("precious"), b"keep").unwrap();
    Case { t, store, target }
}

impl Case {
    /// Verify and extract both refuse; nothing changes on disk around the
    /// target, and `outside` never appears.
    fn refused(&self, outside: &Path, expect: &str, case: &str) {
        let url = store_url(&self.store);
        let out = run(&["archive", "verify", "--store", &url, "--snapshot", ID], 1);
        assert!(
            stderr(&out).contains(expect),
            "verify: expected {expect:?} in {}",
            stderr(&out)
        );
        // The target and its siblings: extract may create and remove its own
        // `.restoring-*` dir beside the target, nothing else.
        let snapshot_of_disk = || {
            (
                names(&self.t.path().join("restore")),
                tree(&self.target, &[]),
            )
        };
        let before = snapshot_of_disk();
        let target = self.target.display().to_string();
        let out = run(
            &[
                "archive",
                "extract",
                "--store",
                &url,
                "--snapshot",
                ID,
                "--into",
                &target,
            ],
            1,
        );
        assert!(
            stderr(&out).contains(expect),
            "extract: expected {expect:?} in {}",
            stderr(&out)
        );
        assert_eq!(snapshot_of_disk(), before, "extract changed the disk");
        assert!(!outside.exists(), "{} was created", outside.display());
        kafka_snapshot_testkit::report::record("hostile_archives", case, &[("inputs", 1)]);
    }

    fn outside(&self) -> PathBuf {
        self.t.path().join("evil")
    }
}

fn root_dir() -> (Raw, EntryRecord) {
    (
        raw("logdir-0/", tar::EntryType::Directory, b""),
        record("logdir-0", EntryType::Dir, b"", None),
    )
}

#[test]
fn absolute_path_is_refused() {
    let c = case();
    let evil = c.outside().display().to_string();
    let (rd, rr) = root_dir();
    let tar = build_tar(&[rd, raw(&evil, tar::EntryType::Regular, b"pwned")]);
    // The manifest lists a harmless name: the archive lies.
    plant(
        &c.store,
        &tar,
        vec![rr, record("logdir-0/a", EntryType::File, b"pwned", None)],
    );
    c.refused(
        &c.outside(),
        "absolute path",
        "absolute path in the archive",
    );
}

#[test]
fn dot_dot_is_refused_in_archive_and_in_manifest() {
    let c = case();
    let (rd, rr) = root_dir();
    let tar = build_tar(&[
        rd,
        raw("logdir-0/../../evil", tar::EntryType::Regular, b"pwned"),
    ]);
    plant(
        &c.store,
        &tar,
        vec![
            rr.clone(),
            record("logdir-0/a", EntryType::File, b"pwned", None),
        ],
    );
    c.refused(&c.outside(), "'..'", "'..' in the archive only");
    // Both agree on the hostile path: the manifest itself is refused.
    let (rd, _) = root_dir();
    let tar = build_tar(&[
        rd,
        raw("logdir-0/../../evil", tar::EntryType::Regular, b"pwned"),
    ]);
    plant(
        &c.store,
        &tar,
        vec![
            rr,
            record("logdir-0/../../evil", EntryType::File, b"pwned", None),
        ],
    );
    c.refused(&c.outside(), "'..'", "'..' in archive and manifest");
}

#[test]
fn escaping_symlinks_are_refused() {
    let c = case();
    let (rd, rr) = root_dir();
    let mut link = raw("logdir-0/ln", tar::EntryType::Symlink, b"");
    link.link = Some("../../evil".into());
    let tar = build_tar(&[rd, link]);
    plant(
        &c.store,
        &tar,
        vec![
            rr.clone(),
            record("logdir-0/ln", EntryType::Symlink, b"", Some("../../evil")),
        ],
    );
    c.refused(&c.outside(), "'..'", "symlink escaping with '..'");

    let (rd, _) = root_dir();
    let mut link = raw("logdir-0/ln", tar::EntryType::Symlink, b"");
    let abs = c.t.path().display().to_string();
    link.link = Some(abs.clone());
    let tar = build_tar(&[rd, link]);
    plant(
        &c.store,
        &tar,
        vec![
            rr,
            record("logdir-0/ln", EntryType::Symlink, b"", Some(&abs)),
        ],
    );
    c.refused(&c.outside(), "absolute", "symlink to an absolute path");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let c = case();
    let (rd, rr) = root_dir();
    let mut link = raw("logdir-0/ln", tar::EntryType::Symlink, b"");
    link.link = Some("sub".into());
    let tar = build_tar(&[
        rd,
        link,
        raw("logdir-0/ln/x", tar::EntryType::Regular, b"data"),
    ]);
    plant(
        &c.store,
        &tar,
        vec![
            rr,
            record("logdir-0/ln", EntryType::Symlink, b"", Some("sub")),
            record("logdir-0/ln/x", EntryType::File, b"data", None),
        ],
    );
    c.refused(
        &c.outside(),
        "below the symlink",
        "a file written through a symlink",
    );
}

#[test]
fn hardlinks_and_devices_are_refused() {
    let c = case();
    let (rd, rr) = root_dir();
    let mut hl = raw("logdir-0/hl", tar::EntryType::Link, b"");
    hl.link = Some("/etc/passwd".into());
    let tar = build_tar(&[rd, hl]);
    plant(
        &c.store,
        &tar,
        vec![
            rr.clone(),
            record("logdir-0/hl", EntryType::File, b"", None),
        ],
    );
    c.refused(&c.outside(), "hard links", "hard link to /etc/passwd");

    let (rd, _) = root_dir();
    let tar = build_tar(&[rd, raw("logdir-0/dev", tar::EntryType::Char, b"")]);
    plant(
        &c.store,
        &tar,
        vec![
            rr.clone(),
            record("logdir-0/dev", EntryType::File, b"", None),
        ],
    );
    c.refused(&c.outside(), "device", "character device");

    let (rd, _) = root_dir();
    let tar = build_tar(&[rd, raw("logdir-0/fifo", tar::EntryType::Fifo, b"")]);
    plant(
        &c.store,
        &tar,
        vec![rr, record("logdir-0/fifo", EntryType::File, b"", None)],
    );
    c.refused(&c.outside(), "fifo", "fifo");
}

#[test]
fn huge_declared_sizes_are_refused() {
    let c = case();
    let (rd, rr) = root_dir();
    let mut big = raw("logdir-0/big", tar::EntryType::Regular, b"tiny");
    big.declared_size = Some(1 << 40);
    let tar = build_tar(&[rd, big]);
    plant(
        &c.store,
        &tar,
        vec![
            rr.clone(),
            record("logdir-0/big", EntryType::File, b"tiny", None),
        ],
    );
    c.refused(
        &c.outside(),
        "declares 1099511627776 bytes",
        "declared size of 1 TiB for a 4-byte file",
    );

    // When the manifest agrees on a size no disk here can hold, extract
    // refuses before reading anything.
    let (rd, _) = root_dir();
    let mut big = raw("logdir-0/big", tar::EntryType::Regular, b"tiny");
    big.declared_size = Some(1 << 50);
    let tar = build_tar(&[rd, big]);
    let mut rec = record("logdir-0/big", EntryType::File, b"tiny", None);
    rec.size = 1 << 50;
    plant(&c.store, &tar, vec![rr, rec]);
    let target = c.target.display().to_string();
    let out = run(
        &[
            "archive",
            "extract",
            "--store",
            &store_url(&c.store),
            "--snapshot",
            ID,
            "--into",
            &target,
        ],
        1,
    );
    assert!(stderr(&out).contains("available"), "{}", stderr(&out));
    kafka_snapshot_testkit::report::record(
        "hostile_archives",
        "a size no disk here holds",
        &[("inputs", 1)],
    );
}
