//! The group coordinator: drives the group state machines with requests and time, and keeps
//! committed offsets and group metadata in `__consumer_offsets`.
//!
//! Until log compaction exists, the topic is kept small by re-appending the live records and
//! deleting everything before them once the log holds much more than the live state (on
//! load and on every retention check).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot};

use super::records::{CommittedOffset, Record};
use super::state::{
    Group, GroupConfig, JoinOutcome, JoinRequest, JoinResponse, Output, State, SyncOutcome,
    SyncRequest, SyncResponse, Token,
};
use crate::broker::Broker;
use crate::errors;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
pub const INVALID_GROUP_ID: i16 = 24;
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

#[derive(Debug, Clone, Copy)]
pub struct CoordinatorConfig {
    pub group: GroupConfig,
    pub offsets_partitions: i32,
    pub offsets_retention_ms: u64,
    pub offset_metadata_max_bytes: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            group: GroupConfig::default(),
            offsets_partitions: 50,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

pub struct Entry {
    pub group: Group,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Offsets of open transactions, by producer id (TxnOffsetCommit).
    pub pending: HashMap<i64, super::txn_offsets::PendingOffsets>,
}

enum Answer {
    Join(JoinResponse),
    Sync(SyncResponse),
}

pub struct GroupCoordinator {
    pub config: CoordinatorConfig,
    groups: Mutex<HashMap<String, Entry>>,
    waiters: Mutex<HashMap<Token, oneshot::Sender<Answer>>>,
    next_token: AtomicU64,
    /// Wakes the timer task when a group's next deadline may have moved.
    pub wake: Notify,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What OffsetCommit asks for one partition.
pub struct CommitRequest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A group as DescribeGroups shows it.
pub struct Description {
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// The topics a consumer-protocol subscription names (ConsumerProtocolSubscription: version,
/// then an array of topic names).
fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut b = metadata.get(2..).unwrap_or(&[]);
    let Some(n) = b
        .get(..4)
        .map(|x| i32::from_be_bytes(x.try_into().unwrap()))
    else {
        return out;
    };
    b = &b[4..];
    for _ in 0..n.max(0) {
        let Some(len) = b
            .get(..2)
            .map(|x| i16::from_be_bytes(x.try_into().unwrap()))
        else {
            break;
        };
        let Some(name) = b.get(2..2 + len.max(0) as usize) else {
            break;
        };
        out.push(String::from_utf8_lossy(name).into_owned());
        b = &b[2 + len.max(0) as usize..];
    }
    out
}

impl GroupCoordinator {
    pub fn new(config: CoordinatorConfig) -> Self {
        GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            wake: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap()
    }

