mod common;

use common::*;
use strom_storage::batch::{self, BatchHeader};
use strom_storage::{Log, LogConfig, StorageError, TimestampOffset, TimestampType};

fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config).unwrap()
}

#[test]
fn append_assigns_consecutive_offsets_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let mut b1 = batch(3, 1000, "a");
    let info = log.append(&mut b1, 5).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.records),
        (0, 2, 3)
    );
    let h = BatchHeader::parse(&b1).unwrap();
    assert_eq!((h.base_offset, h.partition_leader_epoch), (0, 5));
    let mut b2 = batch(2, 2000, "b");
    let info = log.append(&mut b2, 5).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(
        values(&log, 0),
        vec![
            (0, "a-0".into()),
            (1, "a-1".into()),
            (2, "a-2".into()),
            (3, "b-0".into()),
            (4, "b-1".into())
        ]
    );
    // Stored bytes are the patched input, byte for byte.
    assert_eq!(read_all(&log, 3)[0].1, b2);
    assert_eq!(log.epoch_cache().entries(), &[(5, 0)]);
}

#[test]
fn several_batches_in_one_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let mut both = batch(2, 10, "x");
    both.extend(batch(3, 20, "y"));
    let info = log.append(&mut both, 0).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.batches),
        (0, 4, 2)
    );
    assert_eq!(values(&log, 4), vec![(4, "y-2".into())]);
}

#[test]
fn bad_batches_are_rejected_and_leave_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_message_bytes: 500,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    log.append(&mut batch(1, 0, "ok"), 0).unwrap();
    let size = log.size_bytes();

    let mut crc = batch(2, 0, "z");
    let n = crc.len();
    crc[n - 1] ^= 0xff;
    assert!(matches!(
        log.append(&mut crc, 0),
        Err(StorageError::CorruptMessage(_))
    ));
    let mut magic = batch(2, 0, "z");
    magic[16] = 1;
    assert!(matches!(
        log.append(&mut magic, 0),
        Err(StorageError::InvalidRecord(_))
    ));
    let mut big = sized_batch(600, 0);
    assert!(matches!(
        log.append(&mut big, 0),
        Err(StorageError::MessageTooLarge { max: 500, .. })
    ));
    let mut truncated = batch(2, 0, "z");
    truncated.pop();
    assert!(matches!(
        log.append(&mut truncated, 0),
        Err(StorageError::CorruptMessage(_))
    ));
    // A good batch followed by a bad one: nothing of the request is written.
    let mut mixed = batch(1, 0, "good");
    mixed.extend_from_slice(&crc);
    assert!(log.append(&mut mixed, 0).is_err());
    assert!(matches!(
        log.append(&mut [], 0),
        Err(StorageError::InvalidRecord(_))
    ));

    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(log.size_bytes(), size);
}

#[test]
fn log_append_time_stamps_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let mut b = batch(2, 5, "t");
    let info = log.append_at(&mut b, 0, 777_000).unwrap();
    assert_eq!(info.log_append_time, Some(777_000));
    let stored = &read_all(&log, 0)[0].1;
    let h = batch::validate(stored).unwrap();
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, 777_000);
}

#[test]
fn read_returns_whole_batches_within_max_bytes_but_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let mut sizes = Vec::new();
    for i in 0..10 {
        let mut b = sized_batch(100, i);
        sizes.push(b.len() as u64);
        log.append(&mut b, 0).unwrap();
    }
    // Offset in the middle: starts at that batch.
    let r = log.read(4, 1, None).unwrap().region.unwrap();
    assert_eq!(r.len, sizes[4]);
    let bytes = r.read_all().unwrap();
    assert_eq!(BatchHeader::parse(&bytes).unwrap().base_offset, 4);
    // Room for 2.5 batches: 2 whole ones.
    let r = log
        .read(0, (sizes[0] * 5 / 2) as usize, None)
        .unwrap()
        .region
        .unwrap();
    assert_eq!(r.len, sizes[0] * 2);
    // Upper bound (high watermark) at 6: batches 4 and 5 only.
    let r = log.read(4, 1 << 20, Some(6)).unwrap().region.unwrap();
    assert_eq!(r.len, sizes[4] + sizes[5]);
    assert!(log.read(6, 1 << 20, Some(6)).unwrap().region.is_none());
    // At the end: nothing; past the end or before the start: out of range.
    assert!(log.read(10, 1 << 20, None).unwrap().region.is_none());
    assert!(matches!(
        log.read(11, 100, None),
        Err(StorageError::OffsetOutOfRange {
            offset: 11,
            start: 0,
            end: 10
        })
    ));
}

