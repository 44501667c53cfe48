//! A partition log and its producer state as one unit: a truncation (what a follower does
//! with a divergent tail) takes the producer state and the aborted-transaction index back
//! with the records, through snapshots and replay.

mod common;

use common::*;
use strom_storage::batch::{BatchBuilder, Record};
use strom_storage::producer_state::SequenceError;
use strom_storage::{AppendError, LeaderAppend, PartitionLog};

fn producer_batch(pid: i64, seq: i32, n: usize, transactional: bool) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b = b.record(Record {
            timestamp: 1,
            key: None,
            value: Some(format!("{pid}/{seq}/{i} padding to make segments roll").into_bytes()),
            headers: vec![],
        });
    }
    b.producer_id = pid;
    b.producer_epoch = 0;
    b.base_sequence = seq;
    b.transactional = transactional;
    b.build()
}

fn written(r: Result<LeaderAppend, AppendError>) -> (u64, u64) {
    match r.unwrap() {
        LeaderAppend::Written {
            base_offset,
            last_offset,
            ..
        } => (base_offset, last_offset),
        d => panic!("expected a write, got {d:?}"),
    }
}

/// A verified first transactional batch, as the broker writes one.
fn begin(log: &PartitionLog, pid: i64, seq: i32) -> (u64, u64) {
    begin_at(log, pid, seq, 0)
}

/// [`begin`] by a leader at `leader_epoch`.
fn begin_at(log: &PartitionLog, pid: i64, seq: i32, leader_epoch: i32) -> (u64, u64) {
    let guard = log.start_verification(pid);
    written(log.append_as_leader(
        &mut producer_batch(pid, seq, 2, true),
        leader_epoch,
        Some(guard),
    ))
}

#[test]
fn truncation_takes_the_producer_state_back_with_the_records() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: rolls leave producer-state snapshots on the way.
    let log = PartitionLog::open(dir.path(), small_segments(300)).unwrap();
    // Producer 1, idempotent: sequences 0, 2, 4 at offsets 0-1, 2-3, 4-5.
    for (seq, offsets) in [(0, (0, 1)), (2, (2, 3)), (4, (4, 5))] {
        let r = log.append_as_leader(&mut producer_batch(1, seq, 2, false), 0, None);
        assert_eq!(written(r), offsets);
    }
    // Producer 2: a transaction at 6-7 aborted at 8, another at 9-10 committed at 11.
    assert_eq!(begin(&log, 2, 0), (6, 7));
    assert_eq!(log.write_marker(2, 0, false, 0, 0, 1).unwrap(), 8);
    assert_eq!(begin(&log, 2, 2), (9, 10));
    assert_eq!(log.write_marker(2, 0, true, 0, 0, 1).unwrap(), 11);
    assert!(log.log().segment_count() > 3, "segments rolled");
    assert!(!log.log().producer_snapshots().unwrap().is_empty());
    let aborted = |log: &PartitionLog| -> Vec<(i64, u64, u64)> {
        let end = log.log().log_end_offset();
        log.log()
            .aborted_txns(0, end)
            .unwrap()
            .into_iter()
            .map(|t| (t.producer_id, t.first_offset, t.last_offset))
            .collect()
    };
    assert_eq!(aborted(&log), vec![(2, 6, 8)]);
    assert_eq!(log.first_unstable_offset(), None);

    // Cut the committed transaction's marker: that transaction is open again.
    assert_eq!(log.truncate_to(11).unwrap(), 11);
    assert!(log.in_transaction(2));
    assert_eq!(log.first_unstable_offset(), Some(9));
    assert_eq!(aborted(&log), vec![(2, 6, 8)]);

    // Cut the abort marker: the first transaction is open, and no longer aborted.
    assert_eq!(log.truncate_to(8).unwrap(), 8);
    assert_eq!(log.first_unstable_offset(), Some(6));
    assert_eq!(aborted(&log), vec![]);

    // Cut producer 1's last batch: its sequence 4 is new again, not a duplicate, and 6 would
    // be a gap; producer 2 is gone with its records.
    assert_eq!(log.truncate_to(4).unwrap(), 4);
    assert!(!log.in_transaction(2));
    assert_eq!(log.first_unstable_offset(), None);
    assert!(matches!(
        log.append_as_leader(&mut producer_batch(1, 6, 2, false), 0, None),
        Err(AppendError::Sequence(SequenceError::OutOfOrder {
            expected: 4,
            got: 6
        }))
    ));
    let r = log.append_as_leader(&mut producer_batch(1, 4, 2, false), 0, None);
    assert_eq!(written(r), (4, 5));
    // And a retry of what is there is still a duplicate.
    let r = log.append_as_leader(&mut producer_batch(1, 2, 2, false), 0, None);
    assert!(matches!(r, Ok(LeaderAppend::Duplicate(m)) if m.first_offset == 2));
    let described: Vec<(i64, i32)> = log
        .producers()
        .iter()
        .map(|p| (p.producer_id, p.last_sequence))
        .collect();
    assert_eq!(described, vec![(1, 5)]);

    // The state survives a restart as truncated.
    log.close().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments(300)).unwrap();
    let described: Vec<(i64, i32)> = log
        .producers()
        .iter()
        .map(|p| (p.producer_id, p.last_sequence))
        .collect();
    assert_eq!(described, vec![(1, 5)]);
    assert_eq!(log.first_unstable_offset(), None);
}

