//! Retention and DeleteRecords: the log start moves, whole segments go, the active one
//! stays, and deleted files never outlive the call.

mod common;

use common::*;
use strom_storage::{Log, LogConfig, StorageError};

fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config).unwrap()
}

#[test]
fn delete_records_moves_the_start_and_drops_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(1000));
    for i in 0..30 {
        log.append(&mut batch(3, i, "d"), 0).unwrap();
    }
    let segs = log.segment_base_offsets();
    let target = segs[2] + 1;
    assert_eq!(log.delete_records_before(target).unwrap(), target);
    assert_eq!(log.log_start_offset(), target);
    assert_eq!(log.segment_base_offsets()[0], segs[2]);
    assert!(matches!(
        log.read(target - 1, 100, None),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert!(log.read(target, 100, None).unwrap().region.is_some());
    assert!(matches!(
        log.delete_records_before(1000),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // The start survives a restart.
    log.close().unwrap();
    let log = open(dir.path(), small_segments(1000));
    assert_eq!(log.log_start_offset(), target);
    // Delete up to the end: the active segment stays, empty of readable records.
    assert_eq!(log.delete_records_before(90).unwrap(), 90);
    assert!(log.read(90, 100, None).unwrap().region.is_none());
}

#[test]
fn a_start_at_the_first_segment_needs_no_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log-start-offset-checkpoint");
    let log = open(dir.path(), small_segments(1000));
    for i in 0..30 {
        log.append(&mut batch(3, i, "d"), 0).unwrap();
    }
    log.close().unwrap();
    assert!(!file.exists(), "a clean shutdown wrote an implied start");
    let log = open(dir.path(), small_segments(1000));
    assert_eq!(log.log_start_offset(), 0);
    // Trimmed inside a segment: only the file knows where the log starts.
    let segs = log.segment_base_offsets();
    log.delete_records_before(segs[1] + 2).unwrap();
    log.close().unwrap();
    assert!(file.exists());
    let log = open(dir.path(), small_segments(1000));
    assert_eq!(log.log_start_offset(), segs[1] + 2);
    // Back at a segment's base, the file that exists is kept up to date.
    log.delete_records_before(segs[2]).unwrap();
    log.close().unwrap();
    let log = open(dir.path(), small_segments(1000));
    assert_eq!(log.log_start_offset(), segs[2]);
    assert_eq!(log.segment_base_offsets()[0], segs[2]);
}

#[test]
fn retention_by_time_and_size_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_segments(1000);
    config.retention_ms = 10_000;
    let log = open(dir.path(), config);
    // Segments of 2 batches; batch i has timestamp 1000 * i.
    for i in 0..10 {
        log.append(&mut sized_batch(300, 1000 * i), 0).unwrap();
    }
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4, 6, 8]);
    // At t=13_500: segment 0 (max ts 1000) and 2 (max 3000) are older than 10 s.
    assert_eq!(log.apply_retention(13_500).unwrap(), 2);
    assert_eq!(log.segment_base_offsets(), vec![4, 6, 8]);
    assert_eq!(log.log_start_offset(), 4);
    // Far in the future everything but the active segment goes.
    assert_eq!(log.apply_retention(1_000_000).unwrap(), 2);
    assert_eq!(log.segment_base_offsets(), vec![8]);

    let dir = tempfile::tempdir().unwrap();
    let mut config = small_segments(1000);
    config.retention_ms = -1;
    config.retention_bytes = 1500;
    let log = open(dir.path(), config);
    for i in 0..10 {
        log.append(&mut sized_batch(300, i), 0).unwrap();
    }
    let seg_size = log.size_bytes() / 5;
    // As in Kafka, a segment goes only if the log stays at least retention.bytes without it.
    assert_eq!(log.apply_retention(0).unwrap(), 2);
    assert_eq!(log.segment_base_offsets(), vec![4, 6, 8]);
    assert!(log.size_bytes() >= 1500 && log.size_bytes() - seg_size < 1500);
}

#[test]
fn retention_config_change_applies_to_the_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(1000));
    for i in 0..10 {
        log.append(&mut sized_batch(300, 1000 * i), 0).unwrap();
    }
    // Default retention.ms is 7 days: nothing is old at t = 1 hour.
    assert_eq!(log.apply_retention(3_600_000).unwrap(), 0);
    let mut config = log.config();
    config.set("retention.ms", "1000").unwrap();
    log.set_config(config);
    assert_eq!(log.apply_retention(3_600_000).unwrap(), 4);
    assert_eq!(log.segment_count(), 1);
}

/// Retention renames the doomed segments' files to `.deleted` under the writer's lock and
/// unlinks them after it (so appends do not wait for a thousand unlinks); none is left once
/// it returns, and `.deleted` files a crash left behind are removed at the next open.
#[test]
fn retention_unlinks_outside_the_lock_and_leaves_no_deleted_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(300));
    for i in 0..30 {
        log.append(&mut batch(2, 1000 + i, "r"), 0).unwrap();
    }
    let before = log.segment_count();
    let mut config = log.config();
    config.retention_ms = 1;
    log.set_config(config);
    let deleted = log.apply_retention(1_000_000).unwrap();
    assert_eq!(deleted, before - 1);
    let names = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        names().iter().all(|n| !n.ends_with(".deleted")),
        "{:?}",
        names()
    );
    assert_eq!(log.segment_count(), 1);
    // A crash between the rename and the unlink: the next open removes the leftovers.
    log.close().unwrap();
    drop(log);
    std::fs::write(dir.path().join("00000000000000000000.log.deleted"), b"old").unwrap();
    let log = open(dir.path(), small_segments(300));
    assert!(
        names().iter().all(|n| !n.ends_with(".deleted")),
        "{:?}",
        names()
    );
    assert_eq!(log.segment_count(), 1);
}
