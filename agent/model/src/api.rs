//! Types of the coordinator's admin API (status, snapshots, restore orders),
//! shared by the service and its CLI. Their JSON is the API: fields are
//! only ever added.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Whether the last successful verification read every file and
    /// checked its hash (`true`), or only the stored archive's size and
    /// SHA-256 (`false`: an encrypted snapshot verified where no identity
    /// is, as the coordinator always does). `None`: not verified, failed,
    /// or recorded before the catalog kept this.
    #[serde(default)]
    pub verified_contents: Option<bool>,
    pub source: String,
    /// When the coordinator learned of the snapshot, by its own clock: what
    /// order and age (retention, the default restore pick) go by. For a
    /// snapshot found by `catalog rebuild`, its commit time but never
    /// later than the rebuild.
    #[serde(default)]
    pub seen_at: Option<String>,
    /// `committed - seen_at` in milliseconds when known: how far the
    /// agent's clock was off (or how late its report came).
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
}

/// `GET /v1/sets`: one snapshot set, the committed snapshot of every node
/// of one cycle that covered every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetView {
    pub set_id: String,
    /// `None` until the cycle reaches the cluster and learns it.
    pub cluster_id: Option<String>,
    pub cycle_id: i64,
    pub started_at: String,
    /// `None` while its cycle runs.
    pub finished_at: Option<String>,
    /// Every node of the cycle committed a snapshot in it.
    pub complete: bool,
    /// Complete, and every one of its snapshots is in the catalog and
    /// passed verification.
    pub verified: bool,
    /// The newest complete, verified set: retention keeps every one of its
    /// snapshots.
    pub kept: bool,
    /// Its record is in cold storage (`<cluster.id>/sets/<set-id>.json`).
    pub stored: bool,
    /// `cycle` (recorded by this coordinator) or `rebuild` (read back from
    /// cold storage by `catalog rebuild`).
    pub source: String,
    pub nodes: Vec<SetNodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetNodeView {
    pub node: i32,
    /// `None`: no snapshot of this node in the set.
    pub snapshot_id: Option<String>,
    /// `verified`, `not verified`, `failed verification`, `deleted` (no
    /// longer in the catalog), `missing` (the cycle committed none) or
    /// `pending` (its cycle still runs).
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleBrokerView {
    pub broker: i32,
    pub state: String,
    pub attempts: i64,
    pub snapshot_id: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleView {
    pub id: i64,
    pub trigger: String,
    pub state: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub message: Option<String>,
    pub brokers: Vec<CycleBrokerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerView {
    pub broker: i32,
    /// Broker, controller or combined (older coordinators: broker).
    #[serde(default)]
    pub role: crate::protocol::NodeRole,
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
    /// Listed snapshots whose agent's commit time is far from when the
    /// coordinator saw them (a wrong clock on the broker host).
    #[serde(default)]
    pub clock_skewed_snapshots: i64,
    /// What restores moved aside on the node's host
    /// (`<dir>.pre-restore-<time>`), kept until removed.
    #[serde(default)]
    pub moved_aside: Vec<crate::protocol::MovedAsideDir>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub at: String,
    pub level: String,
    pub broker: Option<i32>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub now: String,
    /// The cluster.id this coordinator works for (config `[cluster] id`,
    /// or learned from the cluster); `None` until known. Only its
    /// snapshots are listed, kept, deleted or restored.
    #[serde(default)]
    pub cluster_id: Option<String>,
    pub schedule: String,
    pub suspended: bool,
    /// Why: `schedule.suspend` in the config, or what the operator said
    /// with `coordinator suspend`.
    #[serde(default)]
    pub suspended_because: Option<String>,
    pub next_due: Option<String>,
    pub lease: Option<LeaseView>,
    pub cycle: Option<CycleView>,
    /// The newest whole-cluster restore order, if any was ever made.
    #[serde(default)]
    pub cluster_restore: Option<ClusterRestoreView>,
    pub brokers: Vec<BrokerView>,
    /// Brokers the cluster lists that no `[[agents]]` entry covers: they
    /// are never snapshotted.
    #[serde(default)]
    pub uncovered_brokers: Vec<i32>,
    pub recent_events: Vec<EventView>,
}

/// `POST /v1/run-now`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunNow {
    pub broker: Option<i32>,
}

/// `POST /v1/restores`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewRestore {
    pub broker: i32,
    pub snapshot_id: Option<String>,
    pub force: bool,
}

/// `POST /v1/cluster-restores`: restore every node of the cluster from a
/// snapshot set (the newest complete, verified one by default).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewClusterRestore {
    pub set_id: Option<String>,
    /// Go ahead even though the cluster answers and serves clients, or
    /// the set is not verified.
    pub force: bool,
}

