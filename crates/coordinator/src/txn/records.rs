//! The records of `__transaction_state`, in Kafka's TransactionLog formats: key version 0
//! (the transactional id), value version 0 (producer id and epoch, timeout, state, the
//! partitions in the transaction, last update and start times). A null value is a
//! tombstone: the transactional id expired.

use std::collections::BTreeSet;

use super::state::{TxnMetadata, TxnState};
use strom_storage::reader::{Reader, put_string};

pub fn key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.extend_from_slice(&0i16.to_be_bytes());
    put_string(&mut out, transactional_id);
    out
}

pub fn decode_key(bytes: &[u8]) -> Option<String> {
    let mut r = Reader::new(bytes);
    match r.i16()? {
        0 => r.string(),
        _ => None,
    }
}

fn state_id(s: TxnState) -> i8 {
    match s {
        TxnState::Empty => 0,
        TxnState::Ongoing => 1,
        TxnState::PrepareCommit => 2,
        TxnState::PrepareAbort => 3,
        TxnState::CompleteCommit => 4,
        TxnState::CompleteAbort => 5,
    }
}

fn state_of(id: i8) -> Option<TxnState> {
    Some(match id {
        0 => TxnState::Empty,
        1 => TxnState::Ongoing,
        2 => TxnState::PrepareCommit,
        3 => TxnState::PrepareAbort,
        4 => TxnState::CompleteCommit,
        5 => TxnState::CompleteAbort,
        _ => return None,
    })
}

pub fn value(m: &TxnMetadata) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&m.producer_id.to_be_bytes());
    out.extend_from_slice(&m.producer_epoch.to_be_bytes());
    out.extend_from_slice(&m.timeout_ms.to_be_bytes());
    out.push(state_id(m.state) as u8);
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (t, p) in &m.partitions {
        match topics.last_mut() {
            Some((name, ps)) if *name == t.as_str() => ps.push(*p),
            _ => topics.push((t, vec![*p])),
        }
    }
    // Kafka writes a null array (-1) for Empty, which has no partitions.
    let count = if m.state == TxnState::Empty {
        topics.clear();
        -1
    } else {
        topics.len() as i32
    };
    out.extend_from_slice(&count.to_be_bytes());
    for (t, ps) in topics {
        put_string(&mut out, t);
        out.extend_from_slice(&(ps.len() as i32).to_be_bytes());
        for p in ps {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&m.last_update_ms.to_be_bytes());
    out.extend_from_slice(&m.start_ms.to_be_bytes());
    out
}

pub fn decode_value(transactional_id: &str, bytes: &[u8]) -> Option<TxnMetadata> {
    let mut r = Reader::new(bytes);
    if r.i16()? != 0 {
        return None;
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = state_of(r.i8()?)?;
    let mut partitions = BTreeSet::new();
    for _ in 0..r.nullable_count(6)? {
        let topic = r.string()?;
        for _ in 0..r.count(4)? {
            partitions.insert((topic.clone(), r.i32()?));
        }
    }
    // As Kafka reads it: an Empty state has no partitions, whatever was written.
    if state == TxnState::Empty {
        partitions.clear();
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Some(TxnMetadata {
        transactional_id: transactional_id.to_string(),
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        start_ms,
        last_update_ms,
        // Not persisted (Kafka's value v0 has neither).
        last_producer_id: -1,
        last_producer_epoch: -1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let mut m = TxnMetadata::new("tx-1", 42, 60_000, 1_000);
        m.producer_epoch = 3;
        m.state = TxnState::PrepareCommit;
        m.partitions = [
            ("a".to_string(), 0),
            ("a".to_string(), 2),
            ("b".to_string(), 1),
        ]
        .into_iter()
        .collect();
        m.start_ms = 900;
        let k = key("tx-1");
        assert_eq!(decode_key(&k).as_deref(), Some("tx-1"));
        let v = value(&m);
        assert_eq!(decode_value("tx-1", &v), Some(m));
        for cut in 0..v.len() {
            assert_eq!(decode_value("tx-1", &v[..cut]), None, "cut at {cut}");
        }
        let mut huge = v.clone();
        // An array count far beyond the bytes present.
        huge[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_value("tx-1", &huge), None);
        assert_eq!(decode_key(&[0, 1, 0, 1, b'x']), None);
    }

    /// Bytes 17..21 of a value: the partitions array's count.
    const COUNT: std::ops::Range<usize> = 17..21;

    #[test]
    fn every_state_round_trips_and_empty_has_a_null_partitions_array() {
        for state in TxnState::ALL {
            let mut m = TxnMetadata::new("tx", 5, 30_000, 2_000);
            m.producer_epoch = 9;
            m.state = state;
            if !matches!(state, TxnState::Empty) {
                m.start_ms = 1_500;
            }
            if matches!(
                state,
                TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
            ) {
                m.partitions = [("a".to_string(), 1), ("b".to_string(), 0)]
                    .into_iter()
                    .collect();
            }
            let v = value(&m);
            assert_eq!(decode_value("tx", &v), Some(m.clone()), "{state:?}");
            let count = i32::from_be_bytes(v[COUNT].try_into().unwrap());
            let expected = match state {
                TxnState::Empty => -1,
                _ => m
                    .partitions
                    .iter()
                    .map(|p| &p.0)
                    .collect::<BTreeSet<_>>()
                    .len() as i32,
            };
            assert_eq!(count, expected, "{state:?}");
        }
    }

    #[test]
    fn kafkas_null_and_empty_partition_arrays_decode_as_no_partitions() {
        // Kafka's value v0 for Empty: version 0, producer 1000 epoch 0, timeout 60000,
        // state 0, partitions null, last update 10, start -1.
        let mut v = vec![0, 0];
        v.extend_from_slice(&1000i64.to_be_bytes());
        v.extend_from_slice(&0i16.to_be_bytes());
        v.extend_from_slice(&60_000i32.to_be_bytes());
        v.push(0);
        v.extend_from_slice(&(-1i32).to_be_bytes());
        v.extend_from_slice(&10i64.to_be_bytes());
        v.extend_from_slice(&(-1i64).to_be_bytes());
        let m = decode_value("k", &v).unwrap();
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.timeout_ms, m.state),
            (1000, 0, 60_000, TxnState::Empty)
        );
        assert!(m.partitions.is_empty());
        assert_eq!((m.last_update_ms, m.start_ms), (10, -1));
        // The same with an empty (not null) array, as older writers produced.
        v[COUNT].copy_from_slice(&0i32.to_be_bytes());
        assert_eq!(decode_value("k", &v), Some(m));
        // Other negative counts are garbage.
        v[COUNT].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(decode_value("k", &v), None);
    }
}
