//! What agents ask: a lease (poll, then grant after the coordinator's own
//! look at the cluster), heartbeats under it, its release, the report of
//! an archive built after the release, and notices.

use super::{ms, ApiError, ApiResult, Candidate, Ctx, Engine, PollDecision};
use crate::state::{self, CycleState, EventLevel, LeaseKind, LeaseState, RestoreState};
use crate::store::{brokers, cluster_restores, cycles, events, leases, restores, Now};
use kafka_snapshot_model::protocol::{
    Action, Heartbeat, HeartbeatResponse, Lease, Notice, NoticeLevel, Outcome, PollRequest,
    Release, ReportResult, SnapshotReport, PROTOCOL_VERSION,
};

impl Engine {
    pub fn poll(&mut self, req: &PollRequest, now: Now) -> ApiResult<PollDecision> {
        if req.protocol != PROTOCOL_VERSION {
            return Err(ApiError::BadRequest(format!(
                "agent speaks protocol {}, this coordinator speaks {PROTOCOL_VERSION}",
                req.protocol,
            )));
        }
        let configured_role = self.cfg.role_of(req.broker);
        let cx = self.begin(now)?;
        brokers::seen_poll(&cx.tx, req, now)?;
        if let (Some(reported), Some(configured)) = (req.role, configured_role) {
            if reported != configured {
                let msg = format!(
                    "the agent of node {} runs on a {reported} (process.roles), but the \
                     coordinator's [[agents]] entry for node {} says {configured}: set role = \
                     \"{reported}\" there (a cycle takes brokers first and controllers last, and \
                     a controller is gated on the quorum); no lease until they agree",
                    req.broker, req.broker
                );
                brokers::set_error(&cx.tx, req.broker, &msg, now)?;
                cx.commit()?;
                return Err(ApiError::BadRequest(msg));
            }
        }
        // An active lease of this broker the agent does not know about.
        if let Some(own) = leases::active_of(&cx.tx, req.broker)? {
            let action = cx.poll_under_own_lease(req, &own)?;
            cx.commit()?;
            return Ok(PollDecision::Answer(action));
        }
        // A whole-cluster restore: every node gets its part, nothing else
        // is granted.
        if let Some((order, st)) = cluster_restores::open(&cx.tx)? {
            let action = cx.cluster_restore_poll(req, order, st)?;
            cx.commit()?;
            return Ok(PollDecision::Answer(action));
        }
        if leases::slot(&cx.tx)?.is_some() {
            cx.commit()?;
            return Ok(PollDecision::Answer(Action::Idle));
        }
        // Restores first: an operator is waiting for them.
        if let Some(order_id) = restores::pending_of(&cx.tx, req.broker)? {
            cx.commit()?;
            return Ok(PollDecision::Check(Candidate::Restore {
                broker: req.broker,
                order_id,
            }));
        }
        if restores::any_pending(&cx.tx)? {
            cx.commit()?;
            return Ok(PollDecision::Answer(Action::Idle));
        }
        // Suspended by an operator: no snapshot lease (restores still go).
        let head = match cx.paused()? {
            Some(_) => None,
            None => cx.cycle_head()?,
        };
        cx.commit()?;
        Ok(match head {
            Some((cycle_id, broker)) if broker == req.broker => {
                PollDecision::Check(Candidate::Snapshot { broker, cycle_id })
            }
            _ => PollDecision::Answer(Action::Idle),
        })
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
        let cx = self.begin(now)?;
        if leases::slot(&cx.tx)?.is_some() {
            return Ok(Action::Idle);
        }
        let broker = cand.broker();
        if let Err(reason) = check {
            let why = format!("coordinator check: {reason}");
            match cand {
                Candidate::Snapshot { cycle_id, .. } => {
                    cycles::set_reason(&cx.tx, *cycle_id, broker, &why, now)?
                }
                Candidate::Restore { order_id, .. } => {
                    restores::set_progress(&cx.tx, *order_id, &format!("waiting: {why}"), now)?
                }
            }
            cx.commit()?;
            return Ok(Action::Idle);
        }
        let (kind, cycle_id, order_id) = match cand {
            Candidate::Snapshot { cycle_id, .. } => {
                if cx.paused()?.is_some() || cx.cycle_head()? != Some((*cycle_id, broker)) {
                    return Ok(Action::Idle);
                }
                (LeaseKind::Snapshot, Some(*cycle_id), None)
            }
            Candidate::Restore { order_id, .. } => {
                if restores::state_of(&cx.tx, *order_id)? != Some(RestoreState::Pending) {
                    return Ok(Action::Idle);
                }
                (LeaseKind::Restore, None, Some(*order_id))
            }
        };
        let epoch = leases::insert(
            &cx.tx,
            &leases::Grant {
                broker,
                kind,
                cycle_id,
                order_id,
                expires: now + cx.ttl(),
                holder_instance: holder.instance.as_deref(),
                holder_host: &holder.hostname,
            },
            now,
        )?;
        if let Some(cycle) = cycle_id {
            let turn = cycles::turn(&cx.tx, cycle, broker)?
                .ok_or_else(|| ApiError::Internal(format!("broker {broker} left cycle {cycle}")))?;
            cycles::granted(&cx.tx, cycle, broker, turn.state.on_grant()?, epoch, now)?;
        }
        if let Some(order) = order_id {
            cx.restore_granted(order, epoch)?;
        }
        cx.event(
            EventLevel::Info,
            Some(broker),
            Some(epoch),
            "lease_granted",
            &format!("lease {epoch} granted to broker {broker} for a {kind}"),
        )?;
        let action = cx.lease_action(epoch)?;
        cx.commit()?;
        Ok(action)
    }

