//! One segment: a `.log` file of whole batches plus its sparse indexes, loaded lazily so that
//! opening a log with thousands of segments touches only their names and sizes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::error::{IoContext, Result, StorageError};
use crate::index::{OffsetIndex, TimeIndex};
use crate::open_files::{FileSlot, HoldsFile};
use crate::txn_index::AbortedTxn;

mod aborted;
mod index_state;

pub(crate) use index_state::SegmentIndex;

pub(crate) fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// [`Segment`]'s `interval_fresh` bit for a fresh segment.
const FRESH: u32 = 1 << 31;

pub(crate) struct Segment {
    pub base_offset: u64,
    /// The log's directory, shared by its segments: the files' paths are derived when used
    /// (four paths per segment were a seventh of an idle partition's memory).
    dir: Arc<Path>,
    file: FileSlot,
    /// Bytes of whole batches readers may see; published after the bytes are written.
    /// 32 bits, as the index's positions: `segment.bytes` is a Kafka INT, and a segment is
    /// rolled before it would pass it (one batch larger than that stands alone).
    size: AtomicU32,
    /// Loaded on first use, boxed: an idle segment holds 8 bytes for it, not 96.
    index: RwLock<Option<Box<SegmentIndex>>>,
    /// `index.interval.bytes` (a Kafka INT, needed when the index is rebuilt from the
    /// log) in the low 31 bits, and [`FRESH`]: created empty here and not used since, its
    /// index is empty without reading the files (a new partition's segment costs no index
    /// memory until written or read). One word: every partition holds a segment.
    interval_fresh: AtomicU32,
    /// The `.txnindex` entries, loaded on first use.
    /// A boxed slice: 8 bytes less than a vector in every segment, and aborts are rare.
    aborted: Mutex<Option<Box<[AbortedTxn]>>>,
}

impl HoldsFile for Segment {
    fn slot(&self) -> &FileSlot {
        &self.file
    }
}

/// How a recovery scan ended.
pub(crate) struct ScanOutcome {
    pub valid_bytes: u64,
    pub next_offset: u64,
    pub damage: Option<String>,
    /// `(leader epoch, base offset)` of each valid batch whose epoch differs from the one
    /// before it: the leader epoch checkpoint's entries for what was scanned.
    pub epochs: Vec<(i32, u64)>,
}

