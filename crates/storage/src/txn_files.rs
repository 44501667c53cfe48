//! The log's transaction side files: the aborted-transaction index (`.txnindex`, one per
//! segment, holding the transactions whose abort marker lies in that segment) and the
//! producer-state snapshots (`<offset>.snapshot`). The bytes of a snapshot belong to the
//! broker; the log only keeps them next to the segments and drops those a truncation
//! makes stale.

use std::fs;
use std::io;

use crate::error::{IoContext, Result};
use crate::log::Log;
use crate::segment::file_name;
use crate::txn_index::{AbortedTxn, overlapping};

const SNAPSHOT: &str = "snapshot";
/// Snapshots kept: the newest, and one before it in case the newest is torn.
const SNAPSHOTS_KEPT: usize = 2;

impl Log {
    /// Records an aborted transaction once its abort marker (at `t.last_offset`) is in the log.
    /// Replaying a marker that is already indexed changes nothing.
    pub fn add_aborted_txn(&self, t: AbortedTxn) -> Result<()> {
        match self.segment_for(t.last_offset) {
            Some(seg) => seg.add_aborted(t),
            None => Ok(()),
        }
    }

    /// The aborted transactions a read_committed fetch of [`from`, `upper`) must be told:
    /// those ending at or after `from` and starting before `upper`. Only segments from the
    /// one holding `from` can have them, since an entry sits with its marker.
    pub fn aborted_txns(&self, from: u64, upper: u64) -> Result<Vec<AbortedTxn>> {
        let segments: Vec<_> = {
            let first = self.segment_for(from).map(|s| s.base_offset).unwrap_or(0);
            let segs = self.shared.segments.read().unwrap();
            segs.from(first).to_vec()
        };
        let mut out = Vec::new();
        for seg in segments {
            let entries = seg.aborted()?;
            out.extend(overlapping(&entries, from, upper));
            // An abort written when no open transaction had started below `upper` means
            // every transaction starting below it ended before: later segments add nothing.
            if entries.iter().any(|t| t.last_stable_offset >= upper) {
                break;
            }
        }
        Ok(out)
    }

    fn snapshots(&self) -> Result<Vec<u64>> {
        let dir = self.dir();
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).at(dir)? {
            let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".snapshot")
                && stem.len() == 20
                && let Ok(offset) = stem.parse::<u64>()
            {
                found.push(offset);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// Saves a producer-state snapshot taken when the log ended at `offset`, and keeps only
    /// the newest few.
    pub fn write_producer_snapshot(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let dir = self.dir();
        let path = dir.join(file_name(offset, SNAPSHOT));
        let tmp = path.with_extension("snapshot.tmp");
        fs::write(&tmp, bytes).at(&tmp)?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        let all = self.snapshots()?;
        for old in &all[..all.len().saturating_sub(SNAPSHOTS_KEPT)] {
            remove(&dir.join(file_name(*old, SNAPSHOT)))?;
        }
        Ok(())
    }

    /// [`Log::write_producer_snapshot`] left to [`crate::settle`] (a clean shutdown of many
    /// logs); none when the newest snapshot was taken at `offset` already.
    pub fn queue_producer_snapshot(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        if self.snapshots()?.last() == Some(&offset) {
            return Ok(());
        }
        crate::durable::write_later(self.dir(), &file_name(offset, SNAPSHOT), bytes)
    }

    /// The newest snapshots first, each with the offset it was taken at; only those the log
    /// still reaches (at or below its end).
    pub fn producer_snapshots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let end = self.log_end_offset();
        let mut out = Vec::new();
        for offset in self.snapshots()?.into_iter().rev().filter(|o| *o <= end) {
            let path = self.dir().join(file_name(offset, SNAPSHOT));
            match fs::read(&path) {
                Ok(bytes) => out.push((offset, bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&path),
            }
        }
        Ok(out)
    }

    /// A truncation to `end` makes later snapshots describe records that are gone.
    pub(crate) fn delete_snapshots_after(&self, end: u64) -> Result<()> {
        for offset in self.snapshots()?.into_iter().filter(|o| *o > end) {
            remove(&self.dir().join(file_name(offset, SNAPSHOT)))?;
        }
        Ok(())
    }
}

fn remove(path: &std::path::Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}
