//! The HTTP/JSON protocol between agents and the coordinator.
//!
//! Agents only ever connect out: they poll the coordinator, which answers
//! with what to do. Every agent request carries `Authorization: Bearer
//! <token>`; the coordinator knows each agent's token by its SHA-256 and the
//! broker id it belongs to, so a token for broker 1 cannot act for broker 2.
//!
//! ```text
//! POST /v1/agent/poll       PollRequest   -> PollResponse
//! POST /v1/agent/heartbeat  Heartbeat     -> HeartbeatResponse   (409: stale epoch)
//! POST /v1/agent/release    Release       -> Ack                 (409: stale epoch)
//! POST /v1/agent/report     SnapshotReport-> Ack                 (409: stale epoch)
//! POST /v1/agent/notice     Notice        -> Ack
//! ```
//!
//! A **lease** is the one cluster-wide slot that allows a broker to be
//! stopped. It carries a fencing `epoch` that grows with every grant: a
//! request with an older epoch is refused with 409 and [`ErrorBody`]. The
//! agent renews it with heartbeats at `ttl / 3`; a lease whose TTL runs out
//! does not free the slot until the coordinator itself sees the cluster back
//! in sync.
//!
//! Errors are JSON [`ErrorBody`] with a 4xx/5xx status: 400 malformed
//! request, 401 missing or wrong token, 403 token of another broker, 404
//! unknown broker/order/snapshot, 409 stale lease epoch or a state conflict,
//! 413 body too large.

use serde::{Deserialize, Serialize};

/// Version of this protocol; the coordinator refuses agents that speak
/// another (major) one. Version 2 added the whole-cluster restore
/// ([`Action::ClusterRestore`], [`ClusterStep`], [`ClusterGo`]), which an
/// agent of version 1 could not parse.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest request body the coordinator accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What the agent is doing right now; persisted in its state file and sent
/// with every poll and heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    /// Holding the lease, waiting for the pre-stop gate.
    Gating,
    Stopping,
    /// The broker is down and its log dirs are being cloned or copied.
    Capturing,
    Starting,
    /// The broker runs again; waiting until it is back in every ISR.
    Recovering,
    /// Lease released; building/uploading the archive from staging.
    Archiving,
    /// Restore: downloading and verifying the archive into `.restoring-*`.
    Downloading,
    /// Restore: moving the old log dirs aside and the restored ones in.
    Restoring,
}

