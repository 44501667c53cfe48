//! Hostile requests straight into the request path: each gets a Kafka error code or a closed
//! connection; never a panic, an abort, a huge allocation or a damaged log.
//!
//! The cases are tables. Every over-declared array comes with a control: the same bytes with
//! an honest count must be answered, which proves the hand-written layout reaches the array
//! it claims to attack (a layout mistake would otherwise make the case pass vacuously).
//!
//! A counting global allocator records the largest single allocation, so "never huge memory"
//! is checked per case, not hoped for: on Linux an over-sized `Vec::with_capacity` succeeds
//! virtually and would not show in the resident set.

#[path = "../common/mod.rs"]
mod common;
mod frames;
mod memory;
mod produce;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use krabka_protocol::Encode;
use krabka_protocol::owned::api_versions_response::ApiVersionsResponse;
use krabka_protocol::owned::metadata_response::MetadataResponse;
use krabka_protocol::owned::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use krabka_protocol::owned::produce_response::ProduceResponse;
use krabka_protocol::records::RecordsPayload;
use strom_broker::Broker;
use strom_broker::handlers::handle;
use strom_broker::protocol::APIS;
use strom_broker::server::Reply;
use strom_storage::batch::{BatchBuilder, Record};

struct Counting;

/// The largest single allocation (or reallocation) since the last [`reset_largest`].
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn reset_largest() {
    LARGEST.store(0, Ordering::Relaxed);
}

fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// No single allocation for a request of a few hundred bytes may exceed this.
const ALLOCATION_LIMIT: usize = 1 << 20;

const MAX: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
/// Unsigned varint of i32::MAX + 1, a compact array length of i32::MAX.
const COMPACT_MAX: [u8; 5] = [0x80, 0x80, 0x80, 0x80, 0x08];
/// -2: negative but not the null marker of a nullable array.
const MINUS_TWO: [u8; 4] = [0xff, 0xff, 0xff, 0xfe];
/// An unsigned varint that never ends within 5 bytes (overflows a u32).
const VARINT_TOO_LONG: [u8; 6] = [0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
const TIMEOUT_30S: [u8; 4] = [0, 0, 0x75, 0x30];
const INVALID_REQUIRED_ACKS: i16 = 21;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_RECORD: i16 = 87;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `s` as a non-flexible STRING (i16 length).
fn s16(s: &str) -> Vec<u8> {
    cat(&[&(s.len() as i16).to_be_bytes(), s.as_bytes()])
}

/// `s` as a COMPACT_STRING (unsigned varint length + 1; short strings only).
fn cs(s: &str) -> Vec<u8> {
    cat(&[&[s.len() as u8 + 1], s.as_bytes()])
}

/// What a hostile request must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Reply::Close: the connection is closed after earlier responses.
    Close,
    /// A response frame with correlation id 42 (the request was served, whatever its outcome).
    Answered,
    /// A Produce response whose every partition carries this error code.
    ProduceError(i16),
    /// An ApiVersions v0 response with UNSUPPORTED_VERSION and the full api list.
    ApiVersionsUnsupported,
}

struct Case {
    name: String,
    frame: Bytes,
    expect: Expect,
}

fn case(name: impl Into<String>, frame: impl Into<Bytes>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        frame: frame.into(),
        expect,
    }
}

/// A 1-record RecordBatch v2, as a producer sends it.
fn batch() -> Vec<u8> {
    BatchBuilder::new()
        .record(Record {
            timestamp: 1,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![],
        })
        .build()
}

/// Recomputes the CRC32C of a batch after tampering, so only the tampering is wrong.
fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = strom_storage::batch::compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A batch with a valid CRC that declares i32::MAX records but holds one.
fn batch_with_max_records() -> Vec<u8> {
    let mut many = batch();
    many[57..61].copy_from_slice(&MAX); // records count
    many[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes()); // last offset delta
    with_crc(many)
}

/// A batch with a valid CRC whose one record declares i32::MAX headers.
fn batch_with_max_headers() -> Vec<u8> {
    let mut rec = vec![0u8]; // attributes
    strom_storage::batch::write_varint(&mut rec, 0); // timestamp delta
    strom_storage::batch::write_varint(&mut rec, 0); // offset delta
    strom_storage::batch::write_varint(&mut rec, -1); // key: null
    strom_storage::batch::write_varint(&mut rec, 1); // value: 1 byte
    rec.push(b'v');
    strom_storage::batch::write_varint(&mut rec, i32::MAX as i64); // header count
    let mut b = batch();
    b.truncate(strom_storage::batch::HEADER_LEN);
    strom_storage::batch::write_varint(&mut b, rec.len() as i64);
    b.extend_from_slice(&rec);
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    with_crc(b)
}

