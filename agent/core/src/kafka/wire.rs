//! A small Kafka protocol client for every request the agent sends
//! (Metadata, DescribeConfigs, ListPartitionReassignments, DescribeQuorum,
//! DescribeLogDirs): framing, correlation ids and ApiVersions negotiation,
//! TLS and SASL (PLAIN, SCRAM-SHA-256/512), with the codecs of the
//! `kafka-protocol` crate. One fresh connection per question: nothing
//! cached survives a broker or a whole cluster restarting.

use super::scram::{ScramClient, ScramHash};
use super::section::SaslMechanism;
use super::security::{SaslCredentials, Security};
use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame accepted; a bigger length prefix means garbage.
const MAX_FRAME: usize = 256 << 20;
/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = 35;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{addr}: {what} timed out after {after:?}")]
    Timeout {
        addr: String,
        what: String,
        after: Duration,
    },
    #[error("{addr}: {what}: {source}")]
    Io {
        addr: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("{addr}: TLS handshake failed: {message} (check kafka.ssl_ca_location, and kafka.ssl_certificate_location/ssl_key_location if the broker requires client certificates)")]
    Tls { addr: String, message: String },
    #[error("{addr}: SASL {mechanism} authentication as user {user:?} failed: {message} (check kafka.sasl_username and kafka.sasl_password or sasl_password_file)")]
    Auth {
        addr: String,
        mechanism: &'static str,
        user: String,
        message: String,
    },
    #[error("{addr}: broker does not support {api} (API key {key}) in any version this client speaks ({ours:?}); broker offers {theirs:?}")]
    Unsupported {
        addr: String,
        api: &'static str,
        key: i16,
        ours: (i16, i16),
        theirs: Option<(i16, i16)>,
    },
}

impl WireError {
    fn protocol(addr: &str, message: impl Into<String>) -> Self {
        WireError::Protocol {
            addr: addr.to_string(),
            message: message.into(),
        }
    }
}

