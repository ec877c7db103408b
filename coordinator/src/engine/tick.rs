//! Time passing: leases that were not renewed, cycles that are due, turns
//! that wait too long, archives that never report, and the end of a cycle
//! once the cluster is seen back in sync.

use super::{cdur, ApiResult, Ctx, Engine, TickNeeds};
use crate::schedule::Schedule;
use crate::state::{self, ClusterRestoreState, CycleState, EventLevel, LeaseState};
use crate::store::{
    brokers, cluster_restores, cycles, events, leases, parse_ts, sets, snapshots, ts, Now,
};
use events::Meta;

impl Engine {
    /// Expires leases, starts due cycles, moves stuck cycles on. Returns
    /// what needs a look at the cluster.
    pub fn tick(&mut self, now: Now) -> ApiResult<TickNeeds> {
        let cx = self.begin(now)?;
        let mut needs = TickNeeds::default();

        // Leases not renewed in time.
        for (epoch, broker, phase) in leases::expired(&cx.tx, now)? {
            cx.count("lease_expired_total", &broker.to_string())?;
            cx.settle(
                epoch,
                &format!(
                    "lease {epoch} of broker {broker} expired without a release (last phase: {})",
                    phase.as_deref().unwrap_or("granted, never confirmed")
                ),
            )?;
        }
        cx.cluster_restore_timeouts()?;
        needs.settle_check = leases::slot(&cx.tx)?.is_some_and(|l| l.state == LeaseState::Settling);

        cx.schedule_tick()?;

        if let Some((cycle, cycle_state)) = cycles::open(&cx.tx)? {
            cx.archive_timeouts(cycle)?;
            if leases::slot(&cx.tx)?.is_none() {
                cx.turn_wait(cycle_state)?;
            }
            let open = state::open_turns(&cycles::turns(&cx.tx, cycle)?);
            let next = cycle_state.after_turns(open);
            if next != cycle_state {
                cycles::set_state(&cx.tx, cycle, next)?;
            }
            needs.final_check = next == CycleState::Finishing && open == 0;
        }
        let cluster = cx.cluster()?;
        needs.verify = cx.cfg.retention.verify_new
            && snapshots::next_unverified(&cx.tx, cluster.as_deref())?.is_some();
        needs.prune = events::meta(&cx.tx, Meta::PruneDue)?.is_some();
        needs.before_cycle = cx.before_cycle_pending()?;
        needs.after_cycle = match (
            &cx.cfg.hooks.after_cycle,
            events::meta(&cx.tx, Meta::AfterCycleDue)?,
        ) {
            (Some(_), Some(id)) => id.parse().ok(),
            _ => None,
        };
        needs.store_sets = sets::next_unstored(&cx.tx, cluster.as_deref())?.is_some();
        needs.cluster_restore_check = matches!(
            cluster_restores::open(&cx.tx)?,
            Some((_, ClusterRestoreState::Recovering))
        );
        cx.commit()?;
        Ok(needs)
    }

    /// The `before_cycle` hook of cycle `cycle` ran: the cycle may go on,
    /// or (it failed) ends `failed` before any node was touched.
    pub fn before_cycle_ran(
        &mut self,
        cycle: i64,
        result: Result<(), String>,
        now: Now,
    ) -> ApiResult<()> {
        let cx = self.begin(now)?;
        if cx.before_cycle_pending()? != Some(cycle) {
            return Ok(());
        }
        match result {
            Ok(()) => {
                events::set_meta(&cx.tx, Meta::BeforeCycleRan, &cycle.to_string())?;
                cx.event(
                    EventLevel::Info,
                    None,
                    None,
                    "hook",
                    &format!("cycle {cycle}: the before_cycle hook succeeded"),
                )?;
            }
            Err(e) => {
                let msg = format!("the before_cycle hook failed, no node was touched: {e}");
                cycles::finish(&cx.tx, cycle, CycleState::Failed, &msg, now)?;
                cx.count("cycles_total", "failed")?;
                cx.cycle_ended(cycle)?;
                cx.event(
                    EventLevel::Error,
                    None,
                    None,
                    "hook",
                    &format!("cycle {cycle}: {msg}"),
                )?;
            }
        }
        cx.commit()?;
        Ok(())
    }

    /// The state of cycle `cycle` (`done`, `failed`, ...), if it exists.
    pub fn cycle_state(&self, cycle: i64) -> ApiResult<Option<String>> {
        Ok(cycles::state_name(&self.conn, cycle)?)
    }

