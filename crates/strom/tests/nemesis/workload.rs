//! What runs against the cluster while the nemesis injects faults: an idempotent acks=all
//! producer that books every acknowledgement, a consumer that commits its positions while
//! a checker watches the committed offsets never go back, and a transactional copier.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

pub const INPUT: &str = "nem";
pub const OUTPUT: &str = "nem-out";
pub const PARTITIONS: i32 = 3;
const T: Duration = Duration::from_secs(20);

/// Everything the workloads report.
#[derive(Default)]
pub struct Book {
    pub stop: AtomicBool,
    /// (partition, offset, send sequence) of every acknowledged record.
    pub acked: Mutex<Vec<(i32, i64, u64)>>,
    /// Delivery failures (records that may or may not be stored), by error.
    pub failed: Mutex<BTreeMap<String, usize>>,
    /// Fatal producer errors (idempotence broken): none expected.
    pub fatal: Mutex<Vec<String>>,
    /// Committed offsets seen going backwards: none expected.
    pub regressions: Mutex<Vec<String>>,
    /// The last acknowledgement's time and the longest gap between two, while producing.
    pub gaps: Mutex<(Option<Instant>, Duration)>,
    pub commits: AtomicUsize,
    pub copier_incarnations: AtomicUsize,
    pub copied_transactions: AtomicUsize,
    /// The copier thread that should run (see [`supervise_copier`]).
    pub copier_generation: AtomicUsize,
    /// The copier's consumer reading an offset at or below one it read before, within one
    /// incarnation: none expected.
    pub copier_rereads: Mutex<Vec<String>>,
}

/// A client context that prints librdkafka's warnings and errors, named, on the test's
/// output: an offset reset or a truncation librdkafka detected explains a failure that the
/// final checks can only describe.
pub struct Logs(pub &'static str);

impl Logs {
    /// rdkafka sets librdkafka's log level from the `log` crate's, which is "errors only"
    /// without a logger: warnings (offset resets) must be asked for with this.
    pub const LEVEL: rdkafka::config::RDKafkaLogLevel = rdkafka::config::RDKafkaLogLevel::Warning;

    /// Whether the reader's offset moves are traced (`NEMESIS_TRACE` set).
    pub fn traced() -> bool {
        std::env::var_os("NEMESIS_TRACE").is_some()
    }
}
impl rdkafka::ClientContext for Logs {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // With NEMESIS_TRACE set, the reader's positions as librdkafka moves them.
        const TRACED: &[&str] = &[
            "OFFSET",
            "FETCHDEC",
            "VALIDATE",
            "OFFSETVALID",
            "SEEK",
            "BROKER",
            "FETCH",
        ];
        if (level as i32) <= rdkafka::config::RDKafkaLogLevel::Warning as i32
            || (TRACED.contains(&fac) && log_message.contains(&format!("{INPUT} [")))
        {
            println!(
                "nemesis: [{}] librdkafka {level:?} {fac}: {log_message}",
                self.0
            );
        }
    }
}
impl rdkafka::consumer::ConsumerContext for Logs {}
impl rdkafka::producer::ProducerContext for Logs {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

pub fn value(seq: u64) -> String {
    format!("record-{seq:08}")
}

pub fn seq_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix("record-")?
        .parse()
        .ok()
}

struct Acks(Arc<Book>);
impl rdkafka::ClientContext for Acks {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::Fatal)
        ) {
            self.0
                .fatal
                .lock()
                .unwrap()
                .push(format!("{error}: {reason}"));
        }
    }
}
impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, seq: Box<u64>) {
        match r {
            Ok(m) => {
                self.0
                    .acked
                    .lock()
                    .unwrap()
                    .push((m.partition(), m.offset(), *seq));
                let mut gaps = self.0.gaps.lock().unwrap();
                let now = Instant::now();
                if let Some(last) = gaps.0 {
                    gaps.1 = gaps.1.max(now - last);
                }
                gaps.0 = Some(now);
            }
            Err((e, _)) => {
                *self
                    .0
                    .failed
                    .lock()
                    .unwrap()
                    .entry(e.to_string())
                    .or_default() += 1
            }
        }
    }
}

/// Produces keyed records at about `rate` per second until told to stop, then flushes.
pub fn produce(bootstrap: String, book: Arc<Book>, rate: u64) {
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Acks(book.clone()))
        .expect("producer");
    let start = Instant::now();
    let mut seq = 0u64;
    while !book.stop.load(Ordering::Acquire) {
        let due = start.elapsed().as_millis() as u64 * rate / 1000;
        while seq < due {
            let (key, v) = (format!("key{}", seq % 31), value(seq));
            match producer.send(
                BaseRecord::with_opaque_to(INPUT, Box::new(seq))
                    .key(&key)
                    .payload(&v),
            ) {
                Ok(()) => seq += 1,
                // The queue is full while the cluster recovers: the record waits its turn.
                Err(_) => break,
            }
        }
        // Pacing to the rate, not synchronisation.
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = producer.flush(Duration::from_secs(180));
}

