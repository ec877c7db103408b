//! Create -> verify -> extract on real filesystems, and what capture must
//! refuse or skip.

use crate::common::*;
use kafka_snapshot_testkit::Spec;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

fn big_spec(dirs: Vec<PathBuf>) -> Spec {
    let mut spec = Spec::small(CLUSTER, 1, dirs);
    // Thousands of small files: 240 x 5 partition dirs of 4+ files each.
    spec.topics = 240;
    spec.partitions_per_topic = 5;
    spec.total_bytes = 48 << 20;
    spec.segment_bytes = 4 << 20;
    // One file over 1 GiB, sparse on disk.
    spec.big_sparse_file_bytes = Some((1 << 30) + 12345);
    spec.with_delete_dir = true;
    spec
}

#[test]
fn reflink_round_trip_on_xfs_is_byte_identical() {
    let t = scratch("xfs");
    let dirs = vec![
        t.path().join("data/disk1/kafka-logs"),
        t.path().join("data/disk2/kafka-logs"),
    ];
    generate_spec(&big_spec(dirs.clone()));
    let store = new_store(t.path());

    let created = create(&dirs, &store, "auto");
    assert_eq!(
        created["capture"], "reflink",
        "auto must pick reflink on XFS: {created}"
    );
    let id = created["snapshot_id"].as_str().unwrap();

    // Staging is gone once the snapshot is committed.
    let staging = t.path().join("data/disk1/.kafka-snapshot-staging");
    assert_eq!(names(&staging), vec![".lock"], "staging left behind");

    let url = store_url(&store);
    run(&["archive", "verify", "--store", &url, "--snapshot", id], 0);
    let targets = [t.path().join("restore/a"), t.path().join("restore/b")];
    let (a, b) = (
        targets[0].display().to_string(),
        targets[1].display().to_string(),
    );
    run(
        &[
            "archive",
            "extract",
            "--store",
            &url,
            "--snapshot",
            id,
            "--into",
            &a,
            &b,
        ],
        0,
    );
    for (orig, restored) in dirs.iter().zip(&targets) {
        assert_same_tree(orig, restored, NOT_ARCHIVED);
        assert!(!restored.join(".lock").exists());
    }
    // The manifest records what was captured.
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(snapshot_dir(&store, 1, id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["capture"]["used"], "reflink");
    assert_eq!(m["capture"]["requested"], "auto");
    assert_eq!(m["node_id"], 1);
    assert_eq!(m["log_dirs"][0]["path"], dirs[0].display().to_string());
    assert!(m["log_dirs"][0]["directory_id"].is_string());
    assert!(m["log_dirs"][0]["is_metadata_dir"].as_bool().unwrap());
    assert!(m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| !e["path"].as_str().unwrap().ends_with("-delete")));
    // Segments Kafka was deleting are left out too; the generator wrote some.
    let deleted = tree(&dirs[0], &[])
        .into_keys()
        .chain(tree(&dirs[1], &[]).into_keys())
        .filter(|p| p.to_string_lossy().ends_with(".deleted"))
        .count();
    assert!(deleted >= 3, "no *.deleted files to leave out");
    assert!(m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| !e["path"].as_str().unwrap().ends_with(".deleted")));
    assert!(m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["size"].as_u64().unwrap() > 1 << 30));
}

