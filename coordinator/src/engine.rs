//! Every decision of the coordinator, over its SQLite state: who gets the
//! lease, when it expires, how a cycle moves on, what the catalog holds.
//!
//! The one rule all of it serves: **at most one broker is down because of
//! this tool**. There is one lease slot for the whole cluster. A lease that
//! ends badly (expired, or released with a failure) does not free the slot:
//! it goes to `settling`, and only the coordinator's own check that the
//! whole cluster is back in sync clears it.
//!
//! Functions take `now` so tests can drive time.

use crate::config::CoordinatorConfig;
use chrono::{DateTime, Utc};
use kafka_snapshot_model::protocol::{
    Action, Heartbeat, HeartbeatResponse, Lease, Notice, NoticeLevel, Outcome, PollRequest,
    Release, ReportResult, RestoreOrder, SnapshotReport, SnapshotSummary,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use std::time::Duration;

pub type Now = DateTime<Utc>;

/// broker, state, kind, cycle_id, order_id
type LeaseRow = (i32, String, String, Option<i64>, Option<i64>);
/// hostname, last_seen, phase, broker_running, last_error
type AgentRow = (
    Option<String>,
    Option<String>,
    String,
    Option<bool>,
    Option<String>,
);
/// snapshot_id, committed, archive_bytes, downtime_ms, verify_ok
type LastSnapshotRow = (String, String, i64, Option<i64>, Option<bool>);

/// An API-level refusal, mapped to an HTTP status by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn ts(t: Now) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> Now {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A config duration as a chrono one, capped at a century so that adding
/// it to a time can never overflow.
fn cdur(d: Duration) -> chrono::Duration {
    let century = chrono::Duration::days(36_500);
    chrono::Duration::from_std(d).map_or(century, |c| c.min(century))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What a poll leads to: an answer now, or a grant that first needs the
/// coordinator's own look at the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum PollDecision {
    Answer(Action),
    Check(Candidate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    Snapshot { broker: i32, cycle_id: i64 },
    Restore { broker: i32, order_id: i64 },
}

impl Candidate {
    pub fn broker(&self) -> i32 {
        match self {
            Candidate::Snapshot { broker, .. } | Candidate::Restore { broker, .. } => *broker,
        }
    }
}

/// What the periodic tick needs from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickNeeds {
    /// A settling lease waits for the cluster to be back in sync.
    pub settle_check: bool,
    /// A cycle waits for its final in-sync check.
    pub final_check: bool,
    /// Snapshots not verified yet (with `verify_new`).
    pub verify: bool,
    /// A cycle just ended: apply retention.
    pub prune: bool,
}

pub struct Engine {
    pub conn: Connection,
    pub cfg: CoordinatorConfig,
}

impl Engine {
    pub fn new(conn: Connection, cfg: CoordinatorConfig) -> Engine {
        Engine { conn, cfg }
    }

    fn ttl(&self) -> Duration {
        self.cfg.lease.ttl
    }

    // ----- events and counters ---------------------------------------------

    fn event(
        tx: &Transaction,
        now: Now,
        level: &str,
        broker: Option<i32>,
        epoch: Option<i64>,
        kind: &str,
        message: &str,
    ) -> rusqlite::Result<()> {
        match level {
            "error" => tracing::error!(broker, epoch, kind, "{message}"),
            "warning" => tracing::warn!(broker, epoch, kind, "{message}"),
            _ => tracing::info!(broker, epoch, kind, "{message}"),
        }
        tx.execute(
            "INSERT INTO events(at, level, broker, epoch, kind, message) VALUES (?,?,?,?,?,?)",
            params![ts(now), level, broker, epoch, kind, message],
        )?;
        Ok(())
    }

    fn count(tx: &Transaction, name: &str, label: &str, by: i64) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO counters(name, label, value) VALUES (?,?,?)
             ON CONFLICT(name, label) DO UPDATE SET value = value + excluded.value",
            params![name, label, by],
        )?;
        Ok(())
    }

    // ----- the lease slot ---------------------------------------------------

    /// The lease that keeps the slot closed, if any: (epoch, broker, state).
    fn slot(tx: &Transaction) -> rusqlite::Result<Option<(i64, i32, String)>> {
        tx.query_row(
            "SELECT epoch, broker, state FROM leases WHERE state IN ('active','settling')
             ORDER BY epoch LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
    }

    fn latest_epoch_of(tx: &Transaction, broker: i32) -> rusqlite::Result<Option<i64>> {
        tx.query_row(
            "SELECT max(epoch) FROM leases WHERE broker = ?",
            [broker],
            |r| r.get(0),
        )
    }

    // ----- agents -----------------------------------------------------------

    pub fn poll(&mut self, req: &PollRequest, now: Now) -> ApiResult<PollDecision> {
        if req.protocol != kafka_snapshot_model::protocol::PROTOCOL_VERSION {
            return Err(ApiError::BadRequest(format!(
                "agent speaks protocol {}, this coordinator speaks {}",
                req.protocol,
                kafka_snapshot_model::protocol::PROTOCOL_VERSION
            )));
        }
        let ttl = self.ttl();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO brokers(id, hostname, agent_version, last_seen, phase, broker_running)
             VALUES (?1,?2,?3,?4,?5,?6)
             ON CONFLICT(id) DO UPDATE SET hostname=?2, agent_version=?3, last_seen=?4,
                phase=?5, broker_running=?6",
            params![
                req.broker,
                req.hostname,
                req.agent_version,
                ts(now),
                req.phase.as_str(),
                req.broker_running
            ],
        )?;
        // An active lease of this broker the agent does not know about.
        // epoch, phase, holder_instance, holder_host
        type Own = (i64, Option<String>, Option<String>, Option<String>);
        let own: Option<Own> = tx
            .query_row(
                "SELECT epoch, phase, holder_instance, holder_host FROM leases
                 WHERE broker = ? AND state = 'active'",
                [req.broker],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        if let Some((epoch, phase, instance, host)) = own {
            if req.lease_epoch == Some(epoch as u64) {
                // Busy under it; nothing new.
                tx.commit()?;
                return Ok(PollDecision::Answer(Action::Idle));
            }
            // Another agent process than the one the lease was handed to: a
            // second agent acting as this broker (a copy of the config, an
            // old host still running), or the holder restarted without its
            // state file. Either way it gets nothing and the holder is not
            // disturbed; a dead holder's lease expires within the TTL.
            let other = matches!((&instance, &req.instance), (Some(a), Some(b)) if a != b);
            if other {
                let seen: bool = tx.query_row(
                    "SELECT count(*) > 0 FROM events WHERE kind = 'duplicate_agent' AND epoch = ?",
                    [epoch],
                    |r| r.get(0),
                )?;
                if !seen {
                    let message = format!(
                        "two agents act as broker {}: lease {epoch} is held by the agent on {} \
                         (instance {}); the agent on {} (instance {}) gets nothing. Only one agent \
                         may run per broker: stop the other one (if the holder restarted without \
                         its state file, its lease expires within lease.ttl)",
                        req.broker,
                        host.as_deref().unwrap_or("?"),
                        instance.as_deref().unwrap_or("?"),
                        req.hostname,
                        req.instance.as_deref().unwrap_or("?"),
                    );
                    Self::event(
                        &tx,
                        now,
                        "error",
                        Some(req.broker),
                        Some(epoch),
                        "duplicate_agent",
                        &message,
                    )?;
                    tx.execute(
                        "UPDATE brokers SET last_error = ?, last_error_at = ? WHERE id = ?",
                        params![message, ts(now), req.broker],
                    )?;
                }
                tx.commit()?;
                return Ok(PollDecision::Answer(Action::Idle));
            }
            if phase.is_none() {
                // Granted, but the answer never arrived: hand it out again.
                let action = Self::lease_action(&self.cfg, &tx, epoch)?;
                tx.execute(
                    "UPDATE leases SET expires_at = ? WHERE epoch = ?",
                    params![ts(now + cdur(ttl)), epoch],
                )?;
                tx.commit()?;
                return Ok(PollDecision::Answer(action));
            }
            // The agent worked under this lease and lost track of it (it
            // restarted): the broker may have been stopped. Close the lease
            // the careful way.
            Self::settle(
                &tx,
                now,
                epoch,
                &format!(
                    "agent of broker {} polled without lease {epoch} it was working under (phase {})",
                    req.broker,
                    phase.unwrap_or_default()
                ),
            )?;
            tx.commit()?;
            return Ok(PollDecision::Answer(Action::Idle));
        }
        if Self::slot(&tx)?.is_some() {
            tx.commit()?;
            return Ok(PollDecision::Answer(Action::Idle));
        }
        // Restores first: an operator is waiting for them.
        let order: Option<i64> = tx
            .query_row(
                "SELECT id FROM restores WHERE state = 'pending' AND broker = ? ORDER BY id LIMIT 1",
                [req.broker],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(order_id) = order {
            tx.commit()?;
            return Ok(PollDecision::Check(Candidate::Restore {
                broker: req.broker,
                order_id,
            }));
        }
        let other_restore: bool = tx.query_row(
            "SELECT count(*) > 0 FROM restores WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        if other_restore {
            tx.commit()?;
            return Ok(PollDecision::Answer(Action::Idle));
        }
        let head = Self::cycle_head(&tx)?;
        tx.commit()?;
        Ok(match head {
            Some((cycle_id, broker)) if broker == req.broker => {
                PollDecision::Check(Candidate::Snapshot { broker, cycle_id })
            }
            _ => PollDecision::Answer(Action::Idle),
        })
    }

    /// The running cycle and the broker whose turn it is.
    fn cycle_head(tx: &Transaction) -> rusqlite::Result<Option<(i64, i32)>> {
        tx.query_row(
            "SELECT cb.cycle_id, cb.broker FROM cycle_brokers cb JOIN cycles c ON c.id = cb.cycle_id
             WHERE c.state = 'running' AND cb.state = 'pending'
             ORDER BY cb.position LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    }

    fn lease_action(
        cfg: &CoordinatorConfig,
        tx: &Transaction,
        epoch: i64,
    ) -> rusqlite::Result<Action> {
        let (kind, cycle_id, order_id): (String, Option<i64>, Option<i64>) = tx.query_row(
            "SELECT kind, cycle_id, order_id FROM leases WHERE epoch = ?",
            [epoch],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let lease = Lease {
            epoch: epoch as u64,
            ttl_ms: ms(cfg.lease.ttl),
            cycle_id,
            gate_timeout_ms: ms(cfg.schedule.gate_timeout),
        };
        if kind == "restore" {
            let order = tx.query_row(
                "SELECT id, cluster_id, snapshot_id, force FROM restores WHERE id = ?",
                [order_id],
                |r| {
                    Ok(RestoreOrder {
                        id: r.get(0)?,
                        cluster_id: r.get(1)?,
                        snapshot_id: r.get(2)?,
                        force: r.get(3)?,
                    })
                },
            )?;
            Ok(Action::Restore { lease, order })
        } else {
            Ok(Action::Snapshot { lease })
        }
    }

    /// Grants the lease to `cand` if the slot is still free and it is still
    /// its turn, given the coordinator's own cluster check.
    /// `holder` is the poll the candidate came from: the lease records which
    /// agent process and host it was handed to.
    pub fn grant(
        &mut self,
        cand: &Candidate,
        check: Result<(), String>,
        holder: &PollRequest,
        now: Now,
    ) -> ApiResult<Action> {
        let ttl = cdur(self.ttl());
        let tx = self.conn.transaction()?;
        if Self::slot(&tx)?.is_some() {
            return Ok(Action::Idle);
        }
        let broker = cand.broker();
        if let Err(reason) = check {
            let why = format!("coordinator check: {reason}");
            match cand {
                Candidate::Snapshot { cycle_id, .. } => {
                    tx.execute(
                        "UPDATE cycle_brokers SET reason = ?, updated_at = ? WHERE cycle_id = ? AND broker = ?",
                        params![why, ts(now), cycle_id, broker],
                    )?;
                }
                Candidate::Restore { order_id, .. } => {
                    tx.execute(
                        "UPDATE restores SET progress = ?, updated_at = ? WHERE id = ?",
                        params![format!("waiting: {why}"), ts(now), order_id],
                    )?;
                }
            }
            tx.commit()?;
            return Ok(Action::Idle);
        }
        let epoch = match cand {
            Candidate::Snapshot { cycle_id, .. } => {
                if Self::cycle_head(&tx)? != Some((*cycle_id, broker)) {
                    return Ok(Action::Idle);
                }
                tx.execute(
                    "INSERT INTO leases(broker, kind, cycle_id, state, granted_at, expires_at)
                     VALUES (?, 'snapshot', ?, 'active', ?, ?)",
                    params![broker, cycle_id, ts(now), ts(now + ttl)],
                )?;
                let epoch = tx.last_insert_rowid();
                tx.execute(
                    "UPDATE cycle_brokers SET state = 'leased', attempts = attempts + 1, epoch = ?,
                        reason = NULL, updated_at = ? WHERE cycle_id = ? AND broker = ?",
                    params![epoch, ts(now), cycle_id, broker],
                )?;
                epoch
            }
            Candidate::Restore { order_id, .. } => {
                let pending: bool = tx.query_row(
                    "SELECT count(*) > 0 FROM restores WHERE id = ? AND state = 'pending'",
                    [order_id],
                    |r| r.get(0),
                )?;
                if !pending {
                    return Ok(Action::Idle);
                }
                tx.execute(
                    "INSERT INTO leases(broker, kind, order_id, state, granted_at, expires_at)
                     VALUES (?, 'restore', ?, 'active', ?, ?)",
                    params![broker, order_id, ts(now), ts(now + ttl)],
                )?;
                let epoch = tx.last_insert_rowid();
                tx.execute(
                    "UPDATE restores SET state = 'running', epoch = ?, progress = 'lease granted',
                        updated_at = ? WHERE id = ?",
                    params![epoch, ts(now), order_id],
                )?;
                epoch
            }
        };
        tx.execute(
            "UPDATE leases SET holder_instance = ?, holder_host = ? WHERE epoch = ?",
            params![holder.instance, holder.hostname, epoch],
        )?;
        Self::event(
            &tx,
            now,
            "info",
            Some(broker),
            Some(epoch),
            "lease_granted",
            &format!(
                "lease {epoch} granted to broker {broker} for a {}",
                match cand {
                    Candidate::Snapshot { .. } => "snapshot",
                    Candidate::Restore { .. } => "restore",
                }
            ),
        )?;
        let action = Self::lease_action(&self.cfg, &tx, epoch)?;
        tx.commit()?;
        Ok(action)
    }

    /// The active lease `epoch` of `broker`, or 409.
    fn active_lease(tx: &Transaction, broker: i32, epoch: u64) -> ApiResult<(String, Option<i64>)> {
        let row: Option<(i32, String, String, Option<i64>)> = tx
            .query_row(
                "SELECT broker, state, kind, order_id FROM leases WHERE epoch = ?",
                [epoch as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        match row {
            Some((b, state, kind, order)) if b == broker && state == "active" => Ok((kind, order)),
            Some((b, state, ..)) if b == broker => Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch} for broker {broker}: that lease is {state}"
            ))),
            _ => Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: broker {broker} holds no such lease"
            ))),
        }
    }

    pub fn heartbeat(&mut self, hb: &Heartbeat, now: Now) -> ApiResult<HeartbeatResponse> {
        let ttl = self.ttl();
        let tx = self.conn.transaction()?;
        let (_, order) = Self::active_lease(&tx, hb.broker, hb.epoch)?;
        let stopped_at = if hb.phase.broker_may_be_down() {
            Some(ts(now))
        } else {
            None
        };
        tx.execute(
            "UPDATE leases SET expires_at = ?, phase = ?, progress = ?,
                stopped_at = coalesce(stopped_at, ?) WHERE epoch = ?",
            params![
                ts(now + cdur(ttl)),
                hb.phase.as_str(),
                hb.progress,
                stopped_at,
                hb.epoch as i64
            ],
        )?;
        // The first heartbeat in a phase marks its start: as precise as the
        // heartbeats (ttl / 3), which is enough to see where time goes.
        tx.execute(
            "INSERT OR IGNORE INTO lease_phases(epoch, phase, started_at) VALUES (?,?,?)",
            params![hb.epoch as i64, hb.phase.as_str(), ts(now)],
        )?;
        tx.execute(
            "UPDATE brokers SET phase = ?, last_seen = ? WHERE id = ?",
            params![hb.phase.as_str(), ts(now), hb.broker],
        )?;
        if let Some(order) = order {
            tx.execute(
                "UPDATE restores SET phase = ?, progress = ?, updated_at = ? WHERE id = ?",
                params![hb.phase.as_str(), hb.progress, ts(now), order],
            )?;
        }
        tx.commit()?;
        Ok(HeartbeatResponse {
            ttl_ms: ms(ttl),
            abort: false,
        })
    }

    /// Closes the slot until the cluster is back in sync.
    fn settle(tx: &Transaction, now: Now, epoch: i64, reason: &str) -> rusqlite::Result<()> {
        let (broker, kind, cycle_id, order_id): (i32, String, Option<i64>, Option<i64>) = tx
            .query_row(
                "SELECT broker, kind, cycle_id, order_id FROM leases WHERE epoch = ?",
                [epoch],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
        tx.execute(
            "UPDATE leases SET state = 'settling', reason = ?, ended_at = ? WHERE epoch = ?",
            params![reason, ts(now), epoch],
        )?;
        Self::event(
            tx,
            now,
            "warning",
            Some(broker),
            Some(epoch),
            "lease_settling",
            &format!("{reason}; no lease is granted until the cluster is back in sync"),
        )?;
        if kind == "restore" {
            if let Some(order) = order_id {
                Self::finish_restore(tx, now, order, false, reason)?;
            }
        } else if let Some(cycle) = cycle_id {
            Self::broker_failed_attempt(tx, now, cycle, broker, epoch, reason, "failed")?;
        }
        Ok(())
    }

    fn finish_restore(
        tx: &Transaction,
        now: Now,
        order: i64,
        ok: bool,
        message: &str,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE restores SET state = ?, message = ?, updated_at = ? WHERE id = ? AND state IN ('pending','running')",
            params![if ok { "done" } else { "failed" }, message, ts(now), order],
        )?;
        Ok(())
    }

    /// A broker's attempt in a cycle did not produce a snapshot: back to the
    /// end of the line, or failed for this cycle after `max_attempts`.
    fn broker_failed_attempt(
        tx: &Transaction,
        now: Now,
        cycle: i64,
        broker: i32,
        epoch: i64,
        reason: &str,
        counter_label: &str,
    ) -> rusqlite::Result<()> {
        let max_attempts: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'max_attempts'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT attempts, epoch FROM cycle_brokers WHERE cycle_id = ? AND broker = ?",
                params![cycle, broker],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((attempts, current)) = row else {
            return Ok(());
        };
        if current != Some(epoch) {
            return Ok(());
        }
        Self::count(
            tx,
            "failures_total",
            &format!("{broker}/{counter_label}"),
            1,
        )?;
        if attempts >= max_attempts {
            tx.execute(
                "UPDATE cycle_brokers SET state = 'failed', reason = ?, updated_at = ?
                 WHERE cycle_id = ? AND broker = ?",
                params![reason, ts(now), cycle, broker],
            )?;
        } else {
            tx.execute(
                "UPDATE cycle_brokers SET state = 'pending', reason = ?2, waiting_since = NULL,
                    position = (SELECT max(position) + 1 FROM cycle_brokers WHERE cycle_id = ?1),
                    updated_at = ?3 WHERE cycle_id = ?1 AND broker = ?4",
                params![cycle, reason, ts(now), broker],
            )?;
        }
        Ok(())
    }

    pub fn release(&mut self, rel: &Release, now: Now) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        let epoch = rel.epoch as i64;
        let row: Option<LeaseRow> = tx
            .query_row(
                "SELECT broker, state, kind, cycle_id, order_id FROM leases WHERE epoch = ?",
                [epoch],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((broker, state, kind, cycle_id, order_id)) = row else {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: broker {} holds no such lease",
                rel.broker
            )));
        };
        if broker != rel.broker {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: it belongs to broker {broker}, not {}",
                rel.broker
            )));
        }
        if Self::latest_epoch_of(&tx, broker)? != Some(epoch) {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch} for broker {broker}: a newer lease exists"
            )));
        }
        let outcome_json = serde_json::to_string(&rel.outcome).unwrap_or_default();
        tx.execute(
            "UPDATE leases SET outcome = ? WHERE epoch = ?",
            params![outcome_json, epoch],
        )?;
        let active = state == "active";
        match &rel.outcome {
            Outcome::Recovered {
                snapshot_id,
                downtime_ms,
            } => {
                if let Some(cycle) = cycle_id {
                    tx.execute(
                        "UPDATE cycle_brokers SET state = 'archiving', snapshot_id = ?, archiving_since = ?,
                            updated_at = ? WHERE cycle_id = ? AND broker = ? AND epoch = ?",
                        params![snapshot_id, ts(now), ts(now), cycle, broker, epoch],
                    )?;
                }
                Self::event(&tx, now, "info", Some(broker), Some(epoch), "broker_recovered",
                    &format!("broker {broker} is back in every ISR after {:.1}s down; archive {snapshot_id} is being built", *downtime_ms as f64 / 1000.0))?;
                Self::ended_well(&tx, now, broker, epoch, active, true)?;
            }
            Outcome::Committed {
                snapshot,
                downtime_ms,
            } => {
                Self::record_committed(
                    &tx,
                    now,
                    cycle_id,
                    broker,
                    epoch,
                    snapshot,
                    Some(*downtime_ms),
                )?;
                Self::ended_well(&tx, now, broker, epoch, active, true)?;
            }
            Outcome::Skipped { reason } => {
                if let Some(cycle) = cycle_id {
                    Self::broker_failed_attempt(
                        &tx,
                        now,
                        cycle,
                        broker,
                        epoch,
                        &format!("gate: {reason}"),
                        "gate",
                    )?;
                }
                Self::event(
                    &tx,
                    now,
                    "warning",
                    Some(broker),
                    Some(epoch),
                    "skipped",
                    &format!("broker {broker} skipped for now, its gate did not pass: {reason}"),
                )?;
                Self::ended_well(&tx, now, broker, epoch, active, false)?;
            }
            Outcome::Restored {
                snapshot_id,
                downtime_ms,
            } => {
                if let Some(order) = order_id {
                    Self::finish_restore(&tx, now, order, true, &format!("restored {snapshot_id}; broker {broker} is back in every ISR ({:.1}s down)", *downtime_ms as f64 / 1000.0))?;
                }
                Self::event(
                    &tx,
                    now,
                    "info",
                    Some(broker),
                    Some(epoch),
                    "restored",
                    &format!("broker {broker} restored from {snapshot_id}"),
                )?;
                Self::ended_well(&tx, now, broker, epoch, active, true)?;
            }
            Outcome::Failed {
                reason,
                broker_running,
            } => {
                let msg = if *broker_running {
                    format!("{kind} of broker {broker} failed: {reason}")
                } else {
                    format!("BROKER {broker} LEFT STOPPED: {kind} failed: {reason}")
                };
                tx.execute(
                    "UPDATE brokers SET last_error = ?, last_error_at = ? WHERE id = ?",
                    params![msg, ts(now), broker],
                )?;
                if active {
                    if !*broker_running {
                        // What an operator must act on: an ERROR of its own.
                        Self::event(
                            &tx,
                            now,
                            "error",
                            Some(broker),
                            Some(epoch),
                            "left_stopped",
                            &msg,
                        )?;
                    }
                    // Not clean: the slot waits for the cluster.
                    Self::settle(&tx, now, epoch, &msg)?;
                } else {
                    if let Some(order) = order_id {
                        Self::finish_restore(&tx, now, order, false, &msg)?;
                    }
                    if let Some(cycle) = cycle_id {
                        Self::broker_failed_attempt(
                            &tx, now, cycle, broker, epoch, &msg, "failed",
                        )?;
                    }
                    Self::event(
                        &tx,
                        now,
                        if *broker_running { "warning" } else { "error" },
                        Some(broker),
                        Some(epoch),
                        "failed",
                        &msg,
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A lease ended as planned: the slot is free again (if the lease was
    /// still active) and, unless the broker was merely skipped, its last
    /// error is history.
    fn ended_well(
        tx: &Transaction,
        now: Now,
        broker: i32,
        epoch: i64,
        active: bool,
        clear_error: bool,
    ) -> rusqlite::Result<()> {
        if clear_error {
            tx.execute(
                "UPDATE brokers SET last_error = NULL WHERE id = ?",
                [broker],
            )?;
        }
        if active {
            Self::close(tx, now, epoch)?;
        }
        Ok(())
    }

    /// A committed snapshot reported under lease `epoch` of `broker`: into
    /// the catalog, and the broker is done for its cycle.
    #[allow(clippy::too_many_arguments)]
    fn record_committed(
        tx: &Transaction,
        now: Now,
        cycle_id: Option<i64>,
        broker: i32,
        epoch: i64,
        snapshot: &SnapshotSummary,
        downtime_ms: Option<u64>,
    ) -> ApiResult<()> {
        if snapshot.broker != broker {
            return Err(ApiError::BadRequest(format!(
                "snapshot {} is of broker {}, reported by broker {broker}",
                snapshot.snapshot_id, snapshot.broker
            )));
        }
        Self::commit_snapshot(tx, now, snapshot, "agent")?;
        if let Some(cycle) = cycle_id {
            Self::broker_done(tx, now, cycle, broker, epoch, &snapshot.snapshot_id)?;
        }
        let down = downtime_ms
            .map(|d| format!(", {:.1}s down", d as f64 / 1000.0))
            .unwrap_or_default();
        Self::event(
            tx,
            now,
            "info",
            Some(broker),
            Some(epoch),
            "snapshot_committed",
            &format!(
                "snapshot {} of broker {broker} committed ({} bytes{down})",
                snapshot.snapshot_id, snapshot.archive_bytes
            ),
        )?;
        Ok(())
    }

    fn close(tx: &Transaction, now: Now, epoch: i64) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE leases SET state = 'released', ended_at = ? WHERE epoch = ?",
            params![ts(now), epoch],
        )?;
        Ok(())
    }

    fn broker_done(
        tx: &Transaction,
        now: Now,
        cycle: i64,
        broker: i32,
        epoch: i64,
        snapshot_id: &str,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE cycle_brokers SET state = 'done', snapshot_id = ?, reason = NULL, updated_at = ?
             WHERE cycle_id = ? AND broker = ? AND epoch = ?",
            params![snapshot_id, ts(now), cycle, broker, epoch],
        )?;
        Ok(())
    }

    pub fn commit_snapshot(
        tx: &Transaction,
        now: Now,
        s: &SnapshotSummary,
        source: &str,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO snapshots(snapshot_id, cluster_id, broker, host, committed, capture,
                clean_shutdown, downtime_ms, files, data_bytes, archive_bytes, archive_sha256,
                manifest_sha256, source)
             VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
             ON CONFLICT(cluster_id, broker, snapshot_id) DO UPDATE SET deleted_at = NULL",
            params![
                s.snapshot_id,
                s.cluster_id,
                s.broker,
                s.host,
                ts(s.committed),
                s.capture,
                s.clean_shutdown,
                s.downtime_ms.map(|d| d as i64),
                s.files as i64,
                s.data_bytes as i64,
                s.archive_bytes as i64,
                s.archive_sha256,
                s.manifest_sha256,
                source
            ],
        )?;
        let _ = now;
        Ok(())
    }

    pub fn report(&mut self, rep: &SnapshotReport, now: Now) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        let epoch = rep.epoch as i64;
        let row: Option<(i32, Option<i64>)> = tx
            .query_row(
                "SELECT broker, cycle_id FROM leases WHERE epoch = ? AND kind = 'snapshot'",
                [epoch],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((broker, cycle_id)) = row.filter(|(b, _)| *b == rep.broker) else {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: broker {} took no snapshot under it",
                rep.broker
            )));
        };
        match &rep.result {
            ReportResult::Committed { snapshot } => {
                Self::record_committed(&tx, now, cycle_id, broker, epoch, snapshot, None)?;
            }
            ReportResult::Failed {
                snapshot_id,
                reason,
            } => {
                let msg =
                    format!("archiving snapshot {snapshot_id} of broker {broker} failed: {reason}");
                tx.execute(
                    "UPDATE brokers SET last_error = ?, last_error_at = ? WHERE id = ?",
                    params![msg, ts(now), broker],
                )?;
                if let Some(cycle) = cycle_id {
                    Self::broker_failed_attempt(&tx, now, cycle, broker, epoch, &msg, "archive")?;
                }
                Self::event(
                    &tx,
                    now,
                    "warning",
                    Some(broker),
                    Some(epoch),
                    "archive_failed",
                    &msg,
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn notice(&mut self, n: &Notice, now: Now) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        let level = match n.level {
            NoticeLevel::Info => "info",
            NoticeLevel::Warning => "warning",
            NoticeLevel::Error => "error",
        };
        Self::event(
            &tx,
            now,
            level,
            Some(n.broker),
            n.epoch.map(|e| e as i64),
            "agent_notice",
            &format!("agent of broker {}: {}", n.broker, n.message),
        )?;
        if n.level == NoticeLevel::Error {
            tx.execute(
                "UPDATE brokers SET last_error = ?, last_error_at = ? WHERE id = ?",
                params![n.message, ts(now), n.broker],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    // ----- time passing -----------------------------------------------------

    /// Expires leases, starts due cycles, moves stuck cycles on. Returns
    /// what needs a look at the cluster.
    pub fn tick(&mut self, now: Now) -> ApiResult<TickNeeds> {
        let gate_timeout = cdur(self.cfg.schedule.gate_timeout);
        let archive_timeout = cdur(self.cfg.schedule.archive_timeout);
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('max_attempts', ?)",
            [self.cfg.schedule.max_attempts.to_string()],
        )?;
        let mut needs = TickNeeds::default();

        // Leases not renewed in time.
        let expired: Vec<(i64, i32, Option<String>)> = {
            let mut st = tx.prepare(
                "SELECT epoch, broker, phase FROM leases WHERE state = 'active' AND expires_at < ?",
            )?;
            let rows = st.query_map([ts(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (epoch, broker, phase) in expired {
            Self::count(&tx, "lease_expired_total", &broker.to_string(), 1)?;
            Self::settle(
                &tx,
                now,
                epoch,
                &format!(
                    "lease {epoch} of broker {broker} expired without a release (last phase: {})",
                    phase.as_deref().unwrap_or("granted, never confirmed")
                ),
            )?;
        }
        needs.settle_check = Self::slot(&tx)?.is_some_and(|(_, _, s)| s == "settling");

        // A scheduled cycle due?
        Self::schedule_tick(&self.cfg, &tx, now)?;

        // The running cycle.
        let running: Option<i64> = tx
            .query_row(
                "SELECT id FROM cycles WHERE state IN ('running', 'finishing') ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(cycle) = running {
            // Archives that never reported.
            let stale: Vec<(i32, i64)> = {
                let mut st = tx.prepare(
                    "SELECT broker, epoch FROM cycle_brokers WHERE cycle_id = ? AND state = 'archiving'
                     AND archiving_since < ?",
                )?;
                let rows = st.query_map(params![cycle, ts(now - archive_timeout)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (broker, epoch) in stale {
                let msg = format!(
                    "broker {broker} did not report its archive within {}",
                    crate::schedule::humantime(self.cfg.schedule.archive_timeout)
                );
                Self::broker_failed_attempt(&tx, now, cycle, broker, epoch, &msg, "archive")?;
                Self::event(
                    &tx,
                    now,
                    "warning",
                    Some(broker),
                    Some(epoch),
                    "archive_timeout",
                    &msg,
                )?;
            }
            // The broker whose turn it is, waiting too long for a lease.
            if Self::slot(&tx)?.is_none() {
                if let Some((c, broker)) = Self::cycle_head(&tx)? {
                    let since: Option<String> = tx.query_row(
                        "SELECT waiting_since FROM cycle_brokers WHERE cycle_id = ? AND broker = ?",
                        params![c, broker],
                        |r| r.get(0),
                    )?;
                    match since.map(|s| parse_ts(&s)) {
                        None => {
                            tx.execute(
                                "UPDATE cycle_brokers SET waiting_since = ? WHERE cycle_id = ? AND broker = ?",
                                params![ts(now), c, broker],
                            )?;
                        }
                        Some(t) if now - t > gate_timeout => {
                            let (reason, seen): (Option<String>, Option<String>) = tx.query_row(
                                "SELECT cb.reason, b.last_seen FROM cycle_brokers cb
                                 LEFT JOIN brokers b ON b.id = cb.broker
                                 WHERE cb.cycle_id = ? AND cb.broker = ?",
                                params![c, broker],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )?;
                            let poll = cdur(self.cfg.lease.poll_interval * 3);
                            let why = match (reason, seen.map(|s| parse_ts(&s))) {
                                (Some(r), _) => r,
                                (None, Some(s)) if now - s < poll => {
                                    "no lease could be granted".to_string()
                                }
                                (None, Some(s)) => {
                                    format!("its agent has not polled since {}", ts(s))
                                }
                                (None, None) => "its agent never polled".to_string(),
                            };
                            let msg = format!(
                                "broker {broker} waited {} for its turn: {why}",
                                crate::schedule::humantime(self.cfg.schedule.gate_timeout)
                            );
                            // Count the wait as an attempt so a dead agent cannot hold a cycle forever.
                            tx.execute(
                                "UPDATE cycle_brokers SET attempts = attempts + 1, epoch = -1 WHERE cycle_id = ? AND broker = ?",
                                params![c, broker],
                            )?;
                            Self::broker_failed_attempt(&tx, now, c, broker, -1, &msg, "wait")?;
                            Self::event(&tx, now, "warning", Some(broker), None, "skipped", &msg)?;
                        }
                        Some(_) => {}
                    }
                }
            }
            let open: i64 = tx.query_row(
                "SELECT count(*) FROM cycle_brokers WHERE cycle_id = ? AND state IN ('pending','leased','archiving')",
                [cycle],
                |r| r.get(0),
            )?;
            if open == 0 {
                tx.execute(
                    "UPDATE cycles SET state = 'finishing' WHERE id = ? AND state = 'running'",
                    [cycle],
                )?;
                needs.final_check = true;
            }
        }
        needs.verify = self.cfg.retention.verify_new
            && tx.query_row(
                "SELECT count(*) > 0 FROM snapshots WHERE verified_at IS NULL AND deleted_at IS NULL",
                [],
                |r| r.get(0),
            )?;
        needs.prune = tx
            .query_row("SELECT value FROM meta WHERE key = 'prune_due'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .is_some();
        tx.commit()?;
        Ok(needs)
    }

    fn schedule_tick(cfg: &CoordinatorConfig, tx: &Transaction, now: Now) -> rusqlite::Result<()> {
        let sched = cfg.schedule();
        let next: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'next_due'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(next) = next.map(|s| parse_ts(&s)) else {
            // First start: the first cycle is due now.
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('next_due', ?)",
                [ts(now)],
            )?;
            return Ok(());
        };
        if now < next {
            return Ok(());
        }
        let deadline = cdur(cfg.schedule.starting_deadline);
        let mut following = sched.next_after(next);
        while following <= now {
            following = sched.next_after(following);
        }
        if let Schedule::Every(_) = sched {
            following = sched.next_after(now);
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_due', ?)",
            [ts(following)],
        )?;
        if cfg.schedule.suspend {
            Self::event(
                tx,
                now,
                "info",
                None,
                None,
                "schedule",
                "cycle due but the schedule is suspended",
            )?;
            return Ok(());
        }
        if now - next > deadline {
            Self::event(
                tx,
                now,
                "warning",
                None,
                None,
                "schedule",
                &format!(
                    "the cycle due at {} missed its starting deadline; next is {}",
                    ts(next),
                    ts(following)
                ),
            )?;
            return Ok(());
        }
        if let Some(id) = Self::running_cycle(tx)? {
            Self::event(
                tx,
                now,
                "warning",
                None,
                None,
                "schedule",
                &format!(
                    "a cycle was due but cycle {id} is still running; next is {}",
                    ts(following)
                ),
            )?;
            return Ok(());
        }
        let brokers = cfg.brokers();
        Self::start_cycle(tx, now, "schedule", &brokers)?;
        Ok(())
    }

    fn running_cycle(tx: &Transaction) -> rusqlite::Result<Option<i64>> {
        tx.query_row(
            "SELECT id FROM cycles WHERE state IN ('running','finishing') LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
    }

    fn start_cycle(
        tx: &Transaction,
        now: Now,
        trigger: &str,
        brokers: &[i32],
    ) -> rusqlite::Result<i64> {
        tx.execute(
            "INSERT INTO cycles(trigger, state, started_at) VALUES (?, 'running', ?)",
            params![trigger, ts(now)],
        )?;
        let id = tx.last_insert_rowid();
        for (i, b) in brokers.iter().enumerate() {
            tx.execute(
                "INSERT INTO cycle_brokers(cycle_id, broker, position, state, updated_at)
                 VALUES (?, ?, ?, 'pending', ?)",
                params![id, b, i as i64, ts(now)],
            )?;
        }
        Self::event(
            tx,
            now,
            "info",
            None,
            None,
            "cycle_started",
            &format!("cycle {id} started ({trigger}) for brokers {brokers:?}"),
        )?;
        Ok(id)
    }

    /// Applies the coordinator's in-sync check to whatever waits for it.
    pub fn apply_cluster_check(&mut self, check: Result<(), String>, now: Now) -> ApiResult<()> {
        let final_timeout = cdur(self.cfg.schedule.gate_timeout);
        let tx = self.conn.transaction()?;
        if let Some((epoch, broker, state)) = Self::slot(&tx)? {
            if state == "settling" {
                match &check {
                    Ok(()) => {
                        tx.execute(
                            "UPDATE leases SET state = 'cleared' WHERE epoch = ?",
                            [epoch],
                        )?;
                        Self::event(&tx, now, "info", Some(broker), Some(epoch), "slot_free",
                            &format!("the cluster is back in sync after lease {epoch} of broker {broker}; the lease slot is free"))?;
                    }
                    Err(e) => {
                        tx.execute(
                            "UPDATE leases SET progress = ? WHERE epoch = ?",
                            params![format!("waiting for the cluster: {e}"), epoch],
                        )?;
                    }
                }
            }
        }
        let finishing: Option<(i64, String)> = tx
            .query_row(
                "SELECT c.id, max(cb.updated_at) FROM cycles c JOIN cycle_brokers cb ON cb.cycle_id = c.id
                 WHERE c.state = 'finishing' GROUP BY c.id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((cycle, last)) = finishing {
            let failed: Vec<i32> = {
                let mut st = tx.prepare(
                    "SELECT broker FROM cycle_brokers WHERE cycle_id = ? AND state = 'failed' ORDER BY broker",
                )?;
                let rows = st.query_map([cycle], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let end = match &check {
                Ok(()) if failed.is_empty() => Some((
                    "done",
                    "every broker snapshotted; the cluster is in sync".to_string(),
                )),
                Ok(()) => Some((
                    "partial",
                    format!(
                        "no snapshot of broker(s) {failed:?} this cycle; the cluster is in sync"
                    ),
                )),
                Err(e) if now - parse_ts(&last) > final_timeout => Some((
                    "failed",
                    format!("the cluster was not back in sync at the end of the cycle: {e}"),
                )),
                Err(e) => {
                    tx.execute(
                        "UPDATE cycles SET message = ? WHERE id = ?",
                        params![format!("final check: waiting for the cluster: {e}"), cycle],
                    )?;
                    None
                }
            };
            if let Some((state, msg)) = end {
                tx.execute(
                    "UPDATE cycles SET state = ?, message = ?, finished_at = ? WHERE id = ?",
                    params![state, msg, ts(now), cycle],
                )?;
                tx.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('prune_due', '1')",
                    [],
                )?;
                Self::count(&tx, "cycles_total", state, 1)?;
                Self::event(
                    &tx,
                    now,
                    if state == "done" { "info" } else { "warning" },
                    None,
                    None,
                    "cycle_finished",
                    &format!("cycle {cycle} finished: {state}: {msg}"),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ----- operators ----------------------------------------------------------

    /// Starts a cycle now, of every broker or one.
    pub fn run_now(&mut self, broker: Option<i32>, now: Now) -> ApiResult<i64> {
        let brokers = match broker {
            Some(b) if !self.cfg.brokers().contains(&b) => {
                return Err(ApiError::NotFound(format!(
                    "broker {b} is not configured (agents: {:?})",
                    self.cfg.brokers()
                )))
            }
            Some(b) => vec![b],
            None => self.cfg.brokers(),
        };
        let tx = self.conn.transaction()?;
        if let Some(id) = Self::running_cycle(&tx)? {
            return Err(ApiError::Conflict(format!("cycle {id} is still running")));
        }
        let id = Self::start_cycle(&tx, now, "manual", &brokers)?;
        tx.commit()?;
        Ok(id)
    }

    pub fn create_restore(
        &mut self,
        broker: i32,
        snapshot: Option<&str>,
        force: bool,
        now: Now,
    ) -> ApiResult<RestoreView> {
        if !self.cfg.brokers().contains(&broker) {
            return Err(ApiError::NotFound(format!(
                "broker {broker} is not configured (agents: {:?})",
                self.cfg.brokers()
            )));
        }
        let tx = self.conn.transaction()?;
        let open: Option<i64> = tx
            .query_row(
                "SELECT id FROM restores WHERE broker = ? AND state IN ('pending','running')",
                [broker],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = open {
            return Err(ApiError::Conflict(format!(
                "restore order {id} of broker {broker} is still open"
            )));
        }
        let found: Option<(String, String, Option<bool>)> = match snapshot {
            Some(id) => tx
                .query_row(
                    "SELECT snapshot_id, cluster_id, verify_ok FROM snapshots
                     WHERE snapshot_id = ? AND deleted_at IS NULL",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?,
            None => tx
                .query_row(
                    "SELECT snapshot_id, cluster_id, verify_ok FROM snapshots
                     WHERE broker = ? AND deleted_at IS NULL AND coalesce(verify_ok, 1) = 1
                     ORDER BY committed DESC, snapshot_id DESC LIMIT 1",
                    [broker],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?,
        };
        let Some((snapshot_id, cluster_id, verified)) = found else {
            return Err(ApiError::NotFound(match snapshot {
                Some(id) => format!("snapshot {id} is not in the catalog (try `catalog rebuild`)"),
                None => format!("broker {broker} has no usable snapshot in the catalog"),
            }));
        };
        let of: i32 = tx.query_row(
            "SELECT broker FROM snapshots WHERE snapshot_id = ? AND cluster_id = ?",
            params![snapshot_id, cluster_id],
            |r| r.get(0),
        )?;
        if of != broker && !force {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot_id} is of broker {of}, not {broker} (use --force to restore it anyway)"
            )));
        }
        if verified == Some(false) && !force {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot_id} failed verification (use --force to restore it anyway)"
            )));
        }
        tx.execute(
            "INSERT INTO restores(broker, cluster_id, snapshot_id, force, state, progress, created_at, updated_at)
             VALUES (?,?,?,?, 'pending', 'waiting for the lease', ?, ?)",
            params![broker, cluster_id, snapshot_id, force, ts(now), ts(now)],
        )?;
        let id = tx.last_insert_rowid();
        Self::event(
            &tx,
            now,
            "info",
            Some(broker),
            None,
            "restore_ordered",
            &format!(
                "restore order {id}: broker {broker} from snapshot {snapshot_id}{}",
                if force { " (forced)" } else { "" }
            ),
        )?;
        tx.commit()?;
        self.restore(id)
    }

    pub fn restore(&self, id: i64) -> ApiResult<RestoreView> {
        self.conn
            .query_row(
                "SELECT id, broker, snapshot_id, cluster_id, force, state, phase, progress, message,
                    created_at, updated_at FROM restores WHERE id = ?",
                [id],
                |r| {
                    Ok(RestoreView {
                        id: r.get(0)?,
                        broker: r.get(1)?,
                        snapshot_id: r.get(2)?,
                        cluster_id: r.get(3)?,
                        force: r.get(4)?,
                        state: r.get(5)?,
                        phase: r.get(6)?,
                        progress: r.get(7)?,
                        message: r.get(8)?,
                        created_at: r.get(9)?,
                        updated_at: r.get(10)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| ApiError::NotFound(format!("restore order {id} does not exist")))
    }

    pub fn snapshots(&self, broker: Option<i32>) -> ApiResult<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare(
            "SELECT snapshot_id, cluster_id, broker, host, committed, capture, clean_shutdown,
                downtime_ms, files, data_bytes, archive_bytes, archive_sha256, manifest_sha256,
                verified_at, verify_ok, verify_message, source
             FROM snapshots WHERE deleted_at IS NULL AND (?1 IS NULL OR broker = ?1)
             ORDER BY broker, committed, snapshot_id",
        )?;
        let rows = st.query_map([broker], |r| {
            Ok(SnapshotRow {
                snapshot_id: r.get(0)?,
                cluster_id: r.get(1)?,
                broker: r.get(2)?,
                host: r.get(3)?,
                committed: r.get(4)?,
                capture: r.get(5)?,
                clean_shutdown: r.get(6)?,
                downtime_ms: r.get(7)?,
                files: r.get(8)?,
                data_bytes: r.get(9)?,
                archive_bytes: r.get(10)?,
                archive_sha256: r.get(11)?,
                manifest_sha256: r.get(12)?,
                verified_at: r.get(13)?,
                verify_ok: r.get(14)?,
                verify_message: r.get(15)?,
                source: r.get(16)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn record_verification(
        &mut self,
        cluster_id: &str,
        broker: i32,
        snapshot_id: &str,
        result: Result<(), String>,
        now: Now,
    ) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        let deleted: bool = tx
            .query_row(
                "SELECT deleted_at IS NOT NULL FROM snapshots
                 WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
                params![cluster_id, broker, snapshot_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if deleted {
            // Retention removed it while it was read back: nothing to say.
            return Ok(());
        }
        let n = tx.execute(
            "UPDATE snapshots SET verified_at = ?, verify_ok = ?, verify_message = ?
             WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
            params![
                ts(now),
                result.is_ok(),
                result.as_ref().err(),
                cluster_id,
                broker,
                snapshot_id
            ],
        )?;
        if n == 0 {
            return Err(ApiError::NotFound(format!(
                "snapshot {snapshot_id} of broker {broker} is not in the catalog"
            )));
        }
        match &result {
            Ok(()) => Self::event(
                &tx,
                now,
                "info",
                Some(broker),
                None,
                "verified",
                &format!("snapshot {snapshot_id} of broker {broker} verified"),
            )?,
            Err(e) => {
                Self::count(&tx, "verify_failures_total", &broker.to_string(), 1)?;
                Self::event(
                    &tx,
                    now,
                    "error",
                    Some(broker),
                    None,
                    "verify_failed",
                    &format!("snapshot {snapshot_id} of broker {broker} FAILED verification: {e}"),
                )?
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The next snapshot waiting for its first verification.
    pub fn next_unverified(&self) -> ApiResult<Option<(String, i32, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT cluster_id, broker, snapshot_id FROM snapshots
                 WHERE verified_at IS NULL AND deleted_at IS NULL ORDER BY committed LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Brokers whose snapshot is in progress (lease held, or archive being
    /// built): retention leaves them alone.
    pub fn busy_brokers(&self) -> ApiResult<std::collections::BTreeSet<i32>> {
        let mut st = self.conn.prepare(
            "SELECT broker FROM leases WHERE state IN ('active','settling')
             UNION SELECT cb.broker FROM cycle_brokers cb JOIN cycles c ON c.id = cb.cycle_id
               WHERE c.state IN ('running','finishing') AND cb.state IN ('leased','archiving')",
        )?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn retention_candidates(&self) -> ApiResult<Vec<crate::retention::Candidate>> {
        Ok(self
            .snapshots(None)?
            .into_iter()
            .map(|s| crate::retention::Candidate {
                committed: parse_ts(&s.committed),
                verified: s.verify_ok,
                snapshot_id: s.snapshot_id,
                cluster_id: s.cluster_id,
                broker: s.broker,
            })
            .collect())
    }

    /// Takes a snapshot out of the catalog before retention deletes it
    /// from cold storage, so that nothing (a restore order, a verification)
    /// picks a snapshot whose files are going. A coordinator killed before
    /// the deletion leaves a complete snapshot in storage that the catalog
    /// no longer lists (`catalog rebuild` finds it again), never a listed
    /// snapshot without its files.
    pub fn begin_deletion(&mut self, d: &crate::retention::Deletion, now: Now) -> ApiResult<()> {
        self.conn.execute(
            "UPDATE snapshots SET deleted_at = ? WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
            params![ts(now), d.cluster_id, d.broker, d.snapshot_id],
        )?;
        Ok(())
    }

    /// Retention could not delete it: it is listed again.
    pub fn deletion_failed(
        &mut self,
        d: &crate::retention::Deletion,
        error: &str,
        now: Now,
    ) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE snapshots SET deleted_at = NULL WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
            params![d.cluster_id, d.broker, d.snapshot_id],
        )?;
        Self::event(
            &tx,
            now,
            "warning",
            Some(d.broker),
            None,
            "retention",
            &format!(
                "snapshot {} of broker {} could not be deleted ({error}); it stays in the catalog",
                d.snapshot_id, d.broker
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Retention deleted it from cold storage.
    pub fn mark_deleted(&mut self, d: &crate::retention::Deletion, now: Now) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE snapshots SET deleted_at = ? WHERE cluster_id = ? AND broker = ? AND snapshot_id = ?",
            params![ts(now), d.cluster_id, d.broker, d.snapshot_id],
        )?;
        Self::count(&tx, "retention_deleted_total", &d.broker.to_string(), 1)?;
        Self::event(
            &tx,
            now,
            "info",
            Some(d.broker),
            None,
            "retention",
            &format!(
                "snapshot {} of broker {} deleted: {}",
                d.snapshot_id, d.broker, d.reason
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn prune_done(&mut self, error: Option<&str>, now: Now) -> ApiResult<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM meta WHERE key = 'prune_due'", [])?;
        if let Some(e) = error {
            Self::count(&tx, "retention_errors_total", "", 1)?;
            Self::event(
                &tx,
                now,
                "error",
                None,
                None,
                "retention",
                &format!("retention stopped at a storage error: {e}"),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the catalog with what cold storage holds.
    pub fn rebuild_catalog(
        &mut self,
        found: &[SnapshotSummary],
        now: Now,
    ) -> ApiResult<(usize, usize)> {
        let tx = self.conn.transaction()?;
        let before: usize = tx.query_row(
            "SELECT count(*) FROM snapshots WHERE deleted_at IS NULL",
            [],
            |r| r.get::<_, i64>(0),
        )? as usize;
        tx.execute(
            "UPDATE snapshots SET deleted_at = ? WHERE deleted_at IS NULL",
            [ts(now)],
        )?;
        for s in found {
            Self::commit_snapshot(&tx, now, s, "rebuild")?;
        }
        Self::event(
            &tx,
            now,
            "info",
            None,
            None,
            "catalog_rebuilt",
            &format!(
                "catalog rebuilt from cold storage: {} snapshots (was {before})",
                found.len()
            ),
        )?;
        tx.commit()?;
        Ok((before, found.len()))
    }

    pub fn status(&self, now: Now) -> ApiResult<StatusView> {
        let c = &self.conn;
        let lease = c
            .query_row(
                "SELECT epoch, broker, kind, state, phase, progress, expires_at, reason, granted_at
                 FROM leases WHERE state IN ('active','settling') ORDER BY epoch LIMIT 1",
                [],
                |r| {
                    Ok(LeaseView {
                        epoch: r.get(0)?,
                        broker: r.get(1)?,
                        kind: r.get(2)?,
                        state: r.get(3)?,
                        phase: r.get(4)?,
                        progress: r.get(5)?,
                        expires_at: r.get(6)?,
                        reason: r.get(7)?,
                        granted_at: r.get(8)?,
                    })
                },
            )
            .optional()?;
        let cycle = c
            .query_row(
                "SELECT id, trigger, state, started_at, finished_at, message FROM cycles ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(CycleView {
                        id: r.get(0)?,
                        trigger: r.get(1)?,
                        state: r.get(2)?,
                        started_at: r.get(3)?,
                        finished_at: r.get(4)?,
                        message: r.get(5)?,
                        brokers: Vec::new(),
                    })
                },
            )
            .optional()?;
        let cycle = match cycle {
            Some(mut cv) => {
                let mut st = c.prepare(
                    "SELECT broker, state, attempts, snapshot_id, reason FROM cycle_brokers
                     WHERE cycle_id = ? ORDER BY position",
                )?;
                let rows = st.query_map([cv.id], |r| {
                    Ok(CycleBrokerView {
                        broker: r.get(0)?,
                        state: r.get(1)?,
                        attempts: r.get(2)?,
                        snapshot_id: r.get(3)?,
                        reason: r.get(4)?,
                    })
                })?;
                cv.brokers = rows.collect::<rusqlite::Result<_>>()?;
                Some(cv)
            }
            None => None,
        };
        let next_due: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = 'next_due'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let mut brokers = Vec::new();
        for b in self.cfg.brokers() {
            let agent: Option<AgentRow> = c
                .query_row(
                    "SELECT hostname, last_seen, phase, broker_running, last_error FROM brokers WHERE id = ?",
                    [b],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let last: Option<LastSnapshotRow> = c
                .query_row(
                    "SELECT snapshot_id, committed, archive_bytes, downtime_ms, verify_ok FROM snapshots
                     WHERE broker = ? AND deleted_at IS NULL ORDER BY committed DESC LIMIT 1",
                    [b],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let count: i64 = c.query_row(
                "SELECT count(*) FROM snapshots WHERE broker = ? AND deleted_at IS NULL",
                [b],
                |r| r.get(0),
            )?;
            let (hostname, last_seen, phase, running, last_error) =
                agent.unwrap_or((None, None, "unknown".into(), None, None));
            brokers.push(BrokerView {
                broker: b,
                hostname,
                agent_last_seen: last_seen,
                phase,
                broker_running: running,
                last_error,
                snapshots: count,
                last_snapshot_id: last.as_ref().map(|l| l.0.clone()),
                last_snapshot_at: last.as_ref().map(|l| l.1.clone()),
                last_snapshot_age_seconds: last
                    .as_ref()
                    .map(|l| (now - parse_ts(&l.1)).num_seconds().max(0)),
                last_snapshot_bytes: last.as_ref().map(|l| l.2),
                last_downtime_ms: last.as_ref().and_then(|l| l.3),
                last_verified: last.as_ref().and_then(|l| l.4),
            });
        }
        let mut st = c.prepare(
            "SELECT at, level, broker, kind, message FROM events ORDER BY id DESC LIMIT 15",
        )?;
        let events = st
            .query_map([], |r| {
                Ok(EventView {
                    at: r.get(0)?,
                    level: r.get(1)?,
                    broker: r.get(2)?,
                    kind: r.get(3)?,
                    message: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(StatusView {
            now: ts(now),
            schedule: self.cfg.schedule().to_string(),
            suspended: self.cfg.schedule.suspend,
            next_due,
            lease,
            cycle,
            brokers,
            recent_events: events,
        })
    }

    pub fn counters(&self) -> ApiResult<Vec<(String, String, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT name, label, value FROM counters ORDER BY name, label")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How long each phase of every broker's latest lease (that reported a
    /// phase) lasted: the first phase from the grant, each phase until the
    /// next one was first reported, the last one until the lease ended (or
    /// until `now` while it runs).
    pub fn last_lease_phases(&self, now: Now) -> ApiResult<Vec<PhaseDuration>> {
        let mut st = self.conn.prepare(
            "SELECT l.broker, l.epoch, l.kind, l.granted_at, l.ended_at, p.phase, p.started_at
             FROM leases l JOIN lease_phases p ON p.epoch = l.epoch
             WHERE l.epoch IN (SELECT max(epoch) FROM lease_phases
                               JOIN leases USING (epoch) GROUP BY broker)
             ORDER BY l.broker, p.started_at, p.rowid",
        )?;
        type Row = (i32, i64, String, String, Option<String>, String, String);
        let rows: Vec<Row> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for (i, (broker, epoch, kind, granted, ended, phase, _)) in rows.iter().enumerate() {
            let first = i == 0 || rows[i - 1].1 != *epoch;
            let start = if first {
                parse_ts(granted)
            } else {
                parse_ts(&rows[i].6)
            };
            let end = match rows.get(i + 1).filter(|n| n.1 == *epoch) {
                Some(next) => parse_ts(&next.6),
                None => ended.as_deref().map(parse_ts).unwrap_or(now),
            };
            out.push(PhaseDuration {
                broker: *broker,
                epoch: *epoch,
                kind: kind.clone(),
                phase: phase.clone(),
                seconds: (end - start).num_milliseconds().max(0) as f64 / 1000.0,
            });
        }
        Ok(out)
    }
}

use crate::schedule::Schedule;

/// One phase of a broker's latest lease, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseDuration {
    pub broker: i32,
    pub epoch: i64,
    pub kind: String,
    pub phase: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RestoreView {
    pub id: i64,
    pub broker: i32,
    pub snapshot_id: String,
    pub cluster_id: String,
    pub force: bool,
    pub state: String,
    pub phase: Option<String>,
    pub progress: Option<String>,
    pub message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SnapshotRow {
    pub snapshot_id: String,
    pub cluster_id: String,
    pub broker: i32,
    pub host: String,
    pub committed: String,
    pub capture: String,
    pub clean_shutdown: bool,
    pub downtime_ms: Option<i64>,
    pub files: i64,
    pub data_bytes: i64,
    pub archive_bytes: i64,
    pub archive_sha256: String,
    pub manifest_sha256: String,
    pub verified_at: Option<String>,
    pub verify_ok: Option<bool>,
    pub verify_message: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LeaseView {
    pub epoch: i64,
    pub broker: i32,
    pub kind: String,
    pub state: String,
    pub phase: Option<String>,
    pub progress: Option<String>,
    pub expires_at: String,
    pub reason: Option<String>,
    pub granted_at: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CycleBrokerView {
    pub broker: i32,
    pub state: String,
    pub attempts: i64,
    pub snapshot_id: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CycleView {
    pub id: i64,
    pub trigger: String,
    pub state: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub message: Option<String>,
    pub brokers: Vec<CycleBrokerView>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BrokerView {
    pub broker: i32,
    pub hostname: Option<String>,
    pub agent_last_seen: Option<String>,
    pub phase: String,
    pub broker_running: Option<bool>,
    pub last_error: Option<String>,
    pub snapshots: i64,
    pub last_snapshot_id: Option<String>,
    pub last_snapshot_at: Option<String>,
    pub last_snapshot_age_seconds: Option<i64>,
    pub last_snapshot_bytes: Option<i64>,
    pub last_downtime_ms: Option<i64>,
    pub last_verified: Option<bool>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EventView {
    pub at: String,
    pub level: String,
    pub broker: Option<i32>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusView {
    pub now: String,
    pub schedule: String,
    pub suspended: bool,
    pub next_due: Option<String>,
    pub lease: Option<LeaseView>,
    pub cycle: Option<CycleView>,
    pub brokers: Vec<BrokerView>,
    pub recent_events: Vec<EventView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_snapshot_model::protocol::Phase;

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
"#;

    fn engine() -> Engine {
        let cfg = CoordinatorConfig::parse(CFG, std::path::Path::new("/c.toml")).unwrap();
        Engine::new(crate::db::open_in_memory(), cfg)
    }

    fn t0() -> Now {
        DateTime::parse_from_rfc3339("2026-05-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> Now {
        t0() + chrono::Duration::seconds(n)
    }

    fn poll_req(broker: i32, epoch: Option<u64>) -> PollRequest {
        PollRequest {
            protocol: kafka_snapshot_model::protocol::PROTOCOL_VERSION,
            broker,
            agent_version: "test".into(),
            hostname: format!("host{broker}"),
            phase: Phase::Idle,
            lease_epoch: epoch,
            broker_running: true,
            instance: None,
        }
    }

    /// Polls and, if a grant is possible, grants with a passing check.
    fn poll_grant(e: &mut Engine, broker: i32, now: Now) -> Action {
        match e.poll(&poll_req(broker, None), now).unwrap() {
            PollDecision::Answer(a) => a,
            PollDecision::Check(c) => e.grant(&c, Ok(()), &poll_req(broker, None), now).unwrap(),
        }
    }

    fn epoch_of(a: &Action) -> u64 {
        match a {
            Action::Snapshot { lease } | Action::Restore { lease, .. } => lease.epoch,
            Action::Idle => panic!("no lease granted"),
        }
    }

    fn summary(broker: i32, id: &str) -> SnapshotSummary {
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

    fn hb(broker: i32, epoch: u64, phase: Phase) -> Heartbeat {
        Heartbeat {
            broker,
            epoch,
            phase,
            progress: None,
        }
    }

    fn slot_state(e: &Engine) -> Option<(i32, String)> {
        e.status(t0()).unwrap().lease.map(|l| (l.broker, l.state))
    }

    fn start_cycle(e: &mut Engine) {
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
        let text = crate::metrics::render(&e, secs(3)).unwrap();
        assert!(
            text.contains("kafka_snapshot_broker_left_stopped{broker=\"1\"} 1"),
            "{text}"
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
        {
            let tx = e.conn.transaction().unwrap();
            Engine::commit_snapshot(&tx, t0(), &summary(2, "s2"), "agent").unwrap();
            tx.commit().unwrap();
        }
        let err = e.create_restore(7, None, false, t0()).unwrap_err();
        assert!(
            matches!(err, ApiError::NotFound(ref m) if m.contains("broker 7")),
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
        let text = crate::metrics::render(&e, secs(100)).unwrap();
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
