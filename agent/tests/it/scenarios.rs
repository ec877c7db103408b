//! One end-to-end test per stand-in scenario switch, through the real agent
//! binary: `check` must name the failed condition, its reason and the
//! partition (so a loosened gate fails here), and `snapshot` must bring the
//! broker back whatever goes wrong while it is down. After each scenario the
//! stand-in's own event log must show at most one broker down at a time.

use crate::common::*;
use kafka_snapshot_standin::{
    EventKind, PartitionRef, Quorum, Reassignment, ReplicaRef, Scenario, SlowShutdown,
    StandinCluster, TopicSpec, VoterLag,
};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// A stand-in cluster on the named test filesystem and an empty store.
struct Setup {
    t: tempfile::TempDir,
    c: StandinCluster,
    store: PathBuf,
}

impl Setup {
    fn new(fs_kind: &str, change: impl FnOnce(&mut kafka_snapshot_standin::ClusterSpec)) -> Setup {
        let t = scratch(fs_kind);
        let c = standin_cluster(t.path(), change);
        let store = new_store(t.path());
        Setup { t, c, store }
    }

    fn config(&self, n: i32) -> AgentToml {
        AgentToml::new(&self.c, n, &self.store)
    }

    fn write(&self, cfg: &AgentToml) -> String {
        cfg.write(self.t.path()).display().to_string()
    }

    /// After any scenario: never more than one broker down (from the
    /// cluster's own events), `n` running, and nothing half-committed.
    fn assert_one_down_at_most_and_running(&self, n: i32) {
        assert!(self.c.is_running(n), "broker {n} is not running");
        assert!(
            self.c.max_brokers_down().unwrap() <= 1,
            "{:#?}",
            self.c.events().unwrap()
        );
    }

    fn events_of(&self, n: i32) -> Vec<EventKind> {
        self.c
            .events()
            .unwrap()
            .into_iter()
            .filter(|e| e.broker == n)
            .map(|e| e.kind)
            .collect()
    }
}

/// A topic on brokers 2 and 3 only (min ISR 1): trouble there is
/// "elsewhere" for broker 1.
fn logs_topic() -> TopicSpec {
    TopicSpec {
        name: "logs".into(),
        replicas: vec![vec![2, 3]],
        min_insync_replicas: Some(1),
    }
}

fn replica(topic: &str, partition: i32, broker: i32) -> ReplicaRef {
    ReplicaRef {
        topic: topic.into(),
        partition,
        broker,
    }
}

fn snapshot(cfg: &str, want: i32) -> Output {
    snapshot_with(agent(), cfg, want)
}

fn snapshot_with(cmd: std::process::Command, cfg: &str, want: i32) -> Output {
    run_with(
        cmd,
        &["snapshot", "--config", cfg, "--gate-timeout", "30s"],
        want,
    )
}

#[test]
fn under_replicated_partition_blocks_its_brokers_only() {
    let s = Setup::new("ext4", |spec| spec.extra_topics.push(logs_topic()));
    let cfg = s.write(&s.config(1));
    assert_safe(&cfg);

    // Broker 2's replica of orders-0 falls out: broker 1 hosts orders-0, so
    // it must not stop (and its ISR [1, 3] at min ISR 2 would break too).
    s.c.update_scenario(|sc| sc.out_of_sync.push(replica("orders", 0, 2)))
        .unwrap();
    assert_not_safe(
        &cfg,
        &["own_partitions_in_sync", "stop_keeps_min_isr"],
        "1 partition(s) with a replica on broker 1 are under-replicated",
        "orders-0 (replicas [",
    );

    // An under-replicated partition broker 1 does not host, still at its
    // min ISR, must not block it (a dead replica elsewhere must not
    // deadlock the fleet).
    s.c.update_scenario(|sc| sc.out_of_sync = vec![replica("logs", 0, 3)])
        .unwrap();
    assert_safe(&cfg);
    s.assert_one_down_at_most_and_running(1);
}

/// Sets a scenario switch: `check` with the agent config `cfg` must fail
/// exactly `ids` (see [`assert_not_safe`]); after `undo` it must pass again.
fn assert_switch_blocks(
    cfg: &str,
    s: &Setup,
    set: impl FnOnce(&mut Scenario),
    ids: &[&str],
    reason: &str,
    item: &str,
    undo: impl FnOnce(&mut Scenario),
) {
    assert_safe(cfg);
    s.c.update_scenario(set).unwrap();
    assert_not_safe(cfg, ids, reason, item);
    s.c.update_scenario(undo).unwrap();
    assert_safe(cfg);
    s.assert_one_down_at_most_and_running(1);
}

