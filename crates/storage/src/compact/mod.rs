//! Log compaction (`cleanup.policy=compact`), as Kafka's log cleaner does it.
//!
//! A pass builds a map of the latest offset of every key in the dirty part of the log (from
//! the cleaner checkpoint to the first uncleanable offset), then rewrites every segment below
//! that offset, in groups of up to `segment.bytes`, keeping only the last record of each key.
//! Offsets never change: a cleaned log has gaps. The active segment, and anything at or past
//! the last stable offset, is never touched.
//!
//! What else goes, and when:
//! - records of aborted transactions, at once;
//! - records without a key (a compacted topic refuses them, but older data may have them);
//! - tombstones (null values) once their batch's delete horizon (KIP-534: set to now +
//!   `delete.retention.ms` by the pass that first keeps them) has passed;
//! - transaction markers once their horizon has passed and nothing of their transaction is
//!   left before them (else replaying the log would see a transaction that never ends).
//!
//! A batch left without records is dropped, except the last batch of a producer (so its
//! sequence survives a rebuild of producer state from the log) and the last batch of each
//! group (so a cleaned segment still ends where the next one starts); those stay as empty
//! batches, as Kafka's.
//!
//! Each group is written to `<base>.log.cleaned` and swapped in (see `swap.rs`) so that a
//! crash at any point leaves either the old segments or the new one.

mod filter;
mod swap;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::batch::{BatchHeader, HEADER_LEN};
use crate::checkpoint;
use crate::error::{IoContext, Result};
use crate::log::Log;
use crate::segment::Segment;
use crate::txn_index::AbortedTxn;

pub(crate) use swap::recover_swaps;

/// The cleaner's progress: offsets below it were cleaned (Kafka's cleaner-offset-checkpoint,
/// one per partition here).
pub(crate) const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";

/// Settings of one cleaning pass.
#[derive(Debug, Clone, Copy)]
pub struct CleanOptions {
    pub now_ms: i64,
    /// `delete.retention.ms`: how long tombstones and markers stay after the first cleaning.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: segments with records younger than this stay dirty.
    pub min_compaction_lag_ms: i64,
    /// Memory for the key map (`log.cleaner.dedupe.buffer.size` per cleaner thread).
    pub map_bytes: usize,
    /// The first offset the cleaner may not touch: the last stable offset.
    pub upper: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub first_dirty: u64,
    /// Offsets below this are now clean.
    pub end: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_removed: u64,
    pub segments_before: usize,
    pub segments_after: usize,
}

/// How much of a log the cleaner could work on now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cleanable {
    pub first_dirty: u64,
    pub first_uncleanable: u64,
    pub clean_bytes: u64,
    pub dirty_bytes: u64,
    /// Timestamp of the first record of the dirty part, for `max.compaction.lag.ms`.
    pub first_dirty_timestamp: Option<i64>,
    /// The earliest delete horizon of tombstones or markers the last pass kept.
    pub next_horizon: Option<i64>,
}

impl Cleanable {
    /// `min.cleanable.dirty.ratio` compares with this.
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// A compacted topic's rule for what producers send: every record has a key. The whole
/// produce is refused with each keyless record named, as Kafka's LogValidator does.
pub(crate) fn check_keys(records: &[u8], partition: &str) -> Result<()> {
    let mut errors = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let (h, size) = crate::batch::check_framing(&records[pos..])?;
        let bytes = &records[pos..pos + size];
        let section = filter::records_section(&h, bytes)?;
        for (i, r) in filter::parse(&h, &section)?.iter().enumerate() {
            if r.key.is_none() {
                errors.push((
                    i as i32,
                    format!("Compacted topic cannot accept message without key in topic partition {partition}."),
                ));
            }
        }
        pos += size;
    }
    if errors.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = errors
        .iter()
        .take(3)
        .map(|(i, m)| format!("record {i}: {m}"))
        .collect();
    Err(crate::StorageError::RecordErrors {
        message: format!(
            "One or more records have been rejected due to {} record errors in total, and only showing the first three errors at most: [{}]",
            errors.len(),
            shown.join(", ")
        ),
        errors,
    })
}