/// A replica that led epoch 5 from an empty log without writing, then follows a leader whose
/// log holds epoch-3 batches from offset 0 (written before epoch 5, and kept by the replica
/// elected after it): once it copied them, it answers OffsetForLeaderEpoch for epoch 3 from
/// its log. It said epoch 5 started at 0, and a consumer at epoch 3 asking it once it led
/// again was told the log ended at 0 and read the partition again from its start (nemesis
/// seed 3 in CI: a transactional copier's input read twice).
#[test]
fn copying_older_epochs_than_one_led_from_an_empty_log_keeps_the_epoch_history_right() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = PartitionLog::open(ld.path(), small_segments(1 << 20)).unwrap();
    for seq in [0, 2, 4] {
        written(leader.append_as_leader(&mut producer_batch(1, seq, 2, false), 3, None));
    }
    let follower = PartitionLog::open(fd.path(), small_segments(1 << 20)).unwrap();
    follower.log().assign_epoch_start(5).unwrap();
    assert_eq!(follower.log().end_offset_for_epoch(3), (3, 0));
    let r = leader.log().read(0, 1 << 20, None).unwrap();
    follower
        .append_replicated(&r.region.unwrap().read_all().unwrap())
        .unwrap();
    assert_eq!(follower.log().log_end_offset(), 6);
    // Epoch 3 ends at the log end on both; nothing claims epoch 5 started at 0.
    assert_eq!(follower.log().end_offset_for_epoch(3), (3, 6));
    assert_eq!(leader.log().end_offset_for_epoch(3), (3, 6));
    assert_eq!(follower.log().epoch_cache().entries(), &[(3, 0)]);
    // Leading again at epoch 7, epoch 3 still ends where epoch 7 starts.
    follower.log().assign_epoch_start(7).unwrap();
    assert_eq!(follower.log().end_offset_for_epoch(3), (3, 6));
    assert_eq!(follower.log().end_offset_for_epoch(5), (3, 6));
}

