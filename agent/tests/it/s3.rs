//! The `s3://` backend against a real S3-compatible server: Garage, started
//! by `tests/run.sh` (tests/lib/garage.sh), which exports its endpoint, a
//! bucket and a key. Tests that stop the server take it exclusively.

use crate::common::*;
use kafka_snapshot::catalog;
use kafka_snapshot::storage::S3Section;
use kafka_snapshot::storage::{self, ColdStore, StoreOptions};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Shared by tests that use the server, exclusive for those that stop it.
static SERVER: RwLock<()> = RwLock::new(());

fn shared_server() -> RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_server() -> RwLockWriteGuard<'static, ()> {
    SERVER.write().unwrap_or_else(|e| e.into_inner())
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests through tests/run.sh, which starts a Garage \
             S3 server (tests/lib/garage.sh)"
        )
    })
}

/// The test server and a key allowed on its bucket.
struct S3 {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

fn s3() -> S3 {
    S3 {
        endpoint: var("KSNAP_TEST_S3_ENDPOINT"),
        region: var("KSNAP_TEST_S3_REGION"),
        bucket: var("KSNAP_TEST_S3_BUCKET"),
        key_id: var("KSNAP_TEST_S3_KEY_ID"),
        secret: var("KSNAP_TEST_S3_SECRET"),
    }
}

impl S3 {
    /// A store URL under a prefix no other test uses.
    fn url(&self, name: &str) -> String {
        let mut rnd = [0u8; 4];
        getrandom::fill(&mut rnd).unwrap();
        format!("s3://{}/tests/{name}-{}", self.bucket, hex::encode(rnd))
    }

    /// The agent, with S3 settings in the standard AWS variables only.
    fn agent(&self) -> Command {
        let mut c = agent();
        for v in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL_S3",
            "AWS_DEFAULT_REGION",
        ] {
            c.env_remove(v);
        }
        c.env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", &self.region)
            .env("HOME", "/nonexistent");
        c
    }

    /// An agent config for `dirs` with `[storage.s3]` holding the settings,
    /// plus `extra` lines in that section.
    fn config(
        &self,
        dir: &Path,
        url: &str,
        dirs: &[PathBuf],
        storage_extra: &str,
        s3_extra: &str,
    ) -> PathBuf {
        let dirs: Vec<String> = dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        let text = format!(
            "[broker]\nlog_dirs = [{}]\n\n[storage]\nurl = {url:?}\n{storage_extra}\n\n[storage.s3]\n\
             endpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n{s3_extra}\n",
            dirs.join(", "),
            self.endpoint,
            self.region,
            self.key_id,
            self.secret
        );
        let mut rnd = [0u8; 4];
        getrandom::fill(&mut rnd).unwrap();
        let path = dir.join(format!("agent-{}.toml", hex::encode(rnd)));
        fs::write(&path, text).unwrap();
        path
    }

