//! The coordinators' internal topics are compacted topics, as in Kafka: with librdkafka
//! against a real `strom server` with small internal segments, thousands of offset commits
//! and many transactions (some aborted, with offsets sent to them) shrink to about their
//! live records once the log cleaner has run, and after a restart the groups' offsets are
//! the last ones committed and every transactional id goes on where it was.

mod common;
mod rdkafka_clients;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Server, wait_until};
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rdkafka_clients::*;

const DATA: &str = "data";
const COMMITS: i64 = 2000;
const IDS: [&str; 3] = ["tx-a", "tx-b", "tx-c"];
const TXNS_PER_ID: i64 = 40;

fn group_consumer(server: &Server, group: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

fn txn_producer(server: &Server, id: &str) -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", id)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    p.init_transactions(T).expect("init_transactions");
    p
}

/// The offsets of `DATA` partitions `offsets` (partition, offset) as a list.
fn tpl(offsets: &[(i32, i64)]) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    for (p, o) in offsets {
        l.add_partition_offset(DATA, *p, Offset::Offset(*o))
            .unwrap();
    }
    l
}

/// `group`'s committed offsets of both `DATA` partitions (-1 for none).
fn committed(server: &Server, group: &str) -> Vec<i64> {
    let c = group_consumer(server, group, "read_committed");
    let got = c
        .committed_offsets(tpl(&[(0, 0), (1, 0)]), T)
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// Records read from partition 0 of `topic` from its start to its high watermark, and that
/// high watermark (the offsets ever written). The last offset must hold a data record.
fn records_from_start(server: &Server, topic: &str) -> (usize, i64) {
    let c = consumer(server, &[]);
    let (_, high) = c.fetch_watermarks(topic, 0, T).unwrap();
    let mut l = TopicPartitionList::new();
    l.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&l).unwrap();
    let mut count = 0;
    let mut last = -1;
    let deadline = Instant::now() + T;
    while last + 1 < high {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            last = m.expect("consume").offset();
            count += 1;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: stuck at offset {last} of {high}"
        );
    }
    (count, high)
}

/// Commits and aborts transactions for every id, each with a record and offsets sent for a
/// group of its own; returns the values that were committed, and per id the offset its
/// group must end with.
fn run_transactions(server: &Server) -> (Vec<String>, BTreeMap<&'static str, i64>) {
    let mut committed_values = Vec::new();
    let mut last_offsets = BTreeMap::new();
    let producers: Vec<BaseProducer> = IDS.iter().map(|id| txn_producer(server, id)).collect();
    let groups: Vec<BaseConsumer> = IDS
        .iter()
        .map(|id| group_consumer(server, &format!("group-{id}"), "read_committed"))
        .collect();
    for n in 0..TXNS_PER_ID {
        for (i, id) in IDS.iter().enumerate() {
            let p = &producers[i];
            let value = format!("{id}-{n}");
            p.begin_transaction().unwrap();
            p.send(
                BaseRecord::<str, str>::to(DATA)
                    .partition((n % 2) as i32)
                    .key(id)
                    .payload(&value),
            )
            .unwrap_or_else(|(e, _)| panic!("send: {e}"));
            p.send_offsets_to_transaction(&tpl(&[(0, n)]), &groups[i].group_metadata().unwrap(), T)
                .unwrap();
            // A BaseProducer's delivery reports are served by its flush (an abort does not).
            p.flush(T).unwrap();
            if n % 3 == 2 {
                p.abort_transaction(T).unwrap();
            } else {
                p.commit_transaction(T).unwrap();
                committed_values.push(value);
                last_offsets.insert(*id, n);
            }
        }
    }
    (committed_values, last_offsets)
}

#[test]
fn the_internal_topics_are_compacted_and_read_back_after_a_restart() {
    let mut server = Server::start_with(&[
        "offsets.topic.segment.bytes=4096",
        "transaction.state.log.segment.bytes=4096",
        "log.cleaner.backoff.ms=50",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.num.partitions=1",
    ]);
    create_topic(&server, DATA, 2, &[]);

    // Transactions first, plain commits after: the last offset of `__consumer_offsets` is a
    // plain commit, not a marker a consumer never sees.
    let (mut expected, txn_offsets) = run_transactions(&server);
    let c = group_consumer(&server, "g", "read_committed");
    for i in 0..COMMITS {
        c.commit(&tpl(&[(0, 2 * i), (1, 2 * i + 1)]), CommitMode::Sync)
            .unwrap();
    }
    drop(c);

    // Both are compacted topics with the configured segment size.
    let a = admin(&server);
    for topic in ["__consumer_offsets", "__transaction_state"] {
        let r =
            block_on(a.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new()))
                .unwrap();
        let d = r.into_iter().next().unwrap().unwrap();
        let get = |k: &str| d.get(k).and_then(|e| e.value.clone());
        assert_eq!(get("cleanup.policy").as_deref(), Some("compact"), "{topic}");
        assert_eq!(get("segment.bytes").as_deref(), Some("4096"), "{topic}");
    }

    // The cleaner runs by itself: what is left is the live records and the active segment.
    for topic in ["__consumer_offsets", "__transaction_state"] {
        let (kept, written) = wait_until(
            &format!("{topic} compacted"),
            Duration::from_secs(120),
            || {
                let (kept, high) = records_from_start(&server, topic);
                if (kept as i64) * 5 < high {
                    Ok((kept, high))
                } else {
                    Err(format!("{kept} records of {high} offsets"))
                }
            },
        );
        eprintln!("{topic}: {kept} records left of {written} offsets written");
    }

    server.stop();
    server.restart();

    // The plain group: exactly its last commit.
    let last = COMMITS - 1;
    assert_eq!(committed(&server, "g"), vec![2 * last, 2 * last + 1]);
    // The transactional groups: the offsets of their last committed transaction only.
    for id in IDS {
        assert_eq!(
            committed(&server, &format!("group-{id}")),
            vec![txn_offsets[id], -1],
            "{id}"
        );
    }
    // Every transactional id goes on: a new incarnation initializes (fencing the state read
    // back) and commits.
    for id in IDS {
        let p = txn_producer(&server, id);
        p.begin_transaction().unwrap();
        let value = format!("{id}-after");
        p.send(BaseRecord::<str, str>::to(DATA).key(id).payload(&value))
            .unwrap_or_else(|(e, _)| panic!("send: {e}"));
        p.commit_transaction(T).unwrap();
        expected.push(value);
    }
    // read_committed sees every committed record exactly once and nothing aborted.
    let c = group_consumer(&server, "reader", "read_committed");
    let mut l = TopicPartitionList::new();
    for p in 0..2 {
        l.add_partition_offset(DATA, p, Offset::Beginning).unwrap();
    }
    c.assign(&l).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < expected.len() && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    assert!(
        c.poll(Duration::from_millis(500)).is_none(),
        "more records than committed"
    );
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}
