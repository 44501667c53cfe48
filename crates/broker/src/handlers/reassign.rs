//! AlterPartitionReassignments (key 45) and ListPartitionReassignments (key 46): moving
//! replicas between brokers, decided by the active controller; the list is read from this
//! node's metadata.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use krabka_protocol::owned::alter_partition_reassignments_request::AlterPartitionReassignmentsRequest;
use krabka_protocol::owned::alter_partition_reassignments_response::{
    AlterPartitionReassignmentsResponse, ReassignablePartitionResponse, ReassignableTopicResponse,
};
use krabka_protocol::owned::list_partition_reassignments_request::ListPartitionReassignmentsRequest;
use krabka_protocol::owned::list_partition_reassignments_response::{
    ListPartitionReassignmentsResponse, OngoingPartitionReassignment, OngoingTopicReassignment,
};
use strom_controller::quorum::active::{BrokerAnswer, BrokerRequest};
use strom_controller::reassignment::{Reassignment, ReassignmentResult};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

pub async fn alter(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: AlterPartitionReassignmentsRequest = protocol::decode(&mut body, ctx.version)?;
    let asked: Vec<Reassignment> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Reassignment {
                topic: t.name.clone(),
                partition: p.partition_index,
                replicas: p.replicas.clone(),
            })
        })
        .collect();
    // v0 has no such field: the replication factor may change, as KIP-860 keeps it.
    let allow_rf_change = ctx.version < 1 || req.allow_replication_factor_change;
    let (error_code, error_message, results) = match broker
        .alter_reassignments(asked.clone(), allow_rf_change)
        .await
    {
        Ok(results) => (errors::NONE, None, results),
        Err((code, message)) => {
            tracing::warn!(code, %message, "AlterPartitionReassignments not done");
            let results = asked
                .into_iter()
                .map(|a| (a.topic, a.partition, code, Some(message.clone())))
                .collect();
            (code, Some(message), results)
        }
    };
    let mut topics: Vec<ReassignableTopicResponse> = Vec::new();
    for (topic, partition, code, message) in results {
        let r = ReassignablePartitionResponse {
            partition_index: partition,
            error_code: code,
            error_message: message,
            ..Default::default()
        };
        match topics.iter_mut().find(|t| t.name == topic) {
            Some(t) => t.partitions.push(r),
            None => topics.push(ReassignableTopicResponse {
                name: topic,
                partitions: vec![r],
                ..Default::default()
            }),
        }
    }
    respond(
        ctx,
        &AlterPartitionReassignmentsResponse {
            allow_replication_factor_change: allow_rf_change,
            error_code,
            error_message,
            responses: topics,
            ..Default::default()
        },
    )
}

pub async fn list(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: ListPartitionReassignmentsRequest = protocol::decode(&mut body, ctx.version)?;
    let image = broker.image();
    let mut response = ListPartitionReassignmentsResponse::default();
    let asked: Vec<(String, Option<Vec<i32>>)> = match &req.topics {
        None => image.topics.keys().map(|t| (t.clone(), None)).collect(),
        Some(topics) => topics
            .iter()
            .map(|t| (t.name.clone(), Some(t.partition_indexes.clone())))
            .collect(),
    };
    for (name, which) in asked {
        let Some(t) = image.topic(&name) else {
            response.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
            response.error_message = Some(format!("unknown topic {name}"));
            response.topics.clear();
            break;
        };
        let partitions: Vec<OngoingPartitionReassignment> = t
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                p.reassigning() && which.as_ref().is_none_or(|w| w.contains(&(*i as i32)))
            })
            .map(|(i, p)| OngoingPartitionReassignment {
                partition_index: i as i32,
                replicas: p.replicas.to_vec(),
                adding_replicas: p.adding().to_vec(),
                removing_replicas: p.removing().to_vec(),
                ..Default::default()
            })
            .collect();
        if !partitions.is_empty() {
            response.topics.push(OngoingTopicReassignment {
                name,
                partitions,
                ..Default::default()
            });
        }
    }
    respond(ctx, &response)
}

impl Broker {
    /// Asks the active controller for the reassignments and waits (a few seconds at most)
    /// for this node's metadata to show them. A result per partition, or the error for
    /// the whole request.
    pub async fn alter_reassignments(
        &self,
        reassignments: Vec<Reassignment>,
        allow_rf_change: bool,
    ) -> Result<Vec<ReassignmentResult>, (i16, String)> {
        let answer = self
            .ask_controller_for_admin(BrokerRequest::AlterReassignments {
                reassignments: reassignments.clone(),
                allow_rf_change,
            })
            .await
            .map_err(|e| (errors::REQUEST_TIMED_OUT, e.to_string()))?;
        let results = match answer {
            BrokerAnswer::Reassigned { results } => results,
            BrokerAnswer::Refused { code, message } => return Err((code, message)),
            other => return Err((errors::NOT_CONTROLLER, format!("{other:?}"))),
        };
        let done: Vec<&Reassignment> = reassignments
            .iter()
            .filter(|a| {
                results
                    .iter()
                    .any(|r| r.0 == a.topic && r.1 == a.partition && r.2 == errors::NONE)
            })
            .collect();
        if let Some(mut images) = self.metadata_log.watch() {
            // Shown once each partition is on its way to its target (or there already), or
            // back on its original replicas for a cancellation.
            let shown = images.wait_for(|image| {
                done.iter().all(|a| {
                    image
                        .partition(&a.topic, a.partition)
                        .is_some_and(|info| match &a.replicas {
                            Some(target) => info.target_replicas() == *target,
                            None => !info.reassigning(),
                        })
                })
            });
            let _ = tokio::time::timeout(Duration::from_secs(5), shown).await;
        }
        Ok(results)
    }
}
