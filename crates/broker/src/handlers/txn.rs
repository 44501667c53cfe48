//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit,
//! WriteTxnMarkers and the inspection APIs DescribeTransactions, ListTransactions and
//! DescribeProducers. InitProducerId is in `producer_id.rs`.

use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use krabka_protocol::owned::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use krabka_protocol::owned::add_partitions_to_txn_request::AddPartitionsToTxnRequest;
use krabka_protocol::owned::add_partitions_to_txn_response::{
    AddPartitionsToTxnResponse, AddPartitionsToTxnResult,
};
use krabka_protocol::owned::common::add_partitions_to_txn_request::add_partitions_to_txn_topic::AddPartitionsToTxnTopic;
use krabka_protocol::owned::common::add_partitions_to_txn_response::add_partitions_to_txn_partition_result::AddPartitionsToTxnPartitionResult;
use krabka_protocol::owned::common::add_partitions_to_txn_response::add_partitions_to_txn_topic_result::AddPartitionsToTxnTopicResult;
use krabka_protocol::owned::describe_producers_request::DescribeProducersRequest;
use krabka_protocol::owned::describe_producers_response::{
    DescribeProducersResponse, PartitionResponse, ProducerState, TopicResponse,
};
use krabka_protocol::owned::describe_transactions_request::DescribeTransactionsRequest;
use krabka_protocol::owned::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState,
};
use krabka_protocol::owned::end_txn_request::EndTxnRequest;
use krabka_protocol::owned::end_txn_response::EndTxnResponse;
use krabka_protocol::owned::list_transactions_request::ListTransactionsRequest;
use krabka_protocol::owned::list_transactions_response::{self, ListTransactionsResponse};
use krabka_protocol::owned::txn_offset_commit_request::TxnOffsetCommitRequest;
use krabka_protocol::owned::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use krabka_protocol::owned::write_txn_markers_request::WriteTxnMarkersRequest;
use krabka_protocol::owned::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::group::coordinator::{CommitRequest, OFFSETS_TOPIC};
use crate::group::records::partition_for;
use crate::group::txn_offsets::TxnCommit;
use crate::protocol::{self, RequestContext};
use crate::txn::coordinator::now_ms;
use crate::txn::state::TxnState;

use crate::errors::{OPERATION_NOT_ATTEMPTED, TRANSACTIONAL_ID_NOT_FOUND};

/// Before v2, a fenced producer was told INVALID_PRODUCER_EPOCH: PRODUCER_FENCED came later.
fn fenced_for(version: i16, code: i16) -> i16 {
    if code == crate::txn::state::PRODUCER_FENCED && version < 2 {
        errors::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

/// AddPartitionsToTxn. Up to v3, one transaction from a client; from v4 (KIP-890), a batch
/// of them, which brokers send to verify that a partition is in a transaction before they
/// write a producer's batch there (`verify_only`).
pub async fn add_partitions(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: AddPartitionsToTxnRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let flat = |topics: &[AddPartitionsToTxnTopic]| -> Vec<(String, i32)> {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), *p)))
            .collect()
    };
    if ctx.version <= 3 {
        let wanted = flat(&req.v3_and_below_topics);
        let codes = add_or_verify(
            b,
            ctx.version,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id,
            req.v3_and_below_producer_epoch,
            false,
            &wanted,
        )
        .await;
        return respond(
            ctx,
            &AddPartitionsToTxnResponse {
                results_by_topic_v3_and_below: topic_results(wanted, codes),
                ..Default::default()
            },
        );
    }
    let mut results = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let wanted = flat(&t.topics);
        let codes = add_or_verify(
            b,
            ctx.version,
            &t.transactional_id,
            t.producer_id,
            t.producer_epoch,
            t.verify_only,
            &wanted,
        )
        .await;
        results.push(AddPartitionsToTxnResult {
            transactional_id: t.transactional_id.clone(),
            topic_results: topic_results(wanted, codes),
            ..Default::default()
        });
    }
    respond(
        ctx,
        &AddPartitionsToTxnResponse {
            results_by_transaction: results,
            ..Default::default()
        },
    )
}

