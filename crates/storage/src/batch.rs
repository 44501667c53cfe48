//! RecordBatch v2, the unit the log stores: byte-identical to Kafka's wire and disk format.
//!
//! ```text
//! baseOffset: i64 | batchLength: i32 | partitionLeaderEpoch: i32 | magic: i8 | crc: u32 |
//! attributes: i16 | lastOffsetDelta: i32 | baseTimestamp: i64 | maxTimestamp: i64 |
//! producerId: i64 | producerEpoch: i16 | baseSequence: i32 | recordsCount: i32 | records...
//! ```
//! The CRC32C covers everything from `attributes` to the end, so the log can assign
//! `baseOffset` and `partitionLeaderEpoch` in place without touching it.

use crate::error::{Result, StorageError};

pub const LOG_OVERHEAD: usize = 12;
pub const HEADER_LEN: usize = 61;
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Option<Compression> {
        Some(match attributes & COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => return None,
        })
    }

    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// The fixed 61-byte header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

impl BatchHeader {
    /// Decodes the header fields without any validation; `None` if fewer than 61 bytes.
    pub fn parse(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < HEADER_LEN {
            return None;
        }
        Some(BatchHeader {
            base_offset: i64_at(b, BASE_OFFSET),
            batch_length: i32_at(b, BATCH_LENGTH),
            partition_leader_epoch: i32_at(b, LEADER_EPOCH),
            magic: b[MAGIC] as i8,
            crc: i32_at(b, CRC) as u32,
            attributes: i16_at(b, ATTRIBUTES),
            last_offset_delta: i32_at(b, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(b, BASE_TIMESTAMP),
            max_timestamp: i64_at(b, MAX_TIMESTAMP),
            producer_id: i64_at(b, PRODUCER_ID),
            producer_epoch: i16_at(b, PRODUCER_EPOCH),
            base_sequence: i32_at(b, BASE_SEQUENCE),
            records_count: i32_at(b, RECORDS_COUNT),
        })
    }

    /// Bytes the batch occupies, framing included. Only meaningful once `batch_length` is sane.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// How many offsets the batch spans (not always `records_count`: compaction leaves gaps).
    pub fn offset_count(&self) -> u64 {
        self.last_offset_delta as u64 + 1
    }

    pub fn compression(&self) -> Option<Compression> {
        Compression::from_attributes(self.attributes)
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// CRC32C of the part of the batch the checksum protects.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Checks the framing of the batch at the start of `buf`: enough bytes for the header, a
/// `batchLength` that is neither too small nor beyond the buffer. Returns the header and the
/// batch's total size. Cheap: no CRC.
pub fn check_framing(buf: &[u8]) -> Result<(BatchHeader, usize)> {
    let header = BatchHeader::parse(buf).ok_or_else(|| {
        StorageError::CorruptMessage(format!(
            "{} bytes is shorter than a record batch header ({HEADER_LEN})",
            buf.len()
        ))
    })?;
    if header.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(StorageError::CorruptMessage(format!(
            "batch length {} is smaller than the header",
            header.batch_length
        )));
    }
    let size = header.total_size();
    if size > buf.len() {
        return Err(StorageError::CorruptMessage(format!(
            "batch declares {size} bytes but only {} are present",
            buf.len()
        )));
    }
    Ok((header, size))
}

/// Full validation of one batch (exactly `batch.len()` bytes): magic, CRC, offset and record
/// counts, and for uncompressed batches that the records region holds exactly `recordsCount`
/// length-prefixed records.
pub fn validate(batch: &[u8]) -> Result<BatchHeader> {
    validate_as(batch, true)
}

/// [`validate`] for a batch as a log may hold it: compaction leaves batches with fewer
/// records than offsets, or none (a replica copies them so from its leader, recovery reads
/// them so from the disk).
pub fn validate_stored(batch: &[u8]) -> Result<BatchHeader> {
    validate_as(batch, false)
}

fn validate_as(batch: &[u8], fresh: bool) -> Result<BatchHeader> {
    let (header, size) = check_framing(batch)?;
    if size != batch.len() {
        return Err(StorageError::CorruptMessage(format!(
            "batch declares {size} bytes but {} were given",
            batch.len()
        )));
    }
    if header.magic != MAGIC_V2 {
        return Err(StorageError::InvalidRecord(format!(
            "unsupported magic {} (only RecordBatch v2 is stored)",
            header.magic
        )));
    }
    let crc = compute_crc(batch);
    if crc != header.crc {
        return Err(StorageError::CorruptMessage(format!(
            "CRC mismatch: batch says {:#010x}, contents give {crc:#010x}",
            header.crc
        )));
    }
    let compression = header.compression().ok_or_else(|| {
        StorageError::InvalidRecord(format!(
            "unknown compression codec {}",
            header.attributes & COMPRESSION_MASK
        ))
    })?;
    let records_ok = if fresh {
        header.records_count > 0
            && header.last_offset_delta as i64 + 1 == header.records_count as i64
    } else {
        header.records_count >= 0
            && header.records_count as i64 <= header.last_offset_delta as i64 + 1
    };
    if header.records_count < 0
        || header.last_offset_delta < 0
        || (fresh && header.records_count == 0)
    {
        return Err(StorageError::InvalidRecord(format!(
            "batch holds {} records with last offset delta {}",
            header.records_count, header.last_offset_delta
        )));
    }
    if !records_ok {
        return Err(StorageError::InvalidRecord(format!(
            "inconsistent batch offset range: last offset delta {} for {} records",
            header.last_offset_delta, header.records_count
        )));
    }
    if compression == Compression::None {
        let found = count_records(&batch[HEADER_LEN..], header.records_count as usize)?;
        if found != header.records_count as usize {
            return Err(StorageError::InvalidRecord(format!(
                "batch declares {} records but holds {found}",
                header.records_count
            )));
        }
    }
    Ok(header)
}

/// Walks length-prefixed records, checking that each parses exactly within its length
/// (attributes, timestamp and offset deltas, key, value, headers); errors if the region does
/// not end on a record boundary. Stops after `limit + 1` records, so a hostile count cannot
/// make it loop long, and every declared length is bounded by the bytes present.
fn count_records(mut region: &[u8], limit: usize) -> Result<usize> {
    let mut count = 0;
    while !region.is_empty() {
        if count > limit {
            break;
        }
        let (len, used) = read_varint(region)
            .ok_or_else(|| StorageError::CorruptMessage("truncated record length".into()))?;
        if len < 0 || used + len as usize > region.len() {
            return Err(StorageError::CorruptMessage(format!(
                "record length {len} overruns the batch"
            )));
        }
        check_record(&region[used..used + len as usize])
            .ok_or_else(|| StorageError::InvalidRecord(format!("record {count} is malformed")))?;
        region = &region[used + len as usize..];
        count += 1;
    }
    Ok(count)
}

/// One record body: attributes, timestamp delta, offset delta, key, value, headers, and
/// nothing after them.
fn check_record(b: &[u8]) -> Option<()> {
    let mut b = b.get(1..)?;
    for _ in 0..2 {
        let (_, n) = read_varint(b)?;
        b = &b[n..];
    }
    for _ in 0..2 {
        let (_, rest) = read_bytes(b)?;
        b = rest;
    }
    let (headers, n) = read_varint(b)?;
    b = &b[n..];
    if headers < 0 || headers as usize > b.len() {
        return None;
    }
    for _ in 0..headers {
        let (key, rest) = read_bytes(b)?;
        key?;
        let (_, rest) = read_bytes(rest)?;
        b = rest;
    }
    b.is_empty().then_some(())
}

/// Zig-zag varint as used inside records. Returns the value and the bytes consumed.
pub fn read_varint(b: &[u8]) -> Option<(i64, usize)> {
    let (raw, used) = read_unsigned_varint(b)?;
    Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), used))
}