    /// The store, opened by the library, to look at what is on the server.
    fn store(&self, url: &str) -> Box<dyn ColdStore> {
        let opts = StoreOptions {
            bandwidth_limit: None,
            s3: Some(S3Section {
                endpoint: Some(self.endpoint.clone()),
                region: Some(self.region.clone()),
                access_key_id: Some(self.key_id.clone()),
                secret_access_key: Some(self.secret.clone()),
                ..S3Section::default()
            }),
        };
        storage::open(url, &opts).expect("open the test store")
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Every key under the store (relative to its prefix).
fn keys(store: &dyn ColdStore) -> BTreeSet<String> {
    store.list("").unwrap().into_iter().map(|o| o.key).collect()
}

/// A small broker plus `big` bytes of incompressible data, so that its
/// archive spans several 5 MiB parts.
fn broker_with_bulk(root: &Path, node: i32, big: usize) -> Vec<PathBuf> {
    let dirs = small_broker(root, node);
    if big > 0 {
        write_incompressible(
            &dirs[1].join("bulk-0/00000000000000000000.log"),
            big,
            node as u64 + 7,
        );
    }
    dirs
}

#[test]
fn round_trip_through_s3_is_byte_identical_and_keeps_secrets_out_of_output() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = small_broker(t.path(), 1);
    let url = s3.url("roundtrip");
    let d = dirs_arg(&dirs);
    let mut outputs = Vec::new();

    // Settings from the AWS environment variables only, debug logging on.
    let debug = || {
        let mut c = s3.agent();
        c.env("KAFKA_SNAPSHOT_LOG", "debug");
        c
    };
    let out = run_with(
        debug(),
        &[
            "archive",
            "create",
            "--log-dirs",
            &d,
            "--store",
            &url,
            "--capture",
            "copy",
            "--json",
        ],
        0,
    );
    let created = json(&out);
    let id = created["snapshot_id"].as_str().unwrap().to_string();
    outputs.push(out);

    let out = run_with(debug(), &["archive", "list", "--store", &url, "--json"], 0);
    let listed = json(&out);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["snapshot_id"], id);
    assert_eq!(listed[0]["complete"], true);
    assert_eq!(listed[0]["archive_sha256"], created["archive_sha256"]);
    outputs.push(out);

    let out = run_with(
        debug(),
        &[
            "archive",
            "verify",
            "--store",
            &url,
            "--snapshot",
            &id,
            "--json",
        ],
        0,
    );
    assert_eq!(json(&out)["archive_sha256"], created["archive_sha256"]);
    outputs.push(out);

    let targets = [t.path().join("restore/a"), t.path().join("restore/b")];
    let (a, b) = (
        targets[0].display().to_string(),
        targets[1].display().to_string(),
    );
    outputs.push(run_with(
        debug(),
        &[
            "archive",
            "extract",
            "--store",
            &url,
            "--snapshot",
            &id,
            "--into",
            &a,
            &b,
        ],
        0,
    ));
    for (orig, restored) in dirs.iter().zip(&targets) {
        assert_same_tree(orig, restored, NOT_ARCHIVED);
    }

    // Exactly the archive and the manifest landed, and nothing is pending.
    let store = s3.store(&url);
    let prefix = format!("{CLUSTER}/broker-1/{id}");
    assert_eq!(
        keys(store.as_ref()),
        BTreeSet::from([
            format!("{prefix}/archive.tar.zst"),
            format!("{prefix}/manifest.json")
        ])
    );
    assert!(store.pending_uploads("").unwrap().is_empty());

    for o in &outputs {
        for text in [stdout(o), stderr(o)] {
            assert!(
                !text.contains(&s3.secret),
                "the secret access key appeared in the output:\n{text}"
            );
        }
    }
}

