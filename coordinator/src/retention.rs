//! Retention: which snapshots may go. A pure plan over the catalog, so every
//! rule is a table-driven test; the coordinator then deletes in plan order
//! and stops at the first storage error.
//!
//! Per broker, newest first:
//! - a broker with a snapshot in progress (lease held or archive being
//!   built) is left alone;
//! - the newest snapshot that passed verification is never deleted (nor,
//!   while none has, the newest one not known to be bad);
//! - a snapshot a restore order still reads (pending or running, of this
//!   broker or, forced, of another) is kept;
//! - a snapshot of the newest complete, verified snapshot set (every node
//!   of one cycle, each snapshot verified) is kept, so that a whole
//!   cluster can always be restored to one cycle;
//! - otherwise a snapshot goes when it is beyond the newest `keep_last`, or
//!   older than `max_age`.
//!
//! "Newest" and "older" are by the coordinator's clock (`seen`: when it
//! learned of the snapshot), never by the agent's commit time: one broker
//! host with a wrong clock must not make every real snapshot look old.

use chrono::{DateTime, Utc};
use kafka_snapshot_model::api::{ObjectSweep, ObjectUsage};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// What the sweep of content objects decides: the figures, and which
/// objects go (SHA-256, stored size), in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectPlan {
    pub sweep: ObjectSweep,
    pub remove: Vec<(String, u64)>,
}

/// Content objects of incremental snapshots: which may go. An object goes
/// only when no complete snapshot in storage references it (`referenced`),
/// it has been so for at least `grace` (`unreferenced_since`, which this
/// updates: new ones from `now`, referenced or vanished ones dropped), and
/// nothing blocks the sweep: `blocked` says why not (a snapshot being
/// written may be about to reference any object; a manifest that cannot
/// be read may reference any).
pub fn plan_objects(
    present: &HashMap<String, u64>,
    referenced: &HashSet<String>,
    blocked: Option<String>,
    unreferenced_since: &mut HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: Duration,
) -> ObjectPlan {
    unreferenced_since.retain(|sha, _| present.contains_key(sha) && !referenced.contains(sha));
    let mut plan = ObjectPlan::default();
    let mut shas: Vec<(&String, &u64)> = present.iter().collect();
    shas.sort();
    for (sha, &size) in shas {
        if referenced.contains(sha) {
            continue;
        }
        let since = *unreferenced_since.entry(sha.clone()).or_insert(now);
        let old_enough = (now - since).to_std().is_ok_and(|d| d >= grace);
        if !old_enough {
            plan.sweep.in_grace += 1;
        } else if blocked.is_none() {
            plan.sweep.removed += 1;
            plan.sweep.removed_bytes += size;
            plan.remove.push((sha.clone(), size));
        }
    }
    plan.sweep.usage = object_usage(present, referenced);
    if plan.sweep.usage.unreferenced > plan.sweep.in_grace {
        plan.sweep.deferred = blocked;
    }
    plan
}

/// How many objects (and stored bytes) of `present` are referenced.
pub fn object_usage(present: &HashMap<String, u64>, referenced: &HashSet<String>) -> ObjectUsage {
    let mut u = ObjectUsage::default();
    for (sha, &size) in present {
        if referenced.contains(sha) {
            u.referenced += 1;
            u.referenced_bytes += size;
        } else {
            u.unreferenced += 1;
            u.unreferenced_bytes += size;
        }
    }
    u
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub snapshot_id: String,
    pub cluster_id: String,
    pub broker: i32,
    /// When the coordinator learned of it, by its own clock.
    pub seen: DateTime<Utc>,
    /// `Some(true)` verified, `Some(false)` failed verification, `None` not
    /// verified yet.
    pub verified: Option<bool>,
    /// The restore order (pending or running) that reads it.
    pub read_by_restore: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub snapshot_id: String,
    pub cluster_id: String,
    pub broker: i32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Oldest first, the order they are deleted in.
    pub delete: Vec<Deletion>,
    /// Brokers left alone, and snapshots kept that would otherwise go,
    /// and why.
    pub held: Vec<(i32, String)>,
}

/// The snapshot set retention keeps whole (the newest complete, verified
/// one): its id and its snapshots, (node, snapshot id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSet {
    pub set_id: String,
    pub snapshots: BTreeSet<(i32, String)>,
}

pub struct Policy {
    pub keep_last: usize,
    pub max_age: Option<Duration>,
}

