//! The aborted-transaction index and producer-state snapshots kept next to the segments.

mod common;

use common::*;
use strom_storage::txn_index::AbortedTxn;
use strom_storage::{Log, LogConfig};

fn aborted(pid: i64, first: u64, last: u64) -> AbortedTxn {
    AbortedTxn {
        producer_id: pid,
        first_offset: first,
        last_offset: last,
        last_stable_offset: last + 1,
    }
}

fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config).unwrap()
}

#[test]
fn aborted_transactions_live_with_their_marker_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(400));
    let mut markers = Vec::new();
    for i in 0..30u64 {
        log.append(&mut batch(3, i as i64, "a"), 0).unwrap();
        if i % 5 == 4 {
            // A transaction of producer i that spanned the last two batches, ended here.
            let last = log.log_end_offset() - 1;
            let t = aborted(i as i64, last - 5, last);
            log.add_aborted_txn(t).unwrap();
            // A replay of the same marker adds nothing.
            log.add_aborted_txn(t).unwrap();
            markers.push(t);
        }
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.aborted_txns(0, u64::MAX).unwrap(), markers);
    // A fetch sees those that overlap its range only.
    assert_eq!(log.aborted_txns(25, 26).unwrap(), vec![markers[1]]);
    assert_eq!(log.aborted_txns(90, 100).unwrap(), vec![]);
    // The index survives a clean and an unclean reopen.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), small_segments(400));
    assert_eq!(log.aborted_txns(0, u64::MAX).unwrap(), markers);
    drop(log);
    let log = open(dir.path(), small_segments(400));
    assert_eq!(log.aborted_txns(0, u64::MAX).unwrap(), markers);
    // Truncation forgets transactions whose marker is gone, on disk too.
    log.truncate_to(markers[3].last_offset).unwrap();
    assert_eq!(log.aborted_txns(0, u64::MAX).unwrap(), markers[..3]);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), small_segments(400));
    assert_eq!(log.aborted_txns(0, u64::MAX).unwrap(), markers[..3]);
    // Deleting segments deletes their index.
    let base = log.segment_base_offsets()[2];
    log.delete_records_before(base).unwrap();
    assert!(
        log.aborted_txns(0, u64::MAX)
            .unwrap()
            .iter()
            .all(|t| t.last_offset >= base)
    );
    let txnindexes = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".txnindex")
        })
        .count();
    assert!(txnindexes <= log.segment_count());
}

#[test]
fn snapshots_keep_the_newest_and_drop_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(400));
    for i in 0..10u64 {
        log.append(&mut batch(2, i as i64, "s"), 0).unwrap();
        log.write_producer_snapshot(log.log_end_offset(), format!("at {}", 2 * i + 2).as_bytes())
            .unwrap();
    }
    let snaps = log.producer_snapshots().unwrap();
    assert_eq!(
        snaps,
        vec![(20, b"at 20".to_vec()), (18, b"at 18".to_vec())]
    );
    // A truncation below a snapshot deletes it: it describes records that are gone.
    log.truncate_to(19).unwrap();
    assert_eq!(
        log.producer_snapshots().unwrap(),
        vec![(18, b"at 18".to_vec())]
    );
    log.append(&mut batch(5, 0, "t"), 0).unwrap();
    assert_eq!(
        log.producer_snapshots().unwrap(),
        vec![(18, b"at 18".to_vec())]
    );
}

#[test]
fn a_torn_index_tail_is_cut_before_the_next_entry() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    for i in 0..4 {
        log.append(&mut batch(2, i, "x"), 0).unwrap();
    }
    let first = aborted(1, 0, 1);
    log.add_aborted_txn(first).unwrap();
    drop(log);
    // A crash in the middle of the next entry's write.
    let index = dir.path().join("00000000000000000000.txnindex");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 1]);
    std::fs::write(&index, bytes).unwrap();
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.aborted_txns(0, u64::MAX).unwrap(), vec![first]);
    let second = aborted(2, 2, 7);
    log.add_aborted_txn(second).unwrap();
    drop(log);
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(
        log.aborted_txns(0, u64::MAX).unwrap(),
        vec![first, second],
        "the entry after the torn one is read back whole"
    );
    assert_eq!(std::fs::metadata(&index).unwrap().len(), 2 * 34);
}

#[test]
fn the_lookup_stops_where_no_earlier_transaction_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(400));
    let mut entries = Vec::new();
    while log.segment_count() < 4 {
        log.append(&mut batch(3, 0, "a"), 0).unwrap();
        let last = log.log_end_offset() - 1;
        if last % 9 == 8 {
            let t = aborted(last as i64, last - 2, last);
            log.add_aborted_txn(t).unwrap();
            entries.push(t);
        }
    }
    // An entry in the last segment claiming a start below 9: impossible in a real log
    // (the abort at 8 saw no transaction open), here to show the lookup never reads it.
    let last = log.log_end_offset() - 1;
    let impossible = aborted(99, 3, last);
    log.add_aborted_txn(impossible).unwrap();
    // A fetch of [0, 9) must hear of the transaction ending at 8, whose abort left no
    // transaction open: nothing ending later can start below 9, so the scan stops there.
    let found = log.aborted_txns(0, 9).unwrap();
    assert_eq!(found, vec![entries[0]]);
    entries.push(impossible);
    assert_eq!(
        log.aborted_txns(0, u64::MAX).unwrap(),
        entries,
        "an unbounded lookup sees every segment"
    );
}

#[test]
fn reads_tell_where_the_returned_batches_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    for i in 0..5 {
        log.append(&mut batch(2, i, "n"), 0).unwrap();
    }
    let one = log.read(0, 1, None).unwrap().region.unwrap();
    assert_eq!(one.next_offset, 2, "one batch of two records");
    let all = log.read(3, 1 << 20, None).unwrap().region.unwrap();
    assert_eq!(all.next_offset, 10);
    let upto = log.read(0, 1 << 20, Some(6)).unwrap().region.unwrap();
    assert_eq!(upto.next_offset, 6);
}

#[test]
fn an_unclean_open_says_where_recovery_started() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(400));
    while log.segment_count() < 3 {
        log.append(&mut batch(3, 0, "r"), 0).unwrap();
    }
    assert_eq!(log.recovered_from(), None, "a new log");
    let active = log.active_segment_base();
    drop(log);
    let log = open(dir.path(), small_segments(400));
    let from = log.recovered_from().expect("unclean");
    assert!(
        from <= active,
        "recovery checks from {from}, at or before {active}"
    );
    log.close().unwrap();
    drop(log);
    assert_eq!(open(dir.path(), small_segments(400)).recovered_from(), None);
}
