//! The engine's decisions over an in-memory database, with time driven by
//! the test.

use super::*;
use crate::config::CoordinatorConfig;
use crate::store::Now;
use chrono::{DateTime, Utc};
use kafka_snapshot_model::protocol::{
    Action, ClusterGo, ClusterRestoreOrder, ClusterStep, Heartbeat, NodeRole, Outcome, Phase,
    PollRequest, Release, ReportResult, SnapshotReport, SnapshotSummary,
};

const CFG: &str = r#"
[server]
listen = "127.0.0.1:9640"
database = "/var/lib/c/state.db"
admin_token_file = "/etc/t"
[[agents]]
broker = 1
token_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
[[agents]]
broker = 2
token_sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
[[agents]]
broker = 3
token_sha256 = "3333333333333333333333333333333333333333333333333333333333333333"
[schedule]
schedule = "@every 24h"
gate_timeout = "10m"
max_attempts = 2
[lease]
ttl = "60s"
poll_interval = "5s"
[storage]
url = "file:///mnt/s"
[kafka]
bootstrap_servers = ["k1:9092"]
[cluster]
id = "cluster-a"
"#;

pub(crate) fn engine() -> Engine {
    let cfg = CoordinatorConfig::parse(CFG, std::path::Path::new("/c.toml")).unwrap();
    Engine::new(crate::store::open_in_memory(), cfg)
}

pub(crate) fn t0() -> Now {
    DateTime::parse_from_rfc3339("2026-05-01T02:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(crate) fn secs(n: i64) -> Now {
    t0() + chrono::Duration::seconds(n)
}

pub(crate) fn poll_req(broker: i32, epoch: Option<u64>) -> PollRequest {
    PollRequest {
        protocol: kafka_snapshot_model::protocol::PROTOCOL_VERSION,
        broker,
        agent_version: "test".into(),
        hostname: format!("host{broker}"),
        phase: Phase::Idle,
        lease_epoch: epoch,
        broker_running: true,
        instance: None,
        role: None,
        moved_aside: Vec::new(),
    }
}

/// Polls and, if a grant is possible, grants with a passing check.
pub(crate) fn poll_grant(e: &mut Engine, broker: i32, now: Now) -> Action {
    match e.poll(&poll_req(broker, None), now).unwrap() {
        PollDecision::Answer(a) => a,
        PollDecision::Check(c) => e.grant(&c, Ok(()), &poll_req(broker, None), now).unwrap(),
    }
}

pub(crate) fn epoch_of(a: &Action) -> u64 {
    match a {
        Action::Snapshot { lease }
        | Action::Restore { lease, .. }
        | Action::ClusterRestore { lease, .. } => lease.epoch,
        Action::Idle => panic!("no lease granted"),
    }
}

pub(crate) fn summary(broker: i32, id: &str) -> SnapshotSummary {
    SnapshotSummary {
        snapshot_id: id.into(),
        cluster_id: "cluster-a".into(),
        broker,
        host: format!("host{broker}"),
        committed: t0(),
        capture: "reflink".into(),
        clean_shutdown: true,
        downtime_ms: Some(1500),
        files: 10,
        data_bytes: 1000,
        archive_bytes: 500,
        archive_sha256: "00".repeat(32),
        manifest_sha256: "11".repeat(32),
    }
}

/// Into the catalog as if its agent reported it at `seen`.
pub(crate) fn list_snapshot(e: &Engine, s: &SnapshotSummary, seen: Now) {
    let seen = crate::store::snapshots::Seen::reported(s.committed, seen);
    crate::store::snapshots::upsert(e.conn(), s, "agent", seen).unwrap();
}

pub(crate) fn hb(broker: i32, epoch: u64, phase: Phase) -> Heartbeat {
    Heartbeat {
        broker,
        epoch,
        phase,
        progress: None,
        cluster_step: None,
    }
}

pub(crate) fn slot_state(e: &Engine) -> Option<(i32, String)> {
    e.status(t0()).unwrap().lease.map(|l| (l.broker, l.state))
}

pub(crate) fn start_cycle(e: &mut Engine) {
    e.tick(t0()).unwrap(); // first start: due now
    e.tick(secs(1)).unwrap(); // starts the cycle
    let st = e.status(secs(1)).unwrap();
    assert_eq!(st.cycle.unwrap().state, "running");
}

#[test]
fn a_second_agent_acting_as_the_same_broker_never_gets_a_lease_in_use() {
    let mut e = engine();
    start_cycle(&mut e);
    let mut a = poll_req(1, None);
    a.instance = Some("aaaa".into());
    let mut b = poll_req(1, None);
    b.instance = Some("bbbb".into());
    b.hostname = "old-host".into();
    let PollDecision::Check(c) = e.poll(&a, secs(2)).unwrap() else {
        panic!("broker 1 should be a candidate")
    };
    let Action::Snapshot { lease } = e.grant(&c, Ok(()), &a, secs(2)).unwrap() else {
        panic!("granted")
    };
    // The answer may not have reached `a` yet: only `a` gets it again.
    assert_eq!(
        e.poll(&b, secs(3)).unwrap(),
        PollDecision::Answer(Action::Idle)
    );
    assert!(matches!(
        e.poll(&a, secs(3)).unwrap(),
        PollDecision::Answer(Action::Snapshot { .. })
    ));
    let hb = Heartbeat {
        broker: 1,
        epoch: lease.epoch,
        phase: Phase::Stopping,
        progress: None,
        cluster_step: None,
    };
    e.heartbeat(&hb, secs(4)).unwrap();
    // `b`, on another host, polls while `a` works: `b` gets nothing and
    // `a` keeps its lease; the operator is told.
    assert_eq!(
        e.poll(&b, secs(5)).unwrap(),
        PollDecision::Answer(Action::Idle)
    );
    e.heartbeat(&hb, secs(6))
        .expect("the holder keeps its lease");
    let st = e.status(secs(6)).unwrap();
    let err = st.brokers[0].last_error.clone().unwrap_or_default();
    assert!(
        err.contains("two agents act as broker 1") && err.contains("old-host"),
        "{err}"
    );
    // A second process on the holder's own host gets nothing either.
    let mut a2 = a.clone();
    a2.instance = Some("cccc".into());
    assert_eq!(
        e.poll(&a2, secs(7)).unwrap(),
        PollDecision::Answer(Action::Idle)
    );
    e.heartbeat(&hb, secs(8))
        .expect("the holder keeps its lease");
    // The same process polling without the lease it works under lost
    // track of it: the lease is closed the careful way.
    assert_eq!(
        e.poll(&a, secs(9)).unwrap(),
        PollDecision::Answer(Action::Idle)
    );
    assert!(matches!(
        e.heartbeat(&hb, secs(10)),
        Err(ApiError::Conflict(_))
    ));
}

#[test]
fn a_cycle_leases_one_broker_at_a_time_in_id_order() {
    let mut e = engine();
    start_cycle(&mut e);
    assert_eq!(
        poll_grant(&mut e, 2, secs(2)),
        Action::Idle,
        "not broker 2's turn"
    );
    // The coordinator's own check refuses: no lease, reason recorded.
    let PollDecision::Check(c) = e.poll(&poll_req(1, None), secs(2)).unwrap() else {
        panic!("broker 1 should be a candidate")
    };
    assert_eq!(
        e.grant(
            &c,
            Err("orders-0 under-replicated".into()),
            &poll_req(1, None),
            secs(2)
        )
        .unwrap(),
        Action::Idle
    );
    let st = e.status(secs(2)).unwrap();
    assert!(st.cycle.unwrap().brokers[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("orders-0"));

    let a = poll_grant(&mut e, 1, secs(3));
    let epoch = epoch_of(&a);
    assert_eq!(
        poll_grant(&mut e, 2, secs(4)),
        Action::Idle,
        "the slot is held"
    );
    e.heartbeat(&hb(1, epoch, Phase::Capturing), secs(5))
        .unwrap();
    let err = e
        .heartbeat(&hb(1, epoch + 7, Phase::Capturing), secs(5))
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Conflict(ref m) if m.contains("stale lease epoch")),
        "{err:?}"
    );

    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Recovered {
                snapshot_id: "s1".into(),
                downtime_ms: 2000,
            },
        },
        secs(6),
    )
    .unwrap();
    assert_eq!(slot_state(&e), None, "a clean release frees the slot");
    let a2 = poll_grant(&mut e, 2, secs(7));
    assert!(epoch_of(&a2) > epoch, "epochs grow");
    // Broker 1's archive finishes while broker 2 holds the lease.
    e.report(
        &SnapshotReport {
            broker: 1,
            epoch,
            result: ReportResult::Committed {
                snapshot: summary(1, "s1"),
            },
        },
        secs(8),
    )
    .unwrap();
    assert_eq!(e.snapshots(Some(1)).unwrap().len(), 1);
    // A stale release of broker 1's old lease after broker 2's grant is fine
    // only for broker 1's latest lease; another broker's epoch is refused.
    let err = e
        .release(
            &Release {
                broker: 2,
                epoch,
                outcome: Outcome::Skipped { reason: "x".into() },
            },
            secs(8),
        )
        .unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
}

