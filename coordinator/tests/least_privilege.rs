//! Least privilege on S3: the agents' storage credentials cannot erase
//! the backups. A bucket with Object Lock (GOVERNANCE, 1 day) and the
//! policy of `agent/s3-bucket-policy.json`, on the Versity S3 gateway that
//! tests/lib/versitygw.sh starts; agents write with their own key,
//! which the policy denies every deletion, and the coordinator applies
//! retention with its key.
//!
//! - A rolling cycle, its verification and the next cycles run under that
//!   policy, with no error.
//! - An agent killed at the commit leaves an archive with no manifest that
//!   its next run may not delete: the run goes on, and the coordinator's
//!   retention removes it.
//! - With the agents' credentials, no object of a committed snapshot can
//!   be deleted; the snapshot stays complete and verifies.
//! - What the coordinator's retention deletes stays in the bucket as
//!   locked versions, which not even the coordinator can delete before the
//!   lock expires.

mod common;

use common::fleet::{Fleet, FleetSpec};
use kafka_snapshot::catalog::{self, Status};
use kafka_snapshot::storage::{self, ColdStore, StoreOptions};
use kafka_snapshot_model::error::Error;
use kafka_snapshot_testkit::report;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const CYCLE: Duration = Duration::from_secs(300);

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through tests/run.sh, which starts the locked S3 bucket (tests/lib/versitygw.sh)")
    })
}

/// `[storage.s3]` for the user `who` (`AGENT` or `COORDINATOR`).
fn s3_settings(who: &str) -> String {
    format!(
        "[storage.s3]\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\npath_style = true\n",
        var("KSNAP_TEST_LOCKED_S3_ENDPOINT"),
        var("KSNAP_TEST_LOCKED_S3_REGION"),
        var(&format!("KSNAP_TEST_LOCKED_S3_{who}_KEY_ID")),
        var(&format!("KSNAP_TEST_LOCKED_S3_{who}_SECRET")),
    )
}

/// The store as the agents see it (agent 1's config), through the
/// product's own S3 code.
fn agents_store(f: &Fleet) -> Box<dyn ColdStore> {
    let cfg = kafka_snapshot::config::AgentConfig::load(&f.agents[0].config).unwrap();
    storage::open(&cfg.storage.url, &StoreOptions::from_config(&cfg.storage)).unwrap()
}

