//! The coordinator's state machines, as types and pure transitions.
//!
//! Every row of the `leases`, `cycles`, `cycle_brokers` and `restores`
//! tables is in one of the states below; the names are what the database
//! stores (unchanged since the first schema, so older databases read
//! fine). Each transition is a pure function of the current state and an
//! event: the engine decides with these and the store writes the result,
//! so every legal move is on this page and tested without a database.
//!
//! ```text
//! lease        active ──release ok──▶ released
//!                │  └───release failed / expiry / lost by its agent──▶ settling
//!                                                  settling ──cluster in sync──▶ cleared
//! cycle        running ──no broker left open──▶ finishing ──final check──▶ done | partial | failed
//!                 └──────────── operator cancels (either) ─────────────▶ cancelled
//! cycle broker pending ──grant──▶ leased ──recovered──▶ archiving ──committed──▶ done
//!                 ▲                 │ committed (copy capture) ──▶ done │
//!                 └── failed attempt, attempts < max ◀──────────────────┘ (else failed)
//! restore      pending ──grant──▶ running ──▶ done | failed
//!                 └──operator cancels──▶ cancelled    (running: its lease is aborted)
//! cluster      running ──every node restored──▶ recovering ──in sync──▶ done
//! restore         └── a node fails / operator cancels (either) ──▶ failed | cancelled
//! cluster      waiting ──lease──▶ preparing ──▶ prepared ──▶ swapped ──▶ started ──release──▶ restored
//! restore node    └── order ended first ──▶ cancelled     (any open state) ──▶ failed
//! ```
//!
//! A whole-cluster restore is the one exception to the single slot: an
//! operator declared the cluster lost, and every node holds a lease at
//! once. Its steps are gated by [`cluster_go`].
//!
//! The rule all of it serves, at most one broker down because of this
//! tool: a lease in `active` or `settling` holds the cluster's one lease
//! slot ([`LeaseState::holds_slot`]), and only `cleared` (the coordinator's
//! own check that every partition is back in sync) frees a slot that a
//! lease left without a clean release.

use kafka_snapshot_model::protocol::{ClusterGo, ClusterStep, NodeRole};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A value stored in the database as one of a fixed set of names.
macro_rules! stored_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            #[cfg_attr(not(test), allow(dead_code))]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in the database and shown to operators.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState { machine: stringify!($name), value: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A state name in the database that this build does not know: a database
/// written by a newer coordinator, or edited by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {machine} state {value:?} in the database")]
pub struct UnknownState {
    pub machine: &'static str,
    pub value: String,
}

/// A transition the state machine does not have: a bug in the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{machine}: no transition from {from} on {event}")]
pub struct IllegalTransition {
    pub machine: &'static str,
    pub from: &'static str,
    pub event: &'static str,
}

fn illegal<T>(
    machine: &'static str,
    from: &'static str,
    event: &'static str,
) -> Result<T, IllegalTransition> {
    Err(IllegalTransition {
        machine,
        from,
        event,
    })
}

stored_enum!(
    /// What a lease was granted for.
    LeaseKind {
        Snapshot = "snapshot",
        Restore = "restore",
        /// One node's part of a whole-cluster restore: every node of the
        /// cluster holds one at once (an operator ordered it for a lost
        /// cluster).
        ClusterRestore = "cluster_restore",
    }
);

stored_enum!(
    /// One grant of the cluster's lease slot; its epoch is the fencing token.
    LeaseState {
        /// Held by an agent, renewed by its heartbeats.
        Active = "active",
        /// Ended by a clean release: the slot is free.
        Released = "released",
        /// Ended badly (expired, failed, lost by its agent): the slot stays
        /// closed until the cluster is back in sync.
        Settling = "settling",
        /// The cluster was seen back in sync after a settling lease.
        Cleared = "cleared",
    }
);

