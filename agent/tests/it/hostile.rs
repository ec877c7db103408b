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
        chunks: None,
        cuts: Vec::new(),
        objects: None,
    }
}

/// Totals of `records` summed the way an unchecked sum does: a planted
/// manifest can carry whatever wrapped.
fn wrapping_totals(records: &[EntryRecord]) -> Totals {
    let mut t = Totals {
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
    };
    for r in records {
        match r.kind {
            EntryType::File => {
                t.files += 1;
                t.bytes = t.bytes.wrapping_add(r.size);
            }
            EntryType::Dir => t.dirs += 1,
            EntryType::Symlink => t.symlinks += 1,
        }
    }
    t
}

/// Writes a snapshot whose manifest is valid (its own checksum is right)
/// and lists `records`, with `tar` as its archive.
fn plant(store: &Path, tar: &[u8], records: Vec<EntryRecord>) {
    plant_with(store, tar, records, |_| {});
}

/// [`plant`], with `edit` changing the manifest before its checksum is
/// computed.
fn plant_with(
    store: &Path,
    tar: &[u8],
    records: Vec<EntryRecord>,
    edit: impl FnOnce(&mut Manifest),
) {
    let archive = zstd::encode_all(tar, 3).unwrap();
    let dir = snapshot_dir(store, NODE, ID);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("archive.tar.zst"), &archive).unwrap();
    let totals = wrapping_totals(&records);
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
        encryption: None,
        objects: None,
        entries: records,
        manifest_sha256: String::new(),
    };
    edit(&mut m);
    fs::write(dir.join("manifest.json"), m.to_bytes()).unwrap();
}

/// The agent run the way its systemd unit runs it: as an unprivileged
/// user with CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH as ambient capabilities.
fn agent_as_service_user() -> std::process::Command {
    let caps = "+chown,+fowner,+dac_override,+dac_read_search";
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
    ])
    .arg(env!("CARGO_BIN_EXE_kafka-snapshot-agent"))
    .env("KAFKA_SNAPSHOT_LOG", "warn");
    cmd
}

/// Who runs a restore: root, or the service user of the agent's unit.
#[derive(Clone, Copy, Debug)]
enum As {
    Root,
    ServiceUser,
}