/// One transaction's partitions: verified one by one, or added all or none (as Kafka adds
/// them: with one unknown partition, the others are not attempted). A code per partition.
async fn add_or_verify(
    b: &Broker,
    version: i16,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    verify_only: bool,
    wanted: &[(String, i32)],
) -> Vec<i16> {
    if verify_only {
        let mut codes = Vec::with_capacity(wanted.len());
        for (t, p) in wanted {
            codes.push(
                b.verify_locally(transactional_id, producer_id, producer_epoch, t, *p)
                    .await,
            );
        }
        return codes;
    }
    let unknown: Vec<bool> = wanted
        .iter()
        .map(|(t, p)| b.image().partition(t, *p).is_none())
        .collect();
    if unknown.iter().any(|u| *u) {
        return unknown
            .iter()
            .map(|u| {
                if *u {
                    errors::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    OPERATION_NOT_ATTEMPTED
                }
            })
            .collect();
    }
    let code = b
        .txns
        .add_partitions(b, transactional_id, producer_id, producer_epoch, wanted)
        .await;
    vec![fenced_for(version, code); wanted.len()]
}

fn topic_results(
    wanted: Vec<(String, i32)>,
    codes: Vec<i16>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut results: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), code) in wanted.into_iter().zip(codes) {
        let r = AddPartitionsToTxnPartitionResult {
            partition_index: partition,
            partition_error_code: code,
            ..Default::default()
        };
        match results.last_mut() {
            Some(t) if t.name == topic => t.results_by_partition.push(r),
            _ => results.push(AddPartitionsToTxnTopicResult {
                name: topic,
                results_by_partition: vec![r],
                ..Default::default()
            }),
        }
    }
    results
}

pub async fn add_offsets(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: AddOffsetsToTxnRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let code = match b.groups.ensure_offsets_topic(b).await {
        Err(e) => e,
        Ok(partitions) => {
            let p = (
                OFFSETS_TOPIC.to_string(),
                partition_for(&req.group_id, partitions),
            );
            b.txns
                .add_partitions(
                    b,
                    &req.transactional_id,
                    req.producer_id,
                    req.producer_epoch,
                    &[p],
                )
                .await
        }
    };
    respond(
        ctx,
        &AddOffsetsToTxnResponse {
            error_code: fenced_for(ctx.version, code),
            ..Default::default()
        },
    )
}

pub async fn end(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: EndTxnRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let code = b
        .txns
        .end(
            b,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            req.committed,
        )
        .await;
    respond(
        ctx,
        &EndTxnResponse {
            error_code: fenced_for(ctx.version, code),
            producer_id: -1,
            producer_epoch: -1,
            ..Default::default()
        },
    )
}

pub async fn offset_commit(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: TxnOffsetCommitRequest = protocol::decode(&mut body, ctx.version)?;
    let offsets: Vec<CommitRequest> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| CommitRequest {
                topic: t.name.clone(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.clone(),
            })
        })
        .collect();
    let commit = TxnCommit {
        group_id: &req.group_id,
        producer_id: req.producer_id,
        producer_epoch: req.producer_epoch,
        member_id: &req.member_id,
        instance_id: req.group_instance_id.as_deref(),
        generation: if ctx.version >= 3 {
            req.generation_id_or_member_epoch
        } else {
            -1
        },
    };
    let codes = broker
        .txn_offset_commit(&req.transactional_id, &commit, offsets)
        .await;
    let mut codes = codes.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| TxnOffsetCommitResponseTopic {
            name: t.name.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| TxnOffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    // A stale epoch is INVALID_PRODUCER_EPOCH here in every version, as in
                    // Kafka: there is no PRODUCER_FENCED to downconvert.
                    error_code: codes.next().unwrap_or(errors::NONE),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &TxnOffsetCommitResponse {
            topics,
            ..Default::default()
        },
    )
}

/// WriteTxnMarkers: what a transaction coordinator on another broker asks of this one, and
/// what `kafka-transactions.sh abort` sends to end a hanging transaction.
pub async fn write_markers(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: WriteTxnMarkersRequest = protocol::decode(&mut body, ctx.version)?;
    let mut markers = Vec::with_capacity(req.markers.len());
    for m in &req.markers {
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in &m.topics {
            let mut partitions = Vec::with_capacity(t.partition_indexes.len());
            for &p in &t.partition_indexes {
                let error_code = broker
                    .write_marker(
                        &t.name,
                        p,
                        m.producer_id,
                        m.producer_epoch,
                        m.transaction_result,
                        m.coordinator_epoch,
                    )
                    .await;
                partitions.push(WritableTxnMarkerPartitionResult {
                    partition_index: p,
                    error_code,
                    ..Default::default()
                });
            }
            topics.push(WritableTxnMarkerTopicResult {
                name: t.name.clone(),
                partitions,
                ..Default::default()
            });
        }
        markers.push(WritableTxnMarkerResult {
            producer_id: m.producer_id,
            topics,
            ..Default::default()
        });
    }
    respond(
        ctx,
        &WriteTxnMarkersResponse {
            markers,
            ..Default::default()
        },
    )
}