    pub(super) fn new_entry(&self, id: &str) -> Entry {
        Entry {
            group: Group::new(id, self.config.group),
            offsets: BTreeMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Persists what changed and hands parked answers to their requests.
    fn process(&self, broker: &Broker, entry: &mut Entry) {
        let outputs = entry.group.drain_outputs();
        let mut changed = false;
        let mut waiters = self.waiters.lock().unwrap();
        for o in outputs {
            match o {
                Output::Changed => changed = true,
                Output::Join(t, r) => {
                    if let Some(tx) = waiters.remove(&t) {
                        let _ = tx.send(Answer::Join(r));
                    }
                }
                Output::Sync(t, r) => {
                    if let Some(tx) = waiters.remove(&t) {
                        let _ = tx.send(Answer::Sync(r));
                    }
                }
            }
        }
        drop(waiters);
        if changed {
            let record = Self::group_record(&entry.group);
            let _ = self.persist(broker, &entry.group.id, &[record]);
        }
    }

    fn park(&self) -> (Token, oneshot::Receiver<Answer>) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(token, tx);
        (token, rx)
    }

    fn unpark(&self, token: Token) {
        self.waiters.lock().unwrap().remove(&token);
    }

    pub async fn join(&self, broker: &Broker, group_id: &str, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        if group_id.is_empty() {
            return JoinResponse {
                error: INVALID_GROUP_ID,
                generation: -1,
                member_id,
                ..Default::default()
            };
        }
        if let Err(e) = self.ensure_offsets_topic(broker) {
            return JoinResponse {
                error: e,
                generation: -1,
                member_id,
                ..Default::default()
            };
        }
        let (token, rx) = self.park();
        let outcome = {
            let mut groups = self.lock();
            let entry = groups
                .entry(group_id.to_string())
                .or_insert_with(|| self.new_entry(group_id));
            if entry.group.state == State::Dead {
                entry.group = Group::new(group_id, self.config.group);
            }
            let outcome = entry.group.join(req, token, now_ms());
            self.process(broker, entry);
            outcome
        };
        self.wake.notify_one();
        match outcome {
            JoinOutcome::Now(r) => {
                self.unpark(token);
                r
            }
            JoinOutcome::Parked => match rx.await {
                Ok(Answer::Join(r)) => r,
                _ => JoinResponse {
                    error: errors::COORDINATOR_NOT_AVAILABLE,
                    generation: -1,
                    member_id,
                    ..Default::default()
                },
            },
        }
    }

    pub async fn sync(
        &self,
        broker: &Broker,
        group_id: &str,
        req: SyncRequest<'_>,
    ) -> SyncResponse {
        let (token, rx) = self.park();
        let outcome = {
            let mut groups = self.lock();
            match groups.get_mut(group_id) {
                None => SyncOutcome::Now(SyncResponse {
                    error: super::state::UNKNOWN_MEMBER_ID,
                    ..Default::default()
                }),
                Some(entry) => {
                    let outcome = entry.group.sync(req, token, now_ms());
                    self.process(broker, entry);
                    outcome
                }
            }
        };
        self.wake.notify_one();
        match outcome {
            SyncOutcome::Now(r) => {
                self.unpark(token);
                r
            }
            SyncOutcome::Parked => match rx.await {
                Ok(Answer::Sync(r)) => r,
                _ => SyncResponse {
                    error: errors::COORDINATOR_NOT_AVAILABLE,
                    ..Default::default()
                },
            },
        }
    }

    pub fn heartbeat(
        &self,
        broker: &Broker,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        let mut groups = self.lock();
        let Some(entry) = groups.get_mut(group_id) else {
            return super::state::UNKNOWN_MEMBER_ID;
        };
        let e = entry
            .group
            .heartbeat(member_id, instance_id, generation, now_ms());
        self.process(broker, entry);
        e
    }

    /// LeaveGroup: an error per member.
    pub fn leave(
        &self,
        broker: &Broker,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, i16> {
        let mut groups = self.lock();
        let Some(entry) = groups.get_mut(group_id) else {
            return Err(super::state::UNKNOWN_MEMBER_ID);
        };
        let now = now_ms();
        let errors = members
            .iter()
            .map(|(m, i)| entry.group.leave(m, i.as_deref(), now))
            .collect();
        self.process(broker, entry);
        drop(groups);
        self.wake.notify_one();
        Ok(errors)
    }

    /// OffsetCommit: checks membership and generation, persists, then remembers. Returns an
    /// error per partition.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        broker: &Broker,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<CommitRequest>,
    ) -> Vec<i16> {
        let n = offsets.len();
        if group_id.is_empty() {
            return vec![INVALID_GROUP_ID; n];
        }
        if let Err(e) = self.ensure_offsets_topic(broker) {
            return vec![e; n];
        }
        let mut groups = self.lock();
        let known = groups.contains_key(group_id);
        let check = match groups.get(group_id) {
            Some(entry) => entry
                .group
                .check_commit(member_id, instance_id, generation, false),
            // A group nobody joined: only simple (generation -1) commits create it.
            None if generation < 0 => errors::NONE,
            None => super::state::ILLEGAL_GENERATION,
        };
        if check != errors::NONE {
            return vec![check; n];
        }
        let now = now_ms() as i64;
        let mut results = Vec::with_capacity(n);
        let mut records = Vec::new();
        for o in &offsets {
            let code = if broker.partition(&o.topic, o.partition).is_none() {
                errors::UNKNOWN_TOPIC_OR_PARTITION
            } else if o
                .metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                OFFSET_METADATA_TOO_LARGE
            } else {
                records.push(Record::Offset {
                    group: group_id.to_string(),
                    topic: o.topic.clone(),
                    partition: o.partition,
                    value: Some(CommittedOffset {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata.clone().unwrap_or_default(),
                        commit_timestamp: now,
                    }),
                });
                errors::NONE
            };
            results.push(code);
        }
        if let Err(e) = self.persist(broker, group_id, &records) {
            return results
                .into_iter()
                .map(|r| if r == errors::NONE { e } else { r })
                .collect();
        }
        if !known {
            groups.insert(group_id.to_string(), self.new_entry(group_id));
        }
        let entry = groups.get_mut(group_id).unwrap();
        for r in records {
            if let Record::Offset {
                topic,
                partition,
                value: Some(v),
                ..
            } = r
            {
                entry.offsets.insert((topic, partition), v);
            }
        }
        results
    }

