//! The transaction coordinator: runs the per-transactional-id state machine of
//! [`super::state`], keeps its state in `__transaction_state` and has the markers written
//! through a [`MarkerWriter`](crate::host::MarkerWriter).
//!
//! Each `__transaction_state` partition this node leads is a shard, loaded on election and
//! dropped on resignation; a transaction a shard finds between prepare and complete is
//! finished by the timers' next pass, which an election starts at once. Each transactional
//! id has an async lock of its own, held across its writes and markers, so one id's markers
//! never hold up another id's requests and no thread waits.
//!
//! Markers are written before EndTxn is answered: on one node they are local appends, so a
//! producer's commit is visible to read_committed consumers when its EndTxn returns.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use strom_metadata::{TopicPartition, errors};
use tokio::sync::Notify;

use super::records;
use super::state::{
    Action, CONCURRENT_TRANSACTIONS, INVALID_PRODUCER_ID_MAPPING, INVALID_TRANSACTION_TIMEOUT,
    TxnMetadata, TxnState,
};
use crate::host::{Host, Markers};
use crate::internal_topic::{build_batch, java_hash, write_error};
use crate::shards::Shards;

pub const TXN_TOPIC: &str = "__transaction_state";

#[derive(Debug, Clone, Copy)]
pub struct TxnConfig {
    /// transaction.state.log.num.partitions
    pub partitions: i32,
    /// transaction.max.timeout.ms
    pub max_timeout_ms: i32,
    /// transaction.abort.timed.out.transaction.cleanup.interval.ms
    pub abort_interval_ms: u64,
    /// transactional.id.expiration.ms
    pub id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            partitions: 50,
            max_timeout_ms: 900_000,
            abort_interval_ms: 10_000,
            id_expiration_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

pub use strom_storage::clock::now_ms;

/// The `__transaction_state` partition of a transactional id, as Kafka computes it.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    (java_hash(transactional_id) & 0x7fff_ffff) % partitions
}

/// One transactional id's metadata behind an async lock of its own. `None` while a new id is
/// not persisted yet, and once an id has expired.
type Slot = Arc<tokio::sync::Mutex<Option<TxnMetadata>>>;

/// The transactional ids of one `__transaction_state` partition.
pub(crate) struct TxnShard {
    tp: TopicPartition,
    /// The leader epoch this node was elected with: the coordinator epoch of its markers.
    epoch: i32,
    txns: Mutex<HashMap<String, Slot>>,
}

impl TxnShard {
    fn slot(&self, id: &str) -> Option<Slot> {
        self.txns.lock().unwrap().get(id).cloned()
    }