/// A follower's copy: the leader's batches, read from its log in chunks, appended as they
/// are. The follower ends with the same bytes, offsets and epochs, the same producers (a
/// retry is a duplicate there too, so a failover loses no dedup), the same open and aborted
/// transactions; a batch before its log end or with a bad CRC is refused.
#[test]
fn a_follower_copies_the_leaders_log_with_its_producer_state() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = PartitionLog::open(ld.path(), small_segments(300)).unwrap();
    for seq in [0, 2] {
        written(leader.append_as_leader(&mut producer_batch(1, seq, 2, false), 3, None));
    }
    assert_eq!(begin_at(&leader, 2, 0, 3), (4, 5));
    assert_eq!(leader.write_marker(2, 0, false, 0, 3, 1).unwrap(), 6);
    // A new leader epoch, and a transaction left open.
    written(leader.append_as_leader(&mut producer_batch(1, 4, 2, false), 5, None));
    assert_eq!(begin_at(&leader, 2, 2, 5), (9, 10));

    let follower = PartitionLog::open(fd.path(), small_segments(300)).unwrap();
    let end = leader.log().log_end_offset();
    while follower.log().log_end_offset() < end {
        let at = follower.log().log_end_offset();
        let r = leader.log().read(at, 150, None).unwrap();
        let bytes = r.region.unwrap().read_all().unwrap();
        follower.append_replicated(&bytes).unwrap();
    }
    let all = |log: &PartitionLog| {
        let r = log.log().read(0, 1 << 20, None).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < log.log().log_end_offset() {
            let r = log.log().read(at, 1 << 20, None).unwrap();
            let region = r.region.unwrap();
            at = region.next_offset;
            out.extend(region.read_all().unwrap());
        }
        drop(r);
        out
    };
    assert_eq!(all(&follower), all(&leader), "byte for byte");
    assert_eq!(
        follower.log().epoch_cache().entries(),
        leader.log().epoch_cache().entries()
    );
    assert_eq!(follower.log().epoch_cache().entries(), &[(3, 0), (5, 7)]);
    let producers = |log: &PartitionLog| -> Vec<(i64, i32)> {
        log.producers()
            .iter()
            .map(|p| (p.producer_id, p.last_sequence))
            .collect()
    };
    assert_eq!(producers(&follower), producers(&leader));
    assert_eq!(follower.first_unstable_offset(), Some(9));
    let aborted = follower.log().aborted_txns(0, end).unwrap();
    assert_eq!(
        aborted
            .iter()
            .map(|t| (t.producer_id, t.first_offset, t.last_offset))
            .collect::<Vec<_>>(),
        vec![(2, 4, 6)]
    );
    // Promoted, the follower answers a producer's retry as the leader would have.
    let r = follower.append_as_leader(&mut producer_batch(1, 4, 2, false), 6, None);
    assert!(matches!(r, Ok(LeaderAppend::Duplicate(m)) if m.first_offset == 7));

    // Refused: a batch before the log end; a damaged one.
    let first = leader.log().read(0, 1, None).unwrap().region.unwrap();
    let bytes = first.read_all().unwrap();
    assert!(follower.append_replicated(&bytes).is_err());
    let (d2, _) = (tempfile::tempdir().unwrap(), ());
    let fresh = PartitionLog::open(d2.path(), small_segments(300)).unwrap();
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    assert!(fresh.append_replicated(&damaged).is_err());
    assert_eq!(fresh.log().log_end_offset(), 0);
}

/// Most partitions of a large broker have no idempotent producer: they hold no producer
/// state at all, whatever is appended without a producer id, and lose it once their
/// producers expire.
#[test]
fn producer_state_exists_only_while_there_is_some() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(300)).unwrap();
    assert!(!log.holds_producer_state());
    for _ in 0..3 {
        written(log.append_as_leader(&mut producer_batch(-1, -1, 2, false), 0, None));
        // A follower's batch comes with its offset (the first 8 bytes, outside the CRC).
        let mut replicated = producer_batch(-1, -1, 1, false);
        let end = log.log().log_end_offset() as i64;
        replicated[..8].copy_from_slice(&end.to_be_bytes());
        log.append_replicated(&replicated).unwrap();
    }
    assert!(
        !log.holds_producer_state(),
        "no producer id, nothing to remember"
    );
    assert_eq!(log.log().log_end_offset(), 9);
    written(log.append_as_leader(&mut producer_batch(7, 0, 2, false), 0, None));
    assert!(log.holds_producer_state());
    assert_eq!(log.producers().len(), 1);
    // Not idle long enough: kept.
    assert_eq!(log.expire_producers(1, i64::MAX), 0);
    assert!(log.holds_producer_state());
    assert_eq!(log.expire_producers(i64::MAX, 1), 1);
    assert!(!log.holds_producer_state());
    // Its sequence is forgotten with it: any sequence goes again, as for a new producer.
    written(log.append_as_leader(&mut producer_batch(7, 5, 1, false), 0, None));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments(300)).unwrap();
    assert!(
        log.holds_producer_state(),
        "rebuilt from the log: producer 7 wrote last"
    );
}
