//! The break-glass CLI as an operator meets it: exit codes, config
//! validation, and crash safety of `archive create`.

use crate::common::*;
use std::fs;
use std::process::Stdio;

#[test]
fn validate_names_file_and_key() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good.toml");
    fs::write(
        &good,
        "[broker]\nlog_dirs = [\"/data/kafka-logs\"]\n[storage]\nurl = \"file:///mnt/snap\"\n",
    )
    .unwrap();
    run(&["validate", "--config", &good.display().to_string()], 0);

    let bad = t.path().join("bad.toml");
    fs::write(&bad, "[broker]\nlog_dirs = [\"/data/kafka-logs\"]\n[snapshot]\nzstd_levle = 3\n[storage]\nurl = \"file:///x\"\n")
        .unwrap();
    let out = run(&["validate", "--config", &bad.display().to_string()], 2);
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml") && err.contains("zstd_levle"),
        "{err}"
    );

    let wrong_type = t.path().join("type.toml");
    fs::write(&wrong_type, "[broker]\nlog_dirs = [\"/d\"]\n[snapshot]\nzstd_level = \"high\"\n[storage]\nurl = \"file:///x\"\n")
        .unwrap();
    let out = run(
        &["validate", "--config", &wrong_type.display().to_string()],
        2,
    );
    assert!(stderr(&out).contains("zstd_level"), "{}", stderr(&out));

    let out = run(&["validate", "--config", "/nonexistent/agent.toml"], 2);
    assert!(
        stderr(&out).contains("/nonexistent/agent.toml"),
        "{}",
        stderr(&out)
    );

    // The shipped example is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/agent.example.toml");
    let text = fs::read_to_string(example).unwrap();
    assert!(text.contains("server_properties"));
}

/// Every kind of bad config: `validate` exits 2 and names the file and the
/// key (or section) at fault.
#[test]
fn validate_refuses_every_bad_config_naming_file_and_key() {
    let base =
        "[broker]\nlog_dirs = [\"/data/kafka-logs\"]\n[storage]\nurl = \"file:///mnt/snap\"\n";
    let with = |section: &str, lines: &str| -> String {
        if base.contains(&format!("[{section}]\n")) {
            base.replace(
                &format!("[{section}]\n"),
                &format!("[{section}]\n{lines}\n"),
            )
        } else {
            format!("{base}[{section}]\n{lines}\n")
        }
    };
    let coordinator =
        "url = \"http://c:9640\"\ntoken_file = \"/etc/t\"\nstate_file = \"/var/lib/a/state.json\"";
    let s3 = "[storage.s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"r\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"";
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown section", format!("{base}[brokers]\nx = 1\n"), "brokers"),
        ("unknown key", with("snapshot", "zstd_levle = 3"), "zstd_levle"),
        ("unknown key in [broker]", with("broker", "stop_cmd = \"x\""), "stop_cmd"),
        ("wrong type (string for a number)", with("snapshot", "zstd_level = \"high\""), "zstd_level"),
        ("wrong type (number for a list)", base.replace("log_dirs = [\"/data/kafka-logs\"]", "log_dirs = 3"), "log_dirs"),
        ("unparsable duration", with("broker", "stop_timeout = \"thirty\""), "stop_timeout"),
        ("missing [storage]", "[broker]\nlog_dirs = [\"/d\"]\n".into(), "storage"),
        ("missing storage.url", "[broker]\nlog_dirs = [\"/d\"]\n[storage]\nbandwidth_limit = \"1MiB\"\n".into(), "url"),
        ("no log dirs at all", "[broker]\n[storage]\nurl = \"file:///x\"\n".into(), "broker.log_dirs"),
        ("out of range", with("snapshot", "zstd_level = 30"), "snapshot.zstd_level"),
        ("unknown store scheme", base.replace("file:///mnt/snap", "ftp://host/x"), "storage.url"),
        ("recovery timeout shorter than the check interval", format!("{}[gate]\ncheck_interval = \"10s\"\n", with("broker", "recovery_timeout = \"5s\"")), "broker.recovery_timeout"),
        ("S3 deadline shorter than a request", format!("{}{s3}\nrequest_timeout = \"60s\"\ndeadline = \"30s\"\n", base.replace("file:///mnt/snap", "s3://kafka-snapshots/prod")), "storage.s3.deadline"),
        ("metrics on a public address", with("metrics", "listen = \"0.0.0.0:9641\""), "metrics.listen"),
        ("ca_file without https", with("coordinator", &format!("{coordinator}\nca_file = \"/etc/ca.pem\"")), "coordinator.ca_file"),
        ("relative state file", with("coordinator", &coordinator.replace("/var/lib/a/state.json", "state.json")), "coordinator.state_file"),
        ("Kerberos", with("kafka", "bootstrap_servers = [\"k:9092\"]\nsecurity_protocol = \"SASL_PLAINTEXT\"\nsasl_mechanism = \"GSSAPI\""), "sasl_mechanism"),
    ];
    let t = tempfile::tempdir().unwrap();
    for (i, (what, text, key)) in cases.iter().enumerate() {
        let path = t.path().join(format!("bad-{i}.toml"));
        fs::write(&path, text).unwrap();
        let out = run(&["validate", "--config", &path.display().to_string()], 2);
        let err = stderr(&out);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(key),
            "{what}: validate must name {} and {key:?}: {err}",
            path.display()
        );
        kafka_snapshot_testkit::report::record(
            "configs",
            &format!("agent: {what}"),
            &[("inputs", 1)],
        );
    }

    // Three independent mistakes: one run names all three.
    let path = t.path().join("three.toml");
    fs::write(
        &path,
        format!(
            "{}[metrics]\nlisten = \"0.0.0.0:9641\"\n",
            with("snapshot", "zstd_level = 30").replace("file:///mnt/snap", "ftp://host/x")
        ),
    )
    .unwrap();
    let err = stderr(&run(
        &["validate", "--config", &path.display().to_string()],
        2,
    ));
    assert!(
        err.contains(&format!("{}: 3 problems:", path.display())),
        "{err}"
    );
    for key in ["snapshot.zstd_level", "storage.url", "metrics.listen"] {
        assert!(err.contains(&format!("  - {key}: ")), "{key}: {err}");
    }
    kafka_snapshot_testkit::report::record(
        "configs",
        "agent: three problems at once",
        &[("inputs", 1)],
    );
}