impl LeaseState {
    /// Whether a lease in this state keeps every other broker from a lease.
    pub fn holds_slot(self) -> bool {
        matches!(self, LeaseState::Active | LeaseState::Settling)
    }

    /// The agent released the lease. A release that says the work failed
    /// does not free the slot: the broker may be down or out of sync. A
    /// release of a lease that already ended changes nothing.
    pub fn on_release(self, clean: bool) -> LeaseState {
        match (self, clean) {
            (LeaseState::Active, true) => LeaseState::Released,
            (LeaseState::Active, false) => LeaseState::Settling,
            (other, _) => other,
        }
    }

    /// Not renewed within its TTL, or given up by the agent that worked
    /// under it: nobody knows what state the broker is in.
    pub fn on_lost(self) -> Result<LeaseState, IllegalTransition> {
        match self {
            LeaseState::Active => Ok(LeaseState::Settling),
            s => illegal("lease", s.as_str(), "lost"),
        }
    }

    /// The coordinator's own check saw every partition in sync.
    pub fn on_in_sync(self) -> Result<LeaseState, IllegalTransition> {
        match self {
            LeaseState::Settling => Ok(LeaseState::Cleared),
            s => illegal("lease", s.as_str(), "cluster in sync"),
        }
    }
}

stored_enum!(
    /// A rolling cycle over the configured brokers.
    CycleState {
        Running = "running",
        /// Every broker is done or failed; waiting for the final in-sync check.
        Finishing = "finishing",
        Done = "done",
        /// Ended in sync, but some broker got no snapshot.
        Partial = "partial",
        /// The cluster was not back in sync in time at the end.
        Failed = "failed",
        /// An operator cancelled it: no further broker is leased. A lease it
        /// held is aborted and ends the careful way (its broker is started
        /// again, the slot waits for the cluster).
        Cancelled = "cancelled",
    }
);

impl CycleState {
    /// Running or finishing: no second cycle starts meanwhile.
    pub fn is_open(self) -> bool {
        matches!(self, CycleState::Running | CycleState::Finishing)
    }

    /// An operator cancels the cycle.
    pub fn on_cancel(self) -> Result<CycleState, IllegalTransition> {
        match self {
            CycleState::Running | CycleState::Finishing => Ok(CycleState::Cancelled),
            s => illegal("cycle", s.as_str(), "cancel"),
        }
    }

    /// A running cycle with no broker left open moves to its final check.
    pub fn after_turns(self, open_brokers: usize) -> CycleState {
        match self {
            CycleState::Running if open_brokers == 0 => CycleState::Finishing,
            s => s,
        }
    }

    /// The final check of a finishing cycle: how it ends, if it ends now.
    /// `waited` is how long since the last broker of the cycle moved.
    pub fn finish(
        self,
        failed: &[i32],
        check: &Result<(), String>,
        waited: Duration,
        timeout: Duration,
    ) -> Result<Option<(CycleState, String)>, IllegalTransition> {
        if self != CycleState::Finishing {
            return illegal("cycle", self.as_str(), "final check");
        }
        Ok(match check {
            Ok(()) if failed.is_empty() => Some((
                CycleState::Done,
                "every broker snapshotted; the cluster is in sync".to_string(),
            )),
            Ok(()) => Some((
                CycleState::Partial,
                format!("no snapshot of broker(s) {failed:?} this cycle; the cluster is in sync"),
            )),
            Err(e) if waited > timeout => Some((
                CycleState::Failed,
                format!("the cluster was not back in sync at the end of the cycle: {e}"),
            )),
            Err(_) => None,
        })
    }
}

stored_enum!(
    /// One broker's turn in a cycle.
    CycleBrokerState {
        /// Waiting for its turn (or for another attempt, at the end of the line).
        Pending = "pending",
        /// Holds the lease.
        Leased = "leased",
        /// Back in every ISR; its archive is built from staging without the lease.
        Archiving = "archiving",
        Done = "done",
        /// No snapshot this cycle after `max_attempts`.
        Failed = "failed",
    }
);

