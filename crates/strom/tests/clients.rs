//! Real Kafka clients (librdkafka through the rdkafka crate) against a real `strom server`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, wait_for};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(60);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// (partition, offset, value) of every acknowledged record, as delivery reports say.
#[derive(Default, Clone)]
struct Acks(Arc<Mutex<Vec<Delivery>>>);

/// A delivery report: (partition, offset, value), or the error.
type Delivery = Result<(i32, i64, Vec<u8>), String>;

impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let r = match result {
            Ok(m) => Ok((
                m.partition(),
                m.offset(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().push(r);
    }
}

fn producer(server: &Server, extra: &[(&str, &str)]) -> (BaseProducer<Acks>, Acks) {
    let acks = Acks::default();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", server.bootstrap())
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    (c.create_with_context(acks.clone()).expect("producer"), acks)
}

fn consumer(server: &Server, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = ClientConfig::new();
    // librdkafka needs a group id even to assign partitions by hand; no offsets are committed.
    c.set("bootstrap.servers", server.bootstrap())
        .set("group.id", "strom-tests")
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("consumer")
}

fn admin(server: &Server) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .expect("admin")
}

fn create_topic(server: &Server, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = block_on(admin(server).create_topics([&t], &AdminOptions::new())).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
}

fn got(m: &BorrowedMessage<'_>) -> Got {
    Got {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| k.to_vec()),
        value: m.payload().unwrap_or_default().to_vec(),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
        timestamp: m.timestamp().to_millis(),
    }
}

/// Reads `count` records of `topic` from the beginning of every partition.
fn consume_all(server: &Server, topic: &str, partitions: i32, count: usize) -> Vec<Got> {
    let c = consumer(server, &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while out.len() < count {
        if let Some(r) = c.poll(Duration::from_millis(100)) {
            out.push(got(&r.expect("consume")));
        }
        if std::time::Instant::now() > deadline {
            let per: BTreeMap<i32, usize> = out.iter().fold(BTreeMap::new(), |mut m, g| {
                *m.entry(g.partition).or_default() += 1;
                m
            });
            let marks: Vec<_> = (0..partitions)
                .map(|p| c.fetch_watermarks(topic, p, T))
                .collect();
            panic!(
                "got {} of {count} records from {topic}: per partition {per:?}, watermarks {marks:?}",
                out.len()
            );
        }
    }
    // Nothing more than expected arrives.
    assert!(
        c.poll(Duration::from_millis(300)).is_none(),
        "more records than produced"
    );
    out
}

fn flush<C: ProducerContext>(p: &BaseProducer<C>) {
    p.flush(T).expect("flush");
}

#[test]
fn keyed_records_with_headers_keep_order_per_partition() {
    let server = Server::start();
    create_topic(&server, "orders", 6, &[]);
    let (p, acks) = producer(&server, &[("acks", "all")]);
    for i in 0..600u32 {
        let key = format!("customer-{}", i % 20);
        let value = format!("order-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(&i.to_be_bytes()),
            })
            .insert(Header {
                key: "source",
                value: Some("test"),
            });
        p.send(
            BaseRecord::to("orders")
                .key(&key)
                .payload(&value)
                .headers(headers),
        )
        .unwrap();
        p.poll(Duration::ZERO);
    }
    flush(&p);
    let acked = acks.0.lock().unwrap().clone();
    assert_eq!(acked.len(), 600);
    assert!(acked.iter().all(|r| r.is_ok()), "{acked:?}");

    let records = consume_all(&server, "orders", 6, 600);
    let mut by_partition: BTreeMap<i32, Vec<&Got>> = BTreeMap::new();
    let mut partition_of_key: HashMap<Vec<u8>, i32> = HashMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r);
        let prev = partition_of_key.insert(r.key.clone().unwrap(), r.partition);
        assert!(
            prev.is_none_or(|p| p == r.partition),
            "a key moved between partitions"
        );
        let i = u32::from_be_bytes(r.headers[0].1.clone().try_into().unwrap());
        assert_eq!(r.headers[0].0, "seq");
        assert_eq!(r.headers[1], ("source".to_string(), b"test".to_vec()));
        assert_eq!(r.value, format!("order-{i}").into_bytes());
        assert_eq!(
            r.key.as_deref(),
            Some(format!("customer-{}", i % 20).as_bytes())
        );
    }
    assert!(by_partition.len() > 1, "keys should spread over partitions");
    for (p, rs) in by_partition {
        // Offsets are 0..n without gaps, and the producer's order is kept within a partition.
        let offsets: Vec<i64> = rs.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..rs.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
        let seqs: Vec<u32> = rs
            .iter()
            .map(|r| u32::from_be_bytes(r.headers[0].1.clone().try_into().unwrap()))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p} out of order"
        );
    }
    // Delivery reports carry the offsets that the consumer then sees.
    let mut reported: Vec<(i32, i64)> = acked
        .iter()
        .map(|r| {
            let (p, o, _) = r.as_ref().unwrap();
            (*p, *o)
        })
        .collect();
    reported.sort();
    let mut seen: Vec<(i32, i64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    seen.sort();
    assert_eq!(reported, seen);
}