#[test]
fn archive_of_many_parts_with_bounded_memory() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 2, 160 << 20);
    let d = dirs_arg(&dirs);
    let measure = |args: &[&str]| {
        let mut c = s3.agent();
        c.args(args);
        run_measured(&c, 0)
    };
    // A snapshot of `mode` through S3 and the same through file://, for
    // the memory the rest of the pipeline (zstd above all) takes with this
    // data: S3 adds at most 3 parts of 5 MiB (2 uploading, 1 filling) or 3
    // ranges of 5 MiB (2 read ahead, 1 being read), plus the HTTP client,
    // whatever the size of the archive. Returns both `--json` reports and
    // the S3 store's URL.
    let both = |mode: &str| {
        let url = s3.url(&format!("multipart-{mode}"));
        let cfg = s3.config(
            t.path(),
            &url,
            &dirs,
            "",
            "part_size = \"5MiB\"\nparts_in_flight = 2\n",
        );
        let cfg = cfg.display().to_string();
        let root = t.path().join(mode);
        fs::create_dir(&root).unwrap();
        let file_store = store_url(&new_store(&root));
        let create = [
            "archive",
            "create",
            "--capture",
            "copy",
            "--mode",
            mode,
            "--json",
        ];
        let (out, file_create) =
            measure(&[&create[..], &["--log-dirs", &d, "--store", &file_store]].concat());
        let on_file = json(&out);
        let (out, s3_create) = measure(&[&create[..], &["--config", &cfg]].concat());
        let on_s3 = json(&out);
        let id = |v: &serde_json::Value| v["snapshot_id"].as_str().unwrap().to_string();
        let (_, file_verify) = measure(&[
            "archive",
            "verify",
            "--store",
            &file_store,
            "--snapshot",
            &id(&on_file),
        ]);
        let (_, s3_verify) = measure(&[
            "archive",
            "verify",
            "--config",
            &cfg,
            "--snapshot",
            &id(&on_s3),
        ]);
        eprintln!(
            "{mode}, peak RSS KiB: create file:// {file_create}, s3:// {s3_create}; \
             verify file:// {file_verify}, s3:// {s3_verify}"
        );
        let allowance = (3 * 5 + 12) << 10;
        assert!(
            s3_create < file_create + allowance,
            "{mode} create: s3:// {s3_create} KiB, file:// {file_create} KiB"
        );
        assert!(
            s3_verify < file_verify + allowance,
            "{mode} verify: s3:// {s3_verify} KiB, file:// {file_verify} KiB"
        );
        (on_file, on_s3, url)
    };

    // A full snapshot: one archive of many parts (160 MiB).
    let (_, created, url) = both("full");
    let archive = created["archive_bytes"].as_u64().unwrap();
    assert!(
        archive > 30 * (5 << 20),
        "{archive} bytes is not many parts"
    );
    let store = s3.store(&url);
    let listed = catalog::list(store.as_ref(), None, None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].objects[0].size, archive);
    assert!(store.pending_uploads("").unwrap().is_empty());

    // The default, incremental: the bulk file as content objects of 4 MiB,
    // uploaded side by side.
    let (on_file, created, url) = both("incremental");
    let uploaded = created["objects"]["uploaded"].as_u64().unwrap();
    assert!(uploaded >= 40, "{created}");
    assert_eq!(uploaded, on_file["objects"]["uploaded"], "{created}");
    assert!(s3.store(&url).pending_uploads("").unwrap().is_empty());
}

#[test]
fn crash_mid_upload_leaves_nothing_complete_and_next_run_cleans_up() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 3, 24 << 20);
    let url = s3.url("crash");
    // Full snapshots: the bulk file goes into the archive's multipart
    // upload (an incremental one's objects are single PUTs).
    let cfg = s3.config(t.path(), &url, &dirs, "", "part_size = \"5MiB\"\n");
    let cfg = cfg.display().to_string();
    let store = s3.store(&url);

    // Killed with parts uploaded: an invisible, pending multipart upload.
    let status = s3
        .agent()
        .args([
            "archive",
            "create",
            "--config",
            &cfg,
            "--capture",
            "copy",
            "--mode",
            "full",
        ])
        .env("KAFKA_SNAPSHOT_FAILPOINT", "before-archive-finish")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    let pending = store.pending_uploads("").unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].key.ends_with("/archive.tar.zst"), "{pending:?}");
    assert!(catalog::list(store.as_ref(), None, None)
        .unwrap()
        .is_empty());

    // Killed after the archive, before the manifest: listed incomplete.
    let status = s3
        .agent()
        .args([
            "archive",
            "create",
            "--config",
            &cfg,
            "--capture",
            "copy",
            "--mode",
            "full",
        ])
        .env("KAFKA_SNAPSHOT_FAILPOINT", "before-manifest")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    let out = run_with(
        s3.agent(),
        &["archive", "list", "--config", &cfg, "--json"],
        0,
    );
    let v = json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["complete"], false, "{v}");

    // The next run removes both leftovers and succeeds.
    let out = run_with(
        s3.agent(),
        &[
            "archive",
            "create",
            "--config",
            &cfg,
            "--capture",
            "copy",
            "--mode",
            "full",
            "--json",
        ],
        0,
    );
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    assert!(store.pending_uploads("").unwrap().is_empty());
    let listed = catalog::list(store.as_ref(), None, None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].snap.snapshot_id, id);
    assert!(matches!(listed[0].status, catalog::Status::Complete(_)));
    run_with(
        s3.agent(),
        &["archive", "verify", "--config", &cfg, "--snapshot", &id],
        0,
    );
}

