//! The catalog of committed snapshots: listing, verification, retention's
//! two-step deletion, and rebuilding it from cold storage.

use super::{cluster_of, ApiError, ApiResult, Ctx, Engine};
use crate::retention::{Candidate, Deletion};
use crate::state::EventLevel;
use crate::store::{cycles, events, leases, parse_ts, sets, snapshots, ts, Now};
use events::Meta;
use kafka_snapshot_model::api::SnapshotRow;
use kafka_snapshot_model::protocol::SnapshotSummary;
use kafka_snapshot_model::sets::SetRecord;
use snapshots::{Key, Seen};
use std::collections::BTreeSet;
use std::time::Duration;

/// How far an agent's commit time may be from the coordinator's clock when
/// it learns of the snapshot before the snapshot is flagged (an event, the
/// `clock_skew_total` counter, `snapshots` and `status`). A report comes
/// seconds after the commit; a coordinator that was down for a while gets
/// it late, which shows as skew too, and the message says so.
pub const CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(10 * 60);

/// Whole seconds, signed, for messages ("+3d 2h", "-45m").
fn signed(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "+" };
    let d = Duration::from_secs(ms.unsigned_abs() / 1000);
    format!("{sign}{}", crate::schedule::humantime(d))
}

fn key(d: &Deletion) -> Key<'_> {
    Key {
        cluster_id: &d.cluster_id,
        broker: d.broker,
        snapshot_id: &d.snapshot_id,
    }
}

impl Ctx<'_> {
    /// Flags a snapshot whose agent's commit time is further than
    /// [`CLOCK_SKEW_LIMIT`] from when the coordinator saw it. Nothing else
    /// depends on it: order and age already come from the coordinator's
    /// clock.
    pub(super) fn flag_skew(&self, s: &SnapshotSummary, seen: Seen, how: &str) -> ApiResult<()> {
        let Some(ms) = seen.skew_ms else {
            return Ok(());
        };
        if ms.unsigned_abs() <= CLOCK_SKEW_LIMIT.as_millis() as u64 {
            return Ok(());
        }
        let late = if ms < 0 && how == "reported" {
            " (or its report came that late)"
        } else {
            ""
        };
        self.count("clock_skew_total", &s.broker.to_string())?;
        self.event(
            EventLevel::Warning,
            Some(s.broker),
            None,
            "clock_skew",
            &format!(
                "snapshot {} of broker {}: committed at {} by the clock of {}, {} from the \
                 coordinator's clock when it was {how} ({}): that host's clock is off{late}; \
                 retention and the restore pick go by the coordinator's time",
                s.snapshot_id,
                s.broker,
                ts(s.committed),
                s.host,
                signed(ms),
                ts(self.now),
            ),
        )?;
        Ok(())
    }
}

impl Engine {
    /// The cluster.id this coordinator works for (`[cluster] id`, or
    /// learned from the cluster); `None` until known.
    pub fn cluster_id(&self) -> ApiResult<Option<String>> {
        Ok(cluster_of(&self.conn, &self.cfg)?)
    }

    /// The cluster.id the Kafka cluster reports (Metadata). The first one
    /// is kept (unless the config names one): from then on only that
    /// cluster's snapshots are listed, kept, deleted and restored. A
    /// cluster that answers with another id is not this coordinator's:
    /// refused (the caller treats the cluster as unusable), and reported
    /// once per id.
    pub fn learn_cluster_id(&mut self, live: &str, now: Now) -> ApiResult<()> {
        let cx = self.begin(now)?;
        let bootstrap = cx.cfg.kafka.bootstrap_servers.join(",");
        match cx.cluster()? {
            Some(ours) if ours == live => Ok(()),
            Some(ours) => {
                let from = if cx.cfg.cluster.id.is_some() {
                    "[cluster] id in its config"
                } else {
                    "learned from the cluster earlier and kept in its database"
                };
                let message = format!(
                    "the Kafka cluster at {bootstrap} has cluster.id {live}, but this coordinator \
                     works for cluster {ours} ({from}): no lease is granted; point [kafka] at \
                     cluster {ours}, or run a coordinator with its own database for {live}"
                );
                if events::meta(&cx.tx, Meta::ClusterMismatch)?.as_deref() != Some(live) {
                    events::set_meta(&cx.tx, Meta::ClusterMismatch, live)?;
                    cx.event(EventLevel::Error, None, None, "cluster_mismatch", &message)?;
                    cx.commit()?;
                }
                Err(ApiError::Conflict(message))
            }
            None => {
                events::set_meta(&cx.tx, Meta::ClusterId, live)?;
                cx.event(
                    EventLevel::Info,
                    None,
                    None,
                    "cluster_id",
                    &format!(
                        "the cluster at {bootstrap} has cluster.id {live}: this coordinator works \
                         for it, and lists, keeps, deletes and restores only its snapshots"
                    ),
                )?;
                cx.commit()?;
                Ok(())
            }
        }
    }

