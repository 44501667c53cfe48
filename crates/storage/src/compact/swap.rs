//! Swapping a cleaned segment in for the segments it replaces, crash-safe as Kafka's
//! `.cleaned` / `.swap` files are:
//!
//! 1. the new segment is written to `<base>.log.cleaned` (its aborted-transaction index to
//!    `<base>.txnindex.cleaned`, always, even empty) and fsynced;
//! 2. the index is renamed to `.txnindex.swap`, then the log to `.log.swap`: from here on
//!    the swap is decided, and recovery finishes it;
//! 3. the old segments' files are deleted;
//! 4. `.txnindex.swap` and `.log.swap` lose their suffix; the offset and time indexes are
//!    rebuilt from the new log.
//!
//! On open, `.cleaned` files are deleted (the old segments are intact). A `.log.swap` means
//! step 2 was reached: every segment within its offsets is deleted and the swap finished.
//! Other `.swap` files belong to a swap that was not decided and are deleted.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{BatchHeader, HEADER_LEN};
use crate::checkpoint::sync_dir;
use crate::error::{IoContext, Result};
use crate::log::Log;
use crate::segment::{Segment, file_name};
use crate::txn_index::AbortedTxn;

/// A cleaned segment being written.
pub(crate) struct Cleaned {
    dir: PathBuf,
    base: u64,
    log: PathBuf,
    txn: PathBuf,
    file: File,
}

fn named(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(file_name(base, ext))
}

fn remove_if_there(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(p),
    }
}

impl Cleaned {
    pub fn create(dir: &Path, base: u64) -> Result<Cleaned> {
        let log = named(dir, base, "log.cleaned");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log)
            .at(&log)?;
        Ok(Cleaned {
            dir: dir.to_path_buf(),
            base,
            txn: named(dir, base, "txnindex.cleaned"),
            log,
            file,
        })
    }

    pub fn file(&self) -> Result<File> {
        self.file.try_clone().at(&self.log)
    }

    pub fn path(&self) -> &Path {
        &self.log
    }

    pub fn discard(self) {
        let _ = fs::remove_file(&self.log);
        let _ = fs::remove_file(&self.txn);
    }

    /// Swaps the cleaned segment in for `group`. False (and nothing changed) when the log
    /// was closed or `group` is no longer what the log holds.
    pub fn commit(self, log: &Log, group: &[Arc<Segment>], entries: &[AbortedTxn]) -> Result<bool> {
        self.file.sync_all().at(&self.log)?;
        let size = self.file.metadata().at(&self.log)?.len();
        let mut bytes = Vec::with_capacity(entries.len() * crate::txn_index::ENTRY);
        for t in entries {
            t.encode(&mut bytes);
        }
        let mut f = File::create(&self.txn).at(&self.txn)?;
        f.write_all(&bytes).at(&self.txn)?;
        f.sync_all().at(&self.txn)?;
        // Readers that hold an old segment must never open the new files by their names.
        for s in group {
            s.pin()?;
        }
        let dir = &self.dir;
        let base = self.base;
        let swapped = log.under_writer(|| -> Result<Option<Arc<Segment>>> {
            if !log.still_has(group) {
                return Ok(None);
            }
            let (log_swap, txn_swap) = (
                named(dir, base, "log.swap"),
                named(dir, base, "txnindex.swap"),
            );
            fs::rename(&self.txn, &txn_swap).at(&txn_swap)?;
            #[cfg(test)]
            crash_point::hit(1)?;
            fs::rename(&self.log, &log_swap).at(&log_swap)?;
            sync_dir(dir)?;
            #[cfg(test)]
            crash_point::hit(2)?;
            for s in group {
                s.delete_files()?;
            }
            #[cfg(test)]
            crash_point::hit(3)?;
            let txn_final = named(dir, base, "txnindex");
            fs::rename(&txn_swap, &txn_final).at(&txn_final)?;
            #[cfg(test)]
            crash_point::hit(4)?;
            let log_final = named(dir, base, "log");
            fs::rename(&log_swap, &log_final).at(&log_final)?;
            sync_dir(dir)?;
            let seg = Arc::new(Segment::existing(log.shared_dir(), base, size));
            seg.set_interval(log.config().index_interval_bytes);
            log.replace_segments(group, seg.clone());
            Ok(Some(seg))
        });
        match swapped {
            Some(Ok(Some(seg))) => {
                seg.with_index(|_| ())?;
                seg.persist_indexes()?;
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            _ => {
                self.discard();
                Ok(false)
            }
        }
    }
}

/// The offset after the last batch of a segment file.
fn next_offset_of(path: &Path, base: u64) -> Result<u64> {
    let file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    let mut pos = 0;
    let mut next = base;
    let mut buf = [0u8; HEADER_LEN];
    while pos + HEADER_LEN as u64 <= size {
        file.read_exact_at(&mut buf, pos).at(path)?;
        let Some(h) = BatchHeader::parse(&buf) else {
            break;
        };
        if h.batch_length < (HEADER_LEN - 12) as i32 {
            break;
        }
        next = next.max(h.last_offset() as u64 + 1);
        pos += h.total_size() as u64;
    }
    Ok(next)
}

fn base_of(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Finishes or undoes what a crash left of a cleaning (see the module's comment).
pub(crate) fn recover_swaps(dir: &Path) -> Result<()> {
    let mut log_swaps = BTreeSet::new();
    let mut logs = BTreeSet::new();
    let mut other = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cleaned") {
            remove_if_there(&entry.path())?;
        } else if let Some(base) = base_of(&name, ".log.swap") {
            log_swaps.insert(base);
        } else if name.ends_with(".swap") {
            other.push(entry.path());
        } else if let Some(base) = base_of(&name, ".log") {
            logs.insert(base);
        }
    }
    if log_swaps.is_empty() && other.is_empty() {
        return Ok(());
    }
    for &base in &log_swaps {
        let swap = named(dir, base, "log.swap");
        let next = next_offset_of(&swap, base)?.max(base + 1);
        let txn_swap = named(dir, base, "txnindex.swap");
        let txn_pending = txn_swap.exists();
        for &b in logs.range(base..next) {
            for ext in ["log", "index", "timeindex"] {
                remove_if_there(&named(dir, b, ext))?;
            }
            // Without a pending `.txnindex.swap`, the base's `.txnindex` is the new one.
            if b != base || txn_pending {
                remove_if_there(&named(dir, b, "txnindex"))?;
            }
        }
        if txn_pending {
            fs::rename(&txn_swap, named(dir, base, "txnindex")).at(&txn_swap)?;
        }
        fs::rename(&swap, named(dir, base, "log")).at(&swap)?;
        tracing::info!(dir = %dir.display(), base, "finished a cleaner's swap interrupted by a crash");
    }
    for p in other {
        if p.exists() {
            remove_if_there(&p)?;
        }
    }
    sync_dir(dir)
}

/// Test-only failure injection: a test arms one step of the swap to fail once with an I/O
/// error, standing in for a crash at that point.
#[cfg(test)]
pub(crate) mod crash_point {
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<u32> = const { Cell::new(0) };
    }

    pub fn arm(step: u32) {
        ARMED.with(|a| a.set(step));
    }

    pub fn hit(step: u32) -> crate::error::Result<()> {
        if ARMED.with(|a| a.get()) == step {
            ARMED.with(|a| a.set(0));
            return Err(crate::error::StorageError::Io {
                path: format!("crash point {step}"),
                source: std::io::Error::other("injected crash"),
            });
        }
        Ok(())
    }
}