#[test]
fn copy_round_trip_on_ext4_and_auto_falls_back_to_copy() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 3);
    let store = new_store(t.path());
    let created = create(&dirs, &store, "auto");
    assert_eq!(
        created["capture"], "copy",
        "auto must fall back to copy on ext4: {created}"
    );
    assert!(created["capture_reason"]
        .as_str()
        .unwrap()
        .contains("does not support reflink"));
    let id = created["snapshot_id"].as_str().unwrap();
    let url = store_url(&store);
    run(&["archive", "verify", "--store", &url, "--snapshot", id], 0);

    // Restore over the original dirs: they are moved aside, not deleted.
    let before: Vec<_> = dirs.iter().map(|d| tree(d, NOT_ARCHIVED)).collect();
    fs::write(dirs[0].join("orders-0/stray-file"), b"operator data").unwrap();
    // --original-paths restores only into the log dirs the node's own
    // server.properties names.
    let props = t.path().join("server.properties");
    fs::write(&props, format!("log.dirs={}\n", dirs_arg(&dirs))).unwrap();
    run(
        &[
            "archive",
            "extract",
            "--store",
            &url,
            "--snapshot",
            id,
            "--original-paths",
            "--server-properties",
            &props.display().to_string(),
        ],
        0,
    );
    for (d, want) in dirs.iter().zip(&before) {
        assert_eq!(&tree(d, &[]), want, "{} not restored exactly", d.display());
    }
    let parent = dirs[0].parent().unwrap();
    let aside: Vec<_> = names(parent)
        .into_iter()
        .filter(|n| n.starts_with("kafka-logs.pre-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", names(parent));
    assert_eq!(
        fs::read(parent.join(&aside[0]).join("orders-0/stray-file")).unwrap(),
        b"operator data"
    );
}

#[test]
fn forced_reflink_on_ext4_fails_with_reason() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 3);
    let store = new_store(t.path());
    let d = dirs_arg(&dirs);
    let out = run(
        &[
            "archive",
            "create",
            "--log-dirs",
            &d,
            "--store",
            &store_url(&store),
            "--capture",
            "reflink",
        ],
        1,
    );
    assert!(stderr(&out).contains("reflink"), "{}", stderr(&out));
    assert!(names(&store).is_empty(), "nothing may be stored");
}

#[test]
fn copy_capture_on_xfs_when_asked() {
    let t = scratch("xfs");
    let dirs = small_broker(t.path(), 4);
    let store = new_store(t.path());
    let created = create(&dirs, &store, "copy");
    assert_eq!(created["capture"], "copy");
}

#[test]
fn future_dir_refuses_capture() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    fs::create_dir(dirs[1].join("orders-3.0123456789abcdef0123456789abcdef-future")).unwrap();
    let store = new_store(t.path());
    let d = dirs_arg(&dirs);
    let out = run(
        &[
            "archive",
            "create",
            "--log-dirs",
            &d,
            "--store",
            &store_url(&store),
        ],
        1,
    );
    let err = stderr(&out);
    assert!(
        err.contains("-future") && err.contains("intra-broker"),
        "{err}"
    );
}