use kafka_snapshot_testkit::garage::{Garage, Restart};

/// Starts `archive create` of a full snapshot (the bulk file in the
/// archive's multipart upload) and kills the server once that upload is
/// under way; returns the running agent.
fn create_then_kill_server(
    s3: &S3,
    store: &dyn ColdStore,
    cfg: &str,
    restart: &mut Restart<'_>,
) -> std::process::Child {
    let child = s3
        .agent()
        .args([
            "archive",
            "create",
            "--config",
            cfg,
            "--capture",
            "copy",
            "--mode",
            "full",
            "--json",
        ])
        .env("KAFKA_SNAPSHOT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while store.pending_uploads("").unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the upload never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few parts in, well before the end.
    std::thread::sleep(Duration::from_millis(800));
    restart.garage.kill();
    restart.down = true;
    child
}

#[test]
fn server_killed_mid_upload_and_back_within_the_retries() {
    let _g = exclusive_server();
    let s3 = s3();
    let garage = Garage::from_env();
    let mut restart = Restart {
        garage: &garage,
        down: false,
    };
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 4, 64 << 20);
    let url = s3.url("flaky");
    // 16 MiB/s: the 64 MiB archive takes 4 s, time to pull the plug.
    let cfg = s3.config(
        t.path(),
        &url,
        &dirs,
        "bandwidth_limit = \"16MiB\"",
        "part_size = \"5MiB\"\nrequest_timeout = \"5s\"\nretries = 10\n",
    );
    let cfg = cfg.display().to_string();
    let store = s3.store(&url);

    let child = create_then_kill_server(&s3, store.as_ref(), &cfg, &mut restart);
    std::thread::sleep(Duration::from_secs(2));
    garage.start();
    restart.down = false;
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the upload must survive a short outage\n{}",
        stderr(&out)
    );
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    assert!(
        stderr(&out).contains("retrying") || stderr(&out).contains("backing off"),
        "{}",
        stderr(&out)
    );

    assert!(store.pending_uploads("").unwrap().is_empty());
    let listed = catalog::list(store.as_ref(), None, None).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].status, catalog::Status::Complete(_)));
    run_with(
        s3.agent(),
        &["archive", "verify", "--config", &cfg, "--snapshot", &id],
        0,
    );
}

#[test]
fn server_down_past_the_retries_fails_cleanly_and_next_run_succeeds() {
    let _g = exclusive_server();
    let s3 = s3();
    let garage = Garage::from_env();
    let mut restart = Restart {
        garage: &garage,
        down: false,
    };
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 5, 64 << 20);
    let url = s3.url("outage");
    let cfg = s3.config(
        t.path(),
        &url,
        &dirs,
        "bandwidth_limit = \"16MiB\"",
        "part_size = \"5MiB\"\nrequest_timeout = \"3s\"\nretries = 2\n",
    );
    let cfg_s = cfg.display().to_string();
    let store = s3.store(&url);

    let child = create_then_kill_server(&s3, store.as_ref(), &cfg_s, &mut restart);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let err = stderr(&out);
    eprintln!("the failed run said:\n{err}");
    assert!(
        err.contains("storage.s3.endpoint") && err.contains(&s3.endpoint),
        "the error must name the endpoint setting:\n{err}"
    );
    garage.start();
    restart.down = false;

    // Nothing complete; the upload the failed run could not abort is there ...
    assert!(catalog::list(store.as_ref(), None, None)
        .unwrap()
        .iter()
        .all(|l| !matches!(l.status, catalog::Status::Complete(_))));
    assert!(!store.pending_uploads("").unwrap().is_empty());

    // ... until the next run, which aborts it and succeeds.
    let out = run_with(
        s3.agent(),
        &[
            "archive",
            "create",
            "--config",
            &cfg_s,
            "--capture",
            "copy",
            "--json",
        ],
        0,
    );
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    assert!(store.pending_uploads("").unwrap().is_empty());
    let listed = catalog::list(store.as_ref(), None, None).unwrap();
    assert_eq!(
        listed.len(),
        1,
        "{:?}",
        listed.iter().map(|l| &l.snap).collect::<Vec<_>>()
    );
    assert_eq!(listed[0].snap.snapshot_id, id);
    run_with(
        s3.agent(),
        &["archive", "verify", "--config", &cfg_s, "--snapshot", &id],
        0,
    );
}