    /// The `after_cycle` hook of cycle `cycle` ran.
    pub fn after_cycle_ran(
        &mut self,
        cycle: i64,
        result: Result<(), String>,
        now: Now,
    ) -> ApiResult<()> {
        let cx = self.begin(now)?;
        if events::meta(&cx.tx, Meta::AfterCycleDue)? != Some(cycle.to_string()) {
            return Ok(());
        }
        events::clear_meta(&cx.tx, Meta::AfterCycleDue)?;
        match result {
            Ok(()) => cx.event(
                EventLevel::Info,
                None,
                None,
                "hook",
                &format!("cycle {cycle}: the after_cycle hook succeeded"),
            )?,
            Err(e) => {
                let msg = format!("the after_cycle hook failed: {e}");
                cycles::append_message(&cx.tx, cycle, &msg)?;
                cx.event(
                    EventLevel::Error,
                    None,
                    None,
                    "hook",
                    &format!("cycle {cycle}: {msg}"),
                )?;
            }
        }
        cx.commit()?;
        Ok(())
    }

    /// Applies the coordinator's in-sync check to whatever waits for it.
    pub fn apply_cluster_check(&mut self, check: Result<(), String>, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        if let Some(lease) = leases::slot(&cx.tx)?.filter(|l| l.state == LeaseState::Settling) {
            let (epoch, broker) = (lease.epoch, lease.broker);
            match &check {
                Ok(()) => {
                    leases::set_state(&cx.tx, epoch, lease.state.on_in_sync()?)?;
                    cx.event(
                        EventLevel::Info,
                        Some(broker),
                        Some(epoch),
                        "slot_free",
                        &format!(
                            "the cluster is back in sync after lease {epoch} of broker \
                             {broker}; the lease slot is free"
                        ),
                    )?;
                }
                Err(e) => {
                    leases::set_progress(&cx.tx, epoch, &format!("waiting for the cluster: {e}"))?
                }
            }
        }
        cx.cluster_restore_check(&check)?;
        if let Some((cycle, CycleState::Finishing)) = cycles::open(&cx.tx)? {
            let failed = cycles::failed_brokers(&cx.tx, cycle)?;
            let last = cycles::last_update(&cx.tx, cycle)?
                .map(|t| parse_ts(&t))
                .unwrap_or(now);
            let waited = (now - last).to_std().unwrap_or_default();
            let end = CycleState::Finishing.finish(
                &failed,
                &check,
                waited,
                cx.cfg.schedule.gate_timeout,
            )?;
            match (end, &check) {
                (Some((to, msg)), _) => {
                    cycles::finish(&cx.tx, cycle, to, &msg, now)?;
                    cx.cycle_ended(cycle)?;
                    events::set_meta(&cx.tx, Meta::PruneDue, "1")?;
                    cx.count("cycles_total", to.as_str())?;
                    let level = if to == CycleState::Done {
                        EventLevel::Info
                    } else {
                        EventLevel::Warning
                    };
                    cx.event(
                        level,
                        None,
                        None,
                        "cycle_finished",
                        &format!("cycle {cycle} finished: {to}: {msg}"),
                    )?;
                }
                (None, Err(e)) => cycles::set_message(
                    &cx.tx,
                    cycle,
                    &format!("final check: waiting for the cluster: {e}"),
                )?,
                (None, Ok(())) => {}
            }
        }
        cx.commit()?;
        Ok(())
    }
}

