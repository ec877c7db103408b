//! Starting and stopping brokers through their scripts, and what that does
//! to the log dirs: `.lock`, `.kafka_cleanshutdown`, growing segments.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kafka_snapshot_standin::fsutil::{FileLock, KafkaLock};
use kafka_snapshot_standin::{EventKind, SlowShutdown};

use crate::common::*;

fn lock_is_held(dir: &Path) -> bool {
    KafkaLock::holder(&dir.join(".lock")).unwrap().is_some()
}

fn marker(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(".kafka_cleanshutdown")).ok()
}

fn run(script: &Path) -> std::process::Output {
    Command::new(script).output().expect("run script")
}

#[test]
fn scripts_start_and_stop_a_broker_with_lock_and_clean_shutdown_marker() {
    let c = create(&fast_spec(3));
    let dirs = c.log_dirs(1).to_vec();
    assert_eq!(dirs.len(), 2);
    for d in &dirs {
        assert!(marker(d).is_some(), "generated dirs were cleanly shut down");
        assert!(!lock_is_held(d));
    }

    let out = run(&c.start_script(1));
    assert!(out.status.success(), "start script: {out:?}");
    assert!(c.is_running(1));
    for d in &dirs {
        assert!(lock_is_held(d), "{} locked while running", d.display());
        assert_eq!(KafkaLock::holder(&d.join(".lock")).unwrap(), c.pid(1));
        assert_eq!(
            marker(d),
            None,
            "marker removed at start in {}",
            d.display()
        );
    }
    kafka_snapshot_standin::wait_until(TIMEOUT, || Ok(c.liveness(1).in_sync)).unwrap();

    let before = Instant::now();
    let out = run(&c.stop_script(1));
    assert!(out.status.success(), "stop script: {out:?}");
    assert!(
        before.elapsed() < Duration::from_secs(2),
        "stop returns at once"
    );
    c.wait_exited(1, TIMEOUT).unwrap();
    let epoch = c
        .events()
        .unwrap()
        .iter()
        .find(|e| e.broker == 1 && e.kind == EventKind::Started)
        .and_then(|e| e.epoch)
        .expect("started event with epoch");
    for d in &dirs {
        assert!(!lock_is_held(d), "{} unlocked after exit", d.display());
        // Kafka deletes `.lock` at a clean shutdown (FileLock.destroy).
        assert!(
            !d.join(".lock").exists(),
            "{} still has .lock after a clean stop",
            d.display()
        );
        assert_eq!(
            marker(d).as_deref(),
            Some(format!("{{\"version\":0,\"brokerEpoch\":{epoch}}}").as_str())
        );
    }
    let kinds: Vec<EventKind> = c
        .events()
        .unwrap()
        .iter()
        .filter(|e| e.broker == 1)
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Started,
            EventKind::Registered,
            EventKind::CaughtUp,
            EventKind::Sigterm,
            EventKind::CleanShutdown,
            EventKind::Exited
        ]
    );

    // Like kafka-server-stop.sh with nothing to stop.
    let out = run(&c.stop_script(1));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("No kafka server to stop"));

    // A restart gets a new, larger broker epoch.
    c.start(1).unwrap();
    c.stop(1).unwrap();
    c.wait_exited(1, TIMEOUT).unwrap();
    let second: i64 = marker(&dirs[0]).unwrap()[27..]
        .trim_end_matches('}')
        .parse()
        .unwrap();
    assert!(second > epoch, "{second} > {epoch}");
}

#[test]
fn lock_is_a_posix_record_lock_as_the_jvm_takes_it_not_flock() {
    // Regression guard for probes of `.lock`: Kafka (the JVM's
    // FileChannel.tryLock) takes an fcntl lock, which flock(2) does not
    // see on Linux, and a flock does not keep Kafka from starting.
    let c = create(&fast_spec(1));
    let lock = c.log_dirs(1)[0].join(".lock");
    let flocked = FileLock::try_lock(&lock).unwrap().unwrap();
    c.start(1).unwrap();
    assert!(lock_is_held(&c.log_dirs(1)[0]));
    drop(flocked);
    assert!(
        FileLock::try_lock(&lock).unwrap().is_some(),
        "flock finds a running broker's .lock free"
    );
    assert!(
        KafkaLock::try_lock(&lock).unwrap().is_none(),
        "fcntl sees the broker's lock"
    );
}