#[test]
fn every_compression_codec_is_stored_as_received() {
    let server = Server::start();
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"].iter().enumerate() {
        let topic = format!("codec-{codec}");
        create_topic(&server, &topic, 1, &[]);
        let (p, _) = producer(&server, &[("compression.type", codec), ("linger.ms", "50")]);
        for n in 0..100 {
            let v = format!("{codec} record {n} {}", "x".repeat(100));
            p.send(BaseRecord::<(), _>::to(&topic).payload(&v)).unwrap();
        }
        flush(&p);
        let records = consume_all(&server, &topic, 1, 100);
        for (n, r) in records.iter().enumerate() {
            assert_eq!(r.offset, n as i64);
            assert_eq!(
                r.value,
                format!("{codec} record {n} {}", "x".repeat(100)).into_bytes()
            );
        }
        // On disk, the batches carry the producer's codec (attributes bits 0-2), and are
        // valid as stored.
        let codecs = stored_codecs(&server, &topic);
        assert!(
            codecs.contains(&(i as i16)),
            "{codec}: stored codecs {codecs:?}"
        );
    }
}

/// The codec (attribute bits 0-2) of every batch in partition 0 of `topic` on disk, each
/// batch checked valid as stored.
fn stored_codecs(server: &Server, topic: &str) -> Vec<i16> {
    let seg = server
        .data_dir()
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let bytes = std::fs::read(&seg).unwrap();
    let mut pos = 0;
    let mut codecs = Vec::new();
    while pos < bytes.len() {
        let h = strom_storage::batch::validate(
            &bytes[pos..pos
                + strom_storage::batch::BatchHeader::parse(&bytes[pos..])
                    .unwrap()
                    .total_size()],
        )
        .unwrap();
        codecs.push(h.attributes & 7);
        pos += h.total_size();
    }
    codecs
}

/// A topic's compression.type other than `producer`: whatever codec the producer used,
/// the batches are stored in the topic's and read back exactly (Kafka's broker-side
/// recompression).
#[test]
fn a_topic_codec_recompresses_whatever_the_producer_sent() {
    let server = Server::start();
    let topic_codecs = [
        ("uncompressed", 0),
        ("gzip", 1),
        ("snappy", 2),
        ("lz4", 3),
        ("zstd", 4),
    ];
    for (topic_codec, bits) in topic_codecs {
        for producer_codec in ["none", "lz4", "zstd"] {
            let topic = format!("recompressed-{topic_codec}-{producer_codec}");
            create_topic(&server, &topic, 1, &[("compression.type", topic_codec)]);
            let (p, _) = producer(
                &server,
                &[("compression.type", producer_codec), ("linger.ms", "20")],
            );
            for n in 0..40 {
                let v = format!("{topic_codec}/{producer_codec} {n} {}", "y".repeat(50));
                p.send(
                    BaseRecord::to(&topic)
                        .key(&format!("k{n}"))
                        .payload(&v)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "h",
                            value: Some(&format!("{n}")),
                        })),
                )
                .unwrap();
            }
            flush(&p);
            let records = consume_all(&server, &topic, 1, 40);
            for (n, r) in records.iter().enumerate() {
                assert_eq!(r.offset, n as i64);
                assert_eq!(r.key, Some(format!("k{n}").into_bytes()));
                assert_eq!(
                    r.value,
                    format!("{topic_codec}/{producer_codec} {n} {}", "y".repeat(50)).into_bytes()
                );
                assert_eq!(
                    r.headers,
                    vec![("h".to_string(), format!("{n}").into_bytes())]
                );
            }
            let codecs = stored_codecs(&server, &topic);
            assert!(
                !codecs.is_empty() && codecs.iter().all(|c| *c == bits),
                "{topic_codec} topic, {producer_codec} producer: stored {codecs:?}"
            );
        }
    }
}