#[test]
fn running_broker_and_unclean_stop_are_refused() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    let store = new_store(t.path());
    let d = dirs_arg(&dirs);
    let url = store_url(&store);

    // A "broker" holding the .lock of the second dir as the JVM does: a
    // POSIX record lock, held by another process.
    let mut holder = hold_kafka_lock(&dirs[1]);
    let out = run(&["archive", "create", "--log-dirs", &d, "--store", &url], 1);
    assert!(
        stderr(&out).contains("stop the broker first"),
        "{}",
        stderr(&out)
    );
    holder.kill().unwrap();
    holder.wait().unwrap();

    fs::remove_file(dirs[0].join(".kafka_cleanshutdown")).unwrap();
    let out = run(&["archive", "create", "--log-dirs", &d, "--store", &url], 1);
    assert!(
        stderr(&out).contains("did not stop cleanly"),
        "{}",
        stderr(&out)
    );
    assert!(names(&store).is_empty());
    let out = run(
        &[
            "archive",
            "create",
            "--log-dirs",
            &d,
            "--store",
            &url,
            "--allow-unclean",
            "--json",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean_shutdown"], false);
}

#[test]
fn log_dirs_from_server_properties() {
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 2);
    let props = t.path().join("server.properties");
    fs::write(
        &props,
        format!(
            "process.roles=broker\nnode.id=2\nlog.dirs={}\n",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .unwrap();
    let store = new_store(t.path());
    let out = run(
        &[
            "archive",
            "create",
            "--server-properties",
            &props.display().to_string(),
            "--store",
            &store_url(&store),
            "--json",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["broker"], 2);
}

/// The agent's unit runs it as `kafka-snapshot` with CAP_CHOWN, CAP_FOWNER,
/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH as ambient capabilities: a
/// restore run so must give every file back its recorded owner, or Kafka
/// (another user) cannot write its own log dirs. Regression: owners were
/// restored only when running as root.
#[test]
fn extract_as_the_service_user_with_its_capabilities_restores_owners() {
    let t = scratch("xfs");
    let dirs = small_broker(t.path(), 1);
    for d in &dirs {
        let st = Command::new("chown")
            .args(["-R", "4242:4343"])
            .arg(d)
            .status()
            .unwrap();
        assert!(st.success(), "chown {}", d.display());
    }
    let store = new_store(t.path());
    let created = create(&dirs, &store, "copy");
    let id = created["snapshot_id"].as_str().unwrap();
    let targets = [t.path().join("restore/a"), t.path().join("restore/b")];
    fs::create_dir_all(t.path().join("restore")).unwrap();
    let caps = "+chown,+fowner,+dac_override,+dac_read_search";
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
    ])
    .arg(env!("CARGO_BIN_EXE_kafka-snapshot-agent"))
    .env("KAFKA_SNAPSHOT_LOG", "warn");
    let (a, b) = (
        targets[0].display().to_string(),
        targets[1].display().to_string(),
    );
    let url = store_url(&store);
    run_with(
        cmd,
        &[
            "archive",
            "extract",
            "--store",
            &url,
            "--snapshot",
            id,
            "--into",
            &a,
            &b,
        ],
        0,
    );
    for (orig, restored) in dirs.iter().zip(&targets) {
        // Owners, modes, mtimes and content as captured.
        assert_same_tree(orig, restored, NOT_ARCHIVED);
    }
}

/// The coordinator (another user, in the store's group) must read what the
/// agents write to verify it and delete it to prune. Regression: under the
/// agent unit's umask the file store wrote 0750 directories and 0640 files
/// of the agent's own group, which the coordinator could not read or
/// delete, and retried verifying every 10 s forever.
#[test]
fn a_file_store_is_shared_through_its_group_whatever_the_umask() {
    let t = scratch("xfs");
    let dirs = small_broker(t.path(), 1);
    let store = new_store(t.path());
    // What the deployment makes: root:<snapshot group> 2770.
    let st = Command::new("chown")
        .arg("0:4343")
        .arg(&store)
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(&store, fs::Permissions::from_mode(0o2770)).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 0077; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_kafka-snapshot-agent"))
        .env("KAFKA_SNAPSHOT_LOG", "warn");
    let url = store_url(&store);
    let out = run_with(
        cmd,
        &[
            "archive",
            "create",
            "--log-dirs",
            &dirs_arg(&dirs),
            "--store",
            &url,
            "--capture",
            "copy",
            "--json",
        ],
        0,
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["snapshot_id"].as_str().unwrap();
    let snap = snapshot_dir(&store, 1, id);
    let mut d = snap.clone();
    while d != store {
        let md = fs::metadata(&d).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o2770, "{}", d.display());
        assert_eq!(md.gid(), 4343, "{}", d.display());
        d = d.parent().unwrap().to_path_buf();
    }
    for f in fs::read_dir(&snap).unwrap() {
        let md = f.unwrap().metadata().unwrap();
        // Committed: read-only, for the group too.
        assert_eq!(md.permissions().mode() & 0o777, 0o440);
        assert_eq!(md.gid(), 4343);
    }
    // Another user in the group, with no capabilities, reads it back and
    // deletes it.
    let as_coordinator = |program: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--groups=4343"])
            .arg(program)
            .env("KAFKA_SNAPSHOT_LOG", "warn");
        c
    };
    // That user may not be able to reach the build's binary (a checkout
    // under /root): it runs a copy beside the store.
    let agent = t.path().join("agent");
    fs::copy(env!("CARGO_BIN_EXE_kafka-snapshot-agent"), &agent).unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    run_with(
        as_coordinator(&agent.display().to_string()),
        &["archive", "verify", "--store", &url, "--snapshot", id],
        0,
    );
    run_with(
        as_coordinator("rm"),
        &["-r", &snap.display().to_string()],
        0,
    );
    assert!(!snap.exists());
}