    fn slot_or_new(&self, id: &str) -> Slot {
        self.txns
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Every slot, taken without holding the map while each is locked.
    fn slots(&self) -> Vec<(String, Slot)> {
        let txns = self.txns.lock().unwrap();
        txns.iter().map(|(id, s)| (id.clone(), s.clone())).collect()
    }

    /// Drops `id`'s slot if it holds nothing and nobody but the caller has it: a request
    /// that took the slot (always under the map's lock) and waits for it must find it still
    /// in the map once it has created the id there. Never waits for the slot's lock: a busy
    /// slot stays, for a later tick.
    fn forget_if_empty(&self, id: &str, slot: &Slot) {
        let mut txns = self.txns.lock().unwrap();
        if txns.get(id).is_some_and(|s| Arc::ptr_eq(s, slot))
            && Arc::strong_count(slot) == 2
            && slot.try_lock().is_ok_and(|m| m.is_none())
        {
            txns.remove(id);
        }
    }
}

pub struct TxnCoordinator {
    pub config: TxnConfig,
    shards: Shards<TxnShard>,
    /// Wakes the timers at once: an elected shard may hold prepared transactions to finish.
    pub wake: Notify,
}

/// A failed action: the error for the client, and whether some state was persisted before
/// the failure (then the in-memory state stays as far as it got).
struct Failed(i16, bool);

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            shards: Shards::default(),
            wake: Notify::new(),
        }
    }

    /// Creates `__transaction_state` on first use, as Kafka does.
    pub async fn ensure_topic(&self, host: &dyn Host) -> Result<i32, i16> {
        host.ensure_internal_topic(TXN_TOPIC, self.config.partitions)
            .await
    }

    /// The shard of `id`; `Ok(None)` when the topic does not exist (and `create` is false).
    async fn locate(
        &self,
        host: &dyn Host,
        id: &str,
        create: bool,
    ) -> Result<Option<Arc<TxnShard>>, i16> {
        if !host.leadership_current() {
            return Err(errors::NOT_COORDINATOR);
        }
        let partitions = match host.partition_count(TXN_TOPIC) {
            Some(n) if n > 0 => n,
            _ if create => self.ensure_topic(host).await?,
            _ => return Ok(None),
        };
        self.shards.get(partition_for(id, partitions)).map(Some)
    }

    /// The id's slot, or the error for a request about an unknown id.
    async fn existing(&self, host: &dyn Host, id: &str) -> Result<(Arc<TxnShard>, Slot), i16> {
        if id.is_empty() {
            return Err(errors::INVALID_REQUEST);
        }
        let shard = self
            .locate(host, id, false)
            .await?
            .ok_or(INVALID_PRODUCER_ID_MAPPING)?;
        let slot = shard.slot(id).ok_or(INVALID_PRODUCER_ID_MAPPING)?;
        Ok((shard, slot))
    }

    /// Runs `f` on `id`'s metadata, if the id is known here.
    pub async fn with_metadata<R>(
        &self,
        host: &dyn Host,
        id: &str,
        f: impl FnOnce(&mut TxnMetadata) -> R,
    ) -> Result<Option<R>, i16> {
        let Some(shard) = self.locate(host, id, false).await? else {
            return Ok(None);
        };
        let Some(slot) = shard.slot(id) else {
            return Ok(None);
        };
        let mut m = slot.lock().await;
        Ok(m.as_mut().map(f))
    }

    /// Writes `id`'s state, or its tombstone (`None`) when it expires. The caller holds the
    /// id's lock: one id's records keep their order, and compaction keeps the latest.
    async fn append(
        &self,
        host: &dyn Host,
        shard: &TxnShard,
        id: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), i16> {
        let bytes = build_batch(&[(records::key(id), value)], now_ms()).build();
        host.append(&shard.tp, bytes, None)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(transactional_id = id, error = %e, "cannot write to {TXN_TOPIC}");
                write_error(&e)
            })
    }

    fn new_producer_id(host: &dyn Host) -> Result<i64, i16> {
        host.next_producer_id().map_err(|e| {
            tracing::error!(error = %e, "could not allocate a producer id");
            errors::COORDINATOR_NOT_AVAILABLE
        })
    }

    /// Carries out a decision's actions in order. Markers that cannot all be written leave
    /// the transaction in its Prepare state, for [`TxnCoordinator::tick`] to retry.
    async fn run(
        &self,
        host: &dyn Host,
        shard: &TxnShard,
        m: &mut TxnMetadata,
        actions: Vec<Action>,
    ) -> Result<(), Failed> {
        let mut persisted = false;
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Persist(snapshot) => {
                    self.append(
                        host,
                        shard,
                        &snapshot.transactional_id,
                        Some(records::value(&snapshot)),
                    )
                    .await
                    .map_err(|e| Failed(e, persisted))?;
                    persisted = true;
                }
                Action::WriteMarkers {
                    producer_id,
                    producer_epoch,
                    commit,
                    partitions,
                } => {
                    let markers = Markers {
                        producer_id,
                        producer_epoch,
                        commit,
                        coordinator_epoch: shard.epoch,
                        partitions: partitions
                            .iter()
                            .map(|(t, p)| TopicPartition::new(t.clone(), *p))
                            .collect(),
                    };
                    let failed = host.write_markers(&markers).await;
                    if failed.is_empty() {
                        // The completion's own actions come next, before anything queued.
                        for a in m.complete(now_ms()).into_iter().rev() {
                            queue.push_front(a);
                        }
                        // Whatever fails from here, the markers were written.
                        persisted = true;
                    } else {
                        // As in Kafka, a partition with its marker leaves the transaction:
                        // retries go only to those that failed.
                        m.partitions.retain(|(t, p)| {
                            failed
                                .iter()
                                .any(|(f, _)| f.topic == *t && f.partition == *p)
                        });
                        tracing::warn!(transactional_id = %m.transactional_id, ?failed, "markers not written yet; will retry");
                    }
                }
            }
        }
        Ok(())
    }

    /// Decides with the state machine, carries out the actions, and rolls the in-memory
    /// state back if nothing could be persisted.
    async fn decide<T>(
        &self,
        host: &dyn Host,
        shard: &TxnShard,
        m: &mut TxnMetadata,
        f: impl FnOnce(&mut TxnMetadata) -> (Result<T, i16>, Vec<Action>),
    ) -> Result<T, i16> {
        let before = m.clone();
        let (result, actions) = f(m);
        match self.run(host, shard, m, actions).await {
            Ok(()) => result,
            Err(Failed(e, persisted)) => {
                if !persisted {
                    *m = before;
                }
                Err(e)
            }
        }
    }

    /// InitProducerId with a transactional id. `expected` is the producer id and epoch a
    /// v3+ client gives to have its own epoch bumped; another incarnation's is fenced. The
    /// request is checked before anything is created: a new entry is kept only once
    /// persisted.
    pub async fn init_producer(
        &self,
        host: &dyn Host,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        if id.is_empty() {
            return Err(errors::INVALID_REQUEST);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(INVALID_TRANSACTION_TIMEOUT);
        }
        let shard = self
            .locate(host, id, true)
            .await?
            .ok_or(errors::COORDINATOR_NOT_AVAILABLE)?;
        let slot = shard.slot_or_new(id);
        let result = {
            let mut current = slot.lock().await;
            match current.as_mut() {
                Some(m) => {
                    self.init_existing(host, &shard, m, timeout_ms, expected)
                        .await
                }
                // A new entry is only kept (and seen by List/DescribeTransactions) once
                // persisted.
                None => match Self::new_producer_id(host) {
                    Err(e) => Err(e),
                    Ok(pid) => {
                        let mut m = TxnMetadata::new(id, pid, timeout_ms, now_ms());
                        let result = self
                            .init_existing(host, &shard, &mut m, timeout_ms, expected)
                            .await;
                        if result.is_ok() {
                            *current = Some(m);
                        }
                        result
                    }
                },
            }
        };
        if result.is_err() {
            shard.forget_if_empty(id, &slot);
        }
        result
    }

    async fn init_existing(
        &self,
        host: &dyn Host,
        shard: &TxnShard,
        m: &mut TxnMetadata,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        let max = self.config.max_timeout_ms;
        let mut first = None;
        loop {
            let result = self
                .decide(host, shard, m, |m| {
                    m.init_producer(
                        timeout_ms,
                        max,
                        expected,
                        || Self::new_producer_id(host),
                        now_ms(),
                    )
                })
                .await;
            // A previous incarnation's transaction was aborted on the spot (local markers):
            // go on instead of sending the client away to retry.
            if first.is_none()
                && result == Err(CONCURRENT_TRANSACTIONS)
                && m.state == TxnState::CompleteAbort
            {
                first = Some(result);
                continue;
            }
            return result;
        }
    }

    /// Runs a decision on an existing id's metadata: the error code for the client.
    async fn decide_existing(
        &self,
        host: &dyn Host,
        id: &str,
        f: impl FnOnce(&mut TxnMetadata) -> (Result<(), i16>, Vec<Action>),
    ) -> i16 {
        let (shard, slot) = match self.existing(host, id).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let mut current = slot.lock().await;
        let Some(m) = current.as_mut() else {
            return INVALID_PRODUCER_ID_MAPPING;
        };
        match self.decide(host, &shard, m, f).await {
            Ok(()) => errors::NONE,
            Err(e) => e,
        }
    }

    /// AddPartitionsToTxn, and AddOffsetsToTxn with the group's offsets partition.
    pub async fn add_partitions(
        &self,
        host: &dyn Host,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> i16 {
        self.decide_existing(host, id, |m| {
            m.add_partitions(producer_id, epoch, partitions, now_ms())
        })
        .await
    }

    /// EndTxn: commit or abort, markers included.
    pub async fn end(
        &self,
        host: &dyn Host,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> i16 {
        self.decide_existing(host, id, |m| m.end(producer_id, epoch, commit, now_ms()))
            .await
    }

    /// DescribeTransactions: `Ok(None)` for an id this coordinator does not know.
    pub async fn describe(&self, host: &dyn Host, id: &str) -> Result<Option<TxnMetadata>, i16> {
        self.with_metadata(host, id, |m| m.clone()).await
    }

    /// ListTransactions: every id of every shard this node leads.
    pub async fn list(&self) -> Vec<TxnMetadata> {
        let mut all = Vec::new();
        for (_, shard) in self.shards.active() {
            for (_, slot) in shard.slots() {
                if let Some(m) = slot.lock().await.clone() {
                    all.push(m);
                }
            }
        }
        all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        all
    }

    /// Aborts transactions open longer than their timeout, finishes or retries markers of
    /// prepared ones, and forgets ids idle past transactional.id.expiration.ms with a
    /// tombstone, which the log cleaner removes after `delete.retention.ms`.
    pub async fn tick(&self, host: &dyn Host, now: i64) {
        for (_, shard) in self.shards.active() {
            for (id, slot) in shard.slots() {
                let mut current = slot.lock().await;
                let Some(m) = current.as_mut() else {
                    drop(current);
                    shard.forget_if_empty(&id, &slot);
                    continue;
                };
                if matches!(
                    m.state,
                    TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                ) {
                    if now - m.last_update_ms > self.config.id_expiration_ms
                        && self.append(host, &shard, &id, None).await.is_ok()
                    {
                        tracing::info!(transactional_id = %id, "transactional id expired");
                        *current = None;
                        drop(current);
                        shard.forget_if_empty(&id, &slot);
                    }
                    continue;
                }
                // A fence (the epoch bump of a timed-out transaction) that cannot be persisted
                // is rolled back, so that the next round bumps the epoch once, not twice.
                let result = self
                    .decide(host, &shard, m, |m| {
                        let actions = match m.state {
                            TxnState::Ongoing => m.expire(now),
                            _ => m.recover(),
                        };
                        if !actions.is_empty() {
                            tracing::info!(transactional_id = %m.transactional_id, state = m.state.name(), "timing out or finishing a transaction");
                        }
                        (Ok(()), actions)
                    })
                    .await;
                if let Err(code) = result {
                    tracing::warn!(transactional_id = %id, code, "could not time out or finish a transaction; will retry");
                }
            }
        }
    }

    /// Runs the transaction timers until `stop` fires: at once when woken (an election),
    /// then every `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub async fn run_timers(&self, host: &dyn Host, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = std::time::Duration::from_millis(self.config.abort_interval_ms.max(1));
        loop {
            self.tick(host, now_ms()).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// This node leads partition `partition` of `__transaction_state` from leader epoch
    /// `epoch` on: its transactional ids are read back and served; transactions caught
    /// between prepare and complete are finished by the timers, woken now.
    pub fn on_election(&self, host: &dyn Host, partition: i32, epoch: i32) {
        if !self.shards.begin_load(partition, epoch) {
            return;
        }
        let tp = TopicPartition::new(TXN_TOPIC, partition);
        let mut latest: HashMap<String, TxnMetadata> = HashMap::new();
        // Compaction leaves offset gaps and batches without records: only the records count.
        let replayed = host.replay(&tp, &mut |_, b| {
            for rec in strom_storage::batch::records(b) {
                let Some(id) = rec.key.and_then(records::decode_key) else {
                    continue;
                };
                // Only a null value is a tombstone: a value that cannot be read keeps what
                // came before.
                let Some(value) = rec.value else {
                    latest.remove(&id);
                    continue;
                };
                match records::decode_value(&id, value) {
                    Some(m) => {
                        latest.insert(id, m);
                    }
                    None => tracing::error!(
                        transactional_id = %id,
                        partition,
                        "cannot read a {TXN_TOPIC} value; keeping the previous state"
                    ),
                }
            }
        });
        if let Err(e) = replayed {
            tracing::error!(partition, error = %e, "cannot read {TXN_TOPIC}; its ids are not served");
            self.shards.resign(partition, Some(epoch));
            return;
        }
        let prepared = latest
            .values()
            .filter(|m| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
            .count();
        tracing::info!(
            partition,
            transactional_ids = latest.len(),
            prepared,
            "loaded {TXN_TOPIC}"
        );
        let shard = TxnShard {
            tp,
            epoch,
            txns: Mutex::new(
                latest
                    .into_iter()
                    .map(|(id, m)| (id, Arc::new(tokio::sync::Mutex::new(Some(m)))))
                    .collect(),
            ),
        };
        if self.shards.finish_load(partition, epoch, shard) {
            self.wake.notify_one();
        }
    }

    /// This node no longer leads partition `partition` (from `epoch` or earlier; any when
    /// `None`): its ids are dropped. A request that holds an id's lock finishes against the
    /// dropped shard; its writes fail with NOT_COORDINATOR.
    pub fn on_resignation(&self, partition: i32, epoch: Option<i32>) {
        if self.shards.resign(partition, epoch).is_some() {
            tracing::info!(
                partition,
                "resigned as coordinator of {TXN_TOPIC} partition"
            );
        }
    }
}
