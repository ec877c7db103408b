//! The Kafka wire protocol as the stand-in speaks it, checked with
//! requests encoded and responses decoded by `kafka-protocol`.

use std::io::Read;

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeConfigsResponse, DescribeLogDirsRequest,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, MetadataRequest,
    ProduceRequest, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_snapshot_standin::{Reassignment, ReplicaRef, TopicSpec, SUPPORTED_APIS};

use crate::common::*;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn ids(v: &[BrokerId]) -> Vec<i32> {
    v.iter().map(|b| b.0).collect()
}

#[test]
fn api_versions_lists_what_is_implemented_and_falls_back_to_v0() {
    let c = running(1);
    let mut conn = c.connect(1).unwrap();
    for v in 0..=3 {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ksnap-test"))
            .with_client_software_version(StrBytes::from_static_str("1.0"));
        let resp = conn.send(&req, v).unwrap();
        assert_eq!(resp.error_code, 0, "v{v}");
        let got: Vec<(i16, i16, i16)> = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        let want: Vec<(i16, i16, i16)> = SUPPORTED_APIS
            .iter()
            .map(|&(k, min, max)| (k as i16, min, max))
            .collect();
        assert_eq!(got, want, "v{v}");
        for key in [3, 18, 32, 35, 46, 60] {
            assert!(got.iter().any(|k| k.0 == key), "key {key} advertised");
        }
    }

    // A version the broker does not support (v4): Kafka answers in v0
    // with UNSUPPORTED_VERSION and its own ApiVersions range.
    let mut body = BytesMut::new();
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("ksnap-test"))
        .with_client_software_version(StrBytes::from_static_str("1.0"))
        .encode(&mut body, 4)
        .unwrap();
    let mut frame = conn
        .send_raw(
            ApiKey::ApiVersions as i16,
            4,
            ApiVersionsRequest::header_version(4),
            &body,
        )
        .unwrap();
    ResponseHeader::decode(&mut frame, 0).unwrap();
    let resp = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert!(!frame.has_remaining(), "a v0 body");
    assert_eq!(resp.error_code, 35);
    let got: Vec<(i16, i16, i16)> = resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    assert_eq!(got, vec![(18, 0, 3)]);
    // The connection stays usable, as librdkafka expects when it retries.
    assert_eq!(
        conn.send(&ApiVersionsRequest::default(), 0)
            .unwrap()
            .error_code,
        0
    );
}

#[test]
fn unsupported_requests_close_the_connection() {
    let c = running(1);
    let mut conn = c.connect(1).unwrap();
    let mut body = BytesMut::new();
    ProduceRequest::default().encode(&mut body, 9).unwrap();
    let err = conn
        .send_raw(
            ProduceRequest::KEY,
            9,
            ProduceRequest::header_version(9),
            &body,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("closed"), "{err:#}");
    // An implemented API with a version the broker does not speak.
    let mut conn = c.connect(1).unwrap();
    let mut body = BytesMut::new();
    DescribeClusterRequest::default()
        .encode(&mut body, 2)
        .unwrap();
    assert!(conn.send_raw(60, 3, 2, &body).is_err());
    // The broker still serves new connections.
    let mut conn = c.connect(1).unwrap();
    assert!(conn.send(&MetadataRequest::default(), 12).is_ok());
    let mut s = std::net::TcpStream::connect(c.address(1)).unwrap();
    std::io::Write::write_all(&mut s, &[0, 0, 0, 2, 0, 3]).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "short request closes");
}

