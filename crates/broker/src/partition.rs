//! A partition replica on this broker: its log, and the replication state that Kafka keeps
//! for it even on a single node (leader epoch, ISR, high watermark), plus the idempotent
//! producers' state.

use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use strom_metadata::image::{NO_LEADER, PartitionInfo, Replicas};
use strom_storage::producer_state::{ProducerInfo, SequenceError};
use strom_storage::txn_index::AbortedTxn;
use strom_storage::{
    CleanOptions, CleanStats, Cleanable, LeaderAppend, Log, PartitionLog, ReadResult, StorageError,
};

use strom_replication::leader::{IsrChange, LeaderConfig, LeaderState};

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
    /// The transaction coordinator could not be asked now (it moved, or is loading).
    #[error("the transaction coordinator is not available to verify the batch; retry")]
    CoordinatorUnavailable,
}

impl From<strom_storage::AppendError> for AppendError {
    fn from(e: strom_storage::AppendError) -> Self {
        match e {
            strom_storage::AppendError::Storage(e) => AppendError::Storage(e),
            strom_storage::AppendError::Sequence(e) => AppendError::Sequence(e),
        }
    }
}

#[derive(Debug, Clone)]
/// One lock for the three: every partition holds them, and a lock costs 16 bytes.
struct Role {
    leader: i32,
    replicas: Replicas,
    isr: Replicas,
}

/// How a wait for the high watermark ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HighWatermarkWait {
    Reached,
    TimedOut,
    /// This node no longer leads in the epoch the records were written in: whether they
    /// are committed is the new leader's to say (NOT_LEADER_OR_FOLLOWER, and the client
    /// retries).
    NotLeader,
}

/// What a produce to this partition got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    pub log_append_time: Option<i64>,
    pub log_start_offset: u64,
}

/// The leader's side of replication.
struct Leading {
    state: LeaderState,
    /// An ISR expansion a follower's fetch called for, to send to the controller.
    expansion: Option<IsrChange>,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub index: i32,
    log: PartitionLog,
    /// The leader, the replica set and the ISR, as the metadata last said.
    role: RwLock<Role>,
    leader_epoch: AtomicI32,
    high_watermark: AtomicU64,
    min_insync_replicas: AtomicI32,
    /// While this node leads a partition with other replicas: the followers' progress.
    /// Boxed, and absent on followers and on a sole replica (every partition of a single
    /// node), whose high watermark is its log end: most partitions of a broker never use it.
    leading: std::sync::Mutex<Option<Box<Leading>>>,
    replica_lag_time_max_ms: std::sync::atomic::AtomicI64,
    node_id: i32,
    /// Waiting fetches and acks=all produces, woken whenever the high watermark moves (and,
    /// with followers, at every append: they read up to the log end).
    watchers: Watchers,
    /// Fetch reads served, for tests and metrics.
    reads: AtomicU64,
}

impl Partition {
    /// Opens the replica's log in `dir` (created if new) with this node as the only replica.
    pub fn open(
        dir: &Path,
        topic: impl Into<Arc<str>>,
        index: i32,
        node_id: i32,
        config: &TopicConfig,
    ) -> Result<Partition, StorageError> {
        let log = PartitionLog::open(dir, config.log)?;
        let epoch = log.log().epoch_cache().latest_epoch().unwrap_or(0).max(0);
        Ok(Partition {
            topic: topic.into(),
            index,
            role: RwLock::new(Role {
                leader: node_id,
                replicas: Replicas::from_slice(&[node_id]),
                isr: Replicas::from_slice(&[node_id]),
            }),
            leader_epoch: AtomicI32::new(epoch),
            // What the checkpoint says was committed; a log from before the checkpoint
            // existed had only this replica: all of it. Becoming leader alone moves it to
            // the log end anyway.
            high_watermark: AtomicU64::new(
                log.log()
                    .checkpointed_high_watermark()
                    .unwrap_or(log.log().log_end_offset()),
            ),
            min_insync_replicas: AtomicI32::new(config.min_insync_replicas),
            leading: std::sync::Mutex::new(None),
            replica_lag_time_max_ms: std::sync::atomic::AtomicI64::new(
                config.replica_lag_time_max_ms,
            ),
            node_id,
            watchers: Watchers::default(),
            reads: AtomicU64::new(0),
            log,
        })
    }