impl Ctx<'_> {
    /// The running cycle whose `before_cycle` hook has not succeeded yet
    /// (none without the hook).
    pub(super) fn before_cycle_pending(&self) -> ApiResult<Option<i64>> {
        if self.cfg.hooks.before_cycle.is_none() {
            return Ok(None);
        }
        let Some((cycle, CycleState::Running)) = cycles::open(&self.tx)? else {
            return Ok(None);
        };
        let ran = events::meta(&self.tx, Meta::BeforeCycleRan)?;
        Ok((ran != Some(cycle.to_string())).then_some(cycle))
    }

    /// A cycle ended (any way): its snapshot set is closed and its
    /// `after_cycle` hook is due.
    pub(super) fn cycle_ended(&self, cycle: i64) -> ApiResult<()> {
        self.close_set(cycle)?;
        if self.cfg.hooks.after_cycle.is_some() {
            events::set_meta(&self.tx, Meta::AfterCycleDue, &cycle.to_string())?;
        }
        Ok(())
    }

    /// Starts the scheduled cycle when it is due (unless suspended, too
    /// late, or one is still running) and works out when the next is due.
    fn schedule_tick(&self) -> ApiResult<()> {
        let now = self.now;
        let sched = self.cfg.schedule();
        let Some(next) = events::meta(&self.tx, Meta::NextDue)?.map(|s| parse_ts(&s)) else {
            // First start: the first cycle is due now.
            events::set_meta(&self.tx, Meta::NextDue, &ts(now))?;
            return Ok(());
        };
        if now < next {
            return Ok(());
        }
        let deadline = cdur(self.cfg.schedule.starting_deadline);
        let mut following = sched.next_after(next);
        while following <= now {
            following = sched.next_after(following);
        }
        if let Schedule::Every(_) = sched {
            following = sched.next_after(now);
        }
        events::set_meta(&self.tx, Meta::NextDue, &ts(following))?;
        if let Some(why) = self.suspended()? {
            self.event(
                EventLevel::Info,
                None,
                None,
                "schedule",
                &format!("cycle due but the schedule is suspended ({why})"),
            )?;
            return Ok(());
        }
        if now - next > deadline {
            self.event(
                EventLevel::Warning,
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
        if let Some((id, _)) = cycles::open(&self.tx)? {
            self.event(
                EventLevel::Warning,
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
        if let Some(order) = self.cluster_restore_open()? {
            self.event(
                EventLevel::Warning,
                None,
                None,
                "schedule",
                &format!(
                    "a cycle was due but cluster restore order {order} is open; next is {}",
                    ts(following)
                ),
            )?;
            return Ok(());
        }
        self.start_cycle("schedule", &self.cfg.nodes())?;
        Ok(())
    }

    pub(super) fn start_cycle(&self, trigger: &str, brokers: &[i32]) -> ApiResult<i64> {
        let id = cycles::insert(&self.tx, trigger, brokers, self.now)?;
        self.open_set(id, brokers)?;
        self.event(
            EventLevel::Info,
            None,
            None,
            "cycle_started",
            &format!("cycle {id} started ({trigger}) for brokers {brokers:?}"),
        )?;
        Ok(id)
    }

    /// Archives that never reported within `schedule.archive_timeout`.
    fn archive_timeouts(&self, cycle: i64) -> ApiResult<()> {
        let before = self.now - cdur(self.cfg.schedule.archive_timeout);
        for (broker, epoch) in cycles::archiving_since_before(&self.tx, cycle, before)? {
            let msg = format!(
                "broker {broker} did not report its archive within {}",
                crate::schedule::humantime(self.cfg.schedule.archive_timeout)
            );
            self.failed_attempt(cycle, broker, epoch, &msg, "archive")?;
            self.event(
                EventLevel::Warning,
                Some(broker),
                Some(epoch),
                "archive_timeout",
                &msg,
            )?;
        }
        Ok(())
    }

    /// The broker whose turn it is, waiting too long for a lease (its agent
    /// never polls, or no lease could be granted): skipped for now, and the
    /// wait counts as an attempt so a dead agent cannot hold a cycle.
    fn turn_wait(&self, cycle_state: CycleState) -> ApiResult<()> {
        // Suspended by an operator: nobody's turn comes, so nobody waits.
        if cycle_state != CycleState::Running || self.paused()?.is_some() {
            return Ok(());
        }
        let Some((cycle, broker)) = self.cycle_head()? else {
            return Ok(());
        };
        let Some(turn) = cycles::turn(&self.tx, cycle, broker)? else {
            return Ok(());
        };
        let Some(since) = turn.waiting_since.as_deref().map(parse_ts) else {
            cycles::set_waiting_since(&self.tx, cycle, broker, self.now)?;
            return Ok(());
        };
        if self.now - since <= cdur(self.cfg.schedule.gate_timeout) {
            return Ok(());
        }
        let seen = brokers::last_seen(&self.tx, broker)?.map(|s| parse_ts(&s));
        let poll = cdur(self.cfg.lease.poll_interval * 3);
        let why = match (turn.reason, seen) {
            (Some(r), _) => r,
            (None, Some(s)) if self.now - s < poll => "no lease could be granted".to_string(),
            (None, Some(s)) => format!("its agent has not polled since {}", ts(s)),
            (None, None) => "its agent never polled".to_string(),
        };
        let msg = format!(
            "broker {broker} waited {} for its turn: {why}",
            crate::schedule::humantime(self.cfg.schedule.gate_timeout)
        );
        cycles::count_wait(&self.tx, cycle, broker)?;
        self.failed_attempt(cycle, broker, -1, &msg, "wait")?;
        self.event(EventLevel::Warning, Some(broker), None, "skipped", &msg)?;
        Ok(())
    }
}
