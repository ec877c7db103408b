//! How a lease ends, and what that does to the broker's turn in its cycle
//! or to the restore order it was granted for. Shared by the agents'
//! requests (release, report, a lost lease) and the tick (expiry, archive
//! timeout, a broker that never came for its turn).

use super::{ApiError, ApiResult, Ctx};
use crate::state::{self, EventLevel, LeaseKind, LeaseState, RestoreState};
use crate::store::{brokers, cycles, leases, restores, snapshots};
use kafka_snapshot_model::protocol::SnapshotSummary;

impl Ctx<'_> {
    /// The lease ended badly: the slot stays closed until the cluster is
    /// back in sync, and its broker's turn or restore order failed.
    pub(super) fn settle(&self, epoch: i64, reason: &str) -> ApiResult<()> {
        let lease = leases::get(&self.tx, epoch)?
            .ok_or_else(|| ApiError::Internal(format!("lease {epoch} vanished")))?;
        let to = lease.state.on_lost()?;
        leases::end(&self.tx, epoch, to, Some(reason), self.now)?;
        self.event(
            EventLevel::Warning,
            Some(lease.broker),
            Some(epoch),
            "lease_settling",
            &format!("{reason}; no lease is granted until the cluster is back in sync"),
        )?;
        match (lease.kind, lease.order_id, lease.cycle_id) {
            (LeaseKind::Restore, Some(order), _) => self.finish_restore(order, false, reason)?,
            (LeaseKind::ClusterRestore, Some(order), _) => {
                self.cluster_node_failed(order, lease.broker, reason)?
            }
            (LeaseKind::Snapshot, _, Some(cycle)) => {
                self.failed_attempt(cycle, lease.broker, epoch, reason, "failed")?
            }
            _ => {}
        }
        Ok(())
    }

    /// The lease ended as planned: the slot is free again (if the lease was
    /// still active) and, unless the broker was merely skipped, its last
    /// error is history.
    pub(super) fn ended_well(
        &self,
        broker: i32,
        epoch: i64,
        from: LeaseState,
        clear_error: bool,
    ) -> ApiResult<()> {
        if clear_error {
            brokers::clear_error(&self.tx, broker)?;
        }
        let to = from.on_release(true);
        if to != from {
            leases::end(&self.tx, epoch, to, None, self.now)?;
        }
        Ok(())
    }

    pub(super) fn finish_restore(&self, order: i64, ok: bool, message: &str) -> ApiResult<()> {
        let Some(from) = restores::state_of(&self.tx, order)? else {
            return Ok(());
        };
        let to = from.finish(ok);
        if to != from {
            restores::finish(&self.tx, order, to, message, self.now)?;
        }
        Ok(())
    }

    /// A broker's attempt in a cycle (under lease `epoch`, or -1 for a wait
    /// that timed out) did not produce a snapshot: back to the end of the
    /// line, or failed for this cycle after `schedule.max_attempts`. News
    /// of an older attempt changes nothing.
    pub(super) fn failed_attempt(
        &self,
        cycle: i64,
        broker: i32,
        epoch: i64,
        reason: &str,
        counter_label: &str,
    ) -> ApiResult<()> {
        let Some(turn) = cycles::turn(&self.tx, cycle, broker)? else {
            return Ok(());
        };
        if turn.epoch != Some(epoch) {
            return Ok(());
        }
        self.count("failures_total", &format!("{broker}/{counter_label}"))?;
        match state::failed_attempt(turn.attempts, self.cfg.schedule.max_attempts) {
            state::CycleBrokerState::Failed => {
                cycles::fail(&self.tx, cycle, broker, reason, self.now)?
            }
            _ => cycles::requeue(&self.tx, cycle, broker, reason, self.now)?,
        }
        Ok(())
    }

    /// A committed snapshot reported under lease `epoch` of `broker`: into
    /// the catalog, and the broker is done for its cycle.
    pub(super) fn record_committed(
        &self,
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
        match self.cluster()? {
            Some(ours) if ours == snapshot.cluster_id => {}
            Some(ours) => {
                return Err(ApiError::BadRequest(format!(
                    "snapshot {} of broker {broker} is of cluster {}, but this coordinator works \
                     for cluster {ours}: refused, it is not listed (is the agent of broker \
                     {broker} on a host of another cluster, or configured with this \
                     coordinator by mistake?)",
                    snapshot.snapshot_id, snapshot.cluster_id
                )))
            }
            None => {
                return Err(ApiError::Unavailable(format!(
                    "snapshot {} of broker {broker} (cluster {}) cannot be listed yet: this \
                     coordinator does not know its own cluster.id (it has not reached the \
                     cluster, and the config sets no [cluster] id)",
                    snapshot.snapshot_id, snapshot.cluster_id
                )))
            }
        }
        let seen = snapshots::Seen::reported(snapshot.committed, self.now);
        snapshots::upsert(&self.tx, snapshot, "agent", seen)?;
        self.flag_skew(snapshot, seen, "reported")?;
        if let Some(cycle) = cycle_id {
            self.snapshot_moved(cycle, broker, epoch, &snapshot.snapshot_id, true)?;
        }
        let down = downtime_ms
            .map(|d| format!(", {:.1}s down", d as f64 / 1000.0))
            .unwrap_or_default();
        self.event(
            EventLevel::Info,
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

    /// The broker's snapshot under lease `epoch` is being archived, or
    /// (`committed`) is in the catalog.
    pub(super) fn snapshot_moved(
        &self,
        cycle: i64,
        broker: i32,
        epoch: i64,
        snapshot_id: &str,
        committed: bool,
    ) -> ApiResult<()> {
        let Some(turn) = cycles::turn(&self.tx, cycle, broker)? else {
            return Ok(());
        };
        if turn.epoch != Some(epoch) {
            return Ok(());
        }
        let to = if committed {
            turn.state.on_committed()
        } else {
            turn.state.on_recovered()
        };
        cycles::snapshot_moved(&self.tx, cycle, broker, epoch, to, snapshot_id, self.now)?;
        if committed {
            self.sync_set(cycle)?;
        }
        Ok(())
    }

    /// The restore order `order` was granted lease `epoch`.
    pub(super) fn restore_granted(&self, order: i64, epoch: i64) -> ApiResult<()> {
        let from = restores::state_of(&self.tx, order)?
            .ok_or_else(|| ApiError::Internal(format!("restore order {order} vanished")))?;
        let to: RestoreState = from.on_grant()?;
        restores::granted(&self.tx, order, to, epoch, self.now)?;
        Ok(())
    }
}