fn read_unsigned_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

pub fn write_varint(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// Writes the log-assigned fields; the CRC stays valid because it does not cover them.
pub fn assign_offset_and_epoch(batch: &mut [u8], base_offset: u64, leader_epoch: i32) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    batch[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Stamps a batch with the broker's append time (`message.timestamp.type=LogAppendTime`).
/// Attributes and maxTimestamp are under the CRC, so it is recomputed: the only case where
/// the log rewrites protected bytes.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = i16_at(batch, ATTRIBUTES) | TIMESTAMP_TYPE_LOG_APPEND;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record of an uncompressed batch, as the log sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i64,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Iterates the records of an uncompressed batch (for ListOffsets by timestamp and for
/// tests). Stops at the first malformed record.
pub fn records(batch: &[u8]) -> impl Iterator<Item = RecordView<'_>> {
    let mut region = batch.get(HEADER_LEN..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        let (len, used) = read_varint(region)?;
        let len = usize::try_from(len).ok()?;
        let body = region.get(used..used + len)?;
        region = &region[used + len..];
        let mut b = body.get(1..)?; // attributes
        let (timestamp_delta, n) = read_varint(b)?;
        b = &b[n..];
        let (offset_delta, n) = read_varint(b)?;
        b = &b[n..];
        let (key, rest) = read_bytes(b)?;
        let (value, _) = read_bytes(rest)?;
        Some(RecordView {
            offset_delta,
            timestamp_delta,
            key,
            value,
        })
    })
}

