//! Deleting from the front of the log: DeleteRecords moves the log start offset, retention
//! (`retention.ms`, `retention.bytes`, only with `delete` in cleanup.policy) deletes whole
//! closed segments. The doomed segments' files are renamed under the writer's lock and
//! unlinked after it, so that appends never wait for a thousand unlinks.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Log, Writer};
use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::segment::Segment;

impl Log {
    /// DeleteRecords: the log now starts at `offset`; whole segments below it are deleted.
    /// Returns the new log start offset.
    pub fn delete_records_before(&self, offset: u64) -> Result<u64> {
        let mut w = self.open_writer()?;
        let end = self.log_end_offset();
        let start = self.log_start_offset();
        if offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset <= start {
            return Ok(start);
        }
        self.shared.start_offset.store(offset, Ordering::Release);
        checkpoint::write_offset(&self.shared.dir, checkpoint::LOG_START_OFFSET, offset)?;
        let doomed = self.delete_prefix(&mut w, |_, _| Ok(false))?;
        drop(w);
        remove_deleted(doomed);
        Ok(offset)
    }

    /// Deletes closed segments by `retention.ms` (largest timestamp, or the file's mtime when
    /// batches carry none), `retention.bytes` and the log start offset. Returns how many.
    pub fn apply_retention(&self, now: i64) -> Result<usize> {
        let config = self.config();
        let mut w = self.writer();
        if w.closed {
            // Deleted or shut down between the broker's listing and this call.
            return Ok(0);
        }
        let mut total = self.size_bytes() as i64;
        let doomed = self.delete_prefix(&mut w, |seg, _| {
            // Without `delete` in cleanup.policy only the log start offset deletes.
            let by_time = config.cleanup_delete && config.retention_ms >= 0 && {
                let (ts, _) = seg.max_timestamp()?;
                let ts = if ts < 0 { seg.modified_ms() } else { ts };
                now.saturating_sub(ts) > config.retention_ms
            };
            let by_size = config.cleanup_delete
                && config.retention_bytes >= 0
                && total - seg.size() as i64 >= config.retention_bytes;
            if by_time || by_size {
                total -= seg.size() as i64;
            }
            Ok(by_time || by_size)
        })?;
        drop(w);
        let n = doomed.len();
        // Unlinking a thousand segments takes long: not while appends wait for the lock.
        remove_deleted(doomed);
        Ok(n)
    }

    /// Deletes leading closed segments while `doomed` says so or they lie wholly below the
    /// log start offset; then moves the log start offset up to the first segment kept.
    /// The segments' files are renamed to `*.deleted` here, under the writer's lock (a crash
    /// leaves them for the next open to delete); the caller unlinks them after releasing it
    /// ([`remove_deleted`]), as Kafka deletes asynchronously.
    fn delete_prefix(
        &self,
        w: &mut Writer,
        mut doomed: impl FnMut(&Arc<Segment>, u64) -> Result<bool>,
    ) -> Result<Vec<Vec<PathBuf>>> {
        let start = self.log_start_offset();
        let mut deleted = Vec::new();
        loop {
            let (seg, next_base) = {
                let segs = self.shared.segments.read().unwrap();
                let mut it = segs.values();
                let (Some(first), Some(second)) = (it.next(), it.next()) else {
                    break;
                };
                (first.clone(), second.base_offset)
            };
            if Arc::ptr_eq(&seg, &w.active) {
                break;
            }
            if !(next_base <= start || doomed(&seg, next_base)?) {
                break;
            }
            self.shared
                .segments
                .write()
                .unwrap()
                .remove(seg.base_offset);
            deleted.push(seg.mark_deleted()?);
        }
        let first_base = self.segment_base_offsets()[0];
        let dir = &self.shared.dir;
        if first_base > start {
            self.shared
                .start_offset
                .store(first_base, Ordering::Release);
            checkpoint::write_offset(dir, checkpoint::LOG_START_OFFSET, first_base)?;
        }
        w.epochs.truncate_from_start(dir, self.log_start_offset())?;
        Ok(deleted)
    }
}

/// Unlinks the files [`Log::delete_prefix`] renamed; a failure is only logged (the next open
/// deletes what is left).
fn remove_deleted(doomed: Vec<Vec<PathBuf>>) {
    for p in doomed.into_iter().flatten() {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %p.display(), error = %e, "could not delete a segment file");
        }
    }
}