#[test]
fn offline_partition_anywhere_blocks() {
    let s = Setup::new("ext4", |spec| spec.extra_topics.push(logs_topic()));
    assert_switch_blocks(
        &s.write(&s.config(1)),
        &s,
        |sc| {
            sc.offline.push(PartitionRef {
                topic: "logs".into(),
                partition: 0,
            })
        },
        &["nothing_offline"],
        "1 partition(s) have no leader",
        "logs-0 (replicas [2, 3]",
        |sc| sc.offline.clear(),
    );
}

#[test]
fn reassignment_in_flight_blocks() {
    let s = Setup::new("ext4", |_| {});
    assert_switch_blocks(
        &s.write(&s.config(1)),
        &s,
        |sc| {
            sc.reassignments.push(Reassignment {
                topic: "orders".into(),
                partition: 2,
                target: vec![1, 2],
            })
        },
        &["no_reassignment"],
        "1 partition reassignment(s) in flight",
        "orders-2 (adding [], removing [3])",
        |sc| sc.reassignments.clear(),
    );
}

#[test]
fn future_dir_in_own_log_dirs_blocks() {
    let s = Setup::new("ext4", |_| {});
    let last_dir = s.c.log_dirs(1).last().unwrap().display().to_string();
    // Undone by moving it to another broker: none of broker 1's business.
    assert_switch_blocks(
        &s.write(&s.config(1)),
        &s,
        |sc| sc.future_dirs.push(replica("orders", 1, 1)),
        &["no_future_dir"],
        "1 -future dir(s) in this broker's log dirs",
        &format!("{last_dir}/orders-1."),
        |sc| sc.future_dirs = vec![replica("orders", 1, 2)],
    );
}

#[test]
fn lagging_controller_quorum_blocks_a_controller_node() {
    let s = Setup::new("ext4", |sc| {
        sc.scenario.quorum = Some(Quorum {
            voters: vec![1, 2, 3],
            leader: 1,
            lag: Vec::new(),
        })
    });
    // Broker 2 is a combined broker+controller node: its server.properties
    // says so, and only then does the gate ask for the quorum.
    let props = s.t.path().join("server-2.properties");
    std::fs::write(
        &props,
        format!(
            "process.roles=broker,controller\nnode.id=2\nlog.dirs={}\n",
            dirs_arg(s.c.log_dirs(2))
        ),
    )
    .unwrap();
    let mut cfg = s.config(2);
    cfg.dirs = format!("server_properties = {:?}", props.display().to_string());
    let cfg = s.write(&cfg);
    assert_eq!(check(&cfg, 0).matches("PASS").count(), 9);
    assert_switch_blocks(
        &cfg,
        &s,
        |sc| {
            if let Some(q) = &mut sc.quorum {
                q.lag.push(VoterLag {
                    voter: 3,
                    records: 5000,
                })
            }
        },
        &["controller_quorum_healthy"],
        "1 voter(s) are not caught up with the leader 1",
        "controller 3 last caught up with the leader",
        |sc| {
            if let Some(q) = &mut sc.quorum {
                q.lag.clear()
            }
        },
    );
    // The only controller: stopping it loses the quorum.
    s.c.update_scenario(|sc| {
        sc.quorum = Some(Quorum {
            voters: vec![2],
            leader: 2,
            lag: Vec::new(),
        })
    })
    .unwrap();
    let report = check(&cfg, 1);
    assert_eq!(
        failed_ids(&report),
        ["controller_quorum_healthy"],
        "{report}"
    );
    assert!(
        failure(&report, "controller_quorum_healthy")
            .contains("without controller 2, 0 of 1 voters are caught up"),
        "{report}"
    );
    // A broker-only node (broker.log_dirs, no process.roles) is not asked.
    assert_eq!(check(&s.write(&s.config(1)), 0).matches("PASS").count(), 8);
}

#[test]
fn low_replication_topic_follows_the_policy() {
    let s = Setup::new("ext4", |spec| {
        spec.extra_topics.push(TopicSpec {
            name: "audit".into(),
            replicas: vec![vec![1, 2]],
            min_insync_replicas: Some(2),
        })
    });
    let mut cfg = s.config(1);
    assert_not_safe(
        &s.write(&cfg),
        &["stop_keeps_min_isr"],
        "set gate.low_replication_policy = \"allow\"",
        "audit-0 (RF 2, min.insync.replicas 2)",
    );
    cfg.gate = "low_replication_policy = \"allow\"".into();
    assert_safe(&s.write(&cfg));
    // Allowed on purpose (a one-broker backup cluster): `check` says what
    // it costs.
    let report = check(&s.write(&cfg), 0);
    assert!(
        report.contains("allowed by gate.low_replication_policy = \"allow\": 1 partition(s)")
            && report.contains("audit-0 (RF 2, min.insync.replicas 2)"),
        "{report}"
    );
    // Broker 3 hosts no replica of it: refused for nobody else.
    assert_safe(&s.write(&s.config(3)));
    s.assert_one_down_at_most_and_running(1);
}

