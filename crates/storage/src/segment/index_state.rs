//! What a segment knows from its indexes and a short scan: kept in memory while the segment
//! is in use, built again from the files when it is needed after being dropped.

use crate::batch::BatchHeader;
use crate::index::{OffsetIndex, TimeIndex};

/// What the indexes and a short scan tell about a segment.
#[derive(Debug)]
pub(crate) struct SegmentIndex {
    pub offsets: OffsetIndex,
    pub times: TimeIndex,
    /// One past the last offset stored in the segment (the base offset when empty).
    pub next_offset: u64,
    /// Largest batch max timestamp, -1 when the segment is empty.
    pub max_timestamp: i64,
    /// Base offset of the batch holding `max_timestamp`.
    pub offset_of_max_timestamp: u64,
    pub bytes_since_index_entry: u64,
}

impl SegmentIndex {
    pub(super) fn empty(base_offset: u64) -> Self {
        SegmentIndex {
            offsets: OffsetIndex::default(),
            times: TimeIndex::default(),
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            bytes_since_index_entry: 0,
        }
    }

    /// Accounts for one batch written at `position`; adds sparse index entries every
    /// `interval` bytes, as Kafka does.
    pub(super) fn observe(
        &mut self,
        base: u64,
        position: u64,
        header: &BatchHeader,
        interval: u64,
    ) {
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.base_offset as u64;
        }
        if self.bytes_since_index_entry > interval {
            let rel = (header.base_offset as u64 - base) as u32;
            self.offsets.push(rel, position as u32);
            if self.max_timestamp >= 0 {
                self.times.maybe_push(
                    self.max_timestamp,
                    (self.offset_of_max_timestamp - base) as u32,
                );
            }
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.total_size() as u64;
        self.next_offset = header.last_offset() as u64 + 1;
    }
}
