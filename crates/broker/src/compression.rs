//! Broker-side compression: Kafka's topic (and broker default) `compression.type` with the
//! KIP-390 levels `compression.gzip.level`, `compression.lz4.level` and
//! `compression.zstd.level`. With `producer` (the default) batches are stored as received.
//! With a codec, a batch compressed otherwise is recompressed by the leader before it is
//! appended, as Kafka's LogValidator does: the records, their offset and timestamp deltas,
//! the batch's timestamps, producer id, epoch, sequence and transactional flag stay; only
//! the codec (and so the CRC) changes. A batch already in the topic's codec is stored as
//! received, whatever level it was compressed at. Fetches serve the stored batches.

use krabka_compression::{CompressionType, RecordDecompressionPolicy};
use krabka_protocol::records::{RecordBatch, RecordsError};
use strom_storage::batch::BatchHeader;

/// What a topic does with the batches it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// `None` for `producer`: stored as received.
    pub codec: Option<CompressionType>,
    pub gzip_level: i32,
    pub lz4_level: i32,
    pub zstd_level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            codec: None,
            gzip_level: CompressionType::Gzip.default_level().unwrap_or(-1),
            lz4_level: CompressionType::Lz4.default_level().unwrap_or(9),
            zstd_level: CompressionType::Zstd.default_level().unwrap_or(3),
        }
    }
}

/// The keys this module reads, topic and broker alike.
pub const KEYS: &[&str] = &[
    "compression.type",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
];

impl Compression {
    /// Sets one of [`KEYS`]; the error says what is wrong with the value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        let level = |codec: CompressionType| -> Result<i32, String> {
            let level: i32 = value.parse().map_err(|_| "not a number".to_string())?;
            codec.check_level(level).map_err(|e| e.to_string())?;
            Ok(level)
        };
        match key {
            "compression.type" => {
                self.codec = match value {
                    "producer" => None,
                    "uncompressed" | "none" => Some(CompressionType::None),
                    "gzip" => Some(CompressionType::Gzip),
                    "snappy" => Some(CompressionType::Snappy),
                    "lz4" => Some(CompressionType::Lz4),
                    "zstd" => Some(CompressionType::Zstd),
                    _ => {
                        return Err(
                            "must be one of uncompressed, zstd, lz4, snappy, gzip, producer".into(),
                        );
                    }
                }
            }
            "compression.gzip.level" => self.gzip_level = level(CompressionType::Gzip)?,
            "compression.lz4.level" => self.lz4_level = level(CompressionType::Lz4)?,
            "compression.zstd.level" => self.zstd_level = level(CompressionType::Zstd)?,
            _ => return Err(format!("{key} is not a compression key")),
        }
        Ok(())
    }

    /// The value of one of [`KEYS`], as Kafka shows it.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "compression.type" => match self.codec {
                None => "producer".into(),
                Some(CompressionType::None) => "uncompressed".into(),
                Some(c) => c.name().into(),
            },
            "compression.gzip.level" => self.gzip_level.to_string(),
            "compression.lz4.level" => self.lz4_level.to_string(),
            "compression.zstd.level" => self.zstd_level.to_string(),
            _ => return None,
        })
    }

    fn level(&self, codec: CompressionType) -> Option<i32> {
        match codec {
            CompressionType::Gzip => Some(self.gzip_level),
            CompressionType::Lz4 => Some(self.lz4_level),
            CompressionType::Zstd => Some(self.zstd_level),
            _ => None,
        }
    }

    /// The batches of `records` as this topic stores them: `None` when every one is kept
    /// as received, else all of them, each in the topic's codec. Refused (the batch cannot
    /// be read, or its records not decompressed) as a corrupt batch.
    pub fn recompress(&self, records: &[u8]) -> Result<Option<Vec<u8>>, RecordsError> {
        let Some(target) = self.codec else {
            return Ok(None);
        };
        if batches(records).map(<[u8]>::len).sum::<usize>() != records.len() {
            return Err(RecordsError::RecordParse(
                "the records end in a torn batch".into(),
            ));
        }
        if batches(records).all(|b| codec_of(b) == Some(target)) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(records.len());
        for b in batches(records) {
            if codec_of(b) == Some(target) {
                out.extend_from_slice(b);
                continue;
            }
            let mut cursor = b;
            let mut batch =
                RecordBatch::decode_with_policy(&mut cursor, RecordDecompressionPolicy::default())?;
            batch.attributes = batch.attributes.with_compression(target);
            batch.encode_with_compression_level(&mut out, self.level(target))?;
        }
        Ok(Some(out))
    }
}

/// The codec of a batch, from its header's attributes.
fn codec_of(batch: &[u8]) -> Option<CompressionType> {
    let h = BatchHeader::parse(batch)?;
    CompressionType::from_attribute_bits((h.attributes & 0x07) as u8)
}

/// The batches of `records` by their declared sizes (framing is checked on append).
fn batches(records: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        let size = BatchHeader::parse(rest)?.total_size().min(rest.len());
        let (b, r) = rest.split_at(size);
        rest = r;
        Some(b)
    })
}

#[cfg(test)]
#[path = "compression_tests.rs"]
mod tests;
