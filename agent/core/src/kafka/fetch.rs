//! Reading a [`ClusterView`] from a live cluster: Metadata and
//! DescribeConfigs through `rdkafka`, ListPartitionReassignments through
//! the raw client. Any error or partial answer is an error, never a view:
//! the gate fails closed.

use super::section::KafkaSection;
use super::security::Security;
use super::view::{ClusterView, PartitionState, QuorumState, Reassignment, Voter};
use super::wire::Connection;
use kafka_protocol::messages::{
    describe_quorum_request, DescribeQuorumRequest, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::sync::Arc;
use std::time::Duration;

pub struct KafkaClient {
    cfg: KafkaSection,
    security: Security,
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Also read the controller quorum (this node is a controller).
    quorum: bool,
}

impl KafkaClient {
    pub fn new(cfg: &KafkaSection) -> Result<KafkaClient, String> {
        let security = Security::from_config(cfg)?;
        let admin: AdminClient<DefaultClientContext> = rdkafka_config(cfg)
            .create()
            .map_err(|e| format!("creating the Kafka admin client: {e}"))?;
        Ok(KafkaClient {
            cfg: cfg.clone(),
            security,
            admin: Arc::new(admin),
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
        drop(conn);
        let mut view = self.metadata().await?;
        view.min_isr = self.min_isr(&view).await?;
        view.reassignments = reassignments;
        view.quorum = quorum;
        Ok(view)
    }

    /// The cluster.id the live cluster reports (Metadata v2+).
    pub async fn cluster_id(&self) -> Result<String, String> {
        let admin = self.admin.clone();
        let timeout = self.cfg.request_timeout;
        tokio::task::spawn_blocking(move || admin.inner().fetch_cluster_id(timeout))
            .await
            .map_err(|e| format!("cluster id task: {e}"))?
            .ok_or_else(|| {
                format!(
                    "no cluster.id from {} within {timeout:?}",
                    self.cfg.bootstrap_servers.join(",")
                )
            })
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

    async fn metadata(&self) -> Result<ClusterView, String> {
        let admin = self.admin.clone();
        let timeout = self.cfg.request_timeout;
        let md = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|e| format!("metadata task: {e}"))?
            .map_err(|e| format!("Metadata request failed: {e}"))?;
        let mut view = ClusterView {
            brokers: md.brokers().iter().map(|b| b.id()).collect(),
            ..Default::default()
        };
        for t in md.topics() {
            if let Some(e) = t.error() {
                return Err(format!("Metadata for topic {}: error {e:?}", t.name()));
            }
            for p in t.partitions() {
                view.partitions.push(PartitionState {
                    topic: t.name().to_string(),
                    partition: p.id(),
                    leader: (p.leader() >= 0).then_some(p.leader()),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                });
            }
        }
        if view.brokers.is_empty() {
            return Err("Metadata listed no brokers".into());
        }
        Ok(view)
    }

    /// Effective `min.insync.replicas` of every topic (DescribeConfigs on
    /// the topics returns the override or the broker default).
    async fn min_isr(
        &self,
        view: &ClusterView,
    ) -> Result<std::collections::BTreeMap<String, i32>, String> {
        let mut topics: Vec<String> = view.partitions.iter().map(|p| p.topic.clone()).collect();
        topics.dedup();
        let mut out = std::collections::BTreeMap::new();
        let opts = AdminOptions::new().request_timeout(Some(self.cfg.request_timeout));
        for chunk in topics.chunks(200) {
            let specs: Vec<ResourceSpecifier> =
                chunk.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
            let results = self
                .admin
                .describe_configs(specs.iter(), &opts)
                .await
                .map_err(|e| format!("DescribeConfigs failed: {e}"))?;
            for (topic, r) in chunk.iter().zip(results) {
                let res = r.map_err(|e| format!("DescribeConfigs for topic {topic}: {e}"))?;
                let v = res
                    .get("min.insync.replicas")
                    .and_then(|e| e.value.as_deref())
                    .ok_or_else(|| {
                        format!("DescribeConfigs for topic {topic}: no min.insync.replicas")
                    })?;
                let n: i32 = v.parse().map_err(|_| {
                    format!("topic {topic}: min.insync.replicas {v:?} is not a number")
                })?;
                out.insert(topic.clone(), n);
            }
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

fn rdkafka_config(cfg: &KafkaSection) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.bootstrap_servers.join(","))
        .set("client.id", "kafka-snapshot-agent")
        .set("security.protocol", cfg.security_protocol.as_librdkafka())
        .set("socket.timeout.ms", millis(cfg.request_timeout))
        .set("log_level", "3");
    if let Some(m) = &cfg.sasl_mechanism {
        c.set("sasl.mechanisms", m.as_str());
    }
    if let Some(u) = &cfg.sasl_username {
        c.set("sasl.username", u);
    }
    if let Some(p) = cfg.sasl_password() {
        c.set("sasl.password", p);
    }
    if let Some(p) = &cfg.ssl_ca_location {
        c.set("ssl.ca.location", p.display().to_string());
    }
    if let Some(p) = &cfg.ssl_certificate_location {
        c.set("ssl.certificate.location", p.display().to_string());
    }
    if let Some(p) = &cfg.ssl_key_location {
        c.set("ssl.key.location", p.display().to_string());
    }
    c
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
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
