//! Bad record batches in Produce requests, and requests that must be refused before work.

use super::frames::*;
use super::*;

/// A produce of a bad batch: the version, acks, topic, partition, records, and the error code
/// every partition must get.
struct ProduceCase {
    name: String,
    version: i16,
    acks: i16,
    topic: &'static str,
    partition: i32,
    records: Option<Vec<u8>>,
    expect: Expect,
}

#[rustfmt::skip]
fn produce_cases() -> Vec<ProduceCase> {
    use Expect::*;
    let good = batch();
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 0x55;
    let mut crc_field_wrong = good.clone();
    crc_field_wrong[17] ^= 0x01;
    let many = batch_with_max_records();
    let headers = batch_with_max_headers();
    // A batch length beyond the records field.
    let mut long = good.clone();
    long[8..12].copy_from_slice(&MAX);
    // A batch length smaller than the header.
    let mut short_len = good.clone();
    short_len[8..12].copy_from_slice(&10i32.to_be_bytes());
    // A batch length of -1.
    let mut negative_len = good.clone();
    negative_len[8..12].copy_from_slice(&[0xff; 4]);
    // Zero records, valid CRC.
    let mut zero = good.clone();
    zero[57..61].copy_from_slice(&0i32.to_be_bytes());
    zero[23..27].copy_from_slice(&(-1i32).to_be_bytes());
    let zero = with_crc(zero);
    // Compression codec 7 (there is none), valid CRC.
    let mut codec = good.clone();
    codec[22] |= 7;
    let codec = with_crc(codec);
    // A good batch followed by 30 bytes of another.
    let two = cat(&[&good, &good[..30]]);
    let stub = good[..30].to_vec();
    let magic0_short = legacy_message_set(0, b"hello");
    let magic0_long = legacy_message_set(0, &[b'x'; 100]);
    let magic1_short = legacy_message_set(1, b"hello");
    let magic1_long = legacy_message_set(1, &[b'x'; 100]);
    let empty = Vec::new();

    let mut cases = Vec::new();
    let mut add = |name: &str, version: i16, acks: i16, topic: &'static str, partition: i32, records: Option<&Vec<u8>>, expect: Expect| {
        cases.push(ProduceCase {
            name: format!("{name}, produce v{version}"),
            version, acks, topic, partition, records: records.cloned(), expect,
        })
    };
    for v in 3..=11 {
        // INVALID_RECORD exists from v8 on; older clients get CORRUPT_MESSAGE.
        let invalid = ProduceError(if v >= 8 { INVALID_RECORD } else { CORRUPT_MESSAGE });
        let corrupt = ProduceError(CORRUPT_MESSAGE);
        add("bad CRC", v, 1, "t", 0, Some(&bad_crc), corrupt);
        add("CRC field flipped", v, 1, "t", 1, Some(&crc_field_wrong), corrupt);
        add("i32::MAX records, valid CRC", v, 1, "t", 0, Some(&many), invalid);
        add("a record with i32::MAX headers, valid CRC", v, 1, "t", 0, Some(&headers), invalid);
        add("batch length beyond the records", v, 1, "t", 0, Some(&long), corrupt);
        add("batch length smaller than a header", v, 1, "t", 0, Some(&short_len), corrupt);
        add("batch length -1", v, 1, "t", 0, Some(&negative_len), corrupt);
        add("30 bytes of a batch", v, 1, "t", 0, Some(&stub), corrupt);
        add("a good batch then 30 bytes of another", v, 1, "t", 0, Some(&two), corrupt);
        add("zero records, valid CRC", v, 1, "t", 0, Some(&zero), invalid);
        add("compression codec 7, valid CRC", v, 1, "t", 0, Some(&codec), invalid);
        add("magic 0 message set", v, 1, "t", 0, Some(&magic0_long), invalid);
        add("magic 1 message set", v, 1, "t", 0, Some(&magic1_long), invalid);
        add("null records", v, 1, "t", 0, None, corrupt);
        add("empty records", v, 1, "t", 0, Some(&empty), corrupt);
    }
    for v in 0..=2 {
        // Pre-0.11 clients: old message formats are refused, not converted.
        let corrupt = ProduceError(CORRUPT_MESSAGE);
        add("magic 0 message set, one short message", v, 1, "t", 0, Some(&magic0_short), corrupt);
        add("magic 0 message set", v, 1, "t", 0, Some(&magic0_long), corrupt);
        add("magic 1 message set, one short message", v, 1, "t", 0, Some(&magic1_short), corrupt);
        add("magic 1 message set", v, 1, "t", 1, Some(&magic1_long), corrupt);
        add("bad CRC", v, 1, "t", 0, Some(&bad_crc), corrupt);
        add("i32::MAX records, valid CRC", v, 1, "t", 0, Some(&many), corrupt);
        add("a record with i32::MAX headers, valid CRC", v, 1, "t", 0, Some(&headers), corrupt);
        add("null records", v, 1, "t", 0, None, corrupt);
    }
    for v in [2, 3, 9] {
        let unknown = ProduceError(UNKNOWN_TOPIC_OR_PARTITION);
        add("acks 5", v, 5, "t", 0, Some(&good), ProduceError(INVALID_REQUIRED_ACKS));
        add("acks -2", v, -2, "t", 0, Some(&good), ProduceError(INVALID_REQUIRED_ACKS));
        add("unknown topic", v, 1, "nope", 0, Some(&good), unknown);
        add("empty topic name", v, 1, "", 0, Some(&good), unknown);
        add("partition 2 of 2", v, 1, "t", 2, Some(&good), unknown);
        add("partition -1", v, 1, "t", -1, Some(&good), unknown);
        add("partition i32::MIN", v, 1, "t", i32::MIN, Some(&good), unknown);
        // acks=0 gets no response; a failed one closes the connection (as Kafka does).
        add("acks 0, bad CRC", v, 0, "t", 0, Some(&bad_crc), Close);
        add("acks 0, i32::MAX records", v, 0, "t", 0, Some(&many), Close);
        add("acks 0, unknown topic", v, 0, "nope", 0, Some(&good), Close);
    }
    cases
}

