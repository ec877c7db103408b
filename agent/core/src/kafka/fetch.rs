//! Reading a [`ClusterView`] from a live cluster: Metadata, DescribeConfigs
//! and ListPartitionReassignments through the raw client, on one
//! connection to the first bootstrap server that answers. Any error or partial answer is an error, never a view:
//! the gate fails closed.

use super::section::KafkaSection;
use super::security::Security;
use super::view::{ClusterView, PartitionState, QuorumState, Reassignment, Voter};
use super::wire::Connection;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    describe_quorum_request, DescribeConfigsRequest, DescribeQuorumRequest,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, MetadataRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

pub struct KafkaClient {
    cfg: KafkaSection,
    security: Security,
    /// Also read the controller quorum (this node is a controller).
    quorum: bool,
}

impl KafkaClient {
    pub fn new(cfg: &KafkaSection) -> Result<KafkaClient, String> {
        let security = Security::from_config(cfg)?;
        Ok(KafkaClient {
            cfg: cfg.clone(),
            security,
            quorum: false,
        })
    }

    /// Makes every view include the controller quorum (DescribeQuorum):
    /// for a node whose `process.roles` includes `controller`.
    pub fn with_quorum(mut self, quorum: bool) -> KafkaClient {
        self.quorum = quorum;
        self
    }

    /// One consistent-enough look at the cluster. The raw client goes
    /// first: its authentication errors name the mechanism and the user.
    pub async fn view(&self) -> Result<ClusterView, String> {
        self.view_with(self.quorum).await
    }

    /// [`Self::view`], with the controller quorum or without.
    pub async fn view_with(&self, quorum: bool) -> Result<ClusterView, String> {
        let mut conn = self.raw_connection("ListPartitionReassignments").await?;
        let reassignments = self.reassignments(&mut conn).await?;
        let quorum = match quorum {
            true => Some(describe_quorum(&mut conn).await?),
            false => None,
        };
        // Metadata and the topics' configs over the same fresh connection:
        // a long-lived librdkafka client was seen failing every Metadata
        // request with a transport error for minutes after a whole cluster
        // restarted, while fresh connections were answered.
        let mut view = metadata(&mut conn).await?;
        view.min_isr = self.min_isr(&mut conn, &view).await?;
        drop(conn);
        view.reassignments = reassignments;
        view.quorum = quorum;
        Ok(view)
    }

    /// The cluster.id the live cluster reports (Metadata v2+, no topics),
    /// asked on a fresh connection as every view is.
    pub async fn cluster_id(&self) -> Result<String, String> {
        let mut conn = self.raw_connection("Metadata").await?;
        let md = conn
            .send(
                &MetadataRequest::default()
                    .with_topics(Some(Vec::new()))
                    .with_allow_auto_topic_creation(false),
                "Metadata",
                12,
            )
            .await
            .map_err(|e| format!("Metadata request failed: {e}"))?;
        md.cluster_id
            .map(|c| c.to_string())
            .ok_or_else(|| format!("{}: Metadata gave no cluster.id", conn.addr()))
    }

