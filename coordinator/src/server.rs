//! The coordinator's HTTP API: the agents' endpoints (token per broker),
//! the operator's (admin token), `/metrics` and `/healthz`; and
//! [`serve`], which runs it with the background jobs until shut down.

use crate::config::CoordinatorConfig;
use crate::engine::{ApiError, Candidate, Engine, PollDecision};
use crate::jobs::{self, RebuildError};
use crate::shared::Shared;
use crate::{health, metrics, tls};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use kafka_snapshot::storage::ColdStore;
use kafka_snapshot::{Error, Result};
use kafka_snapshot_model::api::{
    CancelCycle, NewClusterRestore, NewRestore, PruneRequest, RunNow, Suspend, Verified,
};
use kafka_snapshot_model::protocol::{
    Ack, ErrorBody, Heartbeat, Notice, PollRequest, PollResponse, Release, SnapshotReport,
    MAX_BODY_BYTES,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

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
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
    match s.settings().agents.get(&h).copied() {
        None => Err(HttpError(
            StatusCode::UNAUTHORIZED,
            "unknown agent token".into(),
        )),
        Some(b) if b != claimed => Err(HttpError(
            StatusCode::FORBIDDEN,
            format!("this token belongs to broker {b}, not broker {claimed}"),
        )),
        Some(b) => Ok(b),
    }
}

fn admin_auth(s: &Shared, headers: &HeaderMap) -> HttpResult<()> {
    // Comparing digests: equal length, and no prefix of the secret leaks.
    if bearer_hash(headers)? == s.settings().admin {
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
                    Candidate::Snapshot { broker, .. } => health::snapshot_check(
                        &v,
                        *broker,
                        s.cfg().role_of(*broker).unwrap_or_default(),
                        s.cfg().gate.low_replication_policy,
                    ),
                    Candidate::Restore { broker, .. } => health::restore_check(
                        &v,
                        *broker,
                        &s.cfg().brokers(),
                        &s.cfg().controllers(),
                    ),
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
        poll_interval_ms: s.cfg().lease.poll_interval.as_millis() as u64,
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
    let mut st = s.engine().status(Utc::now())?;
    st.uncovered_brokers = s.uncovered().into_iter().collect();
    Ok(Json(st))
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

async fn sets(State(s): S, headers: HeaderMap) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().sets()?))
}

async fn run_now(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: RunNow = parse(&body)?;
    let id = s.engine().run_now(r.broker, Utc::now())?;
    Ok(Json(serde_json::json!({ "cycle_id": id })))
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

/// A whole-cluster restore: the coordinator first looks at the cluster,
/// which is refused while it serves clients (unless forced).
async fn create_cluster_restore(
    State(s): S,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: NewClusterRestore = parse(&body)?;
    let serving = match s.view().await {
        Ok(v) => health::serving(&v),
        Err(e) => {
            tracing::info!("cluster restore ordered; the cluster does not answer: {e}");
            None
        }
    };
    let order =
        s.engine()
            .create_cluster_restore(r.set_id.as_deref(), r.force, serving, Utc::now())?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn get_cluster_restore(
    State(s): S,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().cluster_restore(id)?))
}

async fn cancel_cluster_restore(
    State(s): S,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().cancel_cluster_restore(id, Utc::now())?))
}

async fn cancel_restore(
    State(s): S,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().cancel_restore(id, Utc::now())?))
}

async fn cancel_cycle(
    State(s): S,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: CancelCycle = parse(&body)?;
    Ok(Json(s.engine().cancel_cycle(r.cycle_id, Utc::now())?))
}

