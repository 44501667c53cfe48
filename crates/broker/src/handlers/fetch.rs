use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::fetch_request::FetchRequest;
use krabka_protocol::owned::fetch_response::{
    AbortedTransaction, FetchResponse, FetchableTopicResponse, PartitionData,
};
use krabka_protocol::primitives::uuid::Uuid;
use krabka_protocol::records::RecordsPayload;
use tokio::time::Instant;

use super::{HandlerResult, Reply, respond};
use crate::broker::Broker;
use crate::errors;
use crate::partition::Partition;
use crate::protocol::{self, RequestContext};
use crate::purgatory::Waiter;
use crate::zero_copy::Regions;

/// A session id of 0 with epoch -1 or 0 asks for no session or a new one: both are answered
/// as full fetches without a session (session id 0), which every client accepts. Anything
/// else names a session we never gave out.
fn session_error(req: &FetchRequest, version: i16) -> Option<i16> {
    if version < 7 {
        return None;
    }
    if req.session_id != 0 {
        return Some(errors::FETCH_SESSION_ID_NOT_FOUND);
    }
    if req.session_epoch != 0 && req.session_epoch != -1 {
        return Some(errors::INVALID_FETCH_SESSION_EPOCH);
    }
    None
}

/// Fetch isolation level: stop at the last stable offset and name the aborted transactions.
const READ_COMMITTED: i8 = 1;

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: FetchRequest = protocol::decode(&mut body, ctx.version)?;
    if let Some(code) = session_error(&req, ctx.version) {
        return respond(
            ctx,
            &FetchResponse {
                error_code: code,
                ..Default::default()
            },
        );
    }
    let deadline = Instant::now() + std::time::Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
    // Resolve topics and partitions once; topics by name before v13, by id from v13. Only
    // partitions this node leads are read.
    let topics: Vec<Wanted> = req
        .topics
        .iter()
        .map(|t| {
            let topic = if ctx.version >= 13 {
                broker.topic_by_id(&t.topic_id.0)
            } else {
                broker.topic(&t.topic)
            };
            let partitions = t
                .partitions
                .iter()
                .map(|fp| match &topic {
                    None if ctx.version >= 13 => Err(errors::UNKNOWN_TOPIC_ID),
                    None => Err(errors::UNKNOWN_TOPIC_OR_PARTITION),
                    Some(topic) => broker.leader_partition(&topic.name, fp.partition),
                })
                .collect();
            (t, partitions)
        })
        .collect();
    // Registered before the first read, so that an append between a read and the wait
    // still wakes it; only the partitions asked for can.
    let waiter = Waiter::new();
    if req.max_wait_ms > 0 {
        for p in topics.iter().flat_map(|(_, ps)| ps).flatten() {
            p.watch(&waiter);
        }
    }
    // A follower (replica id >= 0; from v15 in the replica state) reads up to the log end,
    // and its fetch offsets tell the leader how far it has the log.
    let replica = if ctx.version >= 15 {
        req.replica_state.replica_id
    } else {
        req.replica_id
    };
    let follower = (replica >= 0).then_some(replica);
    let mut refused = std::collections::HashMap::new();
    if let Some(id) = follower {
        for (t, ps) in &topics {
            for (fp, p) in t.partitions.iter().zip(ps) {
                if let Ok(p) = p
                    && fp.fetch_offset >= 0
                    && let Err(code) = p.on_follower_fetch(id, fp.fetch_offset as u64)
                {
                    refused.insert((p.topic.clone(), p.index), code);
                }
            }
        }
    }
    let read_committed = ctx.version >= 4 && req.isolation_level == READ_COMMITTED;
    let mut previous: Option<Vec<FetchableTopicResponse>> = None;
    let mut stamps: Vec<Vec<Option<Stamp>>> = Vec::new();
    loop {
        let read = Read {
            max_bytes,
            version: ctx.version,
            read_committed,
            follower: follower.is_some(),
            refused: &refused,
        };
        let mut regions = Regions::default();
        let (responses, bytes) = read_all(
            &topics,
            &read,
            previous.as_ref(),
            &mut stamps,
            // Only below the high watermark are a file's bytes sure not to change before
            // they are sent: a follower reads up to the log end, which a truncation may
            // rewrite in place, so its records are read at once.
            (broker.config.zero_copy_fetch && follower.is_none()).then_some(&mut regions),
        );
        let has_error = responses
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != errors::NONE);
        if bytes >= min_bytes || has_error || Instant::now() >= deadline {
            let response = FetchResponse {
                error_code: errors::NONE,
                session_id: 0,
                responses,
                ..Default::default()
            };
            if regions.is_empty() {
                return respond(ctx, &response);
            }
            return Ok(Reply::Parts(protocol::encode_response_parts(
                ctx,
                &response,
                &mut regions,
            )?));
        }
        // Woken by a high watermark move of one of its partitions; re-read what moved and
        // decide again.
        previous = Some(responses);
        waiter.wait(deadline).await;
    }
}

/// What a partition's read and its answer depended on: the high watermark, the last stable
/// offset, the log end for a follower (it reads up to it), the log start and the leader
/// epoch. While none moved, a read that returned nothing returns the same again.
type Stamp = (u64, u64, u64, u64, i32);

fn stamp(p: &Partition, follower: bool) -> Stamp {
    let hw = p.high_watermark();
    let leo = if follower {
        p.log().log_end_offset()
    } else {
        0
    };
    (
        hw,
        p.last_stable_offset().min(hw),
        leo,
        p.log().log_start_offset(),
        p.leader_epoch(),
    )
}

/// How a fetch reads its partitions.
struct Read<'a> {
    max_bytes: usize,
    version: i16,
    read_committed: bool,
    follower: bool,
    refused: &'a std::collections::HashMap<(std::sync::Arc<str>, i32), i16>,
}

