//! The log's recovery point and high watermark checkpoint files: written now (with
//! fsync), queued for [`crate::settle`] (a clean shutdown), or put in a
//! [`crate::CheckpointBatch`] (the periodic pass over every partition). Each is written
//! only when it changed, and never once the log is closed: closing wrote the last one, and
//! a deleted log's directory may already be gone. The writer's lock orders this with close
//! and delete.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::Log;
use crate::checkpoint;
use crate::error::Result;

impl Log {
    /// Writes the recovery point checkpoint (the broker calls this periodically).
    pub fn checkpoint(&self) -> Result<()> {
        self.write_recovery_point(|dir, point| {
            checkpoint::write_offset(dir, checkpoint::RECOVERY_POINT, point)
        })
    }

    /// [`Log::checkpoint`] into `batch`, made durable with many others' by its commit.
    pub fn checkpoint_into(&self, batch: &mut crate::CheckpointBatch) {
        let _ = self.write_recovery_point(|dir, point| {
            batch.push(
                dir,
                checkpoint::RECOVERY_POINT,
                checkpoint::offset_file(point),
            );
            Ok(())
        });
    }

    /// Records the replica's high watermark: after a restart, what is above it is not
    /// known to be committed.
    pub fn checkpoint_high_watermark(&self, high_watermark: u64) -> Result<()> {
        self.write_high_watermark(high_watermark, |dir, hw| {
            checkpoint::write_offset(dir, checkpoint::HIGH_WATERMARK, hw)
        })
    }

    /// [`Log::checkpoint_high_watermark`] queued for [`crate::settle`], for a clean shutdown
    /// of many logs: called before [`Log::close_deferred`].
    pub fn queue_high_watermark(&self, high_watermark: u64) -> Result<()> {
        self.write_high_watermark(high_watermark, |dir, hw| {
            crate::durable::write_later(
                dir,
                checkpoint::HIGH_WATERMARK,
                checkpoint::offset_file(hw).as_bytes(),
            )
        })
    }

    /// [`Log::checkpoint_high_watermark`] into `batch`.
    pub fn high_watermark_into(&self, high_watermark: u64, batch: &mut crate::CheckpointBatch) {
        let _ = self.write_high_watermark(high_watermark, |dir, hw| {
            batch.push(dir, checkpoint::HIGH_WATERMARK, checkpoint::offset_file(hw));
            Ok(())
        });
    }

    /// The high watermark last checkpointed, capped by the log end (recovery may have
    /// truncated below it); `None` when none was ever written.
    pub fn checkpointed_high_watermark(&self) -> Option<u64> {
        let read = checkpoint::read_offset(&self.shared.dir, checkpoint::HIGH_WATERMARK);
        self.shared
            .hw_written
            .store(read.unwrap_or(super::UNKNOWN), Ordering::Release);
        read.map(|hw| hw.min(self.log_end_offset()))
    }

    /// `write` of the recovery point when it differs from the last one written; what it
    /// wrote is remembered once it succeeded.
    fn write_recovery_point(&self, write: impl FnOnce(&Path, u64) -> Result<()>) -> Result<()> {
        let w = self.writer_now();
        if w.closed {
            return Ok(());
        }
        let mut r = self.shared.recovery.lock().unwrap();
        if r.written == r.point {
            return Ok(());
        }
        write(&self.shared.dir, r.point)?;
        r.written = r.point;
        Ok(())
    }

    /// `write` of the high watermark (capped by the log end) when it differs from the
    /// last one written.
    fn write_high_watermark(
        &self,
        high_watermark: u64,
        write: impl FnOnce(&Path, u64) -> Result<()>,
    ) -> Result<()> {
        let w = self.writer_now();
        if w.closed {
            return Ok(());
        }
        let hw = high_watermark.min(self.log_end_offset());
        // Under the writer's lock: no other write of the file runs meanwhile.
        if self.shared.hw_written.load(Ordering::Acquire) == hw {
            return Ok(());
        }
        write(&self.shared.dir, hw)?;
        self.shared.hw_written.store(hw, Ordering::Release);
        Ok(())
    }
}
