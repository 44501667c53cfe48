use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use krabka_protocol::owned::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use krabka_protocol::records::produce_framing;

use super::Reply;
use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::partition::{AppendError, Appended, HighWatermarkWait, Partition};
use crate::protocol::{self, RequestContext};
use strom_storage::StorageError;
use strom_storage::batch::{self, BatchHeader};
use strom_storage::producer_state::SequenceError;

struct PartitionResult {
    index: i32,
    error: i16,
    message: Option<String>,
    /// KIP-467: the records at fault, by index in the batch.
    record_errors: Vec<(i32, String)>,
    appended: Option<Appended>,
    /// The replica appended to: acks=all waits on it, not on whatever has its name later.
    partition: Option<Arc<Partition>>,
    /// The leader epoch read before the append: acks=all is answered by this leadership.
    leader_epoch: i32,
}

fn append_error(e: &AppendError, version: i16) -> (i16, String) {
    let code = match e {
        AppendError::Storage(s) => errors::from_storage(s),
        AppendError::Sequence(SequenceError::InvalidEpoch { .. }) => errors::INVALID_PRODUCER_EPOCH,
        AppendError::Sequence(SequenceError::OutOfOrder { .. }) => {
            errors::OUT_OF_ORDER_SEQUENCE_NUMBER
        }
        AppendError::Sequence(SequenceError::TxnState(_)) => errors::INVALID_TXN_STATE,
        AppendError::Sequence(SequenceError::CoordinatorFenced { .. }) => {
            errors::TRANSACTION_COORDINATOR_FENCED
        }
        // As Kafka answers a verification its coordinator could not make: retriable.
        AppendError::NotEnoughReplicas { .. } | AppendError::CoordinatorUnavailable => {
            errors::NOT_ENOUGH_REPLICAS
        }
    };
    let code = if code == errors::INVALID_RECORD {
        invalid_record(version)
    } else {
        code
    };
    (code, e.to_string())
}

/// Whether the records hold a second whole batch after the first (a torn one is left to the
/// log's framing checks: CORRUPT_MESSAGE).
fn several_batches(records: &[u8]) -> bool {
    BatchHeader::parse(records).is_some_and(|h| {
        h.total_size() < records.len() && batch::check_framing(&records[h.total_size()..]).is_ok()
    })
}

