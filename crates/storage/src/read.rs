//! The read side of the log: whole batches as file regions, and lookups by timestamp.
//! Readers take no writer lock (see `log.rs`).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::batch::{self, BatchHeader, Compression};
use crate::error::{IoContext, Result, StorageError};
use crate::log::{FileRegion, Log, ReadResult, TimestampOffset};
use crate::segment::Segment;

enum SegmentRead {
    Found(FileRegion),
    AtUpperBound,
    NotHere,
}

impl Log {
    /// Walks whole batches from `from` up to `upper` (the log end when `None`), in order,
    /// giving each header with the batch's bytes; `f` returns false to stop. Stops, with a
    /// warning, at a batch that does not move forward: recovery checked the batches, but a
    /// header going backwards would otherwise have the walk read the same place for ever.
    pub fn for_each_batch(
        &self,
        from: u64,
        upper: Option<u64>,
        mut f: impl FnMut(&BatchHeader, &[u8]) -> bool,
    ) -> Result<()> {
        let mut next = from.max(self.log_start_offset());
        loop {
            let upper_now = upper.map_or(self.log_end_offset(), |u| u.min(self.log_end_offset()));
            if next >= upper_now {
                return Ok(());
            }
            let Some(region) = self.read(next, 1 << 20, Some(upper_now))?.region else {
                return Ok(());
            };
            let bytes = region.read_all().at(self.dir())?;
            let before = next;
            let mut pos = 0;
            while let Some(h) = bytes.get(pos..).and_then(BatchHeader::parse) {
                let end = (pos + h.total_size()).min(bytes.len());
                if (h.last_offset() as u64) < next {
                    tracing::warn!(dir = %self.dir().display(), offset = next, "batch walk stopped at a batch that does not move forward");
                    return Ok(());
                }
                if !f(&h, &bytes[pos..end]) {
                    return Ok(());
                }
                next = h.last_offset() as u64 + 1;
                pos += h.total_size();
            }
            if next <= before {
                return Ok(());
            }
        }
    }

