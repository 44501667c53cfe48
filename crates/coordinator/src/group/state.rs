//! The classic consumer group protocol as a state machine: JoinGroup, SyncGroup, Heartbeat
//! and LeaveGroup events and the passing of time go in; immediate answers and completed
//! (parked) answers come out. No sockets, no clocks: tests drive every interleaving.
//!
//! States as in Kafka: Empty -> PreparingRebalance -> CompletingRebalance -> Stable, back to
//! PreparingRebalance whenever membership or subscriptions change, Dead once deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use strom_metadata::errors;

pub use super::messages::*;

#[derive(Debug, Clone)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
    pub(super) awaiting_join: Option<Token>,
    pub(super) awaiting_sync: Option<Token>,
    pub(super) last_heartbeat: u64,
    /// Joined in the current join phase and not yet through one (for new-member timeouts).
    pub(super) is_new: bool,
}

impl Member {
    pub fn metadata(&self, protocol: &str) -> Vec<u8> {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A new member that got MEMBER_ID_REQUIRED must come back within its session timeout.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) deadline: u64,
}

/// Kafka's allowance for a new member to rejoin after its first join phase (5 minutes).
pub(super) const NEW_MEMBER_JOIN_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// In join order (Kafka picks the first as leader when there is none).
    pub(super) members: BTreeMap<u64, Member>,
    pub(super) order: u64,
    pub(super) pending: HashMap<String, Pending>,
    pub(super) static_members: HashMap<String, String>,
    pub(super) fenced: HashSet<String>,
    pub(super) config: GroupConfig,
    /// When the join phase ends at the latest.
    pub(super) join_deadline: Option<u64>,
    /// The initial-rebalance delay of an empty group, if one is running.
    pub(super) initial_delay_until: Option<u64>,
    pub(super) initial_delay_limit: u64,
    pub(super) outputs: Vec<Output>,
    pub(super) member_counter: u64,
    pub state_timestamp: u64,
}

