//! A log's segments by base offset. Most logs have one segment, and a broker may hold tens
//! of thousands of them idle: a sorted vector keeping up to two inline costs no allocation
//! (a `BTreeMap` took a 192-byte leaf per log, a `Vec` a 32-byte chunk), and finds a
//! segment by binary search all the same.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::segment::Segment;

#[derive(Default)]
pub(crate) struct SegmentMap {
    /// Sorted by base offset, no two alike.
    segs: SmallVec<[Arc<Segment>; 2]>,
}

impl SegmentMap {
    /// Index of the first segment whose base offset is at least `base`.
    fn lower_bound(&self, base: u64) -> usize {
        self.segs.partition_point(|s| s.base_offset < base)
    }

    /// Adds `seg`, replacing a segment of the same base offset.
    pub fn insert(&mut self, seg: Arc<Segment>) {
        let i = self.lower_bound(seg.base_offset);
        match self.segs.get(i) {
            Some(s) if s.base_offset == seg.base_offset => self.segs[i] = seg,
            _ => self.segs.insert(i, seg),
        }
    }

    pub fn remove(&mut self, base: u64) -> Option<Arc<Segment>> {
        let i = self.lower_bound(base);
        (self.segs.get(i)?.base_offset == base).then(|| self.segs.remove(i))
    }

    pub fn get(&self, base: u64) -> Option<&Arc<Segment>> {
        self.segs
            .get(self.lower_bound(base))
            .filter(|s| s.base_offset == base)
    }

    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// Oldest first.
    pub fn values(&self) -> std::slice::Iter<'_, Arc<Segment>> {
        self.segs.iter()
    }

    pub fn bases(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.segs.iter().map(|s| s.base_offset)
    }

    pub fn first(&self) -> Option<&Arc<Segment>> {
        self.segs.first()
    }

    pub fn last(&self) -> Option<&Arc<Segment>> {
        self.segs.last()
    }

    /// The segments whose base offset is at least `base`, oldest first.
    pub fn from(&self, base: u64) -> &[Arc<Segment>] {
        &self.segs[self.lower_bound(base)..]
    }

    /// The segment that would hold `offset`: the last one starting at or before it.
    pub fn at_or_before(&self, offset: u64) -> Option<&Arc<Segment>> {
        let i = self.segs.partition_point(|s| s.base_offset <= offset);
        i.checked_sub(1).map(|i| &self.segs[i])
    }

    /// Removes and returns the segments whose base offset is at least `base`.
    pub fn split_off(&mut self, base: u64) -> Vec<Arc<Segment>> {
        let i = self.lower_bound(base);
        self.segs.drain(i..).collect()
    }

    pub fn take_all(&mut self) -> Vec<Arc<Segment>> {
        std::mem::take(&mut self.segs).into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(dir: &Arc<std::path::Path>, base: u64) -> Arc<Segment> {
        Segment::create(dir, base).unwrap()
    }

    #[test]
    fn finds_segments_by_offset_in_base_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir: Arc<std::path::Path> = Arc::from(tmp.path());
        let mut m = SegmentMap::default();
        for base in [100, 0, 50] {
            m.insert(seg(&dir, base));
        }
        assert_eq!(m.bases().collect::<Vec<_>>(), [0, 50, 100]);
        assert_eq!(m.at_or_before(49).unwrap().base_offset, 0);
        assert_eq!(m.at_or_before(50).unwrap().base_offset, 50);
        assert_eq!(m.at_or_before(1_000).unwrap().base_offset, 100);
        assert_eq!(
            m.from(51).iter().map(|s| s.base_offset).collect::<Vec<_>>(),
            [100]
        );
        assert_eq!(m.from(50).len(), 2);
        assert!(m.remove(49).is_none() && m.get(49).is_none());
        assert_eq!(m.get(50).unwrap().base_offset, 50);
        assert_eq!(m.remove(50).unwrap().base_offset, 50);
        assert_eq!(m.bases().collect::<Vec<_>>(), [0, 100]);
        m.insert(seg(&dir, 100));
        assert_eq!(
            m.len(),
            2,
            "a segment of the same base replaces the old one"
        );
        let later = m.split_off(1);
        assert_eq!(later.len(), 1);
        assert_eq!(m.bases().collect::<Vec<_>>(), [0]);
        assert_eq!(m.take_all().len(), 1);
        assert!(m.first().is_none() && m.at_or_before(5).is_none());
    }
}
