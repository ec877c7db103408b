//! Request dispatch and the handlers of every API the stand-in implements.
//! Only versions listed in [`SUPPORTED`] are advertised and answered; any
//! other request closes the connection, as Kafka does, except ApiVersions,
//! which gets Kafka's v0 UNSUPPORTED_VERSION answer.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeLogDirsRequest,
    DescribeLogDirsResponse, DescribeQuorumRequest, DescribeQuorumResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, MetadataRequest,
    MetadataResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use anyhow::{Context, Result};

use super::sasl::{self, Auth};
use super::{configs, Broker};
use crate::definition::{BrokerDef, SecurityProtocol};
use crate::fsutil;
use crate::liveness;
use crate::logdir;
use crate::quorum;
use crate::view::{self, ClusterView};

/// Every API and version range the stand-in implements and advertises.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeQuorum, 0, 2),
];

/// Kafka error codes used here.
pub mod error {
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_REQUEST: i16 = 42;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const UNSUPPORTED_ENDPOINT_TYPE: i16 = 119;
}

/// Bit sets of AclOperation codes a broker without an authorizer allows.
const TOPIC_AUTHORIZED_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
const CLUSTER_AUTHORIZED_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub(super) enum Reply {
    /// A response frame (without its size prefix).
    Send(Vec<u8>),
    /// A response frame, then close the connection (failed SASL).
    SendAndClose(Vec<u8>, String),
    /// Close the connection, for the given reason.
    Close(String),
}

/// Which listener a connection came in on.
pub(super) type Listener = SecurityProtocol;

/// Per-connection state.
pub(super) struct Session {
    pub listener: Listener,
    pub auth: Auth,
}

impl Session {
    pub fn new(listener: Listener) -> Session {
        Session {
            listener,
            auth: if listener.uses_sasl() {
                Auth::AwaitHandshake
            } else {
                Auth::Done
            },
        }
    }
}

/// The port of `b` on `listener`: Metadata and DescribeCluster advertise
/// the endpoints of the listener the request came in on.
fn port(listener: Listener, b: &BrokerDef) -> i32 {
    b.port_for(listener).map(i32::from).unwrap_or(-1)
}