/// An agent that did not hear the answer to its release sends it again:
/// accepted, recorded once. An agent restarted between its release and
/// its state file's update re-releases the lease as failed: refused, the
/// committed snapshot and the broker's clean record stand.
#[test]
fn a_released_lease_keeps_its_first_outcome() {
    let mut e = engine();
    start_cycle(&mut e);
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
    let committed = Release {
        broker: 1,
        epoch,
        outcome: Outcome::Committed {
            snapshot: summary(1, "s1"),
            downtime_ms: 2000,
        },
    };
    e.release(&committed, secs(3)).unwrap();
    e.release(&committed, secs(4))
        .expect("the same release again is a retry");
    assert_eq!(e.snapshots(Some(1)).unwrap().len(), 1);
    let err = e
        .release(
            &Release {
                broker: 1,
                epoch,
                outcome: Outcome::Failed {
                    reason: "agent restarted after an interrupted snapshot".into(),
                    broker_running: true,
                },
            },
            secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Conflict(ref m)
            if m.contains(&format!("lease epoch {epoch} of broker 1 was already released (committed)"))),
        "{err:?}"
    );
    let st = e.status(secs(6)).unwrap();
    assert_eq!(st.brokers[0].last_error, None, "{:?}", st.brokers[0]);
    assert_eq!(e.snapshots(Some(1)).unwrap().len(), 1);
    assert_eq!(slot_state(&e), None);
}

#[test]
fn an_expired_lease_keeps_the_slot_closed_until_the_cluster_is_in_sync() {
    let mut e = engine();
    start_cycle(&mut e);
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
    e.heartbeat(&hb(1, epoch, Phase::Capturing), secs(3))
        .unwrap();
    let needs = e.tick(secs(3 + 61)).unwrap();
    assert!(needs.settle_check);
    assert_eq!(slot_state(&e), Some((1, "settling".into())));
    // The agent comes back too late.
    let err = e
        .heartbeat(&hb(1, epoch, Phase::Starting), secs(70))
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Conflict(ref m) if m.contains("settling")),
        "{err:?}"
    );
    // Broker 1 was requeued, but nobody gets a lease while settling.
    assert_eq!(poll_grant(&mut e, 2, secs(71)), Action::Idle);
    assert_eq!(poll_grant(&mut e, 1, secs(71)), Action::Idle);
    e.apply_cluster_check(Err("orders-0 (missing [1])".into()), secs(72))
        .unwrap();
    assert_eq!(slot_state(&e), Some((1, "settling".into())));
    e.apply_cluster_check(Ok(()), secs(80)).unwrap();
    assert_eq!(slot_state(&e), None);
    // Broker 2 is next (broker 1 went to the end of the line).
    assert!(matches!(
        poll_grant(&mut e, 2, secs(81)),
        Action::Snapshot { .. }
    ));
}

#[test]
fn a_failed_release_with_the_broker_down_is_loud_and_settles() {
    let mut e = engine();
    start_cycle(&mut e);
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Failed {
                reason: "start command failed 3 times".into(),
                broker_running: false,
            },
        },
        secs(3),
    )
    .unwrap();
    assert_eq!(slot_state(&e), Some((1, "settling".into())));
    let st = e.status(secs(3)).unwrap();
    let b1 = &st.brokers[0];
    assert!(
        b1.last_error
            .as_deref()
            .unwrap()
            .contains("BROKER 1 LEFT STOPPED"),
        "{b1:?}"
    );
}

#[test]
fn skipped_brokers_are_retried_at_the_end_then_failed() {
    let mut e = engine();
    start_cycle(&mut e);
    let skip = |e: &mut Engine, b: i32, at: Now| {
        let epoch = epoch_of(&poll_grant(e, b, at));
        e.release(
            &Release {
                broker: b,
                epoch,
                outcome: Outcome::Skipped {
                    reason: "gate: orders-1 under min ISR".into(),
                },
            },
            at,
        )
        .unwrap();
    };
    let done = |e: &mut Engine, b: i32, at: Now| {
        let epoch = epoch_of(&poll_grant(e, b, at));
        e.release(
            &Release {
                broker: b,
                epoch,
                outcome: Outcome::Committed {
                    snapshot: summary(b, &format!("s{b}")),
                    downtime_ms: 1000,
                },
            },
            at,
        )
        .unwrap();
    };
    skip(&mut e, 1, secs(2));
    done(&mut e, 2, secs(3));
    done(&mut e, 3, secs(4));
    skip(&mut e, 1, secs(5)); // second and last attempt
    let needs = e.tick(secs(6)).unwrap();
    assert!(needs.final_check);
    e.apply_cluster_check(Ok(()), secs(7)).unwrap();
    let st = e.status(secs(7)).unwrap();
    let c = st.cycle.unwrap();
    assert_eq!(c.state, "partial");
    assert!(c.message.unwrap().contains("[1]"));
    let b1 = c.brokers.iter().find(|b| b.broker == 1).unwrap();
    assert_eq!((b1.state.as_str(), b1.attempts), ("failed", 2));
    assert!(b1.reason.as_deref().unwrap().contains("under min ISR"));
    assert!(e.tick(secs(8)).unwrap().prune);
}

#[test]
fn a_broker_whose_agent_never_polls_is_skipped_after_the_gate_timeout() {
    let mut e = engine();
    start_cycle(&mut e);
    e.tick(secs(2)).unwrap();
    e.tick(secs(2 + 601)).unwrap();
    let st = e.status(secs(604)).unwrap();
    let b1 = st
        .cycle
        .unwrap()
        .brokers
        .into_iter()
        .find(|b| b.broker == 1)
        .unwrap();
    assert_eq!(b1.state, "pending");
    assert!(b1.reason.unwrap().contains("never polled"));
    assert!(matches!(
        poll_grant(&mut e, 2, secs(605)),
        Action::Snapshot { .. }
    ));
}

#[test]
fn restores_need_the_lease_and_go_first() {
    let mut e = engine();
    let err = e.create_restore(2, None, false, t0()).unwrap_err();
    assert!(
        matches!(err, ApiError::NotFound(ref m) if m.contains("no usable snapshot")),
        "{err:?}"
    );
    list_snapshot(&e, &summary(2, "s2"), t0());
    let err = e.create_restore(7, None, false, t0()).unwrap_err();
    assert!(
        matches!(err, ApiError::NotFound(ref m) if m.contains("broker 7 is not configured")),
        "{err:?}"
    );
    let order = e.create_restore(2, None, false, t0()).unwrap();
    assert_eq!(
        (order.state.as_str(), order.snapshot_id.as_str()),
        ("pending", "s2")
    );
    let err = e.create_restore(2, None, false, t0()).unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)));
    start_cycle(&mut e);
    assert_eq!(
        poll_grant(&mut e, 1, secs(2)),
        Action::Idle,
        "the restore goes first"
    );
    let a = poll_grant(&mut e, 2, secs(3));
    let Action::Restore { lease, order: o } = a else {
        panic!("{a:?}")
    };
    assert_eq!(
        (o.snapshot_id.as_str(), o.cluster_id.as_str(), o.force),
        ("s2", "cluster-a", false)
    );
    e.heartbeat(
        &Heartbeat {
            broker: 2,
            epoch: lease.epoch,
            phase: Phase::Downloading,
            progress: Some("40%".into()),
            cluster_step: None,
        },
        secs(4),
    )
    .unwrap();
    assert_eq!(
        e.restore(order.id).unwrap().progress.as_deref(),
        Some("40%")
    );
    e.release(
        &Release {
            broker: 2,
            epoch: lease.epoch,
            outcome: Outcome::Restored {
                snapshot_id: "s2".into(),
                downtime_ms: 9000,
            },
        },
        secs(5),
    )
    .unwrap();
    assert_eq!(e.restore(order.id).unwrap().state, "done");
    assert!(matches!(
        poll_grant(&mut e, 1, secs(6)),
        Action::Snapshot { .. }
    ));
}

#[test]
fn an_agent_that_lost_its_lease_closes_it_carefully() {
    let mut e = engine();
    start_cycle(&mut e);
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
    // No heartbeat yet: the grant may not have arrived; hand it out again.
    assert_eq!(epoch_of(&poll_grant(&mut e, 1, secs(3))), epoch);
    e.heartbeat(&hb(1, epoch, Phase::Stopping), secs(4))
        .unwrap();
    // Now it polls as if it held nothing (it restarted).
    assert_eq!(poll_grant(&mut e, 1, secs(5)), Action::Idle);
    assert_eq!(slot_state(&e), Some((1, "settling".into())));
}

