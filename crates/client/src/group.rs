//! Consumer groups from the client side: finding the coordinator, group administration
//! (list, describe, offsets, delete), and a group member with the range assignor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
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

/// ConsumerProtocolSubscription v1: the topics a member wants and the partitions it owns
/// (which the cooperative-sticky assignor keeps where they are).
pub fn encode_subscription(topics: &[String], owned: &[(String, i32)]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_i32(topics.len() as i32);
    for t in topics {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
    }
    b.put_i32(-1); // no user data
    let by_topic = group_by_topic(owned);
    b.put_i32(by_topic.len() as i32);
    for (t, ps) in &by_topic {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(*p);
        }
    }
    b.freeze()
}

fn group_by_topic(parts: &[(String, i32)]) -> BTreeMap<String, Vec<i32>> {
    let mut m: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        m.entry(t.clone()).or_default().push(*p);
    }
    m
}

/// A decoded subscription: topics, and the partitions owned (v1+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    pub owned: Vec<(String, i32)>,
}

pub fn decode_subscription_full(mut b: Bytes) -> Option<Subscription> {
    if b.remaining() < 6 {
        return None;
    }
    let version = b.get_i16();
    let n = b.get_i32();
    let topics = (0..n.max(0))
        .map(|_| get_string(&mut b))
        .collect::<Option<Vec<_>>>()?;
    let mut owned = Vec::new();
    if version >= 1 {
        if b.remaining() < 4 {
            return None;
        }
        let user = b.get_i32();
        if user > 0 {
            if b.remaining() < user as usize {
                return None;
            }
            b.advance(user as usize);
        }
        if b.remaining() >= 4 {
            let k = b.get_i32();
            for _ in 0..k.max(0) {
                let t = get_string(&mut b)?;
                if b.remaining() < 4 {
                    return None;
                }
                let m = b.get_i32();
                for _ in 0..m.max(0) {
                    if b.remaining() < 4 {
                        return None;
                    }
                    owned.push((t.clone(), b.get_i32()));
                }
            }
        }
    }
    Some(Subscription { topics, owned })
}

fn get_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_i16();
    if n < 0 || b.remaining() < n as usize {
        return None;
    }
    Some(String::from_utf8_lossy(&b.split_to(n as usize)).into_owned())
}

pub fn decode_subscription(b: Bytes) -> Option<Vec<String>> {
    decode_subscription_full(b).map(|s| s.topics)
}

/// ConsumerProtocolAssignment v0.
pub fn encode_assignment(parts: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(parts.len() as i32);
    for (t, ps) in parts {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(*p);
        }
    }
    b.put_i32(-1);
    b.freeze()
}

pub fn decode_assignment(mut b: Bytes) -> Option<Vec<(String, i32)>> {
    if b.remaining() < 6 {
        return if b.is_empty() { Some(vec![]) } else { None };
    }
    b.get_i16();
    let n = b.get_i32();
    let mut out = Vec::new();
    for _ in 0..n.max(0) {
        let t = get_string(&mut b)?;
        if b.remaining() < 4 {
            return None;
        }
        let k = b.get_i32();
        for _ in 0..k.max(0) {
            if b.remaining() < 4 {
                return None;
            }
            out.push((t.clone(), b.get_i32()));
        }
    }
    Some(out)
}