fn input_partitions(offsets: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        // The start as a concrete offset (the nemesis deletes no records: the logs start at
        // 0), not Offset::Beginning: librdkafka keeps a logical start and looks it up again
        // when a ListOffsets reply comes late from a partition's former leader (a retry of
        // a request to a node killed meanwhile): "outdated offset response" in
        // rd_kafka_toppar_handle_Offset puts the partition back in offset-query, and the
        // consumer reads it again from the start, whatever the broker.
        let offset = Offset::Offset((*o).max(0));
        tpl.add_partition_offset(INPUT, *p, offset).unwrap();
    }
    tpl
}

/// The committed offsets of `group` on the input, -1 where none.
pub fn committed(bootstrap: &str, group: &str, isolation: &str) -> KafkaResult<Vec<(i32, i64)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", isolation)
        .create()?;
    let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, -1)).collect();
    let got = c.committed_offsets(input_partitions(&all), Duration::from_secs(5))?;
    // A partition's own error (UNSTABLE_OFFSET_COMMIT still there at the timeout, say) is
    // no answer: read as "nothing committed", it once sent the copier back to the start.
    for e in got.elements() {
        e.error()?;
    }
    Ok((0..PARTITIONS)
        .map(|p| {
            let o = match got.find_partition(INPUT, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            (p, o)
        })
        .collect())
}

/// Reads the input as a consumer of group `nem-reader` and commits its position every
/// 200 ms; a second client reads the committed offsets back and books any that went back.
pub fn commit_positions(bootstrap: String, book: Arc<Book>) {
    let group = "nem-reader";
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set_log_level(Logs::LEVEL);
    if Logs::traced() {
        config
            .set("debug", "topic,fetch")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let consumer: BaseConsumer<Logs> = config
        .create_with_context(Logs("reader"))
        .expect("consumer");
    let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, -1)).collect();
    consumer.assign(&input_partitions(&all)).unwrap();
    let mut seen = vec![-1i64; PARTITIONS as usize];
    let mut read = vec![-1i64; PARTITIONS as usize];
    let mut last_commit = Instant::now();
    while !book.stop.load(Ordering::Acquire) {
        // A position going back is the consumer's doing (a reset, or a truncation
        // librdkafka was told of); a committed offset going back with positions that did
        // not is the coordinator's.
        let polled = consumer.poll(Duration::from_millis(50));
        if let Some(Err(e)) = &polled {
            // librdkafka reports an offset reset (and why) as a consumer error.
            println!("nemesis: the reader's poll: {e}");
        }
        if let Some(Ok(m)) = polled {
            let before = read[m.partition() as usize];
            if m.offset() <= before {
                let what = format!(
                    "the reader's partition {}: offset {} read after {before}",
                    m.partition(),
                    m.offset()
                );
                println!("nemesis: {what}");
                book.regressions.lock().unwrap().push(what);
            }
            read[m.partition() as usize] = m.offset();
        }
        if last_commit.elapsed() < Duration::from_millis(200) {
            continue;
        }
        last_commit = Instant::now();
        if let Ok(position) = consumer.position()
            && consumer.commit(&position, CommitMode::Sync).is_ok()
        {
            book.commits.fetch_add(1, Ordering::AcqRel);
        }
        if let Ok(now) = committed(&bootstrap, group, "read_uncommitted") {
            for (p, o) in now {
                let before = seen[p as usize];
                if o < before {
                    let what = format!("partition {p}: committed offset {o} after {before}");
                    println!("nemesis: {what}");
                    book.regressions.lock().unwrap().push(what);
                }
                seen[p as usize] = seen[p as usize].max(o);
            }
        }
    }
}

/// One copier incarnation: a transactional producer (init_transactions fences the previous
/// one and ends its transaction) and a read_committed consumer from the committed offsets.
struct Copier {
    producer: BaseProducer<Logs>,
    consumer: BaseConsumer<Logs>,
    /// The last offset read of each partition.
    read: BTreeMap<i32, i64>,
}

pub const COPIER_GROUP: &str = "nem-copier";

impl Copier {
    fn start(bootstrap: &str) -> KafkaResult<Copier> {
        let producer: BaseProducer<Logs> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", "nem-copier")
            .set("transaction.timeout.ms", "10000")
            .set("linger.ms", "5")
            .set_log_level(Logs::LEVEL)
            .create_with_context(Logs("copier producer"))?;
        producer.init_transactions(T)?;
        let consumer: BaseConsumer<Logs> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", COPIER_GROUP)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set_log_level(Logs::LEVEL)
            .create_with_context(Logs("copier consumer"))?;
        let start = committed(bootstrap, COPIER_GROUP, "read_committed")?;
        println!("nemesis: copier resumes from {start:?}");
        consumer.assign(&input_partitions(&start))?;
        Ok(Copier {
            producer,
            consumer,
            read: BTreeMap::new(),
        })
    }

