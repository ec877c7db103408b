//! Broker control against a minimal process that behaves like Kafka where
//! stop/start are concerned: it holds `.lock` while it runs, and a clean
//! stop leaves `.kafka_cleanshutdown`.

use kafka_snapshot::config::AgentConfig;
use kafka_snapshot_agent::broker::{BrokerControl, BrokerError, Stopped};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Fake {
    _t: tempfile::TempDir,
    dir: PathBuf,
    pidfile: PathBuf,
}

/// A "broker" holding the lock of `dir` until killed, the way the JVM
/// does (a POSIX record lock, which flock(2) cannot see).
fn fake() -> Fake {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("kafka-logs");
    fs::create_dir(&dir).unwrap();
    // A partition log: what makes `.kafka_cleanshutdown` necessary.
    fs::create_dir(dir.join("orders-0")).unwrap();
    fs::write(dir.join(".lock"), b"").unwrap();
    let pidfile = t.path().join("pid");
    Fake {
        dir,
        pidfile,
        _t: t,
    }
}

impl Fake {
    fn control(&self, stop: &str, start: &str, stop_timeout: &str) -> BrokerControl {
        let text = format!(
            "[broker]\nlog_dirs = [{:?}]\nstop_command = {stop:?}\nstart_command = {start:?}\nstop_timeout = {stop_timeout:?}\n\
             command_timeout = \"5s\"\n[storage]\nurl = \"file:///tmp\"\n",
            self.dir.display().to_string()
        );
        let cfg = AgentConfig::parse(&text, Path::new("test.toml")).unwrap();
        BrokerControl::new(&cfg.broker, vec![self.dir.clone()])
    }

    /// Starts the fake broker: removes the marker, holds the lock, and
    /// returns once the lock is held (a loaded machine can take longer than
    /// any fixed pause to start python).
    fn start_cmd(&self) -> String {
        format!(
            "rm -f {d}/.kafka_cleanshutdown {r}; python3 -c {hold:?} {d}/.lock {r} >/dev/null 2>&1 & echo $! > {p}; \
             i=0; while [ ! -e {r} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
            hold = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB); open(sys.argv[2], 'w').close(); time.sleep(600)",
            d = self.dir.display(),
            r = self.pidfile.with_extension("locked").display(),
            p = self.pidfile.display()
        )
    }

    /// A clean stop: write the marker, then exit (after `delay` seconds).
    fn stop_cmd(&self, delay: f32, clean: bool) -> String {
        let marker = if clean {
            format!(
                "echo '{{\"version\":0}}' > {}/.kafka_cleanshutdown;",
                self.dir.display()
            )
        } else {
            String::new()
        };
        format!(
            "(sleep {delay}; {marker} kill $(cat {p})) >/dev/null 2>&1 &",
            p = self.pidfile.display()
        )
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn stop_waits_for_the_lock_and_sees_a_clean_stop() {
    let f = fake();
    let c = f.control(&f.stop_cmd(1.0, true), &f.start_cmd(), "20s");
    rt().block_on(async {
        c.start().await.unwrap();
        assert!(c.is_running().unwrap());
        let t0 = Instant::now();
        assert_eq!(c.stop().await.unwrap(), Stopped::Clean);
        // The stop command returns at once; the wait is for the lock.
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "did not wait for the process"
        );
        assert!(!c.is_running().unwrap());
    });
}

#[test]
fn unclean_stop_is_reported_with_the_dirs() {
    let f = fake();
    let c = f.control(&f.stop_cmd(0.2, false), &f.start_cmd(), "20s");
    rt().block_on(async {
        c.start().await.unwrap();
        match c.stop().await.unwrap() {
            Stopped::Unclean { reasons } => {
                assert_eq!(reasons.len(), 1, "{reasons:?}");
                assert!(
                    reasons[0].contains(&format!("no .kafka_cleanshutdown in {}", f.dir.display())),
                    "{reasons:?}"
                );
            }
            other => panic!("expected an unclean stop, got {other:?}"),
        }
    });
}

#[test]
fn stop_timeout_names_the_locked_dir() {
    let f = fake();
    // A broker that ignores the stop.
    let c = f.control("true", &f.start_cmd(), "1s");
    rt().block_on(async {
        c.start().await.unwrap();
        match c.stop().await {
            Err(BrokerError::StopTimeout { locked, .. }) => {
                assert!(locked.contains("kafka-logs"), "{locked}")
            }
            other => panic!("expected a stop timeout, got {other:?}"),
        }
        assert!(c.is_running().unwrap());
    });
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill $(cat {})", f.pidfile.display()))
        .status();
}

#[test]
fn failing_commands_report_their_stderr() {
    let f = fake();
    let c = f.control(
        "echo 'Unit kafka.service not loaded.' >&2; exit 5",
        "echo nope >&2; exit 1",
        "1s",
    );
    rt().block_on(async {
        let e = c.stop().await.unwrap_err().to_string();
        assert!(e.contains("not loaded") && e.contains("stop"), "{e}");
        let e = c.start().await.unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    });
}