impl CycleBrokerState {
    /// Not finished for this cycle yet.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            CycleBrokerState::Pending | CycleBrokerState::Leased | CycleBrokerState::Archiving
        )
    }

    /// Its snapshot is in progress: retention leaves the broker alone.
    pub fn is_busy(self) -> bool {
        matches!(self, CycleBrokerState::Leased | CycleBrokerState::Archiving)
    }

    pub fn on_grant(self) -> Result<CycleBrokerState, IllegalTransition> {
        match self {
            CycleBrokerState::Pending => Ok(CycleBrokerState::Leased),
            s => illegal("cycle broker", s.as_str(), "grant"),
        }
    }

    /// Back in every ISR with a reflink capture: the archive follows. The
    /// release may come after the lease was given up (the agent was cut
    /// off): the broker's turn follows its latest lease whatever happened
    /// meanwhile, except that a finished snapshot stays finished.
    pub fn on_recovered(self) -> CycleBrokerState {
        match self {
            CycleBrokerState::Done => CycleBrokerState::Done,
            _ => CycleBrokerState::Archiving,
        }
    }

    /// Its snapshot is committed (in the catalog): done, whatever happened
    /// meanwhile (an archive reported after its timeout still counts).
    pub fn on_committed(self) -> CycleBrokerState {
        CycleBrokerState::Done
    }
}

/// An attempt of a broker in a cycle ended without a snapshot: back to the
/// end of the line, or failed for this cycle once it had `max_attempts`.
/// `attempts` counts this one.
pub fn failed_attempt(attempts: i64, max_attempts: u32) -> CycleBrokerState {
    if attempts >= i64::from(max_attempts) {
        CycleBrokerState::Failed
    } else {
        CycleBrokerState::Pending
    }
}

/// One broker's place in a cycle, as `next_turn` needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub broker: i32,
    pub position: i64,
    pub state: CycleBrokerState,
}

/// Whose turn it is in a running cycle: the pending broker first in line
/// (a broker sent back after a failed attempt was given the last place).
pub fn next_turn(turns: &[Turn]) -> Option<i32> {
    turns
        .iter()
        .filter(|t| t.state == CycleBrokerState::Pending)
        .min_by_key(|t| t.position)
        .map(|t| t.broker)
}

/// How many brokers of a cycle are not finished yet.
pub fn open_turns(turns: &[Turn]) -> usize {
    turns.iter().filter(|t| t.state.is_open()).count()
}

stored_enum!(
    /// An operator's order to restore a broker.
    RestoreState {
        /// Waiting for the lease (it goes before the next cycle broker).
        Pending = "pending",
        Running = "running",
        Done = "done",
        Failed = "failed",
        /// Cancelled by an operator before its lease was granted.
        Cancelled = "cancelled",
    }
);

/// What cancelling a restore order does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Nothing was started: the order ends now.
    Now(RestoreState),
    /// Its agent holds the lease: the lease is aborted, and the agent ends
    /// the order at its next safe point (the broker running again).
    AbortLease,
}

impl RestoreState {
    /// Pending or running: a broker has at most one open order.
    pub fn is_open(self) -> bool {
        matches!(self, RestoreState::Pending | RestoreState::Running)
    }

    pub fn on_grant(self) -> Result<RestoreState, IllegalTransition> {
        match self {
            RestoreState::Pending => Ok(RestoreState::Running),
            s => illegal("restore", s.as_str(), "grant"),
        }
    }

    /// An operator cancels the order.
    pub fn on_cancel(self) -> Result<Cancel, IllegalTransition> {
        match self {
            RestoreState::Pending => Ok(Cancel::Now(RestoreState::Cancelled)),
            RestoreState::Running => Ok(Cancel::AbortLease),
            s => illegal("restore", s.as_str(), "cancel"),
        }
    }

