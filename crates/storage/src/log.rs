//! The partition log: an ordered set of segments with one writer and many readers.
//!
//! Readers never take the writer's lock: they read the end offset, then the segment's
//! published size, and only ever look at bytes below it. The writer writes the bytes first and
//! publishes the size and the end offset after, so a reader sees whole batches or nothing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use crate::batch::{self, BatchHeader};
use crate::checkpoint::{self, EpochCache};
use crate::config::{LogConfig, TimestampType};
use crate::error::{IoContext, Result, StorageError};
use crate::segment::Segment;
use crate::segment_map::SegmentMap;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The broker's time stamped on the batches when the log uses `LogAppendTime`.
    pub log_append_time: Option<i64>,
    pub max_timestamp: i64,
    pub batches: usize,
    pub records: u64,
}

/// Bytes of one file to send as they are (`sendfile` or `pread`), never re-encoded.
#[derive(Debug, Clone)]
pub struct FileRegion {
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
    /// The offset just past the region's last batch (or, at a segment's end, the segment's
    /// next offset): a read_committed fetch needs the aborted transactions below it only.
    pub next_offset: u64,
}

impl FileRegion {
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut buf, self.position)?;
        Ok(buf)
    }
}

#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches, starting with the one that holds the requested offset; `None` when there
    /// is nothing to return below the upper bound.
    pub region: Option<FileRegion>,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
}

/// A ListOffsets answer: a record's timestamp and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: u64,
}

pub struct Log {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    dir: Arc<Path>,
    /// A mutex, not a lock for readers: held only to clone the `Arc` (8 bytes less).
    config: Mutex<Arc<LogConfig>>,
    pub(crate) segments: RwLock<SegmentMap>,
    end_offset: AtomicU64,
    start_offset: AtomicU64,
    writer: Mutex<Writer>,
    recovery: Mutex<Recovery>,
    /// [`Log::recovered_from`]; [`UNKNOWN`] for none (sentinels rather than `Option`s in
    /// what every partition holds: 8 bytes each).
    recovered_from: u64,
    /// The earliest delete horizon the cleaner left in the log: once passed, a cleaning is
    /// due even when nothing is dirty. Not kept across restarts.
    /// `i64::MIN` for none (an atomic, not a locked `Option`: every byte of an idle
    /// partition counts when a broker holds tens of thousands).
    pub(crate) cleaner_horizon: AtomicI64,
    /// What the high-watermark file holds, when known (as [`Recovery::written`]);
    /// [`UNKNOWN`] when not.
    hw_written: AtomicU64,
}

/// `Shared::hw_written` and `Recovery::written` when the file's content is not known;
/// `Shared::recovered_from` after a clean shutdown.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// `Writer::rolling_base_ms` while the active segment has had no append.
const NO_APPEND: i64 = i64::MIN;

struct Writer {
    active: Arc<Segment>,
    /// Wall time of the active segment's first append, for `segment.ms`; [`NO_APPEND`]
    /// before it.
    rolling_base_ms: i64,
    unflushed_messages: i64,
    last_flush_ms: i64,
    epochs: EpochCache,
    /// A new epoch assigned at the log end is not written until something is written
    /// after it: until then it describes no record, and the next open would cut it anyway
    /// (at a start every partition gets one, and a file written each took most of the
    /// start).
    epochs_unsaved: bool,
    /// fsync of the segment rolled last, running in the background as in Kafka.
    /// Boxed: a `JoinHandle` is 24 bytes, held by every partition, and a roll is rare.
    pending_flush: Option<Box<JoinHandle<()>>>,
    closed: bool,
}

impl Writer {
    /// Something was appended at `now`: the active segment's age for `segment.ms` counts
    /// from its first append.
    fn appended_at(&mut self, now: i64) {
        if self.rolling_base_ms == NO_APPEND {
            self.rolling_base_ms = now;
        }
    }
}

