//! Log compaction with librdkafka against a real `strom server`: a compacted topic read from
//! the beginning shows the latest value of every key at its original offset, tombstones go
//! after delete.retention.ms, and records without a key are refused one by one (KIP-467).

mod common;
mod rdkafka_clients;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Server, wait_for};
use rdkafka::consumer::Consumer;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use rdkafka_clients::*;

/// Every record of partition 0 of `topic`, from the beginning to the high watermark.
fn read_from_start(server: &Server, topic: &str) -> Vec<Got> {
    let c = consumer(server, &[]);
    let (_, high) = c.fetch_watermarks(topic, 0, T).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out: Vec<Got> = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while out.last().is_none_or(|g| g.offset + 1 < high) {
        if let Some(r) = c.poll(Duration::from_millis(100)) {
            out.push(got(&r.expect("consume")));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at {:?}",
            out.last()
        );
    }
    out
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_of_every_key() {
    let server = Server::start_with(&["log.cleaner.backoff.ms=50"]);
    let topic = "table";
    // Every batch its own segment (segment.ms=1), so that all but the last can be cleaned.
    create_topic(
        &server,
        topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "1"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
        ],
    );
    let (p, acks) = producer(&server, &[("linger.ms", "2")]);
    let mut expected = BTreeMap::new();
    for round in 0..20 {
        for k in 0..50 {
            let key = format!("k{k}");
            let tombstone = round == 19 && k < 10;
            let value = format!("round {round}");
            let mut r = BaseRecord::<String, String>::to(topic).key(&key);
            if !tombstone {
                r = r.payload(&value);
            }
            p.send(r).unwrap();
            let offset = round * 50 + k;
            if tombstone {
                expected.remove(&key);
            } else {
                expected.insert(key, (offset as i64, value));
            }
        }
        flush(&p);
    }
    p.send(BaseRecord::<str, str>::to(topic).key("end").payload("end"))
        .unwrap();
    flush(&p);
    expected.insert("end".into(), (1000, "end".into()));
    assert!(acks.0.lock().unwrap().iter().all(|r| r.is_ok()));

    // The cleaner runs by itself: one value per key, at its offset; the tombstones go
    // once their delete horizon has passed.
    let got = wait_for("the topic compacted", Duration::from_secs(60), || {
        let records = read_from_start(&server, topic);
        let view: BTreeMap<String, (i64, String)> = records
            .iter()
            .map(|g| {
                (
                    String::from_utf8(g.key.clone().unwrap()).unwrap(),
                    (g.offset, String::from_utf8(g.value.clone()).unwrap()),
                )
            })
            .collect();
        (records.len() == expected.len() && view == expected).then_some(records)
    });
    for w in got.windows(2) {
        assert!(w[0].offset < w[1].offset);
    }
    let described = common::ok(&server, &["topics", "describe", "--topic", topic]);
    assert!(
        described.contains("\tCleanupPolicy: compact\t"),
        "{described}"
    );
    // And the same after a restart.
    let mut server = server;
    server.stop();
    server.restart();
    assert_eq!(read_from_start(&server, topic), got);
}

#[test]
fn records_without_a_key_are_refused_one_by_one() {
    let server = Server::start();
    let topic = "keys-required";
    create_topic(&server, topic, 1, &[("cleanup.policy", "compact")]);
    let (p, acks) = producer(&server, &[("linger.ms", "200")]);
    for i in 0..4 {
        let v = format!("v{i}");
        let mut r = BaseRecord::<str, str>::to(topic).payload(&v);
        if i % 2 == 0 {
            r = r.key("k");
        }
        p.send(r).unwrap();
    }
    flush(&p);
    let results = acks.0.lock().unwrap().clone();
    assert_eq!(results.len(), 4, "{results:?}");
    let errs: Vec<String> = results.into_iter().map(|r| r.unwrap_err()).collect();
    // librdkafka fails the keyless records with the broker's INVALID_RECORD and the others
    // with "an invalid record in the same batch".
    for (i, e) in errs.iter().enumerate() {
        if i % 2 == 0 {
            assert!(e.contains("same batch"), "record {i}: {e}");
        } else {
            assert!(e.contains("validate record"), "record {i}: {e}");
        }
    }
    // Nothing was written.
    let c = consumer(&server, &[]);
    assert_eq!(c.fetch_watermarks(topic, 0, T).unwrap(), (0, 0));
}
