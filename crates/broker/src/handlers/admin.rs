//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords,
//! DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::create_partitions_request::CreatePartitionsRequest;
use krabka_protocol::owned::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use krabka_protocol::owned::create_topics_request::CreateTopicsRequest;
use krabka_protocol::owned::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use krabka_protocol::owned::delete_records_request::DeleteRecordsRequest;
use krabka_protocol::owned::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use krabka_protocol::owned::delete_topics_request::DeleteTopicsRequest;
use krabka_protocol::owned::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use krabka_protocol::owned::describe_cluster_request::DescribeClusterRequest;
use krabka_protocol::owned::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use krabka_protocol::primitives::uuid::Uuid;

use super::{HandlerResult, respond};
use crate::acl::{Resource, authorized_operations};
use crate::broker::{Broker, BrokerError, NewTopic};
use crate::errors;
use crate::protocol::{self, RequestContext};
use crate::topic_config::all_keys;

pub(crate) fn broker_error(e: &BrokerError) -> i16 {
    match e {
        BrokerError::InvalidTopic(_) => errors::INVALID_TOPIC_EXCEPTION,
        BrokerError::TopicExists(_) => errors::TOPIC_ALREADY_EXISTS,
        BrokerError::InvalidPartitions(_) => errors::INVALID_PARTITIONS,
        BrokerError::InvalidReplicationFactor(_) => errors::INVALID_REPLICATION_FACTOR,
        BrokerError::InvalidReplicaAssignment(_) => errors::INVALID_REPLICA_ASSIGNMENT,
        BrokerError::InvalidConfig(_) => errors::INVALID_CONFIG,
        BrokerError::UnknownTopic(_) => errors::UNKNOWN_TOPIC_OR_PARTITION,
        BrokerError::StaleConfigs(_) => errors::INVALID_UPDATE_VERSION,
        BrokerError::Storage(s) => errors::from_storage(s),
        BrokerError::Io { .. } => errors::KAFKA_STORAGE_ERROR,
        BrokerError::MetadataLog(_) => errors::REQUEST_TIMED_OUT,
        BrokerError::ProducerIdsNotReady => errors::COORDINATOR_LOAD_IN_PROGRESS,
    }
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: CreateTopicsRequest = protocol::decode(&mut body, ctx.version)?;
    let mut results = Vec::new();
    for t in req.topics {
        let mut configs = BTreeMap::new();
        let mut bad_config = None;
        for c in &t.configs {
            match &c.value {
                Some(v) => {
                    configs.insert(c.name.clone(), v.clone());
                }
                None => bad_config = Some(format!("config {} has no value", c.name)),
            }
        }
        let mut assignments: Vec<(i32, Vec<i32>)> = t
            .assignments
            .iter()
            .map(|a| (a.partition_index, a.broker_ids.clone()))
            .collect();
        assignments.sort_by_key(|a| a.0);
        let mut result = CreatableTopicResult {
            name: t.name.clone(),
            num_partitions: -1,
            replication_factor: -1,
            configs: None,
            ..Default::default()
        };
        if let Some(msg) = bad_config {
            result.error_code = errors::INVALID_CONFIG;
            result.error_message = Some(msg);
            results.push(result);
            continue;
        }
        if assignments.iter().enumerate().any(|(i, a)| a.0 != i as i32) {
            result.error_code = errors::INVALID_REPLICA_ASSIGNMENT;
            result.error_message =
                Some("partition indexes in the assignment must be 0..N-1".into());
            results.push(result);
            continue;
        }
        let new = NewTopic {
            name: t.name.clone(),
            partitions: (t.num_partitions != -1).then_some(t.num_partitions),
            replication_factor: (t.replication_factor != -1).then_some(t.replication_factor),
            assignments: assignments.into_iter().map(|a| a.1).collect(),
            configs,
        };
        match broker.create_topic(new, req.validate_only).await {
            Ok(topic) => {
                let config = topic.config.read().unwrap();
                result.topic_id = if req.validate_only {
                    Uuid::ZERO
                } else {
                    Uuid(topic.id)
                };
                result.num_partitions = if req.validate_only {
                    match (t.assignments.len(), t.num_partitions) {
                        (0, -1) => broker.config.num_partitions,
                        (0, n) => n,
                        (n, _) => n as i32,
                    }
                } else {
                    broker.partition_count(&topic.name).unwrap_or(0)
                };
                result.replication_factor = 1;
                result.configs = Some(
                    all_keys()
                        .filter_map(|k| {
                            config.describe(&broker.config, k).map(|(v, source)| {
                                CreatableTopicConfigs {
                                    name: k.to_string(),
                                    value: Some(v),
                                    read_only: false,
                                    config_source: source as i8,
                                    is_sensitive: false,
                                    ..Default::default()
                                }
                            })
                        })
                        .collect(),
                );
            }
            Err(e) => {
                result.error_code = broker_error(&e);
                result.error_message = Some(e.to_string());
            }
        }
        results.push(result);
    }
    respond(
        ctx,
        &CreateTopicsResponse {
            topics: results,
            ..Default::default()
        },
    )
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DeleteTopicsRequest = protocol::decode(&mut body, ctx.version)?;
    // v6 names topics by name or id; earlier versions by name only.
    let wanted: Vec<(Option<String>, Uuid)> = if ctx.version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::ZERO))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        responses.push({
            let mut r = DeletableTopicResult {
                name: name.clone(),
                topic_id: id,
                ..Default::default()
            };
            let name = match name {
                Some(n) => Some(n),
                None => broker.topic_by_id(&id.0).map(|t| t.name.clone()),
            };
            match name {
                None => {
                    r.error_code = errors::UNKNOWN_TOPIC_ID;
                    r.error_message = Some("unknown topic id".into());
                }
                Some(n) => match broker.delete_topic(&n).await {
                    Ok(t) => {
                        r.name = Some(n);
                        r.topic_id = Uuid(t.id);
                    }
                    Err(e) => {
                        r.error_code = broker_error(&e);
                        r.error_message = Some(e.to_string());
                    }
                },
            }
            r
        });
    }
    respond(
        ctx,
        &DeleteTopicsResponse {
            responses,
            ..Default::default()
        },
    )
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: CreatePartitionsRequest = protocol::decode(&mut body, ctx.version)?;
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let assignments = t
            .assignments
            .map(|a| a.into_iter().map(|x| x.broker_ids).collect());
        let mut r = CreatePartitionsTopicResult {
            name: t.name.clone(),
            ..Default::default()
        };
        if let Err(e) = broker
            .add_partitions(&t.name, t.count, assignments, req.validate_only)
            .await
        {
            r.error_code = broker_error(&e);
            r.error_message = Some(e.to_string());
        }
        results.push(r);
    }
    respond(
        ctx,
        &CreatePartitionsResponse {
            results,
            ..Default::default()
        },
    )
}