    /// OffsetFetch: the committed offsets of `topics` (all when `None`).
    pub fn fetch(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        let groups = self.lock();
        let entry = groups.get(group_id);
        match topics {
            None => entry
                .map(|e| {
                    e.offsets
                        .iter()
                        .map(|((t, p), o)| (t.clone(), *p, Some(o.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            Some(topics) => topics
                .iter()
                .flat_map(|(t, ps)| {
                    ps.iter().map(move |p| {
                        let o = entry.and_then(|e| e.offsets.get(&(t.clone(), *p))).cloned();
                        (t.clone(), *p, o)
                    })
                })
                .collect(),
        }
    }

    /// ListGroups: (group id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, State)> {
        let groups = self.lock();
        let mut out: Vec<_> = groups
            .values()
            .filter(|e| e.group.state != State::Dead)
            .map(|e| {
                (
                    e.group.id.clone(),
                    e.group.protocol_type.clone().unwrap_or_default(),
                    e.group.state,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<Description> {
        let groups = self.lock();
        let g = &groups.get(group_id)?.group;
        // As in Kafka: subscriptions and assignments only once the group is stable.
        let stable = g.state == State::Stable;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(Description {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members()
                .map(|m| {
                    let (meta, assignment) = if stable {
                        (m.metadata(&protocol), m.assignment.clone())
                    } else {
                        (vec![], vec![])
                    };
                    DescribedMember {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: meta,
                        assignment,
                    }
                })
                .collect(),
        })
    }

    /// DeleteGroups: only groups without members; their offsets go too.
    pub fn delete(&self, broker: &Broker, group_id: &str) -> i16 {
        let mut groups = self.lock();
        let Some(entry) = groups.get_mut(group_id) else {
            return GROUP_ID_NOT_FOUND;
        };
        if entry.group.state == State::Dead {
            return GROUP_ID_NOT_FOUND;
        }
        if !entry.group.is_empty() {
            return NON_EMPTY_GROUP;
        }
        let mut records: Vec<Record> = entry
            .offsets
            .keys()
            .map(|(t, p)| Record::Offset {
                group: group_id.to_string(),
                topic: t.clone(),
                partition: *p,
                value: None,
            })
            .collect();
        records.push(Record::Group {
            group: group_id.to_string(),
            value: None,
        });
        if let Err(e) = self.persist(broker, group_id, &records) {
            return e;
        }
        entry.group.mark_dead(now_ms());
        groups.remove(group_id);
        errors::NONE
    }

    /// OffsetDelete: (group error, per-partition errors).
    pub fn delete_offsets(
        &self,
        broker: &Broker,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> (i16, Vec<i16>) {
        let mut groups = self.lock();
        let Some(entry) = groups.get_mut(group_id) else {
            return (GROUP_ID_NOT_FOUND, vec![]);
        };
        let subscribed: Vec<String> = if entry.group.state == State::Empty {
            vec![]
        } else {
            let protocol = entry.group.protocol.clone().unwrap_or_default();
            entry
                .group
                .members()
                .flat_map(|m| subscribed_topics(&m.metadata(&protocol)))
                .collect()
        };
        let mut results = Vec::new();
        let mut records = Vec::new();
        for (t, p) in partitions {
            if subscribed.contains(t) {
                results.push(GROUP_SUBSCRIBED_TO_TOPIC);
            } else {
                results.push(errors::NONE);
                if entry.offsets.contains_key(&(t.clone(), *p)) {
                    records.push(Record::Offset {
                        group: group_id.to_string(),
                        topic: t.clone(),
                        partition: *p,
                        value: None,
                    });
                }
            }
        }
        if let Err(e) = self.persist(broker, group_id, &records) {
            return (e, vec![]);
        }
        for r in records {
            if let Record::Offset {
                topic, partition, ..
            } = r
            {
                entry.offsets.remove(&(topic, partition));
            }
        }
        (errors::NONE, results)
    }

    /// Applies time to every group; returns the next deadline.
    pub fn tick(&self, broker: &Broker, now: u64) -> Option<u64> {
        let mut groups = self.lock();
        let mut next: Option<u64> = None;
        for entry in groups.values_mut() {
            if entry.group.next_deadline().is_some_and(|d| d <= now) {
                entry.group.tick(now);
                self.process(broker, entry);
            }
            if let Some(d) = entry.group.next_deadline() {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }
}

/// Runs group timers (session expiry, join phase ends) until `stop` fires.
pub async fn run_timers(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let next = broker.groups.tick(&broker, now_ms());
        let wait = next
            .map(|d| d.saturating_sub(now_ms()))
            .unwrap_or(60_000)
            .min(60_000);
        let woken = tokio::time::timeout(
            std::time::Duration::from_millis(wait),
            broker.groups.wake.notified(),
        );
        tokio::select! {
            _ = woken => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_their_topics() {
        let mut m = vec![0, 1, 0, 0, 0, 2];
        for t in ["orders", "payments"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(subscribed_topics(&m), vec!["orders", "payments"]);
        assert!(subscribed_topics(&[1, 2]).is_empty());
        assert!(subscribed_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 9]).is_empty());
    }
}
