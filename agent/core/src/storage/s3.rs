//! The `s3://bucket/prefix` backend: AWS S3 or any S3-compatible server
//! (MinIO, Ceph RGW, Garage).
//!
//! Requests go through Apache Arrow's `object_store` (SigV4 signing,
//! multipart uploads with checksums, timeouts), driven from a small private
//! tokio runtime because [`ColdStore`] is blocking. The two S3 calls
//! `object_store` does not offer, ListMultipartUploads and a HEAD that asks
//! for the stored checksums, are signed with its own `AwsAuthorizer`.
//!
//! Retries are ours ([`Shared::retry`]), not `object_store`'s: its backoff
//! grows so slowly that 10 retries ride out only a second or two of outage,
//! and it does not send again a part the server refused as damaged.
//!
//! Nothing is visible under a key until its upload completes
//! ([`transfer`]), so an interrupted run leaves no object behind, only a
//! pending multipart upload; [`ColdStore::pending_uploads`] finds those for
//! the next run to abort.

mod settings;
mod transfer;

pub use settings::parse_s3_url;
pub(crate) use settings::S3Settings;

use super::throttle::Throttle;
use super::{check_key, ColdStore, ObjectMeta, ObjectWriter, PendingUpload};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use kafka_snapshot_model::error::{Error, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer, AwsCredential, Checksum};
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind};
use object_store::client::{HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use std::error::Error as StdError;
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An S3 bucket (and key prefix) as cold storage. Blocking like every
/// [`ColdStore`]: call it from plain threads (or `spawn_blocking`), never
/// from inside an async task.
pub struct S3Store {
    rt: Arc<Rt>,
    shared: Arc<Shared>,
}

/// The private runtime. Shut down without waiting when the last user goes,
/// which is allowed even inside another runtime's task (a plain drop is
/// not): every task it runs has been waited for or aborted by then.
pub(crate) struct Rt(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Rt {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("runtime present until dropped")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What the runtime's tasks use. The runtime itself is kept out of it: a
/// runtime must not be dropped by one of its own tasks.
pub(crate) struct Shared {
    client: Arc<AmazonS3>,
    http: HttpClient,
    credential: AwsCredential,
    settings: S3Settings,
    bucket_url: String,
    throttle: Option<Arc<Throttle>>,
}

impl S3Store {
    /// Builds the client and makes one request (a listing of at most one
    /// key under the prefix, without retries), so that a wrong endpoint,
    /// bucket, region or key fails now, quickly, naming the setting.
    pub fn open(settings: S3Settings, throttle: Option<Arc<Throttle>>) -> Result<S3Store> {
        let location = location(&settings);
        limit_allocator_retention();
        let fail = |message: String| Error::Storage {
            location: location.clone(),
            message,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("starting the I/O runtime: {e}")))?;
        let options = ClientOptions::new()
            .with_timeout(settings.request_timeout)
            .with_connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .with_allow_http(true)
            .with_user_agent(HeaderValue::from_static(concat!(
                "kafka-snapshot-agent/",
                env!("CARGO_PKG_VERSION")
            )));
        // Every call is retried by `Shared::retry` instead.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: settings.deadline,
        };
        let creds = &settings.credentials.value;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.url.bucket)
            .with_region(&settings.region.value)
            .with_access_key_id(&creds.key_id)
            .with_secret_access_key(&creds.secret)
            .with_client_options(options.clone())
            .with_retry(retry)
            // Every part carries its SHA-256, which the server checks and
            // keeps: how an upload is confirmed (see `transfer`).
            .with_checksum_algorithm(Checksum::SHA256);
        if let Some(t) = &creds.token {
            builder = builder.with_token(t);
        }
        builder = match (&settings.endpoint, settings.path_style) {
            // object_store takes a virtual-hosted endpoint with the bucket in it.
            (Some(_), false) => builder
                .with_endpoint(settings.bucket_url())
                .with_virtual_hosted_style_request(true),
            (Some(e), true) => builder
                .with_endpoint(&e.value)
                .with_virtual_hosted_style_request(false),
            (None, path_style) => builder.with_virtual_hosted_style_request(!path_style),
        };
        let client = builder
            .build()
            .map_err(|e| fail(format!("configuring the S3 client: {e}")))?;
        let http = ReqwestConnector::default()
            .connect(&options)
            .map_err(|e| fail(format!("configuring the HTTP client: {e}")))?;
        let shared = Arc::new(Shared {
            client: Arc::new(client),
            http,
            credential: AwsCredential {
                key_id: creds.key_id.clone(),
                secret_key: creds.secret.clone(),
                token: creds.token.clone(),
            },
            bucket_url: settings.bucket_url(),
            settings,
            throttle,
        });
        let store = S3Store {
            rt: Arc::new(Rt(Some(rt))),
            shared,
        };
        let probe_prefix = store.shared.full_key_prefix("");
        let query = [
            ("list-type", "2"),
            ("max-keys", "1"),
            ("prefix", probe_prefix.as_str()),
        ];
        let probe = store.shared.signed(Method::GET, None, &query, &[], 0);
        store
            .block(store.shared.settings.request_timeout * 2, probe)
            .map_err(|f| fail(store.shared.describe(&f)))?;
        tracing::debug!(store = %location, endpoint = %store.shared.settings.endpoint_text(), "S3 store reachable");
        Ok(store)
    }

    /// Runs `fut` on the runtime, giving up after `limit`.
    fn block<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        block_until(&self.rt, Instant::now() + limit, fut)
    }

    fn op<T>(&self, key: &str, fut: impl Future<Output = Result<T, Failure>>) -> Result<T> {
        self.block(self.shared.settings.deadline, fut)
            .map_err(|f| self.shared.error(key, self.shared.describe(&f)))
    }
}

