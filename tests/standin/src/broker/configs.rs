//! DescribeConfigs: topic (resource type 2) and broker (type 4) configs.
//! A small but realistic subset of Kafka's configs, with Kafka's sources
//! and synonyms; `min.insync.replicas` follows the cluster definition.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use anyhow::Result;

use super::api::error;
use super::Broker;
use crate::definition::{SecurityProtocol, TopicDef};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// ConfigSource codes.
pub mod source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}
use source::*;

/// ConfigType codes (v3+).
mod ctype {
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const INT: i8 = 3;
    pub const SHORT: i8 = 4;
    pub const LONG: i8 = 5;
    pub const DOUBLE: i8 = 6;
    pub const LIST: i8 = 7;
    pub const PASSWORD: i8 = 9;
}

struct Entry {
    name: String,
    value: Option<String>,
    source: i8,
    read_only: bool,
    sensitive: bool,
    config_type: i8,
    /// (name, value, source), most specific first; the entry itself first.
    synonyms: Vec<(String, Option<String>, i8)>,
    doc: &'static str,
}

impl Entry {
    fn new(name: &str, value: &str, source: i8, config_type: i8, doc: &'static str) -> Entry {
        Entry {
            name: name.to_string(),
            value: Some(value.to_string()),
            source,
            read_only: false,
            sensitive: false,
            config_type,
            synonyms: vec![(name.to_string(), Some(value.to_string()), source)],
            doc,
        }
    }
    fn read_only(mut self) -> Entry {
        self.read_only = true;
        self
    }
    /// Adds a less specific synonym (a broker-level setting or the default).
    fn synonym(mut self, name: &str, value: &str, source: i8) -> Entry {
        self.synonyms
            .push((name.to_string(), Some(value.to_string()), source));
        self
    }
}

pub(super) fn describe_configs(
    broker: &Broker,
    req: &DescribeConfigsRequest,
    version: i16,
) -> Result<DescribeConfigsResponse> {
    let mut results = Vec::new();
    for resource in &req.resources {
        let name = resource.resource_name.as_str();
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entries = match resource.resource_type {
            RESOURCE_TOPIC => match broker.def.topic(name) {
                Some(t) => Ok(topic_configs(broker, t)),
                None => Err((
                    error::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("Topic {name} does not exist."),
                )),
            },
            RESOURCE_BROKER if name.is_empty() => Ok(Vec::new()),
            RESOURCE_BROKER if name == broker.node_id().to_string() => Ok(broker_configs(broker)),
            RESOURCE_BROKER => Err((
                error::INVALID_REQUEST,
                format!(
                    "Unexpected broker id, expected {} or empty string, but received {name}",
                    broker.node_id()
                ),
            )),
            other => Err((
                error::INVALID_REQUEST,
                format!("the stand-in broker does not describe resource type {other}"),
            )),
        };
        match entries {
            Ok(entries) => {
                result.configs = entries
                    .into_iter()
                    .filter(|e| {
                        resource
                            .configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name))
                    })
                    .map(|e| encode_entry(e, req, version))
                    .collect();
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        results.push(result);
    }
    Ok(DescribeConfigsResponse::default().with_results(results))
}

fn encode_entry(
    e: Entry,
    req: &DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut r = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(e.name))
        .with_value(e.value.map(StrBytes::from_string))
        .with_read_only(e.read_only)
        .with_config_source(e.source)
        .with_is_sensitive(e.sensitive);
    if req.include_synonyms {
        r.synonyms = e
            .synonyms
            .into_iter()
            .map(|(name, value, source)| {
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_string(name))
                    .with_value(value.map(StrBytes::from_string))
                    .with_source(source)
            })
            .collect();
    }
    if version >= 3 {
        r.config_type = e.config_type;
        if req.include_documentation {
            r.documentation = Some(StrBytes::from_static_str(e.doc));
        }
    }
    r
}

