//! The fault matrix: real processes (three stand-in brokers, three agent
//! daemons, a coordinator), one fault injected at one exact point of a
//! rolling cycle, then the same checks after every scenario:
//!
//! - never more than one broker down at any moment, as the stand-in
//!   cluster's own event log and an observer polling its metadata saw it;
//! - every broker runs again, or `coordinator status` names it with an
//!   error (and the logs say so);
//! - every snapshot cold storage lists as complete passes `verify`, and so
//!   does everything in the coordinator's catalog;
//! - no staging, unfinished restore or temporary object is left once the
//!   agents have started again and run their next snapshot;
//! - the next cycle completes normally.
//!
//! Points are named by the agent's pausepoints: `phase-<phase>` as each
//! phase begins (recorded in the state file and sent with the heartbeats
//! first), `after-stop` (the broker has stopped), `before-manifest` (the
//! archive is stored, the manifest not yet: the commit).

mod common;

use common::fleet::{observe, Fleet, FleetSpec, Seen};
use common::*;
use kafka_snapshot_testkit::net::Mode;
use kafka_snapshot_testkit::report;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every phase of a snapshot under a lease, in order, as pausepoints.
const PHASES: &[(&str, &str)] = &[
    ("gate", "phase-gating"),
    ("stopping", "phase-stopping"),
    ("capture", "phase-capturing"),
    ("restart", "phase-starting"),
    ("recovery check", "phase-recovering"),
    // The coordinator took the release; the agent's state file does not
    // say so yet.
    ("release", "after-release"),
    ("archive", "phase-archiving"),
    ("commit", "before-manifest"),
];

const CYCLE: Duration = Duration::from_secs(300);
const PAUSE: Duration = Duration::from_secs(120);

/// What a scenario's checks found, for the report.
#[derive(Default)]
struct Tally {
    max_down: u64,
    verified: u64,
    /// `archive verify --json` of every snapshot verified.
    reports: Vec<Value>,
}

