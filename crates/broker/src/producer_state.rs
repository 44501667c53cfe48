//! Idempotent producers: per producer id, the epoch and the last few batches written, so
//! that a retried batch is acknowledged without being written twice and a gap or an old
//! epoch is refused. A pure state machine, driven by the partition.

use std::collections::{HashMap, VecDeque};

use strom_storage::batch::BatchHeader;

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

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
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
            last_seq: last_seq_of(h.base_sequence, h.records_count),
            first_offset: h.base_offset as u64,
            last_offset: h.last_offset() as u64,
            timestamp: h.max_timestamp,
        });
        None
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
        let mut r = Reader(&body[1..]);
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
        r.0.is_empty().then_some(s)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        s: &mut ProducerStates,
        pid: i64,
        epoch: i16,
        seq: i32,
        n: i32,
        offset: u64,
    ) -> Result<Check, SequenceError> {
        let c = s.check(pid, epoch, seq, n)?;
        if c == Check::Append {
            s.record(&BatchHeader {
                base_offset: offset as i64,
                batch_length: 0,
                partition_leader_epoch: 0,
                magic: 2,
                crc: 0,
                attributes: 0,
                last_offset_delta: n - 1,
                base_timestamp: 0,
                max_timestamp: 0,
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: seq,
                records_count: n,
            });
        }
        Ok(c)
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStates::default();
        assert_eq!(write(&mut s, 7, 0, 0, 3, 0), Ok(Check::Append));
        assert_eq!(write(&mut s, 7, 0, 3, 2, 3), Ok(Check::Append));
        match write(&mut s, 7, 0, 0, 3, 99) {
            Ok(Check::Duplicate(m)) => assert_eq!((m.first_offset, m.last_offset), (0, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(write(&mut s, 7, 0, 5, 1, 5), Ok(Check::Append));
    }

    #[test]
    fn gaps_and_old_epochs_are_refused() {
        let mut s = ProducerStates::default();
        write(&mut s, 1, 2, 0, 1, 0).unwrap();
        assert_eq!(
            write(&mut s, 1, 2, 5, 1, 1),
            Err(SequenceError::OutOfOrder {
                expected: 1,
                got: 5
            })
        );
        assert_eq!(
            write(&mut s, 1, 1, 1, 1, 1),
            Err(SequenceError::InvalidEpoch { current: 2 })
        );
        // A new epoch must start at sequence 0.
        assert_eq!(
            write(&mut s, 1, 3, 4, 1, 1),
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: 4
            })
        );
        assert_eq!(write(&mut s, 1, 3, 0, 1, 1), Ok(Check::Append));
        assert_eq!(s.epoch_of(1), Some(3));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            write(&mut s, 1, 0, i, 1, i as u64).unwrap();
        }
        assert!(matches!(s.check(1, 0, 6, 1), Ok(Check::Duplicate(_))));
        assert!(matches!(s.check(1, 0, 2, 1), Ok(Check::Duplicate(_))));
        // Seq 1 fell out of the cache: not a duplicate any more, and out of order.
        assert!(matches!(
            s.check(1, 0, 1, 1),
            Err(SequenceError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn unknown_producers_and_non_idempotent_batches_pass() {
        let s = ProducerStates::default();
        assert_eq!(s.check(42, 0, 17, 1), Ok(Check::Append));
        assert_eq!(s.check(NO_PRODUCER_ID, -1, -1, 5), Ok(Check::Append));
    }

    #[test]
    fn sequence_wraps_after_i32_max() {
        let mut s = ProducerStates::default();
        write(&mut s, 1, 0, i32::MAX - 1, 2, 0).unwrap();
        assert_eq!(write(&mut s, 1, 0, 0, 1, 2), Ok(Check::Append));
    }

    fn header(pid: i64, offset: u64, transactional: bool, control: bool) -> BatchHeader {
        let mut attributes = 0;
        if transactional {
            attributes |= 0x10;
        }
        if control {
            attributes |= 0x20;
        }
        BatchHeader {
            base_offset: offset as i64,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: if control { -1 } else { offset as i32 },
            records_count: 1,
        }
    }

    #[test]
    fn open_transactions_hold_back_the_last_stable_offset() {
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, false, false));
        assert_eq!(s.first_unstable_offset(), None);
        s.record(&header(2, 1, true, false));
        s.record(&header(3, 2, true, false));
        s.record(&header(2, 3, true, false));
        assert_eq!(s.first_unstable_offset(), Some(1));
        // Producer 2's marker ends its transaction; 3's is still open.
        s.record(&header(2, 4, true, true));
        assert_eq!(s.first_unstable_offset(), Some(2));
        // The marker did not disturb 2's sequence numbers.
        assert_eq!(s.check(2, 0, 4, 1), Ok(Check::Append));
    }

    #[test]
    fn snapshots_round_trip_and_refuse_damage() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            write(&mut s, 1, 3, i, 1, i as u64).unwrap();
        }
        write(&mut s, 2, 0, 0, 4, 7).unwrap();
        s.record(&header(5, 11, true, false));
        let bytes = s.encode();
        let back = ProducerStates::decode(&bytes).expect("decodes");
        assert_eq!(back.describe(), s.describe());
        assert_eq!(back.first_unstable_offset(), Some(11));
        assert!(matches!(back.check(1, 3, 5, 1), Ok(Check::Duplicate(_))));
        assert_eq!(back.check(1, 3, 7, 1), Ok(Check::Append));
        for cut in 0..bytes.len() {
            assert!(
                ProducerStates::decode(&bytes[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[9] ^= 1;
        assert!(ProducerStates::decode(&flipped).is_none());
    }

    #[test]
    fn a_marker_with_a_bumped_epoch_fences_the_old_one() {
        let mut s = ProducerStates::default();
        s.record(&header(4, 0, true, false));
        let mut marker = header(4, 1, true, true);
        marker.producer_epoch = 1;
        assert_eq!(s.record(&marker), Some(0));
        assert!(!s.in_transaction(4));
        assert_eq!(
            s.check(4, 0, 1, 1),
            Err(SequenceError::InvalidEpoch { current: 1 })
        );
    }

    #[test]
    fn transactional_batches_need_an_open_transaction_or_a_live_guard() {
        let mut s = ProducerStates::default();
        let first = header(9, 0, true, false);
        let not_in_txn = Err(SequenceError::TxnState(
            "the batch is not part of an ongoing transaction",
        ));
        assert_eq!(s.check_txn(&first, None), not_in_txn);
        let guard = s.start_verification(9);
        assert_eq!(s.check_txn(&first, Some(guard + 1)), not_in_txn);
        assert_eq!(s.check_txn(&first, Some(guard)), Ok(()));
        s.record(&first);
        // Inside its transaction the producer needs no guard, and may not write plainly.
        assert_eq!(s.check_txn(&header(9, 1, true, false), None), Ok(()));
        assert!(matches!(
            s.check_txn(&header(9, 1, false, false), None),
            Err(SequenceError::TxnState(_))
        ));
        s.record(&header(9, 1, true, true));
        assert_eq!(s.check_txn(&header(9, 2, false, false), None), Ok(()));
    }

    #[test]
    fn a_marker_between_verification_and_append_voids_the_guard() {
        let mut s = ProducerStates::default();
        let guard = s.start_verification(3);
        // The coordinator said yes, then the transaction timed out and its abort marker
        // arrived before the batch: the batch must not open a transaction after the marker.
        s.record(&header(3, 0, true, true));
        assert!(matches!(
            s.check_txn(&header(3, 1, true, false), Some(guard)),
            Err(SequenceError::TxnState(_))
        ));
        let refused = s.start_verification(3);
        assert_ne!(refused, guard, "a new verification after the marker");
        assert_eq!(
            s.start_verification(3),
            refused,
            "a verification under way is shared"
        );
        s.cancel_verification(3, refused);
        assert!(
            s.check_txn(&header(3, 1, true, false), Some(refused))
                .is_err()
        );
    }

    #[test]
    fn idle_producers_expire_unless_a_transaction_is_open() {
        let mut s = ProducerStates::default();
        let mut idle = header(1, 0, false, false);
        idle.max_timestamp = 1_000;
        s.record(&idle);
        let mut open = header(2, 1, true, false);
        open.max_timestamp = 1_000;
        s.record(&open);
        let mut recent = header(3, 2, false, false);
        recent.max_timestamp = 5_000;
        s.record(&recent);
        assert_eq!(s.expire(6_000, 5_000), 1);
        let left: Vec<i64> = s.describe().iter().map(|p| p.producer_id).collect();
        assert_eq!(left, vec![2, 3]);
        assert_eq!(s.first_unstable_offset(), Some(1));
        // A forgotten producer is new again: any sequence goes.
        assert_eq!(s.check(1, 0, 57, 1), Ok(Check::Append));
    }

    #[test]
    fn after_a_marker_the_first_batch_of_an_epoch_starts_at_zero() {
        let mut s = ProducerStates::default();
        let mut marker = header(6, 0, true, true);
        marker.producer_epoch = 2;
        s.record(&marker);
        assert_eq!(
            s.check(6, 2, 5, 1),
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: 5
            })
        );
        assert_eq!(s.check(6, 2, 0, 1), Ok(Check::Append));
    }

    #[test]
    fn negative_producer_ids_are_no_producer_ids() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(-5, 0, 3, 1), Ok(Check::Append));
        assert_eq!(s.record(&header(-5, 0, true, false)), None);
        assert_eq!(s.first_unstable_offset(), None);
        assert!(s.is_empty());
    }

    #[test]
    fn version_one_snapshots_still_load() {
        let mut s = ProducerStates::default();
        write(&mut s, 4, 1, 0, 2, 0).unwrap();
        s.record(&header(8, 2, true, false));
        // Version 1: no last timestamp per producer.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&4i64.to_be_bytes());
        v1.extend_from_slice(&1i16.to_be_bytes());
        v1.push(1);
        for v in [0i32, 1] {
            v1.extend_from_slice(&v.to_be_bytes());
        }
        for v in [0i64, 1, 0] {
            v1.extend_from_slice(&v.to_be_bytes());
        }
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&8i64.to_be_bytes());
        v1.extend_from_slice(&2i64.to_be_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let back = ProducerStates::decode(&v1).expect("a version 1 snapshot");
        assert_eq!(back.epoch_of(4), Some(1));
        assert!(matches!(back.check(4, 1, 0, 2), Ok(Check::Duplicate(_))));
        assert_eq!(back.first_unstable_offset(), Some(2));
    }

    #[test]
    fn markers_from_an_older_coordinator_are_fenced() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check_marker(5, 0, -1), Ok(()), "an unknown producer");
        s.record(&header(5, 0, true, false));
        s.record(&header(5, 1, true, true));
        s.record_coordinator_epoch(5, 3);
        assert_eq!(
            s.check_marker(5, 0, 2),
            Err(SequenceError::CoordinatorFenced { current: 3 })
        );
        assert_eq!(s.check_marker(5, 0, 3), Ok(()));
        let back = ProducerStates::decode(&s.encode()).unwrap();
        assert_eq!(back.describe()[0].coordinator_epoch, 3);
        assert!(back.check_marker(5, 0, 2).is_err());
    }
}