/// Part and range buffers are megabytes each, allocated on one thread and
/// freed on another. Served by mmap they go back to the OS when freed;
/// glibc would otherwise raise its mmap threshold after the first such free
/// and keep them in per-thread arenas, adding tens of MiB to the peak RSS
/// that `part_size` and `parts_in_flight` are meant to bound.
fn limit_allocator_retention() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Runs `fut` on `rt` from a blocking thread, giving up at `deadline`.
pub(crate) fn block_until<T>(
    rt: &tokio::runtime::Runtime,
    deadline: Instant,
    fut: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    rt.block_on(async {
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Deadline),
        }
    })
}

fn location(s: &S3Settings) -> String {
    if s.url.prefix.is_empty() {
        format!("s3://{}", s.url.bucket)
    } else {
        format!("s3://{}/{}", s.url.bucket, s.url.prefix)
    }
}

impl Shared {
    /// The object key of a store key.
    fn full_key(&self, key: &str) -> String {
        self.full_key_prefix(key)
    }

    /// The object key prefix of a store key prefix (which may be empty or
    /// end with `/`).
    fn full_key_prefix(&self, prefix: &str) -> String {
        let root = &self.settings.url.prefix;
        if root.is_empty() {
            prefix.to_string()
        } else {
            format!("{root}/{prefix}")
        }
    }

