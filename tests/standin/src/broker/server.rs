//! TCP side of the broker: one thread per connection, requests answered in
//! order, as Kafka does per connection.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{api, log, Broker};
use crate::wire::read_frame;

pub(super) fn accept_loop(broker: Arc<Broker>, listener: TcpListener, kind: api::Listener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let b = broker.clone();
                let _ = std::thread::Builder::new()
                    .name("connection".into())
                    .spawn(move || {
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        if let Err(e) = serve(&b, stream, kind) {
                            log(b.node_id(), &format!("connection from {peer}: {e:#}"));
                        }
                    });
            }
            Err(e) => log(broker.node_id(), &format!("accept: {e}")),
        }
    }
}

fn serve(broker: &Broker, mut stream: TcpStream, kind: api::Listener) -> Result<()> {
    stream.set_nodelay(true)?;
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

fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
    stream.write_all(&out).context("writing response")
}
