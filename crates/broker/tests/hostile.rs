//! Hostile requests straight into the request path: each gets a Kafka error code or a closed
//! connection; never a panic, an abort, a huge allocation or a damaged log.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use krabka_protocol::owned::api_versions_response::ApiVersionsResponse;
use krabka_protocol::owned::produce_response::ProduceResponse;
use strom_broker::handlers::handle;
use strom_broker::server::Reply;
use strom_storage::batch::{BatchBuilder, Record};

const MAX: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
/// Unsigned varint of i32::MAX + 1, a compact array length of i32::MAX.
const COMPACT_MAX: [u8; 5] = [0x80, 0x80, 0x80, 0x80, 0x08];

fn is_close(r: &Reply) -> bool {
    matches!(r, Reply::Close)
}

/// Produce v3 request for topic `t` partition 0 carrying `records`.
fn produce_v(version: i16, records: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    if version >= 3 {
        b.put_i16(-1); // transactional id
    }
    b.put_i16(1); // acks
    b.put_i32(5000);
    b.put_i32(1);
    b.put_i16(1);
    b.put_u8(b't');
    b.put_i32(1);
    b.put_i32(0);
    b.put_i32(records.len() as i32);
    b.put_slice(records);
    b.to_vec()
}

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

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = strom_storage::batch::compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[tokio::test]
async fn hostile_requests_get_errors_or_closed_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut cases: Vec<(&str, bytes::Bytes)> = vec![
        (
            "produce v3, i32::MAX topics",
            frame(
                0,
                3,
                false,
                &[&[0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30][..], &MAX].concat(),
            ),
        ),
        (
            "produce v9, compact i32::MAX topics",
            frame(
                0,
                9,
                true,
                &[&[0, 0, 1, 0, 0, 0x75, 0x30][..], &COMPACT_MAX].concat(),
            ),
        ),
        (
            "metadata v4, i32::MAX topics",
            frame(3, 4, false, &[&MAX[..], &[1]].concat()),
        ),
        (
            "metadata v12, compact i32::MAX topics",
            frame(3, 12, true, &[&COMPACT_MAX[..], &[1, 0, 0]].concat()),
        ),
        (
            "fetch v4, i32::MAX topics",
            frame(
                1,
                4,
                false,
                &[
                    &[
                        0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0,
                    ][..],
                    &MAX,
                ]
                .concat(),
            ),
        ),
        (
            "fetch v12, compact i32::MAX topics",
            frame(
                1,
                12,
                true,
                &[
                    &[
                        0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                        0, 0, 0, 0,
                    ][..],
                    &COMPACT_MAX,
                ]
                .concat(),
            ),
        ),
        (
            "create topics v2, i32::MAX topics",
            frame(19, 2, false, &MAX),
        ),
        (
            "list offsets v1, i32::MAX topics",
            frame(2, 1, false, &[&[0xff, 0xff, 0xff, 0xff][..], &MAX].concat()),
        ),
        (
            "join group v5, i32::MAX protocols",
            frame(
                11,
                5,
                false,
                &[
                    &[
                        0, 1, b'g', 0, 0, 0x27, 0x10, 0, 0, 0x27, 0x10, 0, 0, 0xff, 0xff, 0, 1,
                        b'c',
                    ][..],
                    &MAX,
                ]
                .concat(),
            ),
        ),
        (
            "offset commit v2, i32::MAX topics",
            frame(
                8,
                2,
                false,
                &[
                    &[
                        0, 1, b'g', 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff,
                        0xff, 0xff, 0xff,
                    ][..],
                    &MAX,
                ]
                .concat(),
            ),
        ),
        (
            "describe configs v1, i32::MAX resources",
            frame(32, 1, false, &MAX),
        ),
        (
            "delete records v0, i32::MAX topics",
            frame(21, 0, false, &MAX),
        ),
        (
            "client id longer than the frame",
            bytes::Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 42, 0x7f, 0xff, b'a']),
        ),
        ("unknown api key", frame(999, 0, false, &[])),
        ("negative api key", frame(-5, 0, false, &[])),
        ("produce v99", frame(0, 99, false, &[])),
        ("fetch v0 (not served)", frame(1, 0, false, &[])),
        ("header only, metadata v1", frame(3, 1, false, &[])),
        ("4 bytes", bytes::Bytes::from_static(&[0, 18, 0, 3])),
        ("empty", bytes::Bytes::new()),
        (
            "garbage",
            bytes::Bytes::from_static(&[
                0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad,
            ]),
        ),
    ];
    // Every valid request cut short, at every length.
    let valid = frame(0, 3, false, &produce_v(3, &batch()));
    for cut in 8..valid.len() {
        cases.push(("truncated produce", valid.slice(..cut)));
    }
    for (name, f) in cases {
        let r = handle(&broker, f, peer()).await;
        assert!(is_close(&r), "{name}: expected the connection to close");
    }
    // A null records field (negative length) is answered, not written.
    let f = frame(
        0,
        3,
        false,
        &[
            &[
                0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0,
            ][..],
            &[0x80, 0, 0, 0],
        ]
        .concat(),
    );
    let r: ProduceResponse = decode(handle(&broker, f, peer()).await, 3, false);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);
    // Nothing reached the log.
    for p in 0..2 {
        assert_eq!(broker.partition("t", p).unwrap().log.log_end_offset(), 0);
    }
}