    /// The store key of an object key, if it lies under the store's prefix.
    fn store_key<'a>(&self, full: &'a str) -> Option<&'a str> {
        let root = &self.settings.url.prefix;
        if root.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(root.as_str())?.strip_prefix('/')
        }
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        check_key(key)?;
        ObjPath::parse(self.full_key(key))
            .map_err(|e| Error::Usage(format!("invalid storage key {key:?}: {e}")))
    }

    fn error(&self, key: &str, message: String) -> Error {
        Error::Storage {
            location: format!("{}/{key}", location(&self.settings)),
            message,
        }
    }

    /// What went wrong, for an operator: which setting to look at.
    fn describe(&self, f: &Failure) -> String {
        let s = &self.settings;
        match f {
            Failure::Connect(m) => format!("cannot connect to {}: {m}", s.endpoint_text()),
            Failure::Network(m) => format!("the connection to {} broke: {m}", s.endpoint_text()),
            Failure::Timeout(m) => format!(
                "no answer from {} within storage.s3.request_timeout ({:?}): {m}",
                s.endpoint_text(),
                s.request_timeout
            ),
            Failure::Deadline => format!(
                "storage.s3.deadline ({:?}) passed before the transfer finished",
                s.deadline
            ),
            Failure::Status {
                status,
                code,
                message,
            } => {
                let detail = match (code.is_empty(), message.is_empty()) {
                    (true, true) => status.to_string(),
                    (false, true) => format!("{status} {code}"),
                    (true, false) => format!("{status}: {message}"),
                    (false, false) => format!("{status} {code}: {message}"),
                };
                let region_problem = code == "AuthorizationHeaderMalformed"
                    || message.to_ascii_lowercase().contains("region");
                if region_problem {
                    format!(
                        "the server rejects region {:?} (from {}): {detail}",
                        s.region.value, s.region.setting
                    )
                } else if code == "NoSuchBucket" {
                    format!(
                        "bucket {:?} (from the store URL) does not exist at {}: {detail}",
                        s.url.bucket,
                        s.endpoint_text()
                    )
                } else if *status == 401 || *status == 403 {
                    format!(
                        "access denied by {}: {detail}; check the credentials from {} and \
                         that they may read and write bucket {:?}",
                        s.endpoint_text(),
                        s.credentials.setting,
                        s.url.bucket
                    )
                } else if status.is_redirection() {
                    format!(
                        "the server redirects ({detail}): the bucket is in another region than \
                         {:?} (from {}), or storage.s3.path_style must change",
                        s.region.value, s.region.setting
                    )
                } else {
                    format!("{} answered {detail}", s.endpoint_text())
                }
            }
            Failure::Other(m) => m.clone(),
        }
    }

    /// Runs `op` again after a failure that may pass (connection refused or
    /// broken, timeout, 5xx, 429, a body damaged on the way), at most
    /// `retries` times, pausing with exponential backoff and jitter: 0.1 s
    /// doubling up to 15 s, each pause 50-100% of that. Ten retries ride out
    /// 28 to 55 s of outage.
    pub(crate) async fn retry_n<T, Fut>(
        &self,
        what: &str,
        retries: usize,
        mut op: impl FnMut() -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(f) if attempt < retries && f.retryable() => {
                    let pause = backoff(attempt);
                    tracing::info!(what, error = %self.describe(&f), retry = attempt + 1,
                        of = retries, pause_ms = pause.as_millis() as u64, "retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(f) => return Err(f),
            }
        }
    }

    /// [`Shared::retry_n`] with `storage.s3.retries`.
    pub(crate) async fn retry<T, Fut>(
        &self,
        what: &str,
        op: impl FnMut() -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.retry_n(what, self.settings.retries, op).await
    }

    /// A request `object_store` does not offer, signed with its SigV4
    /// signer; retried `retries` times.
    async fn signed(
        &self,
        method: Method,
        full_key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&'static str, &str)],
        retries: usize,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Failure> {
        let mut url = self.bucket_url.clone();
        if let Some(k) = full_key {
            url.push('/');
            url.push_str(&encode(k, true));
        }
        if !query.is_empty() {
            url.push('?');
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false)))
                .collect();
            url.push_str(&q.join("&"));
        }
        let what = format!("{method} {url}");
        self.retry_n(&what, retries, || self.signed_once(&method, &url, headers))
            .await
    }

    async fn signed_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<(StatusCode, HeaderMap, Bytes), Failure> {
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| Failure::Other(format!("building request {url}: {e}")))?;
        for (k, v) in headers {
            let v = HeaderValue::from_str(v).map_err(|e| Failure::Other(e.to_string()))?;
            req.headers_mut().insert(*k, v);
        }
        AwsAuthorizer::new(&self.credential, "s3", &self.settings.region.value)
            .try_authorize(&mut req, None)
            .map_err(|e| Failure::Other(format!("signing request: {e}")))?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| Failure::from_http(&e))?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = body.bytes().await.map_err(|e| Failure::from_http(&e))?;
        if status.is_success() {
            Ok((status, parts.headers, body))
        } else {
            Err(Failure::from_status(status, &body))
        }
    }

    /// Size and stored SHA-256 checksum (base64, `-N` for N parts) of an
    /// object, or None if it does not exist.
    async fn head_checksum(&self, key: &str) -> Result<Option<(u64, Option<String>)>, Failure> {
        let full = self.full_key(key);
        let r = self
            .signed(
                Method::HEAD,
                Some(&full),
                &[],
                &[("x-amz-checksum-mode", "ENABLED")],
                self.settings.retries,
            )
            .await;
        let headers = match r {
            Ok((_, h, _)) => h,
            Err(Failure::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                return Ok(None)
            }
            Err(f) => return Err(f),
        };
        let size = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Failure::Other("HEAD answered without a Content-Length".into()))?;
        let checksum = headers
            .get("x-amz-checksum-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Some((size, checksum)))
    }

    async fn list_pending(&self, prefix: &str) -> Result<Vec<PendingUpload>, Failure> {
        let full = self.full_key_prefix(prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut query = vec![("uploads", ""), ("prefix", full.as_str())];
            if !key_marker.is_empty() {
                query.push(("key-marker", key_marker.as_str()));
                query.push(("upload-id-marker", id_marker.as_str()));
            }
            let (_, _, body) = self
                .signed(Method::GET, None, &query, &[], self.settings.retries)
                .await?;
            let page: ListUploads = quick_xml::de::from_reader(body.as_ref()).map_err(|e| {
                Failure::Other(format!("unreadable ListMultipartUploads answer: {e}"))
            })?;
            for u in page.uploads {
                if let Some(key) = self.store_key(&u.key) {
                    out.push(PendingUpload {
                        key: key.to_string(),
                        upload_id: u.upload_id,
                        initiated: u.initiated,
                    });
                }
            }
            let next_key = page.next_key_marker.unwrap_or_default();
            if !page.is_truncated || next_key.is_empty() {
                break;
            }
            key_marker = next_key;
            id_marker = page.next_upload_id_marker.unwrap_or_default();
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploads {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<ListedUpload>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: String,
}

/// Percent-encodes all but unreserved characters (and `/` in paths), as
/// SigV4 canonicalisation expects.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Exponential backoff from 100 ms to 15 s, with jitter so that parts
/// retried together do not stampede.
pub(crate) fn backoff(attempt: usize) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(8)).min(15_000);
    let mut r = [0u8; 1];
    let _ = getrandom::fill(&mut r);
    Duration::from_millis(base / 2 + base * u64::from(r[0]) / 510)
}

