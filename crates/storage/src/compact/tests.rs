use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use krabka_compression::CompressionType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::swap::crash_point;
use super::*;
use crate::LogConfig;
use crate::batch::{BatchBuilder, Record, compute_crc};
use crate::partition_log::{LeaderAppend, PartitionLog};
use crate::txn_index::marker_type;

/// One record as stored: offset, key, value (None for a tombstone), producer id, and
/// whether it is a commit (Some(true)) or abort (Some(false)) marker.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    pid: i64,
    marker: Option<bool>,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

fn open(dir: &Path) -> PartitionLog {
    PartitionLog::open(dir, config()).unwrap()
}

fn opts(now: i64) -> CleanOptions {
    CleanOptions {
        now_ms: now,
        delete_retention_ms: 1000,
        min_compaction_lag_ms: 0,
        map_bytes: 1 << 20,
        upper: u64::MAX,
    }
}

fn clean(p: &PartitionLog, now: i64) -> Option<CleanStats> {
    p.clean(&opts(now), &mut |_| {}).unwrap()
}

fn record(key: &str, value: Option<&str>, ts: i64) -> Record {
    Record {
        timestamp: ts,
        key: Some(key.as_bytes().to_vec()),
        value: value.map(|v| v.as_bytes().to_vec()),
        headers: vec![],
    }
}

/// `batch` with its records section compressed by `codec`.
fn compressed(batch: Vec<u8>, codec: CompressionType) -> Vec<u8> {
    if codec == CompressionType::None {
        return batch;
    }
    let mut out = batch[..HEADER_LEN].to_vec();
    let body = krabka_compression::compress(codec, &batch[HEADER_LEN..]).unwrap();
    out.extend_from_slice(&body);
    let len = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    let attrs = i16::from_be_bytes([out[21], out[22]]) | codec.as_attribute_bits() as i16;
    out[21..23].copy_from_slice(&attrs.to_be_bytes());
    let crc = compute_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

fn put(p: &PartitionLog, records: Vec<Record>, codec: CompressionType) -> u64 {
    let mut b = BatchBuilder::new();
    for r in records {
        b = b.record(r);
    }
    let mut bytes = compressed(b.build(), codec);
    match p.append_as_leader(&mut bytes, 0, None).unwrap() {
        LeaderAppend::Written { base_offset, .. } => base_offset,
        other => panic!("{other:?}"),
    }
}

fn put1(p: &PartitionLog, key: &str, value: Option<&str>) -> u64 {
    put(p, vec![record(key, value, 1000)], CompressionType::None)
}

/// A transactional batch of producer `pid` (epoch 0, sequence `seq`).
fn put_txn(p: &PartitionLog, pid: i64, seq: i32, records: Vec<Record>) -> u64 {
    let mut b = BatchBuilder::new();
    for r in records {
        b = b.record(r);
    }
    b.producer_id = pid;
    b.producer_epoch = 0;
    b.base_sequence = seq;
    b.transactional = true;
    let mut bytes = b.build();
    let guard = (!p.in_transaction(pid)).then(|| p.start_verification(pid));
    match p.append_as_leader(&mut bytes, 0, guard).unwrap() {
        LeaderAppend::Written { base_offset, .. } => base_offset,
        other => panic!("{other:?}"),
    }
}

fn end_txn(p: &PartitionLog, pid: i64, commit: bool) -> u64 {
    p.write_marker(pid, 0, commit, 0, 0, 1000).unwrap()
}

fn contents(log: &Log) -> Vec<Stored> {
    let mut out = Vec::new();
    log.for_each_batch(0, None, |h, bytes| {
        let section = filter::records_section(h, bytes).unwrap();
        for r in filter::parse(h, &section).unwrap() {
            out.push(Stored {
                offset: r.offset,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                pid: h.producer_id,
                marker: if h.is_control() {
                    r.key.and_then(marker_type)
                } else {
                    None
                },
            });
        }
        true
    })
    .unwrap();
    out
}

/// What a read_committed consumer sees: data records outside aborted transactions.
fn committed(log: &Log) -> Vec<Stored> {
    let aborted = log.aborted_txns(0, u64::MAX).unwrap();
    let mut data_batches = HashMap::new();
    log.for_each_batch(0, None, |h, _| {
        data_batches.insert(h.base_offset as u64, (h.producer_id, h.is_transactional()));
        true
    })
    .unwrap();
    contents(log)
        .into_iter()
        .filter(|s| s.marker.is_none())
        .filter(|s| {
            !aborted.iter().any(|t| {
                t.producer_id == s.pid && t.first_offset <= s.offset && s.offset <= t.last_offset
            }) || s.pid < 0
        })
        .collect()
}

fn latest(records: &[Stored]) -> BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)> {
    let mut m = BTreeMap::new();
    for s in records {
        if let Some(k) = &s.key {
            m.insert(k.clone(), (s.offset, s.value.clone()));
        }
    }
    m
}