/// A truncation below the cleaner checkpoint makes what is rewritten there dirty again.
pub(crate) fn truncate_checkpoint(dir: &std::path::Path, end: u64) -> Result<()> {
    match checkpoint::read_offset(dir, CLEANER_CHECKPOINT) {
        Some(o) if o > end => checkpoint::write_offset(dir, CLEANER_CHECKPOINT, end),
        _ => Ok(()),
    }
}

/// A partition directory's clean and dirty bytes as the files say, without opening the log
/// (read-only: safe beside a running broker): segments ending at or below the cleaner
/// checkpoint are clean, the others but the active (last) one dirty. `None` when `dir`
/// holds no segment. What `strom topics describe --log-dir` shows.
pub fn dirty_bytes_on_disk(dir: &std::path::Path) -> Option<(u64, u64)> {
    let mut segments: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".log")?;
            let base = (stem.len() == 20).then(|| stem.parse::<u64>().ok())??;
            Some((base, e.metadata().ok()?.len()))
        })
        .collect();
    segments.sort_unstable();
    let first_dirty = checkpoint::read_offset(dir, CLEANER_CHECKPOINT).unwrap_or(0);
    let (mut clean, mut dirty) = (0, 0);
    for pair in segments.windows(2) {
        if pair[1].0 <= first_dirty {
            clean += pair[0].1;
        } else {
            dirty += pair[0].1;
        }
    }
    (!segments.is_empty()).then_some((clean, dirty))
}

/// Memory one key of the map costs, beyond its bytes (hash table slot, box, offset).
const MAP_ENTRY_OVERHEAD: usize = 48;

impl Log {
    /// The cleaner checkpoint, kept within the log.
    pub fn first_dirty_offset(&self) -> u64 {
        // Offsets below the log start are gone whatever the checkpoint says.
        let saved = checkpoint::read_offset(self.dir(), CLEANER_CHECKPOINT).unwrap_or(0);
        saved
            .max(self.log_start_offset())
            .min(self.log_end_offset())
    }

    /// The clean and dirty parts of the log; the dirty part ends at the first segment that
    /// is active, reaches `upper`, or (with `min_lag_ms`) holds records younger than that.
    pub fn cleanable(&self, upper: u64, now_ms: i64, min_lag_ms: i64) -> Result<Cleanable> {
        let first_dirty = self.first_dirty_offset();
        let segs = self.all_segments();
        let mut out = Cleanable {
            first_dirty,
            first_uncleanable: first_dirty,
            next_horizon: Some(self.shared.cleaner_horizon.load(Ordering::Acquire))
                .filter(|h| *h != i64::MIN),
            ..Default::default()
        };
        for pair in segs.windows(2) {
            let (s, next_base) = (&pair[0], pair[1].base_offset);
            if next_base <= first_dirty {
                out.clean_bytes += s.size();
                continue;
            }
            if next_base > upper {
                break;
            }
            if min_lag_ms > 0 {
                let (max_ts, _) = s.max_timestamp()?;
                if max_ts > now_ms.saturating_sub(min_lag_ms) {
                    break;
                }
            }
            if out.first_dirty_timestamp.is_none()
                && let Some(h) = s.read_header(0)?
            {
                out.first_dirty_timestamp = Some(h.base_timestamp.min(h.max_timestamp));
            }
            out.dirty_bytes += s.size();
            out.first_uncleanable = next_base;
        }
        Ok(out)
    }