/// Why a request failed, in the terms an error message needs.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The endpoint could not be reached.
    Connect(String),
    /// A request got no answer in time.
    Timeout(String),
    /// The connection broke during a request.
    Network(String),
    /// The server answered with an error.
    Status {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The transfer's overall deadline passed.
    Deadline,
    Other(String),
}

impl Failure {
    fn from_status(status: StatusCode, body: &[u8]) -> Failure {
        let body = String::from_utf8_lossy(body);
        let tag = |t: &str| -> String {
            let open = format!("<{t}>");
            let close = format!("</{t}>");
            body.split_once(&open)
                .and_then(|(_, rest)| rest.split_once(&close))
                .map(|(v, _)| unescape_xml(v.trim()))
                .unwrap_or_default()
        };
        let (code, mut message) = (tag("Code"), tag("Message"));
        if code.is_empty() && message.is_empty() {
            message = body.trim().chars().take(300).collect();
        }
        Failure::Status {
            status,
            code,
            message,
        }
    }

    fn from_http(e: &HttpError) -> Failure {
        let cause = root_cause(e);
        match e.kind() {
            HttpErrorKind::Connect => Failure::Connect(cause),
            HttpErrorKind::Timeout => Failure::Timeout(cause),
            HttpErrorKind::Decode => Failure::Other(cause),
            _ => Failure::Network(cause),
        }
    }

