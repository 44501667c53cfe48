//! Replication under a nemesis: three nodes, replication factor 3, min.insync.replicas 2,
//! every connection through a proxy the test controls. While an idempotent acks=all
//! producer streams, a consumer commits its positions and a transactional copier copies
//! the input to another topic, seeded faults follow one another: SIGKILL of a partition's
//! leader, SIGSTOP past the session timeout, a node cut off from the others and from the
//! clients, SIGKILL of the active controller. After healing: every acknowledged record is
//! stored once at its acknowledged offset, in send order; the replicas hold identical
//! bytes; the committed offsets never went back; the copy holds every input record once.
//!
//! Seeds 1 to 3 run in CI. `NEMESIS_SECS` sets how long faults are injected (60 s by
//! default); `NEMESIS_SEED` runs one more seed of your choosing: `NEMESIS_SEED=7
//! NEMESIS_SECS=600 cargo nextest run --test cluster_nemesis seed_from_env`.

mod cluster_nodes;
mod common;
mod nemesis;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_nodes::ok;
use common::wait_for;
use nemesis::workload::{self, Book, INPUT, OUTPUT, PARTITIONS};
use nemesis::{Cluster, Rng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Every record of `topic` up to the end offsets `ends`, by partition: (offset, value).
fn read_all(bootstrap: &str, topic: &str, ends: &[i64]) -> Vec<Vec<(i64, Vec<u8>)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "nem-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = vec![Vec::new(); PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = |out: &Vec<Vec<(i64, Vec<u8>)>>| {
        (0..PARTITIONS as usize).all(|p| out[p].last().map_or(-1, |r| r.0) + 1 >= ends[p])
    };
    while !done(&out) {
        check(Instant::now() < deadline, || {
            format!("reading {topic} back timed out")
        });
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out[m.partition() as usize]
                .push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

/// The committed copy, read_committed, until it holds `expected` records per partition
/// and nothing more arrives for two seconds (a duplicate would).
fn read_copy(bootstrap: &str, expected: &[usize]) -> Vec<Vec<Vec<u8>>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "nem-check-copy")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(OUTPUT, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = vec![Vec::new(); PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    loop {
        let full = (0..PARTITIONS as usize).all(|p| out[p].len() >= expected[p]);
        if full && quiet_since.elapsed() > Duration::from_secs(2) {
            return out;
        }
        check(Instant::now() < deadline, || {
            format!(
                "the copy holds {:?} records, the input {expected:?}",
                out.iter().map(Vec::len).collect::<Vec<_>>()
            )
        });
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out[m.partition() as usize].push(m.payload().unwrap_or_default().to_vec());
            quiet_since = Instant::now();
        }
    }
}

/// The high watermarks of `topic`.
fn ends(bootstrap: &str, topic: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            wait_for("the high watermark", Duration::from_secs(60), || {
                c.fetch_watermarks(topic, p, Duration::from_secs(5))
                    .ok()
                    .map(|(_, hi)| hi)
            })
        })
        .collect()
}

/// Fails the test with `what`, printed on standard output as well: a failure's stderr is
/// mostly the nodes' logs, which can push the panic's message out of a truncated CI log.
fn check(ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        let what = what();
        println!("nemesis: FAILED: {what}");
        panic!("{what}");
    }
}

