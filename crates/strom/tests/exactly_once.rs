//! Exactly-once, end to end: a transactional copier (read_committed consumer, transactional
//! producer, offsets sent to the transaction) copies 100,000 records from one topic to
//! another while the server is SIGKILLed and restarted three times, each kill landing while
//! the copier has a transaction open. The output, read with read_committed, must hold every
//! input record exactly once, in order per partition.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// What the copier thread and the test share.
#[derive(Default)]
struct Progress {
    /// Input records copied for good: the committed offsets' sum as last known for sure.
    copied: AtomicUsize,
    /// Copier incarnations started.
    restarts: AtomicUsize,
    /// The copier is to die mid-transaction once.
    crash: AtomicBool,
    /// Set while the copier has produced (and flushed) records inside a transaction that
    /// is not yet committed.
    in_txn: AtomicBool,
    /// Asks the copier to wait inside its next open transaction (a [`Park`] as usize).
    park: AtomicUsize,
    /// Set by the copier while it waits inside an open transaction because of `park`;
    /// cleared by the test to let it go on.
    parked: AtomicBool,
    /// Server kills so far; the test counts one up before each kill.
    kills: AtomicUsize,
    /// The copier thread has ended, well or not.
    done: AtomicBool,
    /// Transactions under way when the server was killed, by what became of them.
    outcomes: Mutex<Outcomes>,
}

/// What the copier does with the transaction it waited in once the test lets it go on.
#[derive(Clone, Copy, PartialEq)]
enum Park {
    /// Does not wait.
    No,
    /// Carries on: sends the offsets and commits (against the restarted server).
    Continue,
    /// Dies with the server: leaves the transaction open for the next incarnation (or
    /// the transaction timeout) to abort after the restart.
    Abandon,
}

/// One transaction attempt, as far as the copier knows it.
#[derive(Clone, Copy, Default)]
struct Attempt {
    /// Records committed before it.
    before: usize,
    /// Records in it.
    records: usize,
    /// All of them were written (flushed) inside the open transaction.
    flushed: bool,
    /// A server kill came between its begin and the end of its commit.
    interrupted: bool,
}

#[derive(Debug, Default)]
struct Outcomes {
    /// Transactions a kill caught between begin and the end of commit_transaction.
    interrupted: usize,
    /// Of those: committed all the same (the commit went through after the restart, or the
    /// commit reached the server and only its answer was lost).
    survived: usize,
    /// Of those: aborted, and the records they had written with them.
    aborted: usize,
    /// Records written in aborted transactions, the crashed copier's included.
    aborted_records: usize,
}