fn is_subsequence(small: &[Stored], big: &[Stored]) -> bool {
    let mut it = big.iter();
    small.iter().all(|s| it.any(|b| b == s))
}

#[test]
fn keeps_the_last_record_of_every_key_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    for i in 0..120 {
        put1(&p, &format!("k{}", i % 7), Some(&format!("v{i}")));
    }
    p.log().roll().unwrap();
    let end = p.log().log_end_offset();
    let before = contents(p.log());
    let segments = p.log().segment_count();
    assert_eq!(
        super::dirty_bytes_on_disk(dir.path()),
        Some((0, p.log().size_bytes()))
    );
    let stats = clean(&p, 5000).unwrap();
    assert_eq!(stats.end, end);
    assert_eq!(stats.records_read, 120);
    assert_eq!(stats.records_removed, 120 - 7);
    let after = contents(p.log());
    assert_eq!(after.len(), 7);
    assert_eq!(latest(&after), latest(&before));
    assert!(is_subsequence(&after, &before));
    assert_eq!(p.log().log_end_offset(), end);
    // Each segment was full: the first pass shrinks them one by one.
    assert_eq!(p.log().segment_count(), segments);
    assert!(p.log().size_bytes() < 7 * 200, "{}", p.log().size_bytes());
    // A consumer reading from any offset, in a gap too, next gets the next record kept
    // (after empty batches, if any: it moves past them as past any batch).
    for (i, kept) in after.iter().enumerate() {
        let from = if i == 0 { 0 } else { after[i - 1].offset + 1 };
        let mut next = from;
        let mut first = None;
        while first.is_none() && next < p.log().log_end_offset() {
            let r = p.log().read(next, 1 << 20, None).unwrap().region.unwrap();
            let bytes = r.read_all().unwrap();
            let mut pos = 0;
            while first.is_none() && pos < bytes.len() {
                let h = BatchHeader::parse(&bytes[pos..]).unwrap();
                let section =
                    filter::records_section(&h, &bytes[pos..pos + h.total_size()]).unwrap();
                first = filter::parse(&h, &section)
                    .unwrap()
                    .first()
                    .map(|r| r.offset);
                next = h.last_offset() as u64 + 1;
                pos += h.total_size();
            }
        }
        assert_eq!(first, Some(kept.offset), "read from {from}");
    }
    // Nothing is dirty any more, as the files say too.
    assert_eq!(clean(&p, 5000), None);
    let (clean_bytes, dirty_bytes) = super::dirty_bytes_on_disk(dir.path()).unwrap();
    assert!(clean_bytes > 0);
    assert_eq!(dirty_bytes, 0);
    assert_eq!(p.log().first_dirty_offset(), end);
    // The next pass merges the small cleaned segments into groups of up to segment.bytes.
    put1(&p, "k0", Some("newest"));
    p.log().roll().unwrap();
    let end = p.log().log_end_offset();
    clean(&p, 5000).unwrap();
    assert!(p.log().segment_count() <= 3, "{}", p.log().segment_count());
    let after = contents(p.log());
    assert_eq!(after.len(), 7);
    assert_eq!(after.last().unwrap().value.as_deref(), Some(&b"newest"[..]));

    // The cleaned log opens the same after a clean shutdown, and after a crash with every
    // segment scanned again.
    p.close().unwrap();
    drop(p);
    let p = open(dir.path());
    assert_eq!(contents(p.log()), after);
    drop(p);
    std::fs::remove_file(dir.path().join(crate::checkpoint::RECOVERY_POINT)).unwrap();
    let p = open(dir.path());
    assert_eq!(contents(p.log()), after);
    assert_eq!(p.log().log_end_offset(), end);
}