impl As {
    fn agent(self) -> std::process::Command {
        match self {
            As::Root => agent(),
            As::ServiceUser => agent_as_service_user(),
        }
    }
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
        self.refused_as(As::Root, outside, expect);
        kafka_snapshot_testkit::report::record("hostile_archives", case, &[("inputs", 1)]);
    }

    /// [`Case::refused`], extracting as `who`.
    fn refused_as(&self, who: As, outside: &Path, expect: &str) {
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
        let out = run_with(
            who.agent(),
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
            "extract as {who:?}: expected {expect:?} in {}",
            stderr(&out)
        );
        assert_eq!(snapshot_of_disk(), before, "extract changed the disk");
        assert!(!outside.exists(), "{} was created", outside.display());
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

/// What an entry of a planted snapshot is given, and what a restore must
/// make of it.
fn entry_with(path: &str, kind: EntryType, mode: u32) -> EntryRecord {
    let data: &[u8] = if kind == EntryType::File {
        b"data"
    } else {
        b""
    };
    EntryRecord {
        mode,
        uid: 0,
        gid: 0,
        ..record(path, kind, data, None)
    }
}

fn raw_of(rec: &EntryRecord) -> Raw {
    match rec.kind {
        EntryType::Dir => raw(&format!("{}/", rec.path), tar::EntryType::Directory, b""),
        EntryType::File => raw(&rec.path, tar::EntryType::Regular, b"data"),
        EntryType::Symlink => {
            let mut r = raw(&rec.path, tar::EntryType::Symlink, b"");
            r.link = rec.link_target.clone();
            r
        }
    }
}

/// Plants a snapshot holding exactly `records` (files hold `data`).
fn plant_records(store: &Path, records: Vec<EntryRecord>) {
    let tar = build_tar(&records.iter().map(raw_of).collect::<Vec<_>>());
    plant(store, &tar, records);
}

/// Regression: a root `archive extract` of a planted snapshot created a
/// setuid-root 6777 file. Kafka never gives a file (or a dir) setuid or
/// sticky bits, nor a file setgid: verify and extract refuse the snapshot
/// naming the entry, whoever runs the restore.
#[test]
fn setuid_setgid_and_sticky_modes_are_refused() {
    let cases = [
        (
            "a setuid-root 6777 file",
            "logdir-0/evil",
            EntryType::File,
            0o6777,
        ),
        ("a setgid file", "logdir-0/evil", EntryType::File, 0o2755),
        (
            "a sticky world-writable dir",
            "logdir-0/evil",
            EntryType::Dir,
            0o1777,
        ),
        ("a setuid dir", "logdir-0/evil", EntryType::Dir, 0o4755),
        ("a sticky log dir root", "logdir-0", EntryType::Dir, 0o1777),
    ];
    for (what, path, kind, mode) in cases {
        let c = case();
        let mut records = Vec::new();
        if path != "logdir-0" {
            records.push(entry_with("logdir-0", EntryType::Dir, 0o755));
        }
        records.push(entry_with(path, kind, mode));
        plant_records(&c.store, records);
        for who in [As::Root, As::ServiceUser] {
            c.refused_as(who, &c.outside(), "setuid, setgid or sticky");
            c.refused_as(who, &c.outside(), path);
        }
        kafka_snapshot_testkit::report::record(
            "security",
            &format!("6. {what} refused by verify and extract, as root and as the service user"),
            &[("inputs", 2)],
        );
    }
}

/// World-writable files and dirs (a broker under umask 0 writes them) and
/// setgid dirs (inherited from a `chmod g+s` log dir) are genuine, so
/// verify accepts them; a restore, as root or as the service user, gives
/// them their mode without world-write and without setgid, and the
/// recorded owners.
#[test]
fn world_writable_and_setgid_modes_are_not_restored() {
    for who in [As::Root, As::ServiceUser] {
        let c = case();
        plant_records(
            &c.store,
            vec![
                entry_with("logdir-0", EntryType::Dir, 0o2777),
                entry_with("logdir-0/file", EntryType::File, 0o666),
                entry_with("logdir-0/sub", EntryType::Dir, 0o777),
                entry_with("logdir-0/sub/inner", EntryType::File, 0o640),
            ],
        );
        let url = store_url(&c.store);
        run(&["archive", "verify", "--store", &url, "--snapshot", ID], 0);
        let target = c.t.path().join("restore/fresh");
        let t = target.display().to_string();
        run_with(
            who.agent(),
            &[
                "archive",
                "extract",
                "--store",
                &url,
                "--snapshot",
                ID,
                "--into",
                &t,
            ],
            0,
        );
        let got = tree(&target, &[]);
        let modes: Vec<(String, u32, u32, u32)> = got
            .iter()
            .map(|(p, n)| (p.display().to_string(), n.mode, n.uid, n.gid))
            .collect();
        assert_eq!(
            modes,
            vec![
                (String::new(), 0o775, 0, 0),
                ("file".into(), 0o664, 0, 0),
                ("sub".into(), 0o775, 0, 0),
                ("sub/inner".into(), 0o640, 0, 0),
            ],
            "restored as {who:?}"
        );
        kafka_snapshot_testkit::report::record(
            "security",
            &format!("6. world-writable and setgid modes cleared on restore as {who:?}"),
            &[("inputs", 4)],
        );
    }
}

/// Regression: a `logdir-N` root entry could be a symlink or a file, which
/// the swap then renamed into the target's place.
#[test]
fn a_log_dir_root_that_is_not_a_directory_is_refused() {
    let c = case();
    let mut link = entry_with("logdir-0", EntryType::Symlink, 0o777);
    link.link_target = Some("elsewhere".into());
    plant_records(&c.store, vec![link]);
    for who in [As::Root, As::ServiceUser] {
        c.refused_as(who, &c.outside(), "not a directory");
    }
    kafka_snapshot_testkit::report::record(
        "security",
        "6. a log dir root that is a symlink",
        &[("inputs", 1)],
    );

    plant_records(
        &c.store,
        vec![entry_with("logdir-0", EntryType::File, 0o644)],
    );
    for who in [As::Root, As::ServiceUser] {
        c.refused_as(who, &c.outside(), "not a directory");
    }
    kafka_snapshot_testkit::report::record(
        "security",
        "6. a log dir root that is a file",
        &[("inputs", 1)],
    );
}

/// Regression: `--original-paths` trusted the manifest's paths, so a
/// planted snapshot "of" `/etc/cron.d` had that moved aside and replaced.
/// Only the log dirs this node's configuration names are restored into.
#[test]
fn original_paths_restore_only_into_the_configured_log_dirs() {
    let c = case();
    let victim = c.t.path().join("etc/cron.d");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("job"), b"* * * * * root true\n").unwrap();
    let configured = c.t.path().join("data/kafka-logs");
    let props = c.t.path().join("server.properties");
    fs::write(&props, format!("log.dirs={}\n", configured.display())).unwrap();
    let records = vec![
        entry_with("logdir-0", EntryType::Dir, 0o755),
        entry_with("logdir-0/job", EntryType::File, 0o644),
    ];
    let tar = build_tar(&records.iter().map(raw_of).collect::<Vec<_>>());
    let victim_path = victim.display().to_string();
    plant_with(&c.store, &tar, records.clone(), |m| {
        m.log_dirs[0].path = victim_path.clone()
    });
    let url = store_url(&c.store);
    let before = (names(victim.parent().unwrap()), tree(&victim, &[]));
    let extract = |extra: &[&str], want: i32| {
        let mut args = vec![
            "archive",
            "extract",
            "--store",
            url.as_str(),
            "--snapshot",
            ID,
            "--original-paths",
        ];
        args.extend_from_slice(extra);
        stderr(&run(&args, want))
    };
    let props_arg = props.display().to_string();
    let err = extract(&["--server-properties", &props_arg], 1);
    assert!(err.contains(&victim_path) && err.contains(ID), "{err}");
    assert!(err.contains("not one of the log dirs"), "{err}");
    // Without the node's configuration there is nothing to check against.
    let err = extract(&[], 2);
    assert!(err.contains("--server-properties"), "{err}");
    assert_eq!(
        (names(victim.parent().unwrap()), tree(&victim, &[])),
        before,
        "the victim dir was touched"
    );
    kafka_snapshot_testkit::report::record(
        "security",
        "6. --original-paths naming a dir that is not a configured log dir",
        &[("inputs", 2)],
    );

    // The same snapshot recorded at the configured path is restored there.
    let configured_path = configured.display().to_string();
    plant_with(&c.store, &tar, records, |m| {
        m.log_dirs[0].path = configured_path.clone()
    });
    extract(&["--server-properties", &props_arg], 0);
    assert_eq!(fs::read(configured.join("job")).unwrap(), b"data");
    kafka_snapshot_testkit::report::record(
        "security",
        "6. --original-paths into a configured log dir",
        &[("inputs", 1)],
    );
}

