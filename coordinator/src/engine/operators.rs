//! What operators order: a cycle now, and restores.

use super::{ApiError, ApiResult, Ctx, Engine};
use crate::state::{Cancel, EventLevel, LeaseState};
use crate::store::{cycles, events, leases, restores, snapshots, ts, Now};
use events::Meta;
use kafka_snapshot_model::api::{CycleCancelled, RestoreView};

impl Engine {
    fn configured(&self, broker: i32) -> ApiResult<()> {
        if self.cfg.nodes().contains(&broker) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "broker {broker} is not configured (agents: {:?})",
                self.cfg.nodes()
            )))
        }
    }

    /// Starts a cycle now, of every broker or one.
    pub fn run_now(&mut self, broker: Option<i32>, now: Now) -> ApiResult<i64> {
        let brokers = match broker {
            Some(b) => {
                self.configured(b)?;
                vec![b]
            }
            None => self.cfg.nodes(),
        };
        let cx = self.begin(now)?;
        if let Some(order) = cx.cluster_restore_open()? {
            return Err(ApiError::Conflict(format!(
                "cluster restore order {order} is open: no cycle until it ends"
            )));
        }
        if let Some(why) = cx.paused()? {
            return Err(ApiError::Conflict(format!(
                "the coordinator is suspended ({why}): `coordinator resume` first"
            )));
        }
        if let Some((id, _)) = cycles::open(&cx.tx)? {
            return Err(ApiError::Conflict(format!("cycle {id} is still running")));
        }
        let id = cx.start_cycle("manual", &brokers)?;
        cx.commit()?;
        Ok(id)
    }

    /// Orders a restore of `broker` from `snapshot` (its newest usable one
    /// by default). It waits for the lease and goes before the next cycle
    /// broker.
    pub fn create_restore(
        &mut self,
        broker: i32,
        snapshot: Option<&str>,
        force: bool,
        now: Now,
    ) -> ApiResult<RestoreView> {
        self.configured(broker)?;
        let cx = self.begin(now)?;
        if let Some(order) = cx.cluster_restore_open()? {
            return Err(ApiError::Conflict(format!(
                "cluster restore order {order} is open: it restores every node"
            )));
        }
        if let Some(id) = restores::open_of(&cx.tx, broker)? {
            return Err(ApiError::Conflict(format!(
                "restore order {id} of broker {broker} is still open"
            )));
        }
        // Only this cluster's snapshots: a store shared with another
        // cluster may hold snapshots of a broker with the same id.
        let Some(cluster) = cx.cluster()? else {
            return Err(ApiError::Unavailable(
                "this coordinator does not know its cluster.id yet (it has not reached the \
                 cluster, and the config sets no [cluster] id): no snapshot can be chosen"
                    .into(),
            ));
        };
        let found = match snapshot {
            Some(id) => snapshots::find(&cx.tx, Some(&cluster), id)?,
            None => snapshots::newest_usable(&cx.tx, Some(&cluster), broker)?,
        };
        let Some((snapshot_id, cluster_id, of, verified)) = found else {
            return Err(ApiError::NotFound(match snapshot {
                Some(id) => format!(
                    "snapshot {id} is not in the catalog of cluster {cluster} (try `catalog \
                     rebuild`)"
                ),
                None => format!(
                    "broker {broker} has no usable snapshot of cluster {cluster} in the catalog"
                ),
            }));
        };
        if of != broker && !force {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot_id} is of broker {of}, not {broker} (use --force to restore \
                 it anyway)"
            )));
        }
        if verified == Some(false) && !force {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot_id} failed verification (use --force to restore it anyway)"
            )));
        }
        let id = restores::insert(&cx.tx, broker, &cluster_id, &snapshot_id, force, now)?;
        cx.event(
            EventLevel::Info,
            Some(broker),
            None,
            "restore_ordered",
            &format!(
                "restore order {id}: broker {broker} from snapshot {snapshot_id}{}",
                if force { " (forced)" } else { "" }
            ),
        )?;
        cx.commit()?;
        self.restore(id)
    }

    /// Suspends the coordinator until [`Engine::resume`]: no scheduled
    /// cycle starts and no snapshot lease is granted (a running cycle
    /// waits, and its waiting does not count as an attempt); a lease in
    /// progress finishes, and restore orders still go. Persisted: a
    /// restarted coordinator stays suspended.
    pub fn suspend(&mut self, reason: Option<&str>, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        let why = format!(
            "suspended by an operator at {}{}",
            ts(now),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        events::set_meta(&cx.tx, Meta::Suspended, &why)?;
        cx.event(
            EventLevel::Warning,
            None,
            None,
            "suspended",
            &format!("{why}; no snapshot lease is granted until `coordinator resume`"),
        )?;
        cx.commit()?;
        Ok(())
    }

    pub fn resume(&mut self, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        if cx.paused()?.is_none() {
            return Err(ApiError::Conflict(
                "the coordinator is not suspended by an operator".into(),
            ));
        }
        events::clear_meta(&cx.tx, Meta::Suspended)?;
        // The turn that waited meanwhile starts its wait afresh.
        if let Some((cycle, _)) = cycles::open(&cx.tx)? {
            cycles::reset_waits(&cx.tx, cycle)?;
        }
        cx.event(
            EventLevel::Info,
            None,
            None,
            "resumed",
            "resumed by an operator",
        )?;
        cx.commit()?;
        Ok(())
    }

    /// Cancels the open cycle (`id`, if given, must be it): no further
    /// broker is leased. A lease the cycle holds is aborted: its agent
    /// stops at its next safe point, starts the broker again if it had
    /// stopped it, and the slot waits for the cluster to be back in sync,
    /// as after any failed lease.
    pub fn cancel_cycle(&mut self, id: Option<i64>, now: Now) -> ApiResult<CycleCancelled> {
        let cx = self.begin(now)?;
        let Some((cycle, state)) = cycles::open(&cx.tx)? else {
            return Err(ApiError::NotFound("no cycle is running".into()));
        };
        if id.is_some_and(|id| id != cycle) {
            return Err(ApiError::Conflict(format!(
                "cycle {} is not running (the running cycle is {cycle})",
                id.unwrap_or_default()
            )));
        }
        let message = "cancelled by an operator";
        cycles::finish(&cx.tx, cycle, state.on_cancel()?, message, now)?;
        cx.cycle_ended(cycle)?;
        cx.count("cycles_total", "cancelled")?;
        cx.event(
            EventLevel::Warning,
            None,
            None,
            "cycle_finished",
            &format!("cycle {cycle} finished: cancelled: {message}"),
        )?;
        let held = leases::slot(&cx.tx)?
            .filter(|l| l.state == LeaseState::Active && l.cycle_id == Some(cycle));
        let aborted = match held {
            Some(l) => {
                cx.abort_lease(&l, &format!("cycle {cycle} {message}"))?;
                Some(l)
            }
            None => None,
        };
        cx.commit()?;
        Ok(CycleCancelled {
            cycle_id: cycle,
            aborted_lease: aborted.as_ref().map(|l| l.epoch),
            broker: aborted.as_ref().map(|l| l.broker),
        })
    }

    /// Cancels restore order `id`: at once if it waits for the lease;
    /// by aborting its lease if its agent works on it (the agent stops at
    /// its next safe point with the broker running, and the order ends
    /// failed, saying so).
    pub fn cancel_restore(&mut self, id: i64, now: Now) -> ApiResult<RestoreView> {
        let cx = self.begin(now)?;
        let Some(state) = restores::state_of(&cx.tx, id)? else {
            return Err(ApiError::NotFound(format!(
                "restore order {id} does not exist"
            )));
        };
        let cancel = state.on_cancel().map_err(|_| {
            ApiError::Conflict(format!("restore order {id} already ended ({state})"))
        })?;
        let message = "cancelled by an operator";
        match cancel {
            Cancel::Now(to) => {
                restores::finish(&cx.tx, id, to, message, now)?;
                cx.event(
                    EventLevel::Warning,
                    None,
                    None,
                    "restore_cancelled",
                    &format!("restore order {id} {message}"),
                )?;
            }
            Cancel::AbortLease => {
                let lease = leases::of_order(&cx.tx, id)?
                    .filter(|l| l.state == LeaseState::Active)
                    .ok_or_else(|| {
                        ApiError::Internal(format!("restore order {id} runs under no active lease"))
                    })?;
                cx.abort_lease(&lease, &format!("restore order {id} {message}"))?;
            }
        }
        cx.commit()?;
        self.restore(id)
    }

    pub fn restore(&self, id: i64) -> ApiResult<RestoreView> {
        restores::view(&self.conn, id)?
            .ok_or_else(|| ApiError::NotFound(format!("restore order {id} does not exist")))
    }
}

