#![allow(dead_code)]

use strom_storage::batch::{self, BatchBuilder, Record};
use strom_storage::{Log, LogConfig};

/// A batch of `n` records whose values name their position, with timestamps from `ts`.
pub fn batch(n: usize, ts: i64, tag: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b = b.record(Record {
            timestamp: ts + i as i64,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("{tag}-{i}").into_bytes()),
            headers: vec![],
        });
    }
    b.build()
}

/// A one-record batch with a value of `size` bytes.
pub fn sized_batch(size: usize, ts: i64) -> Vec<u8> {
    BatchBuilder::new()
        .record(Record {
            timestamp: ts,
            key: None,
            value: Some(vec![b'x'; size]),
            headers: vec![],
        })
        .build()
}

pub fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// Every stored batch from `from` to the end, as (base offset, bytes).
pub fn read_all(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, None).unwrap();
        let Some(region) = r.region else { break };
        let bytes = region.read_all().unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let (h, size) = batch::check_framing(&bytes[pos..]).unwrap();
            out.push((h.base_offset as u64, bytes[pos..pos + size].to_vec()));
            next = h.last_offset() as u64 + 1;
            pos += size;
        }
    }
    out
}

/// Values of all records at offsets `from` and later.
pub fn values(log: &Log, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (base, b) in read_all(log, from) {
        for r in batch::records(&b).filter(|r| base + r.offset_delta as u64 >= from) {
            out.push((
                base + r.offset_delta as u64,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    out
}
