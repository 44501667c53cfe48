//! Consumer groups from the client side: finding the coordinator, group administration
//! (list, describe, offsets, delete), and a group member with the range assignor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::assignor::{
    Subscription, cooperative_sticky_assign, decode_assignment, decode_subscription_full,
    encode_assignment, encode_subscription, group_by_topic, range_assign,
};
use krabka_protocol::owned::delete_groups_request::DeleteGroupsRequest;
use krabka_protocol::owned::describe_groups_request::DescribeGroupsRequest;
use krabka_protocol::owned::find_coordinator_request::FindCoordinatorRequest;
use krabka_protocol::owned::heartbeat_request::HeartbeatRequest;
use krabka_protocol::owned::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use krabka_protocol::owned::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use krabka_protocol::owned::list_groups_request::ListGroupsRequest;
use krabka_protocol::owned::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use krabka_protocol::owned::offset_fetch_request::OffsetFetchRequest;
use krabka_protocol::owned::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};

use crate::Client;
use crate::connection::Connection;
use crate::error::{ClientError, Result, check};

const MEMBER_ID_REQUIRED: i16 = 79;
const REBALANCE_IN_PROGRESS: i16 = 27;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// (topic, partition) assigned, for consumer-protocol groups.
    pub assignment: Vec<(String, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

impl Client {
    /// The broker coordinating `group`.
    pub async fn coordinator(&self, group: &str) -> Result<i32> {
        self.find_coordinator(group, 0).await
    }

    /// FindCoordinator for a group (`key_type` 0) or a transactional id (1).
    pub(crate) async fn find_coordinator(&self, key: &str, key_type: i8) -> Result<i32> {
        let req = FindCoordinatorRequest {
            key: key.to_string(),
            key_type,
            coordinator_keys: vec![key.to_string()],
            ..Default::default()
        };
        let (resp, v) = self.any().await?.send(&req, 4, "FindCoordinator").await?;
        if v >= 4 {
            let c = resp
                .coordinators
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Protocol("no coordinator in the answer".into()))?;
            check(c.error_code, c.error_message)?;
            return Ok(c.node_id);
        }
        check(resp.error_code, resp.error_message)?;
        Ok(resp.node_id)
    }

    /// Every group on every broker.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let meta = self.metadata(Some(&[])).await?;
        let mut out = Vec::new();
        for b in &meta.brokers {
            let (resp, _) = self
                .node(b.id)
                .await?
                .send(&ListGroupsRequest::default(), 4, "ListGroups")
                .await?;
            check(resp.error_code, None)?;
            out.extend(resp.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id,
                protocol_type: g.protocol_type,
                state: g.group_state,
            }));
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let node = self.coordinator(group).await?;
        let req = DescribeGroupsRequest {
            groups: vec![group.to_string()],
            ..Default::default()
        };
        let (resp, _) = self
            .node(node)
            .await?
            .send(&req, 5, "DescribeGroups")
            .await?;
        let g = resp
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DescribeGroups answer".into()))?;
        check(g.error_code, g.error_message)?;
        let consumer = g.protocol_type == "consumer";
        Ok(GroupDescription {
            group_id: g.group_id,
            state: g.group_state,
            protocol_type: g.protocol_type,
            protocol: g.protocol_data,
            members: g
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id,
                    instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    assignment: if consumer {
                        decode_assignment(m.member_assignment).unwrap_or_default()
                    } else {
                        vec![]
                    },
                })
                .collect(),
        })
    }

    /// Committed offsets of `group`: (topic, partition) -> offset.
    pub async fn committed_offsets(&self, group: &str) -> Result<BTreeMap<(String, i32), i64>> {
        let node = self.coordinator(group).await?;
        let req = OffsetFetchRequest {
            group_id: group.to_string(),
            topics: None,
            ..Default::default()
        };
        let (resp, _) = self.node(node).await?.send(&req, 7, "OffsetFetch").await?;
        check(resp.error_code, None)?;
        let mut out = BTreeMap::new();
        for t in resp.topics {
            for p in t.partitions {
                check(p.error_code, None)?;
                if p.committed_offset >= 0 {
                    out.insert((t.name.clone(), p.partition_index), p.committed_offset);
                }
            }
        }
        Ok(out)
    }

    /// Commits offsets as a simple consumer (generation -1), as reset-offsets does.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<()> {
        let node = self.coordinator(group).await?;
        commit_with(&*self.node(node).await?, group, -1, "", offsets).await
    }

    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let node = self.coordinator(group).await?;
        let req = DeleteGroupsRequest {
            groups_names: vec![group.to_string()],
            ..Default::default()
        };
        let (resp, _) = self.node(node).await?.send(&req, 2, "DeleteGroups").await?;
        let r = resp
            .results
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DeleteGroups answer".into()))?;
        check(r.error_code, r.error_message)
    }
}

