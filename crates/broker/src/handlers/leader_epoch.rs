//! OffsetForLeaderEpoch (KIP-101, KIP-320): where a leader epoch ended in the leader's log.
//! A consumer asks it after a leader change to learn whether its position is still in the
//! log (else the log was truncated under it); a follower will ask it to find where its log
//! diverges from the new leader's.

use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use krabka_protocol::owned::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: OffsetForLeaderEpochRequest = protocol::decode(&mut body, ctx.version)?;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut r = EpochEndOffset {
                        partition: p.partition,
                        error_code: errors::NONE,
                        leader_epoch: -1,
                        end_offset: -1,
                        ..Default::default()
                    };
                    // Consumers and followers alike ask the leader.
                    match broker.leader_partition(&t.topic, p.partition) {
                        Err(code) => r.error_code = code,
                        Ok(part) => match part.check_leader_epoch(p.current_leader_epoch) {
                            Err(code) => r.error_code = code,
                            Ok(()) => {
                                let (e, end) = part.log().end_offset_for_epoch(p.leader_epoch);
                                r.leader_epoch = e;
                                r.end_offset = end;
                                // A consumer told an epoch ended below the high watermark
                                // (or is unknown) moves back: worth a trace when one does.
                                if req.replica_id < 0 {
                                    tracing::debug!(
                                        topic = %t.topic,
                                        partition = p.partition,
                                        asked_epoch = p.leader_epoch,
                                        current_epoch = p.current_leader_epoch,
                                        answer_epoch = e,
                                        end_offset = end,
                                        high_watermark = part.high_watermark(),
                                        log_end = part.log().log_end_offset(),
                                        "OffsetForLeaderEpoch answered a consumer"
                                    );
                                }
                            }
                        },
                    }
                    r
                })
                .collect();
            OffsetForLeaderTopicResult {
                topic: t.topic,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    respond(
        ctx,
        &OffsetForLeaderEpochResponse {
            topics,
            ..Default::default()
        },
    )
}