#[test]
fn slow_shutdown_past_stop_timeout_restarts_the_broker_once_it_exits() {
    let s = Setup::new("ext4", |_| {});
    let mut cfg = s.config(2);
    cfg.stop_timeout = "2s";
    s.c.update_scenario(|sc| {
        sc.slow_shutdown.push(SlowShutdown {
            broker: 2,
            ms: 3000,
        })
    })
    .unwrap();
    let err = stderr(&snapshot(&s.write(&cfg), 1));
    assert!(
        err.contains(
            "error: stopping the broker failed (it was started again): broker did not exit within 2s"
        ),
        "{err}"
    );
    s.assert_one_down_at_most_and_running(2);
    assert_eq!(stored_objects(&s.store), Vec::<PathBuf>::new());
    // Started again only once the old process had exited: a start while it
    // still held `.lock` would have failed.
    let ev = s.events_of(2);
    assert!(!ev.contains(&EventKind::StartFailed), "{ev:?}");
    let exited = ev.iter().rposition(|k| *k == EventKind::Exited).unwrap();
    assert!(ev[exited..].contains(&EventKind::Started), "{ev:?}");
}

#[test]
fn crash_on_sigterm_is_not_archived_and_the_broker_is_started() {
    let s = Setup::new("ext4", |_| {});
    s.c.update_scenario(|sc| sc.crash_on_sigterm.push(2))
        .unwrap();
    let err = stderr(&snapshot(&s.write(&s.config(2)), 1));
    let dir = s.c.log_dirs(2)[0].display().to_string();
    assert!(
        err.contains("error: the node stopped uncleanly (no .kafka_cleanshutdown in")
            && err.contains(&dir)
            && err.contains("it was started again and nothing was archived"),
        "{err}"
    );
    s.assert_one_down_at_most_and_running(2);
    assert_eq!(stored_objects(&s.store), Vec::<PathBuf>::new());
    let ev = s.events_of(2);
    let crashed = ev.iter().position(|k| *k == EventKind::Crashed).unwrap();
    assert!(ev[crashed..].contains(&EventKind::Started), "{ev:?}");
}

#[test]
fn failed_start_is_reported_loudly_and_nothing_is_committed() {
    let s = Setup::new("xfs", |_| {});
    s.c.update_scenario(|sc| sc.fail_start.push(2)).unwrap();
    let out = snapshot(&s.write(&s.config(2)), 1);
    let err = stderr(&out);
    let script = s.c.start_script(2).display().to_string();
    assert!(
        err.contains("error: BROKER LEFT STOPPED: the start command failed 3 times")
            && err.contains(&format!("start it by hand: {script}")),
        "{err}"
    );
    assert!(!s.c.is_running(2));
    let failed = s.events_of(2);
    assert_eq!(
        failed
            .iter()
            .filter(|k| **k == EventKind::StartFailed)
            .count(),
        3,
        "{failed:?}"
    );
    assert_eq!(stored_objects(&s.store), Vec::<PathBuf>::new());
    // What the message says to do works.
    s.c.update_scenario(|sc| sc.fail_start.clear()).unwrap();
    run_with(std::process::Command::new(&script), &[], 0);
    s.c.wait_in_sync(Duration::from_secs(30)).unwrap();
    s.assert_one_down_at_most_and_running(2);
}

#[test]
fn broker_that_never_catches_up_times_out_after_the_budget() {
    let s = Setup::new("xfs", |_| {});
    let mut cfg = s.config(2);
    cfg.recovery_timeout = "3s";
    s.c.update_scenario(|sc| sc.never_catch_up.push(2)).unwrap();
    let mut cmd = agent();
    cmd.env("KAFKA_SNAPSHOT_LOG", "info");
    let started = Instant::now();
    let err = stderr(&snapshot_with(cmd, &s.write(&cfg), 1));
    let elapsed = started.elapsed();
    assert!(
        err.contains("error: the broker did not recover within 3s: broker 2:")
            && err.contains("partition(s) still catching up"),
        "{err}"
    );
    // Progress, not failure, until the budget is spent.
    let restarted = err.find("broker started again").expect("restart logged");
    let progress = err[restarted..].matches("still catching up").count();
    assert!(progress >= 5, "{progress} progress lines:\n{err}");
    assert!(!err[restarted..].contains("ERROR"), "{err}");
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    s.assert_one_down_at_most_and_running(2);
}

