//! TCP side of the broker: one thread per connection, requests answered in
//! order, as Kafka does per connection; TLS (rustls) on the SSL and
//! SASL_SSL listeners.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{api, log, Broker};
use crate::definition::TlsDef;
use crate::wire::read_frame;

pub(super) fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    kind: api::Listener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let b = broker.clone();
                let tls = tls.clone();
                let _ = std::thread::Builder::new()
                    .name("connection".into())
                    .spawn(move || {
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let served = match tls {
                            Some(cfg) => serve_tls(&b, stream, kind, cfg),
                            None => serve(&b, stream, kind),
                        };
                        if let Err(e) = served {
                            log(b.node_id(), &format!("connection from {peer}: {e:#}"));
                        }
                    });
            }
            Err(e) => log(broker.node_id(), &format!("accept: {e}")),
        }
    }
}

fn serve_tls(
    broker: &Broker,
    tcp: TcpStream,
    kind: api::Listener,
    cfg: Arc<rustls::ServerConfig>,
) -> Result<()> {
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(cfg).context("TLS session")?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Handshake now, so a refused client certificate is logged as such.
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .context("TLS handshake")?;
    }
    serve(broker, stream, kind)
}

fn serve(
    broker: &Broker,
    mut stream: impl Read + Write + Nodelay,
    kind: api::Listener,
) -> Result<()> {
    stream.nodelay()?;
    let mut session = api::Session::new(kind);
    loop {
        let Some(frame) = read_frame(&mut stream)? else {
            return Ok(());
        };
        match api::handle(broker, &mut session, frame)? {
            api::Reply::Send(bytes) => send(&mut stream, &bytes)?,
            api::Reply::SendAndClose(bytes, reason) => {
                send(&mut stream, &bytes)?;
                log(broker.node_id(), &format!("closing connection: {reason}"));
                return Ok(());
            }
            api::Reply::Close(reason) => {
                log(broker.node_id(), &format!("closing connection: {reason}"));
                return Ok(());
            }
        }
    }
}

/// Kafka answers small requests at once: no Nagle delay.
trait Nodelay {
    fn nodelay(&self) -> std::io::Result<()>;
}

impl Nodelay for TcpStream {
    fn nodelay(&self) -> std::io::Result<()> {
        self.set_nodelay(true)
    }
}

impl Nodelay for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn nodelay(&self) -> std::io::Result<()> {
        self.sock.set_nodelay(true)
    }
}

fn send(stream: &mut impl Write, bytes: &[u8]) -> Result<()> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
    stream.write_all(&out).context("writing response")?;
    stream.flush().context("writing response")
}

/// The TLS config of a listener: the broker certificate, and a required
/// client certificate signed by `client_ca` when `client_auth`.
pub(super) fn tls_config(tls: &TlsDef, client_auth: bool) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading the private key {}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&tls.client_ca, client_auth) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).context("adding the client CA")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(chain, key)
        .context("the broker certificate and key")?;
    Ok(Arc::new(cfg))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .with_context(|| format!("reading certificates from {}", path.display()))
}