/// A whole-cluster restore order and where each node stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRestoreView {
    pub id: i64,
    pub set_id: String,
    pub cluster_id: String,
    pub force: bool,
    /// `running`, `recovering` (every node started; waiting for the
    /// cluster to be in sync), `done`, `failed`, `cancelled`.
    pub state: String,
    /// The coordinator's last look at the cluster while recovering.
    pub progress: Option<String>,
    pub message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub nodes: Vec<ClusterRestoreNodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRestoreNodeView {
    pub node: i32,
    pub role: String,
    pub snapshot_id: String,
    /// `waiting` (no lease yet), `preparing`, `prepared`, `swapped`,
    /// `started`, `restored`, `failed`, `cancelled`.
    pub state: String,
    pub phase: Option<String>,
    pub progress: Option<String>,
    pub message: Option<String>,
    pub epoch: Option<i64>,
}

/// `POST /v1/snapshots/verified`: a verification the CLI ran.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Verified {
    pub cluster_id: String,
    pub broker: i32,
    pub snapshot_id: String,
    pub error: Option<String>,
    /// Every file's hash was checked (see `SnapshotRow::verified_contents`);
    /// absent from older CLIs, recorded as unknown.
    #[serde(default)]
    pub contents_checked: Option<bool>,
}

/// `POST /v1/prune`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PruneResult {
    pub dry_run: bool,
    pub deleted: Vec<PrunedView>,
    pub held: Vec<(i32, String)>,
    pub error: Option<String>,
    /// Snapshot sets whose last snapshot went (or, in a dry run, would
    /// go): their records are dropped from cold storage, then the catalog.
    #[serde(default)]
    pub sets_dropped: Vec<String>,
    /// Incomplete snapshots (no manifest) that no run will finish, removed
    /// (or, in a dry run, to remove) as `cluster/broker-N/id`: agents with
    /// least-privilege storage credentials cannot delete them themselves.
    #[serde(default)]
    pub abandoned_removed: Vec<String>,
    /// The content objects of incremental snapshots: which are referenced,
    /// which not, and what was (or, in a dry run, would be) removed.
    /// Absent when the cluster has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectSweep>,
}

/// The content objects of a cluster in storage, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectUsage {
    /// Objects some complete snapshot in storage references.
    pub referenced: u64,
    pub referenced_bytes: u64,
    /// Objects no snapshot references (left by snapshots retention
    /// removed, or by runs that never committed).
    pub unreferenced: u64,
    pub unreferenced_bytes: u64,
}

/// Retention's sweep of content objects (`<cluster>/objects/`). Sizes are
/// as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSweep {
    #[serde(flatten)]
    pub usage: ObjectUsage,
    /// Of those, removed now (a dry run: that would be).
    pub removed: u64,
    pub removed_bytes: u64,
    /// Of those, kept until they have been unreferenced for
    /// `retention.object_grace`.
    pub in_grace: u64,
    /// Temporary objects and unfinished uploads that interrupted uploads
    /// of objects left, removed (a dry run: that would be).
    #[serde(default)]
    pub leftovers_removed: u64,
    /// Why nothing was removed this time, when so (a snapshot is being
    /// written, a manifest cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PrunedView {
    pub broker: i32,
    pub snapshot_id: String,
    pub reason: String,
}

/// `POST /v1/catalog/rebuild`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RebuildResult {
    pub before: usize,
    pub after: usize,
    pub skipped: Vec<String>,
    /// Complete snapshots of other clusters in the same store, per
    /// cluster.id: left alone and not listed.
    #[serde(default)]
    pub other_clusters: Vec<(String, usize)>,
    /// Snapshot set records read back from cold storage and listed.
    #[serde(default)]
    pub sets: usize,
    /// Set records that were not trusted (checksum, another cluster's
    /// snapshots, unreadable), each with its key and why.
    #[serde(default)]
    pub sets_rejected: Vec<String>,
    /// The content objects of incremental snapshots, referenced or not.
    /// Absent when the cluster has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectUsage>,
}

/// `POST /v1/suspend`: no scheduled cycle starts and no snapshot lease is
/// granted until `POST /v1/resume`; restores still go.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Suspend {
    pub reason: Option<String>,
}

/// `POST /v1/cycles/cancel`: the open cycle (or the one named, which must
/// be the open one).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CancelCycle {
    pub cycle_id: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct CycleCancelled {
    pub cycle_id: i64,
    /// The lease of the cycle that was held, now told to abort: its agent
    /// starts its broker again if it stopped it, and the slot waits for the
    /// cluster to be back in sync.
    pub aborted_lease: Option<i64>,
    pub broker: Option<i32>,
}