/// Regression: zero padding after the end of the tar archive was read for
/// as long as it lasted; a few KiB of zstd make terabytes of zeros.
#[test]
fn zero_padding_after_the_tar_end_is_bounded() {
    let c = case();
    let records = vec![
        entry_with("logdir-0", EntryType::Dir, 0o755),
        entry_with("logdir-0/f", EntryType::File, 0o644),
    ];
    let mut tar = build_tar(&records.iter().map(raw_of).collect::<Vec<_>>());
    // What GNU tar writes: the archive padded to a whole 10 KiB record.
    tar.resize(tar.len().div_ceil(10240) * 10240, 0);
    plant(&c.store, &tar, records.clone());
    let url = store_url(&c.store);
    run(&["archive", "verify", "--store", &url, "--snapshot", ID], 0);

    tar.resize(tar.len() + (1 << 20), 0);
    plant(&c.store, &tar, records);
    c.refused(
        &c.outside(),
        "padding after the end of the tar archive",
        "1 MiB of padding",
    );
    let out = run(&["archive", "verify", "--store", &url, "--snapshot", ID], 1);
    assert!(stderr(&out).contains(ID), "{}", stderr(&out));
    kafka_snapshot_testkit::report::record(
        "security",
        "10. 1 MiB of zero padding after the tar end (a 10 KiB record passes)",
        &[("inputs", 2)],
    );
}