/// A TCP server that accepts and never answers.
fn silent_server() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    (l, addr)
}

#[test]
fn wrong_settings_fail_quickly_naming_the_setting() {
    let _g = shared_server();
    let s3 = s3();
    let url = s3.url("settings");
    let quick = |c: Command, args: &[&str]| {
        let start = Instant::now();
        let out = run_with(c, args, 1);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
        for text in [stdout(&out), stderr(&out)] {
            assert!(!text.contains(&s3.secret), "secret in output: {text}");
        }
        stderr(&out)
    };
    let list = ["archive", "list", "--store", url.as_str()];

    let mut c = s3.agent();
    c.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64));
    let err = quick(c, &list);
    assert!(
        err.contains("access denied") && err.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );

    let mut c = s3.agent();
    c.env("AWS_ACCESS_KEY_ID", "GK000000000000000000000000");
    let err = quick(c, &list);
    assert!(err.contains("access denied"), "{err}");

    let missing = format!("s3://no-such-bucket-{}/x", std::process::id());
    let err = quick(s3.agent(), &["archive", "list", "--store", &missing]);
    assert!(
        err.contains("no-such-bucket") && err.contains("does not exist"),
        "{err}"
    );

    let mut c = s3.agent();
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:1");
    let err = quick(c, &list);
    assert!(
        err.contains("AWS_ENDPOINT_URL") && err.contains("cannot connect"),
        "{err}"
    );

    // A config names its own keys; a server that never answers times out.
    let t = tempfile::tempdir().unwrap();
    let (_listener, silent) = silent_server();
    let cfg = s3.config(
        t.path(),
        &url,
        &[PathBuf::from("/d")],
        "",
        "request_timeout = \"2s\"\n",
    );
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace(&s3.endpoint, &silent);
    fs::write(&cfg, text).unwrap();
    let cfg_s = cfg.display().to_string();
    let err = quick(s3.agent(), &["archive", "list", "--config", &cfg_s]);
    assert!(
        err.contains("storage.s3.request_timeout") && err.contains(&silent),
        "{err}"
    );
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace(&silent, "http://127.0.0.1:1");
    fs::write(&cfg, text).unwrap();
    let err = quick(s3.agent(), &["archive", "list", "--config", &cfg_s]);
    assert!(
        err.contains("storage.s3.endpoint") && err.contains("http://127.0.0.1:1"),
        "{err}"
    );

    // Missing credentials altogether: a usage error saying where to put them.
    let mut c = s3.agent();
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let out = run_with(c, &list, 2);
    assert!(
        stderr(&out).contains("no S3 credentials"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn retention_deletes_exactly_the_objects_of_pruned_snapshots() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let b1 = small_broker(&t.path().join("b1"), 1);
    let b2 = small_broker(&t.path().join("b2"), 2);
    let url = s3.url("retention");
    let create = |dirs: &[PathBuf]| -> String {
        let d = dirs_arg(dirs);
        let out = run_with(
            s3.agent(),
            &[
                "archive",
                "create",
                "--log-dirs",
                &d,
                "--store",
                &url,
                "--capture",
                "copy",
                "--json",
            ],
            0,
        );
        json(&out)["snapshot_id"].as_str().unwrap().to_string()
    };
    let old1 = create(&b1);
    let old2 = create(&b1);
    let other_broker = create(&b2);
    let newest = create(&b1);
    let store = s3.store(&url);
    let before = keys(store.as_ref());

    let pruned = catalog::prune(store.as_ref(), CLUSTER, 1, 1).unwrap();
    let ids: Vec<&str> = pruned.iter().map(|s| s.snapshot_id.as_str()).collect();
    assert_eq!(ids, [old1.as_str(), old2.as_str()]);

    let after = keys(store.as_ref());
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let expected: BTreeSet<String> = [&old1, &old2]
        .iter()
        .flat_map(|id| {
            let p = format!("{CLUSTER}/broker-1/{id}");
            [format!("{p}/archive.tar.zst"), format!("{p}/manifest.json")]
        })
        .collect();
    assert_eq!(gone, expected);
    assert!(after.is_subset(&before));
    for id in [&other_broker, &newest] {
        assert!(
            after.iter().any(|k| k.contains(id.as_str())),
            "{id} was deleted"
        );
    }
    run_with(
        s3.agent(),
        &["archive", "verify", "--store", &url, "--snapshot", &newest],
        0,
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Close the connection, in either direction.
    Cut,
    /// Flip a byte on its way to the server.
    Flip,
}

/// A TCP proxy in front of the server that, on the first `faults`
/// occasions a connection has carried more than 2 MiB, cuts it or flips a
/// byte. Returns its URL and the number of faults still to make.
fn faulty_proxy(upstream: &str, fault: Fault, faults: usize) -> (String, Arc<AtomicUsize>) {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let left = Arc::new(AtomicUsize::new(faults));
    let remaining = left.clone();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            for (upward, mut from, mut to) in [
                (
                    true,
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                ),
                (false, server, client),
            ] {
                let left = left.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut moved = 0usize;
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        moved += n;
                        let applies = fault == Fault::Cut || upward;
                        if applies
                            && moved > 2 << 20
                            && left
                                .fetch_update(SeqCst, SeqCst, |l| l.checked_sub(1))
                                .is_ok()
                        {
                            if fault == Fault::Cut {
                                break;
                            }
                            buf[n / 2] ^= 0x5a;
                            moved = 0;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (addr, remaining)
}

#[test]
fn connections_cut_mid_transfer_are_retried() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 6, 24 << 20);
    let url = s3.url("cuts");
    let through = |proxy: &str| {
        let cfg = s3.config(t.path(), &url, &dirs, "", "part_size = \"5MiB\"\n");
        let text = fs::read_to_string(&cfg)
            .unwrap()
            .replace(&s3.endpoint, proxy);
        fs::write(&cfg, text).unwrap();
        cfg.display().to_string()
    };
    let (up_proxy, up_cuts) = faulty_proxy(&s3.endpoint, Fault::Cut, 3);
    let (down_proxy, down_cuts) = faulty_proxy(&s3.endpoint, Fault::Cut, 3);
    let cfg = through(&up_proxy);

    let mut c = s3.agent();
    c.env("KAFKA_SNAPSHOT_LOG", "info");
    let out = run_with(
        c,
        &[
            "archive",
            "create",
            "--config",
            &cfg,
            "--capture",
            "copy",
            "--json",
        ],
        0,
    );
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    let targets = [t.path().join("restore/a"), t.path().join("restore/b")];
    let (a, b) = (
        targets[0].display().to_string(),
        targets[1].display().to_string(),
    );
    assert_eq!(up_cuts.load(SeqCst), 0, "the upload was not cut");
    let cfg = through(&down_proxy);
    run_with(
        s3.agent(),
        &[
            "archive",
            "extract",
            "--config",
            &cfg,
            "--snapshot",
            &id,
            "--into",
            &a,
            &b,
        ],
        0,
    );
    assert_eq!(down_cuts.load(SeqCst), 0, "the download was not cut");
    for (orig, restored) in dirs.iter().zip(&targets) {
        assert_same_tree(orig, restored, NOT_ARCHIVED);
    }
    assert!(s3.store(&url).pending_uploads("").unwrap().is_empty());
}

#[test]
fn a_part_corrupted_on_the_way_is_refused_by_the_server_and_sent_again() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 8, 24 << 20);
    let url = s3.url("flips");
    let (proxy, flips) = faulty_proxy(&s3.endpoint, Fault::Flip, 2);
    let cfg = s3.config(t.path(), &url, &dirs, "", "part_size = \"5MiB\"\n");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace(&s3.endpoint, &proxy);
    fs::write(&cfg, text).unwrap();
    let cfg = cfg.display().to_string();

    let mut c = s3.agent();
    c.env("KAFKA_SNAPSHOT_LOG", "info");
    let out = run_with(
        c,
        &[
            "archive",
            "create",
            "--config",
            &cfg,
            "--capture",
            "copy",
            "--json",
        ],
        0,
    );
    assert_eq!(flips.load(SeqCst), 0, "no byte was flipped");
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(
        err.contains("retrying") && err.contains("400"),
        "the server must have refused a part: {err}"
    );
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    run_with(
        s3.agent(),
        &["archive", "verify", "--store", &url, "--snapshot", &id],
        0,
    );
}

