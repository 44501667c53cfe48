//! Cleaner throughput as a ratio to append throughput, measured in one run on this machine:
//! appends keyed records (uncompressed batches of 1000) to a fresh log, then cleans all of it
//! but the active segment in one pass.
//!
//! cargo run --release -p strom-storage --example compaction_throughput -- [records] [keys] [value bytes]

use std::collections::HashMap;
use std::time::Instant;

use strom_storage::batch::{BatchBuilder, Record};
use strom_storage::{CleanOptions, Log, LogConfig};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: records keys value-bytes"))
        .collect();
    let records = args.first().copied().unwrap_or(2_000_000);
    let keys = args.get(1).copied().unwrap_or(10_000);
    let value_bytes = args.get(2).copied().unwrap_or(100) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 64 << 20,
            ..LogConfig::default()
        },
    )
    .expect("open");

    // Batches are built before the clock starts: this measures the log, not the builder.
    let value = vec![b'v'; value_bytes];
    let batches: Vec<Vec<u8>> = (0..records / 1000)
        .map(|b| {
            let mut builder = BatchBuilder::new();
            for i in 0..1000 {
                builder = builder.record(Record {
                    timestamp: 1_000,
                    key: Some(format!("key-{}", (b * 1000 + i) % keys).into_bytes()),
                    value: Some(value.clone()),
                    headers: vec![],
                });
            }
            builder.build()
        })
        .collect();
    let started = Instant::now();
    let mut bytes = 0u64;
    for b in &batches {
        let mut b = b.clone();
        bytes += b.len() as u64;
        log.append(&mut b, 0).expect("append");
    }
    log.flush().expect("flush");
    let append_secs = started.elapsed().as_secs_f64();
    log.roll().expect("roll");

    let opts = CleanOptions {
        now_ms: 10_000,
        delete_retention_ms: 86_400_000,
        min_compaction_lag_ms: 0,
        map_bytes: 128 << 20,
        upper: u64::MAX,
    };
    let started = Instant::now();
    let stats = log
        .clean(&opts, &HashMap::new(), &mut |_| {})
        .expect("clean")
        .expect("something to clean");
    let clean_secs = started.elapsed().as_secs_f64();
    let append_mb_s = bytes as f64 / 1e6 / append_secs;
    let clean_mb_s = stats.bytes_read as f64 / 1e6 / clean_secs;
    println!(
        "{records} records of {value_bytes} B, {keys} keys: {:.0} MB appended at {append_mb_s:.0} MB/s (with fsync at the end); \
         cleaned {:.0} MB -> {:.2} MB ({} of {} records removed, {} -> {} segments) at {clean_mb_s:.0} MB/s; \
         cleaner / append = {:.2}",
        bytes as f64 / 1e6,
        stats.bytes_read as f64 / 1e6,
        stats.bytes_written as f64 / 1e6,
        stats.records_removed,
        stats.records_read,
        stats.segments_before,
        stats.segments_after,
        clean_mb_s / append_mb_s
    );
}
