use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::metadata_request::MetadataRequest;
use krabka_protocol::owned::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use krabka_protocol::primitives::uuid::Uuid;

use super::{HandlerResult, respond};
use crate::acl::{OPERATIONS_OMITTED, Resource, authorized_operations};
use crate::broker::{Broker, BrokerError, NewTopic, is_internal};
use crate::errors;
use crate::protocol::{self, RequestContext};
use strom_metadata::image::{MetadataImage, NO_LEADER, TopicInfo};

/// A topic as the metadata image has it: leaders, replicas, ISR and epochs per partition.
/// A leader without an endpoint on the client's `listener` is not given (Kafka's
/// LISTENER_NOT_FOUND): the client could not reach it.
fn topic_entry(
    image: &MetadataImage,
    listener: &str,
    topic: &TopicInfo,
    operations: bool,
) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let reachable = image
                .brokers
                .get(&p.leader)
                .is_some_and(|b| b.endpoint(listener).is_some());
            let error_code = if p.leader == NO_LEADER {
                errors::LEADER_NOT_AVAILABLE
            } else if !reachable && image.brokers.contains_key(&p.leader) {
                errors::LISTENER_NOT_FOUND
            } else {
                errors::NONE
            };
            (i, p, error_code)
        })
        .map(|(i, p, error_code)| MetadataResponsePartition {
            error_code,
            partition_index: i as i32,
            leader_id: if error_code == errors::LISTENER_NOT_FOUND {
                NO_LEADER
            } else {
                p.leader
            },
            leader_epoch: p.leader_epoch,
            replica_nodes: p.replicas.to_vec(),
            isr_nodes: p.isr.to_vec(),
            offline_replicas: vec![],
            ..Default::default()
        })
        .collect();
    MetadataResponseTopic {
        error_code: errors::NONE,
        name: Some(topic.name.clone()),
        topic_id: Uuid(topic.id),
        is_internal: is_internal(&topic.name),
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

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
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
    let image = broker.image();
    let topics = if all {
        image
            .topics
            .values()
            .map(|t| topic_entry(&image, &ctx.listener, t, ops))
            .collect()
    } else {
        let mut out = Vec::new();
        for wanted in req.topics.unwrap_or_default() {
            let entry = match wanted.name {
                Some(name) => match image.topic(&name) {
                    Some(t) => topic_entry(&image, &ctx.listener, t, ops),
                    None if may_create => auto_create(broker, &ctx.listener, name, ops).await,
                    None => error_entry(Some(name), Uuid::ZERO, errors::UNKNOWN_TOPIC_OR_PARTITION),
                },
                None => match image.topic_by_id(&wanted.topic_id.0) {
                    Some(t) => topic_entry(&image, &ctx.listener, t, ops),
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
            // Fenced brokers are left out, as Kafka leaves them out.
            brokers: image
                .brokers
                .values()
                .filter(|b| !b.fenced)
                .filter_map(|b| {
                    let (host, port) = b.endpoint(&ctx.listener)?;
                    Some(MetadataResponseBroker {
                        node_id: b.id,
                        host: host.to_string(),
                        port: port as i32,
                        rack: b.rack.clone(),
                        ..Default::default()
                    })
                })
                .collect(),
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

async fn auto_create(
    broker: &Broker,
    listener: &str,
    name: String,
    ops: bool,
) -> MetadataResponseTopic {
    let new = NewTopic {
        name: name.clone(),
        partitions: None,
        replication_factor: None,
        assignments: vec![],
        configs: Default::default(),
    };
    match broker.create_topic(new, false).await {
        // Created, or another request created it first.
        Ok(_) | Err(BrokerError::TopicExists(_)) => match broker.image().topic(&name) {
            Some(t) => topic_entry(&broker.image(), listener, t, ops),
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