pub(super) fn handle(broker: &Broker, session: &mut Session, frame: Vec<u8>) -> Result<Reply> {
    // After a v0 SaslHandshake the client sends bare SASL tokens.
    if matches!(session.auth, Auth::Authenticating { raw: true, .. }) {
        return Ok(match sasl::step(broker, &mut session.auth, &frame) {
            sasl::Step::Continue(token) => Reply::Send(token),
            sasl::Step::Failed(msg) => Reply::Close(msg),
        });
    }
    if frame.len() < 8 {
        return Ok(Reply::Close(format!(
            "request of {} bytes is too short",
            frame.len()
        )));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let mut buf = Bytes::from(frame);
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return Ok(Reply::Close(format!("unknown API key {raw_key}")));
    };
    let Some(&(_, min, max)) = SUPPORTED.iter().find(|(k, _, _)| *k == key) else {
        return Ok(Reply::Close(format!(
            "API {key:?} (key {raw_key}) is not implemented"
        )));
    };
    if !(min..=max).contains(&version) {
        if key == ApiKey::ApiVersions {
            // KIP-511: a v0 response whatever was asked, with the error and
            // this broker's ApiVersions range, so the client can retry.
            let header = RequestHeader::decode(&mut buf, key.request_header_version(version))
                .context("decoding ApiVersions request header")?;
            let response = ApiVersionsResponse::default()
                .with_error_code(error::UNSUPPORTED_VERSION)
                .with_api_keys(vec![ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max)]);
            return respond(header.correlation_id, 0, &response);
        }
        return Ok(Reply::Close(format!(
            "{key:?} v{version} is not supported (v{min}-v{max})"
        )));
    }
    if !matches!(session.auth, Auth::Done)
        && !matches!(
            key,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        return Ok(Reply::Close(format!(
            "Unexpected Kafka request of type {key:?} during SASL handshake"
        )));
    }
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version))
        .with_context(|| format!("decoding {key:?} v{version} request header"))?;
    let corr = header.correlation_id;
    let listener = session.listener;
    if std::env::var_os("KSNAP_STANDIN_TRACE").is_some() {
        super::log(
            broker.node_id(),
            &format!(
                "request {key:?} v{version} from {:?} on {listener:?}",
                header.client_id.as_ref().map(|c| c.as_str()).unwrap_or("")
            ),
        );
    }
    match key {
        ApiKey::ApiVersions => {
            let req = ApiVersionsRequest::decode(&mut buf, version)?;
            respond(corr, version, &api_versions(&req, version))
        }
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut buf, version)?;
            respond(corr, version, &metadata(broker, listener, &req, version)?)
        }
        ApiKey::DescribeConfigs => {
            let req = DescribeConfigsRequest::decode(&mut buf, version)?;
            respond(
                corr,
                version,
                &configs::describe_configs(broker, &req, version)?,
            )
        }
        ApiKey::DescribeLogDirs => {
            let req = DescribeLogDirsRequest::decode(&mut buf, version)?;
            respond(corr, version, &describe_log_dirs(broker, &req, version))
        }
        ApiKey::ListPartitionReassignments => {
            let req = ListPartitionReassignmentsRequest::decode(&mut buf, version)?;
            respond(corr, version, &list_reassignments(broker, &req)?)
        }
        ApiKey::DescribeQuorum => {
            let req = DescribeQuorumRequest::decode(&mut buf, version)?;
            respond(corr, version, &describe_quorum(broker, &req)?)
        }
        ApiKey::DescribeCluster => {
            let req = DescribeClusterRequest::decode(&mut buf, version)?;
            respond(
                corr,
                version,
                &describe_cluster(broker, listener, &req, version)?,
            )
        }
        ApiKey::SaslHandshake => {
            let req = SaslHandshakeRequest::decode(&mut buf, version)?;
            respond(
                corr,
                version,
                &sasl::handshake(&mut session.auth, &req, version),
            )
        }
        ApiKey::SaslAuthenticate => {
            let req = SaslAuthenticateRequest::decode(&mut buf, version)?;
            let (response, close) = sasl::authenticate(broker, &mut session.auth, &req);
            match respond(corr, version, &response)? {
                Reply::Send(bytes) if close => Ok(Reply::SendAndClose(
                    bytes,
                    format!(
                        "SASL authentication failed: {}",
                        response
                            .error_message
                            .as_ref()
                            .map(|m| m.as_str())
                            .unwrap_or("")
                    ),
                )),
                reply => Ok(reply),
            }
        }
        _ => Ok(Reply::Close(format!("{key:?} is not implemented"))),
    }
}