impl Phase {
    /// Phases in which the broker may be down because of this agent.
    pub fn broker_may_be_down(self) -> bool {
        matches!(
            self,
            Phase::Stopping | Phase::Capturing | Phase::Starting | Phase::Restoring
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Gating => "gating",
            Phase::Stopping => "stopping",
            Phase::Capturing => "capturing",
            Phase::Starting => "starting",
            Phase::Recovering => "recovering",
            Phase::Archiving => "archiving",
            Phase::Downloading => "downloading",
            Phase::Restoring => "restoring",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a Kafka node is (`process.roles`): ZooKeeper-mode brokers and KRaft
/// brokers are `broker`, dedicated KRaft controllers `controller`, nodes
/// with both roles `combined`. A rolling cycle takes brokers first and
/// controllers last, so the metadata in a cycle's snapshots is the newest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    #[default]
    Broker,
    Combined,
    Controller,
}

impl NodeRole {
    /// From `process.roles` (`broker`, `controller`, `broker,controller`).
    pub fn from_process_roles(roles: &str) -> Result<NodeRole, String> {
        let mut broker = false;
        let mut controller = false;
        for r in roles.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match r {
                "broker" => broker = true,
                "controller" => controller = true,
                other => {
                    return Err(format!(
                        "process.roles {roles:?}: unknown role {other:?} (broker, controller)"
                    ))
                }
            }
        }
        match (broker, controller) {
            (true, false) => Ok(NodeRole::Broker),
            (true, true) => Ok(NodeRole::Combined),
            (false, true) => Ok(NodeRole::Controller),
            (false, false) => Err(format!("process.roles {roles:?} names no role")),
        }
    }

    /// Serves clients and hosts partitions.
    pub fn is_broker(self) -> bool {
        matches!(self, NodeRole::Broker | NodeRole::Combined)
    }

    /// A KRaft controller (a voter of the metadata quorum).
    pub fn is_controller(self) -> bool {
        matches!(self, NodeRole::Controller | NodeRole::Combined)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Broker => "broker",
            NodeRole::Combined => "combined",
            NodeRole::Controller => "controller",
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub protocol: u32,
    pub broker: i32,
    pub agent_version: String,
    pub hostname: String,
    pub phase: Phase,
    /// The epoch of the lease the agent believes it holds, if any.
    pub lease_epoch: Option<u64>,
    /// True when the broker process is running (its log dirs are locked).
    pub broker_running: bool,
    /// A random id the agent process picks when it starts. A grant whose
    /// answer was lost is handed out again only to the same process, so a
    /// second agent acting as the same broker (a misdeployment) never
    /// receives a lease another agent already works under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// What the node is, from its `process.roles` (absent from agents
    /// older than controller support: then the coordinator's config alone
    /// says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<NodeRole>,
    /// What restores moved aside on this host, kept until removed
    /// (absent: nothing, or an agent older than this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_aside: Vec<MovedAsideDir>,
}

/// A dir a restore moved aside (`<log dir>.pre-restore-<time>`): the data
/// the node had before, never deleted by the restore itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovedAsideDir {
    pub path: String,
    /// When it was moved aside, from its name (`None`: a name the tool did
    /// not write; never removed by the agent).
    pub moved_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Disk space it takes.
    pub bytes: u64,
    /// From when the agent removes it, once the node is healthy
    /// (`restore.remove_moved_aside_after`); `None`: kept until an
    /// operator removes it.
    pub remove_after: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollResponse {
    pub action: Action,
    /// When to poll next, unless the agent is busy.
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Nothing to do.
    Idle,
    /// Take a snapshot under this lease.
    Snapshot { lease: Lease },
    /// Restore this snapshot under this lease.
    Restore { lease: Lease, order: RestoreOrder },
    /// Restore this node's snapshot of a set, as one node of a
    /// whole-cluster restore: every node of the cluster holds such a lease
    /// at once, and the coordinator lets each past the steps of
    /// [`ClusterStep`] only when all are ready ([`ClusterGo`]).
    ClusterRestore {
        lease: Lease,
        order: ClusterRestoreOrder,
    },
}

/// One node's part of a whole-cluster restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRestoreOrder {
    /// The cluster restore order.
    pub id: i64,
    /// The cluster the set is of (the live cluster may be gone).
    pub cluster_id: String,
    pub set_id: String,
    /// This node's snapshot in the set.
    pub snapshot_id: String,
}

/// How far a node of a whole-cluster restore got. The agent sends it with
/// every heartbeat; it never stops its node before the coordinator answers
/// [`ClusterGo::Swap`], nor starts it before [`ClusterGo::Start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterStep {
    /// Downloading and verifying the snapshot beside the log dirs; the
    /// node is untouched.
    Preparing,
    /// Extracted and verified; waiting for every node to be too.
    Prepared,
    /// Stopped (if it ran) and its log dirs swapped; waiting to start.
    Swapped,
    /// Started; a controller also saw the quorum elect a leader.
    Started,
}

impl ClusterStep {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterStep::Preparing => "preparing",
            ClusterStep::Prepared => "prepared",
            ClusterStep::Swapped => "swapped",
            ClusterStep::Started => "started",
        }
    }
}

