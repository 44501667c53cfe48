//! A partition replica on this broker: its log, and the replication state that Kafka keeps
//! for it even on a single node (leader epoch, ISR, high watermark), plus the idempotent
//! producers' state.

use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use strom_storage::batch::{self, BatchHeader};
use strom_storage::txn_index::{self, AbortedTxn};
use strom_storage::{Log, ReadResult, StorageError};

use crate::producer_state::{Check, ProducerInfo, ProducerStates, SequenceError};
use crate::purgatory::{Waiter, Watchers};
use crate::topic_config::TopicConfig;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("producer sequence: {0:?}")]
    Sequence(SequenceError),
    #[error("the ISR has {isr} replicas, fewer than min.insync.replicas={min}")]
    NotEnoughReplicas { isr: usize, min: i32 },
}

/// What a produce to this partition got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    pub log_append_time: Option<i64>,
    pub log_start_offset: u64,
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: Log,
    pub leader: i32,
    pub replicas: Vec<i32>,
    leader_epoch: AtomicI32,
    isr: RwLock<Vec<i32>>,
    high_watermark: AtomicU64,
    min_insync_replicas: AtomicI32,
    producers: Mutex<ProducerStates>,
    /// The active segment when the producer state was last snapshotted: a roll takes the
    /// next snapshot, so a restart replays at most about one segment.
    snapshot_segment: AtomicU64,
    /// Where opening the log started replaying batches into the producer state.
    replayed_from: AtomicU64,
    /// Waiting fetches and acks=all produces, woken whenever the high watermark moves.
    watchers: Watchers,
}

impl Partition {
    /// Opens the replica's log in `dir` (created if new) with this node as the only replica.
    pub fn open(
        dir: &Path,
        topic: &str,
        index: i32,
        node_id: i32,
        config: &TopicConfig,
    ) -> Result<Partition, StorageError> {
        let log = Log::open(dir, config.log)?;
        let epoch = log.epoch_cache().latest_epoch().unwrap_or(0).max(0);
        let p = Partition {
            topic: topic.to_string(),
            index,
            leader: node_id,
            replicas: vec![node_id],
            leader_epoch: AtomicI32::new(epoch),
            isr: RwLock::new(vec![node_id]),
            // Alone in the ISR, everything in the log is committed.
            high_watermark: AtomicU64::new(log.log_end_offset()),
            min_insync_replicas: AtomicI32::new(config.min_insync_replicas),
            producers: Mutex::new(ProducerStates::default()),
            snapshot_segment: AtomicU64::new(u64::MAX),
            replayed_from: AtomicU64::new(0),
            watchers: Watchers::default(),
            log,
        };
        p.rebuild_producer_state()?;
        Ok(p)
    }

    /// Rebuilds the producer state: the newest readable snapshot, then every batch after it
    /// (from the log start when there is none), re-indexing aborted transactions whose
    /// index entry did not reach the disk. After an unclean shutdown the replay starts no
    /// later than the first abort marker recovery may have left without its index entry: a
    /// snapshot is fsynced before the `.txnindex` of the segments it covers, which a power
    /// loss could take.
    fn rebuild_producer_state(&self) -> Result<(), StorageError> {
        let mut states = self.producers.lock().unwrap();
        let start = self.log.log_start_offset();
        let mut from = start;
        for (offset, bytes) in self.log.producer_snapshots()? {
            if !self.snapshot_trusted(offset)? {
                continue;
            }
            if let Some(s) = ProducerStates::decode(&bytes) {
                *states = s;
                from = offset.max(start);
                break;
            }
            tracing::warn!(dir = %self.log.dir().display(), offset, "ignoring a damaged producer-state snapshot");
        }
        self.replayed_from.store(from, Ordering::Release);
        if from < self.log.log_end_offset() {
            tracing::debug!(dir = %self.log.dir().display(), from, "replaying batches into the producer state");
        }
        let mut offset = from;
        while offset < self.log.log_end_offset() {
            let Some(region) = self.log.read(offset, 1 << 20, None)?.region else {
                break;
            };
            let bytes = region.read_all().map_err(|e| StorageError::Io {
                path: self.log.dir().display().to_string(),
                source: e,
            })?;
            let mut pos = 0;
            while pos < bytes.len() {
                let Some(h) = BatchHeader::parse(&bytes[pos..]) else {
                    break;
                };
                let end = (pos + h.total_size()).min(bytes.len());
                self.track(&mut states, &h, &bytes[pos..end])?;
                pos += h.total_size();
                let next = h.last_offset() as u64 + 1;
                if next <= offset {
                    // Recovery checked these batches; a header going backwards would
                    // otherwise have this loop read the same place for ever.
                    tracing::warn!(dir = %self.log.dir().display(), offset, "producer-state replay stopped at a batch that does not move forward");
                    return Ok(());
                }
                offset = next;
            }
        }
        Ok(())
    }