pub async fn describe(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DescribeTransactionsRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let mut described = Vec::with_capacity(req.transactional_ids.len());
    for id in &req.transactional_ids {
        described.push((id, b.txns.describe(b, id).await));
    }
    let transaction_states = described
        .into_iter()
        .map(|(id, d)| match d {
            Err(error_code) => TransactionState {
                error_code,
                transactional_id: id.clone(),
                producer_id: -1,
                producer_epoch: -1,
                transaction_start_time_ms: -1,
                ..Default::default()
            },
            Ok(None) => TransactionState {
                error_code: TRANSACTIONAL_ID_NOT_FOUND,
                transactional_id: id.clone(),
                producer_id: -1,
                producer_epoch: -1,
                transaction_start_time_ms: -1,
                ..Default::default()
            },
            Ok(Some(m)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (t, p) in &m.partitions {
                    match topics.last_mut() {
                        Some(d) if d.topic == *t => d.partitions.push(*p),
                        _ => topics.push(TopicData {
                            topic: t.clone(),
                            partitions: vec![*p],
                            ..Default::default()
                        }),
                    }
                }
                TransactionState {
                    error_code: errors::NONE,
                    transactional_id: id.clone(),
                    transaction_state: m.state.name().to_string(),
                    transaction_timeout_ms: m.timeout_ms,
                    transaction_start_time_ms: m.start_ms,
                    producer_id: m.producer_id,
                    producer_epoch: m.producer_epoch,
                    topics,
                    ..Default::default()
                }
            }
        })
        .collect();
    respond(
        ctx,
        &DescribeTransactionsResponse {
            transaction_states,
            ..Default::default()
        },
    )
}

pub async fn list(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: ListTransactionsRequest = protocol::decode(&mut body, ctx.version)?;
    let unknown_state_filters: Vec<String> = req
        .state_filters
        .iter()
        .filter(|f| !TxnState::ALL.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    let now = now_ms();
    let transaction_states = broker
        .txns
        .list()
        .await
        .into_iter()
        .filter(|m| {
            req.state_filters.is_empty() || req.state_filters.iter().any(|f| f == m.state.name())
        })
        .filter(|m| {
            req.producer_id_filters.is_empty() || req.producer_id_filters.contains(&m.producer_id)
        })
        // v1: only transactions running longer than the duration (open ones have a start).
        .filter(|m| {
            ctx.version < 1
                || req.duration_filter < 0
                || (m.state == TxnState::Ongoing && now - m.start_ms > req.duration_filter)
        })
        .map(|m| list_transactions_response::TransactionState {
            transactional_id: m.transactional_id,
            producer_id: m.producer_id,
            transaction_state: m.state.name().to_string(),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &ListTransactionsResponse {
            error_code: errors::NONE,
            unknown_state_filters,
            transaction_states,
            ..Default::default()
        },
    )
}

pub fn describe_producers(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DescribeProducersRequest = protocol::decode(&mut body, ctx.version)?;
    let topics = req
        .topics
        .iter()
        .map(|t| TopicResponse {
            name: t.name.clone(),
            partitions: t
                .partition_indexes
                .iter()
                .map(|&i| match broker.leader_partition(&t.name, i) {
                    Err(error_code) => PartitionResponse {
                        partition_index: i,
                        error_code,
                        ..Default::default()
                    },
                    Ok(p) => PartitionResponse {
                        partition_index: i,
                        error_code: errors::NONE,
                        active_producers: p
                            .producers()
                            .into_iter()
                            .map(|s| ProducerState {
                                producer_id: s.producer_id,
                                producer_epoch: s.epoch as i32,
                                last_sequence: s.last_sequence,
                                last_timestamp: s.last_timestamp,
                                coordinator_epoch: s.coordinator_epoch,
                                current_txn_start_offset: s.txn_start_offset,
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &DescribeProducersResponse {
            topics,
            ..Default::default()
        },
    )
}