#[test]
fn broker_refuses_to_start_while_another_process_holds_a_lock() {
    let c = create(&fast_spec(1));
    let held = KafkaLock::try_lock(&c.log_dirs(1)[1].join(".lock"))
        .unwrap()
        .unwrap();
    let out = run(&c.start_script(1));
    assert!(!out.status.success());
    let log = std::fs::read_to_string(c.log_file(1)).unwrap();
    assert!(
        log.contains("Failed to acquire lock on file .lock in"),
        "{log}"
    );
    assert!(!c.is_running(1));
    assert!(c
        .events()
        .unwrap()
        .iter()
        .any(|e| e.kind == EventKind::StartFailed));
    drop(held);
    c.start(1).unwrap();

    // A second instance of a running broker refuses too, and the first
    // keeps running.
    let pid = c.pid(1).unwrap();
    let out = run(&c.start_script(1));
    assert!(!out.status.success(), "second instance must fail: {out:?}");
    assert_eq!(c.pid(1), Some(pid));
}

#[test]
fn crash_on_sigterm_leaves_no_clean_shutdown_marker() {
    let c = running(3);
    c.update_scenario(|s| s.crash_on_sigterm.push(2)).unwrap();
    c.stop(2).unwrap();
    c.wait_exited(2, TIMEOUT).unwrap();
    for d in c.log_dirs(2) {
        assert_eq!(marker(d), None, "{}", d.display());
        assert!(!lock_is_held(d));
    }
    assert!(c
        .events()
        .unwrap()
        .iter()
        .any(|e| e.broker == 2 && e.kind == EventKind::Crashed));
    // The others shut down cleanly.
    c.stop(3).unwrap();
    c.wait_exited(3, TIMEOUT).unwrap();
    assert!(marker(&c.log_dirs(3)[0]).is_some());
}

#[test]
fn failed_start_scenario_makes_the_start_script_fail() {
    let c = running(3);
    c.stop(2).unwrap();
    c.wait_exited(2, TIMEOUT).unwrap();
    c.update_scenario(|s| s.fail_start.push(2)).unwrap();
    let out = run(&c.start_script(2));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exited with status 1"));
    assert!(!c.is_running(2));
    // It failed before touching its log dirs: still cleanly shut down.
    assert!(marker(&c.log_dirs(2)[0]).is_some());
    let log = std::fs::read_to_string(c.log_file(2)).unwrap();
    assert!(log.contains("scenario fail_start"), "{log}");

    c.update_scenario(|s| s.fail_start.clear()).unwrap();
    c.start(2).unwrap();
    c.wait_in_sync(TIMEOUT).unwrap();
}

#[test]
fn slow_shutdown_keeps_the_process_and_lock_but_leaves_isr_at_once() {
    let c = running(3);
    c.update_scenario(|s| {
        s.slow_shutdown.push(SlowShutdown {
            broker: 1,
            ms: 3000,
        })
    })
    .unwrap();
    let t0 = Instant::now();
    c.stop(1).unwrap();
    assert!(t0.elapsed() < Duration::from_millis(1000));
    wait_until(|| {
        let md = c.metadata().unwrap();
        !md.brokers.iter().any(|b| b.node_id.0 == 1)
    });
    let md = c.metadata().unwrap();
    for t in &md.topics {
        for p in &t.partitions {
            assert!(!p.isr_nodes.iter().any(|b| b.0 == 1));
        }
    }
    assert!(c.is_running(1), "still shutting down");
    assert!(lock_is_held(&c.log_dirs(1)[0]));
    assert_eq!(marker(&c.log_dirs(1)[0]), None);
    c.wait_exited(1, TIMEOUT).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(3000));
    assert!(marker(&c.log_dirs(1)[0]).is_some());
}

fn wait_until(mut f: impl FnMut() -> bool) {
    kafka_snapshot_standin::wait_until(TIMEOUT, || Ok(f())).unwrap();
}

/// Active (last) segment of a partition on a broker.
fn active_segment(c: &TestCluster, node: i32, topic: &str, p: i32) -> PathBuf {
    for d in c.log_dirs(node) {
        let dir = d.join(format!("{topic}-{p}"));
        if dir.is_dir() {
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            return logs.pop().unwrap();
        }
    }
    panic!("no dir for {topic}-{p} on broker {node}");
}