    /// The catalog of this coordinator's cluster.
    pub fn snapshots(&self, broker: Option<i32>) -> ApiResult<Vec<SnapshotRow>> {
        let cluster = self.cluster_id()?;
        Ok(snapshots::list(&self.conn, cluster.as_deref(), broker)?)
    }

    /// Records a verification: `Ok(Some(true))` read every file,
    /// `Ok(Some(false))` only the stored bytes of an encrypted archive (no
    /// identity where it ran), `Ok(None)` an older CLI that did not say.
    pub fn record_verification(
        &mut self,
        cluster_id: &str,
        broker: i32,
        snapshot_id: &str,
        result: Result<Option<bool>, String>,
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
            Ok(contents) => cx.event(
                EventLevel::Info,
                Some(broker),
                None,
                "verified",
                &match contents {
                    Some(false) => format!(
                        "snapshot {snapshot_id} of broker {broker} verified as stored (size and \
                         SHA-256 of the encrypted archive); its files need the identity: \
                         kafka-snapshot-agent archive verify --identity"
                    ),
                    _ => format!("snapshot {snapshot_id} of broker {broker} verified"),
                },
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
        let cluster = self.cluster_id()?;
        Ok(snapshots::next_unverified(&self.conn, cluster.as_deref())?)
    }

    /// Brokers whose snapshot is in progress (lease held, or archive being
    /// built): retention leaves them alone.
    pub fn busy_brokers(&self) -> ApiResult<BTreeSet<i32>> {
        let mut busy: BTreeSet<i32> = leases::slot_brokers(&self.conn)?.into_iter().collect();
        busy.extend(cycles::busy_brokers(&self.conn)?);
        Ok(busy)
    }

    /// What retention chooses from: this cluster's snapshots, ordered and
    /// aged by when the coordinator saw them, each with the restore order
    /// that still reads it (pending or running), if any.
    pub fn retention_candidates(&self) -> ApiResult<Vec<Candidate>> {
        let cluster = self.cluster_id()?;
        let Some(cluster) = cluster else {
            return Err(ApiError::Unavailable(
                "retention: this coordinator does not know its cluster.id yet (it has not \
                 reached the cluster, and the config sets no [cluster] id); nothing is deleted"
                    .into(),
            ));
        };
        let read = snapshots::read_by_open_restores(&self.conn, Some(&cluster))?;
        Ok(self
            .snapshots(None)?
            .into_iter()
            .map(|s| Candidate {
                seen: parse_ts(s.seen_at.as_deref().unwrap_or(&s.committed)),
                verified: s.verify_ok,
                read_by_restore: read
                    .iter()
                    .find(|(_, b, id)| *b == s.broker && *id == s.snapshot_id)
                    .map(|(order, _, _)| order.clone()),
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
    ///
    /// A restore order made since retention planned may name it, or a set
    /// holding it may have become the newest complete verified one: then
    /// it stays, and the answer says why (`Some`). The check and the mark
    /// are one transaction, and an order can only name a listed snapshot,
    /// so no order reads a snapshot retention deletes.
    pub fn begin_deletion(&mut self, d: &Deletion, now: Now) -> ApiResult<Option<String>> {
        let cx = self.begin(now)?;
        let all = sets::list(&cx.tx, Some(&d.cluster_id))?;
        let in_kept = super::sets::newest_kept(&all).filter(|s| {
            s.nodes
                .iter()
                .any(|n| n.node == d.broker && n.snapshot_id.as_deref() == Some(&d.snapshot_id))
        });
        if let Some(set) = in_kept {
            return Ok(Some(format!(
                "snapshot {} kept: in set {}, the newest complete verified set",
                d.snapshot_id, set.set_id
            )));
        }
        let read = snapshots::read_by_open_restores(&cx.tx, Some(&d.cluster_id))?;
        if let Some((order, _, _)) = read
            .iter()
            .find(|(_, b, id)| *b == d.broker && *id == d.snapshot_id)
        {
            return Ok(Some(format!(
                "snapshot {} kept: {order} reads it",
                d.snapshot_id
            )));
        }
        snapshots::set_deleted(&cx.tx, key(d), Some(now))?;
        cx.commit()?;
        Ok(None)
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

    /// Replaces the catalog with what cold storage holds of this
    /// coordinator's cluster. `others` counts, per cluster.id, the
    /// complete snapshots of other clusters in the same store: they are
    /// left alone, and said so. `found_sets` are the set records read back
    /// and trusted (`rejected`, those that were not, each an event): they
    /// replace the sets whose records were stored, while a set whose
    /// record is still to be written stays.
    pub fn rebuild_catalog(
        &mut self,
        found: &[SnapshotSummary],
        others: &[(String, usize)],
        found_sets: &[SetRecord],
        rejected: &[String],
        now: Now,
    ) -> ApiResult<(usize, usize)> {
        let cx = self.begin(now)?;
        let Some(ours) = cx.cluster()? else {
            return Err(ApiError::Unavailable(
                "catalog rebuild: this coordinator does not know its cluster.id yet (it has not \
                 reached the cluster): set [cluster] id in its config, or wait until it reaches \
                 the cluster; nothing was changed"
                    .into(),
            ));
        };
        if let Some(s) = found.iter().find(|s| s.cluster_id != ours) {
            return Err(ApiError::Internal(format!(
                "catalog rebuild: snapshot {} of cluster {} offered for cluster {ours}",
                s.snapshot_id, s.cluster_id
            )));
        }
        if let Some(s) = found_sets.iter().find(|s| s.cluster_id != ours) {
            return Err(ApiError::Internal(format!(
                "catalog rebuild: set {} of cluster {} offered for cluster {ours}",
                s.set_id, s.cluster_id
            )));
        }
        let before = snapshots::delete_all(&cx.tx, now)?;
        for s in found {
            let k = Key {
                cluster_id: &s.cluster_id,
                broker: s.broker,
                snapshot_id: &s.snapshot_id,
            };
            // A snapshot the catalog had keeps when it was first seen.
            let known = snapshots::is_deleted(&cx.tx, k)?.is_some();
            let seen = Seen::found(s.committed, now);
            snapshots::upsert(&cx.tx, s, "rebuild", seen)?;
            if !known {
                cx.flag_skew(s, seen, "found by a catalog rebuild")?;
            }
        }
        let ids: Vec<String> = found_sets.iter().map(|s| s.set_id.clone()).collect();
        sets::drop_stored_except(&cx.tx, &ours, &ids)?;
        for s in found_sets {
            sets::upsert_found(&cx.tx, s, now)?;
        }
        for why in rejected {
            cx.event(
                EventLevel::Warning,
                None,
                None,
                "set_rejected",
                &format!("catalog rebuild: set record not trusted, not listed: {why}"),
            )?;
        }
        let rejected = if rejected.is_empty() {
            String::new()
        } else {
            format!(" ({} set record(s) NOT trusted)", rejected.len())
        };
        let other = if others.is_empty() {
            String::new()
        } else {
            format!(
                "; left alone, of other clusters: {}",
                others
                    .iter()
                    .map(|(c, n)| format!("{n} of cluster {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        cx.event(
            EventLevel::Info,
            None,
            None,
            "catalog_rebuilt",
            &format!(
                "catalog of cluster {ours} rebuilt from cold storage: {} snapshots (was \
                 {before}), {} snapshot sets{rejected}{other}",
                found.len(),
                found_sets.len()
            ),
        )?;
        cx.commit()?;
        Ok((before, found.len()))
    }
}
