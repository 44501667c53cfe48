//! Recompression keeps everything of a batch but its codec.

use bytes::Bytes;
use krabka_compression::CompressionType;
use krabka_protocol::records::{Attributes, Record, RecordBatch};

use super::Compression;

fn batch(codec: CompressionType) -> Vec<u8> {
    let b = RecordBatch {
        base_offset: 0,
        attributes: Attributes::default()
            .with_compression(codec)
            .with_transactional(true),
        last_offset_delta: 2,
        base_timestamp: 1_000,
        max_timestamp: 1_007,
        producer_id: 42,
        producer_epoch: 3,
        base_sequence: 17,
        records: (0..3)
            .map(|i| Record {
                timestamp_delta: i as i64 * 3,
                offset_delta: i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value {i} ").repeat(20))),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut out = Vec::new();
    b.encode_batch(&mut out).unwrap();
    out
}

fn decoded(bytes: &[u8]) -> RecordBatch {
    let mut cursor = bytes;
    RecordBatch::decode_batch(&mut cursor).unwrap()
}

fn topic(codec: &str) -> Compression {
    let mut c = Compression::default();
    c.set("compression.type", codec).unwrap();
    c
}

#[test]
fn every_codec_pair_keeps_the_batch_but_its_codec() {
    let codecs = [
        ("uncompressed", CompressionType::None),
        ("gzip", CompressionType::Gzip),
        ("snappy", CompressionType::Snappy),
        ("lz4", CompressionType::Lz4),
        ("zstd", CompressionType::Zstd),
    ];
    for (_, from) in codecs {
        let original = decoded(&batch(from));
        for (name, to) in codecs {
            let stored = topic(name).recompress(&batch(from)).unwrap();
            if from == to {
                assert_eq!(stored, None, "{from:?} into {name}: kept as received");
                continue;
            }
            let stored = stored.unwrap_or_else(|| panic!("{from:?} into {name}: recompressed"));
            let got = decoded(&stored);
            assert_eq!(got.attributes.compression(), to);
            assert!(got.attributes.is_transactional());
            let mut want = original.clone();
            want.attributes = want.attributes.with_compression(to);
            assert_eq!(got, want, "{from:?} into {name}");
        }
    }
}

#[test]
fn producer_keeps_every_batch_and_several_batches_are_each_recompressed() {
    let two = [batch(CompressionType::None), batch(CompressionType::Lz4)].concat();
    assert_eq!(topic("producer").recompress(&two).unwrap(), None);
    let stored = topic("lz4").recompress(&two).unwrap().unwrap();
    let first_len = 12 + i32::from_be_bytes(stored[8..12].try_into().unwrap()) as usize;
    assert_eq!(
        decoded(&stored[..first_len]).attributes.compression(),
        CompressionType::Lz4
    );
    assert_eq!(
        &stored[first_len..],
        &batch(CompressionType::Lz4)[..],
        "already lz4: as received"
    );
}

#[test]
fn damaged_batches_are_refused_and_bad_settings_named() {
    let mut bad = batch(CompressionType::None);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(
        topic("gzip").recompress(&bad).is_err(),
        "the CRC no longer matches"
    );
    let mut c = Compression::default();
    assert!(
        c.set("compression.type", "brotli")
            .unwrap_err()
            .contains("one of")
    );
    assert!(c.set("compression.zstd.level", "23").is_err());
    assert!(c.set("compression.lz4.level", "0").is_err());
    assert!(c.set("compression.gzip.level", "x").is_err());
    c.set("compression.gzip.level", "9").unwrap();
    assert_eq!(c.get("compression.gzip.level").as_deref(), Some("9"));
    c.set("compression.type", "uncompressed").unwrap();
    assert_eq!(c.get("compression.type").as_deref(), Some("uncompressed"));
}