    /// The log, for reads and its own bookkeeping; appends go through the partition.
    pub fn log(&self) -> &Log {
        self.log.log()
    }

    /// Clean shutdown: a last producer-state snapshot, then the log's own close.
    pub fn close(&self) -> Result<(), StorageError> {
        self.close_deferred()?;
        strom_storage::settle()
    }

    /// [`Partition::close`] with its fsyncs left to [`strom_storage::settle`], which the
    /// caller runs once it has closed all it closes (a clean shutdown of many partitions).
    pub fn close_deferred(&self) -> Result<(), StorageError> {
        self.log().queue_high_watermark(self.high_watermark())?;
        self.log.close_deferred()
    }

    /// Where the producer state's rebuild at open started replaying the log.
    pub fn replayed_from(&self) -> u64 {
        self.log.replayed_from()
    }

    /// DescribeProducers.
    pub fn producers(&self) -> Vec<ProducerInfo> {
        self.log.producers()
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
        let offset = self.logged(
            "writing a transaction marker",
            self.log.write_marker(
                producer_id,
                producer_epoch,
                commit,
                coordinator_epoch,
                self.leader_epoch(),
                strom_storage::clock::now_ms(),
            ),
        )?;
        self.advance_high_watermark();
        Ok(offset)
    }

    /// Appends records the broker itself writes for a transaction (TxnOffsetCommit): the
    /// producer's epoch is checked, its sequence numbers are not (they carry none); the
    /// first ones of a transaction carry the `guard` of their verification.
    pub fn append_transactional(
        &self,
        records: &mut [u8],
        guard: Option<u64>,
    ) -> Result<u64, AppendError> {
        let offset = self.logged(
            "appending",
            self.log
                .append_transactional(records, self.leader_epoch(), guard),
        )?;
        self.advance_high_watermark();
        Ok(offset)
    }

    /// Storage failures reach the server log (rate-limited), not only the client.
    fn logged<T>(
        &self,
        action: &str,
        r: Result<T, strom_storage::AppendError>,
    ) -> Result<T, AppendError> {
        if let Err(strom_storage::AppendError::Storage(e)) = &r {
            crate::storage_errors::report(&self.topic, self.index, action, e);
        }
        r.map_err(AppendError::from)
    }

    /// The leader, as the metadata last said.
    pub fn leader(&self) -> i32 {
        self.role.read().unwrap().leader
    }

    pub fn replicas(&self) -> Vec<i32> {
        self.role.read().unwrap().replicas.to_vec()
    }

