//! An in-memory host for the coordinators' tests: partitions are lists of batches, markers
//! are control batches appended to them, producer ids come from a counter, and failures are
//! injected here (never in the coordinators). A [`Store`] outlives the hosts made on it, so
//! a test restarts the coordinators by making a new host on the same store.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use strom_metadata::{TopicPartition, errors};
use strom_storage::batch::BatchHeader;
use strom_storage::txn_index;

use crate::group::coordinator::{CoordinatorConfig, GroupCoordinator, OFFSETS_TOPIC};
use crate::host::{
    BoxFuture, MarkerWriter, Markers, PartitionWriter, ProducerIdSource, Topics, WriteError,
};
use crate::txn::coordinator::{TXN_TOPIC, TxnConfig, TxnCoordinator};

#[derive(Default)]
pub struct Partition {
    /// (base offset, batch bytes), in order.
    pub batches: Vec<(u64, Vec<u8>)>,
    pub start: u64,
    pub end: u64,
    /// Producers with transactional records here and no marker after them yet.
    pub open: BTreeSet<i64>,
}

impl Partition {
    /// The markers written here: (producer id, commit).
    pub fn markers(&self) -> Vec<(i64, bool)> {
        self.batches
            .iter()
            .filter_map(|(_, b)| {
                let h = BatchHeader::parse(b)?;
                h.is_control().then(|| {
                    let commit = strom_storage::batch::records(b)
                        .next()
                        .and_then(|r| r.key)
                        .and_then(txn_index::marker_type);
                    (h.producer_id, commit == Some(true))
                })
            })
            .collect()
    }
}

/// Failures the tests inject.
#[derive(Default)]
pub struct Faults {
    /// Appends to `__transaction_state` fail.
    pub txn_appends: bool,
    /// No producer id can be allocated.
    pub producer_ids: bool,
    /// Markers to these partitions fail (and are not written).
    pub markers: BTreeSet<TopicPartition>,
    /// Loading (replaying) a partition waits until this is false.
    pub hold_replay: bool,
    /// Reading a partition back fails.
    pub replay_fails: bool,
}

#[derive(Default)]
pub struct StoreState {
    pub topics: HashMap<String, i32>,
    pub partitions: HashMap<TopicPartition, Partition>,
    pub next_producer_id: i64,
}

/// What survives a restart.
#[derive(Clone, Default)]
pub struct Store(pub Arc<Mutex<StoreState>>);

impl Store {
    /// A store with user topic `t` of `partitions` partitions.
    pub fn with_topic(partitions: i32) -> Store {
        let s = Store::default();
        s.0.lock().unwrap().topics.insert("t".into(), partitions);
        s
    }
}

/// One node: the coordinators and the host they reach the store through.
pub struct Node {
    pub store: Store,
    pub faults: Mutex<Faults>,
    pub groups: GroupCoordinator,
    pub txns: TxnCoordinator,
}

impl Node {
    /// Starts on `store`: every internal partition already there is elected at once.
    pub fn start(store: &Store, groups: CoordinatorConfig, txns: TxnConfig) -> Node {
        let node = Node {
            store: store.clone(),
            faults: Mutex::new(Faults::default()),
            groups: GroupCoordinator::new(groups),
            txns: TxnCoordinator::new(txns),
        };
        let internal: Vec<(String, i32)> = {
            let s = store.0.lock().unwrap();
            s.topics
                .iter()
                .filter(|(t, _)| *t == OFFSETS_TOPIC || *t == TXN_TOPIC)
                .map(|(t, n)| (t.clone(), *n))
                .collect()
        };
        for (topic, n) in internal {
            node.elect(&topic, 0..n);
        }
        node
    }

    /// A node with 3 partitions per internal topic, no initial rebalance delay.
    pub fn default_on(store: &Store) -> Node {
        let mut groups = CoordinatorConfig {
            offsets_partitions: 3,
            ..Default::default()
        };
        groups.group.initial_rebalance_delay_ms = 0;
        let txns = TxnConfig {
            partitions: 3,
            ..Default::default()
        };
        Node::start(store, groups, txns)
    }

    pub fn elect(&self, topic: &str, partitions: std::ops::Range<i32>) {
        for p in partitions {
            match topic {
                OFFSETS_TOPIC => self.groups.on_election(self, p, 0),
                TXN_TOPIC => self.txns.on_election(self, p, 0),
                _ => {}
            }
        }
    }

    pub fn partition<R>(&self, tp: &TopicPartition, f: impl FnOnce(&Partition) -> R) -> R {
        let mut s = self.store.0.lock().unwrap();
        f(s.partitions.entry(tp.clone()).or_default())
    }

    /// Records held (end - start) by `tp`.
    pub fn held(&self, tp: &TopicPartition) -> u64 {
        self.partition(tp, |p| p.end - p.start)
    }

