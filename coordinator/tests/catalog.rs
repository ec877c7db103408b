//! The catalog against real cold storage: rebuild from manifests, verify
//! (a corrupted archive is named), and retention through `prune`, dry run
//! first.

mod common;

use common::*;
use kafka_snapshot::archive::ArchiveOptions;
use kafka_snapshot::snapshot::{capture, BrokerTimes, CaptureRequest};
use kafka_snapshot::storage::open_url;
use kafka_snapshot_model::manifest::CaptureMode;
use kafka_snapshot_testkit::{generate, Spec};
use serde_json::Value;
use std::fs;
use std::path::Path;

const CLUSTER: &str = "CatalogTestClusterAAAAA";
/// The incremental snapshots' chunk size: files of several chunks.
const CHUNK: u64 = 64 << 10;

/// Commits one snapshot of `broker` (small generated log dirs) to `store`.
fn snapshot(root: &Path, store: &Path, broker: i32, seed: u64) -> String {
    let dirs = vec![root.join(format!("b{broker}-{seed}/logs"))];
    let mut spec = Spec::small(CLUSTER, broker, dirs.clone());
    spec.seed = seed;
    generate(&spec).unwrap();
    let c = capture(&CaptureRequest {
        log_dirs: dirs,
        mode: CaptureMode::Copy,
        allow_unclean: false,
        staging_min_free: kafka_snapshot::settings::FreeSpace::Percent(5.0),
    })
    .unwrap();
    let store = open_url(&format!("file://{}", store.display())).unwrap();
    let m = c
        .commit(
            store.as_ref(),
            &ArchiveOptions::default(),
            BrokerTimes {
                stopped: None,
                restarted: None,
            },
        )
        .unwrap();
    m.snapshot_id
}

