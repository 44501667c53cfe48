//! The producer-state machine's tests: sequences, epochs, transactions, verification
//! guards, expiry and snapshots.

use super::*;

fn write(
    s: &mut ProducerStates,
    pid: i64,
    epoch: i16,
    seq: i32,
    n: i32,
    offset: u64,
) -> Result<Check, SequenceError> {
    let c = s.check(pid, epoch, seq, n)?;
    if c == Check::Append {
        s.record(&BatchHeader {
            base_offset: offset as i64,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: n,
        });
    }
    Ok(c)
}

#[test]
fn in_order_batches_append_and_retries_are_duplicates() {
    let mut s = ProducerStates::default();
    assert_eq!(write(&mut s, 7, 0, 0, 3, 0), Ok(Check::Append));
    assert_eq!(write(&mut s, 7, 0, 3, 2, 3), Ok(Check::Append));
    match write(&mut s, 7, 0, 0, 3, 99) {
        Ok(Check::Duplicate(m)) => assert_eq!((m.first_offset, m.last_offset), (0, 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(write(&mut s, 7, 0, 5, 1, 5), Ok(Check::Append));
}

#[test]
fn gaps_and_old_epochs_are_refused() {
    let mut s = ProducerStates::default();
    write(&mut s, 1, 2, 0, 1, 0).unwrap();
    assert_eq!(
        write(&mut s, 1, 2, 5, 1, 1),
        Err(SequenceError::OutOfOrder {
            expected: 1,
            got: 5
        })
    );
    assert_eq!(
        write(&mut s, 1, 1, 1, 1, 1),
        Err(SequenceError::InvalidEpoch { current: 2 })
    );
    // A new epoch must start at sequence 0.
    assert_eq!(
        write(&mut s, 1, 3, 4, 1, 1),
        Err(SequenceError::OutOfOrder {
            expected: 0,
            got: 4
        })
    );
    assert_eq!(write(&mut s, 1, 3, 0, 1, 1), Ok(Check::Append));
    assert_eq!(s.epoch_of(1), Some(3));
}

#[test]
fn only_the_last_five_batches_are_remembered() {
    let mut s = ProducerStates::default();
    for i in 0..7 {
        write(&mut s, 1, 0, i, 1, i as u64).unwrap();
    }
    assert!(matches!(s.check(1, 0, 6, 1), Ok(Check::Duplicate(_))));
    assert!(matches!(s.check(1, 0, 2, 1), Ok(Check::Duplicate(_))));
    // Seq 1 fell out of the cache: not a duplicate any more, and out of order.
    assert!(matches!(
        s.check(1, 0, 1, 1),
        Err(SequenceError::OutOfOrder { .. })
    ));
}

#[test]
fn unknown_producers_and_non_idempotent_batches_pass() {
    let s = ProducerStates::default();
    assert_eq!(s.check(42, 0, 17, 1), Ok(Check::Append));
    assert_eq!(s.check(NO_PRODUCER_ID, -1, -1, 5), Ok(Check::Append));
}

#[test]
fn sequence_wraps_after_i32_max() {
    let mut s = ProducerStates::default();
    write(&mut s, 1, 0, i32::MAX - 1, 2, 0).unwrap();
    assert_eq!(write(&mut s, 1, 0, 0, 1, 2), Ok(Check::Append));
}

fn header(pid: i64, offset: u64, transactional: bool, control: bool) -> BatchHeader {
    let mut attributes = 0;
    if transactional {
        attributes |= 0x10;
    }
    if control {
        attributes |= 0x20;
    }
    BatchHeader {
        base_offset: offset as i64,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: 2,
        crc: 0,
        attributes,
        last_offset_delta: 0,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: if control { -1 } else { offset as i32 },
        records_count: 1,
    }
}

#[test]
fn open_transactions_hold_back_the_last_stable_offset() {
    let mut s = ProducerStates::default();
    s.record(&header(1, 0, false, false));
    assert_eq!(s.first_unstable_offset(), None);
    s.record(&header(2, 1, true, false));
    s.record(&header(3, 2, true, false));
    s.record(&header(2, 3, true, false));
    assert_eq!(s.first_unstable_offset(), Some(1));
    // Producer 2's marker ends its transaction; 3's is still open.
    s.record(&header(2, 4, true, true));
    assert_eq!(s.first_unstable_offset(), Some(2));
    // The marker did not disturb 2's sequence numbers.
    assert_eq!(s.check(2, 0, 4, 1), Ok(Check::Append));
}

#[test]
fn snapshots_round_trip_and_refuse_damage() {
    let mut s = ProducerStates::default();
    for i in 0..7 {
        write(&mut s, 1, 3, i, 1, i as u64).unwrap();
    }
    write(&mut s, 2, 0, 0, 4, 7).unwrap();
    s.record(&header(5, 11, true, false));
    let bytes = s.encode();
    let back = ProducerStates::decode(&bytes).expect("decodes");
    assert_eq!(back.describe(), s.describe());
    assert_eq!(back.first_unstable_offset(), Some(11));
    assert!(matches!(back.check(1, 3, 5, 1), Ok(Check::Duplicate(_))));
    assert_eq!(back.check(1, 3, 7, 1), Ok(Check::Append));
    for cut in 0..bytes.len() {
        assert!(
            ProducerStates::decode(&bytes[..cut]).is_none(),
            "cut at {cut}"
        );
    }
    let mut flipped = bytes.clone();
    flipped[9] ^= 1;
    assert!(ProducerStates::decode(&flipped).is_none());
}

#[test]
fn a_marker_with_a_bumped_epoch_fences_the_old_one() {
    let mut s = ProducerStates::default();
    s.record(&header(4, 0, true, false));
    let mut marker = header(4, 1, true, true);
    marker.producer_epoch = 1;
    assert_eq!(s.record(&marker), Some(0));
    assert!(!s.in_transaction(4));
    assert_eq!(
        s.check(4, 0, 1, 1),
        Err(SequenceError::InvalidEpoch { current: 1 })
    );
}

#[test]
fn transactional_batches_need_an_open_transaction_or_a_live_guard() {
    let mut s = ProducerStates::default();
    let first = header(9, 0, true, false);
    let not_in_txn = Err(SequenceError::TxnState(
        "the batch is not part of an ongoing transaction",
    ));
    assert_eq!(s.check_txn(&first, None), not_in_txn);
    let guard = s.start_verification(9);
    assert_eq!(s.check_txn(&first, Some(guard + 1)), not_in_txn);
    assert_eq!(s.check_txn(&first, Some(guard)), Ok(()));
    s.record(&first);
    // Inside its transaction the producer needs no guard, and may not write plainly.
    assert_eq!(s.check_txn(&header(9, 1, true, false), None), Ok(()));
    assert!(matches!(
        s.check_txn(&header(9, 1, false, false), None),
        Err(SequenceError::TxnState(_))
    ));
    s.record(&header(9, 1, true, true));
    assert_eq!(s.check_txn(&header(9, 2, false, false), None), Ok(()));
}

#[test]
fn a_marker_between_verification_and_append_voids_the_guard() {
    let mut s = ProducerStates::default();
    let guard = s.start_verification(3);
    // The coordinator said yes, then the transaction timed out and its abort marker
    // arrived before the batch: the batch must not open a transaction after the marker.
    s.record(&header(3, 0, true, true));
    assert!(matches!(
        s.check_txn(&header(3, 1, true, false), Some(guard)),
        Err(SequenceError::TxnState(_))
    ));
    let refused = s.start_verification(3);
    assert_ne!(refused, guard, "a new verification after the marker");
    assert_eq!(
        s.start_verification(3),
        refused,
        "a verification under way is shared"
    );
    s.cancel_verification(3, refused);
    assert!(
        s.check_txn(&header(3, 1, true, false), Some(refused))
            .is_err()
    );
}

#[test]
fn idle_producers_expire_unless_a_transaction_is_open() {
    let mut s = ProducerStates::default();
    let mut idle = header(1, 0, false, false);
    idle.max_timestamp = 1_000;
    s.record(&idle);
    let mut open = header(2, 1, true, false);
    open.max_timestamp = 1_000;
    s.record(&open);
    let mut recent = header(3, 2, false, false);
    recent.max_timestamp = 5_000;
    s.record(&recent);
    assert_eq!(s.expire(6_000, 5_000), 1);
    let left: Vec<i64> = s.describe().iter().map(|p| p.producer_id).collect();
    assert_eq!(left, vec![2, 3]);
    assert_eq!(s.first_unstable_offset(), Some(1));
    // A forgotten producer is new again: any sequence goes.
    assert_eq!(s.check(1, 0, 57, 1), Ok(Check::Append));
}

#[test]
fn after_a_marker_the_first_batch_of_an_epoch_starts_at_zero() {
    let mut s = ProducerStates::default();
    let mut marker = header(6, 0, true, true);
    marker.producer_epoch = 2;
    s.record(&marker);
    assert_eq!(
        s.check(6, 2, 5, 1),
        Err(SequenceError::OutOfOrder {
            expected: 0,
            got: 5
        })
    );
    assert_eq!(s.check(6, 2, 0, 1), Ok(Check::Append));
}

#[test]
fn negative_producer_ids_are_no_producer_ids() {
    let mut s = ProducerStates::default();
    assert_eq!(s.check(-5, 0, 3, 1), Ok(Check::Append));
    assert_eq!(s.record(&header(-5, 0, true, false)), None);
    assert_eq!(s.first_unstable_offset(), None);
    assert!(s.is_empty());
}

#[test]
fn version_one_snapshots_still_load() {
    let mut s = ProducerStates::default();
    write(&mut s, 4, 1, 0, 2, 0).unwrap();
    s.record(&header(8, 2, true, false));
    // Version 1: no last timestamp per producer.
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&1u32.to_be_bytes());
    v1.extend_from_slice(&4i64.to_be_bytes());
    v1.extend_from_slice(&1i16.to_be_bytes());
    v1.push(1);
    for v in [0i32, 1] {
        v1.extend_from_slice(&v.to_be_bytes());
    }
    for v in [0i64, 1, 0] {
        v1.extend_from_slice(&v.to_be_bytes());
    }
    v1.extend_from_slice(&1u32.to_be_bytes());
    v1.extend_from_slice(&8i64.to_be_bytes());
    v1.extend_from_slice(&2i64.to_be_bytes());
    let crc = crc32c::crc32c(&v1);
    v1.extend_from_slice(&crc.to_be_bytes());
    let back = ProducerStates::decode(&v1).expect("a version 1 snapshot");
    assert_eq!(back.epoch_of(4), Some(1));
    assert!(matches!(back.check(4, 1, 0, 2), Ok(Check::Duplicate(_))));
    assert_eq!(back.first_unstable_offset(), Some(2));
}

#[test]
fn markers_from_an_older_coordinator_are_fenced() {
    let mut s = ProducerStates::default();
    assert_eq!(s.check_marker(5, 0, -1), Ok(()), "an unknown producer");
    s.record(&header(5, 0, true, false));
    s.record(&header(5, 1, true, true));
    s.record_coordinator_epoch(5, 3);
    assert_eq!(
        s.check_marker(5, 0, 2),
        Err(SequenceError::CoordinatorFenced { current: 3 })
    );
    assert_eq!(s.check_marker(5, 0, 3), Ok(()));
    let back = ProducerStates::decode(&s.encode()).unwrap();
    assert_eq!(back.describe()[0].coordinator_epoch, 3);
    assert!(back.check_marker(5, 0, 2).is_err());
}