fn topic_configs(broker: &Broker, t: &TopicDef) -> Vec<Entry> {
    let broker_min_isr = broker.def.broker_min_insync_replicas.to_string();
    let min_isr = match t.min_insync_replicas {
        Some(v) => Entry::new(
            "min.insync.replicas",
            &v.to_string(),
            DYNAMIC_TOPIC_CONFIG,
            ctype::INT,
            MIN_ISR_DOC,
        )
        .synonym("min.insync.replicas", &broker_min_isr, STATIC_BROKER_CONFIG),
        None => Entry::new(
            "min.insync.replicas",
            &broker_min_isr,
            STATIC_BROKER_CONFIG,
            ctype::INT,
            MIN_ISR_DOC,
        ),
    }
    .synonym("min.insync.replicas", "1", DEFAULT_CONFIG);
    let cleanup = if t.cleanup_policy == "delete" {
        Entry::new(
            "cleanup.policy",
            "delete",
            DEFAULT_CONFIG,
            ctype::LIST,
            CLEANUP_DOC,
        )
    } else {
        Entry::new(
            "cleanup.policy",
            &t.cleanup_policy,
            DYNAMIC_TOPIC_CONFIG,
            ctype::LIST,
            CLEANUP_DOC,
        )
        .synonym("log.cleanup.policy", "delete", DEFAULT_CONFIG)
    };
    let segment = if t.internal {
        Entry::new(
            "segment.bytes",
            "104857600",
            DYNAMIC_TOPIC_CONFIG,
            ctype::INT,
            "The segment file size for the log.",
        )
        .synonym("log.segment.bytes", "1073741824", DEFAULT_CONFIG)
    } else {
        Entry::new(
            "segment.bytes",
            "1073741824",
            DEFAULT_CONFIG,
            ctype::INT,
            "The segment file size for the log.",
        )
    };
    vec![
        cleanup,
        Entry::new(
            "compression.type",
            "producer",
            DEFAULT_CONFIG,
            ctype::STRING,
            "The final compression type for a given topic.",
        ),
        Entry::new(
            "max.message.bytes",
            "1048588",
            DEFAULT_CONFIG,
            ctype::INT,
            "The largest record batch size allowed by Kafka.",
        ),
        Entry::new(
            "message.timestamp.type",
            "CreateTime",
            DEFAULT_CONFIG,
            ctype::STRING,
            "Whether the timestamp in the message is message create time or log append time.",
        ),
        Entry::new(
            "min.cleanable.dirty.ratio",
            "0.5",
            DEFAULT_CONFIG,
            ctype::DOUBLE,
            "How frequently the log compactor will attempt to clean the log.",
        ),
        min_isr,
        Entry::new(
            "retention.bytes",
            "-1",
            DEFAULT_CONFIG,
            ctype::LONG,
            "The maximum size a partition can grow to before old log segments are discarded.",
        ),
        Entry::new(
            "retention.ms",
            "604800000",
            DEFAULT_CONFIG,
            ctype::LONG,
            "The maximum time a log is retained before old log segments are discarded.",
        )
        .synonym("log.retention.hours", "168", DEFAULT_CONFIG),
        segment,
        Entry::new(
            "segment.ms",
            "604800000",
            DEFAULT_CONFIG,
            ctype::LONG,
            "The period of time after which Kafka will force the log to roll.",
        ),
        Entry::new(
            "unclean.leader.election.enable",
            "false",
            DEFAULT_CONFIG,
            ctype::BOOLEAN,
            "Whether replicas not in the ISR may be elected as leader as a last resort.",
        ),
    ]
}

