//! A producer's open batch for one partition: records encoded as they are sent (Kafka's
//! DefaultRecord layout) and closed into a whole RecordBatch v2 with one header, one CRC and,
//! with a codec, one compression.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use krabka_compression::CompressionType;
use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::producer::{Delivery, ProduceRecord};

/// A partition's open batch: its records already encoded (the records section of a
/// RecordBatch v2, uncompressed), so that closing it costs one header and, with a codec, one
/// compression.
pub(crate) struct Pending {
    /// Room for the batch header, then the records: an uncompressed batch is closed in place.
    pub(crate) records: BytesMut,
    pub(crate) count: i32,
    /// The first record's timestamp: the others are stored as deltas from it.
    pub(crate) base_ts: i64,
    pub(crate) max_ts: i64,
    pub(crate) replies: Vec<oneshot::Sender<Delivery>>,
    /// Bytes the batch will take, header included: what `batch.size` compares with.
    pub(crate) bytes: usize,
    pub(crate) created: Instant,
}

impl Pending {
    /// A batch with room for `capacity` bytes of records: room for a whole batch at once
    /// (growing from a small buffer copied each batch's bytes about twice over).
    pub(crate) fn new(first_ts: i64, capacity: usize) -> Pending {
        let mut records = BytesMut::with_capacity(HEADER_LEN + capacity);
        records.put_bytes(0, HEADER_LEN);
        Pending {
            records,
            count: 0,
            base_ts: first_ts,
            max_ts: first_ts,
            replies: Vec::new(),
            bytes: HEADER_LEN,
            created: Instant::now(),
        }
    }

