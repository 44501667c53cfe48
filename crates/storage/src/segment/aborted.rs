//! A segment's aborted-transaction index (`.txnindex`): the transactions whose abort marker
//! is in the segment, loaded on first use and kept whole-entry aligned on disk.

use std::fs::{File, OpenOptions};
use std::io;

use super::Segment;
use crate::error::{IoContext, Result};
use crate::txn_index::AbortedTxn;

impl Segment {
    pub(super) fn with_aborted<R>(&self, f: impl FnOnce(&mut Vec<AbortedTxn>) -> R) -> Result<R> {
        let mut guard = self.aborted.lock().unwrap();
        if guard.is_none() {
            let bytes = match std::fs::read(self.txn_index_path()) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).at(&self.txn_index_path()),
            };
            let entries = AbortedTxn::decode_all(&bytes);
            if entries.len() * crate::txn_index::ENTRY != bytes.len() {
                // A torn or damaged entry: rewrite whole entries only, or the next append
                // would land out of alignment and garble every later entry.
                tracing::warn!(file = %self.txn_index_path().display(), "dropping a damaged tail of the aborted-transaction index");
                self.persist_aborted(&entries)?;
            }
            *guard = Some(entries.into_boxed_slice());
        }
        let mut entries = guard.take().unwrap_or_default().into_vec();
        let r = f(&mut entries);
        *guard = Some(entries.into_boxed_slice());
        Ok(r)
    }

    /// The aborted transactions whose abort marker is in this segment.
    pub fn aborted(&self) -> Result<Vec<AbortedTxn>> {
        self.with_aborted(|a| a.clone())
    }

    /// Records an aborted transaction whose marker is in this segment. Entries come in marker
    /// order, so one at or before the last is a replay of what is there already.
    pub fn add_aborted(&self, t: AbortedTxn) -> Result<()> {
        let fresh = self.with_aborted(|a| {
            let fresh = a.last().is_none_or(|l| l.last_offset < t.last_offset);
            if fresh {
                a.push(t);
            }
            fresh
        })?;
        if fresh {
            let mut bytes = Vec::with_capacity(34);
            t.encode(&mut bytes);
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.txn_index_path())
                .at(&self.txn_index_path())?;
            io::Write::write_all(&mut f, &bytes).at(&self.txn_index_path())?;
        }
        Ok(())
    }

    /// Forgets the aborted transactions whose marker is at or after `offset`.
    pub fn truncate_aborted(&self, offset: u64) -> Result<()> {
        let kept = self.with_aborted(|a| {
            let before = a.len();
            a.retain(|t| t.last_offset < offset);
            (a.len() != before).then(|| a.clone())
        })?;
        if let Some(kept) = kept {
            self.persist_aborted(&kept)?;
        }
        Ok(())
    }

    /// Replaces the `.txnindex` whole, atomically: a crash leaves the old file or the new,
    /// never an empty one (the entries may lie below the recovery point, never replayed).
    fn persist_aborted(&self, entries: &[AbortedTxn]) -> Result<()> {
        let mut bytes = Vec::with_capacity(entries.len() * crate::txn_index::ENTRY);
        for t in entries {
            t.encode(&mut bytes);
        }
        let tmp = self.txn_index_path().with_extension("txnindex.tmp");
        let mut f = File::create(&tmp).at(&tmp)?;
        io::Write::write_all(&mut f, &bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, self.txn_index_path()).at(&self.txn_index_path())
    }

    pub(super) fn sync_aborted(&self) -> Result<()> {
        match File::open(self.txn_index_path()) {
            Ok(f) => f.sync_all().at(&self.txn_index_path()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(&self.txn_index_path()),
        }
    }
}