/// The recovery point: every offset below it is on disk and consistent. Only moves forward
/// after an fsync; a truncation moves it back and bumps `truncations` so that an fsync
/// started before the truncation cannot move it forward again.
struct Recovery {
    point: u64,
    truncations: u64,
    /// What the recovery-point file holds, [`UNKNOWN`] when not known: the periodic
    /// checkpoint skips an unchanged one (an idle partition costs no write and no fsync).
    written: u64,
}

pub(crate) use crate::clock::now_ms;

impl Log {
    /// Opens (or creates) the log in `dir`, recovering after an unclean shutdown.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir: Arc<Path> = Arc::from(dir.as_ref());
        // Its own clean close may still be queued.
        crate::durable::settle_for(&dir);
        let opened = crate::recovery::open(&dir, &config)?;
        let active = opened.segments.last().unwrap().clone();
        let shared = Shared {
            dir,
            config: Mutex::new(crate::config::shared(config)),
            segments: RwLock::new(opened.segments),
            end_offset: AtomicU64::new(opened.end_offset),
            start_offset: AtomicU64::new(opened.start_offset),
            writer: Mutex::new(Writer {
                active,
                rolling_base_ms: opened.rolling_base_ms.unwrap_or(NO_APPEND),
                unflushed_messages: 0,
                last_flush_ms: now_ms(),
                epochs: opened.epochs,
                epochs_unsaved: false,
                pending_flush: None,
                closed: false,
            }),
            recovery: Mutex::new(Recovery {
                point: opened.recovery_point,
                truncations: 0,
                // A recovery left the file at the recovery point (or queued it); after a
                // clean shutdown the file may be older, and the next checkpoint pass
                // writes it (until then a crash recovers from the older point).
                written: if opened.recovery_point_written {
                    opened.recovery_point
                } else {
                    UNKNOWN
                },
            }),
            hw_written: AtomicU64::new(UNKNOWN),
            recovered_from: opened.recovered_from.unwrap_or(UNKNOWN),
            cleaner_horizon: AtomicI64::new(i64::MIN),
        };
        let log = Log {
            shared: Arc::new(shared),
        };
        log.delete_snapshots_after(opened.end_offset)?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The directory as its segments share it.
    pub(crate) fn shared_dir(&self) -> &Arc<Path> {
        &self.shared.dir
    }

    pub fn config(&self) -> LogConfig {
        **self.shared.config.lock().unwrap()
    }

    /// New settings take effect on the next append, read or retention run.
    pub fn set_config(&self, config: LogConfig) {
        *self.shared.config.lock().unwrap() = crate::config::shared(config);
        for seg in self.shared.segments.read().unwrap().values() {
            seg.set_interval(config.index_interval_bytes);
        }
    }

    pub fn log_start_offset(&self) -> u64 {
        self.shared.start_offset.load(Ordering::Acquire)
    }

    /// The offset the next record will get.
    pub fn log_end_offset(&self) -> u64 {
        self.shared.end_offset.load(Ordering::Acquire)
    }

    /// After an unclean shutdown, the base offset of the first segment that recovery checked:
    /// from there on, files written beside the log (its `.txnindex`) may have missed what
    /// was not fsynced. `None` after a clean shutdown.
    pub fn recovered_from(&self) -> Option<u64> {
        Some(self.shared.recovered_from).filter(|o| *o != UNKNOWN)
    }

    pub fn recovery_point(&self) -> u64 {
        self.shared.recovery.lock().unwrap().point
    }

    pub fn size_bytes(&self) -> u64 {
        self.shared
            .segments
            .read()
            .unwrap()
            .values()
            .map(|s| s.size())
            .sum()
    }

    pub fn segment_count(&self) -> usize {
        self.shared.segments.read().unwrap().len()
    }

