//! The coordinator's API as a real process: authentication, refusals that
//! change nothing, fencing epochs, persistence across a SIGKILL, and TLS.

mod common;

use common::*;
use kafka_snapshot_standin::{ClusterSpec, StandinCluster};
use kafka_snapshot_testkit::report;
use serde_json::json;
use std::time::Duration;

fn cluster(root: &std::path::Path) -> StandinCluster {
    let c = StandinCluster::create(&root.join("cluster"), &ClusterSpec::new(3)).expect("stand-in");
    c.start_all(Duration::from_secs(60))
        .expect("cluster starts");
    c
}

/// Status without the fields that change with time.
fn state(c: &Coordinator) -> serde_json::Value {
    let mut s = c.status();
    s.as_object_mut().unwrap().remove("now");
    for b in s["brokers"].as_array_mut().unwrap() {
        b.as_object_mut().unwrap().remove("agent_last_seen");
    }
    s
}

/// A broker the cluster lists that no `[[agents]]` entry covers is never
/// snapshotted: `status`, a metric and an alert say so.
#[test]
fn a_broker_no_agent_covers_is_named() {
    let t = tempfile::tempdir().unwrap();
    let standin = cluster(t.path());
    let store = t.path().join("store");
    let mut c = Coordinator::create(
        &t.path().join("coord"),
        &CoordinatorSpec::new(
            &[1, 2],
            &standin.bootstrap(),
            &format!("file://{}", store.display()),
        ),
    );
    c.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.status()["uncovered_brokers"] != json!([3]) {
        assert!(std::time::Instant::now() < deadline, "{}", c.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first look also learned which cluster this coordinator is for.
    assert_eq!(c.status()["cluster_id"], json!(standin.cluster_id()));
    let out = c.cli_ok(&["status"], 0);
    assert!(out.contains("NOT COVERED: broker(s) [3]"), "{out}");
    assert!(
        out.contains(&format!("cluster:  {}", standin.cluster_id())),
        "{out}"
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", c.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("kafka_snapshot_broker_uncovered{broker=\"3\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("kafka_snapshot_broker_uncovered{broker=\"1\"}"));
}

#[test]
fn refusals_leave_no_trace_and_epochs_fence_stale_agents() {
    let t = tempfile::tempdir().unwrap();
    let standin = cluster(t.path());
    let store = t.path().join("store");
    let mut c = Coordinator::create(
        &t.path().join("coord"),
        &CoordinatorSpec::new(
            &[1, 2, 3],
            &standin.bootstrap(),
            &format!("file://{}", store.display()),
        ),
    );
    c.start();
    let http = Http::new(&c.url);
    let t1 = token(1);
    let t2 = token(2);

    // The coordinator's first look at the cluster records its cluster.id
    // (an event): wait for it, so that only the requests below could
    // change the state.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.status()["cluster_id"] != json!(standin.cluster_id()) {
        assert!(std::time::Instant::now() < deadline, "{}", c.status());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every refused request: (what, path, token, body, status, text in the
    // error). None of them may change anything.
    let before = state(&c);
    let j = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let mut extra = poll_body(1, None);
    extra["surprise"] = json!(1);
    let mut old = poll_body(1, None);
    old["protocol"] = json!(0);
    let hb2 = j(json!({"broker": 2, "epoch": 99, "phase": "capturing", "progress": null}));
    // (what, "[GET ]path", token, body, status, text in the error)
    type Refused<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let refused: Vec<Refused> = vec![
        (
            "status without a token",
            "GET /v1/status",
            None,
            vec![],
            401,
            "",
        ),
        (
            "status with a wrong token",
            "GET /v1/status",
            Some("not-the-admin-token-at-all"),
            vec![],
            401,
            "",
        ),
        (
            "status with an agent's token",
            "GET /v1/status",
            Some(&t1),
            vec![],
            401,
            "",
        ),
        (
            "snapshot sets without a token",
            "GET /v1/sets",
            None,
            vec![],
            401,
            "",
        ),
        (
            "snapshot sets with an agent's token",
            "GET /v1/sets",
            Some(&t1),
            vec![],
            401,
            "",
        ),
        (
            "run-now with an agent's token",
            "/v1/run-now",
            Some(&t1),
            j(json!({"broker": null})),
            401,
            "",
        ),
        (
            "restore with an agent's token",
            "/v1/restores",
            Some(&t1),
            j(json!({"broker": 1, "snapshot_id": null, "force": true})),
            401,
            "",
        ),
        (
            "poll without a token",
            "/v1/agent/poll",
            None,
            j(poll_body(1, None)),
            401,
            "",
        ),
        (
            "poll with an unknown token",
            "/v1/agent/poll",
            Some("wrong-token-xxxxxxxxxxxxxxx"),
            j(poll_body(1, None)),
            401,
            "unknown agent token",
        ),
        (
            "poll with the admin token",
            "/v1/agent/poll",
            Some(ADMIN),
            j(poll_body(1, None)),
            401,
            "",
        ),
        (
            "broker 1's token polling as broker 2",
            "/v1/agent/poll",
            Some(&t1),
            j(poll_body(2, None)),
            403,
            "belongs to broker 1, not broker 2",
        ),
        (
            "broker 1's token heartbeating as broker 2",
            "/v1/agent/heartbeat",
            Some(&t1),
            hb2.clone(),
            403,
            "belongs to broker 1",
        ),
        (
            "broker 1's token releasing as broker 2",
            "/v1/agent/release",
            Some(&t1),
            j(json!({"broker": 2, "epoch": 1, "outcome": {"type": "skipped", "reason": "x"}})),
            403,
            "belongs to broker 1",
        ),
        (
            "broker 1's token sending a notice as broker 2",
            "/v1/agent/notice",
            Some(&t1),
            j(json!({"broker": 2, "level": "error", "message": "x", "epoch": null})),
            403,
            "belongs to broker 1",
        ),
        (
            "malformed JSON (poll)",
            "/v1/agent/poll",
            Some(&t1),
            b"{\"protocol\": 1, ".to_vec(),
            400,
            "malformed",
        ),
        (
            "malformed JSON (release)",
            "/v1/agent/release",
            Some(&t1),
            b"[1, 2".to_vec(),
            400,
            "malformed",
        ),
        (
            "malformed JSON (run-now)",
            "/v1/run-now",
            Some(ADMIN),
            b"{broker: 1}".to_vec(),
            400,
            "malformed",
        ),
        (
            "wrong type",
            "/v1/agent/poll",
            Some(&t1),
            j(json!({"protocol": "one", "broker": 1})),
            400,
            "malformed",
        ),
        (
            "unknown field",
            "/v1/agent/poll",
            Some(&t1),
            j(extra),
            400,
            "unknown field",
        ),
        (
            "old protocol",
            "/v1/agent/poll",
            Some(&t1),
            j(old),
            400,
            "protocol 0",
        ),
        (
            "oversized poll",
            "/v1/agent/poll",
            Some(&t1),
            vec![b' '; 300 * 1024],
            413,
            "",
        ),
        (
            "oversized release",
            "/v1/agent/release",
            Some(&t1),
            vec![b' '; 300 * 1024],
            413,
            "",
        ),
        (
            "oversized restore order",
            "/v1/restores",
            Some(ADMIN),
            vec![b' '; 300 * 1024],
            413,
            "",
        ),
        (
            "stale epoch heartbeat",
            "/v1/agent/heartbeat",
            Some(&t2),
            hb2,
            409,
            "stale lease epoch",
        ),
        (
            "stale epoch release",
            "/v1/agent/release",
            Some(&t2),
            j(json!({"broker": 2, "epoch": 99, "outcome": {"type": "skipped", "reason": "x"}})),
            409,
            "stale lease epoch",
        ),
        (
            "restore of an unknown broker",
            "/v1/restores",
            Some(ADMIN),
            j(json!({"broker": 9, "snapshot_id": null, "force": false})),
            404,
            "broker 9",
        ),
        (
            "run-now of an unknown broker",
            "/v1/run-now",
            Some(ADMIN),
            j(json!({"broker": 9})),
            404,
            "broker 9",
        ),
    ];
    for (what, path, tok, body, want, text) in &refused {
        let (code, answer) = match path.strip_prefix("GET ") {
            Some(p) => http.get(p, *tok),
            None => http.post_raw(path, *tok, body.clone()),
        };
        assert_eq!(code, *want, "{what}: {answer}");
        assert!(
            answer.to_string().contains(text),
            "{what}: the error should say {text:?}: {answer}"
        );
        assert_eq!(state(&c), before, "{what} changed the state");
        report::record("api", what, &[("inputs", 1)]);
    }
    assert_eq!(state(&c), before, "refused requests changed the state");

    // A cycle: broker 1 gets the lease (the coordinator's own check passes
    // against the stand-in cluster), nobody else does.
    c.cli_ok(&["run-now"], 0);
    let (code, body) = http.post("/v1/agent/poll", Some(&t2), &poll_body(2, None));
    assert_eq!((code, &body["action"]), (200, &json!({"type": "idle"})));
    let (code, body) = http.post("/v1/agent/poll", Some(&t1), &poll_body(1, None));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["action"]["type"], "snapshot", "{body}\n{}", c.logs());
    let epoch = body["action"]["lease"]["epoch"].as_u64().unwrap();
    let hb = |b: i32, e: u64| json!({"broker": b, "epoch": e, "phase": "capturing", "progress": "cloning"});
    assert_eq!(
        http.post("/v1/agent/heartbeat", Some(&t1), &hb(1, epoch)).0,
        200
    );
    assert_eq!(
        http.post("/v1/agent/heartbeat", Some(&t1), &hb(1, epoch + 1))
            .0,
        409
    );
    assert_eq!(
        http.post("/v1/agent/heartbeat", Some(&t2), &hb(2, epoch)).0,
        409
    );
    let st = c.status();
    assert_eq!(st["lease"]["broker"], 1);
    assert_eq!(st["lease"]["phase"], "capturing");

    // The coordinator is SIGKILLed and restarted: the lease is still there.
    c.kill();
    c.start();
    assert_eq!(
        http.post("/v1/agent/heartbeat", Some(&t1), &hb(1, epoch)).0,
        200
    );
    let release = json!({"broker": 1, "epoch": epoch, "outcome": {"type": "recovered", "snapshot_id": "20260501T020000Z-aaaaaaaa", "downtime_ms": 1200}});
    assert_eq!(http.post("/v1/agent/release", Some(&t2), &release).0, 403);
    let (code, body) = http.post("/v1/agent/release", Some(&t1), &release);
    assert_eq!(code, 200, "{body}");
    let (_, body) = http.post("/v1/agent/poll", Some(&t2), &poll_body(2, None));
    assert_eq!(body["action"]["type"], "snapshot", "{body}");
    let epoch2 = body["action"]["lease"]["epoch"].as_u64().unwrap();
    assert!(epoch2 > epoch);
    // Broker 1's old epoch can no longer release anything of broker 2.
    let stale = json!({"broker": 2, "epoch": epoch, "outcome": {"type": "skipped", "reason": "x"}});
    assert_eq!(http.post("/v1/agent/release", Some(&t2), &stale).0, 409);

    let status = c.cli_ok(&["status"], 0);
    assert!(
        status.contains("held by broker 2 for a snapshot"),
        "{status}"
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", c.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .contains("kafka_snapshot_lease_held{broker=\"2\",kind=\"snapshot\",state=\"active\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("kafka_snapshot_cycle_running 1"),
        "{metrics}"
    );

    // Day-2: suspend survives a restart; cancelling the cycle aborts the
    // lease it holds through the agent's next heartbeat.
    c.cli_ok(&["suspend", "--reason", "disk swap on broker 3"], 0);
    c.kill();
    c.start();
    let status = c.cli_ok(&["status"], 0);
    assert!(
        status.contains("SUSPENDED: suspended by an operator") && status.contains("disk swap"),
        "{status}"
    );
    let out = c.cli_ok(&["cancel", "--cycle"], 0);
    assert!(
        out.contains(&format!("lease {epoch2} of broker 2 is being aborted")),
        "{out}"
    );
    let (code, body) = http.post("/v1/agent/heartbeat", Some(&t2), &hb(2, epoch2));
    assert_eq!((code, &body["abort"]), (200, &json!(true)), "{body}");
    assert_eq!(c.status()["cycle"]["state"], "cancelled");
    c.cli_ok(&["resume"], 0);
    let st = c.status();
    assert!(
        !st["suspended_because"].to_string().contains("operator"),
        "{st}"
    );
    c.cli_ok(&["cancel"], 2);
}

#[test]
fn https_with_a_generated_certificate() {
    let t = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = t.path().join("coordinator.crt");
    let key_path = t.path().join("coordinator.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    write_secret(&key_path, &key.serialize_pem());

    let mut spec = CoordinatorSpec::new(
        &[1],
        "127.0.0.1:1",
        &format!("file://{}", t.path().join("store").display()),
    );
    spec.tls = Some((cert_path.clone(), key_path));
    let mut c = Coordinator::create(&t.path().join("coord"), &spec);
    c.start();
    assert!(c.url.starts_with("https://"));
    // The CLI trusts the server's own certificate (server.tls_cert).
    let st = c.cli_ok(&["status"], 0);
    assert!(st.contains("lease:    free"), "{st}");

    // A client trusting the certificate talks; one that does not, cannot;
    // plain HTTP is not answered.
    let ca = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    let trusting = reqwest::blocking::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let (code, _) = Http::with_client(&c.url, trusting).post(
        "/v1/agent/poll",
        Some(&token(1)),
        &poll_body(1, None),
    );
    assert_eq!(code, 200);
    assert!(
        reqwest::blocking::get(format!("{}/healthz", c.url)).is_err(),
        "an unknown certificate was accepted"
    );
    let plain = reqwest::blocking::get(format!("http://localhost:{}/healthz", c.port));
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// The `kafka_snapshot_*` names the shipped alert rules use.
fn names_in_rules(rules: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = rules;
    while let Some(i) = rest.find("kafka_snapshot_") {
        let before = rules.len() - rest.len() + i;
        let word_start = before == 0
            || !rules.as_bytes()[before - 1].is_ascii_alphanumeric()
                && rules.as_bytes()[before - 1] != b'_';
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if word_start {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Guards against an alert that can never fire because the metric it
/// reads was renamed or never existed: every metric in
/// `alerts/kafka-snapshot.rules.yml` is declared (`# TYPE`) by a running
/// coordinator's /metrics or by the agent's endpoint.
#[test]
fn alert_rules_use_only_declared_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/alerts/kafka-snapshot.rules.yml"
    );
    let rules = std::fs::read_to_string(path).unwrap();
    let used = names_in_rules(&rules);
    assert!(used.len() >= 8, "only {used:?} found in {path}");

    // No cluster is needed to serve /metrics.
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let mut c = Coordinator::create(
        &t.path().join("coord"),
        &CoordinatorSpec::new(
            &[1, 2, 3],
            "127.0.0.1:1",
            &format!("file://{}", store.display()),
        ),
    );
    c.start();
    let text = reqwest::blocking::get(format!("{}/metrics", c.url))
        .unwrap()
        .text()
        .unwrap();
    let coordinator: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        coordinator.contains("kafka_snapshot_phase_duration_seconds"),
        "{text}"
    );
    let agent: std::collections::BTreeSet<String> = kafka_snapshot_agent::daemon::metrics::FAMILIES
        .iter()
        .map(|f| f.0.to_string())
        .collect();
    assert!(
        coordinator.is_disjoint(&agent),
        "a name on both endpoints: {:?}",
        coordinator.intersection(&agent).collect::<Vec<_>>()
    );
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !coordinator.contains(*n) && !agent.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "{path} uses metrics no endpoint declares: {missing:?}\ncoordinator: {coordinator:?}\nagent: {agent:?}"
    );
    // Both endpoints are used by the rules.
    assert!(used.iter().any(|n| agent.contains(n)), "{used:?}");
    assert!(used.iter().any(|n| coordinator.contains(n)), "{used:?}");
}

#[test]
fn metric_names_are_read_from_rules_text() {
    let names = names_in_rules(
        "expr: time() - kafka_snapshot_last_snapshot_timestamp_seconds > 1\n\
         expr: rate(kafka_snapshot_failures_total{reason=\"gate\"}[5m])\n\
         not_kafka_snapshot_x kafka-snapshot-agent",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "kafka_snapshot_failures_total",
            "kafka_snapshot_last_snapshot_timestamp_seconds"
        ]
    );
}

/// Under systemd (Type=notify, WatchdogSec=) the service says READY=1 once
/// it serves, pings the watchdog at half of WATCHDOG_USEC, and says
/// STOPPING=1 on SIGTERM before it exits 0.
#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let t = tempfile::tempdir().unwrap();
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let spec = CoordinatorSpec::new(
        &[1],
        "127.0.0.1:1",
        &format!("file://{}", t.path().join("store").display()),
    );
    let mut c = Coordinator::create(&t.path().join("coord"), &spec);
    let path = sock_path.display().to_string();
    c.start_with_env(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")]);
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while !seen.contains(&"READY=1\n".to_string())
        || seen.iter().filter(|m| *m == "WATCHDOG=1\n").count() < 3
    {
        seen.push(recv());
        assert!(seen.len() < 100, "{seen:?}");
    }
    // SIGHUP (`systemctl reload`) reads the config again; the service
    // goes on.
    c.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !c.logs().contains("config reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.terminate(), Some(0), "{}", c.logs());
    loop {
        let m = recv();
        if m == "STOPPING=1\n" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1\n", "unexpected notification");
    }
}

/// Every kind of bad coordinator config: `validate` exits 2 and names the
/// file and the key (or section) at fault.
#[test]
fn validate_refuses_every_bad_config_naming_file_and_key() {
    let t = tempfile::tempdir().unwrap();
    let good = Coordinator::create(
        &t.path().join("good"),
        &CoordinatorSpec::new(&[1, 2, 3], "127.0.0.1:9092", "file:///var/tmp/snap"),
    );
    good.cli_ok(&["validate"], 0);
    let base = std::fs::read_to_string(&good.config).unwrap();
    let sha1 = sha256_hex(&token(1));
    let sha2 = sha256_hex(&token(2));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown section",
            format!("{base}\n[leases]\nttl = \"1m\"\n"),
            "leases",
        ),
        (
            "unknown key",
            base.replace("[lease]\n", "[lease]\nttl_seconds = 5\n"),
            "ttl_seconds",
        ),
        (
            "unknown key of an agent",
            base.replacen("[[agents]]\n", "[[agents]]\nhost = \"h\"\n", 1),
            "host",
        ),
        (
            "wrong type",
            base.replace("keep_last = 7", "keep_last = \"seven\""),
            "keep_last",
        ),
        (
            "unparsable duration",
            base.replace("ttl = \"10s\"", "ttl = \"ten\""),
            "ttl",
        ),
        (
            "missing [storage]",
            base.replace("[storage]\n", "[unused]\n")
                .replace("[unused]\nurl", "[storage_x]\nurl"),
            "storage",
        ),
        (
            "missing kafka.bootstrap_servers",
            base.replace("bootstrap_servers", "bootstrap"),
            "bootstrap",
        ),
        (
            "no agents",
            base.replace("[[agents]]", "[[nobody]]"),
            "agents",
        ),
        (
            "two agents share a token",
            base.replace(&sha2, &sha1),
            "agents.token_sha256",
        ),
        (
            "lease TTL too short",
            base.replace("ttl = \"10s\"", "ttl = \"1s\""),
            "lease.ttl",
        ),
        (
            "poll interval not shorter than the TTL",
            base.replace("poll_interval = \"500ms\"", "poll_interval = \"20s\""),
            "lease.poll_interval",
        ),
        (
            "no attempts",
            base.replace(
                "gate_timeout = \"2m\"",
                "gate_timeout = \"2m\"\nmax_attempts = 0",
            ),
            "schedule.max_attempts",
        ),
        (
            "retention that keeps nothing",
            base.replace("keep_last = 7", "keep_last = 0"),
            "retention.keep_last",
        ),
        (
            "bad schedule",
            base.replace(
                "suspend = true",
                "suspend = true\nschedule = \"61 * * * *\"",
            ),
            "schedule.schedule",
        ),
    ];
    let validate = |path: &std::path::Path| {
        let out = std::process::Command::new(bin("kafka-snapshot-coordinator"))
            .args(["validate", "--config"])
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    for (i, (what, text, key)) in cases.iter().enumerate() {
        assert_ne!(text, &base, "{what}: the case changes nothing");
        let path = t.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, err) = validate(&path);
        assert_eq!(code, Some(2), "{what}: {err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(key),
            "{what}: validate must name {} and {key:?}: {err}",
            path.display()
        );
        report::record("configs", &format!("coordinator: {what}"), &[("inputs", 1)]);
    }

    // Three independent mistakes: one run names all three.
    let text = base
        .replace("ttl = \"10s\"", "ttl = \"1s\"")
        .replace("keep_last = 7", "keep_last = 0")
        .replace(
            "gate_timeout = \"2m\"",
            "gate_timeout = \"2m\"\nmax_attempts = 0",
        );
    let path = t.path().join("three.toml");
    std::fs::write(&path, text).unwrap();
    let (code, err) = validate(&path);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: 3 problems:", path.display())),
        "{err}"
    );
    for key in ["lease.ttl", "retention.keep_last", "schedule.max_attempts"] {
        assert!(err.contains(&format!("  - {key}: ")), "{key}: {err}");
    }
    report::record(
        "configs",
        "coordinator: three problems at once",
        &[("inputs", 1)],
    );
}