    /// Appends one record, as Kafka's DefaultRecord encodes it.
    pub(crate) fn push(&mut self, r: &ProduceRecord, ts: i64) {
        let ts_delta = ts - self.base_ts;
        let offset_delta = self.count as i64;
        let opt_len = |b: &Option<Bytes>| {
            b.as_ref()
                .map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len())
        };
        let headers_len: usize = r
            .headers
            .iter()
            .map(|(k, v)| varint_len(k.len() as i64) + k.len() + opt_len(v))
            .sum();
        let body = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + opt_len(&r.key)
            + opt_len(&r.value)
            + varint_len(r.headers.len() as i64)
            + headers_len;
        let out = &mut self.records;
        out.reserve(body + 5);
        put_varint(out, body as i64);
        out.put_u8(0);
        put_varint(out, ts_delta);
        put_varint(out, offset_delta);
        put_opt_bytes(out, r.key.as_deref());
        put_opt_bytes(out, r.value.as_deref());
        put_varint(out, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_opt_bytes(out, Some(k.as_bytes()));
            put_opt_bytes(out, v.as_deref());
        }
        self.count += 1;
        self.max_ts = self.max_ts.max(ts);
        self.bytes += body + varint_len(body as i64);
    }

    /// The whole RecordBatch v2: header, then the records, compressed with `codec`. Once:
    /// the records are handed over (without a codec, the header is written in the room kept
    /// for it: the records are not copied).
    pub(crate) fn encode(&mut self, codec: CompressionType) -> Result<Bytes> {
        let mut out = if codec == CompressionType::None {
            std::mem::take(&mut self.records)
        } else {
            let compressed = krabka_compression::compress(codec, &self.records[HEADER_LEN..])
                .map_err(|e| ClientError::Protocol(format!("compressing a batch: {e}")))?;
            let mut out = BytesMut::with_capacity(HEADER_LEN + compressed.len());
            out.put_bytes(0, HEADER_LEN);
            out.put_slice(&compressed);
            out
        };
        let len = (out.len() - 12) as i32;
        let mut header = &mut out[..HEADER_LEN];
        header.put_i64(0); // base offset: the broker assigns it
        header.put_i32(len);
        header.put_i32(-1); // partition leader epoch
        header.put_i8(2); // magic
        header.put_u32(0); // crc, below
        header.put_i16(codec.as_attribute_bits() as i16);
        header.put_i32(self.count - 1);
        header.put_i64(self.base_ts);
        header.put_i64(self.max_ts);
        header.put_i64(-1); // producer id
        header.put_i16(-1); // producer epoch
        header.put_i32(-1); // base sequence
        header.put_i32(self.count);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

pub(crate) const HEADER_LEN: usize = 61;

fn varint_len(v: i64) -> usize {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while raw >= 0x80 {
        raw >>= 7;
        n += 1;
    }
    n
}

/// Zigzag varint, written with one copy (a byte at a time checked the room each time: a
/// tenth of building a batch of small records).
fn put_varint(out: &mut BytesMut, v: i64) {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    let mut buf = [0u8; 10];
    let mut n = 0;
    while raw >= 0x80 {
        buf[n] = (raw as u8) | 0x80;
        raw >>= 7;
        n += 1;
    }
    buf[n] = raw as u8;
    out.put_slice(&buf[..=n]);
}

fn put_opt_bytes(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krabka_compression::RecordDecompressionPolicy;
    use krabka_protocol::records::RecordBatch;

    fn record(
        key: Option<&str>,
        value: Option<&str>,
        headers: &[(&str, Option<&str>)],
    ) -> ProduceRecord {
        ProduceRecord {
            topic: "t".into(),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Varints at the edges of each length, i64's extremes included, read back as written
    /// and take the room `varint_len` predicts.
    #[test]
    fn varints_round_trip_at_every_length() {
        let mut values = vec![0i64, -1, 1, i64::MIN, i64::MAX];
        for shift in 0..63 {
            values.extend([1i64 << shift, -(1i64 << shift), (1i64 << shift) - 1]);
        }
        for v in values {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let (mut raw, mut shift) = (0u64, 0);
            for (i, byte) in out.iter().enumerate() {
                raw |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                assert_eq!(byte & 0x80 == 0, i == out.len() - 1, "{v}");
            }
            assert_eq!(((raw >> 1) as i64) ^ -((raw & 1) as i64), v);
        }
    }

    /// A batch encoded record by record reads back, through krabka's decoder, exactly as
    /// given: keys, null values, headers, timestamps before and after the first one, in
    /// every codec; its size is what `bytes` predicted.
    #[test]
    fn batches_built_record_by_record_decode_exactly() {
        let records = [
            (record(Some("k1"), Some("v1"), &[]), 1_000),
            (
                record(
                    None,
                    Some(&"x".repeat(300)),
                    &[("h", Some("1")), ("n", None)],
                ),
                990,
            ),
            (record(Some("k3"), None, &[]), 1_200),
        ];
        for codec in [
            CompressionType::None,
            CompressionType::Gzip,
            CompressionType::Snappy,
            CompressionType::Lz4,
            CompressionType::Zstd,
        ] {
            let mut b = Pending::new(records[0].1, 64);
            for (r, ts) in &records {
                b.push(r, *ts);
            }
            let bytes = b.encode(codec).unwrap();
            if codec == CompressionType::None {
                assert_eq!(bytes.len(), b.bytes);
            }
            let mut cursor = &bytes[..];
            let batch =
                RecordBatch::decode_with_policy(&mut cursor, RecordDecompressionPolicy::default())
                    .unwrap();
            assert_eq!(batch.last_offset_delta, 2);
            assert_eq!((batch.base_timestamp, batch.max_timestamp), (1_000, 1_200));
            assert_eq!(batch.producer_id, -1);
            for (i, ((r, ts), got)) in records.iter().zip(&batch.records).enumerate() {
                assert_eq!(got.offset_delta, i as i32);
                assert_eq!(batch.base_timestamp + got.timestamp_delta, *ts);
                assert_eq!(got.key, r.key);
                assert_eq!(got.value, r.value);
                let headers: Vec<(String, Option<Bytes>)> = got
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                assert_eq!(headers, r.headers);
            }
        }
    }
}
