//! Exactly-once, end to end: a transactional copier (read_committed consumer, transactional
//! producer, offsets sent to the transaction) copies 100,000 records from one topic to
//! another while the server is SIGKILLed and restarted three times. The output, read with
//! read_committed, must hold every input record exactly once, in order per partition.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, wait_for};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const RECORDS: usize = 100_000;
const PARTITIONS: i32 = 3;
const T: Duration = Duration::from_secs(20);
const GROUP: &str = "eos-copier";

fn input_value(partition: i32, seq: usize) -> String {
    format!("p{partition}-{seq:06}")
}

/// The input: records with values naming their partition and position, written by an
/// idempotent producer so that the input itself has no duplicates.
fn seed(bootstrap: &str) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for i in 0..RECORDS {
        let partition = (i % PARTITIONS as usize) as i32;
        let value = input_value(partition, i / PARTITIONS as usize);
        loop {
            match p.send(
                BaseRecord::<(), str>::to("eos-in")
                    .partition(partition)
                    .payload(&value),
            ) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(50));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

struct Copier {
    producer: BaseProducer,
    consumer: BaseConsumer,
}

impl Copier {
    /// A new incarnation: init_transactions fences the previous producer and aborts its open
    /// transaction; the consumer then resumes from the offsets committed in transactions.
    fn start(bootstrap: &str) -> KafkaResult<Copier> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", "eos-copier")
            .set("transaction.timeout.ms", "10000")
            .set("linger.ms", "5")
            .create()?;
        producer.init_transactions(T)?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let mut wanted = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            wanted.add_partition("eos-in", p);
        }
        let committed = consumer.committed_offsets(wanted, T)?;
        let mut start = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let offset = match committed.find_partition("eos-in", p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            start.add_partition_offset("eos-in", p, offset)?;
        }
        consumer.assign(&start)?;
        Ok(Copier { producer, consumer })
    }

    /// One transaction: up to 2,000 records copied, their offsets sent along, committed.
    /// Returns how many records it committed; `None` when told to crash mid-transaction.
    fn cycle(&self, crash: &AtomicBool) -> KafkaResult<Option<usize>> {
        let mut batch = Vec::new();
        let until = Instant::now() + Duration::from_millis(200);
        while batch.len() < 2000 && Instant::now() < until {
            // A broker going away shows up here as errors; the producer's calls decide.
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(20)) {
                batch.push((
                    m.partition(),
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        if batch.is_empty() {
            return Ok(Some(0));
        }
        self.producer.begin_transaction()?;
        let mut next = std::collections::BTreeMap::new();
        for (partition, offset, value) in &batch {
            loop {
                match self.producer.send(
                    BaseRecord::<(), [u8]>::to("eos-out")
                        .partition(*partition)
                        .payload(value),
                ) {
                    Ok(()) => break,
                    Err((e, _)) => {
                        if !matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ) {
                            return Err(e);
                        }
                        self.producer.poll(Duration::from_millis(10));
                    }
                }
            }
            next.insert(*partition, offset + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in next {
            offsets.add_partition_offset("eos-in", p, Offset::Offset(o))?;
        }
        let metadata = self.consumer.group_metadata().expect("group metadata");
        self.producer
            .send_offsets_to_transaction(&offsets, &metadata, T)?;
        if crash.swap(false, Ordering::AcqRel) {
            // The copier dies here, its transaction written but neither committed nor aborted.
            self.producer.flush(T)?;
            return Ok(None);
        }
        self.producer.commit_transaction(T)?;
        Ok(Some(batch.len()))
    }
}

/// Copies until every input record is committed to the output. Any failure (the server
/// died, a request timed out, the producer was fenced) abandons the incarnation: the next
/// one aborts what was open and resumes from the committed offsets.
fn run_copier(
    bootstrap: String,
    copied: Arc<AtomicUsize>,
    restarts: Arc<AtomicUsize>,
    crash: Arc<AtomicBool>,
) {
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut copier: Option<Copier> = None;
    while copied.load(Ordering::Acquire) < RECORDS {
        assert!(Instant::now() < deadline, "the copier made no progress");
        let c = match copier.take() {
            Some(c) => c,
            None => match Copier::start(&bootstrap) {
                Ok(c) => {
                    restarts.fetch_add(1, Ordering::AcqRel);
                    c
                }
                Err(_) => continue,
            },
        };
        match c.cycle(&crash) {
            Ok(Some(n)) => {
                copied.fetch_add(n, Ordering::AcqRel);
                copier = Some(c);
            }
            // A crashed incarnation leaves its transaction open: the next one's
            // init_transactions aborts it.
            Ok(None) => drop(c),
            Err(_) => {
                let _ = c.producer.abort_transaction(Duration::from_secs(5));
                // What this incarnation committed is known only to the broker: count again
                // from the committed offsets.
                drop(c);
                if let Ok(n) = committed_total(&bootstrap) {
                    copied.store(n, Ordering::Release);
                }
            }
        }
    }
}

/// The sum of the committed offsets: how many input records are copied for good.
fn committed_total(bootstrap: &str) -> KafkaResult<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        wanted.add_partition("eos-in", p);
    }
    let committed = c.committed_offsets(wanted, T)?;
    Ok((0..PARTITIONS)
        .map(
            |p| match committed.find_partition("eos-in", p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o as usize,
                _ => 0,
            },
        )
        .sum())
}

#[test]
fn a_transactional_copier_copies_everything_exactly_once_across_sigkills() {
    let mut server = Server::start_with(&[
        "num.partitions=3",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=500",
    ]);
    let bootstrap = server.bootstrap();
    seed(&bootstrap);

    let copied = Arc::new(AtomicUsize::new(0));
    let restarts = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let crash = Arc::new(AtomicBool::new(false));
    let copier = {
        let (copied, restarts, done, crash, bootstrap) = (
            copied.clone(),
            restarts.clone(),
            done.clone(),
            crash.clone(),
            bootstrap.clone(),
        );
        std::thread::spawn(move || {
            run_copier(bootstrap, copied, restarts, crash);
            done.store(true, Ordering::Release);
        })
    };
    // The copier itself dies mid-transaction once, then the server is SIGKILLed three
    // times while the copy is under way.
    wait_for(
        "the copier to pass 10000 records",
        Duration::from_secs(200),
        || (copied.load(Ordering::Acquire) >= 10_000).then_some(()),
    );
    crash.store(true, Ordering::Release);
    for at in [20_000, 45_000, 70_000] {
        wait_for(
            &format!("the copier to pass {at} records"),
            Duration::from_secs(200),
            || (copied.load(Ordering::Acquire) >= at || done.load(Ordering::Acquire)).then_some(()),
        );
        server.kill();
        server.restart();
    }
    copier.join().expect("the copier");
    // One incarnation more for the crash; librdkafka often rides out a server restart by
    // itself, so the kills need not add any.
    let incarnations = restarts.load(Ordering::Acquire);
    eprintln!("copier incarnations: {incarnations}");
    assert!(incarnations >= 2, "the crashed copier was not replaced");

    // The output, read_committed from the start: every input record once, in order.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "eos-check")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("eos-out", p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut per_partition: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while total < RECORDS {
        assert!(
            Instant::now() < deadline,
            "read {total} of {RECORDS} output records"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            per_partition[m.partition() as usize]
                .push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            total += 1;
        }
    }
    assert!(
        c.poll(Duration::from_millis(500)).is_none(),
        "more output records than input records"
    );
    for (p, got) in per_partition.iter().enumerate() {
        let n = (RECORDS + PARTITIONS as usize - 1 - p) / PARTITIONS as usize;
        let want: Vec<String> = (0..n).map(|i| input_value(p as i32, i)).collect();
        if got != &want {
            let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "partition {p}: {} records for {n}, first difference at {first_bad:?}: got {:?}, want {:?}",
                got.len(),
                first_bad.map(|i| &got[i]),
                first_bad.map(|i| &want[i])
            );
        }
    }
}