    /// Whether a snapshot taken at `offset` may stand for the log before it. After an
    /// unclean shutdown, not if markers from the first segment recovery checked on lie
    /// below it: their index entries were not fsynced. A roll snapshots after the new
    /// segment's first append, so the newest snapshot usually has a batch or two of that
    /// segment below it, and those are looked at rather than the snapshot given up.
    fn snapshot_trusted(&self, offset: u64) -> Result<bool, StorageError> {
        let Some(limit) = self.log.recovered_from() else {
            return Ok(true);
        };
        if offset <= limit {
            return Ok(true);
        }
        let own_segment = self
            .log
            .segment_base_offsets()
            .into_iter()
            .rfind(|b| *b < offset);
        if own_segment != Some(limit) {
            return Ok(false);
        }
        let mut at = limit.max(self.log.log_start_offset());
        while at < offset {
            let Some(region) = self.log.read(at, 1 << 20, Some(offset))?.region else {
                return Ok(false);
            };
            let bytes = region.read_all().map_err(|e| StorageError::Io {
                path: self.log.dir().display().to_string(),
                source: e,
            })?;
            let (mut pos, before) = (0, at);
            while let Some(h) = bytes.get(pos..).and_then(BatchHeader::parse) {
                if h.is_control() {
                    return Ok(false);
                }
                pos += h.total_size();
                at = h.last_offset() as u64 + 1;
            }
            if at <= before {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Feeds one stored batch to the producer state; an abort marker also goes into the
    /// aborted-transaction index.
    fn track(
        &self,
        states: &mut ProducerStates,
        h: &BatchHeader,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let ended = states.record(h);
        let marker = h
            .is_control()
            .then(|| batch::records(bytes).next())
            .flatten();
        if let Some(epoch) = marker
            .as_ref()
            .and_then(|r| r.value)
            .and_then(txn_index::marker_coordinator_epoch)
        {
            states.record_coordinator_epoch(h.producer_id, epoch);
        }
        if let Some(first) = ended {
            let abort = marker.and_then(|r| r.key).and_then(txn_index::marker_type) == Some(false);
            if abort {
                let marker = h.base_offset as u64;
                self.log.add_aborted_txn(AbortedTxn {
                    producer_id: h.producer_id,
                    first_offset: first,
                    last_offset: marker,
                    last_stable_offset: states.first_unstable_offset().unwrap_or(marker + 1),
                })?;
            }
        }
        Ok(())
    }

    /// After appends: a new active segment gets a snapshot of the state at the log end.
    fn maybe_snapshot(&self, states: &ProducerStates) {
        let active = self.log.active_segment_base();
        if self.snapshot_segment.swap(active, Ordering::AcqRel) != active {
            self.snapshot(states);
        }
    }

    fn snapshot(&self, states: &ProducerStates) {
        if let Err(e) = self
            .log
            .write_producer_snapshot(self.log.log_end_offset(), &states.encode())
        {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not write a producer-state snapshot");
        }
    }

    /// Clean shutdown: a last snapshot, then the log's own close.
    pub fn close(&self) -> Result<(), StorageError> {
        let states = self.producers.lock().unwrap();
        self.snapshot(&states);
        self.log.close()
    }

    /// Where the producer state's rebuild at open started replaying the log.
    pub fn replayed_from(&self) -> u64 {
        self.replayed_from.load(Ordering::Acquire)
    }

    /// DescribeProducers.
    pub fn producers(&self) -> Vec<ProducerInfo> {
        self.producers.lock().unwrap().describe()
    }

    /// Writes the commit or abort marker that ends producer `producer_id`'s transaction
    /// here, as the transaction coordinator decided. Returns the marker's offset.
    pub fn write_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<u64, AppendError> {
        let mut states = self.producers.lock().unwrap();
        states
            .check_marker(producer_id, producer_epoch, coordinator_epoch)
            .map_err(AppendError::Sequence)?;
        let mut marker = txn_index::marker_batch(
            producer_id,
            producer_epoch,
            commit,
            coordinator_epoch,
            crate::group::coordinator::now_ms() as i64,
        );
        let info = self.logged(
            "writing a transaction marker",
            self.log.append(&mut marker, self.leader_epoch()),
        )?;
        let h = BatchHeader::parse(&marker).expect("a marker batch");
        self.track(&mut states, &h, &marker)?;
        self.maybe_snapshot(&states);
        drop(states);
        self.advance_high_watermark();
        Ok(info.base_offset)
    }

    /// Appends records the broker itself writes for a transaction (TxnOffsetCommit): the
    /// producer's epoch is checked, its sequence numbers are not (they carry none); the
    /// first ones of a transaction carry the `guard` of their verification.
    pub fn append_transactional(
        &self,
        records: &mut [u8],
        guard: Option<u64>,
    ) -> Result<u64, AppendError> {
        let mut states = self.producers.lock().unwrap();
        let (h, _) = batch::check_framing(records)?;
        if let Some(current) = states.epoch_of(h.producer_id)
            && h.producer_epoch < current
        {
            return Err(AppendError::Sequence(SequenceError::InvalidEpoch {
                current,
            }));
        }
        states.check_txn(&h, guard).map_err(AppendError::Sequence)?;
        let info = self.logged("appending", self.log.append(records, self.leader_epoch()))?;
        let h = BatchHeader::parse(records).expect("appended batch");
        states.record(&h);
        self.maybe_snapshot(&states);
        drop(states);
        self.advance_high_watermark();
        Ok(info.base_offset)
    }

    /// Storage failures reach the server log (rate-limited), not only the client.
    fn logged<T>(&self, action: &str, r: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &r {
            crate::storage_errors::report(&self.topic, self.index, action, e);
        }
        r
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub fn isr(&self) -> Vec<i32> {
        self.isr.read().unwrap().clone()
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// The last stable offset: the high watermark, or the start of the oldest transaction
    /// still open, whichever is smaller; never below the log start (retention or
    /// DeleteRecords may have removed the start of an open transaction).
    pub fn last_stable_offset(&self) -> u64 {
        let hw = self.high_watermark();
        match self.producers.lock().unwrap().first_unstable_offset() {
            Some(first) => first.max(self.log.log_start_offset()).min(hw),
            None => hw,
        }
    }

    /// Whether producer `pid` has a transaction open here.
    pub fn in_transaction(&self, pid: i64) -> bool {
        self.producers.lock().unwrap().in_transaction(pid)
    }

    /// See [`ProducerStates::start_verification`].
    pub fn start_verification(&self, pid: i64) -> u64 {
        self.producers.lock().unwrap().start_verification(pid)
    }

    pub fn cancel_verification(&self, pid: i64, guard: u64) {
        self.producers
            .lock()
            .unwrap()
            .cancel_verification(pid, guard)
    }

    /// Forgets producers idle longer than `expiration_ms` with no transaction open here.
    pub fn expire_producers(&self, now: i64, expiration_ms: i64) -> usize {
        self.producers.lock().unwrap().expire(now, expiration_ms)
    }

    pub fn set_config(&self, config: &TopicConfig) {
        self.log.set_config(config.log);
        self.min_insync_replicas
            .store(config.min_insync_replicas, Ordering::Release);
    }

    /// Appends a produce request's records (one or more batches), deduplicating retried
    /// batches of idempotent producers. `acks` is only checked against the ISR here; the
    /// caller waits for the high watermark with [`Partition::wait_for_high_watermark`].
    /// Transactional batches go through [`Broker::append_records`] instead.
    ///
    /// [`Broker::append_records`]: crate::broker::Broker::append_records
    pub fn append(&self, records: &mut [u8], acks: i16) -> Result<Appended, AppendError> {
        self.append_verified(records, acks, None)
    }

    /// [`Partition::append`], with the `guard` of a verified transactional producer's first
    /// batch here ([`Partition::start_verification`]).
    pub fn append_verified(
        &self,
        records: &mut [u8],
        acks: i16,
        guard: Option<u64>,
    ) -> Result<Appended, AppendError> {
        if acks == -1 {
            let isr = self.isr.read().unwrap().len();
            let min = self.min_insync_replicas.load(Ordering::Acquire);
            if (isr as i32) < min {
                return Err(AppendError::NotEnoughReplicas { isr, min });
            }
        }
        let mut producers = self.producers.lock().unwrap();
        let mut batches = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let (h, size) = batch::check_framing(&records[pos..])?;
            if h.is_control() {
                // Markers are the transaction coordinator's to write, never a producer's.
                return Err(AppendError::Storage(StorageError::InvalidRecord(
                    "control batches cannot be produced".into(),
                )));
            }
            if h.producer_id < 0 && h.is_transactional() {
                return Err(AppendError::Storage(StorageError::InvalidRecord(
                    "a transactional batch needs a producer id".into(),
                )));
            }
            if h.producer_id >= 0 {
                if h.base_sequence < 0 {
                    return Err(AppendError::Storage(StorageError::InvalidRecord(format!(
                        "invalid sequence number {} for producer {}",
                        h.base_sequence, h.producer_id
                    ))));
                }
                match producers.check(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.records_count,
                ) {
                    Ok(Check::Append) => {}
                    Ok(Check::Duplicate(meta)) => {
                        return Ok(Appended {
                            base_offset: meta.first_offset,
                            last_offset: meta.last_offset,
                            log_append_time: None,
                            log_start_offset: self.log.log_start_offset(),
                        });
                    }
                    Err(e) => return Err(AppendError::Sequence(e)),
                }
                producers
                    .check_txn(&h, guard)
                    .map_err(AppendError::Sequence)?;
            }
            batches.push((pos, size));
            pos += size;
        }
        let info = self.logged("appending", self.log.append(records, self.leader_epoch()))?;
        for (pos, _) in batches {
            let h = BatchHeader::parse(&records[pos..]).expect("appended batch");
            producers.record(&h);
        }
        self.maybe_snapshot(&producers);
        drop(producers);
        self.advance_high_watermark();
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time: info.log_append_time,
            log_start_offset: self.log.log_start_offset(),
        })
    }

    /// The high watermark is the smallest log end offset in the ISR; alone, our own.
    fn advance_high_watermark(&self) {
        let leo = self.log.log_end_offset();
        if self.high_watermark.fetch_max(leo, Ordering::AcqRel) < leo {
            self.watchers.notify();
        }
    }

    /// Has `waiter` woken whenever the high watermark moves, for as long as it lives.
    pub fn watch(&self, waiter: &Arc<Waiter>) {
        self.watchers.watch(waiter);
    }

    /// The operations waiting on this partition, and the wake-ups it caused.
    pub fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// Waits until the high watermark reaches `offset` or the deadline passes.
    pub async fn wait_for_high_watermark(
        &self,
        offset: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let waiter = Waiter::new();
        self.watch(&waiter);
        loop {
            if self.high_watermark() >= offset {
                return true;
            }
            if !waiter.wait(deadline).await {
                return self.high_watermark() >= offset;
            }
        }
    }

    /// A consumer's read: only below the high watermark.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, StorageError> {
        self.read_below(offset, max_bytes, self.high_watermark())
    }

    /// A read below `upper`, the high watermark or last stable offset the caller reports
    /// with the records (read once, so that the two agree).
    pub fn read_below(
        &self,
        offset: u64,
        max_bytes: usize,
        upper: u64,
    ) -> Result<ReadResult, StorageError> {
        self.log.read(offset, max_bytes, Some(upper))
    }

    /// A read_committed consumer's read: only below the last stable offset, with the
    /// aborted transactions that overlap what is returned.
    pub fn read_committed(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<(ReadResult, Vec<AbortedTxn>), StorageError> {
        self.read_committed_below(offset, max_bytes, self.last_stable_offset())
    }

    /// [`Partition::read_committed`] below a last stable offset the caller read.
    pub fn read_committed_below(
        &self,
        offset: u64,
        max_bytes: usize,
        lso: u64,
    ) -> Result<(ReadResult, Vec<AbortedTxn>), StorageError> {
        let r = self.log.read(offset, max_bytes, Some(lso))?;
        let aborted = match &r.region {
            Some(region) => self.log.aborted_txns(offset, region.next_offset.min(lso))?,
            None => Vec::new(),
        };
        Ok((r, aborted))
    }

    pub fn delete_records(&self, offset: u64) -> Result<u64, StorageError> {
        let hw = self.high_watermark();
        if offset > hw {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.log.log_start_offset(),
                end: hw,
            });
        }
        self.log.delete_records_before(offset)
    }
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
