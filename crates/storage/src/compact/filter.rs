//! One batch as the cleaner sees it: its records (decompressed when the batch is), and the
//! batch rebuilt with only the records that stay. A rebuilt batch keeps its base offset, last
//! offset delta, producer id, epoch, base sequence, flags, max timestamp and codec, so
//! offsets, sequences and transactions read the same afterwards; the records that stay are
//! copied byte for byte (only their timestamp delta changes when a delete horizon is set).

use krabka_compression::{CompressionType, RecordDecompressionPolicy};
use krabka_units::ByteSize;
use krabka_units::convert::ByteSizeExt as _;

use crate::batch::{BatchHeader, HEADER_LEN, compute_crc, read_varint, write_varint};
use crate::error::{Result, StorageError};

/// KIP-534: the batch's base timestamp holds the time after which its tombstones and its
/// transaction marker may be removed.
pub(crate) const DELETE_HORIZON: i16 = 0x40;
const COMPRESSION_MASK: i16 = 0x07;

const ATTRIBUTES: usize = 21;
const BATCH_LENGTH: usize = 8;
const BASE_TIMESTAMP: usize = 27;
const CRC: usize = 17;
const RECORDS_COUNT: usize = 57;

/// One record of a batch, by reference into the (decompressed) records section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec<'a> {
    pub offset: u64,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub tombstone: bool,
    #[cfg_attr(not(test), allow(dead_code))]
    pub value: Option<&'a [u8]>,
    /// The record's body (after its length), from the attributes byte on.
    body: &'a [u8],
    timestamp_delta: i64,
    /// Where, in `body`, the bytes after the timestamp delta start.
    after_timestamp: usize,
}

fn corrupt(what: &str) -> StorageError {
    StorageError::CorruptMessage(format!("the cleaner could not read a batch: {what}"))
}

fn codec(h: &BatchHeader) -> Result<CompressionType> {
    CompressionType::from_attribute_bits((h.attributes & COMPRESSION_MASK) as u8)
        .ok_or_else(|| corrupt("unknown compression codec"))
}

/// The records section of `batch`, decompressed when needed.
pub(crate) fn records_section(h: &BatchHeader, batch: &[u8]) -> Result<Vec<u8>> {
    let raw = batch.get(HEADER_LEN..).unwrap_or(&[]);
    let ct = codec(h)?;
    if ct == CompressionType::None {
        return Ok(raw.to_vec());
    }
    let limit =
        RecordDecompressionPolicy::default().output_limit(ByteSize::from_bytes(raw.len() as u64));
    krabka_compression::decompress(ct, raw, limit)
        .map(|b| b.to_vec())
        .map_err(|e| corrupt(&e.to_string()))
}

/// Parses the records of a records section; `h` gives the base offset.
pub(crate) fn parse<'a>(h: &BatchHeader, mut section: &'a [u8]) -> Result<Vec<Rec<'a>>> {
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    while !section.is_empty() {
        let (len, n) = read_varint(section).ok_or_else(|| corrupt("record length"))?;
        let len = usize::try_from(len).map_err(|_| corrupt("negative record length"))?;
        let body = section
            .get(n..n + len)
            .ok_or_else(|| corrupt("record past the batch end"))?;
        section = &section[n + len..];
        let mut at = 1; // attributes
        let (timestamp_delta, used) =
            read_varint(body.get(at..).unwrap_or(&[])).ok_or_else(|| corrupt("timestamp"))?;
        at += used;
        let after_timestamp = at;
        let (offset_delta, used) =
            read_varint(body.get(at..).unwrap_or(&[])).ok_or_else(|| corrupt("offset"))?;
        at += used;
        let (key, used) = opt_bytes(body.get(at..).unwrap_or(&[]))?;
        at += used;
        let (value, _) = opt_bytes(body.get(at..).unwrap_or(&[]))?;
        if offset_delta < 0 {
            return Err(corrupt("negative offset delta"));
        }
        out.push(Rec {
            offset: (h.base_offset + offset_delta) as u64,
            key,
            tombstone: value.is_none(),
            value,
            body,
            timestamp_delta,
            after_timestamp,
        });
    }
    Ok(out)
}

fn opt_bytes(b: &[u8]) -> Result<(Option<&[u8]>, usize)> {
    let (len, n) = read_varint(b).ok_or_else(|| corrupt("field length"))?;
    if len < 0 {
        return Ok((None, n));
    }
    let len = len as usize;
    let v = b
        .get(n..n + len)
        .ok_or_else(|| corrupt("field past the record end"))?;
    Ok((Some(v), n + len))
}

/// The delete horizon a batch carries (KIP-534), if any.
pub(crate) fn delete_horizon(h: &BatchHeader) -> Option<i64> {
    (h.attributes & DELETE_HORIZON != 0).then_some(h.base_timestamp)
}

/// `batch` with only `kept` of its records. `horizon` sets a delete horizon on a batch that
/// has none (the records' timestamps are kept: their deltas move with the base). A batch
/// left without records keeps its header only, uncompressed, as Kafka's empty batches.
pub(crate) fn rebuild(
    h: &BatchHeader,
    batch: &[u8],
    kept: &[Rec<'_>],
    horizon: Option<i64>,
) -> Result<Vec<u8>> {
    let mut header = batch[..HEADER_LEN].to_vec();
    let mut attributes = h.attributes;
    let mut base_timestamp = h.base_timestamp;
    let new_base = match horizon {
        Some(t) if delete_horizon(h).is_none() => {
            attributes |= DELETE_HORIZON;
            base_timestamp = t;
            Some(t)
        }
        _ => None,
    };
    let mut section = Vec::new();
    for r in kept {
        match new_base {
            None => {
                write_varint(&mut section, r.body.len() as i64);
                section.extend_from_slice(r.body);
            }
            Some(t) => {
                let delta = h.base_timestamp + r.timestamp_delta - t;
                let mut body = Vec::with_capacity(r.body.len() + 8);
                body.push(r.body[0]);
                write_varint(&mut body, delta);
                body.extend_from_slice(&r.body[r.after_timestamp..]);
                write_varint(&mut section, body.len() as i64);
                section.extend_from_slice(&body);
            }
        }
    }
    let ct = codec(h)?;
    let records = if kept.is_empty() {
        attributes &= !COMPRESSION_MASK;
        Vec::new()
    } else if ct == CompressionType::None {
        section
    } else {
        krabka_compression::compress(ct, &section)
            .map(|b| b.to_vec())
            .map_err(|e| corrupt(&e.to_string()))?
    };
    if kept.is_empty() && new_base.is_none() && delete_horizon(h).is_none() {
        base_timestamp = h.max_timestamp;
    }
    let batch_length = (HEADER_LEN - 12 + records.len()) as i32;
    header[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    header[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    header[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&base_timestamp.to_be_bytes());
    header[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    header.extend_from_slice(&records);
    let crc = compute_crc(&header);
    header[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(header)
}
