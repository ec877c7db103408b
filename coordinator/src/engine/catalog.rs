//! The catalog of committed snapshots: listing, verification, retention's
//! two-step deletion, and rebuilding it from cold storage.

use super::{ApiError, ApiResult, Engine};
use crate::retention::{Candidate, Deletion};
use crate::state::EventLevel;
use crate::store::{cycles, events, leases, parse_ts, snapshots, Now};
use events::Meta;
use kafka_snapshot_model::api::SnapshotRow;
use kafka_snapshot_model::protocol::SnapshotSummary;
use snapshots::Key;
use std::collections::BTreeSet;

fn key(d: &Deletion) -> Key<'_> {
    Key {
        cluster_id: &d.cluster_id,
        broker: d.broker,
        snapshot_id: &d.snapshot_id,
    }
}

impl Engine {
    pub fn snapshots(&self, broker: Option<i32>) -> ApiResult<Vec<SnapshotRow>> {
        Ok(snapshots::list(&self.conn, broker)?)
    }

    pub fn record_verification(
        &mut self,
        cluster_id: &str,
        broker: i32,
        snapshot_id: &str,
        result: Result<(), String>,
        now: Now,
    ) -> ApiResult<()> {
        let k = Key {
            cluster_id,
            broker,
            snapshot_id,
        };
        let cx = self.begin(now)?;
        if snapshots::is_deleted(&cx.tx, k)? == Some(true) {
            // Retention removed it while it was read back: nothing to say.
            return Ok(());
        }
        if !snapshots::set_verified(&cx.tx, k, &result, now)? {
            return Err(ApiError::NotFound(format!(
                "snapshot {snapshot_id} of broker {broker} is not in the catalog"
            )));
        }
        match &result {
            Ok(()) => cx.event(
                EventLevel::Info,
                Some(broker),
                None,
                "verified",
                &format!("snapshot {snapshot_id} of broker {broker} verified"),
            )?,
            Err(e) => {
                cx.count("verify_failures_total", &broker.to_string())?;
                cx.event(
                    EventLevel::Error,
                    Some(broker),
                    None,
                    "verify_failed",
                    &format!("snapshot {snapshot_id} of broker {broker} FAILED verification: {e}"),
                )?
            }
        }
        cx.commit()?;
        Ok(())
    }

    /// The next snapshot waiting for its first verification.
    pub fn next_unverified(&self) -> ApiResult<Option<(String, i32, String)>> {
        Ok(snapshots::next_unverified(&self.conn)?)
    }

    /// Brokers whose snapshot is in progress (lease held, or archive being
    /// built): retention leaves them alone.
    pub fn busy_brokers(&self) -> ApiResult<BTreeSet<i32>> {
        let mut busy: BTreeSet<i32> = leases::slot_brokers(&self.conn)?.into_iter().collect();
        busy.extend(cycles::busy_brokers(&self.conn)?);
        Ok(busy)
    }

    pub fn retention_candidates(&self) -> ApiResult<Vec<Candidate>> {
        Ok(self
            .snapshots(None)?
            .into_iter()
            .map(|s| Candidate {
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
    pub fn begin_deletion(&mut self, d: &Deletion, now: Now) -> ApiResult<()> {
        snapshots::set_deleted(&self.conn, key(d), Some(now))?;
        Ok(())
    }

    /// Retention could not delete it: it is listed again.
    pub fn deletion_failed(&mut self, d: &Deletion, error: &str, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        snapshots::set_deleted(&cx.tx, key(d), None)?;
        cx.event(
            EventLevel::Warning,
            Some(d.broker),
            None,
            "retention",
            &format!(
                "snapshot {} of broker {} could not be deleted ({error}); it stays in the catalog",
                d.snapshot_id, d.broker
            ),
        )?;
        cx.commit()?;
        Ok(())
    }

    /// Retention deleted it from cold storage.
    pub fn mark_deleted(&mut self, d: &Deletion, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        snapshots::set_deleted(&cx.tx, key(d), Some(now))?;
        cx.count("retention_deleted_total", &d.broker.to_string())?;
        cx.event(
            EventLevel::Info,
            Some(d.broker),
            None,
            "retention",
            &format!(
                "snapshot {} of broker {} deleted: {}",
                d.snapshot_id, d.broker, d.reason
            ),
        )?;
        cx.commit()?;
        Ok(())
    }

    pub fn prune_done(&mut self, error: Option<&str>, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        events::clear_meta(&cx.tx, Meta::PruneDue)?;
        if let Some(e) = error {
            cx.count("retention_errors_total", "")?;
            cx.event(
                EventLevel::Error,
                None,
                None,
                "retention",
                &format!("retention stopped at a storage error: {e}"),
            )?;
        }
        cx.commit()?;
        Ok(())
    }

    /// Replaces the catalog with what cold storage holds.
    pub fn rebuild_catalog(
        &mut self,
        found: &[SnapshotSummary],
        now: Now,
    ) -> ApiResult<(usize, usize)> {
        let cx = self.begin(now)?;
        let before = snapshots::delete_all(&cx.tx, now)?;
        for s in found {
            snapshots::upsert(&cx.tx, s, "rebuild")?;
        }
        cx.event(
            EventLevel::Info,
            None,
            None,
            "catalog_rebuilt",
            &format!(
                "catalog rebuilt from cold storage: {} snapshots (was {before})",
                found.len()
            ),
        )?;
        cx.commit()?;
        Ok((before, found.len()))
    }
}