    /// The quorum as its leader describes it, asked directly on the
    /// controllers' listener (`addrs`): for when no broker runs (a
    /// whole-cluster restore starts the controllers first). Only the
    /// leader answers DescribeQuorum; the others say they are not. A
    /// `plaintext` controller listener is reached without the `[kafka]`
    /// TLS and SASL settings; any other with them.
    pub async fn controllers_quorum(
        &self,
        addrs: &[String],
        plaintext: bool,
    ) -> Result<QuorumState, String> {
        let mut errors = Vec::new();
        for addr in addrs {
            let conn = match plaintext {
                true => {
                    Connection::connect_plain(
                        addr,
                        "kafka-snapshot-agent",
                        self.cfg.request_timeout,
                    )
                    .await
                }
                false => {
                    Connection::connect(
                        addr,
                        &self.security,
                        "kafka-snapshot-agent",
                        self.cfg.request_timeout,
                    )
                    .await
                }
            };
            match conn {
                Ok(mut c) => match describe_quorum(&mut c).await {
                    Ok(q) => return Ok(q),
                    Err(e) => errors.push(e),
                },
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(format!(
            "no controller answered DescribeQuorum as the leader: {}",
            errors.join("; ")
        ))
    }

    /// A raw connection to the first bootstrap server that answers.
    async fn raw_connection(&self, api: &str) -> Result<Connection, String> {
        let mut errors = Vec::new();
        for addr in &self.cfg.bootstrap_servers {
            match Connection::connect(
                addr,
                &self.security,
                "kafka-snapshot-agent",
                self.cfg.request_timeout,
            )
            .await
            {
                Ok(c) => return Ok(c),
                // Wrong credentials are wrong everywhere: say so at once.
                Err(e @ super::wire::WireError::Auth { .. }) => return Err(e.to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(format!(
            "{api}: no bootstrap server answered over {:?}: {}",
            self.cfg.security_protocol,
            errors.join("; ")
        ))
    }

    /// Effective `min.insync.replicas` of every topic (DescribeConfigs on
    /// the topics returns the override or the broker default).
    async fn min_isr(
        &self,
        conn: &mut Connection,
        view: &ClusterView,
    ) -> Result<std::collections::BTreeMap<String, i32>, String> {
        let mut topics: Vec<String> = view.partitions.iter().map(|p| p.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        let mut out = std::collections::BTreeMap::new();
        for chunk in topics.chunks(200) {
            let req = DescribeConfigsRequest::default().with_resources(
                chunk
                    .iter()
                    .map(|t| {
                        DescribeConfigsResource::default()
                            .with_resource_type(TOPIC_RESOURCE)
                            .with_resource_name(StrBytes::from_string(t.clone()))
                            .with_configuration_keys(Some(vec![StrBytes::from_static_str(
                                "min.insync.replicas",
                            )]))
                    })
                    .collect(),
            );
            let addr = conn.addr().to_string();
            let resp = conn
                .send(&req, "DescribeConfigs", 4)
                .await
                .map_err(|e| format!("DescribeConfigs failed: {e}"))?;
            for r in resp.results {
                let topic = r.resource_name.to_string();
                if r.error_code != 0 {
                    return Err(format!(
                        "{addr}: DescribeConfigs for topic {topic}: error code {}: {}",
                        r.error_code,
                        r.error_message.as_deref().unwrap_or("")
                    ));
                }
                let v = r
                    .configs
                    .iter()
                    .find(|c| c.name.as_str() == "min.insync.replicas")
                    .and_then(|c| c.value.as_deref())
                    .ok_or_else(|| {
                        format!("DescribeConfigs for topic {topic}: no min.insync.replicas")
                    })?;
                let n: i32 = v.parse().map_err(|_| {
                    format!("topic {topic}: min.insync.replicas {v:?} is not a number")
                })?;
                out.insert(topic, n);
            }
        }
        if let Some(missing) = topics.iter().find(|t| !out.contains_key(*t)) {
            return Err(format!(
                "DescribeConfigs answered nothing for topic {missing}"
            ));
        }
        Ok(out)
    }

    /// ListPartitionReassignments. A KRaft broker forwards it to the
    /// active controller; a ZooKeeper-mode broker that is not the
    /// controller answers NOT_CONTROLLER, and the request goes again to
    /// the controller Metadata names.
    async fn reassignments(&self, conn: &mut Connection) -> Result<Vec<Reassignment>, String> {
        let mut addr = conn.addr().to_string();
        let mut resp = self.list_reassignments(conn).await?;
        if resp.error_code == NOT_CONTROLLER {
            let mut controller = self.controller_connection(conn).await?;
            addr = controller.addr().to_string();
            resp = self.list_reassignments(&mut controller).await?;
        }
        if resp.error_code != 0 {
            return Err(format!(
                "{addr}: ListPartitionReassignments error code {}: {}",
                resp.error_code,
                resp.error_message.as_deref().unwrap_or("")
            ));
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                out.push(Reassignment {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    adding: p.adding_replicas.iter().map(|b| b.0).collect(),
                    removing: p.removing_replicas.iter().map(|b| b.0).collect(),
                });
            }
        }
        Ok(out)
    }

    async fn list_reassignments(
        &self,
        conn: &mut Connection,
    ) -> Result<ListPartitionReassignmentsResponse, String> {
        let req = ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(self.cfg.request_timeout.as_millis().min(i32::MAX as u128) as i32);
        conn.send(&req, "ListPartitionReassignments", 0)
            .await
            .map_err(|e| e.to_string())
    }

    /// A connection to the controller that Metadata (asked over `conn`)
    /// names, at its advertised address, with the same security.
    async fn controller_connection(&self, conn: &mut Connection) -> Result<Connection, String> {
        let addr = conn.addr().to_string();
        // v9: the first flexible version, served by Kafka 2.4 to 4.x.
        let md = conn
            .send(
                &MetadataRequest::default().with_topics(Some(Vec::new())),
                "Metadata",
                9,
            )
            .await
            .map_err(|e| e.to_string())?;
        let id = md.controller_id.0;
        let b = md
            .brokers
            .iter()
            .find(|b| b.node_id.0 == id)
            .ok_or_else(|| {
                format!("{addr}: not the controller, and Metadata names no live controller ({id})")
            })?;
        let controller = format!("{}:{}", b.host.as_str(), b.port);
        Connection::connect(
            &controller,
            &self.security,
            "kafka-snapshot-agent",
            self.cfg.request_timeout,
        )
        .await
        .map_err(|e| format!("connecting to the controller (broker {id}): {e}"))
    }
}

/// Kafka's NOT_CONTROLLER error code.
const NOT_CONTROLLER: i16 = 41;

/// DescribeConfigs' resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;

/// Every broker and partition, as the broker at the other end of `conn`
/// knows them (Metadata v9 to v12, all topics).
async fn metadata(conn: &mut Connection) -> Result<ClusterView, String> {
    let addr = conn.addr().to_string();
    let md = conn
        .send(
            &MetadataRequest::default()
                .with_topics(None)
                .with_allow_auto_topic_creation(false),
            "Metadata",
            12,
        )
        .await
        .map_err(|e| format!("Metadata request failed: {e}"))?;
    let mut view = ClusterView {
        brokers: md.brokers.iter().map(|b| b.node_id.0).collect(),
        ..Default::default()
    };
    for t in md.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        if t.error_code != 0 {
            return Err(format!(
                "{addr}: Metadata for topic {name}: error code {}",
                t.error_code
            ));
        }
        if name.is_empty() {
            return Err(format!("{addr}: Metadata listed a topic without a name"));
        }
        for p in t.partitions {
            view.partitions.push(PartitionState {
                topic: name.clone(),
                partition: p.partition_index,
                leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            });
        }
    }
    if view.brokers.is_empty() {
        return Err("Metadata listed no brokers".into());
    }
    Ok(view)
}

/// DescribeQuorum of the metadata log, on a broker (which forwards it to
/// the active controller) or on a controller (the leader answers).
async fn describe_quorum(conn: &mut Connection) -> Result<QuorumState, String> {
    let addr = conn.addr().to_string();
    let req = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![
                describe_quorum_request::PartitionData::default().with_partition_index(0)
            ]),
    ]);
    let resp = conn
        .send(&req, "DescribeQuorum", 2)
        .await
        .map_err(|e| e.to_string())?;
    let fail = |code: i16, msg: Option<&StrBytes>| {
        format!(
            "{addr}: DescribeQuorum error code {code}{}",
            msg.map(|m| format!(": {}", m.as_str())).unwrap_or_default()
        )
    };
    if resp.error_code != 0 {
        return Err(fail(resp.error_code, resp.error_message.as_ref()));
    }
    let p = resp
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == 0)
        .ok_or_else(|| format!("{addr}: DescribeQuorum answered no __cluster_metadata-0"))?;
    if p.error_code != 0 {
        return Err(fail(p.error_code, p.error_message.as_ref()));
    }
    Ok(QuorumState {
        leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
        high_watermark: p.high_watermark,
        voters: p
            .current_voters
            .iter()
            .map(|v| Voter {
                id: v.replica_id.0,
                log_end_offset: v.log_end_offset,
                last_fetch_ms: (v.last_fetch_timestamp >= 0).then_some(v.last_fetch_timestamp),
                last_caught_up_ms: (v.last_caught_up_timestamp >= 0)
                    .then_some(v.last_caught_up_timestamp),
            })
            .collect(),
    })
}
