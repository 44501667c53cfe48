//! Transaction markers and the aborted-transaction index, in Kafka's formats: what
//! `read_committed` fetches will need (the coordinator that writes them comes next).
//!
//! A marker is a control batch with one record: key = version (0) and type (0 abort,
//! 1 commit), value = version (0) and the coordinator epoch. A `.txnindex` entry is 34 bytes:
//! version (0), producer id, first offset, last offset, last stable offset.

use crate::batch::{BatchBuilder, Record};

pub const ABORT: i16 = 0;
pub const COMMIT: i16 = 1;

/// The control batch that ends producer `producer_id`'s transaction.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(if commit { COMMIT } else { ABORT }).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut b = BatchBuilder::new().record(Record {
        timestamp,
        key: Some(key),
        value: Some(value),
        headers: vec![],
    });
    b.producer_id = producer_id;
    b.producer_epoch = producer_epoch;
    b.transactional = true;
    b.control = true;
    b.build()
}

/// Commit (true) or abort (false) of a marker record's key; `None` if it is not a marker.
pub fn marker_type(key: &[u8]) -> Option<bool> {
    if key.len() < 4 || key[0..2] != [0, 0] {
        return None;
    }
    match i16::from_be_bytes([key[2], key[3]]) {
        COMMIT => Some(true),
        ABORT => Some(false),
        _ => None,
    }
}

/// The coordinator epoch of a marker record's value; `None` if it is not a marker's.
pub fn marker_coordinator_epoch(value: &[u8]) -> Option<i32> {
    match value {
        [0, 0, a, b, c, d, ..] => Some(i32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// One aborted transaction: its producer and the offsets it spanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
    pub last_stable_offset: u64,
}

/// Bytes of one `.txnindex` entry.
pub const ENTRY: usize = 34;

impl AbortedTxn {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&(self.first_offset as i64).to_be_bytes());
        out.extend_from_slice(&(self.last_offset as i64).to_be_bytes());
        out.extend_from_slice(&(self.last_stable_offset as i64).to_be_bytes());
    }

    /// Decodes a `.txnindex` file; a torn last entry is dropped.
    pub fn decode_all(bytes: &[u8]) -> Vec<AbortedTxn> {
        let i64_at = |b: &[u8], at: usize| i64::from_be_bytes(b[at..at + 8].try_into().unwrap());
        bytes
            .chunks_exact(ENTRY)
            .filter(|c| c[0..2] == [0, 0])
            .map(|c| AbortedTxn {
                producer_id: i64_at(c, 2),
                first_offset: i64_at(c, 10) as u64,
                last_offset: i64_at(c, 18) as u64,
                last_stable_offset: i64_at(c, 26) as u64,
            })
            .collect()
    }
}

/// The aborted transactions a read_committed fetch of [`fetch_offset`, `upper`) must
/// report: those that end at or after the fetch offset and start before the upper bound.
pub fn overlapping(index: &[AbortedTxn], fetch_offset: u64, upper: u64) -> Vec<AbortedTxn> {
    index
        .iter()
        .filter(|t| t.last_offset >= fetch_offset && t.first_offset < upper)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{self, records};

    #[test]
    fn markers_are_valid_control_batches() {
        let b = marker_batch(42, 3, true, 7, 1000);
        let h = batch::validate(&b).unwrap();
        assert!(h.is_control() && h.is_transactional());
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.records_count),
            (42, 3, 1)
        );
        let r = records(&b).next().unwrap();
        assert_eq!(marker_type(r.key.unwrap()), Some(true));
        assert_eq!(r.value.unwrap(), &[0, 0, 0, 0, 0, 7]);
        assert_eq!(marker_coordinator_epoch(r.value.unwrap()), Some(7));
        assert_eq!(marker_coordinator_epoch(&[0, 1, 0, 0, 0, 7]), None);
        let a = marker_batch(42, 3, false, 7, 1000);
        assert_eq!(
            marker_type(records(&a).next().unwrap().key.unwrap()),
            Some(false)
        );
        assert_eq!(marker_type(&[0, 1, 0, 0]), None);
        assert_eq!(marker_type(&[0]), None);
    }

    #[test]
    fn the_index_round_trips_and_answers_fetches() {
        let entries = [
            AbortedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 20,
                last_stable_offset: 10,
            },
            AbortedTxn {
                producer_id: 2,
                first_offset: 30,
                last_offset: 35,
                last_stable_offset: 30,
            },
        ];
        let mut bytes = Vec::new();
        for e in &entries {
            e.encode(&mut bytes);
        }
        assert_eq!(bytes.len(), 68);
        bytes.extend_from_slice(&[0, 0, 1]); // torn tail
        assert_eq!(AbortedTxn::decode_all(&bytes), entries.to_vec());
        assert_eq!(overlapping(&entries, 0, 10), vec![]);
        assert_eq!(overlapping(&entries, 0, 11), vec![entries[0]]);
        assert_eq!(overlapping(&entries, 21, 100), vec![entries[1]]);
        assert_eq!(overlapping(&entries, 15, 31), entries.to_vec());
    }
}