/// Any byte stream a connection can run over (TCP, TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to one broker, with the API versions it supports.
pub struct Connection {
    addr: String,
    stream: Box<dyn Stream>,
    correlation_id: i32,
    client_id: String,
    timeout: Duration,
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    /// Opens a connection as `security` says: TCP, TLS (SSL, SASL_SSL),
    /// ApiVersions, then SASL (SASL_PLAINTEXT, SASL_SSL).
    pub async fn connect(
        addr: &str,
        security: &Security,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        let tcp = tcp_connect(addr, timeout).await?;
        let stream: Box<dyn Stream> = match &security.tls {
            Some(tls) => Box::new(tls_connect(addr, tls.clone(), tcp, timeout).await?),
            None => Box::new(tcp),
        };
        let mut conn = Self::over(addr, stream, client_id, timeout).await?;
        if let Some(sasl) = &security.sasl {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// Opens a plaintext TCP connection and negotiates API versions.
    pub async fn connect_plain(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        let tcp = tcp_connect(addr, timeout).await?;
        Self::over(addr, Box::new(tcp), client_id, timeout).await
    }

    /// Runs the protocol over an established stream (after TLS, before SASL).
    pub async fn over(
        addr: &str,
        stream: Box<dyn Stream>,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        let mut c = Connection {
            addr: addr.to_string(),
            stream,
            correlation_id: 0,
            client_id: client_id.to_string(),
            timeout,
            versions: HashMap::new(),
        };
        c.negotiate().await?;
        Ok(c)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The versions of `key` the broker supports, if any.
    pub fn broker_versions(&self, key: i16) -> Option<(i16, i16)> {
        self.versions.get(&key).copied()
    }

    /// ApiVersions: try v3; a broker that does not know it answers in v0
    /// with UNSUPPORTED_VERSION and its ranges, and we retry in its version.
    async fn negotiate(&mut self) -> Result<(), WireError> {
        let ours = ApiVersionsRequest::VERSIONS.max.min(3);
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kafka-snapshot"))
            .with_client_software_version(StrBytes::from_static_str(crate::AGENT_VERSION));
        let mut version = ours;
        for _ in 0..2 {
            let body = self
                .roundtrip_raw(ApiVersionsRequest::KEY, version, &req)
                .await?;
            let resp = decode_api_versions(&self.addr, body, version)?;
            if resp.error_code == UNSUPPORTED_VERSION {
                let theirs = resp
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiVersionsRequest::KEY)
                    .map(|k| k.max_version)
                    .unwrap_or(0);
                version = theirs.min(ours);
                continue;
            }
            if resp.error_code != 0 {
                return Err(WireError::protocol(
                    &self.addr,
                    format!("ApiVersions failed with error code {}", resp.error_code),
                ));
            }
            self.versions = resp
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            return Ok(());
        }
        Err(WireError::protocol(
            &self.addr,
            "ApiVersions negotiation did not converge",
        ))
    }

    /// SaslHandshake v1, then SaslAuthenticate (v0-v2) rounds.
    async fn authenticate(&mut self, sasl: &SaslCredentials) -> Result<(), WireError> {
        let mechanism = sasl.mechanism.as_str();
        let auth_err = |addr: &str, message: String| WireError::Auth {
            addr: addr.to_string(),
            mechanism,
            user: sasl.username.clone(),
            message,
        };
        // v0 would switch to bare tokens; every broker since Kafka 1.0 has v1.
        if self
            .broker_versions(SaslHandshakeRequest::KEY)
            .is_none_or(|(_, hi)| hi < 1)
        {
            return Err(auth_err(
                &self.addr,
                "the broker offers no SaslHandshake v1 (is this a SASL listener?)".into(),
            ));
        }
        let hs = self
            .send(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(mechanism)),
                "SaslHandshake",
                1,
            )
            .await?;
        if hs.error_code != 0 {
            let offered: Vec<&str> = hs.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(auth_err(
                &self.addr,
                format!(
                    "the listener does not enable {mechanism} (it offers {offered:?}; error code {})",
                    hs.error_code
                ),
            ));
        }
        match sasl.mechanism {
            SaslMechanism::Plain => {
                let token = format!("\0{}\0{}", sasl.username, sasl.password);
                self.sasl_round(token.into_bytes(), &auth_err).await?;
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let hash = if sasl.mechanism == SaslMechanism::ScramSha256 {
                    ScramHash::Sha256
                } else {
                    ScramHash::Sha512
                };
                let mut scram =
                    ScramClient::new(hash, &sasl.username, &sasl.password, &random_nonce()?);
                let server_first = self
                    .sasl_round(scram.client_first().into_bytes(), &auth_err)
                    .await?;
                let client_final = scram
                    .client_final(&String::from_utf8_lossy(&server_first))
                    .map_err(|m| auth_err(&self.addr, m))?;
                let server_final = self
                    .sasl_round(client_final.into_bytes(), &auth_err)
                    .await?;
                scram
                    .verify_server_final(&String::from_utf8_lossy(&server_final))
                    .map_err(|m| auth_err(&self.addr, m))?;
            }
        }
        Ok(())
    }

    /// One SaslAuthenticate: sends `token`, returns the server's.
    async fn sasl_round(
        &mut self,
        token: Vec<u8>,
        auth_err: &impl Fn(&str, String) -> WireError,
    ) -> Result<Vec<u8>, WireError> {
        let resp = self
            .send(
                &SaslAuthenticateRequest::default().with_auth_bytes(token.into()),
                "SaslAuthenticate",
                2,
            )
            .await?;
        if resp.error_code != 0 {
            return Err(auth_err(
                &self.addr,
                format!(
                    "{} (error code {})",
                    resp.error_message.as_deref().unwrap_or("no message"),
                    resp.error_code
                ),
            ));
        }
        Ok(resp.auth_bytes.to_vec())
    }

    /// Sends `req` in the highest version both sides support (capped at
    /// `max_version`) and returns the decoded response.
    pub async fn send<R: Request>(
        &mut self,
        req: &R,
        api: &'static str,
        max_version: i16,
    ) -> Result<R::Response, WireError> {
        let ours = (R::VERSIONS.min, R::VERSIONS.max.min(max_version));
        let theirs = self.broker_versions(R::KEY);
        let version = match theirs {
            Some((lo, hi)) if lo.max(ours.0) <= hi.min(ours.1) => hi.min(ours.1),
            _ => {
                return Err(WireError::Unsupported {
                    addr: self.addr.clone(),
                    api,
                    key: R::KEY,
                    ours,
                    theirs,
                })
            }
        };
        let mut body = self.roundtrip_raw(R::KEY, version, req).await?;
        let header_version = R::Response::header_version(version);
        ResponseHeader::decode(&mut body, header_version)
            .map_err(|e| WireError::protocol(&self.addr, format!("{api} response header: {e}")))?;
        R::Response::decode(&mut body, version)
            .map_err(|e| WireError::protocol(&self.addr, format!("{api} v{version} response: {e}")))
    }

    /// Frames and sends one request; returns the response frame after its
    /// correlation id was checked (the header is left in the buffer for
    /// `send`, except for ApiVersions whose header is always v0).
    async fn roundtrip_raw<T: Encodable + HeaderVersion>(
        &mut self,
        key: i16,
        version: i16,
        req: &T,
    ) -> Result<BytesMut, WireError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        let addr = self.addr.clone();
        header
            .encode(&mut buf, T::header_version(version))
            .map_err(|e| WireError::protocol(&addr, format!("encoding request header: {e}")))?;
        req.encode(&mut buf, version).map_err(|e| {
            WireError::protocol(&addr, format!("encoding API key {key} v{version}: {e}"))
        })?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let timeout = self.timeout;
        let what = format!("request API key {key} v{version}");
        let io = async {
            self.stream.write_all(&buf).await?;
            self.stream.flush().await?;
            let n = self.stream.read_i32().await?;
            if n < 4 || n as usize > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("response frame of {n} bytes"),
                ));
            }
            let mut frame = BytesMut::zeroed(n as usize);
            self.stream.read_exact(&mut frame).await?;
            Ok(frame)
        };
        let frame = within(&addr, &what, timeout, async {
            io.await.map_err(|e| io_error(&addr, what.clone(), e))
        })
        .await?;
        let got = i32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
        if got != id {
            return Err(WireError::protocol(
                &addr,
                format!("correlation id {got} in response to request {id}"),
            ));
        }
        Ok(frame)
    }
}

