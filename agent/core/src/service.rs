//! Telling systemd how a `Type=notify` service is doing (`sd_notify(3)`).
//!
//! Both units (`systemd/*.service`) are `Type=notify` with `WatchdogSec=`:
//! systemd considers the service started only when it says `READY=1`, kills
//! and restarts it when it stops pinging the watchdog, and shows its
//! `STATUS=` line in `systemctl status`. The long-running commands
//! (`kafka-snapshot-agent run`, `kafka-snapshot-coordinator serve`) use this
//! module as follows:
//!
//! 1. Once the config is loaded and the service can do its job (the
//!    coordinator listens and has opened its database; the agent has
//!    recovered its state file, e.g. restarted a broker it had stopped),
//!    call [`spawn_watchdog`] from inside the tokio runtime, then
//!    [`notify_ready`]. Before `READY=1` systemd's `TimeoutStartSec=`
//!    applies, so slow recovery should report progress with
//!    [`notify_extend_timeout`].
//! 2. Whenever the state changes, [`notify_status`] with one short line
//!    (`"idle, next cycle 03:00"`, `"snapshot of broker 2: archiving"`).
//! 3. On SIGTERM, [`notify_stopping`] first. While the agent brings back a
//!    broker it had stopped it may take minutes to exit: it can call
//!    [`notify_extend_timeout`] so that systemd does not SIGKILL it halfway
//!    (the unit's `TimeoutStopSec=` is already sized for the usual case).
//!
//! The watchdog pinger is a tokio task that sends `WATCHDOG=1` every half of
//! `WATCHDOG_USEC`. It proves the runtime still schedules tasks, so a
//! deadlocked or starved runtime gets the process restarted; it does not
//! prove that a cycle makes progress (the coordinator's lease TTL covers
//! that).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset: a shell, a test, the break-glass
//! CLI) every function does nothing. A notification that cannot be sent is
//! logged as a warning and never fails the caller: the service's work does
//! not depend on it. The environment is read once, on first use.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Where notifications go: a socket path, or a Linux abstract socket name
/// (`NOTIFY_SOCKET=@name`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// The service manager's notification socket and watchdog period, as
/// systemd passed them. [`Notifier::from_env`] is what the free functions of
/// this module use; tests build one from explicit values.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// The same from explicit values. A watchdog meant for another process
    /// (`WATCHDOG_PID` is not `own_pid`: a child inherited the environment)
    /// or an unparsable or zero `WATCHDOG_USEC` means no watchdog, as in
    /// `sd_watchdog_enabled(3)`.
    pub fn from_vars(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Notifier {
        let target = notify_socket.filter(|s| !s.is_empty()).map(|s| {
            match s.as_bytes().strip_prefix(b"@") {
                Some(name) => Target::Abstract(name.to_vec()),
                None => Target::Path(PathBuf::from(OsString::from(s))),
            }
        });
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(own_pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// True when running under a service manager that listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often [`Notifier::spawn_watchdog`] pings: half of
    /// `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)` recommends. `None`
    /// without a watchdog or without a socket to ping.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one datagram of `KEY=value` lines.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        let sent = match target {
            Target::Path(p) => sock.send_to(message.as_bytes(), p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(message.as_bytes(), &addr)?
            }
        };
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            ));
        }
        Ok(())
    }

    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1\n")
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\n")
    }

    /// One line for `systemctl status`; line breaks become spaces (each
    /// line of a notification is a separate assignment).
    pub fn status(&self, text: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}\n", one_line(text)))
    }

    /// Asks for `more` time beyond now before systemd's start or stop
    /// timeout fires.
    pub fn extend_timeout(&self, more: Duration) -> io::Result<()> {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}\n", more.as_micros()))
    }

    pub fn watchdog_ping(&self) -> io::Result<()> {
        self.send("WATCHDOG=1\n")
    }

    /// Starts the watchdog pinger on the current tokio runtime (panics
    /// outside one). `None` when systemd set no watchdog. The first ping is
    /// sent at once.
    pub fn spawn_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.watchdog_interval()?;
        let notifier = self.clone();
        tracing::debug!(?period, "pinging the systemd watchdog");
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = notifier.watchdog_ping() {
                    tracing::warn!(error = %e, "cannot ping the systemd watchdog");
                }
            }
        }))
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn global() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(Notifier::from_env)
}

