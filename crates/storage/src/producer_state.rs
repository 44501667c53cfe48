//! Idempotent producers: per producer id, the epoch and the last few batches written, so
//! that a retried batch is acknowledged without being written twice and a gap or an old
//! epoch is refused. A pure state machine, driven by the partition log.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::reader::Reader;

/// Kafka keeps the last 5 batches per producer: the producer's in-flight limit.
pub const MAX_CACHED_BATCHES: usize = 5;
pub const NO_PRODUCER_ID: i64 = -1;
/// Version 2 adds each producer's last timestamp (for `producer.id.expiration.ms`) and the
/// coordinator epoch of its last marker.
const SNAPSHOT_VERSION: u8 = 2;

/// One producer as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    /// First offset of its open transaction, -1 when none.
    pub txn_start_offset: i64,
    /// The coordinator epoch of its last marker here, -1 when none.
    pub coordinator_epoch: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: u64,
    pub last_offset: u64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    /// The batch's epoch is older than the producer's current one.
    InvalidEpoch { current: i16 },
    /// A gap, or a sequence that does not start at 0 for a new epoch.
    OutOfOrder { expected: i32, got: i32 },
    /// A transactional batch outside a transaction the coordinator knows of, or a plain
    /// batch from a producer with a transaction open here (INVALID_TXN_STATE).
    TxnState(&'static str),
    /// A marker from a coordinator older than the one that wrote the producer's last marker
    /// here (TRANSACTION_COORDINATOR_FENCED).
    CoordinatorFenced { current: i32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Write the batch, then call [`ProducerStates::record`].
    Append,
    /// Already written: answer with these offsets, write nothing.
    Duplicate(BatchMeta),
}

#[derive(Debug, Clone)]
struct Entry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Max timestamp of its last batch or marker: idle producers expire by it.
    last_timestamp: i64,
    /// Of the last marker written for it here; -1 before any.
    coordinator_epoch: i32,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            epoch: 0,
            batches: VecDeque::new(),
            last_timestamp: -1,
            coordinator_epoch: -1,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ProducerStates {
    producers: HashMap<i64, Entry>,
    /// Open transactions: producer id -> first offset. The last stable offset is the
    /// smallest of these (or the high watermark when there are none).
    ongoing: std::collections::BTreeMap<i64, u64>,
    /// Producers whose first transactional batch here the coordinator is being asked about
    /// (KIP-890's verification guard). A marker for the producer drops the guard, so a
    /// batch verified before its transaction ended cannot open a transaction after it.
    verifying: HashMap<i64, u64>,
    next_guard: u64,
}

fn in_sequence(last: i32, next: i32) -> bool {
    next as i64 == last as i64 + 1 || (next == 0 && last == i32::MAX)
}

fn last_seq_of(first_seq: i32, records: i32) -> i32 {
    ((first_seq as i64 + records as i64 - 1) % (i32::MAX as i64 + 1)) as i32
}

impl ProducerStates {
    /// Decides what to do with a batch from producer `pid` (the batch's own fields).
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        records: i32,
    ) -> Result<Check, SequenceError> {
        if pid < 0 {
            return Ok(Check::Append);
        }
        let last_seq = last_seq_of(first_seq, records);
        let Some(entry) = self.producers.get(&pid) else {
            // Unknown producer (new, or its state expired with the log): any sequence goes.
            return Ok(Check::Append);
        };
        if epoch < entry.epoch {
            return Err(SequenceError::InvalidEpoch {
                current: entry.epoch,
            });
        }
        if epoch == entry.epoch
            && let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(Check::Duplicate(*dup));
        }
        if epoch > entry.epoch {
            if first_seq != 0 {
                return Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: first_seq,
                });
            }
            return Ok(Check::Append);
        }
        match entry.batches.back() {
            Some(last) if !in_sequence(last.last_seq, first_seq) => {
                Err(SequenceError::OutOfOrder {
                    expected: last.last_seq.wrapping_add(1).max(0),
                    got: first_seq,
                })
            }
            // Known epoch but no sequence yet (a marker created or bumped the entry): the
            // producer's first batch here starts at 0, as Kafka requires.
            None if first_seq != 0 => Err(SequenceError::OutOfOrder {
                expected: 0,
                got: first_seq,
            }),
            _ => Ok(Check::Append),
        }
    }

    /// The transaction rules for a producer's batch, after [`ProducerStates::check`]: a
    /// transactional batch continues the producer's open transaction here or carries the
    /// `guard` of a verification that the coordinator answered; a plain batch may not
    /// come while the producer has a transaction open.
    pub fn check_txn(&self, h: &BatchHeader, guard: Option<u64>) -> Result<(), SequenceError> {
        let open = self.ongoing.contains_key(&h.producer_id);
        if h.is_transactional() {
            if !open && (guard.is_none() || self.verifying.get(&h.producer_id) != guard.as_ref()) {
                return Err(SequenceError::TxnState(
                    "the batch is not part of an ongoing transaction",
                ));
            }
        } else if open {
            return Err(SequenceError::TxnState(
                "a non-transactional batch from a producer with an open transaction",
            ));
        }
        Ok(())
    }

    /// Whether the coordinator may end producer `pid`'s transaction here with a marker of
    /// this producer epoch and coordinator epoch.
    pub fn check_marker(
        &self,
        pid: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), SequenceError> {
        let Some(e) = self.producers.get(&pid) else {
            return Ok(());
        };
        if producer_epoch < e.epoch {
            return Err(SequenceError::InvalidEpoch { current: e.epoch });
        }
        if coordinator_epoch < e.coordinator_epoch {
            return Err(SequenceError::CoordinatorFenced {
                current: e.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Remembers the coordinator epoch of a marker written for `pid` (after
    /// [`ProducerStates::record`] of the marker's batch).
    pub fn record_coordinator_epoch(&mut self, pid: i64, coordinator_epoch: i32) {
        if let Some(e) = self.producers.get_mut(&pid) {
            e.coordinator_epoch = e.coordinator_epoch.max(coordinator_epoch);
        }
    }

    /// Starts verifying producer `pid`'s first transactional batch here: the guard to pass
    /// to [`ProducerStates::check_txn`] once the coordinator confirmed the transaction.
    /// A verification already under way for the producer (a retry on another connection)
    /// shares its guard, as in Kafka.
    pub fn start_verification(&mut self, pid: i64) -> u64 {
        let next = self.next_guard + 1;
        let guard = *self.verifying.entry(pid).or_insert(next);
        if guard == next {
            self.next_guard = next;
        }
        guard
    }

    /// Drops a guard that the coordinator refused, or whose batch was not written.
    pub fn cancel_verification(&mut self, pid: i64, guard: u64) {
        if self.verifying.get(&pid) == Some(&guard) {
            self.verifying.remove(&pid);
        }
    }

    /// Remembers a batch that was written (its header as stored, offsets assigned). For a
    /// commit or abort marker, returns the first offset of the transaction it ended.
    pub fn record(&mut self, h: &BatchHeader) -> Option<u64> {
        if h.producer_id < 0 {
            return None;
        }
        self.verifying.remove(&h.producer_id);
        if h.is_control() {
            // Markers carry no sequence numbers, but a marker written with a bumped epoch
            // (a fenced producer's transaction aborted) fences the old epoch here too.
            let entry = self.producers.entry(h.producer_id).or_default();
            if h.producer_epoch > entry.epoch {
                entry.epoch = h.producer_epoch;
                entry.batches.clear();
            }
            entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
            return self.ongoing.remove(&h.producer_id);
        }
        if h.is_transactional() {
            self.ongoing
                .entry(h.producer_id)
                .or_insert(h.base_offset as u64);
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
        while entry.batches.len() >= MAX_CACHED_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            // By the offsets the batch spans, not its record count: a compacted batch keeps
            // its last offset delta but may hold fewer records, or none.
            last_seq: last_seq_of(h.base_sequence, h.last_offset_delta.saturating_add(1)),
            first_offset: h.base_offset as u64,
            last_offset: h.last_offset() as u64,
            timestamp: h.max_timestamp,
        });
        None
    }

    /// Each producer's last data batch, by its last offset: the cleaner keeps those.
    pub fn last_data_offsets(&self) -> HashMap<i64, u64> {
        self.producers
            .iter()
            .filter_map(|(pid, e)| Some((*pid, e.batches.back()?.last_offset)))
            .collect()
    }

    /// Whether producer `pid` has a transaction open in this partition.
    pub fn in_transaction(&self, pid: i64) -> bool {
        self.ongoing.contains_key(&pid)
    }

    /// What DescribeProducers shows, by producer id.
    pub fn describe(&self) -> Vec<ProducerInfo> {
        let mut out: Vec<ProducerInfo> = self
            .producers
            .iter()
            .map(|(pid, e)| ProducerInfo {
                producer_id: *pid,
                epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: e.last_timestamp,
                txn_start_offset: self.ongoing.get(pid).map(|o| *o as i64).unwrap_or(-1),
                coordinator_epoch: e.coordinator_epoch,
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    /// The snapshot written next to the segments: everything needed to go on deduplicating
    /// and tracking open transactions without reading the log before the snapshot's offset.
    /// Version byte, producers, open transactions, then a CRC32C of all of it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (pid, e) in &self.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp.to_be_bytes());
            out.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
        out.extend_from_slice(&(self.ongoing.len() as u32).to_be_bytes());
        for (pid, first) in &self.ongoing {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot back; `None` if it is torn, corrupt or of another version.
    pub fn decode(bytes: &[u8]) -> Option<ProducerStates> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        let version = *body.first()?;
        if crc32c::crc32c(body).to_be_bytes() != crc || !(1..=SNAPSHOT_VERSION).contains(&version) {
            return None;
        }
        let mut r = Reader::new(&body[1..]);
        let mut s = ProducerStates::default();
        for _ in 0..r.u32()? {
            let pid = r.i64()?;
            let epoch = r.i16()?;
            let (stored_timestamp, coordinator_epoch) = if version >= 2 {
                (Some(r.i64()?), r.i32()?)
            } else {
                (None, -1)
            };
            let n = r.u8()? as usize;
            let mut batches = VecDeque::with_capacity(n.min(MAX_CACHED_BATCHES));
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()? as u64,
                    last_offset: r.i64()? as u64,
                    timestamp: r.i64()?,
                });
            }
            let last_timestamp =
                stored_timestamp.unwrap_or_else(|| batches.back().map_or(-1, |b| b.timestamp));
            s.producers.insert(
                pid,
                Entry {
                    epoch,
                    batches,
                    last_timestamp,
                    coordinator_epoch,
                },
            );
        }
        for _ in 0..r.u32()? {
            let pid = r.i64()?;
            s.ongoing.insert(pid, r.i64()? as u64);
        }
        r.is_empty().then_some(s)
    }

    /// The first offset of the oldest open transaction, if any: read_committed consumers
    /// stop there.
    pub fn first_unstable_offset(&self) -> Option<u64> {
        self.ongoing.values().min().copied()
    }

    /// Forgets producers idle for `expiration_ms` (`producer.id.expiration.ms`) with no
    /// transaction open, as Kafka does; returns how many.
    pub fn expire(&mut self, now: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        let ongoing = &self.ongoing;
        self.producers.retain(|pid, e| {
            ongoing.contains_key(pid) || now.saturating_sub(e.last_timestamp) < expiration_ms
        });
        before - self.producers.len()
    }

    pub fn epoch_of(&self, pid: i64) -> Option<i16> {
        self.producers.get(&pid).map(|e| e.epoch)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Nothing to remember: no producer, no transaction, and no verification guard was
    /// ever handed out (a guard number must not be reused while one may be outstanding).
    pub(crate) fn is_unused(&self) -> bool {
        self.producers.is_empty()
            && self.ongoing.is_empty()
            && self.verifying.is_empty()
            && self.next_guard == 0
    }
}

#[cfg(test)]
#[path = "producer_state_tests.rs"]
mod tests;
