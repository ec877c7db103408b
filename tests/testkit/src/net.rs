//! A TCP proxy for fault tests: put it between a client and a server and
//! switch what the network does at runtime.
//!
//! - [`Mode::Pass`]: bytes flow both ways.
//! - [`Mode::Blackhole`]: new connections are accepted and then never
//!   answered; established ones are cut. The peer sees timeouts, as behind
//!   a dead switch or a dropped route.
//! - [`Mode::Refuse`]: new connections are closed at once, established ones
//!   are cut (a stopped server or a firewall reject).
//!
//! Switching away from `Pass` cuts every established connection, so a
//! client's pooled keep-alive connections cannot carry on underneath.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Refuse,
}

struct Shared {
    mode: Mutex<Mode>,
    /// Every socket of established connections (both sides), to cut them.
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

pub struct Proxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let upstream = upstream.to_string();
        let s = shared.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, &upstream, &s));
        Ok(Proxy {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>` of the proxy.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        if mode != Mode::Pass {
            for s in self.shared.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.set(Mode::Refuse);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: &str, s: &Arc<Shared>) {
    // Blackholed connections are held here, unread, until the mode changes.
    let mut held: Vec<TcpStream> = Vec::new();
    while !s.stop.load(Ordering::Relaxed) {
        let mode = *s.mode.lock().unwrap();
        if mode != Mode::Blackhole {
            held.clear();
        }
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                match mode {
                    Mode::Refuse => drop(client),
                    Mode::Blackhole => held.push(client),
                    Mode::Pass => match TcpStream::connect_timeout(
                        &upstream.parse().expect("upstream host:port"),
                        Duration::from_secs(5),
                    ) {
                        Ok(server) => splice(client, server, s),
                        Err(_) => drop(client),
                    },
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn splice(client: TcpStream, server: TcpStream, s: &Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut open = s.open.lock().unwrap();
        for sock in [&client, &server] {
            if let Ok(c) = sock.try_clone() {
                open.push(c);
            }
        }
    }
    for (from, to) in [(&client, &server), (&server, &client)] {
        let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