#[test]
fn acks_zero_one_and_all() {
    let server = Server::start();
    create_topic(&server, "acks", 1, &[]);
    for (round, acks) in ["0", "1", "all"].iter().enumerate() {
        let (p, reports) = producer(&server, &[("acks", acks)]);
        for n in 0..50 {
            p.send(BaseRecord::<(), _>::to("acks").payload(&format!("{acks}-{n}")))
                .unwrap();
        }
        flush(&p);
        let reports = reports.0.lock().unwrap().clone();
        assert_eq!(reports.len(), 50);
        for (n, r) in reports.iter().enumerate() {
            let (_, offset, _) = r.as_ref().unwrap();
            if *acks == "0" {
                assert!(
                    *offset < 0,
                    "acks=0 gets no response, so no offset: {offset}"
                );
            } else {
                assert_eq!(*offset, (round * 50 + n) as i64, "acks={acks}");
            }
        }
    }
    let records = consume_all(&server, "acks", 1, 150);
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    let expected: Vec<String> = ["0", "1", "all"]
        .iter()
        .flat_map(|a| (0..50).map(move |n| format!("{a}-{n}")))
        .collect();
    assert_eq!(values, expected);
}

#[test]
fn acks_all_respects_min_insync_replicas() {
    let server = Server::start();
    create_topic(&server, "strict", 1, &[("min.insync.replicas", "2")]);
    // NOT_ENOUGH_REPLICAS is retriable: without retries the producer reports it at once.
    let (p, reports) = producer(&server, &[("acks", "all"), ("retries", "0")]);
    p.send(BaseRecord::<(), _>::to("strict").payload("x"))
        .unwrap();
    let _ = p.flush(T);
    let reports = reports.0.lock().unwrap().clone();
    let err = reports[0].as_ref().unwrap_err();
    assert!(err.contains("NotEnoughReplicas"), "{err}");
    // acks=1 does not need the ISR.
    let (p, reports) = producer(&server, &[("acks", "1")]);
    p.send(BaseRecord::<(), _>::to("strict").payload("y"))
        .unwrap();
    flush(&p);
    assert_eq!(reports.0.lock().unwrap()[0].as_ref().unwrap().1, 0);
}

#[test]
fn list_offsets_by_time_earliest_and_latest() {
    let server = Server::start();
    create_topic(&server, "times", 1, &[]);
    let (p, _) = producer(&server, &[("linger.ms", "0")]);
    let base = 1_700_000_000_000i64;
    for n in 0..10i64 {
        p.send(
            BaseRecord::<(), _>::to("times")
                .payload(&format!("t{n}"))
                .timestamp(base + n * 1000),
        )
        .unwrap();
        flush(&p);
    }
    let c = consumer(&server, &[]);
    let lookup = |ts: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(ts))
            .unwrap();
        let r = c.offsets_for_times(tpl, T).unwrap();
        r.find_partition("times", 0).unwrap().offset()
    };
    assert_eq!(lookup(base), Offset::Offset(0));
    assert_eq!(lookup(base + 3500), Offset::Offset(4));
    assert_eq!(lookup(base + 9000), Offset::Offset(9));
    assert_eq!(lookup(base + 9001), Offset::End);
    assert_eq!(c.fetch_watermarks("times", 0, T).unwrap(), (0, 10));
    let records = consume_all(&server, "times", 1, 10);
    assert_eq!(records[3].timestamp, Some(base + 3000));
}

