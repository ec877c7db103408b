//! The agent's HTTP client to the coordinator ([`kafka_snapshot_model::protocol`]): JSON
//! bodies, the bearer token on every request, a timeout on every request,
//! and retries with backoff for what a flaky network or a restarting
//! coordinator causes.

use kafka_snapshot::config::CoordinatorSection;
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::protocol::{
    Ack, ErrorBody, Heartbeat, HeartbeatResponse, Notice, PollRequest, PollResponse, Release,
    SnapshotReport,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// 409: the lease epoch is no longer current (or a state conflict). The
    /// agent must stop acting under that lease.
    #[error("{what}: the coordinator refused a stale lease (409): {message}")]
    Stale { what: &'static str, message: String },
    /// 401/403: the token is wrong, missing, or of another broker. Retried
    /// at the poll interval (an operator may fix the token file or the
    /// coordinator's registry), but never counted as a network hiccup.
    #[error("{what}: the coordinator refused our token ({status}): {message}; check coordinator.token_file and the coordinator's agent registry")]
    Unauthorized {
        what: &'static str,
        status: u16,
        message: String,
    },
    /// Another 4xx: our request is wrong; retrying will not help.
    #[error("{what}: the coordinator rejected the request ({status}): {message}")]
    Rejected {
        what: &'static str,
        status: u16,
        message: String,
    },
    /// Connection refused, timeout, 5xx, 429, unparseable answer: retried.
    #[error("{what}: {message}")]
    Transient { what: &'static str, message: String },
    /// Retrying stopped because the caller gave up (shutdown or deadline).
    #[error("{what}: gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        what: &'static str,
        attempts: u32,
        last: String,
    },
}

impl CallError {
    pub fn is_stale(&self) -> bool {
        matches!(self, CallError::Stale { .. })
    }

    fn retryable(&self) -> bool {
        matches!(self, CallError::Transient { .. })
    }
}

/// First pause after a failed request; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The pause before retry number `attempt` (1-based): exponential, each
/// pause 50-100% of the nominal one so that a fleet of agents does not
/// hammer a coordinator that comes back in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let nominal = BACKOFF_START
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let mut b = [0u8; 2];
    let frac = if getrandom::fill(&mut b).is_ok() {
        u16::from_le_bytes(b) as f64 / u16::MAX as f64
    } else {
        1.0
    };
    nominal.mul_f64(0.5 + 0.5 * frac)
}

pub struct CoordinatorClient {
    http: reqwest::Client,
    base: String,
    token: String,
    pub broker: i32,
}

impl CoordinatorClient {
    pub fn new(cfg: &CoordinatorSection, config_path: &Path, broker: i32) -> Result<Self> {
        let cfg_err = |key: &str, message: String| Error::Config {
            file: config_path.to_path_buf(),
            message: format!("{key}: {message}"),
        };
        let mut b = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout)
            .user_agent(format!(
                "kafka-snapshot-agent/{}",
                kafka_snapshot::AGENT_VERSION
            ))
            // A redirect could carry the token somewhere else.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                cfg_err(
                    "coordinator.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                cfg_err(
                    "coordinator.ca_file",
                    format!("{} is not a PEM certificate bundle: {e}", ca.display()),
                )
            })?;
            if certs.is_empty() {
                return Err(cfg_err(
                    "coordinator.ca_file",
                    format!("{} holds no certificate", ca.display()),
                ));
            }
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| cfg_err("coordinator", format!("building the HTTP client: {e}")))?;
        Ok(CoordinatorClient {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            token: cfg.read_token(config_path)?,
            broker,
        })
    }

    /// One request, no retry.
    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &Q,
    ) -> Result<A, CallError> {
        let transient = |message: String| CallError::Transient { what, message };
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(body).map_err(|e| CallError::Rejected {
            what,
            status: 0,
            message: format!("encoding the request: {e}"),
        })?;
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transient(describe(&url, &e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transient(format!("{url}: reading the answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                transient(format!(
                    "{url}: answer {status} is not the expected JSON ({e}): {}",
                    snippet(&bytes)
                ))
            });
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| snippet(&bytes));
        let code = status.as_u16();
        Err(match code {
            409 => CallError::Stale { what, message },
            401 | 403 => CallError::Unauthorized {
                what,
                status: code,
                message,
            },
            429 | 500..=599 => transient(format!("{url}: {status}: {message}")),
            _ => CallError::Rejected {
                what,
                status: code,
                message,
            },
        })
    }

    /// Retries transient failures with backoff until `deadline` passes or
    /// `cancel` turns true (then [`CallError::GaveUp`]).
    async fn call_retrying<Q: Serialize, A: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &Q,
        deadline: Option<Duration>,
        cancel: Option<watch::Receiver<bool>>,
    ) -> Result<A, CallError> {
        let started = Instant::now();
        let mut attempt = 0;
        let mut cancel = cancel;
        loop {
            attempt += 1;
            let err = match self.call(what, path, body).await {
                Ok(a) => return Ok(a),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => e,
            };
            let pause = backoff(attempt);
            let out_of_time = deadline.is_some_and(|d| started.elapsed() + pause > d);
            let cancelled = cancel.as_ref().is_some_and(|c| *c.borrow());
            if out_of_time || cancelled {
                return Err(CallError::GaveUp {
                    what,
                    attempts: attempt,
                    last: err.to_string(),
                });
            }
            tracing::warn!(error = %err, attempt, retry_in_ms = pause.as_millis() as u64, "coordinator request failed; retrying");
            let sleep = tokio::time::sleep(pause);
            tokio::pin!(sleep);
            if let Some(c) = cancel.as_mut() {
                tokio::select! {
                    _ = &mut sleep => continue,
                    changed = c.changed() => if changed.is_ok() {
                        continue;
                    },
                }
            }
            // No cancel, or its sender is gone and none can come any more
            // (`changed()` fails at once): the whole pause, not a tight loop.
            sleep.await;
        }
    }

    pub async fn poll(&self, req: &PollRequest) -> Result<PollResponse, CallError> {
        self.call("poll", "/v1/agent/poll", req).await
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatResponse, CallError> {
        self.call("heartbeat", "/v1/agent/heartbeat", hb).await
    }

    /// Ends a lease, retrying for up to `deadline`.
    pub async fn release(&self, r: &Release, deadline: Duration) -> Result<Ack, CallError> {
        self.call_retrying("release", "/v1/agent/release", r, Some(deadline), None)
            .await
    }

    /// Reports an archive finished without the lease; retried until it is
    /// delivered or `cancel` turns true.
    pub async fn report(
        &self,
        r: &SnapshotReport,
        cancel: watch::Receiver<bool>,
    ) -> Result<Ack, CallError> {
        self.call_retrying("report", "/v1/agent/report", r, None, Some(cancel))
            .await
    }

    /// Sends a notice, retrying until the coordinator answers or `cancel`
    /// turns true.
    pub async fn notice(
        &self,
        n: &Notice,
        cancel: watch::Receiver<bool>,
    ) -> Result<Ack, CallError> {
        self.call_retrying("notice", "/v1/agent/notice", n, None, Some(cancel))
            .await
    }
}

/// What went wrong with a request, in the words an operator needs.
fn describe(url: &str, e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        format!("{url}: no answer within coordinator.request_timeout")
    } else if e.is_connect() {
        format!("{url}: cannot connect")
    } else {
        format!("{url}: request failed")
    };
    // reqwest's own Display hides the cause (refused, TLS, DNS).
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for attempt in 1..40 {
            let b = backoff(attempt);
            let nominal = BACKOFF_START
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(b >= nominal / 2 && b <= nominal, "{attempt}: {b:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