#[test]
fn the_active_segment_and_records_past_the_upper_bound_stay() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    for i in 0..60 {
        put1(&p, "k", Some(&format!("v{i}")));
    }
    let active = p.log().active_segment_base();
    let mut o = opts(5000);
    o.upper = 10;
    // No whole segment lies below offset 10 of one key's records? Then nothing happens.
    let stats = p.clean(&o, &mut |_| {}).unwrap();
    if let Some(s) = stats {
        assert!(s.end <= 10, "{s:?}");
    }
    let stats = clean(&p, 5000).unwrap();
    assert_eq!(stats.end, active);
    let after = contents(p.log());
    // The active segment's records all stay, and one record below it.
    let in_active = after.iter().filter(|s| s.offset >= active).count() as u64;
    assert_eq!(in_active, 60 - active);
    assert_eq!(after.len() as u64, in_active + 1);
    assert_eq!(
        after[0].value.as_deref(),
        Some(format!("v{}", active - 1).as_bytes())
    );
}

#[test]
fn tombstones_stay_for_the_delete_retention_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    for i in 0..30 {
        put1(&p, &format!("k{}", i % 3), Some("x"));
    }
    put1(&p, "k1", None);
    p.log().roll().unwrap();
    let stats = clean(&p, 10_000).unwrap();
    assert_eq!(stats.records_removed, 31 - 3);
    let after = contents(p.log());
    let tomb = after
        .iter()
        .find(|s| s.key.as_deref() == Some(b"k1"))
        .unwrap();
    assert_eq!(tomb.value, None, "{after:?}");
    // The batch now carries its delete horizon: now + delete.retention.ms.
    let mut horizon = None;
    p.log()
        .for_each_batch(tomb.offset, Some(tomb.offset + 1), |h, _| {
            horizon = filter::delete_horizon(h);
            false
        })
        .unwrap();
    assert_eq!(horizon, Some(11_000));
    assert_eq!(
        p.log().cleanable(u64::MAX, 0, 0).unwrap().next_horizon,
        Some(11_000)
    );
    // Before the horizon, a pass changes nothing; after it the tombstone goes, even though
    // nothing new was written.
    assert_eq!(clean(&p, 10_500), None);
    clean(&p, 11_001).unwrap();
    let after = contents(p.log());
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|s| s.key.as_deref() != Some(b"k1")));
}

#[test]
fn aborted_data_goes_and_markers_stay_while_their_data_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    put_txn(&p, 7, 0, vec![record("a", Some("committed"), 1000)]);
    put_txn(
        &p,
        8,
        0,
        vec![
            record("a", Some("aborted"), 1000),
            record("b", Some("aborted"), 1000),
        ],
    );
    put1(&p, "c", Some("plain"));
    let commit = end_txn(&p, 7, true);
    let abort = end_txn(&p, 8, false);
    // Producer 8's last batch is kept (if only empty) and keeps its transaction's marker: so
    // that the aborted one is not its last.
    put_txn(&p, 8, 2, vec![record("d", Some("later"), 1000)]);
    end_txn(&p, 8, true);
    for i in 0..20 {
        put1(&p, &format!("pad{i}"), Some("x"));
    }
    p.log().roll().unwrap();
    let view = committed(p.log());
    clean(&p, 10_000).unwrap();
    let after = contents(p.log());
    assert!(
        after.iter().all(|s| s.value.as_deref() != Some(b"aborted")),
        "{after:?}"
    );
    assert_eq!(committed(p.log()), view);
    // Both markers stay until their horizon; the abort marker's index entry with it.
    assert!(
        after
            .iter()
            .any(|s| s.offset == commit && s.marker == Some(true))
    );
    assert!(
        after
            .iter()
            .any(|s| s.offset == abort && s.marker == Some(false))
    );
    assert_eq!(p.log().aborted_txns(0, u64::MAX).unwrap().len(), 1);
    // Past the horizon the abort marker goes (its data is gone); the commit marker stays,
    // for the committed record still before it.
    clean(&p, 11_001).unwrap();
    let after = contents(p.log());
    assert!(after.iter().any(|s| s.offset == commit), "{after:?}");
    assert!(after.iter().all(|s| s.offset != abort), "{after:?}");
    assert!(p.log().aborted_txns(0, u64::MAX).unwrap().is_empty());
    assert_eq!(committed(p.log()), view);
    // Producer state rebuilt from the cleaned log alone knows no open transaction.
    p.close().unwrap();
    drop(p);
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".snapshot") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let p = open(dir.path());
    assert_eq!(p.first_unstable_offset(), None);
    assert_eq!(committed(p.log()), view);
}

