//! The product end to end, every part a real process: three stand-in
//! brokers, one agent daemon per broker, one coordinator. An observer polls
//! the cluster throughout and asserts what operators care about: never two
//! brokers down, never a partition under min ISR.

mod common;

use common::fleet::{observe, Fleet};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The SHA-256 of a restored file as the snapshot had it: a restarted node
/// appends to its metadata log at start (as Kafka does), after the
/// snapshot's `size` bytes, so only those count there.
fn restored_sha256(p: &Path, rel: &str, size: u64) -> String {
    let bytes = fs::read(p).unwrap();
    if rel.starts_with("__cluster_metadata-0/") && rel.ends_with(".log") {
        assert!(bytes.len() as u64 >= size, "{}", p.display());
        return hex::encode(Sha256::digest(&bytes[..size as usize]));
    }
    hex::encode(Sha256::digest(&bytes))
}

#[test]
fn a_rolling_cycle_then_a_restore_of_broker_2() {
    let f = Fleet::new();
    let observer = observe(&f.cluster);

    f.coord.cli_ok(&["run-now"], 0);
    let st = f.wait_cycle_end(Duration::from_secs(240));
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    let snaps: Vec<Value> =
        serde_json::from_str(&f.coord.cli_ok(&["snapshots", "--json"], 0)).unwrap();
    assert_eq!(snaps.len(), 3, "{snaps:#?}");
    let brokers: Vec<i64> = snaps
        .iter()
        .map(|s| s["broker"].as_i64().unwrap())
        .collect();
    assert_eq!(brokers, vec![1, 2, 3]);
    for s in &snaps {
        assert_eq!(s["capture"], "reflink");
        assert!(s["downtime_ms"].as_i64().unwrap() > 0);
    }
    // The coordinator reads every new snapshot back.
    f.wait_all_verified(Duration::from_secs(60));
    let table = f.coord.cli_ok(&["status"], 0);
    assert!(
        table.contains("lease:    free") && table.contains("NODE") && table.contains("ROLE"),
        "{table}"
    );

    // Broker 2's disks "die": its process goes, its log dirs are emptied.
    let snap2 = snaps.iter().find(|s| s["broker"] == 2).unwrap();
    let id2 = snap2["snapshot_id"].as_str().unwrap().to_string();
    f.cluster.kill(2).unwrap();
    let dirs = f.cluster.log_dirs(2).to_vec();
    for d in &dirs {
        fs::remove_dir_all(d).unwrap();
        fs::create_dir_all(d).unwrap();
        fs::write(d.join("left-by-the-operator"), "wiped").unwrap();
    }
    let out = f.coord.cli_ok(&["restore", "--broker", "2", "--yes"], 0);
    assert!(
        out.contains(&format!("from snapshot {id2}")) && out.contains("done"),
        "{out}"
    );
    assert!(f.cluster.is_running(2));
    f.cluster
        .wait_in_sync(Duration::from_secs(60))
        .expect("broker 2 back in every ISR");

    // Every file of the snapshot is back byte for byte, and what was there
    // is moved aside, not deleted.
    let manifest: Value = serde_json::from_slice(
        &fs::read(
            Path::new(f.store_url.strip_prefix("file://").unwrap())
                .join(f.cluster.cluster_id())
                .join("broker-2")
                .join(&id2)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for e in manifest["entries"].as_array().unwrap() {
        if e["type"] != "file" {
            continue;
        }
        let (prefix, rel) = e["path"].as_str().unwrap().split_once('/').unwrap();
        if rel == ".kafka_cleanshutdown" {
            continue;
        }
        let i: usize = prefix.strip_prefix("logdir-").unwrap().parse().unwrap();
        assert_eq!(
            restored_sha256(&dirs[i].join(rel), rel, e["size"].as_u64().unwrap()),
            e["sha256"].as_str().unwrap(),
            "{rel}"
        );
        checked += 1;
    }
    assert!(checked > 10, "only {checked} files compared");
    for d in &dirs {
        let parent = d.parent().unwrap();
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let aside: Vec<PathBuf> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.pre-restore-"))
            })
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            fs::read_to_string(aside[0].join("left-by-the-operator")).unwrap(),
            "wiped"
        );
    }

    let seen = observer.finish();
    let (under, missing) = (seen.under_min_isr, seen.max_missing);
    assert!(
        under.is_empty(),
        "partitions under min ISR during the cycle: {under:?}"
    );
    // The restore itself was of a broker already down: at most one missing.
    assert!(missing <= 1, "{missing} brokers were missing at once");
    assert!(f.cluster.max_brokers_down().unwrap() <= 1);
    let _ = &f.root;
}

