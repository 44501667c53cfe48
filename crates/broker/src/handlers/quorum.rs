//! DescribeQuorum: the metadata quorum's leader, epoch, high watermark and its voters'
//! log end offsets, as `kafka-metadata-quorum.sh describe --status` and `--replication`
//! show them.

use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::common::describe_quorum_response::replica_state::ReplicaState;
use krabka_protocol::owned::describe_quorum_request::DescribeQuorumRequest;
use krabka_protocol::owned::describe_quorum_response::{
    DescribeQuorumResponse, PartitionData, TopicData,
};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

/// The metadata log's topic, as Kafka names it.
const METADATA_TOPIC: &str = "__cluster_metadata";

pub async fn describe(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DescribeQuorumRequest = protocol::decode(&mut body, ctx.version)?;
    let status = broker.quorum_status_at_leader().await;
    let topics = req
        .topics
        .into_iter()
        .map(|t| TopicData {
            partitions: t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut d = PartitionData {
                        partition_index: p.partition_index,
                        leader_id: -1,
                        leader_epoch: -1,
                        high_watermark: -1,
                        ..Default::default()
                    };
                    match &status {
                        _ if t.topic_name != METADATA_TOPIC || p.partition_index != 0 => {
                            d.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        }
                        None => d.error_code = errors::NOT_CONTROLLER,
                        Some(s) => {
                            let replica =
                                |r: &strom_controller::quorum::ReplicaStatus| ReplicaState {
                                    replica_id: r.id as i32,
                                    log_end_offset: r.log_end_offset,
                                    last_fetch_timestamp: -1,
                                    last_caught_up_timestamp: -1,
                                    ..Default::default()
                                };
                            d.leader_id = s.leader.map_or(-1, |l| l as i32);
                            d.leader_epoch = s.epoch as i32;
                            d.high_watermark = s.high_watermark;
                            d.current_voters = s.voters.iter().map(replica).collect();
                            d.observers = s.observers.iter().map(replica).collect();
                        }
                    }
                    d
                })
                .collect(),
            topic_name: t.topic_name,
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &DescribeQuorumResponse {
            error_code: errors::NONE,
            topics,
            ..Default::default()
        },
    )
}