    pub fn heartbeat(&mut self, hb: &Heartbeat, now: Now) -> ApiResult<HeartbeatResponse> {
        let cx = self.begin(now)?;
        let lease = cx.active_lease(hb.broker, hb.epoch)?;
        leases::renew(
            &cx.tx,
            lease.epoch,
            now,
            now + cx.ttl(),
            hb.phase.as_str(),
            hb.progress.as_deref(),
            hb.phase.broker_may_be_down(),
        )?;
        brokers::seen_phase(&cx.tx, hb.broker, hb.phase, now)?;
        if let (LeaseKind::Restore, Some(order)) = (lease.kind, lease.order_id) {
            restores::set_phase(
                &cx.tx,
                order,
                hb.phase.as_str(),
                hb.progress.as_deref(),
                now,
            )?;
        }
        let go = match lease.kind {
            LeaseKind::ClusterRestore => cx.cluster_heartbeat(&lease, hb)?,
            _ => None,
        };
        let ttl = cx.cfg.lease.ttl;
        cx.commit()?;
        Ok(HeartbeatResponse {
            ttl_ms: ms(ttl),
            abort: lease.abort_requested.is_some(),
            go,
        })
    }

    pub fn release(&mut self, rel: &Release, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        let epoch = rel.epoch as i64;
        let Some(lease) = leases::get(&cx.tx, epoch)? else {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: broker {} holds no such lease",
                rel.broker
            )));
        };
        let broker = lease.broker;
        if broker != rel.broker {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: it belongs to broker {broker}, not {}",
                rel.broker
            )));
        }
        if leases::latest_epoch_of(&cx.tx, broker)? != Some(epoch) {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch} for broker {broker}: a newer lease exists"
            )));
        }
        let outcome_json = serde_json::to_string(&rel.outcome).unwrap_or_default();
        match leases::outcome(&cx.tx, epoch)? {
            // The same release again: the agent did not hear the answer
            // to the first one. It was recorded once; nothing changes.
            Some(before) if before == outcome_json => return Ok(()),
            // An agent that restarted re-releases what its state file
            // still held; what the first release recorded stands.
            Some(before) => {
                return Err(ApiError::Conflict(format!(
                    "lease epoch {epoch} of broker {broker} was already released ({}); \
                     a second release cannot change its outcome",
                    outcome_kind(&before)
                )))
            }
            None => {}
        }
        leases::set_outcome(&cx.tx, epoch, &outcome_json)?;
        let from = lease.state;
        match &rel.outcome {
            Outcome::Recovered {
                snapshot_id,
                downtime_ms,
            } => {
                if let Some(cycle) = lease.cycle_id {
                    cx.snapshot_moved(cycle, broker, epoch, snapshot_id, false)?;
                }
                cx.event(
                    EventLevel::Info,
                    Some(broker),
                    Some(epoch),
                    "broker_recovered",
                    &format!(
                        "broker {broker} is back in every ISR after {:.1}s down; archive \
                         {snapshot_id} is being built",
                        *downtime_ms as f64 / 1000.0
                    ),
                )?;
                cx.ended_well(broker, epoch, from, true)?;
            }
            Outcome::Committed {
                snapshot,
                downtime_ms,
            } => {
                let recorded = cx.record_committed(
                    lease.cycle_id,
                    broker,
                    epoch,
                    snapshot,
                    Some(*downtime_ms),
                );
                if let Err(e) = recorded {
                    drop(cx);
                    return Err(self.refused_report(broker, epoch, e, now));
                }
                cx.ended_well(broker, epoch, from, true)?;
            }
            Outcome::Skipped { reason } => {
                if let Some(cycle) = lease.cycle_id {
                    cx.failed_attempt(cycle, broker, epoch, &format!("gate: {reason}"), "gate")?;
                }
                cx.event(
                    EventLevel::Warning,
                    Some(broker),
                    Some(epoch),
                    "skipped",
                    &format!("broker {broker} skipped for now, its gate did not pass: {reason}"),
                )?;
                cx.ended_well(broker, epoch, from, false)?;
            }
            Outcome::Restored {
                snapshot_id,
                downtime_ms,
            } => {
                match (lease.kind, lease.order_id) {
                    (LeaseKind::Restore, Some(order)) => cx.finish_restore(
                        order,
                        true,
                        &format!(
                            "restored {snapshot_id}; broker {broker} is back in every ISR \
                             ({:.1}s down)",
                            *downtime_ms as f64 / 1000.0
                        ),
                    )?,
                    (LeaseKind::ClusterRestore, Some(order)) => cx.cluster_node_restored(
                        order,
                        broker,
                        &format!(
                            "restored {snapshot_id} and started ({:.1}s down)",
                            *downtime_ms as f64 / 1000.0
                        ),
                    )?,
                    _ => {}
                }
                cx.event(
                    EventLevel::Info,
                    Some(broker),
                    Some(epoch),
                    "restored",
                    &format!("broker {broker} restored from {snapshot_id}"),
                )?;
                cx.ended_well(broker, epoch, from, true)?;
            }
            Outcome::Failed {
                reason,
                broker_running,
            } => {
                let kind = lease.kind;
                let msg = match (*broker_running, kind) {
                    (true, _) => format!("{kind} of broker {broker} failed: {reason}"),
                    // The cluster was down to begin with; the order's
                    // failure is what an operator acts on.
                    (false, LeaseKind::ClusterRestore) => format!(
                        "node {broker}'s part of the cluster restore failed, the node does not \
                         run: {reason}"
                    ),
                    (false, _) => {
                        format!("BROKER {broker} LEFT STOPPED: {kind} failed: {reason}")
                    }
                };
                brokers::set_error(&cx.tx, broker, &msg, now)?;
                if from == LeaseState::Active {
                    if !*broker_running && kind != LeaseKind::ClusterRestore {
                        // What an operator must act on: an ERROR of its own.
                        cx.event(
                            EventLevel::Error,
                            Some(broker),
                            Some(epoch),
                            "left_stopped",
                            &msg,
                        )?;
                    }
                    // Not clean: the slot waits for the cluster.
                    cx.settle(epoch, &msg)?;
                } else {
                    match (lease.kind, lease.order_id) {
                        (LeaseKind::Restore, Some(order)) => {
                            cx.finish_restore(order, false, &msg)?
                        }
                        (LeaseKind::ClusterRestore, Some(order)) => {
                            cx.cluster_node_failed(order, broker, &msg)?
                        }
                        _ => {}
                    }
                    if let Some(cycle) = lease.cycle_id {
                        cx.failed_attempt(cycle, broker, epoch, &msg, "failed")?;
                    }
                    let level = if *broker_running {
                        EventLevel::Warning
                    } else {
                        EventLevel::Error
                    };
                    cx.event(level, Some(broker), Some(epoch), "failed", &msg)?;
                }
            }
        }
        cx.commit()?;
        Ok(())
    }

    pub fn report(&mut self, rep: &SnapshotReport, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        let epoch = rep.epoch as i64;
        let lease = leases::get(&cx.tx, epoch)?
            .filter(|l| l.kind == LeaseKind::Snapshot && l.broker == rep.broker);
        let Some(lease) = lease else {
            return Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: broker {} took no snapshot under it",
                rep.broker
            )));
        };
        let broker = lease.broker;
        match &rep.result {
            ReportResult::Committed { snapshot } => {
                if let Err(e) = cx.record_committed(lease.cycle_id, broker, epoch, snapshot, None) {
                    drop(cx);
                    return Err(self.refused_report(broker, epoch, e, now));
                }
            }
            ReportResult::Failed {
                snapshot_id,
                reason,
            } => {
                let msg =
                    format!("archiving snapshot {snapshot_id} of broker {broker} failed: {reason}");
                brokers::set_error(&cx.tx, broker, &msg, now)?;
                if let Some(cycle) = lease.cycle_id {
                    cx.failed_attempt(cycle, broker, epoch, &msg, "archive")?;
                }
                cx.event(
                    EventLevel::Warning,
                    Some(broker),
                    Some(epoch),
                    "archive_failed",
                    &msg,
                )?;
            }
        }
        cx.commit()?;
        Ok(())
    }

    /// A committed snapshot the catalog refused (another cluster's, another
    /// broker's): nothing of the request was applied, but the refusal is
    /// recorded, since the agent may only log it.
    fn refused_report(&mut self, broker: i32, epoch: i64, e: ApiError, now: Now) -> ApiError {
        let level = match e {
            ApiError::Unavailable(_) => EventLevel::Warning,
            _ => EventLevel::Error,
        };
        let recorded = self.begin(now).and_then(|cx| {
            cx.event(
                level,
                Some(broker),
                Some(epoch),
                "report_refused",
                &e.to_string(),
            )?;
            cx.commit()
        });
        if let Err(db) = recorded {
            tracing::error!(broker, epoch, "recording a refused report ({e}): {db}");
        }
        e
    }

    pub fn notice(&mut self, n: &Notice, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        let level = match n.level {
            NoticeLevel::Info => EventLevel::Info,
            NoticeLevel::Warning => EventLevel::Warning,
            NoticeLevel::Error => EventLevel::Error,
        };
        cx.event(
            level,
            Some(n.broker),
            n.epoch.map(|e| e as i64),
            "agent_notice",
            &format!("agent of broker {}: {}", n.broker, n.message),
        )?;
        if n.level == NoticeLevel::Error {
            brokers::set_error(&cx.tx, n.broker, &n.message, now)?;
        }
        cx.commit()?;
        Ok(())
    }
}

