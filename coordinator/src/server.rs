//! `coordinator serve`: the HTTP API (agents and the operator CLI), the
//! Prometheus endpoint, and the background loop that expires leases,
//! starts cycles, checks the cluster, verifies new snapshots and applies
//! retention.

use crate::config::CoordinatorConfig;
use crate::engine::{ApiError, Candidate, Engine, PollDecision};
use crate::{health, metrics, retention, tls};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use kafka_snapshot::catalog;
use kafka_snapshot::kafka::fetch::KafkaClient;
use kafka_snapshot::kafka::view::ClusterView;
use kafka_snapshot::storage::{self, ColdStore, StoreOptions};
use kafka_snapshot::{Error, Result};
use kafka_snapshot_model::layout::SnapshotRef;
use kafka_snapshot_model::protocol::{
    Ack, ErrorBody, Heartbeat, Notice, PollRequest, PollResponse, Release, SnapshotReport,
    MAX_BODY_BYTES,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Shared {
    pub engine: Mutex<Engine>,
    pub cfg: CoordinatorConfig,
    /// sha256(token) -> broker.
    agents: HashMap<[u8; 32], i32>,
    admin: [u8; 32],
    kafka: KafkaClient,
    pub store: Arc<dyn ColdStore>,
    verifying: AtomicBool,
    /// Cold storage could not be read: no verification before then.
    verify_after: Mutex<Option<Instant>>,
    pruning: AtomicBool,
    last_check: Mutex<Option<Instant>>,
}

impl Shared {
    pub fn new(
        cfg: CoordinatorConfig,
        engine: Engine,
        store: Arc<dyn ColdStore>,
    ) -> Result<Shared> {
        let admin = read_token(&cfg.server.admin_token_file)?;
        let mut agents = HashMap::new();
        for a in &cfg.agents {
            let mut h = [0u8; 32];
            hex::decode_to_slice(a.token_sha256.to_ascii_lowercase(), &mut h).map_err(|e| {
                Error::Usage(format!("agents token_sha256 of broker {}: {e}", a.broker))
            })?;
            agents.insert(h, a.broker);
        }
        let kafka = KafkaClient::new(&cfg.kafka).map_err(Error::Usage)?;
        Ok(Shared {
            engine: Mutex::new(engine),
            agents,
            admin: Sha256::digest(admin.as_bytes()).into(),
            kafka,
            store,
            verifying: AtomicBool::new(false),
            verify_after: Mutex::new(None),
            pruning: AtomicBool::new(false),
            last_check: Mutex::new(None),
            cfg,
        })
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // A panic while holding the lock leaves SQLite consistent (every
        // change is a transaction), so the state is still good to use.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn view(&self) -> std::result::Result<ClusterView, String> {
        self.kafka.view().await
    }
}

/// Reads a bearer token file; it must not be readable by others.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("token file {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "token file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let t = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("token file {}", path.display()), e))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(Error::Usage(format!(
            "token file {}: the token is shorter than 16 characters",
            path.display()
        )));
    }
    Ok(t)
}

// ----- errors and auth ------------------------------------------------------

pub struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code.is_server_error() {
            tracing::error!("{e}");
        }
        HttpError(code, e.to_string())
    }
}

type HttpResult<T> = std::result::Result<T, HttpError>;

fn bearer_hash(headers: &HeaderMap) -> HttpResult<[u8; 32]> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            HttpError(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <token>)".into(),
            )
        })?;
    Ok(Sha256::digest(value.trim().as_bytes()).into())
}

/// The broker the agent token belongs to; the body must name the same one.
fn agent_auth(s: &Shared, headers: &HeaderMap, claimed: i32) -> HttpResult<i32> {
    let h = bearer_hash(headers)?;
    match s.agents.get(&h) {
        None => Err(HttpError(
            StatusCode::UNAUTHORIZED,
            "unknown agent token".into(),
        )),
        Some(b) if *b != claimed => Err(HttpError(
            StatusCode::FORBIDDEN,
            format!("this token belongs to broker {b}, not broker {claimed}"),
        )),
        Some(b) => Ok(*b),
    }
}

