//! The join phase of the group state machine: JoinGroup, static members rejoining,
//! rebalances starting and the join phase ending with a new generation.

use super::state::*;
use strom_metadata::errors;

impl Group {
    pub fn join(&mut self, req: JoinRequest, token: Token, now: u64) -> JoinOutcome {
        let fail = |e: i16| JoinOutcome::Now(JoinResponse::error(e, &req.member_id));
        if self.state == State::Dead {
            return fail(COORDINATOR_NOT_AVAILABLE);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(INVALID_SESSION_TIMEOUT);
        }
        if req.protocol_type.is_empty()
            || req.protocols.is_empty()
            || !self.supports(&req.protocol_type, &req.protocols)
        {
            return fail(INCONSISTENT_GROUP_PROTOCOL);
        }
        if req.member_id.is_empty() {
            self.join_unknown(req, token, now)
        } else {
            self.join_known(req, token, now)
        }
    }

    pub(super) fn join_unknown(&mut self, req: JoinRequest, token: Token, now: u64) -> JoinOutcome {
        if let Some(old_id) = req
            .instance_id
            .as_ref()
            .and_then(|i| self.static_members.get(i))
            .cloned()
        {
            return self.replace_static_member(&old_id, req, token, now);
        }
        if self.members.len() + self.pending.len() >= self.config.max_size {
            return JoinOutcome::Now(JoinResponse::error(GROUP_MAX_SIZE_REACHED, ""));
        }
        let member_id = self.new_member_id(&req.client_id, &req.fresh_id);
        if req.require_known_member_id && req.instance_id.is_none() {
            self.pending.insert(
                member_id.clone(),
                Pending {
                    deadline: now + req.session_timeout_ms as u64,
                },
            );
            return JoinOutcome::Now(JoinResponse {
                error: MEMBER_ID_REQUIRED,
                generation: -1,
                member_id,
                ..Default::default()
            });
        }
        self.add_member(member_id, req, token, now);
        JoinOutcome::Parked
    }

    pub(super) fn join_known(&mut self, req: JoinRequest, token: Token, now: u64) -> JoinOutcome {
        let fail = |e: i16| JoinOutcome::Now(JoinResponse::error(e, &req.member_id));
        if self.pending.remove(&req.member_id).is_some() {
            if self.members.len() >= self.config.max_size {
                return fail(GROUP_MAX_SIZE_REACHED);
            }
            let id = req.member_id.clone();
            self.add_member(id, req, token, now);
            return JoinOutcome::Parked;
        }
        if let Some(e) = self.check_member(&req.member_id, req.instance_id.as_deref()) {
            return fail(e);
        }
        let member = self.member(&req.member_id).unwrap();
        let unchanged = member.protocols == req.protocols;
        match self.state {
            State::PreparingRebalance => {
                self.update_member(&req, token, now);
                self.maybe_complete_join(now);
                JoinOutcome::Parked
            }
            State::CompletingRebalance if unchanged => {
                // A retried join: answer with the generation it already got.
                JoinOutcome::Now(self.join_response_for(&req.member_id))
            }
            State::Stable if unchanged && self.leader.as_deref() != Some(&req.member_id) => {
                JoinOutcome::Now(self.join_response_for(&req.member_id))
            }
            _ => {
                self.update_member(&req, token, now);
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
                JoinOutcome::Parked
            }
        }
    }

    /// A static member restarted (new member id, same instance id): the old id is fenced.
    /// In a stable group with the same subscription this needs no rebalance.
    pub(super) fn replace_static_member(
        &mut self,
        old_id: &str,
        req: JoinRequest,
        token: Token,
        now: u64,
    ) -> JoinOutcome {
        let new_id = self.new_member_id(&req.client_id, &req.fresh_id);
        let key = self.key_of(old_id).expect("static member is a member");
        let instance = req.instance_id.clone().unwrap();
        let was_leader = self.leader.as_deref() == Some(old_id);
        let (old_sync, old_join, unchanged) = {
            let m = self.members.get_mut(&key).unwrap();
            let unchanged = m.protocols == req.protocols;
            m.member_id = new_id.clone();
            m.client_id = req.client_id.clone();
            m.client_host = req.client_host.clone();
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.protocols = req.protocols.clone();
            m.last_heartbeat = now;
            (m.awaiting_sync.take(), m.awaiting_join.take(), unchanged)
        };
        self.fenced.insert(old_id.to_string());
        self.static_members.insert(instance, new_id.clone());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if let Some(t) = old_sync {
            self.outputs
                .push(Output::Sync(t, SyncResponse::error(FENCED_INSTANCE_ID)));
        }
        if let Some(t) = old_join {
            self.outputs.push(Output::Join(
                t,
                JoinResponse::error(FENCED_INSTANCE_ID, old_id),
            ));
        }
        match self.state {
            State::Stable if unchanged => {
                self.outputs.push(Output::Changed);
                let mut resp = self.join_response_for(&new_id);
                // The leader keeps its assignment and must not compute a new one.
                resp.skip_assignment = was_leader;
                if was_leader {
                    resp.members.clear();
                }
                JoinOutcome::Now(resp)
            }
            State::PreparingRebalance => {
                self.members.get_mut(&key).unwrap().awaiting_join = Some(token);
                self.maybe_complete_join(now);
                JoinOutcome::Parked
            }
            _ => {
                self.members.get_mut(&key).unwrap().awaiting_join = Some(token);
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
                JoinOutcome::Parked
            }
        }
    }