impl Segment {
    /// A new, empty segment (an existing file of that name is emptied).
    pub fn create(dir: &Arc<Path>, base_offset: u64) -> Result<Arc<Segment>> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let index_path = dir.join(file_name(base_offset, "index"));
        let time_index_path = dir.join(file_name(base_offset, "timeindex"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .at(&log_path)?;
        // No index files until they hold an entry (`index::write_tail`); an older segment's
        // of the same base must not be taken for this one's.
        for p in [&index_path, &time_index_path] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e).at(p),
                _ => {}
            }
        }
        let seg = Arc::new(Segment {
            base_offset,
            dir: dir.clone(),
            file: FileSlot::default(),
            size: AtomicU32::new(0),
            index: RwLock::new(None),
            interval_fresh: AtomicU32::new(4096 | FRESH),
            aborted: Mutex::new(Some(Box::default())),
        });
        let _ = std::fs::remove_file(seg.txn_index_path());
        FileSlot::keep(&seg, Arc::new(file));
        Ok(seg)
    }

    /// An existing segment, known by name and size only until first used.
    pub fn existing(dir: &Arc<Path>, base_offset: u64, size: u64) -> Segment {
        Segment {
            base_offset,
            dir: dir.clone(),
            file: FileSlot::default(),
            size: AtomicU32::new(u32::try_from(size).unwrap_or_else(|_| {
                tracing::warn!(dir = %dir.display(), base_offset, size,
                    "a segment file larger than 4 GiB: only its first 4 GiB are read");
                u32::MAX
            })),
            index: RwLock::new(None),
            interval_fresh: AtomicU32::new(4096),
            aborted: Mutex::new(None),
        }
    }

    pub fn set_interval(&self, interval: u64) {
        let interval = interval.min(!FRESH as u64) as u32;
        let _ = self
            .interval_fresh
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v & FRESH | interval)
            });
    }

    fn interval(&self) -> u64 {
        (self.interval_fresh.load(Ordering::Acquire) & !FRESH) as u64
    }

    fn is_fresh(&self) -> bool {
        self.interval_fresh.load(Ordering::Acquire) & FRESH != 0
    }

    /// No longer fresh; whether it was.
    fn unfresh(&self) -> bool {
        self.interval_fresh.fetch_and(!FRESH, Ordering::AcqRel) & FRESH != 0
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire) as u64
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "log"))
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "index"))
    }

    fn time_index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "timeindex"))
    }

    fn txn_index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "txnindex"))
    }

    /// The log file, opened if it is not (it may have been closed for the open files
    /// budget, [`crate::open_files`]).
    pub fn file(self: &Arc<Self>) -> Result<Arc<File>> {
        FileSlot::get(self, || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.log_path())
        })
        .map_err(|e| self.io_err(e))
    }

    pub(crate) fn io_err(&self, e: io::Error) -> StorageError {
        StorageError::Io {
            path: self.log_path().display().to_string(),
            source: e,
        }
    }

    pub fn read_header(self: &Arc<Self>, position: u64) -> Result<Option<BatchHeader>> {
        let mut buf = [0u8; HEADER_LEN];
        let file = self.file()?;
        match file.read_exact_at(&mut buf, position) {
            Ok(()) => Ok(BatchHeader::parse(&buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Runs `f` on the loaded index, loading it first if needed.
    pub fn with_index<R>(self: &Arc<Self>, f: impl FnOnce(&SegmentIndex) -> R) -> Result<R> {
        {
            let guard = self.index.read().unwrap();
            if let Some(idx) = guard.as_ref() {
                return Ok(f(idx));
            }
            // Read, not kept: only a change makes it worth holding.
            if self.is_fresh() {
                return Ok(f(&SegmentIndex::empty(self.base_offset)));
            }
        }
        self.with_index_mut(|idx| f(idx))
    }

    pub fn with_index_mut<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut SegmentIndex) -> R,
    ) -> Result<R> {
        let mut guard = self.index.write().unwrap();
        let idx = match guard.take() {
            Some(idx) => idx,
            None if self.unfresh() => Box::new(SegmentIndex::empty(self.base_offset)),
            None => Box::new(self.load_index()?),
        };
        Ok(f(guard.insert(idx)))
    }

    pub fn is_index_loaded(&self) -> bool {
        self.index.read().unwrap().is_some()
    }

    /// Loads the index files, or rebuilds them from the log when missing or inconsistent;
    /// then scans the batches after the last entry to learn the end offset and timestamps.
    fn load_index(self: &Arc<Self>) -> Result<SegmentIndex> {
        let size = self.size();
        let mut idx = SegmentIndex::empty(self.base_offset);
        // Known entries are kept; the scan after the last one only measures (no new entries),
        // while a rebuild from scratch adds entries exactly as the writer did.
        let mut interval = self.interval();
        let mut from = 0;
        if let (Some(offsets), Some(times)) = (
            OffsetIndex::load(&self.index_path(), size),
            TimeIndex::load(&self.time_index_path()),
        ) {
            if let Some((_, pos)) = offsets.last() {
                from = pos as u64;
                interval = u64::MAX;
            }
            if let Some((ts, rel)) = times.last() {
                idx.max_timestamp = ts;
                idx.offset_of_max_timestamp = self.base_offset + rel as u64;
            }
            idx.offsets = offsets;
            idx.times = times;
        } else if size > 0 {
            tracing::info!(segment = %self.log_path().display(), "rebuilding index");
        }
        let mut pos = from;
        while pos < size {
            let Some(h) = self.read_header(pos)? else {
                break;
            };
            let total = h.total_size() as u64;
            if h.batch_length < (HEADER_LEN - 12) as i32 || pos + total > size {
                tracing::warn!(segment = %self.log_path().display(), position = pos,
                    "bad batch framing in a flushed segment; ignoring its tail");
                self.size.store(pos as u32, Ordering::Release);
                break;
            }
            idx.observe(self.base_offset, pos, &h, interval);
            pos += total;
        }
        Ok(idx)
    }

    /// Reads every batch from `from` on, checking framing, CRC and that offsets follow each
    /// other from `expected_offset`; stops at the first damage. Used by recovery.
    pub fn scan_valid(self: &Arc<Self>, from: u64, expected_offset: u64) -> Result<ScanOutcome> {
        let size = self.file()?.metadata().map_err(|e| self.io_err(e))?.len();
        let mut pos = from;
        let mut next = expected_offset;
        let mut buf = Vec::new();
        let mut damage = None;
        let mut epochs: Vec<(i32, u64)> = Vec::new();
        while pos < size {
            let Some(h) = self.read_header(pos)? else {
                damage = Some(format!("torn batch header at position {pos}"));
                break;
            };
            let total = h.total_size() as u64;
            if h.batch_length < (HEADER_LEN - 12) as i32 || pos + total > size {
                damage = Some(format!("torn or oversized batch at position {pos}"));
                break;
            }
            buf.resize(total as usize, 0);
            self.file()?
                .read_exact_at(&mut buf, pos)
                .map_err(|e| self.io_err(e))?;
            match batch::validate_stored(&buf) {
                // Compaction leaves gaps: offsets only have to move forward.
                Ok(h) if h.base_offset as u64 >= next => {}
                Ok(h) => {
                    damage = Some(format!(
                        "batch at position {pos} has base offset {}, below {next}",
                        h.base_offset
                    ));
                    break;
                }
                Err(e) => {
                    damage = Some(format!("batch at position {pos}: {e}"));
                    break;
                }
            }
            if epochs.last().map(|e| e.0) != Some(h.partition_leader_epoch) {
                epochs.push((h.partition_leader_epoch, h.base_offset as u64));
            }
            next = h.last_offset() as u64 + 1;
            pos += total;
        }
        Ok(ScanOutcome {
            valid_bytes: pos,
            next_offset: next,
            damage,
            epochs,
        })
    }

    /// Cuts the segment at `position`, where the batch starting at `cut_offset` began, and
    /// brings the index state back to what the writer had before that batch.
    pub fn truncate_to(self: &Arc<Self>, position: u64, cut_offset: u64) -> Result<()> {
        let file = self.file()?;
        file.set_len(position).map_err(|e| self.io_err(e))?;
        self.size.store(position as u32, Ordering::Release);
        let mut guard = self.index.write().unwrap();
        let mut idx = SegmentIndex::empty(self.base_offset);
        if let Some(old) = guard.take() {
            let old = *old;
            idx.offsets = old.offsets;
            idx.times = old.times;
        }
        let cut_rel = (cut_offset - self.base_offset).min(u32::MAX as u64) as u32;
        idx.offsets.truncate_to(cut_rel);
        idx.times.truncate_to(cut_rel);
        if let Some((ts, rel)) = idx.times.last() {
            idx.max_timestamp = ts;
            idx.offset_of_max_timestamp = self.base_offset + rel as u64;
        }
        let mut pos = idx.offsets.last().map(|(_, p)| p as u64).unwrap_or(0);
        while pos < position {
            let Some(h) = self.read_header(pos)? else {
                break;
            };
            idx.observe(self.base_offset, pos, &h, u64::MAX);
            pos += h.total_size() as u64;
        }
        idx.offsets
            .persist(&self.index_path())
            .at(&self.index_path())?;
        idx.times
            .persist(&self.time_index_path())
            .at(&self.time_index_path())?;
        *guard = Some(Box::new(idx));
        self.unfresh();
        drop(guard);
        self.truncate_aborted(cut_offset)
    }

    /// Appends already-validated batches (`headers[i].1` at `positions[i]` within `data`).
    pub fn append(
        self: &Arc<Self>,
        data: &[u8],
        headers: &[(usize, BatchHeader)],
        interval: u64,
    ) -> Result<()> {
        let file = self.file()?;
        let start = self.size();
        let end = start + data.len() as u64;
        if end > u32::MAX as u64 {
            // Unreachable with segment.bytes a Kafka INT: the log rolls before.
            return Err(self.io_err(io::Error::other(
                "a segment cannot grow past 4 GiB (segment.bytes is at most 2147483647)",
            )));
        }
        if let Err(e) = file.write_all_at(data, start) {
            // Leave no partial batch behind for readers or recovery.
            let _ = file.set_len(start);
            return Err(self.io_err(e));
        }
        self.with_index_mut(|idx| {
            for (at, h) in headers {
                idx.observe(self.base_offset, start + *at as u64, h, interval);
            }
        })?;
        self.size.store(end as u32, Ordering::Release);
        Ok(())
    }

    /// The first batch whose last offset is >= `offset`, scanning from the index floor.
    pub fn find_batch(
        self: &Arc<Self>,
        offset: u64,
        limit: u64,
    ) -> Result<Option<(u64, BatchHeader)>> {
        let rel = offset.saturating_sub(self.base_offset).min(u32::MAX as u64) as u32;
        let mut pos = self.with_index(|idx| idx.offsets.lookup(rel))? as u64;
        while pos < limit {
            let Some(h) = self.read_header(pos)? else {
                return Ok(None);
            };
            if h.last_offset() as u64 >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    /// End position of the whole batches that start at `start` and end by `limit`.
    /// Where the whole batches from `start` end, within `limit` bytes and below offset
    /// `upper`: a batch the writer has put in the file but not yet published (the log end
    /// offset moves after the bytes) is not returned.
    pub fn whole_batches_end(self: &Arc<Self>, start: u64, limit: u64, upper: u64) -> Result<u64> {
        let floor = self.with_index(|idx| {
            idx.offsets
                .floor_position(limit.min(u32::MAX as u64) as u32)
        })? as u64;
        let mut pos = floor.max(start);
        while pos < limit {
            let Some(h) = self.read_header(pos)? else {
                break;
            };
            let end = pos + h.total_size() as u64;
            if end > limit || h.last_offset() as u64 >= upper {
                break;
            }
            pos = end;
        }
        Ok(pos)
    }

    pub fn next_offset(self: &Arc<Self>) -> Result<u64> {
        self.with_index(|idx| idx.next_offset)
    }

    /// [`Segment::next_offset`] without keeping the index it loads: a start opens every
    /// log, and an active segment's index is loaded again when it is written or read (an
    /// idle partition kept ~110 bytes more after a restart than after its creation).
    pub fn next_offset_unkept(self: &Arc<Self>) -> Result<u64> {
        if let Some(idx) = self.index.read().unwrap().as_ref() {
            return Ok(idx.next_offset);
        }
        if self.is_fresh() {
            return Ok(self.base_offset);
        }
        Ok(self.load_index()?.next_offset)
    }

    pub fn max_timestamp(self: &Arc<Self>) -> Result<(i64, u64)> {
        self.with_index(|idx| (idx.max_timestamp, idx.offset_of_max_timestamp))
    }

    /// Last-modified time, for retention of segments whose batches carry no timestamps.
    pub fn modified_ms(&self) -> i64 {
        std::fs::metadata(self.log_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    pub fn index_entries(self: &Arc<Self>) -> Result<usize> {
        self.with_index(|idx| idx.offsets.len())
    }

    /// Writes index entries that exist only in memory.
    pub fn persist_indexes(&self) -> Result<()> {
        let mut guard = self.index.write().unwrap();
        if let Some(idx) = guard.as_mut() {
            idx.offsets
                .persist(&self.index_path())
                .at(&self.index_path())?;
            idx.times
                .persist(&self.time_index_path())
                .at(&self.time_index_path())?;
        }
        Ok(())
    }

    /// fsync of the log and index files.
    pub fn sync(self: &Arc<Self>) -> Result<()> {
        self.persist_indexes()?;
        self.file()?.sync_data().map_err(|e| self.io_err(e))?;
        for p in [&self.index_path(), &self.time_index_path()] {
            if let Ok(f) = File::open(p) {
                f.sync_data().at(p)?;
            }
        }
        self.sync_aborted()
    }

    /// Opens the file and loads the index and the aborted transactions, so that this segment
    /// keeps reading its own bytes after the cleaner replaced its files on disk.
    pub fn pin(self: &Arc<Self>) -> Result<()> {
        self.file.pin();
        self.file()?;
        self.with_index(|_| ())?;
        self.with_aborted(|_| ())
    }

    /// Renames the segment's files to `<name>.deleted` (a cheap step under the writer's
    /// lock); returns the new paths, for the caller to unlink later.
    pub fn mark_deleted(&self) -> Result<Vec<PathBuf>> {
        self.file.retire();
        let mut out = Vec::new();
        for p in [
            &self.log_path(),
            &self.index_path(),
            &self.time_index_path(),
            &self.txn_index_path(),
        ] {
            let mut to = p.as_os_str().to_owned();
            to.push(".deleted");
            let to = PathBuf::from(to);
            match std::fs::rename(p, &to) {
                Ok(()) => out.push(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(p),
            }
        }
        Ok(out)
    }

    /// Removes the segment's files. Readers holding the file keep reading it (Unix).
    pub fn delete_files(&self) -> Result<()> {
        self.file.retire();
        for p in [
            &self.log_path(),
            &self.index_path(),
            &self.time_index_path(),
            &self.txn_index_path(),
        ] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(p),
            }
        }
        Ok(())
    }

    /// Replaces the index state after a recovery scan rebuilt it from `valid_bytes`.
    pub fn reset_after_recovery(self: &Arc<Self>, valid_bytes: u64) -> Result<()> {
        let interval = self.interval();
        let file = self.file()?;
        let len = file.metadata().map_err(|e| self.io_err(e))?.len();
        if len != valid_bytes {
            file.set_len(valid_bytes).map_err(|e| self.io_err(e))?;
        }
        self.size.store(valid_bytes as u32, Ordering::Release);
        let mut idx = SegmentIndex::empty(self.base_offset);
        let mut pos = 0;
        while pos < valid_bytes {
            let Some(h) = self.read_header(pos)? else {
                break;
            };
            idx.observe(self.base_offset, pos, &h, interval);
            pos += h.total_size() as u64;
        }
        // Rewrite both files whole: the old ones may hold entries past the cut.
        let _ = std::fs::remove_file(self.index_path());
        let _ = std::fs::remove_file(self.time_index_path());
        idx.offsets
            .persist(&self.index_path())
            .at(&self.index_path())?;
        idx.times
            .persist(&self.time_index_path())
            .at(&self.time_index_path())?;
        let next = idx.next_offset;
        *self.index.write().unwrap() = Some(Box::new(idx));
        self.unfresh();
        self.truncate_aborted(next)
    }
}
