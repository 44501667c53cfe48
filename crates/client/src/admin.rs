//! Admin operations, as a Kafka admin client performs them.

use std::collections::BTreeMap;

use krabka_protocol::owned::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use krabka_protocol::owned::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use krabka_protocol::owned::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use krabka_protocol::owned::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use krabka_protocol::owned::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use krabka_protocol::owned::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};

use crate::Client;
use crate::error::{ClientError, Result, check};

pub const TOPIC: i8 = 2;
pub const BROKER: i8 = 4;

pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: &'static str,
    pub read_only: bool,
    pub sensitive: bool,
}

fn source_name(s: i8) -> &'static str {
    match s {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

/// An incremental config change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOp {
    Set = 0,
    Delete = 1,
    Append = 2,
    Subtract = 3,
}

impl Client {
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: Option<i32>,
        replication_factor: Option<i16>,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<()> {
        let req = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: name.to_string(),
                num_partitions: partitions.unwrap_or(-1),
                replication_factor: replication_factor.unwrap_or(-1),
                configs: configs
                    .iter()
                    .map(|(k, v)| CreatableTopicConfig {
                        name: k.clone(),
                        value: Some(v.clone()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            timeout_ms: self.timeout().as_millis() as i32,
            validate_only,
            ..Default::default()
        };
        let (resp, _) = self.any().await?.send(&req, 7, "CreateTopics").await?;
        let t = resp
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty CreateTopics answer".into()))?;
        check(t.error_code, t.error_message)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = DeleteTopicsRequest {
            topics: vec![DeleteTopicState {
                name: Some(name.to_string()),
                ..Default::default()
            }],
            topic_names: vec![name.to_string()],
            timeout_ms: self.timeout().as_millis() as i32,
            ..Default::default()
        };
        let (resp, _) = self.any().await?.send(&req, 6, "DeleteTopics").await?;
        let r = resp
            .responses
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DeleteTopics answer".into()))?;
        check(r.error_code, r.error_message)
    }

    pub async fn create_partitions(&self, name: &str, count: i32) -> Result<()> {
        let req = CreatePartitionsRequest {
            topics: vec![CreatePartitionsTopic {
                name: name.to_string(),
                count,
                assignments: None,
                ..Default::default()
            }],
            timeout_ms: self.timeout().as_millis() as i32,
            validate_only: false,
            ..Default::default()
        };
        let (resp, _) = self.any().await?.send(&req, 3, "CreatePartitions").await?;
        let r = resp
            .results
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty CreatePartitions answer".into()))?;
        check(r.error_code, r.error_message)
    }

    pub async fn describe_configs(
        &self,
        resource_type: i8,
        name: &str,
    ) -> Result<Vec<ConfigEntry>> {
        let req = DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type,
                resource_name: name.to_string(),
                configuration_keys: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        let conn = if resource_type == BROKER {
            match name.parse::<i32>() {
                Ok(id) => self.node(id).await?,
                Err(_) => self.any().await?,
            }
        } else {
            self.any().await?
        };
        let (resp, _) = conn.send(&req, 4, "DescribeConfigs").await?;
        let r = resp
            .results
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DescribeConfigs answer".into()))?;
        check(r.error_code, r.error_message)?;
        let mut entries: Vec<ConfigEntry> = r
            .configs
            .into_iter()
            .map(|c| ConfigEntry {
                name: c.name,
                value: c.value,
                source: source_name(c.config_source),
                read_only: c.read_only,
                sensitive: c.is_sensitive,
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub async fn alter_configs(
        &self,
        resource_type: i8,
        name: &str,
        ops: &[(String, ConfigOp, Option<String>)],
    ) -> Result<()> {
        let req = IncrementalAlterConfigsRequest {
            resources: vec![AlterConfigsResource {
                resource_type,
                resource_name: name.to_string(),
                configs: ops
                    .iter()
                    .map(|(k, op, v)| AlterableConfig {
                        name: k.clone(),
                        config_operation: *op as i8,
                        value: v.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            validate_only: false,
            ..Default::default()
        };
        let (resp, _) = self
            .any()
            .await?
            .send(&req, 1, "IncrementalAlterConfigs")
            .await?;
        let r =
            resp.responses.into_iter().next().ok_or_else(|| {
                ClientError::Protocol("empty IncrementalAlterConfigs answer".into())
            })?;
        check(r.error_code, r.error_message)
    }

    /// ListOffsets for every partition of `topic` at `timestamp` (EARLIEST, LATEST or a
    /// time), asking each partition's leader: (partition, offset).
    pub async fn list_offsets(&self, topic: &str, timestamp: i64) -> Result<Vec<(i32, i64)>> {
        let meta = self.metadata(Some(&[topic.to_string()])).await?;
        let t = meta.topic(topic).ok_or(ClientError::Kafka {
            code: 3,
            name: "UNKNOWN_TOPIC_OR_PARTITION",
            message: None,
        })?;
        check(t.error, Some(format!("topic {topic}")))?;
        // A partition without a leader (offline) has no offsets to give: it is left out.
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in t.partitions.iter().filter(|p| p.leader >= 0) {
            by_leader.entry(p.leader).or_default().push(p.index);
        }
        let mut out = Vec::new();
        for (leader, partitions) in by_leader {
            let req = ListOffsetsRequest {
                replica_id: -1,
                isolation_level: 0,
                topics: vec![ListOffsetsTopic {
                    name: topic.to_string(),
                    partitions: partitions
                        .iter()
                        .map(|p| ListOffsetsPartition {
                            partition_index: *p,
                            current_leader_epoch: -1,
                            timestamp,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let (resp, _) = self
                .node(leader)
                .await?
                .send(&req, 7, "ListOffsets")
                .await?;
            for t in resp.topics {
                for p in t.partitions {
                    check(p.error_code, Some(format!("{topic}-{}", p.partition_index)))?;
                    out.push((p.partition_index, p.offset));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Client {
    /// Bytes on disk per (topic, partition), from DescribeLogDirs on broker `node`.
    pub async fn log_dir_sizes(&self, node: i32) -> Result<BTreeMap<(String, i32), i64>> {
        use krabka_protocol::owned::describe_log_dirs_request::DescribeLogDirsRequest;
        let req = DescribeLogDirsRequest {
            topics: None,
            ..Default::default()
        };
        let (resp, _) = self
            .node(node)
            .await?
            .send(&req, 3, "DescribeLogDirs")
            .await?;
        let mut out = BTreeMap::new();
        for dir in resp.results {
            for t in dir.topics {
                for p in t.partitions {
                    *out.entry((t.name.clone(), p.partition_index)).or_default() +=
                        p.partition_size;
                }
            }
        }
        Ok(out)
    }
}

/// A reassignment in progress, as ListPartitionReassignments describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OngoingReassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// The metadata quorum, as DescribeQuorum describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumDescription {
    pub leader: i32,
    pub epoch: i32,
    pub high_watermark: i64,
    /// (node id, log end offset; -1 when unknown).
    pub voters: Vec<(i32, i64)>,
    pub observers: Vec<(i32, i64)>,
}

/// A broker as DescribeCluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBroker {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// Its heartbeats stopped, or it is shutting down: it leads nothing.
    pub fenced: bool,
}

impl Client {
    /// DescribeCluster v2: every registered broker, fenced ones included.
    pub async fn describe_cluster(&self) -> Result<Vec<ClusterBroker>> {
        use krabka_protocol::owned::describe_cluster_request::DescribeClusterRequest;
        let req = DescribeClusterRequest {
            include_fenced_brokers: true,
            ..Default::default()
        };
        let (resp, _) = self.any().await?.send(&req, 2, "DescribeCluster").await?;
        check(resp.error_code, resp.error_message)?;
        Ok(resp
            .brokers
            .into_iter()
            .map(|b| ClusterBroker {
                id: b.broker_id,
                host: b.host,
                port: b.port,
                rack: b.rack,
                fenced: b.is_fenced,
            })
            .collect())
    }

    /// ElectLeaders: preferred (or unclean) elections on `partitions` (every partition when
    /// `None`), sent to any broker (it asks the controller). The outcome per partition:
    /// topic, partition, error code, message.
    pub async fn elect_leaders(
        &self,
        preferred: bool,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<(String, i32, i16, Option<String>)>> {
        use krabka_protocol::owned::elect_leaders_request::{ElectLeadersRequest, TopicPartitions};
        let mut topics: Vec<TopicPartitions> = Vec::new();
        for (t, p) in partitions.iter().flatten() {
            match topics.iter_mut().find(|x| &x.topic == t) {
                Some(x) => x.partitions.push(*p),
                None => topics.push(TopicPartitions {
                    topic: t.clone(),
                    partitions: vec![*p],
                    ..Default::default()
                }),
            }
        }
        let req = ElectLeadersRequest {
            election_type: if preferred { 0 } else { 1 },
            topic_partitions: partitions.is_some().then_some(topics),
            timeout_ms: 30_000,
            ..Default::default()
        };
        let (resp, _) = self.any().await?.send(&req, 2, "ElectLeaders").await?;
        if resp.replica_election_results.is_empty() {
            check(resp.error_code, None)?;
        }
        Ok(resp
            .replica_election_results
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic;
                t.partition_result
                    .into_iter()
                    .map(move |p| (topic.clone(), p.partition_id, p.error_code, p.error_message))
            })
            .collect())
    }

    /// AlterPartitionReassignments: moves each partition to its new replicas (`None`
    /// cancels its reassignment in progress), sent to any broker (it asks the controller).
    /// The outcome per partition: topic, partition, error code, message.
    pub async fn alter_partition_reassignments(
        &self,
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    ) -> Result<Vec<(String, i32, i16, Option<String>)>> {
        use krabka_protocol::owned::alter_partition_reassignments_request::{
            AlterPartitionReassignmentsRequest, ReassignablePartition, ReassignableTopic,
        };
        let mut topics: Vec<ReassignableTopic> = Vec::new();
        for (t, p, replicas) in reassignments {
            let partition = ReassignablePartition {
                partition_index: p,
                replicas,
                ..Default::default()
            };
            match topics.iter_mut().find(|x| x.name == t) {
                Some(x) => x.partitions.push(partition),
                None => topics.push(ReassignableTopic {
                    name: t,
                    partitions: vec![partition],
                    ..Default::default()
                }),
            }
        }
        let req = AlterPartitionReassignmentsRequest {
            timeout_ms: 30_000,
            allow_replication_factor_change: true,
            topics,
            ..Default::default()
        };
        let (resp, _) = self
            .any()
            .await?
            .send(&req, 0, "AlterPartitionReassignments")
            .await?;
        if resp.responses.is_empty() {
            check(resp.error_code, resp.error_message)?;
        }
        Ok(resp
            .responses
            .into_iter()
            .flat_map(|t| {
                let topic = t.name;
                t.partitions.into_iter().map(move |p| {
                    (
                        topic.clone(),
                        p.partition_index,
                        p.error_code,
                        p.error_message,
                    )
                })
            })
            .collect())
    }

    /// ListPartitionReassignments: the reassignments in progress (of `topics` only, when
    /// given), by partition.
    pub async fn list_partition_reassignments(
        &self,
        topics: Option<&[String]>,
    ) -> Result<Vec<OngoingReassignment>> {
        use krabka_protocol::owned::list_partition_reassignments_request::ListPartitionReassignmentsRequest;
        // Every topic's, filtered here: the request names partitions one by one, which
        // would need each topic's partition count first.
        let req = ListPartitionReassignmentsRequest {
            timeout_ms: 30_000,
            topics: None,
            ..Default::default()
        };
        let (resp, _) = self
            .any()
            .await?
            .send(&req, 0, "ListPartitionReassignments")
            .await?;
        check(resp.error_code, resp.error_message)?;
        Ok(resp
            .topics
            .into_iter()
            .filter(|t| topics.is_none_or(|ts| ts.contains(&t.name)))
            .flat_map(|t| {
                let topic = t.name;
                t.partitions.into_iter().map(move |p| OngoingReassignment {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    replicas: p.replicas,
                    adding: p.adding_replicas,
                    removing: p.removing_replicas,
                })
            })
            .collect())
    }

    /// DescribeQuorum for the metadata log `__cluster_metadata-0`.
    pub async fn describe_quorum(&self) -> Result<QuorumDescription> {
        use krabka_protocol::owned::describe_quorum_request::{
            DescribeQuorumRequest, PartitionData, TopicData,
        };
        let req = DescribeQuorumRequest {
            topics: vec![TopicData {
                topic_name: "__cluster_metadata".into(),
                partitions: vec![PartitionData {
                    partition_index: 0,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (resp, _) = self.any().await?.send(&req, 1, "DescribeQuorum").await?;
        check(resp.error_code, resp.error_message)?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DescribeQuorum answer".into()))?;
        check(p.error_code, p.error_message)?;
        let replicas = |v: Vec<
            krabka_protocol::owned::common::describe_quorum_response::replica_state::ReplicaState,
        >| {
            v.into_iter()
                .map(|r| (r.replica_id, r.log_end_offset))
                .collect()
        };
        Ok(QuorumDescription {
            leader: p.leader_id,
            epoch: p.leader_epoch,
            high_watermark: p.high_watermark,
            voters: replicas(p.current_voters),
            observers: replicas(p.observers),
        })
    }
}