#[test]
fn schedule_respects_suspend_and_running_cycles() {
    let mut e = engine();
    start_cycle(&mut e);
    assert!(matches!(
        e.run_now(None, secs(2)),
        Err(ApiError::Conflict(_))
    ));
    // A day later the first cycle is still running: no second one.
    e.tick(secs(86_402)).unwrap();
    let st = e.status(secs(86_402)).unwrap();
    assert_eq!(st.cycle.unwrap().id, 1);
    assert!(st
        .recent_events
        .iter()
        .any(|ev| ev.message.contains("still running")));
}

#[test]
fn phase_durations_of_the_latest_lease_come_from_its_heartbeats() {
    let mut e = engine();
    start_cycle(&mut e);
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(10)));
    // Repeated heartbeats in a phase keep its first report as its start.
    for (at, phase) in [
        (12, Phase::Gating),
        (20, Phase::Gating),
        (30, Phase::Stopping),
        (45, Phase::Capturing),
        (50, Phase::Capturing),
        (60, Phase::Starting),
    ] {
        e.heartbeat(&hb(1, epoch, phase), secs(at)).unwrap();
    }
    // While the lease runs, its last phase lasts until now.
    let running = e.last_lease_phases(secs(64)).unwrap();
    let got: Vec<(&str, f64)> = running
        .iter()
        .map(|p| (p.phase.as_str(), p.seconds))
        .collect();
    assert_eq!(
        got,
        vec![
            ("gating", 20.0),
            ("stopping", 15.0),
            ("capturing", 15.0),
            ("starting", 4.0)
        ]
    );
    assert!(running
        .iter()
        .all(|p| p.broker == 1 && p.epoch == epoch as i64 && p.kind == "snapshot"));
    e.heartbeat(&hb(1, epoch, Phase::Recovering), secs(70))
        .unwrap();
    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Recovered {
                snapshot_id: "s1".into(),
                downtime_ms: 30_000,
            },
        },
        secs(80),
    )
    .unwrap();
    // Ended: the last phase stops at the release, whenever one looks.
    let done = e.last_lease_phases(secs(500)).unwrap();
    assert_eq!(done.len(), 5);
    assert_eq!(done[3].seconds, 10.0, "{done:?}");
    assert_eq!(
        (done[4].phase.as_str(), done[4].seconds),
        ("recovering", 10.0)
    );
    // Every broker has its own latest lease.
    let epoch2 = epoch_of(&poll_grant(&mut e, 2, secs(90)));
    e.heartbeat(&hb(2, epoch2, Phase::Gating), secs(95))
        .unwrap();
    let both = e.last_lease_phases(secs(100)).unwrap();
    assert_eq!(both.len(), 6, "{both:?}");
    assert_eq!(both[..5], done[..]);
    assert_eq!(
        (both[5].broker, both[5].phase.as_str(), both[5].seconds),
        (2, "gating", 10.0)
    );
}

#[test]
fn a_suspended_coordinator_grants_no_snapshot_lease_and_counts_no_wait() {
    let mut e = engine();
    start_cycle(&mut e);
    e.suspend(Some("disk replacement on broker 1"), secs(2))
        .unwrap();
    let st = e.status(secs(2)).unwrap();
    assert!(st.suspended);
    assert!(
        st.suspended_because
            .as_deref()
            .unwrap()
            .contains("disk replacement"),
        "{st:?}"
    );
    assert_eq!(poll_grant(&mut e, 1, secs(3)), Action::Idle);
    assert!(matches!(e.run_now(None, secs(3)), Err(ApiError::Conflict(m)) if m.contains("resume")));
    // Far past the gate timeout: the broker's turn was not counted.
    e.tick(secs(4)).unwrap();
    e.tick(secs(2000)).unwrap();
    let b1 = e.status(secs(2000)).unwrap().cycle.unwrap().brokers[0].clone();
    assert_eq!(
        (b1.broker, b1.state.as_str(), b1.attempts),
        (1, "pending", 0)
    );
    // Restores still go.
    list_snapshot(&e, &summary(2, "s2"), t0());
    e.create_restore(2, None, false, secs(2001)).unwrap();
    assert!(matches!(
        poll_grant(&mut e, 2, secs(2002)),
        Action::Restore { .. }
    ));
    // A second suspend keeps it suspended; resume lifts it (once).
    e.resume(secs(2003)).unwrap();
    assert!(matches!(e.resume(secs(2004)), Err(ApiError::Conflict(_))));
    assert!(!e.status(secs(2004)).unwrap().suspended);
}

#[test]
fn cancelling_a_cycle_aborts_its_lease_the_careful_way() {
    let mut e = engine();
    start_cycle(&mut e);
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
    assert!(
        !e.heartbeat(&hb(1, epoch, Phase::Stopping), secs(3))
            .unwrap()
            .abort
    );
    let c = e.cancel_cycle(None, secs(4)).unwrap();
    assert_eq!((c.aborted_lease, c.broker), (Some(epoch as i64), Some(1)));
    let st = e.status(secs(4)).unwrap();
    assert_eq!(st.cycle.unwrap().state, "cancelled");
    // The agent hears it at its next heartbeat, starts its broker again
    // and releases: the slot waits for the cluster as after any failure.
    assert!(
        e.heartbeat(&hb(1, epoch, Phase::Starting), secs(5))
            .unwrap()
            .abort
    );
    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Failed {
                reason: "aborted by the coordinator".into(),
                broker_running: true,
            },
        },
        secs(6),
    )
    .unwrap();
    assert_eq!(slot_state(&e), Some((1, "settling".into())));
    e.apply_cluster_check(Ok(()), secs(7)).unwrap();
    assert_eq!(slot_state(&e), None);
    // Nobody else's turn comes: the cycle is over.
    assert_eq!(poll_grant(&mut e, 2, secs(8)), Action::Idle);
    assert!(matches!(
        e.cancel_cycle(None, secs(9)),
        Err(ApiError::NotFound(_))
    ));
    // A new cycle can start.
    assert!(e.run_now(None, secs(10)).is_ok());
    assert!(matches!(
        e.cancel_cycle(Some(1), secs(11)),
        Err(ApiError::Conflict(_))
    ));
}

#[test]
fn cancelling_a_restore_order_ends_it_or_aborts_its_lease() {
    let mut e = engine();
    list_snapshot(&e, &summary(2, "s2"), t0());
    let waiting = e.create_restore(2, None, false, t0()).unwrap();
    let o = e.cancel_restore(waiting.id, secs(1)).unwrap();
    assert_eq!(o.state, "cancelled");
    assert_eq!(
        poll_grant(&mut e, 2, secs(2)),
        Action::Idle,
        "nothing to restore"
    );
    assert!(matches!(
        e.cancel_restore(waiting.id, secs(3)),
        Err(ApiError::Conflict(_))
    ));
    let running = e.create_restore(2, None, false, secs(4)).unwrap();
    let Action::Restore { lease, .. } = poll_grant(&mut e, 2, secs(5)) else {
        panic!("the restore should be granted")
    };
    let o = e.cancel_restore(running.id, secs(6)).unwrap();
    assert_eq!(o.state, "running", "it ends when its agent does");
    assert!(
        e.heartbeat(&hb(2, lease.epoch, Phase::Downloading), secs(7))
            .unwrap()
            .abort
    );
    assert!(matches!(
        e.cancel_restore(99, secs(8)),
        Err(ApiError::NotFound(_))
    ));
}

// ----- the catalog: clusters, clocks, restore orders -------------------------

fn record(case: &str, inputs: u64) {
    kafka_snapshot_testkit::report::record("security", case, &[("inputs", inputs)]);
}

fn day(d: i64) -> Now {
    t0() + chrono::Duration::days(d)
}

/// A snapshot of `broker` of `cluster`, committed at `committed` by its
/// agent's clock.
fn snap(cluster: &str, broker: i32, id: &str, committed: Now) -> SnapshotSummary {
    SnapshotSummary {
        cluster_id: cluster.into(),
        committed,
        ..summary(broker, id)
    }
}

fn plan(
    e: &Engine,
    keep_last: usize,
    max_age_days: Option<u64>,
    now: Now,
) -> crate::retention::Plan {
    crate::retention::plan(
        &e.retention_candidates().unwrap(),
        &crate::retention::Policy {
            keep_last,
            max_age: max_age_days.map(|d| std::time::Duration::from_secs(d * 86400)),
        },
        &e.busy_brokers().unwrap(),
        e.kept_set().unwrap().as_ref(),
        now,
    )
}