    /// Reads whole batches starting with the one that holds `offset`: up to `max_bytes`, but
    /// always at least one batch, and only batches that end below `upper` (the high
    /// watermark) when given. Reads come from one segment, as in Kafka.
    pub fn read(&self, offset: u64, max_bytes: usize, upper: Option<u64>) -> Result<ReadResult> {
        let end = self.log_end_offset();
        let start = self.log_start_offset();
        let upper = upper.map_or(end, |u| u.min(end));
        let mut result = ReadResult {
            region: None,
            log_start_offset: start,
            log_end_offset: end,
        };
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset >= upper {
            return Ok(result);
        }
        let mut seg = self.segment_for(offset);
        while let Some(s) = seg {
            match self.read_segment(&s, offset, max_bytes, upper) {
                Ok(SegmentRead::Found(region)) => {
                    result.region = Some(region);
                    return Ok(result);
                }
                Ok(SegmentRead::AtUpperBound) => return Ok(result),
                Ok(SegmentRead::NotHere) => seg = self.segment_after(s.base_offset),
                Err(StorageError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    // Retention deleted the segment under us.
                    let start = self.log_start_offset();
                    return Err(StorageError::OffsetOutOfRange { offset, start, end });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(result)
    }

    fn read_segment(
        &self,
        seg: &Arc<Segment>,
        offset: u64,
        max_bytes: usize,
        upper: u64,
    ) -> Result<SegmentRead> {
        let size = seg.size();
        let Some((pos, first)) = seg.find_batch(offset, size)? else {
            return Ok(SegmentRead::NotHere);
        };
        if first.last_offset() as u64 >= upper {
            return Ok(SegmentRead::AtUpperBound);
        }
        let mut limit = (pos + (max_bytes as u64).max(first.total_size() as u64)).min(size);
        if upper < self.log_end_offset()
            && let Some((upper_pos, _)) = seg.find_batch(upper, size)?
        {
            limit = limit.min(upper_pos);
        }
        let end = seg.whole_batches_end(pos, limit, upper)?;
        let after = if end < size {
            seg.read_header(end)?
        } else {
            None
        };
        let next_offset = match after {
            Some(h) => h.base_offset as u64,
            None => seg.next_offset()?,
        };
        Ok(SegmentRead::Found(FileRegion {
            file: seg.file()?.clone(),
            position: pos,
            len: end - pos,
            next_offset,
        }))
    }

    pub(crate) fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.shared.segments.read().unwrap();
        segs.at_or_before(offset).or_else(|| segs.first()).cloned()
    }

    pub(crate) fn segment_after(&self, base: u64) -> Option<Arc<Segment>> {
        let segs = self.shared.segments.read().unwrap();
        segs.from(base + 1).first().cloned()
    }

    pub(crate) fn all_segments(&self) -> Vec<Arc<Segment>> {
        self.shared
            .segments
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// ListOffsets by timestamp: the first record at or after the log start whose timestamp
    /// is >= `target`. Exact for uncompressed batches; for compressed ones, the batch's first
    /// offset and max timestamp (finding the record would mean decompressing).
    pub fn offset_for_timestamp(&self, target: i64) -> Result<Option<TimestampOffset>> {
        let start = self.log_start_offset();
        for seg in self.all_segments() {
            let (max_ts, _) = seg.max_timestamp()?;
            if max_ts < target {
                continue;
            }
            let size = seg.size();
            let from_rel = seg.with_index(|i| i.times.lookup(target))? as u64;
            let mut next = seg.find_batch((seg.base_offset + from_rel).max(start), size)?;
            while let Some((pos, h)) = next {
                if h.max_timestamp >= target
                    && let Some(found) =
                        self.locate_in_batch(&seg, pos, &h, start, |ts| ts >= target)?
                {
                    return Ok(Some(found));
                }
                let after = pos + h.total_size() as u64;
                next = if after < size {
                    seg.read_header(after)?.map(|h| (after, h))
                } else {
                    None
                };
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP: the record with the largest timestamp (the first such).
    pub fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>> {
        let mut best: Option<(i64, Arc<Segment>, u64)> = None;
        for seg in self.all_segments() {
            let (ts, offset) = seg.max_timestamp()?;
            if ts >= 0 && best.as_ref().is_none_or(|b| ts > b.0) {
                best = Some((ts, seg, offset));
            }
        }
        let Some((ts, seg, offset)) = best else {
            return Ok(None);
        };
        let Some((pos, h)) = seg.find_batch(offset, seg.size())? else {
            return Ok(None);
        };
        let start = self.log_start_offset();
        self.locate_in_batch(&seg, pos, &h, start, |t| t == ts)
    }

    /// The first record of the batch at `pos` at or after `start` whose timestamp passes `hit`.
    fn locate_in_batch(
        &self,
        seg: &Arc<Segment>,
        pos: u64,
        h: &BatchHeader,
        start: u64,
        hit: impl Fn(i64) -> bool,
    ) -> Result<Option<TimestampOffset>> {
        if h.is_log_append_time() || h.compression() != Some(Compression::None) {
            return Ok(hit(h.max_timestamp).then(|| TimestampOffset {
                timestamp: h.max_timestamp,
                offset: (h.base_offset as u64).max(start),
            }));
        }
        let mut buf = vec![0u8; h.total_size()];
        seg.file()?
            .read_exact_at(&mut buf, pos)
            .map_err(|e| seg.io_err(e))?;
        for r in batch::records(&buf) {
            let offset = h.base_offset as u64 + r.offset_delta as u64;
            let timestamp = h.base_timestamp + r.timestamp_delta;
            if offset >= start && hit(timestamp) {
                return Ok(Some(TimestampOffset { timestamp, offset }));
            }
        }
        Ok(None)
    }
}
