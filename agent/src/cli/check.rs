//! `kafka-snapshot-agent check`: the pre-stop gate, once, against the live
//! cluster, every condition printed with its reason.

use kafka_snapshot::config::AgentConfig;
use kafka_snapshot::kafka::check_now;
use kafka_snapshot::kafka::fetch::KafkaClient;
use kafka_snapshot::kafka::gate::GateReport;
use kafka_snapshot::{logdir, Error, Result};
use std::path::Path;
use std::process::ExitCode;

pub fn run(config: &Path, broker: Option<i32>, json: bool) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let kafka = cfg.kafka(config, "check")?.clone();
    let dirs = cfg.log_dirs()?;
    let role = cfg.role(config)?;
    let broker = match broker {
        Some(b) => b,
        None => logdir::read_meta_properties(&dirs[0])?.node_id,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    let report = runtime.block_on(async {
        match KafkaClient::new(&kafka) {
            Ok(client) => {
                let client = client.with_quorum(role.is_controller());
                check_now(
                    &client,
                    broker,
                    role,
                    cfg.gate.low_replication_policy,
                    &dirs,
                )
                .await
            }
            Err(e) => GateReport::unreachable(broker, e),
        }
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.safe() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render(r: &GateReport) -> String {
    let mut out = format!(
        "broker {}: {}\n",
        r.broker,
        if r.safe() {
            "safe to stop"
        } else {
            "NOT safe to stop"
        }
    );
    for c in &r.conditions {
        let id = serde_json::to_value(c.id).expect("serialisable");
        out.push_str(&format!(
            "  {}  {:<24} {}\n",
            if c.ok { "PASS" } else { "FAIL" },
            id.as_str().unwrap_or_default(),
            c.id.describe()
        ));
        // A failed condition says why; a passed one may carry a note
        // (what a policy allowed).
        if !c.ok || !c.reason.is_empty() {
            out.push_str(&format!("        {}\n", c.reason));
            for p in &c.partitions {
                out.push_str(&format!("          {p}\n"));
            }
            if c.count > c.partitions.len() {
                out.push_str(&format!(
                    "          ... and {} more\n",
                    c.count - c.partitions.len()
                ));
            }
        }
    }
    out
}