fn read_bytes(b: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (len, n) = read_varint(b)?;
    let b = &b[n..];
    if len < 0 {
        return Some((None, b));
    }
    let len = len as usize;
    Some((Some(b.get(..len)?), &b[len..]))
}

/// A record to put in a batch built by [`BatchBuilder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Builds uncompressed RecordBatch v2 bytes: used for control batches (transaction markers)
/// and by tests. Producers' batches are never rebuilt.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
    pub control: bool,
    records: Vec<Record>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
            records: Vec::new(),
        }
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(
            !self.records.is_empty(),
            "a batch needs at least one record"
        );
        let base_ts = self.records.iter().map(|r| r.timestamp).min().unwrap();
        let max_ts = self.records.iter().map(|r| r.timestamp).max().unwrap();
        let mut out = vec![0u8; HEADER_LEN];
        let mut body = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            body.clear();
            body.push(0); // record attributes
            write_varint(&mut body, r.timestamp - base_ts);
            write_varint(&mut body, i as i64);
            write_opt_bytes(&mut body, r.key.as_deref());
            write_opt_bytes(&mut body, r.value.as_deref());
            write_varint(&mut body, r.headers.len() as i64);
            for (k, v) in &r.headers {
                write_opt_bytes(&mut body, Some(k.as_bytes()));
                write_opt_bytes(&mut body, v.as_deref());
            }
            write_varint(&mut out, body.len() as i64);
            out.extend_from_slice(&body);
        }
        let mut attributes = 0i16;
        if self.transactional {
            attributes |= TRANSACTIONAL;
        }
        if self.control {
            attributes |= CONTROL;
        }
        let n = self.records.len() as i32;
        let batch_length = (out.len() - LOG_OVERHEAD) as i32;
        out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        out[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[MAGIC] = MAGIC_V2 as u8;
        out[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        out[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&(n - 1).to_be_bytes());
        out[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&base_ts.to_be_bytes());
        out[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&max_ts.to_be_bytes());
        out[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&self.producer_id.to_be_bytes());
        out[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&self.producer_epoch.to_be_bytes());
        out[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&self.base_sequence.to_be_bytes());
        out[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&n.to_be_bytes());
        let crc = compute_crc(&out);
        out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

fn write_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => write_varint(out, -1),
        Some(b) => {
            write_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        BatchBuilder::new()
            .record(Record {
                timestamp: 1000,
                key: Some(b"k".to_vec()),
                value: Some(b"hello".to_vec()),
                headers: vec![("h".into(), Some(b"v".to_vec()))],
            })
            .record(Record {
                timestamp: 1005,
                key: None,
                value: Some(b"world".to_vec()),
                headers: vec![],
            })
            .build()
    }

    #[test]
    fn built_batch_validates_and_decodes() {
        let b = sample();
        let h = validate(&b).unwrap();
        assert_eq!(h.records_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(h.base_timestamp, 1000);
        assert_eq!(h.max_timestamp, 1005);
        let recs: Vec<_> = records(&b).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].key, Some(&b"k"[..]));
        assert_eq!(recs[1].value, Some(&b"world"[..]));
        assert_eq!(recs[1].timestamp_delta, 5);
    }

    #[test]
    fn offset_and_epoch_are_outside_the_crc() {
        let mut b = sample();
        assign_offset_and_epoch(&mut b, 12345, 7);
        let h = validate(&b).unwrap();
        assert_eq!(h.base_offset, 12345);
        assert_eq!(h.partition_leader_epoch, 7);
    }

    #[test]
    fn log_append_time_recomputes_crc() {
        let mut b = sample();
        set_log_append_time(&mut b, 99_999);
        let h = validate(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99_999);
    }

    #[test]
    fn rejects_every_kind_of_damage() {
        let good = sample();
        let mut bad_crc = good.clone();
        *bad_crc.last_mut().unwrap() ^= 1;
        assert!(matches!(
            validate(&bad_crc),
            Err(StorageError::CorruptMessage(_))
        ));

        let mut bad_magic = good.clone();
        bad_magic[MAGIC] = 1;
        assert!(matches!(
            validate(&bad_magic),
            Err(StorageError::InvalidRecord(_))
        ));

        assert!(matches!(
            validate(&good[..40]),
            Err(StorageError::CorruptMessage(_))
        ));
        assert!(matches!(
            validate(&good[..good.len() - 1]),
            Err(StorageError::CorruptMessage(_))
        ));

        // Count says 3 but the records region holds 2: recompute the CRC so only the count lies.
        let mut bad_count = good.clone();
        bad_count[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&3i32.to_be_bytes());
        bad_count[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&2i32.to_be_bytes());
        let crc = compute_crc(&bad_count);
        bad_count[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&bad_count),
            Err(StorageError::InvalidRecord(_))
        ));

        let mut bad_delta = good.clone();
        bad_delta[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = compute_crc(&bad_delta);
        bad_delta[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&bad_delta),
            Err(StorageError::InvalidRecord(_))
        ));

        let mut short_len = good.clone();
        short_len[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(
            validate(&short_len),
            Err(StorageError::CorruptMessage(_))
        ));
    }

    #[test]
    fn records_that_lie_about_their_headers_are_refused() {
        // One record whose header count says i32::MAX, in a batch with a valid CRC.
        let mut body = vec![0u8]; // attributes
        write_varint(&mut body, 0); // timestamp delta
        write_varint(&mut body, 0); // offset delta
        write_varint(&mut body, -1); // key: null
        write_varint(&mut body, 1);
        body.push(b'v');
        write_varint(&mut body, i32::MAX as i64); // headers
        let mut b = BatchBuilder::new()
            .record(Record {
                timestamp: 1,
                value: Some(vec![1]),
                ..Default::default()
            })
            .build();
        b.truncate(HEADER_LEN);
        write_varint(&mut b, body.len() as i64);
        b.extend_from_slice(&body);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(validate(&b), Err(StorageError::InvalidRecord(_))));
        // A batch that declares i32::MAX records but holds one.
        let mut many = BatchBuilder::new()
            .record(Record {
                timestamp: 1,
                ..Default::default()
            })
            .build();
        many[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        many[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        let crc = compute_crc(&many);
        many[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&many),
            Err(StorageError::InvalidRecord(_))
        ));
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None);
    }
}