#[test]
fn read_finds_offsets_inside_multi_record_batches_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(2000));
    for i in 0..40 {
        log.append(&mut batch(5, i * 10, &format!("b{i}")), 0)
            .unwrap();
    }
    assert!(log.segment_count() >= 3, "{}", log.segment_count());
    for offset in [0u64, 3, 57, 123, 199] {
        let r = log.read(offset, 1, None).unwrap().region.unwrap();
        let h = BatchHeader::parse(&r.read_all().unwrap()).unwrap();
        assert_eq!(h.base_offset as u64, offset / 5 * 5);
    }
    let all = values(&log, 0);
    assert_eq!(all.len(), 200);
    assert!(all.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
}

#[test]
fn index_files_appear_with_their_first_entry() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("00000000000000000000.index");
    let time_index = dir.path().join("00000000000000000000.timeindex");
    let config = LogConfig {
        index_interval_bytes: 1000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    log.append_at(&mut sized_batch(300, 1_000), 0, 1_000)
        .unwrap();
    log.close().unwrap();
    assert!(!index.exists() && !time_index.exists());
    let log = open(dir.path(), config);
    for i in 1..10 {
        log.append_at(&mut sized_batch(300, 1_000 + i), 0, 1_000 + i)
            .unwrap();
    }
    log.close().unwrap();
    assert!(std::fs::metadata(&index).unwrap().len() > 0);
    assert!(std::fs::metadata(&time_index).unwrap().len() > 0);
    let log = open(dir.path(), config);
    for offset in 0..10 {
        let r = log.read(offset, 1, None).unwrap().region.unwrap();
        let h = BatchHeader::parse(&r.read_all().unwrap()).unwrap();
        assert_eq!(h.base_offset as u64, offset);
    }
    let found = log.offset_for_timestamp(1_005).unwrap().unwrap();
    assert_eq!((found.offset, found.timestamp), (5, 1_005));
}

#[test]
fn segments_roll_by_size_and_time_and_are_named_by_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        segment_ms: 60_000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let mut t = 1_000_000;
    for _ in 0..5 {
        log.append_at(&mut sized_batch(300, t), 0, t).unwrap();
    }
    // 5 batches of ~370 bytes with 1000-byte segments: 2 per segment.
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4]);
    assert!(dir.path().join("00000000000000000002.log").exists());
    // Under index.interval.bytes apart, no index entry: no index files either.
    assert!(!dir.path().join("00000000000000000002.index").exists());
    assert!(!dir.path().join("00000000000000000002.timeindex").exists());
    // Time: the active segment (base 4) got its first append at t; a minute later it rolls.
    t += 59_999;
    log.append_at(&mut sized_batch(10, t), 0, t).unwrap();
    assert_eq!(log.segment_count(), 3);
    t += 1;
    log.append_at(&mut sized_batch(10, t), 0, t).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4, 6]);
    // A batch larger than a segment still goes in (alone).
    log.append(&mut sized_batch(2000, t), 0).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4, 6, 7]);
}