/// Sets `done` when the copier thread ends, by returning or by a panic.
struct DoneOnDrop(Arc<Progress>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
    }
}

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
    /// `attempt` tells how far it got. Returns how many records it committed; `None` when
    /// told to die mid-transaction (a crash, or a [`Park::Abandon`]).
    fn cycle(&self, progress: &Progress, attempt: &mut Attempt) -> KafkaResult<Option<usize>> {
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
        attempt.records = batch.len();
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
        // The records on the server, inside the open transaction.
        self.producer.flush(T)?;
        attempt.flushed = true;
        progress.in_txn.store(true, Ordering::Release);
        let park = progress.park.swap(Park::No as usize, Ordering::AcqRel);
        if park != Park::No as usize {
            // The test kills the server now, while this transaction is open.
            progress.parked.store(true, Ordering::Release);
            wait_for(
                "the test to kill and restart the server under the open transaction",
                Duration::from_secs(120),
                || (!progress.parked.load(Ordering::Acquire)).then_some(()),
            );
            if park == Park::Abandon as usize {
                return Ok(None);
            }
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in next {
            offsets.add_partition_offset("eos-in", p, Offset::Offset(o))?;
        }
        let metadata = self.consumer.group_metadata().expect("group metadata");
        self.producer
            .send_offsets_to_transaction(&offsets, &metadata, T)?;
        if progress.crash.swap(false, Ordering::AcqRel) {
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
///
/// `progress.copied` only ever holds what is known to be committed: a successful commit
/// adds its records; after a failure (where the commit may or may not have happened: its
/// answer can be lost to a kill) and whenever there is nothing left to read, it is read
/// back from the committed offsets, again until that succeeds. The copier is done when
/// the committed offsets cover every input record.
fn run_copier(bootstrap: String, progress: Arc<Progress>) {
    let _done = DoneOnDrop(progress.clone());
    let stall = Duration::from_secs(120);
    let mut last_progress = (0, Instant::now());
    let mut copier: Option<Copier> = None;
    // A failed or abandoned transaction: its fate is known once a new incarnation has
    // fenced it.
    let mut unsettled: Option<Attempt> = None;
    while progress.copied.load(Ordering::Acquire) < RECORDS {
        let copied = progress.copied.load(Ordering::Acquire);
        if copied != last_progress.0 {
            last_progress = (copied, Instant::now());
        }
        assert!(
            last_progress.1.elapsed() < stall,
            "the copier made no progress for {stall:?} at {copied} records"
        );
        let c = match copier.take() {
            Some(c) => c,
            None => match Copier::start(&bootstrap) {
                Ok(c) => {
                    progress.restarts.fetch_add(1, Ordering::AcqRel);
                    // init_transactions has ended whatever the previous incarnation left
                    // open: the committed offsets now tell what became of it.
                    let total = committed_total_retrying(&bootstrap);
                    if let Some(attempt) = unsettled.take() {
                        settle(&progress, attempt, total);
                    }
                    progress.copied.store(total, Ordering::Release);
                    c
                }
                Err(_) => continue,
            },
        };
        let kills = progress.kills.load(Ordering::Acquire);
        let mut attempt = Attempt {
            before: progress.copied.load(Ordering::Acquire),
            ..Attempt::default()
        };
        let result = c.cycle(&progress, &mut attempt);
        progress.in_txn.store(false, Ordering::Release);
        attempt.interrupted =
            attempt.records > 0 && progress.kills.load(Ordering::Acquire) != kills;
        match result {
            Ok(Some(0)) => {
                // Caught up with the input as far as this incarnation knows: count what is
                // committed.
                progress
                    .copied
                    .store(committed_total_retrying(&bootstrap), Ordering::Release);
                copier = Some(c);
            }
            Ok(Some(n)) => {
                settle(&progress, attempt, attempt.before + n);
                progress.copied.fetch_add(n, Ordering::AcqRel);
                copier = Some(c);
            }
            // A crashed incarnation leaves its transaction open: the next one's
            // init_transactions aborts it.
            Ok(None) => {
                unsettled = Some(attempt);
                drop(c);
            }
            Err(_) => {
                let _ = c.producer.abort_transaction(Duration::from_secs(5));
                drop(c);
                unsettled = Some(attempt);
            }
        }
    }
    let total = committed_total_retrying(&bootstrap);
    assert_eq!(total, RECORDS, "committed offsets at the end");
}

/// Books what became of a transaction attempt now that `total` records are committed.
fn settle(progress: &Progress, a: Attempt, total: usize) {
    let committed = if total == a.before + a.records {
        true
    } else if total == a.before {
        false
    } else {
        panic!(
            "a transaction of {} records begun with {} committed left {total} committed",
            a.records, a.before
        );
    };
    let mut o = progress.outcomes.lock().unwrap();
    if !committed && a.flushed {
        o.aborted_records += a.records;
    }
    if a.interrupted {
        o.interrupted += 1;
        if committed {
            o.survived += 1;
        } else {
            o.aborted += 1;
        }
    }
}

/// [`committed_total`] until it answers (the server may be restarting).
fn committed_total_retrying(bootstrap: &str) -> usize {
    wait_for("the committed offsets", Duration::from_secs(120), || {
        committed_total(bootstrap).ok()
    })
}

/// The sum of the committed offsets: how many input records are copied for good. Asked
/// for stable offsets (librdkafka does for read_committed), so that offsets in a
/// transaction still being committed are waited for rather than missed.
fn committed_total(bootstrap: &str) -> KafkaResult<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("isolation.level", "read_committed")
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

    let progress = Arc::new(Progress::default());
    let copier = {
        let (progress, bootstrap) = (progress.clone(), bootstrap.clone());
        std::thread::spawn(move || run_copier(bootstrap, progress))
    };
    let copied = || progress.copied.load(Ordering::Acquire);
    let running = |why: &str| {
        assert!(
            !progress.done.load(Ordering::Acquire),
            "the copier ended (at {} records) before {why}",
            copied()
        )
    };
    // The copier itself dies mid-transaction once, then the server is SIGKILLed three
    // times while the copier has a transaction open: the first two times it waits in it
    // for the kill and restart (and then dies too, leaving it to be aborted; then carries
    // on and commits), the third time the kill comes while it happens to be inside one.
    wait_for(
        "the copier to pass 10000 records",
        Duration::from_secs(200),
        || {
            running("the crash");
            (copied() >= 10_000).then_some(())
        },
    );
    progress.crash.store(true, Ordering::Release);
    for (i, at) in [20_000, 40_000, 60_000].into_iter().enumerate() {
        let why = format!("kill {i}");
        wait_for(
            &format!("the copier to pass {at} records"),
            Duration::from_secs(200),
            || {
                running(&why);
                (copied() >= at).then_some(())
            },
        );
        let park = [Park::Abandon, Park::Continue, Park::No][i];
        let parked = park != Park::No;
        progress.park.store(park as usize, Ordering::Release);
        let inside = if parked {
            &progress.parked
        } else {
            &progress.in_txn
        };
        // Polled every millisecond: the copier is inside a transaction only for the few
        // milliseconds between its flush and the end of its commit.
        let deadline = Instant::now() + Duration::from_secs(200);
        while !inside.load(Ordering::Acquire) {
            running(&why);
            assert!(
                Instant::now() < deadline,
                "the copier was never seen inside an open transaction"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = copied();
        assert!(at < RECORDS, "{at} records copied before {why}");
        running(&why);
        progress.kills.fetch_add(1, Ordering::AcqRel);
        server.kill();
        eprintln!(
            "{why}: {at} records committed, the copier {} an open transaction",
            match park {
                Park::Abandon => "dying in",
                Park::Continue => "waiting in",
                Park::No => "in",
            }
        );
        server.restart();
        progress.parked.store(false, Ordering::Release);
    }
    copier.join().expect("the copier");
    // One incarnation more for the crash and one for the copier that died with the server;
    // librdkafka often rides out a server restart by itself, so the other kills need not
    // add any.
    let incarnations = progress.restarts.load(Ordering::Acquire);
    let outcomes = std::mem::take(&mut *progress.outcomes.lock().unwrap());
    eprintln!("copier incarnations: {incarnations}; transactions caught by a kill: {outcomes:?}");
    assert!(
        incarnations >= 3,
        "the crashed copiers were not replaced: {incarnations} incarnations"
    );
    // The first two kills catch the copier waiting in its transaction; the third may
    // come just after the commit.
    assert!(
        outcomes.interrupted >= 2,
        "kills caught only {} open transactions",
        outcomes.interrupted
    );
    assert!(
        outcomes.aborted >= 1,
        "the transaction left open at a kill was not aborted"
    );

    // A committed sentinel after everything the copier wrote: reading up to it reads all.
    let sentinel: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "eos-sentinel")
        .create()
        .unwrap();
    sentinel.init_transactions(T).unwrap();
    sentinel.begin_transaction().unwrap();
    for p in 0..PARTITIONS {
        sentinel
            .send(
                BaseRecord::<(), str>::to("eos-out")
                    .partition(p)
                    .payload(SENTINEL),
            )
            .expect("enqueue");
    }
    sentinel.commit_transaction(T).unwrap();

    // The output, read_committed from the start: every input record once, in order.
    let per_partition = read_to_sentinel(&bootstrap, "read_committed");
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
    // The aborted transactions' records (the crashed copier's, the one that died with the
    // server) are in the log all the same: read_committed left them out.
    let everything: usize = read_to_sentinel(&bootstrap, "read_uncommitted")
        .iter()
        .map(Vec::len)
        .sum();
    eprintln!("output records, aborted ones included: {everything}");
    assert!(
        everything >= RECORDS + outcomes.aborted_records,
        "{everything} records in the output log, {} of them in aborted transactions",
        outcomes.aborted_records
    );
}

const SENTINEL: &str = "the end";

/// The output's values per partition, read from the start up to the sentinel.
fn read_to_sentinel(bootstrap: &str, isolation: &str) -> Vec<Vec<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eos-check")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("eos-out", p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut per_partition: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
    let mut ended = vec![false; PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended.contains(&false) {
        assert!(
            Instant::now() < deadline,
            "{isolation}: read {:?} output records, sentinels {ended:?}",
            per_partition.iter().map(Vec::len).collect::<Vec<_>>()
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            let p = m.partition() as usize;
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            assert!(
                !ended[p],
                "{isolation}: {v:?} after the sentinel in partition {p}"
            );
            if v == SENTINEL {
                ended[p] = true;
            } else {
                per_partition[p].push(v);
            }
        }
    }
    per_partition
}