#[test]
fn compressed_batches_are_filtered_and_keep_their_codec() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    let codecs = [
        CompressionType::Gzip,
        CompressionType::Snappy,
        CompressionType::Lz4,
        CompressionType::Zstd,
    ];
    for (i, codec) in codecs.iter().enumerate() {
        put(
            &p,
            vec![
                record(&format!("old{i}"), Some("gone"), 1000),
                record(&format!("keep{i}"), Some("kept"), 1000),
            ],
            *codec,
        );
    }
    for i in 0..4 {
        put1(&p, &format!("old{i}"), Some("new"));
    }
    p.log().roll().unwrap();
    let before = contents(p.log());
    clean(&p, 5000).unwrap();
    let after = contents(p.log());
    assert_eq!(after.len(), 8, "{after:?}");
    assert_eq!(latest(&after), latest(&before));
    let mut seen = Vec::new();
    p.log()
        .for_each_batch(0, None, |h, _| {
            if h.records_count == 1 && h.base_offset < 8 {
                seen.push(h.attributes & 0x07);
            }
            true
        })
        .unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4]);
}

#[test]
fn a_producer_keeps_its_last_batch_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    let mut b = BatchBuilder::new().record(record("k", Some("idempotent"), 1000));
    b.producer_id = 3;
    b.producer_epoch = 0;
    b.base_sequence = 0;
    let mut bytes = b.build();
    p.append_as_leader(&mut bytes, 0, None).unwrap();
    for i in 0..20 {
        put1(&p, "k", Some(&format!("v{i}")));
    }
    p.log().roll().unwrap();
    clean(&p, 5000).unwrap();
    let mut empty = None;
    p.log()
        .for_each_batch(0, None, |h, _| {
            if h.producer_id == 3 {
                empty = Some(*h);
            }
            true
        })
        .unwrap();
    let h = empty.expect("the producer's last batch stays");
    assert_eq!(
        (h.records_count, h.base_sequence, h.last_offset_delta),
        (0, 0, 0)
    );
    // Its next sequence is still expected after a rebuild from the log alone.
    p.close().unwrap();
    drop(p);
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".snapshot") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let p = open(dir.path());
    let info = p.producers();
    assert_eq!(
        info.iter()
            .find(|i| i.producer_id == 3)
            .unwrap()
            .last_sequence,
        0
    );
}

#[test]
fn a_reader_of_the_old_segments_keeps_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path());
    for i in 0..60 {
        put1(&p, &format!("k{}", i % 2), Some(&format!("v{i}")));
    }
    p.log().roll().unwrap();
    let held = p.log().read(0, 1 << 20, None).unwrap().region.unwrap();
    let bytes = held.read_all().unwrap();
    clean(&p, 5000).unwrap();
    assert_eq!(held.read_all().unwrap(), bytes);
}

fn write_workload(p: &PartitionLog) {
    for i in 0..80 {
        let v = format!("v{i}");
        put1(
            p,
            &format!("k{}", i % 5),
            if i % 11 == 0 { None } else { Some(&v) },
        );
    }
    put_txn(p, 9, 0, vec![record("k1", Some("aborted"), 1000)]);
    end_txn(p, 9, false);
    for i in 0..10 {
        put1(p, &format!("z{i}"), Some("tail"));
    }
    p.log().roll().unwrap();
}

#[test]
fn a_crash_at_any_step_of_a_swap_leaves_the_old_or_the_new_segments() {
    // The result a swap that completes gives, from an identical log.
    let reference = tempfile::tempdir().unwrap();
    let r = open(reference.path());
    write_workload(&r);
    let before = contents(r.log());
    clean(&r, 5000).unwrap();
    let after = contents(r.log());
    assert_ne!(before, after);

    for step in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        write_workload(&p);
        assert_eq!(contents(p.log()), before);
        crash_point::arm(step);
        let err = p.clean(&opts(5000), &mut |_| {});
        assert!(err.is_err(), "step {step}");
        // The failed swap leaves reads working on the segments in memory.
        assert_eq!(latest(&contents(p.log())), latest(&before), "step {step}");
        drop(p);
        let p = open(dir.path());
        let now = contents(p.log());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.ends_with(".swap") && !n.ends_with(".cleaned")),
            "step {step}: {names:?}"
        );
        // Only the first group was being swapped: the rest may be old.
        assert_eq!(latest(&now), latest(&before), "step {step}");
        assert!(
            is_subsequence(&after, &now) && is_subsequence(&now, &before),
            "step {step}"
        );
        if step == 1 {
            assert_eq!(now, before, "an undecided swap leaves the old segments");
        } else {
            assert_ne!(now, before, "a decided swap is finished by recovery");
        }
        // And a cleaning after the restart gets to the same result.
        clean(&p, 5000).unwrap();
        assert_eq!(contents(p.log()), after, "step {step}");
    }
}