    /// Runs one cleaning pass. `producer_last` maps each producer id to the last offset of
    /// its last data batch (that batch is kept, if only as an empty batch); `throttle` is
    /// told the bytes read after every batch and may sleep. `None` when nothing is dirty.
    pub fn clean(
        &self,
        opts: &CleanOptions,
        producer_last: &HashMap<i64, u64>,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<Option<CleanStats>> {
        let truncations = self.truncations();
        let c = self.cleanable(opts.upper, opts.now_ms, opts.min_compaction_lag_ms)?;
        let horizon_due = c.next_horizon.is_some_and(|t| opts.now_ms > t);
        if c.first_uncleanable <= c.first_dirty && !horizon_due {
            return Ok(None);
        }
        let segs = self.all_segments();
        let mut stats = CleanStats {
            first_dirty: c.first_dirty,
            segments_before: segs.len(),
            ..Default::default()
        };
        let aborted = self.all_aborted(&segs)?;

        // The key map over the dirty part. A map that fills up ends the pass early: keys
        // already in it point at records past the new end, which this pass leaves alone.
        let mut map: HashMap<Box<[u8]>, u64> = HashMap::new();
        let mut map_mem = 0usize;
        let mut end = c.first_dirty;
        'segments: for pair in segs.windows(2) {
            let (s, next_base) = (&pair[0], pair[1].base_offset);
            if next_base <= c.first_dirty {
                continue;
            }
            if next_base > c.first_uncleanable {
                break;
            }
            let mut full = false;
            each_batch(s, &mut |h, bytes| {
                throttle(bytes.len() as u64);
                if h.is_control() || is_aborted(&aborted, h) {
                    return Ok(true);
                }
                let section = filter::records_section(h, bytes)?;
                for r in filter::parse(h, &section)? {
                    if let Some(k) = r.key {
                        match map.get_mut(k) {
                            Some(o) => *o = (*o).max(r.offset),
                            None => {
                                map_mem += k.len() + MAP_ENTRY_OVERHEAD;
                                map.insert(k.into(), r.offset);
                            }
                        }
                    }
                }
                full = map_mem > opts.map_bytes;
                Ok(!full)
            })?;
            if full && end > c.first_dirty {
                tracing::info!(dir = %self.dir().display(), keys = map.len(),
                    "the cleaner's key map is full; cleaning up to offset {end} this pass");
                break 'segments;
            }
            end = next_base;
        }

        let mut pass = Pass {
            opts,
            map: &map,
            aborted: &aborted,
            producer_last,
            txn_has_data: HashMap::new(),
            stats: &mut stats,
            min_horizon: None,
        };
        for group in groups(&segs, end, self.config().segment_bytes) {
            if self.is_closed() {
                return Ok(None);
            }
            if !pass.clean_group(self, &group, throttle)? {
                tracing::info!(dir = %self.dir().display(),
                    "the log changed during cleaning (truncation, retention or deletion); the pass stops");
                return Ok(None);
            }
        }
        let min_horizon = pass.min_horizon;
        stats.end = end;
        stats.segments_after = self.segment_count();
        let saved = self.under_writer(|| {
            if self.truncations() != truncations {
                return Ok(false);
            }
            checkpoint::write_offset(self.dir(), CLEANER_CHECKPOINT, end).map(|_| true)
        });
        match saved {
            Some(Ok(true)) => {
                self.shared
                    .cleaner_horizon
                    .store(min_horizon.unwrap_or(i64::MIN), Ordering::Release);
                Ok(Some(stats))
            }
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    fn all_aborted(&self, segs: &[Arc<Segment>]) -> Result<Vec<AbortedTxn>> {
        let mut out = Vec::new();
        for s in segs {
            out.extend(s.aborted()?);
        }
        Ok(out)
    }

    fn truncations(&self) -> u64 {
        self.shared.truncations()
    }
}

fn is_aborted(aborted: &[AbortedTxn], h: &BatchHeader) -> bool {
    h.is_transactional()
        && !h.is_control()
        && aborted.iter().any(|t| {
            t.producer_id == h.producer_id
                && t.first_offset <= h.base_offset as u64
                && h.base_offset as u64 <= t.last_offset
        })
}

/// Consecutive segments below `end`, each group at most `max_bytes` (but at least one
/// segment) and spanning fewer than 2^31 offsets, so that the index's relative offsets fit.
fn groups(segs: &[Arc<Segment>], end: u64, max_bytes: u64) -> Vec<Vec<Arc<Segment>>> {
    let mut out: Vec<Vec<Arc<Segment>>> = Vec::new();
    let mut size = 0;
    for pair in segs.windows(2) {
        let (s, next_base) = (&pair[0], pair[1].base_offset);
        if next_base > end {
            break;
        }
        let fits = out.last().is_some_and(|g| {
            size + s.size() <= max_bytes && next_base - g[0].base_offset <= i32::MAX as u64
        });
        if fits {
            out.last_mut().unwrap().push(s.clone());
            size += s.size();
        } else {
            out.push(vec![s.clone()]);
            size = s.size();
        }
    }
    out
}

struct Pass<'a> {
    opts: &'a CleanOptions,
    map: &'a HashMap<Box<[u8]>, u64>,
    aborted: &'a [AbortedTxn],
    producer_last: &'a HashMap<i64, u64>,
    /// Producers whose current transaction (its marker not seen yet) left something behind.
    txn_has_data: HashMap<i64, bool>,
    stats: &'a mut CleanStats,
    /// The earliest delete horizon among what this pass kept.
    min_horizon: Option<i64>,
}

/// What to write for one batch.
enum Out {
    Same,
    Rebuilt(Vec<u8>),
    Drop,
}

impl Pass<'_> {
    /// Cleans one group into a new segment and swaps it in. False when the log changed
    /// under the pass and the group was left as it was.
    fn clean_group(
        &mut self,
        log: &Log,
        group: &[Arc<Segment>],
        throttle: &mut dyn FnMut(u64),
    ) -> Result<bool> {
        let base = group[0].base_offset;
        let cleaned = swap::Cleaned::create(log.dir(), base)?;
        let mut out = BufWriter::with_capacity(1 << 20, cleaned.file()?);
        let mut written = 0u64;
        // The last batch of the group, if dropped: it is written back empty at the end.
        let mut last_dropped: Option<(BatchHeader, Vec<u8>)> = None;
        let mut kept_markers = Vec::new();
        let mut changed = group.len() > 1;
        for s in group {
            each_batch(s, &mut |h, bytes| {
                throttle(bytes.len() as u64);
                self.stats.bytes_read += bytes.len() as u64;
                let decision = self.decide(h, bytes)?;
                let write = |out: &mut BufWriter<File>, b: &[u8]| -> Result<u64> {
                    out.write_all(b).at(cleaned.path())?;
                    Ok(b.len() as u64)
                };
                last_dropped = None;
                changed |= !matches!(decision, Out::Same);
                if h.is_control() && !matches!(decision, Out::Drop) {
                    kept_markers.push(h.base_offset as u64);
                }
                match decision {
                    Out::Same => written += write(&mut out, bytes)?,
                    Out::Rebuilt(b) => written += write(&mut out, &b)?,
                    Out::Drop => last_dropped = Some((*h, bytes[..HEADER_LEN].to_vec())),
                }
                Ok(true)
            })?;
        }
        if let Some((h, head)) = last_dropped {
            let empty = filter::rebuild(&h, &head, &[], None)?;
            written += empty.len() as u64;
            out.write_all(&empty).at(cleaned.path())?;
            if h.is_transactional() && !h.is_control() {
                self.txn_has_data.insert(h.producer_id, true);
            }
            if h.is_control() {
                kept_markers.push(h.base_offset as u64);
            }
        }
        out.flush().at(cleaned.path())?;
        drop(out);
        if written == 0 || !changed {
            // Empty segments only, or one segment that would come out the same.
            cleaned.discard();
            return Ok(true);
        }
        let mut entries = Vec::new();
        for s in group {
            entries.extend(
                s.aborted()?
                    .into_iter()
                    .filter(|t| kept_markers.contains(&t.last_offset)),
            );
        }
        self.stats.bytes_written += written;
        cleaned.commit(log, group, &entries)
    }