#[test]
fn metadata_in_old_and_new_versions() {
    let c = running(3);
    let mut conn = c.connect(2).unwrap();
    let all = c.definition().topics.len();
    // v0: an empty topic list means all topics.
    let md = conn
        .send(&MetadataRequest::default().with_topics(Some(vec![])), 0)
        .unwrap();
    assert_eq!(md.topics.len(), all);
    // v1+: an empty list means none, null means all.
    let md = conn
        .send(&MetadataRequest::default().with_topics(Some(vec![])), 1)
        .unwrap();
    assert!(md.topics.is_empty());
    assert_eq!(md.brokers.len(), 3);
    for v in [1, 4, 5, 7, 9, 10, 11, 12, 13] {
        let md = conn
            .send(&MetadataRequest::default().with_topics(None), v)
            .unwrap();
        assert_eq!(md.topics.len(), all, "v{v}");
        if v >= 2 {
            assert_eq!(md.cluster_id.as_ref().unwrap().as_str(), c.cluster_id());
        }
        assert!((1..=3).contains(&md.controller_id.0), "a live broker");
        let offsets = md
            .topics
            .iter()
            .find(|t| t.name.as_ref().unwrap().0.as_str() == "__consumer_offsets")
            .unwrap();
        assert!(offsets.is_internal || v == 0);
        assert_eq!(offsets.partitions.len(), 12);
    }
    // Unknown topics, and topics by id (v12).
    let md = conn
        .send(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name("orders"))),
                MetadataRequestTopic::default().with_name(Some(name("nope"))),
            ])),
            12,
        )
        .unwrap();
    assert_eq!(md.topics[0].error_code, 0);
    assert_eq!(md.topics[1].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let orders_id = md.topics[0].topic_id;
    assert!(!orders_id.is_nil());
    let md = conn
        .send(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_topic_id(orders_id)
            ])),
            12,
        )
        .unwrap();
    assert_eq!(md.topics[0].name.as_ref().unwrap().0.as_str(), "orders");
    // The topic id is the one in the partition dirs' partition.metadata.
    let meta = c
        .log_dirs(1)
        .iter()
        .map(|d| d.join("orders-0/partition.metadata"))
        .find(|p| p.exists())
        .unwrap();
    let text = std::fs::read_to_string(meta).unwrap();
    let want = c.definition().topic("orders").unwrap().topic_id.clone();
    assert!(text.contains(&want), "{text}");
}

fn describe_configs(
    c: &TestCluster,
    via: i32,
    resources: Vec<(i8, &str)>,
    v: i16,
) -> DescribeConfigsResponse {
    let mut conn = c.connect(via).unwrap();
    let req = DescribeConfigsRequest::default()
        .with_resources(
            resources
                .into_iter()
                .map(|(t, n)| {
                    DescribeConfigsResource::default()
                        .with_resource_type(t)
                        .with_resource_name(StrBytes::from_string(n.to_string()))
                        .with_configuration_keys(None)
                })
                .collect(),
        )
        .with_include_synonyms(true)
        .with_include_documentation(v >= 3);
    conn.send(&req, v).unwrap()
}

fn value<'a>(r: &'a DescribeConfigsResponse, i: usize, key: &str) -> (&'a str, i8) {
    let e = r.results[i]
        .configs
        .iter()
        .find(|e| e.name.as_str() == key)
        .unwrap_or_else(|| panic!("{key} in result {i}"));
    (
        e.value.as_ref().map(|v| v.as_str()).unwrap_or(""),
        e.config_source,
    )
}

