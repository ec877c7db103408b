//! A small Kafka protocol client for the admin requests `rdkafka` does not
//! offer (ListPartitionReassignments, DescribeQuorum, DescribeLogDirs):
//! framing, correlation ids and ApiVersions negotiation, with the codecs of
//! the `kafka-protocol` crate.

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
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
    /// Opens a plaintext TCP connection and negotiates API versions.
    pub async fn connect_plain(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout {
                addr: addr.into(),
                what: "connect".into(),
                after: timeout,
            })?
            .map_err(|e| WireError::Io {
                addr: addr.into(),
                what: "connect".into(),
                source: e,
            })?;
        let _ = tcp.set_nodelay(true);
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
        let frame = tokio::time::timeout(timeout, io)
            .await
            .map_err(|_| WireError::Timeout {
                addr: addr.clone(),
                what: what.clone(),
                after: timeout,
            })?
            .map_err(|e| WireError::Io {
                addr: addr.clone(),
                what,
                source: e,
            })?;
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