    fn note_horizon(&mut self, t: i64) {
        self.min_horizon = Some(self.min_horizon.map_or(t, |m| m.min(t)));
    }

    fn decide(&mut self, h: &BatchHeader, bytes: &[u8]) -> Result<Out> {
        let now = self.opts.now_ms;
        let new_horizon = now.saturating_add(self.opts.delete_retention_ms);
        let horizon_passed = filter::delete_horizon(h).is_some_and(|t| now > t);
        let pid = h.producer_id;
        if h.is_control() {
            self.stats.records_read += h.records_count.max(0) as u64;
            let has_data = self.txn_has_data.remove(&pid).unwrap_or(false);
            if horizon_passed && !has_data {
                self.stats.records_removed += h.records_count.max(0) as u64;
                return Ok(Out::Drop);
            }
            self.note_horizon(filter::delete_horizon(h).unwrap_or(new_horizon));
            if filter::delete_horizon(h).is_none() {
                let section = filter::records_section(h, bytes)?;
                let recs = filter::parse(h, &section)?;
                return Ok(Out::Rebuilt(filter::rebuild(
                    h,
                    bytes,
                    &recs,
                    Some(new_horizon),
                )?));
            }
            return Ok(Out::Same);
        }
        let is_last_of_producer =
            pid >= 0 && self.producer_last.get(&pid) == Some(&(h.last_offset() as u64));
        let section = filter::records_section(h, bytes)?;
        let recs = filter::parse(h, &section)?;
        self.stats.records_read += recs.len() as u64;
        let kept: Vec<filter::Rec<'_>> = if is_aborted(self.aborted, h) {
            Vec::new()
        } else {
            recs.iter()
                .filter(|r| {
                    let Some(k) = r.key else { return false };
                    let latest = self.map.get(k).is_none_or(|&o| r.offset >= o);
                    latest && !(r.tombstone && horizon_passed)
                })
                .copied()
                .collect()
        };
        self.stats.records_removed += (recs.len() - kept.len()) as u64;
        let has_tombstones = kept.iter().any(|r| r.tombstone);
        let needs_horizon = filter::delete_horizon(h).is_none() && has_tombstones;
        if has_tombstones {
            self.note_horizon(filter::delete_horizon(h).unwrap_or(new_horizon));
        }
        let out = if kept.len() == recs.len() && !needs_horizon {
            Out::Same
        } else if kept.is_empty() && !is_last_of_producer {
            Out::Drop
        } else {
            Out::Rebuilt(filter::rebuild(
                h,
                bytes,
                &kept,
                needs_horizon.then_some(new_horizon),
            )?)
        };
        if h.is_transactional() {
            let left = !matches!(out, Out::Drop);
            let e = self.txn_has_data.entry(pid).or_insert(false);
            *e |= left;
        }
        Ok(out)
    }
}