/// Kafka's RangeAssignor: per topic, partitions split into contiguous ranges over the
/// members subscribed to it, in member id order.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .iter()
        .map(|(m, _)| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &count) in partitions {
        let mut subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        subscribers.sort();
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as i32;
        let per = count / n;
        let extra = count % n;
        for (i, m) in subscribers.iter().enumerate() {
            let i = i as i32;
            let start = per * i + i.min(extra);
            let len = per + if i < extra { 1 } else { 0 };
            if len > 0 {
                out.get_mut(*m)
                    .unwrap()
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

/// The cooperative-sticky assignor: every member keeps what it owns as far as balance
/// allows; partitions that must move are only taken away in this round (their new owner
/// gets them in the next one, once the old owner has let go), as in KIP-429.
pub fn cooperative_sticky_assign(
    members: &[(String, Subscription)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut ids: Vec<&String> = members.iter().map(|(m, _)| m).collect();
    ids.sort();
    let subs: BTreeMap<&String, &Subscription> = members.iter().map(|(m, s)| (m, s)).collect();
    let all: Vec<(String, i32)> = partitions
        .iter()
        .filter(|(t, _)| members.iter().any(|(_, s)| s.topics.contains(t)))
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
        .collect();
    // Each partition stays with its previous owner if that owner still wants it.
    let mut owner: BTreeMap<(String, i32), &String> = BTreeMap::new();
    for m in &ids {
        for tp in &subs[m].owned {
            if all.contains(tp) && subs[m].topics.contains(&tp.0) && !owner.contains_key(tp) {
                owner.insert(tp.clone(), *m);
            }
        }
    }
    let previous = owner.clone();
    let n = ids.len().max(1);
    let (base, mut extra) = (all.len() / n, all.len() % n);
    let mut quota: BTreeMap<&String, usize> = BTreeMap::new();
    // Members that own the most get the larger quotas, so fewer partitions move.
    let mut by_owned: Vec<&String> = ids.clone();
    by_owned.sort_by_key(|m| std::cmp::Reverse(owner.values().filter(|o| **o == *m).count()));
    for m in by_owned {
        quota.insert(
            m,
            base + if extra > 0 {
                extra -= 1;
                1
            } else {
                0
            },
        );
    }
    // Over quota: give back the highest partitions.
    for m in &ids {
        let mut mine: Vec<(String, i32)> = owner
            .iter()
            .filter(|(_, o)| **o == *m)
            .map(|(tp, _)| tp.clone())
            .collect();
        while mine.len() > quota[m] {
            let tp = mine.pop().unwrap();
            owner.remove(&tp);
        }
    }
    // Unowned partitions go to members under quota that subscribe to their topic.
    for tp in &all {
        if owner.contains_key(tp) {
            continue;
        }
        let count = |m: &String| owner.values().filter(|o| **o == m).count();
        if let Some(m) = ids
            .iter()
            .filter(|m| subs[**m].topics.contains(&tp.0) && count(m) < quota[**m])
            .min_by_key(|m| count(m))
        {
            owner.insert(tp.clone(), *m);
        }
    }
    let mut out: BTreeMap<String, Vec<(String, i32)>> =
        ids.iter().map(|m| ((*m).clone(), Vec::new())).collect();
    for (tp, m) in owner {
        // Moving from one member to another: revoke first, assign next round.
        if previous.get(&tp).is_some_and(|old| *old != m) {
            continue;
        }
        out.get_mut(m).unwrap().push(tp);
    }
    out
}

impl Client {
    /// The broker coordinating `group`.
    pub async fn coordinator(&self, group: &str) -> Result<i32> {
        let req = FindCoordinatorRequest {
            key: group.to_string(),
            key_type: 0,
            coordinator_keys: vec![group.to_string()],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignor_matches_kafka() {
        let members = vec![
            ("c0".to_string(), vec!["t".to_string()]),
            ("c1".to_string(), vec!["t".to_string()]),
            ("c2".to_string(), vec!["t".to_string(), "u".to_string()]),
        ];
        let counts: BTreeMap<String, i32> = [("t".to_string(), 7), ("u".to_string(), 2)]
            .into_iter()
            .collect();
        let a = range_assign(&members, &counts);
        assert_eq!(a["c0"]["t"], vec![0, 1, 2]);
        assert_eq!(a["c1"]["t"], vec![3, 4]);
        assert_eq!(a["c2"]["t"], vec![5, 6]);
        assert_eq!(a["c2"]["u"], vec![0, 1]);
        assert!(!a["c0"].contains_key("u"));
    }

    fn sub(topics: &[&str], owned: &[i32]) -> Subscription {
        Subscription {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|p| ("t".to_string(), *p)).collect(),
        }
    }

    fn parts(a: &BTreeMap<String, Vec<(String, i32)>>, m: &str) -> Vec<i32> {
        a[m].iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn cooperative_sticky_moves_partitions_in_two_rounds() {
        let counts: BTreeMap<String, i32> = [("t".to_string(), 4)].into_iter().collect();
        let a = cooperative_sticky_assign(&[("a".into(), sub(&["t"], &[]))], &counts);
        assert_eq!(parts(&a, "a"), vec![0, 1, 2, 3]);
        // b joins: a keeps half, the other half is only revoked in this round.
        let r1 = cooperative_sticky_assign(
            &[
                ("a".into(), sub(&["t"], &[0, 1, 2, 3])),
                ("b".into(), sub(&["t"], &[])),
            ],
            &counts,
        );
        assert_eq!(parts(&r1, "a"), vec![0, 1]);
        assert!(parts(&r1, "b").is_empty());
        // Second round: the freed partitions go to b; a keeps its own.
        let r2 = cooperative_sticky_assign(
            &[
                ("a".into(), sub(&["t"], &[0, 1])),
                ("b".into(), sub(&["t"], &[])),
            ],
            &counts,
        );
        assert_eq!(parts(&r2, "a"), vec![0, 1]);
        assert_eq!(parts(&r2, "b"), vec![2, 3]);
        // A balanced group stays as it is, whatever the layout.
        let same = cooperative_sticky_assign(
            &[
                ("a".into(), sub(&["t"], &[0, 2])),
                ("b".into(), sub(&["t"], &[1, 3])),
            ],
            &counts,
        );
        assert_eq!(parts(&same, "a"), vec![0, 2]);
        assert_eq!(parts(&same, "b"), vec![1, 3]);
        // A member left: its partitions go straight to the others.
        let left = cooperative_sticky_assign(&[("b".into(), sub(&["t"], &[1, 3]))], &counts);
        assert_eq!(parts(&left, "b"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn subscriptions_carry_owned_partitions() {
        let s = encode_subscription(
            &["t".to_string()],
            &[("t".to_string(), 3), ("t".to_string(), 5)],
        );
        let d = decode_subscription_full(s).unwrap();
        assert_eq!(d.topics, vec!["t"]);
        assert_eq!(d.owned, vec![("t".to_string(), 3), ("t".to_string(), 5)]);
    }

    #[test]
    fn consumer_protocol_round_trips() {
        let topics = vec!["a".to_string(), "bb".to_string()];
        assert_eq!(
            decode_subscription(encode_subscription(&topics, &[])),
            Some(topics)
        );
        let mut parts = BTreeMap::new();
        parts.insert("a".to_string(), vec![0, 2]);
        assert_eq!(
            decode_assignment(encode_assignment(&parts)),
            Some(vec![("a".to_string(), 0), ("a".to_string(), 2)])
        );
        assert_eq!(decode_assignment(Bytes::new()), Some(vec![]));
        assert_eq!(
            decode_assignment(Bytes::from_static(&[0, 0, 0, 0, 0, 1, 0, 9])),
            None
        );
    }
}