pub fn plan(
    snapshots: &[Candidate],
    policy: &Policy,
    in_progress: &BTreeSet<i32>,
    kept_set: Option<&KeptSet>,
    now: DateTime<Utc>,
) -> Plan {
    let mut by_broker: BTreeMap<i32, Vec<&Candidate>> = BTreeMap::new();
    for s in snapshots {
        by_broker.entry(s.broker).or_default().push(s);
    }
    let mut out = Plan::default();
    for (broker, mut snaps) in by_broker {
        if in_progress.contains(&broker) {
            out.held
                .push((broker, "a snapshot of this broker is in progress".into()));
            continue;
        }
        // Newest first; ids are time-ordered and break ties.
        snaps.sort_by(|a, b| (b.seen, &b.snapshot_id).cmp(&(a.seen, &a.snapshot_id)));
        // Until one is verified, the newest not known to be bad stands in.
        let protected = snaps
            .iter()
            .find(|s| s.verified == Some(true))
            .or_else(|| snaps.iter().find(|s| s.verified.is_none()))
            .map(|s| s.snapshot_id.clone());
        let mut doomed = Vec::new();
        for (i, s) in snaps.iter().enumerate() {
            if protected.as_deref() == Some(s.snapshot_id.as_str()) {
                continue;
            }
            let age = (now - s.seen).to_std().unwrap_or(Duration::ZERO);
            let reason = if i >= policy.keep_last {
                format!("beyond the newest {} (keep_last)", policy.keep_last)
            } else if let Some(max) = policy.max_age.filter(|m| age > *m) {
                format!(
                    "older than max_age {} ({} old)",
                    crate::schedule::humantime(max),
                    crate::schedule::humantime(Duration::from_secs(age.as_secs()))
                )
            } else {
                continue;
            };
            if let Some(order) = &s.read_by_restore {
                out.held.push((
                    broker,
                    format!("snapshot {} kept: {order} reads it", s.snapshot_id),
                ));
                continue;
            }
            if let Some(set) =
                kept_set.filter(|k| k.snapshots.contains(&(broker, s.snapshot_id.clone())))
            {
                out.held.push((
                    broker,
                    format!(
                        "snapshot {} kept: in set {}, the newest complete verified set",
                        s.snapshot_id, set.set_id
                    ),
                ));
                continue;
            }
            doomed.push(Deletion {
                snapshot_id: s.snapshot_id.clone(),
                cluster_id: s.cluster_id.clone(),
                broker,
                reason,
            });
        }
        doomed.reverse();
        out.delete.extend(doomed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn objects_go_only_unreferenced_past_the_grace_and_never_while_blocked() {
        let present: HashMap<String, u64> = [("a", 10), ("b", 20), ("c", 30)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let referenced: HashSet<String> = ["a".to_string()].into();
        let grace = Duration::from_secs(3600);
        let mut since = HashMap::new();
        let t0 = day(1);
        // First seen unreferenced: nothing goes yet.
        let p = plan_objects(&present, &referenced, None, &mut since, t0, grace);
        assert_eq!(
            p.sweep,
            ObjectSweep {
                usage: ObjectUsage {
                    referenced: 1,
                    referenced_bytes: 10,
                    unreferenced: 2,
                    unreferenced_bytes: 50,
                },
                in_grace: 2,
                ..Default::default()
            }
        );
        assert!(p.remove.is_empty());
        // Past the grace, but a snapshot is being written: still nothing.
        let t1 = t0 + chrono::Duration::hours(2);
        let p = plan_objects(
            &present,
            &referenced,
            Some("node 2 is taking a snapshot".into()),
            &mut since,
            t1,
            grace,
        );
        assert!(p.remove.is_empty());
        assert_eq!(
            p.sweep.deferred.as_deref(),
            Some("node 2 is taking a snapshot")
        );
        // "b" is referenced again meanwhile (a new snapshot has the same
        // file): it starts over; "c" goes.
        let referenced: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        let p = plan_objects(&present, &referenced, None, &mut since, t1, grace);
        assert_eq!(p.remove, vec![("c".to_string(), 30)]);
        assert_eq!(p.sweep.removed_bytes, 30);
        assert_eq!(p.sweep.deferred, None);
        let referenced: HashSet<String> = ["a".to_string()].into();
        let p = plan_objects(&present, &referenced, None, &mut since, t1, grace);
        assert_eq!(p.remove, vec![("c".to_string(), 30)]);
        assert_eq!(
            p.sweep.in_grace, 1,
            "b's grace started again: {:?}",
            p.sweep
        );
        // Objects no longer there are forgotten.
        let gone: HashMap<String, u64> = [("a".to_string(), 10)].into();
        plan_objects(&gone, &referenced, None, &mut since, t1, grace);
        assert!(since.is_empty(), "{since:?}");
    }

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, 2, 0, 0).unwrap()
    }

    /// (broker, day committed, verified) -> candidate with id "b<broker>-d<day>".
    fn snaps(rows: &[(i32, u32, Option<bool>)]) -> Vec<Candidate> {
        rows.iter()
            .map(|(b, d, v)| Candidate {
                snapshot_id: format!("b{b}-d{d:02}"),
                cluster_id: "c".into(),
                broker: *b,
                seen: day(*d),
                verified: *v,
                read_by_restore: None,
            })
            .collect()
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.delete.iter().map(|d| d.snapshot_id.as_str()).collect()
    }

    const V: Option<bool> = Some(true);
    const BAD: Option<bool> = Some(false);
    const NEW: Option<bool> = None;

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            rows: Vec<(i32, u32, Option<bool>)>,
            keep_last: usize,
            max_age_days: Option<u64>,
            busy: Vec<i32>,
            want: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "keep_last keeps the newest",
                rows: vec![(1, 1, V), (1, 2, V), (1, 3, V), (1, 4, V)],
                keep_last: 2,
                max_age_days: None,
                busy: vec![],
                want: vec!["b1-d01", "b1-d02"],
            },
            Case {
                name: "nothing to do",
                rows: vec![(1, 1, V), (1, 2, V)],
                keep_last: 2,
                max_age_days: None,
                busy: vec![],
                want: vec![],
            },
            Case {
                name: "the newest verified survives keep_last",
                rows: vec![(1, 1, V), (1, 2, BAD), (1, 3, NEW)],
                keep_last: 1,
                max_age_days: None,
                busy: vec![],
                want: vec!["b1-d02"],
            },
            Case {
                name: "the newest verified survives max_age",
                rows: vec![(1, 1, V), (1, 2, V), (1, 3, BAD)],
                keep_last: 10,
                max_age_days: Some(5),
                busy: vec![],
                want: vec!["b1-d01", "b1-d03"],
            },
            Case {
                name: "max_age removes old ones within keep_last",
                rows: vec![(1, 1, V), (1, 15, V), (1, 19, V)],
                keep_last: 10,
                max_age_days: Some(7),
                busy: vec![],
                want: vec!["b1-d01"],
            },
            Case {
                name: "a broker in progress is left alone",
                rows: vec![(1, 1, V), (1, 2, V), (2, 1, V), (2, 2, V)],
                keep_last: 1,
                max_age_days: None,
                busy: vec![1],
                want: vec!["b2-d01"],
            },
            Case {
                name: "brokers are counted separately",
                rows: vec![(1, 1, V), (2, 2, V), (1, 3, V), (2, 4, V), (3, 5, V)],
                keep_last: 1,
                max_age_days: None,
                busy: vec![],
                want: vec!["b1-d01", "b2-d02"],
            },
            Case {
                name: "no verified snapshot: the newest not known bad is kept",
                rows: vec![(1, 1, NEW), (1, 2, NEW), (1, 3, BAD)],
                keep_last: 1,
                max_age_days: Some(1),
                busy: vec![],
                want: vec!["b1-d01", "b1-d03"],
            },
        ];
        let now = day(20);
        for c in cases {
            let p = plan(
                &snaps(&c.rows),
                &Policy {
                    keep_last: c.keep_last,
                    max_age: c.max_age_days.map(|d| Duration::from_secs(d * 86400)),
                },
                &c.busy.iter().copied().collect(),
                None,
                now,
            );
            assert_eq!(ids(&p), c.want, "case {:?}", c.name);
        }
    }

    /// The newest complete, verified set keeps every one of its snapshots
    /// past keep_last and max_age, and the dry run says so per snapshot.
    #[test]
    fn the_newest_complete_verified_set_is_kept_whole() {
        let rows = snaps(&[
            (1, 1, V),
            (1, 2, V),
            (1, 3, V),
            (2, 1, V),
            (2, 2, V),
            (2, 3, NEW),
        ]);
        let policy = Policy {
            keep_last: 1,
            max_age: Some(Duration::from_secs(86400)),
        };
        let none = BTreeSet::new();
        let without = plan(&rows, &policy, &none, None, day(4));
        assert_eq!(ids(&without), ["b1-d01", "b1-d02", "b2-d01"]);
        let set = KeptSet {
            set_id: "S1".into(),
            snapshots: [(1, "b1-d01".to_string()), (2, "b2-d01".to_string())]
                .into_iter()
                .collect(),
        };
        let with = plan(&rows, &policy, &none, Some(&set), day(4));
        assert_eq!(ids(&with), ["b1-d02"]);
        assert_eq!(
            with.held,
            vec![
                (
                    1,
                    "snapshot b1-d01 kept: in set S1, the newest complete verified set".into()
                ),
                (
                    2,
                    "snapshot b2-d01 kept: in set S1, the newest complete verified set".into()
                ),
            ]
        );
        // A broker with a snapshot in progress stays untouched as before.
        let busy: BTreeSet<i32> = [1].into_iter().collect();
        let p = plan(&rows, &policy, &busy, Some(&set), day(4));
        assert!(ids(&p).is_empty(), "{p:?}");
    }

    #[test]
    fn reasons_and_held_brokers_are_reported() {
        let p = plan(
            &snaps(&[(1, 1, V), (1, 2, V), (2, 1, V)]),
            &Policy {
                keep_last: 1,
                max_age: None,
            },
            &[2].into_iter().collect(),
            None,
            day(3),
        );
        assert_eq!(p.delete[0].reason, "beyond the newest 1 (keep_last)");
        assert_eq!(
            p.held,
            vec![(2, "a snapshot of this broker is in progress".into())]
        );
    }
}