fn ids(c: &Coordinator) -> Vec<(i64, String)> {
    let rows: Vec<Value> = serde_json::from_str(&c.cli_ok(&["snapshots", "--json"], 0)).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["broker"].as_i64().unwrap(),
                r["snapshot_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn rebuild_verify_and_prune_against_cold_storage() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let b1: Vec<String> = (1..=3).map(|s| snapshot(t.path(), &store, 1, s)).collect();
    let b2: Vec<String> = (1..=2)
        .map(|s| snapshot(t.path(), &store, 2, 10 + s))
        .collect();

    let mut spec = CoordinatorSpec::new(
        &[1, 2],
        "127.0.0.1:1",
        &format!("file://{}", store.display()),
    );
    spec.retention = "keep_last = 2\nverify_new = false\n".into();
    // No cluster is reachable: the config names it.
    spec.cluster = Some(CLUSTER.into());
    let mut c = Coordinator::create(&t.path().join("coord"), &spec);
    c.start();
    assert!(ids(&c).is_empty(), "a new coordinator knows no snapshot");

    // A lost coordinator host loses nothing: the catalog comes back from
    // the manifests.
    let out = c.cli_ok(&["catalog", "rebuild"], 0);
    assert!(out.contains("5 complete snapshots"), "{out}");
    let mut want: Vec<(i64, String)> = b1.iter().map(|i| (1, i.clone())).collect();
    want.extend(b2.iter().map(|i| (2, i.clone())));
    assert_eq!(ids(&c), want);

    // One flipped byte in the oldest archive of broker 1.
    let archive = store
        .join(CLUSTER)
        .join("broker-1")
        .join(&b1[0])
        .join("archive.tar.zst");
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&archive, bytes).unwrap();
    let out = c.cli(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("broker 1 snapshot {}: FAILED", b1[0])),
        "{text}"
    );
    assert_eq!(text.matches(": ok").count(), 4, "{text}");
    let rows: Vec<Value> = serde_json::from_str(&c.cli_ok(&["snapshots", "--json"], 0)).unwrap();
    assert_eq!(rows.iter().filter(|r| r["verify_ok"] == true).count(), 4);

    // Retention: keep_last 2 per broker; the dry run deletes nothing.
    let out = c.cli_ok(&["prune", "--dry-run"], 0);
    assert!(
        out.contains(&format!(
            "would delete broker 1 snapshot {}: beyond the newest 2",
            b1[0]
        )),
        "{out}"
    );
    assert_eq!(out.matches("would delete").count(), 1, "{out}");
    assert!(store.join(CLUSTER).join("broker-1").join(&b1[0]).exists());
    let out = c.cli_ok(&["prune"], 0);
    assert!(
        out.contains(&format!("deleted broker 1 snapshot {}", b1[0])),
        "{out}"
    );
    assert!(!store.join(CLUSTER).join("broker-1").join(&b1[0]).exists());
    assert_eq!(ids(&c).len(), 4);
    let out = c.cli_ok(&["prune", "--dry-run"], 0);
    assert!(out.contains("nothing to delete"), "{out}");

    // Restore orders pick the newest usable snapshot; a snapshot that failed
    // verification or is of another broker needs --force.
    let out = c.cli_ok(&["restore", "--broker", "2", "--yes", "--no-wait"], 0);
    assert!(out.contains(&format!("from snapshot {}", b2[1])), "{out}");
    let out = c.cli(&[
        "restore",
        "--broker",
        "1",
        "--snapshot",
        &b2[0],
        "--yes",
        "--no-wait",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is of broker 2, not 1") && err.contains("--force"),
        "{err}"
    );
    let out = c.cli(&["restore", "--broker", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("confirm with --yes"), "{err}");
    c.kill();
}

/// Commits one incremental snapshot of `dirs` (files of 64 KiB and more
/// as content objects) to `store`.
fn incremental(dirs: &[std::path::PathBuf], store: &Path) -> String {
    let c = capture(&CaptureRequest {
        log_dirs: dirs.to_vec(),
        mode: CaptureMode::Copy,
        allow_unclean: false,
        staging_min_free: kafka_snapshot::settings::FreeSpace::Percent(5.0),
    })
    .unwrap();
    let store = open_url(&format!("file://{}", store.display())).unwrap();
    let opts = ArchiveOptions {
        objects: Some(kafka_snapshot::objects::ObjectOptions {
            min_size: 64 << 10,
            chunk_size: CHUNK,
            hash_cache: None,
            object_key: None,
        }),
        ..ArchiveOptions::default()
    };
    c.commit(store.as_ref(), &opts, BrokerTimes::default())
        .unwrap()
        .snapshot_id
}

fn object_files(store: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = store.join(CLUSTER).join("objects");
    for fan in fs::read_dir(&root).unwrap() {
        for o in fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(o.unwrap().path());
        }
    }
    out.sort();
    out
}

fn prune_json(c: &Coordinator, args: &[&str]) -> Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&c.cli_ok(&all, 0)).unwrap()
}