/// An S3 request signed as the gateway's root (to see past the policy:
/// object versions), or as the coordinator; (HTTP status, body).
fn s3_request(who: &str, method: &str, path_and_query: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{}:s3", var("KSNAP_TEST_LOCKED_S3_REGION")))
        .arg("--user")
        .arg(format!(
            "{}:{}",
            var(&format!("KSNAP_TEST_LOCKED_S3_{who}_KEY_ID")),
            var(&format!("KSNAP_TEST_LOCKED_S3_{who}_SECRET"))
        ))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(format!(
            "{}/{}{}",
            var("KSNAP_TEST_LOCKED_S3_ENDPOINT"),
            var("KSNAP_TEST_LOCKED_S3_BUCKET"),
            path_and_query
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn xml_values(body: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    body.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

fn run_cycle(f: &Fleet) -> Value {
    f.wait_status("the slot to be free", CYCLE, |st| {
        st["lease"]["state"].as_str().is_none_or(|s| s == "free")
            && !st["cycle"]["state"]
                .as_str()
                .is_some_and(|s| s == "running" || s == "finishing")
    });
    let last = f.coord.status()["cycle"]["id"].as_i64().unwrap_or(0);
    f.coord.cli_ok(&["run-now"], 0);
    f.wait_status("the cycle", CYCLE, |st| {
        st["cycle"]["id"].as_i64().unwrap_or(0) > last
            && matches!(
                st["cycle"]["state"].as_str(),
                Some("done" | "partial" | "failed")
            )
    })
}

fn listed(store: &dyn ColdStore) -> Vec<catalog::Listed> {
    catalog::list(store, None, None).unwrap()
}

#[test]
fn the_agents_credentials_cannot_delete_a_committed_snapshot() {
    let prefix = format!("least-privilege-{}", std::process::id());
    let spec = FleetSpec {
        store_url: Some(format!(
            "s3://{}/{prefix}",
            var("KSNAP_TEST_LOCKED_S3_BUCKET")
        )),
        storage_extra: s3_settings("AGENT"),
        coordinator_storage_extra: Some(s3_settings("COORDINATOR")),
        retention: Some("keep_last = 1\n"),
        ..FleetSpec::default()
    };
    let mut f = Fleet::build(spec, |_| {});
    let agents = agents_store(&f);

    // A whole cycle under the policy.
    let st = run_cycle(&f);
    assert_eq!(st["cycle"]["state"], "done", "{st:#}\n{}", f.logs());
    f.wait_all_verified(CYCLE);
    let first: Vec<catalog::Listed> = listed(agents.as_ref());
    assert_eq!(first.len(), 3, "{first:#?}");

    // Agent 2 killed at the commit: its archive is stored, its manifest
    // never written. Its next run may not delete that archive.
    f.agent(2).kill();
    f.agent(2).start_with(&["before-manifest"]);
    f.coord.cli_ok(&["run-now"], 0);
    f.agent(2)
        .wait_paused("before-manifest", Duration::from_secs(120));
    f.agent(2).kill();
    f.agent(2).start();
    let st = f.wait_cycle_end(CYCLE);
    assert_eq!(
        st["cycle"]["state"],
        "done",
        "the run after the kill must complete: {st:#}\n{}",
        f.logs()
    );
    assert!(
        f.agent(2)
            .logs()
            .contains("left for the coordinator's retention to remove"),
        "agent 2 should have tried to remove its interrupted snapshot and been refused\n{}",
        f.agent(2).logs()
    );
    // Retention after the cycle: the interrupted snapshot goes (with the
    // coordinator's credentials), and so do the first cycle's snapshots
    // (keep_last = 1).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = listed(agents.as_ref());
        let incomplete = now
            .iter()
            .filter(|l| matches!(l.status, Status::Incomplete))
            .count();
        if incomplete == 0 && now.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention should leave the three newest snapshots and no incomplete one: {now:#?}\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        f.coord
            .logs()
            .contains("removed an incomplete snapshot no run will finish"),
        "{}",
        f.coord.logs()
    );

    // With the agents' credentials, through the product's own S3 code:
    // every object of every committed snapshot is refused deletion.
    let committed = listed(agents.as_ref());
    let mut refused = 0;
    for l in &committed {
        assert!(matches!(l.status, Status::Complete(_)), "{l:#?}");
        for o in &l.objects {
            match agents.delete(&o.key) {
                Err(e @ Error::Refused { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&o.key) && text.contains("AccessDenied"),
                        "{text}"
                    );
                    refused += 1;
                }
                other => panic!("deleting {} as an agent: {other:?}", o.key),
            }
        }
    }
    assert_eq!(refused, 6, "an archive and a manifest per snapshot");
    for l in listed(agents.as_ref()) {
        let (code, _, err) = f.verify_snapshot(&l.snap.snapshot_id, &l.snap.broker.to_string());
        assert_eq!(code, 0, "{} must still verify: {err}", l.snap.snapshot_id);
    }

    // What retention deleted is a delete marker over locked versions:
    // still in the bucket, and not even the coordinator may delete them.
    let (code, body) = s3_request("ADMIN", "GET", &format!("?prefix={prefix}%2F&versions="));
    assert_eq!(code, 200, "{body}");
    let gone: Vec<String> = first.iter().map(|l| l.snap.manifest_key()).collect();
    let versions: Vec<(String, String)> = body
        .split("<Version>")
        .skip(1)
        .filter_map(|v| {
            let key = xml_values(v, "Key").into_iter().next()?;
            let id = xml_values(v, "VersionId").into_iter().next()?;
            Some((key, id))
        })
        .collect();
    let mut locked = 0;
    for key in &gone {
        let full = format!("{prefix}/{key}");
        let (_, id) = versions
            .iter()
            .find(|(k, _)| *k == full)
            .unwrap_or_else(|| panic!("no version of the deleted {full} kept: {body}"));
        let (code, err) = s3_request("COORDINATOR", "DELETE", &format!("/{full}?versionId={id}"));
        assert_eq!(code, 403, "a locked version of {full} was deleted: {err}");
        locked += 1;
    }
    report::record(
        "security",
        "least-privilege S3: the agents' credentials cannot delete a committed snapshot; \
         an interrupted one is left to the coordinator; deleted ones stay as locked versions",
        &[("inputs", refused + locked)],
    );
}
