//! `strom perf produce|consume`: Kafka's performance tools, with Kafka's flag names, a live
//! progress bar, and latency percentiles at the end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use strom_client::consumer::{Consumer, ConsumerConfig, StartAt};
use strom_client::producer::{Compression, ProduceRecord, Producer, ProducerConfig};

use crate::admin::Conn;
use crate::console::parse_acks;

#[derive(clap::Subcommand)]
pub enum PerfCmd {
    /// Produce records as fast as asked and report throughput and latency.
    ///
    /// Example: strom perf produce --topic perf --num-records 1000000 --record-size 100 --throughput -1
    Produce {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        num_records: u64,
        /// Bytes per record value.
        #[arg(long, default_value_t = 100)]
        record_size: usize,
        /// Records per second to aim for; -1 for as fast as possible.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        throughput: i64,
        #[arg(long, default_value = "1")]
        acks: String,
        #[arg(long, default_value = "none")]
        compression: Compression,
        #[arg(long, default_value_t = 16384)]
        batch_size: usize,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
        /// Give each record one of this many keys (key-0, key-1, ...), in turn: needed for a
        /// compacted topic, which refuses records without a key. None by default.
        #[arg(long)]
        key_count: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Consume records from the beginning and report throughput.
    ///
    /// Example: strom perf consume --topic perf --messages 1000000
    Consume {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        /// How many records to read.
        #[arg(long)]
        messages: u64,
        /// Give up when nothing arrives for this long.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// read_uncommitted or read_committed.
        #[arg(long, default_value = "read_uncommitted")]
        isolation_level: String,
        #[arg(long)]
        json: bool,
    },
}

fn bar(total: u64, unit: &str) -> ProgressBar {
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
        ))
        .expect("template"),
    );
    b
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub async fn perf(cmd: PerfCmd) -> anyhow::Result<()> {
    match cmd {
        PerfCmd::Produce {
            conn,
            topic,
            num_records,
            record_size,
            throughput,
            acks,
            compression,
            batch_size,
            linger_ms,
            key_count,
            json,
        } => {
            if key_count == Some(0) {
                bail!("--key-count must be at least 1");
            }
            let acks = parse_acks(&acks)?;
            let client = Arc::new(conn.client().await?);
            let producer = Producer::new(
                client,
                ProducerConfig {
                    acks,
                    compression,
                    batch_size,
                    linger: Duration::from_millis(linger_ms),
                    ..ProducerConfig::default()
                },
            );
            let value = Bytes::from(
                (0..record_size)
                    .map(|i| b'a' + (i % 26) as u8)
                    .collect::<Vec<u8>>(),
            );
            let progress = bar(num_records, "records");
            let topic_name: Arc<str> = topic.as_str().into();
            let start = Instant::now();
            let mut pending = VecDeque::new();
            let mut latencies_us: Vec<u64> = Vec::with_capacity(num_records as usize);
            let mut failed = 0u64;
            let mut first_error = None;
            let mut settle = |sent: Instant,
                              now: Instant,
                              r: Result<strom_client::producer::Delivery, _>,
                              latencies: &mut Vec<u64>| match r {
                Ok(Ok(_)) => latencies.push(now.duration_since(sent).as_micros() as u64),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(_) => failed += 1,
            };
            for i in 0..num_records {
                if throughput > 0 {
                    // Pace to the asked rate.
                    let due = start + Duration::from_secs_f64(i as f64 / throughput as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let record = ProduceRecord {
                    topic: topic_name.clone(),
                    key: key_count.map(|n| Bytes::from(format!("key-{}", i % n))),
                    value: Some(value.clone()),
                    ..Default::default()
                };
                let rx = producer
                    .send(record)
                    .await
                    .with_context(|| format!("cannot produce to {topic}"))?;
                pending.push_back((Instant::now(), rx));
                // A record's latency ends at its acknowledgement: settle what has been
                // acknowledged now, in order (waiting for all at the end would count the
                // whole run into the first records' latency when paced). The records
                // acknowledged together share one reading of the clock (a tenth of this
                // loop's time was reading it).
                let mut now = None;
                while let Some((_, rx)) = pending.front_mut() {
                    match rx.try_recv() {
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                        r => {
                            let (sent, _) = pending.pop_front().unwrap();
                            let now = *now.get_or_insert_with(Instant::now);
                            settle(sent, now, r.map_err(|_| ()), &mut latencies_us);
                        }
                    }
                }
                // Bound what is outstanding; settle the oldest first.
                while pending.len() > 200_000 {
                    let (sent, rx) = pending.pop_front().unwrap();
                    let r = rx.await.map_err(|_| ());
                    settle(sent, Instant::now(), r, &mut latencies_us);
                }
                if i % 1024 == 0 {
                    progress.set_position(i);
                }
            }
            producer.flush().await;
            for (sent, rx) in pending {
                let r = rx.await.map_err(|_| ());
                settle(sent, Instant::now(), r, &mut latencies_us);
            }
            progress.finish_and_clear();
            let secs = start.elapsed().as_secs_f64();
            latencies_us.sort_unstable();
            let ok = latencies_us.len() as u64;
            let mb = (ok as f64 * record_size as f64) / (1024.0 * 1024.0);
            let avg = if ok > 0 {
                latencies_us.iter().sum::<u64>() as f64 / ok as f64 / 1000.0
            } else {
                0.0
            };
            let (p50, p95, p99, p999) = (
                percentile(&latencies_us, 50.0),
                percentile(&latencies_us, 95.0),
                percentile(&latencies_us, 99.0),
                percentile(&latencies_us, 99.9),
            );
            let max = latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0;
            if json {
                crate::output::print_json(&json!({
                    "records": ok, "failed": failed, "seconds": secs, "records_per_sec": ok as f64 / secs, "mb_per_sec": mb / secs,
                    "latency_ms": {"avg": avg, "p50": p50, "p95": p95, "p99": p99, "p99_9": p999, "max": max},
                }));
            } else {
                println!(
                    "{ok} records sent, {:.1} records/sec ({:.2} MB/sec), {avg:.2} ms avg latency, {max:.2} ms max latency, {p50:.2} ms 50th, {p95:.2} ms 95th, {p99:.2} ms 99th, {p999:.2} ms 99.9th.",
                    ok as f64 / secs,
                    mb / secs
                );
            }
            if failed > 0 {
                bail!(
                    "{failed} records were not acknowledged (first error: {})",
                    first_error.unwrap_or_default()
                );
            }
        }
        PerfCmd::Consume {
            conn,
            topic,
            messages,
            timeout_ms,
            isolation_level,
            json,
        } => {
            let config = ConsumerConfig {
                isolation_level: crate::console::parse_isolation(&isolation_level)?,
                ..ConsumerConfig::default()
            };
            let client = Arc::new(conn.client().await?);
            let mut consumer = Consumer::new(client, config);
            consumer
                .assign(&topic, &[], StartAt::Earliest)
                .await
                .with_context(|| format!("cannot consume {topic}"))?;
            let progress = bar(messages, "records");
            let start = Instant::now();
            let mut last = Instant::now();
            let (mut count, mut bytes, mut fetches) = (0u64, 0u64, 0u64);
            while count < messages {
                let records = consumer.poll().await?;
                fetches += 1;
                if records.is_empty() {
                    if last.elapsed() > Duration::from_millis(timeout_ms) {
                        break;
                    }
                    continue;
                }
                last = Instant::now();
                for r in &records {
                    bytes += r.value.as_ref().map_or(0, |v| v.len()) as u64
                        + r.key.as_ref().map_or(0, |k| k.len()) as u64;
                }
                count += records.len() as u64;
                progress.set_position(count.min(messages));
            }
            progress.finish_and_clear();
            // Up to the last record, not through the silence that ended the wait.
            let secs = (last - start).as_secs_f64().max(1e-6);
            let mb = bytes as f64 / (1024.0 * 1024.0);
            if json {
                crate::output::print_json(
                    &json!({"records": count, "seconds": secs, "records_per_sec": count as f64 / secs, "mb_per_sec": mb / secs, "fetches": fetches}),
                );
            } else {
                println!(
                    "{count} records consumed in {secs:.2} s, {:.1} records/sec ({:.2} MB/sec), {fetches} fetches.",
                    count as f64 / secs,
                    mb / secs
                );
            }
            if count < messages {
                bail!(
                    "only {count} of {messages} records arrived within {timeout_ms} ms of silence"
                );
            }
        }
    }
    Ok(())
}
