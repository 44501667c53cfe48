//! The benchmark client of `scripts/bench.sh`: librdkafka (the rdkafka crate) against a
//! running broker, and the loopback limits it is compared with. Prints one JSON object.
//!
//! ```text
//! bench_client loopback
//! bench_client produce  <bootstrap> <topic> <records> <size> <acks>
//! bench_client consume  <bootstrap> <topic> <records>
//! bench_client e2e      <bootstrap> <topic> <records> <size> <acks> <rate>
//! ```
//!
//! Settings are librdkafka's defaults except where a benchmark needs room: a producer queue
//! that holds the whole run, and `linger.ms=5` (librdkafka's default too).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: see the top of crates/strom/examples/bench_client.rs");
            std::process::exit(2)
        })
    };
    let num = |i: usize| -> u64 { arg(i).parse().expect("a number") };
    let out = match arg(0) {
        "loopback" => loopback(),
        "produce" => produce(arg(1), arg(2), num(3), num(4) as usize, arg(5)),
        "consume" => consume(arg(1), arg(2), num(3)),
        "e2e" => e2e(arg(1), arg(2), num(3), num(4) as usize, arg(5), num(6)),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2)
        }
    };
    println!("{out}");
}

/// Loopback TCP: bytes per second through one connection (1 MiB writes, 4 GiB), and the
/// round trip of a 64-byte ping-pong (median of 20,000).
fn loopback() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const TOTAL: usize = 4 << 30;
    let sink = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < TOTAL {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        // Then echo 64-byte pings back.
        let mut ping = [0u8; 64];
        while c.read_exact(&mut ping).is_ok() {
            c.write_all(&ping).unwrap();
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..TOTAL >> 20 {
        s.write_all(&chunk).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut rtts = Vec::with_capacity(20_000);
    let mut ping = [7u8; 64];
    for _ in 0..20_000 {
        let t = Instant::now();
        s.write_all(&ping).unwrap();
        s.read_exact(&mut ping).unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(s);
    sink.join().unwrap();
    format!(
        r#"{{"mb_per_sec": {:.1}, "rtt_ms": {:.4}}}"#,
        TOTAL as f64 / secs / 1e6,
        percentile(&mut rtts, 50.0)
    )
}

fn producer(bootstrap: &str, acks: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create()
        .expect("producer")
}

/// Sends `value(i)` for i in 0..records as fast as the client takes them.
fn send_all(p: &BaseProducer, topic: &str, records: u64, mut value: impl FnMut(u64) -> Vec<u8>) {
    for i in 0..records {
        let mut v = value(i);
        loop {
            match p.send(BaseRecord::<(), [u8]>::to(topic).payload(&v)) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "send failed: {e}"
                    );
                    v = r.payload.unwrap().to_vec();
                    p.poll(Duration::from_millis(1));
                }
            }
        }
        if i % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
}

fn produce(bootstrap: &str, topic: &str, records: u64, size: usize, acks: &str) -> String {
    let p = producer(bootstrap, acks);
    let payload = vec![b'x'; size];
    let start = Instant::now();
    send_all(&p, topic, records, |_| payload.clone());
    p.flush(Timeout::After(Duration::from_secs(300)))
        .expect("flush");
    let secs = start.elapsed().as_secs_f64();
    format!(
        r#"{{"records_per_sec": {:.0}, "mb_per_sec": {:.1}}}"#,
        records as f64 / secs,
        (records as usize * size) as f64 / secs / 1e6
    )
}

fn consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = md.topics()[0].partitions();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

fn consume(bootstrap: &str, topic: &str, records: u64) -> String {
    let c = consumer(bootstrap, topic);
    let (mut n, mut bytes) = (0u64, 0usize);
    let mut start = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < records && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            // Timed from the first record: not the group's metadata round trips.
            start.get_or_insert_with(Instant::now);
            n += 1;
            bytes += m.payload_len();
        }
    }
    let secs = start.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    format!(
        r#"{{"records": {n}, "records_per_sec": {:.0}, "mb_per_sec": {:.1}}}"#,
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    )
}

/// `records` records at `rate` per second, each carrying its send time; a consumer in the
/// same process reads them as they come: latency from send to receipt.
fn e2e(bootstrap: &str, topic: &str, records: u64, size: usize, acks: &str, rate: u64) -> String {
    let base = Instant::now();
    let p = producer(bootstrap, acks);
    // A first record creates the topic (auto-creation) before the consumer looks it up; too
    // short to carry a time, it is not counted.
    p.send(BaseRecord::<(), [u8]>::to(topic).payload(b"warm-up"))
        .map_err(|(e, _)| e)
        .expect("warm-up record");
    p.flush(Timeout::After(Duration::from_secs(30)))
        .expect("warm-up flush");
    let c = consumer(bootstrap, topic);
    // The consumer's assignment starts fetching before the first record is sent.
    let _ = c.poll(Duration::from_millis(500));
    let reader = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(records as usize);
        let deadline = Instant::now() + Duration::from_secs(300);
        while (lat.len() as u64) < records && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let p = m.payload().unwrap_or_default();
                if p.len() >= 8 {
                    let sent = u64::from_le_bytes(p[..8].try_into().unwrap());
                    let now = base.elapsed().as_nanos() as u64;
                    lat.push(now.saturating_sub(sent) as f64 / 1e6);
                }
            }
        }
        lat
    });
    let start = Instant::now();
    let size = size.max(8);
    for i in 0..records {
        // Pacing to the rate is the workload, not synchronisation.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            p.poll(wait);
        }
        let mut v = vec![b'x'; size];
        v[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
        while let Err((e, _)) = p.send(BaseRecord::<(), [u8]>::to(topic).payload(&v)) {
            eprintln!("send: {e}");
            p.poll(Duration::from_millis(1));
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Timeout::After(Duration::from_secs(60)))
        .expect("flush");
    let mut lat = reader.join().unwrap();
    format!(
        r#"{{"records": {}, "p50_ms": {:.2}, "p99_ms": {:.2}}}"#,
        lat.len(),
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0)
    )
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}