/// Regression: file sizes were summed unchecked; in a release build two
/// sizes of 2^63 add up to 0 and match a manifest total of 0.
#[test]
fn size_sums_that_overflow_are_refused() {
    let c = case();
    let mut a = entry_with("logdir-0/a", EntryType::File, 0o644);
    let mut b = entry_with("logdir-0/b", EntryType::File, 0o644);
    a.size = 1 << 63;
    b.size = 1 << 63;
    let records = vec![entry_with("logdir-0", EntryType::Dir, 0o755), a, b];
    let tar = build_tar(&[raw_of(&records[0])]);
    plant(&c.store, &tar, records);
    c.refused(
        &c.outside(),
        "add up to more than",
        "sizes that overflow u64",
    );
    kafka_snapshot_testkit::report::record(
        "security",
        "10. file sizes whose sum overflows u64",
        &[("inputs", 1)],
    );
}

/// Regression: a manifest was read whole whatever its size.
#[test]
fn an_oversized_manifest_is_refused() {
    let c = case();
    plant_records(
        &c.store,
        vec![
            entry_with("logdir-0", EntryType::Dir, 0o755),
            entry_with("logdir-0/f", EntryType::File, 0o644),
        ],
    );
    // Still valid JSON with a valid checksum: whitespace is not hashed.
    let manifest = snapshot_dir(&c.store, NODE, ID).join("manifest.json");
    let f = fs::OpenOptions::new().append(true).open(&manifest).unwrap();
    f.set_len(kafka_snapshot_model::manifest::MAX_MANIFEST_BYTES + 1)
        .unwrap();
    let mut bytes = fs::read(&manifest).unwrap();
    for b in bytes.iter_mut().rev().take_while(|b| **b == 0) {
        *b = b' ';
    }
    fs::write(&manifest, bytes).unwrap();
    c.refused(
        &c.outside(),
        "more than the",
        "a manifest over the size limit",
    );
    kafka_snapshot_testkit::report::record(
        "security",
        "10. a manifest larger than the limit",
        &[("inputs", 1)],
    );
}

/// `chattr +i` on a path for as long as it lives.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success(), "chattr +i {}", p.display());
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A broker of two log dirs, snapshotted, then written to again: what a
/// restore must either replace completely or leave exactly as it is.
struct Restore {
    t: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    store: Box<dyn kafka_snapshot::storage::ColdStore>,
    snap: kafka_snapshot_model::layout::SnapshotRef,
}

fn restore_case() -> Restore {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 3);
    let store_dir = new_store(t.path());
    let created = create(&dirs, &store_dir, "copy");
    let id = created["snapshot_id"].as_str().unwrap();
    for d in &dirs {
        fs::write(d.join("written-after-the-snapshot"), b"current").unwrap();
    }
    let store = kafka_snapshot::storage::open_url(&store_url(&store_dir)).unwrap();
    let snap = kafka_snapshot::catalog::find(store.as_ref(), id, None, None).unwrap();
    Restore {
        t,
        dirs,
        store,
        snap,
    }
}

/// A log dir's siblings, and its files described in full.
type LogDirOnDisk = (Vec<String>, Vec<(PathBuf, String)>);

impl Restore {
    fn prepare(&self) -> kafka_snapshot::extract::Prepared {
        let opts = kafka_snapshot::extract::ExtractOptions {
            targets: self.dirs.clone(),
            allow_other_identity: false,
            replace_formatted: false,
            restore_owner: true,
            broker_may_run: false,
            cancel: None,
            identity: None,
        };
        kafka_snapshot::extract::prepare(self.store.as_ref(), &self.snap, &opts).unwrap()
    }