/// The checks every scenario ends with; `label` names the scenario in
/// every failure message.
fn after_fault(f: &mut Fleet, seen: Seen, label: &str) -> Tally {
    // Whatever is paused may go on now (the scenario is over).
    for a in &f.agents {
        for e in fs::read_dir(&a.pause_dir).into_iter().flatten().flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let down = f.cluster.max_brokers_down().unwrap();
    assert!(
        down <= 1 && seen.max_missing <= 1,
        "{label}: {down} brokers down at once (events), {} missing (metadata)\n{}",
        seen.max_missing,
        f.logs()
    );
    assert!(
        seen.under_min_isr.is_empty(),
        "{label}: partitions under min ISR: {:?}",
        seen.under_min_isr
    );
    let st = f.coord.status();
    for n in 1..=3 {
        if !f.cluster.is_running(n) {
            let b = &st["brokers"][(n - 1) as usize];
            assert!(
                b["last_error"].is_string(),
                "{label}: broker {n} is down and status says nothing: {st:#}"
            );
        }
    }
    let reports = complete_means_verified(f, label);
    Tally {
        max_down: down as u64,
        verified: reports.len() as u64,
        reports,
    }
}

/// Every snapshot the store lists as complete verifies to every byte
/// (`contents_checked`: the agents' config holds the identity when they
/// encrypt), and the catalog's `verify --all` passes; returns the reports
/// of the snapshots verified.
fn complete_means_verified(f: &Fleet, label: &str) -> Vec<Value> {
    let (code, out, err) = f.agent_cli(&["archive", "list", "--store", &f.store_url, "--json"]);
    assert_eq!(code, 0, "{label}: archive list: {err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut reports = Vec::new();
    for s in listed.iter().filter(|s| s["complete"] == true) {
        let id = s["snapshot_id"].as_str().unwrap();
        let broker = s["broker"].to_string();
        let (code, out, err) = f.verify_snapshot_as(f.agents[0].n, id, &broker, &["--json"]);
        if code != 0 && !still_complete(f, id) {
            // Retention deleted it meanwhile (manifest first).
            continue;
        }
        assert_eq!(
            code, 0,
            "{label}: snapshot {id} is listed complete but does not verify: {err}"
        );
        let report: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{label}: verify --json of {id}: {e}: {out}"));
        assert_eq!(
            report["contents_checked"], true,
            "{label}: snapshot {id}: not every byte checked: {report:#}"
        );
        reports.push(report);
    }
    let out = f.coord.cli(&["verify", "--all"]);
    assert!(
        out.status.success(),
        "{label}: coordinator verify --all: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    reports
}

fn still_complete(f: &Fleet, id: &str) -> bool {
    let (_, out, _) = f.agent_cli(&["archive", "list", "--store", &f.store_url, "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    listed
        .iter()
        .any(|s| s["snapshot_id"] == id && s["complete"] == true)
}

/// Staging, unfinished restores and temporary objects left anywhere.
fn leftovers(f: &Fleet) -> Vec<String> {
    let mut found = Vec::new();
    for n in 1..=3 {
        for d in f.cluster.log_dirs(n) {
            let parent = d.parent().unwrap();
            let staging = parent.join(".kafka-snapshot-staging");
            for e in fs::read_dir(&staging).into_iter().flatten().flatten() {
                // `kept`: the clones an incremental snapshot keeps for the
                // next (`kept.new`, an interrupted replacement, is reported).
                if e.file_name() != ".lock" && e.file_name() != kafka_snapshot::kept::KEPT_DIR_NAME
                {
                    found.push(e.path().display().to_string());
                }
            }
            for e in fs::read_dir(parent).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().contains(".restoring-") {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    if let Some(root) = f.store_url.strip_prefix("file://") {
        walk(Path::new(root), &mut |p| {
            if p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .contains(kafka_snapshot::storage::TEMP_MARKER)
            }) {
                found.push(p.display().to_string());
            }
        });
    }
    // Multipart uploads that were neither completed nor aborted (S3: they
    // hold billable parts and show in no listing).
    let cfg = kafka_snapshot::config::AgentConfig::load(&f.agents[0].config).unwrap();
    let store = kafka_snapshot::storage::open(
        &cfg.storage.url,
        &kafka_snapshot::storage::StoreOptions::from_config(&cfg.storage),
    )
    .unwrap();
    for u in store.pending_uploads("").unwrap() {
        found.push(format!("pending upload {u:?}"));
    }
    let (code, out, _) = f.agent_cli(&["archive", "list", "--store", &f.store_url, "--json"]);
    if code == 0 {
        let listed: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        for s in listed.iter().filter(|s| s["complete"] != true) {
            found.push(format!("incomplete snapshot {}", s["snapshot_id"]));
        }
    }
    found
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

/// Runs a whole cycle with no fault: it must end `done` with a new
/// snapshot of every broker, after which nothing may be left over.
fn next_cycle_completes(f: &Fleet, label: &str) {
    // A cycle still finishing (or a slot settling) comes first.
    f.wait_status("the slot to be free", CYCLE, |st| {
        st["lease"]["state"].as_str().is_none_or(|s| s == "free")
            && !st["cycle"]["state"]
                .as_str()
                .is_some_and(|s| s == "running" || s == "finishing")
    });
    let ids = |rows: Vec<Value>| -> Vec<(i64, String)> {
        rows.iter()
            .map(|r| {
                (
                    r["broker"].as_i64().unwrap_or(0),
                    r["snapshot_id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let before = ids(f.snapshots());
    let last = f.coord.status()["cycle"]["id"].as_i64().unwrap_or(0);
    f.coord.cli_ok(&["run-now"], 0);
    let st = f.wait_status("the next cycle", CYCLE, |st| {
        st["cycle"]["id"].as_i64().unwrap_or(0) > last
            && matches!(
                st["cycle"]["state"].as_str(),
                Some("done" | "partial" | "failed")
            )
    });
    assert_eq!(
        st["cycle"]["state"],
        "done",
        "{label}: the next cycle did not complete: {st:#}\n{}",
        f.logs()
    );
    // A new snapshot of every broker (retention may have removed older ones).
    let after = ids(f.snapshots());
    for b in 1..=3 {
        assert!(
            after.iter().any(|s| s.0 == b && !before.contains(s)),
            "{label}: the next cycle added no snapshot of broker {b}: {after:?}"
        );
    }
    // Retention runs after the cycle and deletes manifest first: give it
    // a moment before calling an incomplete snapshot a leftover.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = leftovers(f);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        left = leftovers(f);
    }
    assert!(
        left.is_empty(),
        "{label}: left behind: {left:?}\n{}",
        f.logs()
    );
    for n in 1..=3 {
        assert!(
            f.cluster.is_running(n),
            "{label}: broker {n} is not running"
        );
    }
}

/// Starts a cycle with agent 2 set to pause at `point`, and waits until it
/// does. The fault is then the caller's.
fn cycle_paused_at(f: &mut Fleet, point: &str) {
    f.agent(2).kill();
    f.agent(2).start_with(&[point]);
    f.coord.cli_ok(&["run-now"], 0);
    f.agent(2).wait_paused(point, PAUSE);
}

fn record_fault(group: &str, case: String, t: &Tally) {
    report::record(
        group,
        &case,
        &[
            ("max_brokers_down", t.max_down),
            ("snapshots_verified", t.verified),
        ],
    );
}

/// One fleet runs every phase of one fault kind: the next scenario starts
/// from the state the previous one's recovery left, as in production.
fn matrix(group: &str, fault: &str, mut inject: impl FnMut(&mut Fleet, &str)) {
    let mut f = Fleet::build(FleetSpec::default(), |_| {});
    for (phase, point) in PHASES {
        let label = format!("{fault} at {phase}");
        let observer = observe(&f.cluster);
        cycle_paused_at(&mut f, point);
        inject(&mut f, point);
        f.wait_cycle_end(CYCLE);
        let t = after_fault(&mut f, observer.finish(), &label);
        next_cycle_completes(&f, &label);
        record_fault(group, label, &t);
    }
}

/// Incremental snapshots: an agent killed while it uploads content objects
/// (an object written but not yet visible; every object stored, the
/// manifest not yet), and the coordinator killed while retention sweeps
/// the objects. After each, every complete snapshot verifies (every object
/// it references is there), nothing is left over once the next cycle and
/// its retention ran, and retention removed the objects no snapshot
/// references.
#[test]
fn incremental_snapshots_with_agents_and_coordinator_killed() {
    incremental_faults("incremental", String::new());
}

/// The same faults with every snapshot encrypted at rest (format 4: each
/// content object an age file, named by the cluster's object key): every
/// snapshot listed complete still verifies, with the agents' identity, to
/// the last byte of every object, and retention, which holds no key and
/// no identity, still removes exactly the objects nothing references.
#[test]
fn encrypted_incremental_snapshots_with_agents_and_coordinator_killed() {
    let keys = scratch_dir();
    let encryption = common::fleet::encryption_section(keys.path(), true);
    incremental_faults("encrypted incremental", encryption);
}

/// [`incremental_snapshots_with_agents_and_coordinator_killed`], with
/// `agent_extra` in every agent's config; `kind` starts every label.
fn incremental_faults(kind: &str, agent_extra: String) {
    let encrypted = !agent_extra.is_empty();
    let spec = FleetSpec {
        snapshot_extra:
            "mode = \"incremental\"\nobject_min_size = \"1KiB\"\nobject_chunk_size = \"64KiB\"\n",
        retention: Some("keep_last = 1\nobject_grace = \"0s\"\n"),
        agent_extra,
        ..FleetSpec::default()
    };
    let mut f = Fleet::build(spec, |_| {});
    next_cycle_completes(&f, &format!("{kind}: first cycle"));
    if encrypted {
        let label = format!("{kind}: first cycle");
        encrypted_with_objects(&complete_means_verified(&f, &label), &label);
    }
    let objects_dir = f
        .store_url
        .strip_prefix("file://")
        .map(|r| Path::new(r).join(f.cluster.cluster_id()))
        .unwrap();
    assert!(
        objects_dir.join("objects").is_dir(),
        "no content objects after an incremental cycle in {}",
        objects_dir.display()
    );
    for (what, point) in [
        ("uploading an object", "before-object-finish"),
        ("committing", "before-manifest"),
    ] {
        let label = format!("{kind}: agent SIGKILLed while {what}");
        let observer = observe(&f.cluster);
        // The stand-in brokers append to their active segments all along:
        // every cycle has new objects to upload.
        cycle_paused_at(&mut f, point);
        f.agent(2).kill();
        f.agent(2).start();
        f.wait_cycle_end(CYCLE);
        let t = after_fault(&mut f, observer.finish(), &label);
        next_cycle_completes(&f, &label);
        unreferenced_objects_gone(&f, &label);
        if encrypted {
            encrypted_with_objects(&t.reports, &label);
        }
        record_fault("faults", label, &t);
    }
    let label = format!("{kind}: coordinator SIGKILLed while sweeping objects");
    let observer = observe(&f.cluster);
    f.coord.kill();
    let pause_dir = f.coord.dir.join("pause");
    fs::create_dir_all(&pause_dir).unwrap();
    let pause_dir_text = pause_dir.display().to_string();
    f.coord.start_with_env(&[
        ("KAFKA_SNAPSHOT_PAUSE", "before-object-removal"),
        ("KAFKA_SNAPSHOT_PAUSE_DIR", pause_dir_text.as_str()),
    ]);
    let last = f.coord.status()["cycle"]["id"].as_i64().unwrap_or(0);
    f.coord.cli_ok(&["run-now"], 0);
    f.wait_status("the cycle", CYCLE, |st| {
        st["cycle"]["id"].as_i64().unwrap_or(0) > last && st["cycle"]["state"] == "done"
    });
    // Retention runs after the cycle: it stops right before it removes the
    // objects the previous snapshots alone referenced.
    let marker = pause_dir.join("before-object-removal");
    let deadline = Instant::now() + PAUSE;
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "{label}: retention never reached the removal of objects\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f.coord.kill();
    f.coord.start();
    let t = after_fault(&mut f, observer.finish(), &label);
    next_cycle_completes(&f, &label);
    unreferenced_objects_gone(&f, &label);
    if encrypted {
        encrypted_with_objects(&t.reports, &label);
    }
    record_fault("faults", label, &t);
}

/// Every snapshot in `reports` (of [`complete_means_verified`], which
/// checked every byte with the agents' identity) is encrypted and keeps
/// files as content objects (format 4): its objects were read and
/// checked, not only found.
fn encrypted_with_objects(reports: &[Value], label: &str) {
    assert!(!reports.is_empty(), "{label}: no complete snapshot");
    for report in reports {
        assert!(
            report["encrypted_to"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
                && report["objects_read"].as_u64() > Some(0),
            "{label}: a snapshot is not encrypted with content objects read: {report:#}"
        );
    }
}

/// After a retention run with `object_grace = "0s"` and nothing in flight,
/// every content object is referenced by a snapshot in storage.
fn unreferenced_objects_gone(f: &Fleet, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Value = serde_json::from_str(&f.coord.cli_ok(&["prune", "--json"], 0)).unwrap();
        if r["objects"]["unreferenced"] == 0 && r["objects"]["referenced"].as_u64() > Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: unreferenced content objects stay: {r:#}\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn agent_sigkilled_at_every_phase() {
    matrix("faults", "agent SIGKILLed", |f, _point| {
        // Killed where it stands; the next daemon starts without pauses.
        f.agent(2).kill();
        std::thread::sleep(Duration::from_millis(500));
        f.agent(2).start();
    });
}

#[test]
fn coordinator_sigkilled_at_every_phase() {
    matrix("faults", "coordinator SIGKILLed", |f, point| {
        // Its database stays as the kill left it.
        f.coord.kill();
        std::thread::sleep(Duration::from_secs(1));
        f.coord.start();
        f.agent(2).resume(point);
    });
}

#[test]
fn coordinator_unreachable_past_the_lease_ttl_at_every_phase() {
    matrix(
        "faults",
        "coordinator unreachable for 2 x TTL",
        |f, point| {
            // Blackholed: requests hang until they time out, as behind a
            // dead switch. The lease (TTL 6 s) expires on both sides.
            f.link(2, Mode::Blackhole);
            std::thread::sleep(Duration::from_secs(4));
            f.agent(2).resume(point);
            std::thread::sleep(Duration::from_secs(8));
            f.link(2, Mode::Pass);
        },
    );
}

#[test]
fn broker_fails_to_start_or_never_catches_up() {
    let spec = FleetSpec {
        recovery_timeout: "15s",
        ..FleetSpec::default()
    };
    let mut f = Fleet::build(spec, |_| {});

    // 1. The start command fails every time: the agent gives up after
    //    its tries and says so; the operator sees it in status; nothing
    //    else is leased while it is down; once the cause is gone the
    //    agent starts it on its own.
    let label = "broker fails to start";
    let observer = observe(&f.cluster);
    cycle_paused_at(&mut f, "phase-stopping");
    f.cluster
        .update_scenario(|s| s.fail_start = vec![2])
        .unwrap();
    f.agent(2).resume("phase-stopping");
    let st = f.wait_status("broker 2 reported left stopped", CYCLE, |st| {
        st["brokers"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("BROKER LEFT STOPPED") || e.contains("IS DOWN"))
    });
    assert!(!f.cluster.is_running(2), "{st:#}");
    assert!(
        f.agent(2).logs().contains("BROKER LEFT STOPPED"),
        "the agent's log must say it"
    );
    let table = f.coord.cli_ok(&["status"], 0);
    assert!(table.contains("BROKER LEFT STOPPED"), "{table}");
    assert!(
        f.coord
            .logs()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("BROKER 2 LEFT STOPPED")),
        "the coordinator must log an ERROR"
    );
    // Nobody else is stopped meanwhile.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        f.cluster.max_brokers_down().unwrap(),
        1,
        "only broker 2 may be down"
    );
    f.cluster.update_scenario(|s| s.fail_start.clear()).unwrap();
    f.cluster
        .wait_in_sync(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{label}: broker 2 never came back: {e:#}\n{}", f.logs()));
    f.wait_cycle_end(CYCLE);
    let t = after_fault(&mut f, observer.finish(), label);
    next_cycle_completes(&f, label);
    record_fault("faults", label.into(), &t);

    // 2. It starts but never rejoins its ISRs: the recovery check times
    //    out; status says so; the slot stays closed until it catches up.
    let label = "broker never catches up";
    let observer = observe(&f.cluster);
    f.cluster
        .update_scenario(|s| s.never_catch_up = vec![2])
        .unwrap();
    f.coord.cli_ok(&["run-now", "--broker", "2"], 0);
    f.wait_status("the recovery timeout reported", CYCLE, |st| {
        st["brokers"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not recover"))
    });
    assert!(f.cluster.is_running(2));
    f.cluster
        .update_scenario(|s| s.never_catch_up.clear())
        .unwrap();
    f.wait_cycle_end(CYCLE);
    let t = after_fault(&mut f, observer.finish(), label);
    next_cycle_completes(&f, label);
    record_fault("faults", label.into(), &t);
}

/// A small filesystem of its own, loop-mounted (the tests run as root).
struct LoopFs {
    image: PathBuf,
    mnt: PathBuf,
}

impl LoopFs {
    fn new(dir: &Path, size: &str) -> LoopFs {
        let image = dir.join("small.img");
        let mnt = dir.join("small");
        fs::create_dir_all(&mnt).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("truncate").args(["-s", size]).arg(&image));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        LoopFs { image, mnt }
    }

    /// Fills it up but for `keep` bytes.
    fn fill(&self, keep: u64) -> PathBuf {
        let st = nix_statvfs(&self.mnt);
        let ballast = self.mnt.join("ballast");
        let len = st.saturating_sub(keep);
        let f = fs::File::create(&ballast).unwrap();
        // Real blocks, not a hole: fallocate.
        let out = Command::new("fallocate")
            .args(["-l", &len.to_string()])
            .arg(&ballast)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(f);
        ballast
    }
}

fn nix_statvfs(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = fs::remove_file(&self.image);
    }
}

#[test]
fn cold_storage_full_while_archiving() {
    let t = scratch_dir();
    let small = LoopFs::new(t.path(), "96M");
    let store = small.mnt.join("store");
    for capture in ["reflink", "copy"] {
        let label = format!("cold storage full ({capture} capture)");
        let spec = FleetSpec {
            capture,
            store_url: Some(format!("file://{}", store.join(capture).display())),
            max_attempts: 1,
            ..FleetSpec::default()
        };
        let mut f = Fleet::build(spec, |_| {});
        let observer = observe(&f.cluster);
        // The archive of broker 2 meets a full disk.
        let point = if capture == "copy" {
            "phase-capturing"
        } else {
            "phase-archiving"
        };
        cycle_paused_at(&mut f, point);
        let ballast = small.fill(64 << 10);
        f.agent(2).resume(point);
        let st = f.wait_cycle_end(CYCLE);
        assert_eq!(
            st["cycle"]["state"],
            "partial",
            "{label}: {st:#}\n{}",
            f.logs()
        );
        let reason = st["cycle"]["brokers"][1]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            reason.contains("No space left") || reason.contains("space"),
            "{label}: the reason must say the disk is full: {st:#}"
        );
        let tally = after_fault(&mut f, observer.finish(), &label);
        fs::remove_file(&ballast).unwrap();
        next_cycle_completes(&f, &label);
        record_fault("faults", label, &tally);
    }
}

/// Garage's S3 settings from tests/lib/garage.sh, with `endpoint`.
fn s3_settings(endpoint: &str, extra: &str) -> String {
    let var = |n: &str| {
        std::env::var(n)
            .unwrap_or_else(|_| panic!("{n} is not set: run the tests through tests/run.sh"))
    };
    format!(
        "[storage.s3]\nendpoint = {endpoint:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\npath_style = true\n{extra}",
        var("KSNAP_TEST_S3_REGION"),
        var("KSNAP_TEST_S3_KEY_ID"),
        var("KSNAP_TEST_S3_SECRET"),
    )
}

#[test]
fn s3_failing_while_archiving() {
    use kafka_snapshot_testkit::garage::{Garage, Restart};
    use kafka_snapshot_testkit::net::Proxy;
    let garage = Garage::from_env();
    let endpoint = std::env::var("KSNAP_TEST_S3_ENDPOINT").expect("KSNAP_TEST_S3_ENDPOINT");
    let bucket = std::env::var("KSNAP_TEST_S3_BUCKET").expect("KSNAP_TEST_S3_BUCKET");
    let s3 = Proxy::start(endpoint.trim_start_matches("http://")).unwrap();
    let timeouts =
        "request_timeout = \"2s\"\ndeadline = \"30s\"\nretries = 2\npart_size = \"5MiB\"\n";
    let spec = FleetSpec {
        store_url: Some(format!("s3://{bucket}/faults-{}", std::process::id())),
        // A slow upload (256 KiB/s), so that the fault lands mid-upload.
        storage_extra: format!(
            "bandwidth_limit = \"256KiB\"\n{}",
            s3_settings(&format!("http://{}", s3.addr()), timeouts)
        ),
        coordinator_storage_extra: Some(s3_settings(&endpoint, timeouts)),
        ..FleetSpec::default()
    };
    let mut f = Fleet::build(spec, |_| {});
    let faults: [(&str, &dyn Fn(bool)); 3] = [
        ("S3 server SIGKILLed mid-upload", &|down| {
            if down {
                garage.kill()
            } else {
                garage.start()
            }
        }),
        ("S3 unreachable mid-upload", &|down| {
            s3.set(if down { Mode::Refuse } else { Mode::Pass })
        }),
        ("S3 slower than the timeouts mid-upload", &|down| {
            s3.set(if down { Mode::Blackhole } else { Mode::Pass })
        }),
    ];
    for (label, fault) in faults {
        let mut restart = Restart {
            garage: &garage,
            down: false,
        };
        let observer = observe(&f.cluster);
        let failures = |f: &mut Fleet| f.agent(2).logs().matches("archiving failed").count();
        let before = failures(&mut f);
        cycle_paused_at(&mut f, "phase-archiving");
        f.agent(2).resume("phase-archiving");
        std::thread::sleep(Duration::from_millis(800));
        fault(true);
        restart.down = label.contains("SIGKILL");
        // Past request_timeout x (retries + 1) and the backoff.
        std::thread::sleep(Duration::from_secs(12));
        fault(false);
        restart.down = false;
        f.wait_cycle_end(CYCLE);
        assert!(
            failures(&mut f) > before,
            "{label}: the archive should have failed\n{}",
            f.logs()
        );
        let t = after_fault(&mut f, observer.finish(), label);
        next_cycle_completes(&f, label);
        record_fault("faults", label.into(), &t);
    }
}

fn scratch_dir() -> tempfile::TempDir {
    common::fleet::scratch()
}

#[test]
fn two_agents_race_for_a_lease() {
    let mut f = Fleet::new();
    // 1. The same agent started twice on one host: the second refuses.
    let label = "second daemon with the same state file";
    // Once the first one is up (it has polled), a second one must refuse.
    f.wait_status("agent 2 polling", Duration::from_secs(60), |st| {
        st["brokers"][1]["agent_last_seen"].is_string()
    });
    let mut second = Command::new(bin("kafka-snapshot-agent"))
        .args(["run", "--config"])
        .arg(&f.agents[1].config)
        .env("KAFKA_SNAPSHOT_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("{label}: the second daemon did not refuse to run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{label}: {err}");
    assert!(err.contains("another agent daemon"), "{label}: {err}");
    report::record("faults", label, &[("max_brokers_down", 0)]);

    // 2. A second agent for broker 2 with its own state file (a copy of
    //    the host's config, an old host still running): every lease is
    //    worked by one agent only.
    let label = "two agents acting as broker 2";
    let dir = f.root.join("agent-2-twin");
    fs::create_dir_all(&dir).unwrap();
    let text = fs::read_to_string(&f.agents[1].config).unwrap().replace(
        &f.root
            .join("agent-2")
            .join("state.json")
            .display()
            .to_string(),
        &dir.join("state.json").display().to_string(),
    );
    let twin_config = dir.join("agent.toml");
    fs::write(&twin_config, text).unwrap();
    let twin_log = dir.join("agent.log");
    let mut twin = Command::new(bin("kafka-snapshot-agent"))
        .args(["run", "--config"])
        .arg(&twin_config)
        .env("KAFKA_SNAPSHOT_LOG", "info")
        .stderr(fs::File::create(&twin_log).unwrap())
        .spawn()
        .unwrap();
    let observer = observe(&f.cluster);
    for _ in 0..2 {
        f.wait_status("the slot to be free", CYCLE, |st| {
            st["lease"]["state"].as_str().is_none_or(|s| s == "free")
        });
        f.coord.cli_ok(&["run-now", "--broker", "2"], 0);
        f.wait_cycle_end(CYCLE);
    }
    let _ = twin.kill();
    let _ = twin.wait();
    let epochs = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("snapshot lease granted"))
            .filter_map(|l| l.split("epoch=").nth(1))
            .map(|e| e.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    let mine = epochs(&f.agents[1].logs());
    let theirs = epochs(&fs::read_to_string(&twin_log).unwrap());
    for e in &mine {
        assert!(
            !theirs.contains(e),
            "{label}: lease {e} was worked by both agents\n{}",
            f.logs()
        );
    }
    assert!(
        !mine.is_empty() || !theirs.is_empty(),
        "{label}: nobody got a lease"
    );
    let t = after_fault(&mut f, observer.finish(), label);
    next_cycle_completes(&f, label);
    record_fault("faults", label.into(), &t);
}

#[test]
fn a_restore_ordered_during_a_cycle() {
    let mut f = Fleet::new();
    next_cycle_completes(&f, "first cycle");
    let label = "restore of broker 3 ordered while broker 1 is captured";
    let observer = observe(&f.cluster);
    f.agent(1).kill();
    f.agent(1).start_with(&["phase-capturing"]);
    f.coord.cli_ok(&["run-now"], 0);
    f.agent(1).wait_paused("phase-capturing", PAUSE);
    let restore = Command::new(bin("kafka-snapshot-coordinator"))
        .args(["restore", "--broker", "3", "--yes", "--config"])
        .arg(&f.coord.config)
        .env("KAFKA_SNAPSHOT_LOG", "warn")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    f.agent(1).resume("phase-capturing");
    let out = restore.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{label}: restore failed\n{}",
        f.logs()
    );
    let st = f.wait_cycle_end(CYCLE);
    assert_eq!(st["cycle"]["state"], "done", "{label}: {st:#}");
    let t = after_fault(&mut f, observer.finish(), label);
    next_cycle_completes(&f, label);
    record_fault("faults", label.into(), &t);
}