fn deleted(p: &crate::retention::Plan) -> Vec<&str> {
    p.delete.iter().map(|d| d.snapshot_id.as_str()).collect()
}

/// Grants broker 1 a snapshot lease of a new cycle at `now`: its epoch.
fn lease_of_broker_1(e: &mut Engine, now: Now) -> u64 {
    e.tick(now).unwrap();
    e.tick(now + chrono::Duration::seconds(1)).unwrap();
    epoch_of(&poll_grant(e, 1, now + chrono::Duration::seconds(2)))
}

/// Hole 2: an agent whose snapshot names another cluster.id is refused,
/// by report and by release, naming both ids and the snapshot; nothing is
/// listed and the refusal is an event.
#[test]
fn a_snapshot_report_of_another_cluster_is_refused_naming_both_ids() {
    let mut e = engine();
    let epoch = lease_of_broker_1(&mut e, t0());
    let foreign = snap("cluster-b", 1, "s-b", secs(3));
    let report = SnapshotReport {
        broker: 1,
        epoch,
        result: ReportResult::Committed {
            snapshot: foreign.clone(),
        },
    };
    let err = e.report(&report, secs(4)).unwrap_err();
    let ApiError::BadRequest(m) = &err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains("s-b") && m.contains("cluster-b") && m.contains("cluster-a"),
        "{m}"
    );
    let err = e
        .release(
            &Release {
                broker: 1,
                epoch,
                outcome: Outcome::Committed {
                    snapshot: foreign,
                    downtime_ms: 1000,
                },
            },
            secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(err, ApiError::BadRequest(ref m) if m.contains("cluster-b")),
        "{err:?}"
    );
    assert!(e.snapshots(None).unwrap().is_empty());
    let st = e.status(secs(6)).unwrap();
    assert_eq!(st.cluster_id.as_deref(), Some("cluster-a"));
    let refused: Vec<_> = st
        .recent_events
        .iter()
        .filter(|ev| ev.kind == "report_refused")
        .collect();
    assert_eq!(refused.len(), 2, "{:?}", st.recent_events);
    assert!(refused[0].message.contains("cluster-b"));
    // The lease is still held: the agent of our own cluster goes on.
    let ours = snap("cluster-a", 1, "s-a", secs(3));
    e.report(
        &SnapshotReport {
            broker: 1,
            epoch,
            result: ReportResult::Committed { snapshot: ours },
        },
        secs(7),
    )
    .unwrap();
    assert_eq!(e.snapshots(None).unwrap().len(), 1);
    record(
        "2. a snapshot report naming another cluster.id is refused",
        2,
    );
}

/// Hole 2: a catalog holding another cluster's snapshots of the same
/// broker ids (a store shared by two clusters, rebuilt before this rule):
/// listing, verification, retention and the restore pick see only this
/// coordinator's cluster.
#[test]
fn another_clusters_snapshots_are_never_listed_kept_deleted_or_restored() {
    let mut e = engine();
    list_snapshot(&e, &snap("cluster-a", 1, "a1", day(1)), day(1));
    list_snapshot(&e, &snap("cluster-a", 1, "a2", day(2)), day(2));
    for (i, d) in [3, 4, 5].iter().enumerate() {
        let id = format!("b{}", i + 1);
        list_snapshot(&e, &snap("cluster-b", 1, &id, day(*d)), day(*d));
    }
    let listed: Vec<String> = e
        .snapshots(None)
        .unwrap()
        .into_iter()
        .map(|r| r.snapshot_id)
        .collect();
    assert_eq!(listed, ["a1", "a2"]);
    assert_eq!(deleted(&plan(&e, 1, None, day(6))), ["a1"]);
    assert_eq!(e.status(day(6)).unwrap().brokers[0].snapshots, 2);
    assert_eq!(
        e.next_unverified().unwrap().map(|(c, _, id)| (c, id)),
        Some(("cluster-a".to_string(), "a1".to_string()))
    );
    let order = e.create_restore(1, None, false, day(6)).unwrap();
    assert_eq!(order.snapshot_id, "a2", "the newest of our cluster");
    e.cancel_restore(order.id, day(6)).unwrap();
    let err = e.create_restore(1, Some("b3"), true, day(6)).unwrap_err();
    assert!(
        matches!(err, ApiError::NotFound(ref m) if m.contains("b3") && m.contains("cluster-a")),
        "{err:?}"
    );
    record(
        "2. another cluster's snapshots are not listed, pruned or restored",
        5,
    );
}

/// Hole 2: the cluster.id comes from the config, else from the cluster
/// (kept in the database); a cluster answering with another id is refused
/// by name, and reported once.
#[test]
fn the_cluster_id_is_learned_once_and_another_cluster_is_refused() {
    let cfg = CFG.replace("[cluster]\nid = \"cluster-a\"\n", "");
    let cfg = CoordinatorConfig::parse(&cfg, std::path::Path::new("/c.toml")).unwrap();
    let mut e = Engine::new(crate::store::open_in_memory(), cfg);
    assert_eq!(e.cluster_id().unwrap(), None);
    let err = e.create_restore(1, None, false, t0()).unwrap_err();
    assert!(
        matches!(err, ApiError::Unavailable(ref m) if m.contains("cluster.id")),
        "{err:?}"
    );
    e.learn_cluster_id("cluster-a", t0()).unwrap();
    assert_eq!(e.cluster_id().unwrap().as_deref(), Some("cluster-a"));
    for i in 0..3 {
        let err = e.learn_cluster_id("cluster-b", secs(i)).unwrap_err();
        assert!(
            matches!(err, ApiError::Conflict(ref m) if m.contains("cluster-a") && m.contains("cluster-b")),
            "{err:?}"
        );
    }
    assert_eq!(e.cluster_id().unwrap().as_deref(), Some("cluster-a"));
    let events = e.status(secs(5)).unwrap().recent_events;
    assert_eq!(
        events
            .iter()
            .filter(|ev| ev.kind == "cluster_mismatch")
            .count(),
        1,
        "{events:?}"
    );
    // A configured id wins over whatever the cluster says.
    let mut e = engine();
    assert!(e.learn_cluster_id("cluster-b", t0()).is_err());
    assert_eq!(e.cluster_id().unwrap().as_deref(), Some("cluster-a"));
    record(
        "2. the coordinator's cluster.id is learned once, another cluster refused",
        3,
    );
}

/// Hole 3: a snapshot committed by a clock a year ahead neither outranks
/// the real snapshots reported after it (keep_last 1 used to keep it and
/// delete every real one) nor becomes the default restore target; it is
/// flagged.
#[test]
fn a_future_commit_time_neither_wins_retention_nor_the_restore_pick() {
    let mut e = engine();
    let epoch = lease_of_broker_1(&mut e, day(1));
    let future = snap(
        "cluster-a",
        1,
        "s-future",
        day(1) + chrono::Duration::days(365),
    );
    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Committed {
                snapshot: future,
                downtime_ms: 1000,
            },
        },
        day(1) + chrono::Duration::seconds(3),
    )
    .unwrap();
    list_snapshot(&e, &snap("cluster-a", 1, "s-real-2", day(2)), day(2));
    list_snapshot(&e, &snap("cluster-a", 1, "s-real-3", day(3)), day(3));
    for id in ["s-future", "s-real-2", "s-real-3"] {
        e.record_verification("cluster-a", 1, id, Ok(Some(true)), day(3))
            .unwrap();
    }
    let p = plan(&e, 1, None, day(4));
    assert_eq!(deleted(&p), ["s-future", "s-real-2"], "{p:?}");
    let order = e.create_restore(1, None, false, day(4)).unwrap();
    assert_eq!(order.snapshot_id, "s-real-3");
    // Flagged: the row, status, the counter and an event.
    let rows = e.snapshots(Some(1)).unwrap();
    let f = rows.iter().find(|r| r.snapshot_id == "s-future").unwrap();
    let at = day(1) + chrono::Duration::seconds(3);
    assert_eq!(f.clock_skew_ms, Some(365 * 86_400_000 - 3000));
    assert_eq!(f.seen_at.as_deref(), Some(crate::store::ts(at).as_str()));
    let st = e.status(day(4)).unwrap();
    assert_eq!(st.brokers[0].clock_skewed_snapshots, 1);
    assert_eq!(st.brokers[0].last_snapshot_id.as_deref(), Some("s-real-3"));
    assert!(e
        .counters()
        .unwrap()
        .contains(&("clock_skew_total".to_string(), "1".to_string(), 1)));
    let events = crate::store::events::recent(e.conn(), 50).unwrap();
    assert!(
        events
            .iter()
            .any(|ev| ev.kind == "clock_skew" && ev.message.contains("s-future")),
        "{events:?}"
    );
    record(
        "3. a snapshot dated in the future does not win retention or the restore pick",
        3,
    );
}