#[test]
fn offsets_for_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(1500));
    // Batch i holds 4 records with timestamps 1000*i + 0..4.
    for i in 0..20 {
        log.append(&mut batch(4, 1000 * i, "r"), 0).unwrap();
    }
    let at = |ts| log.offset_for_timestamp(ts).unwrap();
    assert_eq!(
        at(0),
        Some(TimestampOffset {
            timestamp: 0,
            offset: 0
        })
    );
    assert_eq!(
        at(2),
        Some(TimestampOffset {
            timestamp: 2,
            offset: 2
        })
    );
    assert_eq!(
        at(4),
        Some(TimestampOffset {
            timestamp: 1000,
            offset: 4
        })
    );
    assert_eq!(
        at(7002),
        Some(TimestampOffset {
            timestamp: 7002,
            offset: 30
        })
    );
    assert_eq!(
        at(19_003),
        Some(TimestampOffset {
            timestamp: 19_003,
            offset: 79
        })
    );
    assert_eq!(at(19_004), None);
    assert_eq!(
        log.max_timestamp_offset().unwrap(),
        Some(TimestampOffset {
            timestamp: 19_003,
            offset: 79
        })
    );
    // Below the log start offset nothing is returned.
    log.delete_records_before(10).unwrap();
    assert_eq!(
        at(0),
        Some(TimestampOffset {
            timestamp: 2002,
            offset: 10
        })
    );
}

#[test]
fn timestamps_that_go_backwards_still_find_the_first_match() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(100_000));
    for ts in [5000, 1000, 6000, 2000, 7000] {
        log.append(&mut sized_batch(200, ts), 0).unwrap();
    }
    let found = log.offset_for_timestamp(1500).unwrap().unwrap();
    assert_eq!((found.offset, found.timestamp), (0, 5000));
    let found = log.offset_for_timestamp(6500).unwrap().unwrap();
    assert_eq!((found.offset, found.timestamp), (4, 7000));
}

#[test]
fn truncate_to_removes_the_tail_including_a_straddling_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(1000));
    for i in 0..30 {
        log.append(&mut batch(3, i, &format!("b{i}")), i as i32 / 10)
            .unwrap();
    }
    let segments_before = log.segment_count();
    // Offset 40 is inside batch 13 (offsets 39..41): the whole batch goes.
    assert_eq!(log.truncate_to(40).unwrap(), 39);
    assert_eq!(log.log_end_offset(), 39);
    assert!(log.segment_count() < segments_before);
    assert_eq!(values(&log, 36).last().unwrap(), &(38, "b12-2".to_string()));
    assert_eq!(log.epoch_cache().entries(), &[(0, 0), (1, 30)]);
    // Appends continue from the new end; truncating past the end changes nothing.
    let info = log.append(&mut batch(1, 0, "new"), 2).unwrap();
    assert_eq!(info.base_offset, 39);
    assert_eq!(log.truncate_to(1000).unwrap(), 40);
    // Truncate to zero: empty log that starts at 0.
    assert_eq!(log.truncate_to(0).unwrap(), 0);
    assert_eq!(log.segment_base_offsets(), vec![0]);
    assert_eq!(log.append(&mut batch(1, 0, "z"), 3).unwrap().base_offset, 0);
}

#[test]
fn reopen_after_clean_close_keeps_everything_and_loads_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(600);
    let log = open(dir.path(), config);
    for i in 0..200 {
        log.append(&mut batch(2, i, &format!("v{i}")), 1).unwrap();
    }
    let segs = log.segment_count();
    let expected = values(&log, 0);
    log.close().unwrap();
    let log = open(dir.path(), config);
    assert_eq!(log.segment_count(), segs);
    // Only the last segment's index is needed to know the end.
    assert!(
        log.loaded_index_count() <= 1,
        "{}",
        log.loaded_index_count()
    );
    assert_eq!(log.log_end_offset(), 400);
    assert_eq!(values(&log, 0), expected);
    assert_eq!(
        log.append(&mut batch(1, 0, "more"), 1).unwrap().base_offset,
        400
    );
}

