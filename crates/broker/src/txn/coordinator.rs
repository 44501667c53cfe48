//! The transaction coordinator: runs the per-transactional-id state machine of
//! [`super::state`], keeps its state in `__transaction_state` (loaded back at start, where a
//! transaction caught between prepare and complete is finished) and has the markers written
//! through a [`MarkerWriter`].
//!
//! Markers are written before EndTxn is answered: on one node they are local appends, so a
//! producer's commit is visible to read_committed consumers when its EndTxn returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use strom_storage::batch::{self, BatchBuilder};

use super::records;
use super::state::{
    Action, CONCURRENT_TRANSACTIONS, INVALID_PRODUCER_ID_MAPPING, INVALID_TRANSACTION_TIMEOUT,
    TxnMetadata, TxnState,
};
use crate::broker::Broker;
use crate::errors;
use crate::group::records::java_hash;
use crate::partition::Partition;

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

/// The markers that end one producer's transaction.
pub struct Markers<'a> {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub partitions: &'a BTreeSet<(String, i32)>,
}

/// Where markers go. On one node: the local partitions. With a cluster, the same call
/// becomes WriteTxnMarkers requests to the partitions' leaders.
pub trait MarkerWriter {
    /// Writes the markers; returns the partitions that failed (to be retried).
    fn write_markers(&self, m: &Markers) -> Vec<((String, i32), i16)>;
}

pub fn now_ms() -> i64 {
    crate::group::coordinator::now_ms() as i64
}

/// The `__transaction_state` partition of a transactional id, as Kafka computes it.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    (java_hash(transactional_id) & 0x7fff_ffff) % partitions
}

/// One transactional id's metadata behind a lock of its own, so that one id's writes (its
/// markers above all) never hold up another id's requests. `None` while a new id is not
/// persisted yet, and once an id has expired.
type Slot = Arc<Mutex<Option<TxnMetadata>>>;

/// The writer's view of `__transaction_state`: records appended per partition since it was
/// last trimmed, and per id the value written last (what a trim re-appends). Its lock
/// serializes the writes, so that a trim never reorders a record with a newer one.
#[derive(Default)]
struct StateLog {
    written: HashMap<i32, u64>,
    live: HashMap<String, Vec<u8>>,
}

pub struct TxnCoordinator {
    pub config: TxnConfig,
    txns: Mutex<HashMap<String, Slot>>,
    log: Mutex<StateLog>,
    #[cfg(test)]
    pub(crate) faults: Mutex<Faults>,
}

/// Failures tests inject into the coordinator's writes.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// Appends to `__transaction_state` fail.
    pub appends: bool,
    /// No producer id can be allocated.
    pub producer_ids: bool,
    /// Markers to these partitions fail (and are not written).
    pub markers: BTreeSet<(String, i32)>,
}