#[test]
fn sigterm_to_the_agent_while_the_broker_is_stopped_starts_it_first() {
    // Copy capture streams the archive while the broker is stopped; the
    // bandwidth limit makes that take long enough to interrupt.
    let s = Setup::new("ext4", |spec| spec.bytes_per_broker = 8 << 20);
    let mut cfg = s.config(2);
    cfg.snapshot = "capture = \"copy\"\nzstd_threads = 1".into();
    cfg.storage = "bandwidth_limit = \"128KiB\"".into();
    let cfg = s.write(&cfg);
    let log = s.t.path().join("agent.log");
    let mut child = agent()
        .env("KAFKA_SNAPSHOT_LOG", "info")
        .args(["snapshot", "--config", &cfg, "--gate-timeout", "30s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    kafka_snapshot_standin::wait_until(Duration::from_secs(30), || {
        Ok(s.events_of(2).contains(&EventKind::Exited))
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!s.c.is_running(2), "the archive finished too soon");
    sigterm(child.id());
    let status = wait_child(&mut child, Duration::from_secs(60));
    // Running again before the agent exited, not some time after.
    assert!(s.c.is_running(2), "broker 2 is not running");
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: interrupted by shutdown (the broker was started again first)"),
        "{err}"
    );
    assert_eq!(stored_objects(&s.store), Vec::<PathBuf>::new());
    s.assert_one_down_at_most_and_running(2);
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to the agent");
}

fn wait_child(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `[hooks]` that log their environment to `log` (one line per run), and
/// fail with `pre_exit`/`post_exit`.
fn hooks(log: &std::path::Path, pre_exit: i32, post_exit: i32) -> String {
    let line = |exit: i32| {
        format!(
            "echo \"$KAFKA_SNAPSHOT_HOOK node=$KAFKA_SNAPSHOT_NODE_ID role=$KAFKA_SNAPSHOT_ROLE \
             outcome=${{KAFKA_SNAPSHOT_OUTCOME:-}}\" >> {}; [ {exit} -eq 0 ] || \
             {{ echo 'connector mirror-1 did not pause' >&2; exit {exit}; }}",
            log.display()
        )
    };
    format!(
        "[hooks]\npre_stop = {:?}\npost_start = {:?}\ntimeout = \"20s\"\n",
        line(pre_exit),
        line(post_exit)
    )
}

#[test]
fn hooks_run_around_the_stop_with_the_node_and_the_outcome() {
    let s = Setup::new("ext4", |_| {});
    let log = s.t.path().join("hooks.log");
    let mut cfg = s.config(2);
    cfg.gate = hooks(&log, 0, 0);
    snapshot(&s.write(&cfg), 0);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre_stop node=2 role=broker outcome=\npost_start node=2 role=broker outcome=ok\n"
    );
    s.assert_one_down_at_most_and_running(2);
    assert_eq!(stored_objects(&s.store).len(), 2, "archive and manifest");
}

#[test]
fn a_failing_pre_stop_hook_stops_nothing_and_post_start_still_runs() {
    let s = Setup::new("ext4", |_| {});
    let log = s.t.path().join("hooks.log");
    let mut cfg = s.config(2);
    cfg.gate = hooks(&log, 3, 0);
    let err = stderr(&snapshot(&s.write(&cfg), 1));
    assert!(
        err.contains("the node was not stopped: pre_stop hook command")
            && err.contains("exit status: 3: connector mirror-1 did not pause"),
        "{err}"
    );
    // post_start ran to undo what pre_stop may have done.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre_stop node=2 role=broker outcome=\npost_start node=2 role=broker outcome=not_stopped\n"
    );
    assert!(
        !s.events_of(2).contains(&EventKind::Sigterm),
        "{:?}",
        s.events_of(2)
    );
    assert_eq!(stored_objects(&s.store), Vec::<PathBuf>::new());
}

#[test]
fn a_failing_post_start_hook_is_loud_but_keeps_the_complete_snapshot() {
    let s = Setup::new("ext4", |_| {});
    let log = s.t.path().join("hooks.log");
    let mut cfg = s.config(2);
    cfg.gate = hooks(&log, 0, 4);
    let err = stderr(&snapshot(&s.write(&cfg), 1));
    assert!(
        err.contains("is complete, but then post_start hook command")
            && err.contains("exit status: 4: connector mirror-1 did not pause"),
        "{err}"
    );
    s.assert_one_down_at_most_and_running(2);
    assert_eq!(stored_objects(&s.store).len(), 2, "archive and manifest");
}