fn warn_on_error(what: &str, r: io::Result<()>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot tell systemd {what}");
    }
}

/// `READY=1`: startup is complete.
pub fn notify_ready() {
    warn_on_error("the service is ready", global().ready());
}

/// `STOPPING=1`: shutdown has begun.
pub fn notify_stopping() {
    warn_on_error("the service is stopping", global().stopping());
}

/// `STATUS=...`: one line shown by `systemctl status`.
pub fn notify_status(text: &str) {
    warn_on_error("the status", global().status(text));
}

/// `EXTEND_TIMEOUT_USEC=...`: more time for a slow start or stop.
pub fn notify_extend_timeout(more: Duration) {
    warn_on_error("to extend the timeout", global().extend_timeout(more));
}

/// Starts the watchdog pinger (see [`Notifier::spawn_watchdog`]).
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    global().spawn_watchdog()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn listener() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn nothing_pending(sock: &UnixDatagram) -> bool {
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let pending = sock.recv(&mut buf).is_ok();
        sock.set_nonblocking(false).unwrap();
        !pending
    }

    #[test]
    fn sends_each_state_as_one_datagram() {
        let (_dir, path, sock) = listener();
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None, 1);
        assert!(n.is_active());
        n.ready().unwrap();
        n.status("snapshot of broker 2:\narchiving").unwrap();
        n.extend_timeout(Duration::from_secs(90)).unwrap();
        n.stopping().unwrap();
        assert_eq!(recv(&sock), "READY=1\n");
        // A newline would start a second assignment systemd does not know.
        assert_eq!(recv(&sock), "STATUS=snapshot of broker 2: archiving\n");
        assert_eq!(recv(&sock), "EXTEND_TIMEOUT_USEC=90000000\n");
        assert_eq!(recv(&sock), "STOPPING=1\n");
        assert!(nothing_pending(&sock));
    }

    #[test]
    fn abstract_socket_names_start_with_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("kafka-snapshot-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let var = OsString::from(format!("@{name}"));
        let n = Notifier::from_vars(Some(&var), None, None, 1);
        n.ready().unwrap();
        assert_eq!(recv(&sock), "READY=1\n");
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notifier::from_vars(None, Some("1000000"), None, 1);
        assert!(!n.is_active());
        assert!(n.ready().is_ok());
        assert_eq!(n.watchdog_interval(), None);
        let empty = OsString::new();
        assert!(!Notifier::from_vars(Some(&empty), None, None, 1).is_active());
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_for_the_caller_to_log() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.sock");
        let n = Notifier::from_vars(Some(gone.as_os_str()), None, None, 1);
        assert!(n.ready().is_err());
    }

    #[test]
    fn watchdog_period_is_half_of_watchdog_usec_and_only_for_our_pid() {
        let sock = OsString::from("/run/systemd/notify");
        let s = Some(sock.as_os_str());
        let half = |usec, pid| Notifier::from_vars(s, usec, pid, 42).watchdog_interval();
        assert_eq!(half(Some("120000000"), None), Some(Duration::from_secs(60)));
        assert_eq!(
            half(Some("120000000"), Some("42")),
            Some(Duration::from_secs(60))
        );
        // Inherited by a child (the broker start command, say): not ours.
        assert_eq!(half(Some("120000000"), Some("43")), None);
        assert_eq!(half(Some("0"), None), None);
        assert_eq!(half(Some("2min"), None), None);
        assert_eq!(half(None, Some("42")), None);
    }

    #[tokio::test]
    async fn watchdog_task_pings_at_half_the_period() {
        let (_dir, path, sock) = listener();
        // WATCHDOG_USEC of 200 ms: a ping every 100 ms.
        let n = Notifier::from_vars(Some(path.as_os_str()), Some("200000"), None, 1);
        let started = Instant::now();
        let task = n.spawn_watchdog().expect("watchdog enabled");
        let pings =
            tokio::task::spawn_blocking(move || (0..4).map(|_| recv(&sock)).collect::<Vec<_>>())
                .await
                .unwrap();
        let elapsed = started.elapsed();
        task.abort();
        assert!(pings.iter().all(|p| p == "WATCHDOG=1\n"), "{pings:?}");
        // The first ping is immediate, then one every 100 ms.
        assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
}