#[test]
fn describe_configs_reports_min_insync_replicas_per_topic_and_broker() {
    let mut spec = fast_spec(3);
    spec.broker_min_insync_replicas = 2;
    spec.topic_min_insync_replicas
        .insert("payments.v2".into(), 1);
    // RF <= min ISR: a topic that can never be stopped safely under a
    // strict rule.
    let mut ledger = TopicSpec::new("ledger", 2, 2, 3);
    ledger.min_insync_replicas = Some(2);
    spec.extra_topics.push(ledger);
    let c = create(&spec);
    c.start_all(TIMEOUT).unwrap();
    for v in 1..=4 {
        let r = describe_configs(
            &c,
            2,
            vec![
                (2, "orders"),
                (2, "payments.v2"),
                (2, "ledger"),
                (4, "2"),
                (2, "missing"),
                (4, "3"),
                (4, ""),
            ],
            v,
        );
        assert_eq!(r.results.len(), 7);
        assert_eq!(
            value(&r, 0, "min.insync.replicas"),
            ("2", 4),
            "v{v}: static broker"
        );
        assert_eq!(
            value(&r, 1, "min.insync.replicas"),
            ("1", 1),
            "v{v}: topic override"
        );
        assert_eq!(value(&r, 2, "min.insync.replicas"), ("2", 1));
        assert_eq!(value(&r, 3, "min.insync.replicas"), ("2", 4));
        assert_eq!(value(&r, 3, "node.id"), ("2", 4));
        assert_eq!(value(&r, 0, "cleanup.policy"), ("delete", 5));
        assert_eq!(r.results[4].error_code, 3, "unknown topic");
        assert_eq!(r.results[5].error_code, 42, "another broker's id");
        assert_eq!(r.results[6].error_code, 0);
        assert!(r.results[6].configs.is_empty(), "no dynamic defaults");
        let syn = &r.results[1]
            .configs
            .iter()
            .find(|e| e.name.as_str() == "min.insync.replicas")
            .unwrap()
            .synonyms;
        let syn: Vec<(&str, i8)> = syn
            .iter()
            .map(|s| (s.value.as_ref().unwrap().as_str(), s.source))
            .collect();
        assert_eq!(syn, vec![("1", 1), ("2", 4), ("1", 5)]);
        let doc = &r.results[0].configs[0].documentation;
        assert_eq!(doc.as_ref().is_some_and(|d| !d.is_empty()), v >= 3);
    }
    let md = c.metadata().unwrap();
    let ledger = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().unwrap().0.as_str() == "ledger")
        .unwrap();
    assert_eq!(ledger.partitions.len(), 2);
    assert!(ledger.partitions.iter().all(|p| p.replica_nodes.len() == 2));
    // Its partition dirs exist on the assigned brokers only.
    for (p, replicas) in c
        .definition()
        .topic("ledger")
        .unwrap()
        .replicas
        .iter()
        .enumerate()
    {
        for id in c.node_ids() {
            let has = c
                .log_dirs(id)
                .iter()
                .any(|d| d.join(format!("ledger-{p}")).is_dir());
            assert_eq!(has, replicas.contains(&id), "ledger-{p} on broker {id}");
        }
    }
    // Only the keys asked for.
    let mut conn = c.connect(1).unwrap();
    let r = conn
        .send(
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("orders"))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str(
                        "min.insync.replicas",
                    )])),
            ]),
            4,
        )
        .unwrap();
    assert_eq!(r.results[0].configs.len(), 1);
}

#[test]
fn list_partition_reassignments_and_metadata_show_a_reassignment_in_flight() {
    let mut spec = fast_spec(4);
    spec.replication_factor = 3;
    let c = create(&spec);
    c.start_all(TIMEOUT).unwrap();
    let orig = c.definition().topic("orders").unwrap().replicas[2].clone();
    let new_broker = (1..=4).find(|b| !orig.contains(b)).unwrap();
    let target = vec![new_broker, orig[0], orig[1]];
    c.update_scenario(|s| {
        s.reassignments.push(Reassignment {
            topic: "orders".into(),
            partition: 2,
            target: target.clone(),
        })
    })
    .unwrap();

    // Key 46 v0, encoded by hand and sent raw.
    let req = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(None);
    let mut body = BytesMut::new();
    req.encode(&mut body, 0).unwrap();
    let mut conn = c.connect(3).unwrap();
    let mut frame = conn
        .send_raw(
            46,
            0,
            ListPartitionReassignmentsRequest::header_version(0),
            &body,
        )
        .unwrap();
    ResponseHeader::decode(
        &mut frame,
        ListPartitionReassignmentsResponse::header_version(0),
    )
    .unwrap();
    let resp = ListPartitionReassignmentsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.topics.len(), 1);
    let t = &resp.topics[0];
    assert_eq!(t.name.0.as_str(), "orders");
    let p = &t.partitions[0];
    assert_eq!(p.partition_index, 2);
    let mut all = target.clone();
    all.push(orig[2]);
    assert_eq!(ids(&p.replicas), all);
    assert_eq!(ids(&p.adding_replicas), vec![new_broker]);
    assert_eq!(ids(&p.removing_replicas), vec![orig[2]]);

    // Filtered by partition: none for another partition.
    let resp = conn
        .send(
            &ListPartitionReassignmentsRequest::default().with_topics(Some(vec![
                ListPartitionReassignmentsTopics::default()
                    .with_name(name("orders"))
                    .with_partition_indexes(vec![0, 1]),
            ])),
            0,
        )
        .unwrap();
    assert!(resp.topics.is_empty());

    // Metadata: the union of old and new replicas; the adding one is not
    // in the ISR yet.
    let md = c.metadata().unwrap();
    let p = &md
        .topics
        .iter()
        .find(|t| t.name.as_ref().unwrap().0.as_str() == "orders")
        .unwrap()
        .partitions[2];
    assert_eq!(ids(&p.replica_nodes), all);
    assert_eq!(p.replica_nodes.len(), 4, "more replicas than the RF");
    assert!(!ids(&p.isr_nodes).contains(&new_broker));
    c.wait_in_sync(TIMEOUT).unwrap();

    c.update_scenario(|s| s.reassignments.clear()).unwrap();
    let resp = conn
        .send(&ListPartitionReassignmentsRequest::default(), 0)
        .unwrap();
    assert!(resp.topics.is_empty());
}