#[tokio::test]
async fn bad_batches_get_error_codes_and_leave_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let cases = produce_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        reset_largest();
        let f = produce(
            c.version,
            c.acks,
            c.topic,
            c.partition,
            c.records.as_deref(),
        );
        let reply = serve(&broker, f).await;
        let got = match (reply, c.expect) {
            (Reply::Close, Expect::Close) => Ok(()),
            (Reply::Close, _) => Err("closed the connection".to_string()),
            (Reply::Nothing, _) => Err("sent nothing".into()),
            (r @ Reply::Frame(_), Expect::ProduceError(code)) => {
                let errors = produce_errors(r, c.version);
                if errors == [code] {
                    Ok(())
                } else {
                    Err(format!("error codes {errors:?}, expected [{code}]"))
                }
            }
            (Reply::Frame(_), e) => Err(format!("answered, expected {e:?}")),
            (Reply::Parts(_), _) => Err("a produce answered with file parts".into()),
        };
        if let Err(e) = got {
            failures.push(format!("{}: {e}", c.name));
        } else if largest() > ALLOCATION_LIMIT {
            failures.push(format!("{}: a {}-byte allocation", c.name, largest()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_logs_empty(&broker);
    // And a good batch still goes in, at every version.
    for v in 0..=11 {
        let r = serve(&broker, produce(v, 1, "t", 0, Some(&batch()))).await;
        assert_eq!(produce_errors(r, v), [0], "a good batch, v{v}");
    }
    assert_eq!(broker.partition("t", 0).unwrap().log().log_end_offset(), 12);
}

#[tokio::test]
async fn absurd_partition_counts_are_refused_not_attempted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let new = strom_broker::broker::NewTopic {
        name: "huge".into(),
        partitions: Some(i32::MAX),
        replication_factor: None,
        assignments: vec![],
        configs: Default::default(),
    };
    assert!(matches!(
        broker.create_topic(new, false).await,
        Err(strom_broker::broker::BrokerError::InvalidPartitions(_))
    ));
    assert!(matches!(
        broker.add_partitions("t", i32::MAX, None, false).await,
        Err(strom_broker::broker::BrokerError::InvalidPartitions(_))
    ));
}

#[tokio::test]
async fn producers_cannot_write_transaction_markers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let marker = strom_storage::txn_index::marker_batch(7, 0, true, 0, 1);
    let r = serve(&broker, produce_as(Some("tx"), 8, 1, "t", 0, Some(&marker))).await;
    assert_eq!(produce_errors(r, 8), [INVALID_RECORD], "INVALID_RECORD");
    let r = serve(&broker, produce_as(Some("tx"), 3, 1, "t", 0, Some(&marker))).await;
    assert_eq!(
        produce_errors(r, 3),
        [CORRUPT_MESSAGE],
        "CORRUPT_MESSAGE before v8"
    );
    assert_eq!(broker.partition("t", 0).unwrap().log().log_end_offset(), 0);
}