    fn append_locked(s: &mut StoreState, tp: &TopicPartition, mut batch: Vec<u8>) -> u64 {
        let h = BatchHeader::parse(&batch).expect("a batch");
        let p = s.partitions.entry(tp.clone()).or_default();
        let base = p.end;
        batch[0..8].copy_from_slice(&(base as i64).to_be_bytes());
        p.end = base + h.last_offset_delta as u64 + 1;
        if h.is_control() {
            p.open.remove(&h.producer_id);
        } else if h.is_transactional() {
            p.open.insert(h.producer_id);
        }
        p.batches.push((base, batch));
        base
    }
}

impl PartitionWriter for Node {
    fn append<'a>(
        &'a self,
        tp: &'a TopicPartition,
        batch: Vec<u8>,
        _verification: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, WriteError>> {
        Box::pin(async move {
            if tp.topic == TXN_TOPIC && self.faults.lock().unwrap().txn_appends {
                return Err(WriteError::Failed("injected".into()));
            }
            let mut s = self.store.0.lock().unwrap();
            if s.topics.get(&tp.topic).is_none_or(|n| tp.partition >= *n) {
                return Err(WriteError::NotLeader);
            }
            Ok(Self::append_locked(&mut s, tp, batch))
        })
    }

    fn replay(
        &self,
        tp: &TopicPartition,
        f: &mut dyn FnMut(&BatchHeader, &[u8]),
    ) -> Result<(), WriteError> {
        while self.faults.lock().unwrap().hold_replay {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if self.faults.lock().unwrap().replay_fails {
            return Err(WriteError::Failed("injected".into()));
        }
        let batches: Vec<Vec<u8>> = self.partition(tp, |p| {
            p.batches
                .iter()
                .filter(|(base, _)| *base >= p.start)
                .map(|(_, b)| b.clone())
                .collect()
        });
        for b in batches {
            f(&BatchHeader::parse(&b).expect("a batch"), &b);
        }
        Ok(())
    }

    fn stored_records(&self, tp: &TopicPartition) -> u64 {
        self.held(tp)
    }

    fn end_offset(&self, tp: &TopicPartition) -> u64 {
        self.partition(tp, |p| p.end)
    }

    fn has_open_transaction(&self, tp: &TopicPartition) -> bool {
        self.partition(tp, |p| !p.open.is_empty())
    }

    fn delete_before<'a>(
        &'a self,
        tp: &'a TopicPartition,
        offset: u64,
    ) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(async move {
            let mut s = self.store.0.lock().unwrap();
            let p = s.partitions.entry(tp.clone()).or_default();
            p.start = p.start.max(offset.min(p.end));
            let start = p.start;
            p.batches.retain(|(base, _)| *base >= start);
            Ok(())
        })
    }
}

impl MarkerWriter for Node {
    fn write_markers<'a>(&'a self, m: &'a Markers) -> BoxFuture<'a, Vec<(TopicPartition, i16)>> {
        Box::pin(async move {
            let faulty = self.faults.lock().unwrap().markers.clone();
            let mut failed = Vec::new();
            for tp in &m.partitions {
                if faulty.contains(tp) {
                    failed.push((tp.clone(), errors::KAFKA_STORAGE_ERROR));
                    continue;
                }
                let marker = txn_index::marker_batch(
                    m.producer_id,
                    m.producer_epoch,
                    m.commit,
                    m.coordinator_epoch,
                    1,
                );
                Self::append_locked(&mut self.store.0.lock().unwrap(), tp, marker);
                if tp.topic == OFFSETS_TOPIC {
                    self.groups
                        .complete_txn(tp.partition, m.producer_id, m.commit)
                        .await;
                }
            }
            failed
        })
    }
}

impl ProducerIdSource for Node {
    fn next_producer_id(&self) -> Result<i64, WriteError> {
        if self.faults.lock().unwrap().producer_ids {
            return Err(WriteError::Failed("injected".into()));
        }
        let mut s = self.store.0.lock().unwrap();
        s.next_producer_id += 1;
        Ok(s.next_producer_id - 1)
    }
}

impl Topics for Node {
    fn partition_exists(&self, topic: &str, partition: i32) -> bool {
        let s = self.store.0.lock().unwrap();
        s.topics
            .get(topic)
            .is_some_and(|n| (0..*n).contains(&partition))
    }

    fn partition_count(&self, topic: &str) -> Option<i32> {
        self.store.0.lock().unwrap().topics.get(topic).copied()
    }

    fn ensure_internal_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, Result<i32, i16>> {
        Box::pin(async move {
            let created = {
                let mut s = self.store.0.lock().unwrap();
                match s.topics.get(name) {
                    Some(n) => return Ok(*n),
                    None => {
                        s.topics.insert(name.to_string(), partitions);
                        partitions
                    }
                }
            };
            self.elect(name, 0..created);
            Ok(created)
        })
    }
}