/// Random keyed writes, tombstones, transactions that commit and abort, compressed
/// batches and rolls, with cleanings at random points, checked against what was written:
/// the latest value of every key stays readable at its offset (a tombstone may go once its
/// horizon has passed), offsets only increase, and what a read_committed consumer sees is a
/// subsequence of what it saw before the cleaning, and the same after a restart.
#[test]
fn random_histories_against_a_model() {
    let codecs = [
        CompressionType::None,
        CompressionType::Gzip,
        CompressionType::Lz4,
        CompressionType::Zstd,
        CompressionType::Snappy,
    ];
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut p = open(dir.path());
        let mut now = 10_000i64;
        let mut open_txn: Option<(i64, i32)> = None;
        let mut next_pid = 100;
        for step in 0..150 {
            now += rng.random_range(0..400);
            match rng.random_range(0..20) {
                0..=9 => {
                    let n = rng.random_range(1..4);
                    let records = (0..n)
                        .map(|_| {
                            let k = format!("k{}", rng.random_range(0..12));
                            let v = format!("s{seed}-{step}");
                            let tomb = rng.random_bool(0.15);
                            record(&k, (!tomb).then_some(v.as_str()), now)
                        })
                        .collect();
                    let codec = codecs[rng.random_range(0..codecs.len())];
                    put(&p, records, codec);
                }
                10..=12 => {
                    let (pid, seq) = *open_txn.get_or_insert_with(|| {
                        next_pid += 1;
                        (next_pid, 0)
                    });
                    let k = format!("k{}", rng.random_range(0..12));
                    put_txn(
                        &p,
                        pid,
                        seq,
                        vec![record(&k, Some(&format!("t{seed}-{step}")), now)],
                    );
                    open_txn = Some((pid, seq + 1));
                }
                13..=14 => {
                    if let Some((pid, _)) = open_txn.take() {
                        end_txn(&p, pid, rng.random_bool(0.5));
                    }
                }
                15 => p.log().roll().unwrap(),
                16 => {
                    p.close().unwrap();
                    drop(p);
                    p = open(dir.path());
                }
                _ => {
                    if open_txn.is_some() {
                        continue;
                    }
                    let before = committed(p.log());
                    let all_before = contents(p.log());
                    let stats = p.clean(&opts(now), &mut |_| {}).unwrap();
                    let after = committed(p.log());
                    let all_after = contents(p.log());
                    let ctx = format!("seed {seed} step {step}: {stats:?}");
                    assert!(is_subsequence(&after, &before), "{ctx}");
                    assert!(is_subsequence(&all_after, &all_before), "{ctx}");
                    let (lb, la) = (latest(&before), latest(&after));
                    for (k, (offset, value)) in &lb {
                        match la.get(k) {
                            Some(got) => assert_eq!(got, &(*offset, value.clone()), "{ctx}"),
                            // Only a tombstone may disappear, and only past its horizon.
                            None => assert!(value.is_none(), "{ctx}: lost {k:?}"),
                        }
                    }
                    for w in all_after.windows(2) {
                        assert!(w[0].offset < w[1].offset, "{ctx}");
                    }
                }
            }
        }
        if let Some((pid, _)) = open_txn.take() {
            end_txn(&p, pid, true);
        }
        let before = committed(p.log());
        p.close().unwrap();
        drop(p);
        let p = open(dir.path());
        assert_eq!(committed(p.log()), before, "seed {seed}");
        assert_eq!(p.first_unstable_offset(), None, "seed {seed}");
    }
}

#[test]
fn retention_by_time_and_size_applies_only_with_delete_in_the_policy() {
    for (compact, delete, kept_all) in [
        (true, false, true),
        (true, true, false),
        (false, true, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.cleanup_compact = compact;
        c.cleanup_delete = delete;
        c.retention_ms = 1;
        c.retention_bytes = 100;
        let p = PartitionLog::open(dir.path(), c).unwrap();
        for i in 0..40 {
            put1(&p, &format!("k{i}"), Some("v"));
        }
        let segments = p.log().segment_count();
        assert!(segments > 2);
        let deleted = p.log().apply_retention(i64::MAX / 2).unwrap();
        assert_eq!(
            deleted == 0,
            kept_all,
            "compact={compact} delete={delete}: {deleted} deleted"
        );
        assert_eq!(p.log().log_start_offset() == 0, kept_all);
    }
}
