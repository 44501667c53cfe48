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
use strom_storage::clock::random_id;

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
        fresh_id: random_id(),
    };
    let b: &Broker = broker;
    let r = b.groups.join(b, &req.group_id, join).await;
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
    let b: &Broker = broker;
    let r = b
        .groups
        .sync(
            b,
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

pub async fn heartbeat(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: HeartbeatRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let error_code = b
        .groups
        .heartbeat(
            b,
            &req.group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        )
        .await;
    respond(
        ctx,
        &HeartbeatResponse {
            error_code,
            ..Default::default()
        },
    )
}

pub async fn leave(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
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
    let b: &Broker = broker;
    let resp = match b.groups.leave(b, &req.group_id, &members).await {
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

pub async fn offset_commit(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
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
    let b: &Broker = broker;
    let mut results = b
        .groups
        .commit(
            b,
            &req.group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id_or_member_epoch,
            wanted,
        )
        .await
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

use crate::errors::UNSTABLE_OFFSET_COMMIT;

/// A consumer that requires stable offsets (read_committed) is told to retry while a
/// transaction that committed offsets for the partition is still open.
async fn fetch_group(
    broker: &Broker,
    group: &str,
    wanted: &Wanted,
    require_stable: bool,
) -> (i16, Vec<(String, Vec<Fetched>)>) {
    let found = match broker.groups.fetch(broker, group, wanted.as_deref()).await {
        Ok(found) => found,
        // NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS: for the group, and for each
        // partition asked for (v0-1 carry no group error).
        Err(e) => {
            let topics = wanted
                .iter()
                .flatten()
                .map(|(t, ps)| {
                    let ps = ps.iter().map(|p| (*p, -1, -1, String::new(), e)).collect();
                    (t.clone(), ps)
                })
                .collect();
            return (e, topics);
        }
    };
    let unstable = if require_stable {
        broker.groups.unstable_partitions(broker, group).await
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
    (errors::NONE, out)
}

pub async fn offset_fetch(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: OffsetFetchRequest = protocol::decode(&mut body, ctx.version)?;
    if ctx.version >= 8 {
        let mut fetched = Vec::with_capacity(req.groups.len());
        for g in &req.groups {
            let wanted: Wanted = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                    .collect()
            });
            fetched.push((
                g,
                fetch_group(broker, &g.group_id, &wanted, req.require_stable).await,
            ));
        }
        let groups = fetched
            .into_iter()
            .map(
                |(g, (error_code, topics))| fetch::OffsetFetchResponseGroup {
                    group_id: g.group_id.clone(),
                    topics: topics
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
                    error_code,
                    ..Default::default()
                },
            )
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
    let (error_code, topics) =
        fetch_group(broker, &req.group_id, &wanted, req.require_stable).await;
    let topics = topics
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
            error_code,
            ..Default::default()
        },
    )
}

pub async fn list(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: ListGroupsRequest = protocol::decode(&mut body, ctx.version)?;
    let groups = broker
        .groups
        .list()
        .await
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

pub async fn describe(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: DescribeGroupsRequest = protocol::decode(&mut body, ctx.version)?;
    let ops = authorized_operations(
        ctx.version >= 3 && req.include_authorized_operations,
        Resource::Group,
    );
    let b: &Broker = broker;
    let mut described = Vec::with_capacity(req.groups.len());
    for id in &req.groups {
        described.push((id, b.groups.describe(b, id).await));
    }
    let groups = described
        .into_iter()
        .map(|(id, d)| match d {
            Err(error_code) => DescribedGroup {
                group_id: id.clone(),
                error_code,
                authorized_operations: ops,
                ..Default::default()
            },
            // Kafka describes an unknown group as Dead, without an error.
            Ok(None) => DescribedGroup {
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
            Ok(Some(d)) => DescribedGroup {
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

pub async fn delete(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: DeleteGroupsRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in &req.groups_names {
        results.push(DeletableGroupResult {
            group_id: id.clone(),
            error_code: b.groups.delete(b, id).await,
            ..Default::default()
        });
    }
    respond(
        ctx,
        &DeleteGroupsResponse {
            results,
            ..Default::default()
        },
    )
}

pub async fn offset_delete(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
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
    let b: &Broker = broker;
    let (error_code, results) = b.groups.delete_offsets(b, &req.group_id, &wanted).await;
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