/// With TLS 1.3 the broker refuses a client certificate only after the
/// handshake, as an alert on the first read: still a TLS failure.
fn io_error(addr: &str, what: String, e: std::io::Error) -> WireError {
    match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
        Some(tls) => WireError::Tls {
            addr: addr.into(),
            message: format!("{tls} (answering {what})"),
        },
        None => WireError::Io {
            addr: addr.into(),
            what,
            source: e,
        },
    }
}

/// Runs `step` within `timeout`, naming `what` timed out.
async fn within<T>(
    addr: &str,
    what: &str,
    timeout: Duration,
    step: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    tokio::time::timeout(timeout, step)
        .await
        .map_err(|_| WireError::Timeout {
            addr: addr.into(),
            what: what.into(),
            after: timeout,
        })?
}

async fn tcp_connect(addr: &str, timeout: Duration) -> Result<TcpStream, WireError> {
    let tcp = within(addr, "connect", timeout, async {
        TcpStream::connect(addr)
            .await
            .map_err(|e| io_error(addr, "connect".into(), e))
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake, checking the broker's certificate against `addr`'s
/// host name or IP address, as librdkafka does by default.
async fn tls_connect(
    addr: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, WireError> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tls_error = |message: String| WireError::Tls {
        addr: addr.into(),
        message,
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| tls_error(format!("{host:?} is not a valid server name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    within(addr, "TLS handshake", timeout, async {
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(e.to_string()))
    })
    .await
}

/// A SCRAM client nonce: 18 random bytes, base64.
fn random_nonce() -> Result<String, WireError> {
    use base64::Engine;
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).map_err(|e| WireError::Protocol {
        addr: String::new(),
        message: format!("no randomness for a SCRAM nonce: {e}"),
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode_api_versions(
    addr: &str,
    mut frame: BytesMut,
    version: i16,
) -> Result<ApiVersionsResponse, WireError> {
    // Header v0: the correlation id only (already checked).
    frame.advance(4);
    let snapshot = frame.clone();
    match ApiVersionsResponse::decode(&mut frame, version) {
        Ok(r) => Ok(r),
        // A broker that rejects our version answers in v0.
        Err(_) if version > 0 => {
            let mut v0 = snapshot;
            ApiVersionsResponse::decode(&mut v0, 0)
                .map_err(|e| WireError::protocol(addr, format!("ApiVersions response: {e}")))
        }
        Err(e) => Err(WireError::protocol(
            addr,
            format!("ApiVersions response: {e}"),
        )),
    }
}