#[test]
fn missing_or_garbage_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(5000);
    let log = open(dir.path(), config);
    for i in 0..100 {
        log.append(&mut batch(3, i, &format!("v{i}")), 0).unwrap();
    }
    let expected = values(&log, 0);
    log.close().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("index") if n % 2 == 0 => {
                std::fs::remove_file(&p).unwrap();
                n += 1
            }
            Some("index") => {
                std::fs::write(&p, [0xff; 13]).unwrap();
                n += 1
            }
            Some("timeindex") => std::fs::write(&p, [7; 24]).unwrap(),
            _ => {}
        }
    }
    assert!(n >= 2);
    let log = open(dir.path(), config);
    assert_eq!(values(&log, 0), expected);
    for offset in [0, 77, 150, 299] {
        let r = log.read(offset, 1, None).unwrap().region.unwrap();
        let h = BatchHeader::parse(&r.read_all().unwrap()).unwrap();
        assert_eq!(h.base_offset as u64, offset / 3 * 3);
    }
    // Batch 48 holds timestamps 48, 49, 50 at offsets 144..=146.
    assert_eq!(log.offset_for_timestamp(50).unwrap().unwrap().offset, 146);
}

#[test]
fn unclean_shutdown_truncates_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(100_000);
    let log = open(dir.path(), config);
    for i in 0..10 {
        log.append(&mut batch(2, i, &format!("v{i}")), 0).unwrap();
    }
    let expected = values(&log, 0);
    drop(log); // no close: no clean-shutdown marker
    let seg = dir.path().join("00000000000000000000.log");
    let f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    let len = f.metadata().unwrap().len();
    let mut torn = batch(2, 99, "torn");
    torn.truncate(30);
    use std::io::Write;
    (&f).write_all(&torn).unwrap();
    drop(f);
    let log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), 20);
    assert_eq!(values(&log, 0), expected);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(
        log.append(&mut batch(1, 0, "after"), 0)
            .unwrap()
            .base_offset,
        20
    );
}

#[test]
fn flush_policy_moves_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_messages: 5,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    assert_eq!(log.recovery_point(), 0);
    for _ in 0..2 {
        log.append(&mut batch(2, 0, "f"), 0).unwrap();
    }
    assert_eq!(log.recovery_point(), 0);
    log.append(&mut batch(2, 0, "f"), 0).unwrap();
    assert_eq!(log.recovery_point(), 6);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_ms: 1000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let t = strom_storage_now();
    log.append_at(&mut batch(1, 0, "f"), 0, t).unwrap();
    log.maybe_flush(t + 10).unwrap();
    assert_eq!(log.recovery_point(), 0);
    log.maybe_flush(t + 5000).unwrap();
    assert_eq!(log.recovery_point(), 1);
}

/// The periodic checkpoints write only what changed: an idle partition costs no write and no
/// fsync per pass (thousands of partitions made every pass rewrite thousands of files).
#[test]
fn periodic_checkpoints_write_only_what_changed() {
    // A checkpoint file's value: its last line.
    let value = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    log.append(&mut batch(3, 0, "c"), 0).unwrap();
    log.flush().unwrap();
    log.checkpoint().unwrap();
    log.checkpoint_high_watermark(3).unwrap();
    let (rp, hw) = (
        dir.path().join("recovery-point-checkpoint"),
        dir.path().join("high-watermark-checkpoint"),
    );
    assert_eq!((value(&rp), value(&hw)), ("3".into(), "3".into()));
    // Unchanged: the next pass writes neither (the files removed here stay removed).
    std::fs::remove_file(&rp).unwrap();
    std::fs::remove_file(&hw).unwrap();
    log.checkpoint().unwrap();
    log.checkpoint_high_watermark(3).unwrap();
    assert!(!rp.exists() && !hw.exists());
    // Changed: written again.
    log.append(&mut batch(2, 0, "c"), 0).unwrap();
    log.flush().unwrap();
    log.checkpoint().unwrap();
    log.checkpoint_high_watermark(5).unwrap();
    assert_eq!((value(&rp), value(&hw)), ("5".into(), "5".into()));
}

