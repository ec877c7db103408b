//! Prometheus text exposition of the coordinator's state, read from the
//! database at scrape time (so it survives restarts and never drifts from
//! what `status` says).

use crate::engine::{ApiError, Engine};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::fmt::Write;

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.text, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn secs(t: &str) -> Option<f64> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// `uncovered`: brokers in the cluster that no `[[agents]]` entry covers.
pub fn render(
    e: &Engine,
    uncovered: &BTreeSet<i32>,
    now: DateTime<Utc>,
) -> Result<String, ApiError> {
    let status = e.status(now)?;
    let mut o = Out {
        text: String::new(),
    };
    const P: &str = "kafka_snapshot";

    o.family(&format!("{P}_up"), "gauge", "The coordinator is serving.");
    o.sample(&format!("{P}_up"), &[], 1.0);

    let n = format!("{P}_node_info");
    o.family(
        &n,
        "gauge",
        "Every node with an agent, by its node id (the `broker` label of the other series) \
         and role: broker, controller or combined.",
    );
    for b in &status.brokers {
        o.sample(
            &n,
            &[("broker", &b.broker.to_string()), ("role", b.role.as_str())],
            1.0,
        );
    }

    let n = format!("{P}_last_snapshot_timestamp_seconds");
    o.family(
        &n,
        "gauge",
        "When the coordinator learned of the newest snapshot in the catalog (by its own clock, \
         not the agent's), per broker.",
    );
    let now_secs = now.timestamp_millis() as f64 / 1000.0;
    for b in &status.brokers {
        if let Some(age) = b.last_snapshot_age_seconds {
            o.sample(
                &n,
                &[("broker", &b.broker.to_string())],
                (now_secs - age as f64).floor(),
            );
        }
    }
    let n = format!("{P}_clock_skewed_snapshots");
    o.family(
        &n,
        "gauge",
        "Snapshots in the catalog whose agent's commit time is more than 10m from the \
         coordinator's clock when it learned of them (a wrong clock on the broker host), per broker.",
    );
    for b in &status.brokers {
        o.sample(
            &n,
            &[("broker", &b.broker.to_string())],
            b.clock_skewed_snapshots as f64,
        );
    }
    let n = format!("{P}_moved_aside_bytes");
    o.family(
        &n,
        "gauge",
        "Disk space held on the node's host by data restores moved aside \
         (<dir>.pre-restore-<time>), kept until removed, per broker.",
    );
    for b in &status.brokers {
        o.sample(
            &n,
            &[("broker", &b.broker.to_string())],
            b.moved_aside.iter().map(|m| m.bytes).sum::<u64>() as f64,
        );
    }
    let n = format!("{P}_last_snapshot_size_bytes");
    o.family(
        &n,
        "gauge",
        "Archive size of the newest snapshot, per broker.",
    );
    for b in &status.brokers {
        if let Some(v) = b.last_snapshot_bytes {
            o.sample(&n, &[("broker", &b.broker.to_string())], v as f64);
        }
    }
    let n = format!("{P}_last_downtime_seconds");
    o.family(
        &n,
        "gauge",
        "How long the broker was down for its newest snapshot.",
    );
    for b in &status.brokers {
        if let Some(v) = b.last_downtime_ms {
            o.sample(&n, &[("broker", &b.broker.to_string())], v as f64 / 1000.0);
        }
    }
    let n = format!("{P}_last_snapshot_verified");
    o.family(
        &n,
        "gauge",
        "1 if the newest snapshot passed verification, 0 if it failed; absent until verified.",
    );
    for b in &status.brokers {
        if let Some(v) = b.last_verified {
            o.sample(
                &n,
                &[("broker", &b.broker.to_string())],
                if v { 1.0 } else { 0.0 },
            );
        }
    }
    // Verification that cannot read a snapshot (storage unreachable, or
    // files the coordinator's user may not read) is retried, not recorded
    // as a failure: these say how long that has gone on.
    let unverified = e.unverified(now)?;
    let n = format!("{P}_unverified_snapshots");
    o.family(
        &n,
        "gauge",
        "Snapshots in the catalog not verified yet, per broker (with retention.verify_new).",
    );
    for u in &unverified {
        o.sample(&n, &[("broker", &u.broker.to_string())], u.count as f64);
    }
    let n = format!("{P}_oldest_unverified_age_seconds");
    o.family(
        &n,
        "gauge",
        "How long the oldest snapshot not verified yet has waited, per broker.",
    );
    for u in &unverified {
        o.sample(
            &n,
            &[("broker", &u.broker.to_string())],
            u.oldest_age_seconds as f64,
        );
    }
    let n = format!("{P}_broker_uncovered");
    o.family(
        &n,
        "gauge",
        "1 for a broker the cluster lists that no [[agents]] entry covers: it is never snapshotted.",
    );
    for b in uncovered {
        o.sample(&n, &[("broker", &b.to_string())], 1.0);
    }
    let n = format!("{P}_snapshots");
    o.family(&n, "gauge", "Snapshots in the catalog, per broker.");
    for b in &status.brokers {
        o.sample(&n, &[("broker", &b.broker.to_string())], b.snapshots as f64);
    }
    let n = format!("{P}_broker_left_stopped");
    o.family(
        &n,
        "gauge",
        "1 when the agent reported that it could not start the broker it stopped.",
    );
    for b in &status.brokers {
        let stopped = b
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("LEFT STOPPED"));
        o.sample(
            &n,
            &[("broker", &b.broker.to_string())],
            if stopped { 1.0 } else { 0.0 },
        );
    }
    let n = format!("{P}_agent_last_seen_timestamp_seconds");
    o.family(
        &n,
        "gauge",
        "When the broker's agent last polled or sent a heartbeat.",
    );
    for b in &status.brokers {
        if let Some(t) = b.agent_last_seen.as_deref().and_then(secs) {
            o.sample(&n, &[("broker", &b.broker.to_string())], t);
        }
    }

    let n = format!("{P}_lease_held");
    o.family(&n, "gauge", "1 while a lease is held (state active) or the slot waits for the cluster (state settling).");
    let n_age = format!("{P}_lease_age_seconds");
    o.family(
        &n_age,
        "gauge",
        "How long the current lease (active or settling) has been held, from its grant.",
    );
    if let Some(l) = &status.lease {
        o.sample(
            &n,
            &[
                ("broker", &l.broker.to_string()),
                ("kind", &l.kind),
                ("state", &l.state),
                ("phase", l.phase.as_deref().unwrap_or("granted")),
            ],
            1.0,
        );
        if let Some(t) = secs(&l.granted_at) {
            o.sample(
                &n_age,
                &[("broker", &l.broker.to_string())],
                now.timestamp_millis() as f64 / 1000.0 - t,
            );
        }
    }

    let n = format!("{P}_phase_duration_seconds");
    o.family(
        &n,
        "gauge",
        "Time spent in each phase of the broker's latest lease, as its heartbeats reported them \
         (the first phase from the grant; the last one until the lease ended, or until now).",
    );
    for p in e.last_lease_phases(now)? {
        o.sample(
            &n,
            &[
                ("broker", &p.broker.to_string()),
                ("kind", &p.kind),
                ("phase", &p.phase),
            ],
            p.seconds,
        );
    }

    let n = format!("{P}_cycle_running");
    o.family(&n, "gauge", "1 while a rolling cycle runs.");
    let running = status
        .cycle
        .as_ref()
        .is_some_and(|c| c.state == "running" || c.state == "finishing");
    o.sample(&n, &[], if running { 1.0 } else { 0.0 });
    let n = format!("{P}_cycle_brokers");
    o.family(&n, "gauge", "Brokers of the latest cycle, by state.");
    if let Some(c) = &status.cycle {
        for state in ["pending", "leased", "archiving", "done", "failed"] {
            let k = c.brokers.iter().filter(|b| b.state == state).count();
            o.sample(&n, &[("state", state)], k as f64);
        }
    }
    let n = format!("{P}_next_cycle_timestamp_seconds");
    o.family(&n, "gauge", "When the next scheduled cycle is due.");
    if let Some(t) = status.next_due.as_deref().and_then(secs) {
        o.sample(&n, &[], t);
    }

    // Counters kept in the database.
    let counters = e.counters()?;
    let families: [(&str, &str, &str); 7] = [
        (
            "failures_total",
            "broker,reason",
            "Snapshot attempts that failed, by broker and reason (gate, failed, archive, wait).",
        ),
        (
            "lease_expired_total",
            "broker",
            "Leases that expired without a release.",
        ),
        (
            "cycles_total",
            "result",
            "Finished cycles by result (done, partial, failed).",
        ),
        (
            "retention_deleted_total",
            "broker",
            "Snapshots deleted by retention.",
        ),
        (
            "retention_errors_total",
            "",
            "Retention runs stopped by a storage error.",
        ),
        (
            "verify_failures_total",
            "broker",
            "Snapshots that failed verification.",
        ),
        (
            "clock_skew_total",
            "broker",
            "Snapshots whose agent's commit time was more than 10m from the coordinator's clock.",
        ),
    ];
    for (name, labels, help) in families {
        let full = format!("{P}_{name}");
        o.family(&full, "counter", help);
        let keys: Vec<&str> = labels.split(',').filter(|s| !s.is_empty()).collect();
        let mut any = false;
        for (cname, label, value) in counters.iter().filter(|c| c.0 == name) {
            let _ = cname;
            let vals: Vec<&str> = label.split('/').collect();
            let pairs: Vec<(&str, &str)> = keys.iter().copied().zip(vals).collect();
            o.sample(&full, &pairs, *value as f64);
            any = true;
        }
        if !any && keys.is_empty() {
            o.sample(&full, &[], 0.0);
        }
    }
    Ok(o.text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::{engine, epoch_of, hb, poll_grant, secs, start_cycle};
    use kafka_snapshot_model::protocol::{Outcome, Phase, Release};

    #[test]
    fn snapshots_committed_by_a_skewed_clock_are_counted() {
        let e = engine();
        let mut s = crate::engine::tests::summary(1, "s-future");
        // A year ahead of when the coordinator learnt of it.
        s.committed = secs(365 * 86_400);
        let seen = crate::store::snapshots::Seen::reported(s.committed, secs(0));
        crate::store::snapshots::upsert(e.conn(), &s, "agent", seen).unwrap();
        let text = render(&e, &BTreeSet::new(), secs(60)).unwrap();
        assert!(
            text.contains("kafka_snapshot_clock_skewed_snapshots{broker=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kafka_snapshot_node_info{broker=\"3\",role=\"broker\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn data_restores_moved_aside_is_in_status_and_metrics_until_the_agent_stops_reporting_it() {
        use kafka_snapshot_model::protocol::MovedAsideDir;
        let mut e = engine();
        let mut poll = crate::engine::tests::poll_req(2, None);
        poll.moved_aside = vec![MovedAsideDir {
            path: "/data/d1/kafka-logs.pre-restore-20261201T100000Z".into(),
            moved_at: Some("2026-12-01T10:00:00Z".parse().unwrap()),
            bytes: 3 << 30,
            remove_after: None,
        }];
        e.poll(&poll, secs(1)).unwrap();
        let st = e.status(secs(2)).unwrap();
        let b2 = st.brokers.iter().find(|b| b.broker == 2).unwrap();
        assert_eq!(b2.moved_aside, poll.moved_aside);
        let shown = crate::cli::format_status(&st);
        assert!(
            shown.contains(
                "  node 2: /data/d1/kafka-logs.pre-restore-20261201T100000Z (3.0 GiB, moved \
                 2026-12-01 10:00 UTC): kept until removed by hand \
                 (restore.remove_moved_aside_after)\n"
            ),
            "{shown}"
        );
        let text = render(&e, &BTreeSet::new(), secs(2)).unwrap();
        assert!(
            text.contains(&format!(
                "kafka_snapshot_moved_aside_bytes{{broker=\"2\"}} {}\n",
                3u64 << 30
            )),
            "{text}"
        );
        assert!(
            text.contains("kafka_snapshot_moved_aside_bytes{broker=\"1\"} 0\n"),
            "{text}"
        );
        // Removed (by hand or by the agent): the next poll says nothing.
        poll.moved_aside.clear();
        e.poll(&poll, secs(3)).unwrap();
        let st = e.status(secs(4)).unwrap();
        assert!(st.brokers.iter().all(|b| b.moved_aside.is_empty()));
    }

    #[test]
    fn snapshots_waiting_for_verification_are_counted_with_their_age() {
        let mut e = engine();
        let mut s = crate::engine::tests::summary(2, "s2");
        s.committed = secs(0);
        let seen = crate::store::snapshots::Seen::reported(s.committed, secs(0));
        crate::store::snapshots::upsert(e.conn(), &s, "agent", seen).unwrap();
        let text = render(&e, &BTreeSet::new(), secs(600)).unwrap();
        for line in [
            "kafka_snapshot_unverified_snapshots{broker=\"2\"} 1\n",
            "kafka_snapshot_oldest_unverified_age_seconds{broker=\"2\"} 600\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        e.record_verification("cluster-a", 2, "s2", Ok(Some(true)), secs(601))
            .unwrap();
        let text = render(&e, &BTreeSet::new(), secs(602)).unwrap();
        assert!(
            !text.contains("kafka_snapshot_unverified_snapshots{"),
            "{text}"
        );
    }

    #[test]
    fn a_broker_left_stopped_is_a_metric_of_its_own() {
        let mut e = engine();
        start_cycle(&mut e);
        let epoch = epoch_of(&poll_grant(&mut e, 1, secs(2)));
        let failed = Outcome::Failed {
            reason: "start command failed 3 times".into(),
            broker_running: false,
        };
        e.release(
            &Release {
                broker: 1,
                epoch,
                outcome: failed,
            },
            secs(3),
        )
        .unwrap();
        let text = render(&e, &BTreeSet::new(), secs(3)).unwrap();
        assert!(
            text.contains("kafka_snapshot_broker_left_stopped{broker=\"1\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn phase_durations_and_lease_age_of_each_brokers_latest_lease() {
        let mut e = engine();
        start_cycle(&mut e);
        let epoch = epoch_of(&poll_grant(&mut e, 1, secs(10)));
        for (at, phase) in [
            (12, Phase::Gating),
            (30, Phase::Stopping),
            (45, Phase::Capturing),
            (60, Phase::Starting),
            (70, Phase::Recovering),
        ] {
            e.heartbeat(&hb(1, epoch, phase), secs(at)).unwrap();
        }
        let recovered = Outcome::Recovered {
            snapshot_id: "s1".into(),
            downtime_ms: 30_000,
        };
        e.release(
            &Release {
                broker: 1,
                epoch,
                outcome: recovered,
            },
            secs(80),
        )
        .unwrap();
        let epoch2 = epoch_of(&poll_grant(&mut e, 2, secs(90)));
        e.heartbeat(&hb(2, epoch2, Phase::Gating), secs(95))
            .unwrap();
        let text = render(&e, &BTreeSet::new(), secs(100)).unwrap();
        for line in [
            "# TYPE kafka_snapshot_phase_duration_seconds gauge\n",
            "kafka_snapshot_phase_duration_seconds{broker=\"1\",kind=\"snapshot\",phase=\"capturing\"} 15\n",
            "kafka_snapshot_phase_duration_seconds{broker=\"2\",kind=\"snapshot\",phase=\"gating\"} 10\n",
            "kafka_snapshot_lease_age_seconds{broker=\"2\"} 10\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