    /// Every log dir with its siblings, to compare before and after.
    fn disk(&self) -> Vec<LogDirOnDisk> {
        self.dirs
            .iter()
            .map(|d| {
                let siblings = names(d.parent().unwrap())
                    .into_iter()
                    .filter(|n| !n.contains(".restoring-"))
                    .collect();
                let files = tree(d, &[])
                    .into_iter()
                    .map(|(p, n)| (p, format!("{:?}", n)))
                    .collect();
                (siblings, files)
            })
            .collect()
    }
}

/// Regression: when renaming the second log dir failed after the first was
/// swapped, the broker was left with a mix of restored and current data.
/// Either every dir is swapped or none: the first rename is undone, and
/// the error says so. The renames fail for real: an immutable parent
/// (moving the current dir aside fails), and an immutable restored copy
/// (renaming it into place fails after the current dir was moved aside).
#[test]
fn a_failed_rename_of_the_second_log_dir_rolls_back_the_first() {
    for (what, immutable) in [
        ("the second target's parent is immutable", 0),
        ("the second restored copy is immutable", 1),
    ] {
        let r = restore_case();
        let before = r.disk();
        let prepared = r.prepare();
        let lock = match immutable {
            0 => Immutable::set(r.dirs[1].parent().unwrap()),
            _ => Immutable::set(&prepared.restoring_dirs()[1]),
        };
        let err = prepared.swap().expect_err("the swap fails").to_string();
        drop(lock);
        assert!(err.contains("rolled back"), "{what}: {err}");
        assert!(
            err.contains(&r.dirs[1].display().to_string()),
            "{what}: {err}"
        );
        assert_eq!(r.disk(), before, "{what}: the log dirs changed");
        kafka_snapshot_testkit::report::record(
            "security",
            &format!("7. second rename fails ({what}): the first is undone"),
            &[("inputs", 1)],
        );
    }
}

/// Regression: `<target>.restoring-<id>` was renamed into place by name,
/// so whoever can write the target's parent (the broker's user) could swap
/// it between its verification and the rename. Only the dir that was
/// extracted and verified is renamed into place.
#[test]
fn a_restoring_copy_replaced_after_verify_is_not_put_in_place() {
    for what in ["a dir", "a symlink to a dir"] {
        let r = restore_case();
        let before = r.disk();
        let prepared = r.prepare();
        let copy = prepared.restoring_dirs()[0].clone();
        let planted = r.t.path().join("planted");
        fs::create_dir(&planted).unwrap();
        fs::write(planted.join("planted-file"), b"x").unwrap();
        fs::rename(&copy, r.t.path().join("moved-away")).unwrap();
        match what {
            "a dir" => fs::rename(&planted, &copy).unwrap(),
            _ => std::os::unix::fs::symlink(&planted, &copy).unwrap(),
        }
        let err = prepared
            .swap()
            .expect_err("the swap is refused")
            .to_string();
        assert!(
            err.contains("not the copy that was extracted"),
            "{what}: {err}"
        );
        assert_eq!(r.disk(), before, "{what}: the log dirs changed");
        assert!(!r.dirs[0].join("planted-file").exists());
        // What was planted is left where it was, not removed.
        assert!(
            fs::symlink_metadata(&copy).is_ok(),
            "{what}: the planted copy was removed"
        );
        kafka_snapshot_testkit::report::record(
            "security",
            &format!("9. the restored copy replaced by {what} after verify"),
            &[("inputs", 1)],
        );
    }
}

