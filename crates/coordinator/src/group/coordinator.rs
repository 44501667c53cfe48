//! The group coordinator: drives the group state machines with requests and time, and keeps
//! committed offsets and group metadata in `__consumer_offsets`.
//!
//! Each `__consumer_offsets` partition this node leads is a shard, loaded on election and
//! dropped on resignation. Within a shard each group has an async lock of its own: a request
//! holds it while its records are appended and committed, so one group's writes keep their
//! order while other groups go on, and no thread waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use strom_metadata::{TopicPartition, errors};
use tokio::sync::{Notify, OwnedMutexGuard, oneshot};

use super::records::{CommittedOffset, partition_for};
use super::state::{
    Group, GroupConfig, JoinOutcome, JoinRequest, JoinResponse, Output, State, SyncOutcome,
    SyncRequest, SyncResponse, Token,
};
use crate::host::Host;
use crate::shards::Shards;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
pub use super::admin::{DescribedMember, Description};
pub use strom_metadata::errors::{
    GROUP_ID_NOT_FOUND, GROUP_SUBSCRIBED_TO_TOPIC, INVALID_GROUP_ID, NON_EMPTY_GROUP,
    OFFSET_METADATA_TOO_LARGE,
};

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

/// Committed offsets by topic and partition.
pub type Offsets = BTreeMap<(String, i32), CommittedOffset>;

pub struct Entry {
    pub group: Group,
    pub offsets: Offsets,
    /// Offsets of open transactions, by producer id (TxnOffsetCommit).
    pub pending: HashMap<i64, super::txn_offsets::PendingOffsets>,
    /// Removed from its shard (deleted or expired): whoever waited for its lock looks again.
    pub(super) removed: bool,
}

/// One group's state behind its own async lock.
pub(super) type Slot = Arc<tokio::sync::Mutex<Entry>>;

/// The groups of one `__consumer_offsets` partition.
pub(super) struct GroupShard {
    pub(super) tp: TopicPartition,
    pub(super) groups: Mutex<HashMap<String, Slot>>,
    /// Set by the resignation: requests that found the shard before it find no group now.
    pub(super) resigned: std::sync::atomic::AtomicBool,
}