#[test]
fn content_objects_go_only_when_no_snapshot_references_them() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let dirs = vec![t.path().join("b1/logs")];
    let mut spec = Spec::small(CLUSTER, 1, dirs.clone());
    spec.total_bytes = 12 << 20;
    spec.segment_bytes = 512 << 10;
    generate(&spec).unwrap();
    let first = incremental(&dirs, &store);
    let objects_first = object_files(&store);
    // The active segment grows: the second snapshot has a new object for
    // it, and the first one's version of it is referenced by the first only.
    let active = {
        let mut logs: Vec<(u64, std::path::PathBuf)> = Vec::new();
        for part in fs::read_dir(&dirs[0]).unwrap() {
            let part = part.unwrap().path();
            if !part.is_dir() {
                continue;
            }
            for f in fs::read_dir(&part).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "log") {
                    logs.push((fs::metadata(&f).unwrap().len(), f));
                }
            }
        }
        logs.into_iter().max().unwrap().1
    };
    let mut bytes = fs::read(&active).unwrap();
    let was = bytes.len() as u64;
    bytes.extend_from_slice(&[9u8; 80_000]);
    fs::write(&active, &bytes).unwrap();
    // Its chunks from the one the append began in are new; that one, as
    // it was, is the first snapshot's only.
    let new_chunks = (bytes.len() as u64).div_ceil(CHUNK) - was / CHUNK;
    assert_ne!(was % CHUNK, 0, "the segment ends inside a chunk");
    let only_first = 1u64;
    let second = incremental(&dirs, &store);
    let objects_both = object_files(&store);
    assert_eq!(
        objects_both.len() as u64,
        objects_first.len() as u64 + new_chunks
    );

    let mut cspec = CoordinatorSpec::new(
        &[1, 2],
        "127.0.0.1:1",
        &format!("file://{}", store.display()),
    );
    cspec.retention = "keep_last = 1\nverify_new = false\nobject_grace = \"1h\"\n".into();
    cspec.cluster = Some(CLUSTER.into());
    let mut c = Coordinator::create(&t.path().join("coord"), &cspec);
    c.start();
    let out = c.cli_ok(&["catalog", "rebuild"], 0);
    assert!(
        out.contains(&format!(
            "content objects: {} referenced",
            objects_both.len()
        )) && out.contains("0 referenced by no snapshot"),
        "{out}"
    );

    // Before retention: every object is referenced.
    let r = prune_json(&c, &["--dry-run"]);
    assert_eq!(r["objects"]["referenced"], objects_both.len(), "{r}");
    assert_eq!(r["objects"]["unreferenced"], 0, "{r}");

    // The first snapshot goes; the object only it used waits out the grace.
    let r = prune_json(&c, &[]);
    assert_eq!(r["deleted"][0]["snapshot_id"], first.as_str(), "{r}");
    assert_eq!(r["objects"]["unreferenced"], only_first, "{r}");
    assert_eq!(r["objects"]["in_grace"], only_first, "{r}");
    assert_eq!(r["objects"]["removed"], 0, "{r}");
    assert_eq!(object_files(&store), objects_both);

    // Past the grace (0s after a restart), but a snapshot of broker 2 is
    // being written: it decides which objects exist, so nothing goes.
    c.kill();
    let text = fs::read_to_string(&c.config)
        .unwrap()
        .replace("object_grace = \"1h\"", "object_grace = \"0s\"");
    fs::write(&c.config, text).unwrap();
    c.start();
    let writing = store
        .join(CLUSTER)
        .join("broker-2/20261201T000000.000Z-0000abcd");
    fs::create_dir_all(&writing).unwrap();
    fs::write(writing.join("archive.tar.zst"), b"half").unwrap();
    let r = prune_json(&c, &[]);
    assert!(
        r["objects"]["deferred"]
            .as_str()
            .is_some_and(|d| d.contains("is being written")),
        "{r}"
    );
    assert_eq!(object_files(&store), objects_both);
    let out = c.cli_ok(&["prune", "--dry-run"], 0);
    assert!(
        out.contains("removed no content objects this time"),
        "{out}"
    );

    // Once it is gone, the unreferenced object goes, and only it: the
    // snapshot that is kept still verifies.
    fs::remove_dir_all(&writing).unwrap();
    let out = c.cli_ok(&["prune"], 0);
    assert!(
        out.contains(&format!("removed {only_first} content objects")),
        "{out}"
    );
    let left = object_files(&store);
    assert_eq!(
        left.len() as u64,
        objects_both.len() as u64 - only_first,
        "{out}"
    );
    assert!(left.iter().all(|o| objects_both.contains(o)));
    let out = c.cli_ok(&["verify", "--all"], 0);
    assert!(
        out.contains(&format!("broker 1 snapshot {second}: ok")),
        "{out}"
    );
    let r = prune_json(&c, &[]);
    assert_eq!(r["objects"]["unreferenced"], 0, "{r}");
    c.kill();
}