/// Regression: an existing `.kafka-snapshot-staging` symlink was followed
/// and everything behind it removed as stale staging (it could point at
/// the file:// store). A capture refuses it and removes nothing.
#[test]
fn a_staging_symlink_is_never_followed() {
    for capture in ["reflink", "copy"] {
        let t = scratch("xfs");
        let dirs = small_broker(t.path(), 4);
        let victim = t.path().join("victim");
        fs::create_dir_all(victim.join("sub")).unwrap();
        fs::write(victim.join("keep"), b"precious").unwrap();
        fs::write(victim.join("sub/keep"), b"precious").unwrap();
        let staging = dirs[0].parent().unwrap().join(".kafka-snapshot-staging");
        std::os::unix::fs::symlink(&victim, &staging).unwrap();
        let store = new_store(t.path());
        let out = run_create(&dirs, &store, capture, &[], 1);
        let err = stderr(&out);
        assert!(
            err.contains(&staging.display().to_string()) && err.contains("symlink"),
            "{err}"
        );
        assert_eq!(fs::read(victim.join("keep")).unwrap(), b"precious");
        assert_eq!(fs::read(victim.join("sub/keep")).unwrap(), b"precious");
        assert_eq!(names(&victim), vec!["keep", "sub"]);
        assert!(fs::symlink_metadata(&staging)
            .unwrap()
            .file_type()
            .is_symlink());
        kafka_snapshot_testkit::report::record(
            "security",
            &format!("9. a staging symlink is refused, not followed ({capture} capture)"),
            &[("inputs", 1)],
        );
    }
}

/// Regression: capture and archive opened the log dirs' files by path, so
/// a partition dir swapped for a symlink after the inventory (by anyone
/// with the broker user's rights, the broker stopped) made the agent,
/// which reads with CAP_DAC_READ_SEARCH, archive whatever it pointed at.
/// Every file is now opened below its log dir's fd without following a
/// symlink: the snapshot fails naming the file, and nothing is committed.
#[test]
fn a_partition_dir_swapped_for_a_symlink_after_the_inventory_is_not_followed() {
    for capture in ["reflink", "copy"] {
        let t = scratch("xfs");
        let dirs = small_broker(t.path(), 4);
        let partition = fs::read_dir(&dirs[0])
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.is_dir()
                    && fs::read_dir(p)
                        .unwrap()
                        .any(|f| f.unwrap().path().extension().is_some_and(|x| x == "log"))
            })
            .expect("a partition dir with a segment");
        // The secret: files of the same names and sizes, other bytes.
        let secret = t.path().join("secret");
        fs::create_dir(&secret).unwrap();
        for f in fs::read_dir(&partition).unwrap() {
            let f = f.unwrap();
            let len = f.metadata().unwrap().len() as usize;
            fs::write(secret.join(f.file_name()), vec![b'S'; len]).unwrap();
        }
        let store = new_store(t.path());
        let pause = t.path().join("pause");
        fs::create_dir(&pause).unwrap();
        let mut cmd = agent();
        cmd.env("KAFKA_SNAPSHOT_PAUSE", "capture-scanned")
            .env("KAFKA_SNAPSHOT_PAUSE_DIR", &pause)
            .args([
                "archive",
                "create",
                "--log-dirs",
                &dirs_arg(&dirs),
                "--store",
                &store_url(&store),
                "--capture",
                capture,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        let marker = pause.join("capture-scanned");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !marker.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "never paused after the scan"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        fs::rename(&partition, t.path().join("moved-away")).unwrap();
        std::os::unix::fs::symlink(&secret, &partition).unwrap();
        fs::remove_file(&marker).unwrap();
        let out = child.wait_with_output().unwrap();
        check_exit(&out, &format!("archive create ({capture})"), 1);
        let err = stderr(&out);
        assert!(
            err.contains(&partition.display().to_string()) && err.contains("refusing to follow"),
            "{capture}: {err}"
        );
        let stored = files_under(&store);
        assert!(
            !stored.iter().any(|p| p.ends_with("manifest.json")),
            "{capture}: a snapshot was committed: {stored:?}"
        );
        kafka_snapshot_testkit::report::record(
            "security",
            &format!(
                "9. a partition dir swapped for a symlink after the inventory is refused, not followed ({capture} capture)"
            ),
            &[("inputs", 1)],
        );
    }
}