impl std::fmt::Display for ClusterStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far the coordinator lets a node of a whole-cluster restore go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterGo {
    /// Download and verify only.
    Prepare,
    /// Every node is prepared: stop the node and swap its log dirs.
    Swap,
    /// Start the node: for controllers once every node is swapped, for
    /// brokers once the controllers' quorum has a leader.
    Start,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub epoch: u64,
    pub ttl_ms: u64,
    /// The rolling cycle this lease belongs to (none for restores and
    /// manual runs outside a cycle).
    pub cycle_id: Option<i64>,
    /// How long the agent may wait for its gate before giving up with
    /// [`Outcome::Skipped`].
    pub gate_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOrder {
    pub id: i64,
    pub cluster_id: String,
    pub snapshot_id: String,
    /// Restore even when cluster.id or node.id do not match.
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub broker: i32,
    pub epoch: u64,
    pub phase: Phase,
    /// Human progress line ("12 partitions still catching up").
    pub progress: Option<String>,
    /// Under a whole-cluster restore lease: how far this node got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_step: Option<ClusterStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatResponse {
    pub ttl_ms: u64,
    /// The coordinator asks the agent to give up (restart the broker if
    /// stopped, release). Set when an operator cancels.
    pub abort: bool,
    /// Under a whole-cluster restore lease: how far the node may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<ClusterGo>,
}

/// Ends a lease. After `Recovered` with reflink capture the agent goes on
/// archiving without the lease and sends a [`SnapshotReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub broker: i32,
    pub epoch: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The broker was stopped, captured, restarted and is back in every ISR;
    /// the archive is still being built (a [`SnapshotReport`] follows).
    Recovered {
        snapshot_id: String,
        downtime_ms: u64,
    },
    /// The snapshot is committed (copy capture archives before the restart).
    Committed {
        snapshot: SnapshotSummary,
        downtime_ms: u64,
    },
    /// The gate never passed; the broker was not touched.
    Skipped { reason: String },
    /// Something failed. `broker_running` says whether the broker runs now.
    Failed {
        reason: String,
        broker_running: bool,
    },
    /// A restore finished and the broker is back in every ISR.
    Restored {
        snapshot_id: String,
        downtime_ms: u64,
    },
}

/// Sent when an archive finishes after the lease was released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotReport {
    pub broker: i32,
    /// The epoch of the lease the snapshot was captured under.
    pub epoch: u64,
    pub result: ReportResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReportResult {
    Committed { snapshot: SnapshotSummary },
    Failed { snapshot_id: String, reason: String },
}

/// What the catalog keeps of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSummary {
    pub snapshot_id: String,
    pub cluster_id: String,
    pub broker: i32,
    pub host: String,
    pub committed: chrono::DateTime<chrono::Utc>,
    pub capture: String,
    pub clean_shutdown: bool,
    pub downtime_ms: Option<u64>,
    pub files: u64,
    pub data_bytes: u64,
    pub archive_bytes: u64,
    pub archive_sha256: String,
    pub manifest_sha256: String,
}

impl SnapshotSummary {
    pub fn of(m: &crate::manifest::Manifest) -> SnapshotSummary {
        SnapshotSummary {
            snapshot_id: m.snapshot_id.clone(),
            cluster_id: m.cluster_id.clone(),
            broker: m.node_id,
            host: m.host.clone(),
            committed: m.timestamps.committed,
            capture: m.capture.used.to_string(),
            clean_shutdown: m.clean_shutdown,
            downtime_ms: m.broker_downtime_ms,
            files: m.totals.files,
            data_bytes: m.totals.bytes,
            archive_bytes: m.archive.size,
            archive_sha256: m.archive.sha256.clone(),
            manifest_sha256: m.manifest_sha256.clone(),
        }
    }
}

/// Something the operator should know that is not tied to a lease, e.g.
/// "agent restarted after a crash and started the broker it had stopped".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    pub broker: i32,
    pub level: NoticeLevel,
    pub message: String,
    /// The lease epoch the notice is about, if any.
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeLevel {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_tagged() {
        let a = Action::Snapshot {
            lease: Lease {
                epoch: 7,
                ttl_ms: 60_000,
                cycle_id: Some(3),
                gate_timeout_ms: 600_000,
            },
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.starts_with(r#"{"type":"snapshot""#), "{text}");
        assert_eq!(serde_json::from_str::<Action>(&text).unwrap(), a);
        let idle: Action = serde_json::from_str(r#"{"type":"idle"}"#).unwrap();
        assert_eq!(idle, Action::Idle);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Heartbeat>(
            r#"{"broker":1,"epoch":2,"phase":"idle","progress":null,"evil":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn phases_that_may_leave_the_broker_down() {
        assert!(Phase::Capturing.broker_may_be_down());
        assert!(Phase::Restoring.broker_may_be_down());
        assert!(!Phase::Archiving.broker_may_be_down());
        assert!(!Phase::Gating.broker_may_be_down());
    }
}
