//! The classic group protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::delete_groups_request::DeleteGroupsRequest;
use krabka_protocol::owned::delete_groups_response::{DeletableGroupResult, DeleteGroupsResponse};
use krabka_protocol::owned::describe_groups_request::DescribeGroupsRequest;
use krabka_protocol::owned::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use krabka_protocol::owned::heartbeat_request::HeartbeatRequest;
use krabka_protocol::owned::heartbeat_response::HeartbeatResponse;
use krabka_protocol::owned::join_group_request::JoinGroupRequest;
use krabka_protocol::owned::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use krabka_protocol::owned::leave_group_request::LeaveGroupRequest;
use krabka_protocol::owned::leave_group_response::{LeaveGroupResponse, MemberResponse};
use krabka_protocol::owned::list_groups_request::ListGroupsRequest;
use krabka_protocol::owned::list_groups_response::{ListGroupsResponse, ListedGroup};
use krabka_protocol::owned::offset_commit_request::OffsetCommitRequest;
use krabka_protocol::owned::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use krabka_protocol::owned::offset_delete_request::OffsetDeleteRequest;
use krabka_protocol::owned::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use krabka_protocol::owned::offset_fetch_request::OffsetFetchRequest;
use krabka_protocol::owned::offset_fetch_response as fetch;

use super::{HandlerResult, respond};
use crate::acl::{Resource, authorized_operations};
use crate::broker::Broker;
use crate::errors;
use crate::group::coordinator::{CommitRequest, GROUP_ID_NOT_FOUND};
use crate::group::state::{JoinRequest, SyncRequest};
use crate::protocol::{self, RequestContext};