    /// Classifies an `object_store` error by what is in its chain. Its
    /// error with the HTTP status is not public, but its text is stable:
    /// "Server returned non-2xx status code: 403 Forbidden: <body>".
    pub(crate) fn from_store(e: &object_store::Error) -> Failure {
        const MARK: &str = "status code: ";
        let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(h) = err.downcast_ref::<HttpError>() {
                return Failure::from_http(h);
            }
            let text = err.to_string();
            // A DELETE goes out as DeleteObjects, whose per-key failures
            // come back in a 200 answer: "... (code: AccessDenied)".
            if let Some(code) = text
                .rsplit_once("(code: ")
                .and_then(|(_, rest)| rest.strip_suffix(')'))
            {
                let status = match code {
                    "AccessDenied" => StatusCode::FORBIDDEN,
                    "NoSuchKey" => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let message = text.rsplit_once(" (code: ").map_or("", |(m, _)| m);
                let message = message
                    .split_once(" failed for key ")
                    .and_then(|(_, rest)| rest.split_once(": "))
                    .map_or(message, |(_key, m)| m);
                return Failure::Status {
                    status,
                    code: code.to_string(),
                    message: message.to_string(),
                };
            }
            if let Some(i) = text.find(MARK) {
                let rest = &text[i + MARK.len()..];
                let status = rest
                    .get(..3)
                    .and_then(|c| c.parse::<u16>().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok());
                if let Some(status) = status {
                    let body = rest.split_once(": ").map(|(_, b)| b).unwrap_or("");
                    return Failure::from_status(status, body.as_bytes());
                }
            }
            cur = err.source();
        }
        Failure::Other(e.to_string())
    }