pub fn delete_records(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DeleteRecordsRequest = protocol::decode(&mut body, ctx.version)?;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|dp| {
                    let mut r = DeleteRecordsPartitionResult {
                        partition_index: dp.partition_index,
                        low_watermark: -1,
                        ..Default::default()
                    };
                    match broker.leader_partition(&t.name, dp.partition_index) {
                        Err(code) => r.error_code = code,
                        Ok(p) => {
                            // -1 means "up to the high watermark".
                            let offset = if dp.offset == -1 {
                                p.high_watermark() as i64
                            } else {
                                dp.offset
                            };
                            if offset < 0 {
                                r.error_code = errors::OFFSET_OUT_OF_RANGE;
                            } else {
                                match p.delete_records(offset as u64) {
                                    Ok(low) => r.low_watermark = low as i64,
                                    Err(e) => r.error_code = errors::from_storage(&e),
                                }
                            }
                        }
                    }
                    r
                })
                .collect();
            DeleteRecordsTopicResult {
                name: t.name,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    respond(
        ctx,
        &DeleteRecordsResponse {
            topics,
            ..Default::default()
        },
    )
}

pub fn describe_cluster(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DescribeClusterRequest = protocol::decode(&mut body, ctx.version)?;
    // Brokers describe the brokers (endpoint type 1); the controllers (2) are asked on their
    // own listeners (KIP-919), as Kafka's brokers answer.
    let refused = match req.endpoint_type {
        1 => None,
        2 => Some((
            errors::MISMATCHED_ENDPOINT_TYPE,
            "The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER",
        )),
        _ => Some((
            errors::UNSUPPORTED_ENDPOINT_TYPE,
            "Unsupported endpoint type",
        )),
    };
    if let Some((code, message)) = refused {
        return respond(
            ctx,
            &DescribeClusterResponse {
                error_code: code,
                error_message: Some(message.into()),
                cluster_id: broker.cluster_id.clone(),
                controller_id: -1,
                endpoint_type: req.endpoint_type,
                ..Default::default()
            },
        );
    }
    respond(
        ctx,
        &DescribeClusterResponse {
            cluster_id: broker.cluster_id.clone(),
            controller_id: broker.config.node_id,
            brokers: broker
                .image()
                .brokers
                .values()
                .filter(|b| !b.fenced || req.include_fenced_brokers)
                .filter_map(|b| {
                    let (host, port) = b.endpoint(&ctx.listener)?;
                    Some(DescribeClusterBroker {
                        broker_id: b.id,
                        host: host.to_string(),
                        port: port as i32,
                        rack: b.rack.clone(),
                        is_fenced: b.fenced,
                        ..Default::default()
                    })
                })
                .collect(),
            cluster_authorized_operations: authorized_operations(
                req.include_cluster_authorized_operations,
                Resource::Cluster,
            ),
            endpoint_type: 1,
            ..Default::default()
        },
    )
}