fn strom_storage_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn concurrent_readers_see_only_whole_batches_while_a_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(open(dir.path(), small_segments(20_000)));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                log.append(&mut batch(3, i, &format!("w{i}")), 0).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut next = 0u64;
                while next < 6000 {
                    let r = log.read(next, 4096, None).unwrap();
                    let Some(region) = r.region else { continue };
                    let bytes = region.read_all().unwrap();
                    let mut pos = 0;
                    while pos < bytes.len() {
                        let (h, size) = batch::check_framing(&bytes[pos..]).unwrap();
                        batch::validate(&bytes[pos..pos + size]).unwrap();
                        assert_eq!(h.base_offset as u64, next);
                        next = h.last_offset() as u64 + 1;
                        pos += size;
                    }
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn deleting_the_log_removes_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let log = open(&path, LogConfig::default());
    log.append(&mut batch(1, 0, "x"), 0).unwrap();
    log.delete().unwrap();
    assert!(!path.exists());
}

#[test]
fn opening_ten_thousand_segments_reads_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(80); // one batch per segment
    let log = open(dir.path(), config);
    for i in 0..10_000 {
        log.append(&mut sized_batch(1, i), 0).unwrap();
    }
    assert_eq!(log.segment_count(), 10_000);
    log.close().unwrap();
    let log = open(dir.path(), config);
    assert_eq!(log.segment_count(), 10_000);
    assert!(log.loaded_index_count() <= 1);
    assert_eq!(log.log_end_offset(), 10_000);
    let r = log.read(5_000, 1, None).unwrap().region.unwrap();
    assert_eq!(
        BatchHeader::parse(&r.read_all().unwrap())
            .unwrap()
            .base_offset,
        5_000
    );
    assert!(log.loaded_index_count() <= 2);
}

/// The broker's periodic work holds a list of logs taken before a topic was deleted: on a
/// log closed and moved away (as DeleteTopics does), checkpoint, flush and retention do
/// nothing and fail nothing. Before, the checkpoint wrote into the vanished directory and
/// logged "recovery-point-checkpoint.tmp: No such file".
#[test]
fn periodic_work_on_a_deleted_log_is_a_quiet_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let log = open(&path, LogConfig::default());
    log.append(&mut batch(3, 1000, "a"), 0).unwrap();
    log.close().unwrap();
    let doomed = dir.path().join("t-0.x-delete");
    std::fs::rename(&path, &doomed).unwrap();
    std::fs::remove_dir_all(&doomed).unwrap();
    assert!(log.is_closed());
    log.checkpoint().unwrap();
    log.maybe_flush(i64::MAX).unwrap();
    assert_eq!(log.apply_retention(i64::MAX).unwrap(), 0);
    assert!(!path.exists(), "nothing recreated the deleted directory");
}

/// A new log's segment holds no index in memory until it is written or read (a broker
/// creating tens of thousands of partitions pays nothing for their empty indexes), and
/// one materialized then is empty and keeps entries as usual; nor does a reopened one.
#[test]
fn a_new_segment_holds_no_index_until_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    assert_eq!(log.loaded_index_count(), 0);
    assert!(log.read(0, 1 << 20, None).unwrap().region.is_none());
    for i in 0..3 {
        log.append(&mut batch(2, 1000 + 10 * i, "x"), 0).unwrap();
    }
    assert_eq!(log.loaded_index_count(), 1);
    assert_eq!(values(&log, 3).first().unwrap().0, 3);
    assert_eq!(
        log.offset_for_timestamp(1005).unwrap(),
        Some(TimestampOffset {
            timestamp: 1010,
            offset: 2
        })
    );
    log.close().unwrap();
    // Reopened, the log knows where it ends without keeping the index it read for that.
    let log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.loaded_index_count(), 0);
    assert_eq!(
        values(&log, 0).len(),
        6,
        "the index entries written are read back"
    );
    let info = log.append(&mut batch(1, 2000, "y"), 0).unwrap();
    assert_eq!(info.base_offset, 6);
}