#[test]
fn leaders_append_record_batches_to_active_segments() {
    let c = running(3);
    let md = c.metadata().unwrap();
    let mut led = Vec::new();
    let mut followed = Vec::new();
    for t in &md.topics {
        let name = t.name.as_ref().unwrap().0.to_string();
        for p in &t.partitions {
            if p.leader_id.0 == 1 {
                led.push((name.clone(), p.partition_index));
            } else if p.replica_nodes.iter().any(|b| b.0 == 1) {
                followed.push((name.clone(), p.partition_index));
            }
        }
    }
    assert!(!led.is_empty() && !followed.is_empty());
    let sizes = |parts: &[(String, i32)]| -> Vec<(PathBuf, u64)> {
        parts
            .iter()
            .map(|(t, p)| {
                let seg = active_segment(&c, 1, t, *p);
                let len = std::fs::metadata(&seg).unwrap().len();
                (seg, len)
            })
            .collect()
    };
    let followed_before = sizes(&followed);
    let before = sizes(&led);
    std::thread::sleep(Duration::from_millis(400));
    // Followers do not replicate in the stand-in: their segments stay put.
    assert_eq!(sizes(&followed), followed_before);
    for (seg, len) in &before {
        let now = std::fs::metadata(seg).unwrap().len();
        assert!(now > *len, "{} grew: {len} -> {now}", seg.display());
        // The appended bytes are whole, valid Kafka record batches (the
        // broker may be mid-append: decode those that are complete).
        let bytes = std::fs::read(seg).unwrap();
        let mut tail = bytes::Bytes::copy_from_slice(&bytes[*len as usize..]);
        let mut batches = 0;
        while tail.len() >= 12 {
            let n = i32::from_be_bytes(tail[8..12].try_into().unwrap()) as usize + 12;
            if n > tail.len() {
                break;
            }
            let mut one = tail.split_to(n);
            kafka_protocol::records::RecordBatchDecoder::decode(&mut one).expect("valid batch");
            batches += 1;
        }
        assert!(batches > 0);
    }
    // Once stopped, nothing grows.
    c.stop(1).unwrap();
    c.wait_exited(1, TIMEOUT).unwrap();
    let after = sizes(&led);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(after, sizes(&led));
}

#[test]
fn empty_log_dirs_are_generated_at_first_start() {
    let c = create(&fast_spec(3));
    for d in c.log_dirs(3) {
        std::fs::remove_dir_all(d).unwrap();
    }
    c.start_all(TIMEOUT).unwrap();
    for d in c.log_dirs(3) {
        let meta = std::fs::read_to_string(d.join("meta.properties")).unwrap();
        assert!(meta.contains("node.id=3"), "{meta}");
        assert!(meta.contains(&format!("cluster.id={}", c.cluster_id())));
    }
    assert!(c.log_dirs(3)[0].join("__cluster_metadata-0").is_dir());
}

#[test]
fn another_brokers_meta_properties_are_refused() {
    // A restore into the wrong broker's dir must not start.
    let c = create(&fast_spec(2));
    std::fs::copy(
        c.log_dirs(2)[0].join("meta.properties"),
        c.log_dirs(1)[0].join("meta.properties"),
    )
    .unwrap();
    assert!(c.start(1).is_err());
    let log = std::fs::read_to_string(c.log_file(1)).unwrap();
    assert!(
        log.contains("Stored node id 2 doesn't match previous node id 1"),
        "{log}"
    );
}

#[test]
fn brokers_exit_when_the_process_that_owns_the_cluster_is_gone() {
    // Regression guard against leaked brokers: a test killed before its
    // Drop runs must not leave brokers behind.
    let c = running(1);
    let mut owner = Command::new("sleep").arg("30").spawn().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", owner.id())).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(
        c.state_dir().join("owner.json"),
        format!("{{\"pid\":{},\"proc_start\":{start}}}", owner.id()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.is_running(1), "owner alive: broker keeps running");
    owner.kill().unwrap();
    owner.wait().unwrap();
    c.wait_exited(1, Duration::from_secs(10)).unwrap();
    // The main thread shows as a zombie as soon as it has exited; the
    // process's other threads may hold its open files, and with them the
    // lock, a moment longer (seen once in CI).
    kafka_snapshot_standin::wait_until(Duration::from_secs(5), || {
        Ok(!lock_is_held(&c.log_dirs(1)[0]))
    })
    .expect("the lock is released once the broker has exited");
}
