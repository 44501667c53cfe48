//! Transactions with librdkafka (through the rdkafka crate) against a real `strom server`:
//! commit and abort across partitions, read_committed against read_uncommitted, zombie
//! fencing, offsets committed inside a transaction, and a transaction cut by a SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::{Server, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn create_topic(server: &Server, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .unwrap();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let r = block_on(admin.create_topics([&t], &AdminOptions::new())).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

fn txn_producer(server: &Server, id: &str) -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", id)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    p.init_transactions(T).expect("init_transactions");
    p
}

fn consumer(server: &Server, isolation: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

fn assign_from_start(c: &BaseConsumer, topic: &str, partitions: i32) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
}

/// Values read until `count` have arrived (or the deadline), as (partition, value).
fn read(c: &BaseConsumer, count: usize) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + T;
    while out.len() < count && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            out.push((
                m.partition(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    out
}

/// Nothing more arrives within a short window: what an aborted or open transaction wrote
/// must stay invisible to read_committed.
fn assert_quiet(c: &BaseConsumer, why: &str) {
    if let Some(m) = c.poll(Duration::from_millis(500)) {
        let m = m.expect("consume");
        panic!(
            "{why}: got {:?} at {}/{}",
            String::from_utf8_lossy(m.payload().unwrap_or_default()),
            m.partition(),
            m.offset()
        );
    }
}

fn send(p: &BaseProducer, topic: &str, partition: i32, value: &str) {
    p.send(
        BaseRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(value),
    )
    .expect("enqueue");
}

fn values(partitions: i32, prefix: &str, n: usize) -> Vec<(i32, String)> {
    (0..n)
        .map(|i| ((i % partitions as usize) as i32, format!("{prefix}-{i}")))
        .collect()
}

fn sorted(mut v: Vec<(i32, String)>) -> Vec<(i32, String)> {
    v.sort();
    v
}

#[test]
fn commit_shows_every_partition_at_once_and_abort_hides_from_read_committed() {
    let server = Server::start();
    create_topic(&server, "tx", 3);
    let p = txn_producer(&server, "tx-commit");
    let committed = consumer(&server, "read_committed", "rc");
    let uncommitted = consumer(&server, "read_uncommitted", "ru");
    assign_from_start(&committed, "tx", 3);
    assign_from_start(&uncommitted, "tx", 3);

    // An open transaction: read_uncommitted sees it, read_committed does not.
    p.begin_transaction().unwrap();
    let first = values(3, "first", 30);
    for (part, v) in &first {
        send(&p, "tx", *part, v);
    }
    p.flush(T).unwrap();
    assert_eq!(sorted(read(&uncommitted, 30)), sorted(first.clone()));
    assert_quiet(&committed, "read_committed saw an open transaction");

    // Commit: all 30, across the 3 partitions, each partition in order.
    p.commit_transaction(T).unwrap();
    let got = read(&committed, 30);
    assert_eq!(sorted(got.clone()), sorted(first.clone()));
    for part in 0..3 {
        let mine: Vec<_> = got.iter().filter(|(q, _)| *q == part).collect();
        let want: Vec<_> = first.iter().filter(|(q, _)| *q == part).collect();
        assert_eq!(mine, want, "order in partition {part}");
    }

    // Abort: read_uncommitted saw the records, read_committed never will.
    p.begin_transaction().unwrap();
    let aborted = values(3, "aborted", 12);
    for (part, v) in &aborted {
        send(&p, "tx", *part, v);
    }
    p.flush(T).unwrap();
    p.abort_transaction(T).unwrap();
    assert_eq!(sorted(read(&uncommitted, 12)), sorted(aborted));

    // A later committed transaction is read past the aborted one.
    p.begin_transaction().unwrap();
    let last = values(3, "last", 6);
    for (part, v) in &last {
        send(&p, "tx", *part, v);
    }
    p.commit_transaction(T).unwrap();
    assert_eq!(sorted(read(&committed, 6)), sorted(last.clone()));
    assert_quiet(&committed, "read_committed saw an aborted record");
    assert_eq!(sorted(read(&uncommitted, 6)), sorted(last));

    // A fresh read_committed consumer from the start sees exactly the committed records.
    let fresh = consumer(&server, "read_committed", "fresh");
    assign_from_start(&fresh, "tx", 3);
    let all = read(&fresh, 36);
    assert_eq!(all.len(), 36);
    assert!(all.iter().all(|(_, v)| !v.starts_with("aborted")));
    assert_quiet(
        &fresh,
        "a fresh read_committed consumer saw an aborted record",
    );
}

#[test]
fn a_zombie_producer_is_fenced_and_its_transaction_aborted() {
    let server = Server::start();
    create_topic(&server, "zombie", 2);
    let old = txn_producer(&server, "tx-zombie");
    old.begin_transaction().unwrap();
    send(&old, "zombie", 0, "from the zombie");
    old.flush(T).unwrap();

    // A new incarnation with the same transactional id fences the old one and aborts its
    // open transaction.
    let new = txn_producer(&server, "tx-zombie");
    send(&old, "zombie", 1, "zombie again");
    let _ = old.flush(Duration::from_secs(5));
    let err = old
        .commit_transaction(T)
        .expect_err("the zombie must not commit");
    match &err {
        KafkaError::Transaction(e) => assert!(e.is_fatal() || e.txn_requires_abort(), "{e}"),
        other => panic!("unexpected error {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("fenced") || text.contains("epoch"),
        "the zombie is told it is fenced: {text}"
    );

    new.begin_transaction().unwrap();
    send(&new, "zombie", 0, "from the new one");
    new.commit_transaction(T).unwrap();

    let c = consumer(&server, "read_committed", "z");
    assign_from_start(&c, "zombie", 2);
    assert_eq!(read(&c, 1), vec![(0, "from the new one".to_string())]);
    assert_quiet(&c, "a zombie record became visible");
}

#[test]
fn offsets_sent_to_a_transaction_commit_with_it() {
    let server = Server::start();
    create_topic(&server, "in", 1);
    create_topic(&server, "out", 1);
    let seed: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .unwrap();
    for i in 0..10 {
        send(&seed, "in", 0, &format!("in-{i}"));
    }
    seed.flush(T).unwrap();

    let group = "copier";
    let c = consumer(&server, "read_committed", group);
    c.subscribe(&["in"]).unwrap();
    let got = read(&c, 10);
    assert_eq!(got.len(), 10);
    let p = txn_producer(&server, "tx-copier");
    let committed_offset = |c: &BaseConsumer| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("in", 0);
        let r = c.committed_offsets(tpl, T).unwrap();
        r.find_partition("in", 0).unwrap().offset()
    };
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("in", 0, Offset::Offset(4))
        .unwrap();

    // Aborted: neither the output nor the offsets count.
    p.begin_transaction().unwrap();
    send(&p, "out", 0, "aborted");
    p.flush(T).unwrap();
    p.send_offsets_to_transaction(&offsets, &c.group_metadata().unwrap(), T)
        .unwrap();
    p.abort_transaction(T).unwrap();
    assert_eq!(committed_offset(&c), Offset::Invalid);

    // Committed: both at once.
    p.begin_transaction().unwrap();
    send(&p, "out", 0, "copied");
    offsets
        .set_partition_offset("in", 0, Offset::Offset(10))
        .unwrap();
    p.send_offsets_to_transaction(&offsets, &c.group_metadata().unwrap(), T)
        .unwrap();
    // A consumer that requires stable offsets (read_committed) would be told to wait; one
    // that does not sees the offset committed before.
    let peek = consumer(&server, "read_uncommitted", group);
    assert_eq!(
        committed_offset(&peek),
        Offset::Invalid,
        "visible before the commit"
    );
    p.commit_transaction(T).unwrap();
    assert_eq!(committed_offset(&c), Offset::Offset(10));

    let out = consumer(&server, "read_committed", "reader");
    assign_from_start(&out, "out", 1);
    assert_eq!(read(&out, 1), vec![(0, "copied".to_string())]);
    assert_quiet(&out, "an aborted output record became visible");

    // The committed offset survives a restart of the broker.
    drop(c);
    drop(peek);
    let mut server = server;
    server.stop();
    server.restart();
    let c = consumer(&server, "read_committed", group);
    assert_eq!(committed_offset(&c), Offset::Offset(10));
}

#[test]
fn a_transaction_cut_by_sigkill_is_aborted_by_its_timeout() {
    let mut server =
        Server::start_with(&["transaction.abort.timed.out.transaction.cleanup.interval.ms=200"]);
    create_topic(&server, "cut", 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", "tx-cut")
        .set("transaction.timeout.ms", "3000")
        .create()
        .unwrap();
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..5 {
        send(&p, "cut", 0, &format!("open-{i}"));
    }
    p.flush(T).unwrap();
    drop(p);
    server.kill();
    server.restart();

    // After the restart the transaction is still open until its timeout aborts it: the
    // stable offset then passes the records and the abort marker.
    let c = consumer(&server, "read_committed", "cut");
    assign_from_start(&c, "cut", 1);
    // The stable offset moves once the abort marker is written.
    wait_for(
        "the last stable offset to pass the aborted records",
        T,
        || {
            let (_, high) = c.fetch_watermarks("cut", 0, T).ok()?;
            (high >= 6).then_some(())
        },
    );
    let p = txn_producer(&server, "tx-after");
    p.begin_transaction().unwrap();
    send(&p, "cut", 0, "after");
    p.commit_transaction(T).unwrap();
    assert_eq!(read(&c, 1), vec![(0, "after".to_string())]);
    assert_quiet(&c, "a record of the cut transaction became visible");
}