fn respond<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    response: &R,
) -> Result<Reply> {
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, R::header_version(version))
        .context("encoding response header")?;
    response
        .encode(&mut out, version)
        .with_context(|| format!("encoding v{version} response"))?;
    Ok(Reply::Send(out.to_vec()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Kafka's check of `client.software.name` / `.version` (KIP-511).
fn valid_software_field(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

fn api_versions(req: &ApiVersionsRequest, version: i16) -> ApiVersionsResponse {
    if version >= 3
        && !(valid_software_field(req.client_software_name.as_str())
            && valid_software_field(req.client_software_version.as_str()))
    {
        return ApiVersionsResponse::default().with_error_code(error::INVALID_REQUEST);
    }
    let keys = SUPPORTED
        .iter()
        .map(|&(k, min, max)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    let mut response = ApiVersionsResponse::default().with_api_keys(keys);
    if version >= 3 {
        // A Kafka 4.0 broker's features (metadata.version 4.0-IV3).
        response = response
            .with_supported_features(vec![SupportedFeatureKey::default()
                .with_name(str_bytes("metadata.version"))
                .with_min_version(7)
                .with_max_version(25)])
            .with_finalized_features_epoch(1)
            .with_finalized_features(vec![FinalizedFeatureKey::default()
                .with_name(str_bytes("metadata.version"))
                .with_min_version_level(25)
                .with_max_version_level(25)]);
    }
    response
}

/// A live, registered broker picked at random: what a KRaft broker reports
/// as "controller" (it is not the active controller).
fn random_controller(view: &ClusterView) -> i32 {
    let live = view.registered_brokers();
    if live.is_empty() {
        return -1;
    }
    live[(fsutil::monotonic_ns() / 1000) as usize % live.len()]
}

fn metadata(
    broker: &Broker,
    listener: Listener,
    req: &MetadataRequest,
    version: i16,
) -> Result<MetadataResponse> {
    let (view, _) = view::current(&broker.paths, &broker.def)?;
    let brokers = view
        .registered_brokers()
        .into_iter()
        .filter_map(|id| broker.def.broker(id).ok())
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(str_bytes("127.0.0.1"))
                .with_port(port(listener, b))
                .with_rack(None)
        })
        .collect();

    // Which topics: null (v1+) or an empty list (v0) means all of them.
    let wanted: Option<&Vec<_>> = match &req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let include_ops = version >= 8 && req.include_topic_authorized_operations;
    let mut topics = Vec::new();
    let topic_entry = |name: &str, id: [u8; 16], internal: bool| {
        let partitions = view
            .partitions
            .iter()
            .filter(|p| p.topic == name)
            .map(|p| {
                MetadataResponsePartition::default()
                    .with_error_code(if p.leader < 0 {
                        error::LEADER_NOT_AVAILABLE
                    } else {
                        0
                    })
                    .with_partition_index(p.partition)
                    .with_leader_id(BrokerId(p.leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(p.replicas.iter().map(|&b| BrokerId(b)).collect())
                    .with_isr_nodes(p.isr.iter().map(|&b| BrokerId(b)).collect())
                    .with_offline_replicas(
                        p.offline_replicas.iter().map(|&b| BrokerId(b)).collect(),
                    )
            })
            .collect();
        let mut t = MetadataResponseTopic::default()
            .with_name(Some(topic_name(name)))
            .with_is_internal(internal)
            .with_partitions(partitions);
        if version >= 10 {
            t.topic_id = uuid::Uuid::from_bytes(id);
        }
        if include_ops {
            t.topic_authorized_operations = TOPIC_AUTHORIZED_OPERATIONS;
        }
        t
    };
    match wanted {
        None => {
            for t in &broker.def.topics {
                let id = fsutil::base64url_decode_uuid(&t.topic_id).unwrap_or_default();
                topics.push(topic_entry(&t.name, id, t.internal));
            }
        }
        Some(list) => {
            for w in list {
                // v10+ clients asking by id send a null (or empty) name.
                let by_name = w.name.as_ref().filter(|n| !n.0.is_empty());
                let found = match by_name {
                    Some(n) => broker.def.topic(n.0.as_str()),
                    None => broker.def.topics.iter().find(|t| {
                        fsutil::base64url_decode_uuid(&t.topic_id) == Some(*w.topic_id.as_bytes())
                    }),
                };
                match found {
                    Some(t) => {
                        let id = fsutil::base64url_decode_uuid(&t.topic_id).unwrap_or_default();
                        topics.push(topic_entry(&t.name, id, t.internal));
                    }
                    None => {
                        let mut t = MetadataResponseTopic::default().with_name(w.name.clone());
                        if by_name.is_some() {
                            t.error_code = error::UNKNOWN_TOPIC_OR_PARTITION;
                        } else {
                            t.error_code = error::UNKNOWN_TOPIC_ID;
                            t.topic_id = w.topic_id;
                        }
                        topics.push(t);
                    }
                }
            }
        }
    }

    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&broker.def.cluster_id)))
        .with_controller_id(BrokerId(random_controller(&view)))
        .with_topics(topics);
    if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_AUTHORIZED_OPERATIONS;
    }
    Ok(response)
}

