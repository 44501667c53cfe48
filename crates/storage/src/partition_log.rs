//! A partition's log together with what is derived from it: the idempotent and
//! transactional producers' state and the aborted-transaction index. They change as one
//! unit: an append updates both, a truncation (a follower cutting a divergent tail) rebuilds
//! the producer state from a snapshot at or below the new end plus a replay, so that
//! sequence checks and the last stable offset never describe records that are gone.
//!
//! Replication state (leader epoch, ISR, high watermark) is not here: this is storage.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::batch::{self, BatchHeader};
use crate::log::AppendInfo;
use crate::producer_state::{BatchMeta, Check, ProducerInfo, ProducerStates, SequenceError};
use crate::txn_index::{self, AbortedTxn};
use crate::{CleanOptions, CleanStats, Cleanable, Log, LogConfig, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("producer sequence: {0:?}")]
    Sequence(SequenceError),
}

/// What a leader's append of a producer's batches did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderAppend {
    /// Written at these offsets.
    Written {
        base_offset: u64,
        last_offset: u64,
        log_append_time: Option<i64>,
    },
    /// A retry of a batch already written: nothing was written, these are its offsets.
    Duplicate(BatchMeta),
}

pub struct PartitionLog {
    log: Log,
    /// `None` while there is nothing to remember: most partitions of a large broker have
    /// no idempotent producer, and the empty tables took an eighth of an idle partition.
    producers: Mutex<Option<Box<ProducerStates>>>,
    /// The active segment when the producer state was last snapshotted: a roll takes the
    /// next snapshot, so a restart replays at most about one segment.
    snapshot_segment: AtomicU64,
    /// Where the last rebuild of the producer state started replaying batches.
    replayed_from: AtomicU64,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering it, and rebuilds the producer state.
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, StorageError> {
        let p = PartitionLog {
            log: Log::open(dir, config)?,
            producers: Mutex::new(None),
            snapshot_segment: AtomicU64::new(u64::MAX),
            replayed_from: AtomicU64::new(0),
        };
        {
            let mut states = p.states();
            p.rebuild_producer_state(&mut states)?;
            states.release_if_unused();
        }
        // The next snapshot comes with the next roll: a restart replays at most the active
        // segment, as when it was written. (A snapshot at the first append after every
        // open cost two fsyncs per partition, thousands at once after a start.)
        p.snapshot_segment
            .store(p.log.active_segment_base(), Ordering::Release);
        Ok(p)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    fn states(&self) -> States<'_> {
        States(self.producers.lock().unwrap())
    }

