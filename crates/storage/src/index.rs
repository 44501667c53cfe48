//! Sparse indexes of a segment, in Kafka's on-disk formats: `.index` holds big-endian
//! (relative offset: u32, position: u32) pairs, `.timeindex` (timestamp: i64, relative
//! offset: u32). Kept in memory; the files are appended on flush, roll and close, and are
//! rebuilt from the log when missing or inconsistent, so they never need to be trusted.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const OFFSET_ENTRY: usize = 8;
const TIME_ENTRY: usize = 12;

#[derive(Debug, Default, Clone)]
pub(crate) struct OffsetIndex {
    /// (offset relative to the segment's base, byte position of the batch starting there)
    entries: Vec<(u32, u32)>,
    persisted: usize,
}

impl OffsetIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn push(&mut self, relative_offset: u32, position: u32) {
        self.entries.push((relative_offset, position));
    }

    pub fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    /// Position of the batch to start scanning from for `relative_offset`: the last entry at
    /// or before it, or the start of the segment.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let i = self.entries.partition_point(|e| e.0 <= relative_offset);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    /// The last entry at or before `relative_offset`.
    pub fn floor_entry(&self, relative_offset: u32) -> Option<(u32, u32)> {
        let i = self.entries.partition_point(|e| e.0 <= relative_offset);
        if i == 0 {
            None
        } else {
            Some(self.entries[i - 1])
        }
    }

    /// The last indexed batch start at or before `position`, or the start of the segment.
    pub fn floor_position(&self, position: u32) -> u32 {
        let i = self.entries.partition_point(|e| e.1 <= position);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    /// Drops entries for offsets at or after `relative_offset`.
    pub fn truncate_to(&mut self, relative_offset: u32) {
        let keep = self.entries.partition_point(|e| e.0 < relative_offset);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep);
    }

    /// Reads an index file; `None` if it is missing or inconsistent with a log of `log_size`
    /// bytes (then the caller rebuilds it from the log).
    pub fn load(path: &Path, log_size: u64) -> Option<OffsetIndex> {
        // A segment without index entries has no file (see `write_tail`).
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(_) => return None,
        };
        if bytes.len() % OFFSET_ENTRY != 0 {
            return None;
        }
        let mut entries = Vec::with_capacity(bytes.len() / OFFSET_ENTRY);
        for chunk in bytes.chunks_exact(OFFSET_ENTRY) {
            let rel = u32::from_be_bytes(chunk[0..4].try_into().unwrap());
            let pos = u32::from_be_bytes(chunk[4..8].try_into().unwrap());
            if let Some(&(prev_rel, prev_pos)) = entries.last()
                && (rel <= prev_rel || pos <= prev_pos)
            {
                return None;
            }
            if pos as u64 >= log_size {
                return None;
            }
            entries.push((rel, pos));
        }
        let persisted = entries.len();
        Some(OffsetIndex { entries, persisted })
    }

    pub fn persist(&mut self, path: &Path) -> io::Result<()> {
        let mut buf = Vec::with_capacity((self.entries.len() - self.persisted) * OFFSET_ENTRY);
        for (rel, pos) in &self.entries[self.persisted..] {
            buf.extend_from_slice(&rel.to_be_bytes());
            buf.extend_from_slice(&pos.to_be_bytes());
        }
        write_tail(
            path,
            &buf,
            self.persisted * OFFSET_ENTRY,
            self.entries.len() * OFFSET_ENTRY,
        )?;
        self.persisted = self.entries.len();
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct TimeIndex {
    /// (largest timestamp so far, relative offset of the batch that holds it)
    entries: Vec<(i64, u32)>,
    persisted: usize,
}

impl TimeIndex {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds an entry if it moves the timestamp forward (the index is monotonic).
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) {
        match self.entries.last() {
            Some(&(ts, rel)) if timestamp <= ts || relative_offset <= rel => {}
            _ => self.entries.push((timestamp, relative_offset)),
        }
    }

    pub fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    /// Relative offset from which to scan for the first record with timestamp >= `target`:
    /// every batch before the returned offset has only smaller timestamps.
    pub fn lookup(&self, target: i64) -> u32 {
        let i = self.entries.partition_point(|e| e.0 < target);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    pub fn truncate_to(&mut self, relative_offset: u32) {
        let keep = self.entries.partition_point(|e| e.1 < relative_offset);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep);
    }

    pub fn load(path: &Path) -> Option<TimeIndex> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(_) => return None,
        };
        if bytes.len() % TIME_ENTRY != 0 {
            return None;
        }
        let mut entries: Vec<(i64, u32)> = Vec::with_capacity(bytes.len() / TIME_ENTRY);
        for chunk in bytes.chunks_exact(TIME_ENTRY) {
            let ts = i64::from_be_bytes(chunk[0..8].try_into().unwrap());
            let rel = u32::from_be_bytes(chunk[8..12].try_into().unwrap());
            if let Some(&(prev_ts, prev_rel)) = entries.last()
                && (ts <= prev_ts || rel <= prev_rel)
            {
                return None;
            }
            entries.push((ts, rel));
        }
        let persisted = entries.len();
        Some(TimeIndex { entries, persisted })
    }

    pub fn persist(&mut self, path: &Path) -> io::Result<()> {
        let mut buf = Vec::with_capacity((self.entries.len() - self.persisted) * TIME_ENTRY);
        for (ts, rel) in &self.entries[self.persisted..] {
            buf.extend_from_slice(&ts.to_be_bytes());
            buf.extend_from_slice(&rel.to_be_bytes());
        }
        write_tail(
            path,
            &buf,
            self.persisted * TIME_ENTRY,
            self.entries.len() * TIME_ENTRY,
        )?;
        self.persisted = self.entries.len();
        Ok(())
    }
}

