//! Random sequences of operations against the log and against a plain in-memory model; after
//! every step they must agree.

mod common;

use common::*;
use proptest::prelude::*;
use strom_storage::batch::{self, BatchHeader};
use strom_storage::{Log, LogConfig, StorageError};

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        value_len: usize,
        ts: i64,
    },
    Read {
        at: u16,
        max_bytes: usize,
    },
    Roll,
    Truncate {
        at: u16,
    },
    DeleteRecords {
        at: u16,
    },
    RetentionBytes {
        bytes: i64,
    },
    RetentionTime {
        now: i64,
        ms: i64,
    },
    ByTimestamp {
        ts: i64,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1..6usize, 0..300usize, 0..10_000i64)
            .prop_map(|(records, value_len, ts)| Op::Append { records, value_len, ts }),
        4 => (any::<u16>(), 1..3000usize).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => any::<u16>().prop_map(|at| Op::DeleteRecords { at }),
        1 => (0..6000i64).prop_map(|bytes| Op::RetentionBytes { bytes }),
        1 => (0..20_000i64, 0..10_000i64).prop_map(|(now, ms)| Op::RetentionTime { now, ms }),
        2 => (0..11_000i64).prop_map(|ts| Op::ByTimestamp { ts }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

#[derive(Debug, Clone)]
struct Stored {
    base: u64,
    bytes: Vec<u8>,
}

impl Stored {
    fn last(&self) -> u64 {
        BatchHeader::parse(&self.bytes).unwrap().last_offset() as u64
    }
}

#[derive(Default)]
struct Model {
    batches: Vec<Stored>,
    start: u64,
    end: u64,
}

impl Model {
    fn pick(&self, at: u16) -> u64 {
        let span = self.end - self.start + 1;
        self.start + at as u64 % span
    }

    /// The batches a read at `offset` may return, in order.
    fn from(&self, offset: u64) -> &[Stored] {
        let i = self.batches.partition_point(|b| b.last() < offset);
        &self.batches[i..]
    }

    fn first_at_or_after_ts(&self, ts: i64) -> Option<(i64, u64)> {
        for b in &self.batches {
            let h = BatchHeader::parse(&b.bytes).unwrap();
            for r in batch::records(&b.bytes) {
                let offset = b.base + r.offset_delta as u64;
                let t = h.base_timestamp + r.timestamp_delta;
                if offset >= self.start && t >= ts {
                    return Some((t, offset));
                }
            }
        }
        None
    }
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 200,
        ..LogConfig::default()
    }
}

fn check_read(log: &Log, model: &Model, offset: u64, max_bytes: usize) {
    let r = log.read(offset, max_bytes, None).unwrap();
    assert_eq!(r.log_start_offset, model.start);
    assert_eq!(r.log_end_offset, model.end);
    let expected = model.from(offset);
    let Some(region) = r.region else {
        assert!(
            expected.is_empty(),
            "nothing read at {offset} but the model has batches"
        );
        return;
    };
    let got = region.read_all().unwrap();
    let mut pos = 0;
    let mut n = 0;
    while pos < got.len() {
        let want = &expected[n].bytes;
        assert_eq!(
            &got[pos..pos + want.len()],
            &want[..],
            "batch {n} of read at {offset}"
        );
        pos += want.len();
        n += 1;
    }
    assert!(n >= 1);
    assert!(got.len() <= max_bytes.max(expected[0].bytes.len()));
}

