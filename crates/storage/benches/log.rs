//! Append and read throughput of the partition log, beside the raw sequential write speed
//! of the same disk measured in the same run: `cargo bench -p strom-storage`.

use std::io::Write;

use divan::Bencher;
use divan::counter::BytesCount;
use strom_storage::batch::{BatchBuilder, Record};
use strom_storage::{Log, LogConfig};

fn main() {
    divan::main();
}

const SIZES: [usize; 2] = [1024, 16 * 1024];

/// A one-record batch of `total` bytes, framing included.
fn batch_of(total: usize) -> Vec<u8> {
    let overhead = BatchBuilder::new()
        .record(Record {
            value: Some(Vec::new()),
            ..Record::default()
        })
        .build()
        .len();
    let mut value_len = total - overhead;
    loop {
        let b = BatchBuilder::new()
            .record(Record {
                value: Some(vec![7; value_len]),
                ..Record::default()
            })
            .build();
        if b.len() <= total {
            return b;
        }
        value_len -= 1;
    }
}

#[divan::bench(args = SIZES, sample_count = 30, sample_size = 2000)]
fn append(bencher: Bencher, size: usize) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    // One buffer appended again and again: the log re-assigns its offset each time, and the
    // bytes stay cache-hot as a request just read from a socket would be.
    let mut batch = batch_of(size);
    bencher
        .counter(BytesCount::new(batch.len()))
        .bench_local(|| log.append(&mut batch, 0).unwrap());
}

#[divan::bench(args = SIZES, sample_count = 30, sample_size = 200)]
fn read_1mib_fetches(bencher: Bencher, size: usize) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let batch = batch_of(size);
    for _ in 0..(64 << 20) / size {
        log.append(&mut batch.clone(), 0).unwrap();
    }
    let end = log.log_end_offset();
    let mut next = 0;
    bencher
        .counter(BytesCount::new(1usize << 20))
        .bench_local(|| {
            if next >= end {
                next = 0;
            }
            let region = log.read(next, 1 << 20, None).unwrap().region.unwrap();
            let bytes = region.read_all().unwrap();
            next += (bytes.len() / batch.len()) as u64;
            bytes.len()
        });
}

/// The disk's raw sequential write speed through the page cache, for the ratio.
#[divan::bench(args = SIZES, sample_count = 30, sample_size = 2000)]
fn raw_sequential_write(bencher: Bencher, size: usize) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
    let block = vec![7u8; size];
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| file.write_all(&block).unwrap());
}

/// Validation alone (CRC32C and record walk), the CPU part of an append.
#[divan::bench(args = SIZES)]
fn validate(bencher: Bencher, size: usize) {
    let b = batch_of(size);
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| strom_storage::batch::validate(divan::black_box(&b)).unwrap());
}
