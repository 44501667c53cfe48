use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::list_offsets_request::ListOffsetsRequest;
use krabka_protocol::owned::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::partition::Partition;
use crate::protocol::{self, RequestContext};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// (error, timestamp, offset) for one partition.
fn lookup(p: &Partition, timestamp: i64, version: i16, read_committed: bool) -> (i16, i64, i64) {
    // read_committed consumers see up to the last stable offset, others up to the high
    // watermark.
    let visible = if read_committed {
        p.last_stable_offset()
    } else {
        p.high_watermark()
    };
    let found = |r: Result<Option<strom_storage::TimestampOffset>, _>| match r {
        Ok(Some(t)) if t.offset < visible => (errors::NONE, t.timestamp, t.offset as i64),
        Ok(_) => (errors::NONE, -1, -1),
        Err(e) => (errors::from_storage(&e), -1, -1),
    };
    match timestamp {
        LATEST => (errors::NONE, -1, visible as i64),
        EARLIEST => (errors::NONE, -1, p.log().log_start_offset() as i64),
        EARLIEST_LOCAL if version >= 8 => (errors::NONE, -1, p.log().log_start_offset() as i64),
        MAX_TIMESTAMP if version >= 7 => found(p.log().max_timestamp_offset()),
        t if t >= 0 => found(p.log().offset_for_timestamp(t)),
        _ => (errors::INVALID_REQUEST, -1, -1),
    }
}

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: ListOffsetsRequest = protocol::decode(&mut body, ctx.version)?;
    let read_committed = ctx.version >= 2 && req.isolation_level == 1;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|lp| {
                    let mut r = ListOffsetsPartitionResponse {
                        partition_index: lp.partition_index,
                        error_code: errors::NONE,
                        timestamp: -1,
                        offset: -1,
                        leader_epoch: -1,
                        ..Default::default()
                    };
                    match broker.leader_partition(&t.name, lp.partition_index) {
                        Err(code) => r.error_code = code,
                        Ok(p) => {
                            let checked = if ctx.version >= 4 {
                                p.check_leader_epoch(lp.current_leader_epoch)
                            } else {
                                Ok(())
                            };
                            match checked {
                                Err(code) => r.error_code = code,
                                Ok(()) => {
                                    let (error, ts, offset) =
                                        lookup(&p, lp.timestamp, ctx.version, read_committed);
                                    r.error_code = error;
                                    r.timestamp = ts;
                                    r.offset = offset;
                                    r.leader_epoch = p.leader_epoch();
                                }
                            }
                        }
                    }
                    r
                })
                .collect();
            ListOffsetsTopicResponse {
                name: t.name,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    respond(
        ctx,
        &ListOffsetsResponse {
            topics,
            ..Default::default()
        },
    )
}
