//! The product end to end, every part a real process: three stand-in
//! brokers, one agent daemon per broker, one coordinator. An observer polls
//! the cluster throughout and asserts what operators care about: never two
//! brokers down, never a partition under min ISR.

mod common;

use common::*;
use kafka_snapshot_standin::{ClusterSpec, StandinCluster};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn scratch() -> tempfile::TempDir {
    let root = std::env::var("KSNAP_TEST_XFS").unwrap_or_else(|_| {
        panic!("KSNAP_TEST_XFS is not set: run the tests through tests/run.sh, which mounts the test filesystems")
    });
    tempfile::tempdir_in(root).expect("scratch dir on XFS")
}

struct Agent {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(bin("kafka-snapshot-agent"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("KAFKA_SNAPSHOT_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start agent"),
        );
    }
    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls the cluster's metadata and records every partition seen under its
/// min ISR (2 here) and the most brokers seen missing at once.
struct Observer {
    stop: Arc<AtomicBool>,
    under_min_isr: Arc<Mutex<Vec<String>>>,
    max_missing: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    fn start(c: &Arc<StandinCluster>) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let under = Arc::new(Mutex::new(Vec::new()));
        let missing = Arc::new(Mutex::new(0));
        let (s, u, m) = (stop.clone(), under.clone(), missing.clone());
        let c = c.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(md) = c.metadata() {
                    let live = md.brokers.len();
                    let mut mm = m.lock().unwrap();
                    *mm = (*mm).max(3usize.saturating_sub(live));
                    for t in &md.topics {
                        for p in &t.partitions {
                            if p.isr_nodes.len() < 2 {
                                u.lock().unwrap().push(format!(
                                    "{}-{} isr {:?}",
                                    t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                                    p.partition_index,
                                    p.isr_nodes
                                ));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Observer {
            stop,
            under_min_isr: under,
            max_missing: missing,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let u = self.under_min_isr.lock().unwrap().clone();
        let m = *self.max_missing.lock().unwrap();
        (u, m)
    }
}

/// Fields drop in order: agents, coordinator, cluster, then the dir.
struct Fleet {
    agents: Vec<Agent>,
    coord: Coordinator,
    cluster: Arc<StandinCluster>,
    root: PathBuf,
    store: PathBuf,
    /// Last: dropped after the cluster, whose brokers live in it.
    _t: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet::with(|_| {})
    }

    fn with(change: impl FnOnce(&mut ClusterSpec)) -> Fleet {
        let t = scratch();
        let root = t.path().to_path_buf();
        let mut spec = ClusterSpec::new(3);
        spec.data_root = Some(root.join("data"));
        // No appends: restored files must stay as the snapshot has them.
        spec.append_interval = Duration::from_secs(3600);
        change(&mut spec);
        let cluster =
            Arc::new(StandinCluster::create(&root.join("cluster"), &spec).expect("stand-in"));
        cluster
            .start_all(Duration::from_secs(60))
            .expect("cluster starts");
        let store = root.join("store");
        let mut cs = CoordinatorSpec::new(
            &[1, 2, 3],
            &cluster.bootstrap(),
            &format!("file://{}", store.display()),
        );
        cs.lease = "ttl = \"6s\"\npoll_interval = \"300ms\"\n".into();
        let mut coord = Coordinator::create(&root.join("coordinator"), &cs);
        coord.start();
        let mut agents = Vec::new();
        for n in 1..=3 {
            let dir = root.join(format!("agent-{n}"));
            fs::create_dir_all(&dir).unwrap();
            let token_file = dir.join("token");
            write_secret(&token_file, &token(n));
            let dirs: Vec<String> = cluster
                .log_dirs(n)
                .iter()
                .map(|d| format!("{:?}", d.display().to_string()))
                .collect();
            let text = format!(
                "[broker]\nlog_dirs = [{}]\nstop_command = {:?}\nstart_command = {:?}\n\
                 stop_timeout = \"60s\"\ncommand_timeout = \"60s\"\nrecovery_timeout = \"90s\"\n\
                 [storage]\nurl = \"file://{}\"\n\
                 [kafka]\nbootstrap_servers = [{}]\nrequest_timeout = \"5s\"\n\
                 [gate]\nstable_checks = 2\ncheck_interval = \"300ms\"\n\
                 [coordinator]\nurl = {:?}\ntoken_file = {:?}\nstate_file = {:?}\npoll_interval = \"300ms\"\n",
                dirs.join(", "),
                cluster.stop_script(n).display().to_string(),
                cluster.start_script(n).display().to_string(),
                store.display(),
                cluster.bootstrap().split(',').map(|b| format!("{b:?}")).collect::<Vec<_>>().join(", "),
                coord.url,
                token_file.display().to_string(),
                dir.join("state.json").display().to_string(),
            );
            let config = dir.join("agent.toml");
            fs::write(&config, text).unwrap();
            let mut a = Agent {
                child: None,
                config,
                log: dir.join("agent.log"),
            };
            a.start();
            agents.push(a);
        }
        Fleet {
            _t: t,
            root,
            cluster,
            coord,
            agents,
            store,
        }
    }

    fn logs(&self) -> String {
        let mut s = format!("--- coordinator\n{}", self.coord.logs());
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- agent {}\n{}", i + 1, a.logs()));
        }
        s
    }

    /// Waits until `f(status)` holds.
    fn wait_status(&self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.coord.status();
            if f(&st) {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nstatus: {st:#}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn wait_cycle_end(&self, timeout: Duration) -> Value {
        self.wait_status("the cycle to end", timeout, |st| {
            matches!(
                st["cycle"]["state"].as_str(),
                Some("done" | "partial" | "failed")
            )
        })
    }
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

#[test]
fn a_rolling_cycle_then_a_restore_of_broker_2() {
    let f = Fleet::new();
    let observer = Observer::start(&f.cluster);

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
    f.wait_status("every snapshot verified", Duration::from_secs(60), |st| {
        st["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["last_verified"] == true)
    });
    let table = f.coord.cli_ok(&["status"], 0);
    assert!(
        table.contains("lease:    free") && table.contains("BROKER"),
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
            f.store
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
            sha256_file(&dirs[i].join(rel)),
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

    let (under, missing) = observer.finish();
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
    let observer = Observer::start(&f.cluster);
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
    let (under, missing) = observer.finish();
    assert!(under.is_empty(), "{under:?}");
    assert!(missing <= 1);
    assert!(f.cluster.max_brokers_down().unwrap() <= 1);
    for n in 1..=3 {
        assert!(f.cluster.is_running(n), "broker {n} is not running");
    }
}
