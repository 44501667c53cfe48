use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::metadata_request::MetadataRequest;
use krabka_protocol::owned::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use krabka_protocol::primitives::uuid::Uuid;

use super::{HandlerResult, respond};
use crate::acl::{OPERATIONS_OMITTED, Resource, authorized_operations};
use crate::broker::{Broker, BrokerError, NewTopic, Topic};
use crate::errors;
use crate::protocol::{self, RequestContext};

pub(crate) fn topic_entry(topic: &Topic, operations: bool) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .read()
        .unwrap()
        .iter()
        .map(|p| MetadataResponsePartition {
            error_code: errors::NONE,
            partition_index: p.index,
            leader_id: p.leader,
            leader_epoch: p.leader_epoch(),
            replica_nodes: p.replicas.clone(),
            isr_nodes: p.isr(),
            offline_replicas: vec![],
            ..Default::default()
        })
        .collect();
    MetadataResponseTopic {
        error_code: errors::NONE,
        name: Some(topic.name.clone()),
        topic_id: Uuid(topic.id),
        is_internal: topic.is_internal(),
        partitions,
        topic_authorized_operations: authorized_operations(operations, Resource::Topic),
        ..Default::default()
    }
}

fn error_entry(name: Option<String>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic {
        error_code: code,
        name,
        topic_id: id,
        topic_authorized_operations: OPERATIONS_OMITTED,
        ..Default::default()
    }
}

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: MetadataRequest = protocol::decode(&mut body, ctx.version)?;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && ctx.version == 0,
    };
    // Before v4 the field does not exist and auto-creation is always asked for.
    let may_create = broker.config.auto_create_topics_enable
        && (ctx.version < 4 || req.allow_auto_topic_creation);
    let ops = ctx.version >= 8 && req.include_topic_authorized_operations;
    let topics = if all {
        broker
            .topics()
            .iter()
            .map(|t| topic_entry(t, ops))
            .collect()
    } else {
        let mut out = Vec::new();
        for wanted in req.topics.unwrap_or_default() {
            let entry = match wanted.name {
                Some(name) => match broker.topic(&name) {
                    Some(t) => topic_entry(&t, ops),
                    None if may_create => auto_create(broker, name, ops),
                    None => error_entry(Some(name), Uuid::ZERO, errors::UNKNOWN_TOPIC_OR_PARTITION),
                },
                None => match broker.topic_by_id(&wanted.topic_id.0) {
                    Some(t) => topic_entry(&t, ops),
                    None => error_entry(None, wanted.topic_id, errors::UNKNOWN_TOPIC_ID),
                },
            };
            out.push(entry);
        }
        out
    };
    respond(
        ctx,
        &MetadataResponse {
            brokers: vec![MetadataResponseBroker {
                node_id: broker.config.node_id,
                host: broker.config.advertised_host.clone(),
                port: broker.config.advertised_port as i32,
                rack: None,
                ..Default::default()
            }],
            cluster_id: Some(broker.cluster_id.clone()),
            controller_id: broker.config.node_id,
            topics,
            // Asked for in v8-10 only; later versions use DescribeCluster.
            cluster_authorized_operations: authorized_operations(
                (8..=10).contains(&ctx.version) && req.include_cluster_authorized_operations,
                Resource::Cluster,
            ),
            ..Default::default()
        },
    )
}

fn auto_create(broker: &Broker, name: String, ops: bool) -> MetadataResponseTopic {
    let new = NewTopic {
        name: name.clone(),
        partitions: None,
        replication_factor: None,
        assignments: vec![],
        configs: Default::default(),
    };
    match broker.create_topic(new, false) {
        Ok(t) => topic_entry(&t, ops),
        // Another request created it first.
        Err(BrokerError::TopicExists(_)) => match broker.topic(&name) {
            Some(t) => topic_entry(&t, ops),
            None => error_entry(Some(name), Uuid::ZERO, errors::LEADER_NOT_AVAILABLE),
        },
        Err(BrokerError::InvalidTopic(_)) => {
            error_entry(Some(name), Uuid::ZERO, errors::INVALID_TOPIC_EXCEPTION)
        }
        Err(e) => {
            tracing::warn!(topic = %name, error = %e, "auto topic creation failed");
            error_entry(Some(name), Uuid::ZERO, errors::UNKNOWN_TOPIC_OR_PARTITION)
        }
    }
}