pub async fn join(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
    peer: SocketAddr,
) -> HandlerResult {
    let req: JoinGroupRequest = protocol::decode(&mut body, ctx.version)?;
    let join = JoinRequest {
        member_id: req.member_id.clone(),
        instance_id: req.group_instance_id.clone(),
        client_id: ctx.client_id.clone().unwrap_or_default(),
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if ctx.version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.clone(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.clone(), p.metadata.to_vec()))
            .collect(),
        require_known_member_id: ctx.version >= 4,
    };
    let r = broker.groups.join(broker, &req.group_id, join).await;
    respond(
        ctx,
        &JoinGroupResponse {
            error_code: r.error,
            generation_id: r.generation,
            protocol_type: r.protocol_type,
            // Before v7 the field is not nullable.
            protocol_name: r
                .protocol_name
                .or_else(|| (ctx.version < 7).then(String::new)),
            leader: r.leader,
            skip_assignment: r.skip_assignment,
            member_id: r.member_id,
            members: r
                .members
                .into_iter()
                .map(|m| JoinGroupResponseMember {
                    member_id: m.member_id,
                    group_instance_id: m.instance_id,
                    metadata: Bytes::from(m.metadata),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
}

pub async fn sync(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: SyncGroupRequest = protocol::decode(&mut body, ctx.version)?;
    let r = broker
        .groups
        .sync(
            broker,
            &req.group_id,
            SyncRequest {
                member_id: &req.member_id,
                instance_id: req.group_instance_id.as_deref(),
                generation: req.generation_id,
                protocol_type: req.protocol_type.as_deref(),
                protocol_name: req.protocol_name.as_deref(),
                assignments: req
                    .assignments
                    .iter()
                    .map(|a| (a.member_id.clone(), a.assignment.to_vec()))
                    .collect(),
            },
        )
        .await;
    respond(
        ctx,
        &SyncGroupResponse {
            error_code: r.error,
            protocol_type: r.protocol_type,
            protocol_name: r.protocol_name,
            assignment: Bytes::from(r.assignment),
            ..Default::default()
        },
    )
}

use krabka_protocol::owned::sync_group_request::SyncGroupRequest;
use krabka_protocol::owned::sync_group_response::SyncGroupResponse;

pub fn heartbeat(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: HeartbeatRequest = protocol::decode(&mut body, ctx.version)?;
    let error_code = broker.groups.heartbeat(
        broker,
        &req.group_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
    );
    respond(
        ctx,
        &HeartbeatResponse {
            error_code,
            ..Default::default()
        },
    )
}

pub fn leave(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: LeaveGroupRequest = protocol::decode(&mut body, ctx.version)?;
    // v0-2 name one member; v3+ a batch, possibly by instance id.
    let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
            .collect()
    } else {
        vec![(req.member_id.clone(), None)]
    };
    let resp = match broker.groups.leave(broker, &req.group_id, &members) {
        Err(e) => LeaveGroupResponse {
            error_code: e,
            ..Default::default()
        },
        Ok(errors) if ctx.version >= 3 => LeaveGroupResponse {
            error_code: errors::NONE,
            members: members
                .into_iter()
                .zip(errors)
                .map(
                    |((member_id, group_instance_id), error_code)| MemberResponse {
                        member_id,
                        group_instance_id,
                        error_code,
                        ..Default::default()
                    },
                )
                .collect(),
            ..Default::default()
        },
        Ok(errors) => LeaveGroupResponse {
            error_code: errors[0],
            ..Default::default()
        },
    };
    respond(ctx, &resp)
}

pub fn offset_commit(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: OffsetCommitRequest = protocol::decode(&mut body, ctx.version)?;
    let wanted: Vec<CommitRequest> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| CommitRequest {
                topic: t.name.clone(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if ctx.version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.clone(),
            })
        })
        .collect();
    let mut results = broker
        .groups
        .commit(
            broker,
            &req.group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id_or_member_epoch,
            wanted,
        )
        .into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| OffsetCommitResponseTopic {
            name: t.name.clone(),
            topic_id: t.topic_id,
            partitions: t
                .partitions
                .iter()
                .map(|p| OffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code: results.next().unwrap_or(errors::NONE),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &OffsetCommitResponse {
            topics,
            ..Default::default()
        },
    )
}

type Wanted = Option<Vec<(String, Vec<i32>)>>;

/// (partition, offset, leader epoch, metadata) of one committed offset, -1s when none.
/// (partition, offset, leader epoch, metadata, error code).
type Fetched = (i32, i64, i32, String, i16);

const UNSTABLE_OFFSET_COMMIT: i16 = 88;

/// A consumer that requires stable offsets (read_committed) is told to retry while a
/// transaction that committed offsets for the partition is still open.
fn fetch_group(
    broker: &Broker,
    group: &str,
    wanted: &Wanted,
    require_stable: bool,
) -> Vec<(String, Vec<Fetched>)> {
    let found = broker.groups.fetch(group, wanted.as_deref());
    let unstable = if require_stable {
        broker.groups.unstable_partitions(group)
    } else {
        Default::default()
    };
    let mut out: Vec<(String, Vec<Fetched>)> = Vec::new();
    for (topic, partition, o) in found {
        let fetched = if unstable.contains(&(topic.clone(), partition)) {
            (partition, -1, -1, String::new(), UNSTABLE_OFFSET_COMMIT)
        } else {
            match o {
                Some(o) => (
                    partition,
                    o.offset,
                    o.leader_epoch,
                    o.metadata,
                    errors::NONE,
                ),
                None => (partition, -1, -1, String::new(), errors::NONE),
            }
        };
        match out.last_mut() {
            Some((t, ps)) if *t == topic => ps.push(fetched),
            _ => out.push((topic, vec![fetched])),
        }
    }
    out
}

pub fn offset_fetch(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: OffsetFetchRequest = protocol::decode(&mut body, ctx.version)?;
    if ctx.version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let wanted: Wanted = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                        .collect()
                });
                fetch::OffsetFetchResponseGroup {
                    group_id: g.group_id.clone(),
                    topics: fetch_group(broker, &g.group_id, &wanted, req.require_stable)
                        .into_iter()
                        .map(|(name, ps)| fetch::OffsetFetchResponseTopics {
                            name,
                            partitions: ps
                                .into_iter()
                                .map(
                                    |(
                                        partition_index,
                                        committed_offset,
                                        committed_leader_epoch,
                                        metadata,
                                        error_code,
                                    )| {
                                        fetch::OffsetFetchResponsePartitions {
                                            partition_index,
                                            committed_offset,
                                            committed_leader_epoch,
                                            metadata: Some(metadata),
                                            error_code,
                                            ..Default::default()
                                        }
                                    },
                                )
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    error_code: errors::NONE,
                    ..Default::default()
                }
            })
            .collect();
        return respond(
            ctx,
            &fetch::OffsetFetchResponse {
                groups,
                ..Default::default()
            },
        );
    }
    let wanted: Wanted = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.clone(), t.partition_indexes.clone()))
            .collect()
    });
    let topics = fetch_group(broker, &req.group_id, &wanted, req.require_stable)
        .into_iter()
        .map(|(name, ps)| fetch::OffsetFetchResponseTopic {
            name,
            partitions: ps
                .into_iter()
                .map(
                    |(
                        partition_index,
                        committed_offset,
                        committed_leader_epoch,
                        metadata,
                        error_code,
                    )| {
                        fetch::OffsetFetchResponsePartition {
                            partition_index,
                            committed_offset,
                            committed_leader_epoch,
                            metadata: Some(metadata),
                            error_code,
                            ..Default::default()
                        }
                    },
                )
                .collect(),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &fetch::OffsetFetchResponse {
            topics,
            error_code: errors::NONE,
            ..Default::default()
        },
    )
}

