use krabka_protocol::owned::metadata_request::{MetadataRequest, MetadataRequestTopic};

use crate::connection::Connection;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMeta {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMeta {
    pub index: i32,
    pub error: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: [u8; 16],
    pub error: i16,
    pub internal: bool,
    pub partitions: Vec<PartitionMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMeta {
    pub cluster_id: Option<String>,
    pub controller: i32,
    pub brokers: Vec<BrokerMeta>,
    pub topics: Vec<TopicMeta>,
}

impl ClusterMeta {
    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// Metadata for `topics` (every topic when `None`); missing topics are created only when
/// `auto_create` (as producers ask) and the broker allows it.
pub async fn fetch(
    conn: &Connection,
    topics: Option<&[String]>,
    auto_create: bool,
) -> Result<ClusterMeta> {
    let req = MetadataRequest {
        topics: topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic {
                    name: Some(t.clone()),
                    ..Default::default()
                })
                .collect()
        }),
        allow_auto_topic_creation: auto_create,
        ..Default::default()
    };
    let (resp, _) = conn.send(&req, 12, "Metadata").await?;
    let mut topics: Vec<TopicMeta> = resp
        .topics
        .into_iter()
        .map(|t| {
            let mut partitions: Vec<PartitionMeta> = t
                .partitions
                .into_iter()
                .map(|p| PartitionMeta {
                    index: p.partition_index,
                    error: p.error_code,
                    leader: p.leader_id,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes,
                    isr: p.isr_nodes,
                    offline: p.offline_replicas,
                })
                .collect();
            partitions.sort_by_key(|p| p.index);
            TopicMeta {
                name: t.name.unwrap_or_default(),
                id: t.topic_id.0,
                error: t.error_code,
                internal: t.is_internal,
                partitions,
            }
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut brokers: Vec<BrokerMeta> = resp
        .brokers
        .into_iter()
        .map(|b| BrokerMeta {
            id: b.node_id,
            host: b.host,
            port: b.port,
            rack: b.rack,
        })
        .collect();
    brokers.sort_by_key(|b| b.id);
    Ok(ClusterMeta {
        cluster_id: resp.cluster_id,
        controller: resp.controller_id,
        brokers,
        topics,
    })
}