    /// The order ended; an order that already ended keeps its result.
    pub fn finish(self, ok: bool) -> RestoreState {
        match (self.is_open(), ok) {
            (true, true) => RestoreState::Done,
            (true, false) => RestoreState::Failed,
            (false, _) => self,
        }
    }
}

stored_enum!(
    /// An operator's order to restore the whole cluster from a snapshot set.
    ClusterRestoreState {
        /// Its nodes are being restored.
        Running = "running",
        /// Every node restored and started; waiting until every partition
        /// has a leader and the cluster is in sync.
        Recovering = "recovering",
        Done = "done",
        /// A node failed (the others were aborted), or the cluster was not
        /// in sync in time.
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl ClusterRestoreState {
    /// Running or recovering: no lease of any other kind, no cycle.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ClusterRestoreState::Running | ClusterRestoreState::Recovering
        )
    }

    /// Every node is restored: the cluster must come back in sync.
    pub fn on_all_restored(self) -> Result<ClusterRestoreState, IllegalTransition> {
        match self {
            ClusterRestoreState::Running => Ok(ClusterRestoreState::Recovering),
            s => illegal("cluster restore", s.as_str(), "every node restored"),
        }
    }

    /// A node failed, or an operator cancelled: an open order ends
    /// (`to`); one that ended keeps its result.
    pub fn end(self, to: ClusterRestoreState) -> ClusterRestoreState {
        if self.is_open() {
            to
        } else {
            self
        }
    }
}

stored_enum!(
    /// One node of a whole-cluster restore.
    ClusterNodeState {
        /// No lease yet: its agent has not polled since the order.
        Waiting = "waiting",
        Preparing = "preparing",
        Prepared = "prepared",
        Swapped = "swapped",
        Started = "started",
        /// Its agent released the lease: the node runs on the restored data.
        Restored = "restored",
        Failed = "failed",
        /// Never touched: the order ended before its lease.
        Cancelled = "cancelled",
    }
);

impl ClusterNodeState {
    /// The step of a node that reported `step`.
    pub fn of_step(step: ClusterStep) -> ClusterNodeState {
        match step {
            ClusterStep::Preparing => ClusterNodeState::Preparing,
            ClusterStep::Prepared => ClusterNodeState::Prepared,
            ClusterStep::Swapped => ClusterNodeState::Swapped,
            ClusterStep::Started => ClusterNodeState::Started,
        }
    }

    /// How far the node got, as the steps go.
    pub fn reached(self) -> Option<ClusterStep> {
        match self {
            ClusterNodeState::Waiting | ClusterNodeState::Failed | ClusterNodeState::Cancelled => {
                None
            }
            ClusterNodeState::Preparing => Some(ClusterStep::Preparing),
            ClusterNodeState::Prepared => Some(ClusterStep::Prepared),
            ClusterNodeState::Swapped => Some(ClusterStep::Swapped),
            ClusterNodeState::Started | ClusterNodeState::Restored => Some(ClusterStep::Started),
        }
    }

    /// Still to report or release.
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            ClusterNodeState::Restored | ClusterNodeState::Failed | ClusterNodeState::Cancelled
        )
    }

    /// A heartbeat reported `step`: steps only go forward (a late or
    /// repeated heartbeat changes nothing), and an ended node stays ended.
    pub fn on_step(self, step: ClusterStep) -> ClusterNodeState {
        if !self.is_open() || self.reached() >= Some(step) {
            self
        } else {
            ClusterNodeState::of_step(step)
        }
    }
}

