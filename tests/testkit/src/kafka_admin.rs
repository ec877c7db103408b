//! The admin requests the real-Kafka tests use to put a cluster into the
//! states the agent's gate must refuse: topics on chosen replicas, dynamic
//! configs (replication throttles), partition reassignments and
//! intra-broker replica moves (`-future` dirs), and topic deletion. Each
//! is the request Kafka's own tools send (`kafka-topics`, `kafka-configs`,
//! `kafka-reassign-partitions`), sent over [`Connection`]; every error
//! code in the answer is an error here.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::alter_replica_log_dirs_request::{
    AlterReplicaLogDir, AlterReplicaLogDirTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterReplicaLogDirsRequest, BrokerId, CreateTopicsRequest,
    DeleteTopicsRequest, ElectLeadersRequest, IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::KafkaCluster;
use crate::wire::Connection;

/// `ConfigResource.Type` of the admin protocol.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// `AlterConfigOp.OpType`.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic(name: &str) -> TopicName {
    TopicName(s(name))
}

/// ElectLeaders' election type for the preferred (first) replica.
const ELECTION_PREFERRED: i8 = 0;
/// ElectLeaders: the preferred replica already leads.
const ELECTION_NOT_NEEDED: i16 = 84;

/// A dynamic config change: `Some(value)` sets, `None` deletes the key.
pub type ConfigChange<'a> = (&'a str, Option<&'a str>);

impl KafkaCluster {
    fn admin(&self, id: i32, timeout: Duration) -> Result<Connection> {
        Connection::connect(&self.address(id), timeout)
    }