    pub(super) fn add_member(
        &mut self,
        member_id: String,
        req: JoinRequest,
        token: Token,
        now: u64,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(i) = &req.instance_id {
            self.static_members.insert(i.clone(), member_id.clone());
        }
        self.order += 1;
        self.members.insert(
            self.order,
            Member {
                member_id,
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocol_type: req.protocol_type,
                protocols: req.protocols,
                assignment: Vec::new(),
                awaiting_join: Some(token),
                awaiting_sync: None,
                last_heartbeat: now,
                is_new: true,
            },
        );
        match self.state {
            State::Empty => self.start_initial_delay(now),
            State::PreparingRebalance => {
                if let Some(until) = self.initial_delay_until {
                    // Each new member in the initial delay extends it, up to the limit.
                    self.initial_delay_until = Some(
                        (now + self.config.initial_rebalance_delay_ms)
                            .min(self.initial_delay_limit)
                            .max(until),
                    );
                }
            }
            _ => self.prepare_rebalance(now),
        }
        self.maybe_complete_join(now);
    }

    pub(super) fn start_initial_delay(&mut self, now: u64) {
        self.set_state(State::PreparingRebalance, now);
        let max_rebalance = self.max_rebalance_timeout();
        self.join_deadline = Some(now + max_rebalance);
        if self.config.initial_rebalance_delay_ms > 0 {
            self.initial_delay_until =
                Some(now + self.config.initial_rebalance_delay_ms.min(max_rebalance));
            self.initial_delay_limit = now + max_rebalance;
        }
    }

    pub(super) fn update_member(&mut self, req: &JoinRequest, token: Token, now: u64) {
        let old = {
            let m = self.member_mut(&req.member_id).unwrap();
            m.protocols = req.protocols.clone();
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.client_id = req.client_id.clone();
            m.client_host = req.client_host.clone();
            m.last_heartbeat = now;
            m.awaiting_join.replace(token)
        };
        if let Some(t) = old {
            self.outputs.push(Output::Join(
                t,
                JoinResponse::error(REBALANCE_IN_PROGRESS, &req.member_id),
            ));
        }
    }

    pub(super) fn max_rebalance_timeout(&self) -> u64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    /// Enters PreparingRebalance: members waiting for their assignment are told to rejoin.
    pub(super) fn prepare_rebalance(&mut self, now: u64) {
        if self.state == State::PreparingRebalance {
            return;
        }
        let tokens: Vec<Token> = self
            .members
            .values_mut()
            .filter_map(|m| m.awaiting_sync.take())
            .collect();
        for t in tokens {
            self.outputs
                .push(Output::Sync(t, SyncResponse::error(REBALANCE_IN_PROGRESS)));
        }
        self.set_state(State::PreparingRebalance, now);
        self.join_deadline = Some(now + self.max_rebalance_timeout());
    }

    pub(super) fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    pub(super) fn maybe_complete_join(&mut self, now: u64) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if let Some(until) = self.initial_delay_until {
            if now < until {
                return;
            }
            self.initial_delay_until = None;
        }
        let deadline_passed = self.join_deadline.is_some_and(|d| now >= d);
        if !(self.all_joined() || deadline_passed) {
            return;
        }
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.pending.clear();
        self.join_deadline = None;
        self.generation += 1;
        self.outputs.push(Output::Changed);
        if self.members.is_empty() {
            // The protocol type stays, as in Kafka: an emptied consumer group still lists
            // as a consumer group.
            self.protocol = None;
            self.leader = None;
            self.set_state(State::Empty, now);
            return;
        }
        if self
            .leader
            .as_deref()
            .is_none_or(|l| self.member(l).is_none())
        {
            self.leader = self.members.values().next().map(|m| m.member_id.clone());
        }
        self.protocol = self.select_protocol();
        self.set_state(State::CompletingRebalance, now);
        let ids: Vec<String> = self.members.values().map(|m| m.member_id.clone()).collect();
        for id in ids {
            let resp = self.join_response_for(&id);
            let m = self.member_mut(&id).unwrap();
            m.is_new = false;
            m.last_heartbeat = now;
            if let Some(t) = m.awaiting_join.take() {
                self.outputs.push(Output::Join(t, resp));
            }
        }
    }

    pub(super) fn join_response_for(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| JoinMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: errors::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
            skip_assignment: false,
        }
    }
}