/// How far a node of `role` may go in a whole-cluster restore whose nodes
/// stand as `nodes` (role, state): nobody stops before every node has its
/// snapshot extracted and verified (a node that cannot, such as a host
/// with the wrong number of log dirs, fails the order with everything
/// untouched); nobody starts before every node is stopped and swapped (no
/// node serves its old data beside restored ones); brokers start only once
/// every controller (and combined node) started and saw the quorum elect a
/// leader.
pub fn cluster_go(nodes: &[(NodeRole, ClusterNodeState)], role: NodeRole) -> ClusterGo {
    let all = |step: ClusterStep| nodes.iter().all(|(_, s)| s.reached() >= Some(step));
    if !all(ClusterStep::Prepared) {
        return ClusterGo::Prepare;
    }
    if !all(ClusterStep::Swapped) {
        return ClusterGo::Swap;
    }
    let quorum_up = nodes
        .iter()
        .filter(|(r, _)| r.is_controller())
        .all(|(_, s)| s.reached() >= Some(ClusterStep::Started));
    if role.is_controller() || quorum_up {
        ClusterGo::Start
    } else {
        ClusterGo::Swap
    }
}

stored_enum!(
    /// How loud an event is. ERROR means an operator must act.
    EventLevel {
        Info = "info",
        Warning = "warning",
        Error = "error",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_reads_back_as_itself() {
        fn round_trip<
            T: FromStr<Err = UnknownState> + Copy + PartialEq + fmt::Debug + fmt::Display,
        >(
            all: &[T],
        ) {
            for s in all {
                assert_eq!(s.to_string().parse::<T>().unwrap(), *s);
            }
        }
        round_trip(LeaseKind::ALL);
        round_trip(LeaseState::ALL);
        round_trip(CycleState::ALL);
        round_trip(CycleBrokerState::ALL);
        round_trip(RestoreState::ALL);
        round_trip(ClusterRestoreState::ALL);
        round_trip(ClusterNodeState::ALL);
        round_trip(EventLevel::ALL);
        let e = "paused".parse::<LeaseState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown LeaseState state \"paused\" in the database"
        );
    }

    #[test]
    fn only_active_and_settling_leases_hold_the_slot() {
        let holding: Vec<_> = LeaseState::ALL.iter().filter(|s| s.holds_slot()).collect();
        assert_eq!(holding, [&LeaseState::Active, &LeaseState::Settling]);
    }

    #[test]
    fn a_lease_frees_the_slot_only_after_a_clean_release_or_the_cluster_in_sync() {
        use LeaseState::*;
        assert_eq!(Active.on_release(true), Released);
        assert_eq!(Active.on_release(false), Settling);
        // A late release of a lease that already ended changes nothing.
        for s in [Released, Settling, Cleared] {
            assert_eq!(s.on_release(true), s);
            assert_eq!(s.on_release(false), s);
        }
        assert_eq!(Active.on_lost(), Ok(Settling));
        for s in [Released, Settling, Cleared] {
            assert!(s.on_lost().is_err(), "{s}");
        }
        assert_eq!(Settling.on_in_sync(), Ok(Cleared));
        for s in [Active, Released, Cleared] {
            assert!(s.on_in_sync().is_err(), "{s}");
        }
        // Walk every path: whatever happens, a lease that was active only
        // leaves the slot through released or cleared.
        for clean in [true, false] {
            let mut s = Active.on_release(clean);
            if s == Settling {
                s = s.on_in_sync().unwrap();
            }
            assert!(!s.holds_slot());
        }
    }

    #[test]
    fn a_broker_goes_to_the_end_of_the_line_until_its_last_attempt() {
        assert_eq!(failed_attempt(1, 3), CycleBrokerState::Pending);
        assert_eq!(failed_attempt(2, 3), CycleBrokerState::Pending);
        assert_eq!(failed_attempt(3, 3), CycleBrokerState::Failed);
        assert_eq!(failed_attempt(4, 3), CycleBrokerState::Failed);
        assert_eq!(failed_attempt(1, 1), CycleBrokerState::Failed);
    }

    #[test]
    fn cycle_broker_moves_follow_the_lease() {
        use CycleBrokerState::*;
        assert_eq!(Pending.on_grant(), Ok(Leased));
        assert_eq!(Leased.on_recovered(), Archiving);
        assert_eq!(Archiving.on_committed(), Done);
        assert_eq!(
            Leased.on_committed(),
            Done,
            "copy capture commits under the lease"
        );
        // Late news of the latest lease still counts; done stays done.
        assert_eq!(Pending.on_recovered(), Archiving);
        assert_eq!(Failed.on_committed(), Done);
        assert_eq!(Done.on_recovered(), Done);
        assert!(Done.on_grant().is_err());
        assert!(Leased.on_grant().is_err());
        let open: Vec<_> = CycleBrokerState::ALL
            .iter()
            .filter(|s| s.is_open())
            .collect();
        assert_eq!(open, [&Pending, &Leased, &Archiving]);
        let busy: Vec<_> = CycleBrokerState::ALL
            .iter()
            .filter(|s| s.is_busy())
            .collect();
        assert_eq!(busy, [&Leased, &Archiving]);
    }

    #[test]
    fn the_next_turn_is_the_first_pending_broker_in_line() {
        use CycleBrokerState::*;
        let t = |broker, position, state| Turn {
            broker,
            position,
            state,
        };
        assert_eq!(next_turn(&[]), None);
        let line = [t(1, 0, Pending), t(2, 1, Pending), t(3, 2, Pending)];
        assert_eq!(next_turn(&line), Some(1));
        // Broker 1 failed an attempt: it went to the end (position 3).
        let line = [t(1, 3, Pending), t(2, 1, Done), t(3, 2, Pending)];
        assert_eq!(next_turn(&line), Some(3));
        assert_eq!(open_turns(&line), 2);
        // The broker holding the lease is nobody's next turn.
        let line = [t(1, 0, Leased), t(2, 1, Archiving), t(3, 2, Failed)];
        assert_eq!(next_turn(&line), None);
        assert_eq!(open_turns(&line), 2);
    }

    #[test]
    fn a_cycle_finishes_once_no_broker_is_open_and_ends_on_the_final_check() {
        use CycleState::*;
        assert_eq!(Running.after_turns(1), Running);
        assert_eq!(Running.after_turns(0), Finishing);
        assert_eq!(Done.after_turns(0), Done);
        let min = Duration::from_secs(60);
        let (s, _) = Finishing
            .finish(&[], &Ok(()), Duration::ZERO, min)
            .unwrap()
            .unwrap();
        assert_eq!(s, Done);
        let (s, m) = Finishing
            .finish(&[1], &Ok(()), Duration::ZERO, min)
            .unwrap()
            .unwrap();
        assert_eq!(s, Partial);
        assert!(m.contains("[1]"), "{m}");
        let lagging = Err("orders-0 (missing [1])".to_string());
        assert_eq!(Finishing.finish(&[], &lagging, min, min).unwrap(), None);
        let (s, m) = Finishing
            .finish(&[], &lagging, min * 2, min)
            .unwrap()
            .unwrap();
        assert_eq!(s, Failed);
        assert!(m.contains("orders-0"), "{m}");
        assert!(Running.finish(&[], &Ok(()), Duration::ZERO, min).is_err());
        assert!(Running.is_open() && Finishing.is_open());
        assert!(!Done.is_open() && !Partial.is_open() && !Failed.is_open());
        assert!(!Cancelled.is_open());
        assert_eq!(Running.on_cancel(), Ok(Cancelled));
        assert_eq!(Finishing.on_cancel(), Ok(Cancelled));
        for s in [Done, Partial, Failed, Cancelled] {
            assert!(s.on_cancel().is_err(), "{s}");
        }
        assert!(Cancelled.finish(&[], &Ok(()), Duration::ZERO, min).is_err());
    }

    #[test]
    fn a_restore_order_ends_once() {
        use RestoreState::*;
        assert_eq!(Pending.on_grant(), Ok(Running));
        assert!(Running.on_grant().is_err());
        assert_eq!(Running.finish(true), Done);
        assert_eq!(Running.finish(false), Failed);
        assert_eq!(Pending.finish(false), Failed);
        assert_eq!(Done.finish(false), Done);
        assert_eq!(Failed.finish(true), Failed);
        assert_eq!(Cancelled.finish(true), Cancelled);
        assert_eq!(Pending.on_cancel(), Ok(Cancel::Now(Cancelled)));
        assert_eq!(Running.on_cancel(), Ok(Cancel::AbortLease));
        for s in [Done, Failed, Cancelled] {
            assert!(s.on_cancel().is_err(), "{s}");
        }
    }

    #[test]
    fn a_cluster_restore_node_only_moves_forward() {
        use ClusterNodeState::*;
        assert_eq!(Waiting.on_step(ClusterStep::Preparing), Preparing);
        assert_eq!(Preparing.on_step(ClusterStep::Swapped), Swapped);
        assert_eq!(Swapped.on_step(ClusterStep::Prepared), Swapped);
        assert_eq!(Started.on_step(ClusterStep::Started), Started);
        for ended in [Restored, Failed, Cancelled] {
            assert_eq!(ended.on_step(ClusterStep::Started), ended);
            assert!(!ended.is_open());
        }
        assert_eq!(Restored.reached(), Some(ClusterStep::Started));
        assert_eq!(Failed.reached(), None);
    }

    #[test]
    fn nobody_stops_before_all_are_prepared_and_brokers_start_after_the_quorum() {
        use ClusterNodeState::*;
        use NodeRole::{Broker, Controller};
        let go = |nodes: &[(NodeRole, ClusterNodeState)], role| cluster_go(nodes, role);
        // One node still downloading (or without a lease): nobody stops.
        let n = [
            (Broker, Prepared),
            (Broker, Preparing),
            (Controller, Prepared),
        ];
        assert_eq!(go(&n, Broker), ClusterGo::Prepare);
        assert_eq!(go(&n, Controller), ClusterGo::Prepare);
        let n = [
            (Broker, Prepared),
            (Broker, Waiting),
            (Controller, Prepared),
        ];
        assert_eq!(go(&n, Controller), ClusterGo::Prepare);
        // All prepared: everybody may stop and swap, nobody start.
        let n = [
            (Broker, Swapped),
            (Broker, Prepared),
            (Controller, Prepared),
        ];
        assert_eq!(go(&n, Broker), ClusterGo::Swap);
        assert_eq!(go(&n, Controller), ClusterGo::Swap);
        // All swapped: controllers start; brokers wait for every one.
        let n = [
            (Broker, Swapped),
            (Controller, Started),
            (Controller, Swapped),
        ];
        assert_eq!(go(&n, Controller), ClusterGo::Start);
        assert_eq!(go(&n, Broker), ClusterGo::Swap);
        let n = [
            (Broker, Swapped),
            (Controller, Started),
            (Controller, Restored),
        ];
        assert_eq!(go(&n, Broker), ClusterGo::Start);
        // Without controllers (ZooKeeper, or combined nodes only) every
        // node starts once all are swapped.
        let n = [(Broker, Swapped), (Broker, Swapped)];
        assert_eq!(go(&n, Broker), ClusterGo::Start);
        let n = [(NodeRole::Combined, Swapped), (NodeRole::Combined, Started)];
        assert_eq!(go(&n, NodeRole::Combined), ClusterGo::Start);
    }

    #[test]
    fn a_cluster_restore_order_ends_once() {
        use ClusterRestoreState::*;
        assert_eq!(Running.on_all_restored(), Ok(Recovering));
        assert!(Recovering.on_all_restored().is_err());
        assert_eq!(Running.end(Failed), Failed);
        assert_eq!(Recovering.end(Cancelled), Cancelled);
        assert_eq!(Done.end(Failed), Done);
        assert_eq!(Failed.end(Cancelled), Failed);
    }
}