    /// Copies what one poll round brings in one transaction; returns how many records.
    fn cycle(&mut self, book: &Book) -> KafkaResult<usize> {
        let mut batch = Vec::new();
        let until = Instant::now() + Duration::from_millis(200);
        while batch.len() < 1000 && Instant::now() < until {
            let polled = self.consumer.poll(Duration::from_millis(20));
            if let Some(Err(e)) = &polled {
                println!("nemesis: the copier's poll: {e}");
            }
            if let Some(Ok(m)) = polled {
                if let Some(before) = self.read.insert(m.partition(), m.offset())
                    && m.offset() <= before
                {
                    let what = format!(
                        "partition {}: offset {} read after {before}",
                        m.partition(),
                        m.offset()
                    );
                    println!("nemesis: the copier's consumer went back: {what}");
                    book.copier_rereads.lock().unwrap().push(what);
                }
                batch.push((
                    m.partition(),
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        self.producer.begin_transaction()?;
        let mut next = BTreeMap::new();
        for (partition, offset, value) in &batch {
            loop {
                match self.producer.send(
                    BaseRecord::<(), [u8]>::to(OUTPUT)
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
            offsets.add_partition_offset(INPUT, p, Offset::Offset(o))?;
        }
        let metadata = self.consumer.group_metadata().expect("group metadata");
        self.producer
            .send_offsets_to_transaction(&offsets, &metadata, T)?;
        self.producer.commit_transaction(T)?;
        Ok(batch.len())
    }
}

/// Runs the copier in a thread, and another in its place whenever one has not finished a
/// step for two minutes (a step's calls take 70 s at most): librdkafka's send_offsets_to_transaction can block past its timeout,
/// for good, when the group coordinator moves (librdkafka #5456 and #5511, open). The new
/// incarnation's init_transactions fences the stuck one, whose thread is left behind;
/// exactly-once is the brokers' to keep either way. Returns once the copy caught up with
/// `caught_up`.
pub fn supervise_copier(
    bootstrap: String,
    book: Arc<Book>,
    caught_up: Arc<Mutex<Option<Vec<i64>>>>,
) {
    // Each copier says when it finished a step (false) and when the copy caught up (true).
    let (steps, heard) = std::sync::mpsc::channel();
    let spawn = |generation: usize| {
        let (b, book, c, steps) = (
            bootstrap.clone(),
            book.clone(),
            caught_up.clone(),
            steps.clone(),
        );
        std::thread::spawn(move || copy(b, book, c, generation, steps))
    };
    let mut generation = 0;
    let _ = spawn(generation);
    loop {
        match heard.recv_timeout(Duration::from_secs(120)) {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => {
                generation += 1;
                println!("nemesis: the copier made no step for 120 s; a new one takes over");
                book.copier_generation.store(generation, Ordering::Release);
                let _ = spawn(generation);
            }
        }
    }
}

/// Copies the input to the output exactly once until told to stop and caught up with
/// `caught_up` (the input's end offsets, set by the test once it stopped producing), or
/// until a newer copier thread replaces this one.
fn copy(
    bootstrap: String,
    book: Arc<Book>,
    caught_up: Arc<Mutex<Option<Vec<i64>>>>,
    generation: usize,
    steps: std::sync::mpsc::Sender<bool>,
) {
    let mut copier: Option<Copier> = None;
    loop {
        if book.copier_generation.load(Ordering::Acquire) != generation {
            return;
        }
        let _ = steps.send(false);
        if let Some(ends) = caught_up.lock().unwrap().as_ref()
            && let Ok(c) = committed(&bootstrap, COPIER_GROUP, "read_committed")
            && c.iter().all(|(p, o)| *o >= ends[*p as usize])
        {
            let _ = steps.send(true);
            return;
        }
        let mut c = match copier.take() {
            Some(c) => c,
            None => match Copier::start(&bootstrap) {
                Ok(c) => {
                    book.copier_incarnations.fetch_add(1, Ordering::AcqRel);
                    c
                }
                Err(e) => {
                    println!("nemesis: copier cannot start: {e}");
                    continue;
                }
            },
        };
        match c.cycle(&book) {
            Ok(n) => {
                if n > 0 {
                    book.copied_transactions.fetch_add(1, Ordering::AcqRel);
                }
                copier = Some(c);
            }
            // The next incarnation aborts what this one left open and resumes from the
            // committed offsets.
            Err(e) => {
                println!("nemesis: copier transaction failed: {e}");
                let _ = c.producer.abort_transaction(Duration::from_secs(5));
            }
        }
    }
}