/// Hole 3: the newest snapshot, committed by a clock a month behind and
/// not verified yet, was deleted at once by max_age; its age is the
/// coordinator's (none), and the newest verified one stays too.
#[test]
fn a_past_commit_time_does_not_make_the_newest_snapshot_old() {
    let mut e = engine();
    list_snapshot(&e, &snap("cluster-a", 1, "s-old", day(10)), day(10));
    e.record_verification("cluster-a", 1, "s-old", Ok(Some(true)), day(10))
        .unwrap();
    let behind = snap(
        "cluster-a",
        1,
        "s-behind",
        day(20) - chrono::Duration::days(30),
    );
    list_snapshot(&e, &behind, day(20));
    let p = plan(&e, 7, Some(7), day(20));
    assert!(p.delete.is_empty(), "{p:?}");
    // Whatever the clocks say, the newest verified one stays.
    e.record_verification("cluster-a", 1, "s-behind", Ok(Some(true)), day(20))
        .unwrap();
    let p = plan(&e, 1, Some(1), day(40));
    assert_eq!(deleted(&p), ["s-old"], "{p:?}");
    record(
        "3. a snapshot dated in the past is not aged by its own clock",
        2,
    );
}

/// Hole 4: a snapshot named by a pending restore order (of its broker) and
/// the source of a forced restore of another broker that is running are
/// kept, whatever keep_last says; an order made after retention planned
/// stops the deletion too.
#[test]
fn snapshots_named_by_open_restore_orders_are_kept() {
    let mut e = engine();
    for d in 1..=3 {
        list_snapshot(
            &e,
            &snap("cluster-a", 2, &format!("b2-{d}"), day(d)),
            day(d),
        );
        list_snapshot(
            &e,
            &snap("cluster-a", 3, &format!("b3-{d}"), day(d)),
            day(d),
        );
    }
    // Forced, broker 1 from broker 3's oldest, and running.
    let forced = e.create_restore(1, Some("b3-1"), true, day(4)).unwrap();
    let a = poll_grant(&mut e, 1, day(4));
    assert!(matches!(a, Action::Restore { .. }), "{a:?}");
    assert_eq!(e.restore(forced.id).unwrap().state, "running");
    // Pending, of its own broker.
    let pending = e.create_restore(2, Some("b2-1"), false, day(4)).unwrap();
    assert_eq!(pending.state, "pending");
    let p = plan(&e, 1, None, day(5));
    assert_eq!(deleted(&p), ["b2-2", "b3-2"], "{p:?}");
    for id in ["b2-1", "b3-1"] {
        assert!(
            p.held
                .iter()
                .any(|(_, why)| why.contains(id) && why.contains("restore order")),
            "{p:?}"
        );
    }
    // A plan made before an order: the deletion itself refuses.
    let d = crate::retention::Deletion {
        snapshot_id: "b2-2".into(),
        cluster_id: "cluster-a".into(),
        broker: 2,
        reason: "test".into(),
    };
    e.cancel_restore(pending.id, day(5)).unwrap();
    let late = e.create_restore(2, Some("b2-2"), false, day(5)).unwrap();
    let kept = e.begin_deletion(&d, day(5)).unwrap();
    assert!(kept.is_some_and(|k| k.contains(&late.id.to_string())));
    assert!(e
        .snapshots(Some(2))
        .unwrap()
        .iter()
        .any(|r| r.snapshot_id == "b2-2"));
    // Once the order is over the snapshot may go.
    e.cancel_restore(late.id, day(6)).unwrap();
    assert_eq!(e.begin_deletion(&d, day(6)).unwrap(), None);
    record("4. a snapshot read by a pending restore order is kept", 2);
    record(
        "4. the source of a running forced restore of another broker is kept",
        1,
    );
}

/// Three brokers and three dedicated controllers, the controllers listed
/// first and with the lowest ids on purpose.
fn engine_with_controllers() -> Engine {
    let text = CFG.replace(
        "[[agents]]\nbroker = 1\n",
        "[[agents]]\nnode = 0\nrole = \"controller\"\n\
         token_sha256 = \"4444444444444444444444444444444444444444444444444444444444444444\"\n\
         [[agents]]\nnode = 5\nrole = \"combined\"\n\
         token_sha256 = \"5555555555555555555555555555555555555555555555555555555555555555\"\n\
         [[agents]]\nbroker = 1\n",
    );
    let cfg = CoordinatorConfig::parse(&text, std::path::Path::new("/c.toml")).unwrap();
    Engine::new(crate::store::open_in_memory(), cfg)
}

#[test]
fn a_cycle_takes_brokers_first_and_controllers_last() {
    let mut e = engine_with_controllers();
    start_cycle(&mut e);
    let st = e.status(secs(1)).unwrap();
    let order: Vec<i32> = st.cycle.unwrap().brokers.iter().map(|b| b.broker).collect();
    assert_eq!(order, vec![1, 2, 3, 5, 0]);
    let roles: Vec<(i32, NodeRole)> = st.brokers.iter().map(|b| (b.broker, b.role)).collect();
    assert_eq!(
        roles,
        vec![
            (1, NodeRole::Broker),
            (2, NodeRole::Broker),
            (3, NodeRole::Broker),
            (5, NodeRole::Combined),
            (0, NodeRole::Controller)
        ]
    );
    // The first turn is a broker's, not the controller's with the lowest id.
    assert!(matches!(poll_grant(&mut e, 0, secs(2)), Action::Idle));
    assert!(matches!(
        poll_grant(&mut e, 1, secs(2)),
        Action::Snapshot { .. }
    ));
}

#[test]
fn an_agent_whose_process_roles_contradict_the_config_is_refused_and_shown() {
    let mut e = engine_with_controllers();
    start_cycle(&mut e);
    let mut req = poll_req(1, None);
    req.role = Some(NodeRole::Controller);
    let err = e.poll(&req, secs(2)).unwrap_err().to_string();
    assert!(
        err.contains("the agent of node 1 runs on a controller")
            && err.contains("says broker")
            && err.contains("role = \"controller\""),
        "{err}"
    );
    let st = e.status(secs(3)).unwrap();
    let b1 = st.brokers.iter().find(|b| b.broker == 1).unwrap();
    assert!(b1
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("runs on a controller"));
    // Agreeing (or an older agent that does not say) is served.
    req.role = Some(NodeRole::Broker);
    assert!(e.poll(&req, secs(4)).is_ok());
    req.role = None;
    assert!(e.poll(&req, secs(5)).is_ok());
}

// ----- snapshot sets ----------------------------------------------------------

/// Runs a manual cycle of every broker from `at`: the brokers in `commits`
/// commit that snapshot, the others are skipped until they fail. Ends with
/// the final check passing; returns the time it ended.
fn run_cycle(e: &mut Engine, at: Now, commits: &[(i32, &str)]) -> Now {
    e.run_now(None, at).unwrap();
    let mut t = at;
    for _ in 0..12 {
        t += chrono::Duration::seconds(1);
        e.tick(t).unwrap();
        let nodes = e.cfg.nodes();
        let Some((b, lease)) = nodes.into_iter().find_map(|b| match poll_grant(e, b, t) {
            Action::Snapshot { lease } => Some((b, lease)),
            _ => None,
        }) else {
            break;
        };
        let outcome = match commits.iter().find(|(x, _)| *x == b) {
            Some((_, id)) => Outcome::Committed {
                snapshot: summary(b, id),
                downtime_ms: 1000,
            },
            None => Outcome::Skipped {
                reason: "gate: orders-0 under min ISR".into(),
            },
        };
        e.release(
            &Release {
                broker: b,
                epoch: lease.epoch,
                outcome,
            },
            t,
        )
        .unwrap();
    }
    t += chrono::Duration::seconds(1);
    assert!(
        e.tick(t).unwrap().final_check,
        "{:#?}",
        e.status(t).unwrap().cycle
    );
    e.apply_cluster_check(Ok(()), t).unwrap();
    t
}

fn verify(e: &mut Engine, b: i32, id: &str, ok: bool, at: Now) {
    let result = if ok {
        Ok(Some(true))
    } else {
        Err("file x: checksum mismatch".into())
    };
    e.record_verification("cluster-a", b, id, result, at)
        .unwrap();
}

fn node_states(v: &kafka_snapshot_model::api::SetView) -> Vec<(i32, Option<&str>, &str)> {
    v.nodes
        .iter()
        .map(|n| (n.node, n.snapshot_id.as_deref(), n.status.as_str()))
        .collect()
}

