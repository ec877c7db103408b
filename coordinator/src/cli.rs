//! Operator commands: they talk to the running coordinator over its API
//! with the admin token, and print a table (or `--json`).

use crate::config::CoordinatorConfig;
use kafka_snapshot::{Error, Result};
use kafka_snapshot_model::api::{
    CancelCycle, ClusterRestoreView, CycleCancelled, NewClusterRestore, NewRestore, PruneRequest,
    PruneResult, RebuildResult, RestoreView, RunNow, SetView, SnapshotRow, StatusView, Suspend,
    Verified,
};
use kafka_snapshot_model::layout::SnapshotRef;
use kafka_snapshot_model::protocol::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(cfg: &CoordinatorConfig) -> Result<Api> {
        let token = crate::shared::read_token(&cfg.server.admin_token_file)?;
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10));
        let base = cfg.api_url();
        if base.starts_with("https://") {
            let ca = cfg
                .server
                .tls_ca
                .as_ref()
                .or(cfg.server.tls_cert.as_ref())
                .ok_or_else(|| {
                    Error::Usage(
                        "server.url is https but neither server.tls_ca nor server.tls_cert is set"
                            .into(),
                    )
                })?;
            let pem =
                std::fs::read(ca).map_err(|e| Error::io(format!("TLS CA {}", ca.display()), e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Usage(format!("TLS CA {}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| Error::Usage(format!("HTTP client: {e}")))?;
        Ok(Api { base, token, http })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            Error::unavailable(
                format!("coordinator at {}: {what}", self.base),
                format!("{e} (is `kafka-snapshot-coordinator serve` running?)"),
            )
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::unavailable(format!("coordinator at {}: {what}", self.base), e))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            let message = format!("{status}: {msg}");
            return Err(match status.as_u16() {
                400 | 401 | 403 => Error::Usage(format!("{what}: {message}")),
                500.. => Error::unavailable(what, message),
                _ => Error::refused(what, message),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Internal(format!("{what}: unexpected answer: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)), what)
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        what: &str,
    ) -> Result<T> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            what,
        )
        .await
    }
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

pub fn human_bytes(n: i64) -> String {
    let n = n as f64;
    for (unit, div) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= div as f64 {
            return format!("{:.1} {unit}", n / div as f64);
        }
    }
    format!("{n} B")
}

pub fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

pub fn format_status(s: &StatusView) -> String {
    let mut out = String::new();
    let lease = match &s.lease {
        None => "free".to_string(),
        Some(l) if l.state == "active" => format!(
            "held by broker {} for a {} (epoch {}, phase {}{})",
            l.broker,
            l.kind,
            l.epoch,
            l.phase.as_deref().unwrap_or("granted"),
            l.progress
                .as_deref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        ),
        Some(l) => format!(
            "CLOSED after lease {} of broker {}: {}; {}",
            l.epoch,
            l.broker,
            l.reason.as_deref().unwrap_or("ended badly"),
            l.progress
                .as_deref()
                .unwrap_or("waiting for the cluster to be back in sync")
        ),
    };
    out.push_str(&format!(
        "cluster:  {}\n",
        s.cluster_id.as_deref().unwrap_or(
            "UNKNOWN (not reached yet, and no [cluster] id): no snapshot is listed, kept, \
             deleted or restored until it is known"
        )
    ));
    out.push_str(&format!("lease:    {lease}\n"));
    out.push_str(&format!(
        "schedule: {}{}; next due {}\n",
        s.schedule,
        match (&s.suspended_because, s.suspended) {
            (Some(why), _) => format!(" (SUSPENDED: {why})"),
            (None, true) => " (SUSPENDED)".to_string(),
            (None, false) => String::new(),
        },
        s.next_due.as_deref().unwrap_or("-")
    ));
    if !s.uncovered_brokers.is_empty() {
        out.push_str(&format!(
            "NOT COVERED: broker(s) {:?} are in the cluster but no [[agents]] entry covers them: \
             they are never snapshotted\n",
            s.uncovered_brokers
        ));
    }
    if let Some(c) = &s.cycle {
        let done = c.brokers.iter().filter(|b| b.state == "done").count();
        out.push_str(&format!(
            "cycle:    {} ({}) {}: {done}/{} nodes done, started {}{}\n",
            c.id,
            c.trigger,
            c.state,
            c.brokers.len(),
            c.started_at,
            c.message
                .as_deref()
                .map(|m| format!("; {m}"))
                .unwrap_or_default()
        ));
    }
    if let Some(r) = &s.cluster_restore {
        out.push_str(&format!(
            "cluster restore: order {} from set {}: {}{}\n",
            r.id,
            r.set_id,
            r.state.to_uppercase(),
            r.message
                .as_deref()
                .or(r.progress.as_deref())
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
        if r.state == "running" || r.state == "recovering" || r.state == "failed" {
            for n in &r.nodes {
                out.push_str(&format!(
                    "  node {} ({}): {}{}\n",
                    n.node,
                    n.role,
                    n.state,
                    n.message
                        .as_deref()
                        .or(n.progress.as_deref())
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    out.push('\n');
    let cycle_state = |b: i32| {
        s.cycle.as_ref().and_then(|c| {
            c.brokers
                .iter()
                .find(|x| x.broker == b)
                .map(|x| (x.state.clone(), x.reason.clone()))
        })
    };
    let rows: Vec<Vec<String>> = s
        .brokers
        .iter()
        .map(|b| {
            let lease = match &s.lease {
                Some(l) if l.broker == b.broker => format!("{} {}", l.state, l.epoch),
                _ => "-".into(),
            };
            let state = match (&b.last_error, b.broker_running) {
                (Some(e), _) if e.contains("LEFT STOPPED") => "BROKER STOPPED".to_string(),
                _ => b.phase.clone(),
            };
            let next = match cycle_state(b.broker) {
                Some((st, _)) if st == "pending" || st == "leased" || st == "archiving" => {
                    format!("this cycle ({st})")
                }
                _ if s.suspended => "suspended".into(),
                _ => s.next_due.clone().unwrap_or_else(|| "-".into()),
            };
            vec![
                b.broker.to_string(),
                b.role.to_string(),
                b.hostname.clone().unwrap_or_else(|| "-".into()),
                state,
                lease,
                b.last_snapshot_age_seconds
                    .map(human_age)
                    .unwrap_or_else(|| "never".into()),
                b.last_snapshot_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
                b.last_downtime_ms
                    .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                next,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "ROLE",
            "HOST",
            "STATE",
            "LEASE",
            "LAST SNAPSHOT",
            "SIZE",
            "DOWNTIME",
            "NEXT DUE",
        ],
        &rows,
    ));
    let problems: Vec<String> = s
        .brokers
        .iter()
        .filter_map(|b| {
            b.last_error
                .as_ref()
                .map(|e| format!("broker {}: {e}", b.broker))
        })
        .chain(
            s.brokers
                .iter()
                .filter(|b| b.clock_skewed_snapshots > 0)
                .map(|b| {
                    format!(
                "broker {}: {} snapshot(s) committed by a clock far from the coordinator's \
                 (see SKEW in `snapshots`): check the clock of {}",
                b.broker,
                b.clock_skewed_snapshots,
                b.hostname.as_deref().unwrap_or("its host")
            )
                }),
        )
        .chain(s.cycle.iter().flat_map(|c| {
            c.brokers.iter().filter_map(|b| {
                b.reason
                    .as_ref()
                    .map(|r| format!("broker {} ({}): {r}", b.broker, b.state))
            })
        }))
        .collect();
    if !problems.is_empty() {
        out.push_str("\nproblems:\n");
        for p in problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out.push_str(&moved_aside(s));
    out
}

/// The data restores moved aside on the nodes' hosts, one line each:
/// when, how big, and what becomes of it.
fn moved_aside(s: &StatusView) -> String {
    let mut out = String::new();
    for b in &s.brokers {
        for m in &b.moved_aside {
            if out.is_empty() {
                out.push_str("\nmoved aside by restores (the data the nodes had before):\n");
            }
            let when = m
                .moved_at
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "at an unknown time".into());
            let fate = match m.remove_after {
                Some(t) => format!(
                    "removed by the agent after {} once the node is in sync",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => "kept until removed by hand (restore.remove_moved_aside_after)".into(),
            };
            out.push_str(&format!(
                "  node {}: {} ({}, moved {when}): {fate}\n",
                b.broker,
                m.path,
                human_bytes(i64::try_from(m.bytes).unwrap_or(i64::MAX))
            ));
        }
    }
    out
}

/// `committed - seen` when beyond the limit the coordinator flags ("CLOCK
/// +3d 2h"), "-" otherwise.
fn skew(ms: Option<i64>) -> String {
    let limit = crate::engine::CLOCK_SKEW_LIMIT.as_millis() as u64;
    match ms.filter(|ms| ms.unsigned_abs() > limit) {
        Some(ms) => format!(
            "CLOCK {}{}",
            if ms < 0 { "-" } else { "+" },
            crate::schedule::humantime(std::time::Duration::from_secs(ms.unsigned_abs() / 1000))
        ),
        None => "-".into(),
    }
}

/// The catalog as a table. COMMITTED is the agent's clock; SEEN the
/// coordinator's, which orders and ages snapshots.
pub fn format_snapshots(rows: &[SnapshotRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.broker.to_string(),
                s.snapshot_id.clone(),
                s.committed.clone(),
                s.seen_at.clone().unwrap_or_else(|| "-".into()),
                skew(s.clock_skew_ms),
                s.capture.clone(),
                human_bytes(s.data_bytes),
                human_bytes(s.archive_bytes),
                s.downtime_ms
                    .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                match (s.verify_ok, s.verified_contents) {
                    (Some(true), Some(false)) => "ok as stored (encrypted)".into(),
                    (Some(true), _) => "ok".into(),
                    (Some(false), _) => {
                        format!("FAILED: {}", s.verify_message.as_deref().unwrap_or(""))
                    }
                    (None, _) => "not yet".into(),
                },
            ]
        })
        .collect();
    table(
        &[
            "BROKER",
            "SNAPSHOT",
            "COMMITTED",
            "SEEN",
            "SKEW",
            "CAPTURE",
            "DATA",
            "ARCHIVE",
            "DOWNTIME",
            "VERIFIED",
        ],
        &rows,
    )
}

/// The snapshot sets, one block each: a header line (id, cycle, start
/// and end, complete, verified, and whether retention keeps it), then one
/// line per node with its snapshot and what the catalog says of it.
pub fn format_sets(sets: &[SetView]) -> String {
    if sets.is_empty() {
        return "no snapshot sets (a set is recorded by every cycle of every node)\n".into();
    }
    let mut out = String::new();
    for s in sets {
        let complete = match (&s.finished_at, s.complete) {
            (None, _) => "cycle running".to_string(),
            (Some(_), true) => "complete".to_string(),
            (Some(_), false) => format!(
                "INCOMPLETE (no snapshot of node {})",
                s.nodes
                    .iter()
                    .filter(|n| n.snapshot_id.is_none())
                    .map(|n| n.node.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let verified = if s.verified {
            "verified"
        } else {
            "not verified"
        };
        let kept = if s.kept {
            ", kept by retention (the newest complete verified set)"
        } else {
            ""
        };
        let stored = if s.stored || s.finished_at.is_none() {
            ""
        } else {
            ", record not in cold storage yet"
        };
        out.push_str(&format!(
            "set {} (cycle {}): {complete}, {verified}{kept}{stored}\n  started {}, finished {}\n",
            s.set_id,
            s.cycle_id,
            s.started_at,
            s.finished_at.as_deref().unwrap_or("-"),
        ));
        let rows: Vec<Vec<String>> = s
            .nodes
            .iter()
            .map(|n| {
                vec![
                    format!("  {}", n.node),
                    n.snapshot_id.clone().unwrap_or_else(|| "-".into()),
                    n.status.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["  NODE", "SNAPSHOT", "STATUS"], &rows));
    }
    out
}

pub async fn sets(api: &Api, json: bool) -> Result<()> {
    let sets: Vec<SetView> = api.get("/v1/sets", "snapshot sets").await?;
    if json {
        print_json(&sets);
    } else {
        print!("{}", format_sets(&sets));
    }
    Ok(())
}

pub async fn status(api: &Api, json: bool) -> Result<()> {
    let s: StatusView = api.get("/v1/status", "status").await?;
    if json {
        print_json(&s);
    } else {
        print!("{}", format_status(&s));
    }
    Ok(())
}

pub async fn snapshots(api: &Api, broker: Option<i32>, json: bool) -> Result<()> {
    let path = match broker {
        Some(b) => format!("/v1/snapshots?broker={b}"),
        None => "/v1/snapshots".into(),
    };
    let rows: Vec<SnapshotRow> = api.get(&path, "snapshots").await?;
    if json {
        print_json(&rows);
    } else {
        print!("{}", format_snapshots(&rows));
    }
    Ok(())
}

pub async fn run_now(api: &Api, broker: Option<i32>) -> Result<()> {
    let r: serde_json::Value = api
        .post("/v1/run-now", &RunNow { broker }, "run-now")
        .await?;
    println!(
        "cycle {} started for {}",
        r["cycle_id"],
        broker
            .map(|b| format!("broker {b}"))
            .unwrap_or_else(|| "every broker".into())
    );
    Ok(())
}

pub async fn suspend(api: &Api, reason: Option<String>) -> Result<()> {
    let _: serde_json::Value = api
        .post("/v1/suspend", &Suspend { reason }, "suspend")
        .await?;
    println!(
        "suspended: no scheduled cycle starts and no snapshot lease is granted until \
         `kafka-snapshot-coordinator resume` (a lease in progress finishes; restores still go)"
    );
    Ok(())
}

pub async fn resume(api: &Api) -> Result<()> {
    let _: serde_json::Value = api
        .post("/v1/resume", &serde_json::json!({}), "resume")
        .await?;
    println!("resumed");
    Ok(())
}

/// What `cancel` cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    Cycle(Option<i64>),
    Restore(i64),
    ClusterRestore(i64),
}

pub async fn cancel(api: &Api, what: Cancelled) -> Result<()> {
    match what {
        Cancelled::Cycle(cycle_id) => {
            let r: CycleCancelled = api
                .post("/v1/cycles/cancel", &CancelCycle { cycle_id }, "cancel")
                .await?;
            match (r.aborted_lease, r.broker) {
                (Some(epoch), Some(broker)) => println!(
                    "cycle {} cancelled; lease {epoch} of broker {broker} is being aborted: its \
                     agent starts the broker again if it stopped it, and no lease is granted \
                     until the cluster is back in sync",
                    r.cycle_id
                ),
                _ => println!("cycle {} cancelled", r.cycle_id),
            }
        }
        Cancelled::ClusterRestore(id) => {
            let o: ClusterRestoreView = api
                .post(
                    &format!("/v1/cluster-restores/{id}/cancel"),
                    &serde_json::json!({}),
                    "cancel",
                )
                .await?;
            println!(
                "cluster restore order {id}: {}: {}",
                o.state,
                o.message.as_deref().unwrap_or_default()
            );
        }
        Cancelled::Restore(id) => {
            let o: RestoreView = api
                .post(
                    &format!("/v1/restores/{id}/cancel"),
                    &serde_json::json!({}),
                    "cancel",
                )
                .await?;
            if o.state == "running" {
                println!(
                    "restore order {id} (broker {}) is being aborted: its agent stops at its next \
                     safe point with the broker running; follow it with `status`",
                    o.broker
                );
            } else {
                println!("restore order {id} (broker {}): {}", o.broker, o.state);
            }
        }
    }
    Ok(())
}

pub async fn restore(
    api: &Api,
    broker: i32,
    snapshot: Option<String>,
    force: bool,
    yes: bool,
    wait: bool,
) -> Result<bool> {
    if !yes {
        let question = format!(
            "Restore broker {broker} from {}? It is stopped if it runs; its current log dirs are \
             moved aside, not deleted.",
            snapshot.as_deref().unwrap_or("its newest snapshot")
        );
        let refusal = format!(
            "restore stops broker {broker} if it runs and replaces its log dirs (the current \
             ones are moved aside): confirm with --yes"
        );
        if !confirm(&question, &refusal)? {
            println!("not restored");
            return Ok(false);
        }
    }
    let order: RestoreView = api
        .post(
            "/v1/restores",
            &NewRestore {
                broker,
                snapshot_id: snapshot,
                force,
            },
            "restore",
        )
        .await?;
    println!(
        "restore order {}: broker {} from snapshot {}",
        order.id, order.broker, order.snapshot_id
    );
    if !wait {
        return Ok(true);
    }
    let mut last = String::new();
    loop {
        let o: RestoreView = api
            .get(&format!("/v1/restores/{}", order.id), "restore progress")
            .await?;
        let done = matches!(o.state.as_str(), "done" | "failed");
        let line = format!(
            "{}{}{}",
            o.state,
            o.phase
                .as_deref()
                .map(|p| format!(" / {p}"))
                .unwrap_or_default(),
            o.progress
                .as_deref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        );
        if line != last && !done {
            println!("  {line}");
            last = line;
        }
        match o.state.as_str() {
            "done" => {
                println!(
                    "restore order {} done: {}",
                    o.id,
                    o.message.unwrap_or_default()
                );
                return Ok(true);
            }
            "failed" => {
                eprintln!(
                    "restore order {} FAILED: {}",
                    o.id,
                    o.message.unwrap_or_default()
                );
                return Ok(false);
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Asks before a step that stops nodes: `--yes` answers for scripts; a
/// non-interactive run without it is refused with `refusal`.
fn confirm(question: &str, refusal: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(refusal.to_string()));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Orders a whole-cluster restore and follows it, node by node.
pub async fn restore_cluster(
    api: &Api,
    set: Option<String>,
    force: bool,
    yes: bool,
    wait: bool,
) -> Result<bool> {
    if !yes {
        let question = format!(
            "Restore EVERY node of the cluster from {}? Every node is stopped if it runs; its \
             current log dirs are moved aside, not deleted; records written after the set's \
             snapshots are not in it.",
            set.as_deref()
                .map(|s| format!("set {s}"))
                .unwrap_or_else(|| "the newest complete, verified snapshot set".into())
        );
        if !confirm(
            &question,
            "restore --cluster stops every node of the cluster and replaces its log dirs (the \
             current ones are moved aside): confirm with --yes",
        )? {
            println!("not restored");
            return Ok(false);
        }
    }
    let order: ClusterRestoreView = api
        .post(
            "/v1/cluster-restores",
            &NewClusterRestore { set_id: set, force },
            "restore --cluster",
        )
        .await?;
    println!(
        "cluster restore order {}: cluster {} from set {} ({} nodes)",
        order.id,
        order.cluster_id,
        order.set_id,
        order.nodes.len()
    );
    for n in &order.nodes {
        println!("  node {} ({}): snapshot {}", n.node, n.role, n.snapshot_id);
    }
    if !wait {
        return Ok(true);
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let o: ClusterRestoreView = api
            .get(
                &format!("/v1/cluster-restores/{}", order.id),
                "cluster restore progress",
            )
            .await?;
        for n in &o.nodes {
            let line = format!(
                "node {} ({}): {}{}{}",
                n.node,
                n.role,
                n.state,
                n.phase
                    .as_deref()
                    .map(|p| format!(" / {p}"))
                    .unwrap_or_default(),
                n.progress
                    .as_deref()
                    .or(n.message.as_deref())
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            );
            if last.get(&n.node.to_string()) != Some(&line) {
                println!("  {line}");
                last.insert(n.node.to_string(), line);
            }
        }
        let line = format!(
            "cluster: {}{}",
            o.state,
            o.progress
                .as_deref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        );
        if last.get("cluster") != Some(&line) && o.state == "recovering" {
            println!("  {line}");
            last.insert("cluster".into(), line);
        }
        match o.state.as_str() {
            "done" => {
                println!(
                    "cluster restore order {} done: {}",
                    o.id,
                    o.message.unwrap_or_default()
                );
                return Ok(true);
            }
            "failed" | "cancelled" => {
                eprintln!(
                    "cluster restore order {} {}: {}",
                    o.id,
                    o.state.to_uppercase(),
                    o.message.unwrap_or_default()
                );
                return Ok(false);
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Verifies snapshots by reading them back from cold storage here, and
/// records the results in the coordinator's catalog.
/// Which snapshots `verify` reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    One(String),
    All,
}

pub async fn verify(api: &Api, cfg: &CoordinatorConfig, which: Which, json: bool) -> Result<bool> {
    let rows: Vec<SnapshotRow> = api.get("/v1/snapshots", "snapshots").await?;
    let chosen: Vec<SnapshotRow> = match &which {
        Which::One(id) => {
            let r: Vec<_> = rows.into_iter().filter(|r| &r.snapshot_id == id).collect();
            if r.is_empty() {
                return Err(Error::refused(
                    format!("snapshot {id}"),
                    "is not in the catalog",
                ));
            }
            r
        }
        Which::All => rows,
    };
    let store = crate::jobs::open_store(cfg).await?;
    let store: std::sync::Arc<dyn kafka_snapshot::storage::ColdStore> = std::sync::Arc::from(store);
    let mut all_ok = true;
    let mut results = Vec::new();
    for r in chosen {
        let snap = SnapshotRef {
            cluster_id: r.cluster_id.clone(),
            broker: r.broker,
            snapshot_id: r.snapshot_id.clone(),
        };
        let st = store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            kafka_snapshot::verify::verify(st.as_ref(), &snap).map(|(_, rep)| rep)
        })
        .await
        .map_err(|e| Error::Internal(format!("verify worker: {e}")))?;
        if let Some(e) = outcome.as_ref().err().filter(|e| e.is_unreadable()) {
            // Says nothing about the snapshot: report it, record nothing.
            all_ok = false;
            if !json {
                println!(
                    "broker {} snapshot {}: NOT VERIFIED, cold storage could not be read: {e}",
                    r.broker, r.snapshot_id
                );
            }
            results.push(serde_json::json!({
                "broker": r.broker, "snapshot_id": r.snapshot_id, "ok": false,
                "unreadable": true, "error": e.to_string(),
            }));
            continue;
        }
        let error = outcome.as_ref().err().map(|e| e.to_string());
        let contents_checked = outcome.as_ref().ok().map(|rep| rep.contents_checked);
        if error.is_some() {
            // Retention may have deleted it while it was read: then it is
            // no longer in the catalog, and nothing is wrong with it.
            let now: Vec<SnapshotRow> = api.get("/v1/snapshots", "snapshots").await?;
            if !now.iter().any(|n| {
                n.snapshot_id == r.snapshot_id
                    && n.broker == r.broker
                    && n.cluster_id == r.cluster_id
            }) {
                if !json {
                    println!(
                        "broker {} snapshot {}: deleted by retention meanwhile",
                        r.broker, r.snapshot_id
                    );
                }
                continue;
            }
        }
        if !json {
            match &error {
                None if contents_checked == Some(false) => println!(
                    "broker {} snapshot {}: ok as stored (encrypted: size and SHA-256 of the \
                     archive; its files need the identity, kafka-snapshot-agent archive verify \
                     --identity)",
                    r.broker, r.snapshot_id
                ),
                None => println!("broker {} snapshot {}: ok", r.broker, r.snapshot_id),
                Some(e) => println!(
                    "broker {} snapshot {}: FAILED: {e}",
                    r.broker, r.snapshot_id
                ),
            }
        }
        all_ok &= error.is_none();
        let _: serde_json::Value = api
            .post(
                "/v1/snapshots/verified",
                &Verified {
                    cluster_id: r.cluster_id.clone(),
                    broker: r.broker,
                    snapshot_id: r.snapshot_id.clone(),
                    error: error.clone(),
                    contents_checked,
                },
                "recording the result",
            )
            .await?;
        results.push(serde_json::json!({
            "broker": r.broker, "snapshot_id": r.snapshot_id, "ok": error.is_none(), "error": error,
            "contents_checked": contents_checked,
        }));
    }
    if json {
        print_json(&results);
    }
    Ok(all_ok)
}

pub async fn prune(api: &Api, dry_run: bool, json: bool) -> Result<bool> {
    let r: PruneResult = api
        .post("/v1/prune", &PruneRequest { dry_run }, "prune")
        .await?;
    if json {
        print_json(&r);
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        if r.deleted.is_empty() && r.abandoned_removed.is_empty() {
            println!("nothing to delete");
        }
        for d in &r.deleted {
            println!(
                "{verb} broker {} snapshot {}: {}",
                d.broker, d.snapshot_id, d.reason
            );
        }
        for (b, why) in &r.held {
            if why.starts_with("snapshot ") {
                println!("broker {b}: {why}");
            } else {
                println!("left broker {b} alone: {why}");
            }
        }
        let verb = if dry_run { "would drop" } else { "dropped" };
        for id in &r.sets_dropped {
            println!("{verb} snapshot set {id}: none of its snapshots is left");
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        for p in &r.abandoned_removed {
            println!("{verb} incomplete snapshot {p}: a newer snapshot of that node is complete");
        }
        if let Some(o) = &r.objects {
            println!(
                "content objects: {} referenced ({}), {} referenced by no snapshot ({})",
                o.usage.referenced,
                human_bytes(o.usage.referenced_bytes as i64),
                o.usage.unreferenced,
                human_bytes(o.usage.unreferenced_bytes as i64)
            );
            if o.removed > 0 {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "{verb} {} content objects ({})",
                    o.removed,
                    human_bytes(o.removed_bytes as i64)
                );
            }
            if o.in_grace > 0 {
                println!(
                    "kept {} unreferenced content objects until retention.object_grace has passed",
                    o.in_grace
                );
            }
            if let Some(why) = &o.deferred {
                println!("removed no content objects this time: {why}");
            }
        }
        if let Some(e) = &r.error {
            eprintln!("stopped at a storage error: {e}");
        }
    }
    Ok(r.error.is_none())
}

pub async fn rebuild(api: &Api, json: bool) -> Result<()> {
    let r: RebuildResult = api
        .post(
            "/v1/catalog/rebuild",
            &serde_json::json!({}),
            "catalog rebuild",
        )
        .await?;
    if json {
        print_json(&r);
    } else {
        println!(
            "catalog rebuilt from cold storage: {} complete snapshots (the catalog had {})",
            r.after, r.before
        );
        for s in &r.skipped {
            println!("  not listed: {s}");
        }
        for (cluster, n) in &r.other_clusters {
            println!("  not listed: {n} snapshot(s) of another cluster, {cluster}");
        }
        if let Some(o) = &r.objects {
            println!(
                "content objects: {} referenced ({}), {} referenced by no snapshot ({}; \
                 retention removes them)",
                o.referenced,
                human_bytes(o.referenced_bytes as i64),
                o.unreferenced,
                human_bytes(o.unreferenced_bytes as i64)
            );
        }
        println!("snapshot sets read back: {}", r.sets);
        for s in &r.sets_rejected {
            println!("  NOT TRUSTED, not listed: set record {s}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_snapshot_model::api::SetNodeView;

    fn node(node: i32, id: Option<&str>, status: &str) -> SetNodeView {
        SetNodeView {
            node,
            snapshot_id: id.map(String::from),
            status: status.into(),
        }
    }

    #[test]
    fn sets_are_listed_with_what_is_missing_and_what_retention_keeps() {
        let set = |id: &str, complete: bool, nodes: Vec<SetNodeView>| SetView {
            set_id: id.into(),
            cluster_id: Some("c".into()),
            cycle_id: 7,
            started_at: "2026-12-02T03:00:00.000Z".into(),
            finished_at: Some("2026-12-02T03:04:12.345Z".into()),
            complete,
            verified: complete,
            kept: complete,
            stored: true,
            source: "cycle".into(),
            nodes,
        };
        let text = format_sets(&[
            set(
                "20261202T030000.000Z-cycle7",
                true,
                vec![
                    node(1, Some("20261202T030001.210Z-5f0c2a91"), "verified"),
                    node(2, Some("20261202T030105.877Z-0b9e4d3c"), "verified"),
                    node(3, Some("20261202T030208.402Z-c41a7e20"), "verified"),
                ],
            ),
            set(
                "20261203T030000.000Z-cycle8",
                false,
                vec![
                    node(1, None, "missing"),
                    node(2, Some("20261203T030105.877Z-0b9e4d3c"), "not verified"),
                    node(3, None, "missing"),
                ],
            ),
        ]);
        let want = "\
set 20261202T030000.000Z-cycle7 (cycle 7): complete, verified, kept by retention (the newest complete verified set)
  started 2026-12-02T03:00:00.000Z, finished 2026-12-02T03:04:12.345Z
  NODE  SNAPSHOT                       STATUS
  1     20261202T030001.210Z-5f0c2a91  verified
  2     20261202T030105.877Z-0b9e4d3c  verified
  3     20261202T030208.402Z-c41a7e20  verified
set 20261203T030000.000Z-cycle8 (cycle 7): INCOMPLETE (no snapshot of node 1, 3), not verified
  started 2026-12-02T03:00:00.000Z, finished 2026-12-02T03:04:12.345Z
  NODE  SNAPSHOT                       STATUS
  1     -                              missing
  2     20261203T030105.877Z-0b9e4d3c  not verified
  3     -                              missing
";
        assert_eq!(text, want);
        assert!(format_sets(&[]).starts_with("no snapshot sets"));
    }
}