    /// Rebuilds the producer state: the newest readable snapshot, then every batch after it
    /// (from the log start when there is none), re-indexing aborted transactions whose
    /// index entry did not reach the disk. After an unclean shutdown the replay starts no
    /// later than the first abort marker recovery may have left without its index entry: a
    /// snapshot is fsynced before the `.txnindex` of the segments it covers, which a power
    /// loss could take.
    fn rebuild_producer_state(&self, states: &mut States<'_>) -> Result<(), StorageError> {
        states.clear();
        let start = self.log.log_start_offset();
        let mut from = start;
        for (offset, bytes) in self.log.producer_snapshots()? {
            if !self.snapshot_trusted(offset)? {
                continue;
            }
            if let Some(s) = ProducerStates::decode(&bytes) {
                **states = s;
                from = offset.max(start);
                break;
            }
            tracing::warn!(dir = %self.log.dir().display(), offset, "ignoring a damaged producer-state snapshot");
        }
        self.replayed_from.store(from, Ordering::Release);
        if from < self.log.log_end_offset() {
            tracing::debug!(dir = %self.log.dir().display(), from, "replaying batches into the producer state");
        }
        let mut failed = None;
        self.log
            .for_each_batch(from, None, |h, bytes| match self.track(states, h, bytes) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            })?;
        failed.map_or(Ok(()), Err)
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
        let (mut markers, mut reached) = (false, limit.max(self.log.log_start_offset()));
        self.log.for_each_batch(reached, Some(offset), |h, _| {
            markers |= h.is_control();
            reached = h.last_offset() as u64 + 1;
            !markers
        })?;
        Ok(!markers && reached >= offset)
    }

    /// Feeds one stored batch to the producer state; an abort marker also goes into the
    /// aborted-transaction index.
    fn track(
        &self,
        states: &mut States<'_>,
        h: &BatchHeader,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let ended = States::record(states, h);
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
            tracing::warn!(dir = %self.log.dir().display(), error = %e, "could not write a producer-state snapshot");
        }
    }

    /// Clean shutdown: a last snapshot, then the log's own close.
    pub fn close(&self) -> Result<(), StorageError> {
        self.close_deferred()?;
        crate::durable::settle()
    }

    /// [`PartitionLog::close`] with its fsyncs left to [`crate::settle`] (see
    /// [`Log::close_deferred`]).
    pub fn close_deferred(&self) -> Result<(), StorageError> {
        if self.log.is_closed() {
            return Ok(());
        }
        let states = self.states();
        if let Err(e) = self
            .log
            .queue_producer_snapshot(self.log.log_end_offset(), &states.encode())
        {
            tracing::warn!(dir = %self.log.dir().display(), error = %e, "could not write a producer-state snapshot");
        }
        self.log.close_deferred()
    }

    /// A leader's append of a producer's batches: control batches are refused (markers are
    /// the coordinator's), idempotent producers' sequences and epochs are checked and their
    /// retries answered with the first write's offsets, transactional batches must continue
    /// an open transaction or carry the `guard` of a verification. Offsets are assigned in
    /// place, with `leader_epoch`.
    pub fn append_as_leader(
        &self,
        records: &mut [u8],
        leader_epoch: i32,
        guard: Option<u64>,
    ) -> Result<LeaderAppend, AppendError> {
        if self.log.config().cleanup_compact {
            let name = self
                .log
                .dir()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            crate::compact::check_keys(records, &name)?;
        }
        let mut states = self.states();
        let mut batches = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let (h, size) = batch::check_framing(&records[pos..])?;
            if h.is_control() {
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
                match states.check(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.records_count,
                ) {
                    Ok(Check::Append) => {}
                    Ok(Check::Duplicate(meta)) => return Ok(LeaderAppend::Duplicate(meta)),
                    Err(e) => return Err(AppendError::Sequence(e)),
                }
                states.check_txn(&h, guard).map_err(AppendError::Sequence)?;
            }
            batches.push(pos);
            pos += size;
        }
        let info = self.log.append(records, leader_epoch)?;
        for pos in batches {
            let h = BatchHeader::parse(&records[pos..]).expect("appended batch");
            States::record(&mut states, &h);
        }
        self.maybe_snapshot(&states);
        Ok(LeaderAppend::Written {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time: info.log_append_time,
        })
    }

    /// Appends records the broker itself writes for a transaction (TxnOffsetCommit): the
    /// producer's epoch is checked, its sequence numbers are not (they carry none); the
    /// first ones of a transaction carry the `guard` of their verification.
    pub fn append_transactional(
        &self,
        records: &mut [u8],
        leader_epoch: i32,
        guard: Option<u64>,
    ) -> Result<u64, AppendError> {
        let mut states = self.states();
        let (h, _) = batch::check_framing(records)?;
        if let Some(current) = states.epoch_of(h.producer_id)
            && h.producer_epoch < current
        {
            return Err(AppendError::Sequence(SequenceError::InvalidEpoch {
                current,
            }));
        }
        states.check_txn(&h, guard).map_err(AppendError::Sequence)?;
        let info = self.log.append(records, leader_epoch)?;
        let h = BatchHeader::parse(records).expect("appended batch");
        States::record(&mut states, &h);
        self.maybe_snapshot(&states);
        Ok(info.base_offset)
    }

    /// Writes the commit or abort marker that ends producer `producer_id`'s transaction
    /// here, as the transaction coordinator decided. Returns the marker's offset.
    pub fn write_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<u64, AppendError> {
        let mut states = self.states();
        states
            .check_marker(producer_id, producer_epoch, coordinator_epoch)
            .map_err(AppendError::Sequence)?;
        let mut marker = txn_index::marker_batch(
            producer_id,
            producer_epoch,
            commit,
            coordinator_epoch,
            now_ms,
        );
        let info = self.log.append(&mut marker, leader_epoch)?;
        let h = BatchHeader::parse(&marker).expect("a marker batch");
        self.track(&mut states, &h, &marker)?;
        self.maybe_snapshot(&states);
        Ok(info.base_offset)
    }

    /// A follower's append of the leader's batches (see [`Log::append_replicated`]): the
    /// producer state and the aborted-transaction index follow them as they follow the
    /// leader's own appends, so that a follower that becomes leader dedupes retries and
    /// answers read_committed as the old leader would have.
    pub fn append_replicated(&self, records: &[u8]) -> Result<AppendInfo, StorageError> {
        let mut states = self.states();
        let info = self.log.append_replicated(records)?;
        let mut failed = None;
        let mut pos = 0;
        while pos < records.len() {
            let (h, size) = batch::check_framing(&records[pos..])?;
            if let Err(e) = self.track(&mut states, &h, &records[pos..pos + size]) {
                failed = Some(e);
                break;
            }
            pos += size;
        }
        self.maybe_snapshot(&states);
        failed.map_or(Ok(info), Err)
    }

    /// Removes every record at `offset` and after (a follower's divergent tail), and
    /// rebuilds the producer state and the aborted-transaction index for what is left.
    /// Returns the new log end offset.
    pub fn truncate_to(&self, offset: u64) -> Result<u64, StorageError> {
        let mut states = self.states();
        let end = self.log.truncate_to(offset)?;
        self.snapshot_segment.store(u64::MAX, Ordering::Release);
        self.rebuild_producer_state(&mut states)?;
        Ok(end)
    }

    /// Where the producer state's last rebuild started replaying the log.
    pub fn replayed_from(&self) -> u64 {
        self.replayed_from.load(Ordering::Acquire)
    }

    /// DescribeProducers.
    pub fn producers(&self) -> Vec<ProducerInfo> {
        self.states().describe()
    }

    /// The first offset of the oldest transaction open here.
    pub fn first_unstable_offset(&self) -> Option<u64> {
        self.states().first_unstable_offset()
    }

    /// Whether producer `pid` has a transaction open here.
    pub fn in_transaction(&self, pid: i64) -> bool {
        self.states().in_transaction(pid)
    }

    /// See [`ProducerStates::start_verification`].
    pub fn start_verification(&self, pid: i64) -> u64 {
        self.states().start_verification(pid)
    }

    pub fn cancel_verification(&self, pid: i64, guard: u64) {
        self.states().cancel_verification(pid, guard)
    }

    /// One cleaning pass (see [`Log::clean`]) below `opts.upper` (the high watermark) and
    /// the first unstable offset, keeping every producer's last batch.
    pub fn clean(
        &self,
        opts: &CleanOptions,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<Option<CleanStats>, StorageError> {
        let (upper, producer_last) = {
            let states = self.states();
            let upper = states
                .first_unstable_offset()
                .map_or(opts.upper, |o| o.min(opts.upper));
            (upper, states.last_data_offsets())
        };
        let opts = CleanOptions { upper, ..*opts };
        self.log.clean(&opts, &producer_last, throttle)
    }

    /// What the cleaner could do now below `upper` (the high watermark).
    pub fn cleanable(
        &self,
        upper: u64,
        now_ms: i64,
        min_lag_ms: i64,
    ) -> Result<Cleanable, StorageError> {
        let upper = self.first_unstable_offset().map_or(upper, |o| o.min(upper));
        self.log.cleanable(upper, now_ms, min_lag_ms)
    }

    /// Whether any producer state is held in memory (none for a log whose batches carry
    /// no producer id, or whose producers all expired).
    pub fn holds_producer_state(&self) -> bool {
        self.producers.lock().unwrap().is_some()
    }

    /// Forgets producers idle longer than `expiration_ms` with no transaction open here.
    pub fn expire_producers(&self, now: i64, expiration_ms: i64) -> usize {
        let mut states = self.states();
        let expired = states.expire(now, expiration_ms);
        states.release_if_unused();
        expired
    }
}

