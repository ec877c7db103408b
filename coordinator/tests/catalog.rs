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