    /// The controller Metadata names, for the requests only it handles
    /// in ZooKeeper mode (CreateTopics, DeleteTopics,
    /// AlterPartitionReassignments). In KRaft mode Metadata names a
    /// broker, which forwards them to the active controller.
    ///
    /// A node Metadata named may be gone by the time it is dialled: asked
    /// again for up to 30 s; the error then says whether the node's
    /// process still runs.
    pub(crate) fn controller(&self, timeout: Duration) -> Result<Connection> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let md = self.metadata()?;
            let id = md.controller_id.0;
            let b = md
                .brokers
                .iter()
                .find(|b| b.node_id.0 == id)
                .with_context(|| format!("Metadata names no live controller ({id})"))?;
            match Connection::connect(&format!("{}:{}", b.host.as_str(), b.port), timeout) {
                Ok(c) => return Ok(c),
                Err(e) if std::time::Instant::now() >= deadline => {
                    let runs = self.broker_ids().contains(&id) && self.is_running(id);
                    return Err(e.context(format!(
                        "node {id}, named by Metadata, did not answer for 30 s (its process \
                         {}; log {})",
                        if runs { "runs" } else { "does not run" },
                        self.log_file(id).display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Any broker that answers.
    fn any_broker(&self, timeout: Duration) -> Result<Connection> {
        let mut last = None;
        for id in self.broker_ids() {
            match self.admin(id, timeout) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.context("the cluster has no brokers")?)
    }

    /// Creates `name` with partition `p` on the brokers `replicas[p]`
    /// (the first one its preferred leader) and the given topic configs,
    /// then waits until every partition has its full ISR.
    pub fn create_topic_on(
        &self,
        name: &str,
        replicas: &[Vec<i32>],
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let t = CreatableTopic::default()
            .with_name(topic(name))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(
                replicas
                    .iter()
                    .enumerate()
                    .map(|(p, on)| {
                        CreatableReplicaAssignment::default()
                            .with_partition_index(p as i32)
                            .with_broker_ids(on.iter().map(|&b| BrokerId(b)).collect())
                    })
                    .collect(),
            )
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            );
        self.send_create_topic(name, t)?;
        let rf = replicas.iter().map(Vec::len).max().unwrap_or(0);
        self.wait_topic_ready(name, replicas.len(), rf)
    }

    /// Moves leadership of every partition back to its preferred replica
    /// (`kafka-leader-election --election-type preferred
    /// --all-topic-partitions`) and waits until Metadata shows it: after a
    /// restart a broker leads nothing until the next automatic rebalance,
    /// which makes its next stop cheaper than the first.
    pub fn elect_preferred_leaders(&self, timeout: Duration) -> Result<()> {
        let req = ElectLeadersRequest::default()
            .with_election_type(ELECTION_PREFERRED)
            .with_topic_partitions(None)
            .with_timeout_ms(30_000);
        let resp = self.controller(Duration::from_secs(35))?.send(&req, 2)?;
        ensure!(
            resp.error_code == 0,
            "preferred leader election: error {}",
            resp.error_code
        );
        for t in &resp.replica_election_results {
            for p in &t.partition_result {
                ensure!(
                    p.error_code == 0 || p.error_code == ELECTION_NOT_NEEDED,
                    "preferred leader election of {}-{}: error {} {:?}",
                    t.topic.0.as_str(),
                    p.partition_id,
                    p.error_code,
                    p.error_message
                );
            }
        }
        self.wait_for(timeout, "every preferred replica leading", || {
            self.metadata().is_ok_and(|md| {
                md.topics.iter().all(|t| {
                    t.partitions
                        .iter()
                        .all(|p| p.replica_nodes.first() == Some(&p.leader_id))
                })
            })
        })
    }

    /// CreateTopics of one topic, sent to the controller; any error code
    /// in the answer is an error.
    pub(crate) fn send_create_topic(&self, name: &str, t: CreatableTopic) -> Result<()> {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![t])
            .with_timeout_ms(30_000);
        let resp = self.controller(Duration::from_secs(35))?.send(&req, 5)?;
        for t in &resp.topics {
            ensure!(
                t.error_code == 0,
                "creating topic {name}: error {} {:?}",
                t.error_code,
                t.error_message
            );
        }
        Ok(())
    }

    /// Deletes `name` and waits until Metadata no longer lists it.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![topic(name)])
            .with_timeout_ms(30_000);
        let resp = self.controller(Duration::from_secs(35))?.send(&req, 5)?;
        for r in &resp.responses {
            ensure!(
                r.error_code == 0,
                "deleting topic {name}: error {} {:?}",
                r.error_code,
                r.error_message
            );
        }
        self.wait_for(
            Duration::from_secs(60),
            &format!("topic {name} gone"),
            || {
                self.metadata().is_ok_and(|md| {
                    !md.topics
                        .iter()
                        .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
                })
            },
        )
    }

    /// IncrementalAlterConfigs of broker `id`'s own dynamic configs (sent
    /// to that broker, as `kafka-configs --entity-type brokers
    /// --entity-name <id>` does).
    pub fn alter_broker_config(&self, id: i32, changes: &[ConfigChange]) -> Result<()> {
        let mut c = self.admin(id, Duration::from_secs(30))?;
        alter_configs(&mut c, RESOURCE_BROKER, &id.to_string(), changes)
    }

    /// IncrementalAlterConfigs of topic `name`.
    pub fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<()> {
        let mut c = self.any_broker(Duration::from_secs(30))?;
        alter_configs(&mut c, RESOURCE_TOPIC, name, changes)
    }

    /// AlterPartitionReassignments of one partition to `replicas`, or
    /// cancels its reassignment with `None`.
    pub fn reassign(&self, name: &str, partition: i32, replicas: Option<&[i32]>) -> Result<()> {
        let req = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![ReassignableTopic::default()
                .with_name(topic(name))
                .with_partitions(vec![ReassignablePartition::default()
                    .with_partition_index(partition)
                    .with_replicas(
                        replicas.map(|r| r.iter().map(|&b| BrokerId(b)).collect()),
                    )])]);
        let resp = self.controller(Duration::from_secs(35))?.send(&req, 0)?;
        ensure!(
            resp.error_code == 0,
            "reassigning {name}-{partition}: error {} {:?}",
            resp.error_code,
            resp.error_message
        );
        for t in &resp.responses {
            for p in &t.partitions {
                ensure!(
                    p.error_code == 0,
                    "reassigning {name}-{}: error {} {:?}",
                    p.partition_index,
                    p.error_code,
                    p.error_message
                );
            }
        }
        Ok(())
    }

    /// AlterReplicaLogDirs: moves broker `id`'s replica of `name-partition`
    /// into its log dir `dir` (Kafka copies it into `<dir>/<tp>.<id>-future`
    /// first).
    pub fn move_replica_dir(
        &self,
        id: i32,
        name: &str,
        partition: i32,
        dir: &std::path::Path,
    ) -> Result<()> {
        let req =
            AlterReplicaLogDirsRequest::default().with_dirs(vec![AlterReplicaLogDir::default()
                .with_path(s(&dir.display().to_string()))
                .with_topics(vec![AlterReplicaLogDirTopic::default()
                    .with_name(topic(name))
                    .with_partitions(vec![partition])])]);
        let resp = self.admin(id, Duration::from_secs(30))?.send(&req, 2)?;
        for t in &resp.results {
            for p in &t.partitions {
                ensure!(
                    p.error_code == 0,
                    "moving {name}-{} on broker {id} to {}: error {}",
                    p.partition_index,
                    dir.display(),
                    p.error_code
                );
            }
        }
        Ok(())
    }
}

fn alter_configs(
    c: &mut Connection,
    resource_type: i8,
    resource_name: &str,
    changes: &[ConfigChange],
) -> Result<()> {
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(resource_name))
            .with_configs(
                changes
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(s(k))
                            .with_config_operation(if v.is_some() { OP_SET } else { OP_DELETE })
                            .with_value(v.map(s))
                    })
                    .collect(),
            ),
    ]);
    let resp = c
        .send(&req, 1)
        .with_context(|| format!("altering the configs of {resource_name}"))?;
    for r in &resp.responses {
        ensure!(
            r.error_code == 0,
            "altering the configs of {resource_name}: error {} {:?}",
            r.error_code,
            r.error_message
        );
    }
    Ok(())
}