fn describe_cluster(
    broker: &Broker,
    listener: Listener,
    req: &DescribeClusterRequest,
    version: i16,
) -> Result<DescribeClusterResponse> {
    if version >= 1 && req.endpoint_type != 1 {
        return Ok(DescribeClusterResponse::default()
            .with_error_code(error::UNSUPPORTED_ENDPOINT_TYPE)
            .with_error_message(Some(str_bytes(
                "The request was sent to an endpoint of type BROKER, but we wanted an \
                 endpoint of type CONTROLLER",
            ))));
    }
    let (view, _) = view::current(&broker.paths, &broker.def)?;
    let include_fenced = version >= 2 && req.include_fenced_brokers;
    let mut brokers = Vec::new();
    for b in &broker.def.brokers {
        let registered = view.brokers.get(&b.node_id).is_some_and(|l| l.registered);
        // A broker that ever started stays registered, fenced, while down.
        let known = broker.paths.status(b.node_id).exists();
        if registered || (include_fenced && known) {
            brokers.push(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.node_id))
                    .with_host(str_bytes("127.0.0.1"))
                    .with_port(port(listener, b))
                    .with_rack(None)
                    .with_is_fenced(!registered),
            );
        }
    }
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&broker.def.cluster_id))
        .with_controller_id(BrokerId(random_controller(&view)))
        .with_brokers(brokers);
    if req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_AUTHORIZED_OPERATIONS;
    }
    Ok(response)
}

/// DescribeQuorum of the metadata log `__cluster_metadata-0`, which a
/// broker forwards to the active controller; any other partition is
/// UNKNOWN_TOPIC_OR_PARTITION, a quorum without leader NOT_LEADER_OR_FOLLOWER.
fn describe_quorum(broker: &Broker, req: &DescribeQuorumRequest) -> Result<DescribeQuorumResponse> {
    use kafka_protocol::messages::describe_quorum_response::{
        PartitionData, ReplicaState, TopicData,
    };
    let scenario = crate::scenario::Scenario::load(&broker.paths.scenario())?;
    let now_ms = fsutil::monotonic_ns() / 1_000_000;
    let life = |id: i32| {
        if broker.def.broker(id).is_err() {
            return quorum::VoterLife::Up;
        }
        let status = liveness::BrokerStatus::load(&broker.paths, id)
            .ok()
            .flatten();
        if liveness::Liveness::of(status.as_ref()).alive {
            quorum::VoterLife::Up
        } else {
            quorum::VoterLife::Down {
                since_ms: status.map(|s| s.phase_mono_ns / 1_000_000).unwrap_or(0),
            }
        }
    };
    let q = quorum::compute(&scenario.quorum(), now_ms, fsutil::unix_ms(), life);
    let replica = |v: &quorum::VoterView| {
        ReplicaState::default()
            .with_replica_id(BrokerId(v.id))
            .with_log_end_offset(v.log_end_offset)
            .with_last_fetch_timestamp(v.last_fetch_ms)
            .with_last_caught_up_timestamp(v.last_caught_up_ms)
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let base = PartitionData::default().with_partition_index(p.partition_index);
                    if t.topic_name.0.as_str() != "__cluster_metadata" || p.partition_index != 0 {
                        return base.with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION);
                    }
                    let Some(leader) = q.leader else {
                        return base
                            .with_error_code(error::NOT_LEADER_OR_FOLLOWER)
                            .with_leader_id(BrokerId(-1));
                    };
                    base.with_leader_id(BrokerId(leader))
                        .with_leader_epoch(q.leader_epoch)
                        .with_high_watermark(q.high_watermark)
                        .with_current_voters(q.voters.iter().map(replica).collect())
                })
                .collect();
            TopicData::default()
                .with_topic_name(t.topic_name.clone())
                .with_partitions(partitions)
        })
        .collect();
    Ok(DescribeQuorumResponse::default().with_topics(topics))
}