/// DescribeLogDirs: this broker's one log directory and the size of every partition in it.
pub fn describe_log_dirs(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    use krabka_protocol::owned::describe_log_dirs_request::DescribeLogDirsRequest;
    use krabka_protocol::owned::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResponse, DescribeLogDirsResult,
        DescribeLogDirsTopic,
    };
    let req: DescribeLogDirsRequest = protocol::decode(&mut body, ctx.version)?;
    let wanted: Option<Vec<(String, Vec<i32>)>> = req
        .topics
        .map(|ts| ts.into_iter().map(|t| (t.topic, t.partitions)).collect());
    let topics = broker
        .topics()
        .into_iter()
        .filter_map(|t| {
            let parts: Vec<DescribeLogDirsPartition> = broker
                .all_partitions()
                .iter()
                .filter(|p| *p.topic == *t.name)
                .filter(|p| {
                    wanted.as_ref().is_none_or(|w| {
                        w.iter()
                            .any(|(name, ps)| *name == t.name && ps.contains(&p.index))
                    })
                })
                .map(|p| DescribeLogDirsPartition {
                    partition_index: p.index,
                    partition_size: p.log().size_bytes() as i64,
                    offset_lag: 0,
                    is_future_key: false,
                    ..Default::default()
                })
                .collect();
            (!parts.is_empty()).then(|| DescribeLogDirsTopic {
                name: t.name.clone(),
                partitions: parts,
                ..Default::default()
            })
        })
        .collect();
    let dir = std::fs::canonicalize(&broker.config.log_dir)
        .unwrap_or_else(|_| broker.config.log_dir.clone());
    respond(
        ctx,
        &DescribeLogDirsResponse {
            error_code: errors::NONE,
            results: vec![DescribeLogDirsResult {
                error_code: errors::NONE,
                log_dir: dir.display().to_string(),
                topics,
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}