#[tokio::test]
async fn a_negative_client_id_length_reads_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let f = bytes::Bytes::from_static(&[0, 18, 0, 0, 0, 0, 0, 42, 0xff, 0xf0]);
    let r: ApiVersionsResponse = decode(handle(&broker, f, peer()).await, 0, false);
    assert_eq!(r.error_code, 0);
}

#[tokio::test]
async fn unsupported_api_versions_gets_the_list_in_v0() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let r: ApiVersionsResponse = decode(
        handle(&broker, frame(18, 77, true, &[]), peer()).await,
        0,
        false,
    );
    assert_eq!(r.error_code, 35);
    assert!(
        r.api_keys
            .iter()
            .any(|k| k.api_key == 0 && k.min_version == 0 && k.max_version == 11)
    );
}

async fn produce_error(
    broker: &std::sync::Arc<strom_broker::Broker>,
    version: i16,
    records: &[u8],
) -> i16 {
    let r: ProduceResponse = if version <= 2 {
        // v0-2: hand-encoded; error code after topic name and partition index.
        let b = body(
            handle(
                broker,
                frame(0, version, false, &produce_v(version, records)),
                peer(),
            )
            .await,
            false,
        );
        let r = i16::from_be_bytes([b[4 + 2 + 1 + 4 + 4], b[4 + 2 + 1 + 4 + 4 + 1]]);
        return r;
    } else {
        decode(
            handle(
                broker,
                frame(0, version, false, &produce_v(version, records)),
                peer(),
            )
            .await,
            version,
            false,
        )
    };
    r.responses[0].partition_responses[0].error_code
}

#[tokio::test]
async fn bad_batches_get_error_codes_and_leave_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let good = batch();
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 0x55;
    // Claims i32::MAX records (valid CRC).
    let mut many = good.clone();
    many[57..61].copy_from_slice(&MAX);
    many[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
    let many = with_crc(many);
    // A batch length beyond the records field.
    let mut long = good.clone();
    long[8..12].copy_from_slice(&MAX);
    // Magic 1, as a v0-2 producer with old message sets would send.
    let mut magic1 = good.clone();
    magic1[16] = 1;
    for v in 3..=7 {
        assert_eq!(
            produce_error(&broker, v, &bad_crc).await,
            2,
            "bad CRC, v{v}"
        );
        assert_eq!(
            produce_error(&broker, v, &many).await,
            2,
            "i32::MAX records, v{v}"
        );
        assert_eq!(
            produce_error(&broker, v, &long).await,
            2,
            "overlong batch, v{v}"
        );
    }
    assert_eq!(
        produce_error(&broker, 8, &many).await,
        87,
        "INVALID_RECORD from v8"
    );
    for v in 0..=2 {
        assert_eq!(
            produce_error(&broker, v, &magic1).await,
            2,
            "magic 1 in v{v}"
        );
    }
    for p in 0..2 {
        assert_eq!(broker.partition("t", p).unwrap().log.log_end_offset(), 0);
    }
    // And a good batch still goes in.
    assert_eq!(produce_error(&broker, 3, &good).await, 0);
    assert_eq!(broker.partition("t", 0).unwrap().log.log_end_offset(), 1);
}

#[tokio::test]
async fn absurd_partition_counts_are_refused_not_attempted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let new = strom_broker::broker::NewTopic {
        name: "huge".into(),
        partitions: Some(i32::MAX),
        replication_factor: None,
        assignments: vec![],
        configs: Default::default(),
    };
    assert!(matches!(
        broker.create_topic(new, false),
        Err(strom_broker::broker::BrokerError::InvalidPartitions(_))
    ));
    assert!(matches!(
        broker.add_partitions("t", i32::MAX, None, false),
        Err(strom_broker::broker::BrokerError::InvalidPartitions(_))
    ));
}

#[tokio::test]
async fn producers_cannot_write_transaction_markers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let marker = strom_storage::txn_index::marker_batch(7, 0, true, 0, 1);
    assert_eq!(
        produce_error(&broker, 8, &marker).await,
        87,
        "INVALID_RECORD"
    );
    assert_eq!(
        produce_error(&broker, 3, &marker).await,
        2,
        "CORRUPT_MESSAGE before v8"
    );
    assert_eq!(broker.partition("t", 0).unwrap().log.log_end_offset(), 0);
}