    /// This node leads the partition from `info`'s leader epoch on, with its replicas and
    /// ISR. Alone in the ISR, everything in the log is committed.
    pub fn make_leader(&self, info: &PartitionInfo) {
        self.set_role(info);
        // The new epoch starts at the log end, written or not, for OffsetForLeaderEpoch.
        if let Err(e) = self.log().assign_epoch_start(info.leader_epoch) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "cannot record the leader epoch's start");
        }
        if info.replicas.iter().all(|r| *r == self.node_id) {
            // Alone: committed as soon as written.
            *self.leading.lock().unwrap() = None;
            self.advance_high_watermark();
            return;
        }
        let now = strom_storage::clock::now_ms();
        {
            // The same leadership, a new ISR or replica set (an AlterPartition committed):
            // the followers' progress stays.
            let mut leading = self.leading.lock().unwrap();
            if let Some(l) = leading.as_mut()
                && l.state.leader_epoch() == info.leader_epoch
            {
                let moved = l.state.on_partition_change(info, now);
                drop(leading);
                if let Some(hw) = moved {
                    self.publish_high_watermark(hw);
                }
                return;
            }
        }
        let config = LeaderConfig {
            min_insync_replicas: self.min_insync_replicas.load(Ordering::Acquire).max(1) as usize,
            replica_lag_time_max_ms: self.replica_lag_time_max_ms.load(Ordering::Acquire),
        };
        let state = LeaderState::new(
            self.node_id,
            info,
            self.log().log_end_offset(),
            self.high_watermark(),
            now,
            config,
        );
        self.publish_high_watermark(state.high_watermark());
        *self.leading.lock().unwrap() = Some(Box::new(Leading {
            state,
            expansion: None,
        }));
        self.advance_high_watermark();
    }

    /// Another node leads the partition: this replica serves no produce or consumer fetch.
    pub fn make_follower(&self, info: &PartitionInfo) {
        self.set_role(info);
        *self.leading.lock().unwrap() = None;
        // Writes waiting to be committed here learn that they will not be, from this node.
        self.watchers.notify();
    }

    /// This node no longer holds the partition (moved away by a reassignment, or its topic
    /// deleted): it leads nothing, and writes waiting for the ISR learn at once that they
    /// will not be acknowledged here, instead of at their timeout.
    pub fn drop_replica(&self) {
        self.role.write().unwrap().leader = NO_LEADER;
        *self.leading.lock().unwrap() = None;
        self.watchers.notify();
    }

    /// Follower `replica` fetches from `fetch_offset` (it has everything below): the leader
    /// state learns its progress and the high watermark may move. Refused for a replica
    /// that is not one of this partition's, or when this node does not lead it.
    pub fn on_follower_fetch(&self, replica: i32, fetch_offset: u64) -> Result<(), i16> {
        // The log end first: an append the follower already read may not have reached the
        // leader state yet (its writer is between the two), and the fetch offset past the
        // state's log end would be refused as out of range.
        let leo = self.log().log_end_offset();
        let now = strom_storage::clock::now_ms();
        let mut leading = self.leading.lock().unwrap();
        // A sole replica has no followers: any replica's fetch is refused, as the leader
        // state refuses one that is not a replica.
        let Some(leading) = leading.as_mut() else {
            return Err(crate::errors::NOT_LEADER_OR_FOLLOWER);
        };
        let appended = leading.state.on_append(leo, now);
        let outcome = leading.state.on_fetch(replica, fetch_offset, now)?;
        if let Some(hw) = outcome.high_watermark.or(appended) {
            self.publish_high_watermark(hw);
        }
        if let Some(change) = outcome.expand {
            leading.expansion = Some(change);
        }
        Ok(())
    }

    /// An ISR change to ask the controller for now, with the leader epoch it is made in:
    /// a follower that caught up joins; one that lagged past replica.lag.time.max.ms leaves.
    pub fn isr_change(&self, now: i64) -> Option<(IsrChange, i32)> {
        let mut leading = self.leading.lock().unwrap();
        let leading = leading.as_mut()?;
        let change = leading
            .expansion
            .take()
            .or_else(|| leading.state.tick(now))?;
        Some((change, leading.state.leader_epoch()))
    }

    /// The controller refused the change (made on a stale view): the next one is made on
    /// the metadata it will publish.
    pub fn isr_change_refused(&self) {
        if let Some(l) = self.leading.lock().unwrap().as_mut() {
            l.state.on_proposal_refused();
        }
    }

    /// A follower's copy of the leader's batches, stored as they are.
    pub fn append_replicated(&self, records: &[u8]) -> Result<(), StorageError> {
        self.log
            .append_replicated(records)
            .map(|_| ())
            .inspect_err(|e| {
                crate::storage_errors::report(
                    &self.topic,
                    self.index,
                    "appending replicated batches",
                    e,
                )
            })
    }

    /// A follower drops its divergent tail; its high watermark cannot stay above the end.
    pub fn truncate_to(&self, offset: u64) -> Result<u64, StorageError> {
        let end = self.log.truncate_to(offset).inspect_err(|e| {
            crate::storage_errors::report(&self.topic, self.index, "truncating", e)
        })?;
        self.high_watermark.fetch_min(end, Ordering::AcqRel);
        Ok(end)
    }

    /// A follower's high watermark, as its leader's fetch responses say (capped by its
    /// log): it may go down after a truncation, unlike a leader's.
    pub fn set_follower_high_watermark(&self, hw: u64) {
        let hw = hw.min(self.log().log_end_offset());
        if self.high_watermark.swap(hw, Ordering::AcqRel) != hw {
            self.watchers.notify();
        }
    }

    fn publish_high_watermark(&self, hw: u64) {
        if self.high_watermark.fetch_max(hw, Ordering::AcqRel) < hw {
            self.watchers.notify();
        }
    }

    fn set_role(&self, info: &PartitionInfo) {
        *self.role.write().unwrap() = Role {
            leader: info.leader,
            replicas: info.replicas.clone(),
            isr: info.isr.clone(),
        };
        self.leader_epoch
            .store(info.leader_epoch, Ordering::Release);
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    /// A client's `current_leader_epoch` against this replica's (KIP-320; -1 skips the
    /// check): an older one is FENCED_LEADER_EPOCH, a newer one (metadata this broker has
    /// not seen yet) UNKNOWN_LEADER_EPOCH.
    pub fn check_leader_epoch(&self, current: i32) -> Result<(), i16> {
        let epoch = self.leader_epoch();
        match current {
            c if c < 0 || c == epoch => Ok(()),
            c if c < epoch => Err(crate::errors::FENCED_LEADER_EPOCH),
            _ => Err(crate::errors::UNKNOWN_LEADER_EPOCH),
        }
    }

    pub fn isr(&self) -> Vec<i32> {
        self.role.read().unwrap().isr.to_vec()
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// The last stable offset: the high watermark, or the start of the oldest transaction
    /// still open, whichever is smaller; never below the log start (retention or
    /// DeleteRecords may have removed the start of an open transaction).
    pub fn last_stable_offset(&self) -> u64 {
        let hw = self.high_watermark();
        match self.log.first_unstable_offset() {
            Some(first) => first.max(self.log().log_start_offset()).min(hw),
            None => hw,
        }
    }

    /// Whether producer `pid` has a transaction open here.
    pub fn in_transaction(&self, pid: i64) -> bool {
        self.log.in_transaction(pid)
    }

    /// See [`ProducerStates::start_verification`].
    pub fn start_verification(&self, pid: i64) -> u64 {
        self.log.start_verification(pid)
    }

    pub fn cancel_verification(&self, pid: i64, guard: u64) {
        self.log.cancel_verification(pid, guard)
    }

    /// Forgets producers idle longer than `expiration_ms` with no transaction open here.
    pub fn expire_producers(&self, now: i64, expiration_ms: i64) -> usize {
        self.log.expire_producers(now, expiration_ms)
    }

    /// One cleaning pass below the high watermark (and the last stable offset).
    pub fn clean(
        &self,
        opts: &CleanOptions,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<Option<CleanStats>, StorageError> {
        let opts = CleanOptions {
            upper: self.high_watermark(),
            ..*opts
        };
        self.log.clean(&opts, throttle)
    }

    /// What the cleaner could do now.
    pub fn cleanable(&self, now_ms: i64, min_lag_ms: i64) -> Result<Cleanable, StorageError> {
        self.log
            .cleanable(self.high_watermark(), now_ms, min_lag_ms)
    }

    pub fn set_config(&self, config: &TopicConfig) {
        self.log().set_config(config.log);
        self.replica_lag_time_max_ms
            .store(config.replica_lag_time_max_ms, Ordering::Release);
        self.min_insync_replicas
            .store(config.min_insync_replicas, Ordering::Release);
    }

    /// Appends a produce request's records (one or more batches), deduplicating retried
    /// batches of idempotent producers. `acks` is only checked against the ISR here; the
    /// caller waits for the high watermark with [`Partition::wait_for_high_watermark`].
    /// A producer's first transactional batch here is verified with its transaction
    /// coordinator first (the broker's `append_records`).
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
            self.check_min_isr()?;
        }
        let appended = self.logged(
            "appending",
            self.log
                .append_as_leader(records, self.leader_epoch(), guard),
        )?;
        let log_start_offset = self.log().log_start_offset();
        match appended {
            LeaderAppend::Duplicate(meta) => Ok(Appended {
                base_offset: meta.first_offset,
                last_offset: meta.last_offset,
                log_append_time: None,
                log_start_offset,
            }),
            LeaderAppend::Written {
                base_offset,
                last_offset,
                log_append_time,
            } => {
                self.advance_high_watermark();
                Ok(Appended {
                    base_offset,
                    last_offset,
                    log_append_time,
                    log_start_offset,
                })
            }
        }
    }

    /// The high watermark is the smallest log end offset in the ISR (the leader state's
    /// rule); alone, our own log end.
    fn advance_high_watermark(&self) {
        let leo = self.log().log_end_offset();
        let moved = match self.leading.lock().unwrap().as_mut() {
            Some(l) => l.state.on_append(leo, strom_storage::clock::now_ms()),
            None if self.role.read().unwrap().isr.len() <= 1 => Some(leo),
            None => None,
        };
        match moved {
            Some(hw) => self.publish_high_watermark(hw),
            // Followers read up to the log end: they are woken by every append.
            None if self.replicas().len() > 1 => {
                self.watchers.notify();
            }
            None => {}
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

    /// Whether this node leads the partition in `leader_epoch`.
    pub fn leads_in(&self, leader_epoch: i32) -> bool {
        self.leader() == self.node_id && self.leader_epoch() == leader_epoch
    }

    /// Waits until the high watermark reaches `offset`, written while this node led in
    /// `leader_epoch`. Leadership lost meanwhile ends the wait: a follower's high watermark
    /// may pass the offset over the new leader's records after truncating ours, so only
    /// the leader of the epoch the records were written in can say they are committed.
    pub async fn wait_for_high_watermark(
        &self,
        offset: u64,
        leader_epoch: i32,
        deadline: tokio::time::Instant,
    ) -> HighWatermarkWait {
        let waiter = Waiter::new();
        self.watch(&waiter);
        loop {
            let reached = self.leads_in(leader_epoch) && self.high_watermark() >= offset;
            // Read again after the high watermark: it was then still the leader's.
            if !self.leads_in(leader_epoch) {
                return HighWatermarkWait::NotLeader;
            }
            if reached {
                return HighWatermarkWait::Reached;
            }
            if !waiter.wait(deadline).await {
                let reached = self.high_watermark() >= offset;
                return match self.leads_in(leader_epoch) {
                    false => HighWatermarkWait::NotLeader,
                    true if reached => HighWatermarkWait::Reached,
                    true => HighWatermarkWait::TimedOut,
                };
            }
        }
    }

    /// Fewer in-sync replicas than `min.insync.replicas`: an acks=all write is refused
    /// before it is appended.
    pub fn check_min_isr(&self) -> Result<(), AppendError> {
        let isr = self.role.read().unwrap().isr.len();
        let min = self.min_insync_replicas.load(Ordering::Acquire);
        if (isr as i32) < min {
            return Err(AppendError::NotEnoughReplicas { isr, min });
        }
        Ok(())
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
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.log().read(offset, max_bytes, Some(upper))
    }

    /// How many fetch reads this replica served.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
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
        self.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.log().read(offset, max_bytes, Some(lso))?;
        let aborted = match &r.region {
            Some(region) => self
                .log()
                .aborted_txns(offset, region.next_offset.min(lso))?,
            None => Vec::new(),
        };
        Ok((r, aborted))
    }

    pub fn delete_records(&self, offset: u64) -> Result<u64, StorageError> {
        let hw = self.high_watermark();
        if offset > hw {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.log().log_start_offset(),
                end: hw,
            });
        }
        self.log().delete_records_before(offset)
    }
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