async fn suspend(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<Ack>> {
    admin_auth(&s, &headers)?;
    let r: Suspend = parse(&body)?;
    s.engine().suspend(r.reason.as_deref(), Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

async fn resume(State(s): S, headers: HeaderMap) -> HttpResult<Json<Ack>> {
    admin_auth(&s, &headers)?;
    s.engine().resume(Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

async fn get_restore(
    State(s): S,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    Ok(Json(s.engine().restore(id)?))
}

async fn verified(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<Json<Ack>> {
    admin_auth(&s, &headers)?;
    let v: Verified = parse(&body)?;
    let result = match v.error {
        None => Ok(v.contents_checked),
        Some(e) => Err(e),
    };
    s.engine()
        .record_verification(&v.cluster_id, v.broker, &v.snapshot_id, result, Utc::now())?;
    Ok(Json(Ack { ok: true }))
}

async fn prune(State(s): S, headers: HeaderMap, body: Bytes) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let r: PruneRequest = parse(&body)?;
    let s2 = s.clone();
    let result = tokio::task::spawn_blocking(move || jobs::run_retention(&s2, r.dry_run))
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(result))
}

async fn rebuild(State(s): S, headers: HeaderMap) -> HttpResult<impl IntoResponse> {
    admin_auth(&s, &headers)?;
    let s2 = s.clone();
    let r = tokio::task::spawn_blocking(move || jobs::rebuild_catalog(&s2))
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match r {
        Ok(r) => Ok(Json(r)),
        Err(RebuildError::Storage(e)) => Err(HttpError(StatusCode::BAD_GATEWAY, e)),
        Err(RebuildError::Engine(e)) => Err(e.into()),
    }
}

async fn metrics_endpoint(State(s): S) -> HttpResult<impl IntoResponse> {
    let uncovered = s.uncovered();
    let text = metrics::render(&s.engine(), &uncovered, Utc::now())?;
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
        .route("/v1/sets", get(sets))
        .route("/v1/run-now", post(run_now))
        .route("/v1/restores", post(create_restore))
        .route("/v1/restores/{id}", get(get_restore))
        .route("/v1/restores/{id}/cancel", post(cancel_restore))
        .route("/v1/cluster-restores", post(create_cluster_restore))
        .route("/v1/cluster-restores/{id}", get(get_cluster_restore))
        .route(
            "/v1/cluster-restores/{id}/cancel",
            post(cancel_cluster_restore),
        )
        .route("/v1/cycles/cancel", post(cancel_cycle))
        .route("/v1/suspend", post(suspend))
        .route("/v1/resume", post(resume))
        .route("/v1/prune", post(prune))
        .route("/v1/catalog/rebuild", post(rebuild))
        .route("/metrics", get(metrics_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Runs the coordinator on `listener` until `shutdown` completes: the HTTP
/// API and the background jobs. Returns once both have stopped (a job in
/// progress ends after its current step). Every config received on
/// `reloads` is applied as a reload (see [`Shared::reload`]). `on_ready`
/// runs once it serves.
pub async fn serve(
    cfg: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: tokio::sync::mpsc::Receiver<CoordinatorConfig>,
    on_ready: impl FnOnce(),
) -> Result<()> {
    let conn = crate::store::open(&cfg.server.database)?;
    let store: Arc<dyn ColdStore> = Arc::from(jobs::open_store(&cfg).await?);
    let engine = Engine::new(conn, cfg.clone());
    let shared = Arc::new(Shared::new(cfg.clone(), engine, store)?);
    let app = router(shared.clone());
    let acceptor = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(jobs::background(shared.clone(), rx.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let reloading = shared.clone();
    tokio::spawn(async move {
        while let Some(new) = reloads.recv().await {
            match reloading.reload(new) {
                Ok(changed) if changed.is_empty() => {
                    tracing::info!("config reloaded: nothing changed")
                }
                Ok(changed) => tracing::info!(changed = %changed.join(", "), "config reloaded"),
                Err(e) => tracing::error!("config reload refused: {e}"),
            }
        }
    });
    tracing::info!(
        listen = %cfg.server.listen,
        tls = acceptor.is_some(),
        brokers = ?cfg.brokers(),
        schedule = %cfg.schedule(),
        "coordinator serving"
    );
    on_ready();
    let served = match acceptor {
        Some(acceptor) => tls::serve(listener, acceptor, app, rx).await,
        None => {
            let mut rx = rx;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
                .map_err(|e| Error::io("serving HTTP", e))
        }
    };
    if let Err(e) = background.await {
        tracing::error!("the background loop failed: {e}");
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` runs on the listener it is given and returns, with its
    /// background loop ended, once the shutdown future completes: the
    /// caller owns signals (tests pass a channel, `main` SIGTERM/SIGINT).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_stops_when_its_shutdown_future_completes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::shared::tests::config(dir.path(), "");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
        let (_reload, reloads) = tokio::sync::mpsc::channel(1);
        let server = serve(
            cfg,
            listener,
            async {
                let _ = stopped.await;
            },
            reloads,
            move || {
                let _ = ready_tx.send(());
            },
        );
        let client = async move {
            ready.await.expect("serve says it is ready");
            let body = reqwest::get(format!("http://{addr}/healthz"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(body, "ok\n");
            stop.send(()).unwrap();
        };
        let (served, ()) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            tokio::join!(server, client)
        })
        .await
        .expect("serve returns after its shutdown");
        served.expect("a clean shutdown");
    }
}