/// CRC-32 (IEEE), which the v0/v1 message formats use.
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A message set of one message in the v0 or v1 format (magic 0 or 1), with a valid CRC,
/// as a pre-0.11 producer sends it.
fn legacy_message_set(magic: u8, value: &[u8]) -> Vec<u8> {
    let mut m = vec![magic, 0]; // magic, attributes
    if magic == 1 {
        m.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    }
    m.extend_from_slice(&(-1i32).to_be_bytes()); // key: null
    m.extend_from_slice(&(value.len() as i32).to_be_bytes());
    m.extend_from_slice(value);
    let crc = crc32_ieee(&m);
    let mut out = Vec::new();
    out.extend_from_slice(&0i64.to_be_bytes()); // offset
    out.extend_from_slice(&(4 + m.len() as i32).to_be_bytes()); // message size
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&m);
    out
}

/// A Produce request for `topic`/`partition` carrying `records` (None: a null records field).
/// v0-2 are built by hand: the codec's schemas start at v3.
fn produce(version: i16, acks: i16, topic: &str, partition: i32, records: Option<&[u8]>) -> Bytes {
    produce_as(None, version, acks, topic, partition, records)
}

/// A produce request, from the transactional producer `transactional_id` if given (v3+).
fn produce_as(
    transactional_id: Option<&str>,
    version: i16,
    acks: i16,
    topic: &str,
    partition: i32,
    records: Option<&[u8]>,
) -> Bytes {
    if version <= 2 {
        let mut b = BytesMut::new();
        b.put_i16(acks);
        b.put_i32(5000);
        b.put_i32(1);
        b.put_slice(&s16(topic));
        b.put_i32(1);
        b.put_i32(partition);
        match records {
            Some(r) => {
                b.put_i32(r.len() as i32);
                b.put_slice(r);
            }
            None => b.put_i32(-1),
        }
        return frame(0, version, false, &b);
    }
    let req = ProduceRequest {
        transactional_id: transactional_id.map(String::from),
        acks,
        timeout_ms: 5000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: partition,
                records: records.map(|r| RecordsPayload::Raw(Bytes::copy_from_slice(r))),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut b = BytesMut::new();
    req.encode(&mut b, version).unwrap();
    frame(0, version, version >= 9, &b)
}

/// The error codes of every partition in a Produce response of `version`.
fn produce_errors(reply: Reply, version: i16) -> Vec<i16> {
    if version <= 2 {
        // Hand-encoded (one topic, one partition): topics count, name, partitions count,
        // partition index, then the error code.
        let b = body(reply, false);
        let at = 4 + 2 + i16::from_be_bytes([b[4], b[5]]) as usize + 4 + 4;
        return vec![i16::from_be_bytes([b[at], b[at + 1]])];
    }
    let r: ProduceResponse = decode(reply, version, version >= 9);
    r.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
        .collect()
}

async fn serve(broker: &Arc<Broker>, frame: Bytes) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), handle(broker, frame, peer()))
        .await
        .expect("a hostile request must not hang")
        .materialized()
        .expect("file parts readable")
}

/// Runs every case, checks its outcome and its largest allocation; all failures at once.
async fn run(broker: &Arc<Broker>, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let size = c.frame.len();
        reset_largest();
        let reply = serve(broker, c.frame).await;
        let got = match (&reply, c.expect) {
            (Reply::Close, Expect::Close) => Ok(()),
            (Reply::Close, _) => Err("closed the connection".to_string()),
            (_, Expect::Close) => Err(match &reply {
                Reply::Frame(f) => format!("answered ({} bytes) instead of closing", f.len()),
                _ => "sent nothing instead of closing".into(),
            }),
            (Reply::Nothing, _) => Err("sent nothing".into()),
            (Reply::Frame(_), Expect::Answered) => {
                let _ = body(reply, false); // size and correlation id
                Ok(())
            }
            (Reply::Frame(_), Expect::ProduceError(_)) => {
                Err("produce error codes are checked by produce_cases".into())
            }
            (Reply::Frame(_), Expect::ApiVersionsUnsupported) => {
                let r: ApiVersionsResponse = decode(reply, 0, false);
                check_unsupported(&r)
            }
            (Reply::Parts(_), _) => Err("file parts left after materializing".into()),
        };
        let big = largest();
        if let Err(e) = got {
            failures.push(format!("{}: {e}", c.name));
        } else if big > ALLOCATION_LIMIT {
            failures.push(format!(
                "{}: a {size}-byte request made a {big}-byte allocation",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_unsupported(r: &ApiVersionsResponse) -> Result<(), String> {
    if r.error_code != UNSUPPORTED_VERSION {
        return Err(format!("error code {}, not 35", r.error_code));
    }
    let listed: Vec<_> = r
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    let expected: Vec<_> = APIS.iter().map(|a| (a.key, a.min, a.max)).collect();
    if listed != expected {
        return Err(format!("api list {listed:?}, expected {expected:?}"));
    }
    Ok(())
}