#[test]
fn a_cycle_of_every_node_records_a_set_complete_and_then_verified() {
    let mut e = engine();
    e.run_now(None, secs(1)).unwrap();
    let sets = e.sets().unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].finished_at, None);
    assert_eq!(
        node_states(&sets[0]),
        [
            (1, None, "pending"),
            (2, None, "pending"),
            (3, None, "pending")
        ]
    );
    let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Committed {
                snapshot: summary(1, "s1"),
                downtime_ms: 900,
            },
        },
        secs(3),
    )
    .unwrap();
    assert_eq!(
        node_states(&e.sets().unwrap()[0])[0],
        (1, Some("s1"), "not verified"),
        "a committed snapshot joins the set at once"
    );
    // Brokers 2 and 3 recover first and report their archives later.
    for (b, at) in [(2, 4), (3, 6)] {
        let epoch = epoch_of(&poll_grant(&mut e, b, secs(at)));
        let id = format!("s{b}");
        e.release(
            &Release {
                broker: b,
                epoch,
                outcome: Outcome::Recovered {
                    snapshot_id: id.clone(),
                    downtime_ms: 900,
                },
            },
            secs(at),
        )
        .unwrap();
        assert_eq!(
            node_states(&e.sets().unwrap()[0])[(b - 1) as usize].2,
            "pending"
        );
        e.report(
            &SnapshotReport {
                broker: b,
                epoch,
                result: ReportResult::Committed {
                    snapshot: summary(b, &id),
                },
            },
            secs(at + 1),
        )
        .unwrap();
    }
    assert!(e.tick(secs(8)).unwrap().final_check);
    assert!(
        e.next_unstored_set().unwrap().is_none(),
        "not before the cycle ends"
    );
    e.apply_cluster_check(Ok(()), secs(9)).unwrap();
    let set = &e.sets().unwrap()[0];
    assert_eq!(set.cycle_id, 1);
    assert_eq!(set.set_id, "20260501T020001.000Z-cycle1");
    assert_eq!(set.cluster_id.as_deref(), Some("cluster-a"));
    assert_eq!(set.finished_at.as_deref(), Some("2026-05-01T02:00:09.000Z"));
    assert!(set.complete && !set.verified && !set.kept && !set.stored);
    let events = e.status(secs(9)).unwrap().recent_events;
    assert!(
        events
            .iter()
            .any(|ev| ev.kind == "set_recorded" && ev.message.contains("complete: all 3 nodes")),
        "{events:#?}"
    );

    // Its record waits to be written to cold storage, with every
    // snapshot's manifest checksum.
    assert!(e.tick(secs(10)).unwrap().store_sets);
    let record = e.next_unstored_set().unwrap().unwrap();
    assert_eq!(record.set_id, set.set_id);
    assert!(record.complete);
    assert_eq!(record.nodes.len(), 3);
    assert!(record
        .nodes
        .iter()
        .all(|n| n.manifest_sha256.as_deref() == Some(&"11".repeat(32))));
    assert!(e.set_stored(&record.set_id, secs(11)).unwrap());
    assert!(e.next_unstored_set().unwrap().is_none());
    assert!(!e.tick(secs(12)).unwrap().store_sets);

    // Verified once every one of its snapshots is.
    verify(&mut e, 1, "s1", true, secs(13));
    verify(&mut e, 2, "s2", true, secs(13));
    assert!(!e.sets().unwrap()[0].verified);
    assert_eq!(e.kept_set().unwrap(), None);
    verify(&mut e, 3, "s3", true, secs(14));
    let set = &e.sets().unwrap()[0];
    assert!(set.verified && set.kept && set.stored, "{set:#?}");
    assert_eq!(
        e.kept_set().unwrap().unwrap().snapshots,
        [(1, "s1".to_string()), (2, "s2".into()), (3, "s3".into())]
            .into_iter()
            .collect()
    );
    // One snapshot found bad later: the set is no longer verified.
    verify(&mut e, 2, "s2", false, secs(15));
    let set = &e.sets().unwrap()[0];
    assert!(set.complete && !set.verified && !set.kept);
    assert_eq!(node_states(set)[1], (2, Some("s2"), "failed verification"));
}

#[test]
fn cycles_that_miss_nodes_record_incomplete_sets_and_one_broker_runs_none() {
    let mut e = engine();
    // Broker 1 never passes its gate: partial cycle, incomplete set.
    let t = run_cycle(&mut e, secs(1), &[(2, "a2"), (3, "a3")]);
    assert_eq!(e.status(t).unwrap().cycle.unwrap().state, "partial");
    let sets = e.sets().unwrap();
    assert_eq!(sets.len(), 1);
    assert!(!sets[0].complete && !sets[0].verified);
    assert_eq!(
        node_states(&sets[0]),
        [
            (1, None, "missing"),
            (2, Some("a2"), "not verified"),
            (3, Some("a3"), "not verified")
        ]
    );
    let events = e.status(t).unwrap().recent_events;
    assert!(
        events.iter().any(|ev| ev.kind == "set_recorded"
            && ev.level == "warning"
            && ev
                .message
                .contains("INCOMPLETE: 2 of 3 nodes, no snapshot of [1]")),
        "{events:#?}"
    );
    let record = e.next_unstored_set().unwrap().unwrap();
    assert!(!record.complete);
    assert_eq!(record.nodes[0].snapshot_id, None);

    // A cycle of one broker is not a set.
    let id = e
        .run_now(Some(2), t + chrono::Duration::seconds(5))
        .unwrap();
    let epoch = epoch_of(&poll_grant(&mut e, 2, t + chrono::Duration::seconds(6)));
    e.release(
        &Release {
            broker: 2,
            epoch,
            outcome: Outcome::Committed {
                snapshot: summary(2, "b2"),
                downtime_ms: 1000,
            },
        },
        t + chrono::Duration::seconds(7),
    )
    .unwrap();
    e.tick(t + chrono::Duration::seconds(8)).unwrap();
    e.apply_cluster_check(Ok(()), t + chrono::Duration::seconds(9))
        .unwrap();
    assert_eq!(e.status(t).unwrap().cycle.unwrap().id, id);
    assert_eq!(e.sets().unwrap().len(), 1);

    // A cancelled cycle lists what it committed before the cancel.
    let t = t + chrono::Duration::seconds(20);
    e.run_now(None, t).unwrap();
    let epoch = epoch_of(&poll_grant(&mut e, 1, t));
    e.release(
        &Release {
            broker: 1,
            epoch,
            outcome: Outcome::Committed {
                snapshot: summary(1, "c1"),
                downtime_ms: 1000,
            },
        },
        t + chrono::Duration::seconds(1),
    )
    .unwrap();
    e.cancel_cycle(None, t + chrono::Duration::seconds(2))
        .unwrap();
    let sets = e.sets().unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(
        node_states(&sets[1]),
        [
            (1, Some("c1"), "not verified"),
            (2, None, "missing"),
            (3, None, "missing")
        ]
    );
    // One cancelled before any node committed records nothing.
    let t = t + chrono::Duration::seconds(10);
    e.run_now(None, t).unwrap();
    e.cancel_cycle(None, t + chrono::Duration::seconds(1))
        .unwrap();
    assert_eq!(e.sets().unwrap().len(), 2);
}