#[test]
fn usage_errors_exit_2() {
    run(&["archive", "create"], 2);
    run(&["archive", "verify", "--store", "file:///tmp"], 2);
    run(&["archive", "list", "--store", "ftp://host/x"], 2);
    run(
        &[
            "archive",
            "create",
            "--log-dirs",
            "/a",
            "--store",
            "/tmp",
            "--zstd-level",
            "40",
        ],
        2,
    );
}

#[test]
fn crash_between_archive_and_manifest_leaves_nothing_complete() {
    let t = scratch("xfs");
    let dirs = small_broker(t.path(), 7);
    let store = new_store(t.path());
    let d = dirs_arg(&dirs);
    let url = store_url(&store);

    for point in ["before-manifest", "before-archive-finish"] {
        let status = agent()
            .args([
                "archive",
                "create",
                "--log-dirs",
                &d,
                "--store",
                &url,
                "--capture",
                "reflink",
            ])
            .env("KAFKA_SNAPSHOT_FAILPOINT", point)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "the failpoint {point} must crash the run"
        );
        let out = run(&["archive", "list", "--store", &url, "--json"], 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = v.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{v}");
        assert_eq!(
            listed[0]["complete"], false,
            "crash at {point} left a complete snapshot: {v}"
        );
        let id = listed[0]["snapshot_id"].as_str().unwrap().to_string();
        let out = run(
            &["archive", "verify", "--store", &url, "--snapshot", &id],
            1,
        );
        assert!(stderr(&out).contains("incomplete"), "{}", stderr(&out));
        // The crashed run's clones are still on disk ...
        let staging = t.path().join("data/disk1/.kafka-snapshot-staging");
        assert!(
            names(&staging).iter().any(|n| n == &id),
            "{:?}",
            names(&staging)
        );

        // ... until the next run, which removes them and the partial
        // objects, and succeeds.
        let created = create(&dirs, &store, "reflink");
        let new_id = created["snapshot_id"].as_str().unwrap();
        assert_eq!(names(&staging), vec![".lock"]);
        let out = run(&["archive", "list", "--store", &url, "--json"], 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = v.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{v}");
        assert_eq!(listed[0]["snapshot_id"], new_id);
        assert_eq!(listed[0]["complete"], true);
        run(
            &["archive", "verify", "--store", &url, "--snapshot", new_id],
            0,
        );
        // Start the next round from an empty store.
        fs::remove_dir_all(&store).unwrap();
        fs::create_dir(&store).unwrap();
    }
}

#[test]
fn list_filters_by_broker() {
    let t = scratch("ext4");
    let store = new_store(t.path());
    for node in [1, 2] {
        let dirs = small_broker(&t.path().join(format!("b{node}")), node);
        create(&dirs, &store, "copy");
    }
    let url = store_url(&store);
    let out = run(
        &[
            "archive", "list", "--store", &url, "--broker", "2", "--json",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["broker"], 2);
    let out = run(&["archive", "list", "--store", &url], 0);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
}