async fn commit_with(
    conn: &Connection,
    group: &str,
    generation: i32,
    member: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<()> {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for ((t, p), o) in offsets {
        let part = OffsetCommitRequestPartition {
            partition_index: *p,
            committed_offset: *o,
            committed_leader_epoch: -1,
            committed_metadata: Some(String::new()),
            ..Default::default()
        };
        match topics.iter_mut().find(|x| x.name == *t) {
            Some(x) => x.partitions.push(part),
            None => topics.push(OffsetCommitRequestTopic {
                name: t.clone(),
                partitions: vec![part],
                ..Default::default()
            }),
        }
    }
    let req = OffsetCommitRequest {
        group_id: group.to_string(),
        generation_id_or_member_epoch: generation,
        member_id: member.to_string(),
        retention_time_ms: -1,
        topics,
        ..Default::default()
    };
    let (resp, _) = conn.send(&req, 8, "OffsetCommit").await?;
    for t in resp.topics {
        for p in t.partitions {
            check(
                p.error_code,
                Some(format!("{}-{}", t.name, p.partition_index)),
            )?;
        }
    }
    Ok(())
}

/// The partition assignors a member offers, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    Range,
    CooperativeSticky,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

impl std::str::FromStr for Assignor {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "range" => Ok(Assignor::Range),
            "cooperative-sticky" => Ok(Assignor::CooperativeSticky),
            _ => Err(format!(
                "unknown assignor {s:?}: range or cooperative-sticky"
            )),
        }
    }
}