#[test]
fn describe_log_dirs_marks_future_replicas() {
    let c = running(3);
    let mut conn = c.connect(1).unwrap();
    let resp = conn
        .send(&DescribeLogDirsRequest::default().with_topics(None), 4)
        .unwrap();
    assert_eq!(resp.results.len(), 2);
    for (r, d) in resp.results.iter().zip(c.log_dirs(1)) {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.log_dir.as_str(), d.to_string_lossy());
        assert!(r.total_bytes > 0 && r.usable_bytes > 0);
        assert!(r
            .topics
            .iter()
            .all(|t| t.partitions.iter().all(|p| !p.is_future_key)));
    }
    assert!(resp.results.iter().any(|r| r
        .topics
        .iter()
        .any(|t| t.partitions.iter().any(|p| p.partition_size > 0))));

    c.update_scenario(|s| {
        s.future_dirs.push(ReplicaRef {
            topic: "orders".into(),
            partition: 0,
            broker: 1,
        })
    })
    .unwrap();
    let future: Vec<_> = std::fs::read_dir(&c.log_dirs(1)[1])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("orders-0.") && n.ends_with("-future"))
        .collect();
    assert_eq!(future.len(), 1, "a -future dir on disk");
    for v in 1..=4 {
        let resp = conn
            .send(
                &DescribeLogDirsRequest::default().with_topics(Some(vec![
                    DescribableLogDirTopic::default()
                        .with_topic(name("orders"))
                        .with_partitions(vec![0]),
                ])),
                v,
            )
            .unwrap();
        let entries: Vec<(bool, i64)> = resp
            .results
            .iter()
            .flat_map(|r| r.topics.iter())
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.is_future_key, p.partition_size))
            .collect();
        assert_eq!(entries.len(), 2, "v{v}: current and future replica");
        assert!(entries.iter().any(|e| e.0) && entries.iter().any(|e| !e.0));
    }
    c.update_scenario(|s| s.future_dirs.clear()).unwrap();
    assert!(!std::fs::read_dir(&c.log_dirs(1)[1]).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with("-future")));
}

#[test]
fn describe_cluster_versions() {
    let c = running(3);
    let mut conn = c.connect(1).unwrap();
    for v in 0..=2 {
        let r = conn.send(&DescribeClusterRequest::default(), v).unwrap();
        assert_eq!(r.error_code, 0);
        assert_eq!(r.cluster_id.as_str(), c.cluster_id());
        let mut b: Vec<i32> = r.brokers.iter().map(|b| b.broker_id.0).collect();
        b.sort();
        assert_eq!(b, vec![1, 2, 3]);
        assert!(r.brokers.iter().all(|b| !b.is_fenced));
    }
    // A broker does not answer for the controllers' endpoint.
    let r = conn
        .send(&DescribeClusterRequest::default().with_endpoint_type(2), 1)
        .unwrap();
    assert_eq!(r.error_code, 119);
    c.stop(3).unwrap();
    c.wait_exited(3, TIMEOUT).unwrap();
    let r = conn.send(&DescribeClusterRequest::default(), 2).unwrap();
    assert_eq!(r.brokers.len(), 2);
    let r = conn
        .send(
            &DescribeClusterRequest::default().with_include_fenced_brokers(true),
            2,
        )
        .unwrap();
    assert_eq!(r.brokers.len(), 3);
    assert!(r.brokers.iter().any(|b| b.broker_id.0 == 3 && b.is_fenced));
}