/// A batch from producer `pid` (epoch 0, sequence `seq`), transactional or not.
fn producer_batch(pid: i64, seq: i32, transactional: bool) -> Vec<u8> {
    let mut b = BatchBuilder::new().record(Record {
        timestamp: 1,
        key: None,
        value: Some(b"v".to_vec()),
        headers: vec![],
    });
    b.producer_id = pid;
    b.producer_epoch = 0;
    b.base_sequence = seq;
    b.transactional = transactional;
    b.build()
}

/// Nobody may open a transaction in a partition that no transaction coordinator knows of:
/// it would hold the last stable offset, and read_committed consumers, for ever.
#[tokio::test]
async fn transactional_batches_outside_a_known_transaction_are_refused() {
    const INVALID_TXN_STATE: i16 = 48;
    const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let txn = producer_batch(7, 0, true);
    for v in [3, 9, 11] {
        let r = serve(&broker, produce(v, 1, "t", 0, Some(&txn))).await;
        assert_eq!(
            produce_errors(r, v),
            [TRANSACTIONAL_ID_AUTHORIZATION_FAILED],
            "no transactional id, v{v}"
        );
        let r = serve(
            &broker,
            produce_as(Some("nobody"), v, 1, "t", 0, Some(&txn)),
        )
        .await;
        assert_eq!(
            produce_errors(r, v),
            [INVALID_TXN_STATE],
            "an id the coordinator does not know, v{v}"
        );
        // A negative producer id is no producer id; a transaction needs one.
        let r = serve(
            &broker,
            produce_as(
                Some("nobody"),
                v,
                1,
                "t",
                0,
                Some(&producer_batch(-5, 0, true)),
            ),
        )
        .await;
        let invalid = if v >= 8 {
            INVALID_RECORD
        } else {
            CORRUPT_MESSAGE
        };
        assert_eq!(produce_errors(r, v), [invalid], "producer id -5, v{v}");
        // An idempotent batch needs a sequence number.
        let r = serve(
            &broker,
            produce(v, 1, "t", 0, Some(&producer_batch(8, -1, false))),
        )
        .await;
        assert_eq!(produce_errors(r, v), [invalid], "sequence -1, v{v}");
        // Produce v3+ carries exactly one batch per partition.
        let two = cat(&[&batch(), &batch()]);
        let r = serve(&broker, produce(v, 1, "t", 0, Some(&two))).await;
        assert_eq!(produce_errors(r, v), [invalid], "two batches, v{v}");
    }
    let p = broker.partition("t", 0).unwrap();
    assert_eq!(p.log().log_end_offset(), 0, "nothing was written");
    assert_eq!(p.last_stable_offset(), 0);
    assert!(p.producers().is_empty());
}

#[tokio::test]
async fn clients_cannot_write_into_internal_topics() {
    const INVALID_TOPIC_EXCEPTION: i16 = 17;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    for topic in ["__consumer_offsets", "__transaction_state"] {
        broker.ensure_internal_topic(topic, 2).await.unwrap();
        let before = broker.partition(topic, 0).unwrap().log().log_end_offset();
        for v in [2, 3, 11] {
            let r = serve(&broker, produce(v, 1, topic, 0, Some(&batch()))).await;
            assert_eq!(
                produce_errors(r, v),
                [INVALID_TOPIC_EXCEPTION],
                "{topic}, v{v}"
            );
        }
        let after = broker.partition(topic, 0).unwrap().log().log_end_offset();
        assert_eq!(before, after, "{topic} untouched");
    }
}

#[tokio::test]
async fn user_topics_named_with_two_underscores_are_ordinary() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let new = strom_broker::broker::NewTopic {
        name: "__debezium-heartbeat.db".into(),
        partitions: Some(1),
        replication_factor: None,
        assignments: vec![],
        configs: Default::default(),
    };
    broker.create_topic(new, false).await.unwrap();
    assert!(
        !broker
            .topic("__debezium-heartbeat.db")
            .unwrap()
            .is_internal()
    );
    let r = serve(
        &broker,
        produce(9, 1, "__debezium-heartbeat.db", 0, Some(&batch())),
    )
    .await;
    assert_eq!(produce_errors(r, 9), [0]);
}
