//! Transactions with librdkafka (through the rdkafka crate) against a real `strom server`:
//! commit and abort across partitions, read_committed against read_uncommitted, zombie
//! fencing, offsets committed inside a transaction, and a transaction cut by a SIGKILL.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Server, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
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

/// Records read until `count` have arrived (or the deadline), as (partition, offset, value).
fn read_at(c: &BaseConsumer, count: usize) -> Vec<(i32, i64, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + T;
    while out.len() < count && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            out.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    out
}

/// Values read until `count` have arrived (or the deadline), as (partition, value).
fn read(c: &BaseConsumer, count: usize) -> Vec<(i32, String)> {
    read_at(c, count)
        .into_iter()
        .map(|(p, _, v)| (p, v))
        .collect()
}

/// The high ends of partitions, by ListOffsets (librdkafka asks with the client's
/// isolation.level), on consumers of their own that never fetch: on a fetching consumer's
/// connection the request would wait behind the long-polling Fetch.
struct Ends {
    committed: BaseConsumer,
    uncommitted: BaseConsumer,
}

impl Ends {
    fn new(server: &Server) -> Ends {
        Ends {
            committed: consumer(server, "read_committed", "ends"),
            uncommitted: consumer(server, "read_uncommitted", "ends"),
        }
    }

    fn high(c: &BaseConsumer, topic: &str, partitions: i32) -> Vec<i64> {
        (0..partitions)
            .map(|p| c.fetch_watermarks(topic, p, T).expect("watermarks").1)
            .collect()
    }

    /// The last stable offsets: where read_committed must stop.
    fn lso(&self, topic: &str, partitions: i32) -> Vec<i64> {
        Self::high(&self.committed, topic, partitions)
    }

    /// The high watermarks: where read_uncommitted stops.
    fn hw(&self, topic: &str, partitions: i32) -> Vec<i64> {
        Self::high(&self.uncommitted, topic, partitions)
    }
}

/// (partition, value) pairs split by partition, each in its order.
fn by_partition(v: &[(i32, String)], partitions: i32) -> Vec<Vec<String>> {
    (0..partitions)
        .map(|p| {
            v.iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, v)| v.clone())
                .collect()
        })
        .collect()
}

fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    p: &BaseProducer<C>,
    topic: &str,
    partition: i32,
    value: &str,
) {
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

#[test]
fn commit_shows_every_partition_at_once_and_abort_hides_from_read_committed() {
    let server = Server::start();
    create_topic(&server, "tx", 3);
    let p = txn_producer(&server, "tx-commit");
    let committed = consumer(&server, "read_committed", "rc");
    let uncommitted = consumer(&server, "read_uncommitted", "ru");
    assign_from_start(&committed, "tx", 3);
    assign_from_start(&uncommitted, "tx", 3);
    let ends = Ends::new(&server);
    let lso = || ends.lso("tx", 3);
    let hw = || ends.hw("tx", 3);

    // An open transaction: read_uncommitted sees it, read_committed does not: the last
    // stable offset stays at the transaction's first offset on every partition while the
    // high watermark passes its 10 records per partition.
    p.begin_transaction().unwrap();
    let first = values(3, "first", 30);
    for (part, v) in &first {
        send(&p, "tx", *part, v);
    }
    p.flush(T).unwrap();
    assert_eq!(
        by_partition(&read(&uncommitted, 30), 3),
        by_partition(&first, 3)
    );
    assert_eq!(hw(), vec![10; 3]);
    assert_eq!(
        lso(),
        vec![0; 3],
        "read_committed may read an open transaction"
    );

    // Commit: the markers are written before EndTxn is answered, so every partition is
    // stable past its records and marker when commit_transaction returns.
    p.commit_transaction(T).unwrap();
    assert_eq!(lso(), vec![11; 3], "stable offsets right after the commit");
    assert_eq!(hw(), vec![11; 3]);
    assert_eq!(
        by_partition(&read(&committed, 30), 3),
        by_partition(&first, 3)
    );

    // Abort: read_uncommitted saw the records, read_committed never will.
    p.begin_transaction().unwrap();
    let aborted = values(3, "aborted", 12);
    for (part, v) in &aborted {
        send(&p, "tx", *part, v);
    }
    p.flush(T).unwrap();
    assert_eq!(lso(), vec![11; 3], "an open transaction is stable");
    p.abort_transaction(T).unwrap();
    assert_eq!(lso(), vec![16; 3], "stable offsets right after the abort");
    assert_eq!(
        by_partition(&read(&uncommitted, 12), 3),
        by_partition(&aborted, 3)
    );

    // A later committed transaction is read past the aborted one: the aborted records come
    // before it in every partition, so the first records read_committed gives are these
    // only if it skipped them; and nothing lies beyond them (high watermark == LSO).
    p.begin_transaction().unwrap();
    let last = values(3, "last", 6);
    for (part, v) in &last {
        send(&p, "tx", *part, v);
    }
    p.commit_transaction(T).unwrap();
    assert_eq!(lso(), vec![19; 3]);
    assert_eq!(hw(), vec![19; 3]);
    assert_eq!(
        by_partition(&read(&committed, 6), 3),
        by_partition(&last, 3)
    );
    assert_eq!(
        by_partition(&read(&uncommitted, 6), 3),
        by_partition(&last, 3)
    );

    // A fresh read_committed consumer from the start sees exactly the committed records,
    // in order: in each partition the aborted ones lie between the first and the last.
    let fresh = consumer(&server, "read_committed", "fresh");
    assign_from_start(&fresh, "tx", 3);
    let want: Vec<Vec<String>> = by_partition(&first, 3)
        .into_iter()
        .zip(by_partition(&last, 3))
        .map(|(mut a, b)| {
            a.extend(b);
            a
        })
        .collect();
    assert_eq!(by_partition(&read(&fresh, 36), 3), want);
}

/// Keeps every delivery report: (partition, the error if the record was not written).
#[derive(Default)]
struct Deliveries(Mutex<Vec<(i32, Option<RDKafkaErrorCode>)>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let report = match r {
            Ok(m) => (m.partition(), None),
            Err((e, m)) => (m.partition(), e.rdkafka_error_code()),
        };
        self.0.lock().unwrap().push(report);
    }
}