/// Calls `f` with every whole batch of a segment, in order, reading the file in large
/// chunks; `f` returns false to stop.
pub(crate) fn each_batch(
    seg: &Arc<Segment>,
    f: &mut dyn FnMut(&BatchHeader, &[u8]) -> Result<bool>,
) -> Result<()> {
    const CHUNK: u64 = 4 << 20;
    let file = seg.file()?.clone();
    let size = seg.size();
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let want = CHUNK.min(size - pos);
        buf.resize(want as usize, 0);
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| seg.io_err(e))?;
        let mut at = 0usize;
        while let Some(h) = buf.get(at..).and_then(BatchHeader::parse) {
            let total = h.total_size();
            if at + total > buf.len() {
                if at == 0 {
                    // One batch larger than a chunk.
                    if pos + total as u64 > size {
                        return Ok(());
                    }
                    buf.resize(total, 0);
                    file.read_exact_at(&mut buf, pos)
                        .map_err(|e| seg.io_err(e))?;
                    continue;
                }
                break;
            }
            if h.batch_length < (HEADER_LEN - 12) as i32 {
                return Ok(());
            }
            if !f(&h, &buf[at..at + total])? {
                return Ok(());
            }
            at += total;
        }
        if at == 0 {
            return Ok(());
        }
        pos += at as u64;
    }
    Ok(())
}

impl Log {
    pub(crate) fn replace_segments(&self, old: &[Arc<Segment>], new: Arc<Segment>) {
        let mut segs = self.shared.segments.write().unwrap();
        for s in old {
            segs.remove(s.base_offset);
        }
        segs.insert(new);
    }

    /// Whether every segment of `group` is still in the log, and none is the active one.
    pub(crate) fn still_has(&self, group: &[Arc<Segment>]) -> bool {
        let segs = self.shared.segments.read().unwrap();
        let active = segs.last().map(|s| s.base_offset);
        group.iter().all(|s| {
            Some(s.base_offset) != active
                && segs.get(s.base_offset).is_some_and(|x| Arc::ptr_eq(x, s))
        })
    }
}

#[cfg(test)]
mod tests;