fn run(ops: Vec<Op>, segment_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(segment_bytes);
    let mut log = Some(Log::open(dir.path(), cfg).unwrap());
    let mut model = Model::default();
    let mut tag = 0;
    for op in ops {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append {
                records,
                value_len,
                ts,
            } => {
                tag += 1;
                let mut b = batch(records, ts, &format!("{tag}-{}", "v".repeat(value_len)));
                let info = l.append(&mut b, 0).unwrap();
                assert_eq!(info.base_offset, model.end);
                model.batches.push(Stored {
                    base: model.end,
                    bytes: b,
                });
                model.end += records as u64;
            }
            Op::Read { at, max_bytes } => check_read(l, &model, model.pick(at), max_bytes),
            Op::Roll => l.roll().unwrap(),
            Op::Truncate { at } => {
                let offset = model.pick(at).saturating_sub(1);
                let new_end = l.truncate_to(offset).unwrap();
                if offset < model.start {
                    // Below the log start, as in Kafka: start over empty at `offset`.
                    model.batches.clear();
                    model.start = offset;
                    model.end = offset;
                } else if offset < model.end {
                    let keep = model.batches.partition_point(|b| b.last() < offset);
                    let straddler = model.batches.get(keep).filter(|b| b.base < offset);
                    let expected_end = straddler.map(|b| b.base).unwrap_or(offset);
                    model.batches.truncate(keep);
                    model.end = expected_end;
                    model.start = model.start.min(model.end);
                }
                assert_eq!(new_end, model.end);
            }
            Op::DeleteRecords { at } => {
                let offset = model.pick(at);
                assert_eq!(
                    l.delete_records_before(offset).unwrap(),
                    offset.max(model.start)
                );
                model.start = model.start.max(offset);
                model.batches.retain(|b| b.last() >= model.start);
            }
            Op::RetentionBytes { bytes } => {
                let mut c = cfg;
                c.retention_ms = -1;
                l.set_config(c);
                // First only what lies wholly below the log start, so that what follows is
                // down to retention.bytes alone.
                l.apply_retention(0).unwrap();
                c.retention_bytes = bytes;
                l.set_config(c);
                let before = l.size_bytes();
                let deleted = l.apply_retention(0).unwrap();
                if deleted > 0 {
                    assert!(l.size_bytes() as i64 >= bytes, "deleted too much");
                }
                assert!(l.size_bytes() <= before);
                l.set_config(cfg);
                model.start = l.log_start_offset();
                model.batches.retain(|b| b.last() >= model.start);
            }
            Op::RetentionTime { now, ms } => {
                let mut c = cfg;
                c.retention_ms = ms;
                l.set_config(c);
                l.apply_retention(now).unwrap();
                l.set_config(cfg);
                let new_start = l.log_start_offset();
                // Only batches older than the limit may have gone.
                for b in model.batches.iter().filter(|b| b.last() < new_start) {
                    let h = BatchHeader::parse(&b.bytes).unwrap();
                    assert!(
                        now - h.max_timestamp > ms,
                        "deleted a batch within retention"
                    );
                }
                model.start = new_start;
                model.batches.retain(|b| b.last() >= model.start);
            }
            Op::ByTimestamp { ts } => {
                let got = l
                    .offset_for_timestamp(ts)
                    .unwrap()
                    .map(|t| (t.timestamp, t.offset));
                assert_eq!(got, model.first_at_or_after_ts(ts), "timestamp {ts}");
            }
            Op::Reopen { clean } => {
                let l = log.take().unwrap();
                if clean {
                    l.close().unwrap();
                } else {
                    drop(l);
                }
                log = Some(Log::open(dir.path(), cfg).unwrap());
            }
        }
        let l = log.as_ref().unwrap();
        assert_eq!(l.log_start_offset(), model.start);
        assert_eq!(l.log_end_offset(), model.end);
        assert!(matches!(
            l.read(model.end + 1, 10, None),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    }
    // Finally everything the model holds is read back, in order.
    let l = log.as_ref().unwrap();
    let mut offset = model.start;
    while offset < model.end {
        check_read(l, &model, offset, 1 << 20);
        let r = l.read(offset, 1 << 20, None).unwrap().region.unwrap();
        let bytes = r.read_all().unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let (h, size) = batch::check_framing(&bytes[pos..]).unwrap();
            offset = h.last_offset() as u64 + 1;
            pos += size;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_model(ops in prop::collection::vec(op(), 1..80), seg in 300u64..3000) {
        run(ops, seg);
    }
}
