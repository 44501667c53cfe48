//! Real Kafka clients (librdkafka through the rdkafka crate) against a real `strom server`.

mod common;
mod rdkafka_clients;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{Server, wait_for};
use rdkafka::admin::{
    AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rdkafka_clients::*;

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

/// More partitions than the open files limit allows files: segment files beyond the
/// budget are closed and opened again when used, so every partition takes writes and
/// serves reads, before and after a restart, and the server stays under its limit.
#[test]
fn more_partitions_than_open_files_all_write_and_read() {
    const LIMIT: u64 = 256;
    const PARTITIONS: i32 = 600;
    let mut server = Server::start_limited(Some(LIMIT), &[]);
    create_topic(&server, "wide", PARTITIONS, &[]);
    let open_files = |server: &Server| {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .count() as u64
    };
    let (p, acks) = producer(&server, &[("acks", "all")]);
    for round in 0..2 {
        for i in 0..PARTITIONS {
            let v = format!("{round}-{i}");
            p.send(BaseRecord::<(), _>::to("wide").partition(i).payload(&v))
                .unwrap();
        }
        flush(&p);
    }
    let acked = acks.0.lock().unwrap().clone();
    assert_eq!(acked.len(), 2 * PARTITIONS as usize);
    assert!(
        acked.iter().all(|a| a.is_ok()),
        "{:?}",
        acked.iter().find(|a| a.is_err())
    );
    assert!(
        open_files(&server) <= LIMIT,
        "{} files open",
        open_files(&server)
    );
    drop(p);

    server.stop();
    server.restart();
    let got = consume_all(&server, "wide", PARTITIONS, 2 * PARTITIONS as usize);
    let mut per: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for g in got {
        per.entry(g.partition)
            .or_default()
            .push(String::from_utf8(g.value).unwrap());
    }
    assert_eq!(per.len(), PARTITIONS as usize);
    for (i, values) in per {
        assert_eq!(values, vec![format!("0-{i}"), format!("1-{i}")]);
    }
    assert!(
        open_files(&server) <= LIMIT,
        "{} files open",
        open_files(&server)
    );
}