/// INVALID_RECORD exists from Produce v8 on; older clients know CORRUPT_MESSAGE.
fn invalid_record(version: i16) -> i16 {
    if version < 8 {
        errors::CORRUPT_MESSAGE
    } else {
        errors::INVALID_RECORD
    }
}

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, body: Bytes) -> HandlerResult {
    let req = produce_framing(body, ctx.version)?;
    let acks = req.acks;
    let transactional_id = req.transactional_id.as_deref().filter(|id| !id.is_empty());
    // Transactional records come with the transactional id they belong to, or the whole
    // request is refused, as Kafka does.
    let txn_id_missing = transactional_id.is_none()
        && req.topics.iter().any(|t| {
            t.partitions.iter().any(|p| {
                p.records
                    .as_deref()
                    .and_then(BatchHeader::parse)
                    .is_some_and(|h| h.is_transactional())
            })
        });
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut topics: Vec<(String, Vec<PartitionResult>)> = Vec::new();
    for t in req.topics {
        let topic = broker.topic(&t.name);
        let mut results = Vec::new();
        for p in t.partitions {
            let mut r = PartitionResult {
                index: p.partition,
                error: errors::NONE,
                message: None,
                record_errors: Vec::new(),
                appended: None,
                partition: None,
                leader_epoch: -1,
            };
            if !matches!(acks, -1..=1) {
                r.error = errors::INVALID_REQUIRED_ACKS;
            } else if txn_id_missing {
                r.error = errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
                r.message =
                    Some("transactional records need the request's transactional id".into());
            } else if topic.as_ref().is_some_and(|t| t.is_internal()) {
                // The coordinators' own records: a client's would corrupt group or
                // transaction state. Kafka refuses them the same way.
                r.error = errors::INVALID_TOPIC_EXCEPTION;
                r.message = Some(format!("cannot produce to the internal topic {}", t.name));
            } else {
                let partition = broker.leader_partition(&t.name, p.partition);
                match (partition, p.records.filter(|r| !r.is_empty())) {
                    (Err(code), _) => r.error = code,
                    (Ok(_), None) => {
                        r.error = errors::CORRUPT_MESSAGE;
                        r.message = Some("no records".into());
                    }
                    (Ok(_), Some(records)) if ctx.version >= 3 && several_batches(&records) => {
                        r.error = invalid_record(ctx.version);
                        r.message = Some(
                            "produce requests v3 and above carry exactly one record batch per partition"
                                .into(),
                        );
                    }
                    (Ok(partition), Some(records)) => {
                        // The log assigns offsets in place, so the batches need a buffer of
                        // their own; they are stored exactly as patched, in the topic's codec
                        // when it has one (compression.type).
                        let compression = topic
                            .as_ref()
                            .map(|t| t.config.read().unwrap().compression)
                            .unwrap_or_default();
                        let mut buf = match compression.recompress(&records) {
                            Ok(Some(recompressed)) => recompressed,
                            Ok(None) => records.to_vec(),
                            Err(e) => {
                                r.error = errors::CORRUPT_MESSAGE;
                                r.message = Some(format!(
                                    "the batch cannot be recompressed to the topic's compression.type: {e}"
                                ));
                                results.push(r);
                                continue;
                            }
                        };
                        r.leader_epoch = partition.leader_epoch();
                        match broker
                            .append_records(&partition, &mut buf, acks, transactional_id)
                            .await
                        {
                            Ok(a) => {
                                r.appended = Some(a);
                                r.partition = Some(partition);
                            }
                            Err(e) => {
                                let (code, msg) = append_error(&e, ctx.version);
                                tracing::debug!(topic = %t.name, partition = p.partition, error = %msg, "produce refused");
                                r.error = code;
                                r.message = Some(msg);
                                if let AppendError::Storage(StorageError::RecordErrors {
                                    errors,
                                    ..
                                }) = e
                                {
                                    r.record_errors = errors;
                                }
                            }
                        }
                    }
                }
            }
            results.push(r);
        }
        topics.push((t.name, results));
    }

    if acks == -1 {
        for (_, results) in &mut topics {
            for r in results.iter_mut() {
                let (Some(a), Some(p)) = (r.appended, r.partition.clone()) else {
                    continue;
                };
                match p
                    .wait_for_high_watermark(a.last_offset + 1, r.leader_epoch, deadline)
                    .await
                {
                    HighWatermarkWait::Reached => {}
                    HighWatermarkWait::TimedOut => {
                        r.error = errors::REQUEST_TIMED_OUT;
                        r.message = Some("the in-sync replicas did not acknowledge in time".into());
                    }
                    HighWatermarkWait::NotLeader => {
                        r.error = errors::NOT_LEADER_OR_FOLLOWER;
                        r.message = Some(
                            "leadership moved before the in-sync replicas acknowledged".into(),
                        );
                    }
                }
            }
        }
    }

    if acks == 0 {
        // Kafka closes the connection when an acks=0 produce fails, the only way to tell the
        // producer to refresh its metadata.
        let failed = topics
            .iter()
            .any(|(_, rs)| rs.iter().any(|r| r.error != errors::NONE));
        return Ok(if failed { Reply::Close } else { Reply::Nothing });
    }
    if ctx.version <= 2 {
        return Ok(Reply::Frame(protocol::frame_raw(
            ctx.correlation_id,
            &encode_v0_to_v2(&topics, ctx.version),
        )));
    }
    respond(
        ctx,
        &ProduceResponse {
            responses: topics
                .into_iter()
                .map(|(name, results)| TopicProduceResponse {
                    name,
                    partition_responses: results
                        .into_iter()
                        .map(|r| PartitionProduceResponse {
                            index: r.index,
                            error_code: r.error,
                            base_offset: r.appended.map_or(-1, |a| a.base_offset as i64),
                            log_append_time_ms: r
                                .appended
                                .and_then(|a| a.log_append_time)
                                .unwrap_or(-1),
                            log_start_offset: r.appended.map_or(-1, |a| a.log_start_offset as i64),
                            error_message: r.message.filter(|_| r.error != errors::NONE),
                            record_errors: r
                                .record_errors
                                .into_iter()
                                .map(|(i, m)| BatchIndexAndErrorMessage {
                                    batch_index: i,
                                    batch_index_error_message: Some(m),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
}

/// Produce response v0-2 (the codec's schemas start at v3): topics, partitions with error
/// and base offset; v1 adds the throttle time, v2 the log append time.
fn encode_v0_to_v2(topics: &[(String, Vec<PartitionResult>)], version: i16) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32(topics.len() as i32);
    for (name, results) in topics {
        b.put_i16(name.len() as i16);
        b.put_slice(name.as_bytes());
        b.put_i32(results.len() as i32);
        for r in results {
            b.put_i32(r.index);
            b.put_i16(r.error);
            b.put_i64(r.appended.map_or(-1, |a| a.base_offset as i64));
            if version >= 2 {
                b.put_i64(r.appended.and_then(|a| a.log_append_time).unwrap_or(-1));
            }
        }
    }
    if version >= 1 {
        b.put_i32(0);
    }
    b.to_vec()
}
