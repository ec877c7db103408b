//! What `status` and `/metrics` show.

use super::{ApiResult, Engine};
use crate::store::{brokers, cycles, events, leases, parse_ts, snapshots, ts, Now};
use events::Meta;
use kafka_snapshot_model::api::{BrokerView, StatusView};

/// One phase of a broker's latest lease, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseDuration {
    pub broker: i32,
    pub epoch: i64,
    pub kind: String,
    pub phase: String,
    pub seconds: f64,
}

/// Snapshots of a broker not verified yet, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub broker: i32,
    pub count: i64,
    pub oldest_age_seconds: i64,
}

impl Engine {
    pub fn status(&self, now: Now) -> ApiResult<StatusView> {
        let c = &self.conn;
        let cluster = self.cluster_id()?;
        let cluster = cluster.as_deref();
        let skew_limit = super::catalog::CLOCK_SKEW_LIMIT.as_millis() as i64;
        let mut views = Vec::new();
        for b in self.cfg.nodes() {
            let agent = brokers::agent(c, b)?;
            let last = snapshots::newest(c, cluster, b)?;
            let (hostname, agent_last_seen, phase, broker_running, last_error, moved_aside) =
                match agent {
                    Some(a) => (
                        a.hostname,
                        a.last_seen,
                        a.phase,
                        a.broker_running,
                        a.last_error,
                        a.moved_aside,
                    ),
                    None => (None, None, "unknown".to_string(), None, None, Vec::new()),
                };
            views.push(BrokerView {
                broker: b,
                role: self.cfg.role_of(b).unwrap_or_default(),
                hostname,
                agent_last_seen,
                phase,
                broker_running,
                last_error,
                snapshots: snapshots::count(c, cluster, b)?,
                last_snapshot_id: last.as_ref().map(|l| l.snapshot_id.clone()),
                last_snapshot_at: last.as_ref().map(|l| l.committed.clone()),
                // By the coordinator's clock: an agent's wrong clock must
                // not make a broker look freshly snapshotted.
                last_snapshot_age_seconds: last
                    .as_ref()
                    .map(|l| (now - parse_ts(&l.seen_at)).num_seconds().max(0)),
                last_snapshot_bytes: last.as_ref().map(|l| l.archive_bytes),
                last_downtime_ms: last.as_ref().and_then(|l| l.downtime_ms),
                last_verified: last.as_ref().and_then(|l| l.verify_ok),
                clock_skewed_snapshots: snapshots::skewed(c, cluster, b, skew_limit)?,
                moved_aside,
            });
        }
        let suspended_because = super::operators::suspension(
            self.cfg.schedule.suspend,
            events::meta(c, Meta::Suspended)?,
        );
        Ok(StatusView {
            now: ts(now),
            cluster_id: cluster.map(str::to_string),
            schedule: self.cfg.schedule().to_string(),
            suspended: suspended_because.is_some(),
            suspended_because,
            next_due: events::meta(c, Meta::NextDue)?,
            lease: leases::slot_view(c)?,
            cycle: cycles::latest_view(c)?,
            cluster_restore: self.latest_cluster_restore()?,
            brokers: views,
            uncovered_brokers: Vec::new(),
            recent_events: events::recent(c, 15)?,
        })
    }

    /// Per broker, listed snapshots waiting for their first verification
    /// and how long the oldest has waited; empty when the coordinator does
    /// not verify new snapshots (`retention.verify_new = false`).
    pub fn unverified(&self, now: Now) -> ApiResult<Vec<Unverified>> {
        if !self.cfg.retention.verify_new {
            return Ok(Vec::new());
        }
        let cluster = self.cluster_id()?;
        Ok(snapshots::unverified(&self.conn, cluster.as_deref())?
            .into_iter()
            .map(|(broker, count, oldest)| Unverified {
                broker,
                count,
                oldest_age_seconds: (now - parse_ts(&oldest)).num_seconds().max(0),
            })
            .collect())
    }

    pub fn counters(&self) -> ApiResult<Vec<(String, String, i64)>> {
        Ok(events::counters(&self.conn)?)
    }

    /// How long each phase of every broker's latest lease (that reported a
    /// phase) lasted: the first phase from the grant, each phase until the
    /// next one was first reported, the last one until the lease ended (or
    /// until `now` while it runs).
    pub fn last_lease_phases(&self, now: Now) -> ApiResult<Vec<PhaseDuration>> {
        let rows = leases::latest_phases(&self.conn)?;
        let mut out = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let first = i == 0 || rows[i - 1].epoch != row.epoch;
            let start = if first {
                parse_ts(&row.granted_at)
            } else {
                parse_ts(&row.started_at)
            };
            let end = match rows.get(i + 1).filter(|n| n.epoch == row.epoch) {
                Some(next) => parse_ts(&next.started_at),
                None => row.ended_at.as_deref().map(parse_ts).unwrap_or(now),
            };
            out.push(PhaseDuration {
                broker: row.broker,
                epoch: row.epoch,
                kind: row.kind.clone(),
                phase: row.phase.clone(),
                seconds: (end - start).num_milliseconds().max(0) as f64 / 1000.0,
            });
        }
        Ok(out)
    }
}