fn admin_auth(s: &Shared, headers: &HeaderMap) -> HttpResult<()> {
    // Comparing digests: equal length, and no prefix of the secret leaks.
    if bearer_hash(headers)? == s.admin {
        Ok(())
    } else {
        Err(HttpError(
            StatusCode::UNAUTHORIZED,
            "wrong admin token".into(),
        ))
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> HttpResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
}

type S = State<Arc<Shared>>;

// ----- agent endpoints -------------------------------------------------------

async fn poll(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<PollResponse>> {
    let req: PollRequest = parse(&body)?;
    agent_auth(&s, &headers, req.broker)?;
    let now = Utc::now();
    let decision = s.engine().poll(&req, now)?;
    let action = match decision {
        PollDecision::Answer(a) => a,
        PollDecision::Check(cand) => {
            let check = match s.view().await {
                Ok(v) => match &cand {
                    Candidate::Snapshot { broker, .. } => {
                        health::snapshot_check(&v, *broker, s.cfg.gate.low_replication_policy)
                    }
                    Candidate::Restore { broker, .. } => {
                        health::restore_check(&v, *broker, &s.cfg.brokers())
                    }
                },
                Err(e) => Err(format!("cluster not reachable: {e}")),
            };
            if let Err(e) = &check {
                tracing::info!(broker = req.broker, "no lease yet: {e}");
            }
            s.engine().grant(&cand, check, &req, Utc::now())?
        }
    };
    Ok(Json(PollResponse {
        action,
        poll_interval_ms: s.cfg.lease.poll_interval.as_millis() as u64,
    }))
}

async fn heartbeat(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<impl IntoResponse> {
    let hb: Heartbeat = parse(&body)?;
    agent_auth(&s, &headers, hb.broker)?;
    let r = s.engine().heartbeat(&hb, Utc::now())?;
    Ok(Json(r))
}

async fn release(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<Ack>> {
    let r: Release = parse(&body)?;
    agent_auth(&s, &headers, r.broker)?;
    s.engine().release(&r, Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

async fn report(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<Ack>> {
    let r: SnapshotReport = parse(&body)?;
    agent_auth(&s, &headers, r.broker)?;
    s.engine().report(&r, Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

async fn notice(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<Ack>> {
    let n: Notice = parse(&body)?;
    agent_auth(&s, &headers, n.broker)?;
    s.engine().notice(&n, Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

// ----- operator endpoints ------------------------------------------------------

async fn status(State(s): S, headers: HeaderMap) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().status(Utc::now())?))
}

#[derive(Deserialize)]
struct BrokerQuery {
    broker: Option<i32>,
}

async fn snapshots(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<BrokerQuery>,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().snapshots(q.broker)?))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunNow {
    pub broker: Option<i32>,
}

async fn run_now(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: RunNow = parse(&body)?;
    let id = s.engine().run_now(r.broker, Utc::now())?;
    Ok(Json(serde_json::json!({ "cycle_id": id })))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewRestore {
    pub broker: i32,
    pub snapshot_id: Option<String>,
    pub force: bool,
}

async fn create_restore(
    State(s): S,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: NewRestore = parse(&body)?;
    let order =
        s.engine()
            .create_restore(r.broker, r.snapshot_id.as_deref(), r.force, Utc::now())?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn get_restore(
    State(s): S,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().restore(id)?))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Verified {
    pub cluster_id: String,
    pub broker: i32,
    pub snapshot_id: String,
    pub error: Option<String>,
}

async fn verified(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<Ack>> {
    admin_auth(&s, &headers)?;
    let v: Verified = parse(&body)?;
    let result = match v.error {
        None => Ok(()),
        Some(e) => Err(e),
    };
    s.engine()
        .record_verification(&v.cluster_id, v.broker, &v.snapshot_id, result, Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    pub dry_run: bool,
}

async fn prune(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: PruneRequest = parse(&body)?;
    let s2 = s.clone();
    let result = tokio::task::spawn_blocking(move || run_retention(&s2, r.dry_run))
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(result))
}

async fn rebuild(State(s): S, headers: HeaderMap) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let s2 = s.clone();
    let r = tokio::task::spawn_blocking(move || rebuild_catalog(&s2))
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(r))
}

async fn metrics_endpoint(State(s): S) -> HttpResult<impl IntoResponse> {
    let text = metrics::render(&s.engine(), Utc::now())?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/agent/poll", post(poll))
        .route("/v1/agent/heartbeat", post(heartbeat))
        .route("/v1/agent/release", post(release))
        .route("/v1/agent/report", post(report))
        .route("/v1/agent/notice", post(notice))
        .route("/v1/status", get(status))
        .route("/v1/snapshots", get(snapshots))
        .route("/v1/snapshots/verified", post(verified))
        .route("/v1/run-now", post(run_now))
        .route("/v1/restores", post(create_restore))
        .route("/v1/restores/{id}", get(get_restore))
        .route("/v1/prune", post(prune))
        .route("/v1/catalog/rebuild", post(rebuild))
        .route("/metrics", get(metrics_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

// ----- retention, verification, rebuild ----------------------------------------

#[derive(Debug, serde::Serialize, Deserialize)]
pub struct PruneResult {
    pub dry_run: bool,
    pub deleted: Vec<PrunedView>,
    pub held: Vec<(i32, String)>,
    pub error: Option<String>,
}

#[derive(Debug, serde::Serialize, Deserialize)]
pub struct PrunedView {
    pub broker: i32,
    pub snapshot_id: String,
    pub reason: String,
}

/// Plans retention and, unless `dry_run`, deletes in plan order, stopping
/// at the first storage error.
pub fn run_retention(s: &Shared, dry_run: bool) -> PruneResult {
    let now = Utc::now();
    let plan = {
        let e = s.engine();
        let (cands, busy) = match (e.retention_candidates(), e.busy_brokers()) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(err), _) | (_, Err(err)) => {
                return PruneResult {
                    dry_run,
                    deleted: Vec::new(),
                    held: Vec::new(),
                    error: Some(err.to_string()),
                }
            }
        };
        retention::plan(
            &cands,
            &retention::Policy {
                keep_last: s.cfg.retention.keep_last as usize,
                max_age: s.cfg.retention.max_age,
            },
            &busy,
            now,
        )
    };
    let mut out = PruneResult {
        dry_run,
        deleted: Vec::new(),
        held: plan.held.clone(),
        error: None,
    };
    for d in &plan.delete {
        if !dry_run {
            let r = delete_one(s, d);
            if let Err(e) = r {
                out.error = Some(format!(
                    "snapshot {} of broker {}: {e}",
                    d.snapshot_id, d.broker
                ));
                break;
            }
        }
        out.deleted.push(PrunedView {
            broker: d.broker,
            snapshot_id: d.snapshot_id.clone(),
            reason: d.reason.clone(),
        });
    }
    if !dry_run {
        if let Err(e) = s.engine().prune_done(out.error.as_deref(), Utc::now()) {
            tracing::error!("recording retention: {e}");
        }
    }
    out
}

/// Out of the catalog first, then out of cold storage (see
/// `Engine::begin_deletion`). Each engine call is its own statement: the
/// engine lock must not be held while storage is worked on.
fn delete_one(s: &Shared, d: &retention::Deletion) -> std::result::Result<(), String> {
    let begun = s.engine().begin_deletion(d, Utc::now());
    begun.map_err(|e| e.to_string())?;
    if let Err(e) = delete_from_store(s.store.as_ref(), d) {
        let e = e.to_string();
        let recorded = s.engine().deletion_failed(d, &e, Utc::now());
        if let Err(e2) = recorded {
            tracing::error!("recording a failed deletion: {e2}");
        }
        return Err(e);
    }
    let done = s.engine().mark_deleted(d, Utc::now());
    done.map_err(|e| e.to_string())
}

fn delete_from_store(store: &dyn ColdStore, d: &retention::Deletion) -> Result<()> {
    let listed = catalog::list(store, Some(&d.cluster_id), Some(d.broker))?;
    match listed.iter().find(|l| l.snap.snapshot_id == d.snapshot_id) {
        Some(l) => catalog::delete_snapshot(store, l),
        // Already gone from storage: the catalog just catches up.
        None => Ok(()),
    }
}

#[derive(Debug, serde::Serialize, Deserialize)]
pub struct RebuildResult {
    pub before: usize,
    pub after: usize,
    pub skipped: Vec<String>,
}

pub fn rebuild_catalog(s: &Shared) -> std::result::Result<RebuildResult, HttpError> {
    let listed = catalog::list(s.store.as_ref(), None, None).map_err(|e| {
        HttpError(
            StatusCode::BAD_GATEWAY,
            format!("listing cold storage: {e}"),
        )
    })?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for l in listed {
        match l.status {
            catalog::Status::Complete(m) => {
                found.push(kafka_snapshot_model::protocol::SnapshotSummary::of(&m))
            }
            catalog::Status::Incomplete => {
                skipped.push(format!("{}: incomplete (no manifest)", l.snap.prefix()))
            }
            catalog::Status::Damaged(e) => {
                skipped.push(format!("{}: damaged: {e}", l.snap.prefix()))
            }
        }
    }
    let (before, after) = s.engine().rebuild_catalog(&found, Utc::now())?;
    Ok(RebuildResult {
        before,
        after,
        skipped,
    })
}

/// Verifies one snapshot and records the result. Returns false when cold
/// storage could not be read (nothing is recorded: the snapshot is not
/// known to be bad, and is verified again later).
fn verify_one(s: &Shared, cluster: &str, broker: i32, id: &str) -> bool {
    let snap = SnapshotRef {
        cluster_id: cluster.to_string(),
        broker,
        snapshot_id: id.to_string(),
    };
    let result = match kafka_snapshot::verify::verify(s.store.as_ref(), &snap) {
        Ok(_) => Ok(()),
        Err(e) if e.is_unreadable() => {
            tracing::warn!(
                broker,
                snapshot = id,
                error = %e,
                "cannot read the snapshot back from cold storage now; verifying it again in {:?}",
                VERIFY_RETRY
            );
            return false;
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = s
        .engine()
        .record_verification(cluster, broker, id, result, Utc::now())
    {
        tracing::error!("recording the verification of {id}: {e}");
    }
    true
}

/// Pause before verifying again after cold storage could not be read.
const VERIFY_RETRY: Duration = Duration::from_secs(10);

// ----- the background loop ---------------------------------------------------

async fn background(s: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let needs = match s.engine().tick(Utc::now()) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("coordinator tick: {e}");
                continue;
            }
        };
        if needs.settle_check || needs.final_check {
            let due = {
                let mut last = s.last_check.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= s.cfg.gate.check_interval);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                let check = match s.view().await {
                    Ok(v) => health::in_sync(&v, &s.cfg.brokers()),
                    Err(e) => Err(format!("cluster not reachable: {e}")),
                };
                if let Err(e) = s.engine().apply_cluster_check(check, Utc::now()) {
                    tracing::error!("applying the cluster check: {e}");
                }
            }
        }
        let verify_due = s
            .verify_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| Instant::now() >= t);
        if needs.verify && verify_due && !s.verifying.swap(true, Ordering::SeqCst) {
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || {
                loop {
                    // Its own statement: the engine lock must not be held
                    // while verifying (verify_one records the result).
                    let next = s2.engine().next_unverified();
                    let Ok(Some((c, b, id))) = next else { break };
                    if !verify_one(&s2, &c, b, &id) {
                        *s2.verify_after.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now() + VERIFY_RETRY);
                        break;
                    }
                }
                s2.verifying.store(false, Ordering::SeqCst);
            });
        }
        if needs.prune
            && s.cfg.retention.prune_after_cycle
            && !s.pruning.swap(true, Ordering::SeqCst)
        {
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || {
                let r = run_retention(&s2, false);
                tracing::info!(deleted = r.deleted.len(), error = ?r.error, "retention applied");
                s2.pruning.store(false, Ordering::SeqCst);
            });
        } else if needs.prune && !s.cfg.retention.prune_after_cycle {
            let _ = s.engine().prune_done(None, Utc::now());
        }
    }
}

/// Opens cold storage off the runtime: the S3 store runs its own I/O
/// runtime and blocks on it, which is not allowed on a runtime thread.
pub async fn open_store(cfg: &CoordinatorConfig) -> Result<Box<dyn ColdStore>> {
    let url = cfg.storage.url.clone();
    let opts = StoreOptions::from_config(&cfg.storage);
    tokio::task::spawn_blocking(move || storage::open(&url, &opts))
        .await
        .map_err(|e| Error::Usage(format!("opening cold storage: {e}")))?
}

/// Runs the coordinator until SIGTERM/SIGINT.
pub async fn serve(cfg: CoordinatorConfig, on_ready: impl FnOnce()) -> Result<()> {
    let conn = crate::db::open(&cfg.server.database)?;
    let store: Arc<dyn ColdStore> = Arc::from(open_store(&cfg).await?);
    let engine = Engine::new(conn, cfg.clone());
    let shared = Arc::new(Shared::new(cfg.clone(), engine, store)?);
    let app = router(shared.clone());
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", cfg.server.listen), e))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(background(shared.clone(), rx.clone()));
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        kafka_snapshot::service::notify_stopping();
        let _ = tx.send(true);
    });
    tracing::info!(
        listen = %cfg.server.listen,
        tls = cfg.server.tls_cert.is_some(),
        brokers = ?cfg.brokers(),
        schedule = %cfg.schedule(),
        "coordinator serving"
    );
    on_ready();
    match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = tls::acceptor(cert, key)?;
            tls::serve(listener, acceptor, app, rx).await
        }
        _ => {
            let mut rx = rx;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
                .map_err(|e| Error::io("serving HTTP", e))
        }
    }
}