#[test]
fn the_coordinator_killed_mid_cycle_resumes_it() {
    // Restarted brokers take 4 s to catch up: time to kill the coordinator
    // while a lease is at work.
    let mut f = Fleet::with(|spec| spec.scenario.catch_up_delay_ms = 4000);
    let observer = observe(&f.cluster);
    f.coord.cli_ok(&["run-now"], 0);
    // Kill it while some broker holds the lease and works under it.
    f.wait_status("a lease at work", Duration::from_secs(60), |st| {
        st["lease"]["state"] == "active" && st["lease"]["phase"].is_string()
    });
    f.coord.kill();
    std::thread::sleep(Duration::from_secs(2));
    f.coord.start();
    let st = f.wait_cycle_end(Duration::from_secs(240));
    let snaps: Vec<Value> =
        serde_json::from_str(&f.coord.cli_ok(&["snapshots", "--json"], 0)).unwrap();
    // Either broker 1's attempt survived or it was retried at the end; the
    // cycle ends with every broker snapshotted.
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    assert_eq!(snaps.len(), 3, "{snaps:#?}");
    let seen = observer.finish();
    let (under, missing) = (seen.under_min_isr, seen.max_missing);
    assert!(under.is_empty(), "{under:?}");
    assert!(missing <= 1);
    assert!(f.cluster.max_brokers_down().unwrap() <= 1);
    for n in 1..=3 {
        assert!(f.cluster.is_running(n), "broker {n} is not running");
    }
}

/// A rolling cycle of every broker is recorded as a snapshot set: listed
/// by `snapshots --sets` with each broker's snapshot, complete and (once
/// the coordinator has read every snapshot back) verified, and written to
/// cold storage beside the snapshots, where `catalog rebuild` finds it.
#[test]
fn a_cycle_of_every_broker_is_listed_as_a_snapshot_set() {
    let f = Fleet::new();
    f.coord.cli_ok(&["run-now"], 0);
    let st = f.wait_cycle_end(Duration::from_secs(240));
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    f.wait_all_verified(Duration::from_secs(60));
    let snaps = f.snapshots();
    let sets_json = || -> Vec<Value> {
        serde_json::from_str(&f.coord.cli_ok(&["snapshots", "--sets", "--json"], 0)).unwrap()
    };
    // The record is written by a background job once the cycle ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sets = loop {
        let sets = sets_json();
        if sets.len() == 1 && sets[0]["stored"] == true && sets[0]["verified"] == true {
            break sets;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sets:#?}\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let set = &sets[0];
    assert_eq!(set["cycle_id"], st["cycle"]["id"]);
    assert_eq!(set["cluster_id"], f.cluster.cluster_id());
    assert_eq!(set["complete"], true);
    assert_eq!(set["kept"], true, "the newest complete verified set");
    assert_eq!(set["source"], "cycle");
    assert!(set["started_at"].is_string() && set["finished_at"].is_string());
    let nodes: Vec<(i64, String, String)> = set["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_i64().unwrap(),
                n["snapshot_id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(i64, String, String)> = snaps
        .iter()
        .map(|s| {
            (
                s["broker"].as_i64().unwrap(),
                s["snapshot_id"].as_str().unwrap().to_string(),
                "verified".to_string(),
            )
        })
        .collect();
    assert_eq!(nodes, want);
    let set_id = set["set_id"].as_str().unwrap();

    let table = f.coord.cli_ok(&["snapshots", "--sets"], 0);
    assert!(
        table.contains(&format!("set {set_id} (cycle {})", st["cycle"]["id"]))
            && table.contains("complete, verified, kept by retention"),
        "{table}"
    );
    for (_, id, _) in &want {
        assert!(table.contains(id.as_str()), "{table}");
    }

    // The record beside the snapshots, intact and naming the same ones.
    let key = Path::new(f.store_url.strip_prefix("file://").unwrap())
        .join(f.cluster.cluster_id())
        .join("sets")
        .join(format!("{set_id}.json"));
    let record =
        kafka_snapshot_model::sets::SetRecord::from_bytes(&fs::read(&key).unwrap()).unwrap();
    assert!(record.complete);
    let named: Vec<(i64, String)> = record
        .nodes
        .iter()
        .map(|n| (n.node as i64, n.snapshot_id.clone().unwrap()))
        .collect();
    let want: Vec<(i64, String)> = want.into_iter().map(|(b, id, _)| (b, id)).collect();
    assert_eq!(named, want);

    let out = f.coord.cli_ok(&["catalog", "rebuild"], 0);
    assert!(out.contains("snapshot sets read back: 1"), "{out}");
    let sets = sets_json();
    assert_eq!(sets.len(), 1, "{sets:#?}");
    assert_eq!(sets[0]["set_id"], set_id);

    let out = f.coord.cli(&["snapshots", "--sets", "--broker", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let _ = &f.root;
}