#[test]
fn a_zombie_producer_is_fenced_and_its_transaction_aborted() {
    let server = Server::start();
    create_topic(&server, "zombie", 2);
    let old: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", "tx-zombie")
        .set("linger.ms", "5")
        .create_with_context(Deliveries::default())
        .expect("producer");
    old.init_transactions(T).expect("init_transactions");
    old.begin_transaction().unwrap();
    send(&old, "zombie", 0, "from the zombie");
    old.flush(T).unwrap();
    let uncommitted = consumer(&server, "read_uncommitted", "zu");
    let committed = consumer(&server, "read_committed", "zc");
    let ends = Ends::new(&server);
    assert_eq!(ends.hw("zombie", 2), vec![1, 0]);

    // A new incarnation with the same transactional id fences the old one and aborts its
    // open transaction (the abort marker at offset 1).
    let new = txn_producer(&server, "tx-zombie");
    assert_eq!(ends.hw("zombie", 2), vec![2, 0]);
    assert_eq!(ends.lso("zombie", 2), vec![2, 0]);

    // The zombie writes to partition 0, already in its transaction: librdkafka sends the
    // Produce straight away with the old epoch, and the partition must refuse it.
    send(&old, "zombie", 0, "zombie again");
    old.flush(T).unwrap();
    assert_eq!(
        old.context().0.lock().unwrap().as_slice(),
        [(0, None), (0, Some(RDKafkaErrorCode::InvalidProducerEpoch))],
        "the partition refuses the zombie's old epoch"
    );
    assert_eq!(
        ends.hw("zombie", 2),
        vec![2, 0],
        "the zombie's record was appended"
    );

    // librdkafka folds both ways of being told (INVALID_PRODUCER_EPOCH from the partition,
    // PRODUCER_FENCED from the coordinator) into its own fatal _FENCED
    // (rd_kafka_txn_normalize_err, rd_kafka_idemp_check_error, the Produce error handler):
    // PRODUCER_FENCED never reaches the application, so _FENCED is the only right answer.
    let err = old
        .commit_transaction(T)
        .expect_err("the zombie must not commit");
    match &err {
        KafkaError::Transaction(e) => {
            assert_eq!(e.code(), RDKafkaErrorCode::Fenced, "{e}");
            assert!(e.is_fatal(), "fencing is fatal: {e}");
        }
        other => panic!("unexpected error {other}"),
    }
    drop(old);

    new.begin_transaction().unwrap();
    send(&new, "zombie", 0, "from the new one");
    new.commit_transaction(T).unwrap();

    // Nothing of the zombie's second record anywhere: read_uncommitted reads the first
    // record and the new one's (offsets 0 and 2, markers at 1 and 3) and nothing lies
    // beyond; read_committed reads only the new one's.
    assert_eq!(ends.hw("zombie", 2), vec![4, 0]);
    assert_eq!(ends.lso("zombie", 2), vec![4, 0]);
    assign_from_start(&uncommitted, "zombie", 2);
    assert_eq!(
        read_at(&uncommitted, 2),
        vec![
            (0, 0, "from the zombie".to_string()),
            (0, 2, "from the new one".to_string())
        ]
    );
    assign_from_start(&committed, "zombie", 2);
    assert_eq!(
        read_at(&committed, 1),
        vec![(0, 2, "from the new one".to_string())]
    );
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

    // The aborted record (offset 0, its marker at 1) comes first: read_committed skips it
    // to the copied one (2, marker 3), and nothing lies beyond.
    let out = consumer(&server, "read_committed", "reader");
    assign_from_start(&out, "out", 1);
    assert_eq!(read_at(&out, 1), vec![(0, 2, "copied".to_string())]);
    assert_eq!(Ends::new(&server).lso("out", 1), vec![4]);

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
    let open: Vec<String> = (0..5).map(|i| format!("open-{i}")).collect();
    for v in &open {
        send(&p, "cut", 0, v);
    }
    p.flush(T).unwrap();
    // The server dies under the open transaction; only then does the client go (it could
    // not have ended the transaction anyway).
    server.kill();
    drop(p);
    server.restart();

    // After the restart the transaction is still open until its timeout aborts it: the
    // stable offset stays at 0 until the abort marker is written at 5, then passes it.
    let c = consumer(&server, "read_committed", "cut");
    let u = consumer(&server, "read_uncommitted", "cut-u");
    assign_from_start(&c, "cut", 1);
    assign_from_start(&u, "cut", 1);
    let ends = Ends::new(&server);
    wait_for("the timeout to abort the cut transaction", T, || {
        let lso = ends.lso("cut", 1)[0];
        assert!(lso == 0 || lso == 6, "last stable offset {lso}");
        (lso == 6).then_some(())
    });
    assert_eq!(
        ends.hw("cut", 1),
        vec![6],
        "the records and one abort marker"
    );
    let want: Vec<_> = open
        .iter()
        .enumerate()
        .map(|(i, v)| (0, i as i64, v.clone()))
        .collect();
    assert_eq!(read_at(&u, 5), want, "the cut records survived the SIGKILL");

    // A later transaction is read past the aborted one: read_committed's first record is
    // the one after the marker, and nothing lies beyond it and its own marker.
    let p = txn_producer(&server, "tx-after");
    p.begin_transaction().unwrap();
    send(&p, "cut", 0, "after");
    p.commit_transaction(T).unwrap();
    assert_eq!(read_at(&c, 1), vec![(0, 6, "after".to_string())]);
    assert_eq!(ends.lso("cut", 1), vec![8]);
    assert_eq!(ends.hw("cut", 1), vec![8]);
}