/// A member of a consumer group (classic protocol; range and cooperative-sticky assignors).
pub struct GroupMember {
    client: Arc<Client>,
    group: String,
    topics: Vec<String>,
    assignors: Vec<Assignor>,
    /// What this member holds now; a cooperative rebalance keeps it where it can.
    owned: Vec<(String, i32)>,
    /// The assignor the group chose in the last join.
    protocol: String,
    conn: Arc<Connection>,
    member_id: String,
    generation: i32,
    session_timeout: Duration,
    rebalance_needed: Arc<AtomicBool>,
    rebalance_signal: Arc<tokio::sync::Notify>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl GroupMember {
    pub async fn new(
        client: Arc<Client>,
        group: &str,
        topics: Vec<String>,
        assignors: &[Assignor],
        session_timeout: Duration,
    ) -> Result<GroupMember> {
        let node = client.coordinator(group).await?;
        let addr = client.node(node).await?.addr().to_string();
        // Its own connection: a parked JoinGroup must not hold up fetches.
        let conn = Arc::new(
            Connection::connect(
                &addr,
                "strom-consumer",
                client.timeout().max(session_timeout * 2),
            )
            .await?,
        );
        Ok(GroupMember {
            client,
            group: group.to_string(),
            topics,
            assignors: if assignors.is_empty() {
                vec![Assignor::Range]
            } else {
                assignors.to_vec()
            },
            owned: Vec::new(),
            protocol: String::new(),
            conn,
            member_id: String::new(),
            generation: -1,
            session_timeout,
            rebalance_needed: Arc::new(AtomicBool::new(false)),
            rebalance_signal: Arc::new(tokio::sync::Notify::new()),
            heartbeat: None,
        })
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// True when the coordinator asked for a rejoin (seen by the heartbeats).
    pub fn rebalance_needed(&self) -> bool {
        self.rebalance_needed.load(Ordering::Acquire)
    }

    /// Waits until a rejoin is needed.
    pub async fn rebalance_requested(&self) {
        loop {
            let signal = self.rebalance_signal.notified();
            if self.rebalance_needed() {
                return;
            }
            signal.await;
        }
    }

    /// Joins (or rejoins) the group and returns this member's partitions.
    pub async fn join(&mut self) -> Result<Vec<(String, i32)>> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        loop {
            let req = JoinGroupRequest {
                group_id: self.group.clone(),
                session_timeout_ms: self.session_timeout.as_millis() as i32,
                rebalance_timeout_ms: self.session_timeout.as_millis() as i32,
                member_id: self.member_id.clone(),
                protocol_type: "consumer".into(),
                protocols: self
                    .assignors
                    .iter()
                    .map(|a| JoinGroupRequestProtocol {
                        name: a.name().into(),
                        metadata: encode_subscription(&self.topics, &self.owned),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let (resp, _) = self.conn.send(&req, 7, "JoinGroup").await?;
            if resp.error_code == MEMBER_ID_REQUIRED {
                self.member_id = resp.member_id;
                continue;
            }
            check(resp.error_code, None)?;
            self.member_id = resp.member_id.clone();
            self.generation = resp.generation_id;
            self.protocol = resp.protocol_name.clone().unwrap_or_default();
            let assignments = if resp.leader == resp.member_id {
                let members: Vec<(String, Subscription)> = resp
                    .members
                    .iter()
                    .map(|m| {
                        (
                            m.member_id.clone(),
                            decode_subscription_full(m.metadata.clone()).unwrap_or_default(),
                        )
                    })
                    .collect();
                let wanted: BTreeSet<String> =
                    members.iter().flat_map(|(_, s)| s.topics.clone()).collect();
                let meta = self
                    .client
                    .metadata(Some(&wanted.iter().cloned().collect::<Vec<_>>()))
                    .await?;
                let counts: BTreeMap<String, i32> = meta
                    .topics
                    .iter()
                    .filter(|t| t.error == 0)
                    .map(|t| (t.name.clone(), t.partitions.len() as i32))
                    .collect();
                let per_member: BTreeMap<String, BTreeMap<String, Vec<i32>>> =
                    if self.protocol == Assignor::CooperativeSticky.name() {
                        cooperative_sticky_assign(&members, &counts)
                            .into_iter()
                            .map(|(m, a)| (m, group_by_topic(&a)))
                            .collect()
                    } else {
                        let topics: Vec<(String, Vec<String>)> = members
                            .iter()
                            .map(|(m, s)| (m.clone(), s.topics.clone()))
                            .collect();
                        range_assign(&topics, &counts)
                    };
                per_member
                    .into_iter()
                    .map(|(m, a)| SyncGroupRequestAssignment {
                        member_id: m,
                        assignment: encode_assignment(&a),
                        ..Default::default()
                    })
                    .collect()
            } else {
                vec![]
            };
            let sync = SyncGroupRequest {
                group_id: self.group.clone(),
                generation_id: self.generation,
                member_id: self.member_id.clone(),
                protocol_type: Some("consumer".into()),
                protocol_name: resp.protocol_name.clone(),
                assignments,
                ..Default::default()
            };
            let (sresp, _) = self.conn.send(&sync, 5, "SyncGroup").await?;
            if sresp.error_code == REBALANCE_IN_PROGRESS {
                continue;
            }
            check(sresp.error_code, None)?;
            let assignment = decode_assignment(sresp.assignment)
                .ok_or_else(|| ClientError::Protocol("undecodable assignment".into()))?;
            let revoked = self.owned.iter().any(|tp| !assignment.contains(tp));
            self.owned = assignment.clone();
            self.rebalance_needed.store(false, Ordering::Release);
            self.start_heartbeats();
            if revoked && self.protocol == Assignor::CooperativeSticky.name() {
                // Partitions given up go to their new owners in a second round.
                self.rebalance_needed.store(true, Ordering::Release);
                self.rebalance_signal.notify_waiters();
            }
            return Ok(assignment);
        }
    }

    fn start_heartbeats(&mut self) {
        let conn = self.conn.clone();
        let flag = self.rebalance_needed.clone();
        let signal = self.rebalance_signal.clone();
        let req = HeartbeatRequest {
            group_id: self.group.clone(),
            generation_id: self.generation,
            member_id: self.member_id.clone(),
            ..Default::default()
        };
        let interval = self.session_timeout / 3;
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                match conn.send(&req, 4, "Heartbeat").await {
                    Ok((r, _)) if r.error_code == 0 => {}
                    Ok(_) | Err(_) => {
                        flag.store(true, Ordering::Release);
                        signal.notify_waiters();
                        return;
                    }
                }
            }
        }));
    }

    /// Committed offsets for `partitions` (none when never committed).
    pub async fn committed(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<(String, i32), i64>> {
        Ok(self
            .client
            .committed_offsets(&self.group)
            .await?
            .into_iter()
            .filter(|(k, _)| partitions.contains(k))
            .collect())
    }

    pub async fn commit(&self, offsets: &BTreeMap<(String, i32), i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        commit_with(
            &self.conn,
            &self.group,
            self.generation,
            &self.member_id,
            offsets,
        )
        .await
    }

    pub async fn leave(mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let req = LeaveGroupRequest {
            group_id: self.group.clone(),
            member_id: self.member_id.clone(),
            members: vec![MemberIdentity {
                member_id: self.member_id.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (resp, _) = self.conn.send(&req, 4, "LeaveGroup").await?;
        check(resp.error_code, None)
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}
