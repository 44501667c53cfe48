//! The log as a replica sees it: where leader epochs start and end (OffsetForLeaderEpoch),
//! and a follower's appends of the leader's batches, kept as they are.

use std::sync::atomic::Ordering;

use super::{AppendInfo, Log};
use crate::batch;
use crate::clock::now_ms;
use crate::error::{Result, StorageError};

impl Log {
    /// A new leader epoch starts at the log end (Kafka's `maybeAssignEpochStartOffset`, when
    /// this replica becomes the leader): OffsetForLeaderEpoch then answers for it before
    /// anything is written in it. Older or equal epochs change nothing.
    pub fn assign_epoch_start(&self, epoch: i32) -> Result<()> {
        let mut w = self.open_writer()?;
        // Leadership only moves to newer epochs: an older one here is a stale view, not a
        // correction of the history (which the copied batches' epochs make).
        if w.epochs.latest_epoch().is_some_and(|l| l > epoch) {
            return Ok(());
        }
        let end = self.log_end_offset();
        if w.epochs.assign_in_memory(epoch, end) {
            w.epochs_unsaved = true;
        }
        Ok(())
    }

    /// OffsetForLeaderEpoch for `epoch` against this log (see [`EpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let w = self.writer();
        w.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// A follower's append of batches copied from the leader: stored byte for byte, with
    /// the leader's offsets and leader epochs (which the epoch cache follows). Every batch
    /// must start at or after the log end and after the one before it (gaps are possible in
    /// a compacted log); a batch whose CRC does not match is refused, nothing written.
    pub fn append_replicated(&self, batches: &[u8]) -> Result<AppendInfo> {
        if batches.is_empty() {
            return Err(StorageError::InvalidRecord(
                "no record batch to append".into(),
            ));
        }
        let config = self.config();
        let mut headers = Vec::new();
        let mut pos = 0;
        while pos < batches.len() {
            let (_, size) = batch::check_framing(&batches[pos..])?;
            let h = batch::validate_stored(&batches[pos..pos + size])?;
            headers.push((pos, h));
            pos += size;
        }
        let now = now_ms();
        let mut w = self.open_writer()?;
        let end = self.log_end_offset();
        let mut next = end;
        let mut max_timestamp = -1;
        let mut records = 0u64;
        for (_, h) in &headers {
            if h.base_offset < 0 || (h.base_offset as u64) < next {
                return Err(StorageError::InvalidRecord(format!(
                    "a replicated batch at offset {} comes before the log end {next}",
                    h.base_offset
                )));
            }
            next = h.last_offset() as u64 + 1;
            records += h.records_count as u64;
            max_timestamp = max_timestamp.max(h.max_timestamp);
        }
        let base_offset = headers[0].1.base_offset as u64;
        self.maybe_roll(&mut w, &config, batches.len() as u64, next - 1, now)?;
        w.active
            .append(batches, &headers, config.index_interval_bytes)?;
        self.shared.end_offset.store(next, Ordering::Release);
        w.appended_at(now);
        for (_, h) in &headers {
            w.epochs.assign(
                &self.shared.dir,
                h.partition_leader_epoch,
                h.base_offset as u64,
            )?;
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
            log_append_time: None,
            max_timestamp,
            batches: headers.len(),
            records,
        })
    }
}