impl GroupShard {
    pub(super) fn slots(&self) -> Vec<(String, Slot)> {
        let groups = self.groups.lock().unwrap();
        groups.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

enum Answer {
    Join(JoinResponse),
    Sync(SyncResponse),
}

pub struct GroupCoordinator {
    pub config: CoordinatorConfig,
    pub(super) shards: Shards<GroupShard>,
    /// Parked JoinGroup/SyncGroup requests, with the `__consumer_offsets` partition of their
    /// group: a resignation answers them without the group's lock.
    waiters: Mutex<HashMap<Token, (i32, oneshot::Sender<Answer>)>>,
    next_token: AtomicU64,
    /// Wakes the timer task when a group's next deadline may have moved.
    pub wake: Notify,
}

pub fn now_ms() -> u64 {
    strom_storage::clock::now_ms().max(0) as u64
}

/// What OffsetCommit asks for one partition.
pub struct CommitRequest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Where a request for a group goes.
pub(super) enum Located {
    Shard(Arc<GroupShard>),
    /// `__consumer_offsets` does not exist yet: no group has anything stored.
    NoTopic,
}

impl GroupCoordinator {
    pub fn new(config: CoordinatorConfig) -> Self {
        GroupCoordinator {
            config,
            shards: Shards::default(),
            waiters: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            wake: Notify::new(),
        }
    }

    pub(super) fn new_entry(&self, id: &str) -> Entry {
        Entry {
            group: Group::new(id, self.config.group),
            offsets: BTreeMap::new(),
            pending: HashMap::new(),
            removed: false,
        }
    }

    /// Creates `__consumer_offsets` on first use, as Kafka does.
    pub async fn ensure_offsets_topic(&self, host: &dyn Host) -> Result<i32, i16> {
        host.ensure_internal_topic(OFFSETS_TOPIC, self.config.offsets_partitions)
            .await
    }

    /// The shard of `group_id`, creating the topic first when `create`.
    pub(super) async fn locate(
        &self,
        host: &dyn Host,
        group_id: &str,
        create: bool,
    ) -> Result<Located, i16> {
        if !host.leadership_current() {
            return Err(errors::NOT_COORDINATOR);
        }
        let partitions = match host.partition_count(OFFSETS_TOPIC) {
            Some(n) if n > 0 => n,
            _ if create => self.ensure_offsets_topic(host).await?,
            _ => return Ok(Located::NoTopic),
        };
        self.shards
            .get(partition_for(group_id, partitions))
            .map(Located::Shard)
    }

    /// `group_id`'s entry, locked; created when `create`. A group removed while this waited
    /// for its lock is looked up again.
    pub(super) async fn entry(
        &self,
        shard: &GroupShard,
        group_id: &str,
        create: bool,
    ) -> Option<OwnedMutexGuard<Entry>> {
        loop {
            if shard.resigned.load(Ordering::Acquire) {
                return None;
            }
            let slot = {
                let mut groups = shard.groups.lock().unwrap();
                match groups.get(group_id) {
                    Some(s) => s.clone(),
                    None if create => groups
                        .entry(group_id.to_string())
                        .or_insert_with(|| {
                            Arc::new(tokio::sync::Mutex::new(self.new_entry(group_id)))
                        })
                        .clone(),
                    None => return None,
                }
            };
            let guard = slot.lock_owned().await;
            if !guard.removed {
                return Some(guard);
            }
        }
    }

    /// Takes `entry` out of its shard (it is locked by the caller).
    pub(super) fn remove(shard: &GroupShard, entry: &mut Entry) {
        entry.removed = true;
        shard.groups.lock().unwrap().remove(&entry.group.id);
    }

    /// Persists what changed, then hands parked answers to their requests.
    async fn process(&self, host: &dyn Host, shard: &GroupShard, entry: &mut Entry) {
        let outputs = entry.group.drain_outputs();
        if outputs.iter().any(|o| matches!(o, Output::Changed)) {
            let record = Self::group_record(&entry.group);
            // As before the shards: a failed write is logged; the members' next requests
            // carry on from the state in memory.
            let _ = self
                .persist(host, &shard.tp, &entry.group.id, &[record])
                .await;
        }
        let mut waiters = self.waiters.lock().unwrap();
        for o in outputs {
            match o {
                Output::Changed => {}
                Output::Join(t, r) => {
                    if let Some((_, tx)) = waiters.remove(&t) {
                        let _ = tx.send(Answer::Join(r));
                    }
                }
                Output::Sync(t, r) => {
                    if let Some((_, tx)) = waiters.remove(&t) {
                        let _ = tx.send(Answer::Sync(r));
                    }
                }
            }
        }
    }

    fn park(&self, shard: &GroupShard) -> (Token, oneshot::Receiver<Answer>) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap()
            .insert(token, (shard.tp.partition, tx));
        (token, rx)
    }

    fn unpark(&self, token: Token) {
        self.waiters.lock().unwrap().remove(&token);
    }

    pub async fn join(&self, host: &dyn Host, group_id: &str, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        let fail = |error| JoinResponse {
            error,
            generation: -1,
            member_id: member_id.clone(),
            ..Default::default()
        };
        if group_id.is_empty() {
            return fail(INVALID_GROUP_ID);
        }
        let shard = match self.locate(host, group_id, true).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return fail(errors::COORDINATOR_NOT_AVAILABLE),
            Err(e) => return fail(e),
        };
        let (token, rx) = self.park(&shard);
        let outcome = {
            let Some(mut entry) = self.entry(&shard, group_id, true).await else {
                self.unpark(token);
                return fail(errors::NOT_COORDINATOR);
            };
            if entry.group.state == State::Dead {
                entry.group = Group::new(group_id, self.config.group);
            }
            let outcome = entry.group.join(req, token, now_ms());
            self.process(host, &shard, &mut entry).await;
            outcome
        };
        let now = match outcome {
            JoinOutcome::Now(r) => Some(r),
            JoinOutcome::Parked => None,
        };
        let take = |a| match a {
            Answer::Join(r) => Some(r),
            Answer::Sync(_) => None,
        };
        self.settle(token, rx, now, take, fail(errors::NOT_COORDINATOR))
            .await
    }

    /// The answer of a request that may have been parked: at once, or when its group
    /// answers it. `resigned` is for a request whose shard resigned while it waited.
    async fn settle<T>(
        &self,
        token: Token,
        rx: oneshot::Receiver<Answer>,
        now: Option<T>,
        take: impl FnOnce(Answer) -> Option<T>,
        resigned: T,
    ) -> T {
        self.wake.notify_one();
        match now {
            Some(r) => {
                self.unpark(token);
                r
            }
            None => rx.await.ok().and_then(take).unwrap_or(resigned),
        }
    }