impl Ctx<'_> {
    /// Why an operator suspended the coordinator, if they did.
    pub(super) fn paused(&self) -> ApiResult<Option<String>> {
        Ok(events::meta(&self.tx, Meta::Suspended)?)
    }

    /// Why no scheduled cycle starts: the config or an operator.
    pub(super) fn suspended(&self) -> ApiResult<Option<String>> {
        Ok(suspension(self.cfg.schedule.suspend, self.paused()?))
    }

    pub(super) fn abort_lease(&self, lease: &leases::LeaseRow, why: &str) -> ApiResult<()> {
        leases::request_abort(&self.tx, lease.epoch, why)?;
        self.event(
            EventLevel::Warning,
            Some(lease.broker),
            Some(lease.epoch),
            "lease_abort",
            &format!(
                "{why}: the agent of broker {} is told to abort lease {} at its next heartbeat",
                lease.broker, lease.epoch
            ),
        )?;
        Ok(())
    }
}

/// Why the schedule is suspended, if it is: by an operator (`paused`, what
/// they said), by the config, or both.
pub(super) fn suspension(in_config: bool, paused: Option<String>) -> Option<String> {
    const CONFIG: &str = "schedule.suspend = true in the config";
    match (paused, in_config) {
        (Some(p), true) => Some(format!("{p}; {CONFIG}")),
        (Some(p), false) => Some(p),
        (None, true) => Some(CONFIG.to_string()),
        (None, false) => None,
    }
}