fn list_reassignments(
    broker: &Broker,
    req: &ListPartitionReassignmentsRequest,
) -> Result<ListPartitionReassignmentsResponse> {
    let (view, scenario) = view::current(&broker.paths, &broker.def)?;
    let wanted = |topic: &str, p: i32| match &req.topics {
        None => true,
        Some(list) => list
            .iter()
            .any(|t| t.name.0.as_str() == topic && t.partition_indexes.contains(&p)),
    };
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for r in &scenario.reassignments {
        if !wanted(&r.topic, r.partition) {
            continue;
        }
        let Some(p) = view.partition(&r.topic, r.partition) else {
            continue;
        };
        let entry = OngoingPartitionReassignment::default()
            .with_partition_index(r.partition)
            .with_replicas(p.replicas.iter().map(|&b| BrokerId(b)).collect())
            .with_adding_replicas(p.adding.iter().map(|&b| BrokerId(b)).collect())
            .with_removing_replicas(p.removing.iter().map(|&b| BrokerId(b)).collect());
        match topics.iter_mut().find(|t| t.name.0.as_str() == r.topic) {
            Some(t) => t.partitions.push(entry),
            None => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(topic_name(&r.topic))
                    .with_partitions(vec![entry]),
            ),
        }
    }
    Ok(ListPartitionReassignmentsResponse::default().with_topics(topics))
}

fn describe_log_dirs(
    broker: &Broker,
    req: &DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    let wanted = |topic: &str, p: i32| match &req.topics {
        None => true,
        Some(list) => list
            .iter()
            .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&p)),
    };
    let mut results = Vec::new();
    for dir in &broker.me.log_dirs {
        let mut result =
            DescribeLogDirsResult::default().with_log_dir(str_bytes(&dir.to_string_lossy()));
        match logdir::scan_partition_dirs(dir) {
            Ok(pds) => {
                let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
                for pd in pds.iter().filter(|pd| wanted(&pd.topic, pd.partition)) {
                    let offset_lag = if pd.future {
                        future_lag(broker, &pd.topic, pd.partition, &pd.path)
                    } else {
                        0
                    };
                    let entry = DescribeLogDirsPartition::default()
                        .with_partition_index(pd.partition)
                        .with_partition_size(logdir::partition_size(&pd.path) as i64)
                        .with_offset_lag(offset_lag)
                        .with_is_future_key(pd.future);
                    match topics.iter_mut().find(|t| t.name.0.as_str() == pd.topic) {
                        Some(t) => t.partitions.push(entry),
                        None => topics.push(
                            DescribeLogDirsTopic::default()
                                .with_name(topic_name(&pd.topic))
                                .with_partitions(vec![entry]),
                        ),
                    }
                }
                result.topics = topics;
                if version >= 4 {
                    if let Ok(st) = nix::sys::statvfs::statvfs(dir.as_path()) {
                        let frag = st.fragment_size() as i64;
                        result.total_bytes = st.blocks() as i64 * frag;
                        result.usable_bytes = st.blocks_available() as i64 * frag;
                    }
                }
            }
            Err(_) => result.error_code = error::KAFKA_STORAGE_ERROR,
        }
        results.push(result);
    }
    DescribeLogDirsResponse::default().with_results(results)
}

/// How far a future replica is behind the current one, in offsets.
fn future_lag(broker: &Broker, topic: &str, partition: i32, future: &std::path::Path) -> i64 {
    let current = super::find_partition_dir(&broker.me.log_dirs, topic, partition)
        .ok()
        .flatten()
        .and_then(|p| logdir::log_end_offset(&p).ok());
    match (current, logdir::log_end_offset(future).ok()) {
        (Some(c), Some(f)) => (c - f).max(0),
        _ => 0,
    }
}