/// A failed action: the error for the client, and whether some state was persisted before
/// the failure (then the in-memory state stays as far as it got).
struct Failed(i16, bool);

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            txns: Mutex::new(HashMap::new()),
            log: Mutex::new(StateLog::default()),
            #[cfg(test)]
            faults: Mutex::new(Faults::default()),
        }
    }

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

    /// Drops `id`'s slot if it holds nothing and nobody but the caller has it: a request
    /// that took the slot (always under the map's lock) and waits for it must find it still
    /// in the map once it has created the id there. Never waits for the slot's lock (its
    /// holders may be waiting for the map's): a busy slot stays, for a later tick.
    fn forget_if_empty(&self, id: &str, slot: &Slot) {
        let mut txns = self.txns.lock().unwrap();
        if txns.get(id).is_some_and(|s| Arc::ptr_eq(s, slot))
            && Arc::strong_count(slot) == 2
            && slot.try_lock().is_ok_and(|m| m.is_none())
        {
            txns.remove(id);
        }
    }

    /// Every slot, taken without holding the map while each is locked.
    fn slots(&self) -> Vec<(String, Slot)> {
        let txns = self.txns.lock().unwrap();
        txns.iter().map(|(id, s)| (id.clone(), s.clone())).collect()
    }

    /// Runs `f` on `id`'s metadata, if the id is known.
    pub(crate) fn with_metadata<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut TxnMetadata) -> R,
    ) -> Option<R> {
        let slot = self.slot(id)?;
        let mut m = slot.lock().unwrap();
        m.as_mut().map(f)
    }

    /// Creates `__transaction_state` on first use, as Kafka does.
    pub fn ensure_topic(&self, broker: &Broker) -> Result<i32, i16> {
        broker.ensure_internal_topic(TXN_TOPIC, self.config.partitions)
    }

    /// The `__transaction_state` partition of `id`, by the topic's actual partition count.
    fn state_partition(broker: &Broker, id: &str) -> Option<Arc<Partition>> {
        let topic = broker.topic(TXN_TOPIC)?;
        let partitions = i32::try_from(topic.partition_count())
            .ok()
            .filter(|n| *n > 0)?;
        topic.partition(partition_for(id, partitions))
    }

    fn append(&self, broker: &Broker, id: &str, value: Option<Vec<u8>>) -> Result<(), i16> {
        self.ensure_topic(broker)?;
        #[cfg(test)]
        if self.faults.lock().unwrap().appends {
            return Err(errors::COORDINATOR_NOT_AVAILABLE);
        }
        let p = Self::state_partition(broker, id).ok_or(errors::COORDINATOR_NOT_AVAILABLE)?;
        let mut log = self.log.lock().unwrap();
        let mut bytes = BatchBuilder::new()
            .record(batch::Record {
                timestamp: now_ms(),
                key: Some(records::key(id)),
                value: value.clone(),
                headers: vec![],
            })
            .build();
        p.append(&mut bytes, 1).map_err(|e| {
            tracing::error!(transactional_id = id, error = %e, "cannot write to {TXN_TOPIC}");
            errors::COORDINATOR_NOT_AVAILABLE
        })?;
        *log.written.entry(p.index).or_default() += 1;
        match value {
            Some(v) => log.live.insert(id.to_string(), v),
            None => log.live.remove(id),
        };
        Ok(())
    }

    /// The coordinator epoch markers carry: the leader epoch of the id's state partition.
    fn coordinator_epoch(&self, broker: &Broker, id: &str) -> i32 {
        Self::state_partition(broker, id)
            .map(|p| p.leader_epoch())
            .unwrap_or(0)
    }

    fn new_producer_id(&self, broker: &Broker) -> Result<i64, i16> {
        #[cfg(test)]
        if self.faults.lock().unwrap().producer_ids {
            return Err(errors::COORDINATOR_NOT_AVAILABLE);
        }
        broker.allocate_producer_id().map_err(|e| {
            tracing::error!(error = %e, "could not allocate a producer id");
            errors::COORDINATOR_NOT_AVAILABLE
        })
    }

    /// Writes markers; returns the partitions that failed.
    fn write_markers(&self, broker: &Broker, m: &Markers) -> Vec<((String, i32), i16)> {
        #[cfg(test)]
        {
            let faulty = self.faults.lock().unwrap().markers.clone();
            if !faulty.is_empty() {
                let (bad, good): (BTreeSet<_>, BTreeSet<_>) = m
                    .partitions
                    .iter()
                    .cloned()
                    .partition(|p| faulty.contains(p));
                let mut failed = broker.write_markers(&Markers {
                    partitions: &good,
                    ..*m
                });
                failed.extend(bad.into_iter().map(|p| (p, errors::KAFKA_STORAGE_ERROR)));
                return failed;
            }
        }
        broker.write_markers(m)
    }

    /// Carries out a decision's actions in order. Markers that cannot all be written leave
    /// the transaction in its Prepare state, for [`TxnCoordinator::tick`] to retry.
    fn run(
        &self,
        broker: &Broker,
        m: &mut TxnMetadata,
        actions: Vec<Action>,
    ) -> Result<(), Failed> {
        let mut persisted = false;
        for a in actions {
            match a {
                Action::Persist(snapshot) => {
                    self.append(
                        broker,
                        &snapshot.transactional_id,
                        Some(records::value(&snapshot)),
                    )
                    .map_err(|e| Failed(e, persisted))?;
                    persisted = true;
                }
                Action::WriteMarkers {
                    producer_id,
                    producer_epoch,
                    commit,
                    partitions,
                } => {
                    let failed = self.write_markers(
                        broker,
                        &Markers {
                            producer_id,
                            producer_epoch,
                            commit,
                            coordinator_epoch: self.coordinator_epoch(broker, &m.transactional_id),
                            partitions: &partitions,
                        },
                    );
                    if failed.is_empty() {
                        let more = m.complete(now_ms());
                        self.run(broker, m, more)
                            .map_err(|Failed(e, _)| Failed(e, true))?;
                    } else {
                        // As in Kafka, a partition with its marker leaves the transaction:
                        // retries go only to those that failed.
                        m.partitions.retain(|p| failed.iter().any(|(f, _)| f == p));
                        tracing::warn!(transactional_id = %m.transactional_id, ?failed, "markers not written yet; will retry");
                    }
                }
            }
        }
        Ok(())
    }

    /// Decides with the state machine, carries out the actions, and rolls the in-memory
    /// state back if nothing could be persisted.
    fn decide<T>(
        &self,
        broker: &Broker,
        m: &mut TxnMetadata,
        f: impl FnOnce(&mut TxnMetadata) -> (Result<T, i16>, Vec<Action>),
    ) -> Result<T, i16> {
        let before = m.clone();
        let (result, actions) = f(m);
        match self.run(broker, m, actions) {
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
    pub fn init_producer(
        &self,
        broker: &Broker,
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
        self.ensure_topic(broker)?;
        let slot = self.slot_or_new(id);
        let result = {
            let mut current = slot.lock().unwrap();
            match current.as_mut() {
                Some(m) => self.init_existing(broker, m, timeout_ms, expected),
                // A new entry is only kept (and seen by List/DescribeTransactions) once
                // persisted.
                None => self.new_producer_id(broker).and_then(|pid| {
                    let mut m = TxnMetadata::new(id, pid, timeout_ms, now_ms());
                    let result = self.init_existing(broker, &mut m, timeout_ms, expected);
                    if result.is_ok() {
                        *current = Some(m);
                    }
                    result
                }),
            }
        };
        if result.is_err() {
            self.forget_if_empty(id, &slot);
        }
        result
    }

    fn init_existing(
        &self,
        broker: &Broker,
        m: &mut TxnMetadata,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        let max = self.config.max_timeout_ms;
        let attempt = |m: &mut TxnMetadata| {
            self.decide(broker, m, |m| {
                m.init_producer(
                    timeout_ms,
                    max,
                    expected,
                    || self.new_producer_id(broker),
                    now_ms(),
                )
            })
        };
        let first = attempt(m);
        // A previous incarnation's transaction was aborted on the spot (local markers): go on
        // instead of sending the client away to retry.
        if first == Err(CONCURRENT_TRANSACTIONS) && m.state == TxnState::CompleteAbort {
            return attempt(m);
        }
        first
    }

    /// AddPartitionsToTxn, and AddOffsetsToTxn with the group's offsets partition.
    pub fn add_partitions(
        &self,
        broker: &Broker,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> i16 {
        if id.is_empty() {
            return errors::INVALID_REQUEST;
        }
        let Some(slot) = self.slot(id) else {
            return INVALID_PRODUCER_ID_MAPPING;
        };
        let mut current = slot.lock().unwrap();
        let Some(m) = current.as_mut() else {
            return INVALID_PRODUCER_ID_MAPPING;
        };
        match self.decide(broker, m, |m| {
            m.add_partitions(producer_id, epoch, partitions, now_ms())
        }) {
            Ok(()) => errors::NONE,
            Err(e) => e,
        }
    }

    /// EndTxn: commit or abort, markers included.
    pub fn end(
        &self,
        broker: &Broker,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> i16 {
        if id.is_empty() {
            return errors::INVALID_REQUEST;
        }
        let Some(slot) = self.slot(id) else {
            return INVALID_PRODUCER_ID_MAPPING;
        };
        let mut current = slot.lock().unwrap();
        let Some(m) = current.as_mut() else {
            return INVALID_PRODUCER_ID_MAPPING;
        };
        match self.decide(broker, m, |m| m.end(producer_id, epoch, commit, now_ms())) {
            Ok(()) => errors::NONE,
            Err(e) => e,
        }
    }

    pub fn describe(&self, id: &str) -> Option<TxnMetadata> {
        self.with_metadata(id, |m| m.clone())
    }

    pub fn list(&self) -> Vec<TxnMetadata> {
        let mut all: Vec<TxnMetadata> = self
            .slots()
            .into_iter()
            .filter_map(|(_, slot)| slot.lock().unwrap().clone())
            .collect();
        all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        all
    }

    /// Aborts transactions open longer than their timeout, retries markers that could not be
    /// written, forgets ids idle past transactional.id.expiration.ms, and trims the topic.
    pub fn tick(&self, broker: &Broker, now: i64) {
        for (id, slot) in self.slots() {
            let mut current = slot.lock().unwrap();
            let Some(m) = current.as_mut() else {
                drop(current);
                self.forget_if_empty(&id, &slot);
                continue;
            };
            if matches!(
                m.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            ) {
                if now - m.last_update_ms > self.config.id_expiration_ms
                    && self.append(broker, &id, None).is_ok()
                {
                    tracing::info!(transactional_id = %id, "transactional id expired");
                    *current = None;
                    drop(current);
                    self.forget_if_empty(&id, &slot);
                }
                continue;
            }
            // A fence (the epoch bump of a timed-out transaction) that cannot be persisted
            // is rolled back, so that the next round bumps the epoch once, not twice.
            let result = self.decide(broker, m, |m| {
                let actions = match m.state {
                    TxnState::Ongoing => m.expire(now),
                    _ => m.recover(),
                };
                if !actions.is_empty() {
                    tracing::info!(transactional_id = %m.transactional_id, state = m.state.name(), "timing out or finishing a transaction");
                }
                (Ok(()), actions)
            });
            if let Err(code) = result {
                tracing::warn!(transactional_id = %id, code, "could not time out or finish a transaction; will retry");
            }
        }
        self.trim(broker);
    }

    /// Reads `__transaction_state` back (at start) and finishes what was being finished.
    pub fn load(&self, broker: &Broker) {
        let Some(topic) = broker.topic(TXN_TOPIC) else {
            return;
        };
        let mut latest: HashMap<String, TxnMetadata> = HashMap::new();
        let mut live: HashMap<String, Vec<u8>> = HashMap::new();
        let mut written = HashMap::new();
        for p in topic.partitions.read().unwrap().iter() {
            let mut count = 0u64;
            p.for_each_batch(|_, b| {
                for rec in batch::records(b) {
                    count += 1;
                    let Some(id) = rec.key.and_then(records::decode_key) else {
                        continue;
                    };
                    // Only a null value is a tombstone: a value that cannot be read keeps
                    // what came before.
                    let Some(value) = rec.value else {
                        latest.remove(&id);
                        live.remove(&id);
                        continue;
                    };
                    match records::decode_value(&id, value) {
                        Some(m) => {
                            live.insert(id.clone(), value.to_vec());
                            latest.insert(id, m);
                        }
                        None => tracing::error!(
                            transactional_id = %id,
                            partition = p.index,
                            "cannot read a {TXN_TOPIC} value; keeping the previous state"
                        ),
                    }
                }
            });
            written.insert(p.index, count);
        }
        *self.log.lock().unwrap() = StateLog { written, live };
        tracing::info!(transactional_ids = latest.len(), "loaded {TXN_TOPIC}");
        *self.txns.lock().unwrap() = latest
            .into_iter()
            .map(|(id, m)| (id, Arc::new(Mutex::new(Some(m)))))
            .collect();
        for (_, slot) in self.slots() {
            let mut current = slot.lock().unwrap();
            let Some(m) = current.as_mut() else {
                continue;
            };
            let actions = m.recover();
            if !actions.is_empty() {
                tracing::info!(transactional_id = %m.transactional_id, state = m.state.name(), "completing a transaction prepared before the restart");
                let _ = self.run(broker, m, actions);
            }
        }
    }

    /// Re-appends the values last written for partitions that hold far more records than
    /// ids, then deletes what came before, as the group coordinator does until compaction
    /// exists. No write to the topic comes in between.
    fn trim(&self, broker: &Broker) {
        let Some(topic) = broker.topic(TXN_TOPIC) else {
            return;
        };
        let partitions = topic.partition_count() as i32;
        let mut log = self.log.lock().unwrap();
        let StateLog { written, live } = &mut *log;
        for (&index, count) in written.iter_mut() {
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = live
                .iter()
                .filter(|(id, _)| partition_for(id, partitions) == index)
                .map(|(id, value)| (records::key(id), Some(value.clone())))
                .collect();
            if *count <= 2 * records.len() as u64 + 1000 {
                continue;
            }
            let Some(p) = topic.partition(index) else {
                continue;
            };
            if p.rewrite_live(&records, now_ms()) {
                *count = records.len() as u64;
            }
        }
    }
}

/// Runs the transaction timers until `stop` fires.
pub async fn run_timers(
    broker: std::sync::Arc<Broker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_millis(broker.txns.config.abort_interval_ms);
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = stop.changed() => return,
        }
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || b.txns.tick(&b, now_ms())).await;
    }
}

#[cfg(test)]
#[path = "coordinator_failure_tests.rs"]
mod failure_tests;