impl Group {
    pub fn new(id: &str, config: GroupConfig) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            order: 0,
            pending: HashMap::new(),
            static_members: HashMap::new(),
            fenced: HashSet::new(),
            config,
            join_deadline: None,
            initial_delay_until: None,
            initial_delay_limit: 0,
            outputs: Vec::new(),
            member_counter: 0,
            state_timestamp: 0,
        }
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn key_of(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.member_id == member_id)
            .map(|(k, _)| *k)
    }

    pub(super) fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.values().find(|m| m.member_id == member_id)
    }

    pub(super) fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        self.members.values_mut().find(|m| m.member_id == member_id)
    }

    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub(super) fn set_state(&mut self, state: State, now: u64) {
        self.state = state;
        self.state_timestamp = now;
    }

    pub(super) fn new_member_id(&mut self, client_id: &str, fresh_id: &[u8; 16]) -> String {
        self.member_counter += 1;
        let suffix: String = fresh_id.iter().map(|b| format!("{b:02x}")).collect();
        let client = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{client}-{}-{suffix}", self.member_counter)
    }

    /// Does every member support `protocols` with `protocol_type`?
    pub(super) fn supports(&self, protocol_type: &str, protocols: &[(String, Vec<u8>)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    pub(super) fn candidate_protocols(&self) -> HashSet<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else {
            return HashSet::new();
        };
        let mut set: HashSet<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            let theirs: HashSet<String> = m.protocols.iter().map(|(n, _)| n.clone()).collect();
            set.retain(|n| theirs.contains(n));
        }
        set
    }

    /// Each member votes for its most preferred protocol that all support; the most votes
    /// win, ties going to the leader's preference.
    pub(super) fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        let leader = self
            .leader
            .as_deref()
            .and_then(|l| self.member(l))
            .or_else(|| self.members.values().next())?;
        leader
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| votes.get(n) == Some(&best))
            .map(str::to_string)
    }

    pub(super) fn remove_member(&mut self, member_id: &str) {
        if let Some(key) = self.key_of(member_id) {
            let m = self.members.remove(&key).unwrap();
            if let Some(i) = &m.instance_id {
                self.static_members.remove(i);
            }
            if let Some(t) = m.awaiting_join {
                self.outputs.push(Output::Join(
                    t,
                    JoinResponse::error(UNKNOWN_MEMBER_ID, member_id),
                ));
            }
            if let Some(t) = m.awaiting_sync {
                self.outputs
                    .push(Output::Sync(t, SyncResponse::error(UNKNOWN_MEMBER_ID)));
            }
            if self.leader.as_deref() == Some(member_id) {
                self.leader = self.members.values().next().map(|m| m.member_id.clone());
            }
        }
    }

    /// UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID for a request that names a member.
    pub(super) fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Option<i16> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Some(FENCED_INSTANCE_ID),
                None if self.fenced.contains(member_id) => return Some(FENCED_INSTANCE_ID),
                _ => {}
            }
        }
        if self.member(member_id).is_none() {
            return Some(if self.fenced.contains(member_id) {
                FENCED_INSTANCE_ID
            } else {
                UNKNOWN_MEMBER_ID
            });
        }
        None
    }

    pub fn sync(&mut self, req: SyncRequest<'_>, token: Token, now: u64) -> SyncOutcome {
        let SyncRequest {
            member_id,
            instance_id,
            generation,
            protocol_type: ptype,
            protocol_name: pname,
            assignments,
        } = req;
        let fail = |e: i16| SyncOutcome::Now(SyncResponse::error(e));
        if self.state == State::Dead {
            return fail(COORDINATOR_NOT_AVAILABLE);
        }
        if let Some(e) = self.check_member(member_id, instance_id) {
            return fail(e);
        }
        if generation != self.generation {
            return fail(ILLEGAL_GENERATION);
        }
        if ptype.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || pname.is_some_and(|n| Some(n) != self.protocol.as_deref())
        {
            return fail(INCONSISTENT_GROUP_PROTOCOL);
        }
        match self.state {
            State::Empty => fail(UNKNOWN_MEMBER_ID),
            State::PreparingRebalance => fail(REBALANCE_IN_PROGRESS),
            State::Stable => {
                let m = self.member_mut(member_id).unwrap();
                m.last_heartbeat = now;
                SyncOutcome::Now(self.sync_response(member_id))
            }
            State::CompletingRebalance => {
                {
                    let m = self.member_mut(member_id).unwrap();
                    m.last_heartbeat = now;
                    if let Some(old) = m.awaiting_sync.replace(token) {
                        self.outputs.push(Output::Sync(
                            old,
                            SyncResponse::error(REBALANCE_IN_PROGRESS),
                        ));
                    }
                }
                if self.leader.as_deref() == Some(member_id) {
                    let given: HashMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.get(&m.member_id).cloned().unwrap_or_default();
                    }
                    self.set_state(State::Stable, now);
                    self.outputs.push(Output::Changed);
                    let waiting: Vec<(String, Token)> = self
                        .members
                        .values_mut()
                        .filter_map(|m| m.awaiting_sync.take().map(|t| (m.member_id.clone(), t)))
                        .collect();
                    for (id, t) in waiting {
                        let resp = self.sync_response(&id);
                        self.outputs.push(Output::Sync(t, resp));
                    }
                }
                SyncOutcome::Parked
            }
            State::Dead => unreachable!(),
        }
    }

    pub(super) fn sync_response(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            error: errors::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self
                .member(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: u64,
    ) -> i16 {
        if matches!(self.state, State::Dead) {
            return COORDINATOR_NOT_AVAILABLE;
        }
        if let Some(e) = self.check_member(member_id, instance_id) {
            return e;
        }
        if self.state == State::Empty {
            return UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        self.member_mut(member_id).unwrap().last_heartbeat = now;
        if self.state == State::PreparingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        errors::NONE
    }

    /// LeaveGroup for one member (by member id, or by instance id for static members).
    pub fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: u64) -> i16 {
        if self.state == State::Dead {
            return COORDINATOR_NOT_AVAILABLE;
        }
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return FENCED_INSTANCE_ID,
                None => return UNKNOWN_MEMBER_ID,
            },
            None => {
                if self.pending.remove(member_id).is_some() {
                    self.maybe_complete_join(now);
                    return errors::NONE;
                }
                if self.member(member_id).is_none() {
                    return UNKNOWN_MEMBER_ID;
                }
                member_id.to_string()
            }
        };
        self.remove_member(&id);
        self.after_membership_loss(now);
        errors::NONE
    }

    pub(super) fn after_membership_loss(&mut self, now: u64) {
        match self.state {
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now),
            _ => {}
        }
        if self.state == State::PreparingRebalance
            && self.members.is_empty()
            && self.initial_delay_until.is_some()
        {
            self.initial_delay_until = None;
        }
        self.maybe_complete_join(now);
    }

    /// The earliest time at which [`Group::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut d: Vec<u64> = Vec::new();
        d.extend(self.join_deadline);
        d.extend(self.initial_delay_until);
        d.extend(self.pending.values().map(|p| p.deadline));
        for m in self.members.values() {
            if let Some(dl) = self.member_deadline(m) {
                d.push(dl);
            }
        }
        d.into_iter().min()
    }

    pub(super) fn member_deadline(&self, m: &Member) -> Option<u64> {
        if m.awaiting_join.is_some() {
            // Waiting in the join phase keeps a member alive (the phase has its own end).
            return None;
        }
        if self.state == State::PreparingRebalance && m.is_new {
            return Some(m.last_heartbeat + NEW_MEMBER_JOIN_TIMEOUT_MS);
        }
        Some(m.last_heartbeat + m.session_timeout_ms.max(0) as u64)
    }

    /// Applies the passing of time: expired sessions, the end of the join phase, the end of
    /// the initial delay, pending members that never came back.
    pub fn tick(&mut self, now: u64) {
        if self.state == State::Dead {
            return;
        }
        self.pending.retain(|_, p| p.deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| self.member_deadline(m).is_some_and(|d| d <= now))
            .map(|m| m.member_id.clone())
            .collect();
        let lost = !expired.is_empty();
        for id in expired {
            self.remove_member(&id);
        }
        if lost {
            self.after_membership_loss(now);
        }
        self.maybe_complete_join(now);
    }

    /// Members of this group, and their generation, may commit offsets.
    /// Kafka's rule for OffsetCommit (`validateOffsetCommit`): a simple consumer or admin
    /// (generation -1, no member) commits only to an empty group; a member commits for its
    /// current generation in any state but CompletingRebalance, where it has not got its
    /// assignment yet. A commit while PreparingRebalance is accepted: the member learns of
    /// the rebalance from its heartbeat. Transactional commits (TxnOffsetCommit) skip the
    /// rebalance check, and before v3 carry no member at all.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        transactional: bool,
    ) -> i16 {
        if self.state == State::Dead {
            return errors::COORDINATOR_NOT_AVAILABLE;
        }
        if generation < 0 && self.state == State::Empty {
            return errors::NONE;
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            if let Some(e) = self.check_member(member_id, instance_id) {
                return e;
            }
            if generation != self.generation {
                return ILLEGAL_GENERATION;
            }
        } else if !transactional {
            // The empty member is not in a group that has members.
            return UNKNOWN_MEMBER_ID;
        }
        if !transactional && self.state == State::CompletingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        errors::NONE
    }

    /// DeleteGroups: only an empty group may go.
    pub fn mark_dead(&mut self, now: u64) {
        self.set_state(State::Dead, now);
    }

    /// Restores a group read back from `__consumer_offsets` (members included, so that a
    /// restarted coordinator keeps the generation; their sessions start now).
    pub fn restore(
        &mut self,
        generation: i32,
        protocol_type: Option<String>,
        protocol: Option<String>,
        leader: Option<String>,
        members: Vec<Member>,
        now: u64,
    ) {
        self.generation = generation;
        self.protocol_type = protocol_type;
        self.protocol = protocol;
        self.leader = leader;
        self.members.clear();
        self.static_members.clear();
        for mut m in members {
            m.last_heartbeat = now;
            m.awaiting_join = None;
            m.awaiting_sync = None;
            m.is_new = false;
            if let Some(i) = &m.instance_id {
                self.static_members.insert(i.clone(), m.member_id.clone());
            }
            self.order += 1;
            self.members.insert(self.order, m);
        }
        let state = if self.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        self.set_state(state, now);
    }
}

impl Member {
    /// A member as stored in group metadata.
    #[allow(clippy::too_many_arguments)]
    pub fn stored(
        member_id: String,
        instance_id: Option<String>,
        client_id: String,
        client_host: String,
        rebalance_timeout_ms: i32,
        session_timeout_ms: i32,
        protocol_type: String,
        protocol: (String, Vec<u8>),
        assignment: Vec<u8>,
    ) -> Member {
        Member {
            member_id,
            instance_id,
            client_id,
            client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type,
            protocols: vec![protocol],
            assignment,
            awaiting_join: None,
            awaiting_sync: None,
            last_heartbeat: 0,
            is_new: false,
        }
    }
}