/// A poll from another agent process than the one `lease` was handed to:
/// a second agent acting as this broker (a copy of the config, an old host
/// still running), or the holder restarted without its state file.
fn is_other(lease: &leases::LeaseRow, req: &PollRequest) -> bool {
    matches!((&lease.holder_instance, &req.instance), (Some(a), Some(b)) if a != b)
}

impl Ctx<'_> {
    /// A poll of a broker that holds an active lease: nothing new for the
    /// process working under it; nothing for another process (the holder
    /// is not disturbed, the operator is told once); the lease again for
    /// its holder if the grant never reached it; and a lease the agent
    /// worked under and lost track of (it restarted) is closed the careful
    /// way, since the broker may have been stopped.
    fn poll_under_own_lease(&self, req: &PollRequest, own: &leases::LeaseRow) -> ApiResult<Action> {
        let epoch = own.epoch;
        if req.lease_epoch == Some(epoch as u64) {
            return Ok(Action::Idle);
        }
        if is_other(own, req) {
            // A dead holder's lease expires within the TTL.
            if !events::seen(&self.tx, "duplicate_agent", epoch)? {
                let message = format!(
                    "two agents act as broker {}: lease {epoch} is held by the agent on {} \
                     (instance {}); the agent on {} (instance {}) gets nothing. Only one agent \
                     may run per broker: stop the other one (if the holder restarted without \
                     its state file, its lease expires within lease.ttl)",
                    req.broker,
                    own.holder_host.as_deref().unwrap_or("?"),
                    own.holder_instance.as_deref().unwrap_or("?"),
                    req.hostname,
                    req.instance.as_deref().unwrap_or("?"),
                );
                self.event(
                    EventLevel::Error,
                    Some(req.broker),
                    Some(epoch),
                    "duplicate_agent",
                    &message,
                )?;
                brokers::set_error(&self.tx, req.broker, &message, self.now)?;
            }
            return Ok(Action::Idle);
        }
        let Some(phase) = &own.phase else {
            // Granted, but the answer never arrived: hand it out again.
            leases::extend(&self.tx, epoch, self.now + self.ttl())?;
            return self.lease_action(epoch);
        };
        self.settle(
            epoch,
            &format!(
                "agent of broker {} polled without lease {epoch} it was working under \
                 (phase {phase})",
                req.broker,
            ),
        )?;
        Ok(Action::Idle)
    }

    /// The running cycle and the broker whose turn it is.
    pub(super) fn cycle_head(&self) -> ApiResult<Option<(i64, i32)>> {
        let Some((cycle, CycleState::Running)) = cycles::open(&self.tx)? else {
            return Ok(None);
        };
        // No lease before the before_cycle hook succeeded.
        if self.before_cycle_pending()? == Some(cycle) {
            return Ok(None);
        }
        let turns = cycles::turns(&self.tx, cycle)?;
        Ok(state::next_turn(&turns).map(|b| (cycle, b)))
    }

    /// What the agent holding lease `epoch` is told to do.
    pub(super) fn lease_action(&self, epoch: i64) -> ApiResult<Action> {
        let lease = leases::get(&self.tx, epoch)?
            .ok_or_else(|| ApiError::Internal(format!("lease {epoch} vanished")))?;
        let grant = Lease {
            epoch: epoch as u64,
            ttl_ms: ms(self.cfg.lease.ttl),
            cycle_id: lease.cycle_id,
            gate_timeout_ms: ms(self.cfg.schedule.gate_timeout),
        };
        Ok(match (lease.kind, lease.order_id) {
            (LeaseKind::Restore, Some(order)) => Action::Restore {
                lease: grant,
                order: restores::order(&self.tx, order)?,
            },
            (LeaseKind::ClusterRestore, Some(order)) => Action::ClusterRestore {
                lease: grant,
                order: cluster_restores::order(&self.tx, order, lease.broker)?,
            },
            _ => Action::Snapshot { lease: grant },
        })
    }

    /// The active lease `epoch` of `broker`, or 409.
    fn active_lease(&self, broker: i32, epoch: u64) -> ApiResult<leases::LeaseRow> {
        match leases::get(&self.tx, epoch as i64)? {
            Some(l) if l.broker == broker && l.state == LeaseState::Active => Ok(l),
            Some(l) if l.broker == broker => Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch} for broker {broker}: that lease is {}",
                l.state
            ))),
            _ => Err(ApiError::Conflict(format!(
                "stale lease epoch {epoch}: broker {broker} holds no such lease"
            ))),
        }
    }
}

/// The type of a recorded outcome ("committed", "failed", ...), for a
/// message.
fn outcome_kind(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| Some(v.get("type")?.as_str()?.to_string()))
        .unwrap_or_else(|| "an outcome".into())
}
