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

/// `POST /v1/snapshots/verified`: a verification the CLI ran.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Verified {
    pub cluster_id: String,
    pub broker: i32,
    pub snapshot_id: String,
    pub error: Option<String>,
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