    pub async fn sync(
        &self,
        host: &dyn Host,
        group_id: &str,
        req: SyncRequest<'_>,
    ) -> SyncResponse {
        let fail = |error| SyncResponse {
            error,
            ..Default::default()
        };
        let shard = match self.locate(host, group_id, false).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return fail(super::state::UNKNOWN_MEMBER_ID),
            Err(e) => return fail(e),
        };
        let (token, rx) = self.park(&shard);
        let outcome = match self.entry(&shard, group_id, false).await {
            None => SyncOutcome::Now(fail(super::state::UNKNOWN_MEMBER_ID)),
            Some(mut entry) => {
                let outcome = entry.group.sync(req, token, now_ms());
                self.process(host, &shard, &mut entry).await;
                outcome
            }
        };
        let now = match outcome {
            SyncOutcome::Now(r) => Some(r),
            SyncOutcome::Parked => None,
        };
        let take = |a| match a {
            Answer::Sync(r) => Some(r),
            Answer::Join(_) => None,
        };
        self.settle(token, rx, now, take, fail(errors::NOT_COORDINATOR))
            .await
    }

    pub async fn heartbeat(
        &self,
        host: &dyn Host,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        let shard = match self.locate(host, group_id, false).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return super::state::UNKNOWN_MEMBER_ID,
            Err(e) => return e,
        };
        let Some(mut entry) = self.entry(&shard, group_id, false).await else {
            return super::state::UNKNOWN_MEMBER_ID;
        };
        let e = entry
            .group
            .heartbeat(member_id, instance_id, generation, now_ms());
        self.process(host, &shard, &mut entry).await;
        e
    }

    /// LeaveGroup: an error per member.
    pub async fn leave(
        &self,
        host: &dyn Host,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, i16> {
        let shard = match self.locate(host, group_id, false).await? {
            Located::Shard(s) => s,
            Located::NoTopic => return Err(super::state::UNKNOWN_MEMBER_ID),
        };
        let Some(mut entry) = self.entry(&shard, group_id, false).await else {
            return Err(super::state::UNKNOWN_MEMBER_ID);
        };
        let now = now_ms();
        let errors = members
            .iter()
            .map(|(m, i)| entry.group.leave(m, i.as_deref(), now))
            .collect();
        self.process(host, &shard, &mut entry).await;
        drop(entry);
        self.wake.notify_one();
        Ok(errors)
    }

    /// Applies time to every group; returns the next deadline.
    pub async fn tick(&self, host: &dyn Host, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        for (_, shard) in self.shards.active() {
            for (_, slot) in shard.slots() {
                let mut entry = slot.lock().await;
                if entry.removed {
                    continue;
                }
                if entry.group.next_deadline().is_some_and(|d| d <= now) {
                    entry.group.tick(now);
                    self.process(host, &shard, &mut entry).await;
                }
                if let Some(d) = entry.group.next_deadline() {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        next
    }

    /// Runs group timers (session expiry, join phase ends) until `stop` fires.
    pub async fn run_timers(&self, host: &dyn Host, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let next = self.tick(host, now_ms()).await;
            let wait = next
                .map(|d| d.saturating_sub(now_ms()))
                .unwrap_or(60_000)
                .min(60_000);
            let woken =
                tokio::time::timeout(std::time::Duration::from_millis(wait), self.wake.notified());
            tokio::select! {
                _ = woken => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// This node leads partition `partition` of `__consumer_offsets` from leader epoch
    /// `epoch` on: its groups are read back and served.
    pub fn on_election(&self, host: &dyn Host, partition: i32, epoch: i32) {
        if !self.shards.begin_load(partition, epoch) {
            return;
        }
        let Some(shard) = self.load(host, TopicPartition::new(OFFSETS_TOPIC, partition)) else {
            // Serving part of the groups would answer for the rest as if they had nothing.
            self.shards.resign(partition, Some(epoch));
            return;
        };
        if !self.shards.finish_load(partition, epoch, shard) {
            tracing::info!(
                partition,
                epoch,
                "{OFFSETS_TOPIC} shard resigned while loading"
            );
        }
        // Restored members' sessions run from now: the timers look at them.
        self.wake.notify_one();
    }

    /// This node no longer leads partition `partition` (from `epoch` or earlier; any when
    /// `None`): its groups are dropped, and requests parked in them told to find the new
    /// coordinator.
    pub fn on_resignation(&self, partition: i32, epoch: Option<i32>) {
        let Some(shard) = self.shards.resign(partition, epoch) else {
            return;
        };
        // Requests that found the shard before find no group in it now (NOT_COORDINATOR),
        // and the groups go with it.
        shard.resigned.store(true, Ordering::Release);
        for (_, slot) in std::mem::take(&mut *shard.groups.lock().unwrap()) {
            if let Ok(mut e) = slot.try_lock() {
                e.removed = true;
            }
        }
        // Dropping their senders answers the parked JoinGroup and SyncGroup requests of the
        // shard with NOT_COORDINATOR, whoever holds their group's lock: their members look for
        // the new coordinator.
        self.waiters
            .lock()
            .unwrap()
            .retain(|_, (p, _)| *p != partition);
        tracing::info!(
            partition,
            "resigned as coordinator of {OFFSETS_TOPIC} partition"
        );
    }
}

/// Replaces the success codes of `results` with the error of a write that failed.
pub(super) fn with_failure(results: Vec<i16>, e: i16) -> Vec<i16> {
    results
        .into_iter()
        .map(|r| if r == errors::NONE { e } else { r })
        .collect()
}
