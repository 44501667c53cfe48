//! An in-memory host for the coordinators' tests: partitions are lists of batches, markers
//! are control batches appended to them, producer ids come from a counter, and failures are
//! injected here (never in the coordinators). A [`Store`] outlives the hosts made on it, so
//! a test restarts the coordinators by making a new host on the same store. A partition can
//! be compacted as the log cleaner would (see [`Partition::compact`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strom_metadata::{TopicPartition, errors};
use strom_storage::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD, write_varint};
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
    pub end: u64,
}

/// A data record of a partition, at its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
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

    /// Every data record (keyed, outside control batches), in order.
    pub fn records(&self) -> Vec<StoredRecord> {
        let mut out = Vec::new();
        for (base, b) in &self.batches {
            let h = BatchHeader::parse(b).expect("a batch");
            if h.is_control() {
                continue;
            }
            for r in batch::records(b) {
                out.push(StoredRecord {
                    offset: base + r.offset_delta as u64,
                    key: r.key.expect("a keyed record").to_vec(),
                    value: r.value.map(<[u8]>::to_vec),
                });
            }
        }
        out
    }

    /// Compacts the partition as the log cleaner does, past every delete horizon: records of
    /// aborted transactions go, a key keeps only its latest record (outside aborted
    /// transactions), and tombstones go; records keep their offsets. A batch left without
    /// records is dropped, except a transactional or control one (a producer's batch can
    /// stay empty): it stays with no records, its offsets spanned all the same; a marker is
    /// emptied once no data of its transaction is left. Offsets come out with gaps.
    pub fn compact(&mut self) {
        // Which transactional records were aborted, and which transaction each belongs to.
        let mut open: HashMap<i64, Vec<u64>> = HashMap::new();
        let mut aborted: HashSet<u64> = HashSet::new();
        let mut txn_of: HashMap<u64, usize> = HashMap::new();
        let mut marker_of: HashMap<usize, usize> = HashMap::new();
        for (i, (base, b)) in self.batches.iter().enumerate() {
            let h = BatchHeader::parse(b).expect("a batch");
            if h.is_control() {
                let commit = batch::records(b)
                    .next()
                    .and_then(|r| r.key)
                    .and_then(txn_index::marker_type);
                for o in open.remove(&h.producer_id).unwrap_or_default() {
                    if commit != Some(true) {
                        aborted.insert(o);
                    }
                    marker_of.insert(txn_of[&o], i);
                }
            } else if h.is_transactional() {
                for r in batch::records(b) {
                    let o = base + r.offset_delta as u64;
                    open.entry(h.producer_id).or_default().push(o);
                    txn_of.insert(o, i);
                }
            }
        }
        assert!(
            open.values().all(Vec::is_empty),
            "no open transaction below what is compacted"
        );
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for r in self.records() {
            if !aborted.contains(&r.offset) {
                latest.insert(r.key, r.offset);
            }
        }
        // The markers that still have data of their transaction after the pass.
        let mut needed: HashSet<usize> = HashSet::new();
        let mut out = Vec::new();
        for (i, (base, b)) in self.batches.iter().enumerate() {
            let h = BatchHeader::parse(b).expect("a batch");
            let kept: Vec<batch::RecordView<'_>> = if h.is_control() {
                batch::records(b).collect()
            } else {
                batch::records(b)
                    .filter(|r| {
                        let o = base + r.offset_delta as u64;
                        !aborted.contains(&o)
                            && r.value.is_some()
                            && r.key.is_some_and(|k| latest.get(k) == Some(&o))
                    })
                    .collect()
            };
            if h.is_transactional() && !h.is_control() && !kept.is_empty() {
                needed.insert(marker_of[&i]);
            }
            out.push((*base, h, rebuild(b, &kept)));
        }
        self.batches = out
            .into_iter()
            .enumerate()
            .filter_map(|(i, (base, h, b))| {
                if h.is_control() && !needed.contains(&i) {
                    return Some((base, rebuild(&b, &[])));
                }
                let empty = BatchHeader::parse(&b).unwrap().records_count == 0;
                (!empty || h.is_transactional()).then_some((base, b))
            })
            .collect();
    }
}

/// `b` with only the records `kept` (which it holds), each at its own offset delta: its
/// header stays but for the length, the record count and the checksum.
fn rebuild(b: &[u8], kept: &[batch::RecordView<'_>]) -> Vec<u8> {
    let mut out = b[..HEADER_LEN].to_vec();
    let mut body = Vec::new();
    for r in kept {
        body.clear();
        body.push(0);
        write_varint(&mut body, r.timestamp_delta);
        write_varint(&mut body, r.offset_delta);
        for field in [r.key, r.value] {
            match field {
                Some(f) => {
                    write_varint(&mut body, f.len() as i64);
                    body.extend_from_slice(f);
                }
                None => write_varint(&mut body, -1),
            }
        }
        write_varint(&mut body, 0);
        write_varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    // batchLength at 8, crc at 17, recordsCount at 57.
    let length = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = batch::compute_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
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

    /// Compacts `tp` as the log cleaner does (see [`Partition::compact`]).
    pub fn compact(&self, tp: &TopicPartition) {
        let mut s = self.store.0.lock().unwrap();
        s.partitions.entry(tp.clone()).or_default().compact();
    }

    fn append_locked(s: &mut StoreState, tp: &TopicPartition, mut batch: Vec<u8>) -> u64 {
        let h = BatchHeader::parse(&batch).expect("a batch");
        let p = s.partitions.entry(tp.clone()).or_default();
        let base = p.end;
        batch[0..8].copy_from_slice(&(base as i64).to_be_bytes());
        p.end = base + h.last_offset_delta as u64 + 1;
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
        let batches: Vec<Vec<u8>> =
            self.partition(tp, |p| p.batches.iter().map(|(_, b)| b.clone()).collect());
        for b in batches {
            f(&BatchHeader::parse(&b).expect("a batch"), &b);
        }
        Ok(())
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