fn broker_configs(broker: &Broker) -> Vec<Entry> {
    let id = broker.node_id().to_string();
    let listener = SecurityProtocol::ALL
        .iter()
        .filter_map(|&p| {
            let name = match p {
                SecurityProtocol::Plaintext => "PLAINTEXT",
                SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
                SecurityProtocol::Ssl => "SSL",
                SecurityProtocol::SaslSsl => "SASL_SSL",
            };
            broker
                .me
                .port_for(p)
                .map(|port| format!("{name}://127.0.0.1:{port}"))
        })
        .collect::<Vec<_>>()
        .join(",");
    let log_dirs: Vec<String> = broker
        .me
        .log_dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let rf = broker.def.brokers.len().min(3).to_string();
    vec![
        Entry::new(
            "node.id",
            &id,
            STATIC_BROKER_CONFIG,
            ctype::INT,
            "The node ID.",
        )
        .read_only(),
        Entry::new(
            "broker.id",
            &id,
            STATIC_BROKER_CONFIG,
            ctype::INT,
            "The broker id (node.id in KRaft).",
        )
        .read_only(),
        Entry::new(
            "process.roles",
            "broker",
            STATIC_BROKER_CONFIG,
            ctype::LIST,
            "The roles that this process plays.",
        )
        .read_only(),
        Entry::new(
            "log.dirs",
            &log_dirs.join(","),
            STATIC_BROKER_CONFIG,
            ctype::LIST,
            "The directories in which the log data is kept.",
        )
        .read_only(),
        Entry::new(
            "listeners",
            &listener,
            STATIC_BROKER_CONFIG,
            ctype::LIST,
            "Listener List.",
        ),
        Entry::new(
            "advertised.listeners",
            &listener,
            STATIC_BROKER_CONFIG,
            ctype::LIST,
            "Listeners to publish for clients to use.",
        ),
        Entry::new(
            "min.insync.replicas",
            &broker.def.broker_min_insync_replicas.to_string(),
            STATIC_BROKER_CONFIG,
            ctype::INT,
            MIN_ISR_DOC,
        )
        .synonym("min.insync.replicas", "1", DEFAULT_CONFIG),
        Entry::new(
            "default.replication.factor",
            &rf,
            STATIC_BROKER_CONFIG,
            ctype::INT,
            "The replication factor for automatically created topics.",
        )
        .synonym("default.replication.factor", "1", DEFAULT_CONFIG),
        Entry::new(
            "offsets.topic.replication.factor",
            &rf,
            STATIC_BROKER_CONFIG,
            ctype::SHORT,
            "The replication factor for the offsets topic.",
        )
        .read_only(),
        Entry::new(
            "num.partitions",
            "1",
            DEFAULT_CONFIG,
            ctype::INT,
            "The default number of log partitions per topic.",
        ),
        Entry::new(
            "unclean.leader.election.enable",
            "false",
            DEFAULT_CONFIG,
            ctype::BOOLEAN,
            "Whether replicas not in the ISR may be elected as leader as a last resort.",
        ),
        Entry::new(
            "auto.leader.rebalance.enable",
            "true",
            DEFAULT_CONFIG,
            ctype::BOOLEAN,
            "Enables auto leader balancing.",
        )
        .read_only(),
        Entry::new(
            "log.retention.hours",
            "168",
            DEFAULT_CONFIG,
            ctype::INT,
            "The number of hours to keep a log file before deleting it.",
        )
        .read_only(),
        Entry::new(
            "log.segment.bytes",
            "1073741824",
            DEFAULT_CONFIG,
            ctype::INT,
            "The maximum size of a single log file.",
        ),
        Entry::new(
            "num.recovery.threads.per.data.dir",
            "1",
            DEFAULT_CONFIG,
            ctype::INT,
            "Threads per data dir used for log recovery at startup and flushing at shutdown.",
        ),
        Entry::new(
            "sasl.enabled.mechanisms",
            &super::sasl::MECHANISMS.join(","),
            STATIC_BROKER_CONFIG,
            ctype::LIST,
            "The list of SASL mechanisms enabled in the Kafka server.",
        )
        .synonym("sasl.enabled.mechanisms", "GSSAPI", DEFAULT_CONFIG),
        Entry {
            name: "ssl.keystore.password".into(),
            value: None,
            source: DEFAULT_CONFIG,
            read_only: false,
            sensitive: true,
            config_type: ctype::PASSWORD,
            synonyms: vec![("ssl.keystore.password".into(), None, DEFAULT_CONFIG)],
            doc: "The store password for the key store file.",
        },
    ]
}

const MIN_ISR_DOC: &str = "When a producer sets acks to \"all\" (or \"-1\"), min.insync.replicas \
    specifies the minimum number of replicas that must acknowledge a write for the write to be \
    considered successful.";
const CLEANUP_DOC: &str =
    "This config designates the retention policy to use on log segments: delete or compact.";