pub fn list(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: ListGroupsRequest = protocol::decode(&mut body, ctx.version)?;
    let groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state.name()))
        })
        // Every group here speaks the classic protocol.
        .filter(|_| {
            req.types_filter.is_empty()
                || req
                    .types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case("classic"))
        })
        .map(|(group_id, protocol_type, state)| ListedGroup {
            group_id,
            protocol_type,
            group_state: state.name().to_string(),
            group_type: "classic".to_string(),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &ListGroupsResponse {
            error_code: errors::NONE,
            groups,
            ..Default::default()
        },
    )
}

pub fn describe(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: DescribeGroupsRequest = protocol::decode(&mut body, ctx.version)?;
    let ops = authorized_operations(
        ctx.version >= 3 && req.include_authorized_operations,
        Resource::Group,
    );
    let groups = req
        .groups
        .iter()
        .map(|id| match broker.groups.describe(id) {
            // Kafka describes an unknown group as Dead, without an error.
            None => DescribedGroup {
                group_id: id.clone(),
                group_state: "Dead".into(),
                authorized_operations: ops,
                error_code: if ctx.version >= 6 {
                    GROUP_ID_NOT_FOUND
                } else {
                    errors::NONE
                },
                ..Default::default()
            },
            Some(d) => DescribedGroup {
                error_code: errors::NONE,
                group_id: id.clone(),
                group_state: d.state.name().to_string(),
                protocol_type: d.protocol_type,
                protocol_data: d.protocol,
                members: d
                    .members
                    .into_iter()
                    .map(|m| DescribedGroupMember {
                        member_id: m.member_id,
                        group_instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        member_metadata: Bytes::from(m.metadata),
                        member_assignment: Bytes::from(m.assignment),
                        ..Default::default()
                    })
                    .collect(),
                authorized_operations: ops,
                ..Default::default()
            },
        })
        .collect();
    respond(
        ctx,
        &DescribeGroupsResponse {
            groups,
            ..Default::default()
        },
    )
}

pub fn delete(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: DeleteGroupsRequest = protocol::decode(&mut body, ctx.version)?;
    let results = req
        .groups_names
        .iter()
        .map(|id| DeletableGroupResult {
            group_id: id.clone(),
            error_code: broker.groups.delete(broker, id),
            ..Default::default()
        })
        .collect();
    respond(
        ctx,
        &DeleteGroupsResponse {
            results,
            ..Default::default()
        },
    )
}

pub fn offset_delete(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: OffsetDeleteRequest = protocol::decode(&mut body, ctx.version)?;
    let wanted: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.clone(), p.partition_index))
        })
        .collect();
    let (error_code, results) = broker.groups.delete_offsets(broker, &req.group_id, &wanted);
    let mut results = results.into_iter();
    let topics = if error_code != errors::NONE {
        vec![]
    } else {
        req.topics
            .iter()
            .map(|t| OffsetDeleteResponseTopic {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| OffsetDeleteResponsePartition {
                        partition_index: p.partition_index,
                        error_code: results.next().unwrap_or(errors::NONE),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    };
    respond(
        ctx,
        &OffsetDeleteResponse {
            error_code,
            topics,
            ..Default::default()
        },
    )
}