/// The producer state under its lock, created when first changed.
struct States<'a>(MutexGuard<'a, Option<Box<ProducerStates>>>);

static NO_PRODUCERS: std::sync::LazyLock<ProducerStates> =
    std::sync::LazyLock::new(ProducerStates::default);

impl States<'_> {
    /// [`ProducerStates::record`], without creating the state for a batch that has no
    /// producer id (it would record nothing).
    fn record(&mut self, h: &BatchHeader) -> Option<u64> {
        if h.producer_id < 0 {
            return None;
        }
        (**self).record(h)
    }

    /// Back to no state at all.
    fn clear(&mut self) {
        *self.0 = None;
    }

    /// Frees an empty state (after an open, or a pass that expired producers): appends
    /// without producer ids may have created it.
    fn release_if_unused(&mut self) {
        if self.0.as_ref().is_some_and(|s| s.is_unused()) {
            *self.0 = None;
        }
    }
}

impl std::ops::Deref for States<'_> {
    type Target = ProducerStates;

    fn deref(&self) -> &ProducerStates {
        self.0.as_deref().unwrap_or(&NO_PRODUCERS)
    }
}

impl std::ops::DerefMut for States<'_> {
    fn deref_mut(&mut self) -> &mut ProducerStates {
        self.0.get_or_insert_with(Box::default)
    }
}