    /// Base offset of the active (last) segment.
    pub fn active_segment_base(&self) -> u64 {
        let segs = self.shared.segments.read().unwrap();
        segs.last().map_or(0, |s| s.base_offset)
    }

    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.shared.segments.read().unwrap().bases().collect()
    }

    /// How many segments have their index in memory (lazy loading is observable in tests).
    pub fn loaded_index_count(&self) -> usize {
        let segs = self.shared.segments.read().unwrap();
        segs.values().filter(|s| s.is_index_loaded()).count()
    }

    pub fn epoch_cache(&self) -> EpochCache {
        self.writer_now().epochs.clone()
    }

    /// The writer, once queued durable writes are settled (see [`crate::durable`]): what
    /// it changes must not reach the disk before them.
    fn writer(&self) -> MutexGuard<'_, Writer> {
        crate::durable::settle_for(&self.shared.dir);
        self.writer_now()
    }

    /// The writer without settling: for what only reads, or queues its own writes.
    fn writer_now(&self) -> MutexGuard<'_, Writer> {
        self.shared.writer.lock().unwrap()
    }

    /// The writer, for operations that change the log: refused once the log is closed.
    fn open_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let mut w = self.writer();
        if w.closed {
            return Err(closed_error(&self.shared.dir));
        }
        if w.epochs_unsaved {
            w.epochs.save(&self.shared.dir)?;
            w.epochs_unsaved = false;
        }
        Ok(w)
    }

    /// Appends one or more record batches, assigning offsets and the leader epoch in place
    /// in `batches` (which then hold exactly what was stored).
    pub fn append(&self, batches: &mut [u8], leader_epoch: i32) -> Result<AppendInfo> {
        self.append_at(batches, leader_epoch, now_ms())
    }

    /// [`Log::append`] with an explicit clock, for `segment.ms`, `flush.ms` and LogAppendTime.
    pub fn append_at(&self, batches: &mut [u8], leader_epoch: i32, now: i64) -> Result<AppendInfo> {
        if batches.is_empty() {
            return Err(StorageError::InvalidRecord(
                "no record batch to append".into(),
            ));
        }
        let config = self.config();
        // Validation (CRC included) happens before taking the lock, so appends to one
        // partition only serialize on the write itself.
        let mut headers = Vec::new();
        let mut pos = 0;
        while pos < batches.len() {
            let (_, size) = batch::check_framing(&batches[pos..])?;
            if size > config.max_message_bytes {
                return Err(StorageError::MessageTooLarge {
                    size,
                    max: config.max_message_bytes,
                });
            }
            let h = batch::validate(&batches[pos..pos + size])?;
            headers.push((pos, h));
            pos += size;
        }
        let log_append_time =
            (config.timestamp_type == TimestampType::LogAppendTime).then_some(now);

        let mut w = self.open_writer()?;
        let base_offset = self.log_end_offset();
        let mut next = base_offset;
        let mut max_timestamp = -1;
        let mut records = 0u64;
        for (at, h) in headers.iter_mut() {
            let slice = &mut batches[*at..*at + h.total_size()];
            batch::assign_offset_and_epoch(slice, next, leader_epoch);
            if let Some(t) = log_append_time {
                batch::set_log_append_time(slice, t);
            }
            *h = BatchHeader::parse(slice).expect("validated above");
            next += h.offset_count();
            records += h.records_count as u64;
            max_timestamp = max_timestamp.max(h.max_timestamp);
        }
        self.maybe_roll(&mut w, &config, batches.len() as u64, next - 1, now)?;
        w.active
            .append(batches, &headers, config.index_interval_bytes)?;
        self.shared.end_offset.store(next, Ordering::Release);
        w.appended_at(now);
        // A leader's epoch never goes back: an older one is a stale caller, and must not
        // rewrite the history the way a follower's copied batches correct it.
        if w.epochs.latest_epoch().is_none_or(|l| l <= leader_epoch) {
            w.epochs
                .assign(&self.shared.dir, leader_epoch, base_offset)?;
        }
        w.unflushed_messages += records as i64;
        if w.unflushed_messages >= config.flush_messages
            || now.saturating_sub(w.last_flush_ms) >= config.flush_ms
        {
            self.flush_locked(&mut w, now)?;
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time,
            max_timestamp,
            batches: headers.len(),
            records,
        })
    }

    fn maybe_roll(
        &self,
        w: &mut Writer,
        config: &LogConfig,
        incoming: u64,
        last_offset: u64,
        now: i64,
    ) -> Result<()> {
        let active = &w.active;
        if active.size() == 0 {
            return Ok(());
        }
        let full = active.size() + incoming > config.segment_bytes;
        let old = w.rolling_base_ms != NO_APPEND
            && now.saturating_sub(w.rolling_base_ms) >= config.segment_ms;
        let index_full = active.index_entries()? >= config.max_index_entries();
        let offsets_overflow = last_offset - active.base_offset > i32::MAX as u64;
        if full || old || index_full || offsets_overflow {
            self.roll_locked(w)?;
        }
        Ok(())
    }

    /// Starts a new segment at the log end offset (no-op when the active one is empty).
    pub fn roll(&self) -> Result<()> {
        let mut w = self.open_writer()?;
        if w.active.size() == 0 {
            return Ok(());
        }
        self.roll_locked(&mut w)
    }

    fn roll_locked(&self, w: &mut Writer) -> Result<()> {
        let base = self.log_end_offset();
        let seg = Segment::create(&self.shared.dir, base)?;
        seg.set_interval(self.config().index_interval_bytes);
        let old = std::mem::replace(&mut w.active, seg.clone());
        old.persist_indexes()?;
        self.shared.segments.write().unwrap().insert(seg);
        w.rolling_base_ms = NO_APPEND;
        tracing::debug!(dir = %self.shared.dir.display(), base, "rolled segment");

        // fsync the closed segment off the append path, then move the recovery point.
        if let Some(h) = w.pending_flush.take() {
            let _ = h.join();
        }
        let shared = self.shared.clone();
        let truncations = self.shared.recovery.lock().unwrap().truncations;
        w.pending_flush = Some(Box::new(std::thread::spawn(move || {
            if let Err(e) = old.sync() {
                tracing::warn!(error = %e, "fsync of rolled segment failed");
                return;
            }
            shared.advance_recovery_point(base, truncations, true);
        })));
        Ok(())
    }

    /// Removes every record at `offset` and after; a batch that straddles `offset` goes
    /// whole. Returns the new log end offset.
    pub fn truncate_to(&self, offset: u64) -> Result<u64> {
        let mut w = self.open_writer()?;
        let end = self.log_end_offset();
        if offset >= end {
            return Ok(end);
        }
        self.shared.lower_recovery_point(offset)?;
        let dir = &self.shared.dir;
        let start = self.log_start_offset();
        if offset < start || offset <= self.segment_base_offsets()[0] {
            // Nothing of the log survives below `offset` that is worth keeping segment by
            // segment: start over with an empty segment there.
            let new_start = offset.min(start);
            self.replace_all_segments(&mut w, offset)?;
            self.shared.start_offset.store(new_start, Ordering::Release);
            checkpoint::write_offset(dir, checkpoint::LOG_START_OFFSET, new_start)?;
            w.epochs.truncate_from_end(dir, offset)?;
            self.delete_snapshots_after(offset)?;
            crate::compact::truncate_checkpoint(dir, offset)?;
            return Ok(offset);
        }
        let target = self
            .segment_for(offset)
            .expect("a log always has a segment");
        let doomed: Vec<Arc<Segment>> = {
            let mut segs = self.shared.segments.write().unwrap();
            segs.split_off(target.base_offset + 1)
        };
        for s in doomed {
            s.delete_files()?;
        }
        let new_end = match target.find_batch(offset, target.size())? {
            Some((pos, h)) => {
                target.truncate_to(pos, h.base_offset as u64)?;
                // In a compacted log `offset` may fall in a gap before the batch.
                (h.base_offset as u64).min(offset)
            }
            None => target.next_offset()?,
        };
        w.active = target;
        if w.active.size() == 0 {
            w.rolling_base_ms = NO_APPEND;
        }
        self.shared.end_offset.store(new_end, Ordering::Release);
        if new_end < start {
            self.shared.start_offset.store(new_end, Ordering::Release);
            checkpoint::write_offset(dir, checkpoint::LOG_START_OFFSET, new_end)?;
        }
        w.epochs.truncate_from_end(dir, new_end)?;
        self.delete_snapshots_after(new_end)?;
        crate::compact::truncate_checkpoint(dir, new_end)?;
        Ok(new_end)
    }

    fn replace_all_segments(&self, w: &mut Writer, base: u64) -> Result<()> {
        let old: Vec<Arc<Segment>> = { self.shared.segments.write().unwrap().take_all() };
        for s in &old {
            s.delete_files()?;
        }
        let seg = Segment::create(&self.shared.dir, base)?;
        seg.set_interval(self.config().index_interval_bytes);
        self.shared.segments.write().unwrap().insert(seg.clone());
        w.active = seg;
        w.rolling_base_ms = NO_APPEND;
        self.shared.end_offset.store(base, Ordering::Release);
        Ok(())
    }

    /// fsync of everything appended so far, and the recovery point moved to the end.
    pub fn flush(&self) -> Result<()> {
        let mut w = self.writer();
        self.flush_locked(&mut w, now_ms())
    }

    /// Applies `flush.ms` for logs that received no append lately.
    /// Whether `flush.ms` is set (not Kafka's default, never): only such a log has anything
    /// to do in [`Log::maybe_flush`].
    pub fn flushes_on_time(&self) -> bool {
        self.shared.config.lock().unwrap().flush_ms != i64::MAX
    }

    pub fn maybe_flush(&self, now: i64) -> Result<()> {
        if !self.flushes_on_time() {
            return Ok(());
        }
        let mut w = self.writer();
        if !w.closed
            && w.unflushed_messages > 0
            && now.saturating_sub(w.last_flush_ms) >= self.config().flush_ms
        {
            self.flush_locked(&mut w, now)?;
        }
        Ok(())
    }

    fn flush_locked(&self, w: &mut Writer, now: i64) -> Result<()> {
        if let Some(h) = w.pending_flush.take() {
            let _ = h.join();
        }
        let end = self.log_end_offset();
        w.active.sync()?;
        let truncations = self.shared.recovery.lock().unwrap().truncations;
        self.shared.advance_recovery_point(end, truncations, false);
        w.unflushed_messages = 0;
        w.last_flush_ms = now;
        Ok(())
    }

    /// Clean shutdown: flush everything, write the checkpoints and the clean-shutdown marker
    /// so the next open skips recovery.
    pub fn close(&self) -> Result<()> {
        self.close_deferred()?;
        crate::durable::settle()
    }

    /// [`Log::close`] with its fsyncs left to [`crate::settle`], which the caller runs once
    /// all its logs are closed: the segments' and checkpoints' data is written now, the
    /// marker only once all of it is durable. Until then the log counts as crashed.
    pub fn close_deferred(&self) -> Result<()> {
        let mut w = self.writer_now();
        if w.closed {
            return Ok(());
        }
        if let Some(h) = w.pending_flush.take() {
            let _ = h.join();
        }
        w.active.persist_indexes()?;
        let dir = &self.shared.dir;
        // Only what changed: creating files is most of a close's cost once the fsyncs are
        // batched (tens of thousands of new inodes for a shutdown). Not the recovery point:
        // the marker says there is nothing to recover, and if the marker is lost the
        // older point on disk only means more to check.
        {
            let mut r = self.shared.recovery.lock().unwrap();
            r.point = self.log_end_offset();
            r.written = UNKNOWN;
        }
        let start = self.log_start_offset();
        let saved = checkpoint::read_offset(dir, checkpoint::LOG_START_OFFSET);
        // Without the file, the next open starts the log at its first segment: a log never
        // trimmed inside a segment needs none (it was a new file per partition at its first
        // clean shutdown).
        let first_base = self
            .shared
            .segments
            .read()
            .unwrap()
            .first()
            .map(|s| s.base_offset);
        if saved != Some(start) && !(saved.is_none() && first_base == Some(start)) {
            crate::durable::write_later(
                dir,
                checkpoint::LOG_START_OFFSET,
                checkpoint::offset_file(start).as_bytes(),
            )?;
        }
        crate::durable::mark_later(dir, checkpoint::CLEAN_SHUTDOWN);
        w.closed = true;
        Ok(())
    }

    /// Runs `f` holding the writer's lock, unless the log is closed: the cleaner swaps
    /// segments this way, so that appends, truncations and retention see the segments before
    /// or after a swap, never in between.
    pub(crate) fn under_writer<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let w = self.writer();
        if w.closed {
            return None;
        }
        let r = f();
        drop(w);
        Some(r)
    }

    /// Whether the log was closed (shut down or deleted): periodic work leaves it alone.
    pub fn is_closed(&self) -> bool {
        self.writer_now().closed
    }

    /// Deletes the whole log (DeleteTopics).
    pub fn delete(&self) -> Result<()> {
        let mut w = self.writer();
        if let Some(h) = w.pending_flush.take() {
            let _ = h.join();
        }
        w.closed = true;
        std::fs::remove_dir_all(&self.shared.dir).at(&self.shared.dir)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.writer.lock()
            && let Some(h) = w.pending_flush.take()
        {
            let _ = h.join();
        }
    }
}