#[test]
fn admin_create_describe_alter_delete() {
    let server = Server::start();
    let a = admin(&server);
    let opts = AdminOptions::new();
    create_topic(&server, "adm", 2, &[("retention.ms", "3600000")]);
    // Creating it again fails with TOPIC_ALREADY_EXISTS; bad settings fail clearly.
    let again = block_on(a.create_topics(
        [&NewTopic::new("adm", 1, TopicReplication::Fixed(1))],
        &opts,
    ))
    .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::TopicAlreadyExists
    );
    let rf3 = block_on(a.create_topics(
        [&NewTopic::new("rf3", 1, TopicReplication::Fixed(3))],
        &opts,
    ))
    .unwrap();
    assert_eq!(
        rf3[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidReplicationFactor
    );
    let bad = block_on(a.create_topics(
        [&NewTopic::new("bad", 1, TopicReplication::Fixed(1)).set("retention.ms", "soon")],
        &opts,
    ))
    .unwrap();
    assert_eq!(
        bad[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidConfig
    );
    let only = block_on(a.create_topics(
        [&NewTopic::new("dry", 1, TopicReplication::Fixed(1))],
        &AdminOptions::new().validate_only(true),
    ))
    .unwrap();
    assert!(only[0].is_ok());

    let describe = |name: &str| {
        let r = block_on(a.describe_configs([&ResourceSpecifier::Topic(name)], &opts)).unwrap();
        r.into_iter().next().unwrap().unwrap()
    };
    let d = describe("adm");
    let retention = d.get("retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let segment = d.get("segment.bytes").unwrap();
    assert_eq!(segment.value.as_deref(), Some("1073741824"));
    assert_eq!(segment.source, ConfigSource::Default);

    let r = block_on(a.alter_configs(
        [&AlterConfig::new(ResourceSpecifier::Topic("adm")).set("segment.bytes", "1048576")],
        &opts,
    ))
    .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let d = describe("adm");
    assert_eq!(
        d.get("segment.bytes").unwrap().value.as_deref(),
        Some("1048576")
    );
    // AlterConfigs replaces the whole set: retention.ms is back to its default.
    assert_eq!(d.get("retention.ms").unwrap().source, ConfigSource::Default);

    let broker = block_on(a.describe_configs([&ResourceSpecifier::Broker(0)], &opts)).unwrap();
    let broker = broker.into_iter().next().unwrap().unwrap();
    assert_eq!(
        broker.get("num.partitions").unwrap().value.as_deref(),
        Some("1")
    );

    let r = block_on(a.create_partitions([&NewPartitions::new("adm", 5)], &opts)).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let md = a.inner().fetch_metadata(Some("adm"), T).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 5);
    let r = block_on(a.create_partitions([&NewPartitions::new("adm", 3)], &opts)).unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidPartitions
    );

    let r = block_on(a.delete_topics(&["adm"], &opts)).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let r = block_on(a.delete_topics(&["adm"], &opts)).unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::UnknownTopicOrPartition
    );
    assert!(!server.data_dir().join("adm-0").exists());
}

#[test]
fn delete_records_moves_the_low_watermark() {
    let server = Server::start();
    create_topic(&server, "trim", 1, &[]);
    let (p, _) = producer(&server, &[]);
    for n in 0..20 {
        p.send(BaseRecord::<(), _>::to("trim").payload(&format!("r{n}")))
            .unwrap();
    }
    flush(&p);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, Offset::Offset(12))
        .unwrap();
    let r = block_on(admin(&server).delete_records(&tpl, &AdminOptions::new())).unwrap();
    assert_eq!(
        r.find_partition("trim", 0).unwrap().offset(),
        Offset::Offset(12)
    );
    let c = consumer(&server, &[]);
    assert_eq!(c.fetch_watermarks("trim", 0, T).unwrap(), (12, 20));
    let records = consume_all(&server, "trim", 1, 8);
    assert_eq!(records[0].offset, 12);
    assert_eq!(records[0].value, b"r12");
}

#[test]
fn idempotent_producer_survives_a_paused_broker_without_duplicates() {
    let mut server = Server::start();
    create_topic(&server, "idem", 3, &[]);
    let (p, acks) = producer(
        &server,
        &[
            ("enable.idempotence", "true"),
            ("request.timeout.ms", "1500"),
            ("linger.ms", "2"),
            ("message.timeout.ms", "60000"),
        ],
    );
    for n in 0..3000u32 {
        p.send(
            BaseRecord::to("idem")
                .key(&format!("k{}", n % 30))
                .payload(&n.to_be_bytes()),
        )
        .unwrap();
        p.poll(Duration::ZERO);
        if n == 1500 {
            // Requests in flight time out while the broker is paused and get retried after.
            let pid = server.pid().to_string();
            std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .unwrap();
            std::thread::sleep(Duration::from_millis(2500)); // the pause itself, not synchronisation
            std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status()
                .unwrap();
        }
    }
    flush(&p);
    let acked = acks.0.lock().unwrap().clone();
    assert_eq!(acked.len(), 3000);
    assert!(
        acked.iter().all(|r| r.is_ok()),
        "{:?}",
        acked.iter().find(|r| r.is_err())
    );
    let records = consume_all(&server, "idem", 3, 3000);
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        assert!(
            seen.insert(r.value.clone()),
            "duplicate record {:?}",
            r.value
        );
    }
    // Order per key (and so per partition) is the order sent.
    let mut last: HashMap<Vec<u8>, u32> = HashMap::new();
    for r in &records {
        let n = u32::from_be_bytes(r.value.clone().try_into().unwrap());
        if let Some(prev) = last.insert(r.key.clone().unwrap(), n) {
            assert!(prev < n, "reordered: {prev} then {n}");
        }
    }
    server.stop();
}