#[test]
fn bandwidth_limit_applies_to_both_backends() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 9, 24 << 20);
    let d = dirs_arg(&dirs);
    let file_store = store_url(&new_store(t.path()));
    let url = s3.url("bandwidth");
    let cfg = s3.config(t.path(), &url, &dirs, "bandwidth_limit = \"8MiB\"", "");
    let cfg = cfg.display().to_string();
    // About 25 MiB of archive at 8 MiB/s: at least 2.5 s, either way.
    let timed = |args: &[&str]| {
        let start = Instant::now();
        run_with(s3.agent(), args, 0);
        start.elapsed()
    };
    let create = ["archive", "create", "--capture", "copy"];
    let took = timed(
        &[
            &create[..],
            &[
                "--log-dirs",
                &d,
                "--store",
                &file_store,
                "--bandwidth-limit",
                "8MiB",
            ],
        ]
        .concat(),
    );
    assert!(took >= Duration::from_millis(2500), "file:// took {took:?}");
    let took = timed(&[&create[..], &["--config", &cfg]].concat());
    assert!(took >= Duration::from_millis(2500), "s3:// took {took:?}");
}

#[test]
fn read_back_confirms_an_upload_when_asked() {
    let _g = shared_server();
    let s3 = s3();
    let t = scratch("ext4");
    let dirs = broker_with_bulk(t.path(), 10, 12 << 20);
    let url = s3.url("readback");
    let cfg = s3.config(
        t.path(),
        &url,
        &dirs,
        "",
        "part_size = \"5MiB\"\nverify_upload = \"read-back\"\n",
    );
    let cfg = cfg.display().to_string();
    let mut c = s3.agent();
    c.env("KAFKA_SNAPSHOT_LOG", "kafka_snapshot=debug");
    let out = run_with(
        c,
        &[
            "archive",
            "create",
            "--config",
            &cfg,
            "--capture",
            "copy",
            "--json",
        ],
        0,
    );
    let err = stderr(&out);
    assert!(err.contains("confirmed by reading it back"), "{err}");
    assert!(!err.contains("confirmed by the server's checksum"), "{err}");
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    run_with(
        s3.agent(),
        &["archive", "verify", "--config", &cfg, "--snapshot", &id],
        0,
    );
}