fn run(seed: u64) {
    let secs: u64 = std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut cluster = Cluster::start();
    let bootstrap = cluster.bootstrap();
    for topic in [INPUT, OUTPUT] {
        ok(
            &[
                "topics",
                "create",
                "--topic",
                topic,
                "--partitions",
                &PARTITIONS.to_string(),
                "--replication-factor",
                "3",
                "--bootstrap-server",
                &bootstrap,
            ],
            "",
        );
    }
    let book = Arc::new(Book::default());
    let caught_up: Arc<Mutex<Option<Vec<i64>>>> = Arc::default();
    let producer = {
        let (b, book) = (bootstrap.clone(), book.clone());
        std::thread::spawn(move || workload::produce(b, book, 1000))
    };
    let reader = {
        let (b, book) = (bootstrap.clone(), book.clone());
        std::thread::spawn(move || workload::commit_positions(b, book))
    };
    let copier = {
        let (b, book, c) = (bootstrap.clone(), book.clone(), caught_up.clone());
        std::thread::spawn(move || workload::supervise_copier(b, book, c))
    };

    println!("nemesis: seed {seed}, {secs} s of faults");
    let mut rng = Rng::new(seed);
    cluster.run(&mut rng, Duration::from_secs(secs), INPUT, PARTITIONS);
    println!("nemesis: healed; stopping the producer");
    book.stop.store(true, Ordering::Release);
    producer.join().unwrap();
    println!("nemesis: the producer flushed");
    reader.join().unwrap();
    println!("nemesis: checking the replicas");
    // Healed: every replica of every partition, internal ones too, back in the ISR.
    cluster.await_whole_isrs("every partition back to three replicas in its ISR after healing");
    // Healed: every replica back in sync, and identical.
    for topic in [INPUT, OUTPUT] {
        for p in 0..PARTITIONS {
            wait_for(
                &format!("the replicas of {topic}-{p} to hold the same bytes"),
                Duration::from_secs(120),
                || {
                    let first = cluster.stored(1, topic, p);
                    (first == cluster.stored(2, topic, p) && first == cluster.stored(3, topic, p))
                        .then_some(())
                },
            );
        }
    }

    // Every replica's leader-epoch history is the one its batches carry.
    for topic in [INPUT, OUTPUT] {
        for p in 0..PARTITIONS {
            for id in 1..=3 {
                let r = cluster.epochs_match_batches(id, topic, p);
                check(r.is_ok(), || r.unwrap_err());
            }
        }
    }

    // Every acknowledged record once, at its offset; the partitions in send order.
    let input_ends = ends(&bootstrap, INPUT);
    let input = read_all(&bootstrap, INPUT, &input_ends);
    let acked = book.acked.lock().unwrap().clone();
    let mut at: HashMap<(i32, i64), u64> = HashMap::new();
    let mut seen: HashMap<u64, (i32, i64)> = HashMap::new();
    for (p, records) in input.iter().enumerate() {
        let mut last = None;
        for (offset, value) in records {
            let seq = workload::seq_of(value);
            check(seq.is_some(), || {
                format!("a record not produced here at {p}/{offset}")
            });
            let seq = seq.unwrap();
            let before = seen.insert(seq, (p as i32, *offset));
            check(before.is_none(), || {
                format!("record {seq} stored twice: at {before:?} and {p}/{offset}")
            });
            check(last < Some(seq), || {
                format!("partition {p} out of send order at offset {offset}: {seq} after {last:?}")
            });
            last = Some(seq);
            at.insert((p as i32, *offset), seq);
        }
    }
    for (p, offset, seq) in &acked {
        // librdkafka acknowledges records without an offset (-1001) when a later batch of
        // the idempotent producer succeeded while theirs was in doubt ("implicitly acked"):
        // stored, somewhere in their partition, before the later ones.
        if *offset < 0 {
            check(seen.get(seq).is_some_and(|(sp, _)| sp == p), || {
                format!("implicitly acknowledged record {seq} of partition {p} is not there")
            });
        } else {
            check(at.get(&(*p, *offset)) == Some(seq), || {
                format!(
                    "acknowledged record {seq} at {p}/{offset} is not there (there: {:?})",
                    at.get(&(*p, *offset))
                )
            });
        }
    }

    // The copier finishes from what is committed, then the copy is compared.
    println!("nemesis: waiting for the copier to copy {input_ends:?}");
    *caught_up.lock().unwrap() = Some(input_ends.clone());
    copier.join().unwrap();
    let expected: Vec<usize> = input.iter().map(Vec::len).collect();
    let copy = read_copy(&bootstrap, &expected);
    for p in 0..PARTITIONS as usize {
        let want: Vec<&Vec<u8>> = input[p].iter().map(|(_, v)| v).collect();
        let got: Vec<&Vec<u8>> = copy[p].iter().collect();
        check(want == got, || {
            let first = want.iter().zip(&got).position(|(a, b)| a != b);
            format!(
                "partition {p}: the copy has {} records, the input {}; first difference at \
                 {first:?} (copy {:?}, input {:?}); the copier's consumer went back: {:?}",
                got.len(),
                want.len(),
                first
                    .and_then(|i| got.get(i))
                    .map(|v| String::from_utf8_lossy(v)),
                first
                    .and_then(|i| want.get(i))
                    .map(|v| String::from_utf8_lossy(v)),
                book.copier_rereads.lock().unwrap(),
            )
        });
    }

    let regressions = book.regressions.lock().unwrap().clone();
    check(regressions.is_empty(), || {
        format!("committed offsets went back: {regressions:?}")
    });
    let fatal = book.fatal.lock().unwrap().clone();
    check(fatal.is_empty(), || {
        format!("fatal producer errors: {fatal:?}")
    });
    let failed: BTreeMap<String, usize> = book.failed.lock().unwrap().clone();
    println!(
        "nemesis: seed {seed}: {} faults; checked {} acknowledged records (of {} stored, {:?} \
         failed deliveries) at their offsets in send order, identical replicas of {} partitions, \
         {} commits never going back, {} records copied exactly once by {} transactions over {} \
         copier incarnations",
        cluster.log.len(),
        acked.len(),
        seen.len(),
        failed,
        2 * PARTITIONS,
        book.commits.load(Ordering::Acquire),
        expected.iter().sum::<usize>(),
        book.copied_transactions.load(Ordering::Acquire),
        book.copier_incarnations.load(Ordering::Acquire),
    );
    assert!(
        acked.len() > 1000,
        "too little got through: {}",
        acked.len()
    );
}

#[test]
fn nemesis_seed_1() {
    run(1);
}

// Seed 2 once found the transactional copier resuming from no committed offsets after two
// quick SIGKILLs of the active controller; the copier now takes a partition's error in the
// committed offsets for no answer, and the CI machine is no longer starved by the proxies'
// connection tracing. It runs again with seed 3.
#[test]
fn nemesis_seed_2() {
    run(2);
}

#[test]
fn nemesis_seed_3() {
    run(3);
}

/// A seed of your choosing (`NEMESIS_SEED`); skipped without one.
#[test]
fn nemesis_seed_from_env() {
    if let Some(seed) = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed);
    }
}