    /// Whether trying again may help.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) | Failure::Timeout(_) | Failure::Network(_) => true,
            Failure::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || self.is_corrupted_in_transit()
            }
            Failure::Deadline | Failure::Other(_) => false,
        }
    }

    /// The server found that a body does not match its SHA-256: damaged
    /// on the way, worth sending again.
    pub(crate) fn is_corrupted_in_transit(&self) -> bool {
        matches!(self, Failure::Status { code, .. }
            if ["BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"].contains(&code.as_str()))
    }

    /// 403: the credentials may not do this (or Object Lock keeps it).
    pub(crate) fn is_forbidden(&self) -> bool {
        matches!(self, Failure::Status { status, .. } if *status == StatusCode::FORBIDDEN)
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Failure::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// The five predefined XML entities and numeric character references
/// (`&#34;`, `&#x22;`), as found in S3 error messages; anything else is
/// left as it is.
fn unescape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest.find(';').and_then(|end| {
            let c = match &rest[1..end] {
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "amp" => '&',
                e => {
                    let code = match e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => e.strip_prefix('#')?.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The innermost message of an error chain ("Connection refused (os error
/// 111)"), with the outer one when they differ.
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    let (outer, inner) = (e.to_string(), last.to_string());
    if outer == inner || outer.contains(&inner) {
        outer
    } else {
        format!("{inner} ({outer})")
    }
}

fn store_err(e: object_store::Error) -> Failure {
    Failure::from_store(&e)
}

/// AbortMultipartUpload; an upload already gone (aborted, or completed
/// meanwhile) is fine.
async fn abort_multipart(s: &Shared, path: &ObjPath, id: &str) -> Result<(), Failure> {
    match s.client.abort_multipart(path, &id.to_string()).await {
        Ok(()) => Ok(()),
        Err(e) => match store_err(e) {
            f if f.is_not_found() => Ok(()),
            f => Err(f),
        },
    }
}

impl ColdStore for S3Store {
    fn location(&self) -> String {
        location(&self.shared.settings)
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.create_sized(key, 0)
    }

    fn create_sized(&self, key: &str, size_hint: u64) -> Result<Box<dyn ObjectWriter>> {
        let path = self.shared.path(key)?;
        Ok(Box::new(transfer::Upload::new(
            self.rt.clone(),
            self.shared.clone(),
            key,
            path,
            size_hint,
        )?))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let path = self.shared.path(key)?;
        Ok(Box::new(transfer::Download::open(
            self.rt.clone(),
            self.shared.clone(),
            key,
            path,
        )?))
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        let path = self.shared.path(key)?;
        let s = &self.shared;
        self.op(key, async {
            s.retry("HEAD", || async {
                match s.client.head(&path).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_err(e)),
                }
            })
            .await
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full = self.shared.full_key_prefix(prefix);
        // object_store lists whole path segments: ask for the deepest
        // complete one and filter the rest here.
        let dir = match full.rfind('/') {
            Some(i) => full[..i].to_string(),
            None => String::new(),
        };
        let dir_path = if dir.is_empty() {
            None
        } else {
            Some(
                ObjPath::parse(&dir)
                    .map_err(|e| Error::Usage(format!("invalid storage prefix {prefix:?}: {e}")))?,
            )
        };
        let s = &self.shared;
        let found: Vec<object_store::ObjectMeta> = self.op(prefix, async {
            s.retry("listing", || async {
                s.client
                    .list(dir_path.as_ref())
                    .try_collect()
                    .await
                    .map_err(store_err)
            })
            .await
        })?;
        let mut out: Vec<ObjectMeta> = found
            .into_iter()
            .filter_map(|m| {
                let full_key = m.location.to_string();
                if !full_key.starts_with(&full) {
                    return None;
                }
                let key = self.shared.store_key(&full_key)?.to_string();
                Some(ObjectMeta { key, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.shared.path(key)?;
        let s = &self.shared;
        let r = self.block(s.settings.deadline, async {
            s.retry("DELETE", || async {
                match s.client.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(store_err(e)),
                }
            })
            .await
        });
        match r {
            Ok(()) => Ok(()),
            // Credentials without s3:DeleteObject (an agent's, by design),
            // or an object under Object Lock: not an outage, and not worth
            // a retry.
            Err(f) if f.is_forbidden() => Err(Error::Refused {
                what: format!("storage {}/{key}", location(&s.settings)),
                message: format!(
                    "the server refuses to delete it with these credentials ({}); deleting \
                     committed snapshots is the coordinator's job",
                    s.describe(&f)
                ),
            }),
            Err(f) => Err(s.error(key, s.describe(&f))),
        }
    }

    fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let shared = self.shared.clone();
        let prefix_owned = prefix.to_string();
        self.op(
            prefix,
            async move { shared.list_pending(&prefix_owned).await },
        )
    }

    fn abort_upload(&self, upload: &PendingUpload) -> Result<()> {
        let path = self.shared.path(&upload.key)?;
        let s = &self.shared;
        self.op(&upload.key, async {
            s.retry("aborting a multipart upload", || {
                abort_multipart(s, &path, &upload.upload_id)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        let f = Failure::from_status(
            StatusCode::FORBIDDEN,
            b"<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>No such key</Message></Error>",
        );
        match f {
            Failure::Status { code, message, .. } => {
                assert_eq!(code, "InvalidAccessKeyId");
                assert_eq!(message, "No such key");
            }
            other => panic!("{other:?}"),
        }
        match Failure::from_status(
            StatusCode::BAD_REQUEST,
            b"<Error><Code>X</Code><Message>scope &apos;a&apos; &amp; b &#34;c&#x22; &bogus; &#</Message></Error>",
        ) {
            Failure::Status { message, .. } => {
                assert_eq!(message, "scope 'a' & b \"c\" &bogus; &#")
            }
            other => panic!("{other:?}"),
        }
        assert!(!Failure::from_status(StatusCode::NOT_FOUND, b"").retryable());
        assert!(Failure::from_status(StatusCode::SERVICE_UNAVAILABLE, b"").retryable());
        let damaged =
            b"<Error><Code>InvalidDigest</Code><Message>SHA256 mismatch</Message></Error>";
        assert!(Failure::from_status(StatusCode::BAD_REQUEST, damaged).retryable());
        let bad = b"<Error><Code>InvalidRequest</Code></Error>";
        assert!(!Failure::from_status(StatusCode::BAD_REQUEST, bad).retryable());
    }

    #[test]
    fn a_refused_delete_is_read_from_the_delete_objects_answer() {
        let text = "Generic S3 error: DeleteObjects request failed for key p/a/b: User: agents \
                    is not authorized to perform: s3:DeleteObject (code: AccessDenied)";
        let e = object_store::Error::Generic {
            store: "S3",
            source: text.into(),
        };
        let f = Failure::from_store(&e);
        assert!(f.is_forbidden(), "{f:?}");
        match f {
            Failure::Status { code, message, .. } => {
                assert_eq!(code, "AccessDenied");
                assert_eq!(
                    message,
                    "User: agents is not authorized to perform: s3:DeleteObject"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_encoded_for_signing() {
        assert_eq!(encode("a/b-c_d.e~f", true), "a/b-c_d.e~f");
        assert_eq!(encode("a/b c", false), "a%2Fb%20c");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(100));
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_secs(15));
    }
}
