//! A real coordinator process for tests: config, tokens, start/kill, and a
//! small HTTP client acting as agents or as the operator.
#![allow(dead_code)]

pub mod fleet;

use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A binary built next to this test's executable (`cargo test --workspace`
/// builds every binary of the workspace).
pub fn bin(name: &str) -> PathBuf {
    if name == "kafka-snapshot-coordinator" {
        return PathBuf::from(env!("CARGO_BIN_EXE_kafka-snapshot-coordinator"));
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// A free port outside the ephemeral range: a coordinator restarted on
/// it must find it free again (see `process::free_ports`).
pub fn free_port() -> u16 {
    kafka_snapshot_testkit::process::free_ports(1).expect("a free port")[0]
}

pub fn write_secret(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn token(broker: i32) -> String {
    format!("agent-token-of-broker-{broker}-0123456789")
}

pub const ADMIN: &str = "admin-token-0123456789abcdef";

pub struct CoordinatorSpec {
    pub brokers: Vec<i32>,
    /// Dedicated KRaft controllers with agents (`role = "controller"`).
    pub controllers: Vec<i32>,
    pub bootstrap: String,
    pub store_url: String,
    /// Extra TOML appended to sections: (section, lines).
    pub schedule: String,
    pub lease: String,
    pub retention: String,
    /// Lines after `url` in `[storage]` (e.g. a `[storage.s3]` table).
    pub storage_extra: String,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `[cluster] id`; without it the coordinator learns the id from the
    /// cluster it reaches.
    pub cluster: Option<String>,
}

impl CoordinatorSpec {
    pub fn new(brokers: &[i32], bootstrap: &str, store_url: &str) -> Self {
        CoordinatorSpec {
            brokers: brokers.to_vec(),
            controllers: Vec::new(),
            bootstrap: bootstrap.to_string(),
            store_url: store_url.to_string(),
            schedule: "suspend = true\ngate_timeout = \"2m\"\n".into(),
            lease: "ttl = \"10s\"\npoll_interval = \"500ms\"\n".into(),
            retention: "keep_last = 7\n".into(),
            storage_extra: String::new(),
            tls: None,
            cluster: None,
        }
    }
}

pub struct Coordinator {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Coordinator {
    pub fn create(dir: &Path, spec: &CoordinatorSpec) -> Coordinator {
        fs::create_dir_all(dir).unwrap();
        if let Some(p) = spec.store_url.strip_prefix("file://") {
            fs::create_dir_all(p).unwrap();
        }
        let port = free_port();
        let admin = dir.join("admin.token");
        write_secret(&admin, ADMIN);
        let mut agents = String::new();
        for b in &spec.brokers {
            agents.push_str(&format!(
                "[[agents]]\nbroker = {b}\ntoken_sha256 = \"{}\"\n",
                sha256_hex(&token(*b))
            ));
        }
        for c in &spec.controllers {
            agents.push_str(&format!(
                "[[agents]]\nnode = {c}\nrole = \"controller\"\ntoken_sha256 = \"{}\"\n",
                sha256_hex(&token(*c))
            ));
        }
        let tls = match &spec.tls {
            Some((c, k)) => format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            ),
            None => String::new(),
        };
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndatabase = {:?}\nadmin_token_file = {:?}\n{tls}\n\
             {agents}\n[schedule]\n{}\n[lease]\n{}\n[retention]\n{}\n\
             [storage]\nurl = {:?}\n{}\n[kafka]\nbootstrap_servers = [{}]\nrequest_timeout = \"5s\"\n\
             [gate]\ncheck_interval = \"300ms\"\n{}",
            dir.join("state.db").display().to_string(),
            admin.display().to_string(),
            spec.schedule,
            spec.lease,
            spec.retention,
            spec.store_url,
            spec.storage_extra,
            spec.bootstrap
                .split(',')
                .map(|b| format!("{b:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            spec.cluster
                .as_ref()
                .map(|id| format!("[cluster]\nid = {id:?}\n"))
                .unwrap_or_default(),
        );
        let config = dir.join("coordinator.toml");
        fs::write(&config, text).unwrap();
        Coordinator {
            dir: dir.to_path_buf(),
            config,
            port,
            url: format!("{scheme}://localhost:{port}"),
            child: None,
            log: dir.join("coordinator.log"),
        }
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts `serve` with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("kafka-snapshot-coordinator"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("KAFKA_SNAPSHOT_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start coordinator");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("coordinator exited {status}: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("coordinator did not listen: {}", self.logs());
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM failed");
        c.wait().ok().and_then(|s| s.code())
    }

    /// Sends `signal` (a name `kill` knows) to the running coordinator.
    pub fn signal(&self, signal: &str) {
        let c = self.child.as_ref().expect("the coordinator runs");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &c.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} failed");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an operator command of the coordinator CLI.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("kafka-snapshot-coordinator"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("KAFKA_SNAPSHOT_LOG", "warn")
            .output()
            .expect("run coordinator CLI")
    }

    /// Runs a CLI command, asserting its exit code; returns stdout.
    pub fn cli_ok(&self, args: &[&str], want: i32) -> String {
        let out = self.cli(args);
        let code = out.status.code().unwrap_or(-1);
        assert_eq!(
            code,
            want,
            "coordinator {args:?} exited {code}\nstdout: {}\nstderr: {}\nlog: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["status", "--json"], 0)).unwrap()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP client speaking to the coordinator's API.
pub struct Http {
    pub base: String,
    client: reqwest::blocking::Client,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_string(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub fn with_client(base: &str, client: reqwest::blocking::Client) -> Http {
        Http {
            base: base.to_string(),
            client,
        }
    }

    /// POSTs raw `body` with an optional bearer token: (status, JSON body).
    pub fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        send(r, token)
    }

    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post_raw(path, token, serde_json::to_vec(body).unwrap())
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        send(self.client.get(format!("{}{path}", self.base)), token)
    }
}

/// Sends with an optional bearer token: (status, JSON body or the text).
fn send(mut r: reqwest::blocking::RequestBuilder, token: Option<&str>) -> (u16, serde_json::Value) {
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().expect("request");
    let code = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub fn poll_body(broker: i32, epoch: Option<u64>) -> serde_json::Value {
    serde_json::json!({
        "protocol": kafka_snapshot_model::protocol::PROTOCOL_VERSION, "broker": broker, "agent_version": "test", "hostname": "h",
        "phase": "idle", "lease_epoch": epoch, "broker_running": true,
    })
}