#[test]
fn data_survives_a_clean_restart() {
    let mut server = Server::start();
    create_topic(&server, "durable", 2, &[("retention.ms", "86400000")]);
    let (p, _) = producer(&server, &[]);
    for n in 0..200 {
        p.send(
            BaseRecord::to("durable")
                .key(&format!("{}", n % 7))
                .payload(&format!("v{n}")),
        )
        .unwrap();
    }
    flush(&p);
    drop(p);
    let sorted = |mut v: Vec<Got>| {
        v.sort_by_key(|g| (g.partition, g.offset));
        v
    };
    let before = sorted(consume_all(&server, "durable", 2, 200));
    server.stop();
    server.restart();
    let after = sorted(consume_all(&server, "durable", 2, 200));
    assert_eq!(before, after);
    let r = block_on(
        admin(&server)
            .describe_configs([&ResourceSpecifier::Topic("durable")], &AdminOptions::new()),
    )
    .unwrap();
    let d = r.into_iter().next().unwrap().unwrap();
    assert_eq!(
        d.get("retention.ms").unwrap().value.as_deref(),
        Some("86400000")
    );
    // Producing continues at the next offsets.
    let (p, acks) = producer(&server, &[]);
    p.send(
        BaseRecord::to("durable")
            .key("x")
            .partition(0)
            .payload("next"),
    )
    .unwrap();
    flush(&p);
    let n0 = before.iter().filter(|r| r.partition == 0).count() as i64;
    assert_eq!(acks.0.lock().unwrap()[0].as_ref().unwrap().1, n0);
}

#[test]
fn sigkill_during_a_produce_burst_loses_no_acknowledged_record() {
    let mut server = Server::start();
    create_topic(&server, "burst", 4, &[]);
    let (p, acks) = producer(
        &server,
        &[
            ("acks", "1"),
            ("linger.ms", "1"),
            ("message.timeout.ms", "5000"),
            ("retries", "0"),
        ],
    );
    let mut sent = 0u32;
    wait_for("some acknowledged records", T, || {
        for _ in 0..200 {
            let _ = p.send(
                BaseRecord::to("burst")
                    .key(&format!("k{}", sent % 16))
                    .payload(&sent.to_be_bytes()),
            );
            sent += 1;
        }
        p.poll(Duration::from_millis(1));
        (acks.0.lock().unwrap().iter().filter(|r| r.is_ok()).count() > 5000).then_some(())
    });
    server.kill();
    let _ = p.flush(Duration::from_secs(10));
    drop(p);
    let acked: Vec<(i32, i64, Vec<u8>)> = acks
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| r.clone().ok())
        .collect();
    assert!(acked.len() > 5000);

    server.restart();
    let c = consumer(&server, &[]);
    let mut stored: HashMap<(i32, i64), Vec<u8>> = HashMap::new();
    let mut total = 0;
    for part in 0..4 {
        let (lo, hi) = c.fetch_watermarks("burst", part, T).unwrap();
        assert_eq!(lo, 0);
        total += hi as usize;
    }
    let records = consume_all(&server, "burst", 4, total);
    let mut values = std::collections::HashSet::new();
    for r in &records {
        assert!(values.insert(r.value.clone()), "duplicate {:?}", r.value);
        stored.insert((r.partition, r.offset), r.value.clone());
    }
    for (partition, offset, value) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(value),
            "acknowledged record lost at {partition}/{offset}"
        );
    }
    // Per key, stored order is send order.
    let mut last: HashMap<Vec<u8>, u32> = HashMap::new();
    for r in &records {
        let n = u32::from_be_bytes(r.value.clone().try_into().unwrap());
        if let Some(prev) = last.insert(r.key.clone().unwrap(), n) {
            assert!(prev < n, "reordered: {prev} then {n}");
        }
    }
}

#[test]
fn auto_created_topics_and_unknown_topics() {
    let server = Server::start_with(&["num.partitions=3"]);
    let (p, acks) = producer(&server, &[]);
    p.send(BaseRecord::<(), _>::to("auto").payload("hello"))
        .unwrap();
    flush(&p);
    assert!(acks.0.lock().unwrap()[0].is_ok());
    let md = admin(&server)
        .inner()
        .fetch_metadata(Some("auto"), T)
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);

    let server = Server::start_with(&["auto.create.topics.enable=false"]);
    let (p, acks) = producer(&server, &[("message.timeout.ms", "2000")]);
    p.send(BaseRecord::<(), _>::to("missing").payload("x"))
        .unwrap();
    let _ = p.flush(T);
    let r = acks.0.lock().unwrap()[0].clone();
    assert!(r.is_err(), "{r:?}");
    let err = consumer(&server, &[])
        .fetch_watermarks("missing", 0, Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(err, KafkaError::MetadataFetch(_)), "{err:?}");
}