/// A topic of the request, with this node's partitions (or the error for each).
type Wanted<'a> = (
    &'a krabka_protocol::owned::fetch_request::FetchTopic,
    Vec<Result<Arc<Partition>, i16>>,
);

/// Reads every partition of the request. After a wake (`previous`, with the `stamps` of its
/// reads), a partition whose previous read returned nothing and whose stamp has not moved
/// is not read again: a long poll over many partitions re-reads only those that changed.
/// With `regions`, the records read are put in the response as placeholders for those
/// regions, to be sent from the files; without, they are read into memory.
fn read_all(
    topics: &[Wanted<'_>],
    how: &Read<'_>,
    previous: Option<&Vec<FetchableTopicResponse>>,
    stamps: &mut Vec<Vec<Option<Stamp>>>,
    mut regions: Option<&mut Regions>,
) -> (Vec<FetchableTopicResponse>, usize) {
    let Read {
        max_bytes,
        version,
        read_committed,
        follower,
        refused,
    } = *how;
    stamps.resize_with(topics.len(), Vec::new);
    let mut total = 0usize;
    let mut responses = Vec::with_capacity(topics.len());
    for (ti, (wanted, resolved)) in topics.iter().enumerate() {
        let mut partitions = Vec::with_capacity(wanted.partitions.len());
        stamps[ti].resize(wanted.partitions.len(), None);
        for (pi, (fp, p)) in wanted.partitions.iter().zip(resolved).enumerate() {
            if let Ok(p) = p {
                let now = stamp(p, follower);
                let before = stamps[ti][pi].replace(now);
                let unchanged = previous
                    .and_then(|prev| prev.get(ti)?.partitions.get(pi))
                    .filter(|d| {
                        before == Some(now)
                            && d.error_code == errors::NONE
                            && matches!(&d.records, Some(RecordsPayload::Raw(b)) if b.is_empty())
                    });
                if let Some(d) = unchanged {
                    partitions.push(d.clone());
                    continue;
                }
            }
            let mut data = PartitionData {
                partition_index: fp.partition,
                error_code: errors::NONE,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                aborted_transactions: None,
                preferred_read_replica: -1,
                // Kafka sends empty records, not null, when there is nothing to return.
                records: Some(RecordsPayload::Raw(Bytes::new())),
                ..Default::default()
            };
            let p = match p {
                Ok(p) => p,
                Err(code) => {
                    data.error_code = *code;
                    partitions.push(data);
                    continue;
                }
            };
            if let Some(code) = refused.get(&(p.topic.clone(), p.index)) {
                data.error_code = *code;
                partitions.push(data);
                continue;
            }
            // Read once: the records returned stop where the response says they do.
            let hw = p.high_watermark();
            let lso = p.last_stable_offset().min(hw);
            data.high_watermark = hw as i64;
            data.last_stable_offset = lso as i64;
            data.log_start_offset = p.log().log_start_offset() as i64;
            if version >= 9
                && let Err(code) = p.check_leader_epoch(fp.current_leader_epoch)
            {
                data.error_code = code;
                partitions.push(data);
                continue;
            }
            if fp.fetch_offset < 0 {
                data.error_code = errors::OFFSET_OUT_OF_RANGE;
                partitions.push(data);
                continue;
            }
            // Kafka's rule: the first batch of the response may exceed the limits, so that a
            // consumer always progresses; after that, nothing that does not fit.
            let room = max_bytes.saturating_sub(total);
            let limit = (fp.partition_max_bytes.max(0) as usize).min(room);
            if limit == 0 && total > 0 {
                partitions.push(data);
                continue;
            }
            let read = if read_committed {
                p.read_committed_below(fp.fetch_offset as u64, limit.max(1), lso)
                    .map(|(r, aborted)| {
                        data.aborted_transactions = Some(
                            aborted
                                .into_iter()
                                .map(|t| AbortedTransaction {
                                    producer_id: t.producer_id,
                                    first_offset: t.first_offset as i64,
                                    ..Default::default()
                                })
                                .collect(),
                        );
                        r
                    })
            } else if follower {
                // A follower copies the log as it is, committed or not.
                p.read_below(
                    fp.fetch_offset as u64,
                    limit.max(1),
                    p.log().log_end_offset(),
                )
            } else {
                p.read_below(fp.fetch_offset as u64, limit.max(1), hw)
            };
            match read {
                Ok(r) => {
                    if let Some(region) = r.region
                        && (total == 0 || region.len as usize <= limit)
                    {
                        let by_reference = regions
                            .as_deref_mut()
                            .and_then(|rs| rs.placeholder(region.clone()));
                        if let Some(placeholder) = by_reference {
                            total += placeholder.len();
                            data.records = Some(RecordsPayload::Raw(placeholder));
                            partitions.push(data);
                            continue;
                        }
                        match region.read_all() {
                            Ok(bytes) => {
                                total += bytes.len();
                                data.records = Some(RecordsPayload::Raw(Bytes::from(bytes)));
                            }
                            Err(e) => {
                                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "read failed");
                                data.error_code = errors::KAFKA_STORAGE_ERROR;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %p.topic, partition = p.index, offset = fp.fetch_offset, follower, error = %e, "fetch refused");
                    data.error_code = errors::from_storage(&e)
                }
            }
            partitions.push(data);
        }
        responses.push(FetchableTopicResponse {
            topic: if version >= 13 {
                String::new()
            } else {
                wanted.topic.clone()
            },
            topic_id: if version >= 13 {
                wanted.topic_id
            } else {
                Uuid::ZERO
            },
            partitions,
            ..Default::default()
        });
    }
    (responses, total)
}