/// Retention keeps every snapshot of the newest complete, verified set,
/// past keep_last, and says so; a set whose snapshots are all gone is
/// dropped.
#[test]
fn retention_keeps_the_newest_complete_verified_set_past_keep_last() {
    let mut e = engine();
    // Day 0: complete and verified. Day 1: broker 1 missing. Day 2:
    // complete, but broker 3's snapshot fails verification.
    let t = run_cycle(&mut e, day(0), &[(1, "d0-1"), (2, "d0-2"), (3, "d0-3")]);
    for b in 1..=3 {
        verify(&mut e, b, &format!("d0-{b}"), true, t);
    }
    let t = run_cycle(&mut e, day(1), &[(2, "d1-2"), (3, "d1-3")]);
    for b in 2..=3 {
        verify(&mut e, b, &format!("d1-{b}"), true, t);
    }
    let t = run_cycle(&mut e, day(2), &[(1, "d2-1"), (2, "d2-2"), (3, "d2-3")]);
    for b in 1..=2 {
        verify(&mut e, b, &format!("d2-{b}"), true, t);
    }
    verify(&mut e, 3, "d2-3", false, t);
    let sets = e.sets().unwrap();
    let flags: Vec<(bool, bool, bool)> = sets
        .iter()
        .map(|s| (s.complete, s.verified, s.kept))
        .collect();
    assert_eq!(
        flags,
        [
            (true, true, true),
            (false, false, false),
            (true, false, false)
        ]
    );
    let kept = &sets[0].set_id;

    let p = plan(&e, 1, None, day(3));
    // Without sets, d0-1, d0-2, d1-2 and d0-3 would go (d1-3 is broker
    // 3's newest verified one).
    assert_eq!(deleted(&p), ["d1-2"]);
    let held: Vec<String> = p.held.iter().map(|(_, m)| m.clone()).collect();
    for id in ["d0-1", "d0-2", "d0-3"] {
        let want = format!("snapshot {id} kept: in set {kept}, the newest complete verified set");
        assert!(held.contains(&want), "{held:#?}");
    }
    // max_age too.
    let p = plan(&e, 10, Some(1), day(3));
    assert_eq!(deleted(&p), ["d1-2"]);
    // A deletion planned before the set became the one kept is refused
    // when it is carried out.
    let d0 = crate::retention::Deletion {
        snapshot_id: "d0-2".into(),
        cluster_id: "cluster-a".into(),
        broker: 2,
        reason: "beyond the newest 1 (keep_last)".into(),
    };
    assert_eq!(
        e.begin_deletion(&d0, day(3)).unwrap(),
        Some(format!(
            "snapshot d0-2 kept: in set {kept}, the newest complete verified set"
        ))
    );
    assert_eq!(e.snapshots(Some(2)).unwrap().len(), 3, "still listed");

    // The day 1 set empties once d1-2 and d1-3 are gone: a dry run names
    // it first, then it goes with its last snapshot.
    let day1 = sets[1].set_id.clone();
    let going = [(2, "d1-2".to_string()), (3, "d1-3".to_string())]
        .into_iter()
        .collect();
    let empty: Vec<String> = e
        .empty_sets(&going)
        .unwrap()
        .into_iter()
        .map(|s| s.set_id)
        .collect();
    assert_eq!(empty, [day1]);
    assert!(e.empty_sets(&Default::default()).unwrap().is_empty());
    for (b, id) in [(2, "d1-2"), (3, "d1-3")] {
        let d = crate::retention::Deletion {
            snapshot_id: id.into(),
            cluster_id: "cluster-a".into(),
            broker: b,
            reason: "test".into(),
        };
        assert_eq!(e.begin_deletion(&d, day(3)).unwrap(), None);
        e.mark_deleted(&d, day(3)).unwrap();
    }
    assert_eq!(
        node_states(&e.sets().unwrap()[1])[1..],
        [
            (2, Some("d1-2"), "not in the catalog"),
            (3, Some("d1-3"), "not in the catalog")
        ]
    );
    let empty = e.empty_sets(&Default::default()).unwrap();
    assert_eq!(empty.len(), 1);
    e.set_dropped(&empty[0], day(3)).unwrap();
    let left: Vec<String> = e.sets().unwrap().into_iter().map(|s| s.set_id).collect();
    assert_eq!(left, [kept.clone(), sets[2].set_id.clone()]);
    assert!(e.sets().unwrap()[0].kept);
}

fn engine_with_cycle_hooks() -> Engine {
    let text = format!(
        "{CFG}[hooks]\nbefore_cycle = \"pause-mirrormaker\"\nafter_cycle = \"resume-mirrormaker\"\n"
    );
    let cfg = CoordinatorConfig::parse(&text, std::path::Path::new("/c.toml")).unwrap();
    Engine::new(crate::store::open_in_memory(), cfg)
}

#[test]
fn no_lease_before_the_before_cycle_hook_succeeded_and_after_cycle_runs_at_the_end() {
    let mut e = engine_with_cycle_hooks();
    start_cycle(&mut e);
    let cycle = e.status(secs(1)).unwrap().cycle.unwrap().id;
    let needs = e.tick(secs(2)).unwrap();
    assert_eq!(needs.before_cycle, Some(cycle));
    assert_eq!(needs.after_cycle, None);
    // Waiting for the hook: nobody gets the lease.
    assert!(matches!(poll_grant(&mut e, 1, secs(3)), Action::Idle));
    e.before_cycle_ran(cycle, Ok(()), secs(4)).unwrap();
    assert_eq!(e.tick(secs(5)).unwrap().before_cycle, None);
    assert!(matches!(
        poll_grant(&mut e, 1, secs(6)),
        Action::Snapshot { .. }
    ));
    // However the cycle ends, after_cycle is due once.
    e.cancel_cycle(None, secs(7)).unwrap();
    assert_eq!(e.tick(secs(8)).unwrap().after_cycle, Some(cycle));
    e.after_cycle_ran(
        cycle,
        Err("`resume-mirrormaker`: exit status: 1".into()),
        secs(9),
    )
    .unwrap();
    assert_eq!(e.tick(secs(10)).unwrap().after_cycle, None);
    let st = e.status(secs(11)).unwrap();
    let msg = st.cycle.unwrap().message.unwrap_or_default();
    assert!(
        msg.contains("cancelled by an operator; the after_cycle hook failed: `resume-mirrormaker`"),
        "{msg}"
    );
    let events = e.status(secs(12)).unwrap().recent_events;
    assert!(
        events
            .iter()
            .any(|ev| ev.level == "error" && ev.message.contains("the after_cycle hook failed")),
        "{events:#?}"
    );
}

#[test]
fn a_failing_before_cycle_hook_fails_the_cycle_before_any_node_is_touched() {
    let mut e = engine_with_cycle_hooks();
    start_cycle(&mut e);
    let cycle = e.status(secs(1)).unwrap().cycle.unwrap().id;
    e.before_cycle_ran(
        cycle,
        Err("`pause-mirrormaker`: exit status: 2: no connector".into()),
        secs(2),
    )
    .unwrap();
    let st = e.status(secs(3)).unwrap();
    let c = st.cycle.unwrap();
    assert_eq!(c.state, "failed");
    assert!(c
        .message
        .unwrap_or_default()
        .contains("the before_cycle hook failed, no node was touched: `pause-mirrormaker`"),);
    assert!(
        c.brokers.iter().all(|b| b.state == "pending"),
        "{:?}",
        c.brokers
    );
    assert!(matches!(poll_grant(&mut e, 1, secs(4)), Action::Idle));
    let needs = e.tick(secs(5)).unwrap();
    assert_eq!((needs.before_cycle, needs.after_cycle), (None, Some(cycle)));
}

// ----- whole-cluster restores --------------------------------------------------

/// A complete, verified set of brokers 1-3 taken on day 0; returns its id
/// and when its cycle ended.
fn verified_set(e: &mut Engine) -> (String, Now) {
    let t = run_cycle(e, day(0), &[(1, "d0-1"), (2, "d0-2"), (3, "d0-3")]);
    for b in 1..=3 {
        verify(e, b, &format!("d0-{b}"), true, t);
    }
    (e.sets().unwrap()[0].set_id.clone(), t)
}

fn step_hb(broker: i32, epoch: u64, step: ClusterStep) -> Heartbeat {
    Heartbeat {
        cluster_step: Some(step),
        ..hb(broker, epoch, Phase::Downloading)
    }
}

fn cluster_lease(e: &mut Engine, node: i32, at: Now) -> (u64, ClusterRestoreOrder) {
    match poll_grant(e, node, at) {
        Action::ClusterRestore { lease, order } => (lease.epoch, order),
        other => panic!("node {node}: expected its part of the cluster restore, got {other:?}"),
    }
}

