//! A minimal blocking Kafka client for tests: sends one request at a time
//! over a plain TCP connection, encoded and decoded with `kafka-protocol`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Largest frame accepted (Kafka's `socket.request.max.bytes`).
pub const MAX_FRAME: usize = 100 * 1024 * 1024;

pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    next_correlation_id: i32,
}

impl Connection {
    /// Connects to `host:port` with the given connect and I/O timeout.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Connection> {
        let peer = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&peer, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            peer,
            next_correlation_id: 1,
        })
    }

    /// Sends `request` as `version` and decodes the response.
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let mut body = BytesMut::new();
        request
            .encode(&mut body, version)
            .with_context(|| format!("encoding request key {} v{version}", R::KEY))?;
        let mut payload = self.send_raw(
            R::KEY,
            version,
            <R as HeaderVersion>::header_version(version),
            &body,
        )?;
        ResponseHeader::decode(
            &mut payload,
            <R::Response as HeaderVersion>::header_version(version),
        )
        .context("decoding response header")?;
        let response = R::Response::decode(&mut payload, version)
            .with_context(|| format!("decoding response to key {} v{version}", R::KEY))?;
        ensure!(
            !payload.has_remaining(),
            "{} bytes left after the response to key {} v{version}",
            payload.remaining(),
            R::KEY
        );
        Ok(response)
    }

    /// Sends a request with an already encoded body and returns the whole
    /// response frame after the correlation id has been checked (the
    /// response header is left in place for the caller to decode).
    pub fn send_raw(
        &mut self,
        api_key: i16,
        version: i16,
        header_version: i16,
        body: &[u8],
    ) -> Result<Bytes> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("ksnap-standin-test")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, header_version)
            .context("encoding request header")?;
        frame.extend_from_slice(body);
        let mut out = Vec::with_capacity(frame.len() + 4);
        out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
        out.extend_from_slice(&frame);
        self.stream
            .write_all(&out)
            .with_context(|| format!("sending to {}", self.peer))?;
        let payload = read_frame(&mut self.stream)
            .with_context(|| format!("reading the response from {}", self.peer))?
            .with_context(|| format!("{} closed the connection", self.peer))?;
        ensure!(payload.len() >= 4, "response frame too short");
        let got = i32::from_be_bytes(payload[..4].try_into().unwrap());
        ensure!(
            got == correlation_id,
            "response correlation id {got}, expected {correlation_id}"
        );
        Ok(Bytes::from(payload))
    }
}

/// Reads one size-prefixed frame; `None` on a clean end of stream.
pub fn read_frame(stream: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = stream.read(&mut len[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("connection closed inside a frame header");
        }
        got += n;
    }
    let len = i32::from_be_bytes(len);
    ensure!(
        len >= 0 && (len as usize) <= MAX_FRAME,
        "invalid frame size {len}"
    );
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}