impl Shared {
    /// Bumped by every truncation: work started before one must not record its result.
    pub(crate) fn truncations(&self) -> u64 {
        self.recovery.lock().unwrap().truncations
    }

    fn advance_recovery_point(&self, to: u64, truncations_seen: u64, write_checkpoint: bool) {
        let mut r = self.recovery.lock().unwrap();
        if r.truncations != truncations_seen || to <= r.point {
            return;
        }
        // The epochs of what the recovery point now covers are not rebuilt by recovery.
        if let Err(e) = checkpoint::sync_file(&self.dir, checkpoint::LEADER_EPOCHS) {
            tracing::warn!(error = %e, "could not sync the leader epoch checkpoint");
            return;
        }
        r.point = to;
        if write_checkpoint {
            match checkpoint::write_offset(&self.dir, checkpoint::RECOVERY_POINT, to) {
                Ok(()) => r.written = to,
                Err(e) => tracing::warn!(error = %e, "could not write the recovery point"),
            }
        }
    }

    /// Before a truncation touches files: a crash in the middle must lead to a recovery scan
    /// of everything at or after `offset`.
    fn lower_recovery_point(&self, offset: u64) -> Result<()> {
        let mut r = self.recovery.lock().unwrap();
        r.truncations += 1;
        if offset < r.point {
            r.point = offset;
            // Unknown until the write succeeds: a failed one must not be taken as done.
            r.written = UNKNOWN;
            checkpoint::write_offset(&self.dir, checkpoint::RECOVERY_POINT, offset)?;
            r.written = offset;
        }
        Ok(())
    }
}

fn closed_error(dir: &Path) -> StorageError {
    StorageError::Io {
        path: dir.display().to_string(),
        source: io::Error::other("the log is closed"),
    }
}

// A replica's side of the log: leader epochs, and appends of batches copied from the leader.
#[path = "log_checkpoints.rs"]
mod checkpoints;
#[path = "log_replica.rs"]
mod replica;

// Deleting from the front: DeleteRecords and retention.
#[path = "retention.rs"]
mod retention;