#[test]
fn a_cluster_restore_moves_every_node_in_step_and_ends_in_sync() {
    let mut e = engine();
    let (set, t) = verified_set(&mut e);
    let at = |s: i64| t + chrono::Duration::seconds(s);
    let serving = Some("brokers [1, 2, 3] registered, 6 of 6 partition(s) with a leader".into());
    let err = e
        .create_cluster_restore(None, false, serving.clone(), at(1))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("serving clients (brokers [1, 2, 3] registered"),
        "{err}"
    );
    let order = e.create_cluster_restore(None, false, None, at(1)).unwrap();
    assert_eq!(order.set_id, set, "the newest complete, verified set");
    assert_eq!(order.state, "running");
    // Nothing else while it is open.
    assert!(e.run_now(None, at(1)).is_err());
    assert!(e.create_restore(1, None, false, at(1)).is_err());
    assert!(e.create_cluster_restore(None, true, None, at(1)).is_err());

    // Every node gets its own lease at once, with its snapshot of the set.
    let mut epochs = Vec::new();
    for b in 1..=3 {
        let (epoch, o) = cluster_lease(&mut e, b, at(2));
        assert_eq!(o.snapshot_id, format!("d0-{b}"));
        assert_eq!(
            (o.set_id.as_str(), o.cluster_id.as_str()),
            (set.as_str(), "cluster-a")
        );
        epochs.push(epoch);
    }
    let go = |e: &mut Engine, b: i32, step, s| {
        e.heartbeat(&step_hb(b, epochs[(b - 1) as usize], step), at(s))
            .unwrap()
            .go
            .unwrap()
    };
    // Nobody stops until every node is prepared.
    assert_eq!(go(&mut e, 1, ClusterStep::Prepared, 3), ClusterGo::Prepare);
    assert_eq!(go(&mut e, 2, ClusterStep::Prepared, 3), ClusterGo::Prepare);
    assert_eq!(go(&mut e, 3, ClusterStep::Prepared, 4), ClusterGo::Swap);
    assert_eq!(go(&mut e, 1, ClusterStep::Prepared, 4), ClusterGo::Swap);
    // Nobody starts until every node is swapped (no controllers here).
    assert_eq!(go(&mut e, 1, ClusterStep::Swapped, 5), ClusterGo::Swap);
    assert_eq!(go(&mut e, 2, ClusterStep::Swapped, 5), ClusterGo::Swap);
    assert_eq!(go(&mut e, 3, ClusterStep::Swapped, 6), ClusterGo::Start);
    for b in 1..=3 {
        e.release(
            &Release {
                broker: b,
                epoch: epochs[(b - 1) as usize],
                outcome: Outcome::Restored {
                    snapshot_id: format!("d0-{b}"),
                    downtime_ms: 4000,
                },
            },
            at(7),
        )
        .unwrap();
    }
    let o = e.cluster_restore(order.id).unwrap();
    assert_eq!(o.state, "recovering");
    assert!(o.nodes.iter().all(|n| n.state == "restored"), "{o:?}");
    assert!(e.tick(at(8)).unwrap().cluster_restore_check);
    e.apply_cluster_check(Err("2 partition(s) under-replicated".into()), at(8))
        .unwrap();
    let o = e.cluster_restore(order.id).unwrap();
    assert_eq!(
        (o.state.as_str(), o.progress.as_deref()),
        (
            "recovering",
            Some("waiting: 2 partition(s) under-replicated")
        )
    );
    e.apply_cluster_check(Ok(()), at(9)).unwrap();
    let o = e.cluster_restore(order.id).unwrap();
    assert_eq!(o.state, "done");
    assert_eq!(
        e.status(at(9)).unwrap().cluster_restore.unwrap().state,
        "done"
    );
    // Cycles go again.
    e.run_now(None, at(10)).unwrap();
}

#[test]
fn a_node_that_cannot_prepare_fails_the_order_with_every_node_untouched() {
    let mut e = engine();
    verified_set(&mut e);
    let t = day(1);
    let order = e.create_cluster_restore(None, false, None, t).unwrap();
    let (e1, _) = cluster_lease(&mut e, 1, t);
    let (e2, _) = cluster_lease(&mut e, 2, t);
    // Node 3's agent has not polled yet when node 2 finds its host has
    // another number of log dirs.
    e.heartbeat(&step_hb(1, e1, ClusterStep::Prepared), t)
        .unwrap();
    e.release(
        &Release {
            broker: 2,
            epoch: e2,
            outcome: Outcome::Failed {
                reason: "snapshot d0-2 holds 2 log dirs but this broker has 1".into(),
                broker_running: true,
            },
        },
        t,
    )
    .unwrap();
    let o = e.cluster_restore(order.id).unwrap();
    assert_eq!(o.state, "failed");
    let msg = o.message.unwrap();
    assert!(
        msg.contains("node 2 failed") && msg.contains("2 log dirs"),
        "{msg}"
    );
    assert!(msg.contains("nodes [1] were told to abort"), "{msg}");
    assert!(msg.contains("nodes [3] were never touched"), "{msg}");
    let states: Vec<(i32, String)> = o.nodes.iter().map(|n| (n.node, n.state.clone())).collect();
    assert_eq!(
        states,
        [
            (1, "prepared".to_string()),
            (2, "failed".to_string()),
            (3, "cancelled".to_string())
        ]
    );
    // Node 1 is told to abort at its next heartbeat; node 3 gets nothing.
    assert!(
        e.heartbeat(&step_hb(1, e1, ClusterStep::Prepared), t)
            .unwrap()
            .abort
    );
    assert!(matches!(poll_grant(&mut e, 3, t), Action::Idle));
    assert!(e.status(t).unwrap().cluster_restore.unwrap().state == "failed");
}

#[test]
fn brokers_start_only_after_every_controller_saw_the_quorum_elect_a_leader() {
    let mut e = engine_with_controllers();
    let nodes = [1, 2, 3, 5, 0];
    let commits: Vec<(i32, String)> = nodes.iter().map(|n| (*n, format!("d0-{n}"))).collect();
    let refs: Vec<(i32, &str)> = commits.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let t = run_cycle(&mut e, day(0), &refs);
    // Not verified yet: refused unless forced.
    let err = e.create_cluster_restore(None, false, None, t).unwrap_err();
    assert!(
        err.to_string()
            .contains("no complete, verified snapshot set"),
        "{err}"
    );
    let set = e.sets().unwrap()[0].set_id.clone();
    let err = e
        .create_cluster_restore(Some(&set), false, None, t)
        .unwrap_err();
    assert!(err.to_string().contains("not verified yet"), "{err}");
    let order = e.create_cluster_restore(Some(&set), true, None, t).unwrap();
    let epochs: Vec<(i32, u64)> = nodes
        .iter()
        .map(|n| (*n, cluster_lease(&mut e, *n, t).0))
        .collect();
    let go = |e: &mut Engine, n: i32, step| {
        let epoch = epochs.iter().find(|(m, _)| *m == n).unwrap().1;
        e.heartbeat(&step_hb(n, epoch, step), t)
            .unwrap()
            .go
            .unwrap()
    };
    for n in nodes {
        go(&mut e, n, ClusterStep::Swapped);
    }
    assert_eq!(go(&mut e, 0, ClusterStep::Swapped), ClusterGo::Start);
    assert_eq!(go(&mut e, 5, ClusterStep::Swapped), ClusterGo::Start);
    assert_eq!(go(&mut e, 1, ClusterStep::Swapped), ClusterGo::Swap);
    assert_eq!(go(&mut e, 0, ClusterStep::Started), ClusterGo::Start);
    assert_eq!(
        go(&mut e, 1, ClusterStep::Swapped),
        ClusterGo::Swap,
        "combined node 5 not up"
    );
    assert_eq!(go(&mut e, 5, ClusterStep::Started), ClusterGo::Start);
    assert_eq!(go(&mut e, 1, ClusterStep::Swapped), ClusterGo::Start);
    assert_eq!(e.cluster_restore(order.id).unwrap().state, "running");
}

#[test]
fn a_cluster_restore_lease_that_expires_fails_the_order() {
    let mut e = engine();
    verified_set(&mut e);
    let t = day(1);
    let order = e.create_cluster_restore(None, false, None, t).unwrap();
    for b in 1..=3 {
        cluster_lease(&mut e, b, t);
    }
    e.tick(t + chrono::Duration::seconds(61)).unwrap();
    let o = e.cluster_restore(order.id).unwrap();
    assert_eq!(o.state, "failed");
    assert!(
        o.message
            .as_deref()
            .unwrap()
            .contains("expired without a release"),
        "{o:?}"
    );
    // Retention no longer keeps the set's snapshots for the order.
    let read = crate::store::snapshots::read_by_open_restores(e.conn(), Some("cluster-a")).unwrap();
    assert!(read.is_empty(), "{read:?}");
}

#[test]
fn a_node_whose_agent_never_comes_fails_the_order_after_the_gate_timeout() {
    let mut e = engine();
    verified_set(&mut e);
    let t = day(1);
    let order = e.create_cluster_restore(None, false, None, t).unwrap();
    let (e1, _) = cluster_lease(&mut e, 1, t);
    let (e2, _) = cluster_lease(&mut e, 2, t);
    // Node 3's agent never polls; the others keep heartbeating.
    let later = |m: i64| t + chrono::Duration::minutes(m);
    let beat = |e: &mut Engine, m: i64| {
        e.heartbeat(&step_hb(1, e1, ClusterStep::Prepared), later(m))
            .unwrap();
        e.heartbeat(&step_hb(2, e2, ClusterStep::Prepared), later(m))
            .unwrap();
        e.tick(later(m)).unwrap();
    };
    for m in [5, 9] {
        beat(&mut e, m);
        assert_eq!(e.cluster_restore(order.id).unwrap().state, "running");
    }
    beat(&mut e, 11);
    let o = e.cluster_restore(order.id).unwrap();
    assert_eq!(o.state, "failed");
    let msg = o.message.unwrap();
    assert!(
        msg.contains("node 3 failed: its agent did not come for its part within schedule.gate_timeout (600s)"),
        "{msg}"
    );
    assert!(msg.contains("nodes [1, 2] were told to abort"), "{msg}");
}