/// Writes the not-yet-persisted entries at `at` and cuts the file to `total` bytes (which
/// also drops entries removed by a truncation).
fn write_tail(path: &Path, buf: &[u8], at: usize, total: usize) -> io::Result<()> {
    // An index without entries needs no file (a missing one loads as empty): most
    // partitions' only segment never gets an entry, and two files each were most of the
    // cost of creating a partition.
    let file = OpenOptions::new()
        .create(total > 0)
        .truncate(false)
        .write(true)
        .open(path);
    let file = match file {
        Err(e) if e.kind() == io::ErrorKind::NotFound && total == 0 => return Ok(()),
        f => f?,
    };
    file.write_all_at(buf, at as u64)?;
    file.set_len(total as u64)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let mut idx = OffsetIndex::default();
        assert_eq!(idx.lookup(5), 0);
        idx.push(10, 4096);
        idx.push(20, 8200);
        assert_eq!(idx.lookup(5), 0);
        assert_eq!(idx.lookup(10), 4096);
        assert_eq!(idx.lookup(19), 4096);
        assert_eq!(idx.lookup(25), 8200);
        assert_eq!(idx.floor_position(8199), 4096);
        assert_eq!(idx.floor_position(8200), 8200);
        idx.truncate_to(20);
        assert_eq!(idx.lookup(25), 4096);
    }

    #[test]
    fn time_lookup_and_monotonicity() {
        let mut idx = TimeIndex::default();
        idx.maybe_push(100, 5);
        idx.maybe_push(90, 6); // not forward: ignored
        idx.maybe_push(200, 9);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.lookup(50), 0);
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(101), 5);
        assert_eq!(idx.lookup(500), 9);
    }

    #[test]
    fn persist_and_load_round_trip_and_reject_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.index");
        let mut idx = OffsetIndex::default();
        idx.push(3, 100);
        idx.persist(&p).unwrap();
        idx.push(7, 300);
        idx.persist(&p).unwrap();
        let back = OffsetIndex::load(&p, 1000).unwrap();
        assert_eq!(back.entries, vec![(3, 100), (7, 300)]);
        // A position past the log's end means the index is stale.
        assert!(OffsetIndex::load(&p, 200).is_none());
        idx.truncate_to(7);
        idx.persist(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8);
        std::fs::write(&p, [1, 2, 3]).unwrap();
        assert!(OffsetIndex::load(&p, 1000).is_none());

        let t = dir.path().join("x.timeindex");
        let mut ti = TimeIndex::default();
        ti.maybe_push(10, 1);
        ti.maybe_push(20, 2);
        ti.persist(&t).unwrap();
        assert_eq!(TimeIndex::load(&t).unwrap().entries, vec![(10, 1), (20, 2)]);
        assert_eq!(TimeIndex::load(&dir.path().join("none")).unwrap().len(), 0);
    }
}
