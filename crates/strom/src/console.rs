//! `strom produce` and `strom consume`: the console producer and consumer.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use strom_client::consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartAt};
use strom_client::group::{Assignor, GroupMember};
use strom_client::producer::{Compression, ProduceRecord, Producer, ProducerConfig};

use crate::admin::Conn;

#[derive(clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long)]
    topic: String,
    /// Read records from this file instead of standard input, one per line.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Split each line into key and value at the first occurrence of this separator.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header for every record, key=value; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// 0, 1, or all (-1).
    #[arg(long, default_value = "all")]
    acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<i32>,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value_t = 16384)]
    batch_size: usize,
}

pub fn parse_acks(s: &str) -> anyhow::Result<i16> {
    Ok(match s {
        "all" | "-1" => -1,
        "0" => 0,
        "1" => 1,
        _ => bail!("--acks must be 0, 1 or all, not {s:?}"),
    })
}

pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let acks = parse_acks(&args.acks)?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), Some(Bytes::from(v.to_string())))),
            None => bail!("header {h:?} is not key=value"),
        })
        .collect::<anyhow::Result<_>>()?;
    let client = Arc::new(args.conn.client().await?);
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks,
            compression: args.compression,
            batch_size: args.batch_size,
            linger: Duration::from_millis(args.linger_ms),
            ..ProducerConfig::default()
        },
    );
    let input: Box<dyn BufRead> = match &args.file {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let mut pending = Vec::new();
    let mut failed = 0usize;
    let topic: Arc<str> = args.topic.as_str().into();
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading the input")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                None => {
                    eprintln!("line {}: no key separator {sep:?}; skipped", n + 1);
                    failed += 1;
                    continue;
                }
            },
            None => (None, line),
        };
        let record = ProduceRecord {
            topic: topic.clone(),
            partition: args.partition,
            key,
            value: Some(Bytes::from(value)),
            headers: headers.clone(),
            timestamp: None,
        };
        pending.push(
            producer
                .send(record)
                .await
                .with_context(|| format!("cannot produce to {}", args.topic))?,
        );
    }
    producer.flush().await;
    let total = pending.len() + failed;
    let mut first_error = None;
    for p in pending {
        match p.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {total} records were not acknowledged{}",
            first_error
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long)]
    topic: String,
    /// Start at the earliest offset rather than the latest (in a group: where nothing was
    /// committed yet).
    #[arg(long)]
    from_beginning: bool,
    /// Consume as a member of this consumer group, from its committed offsets, committing
    /// what was consumed on exit.
    #[arg(long, conflicts_with = "partition")]
    group: Option<String>,
    /// Consume this partition only (with --offset).
    #[arg(long)]
    partition: Option<i32>,
    /// Where to start in --partition: an offset, earliest or latest.
    #[arg(long, requires = "partition")]
    offset: Option<String>,
    /// Exit after this many records.
    #[arg(long)]
    max_messages: Option<usize>,
    /// Exit when no record has arrived for this long.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// The assignors offered in a group, in order of preference (repeatable): range,
    /// cooperative-sticky.
    #[arg(long = "assignor", default_values = ["range", "cooperative-sticky"])]
    assignors: Vec<Assignor>,
    /// read_uncommitted or read_committed.
    #[arg(long, default_value = "read_uncommitted")]
    isolation_level: String,
    /// What to print per record: {topic} {partition} {offset} {timestamp} {key} {value}
    /// {headers}, with \t and \n.
    #[arg(long, default_value = "{value}")]
    format: String,
}

pub fn render(format: &str, r: &ConsumedRecord) -> String {
    let text = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| "null".into())
    };
    let headers = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}:{}", text(v)))
        .collect::<Vec<_>>()
        .join(",");
    format
        .replace("\\t", "\t")
        .replace("\\n", "\n")
        .replace("{topic}", &r.topic)
        .replace("{partition}", &r.partition.to_string())
        .replace("{offset}", &r.offset.to_string())
        .replace("{timestamp}", &r.timestamp.to_string())
        .replace("{headers}", &headers)
        .replace("{key}", &text(&r.key))
        .replace("{value}", &text(&r.value))
}

/// The Fetch isolation level of `--isolation-level`.
pub fn parse_isolation(level: &str) -> anyhow::Result<i8> {
    match level {
        "read_uncommitted" => Ok(0),
        "read_committed" => Ok(1),
        other => {
            bail!("--isolation-level must be read_uncommitted or read_committed, not {other:?}")
        }
    }
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let isolation_level = parse_isolation(&args.isolation_level)?;
    let client = Arc::new(args.conn.client().await?);
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            isolation_level,
            ..ConsumerConfig::default()
        },
    );
    let mut member = None;
    if let Some(group) = &args.group {
        let mut m = GroupMember::new(
            client,
            group,
            vec![args.topic.clone()],
            &args.assignors,
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("cannot join group {group}"))?;
        let assigned = m
            .join()
            .await
            .with_context(|| format!("cannot join group {group}"))?;
        start_assigned(&mut consumer, &m, &assigned, args.from_beginning).await?;
        member = Some(m);
    }
    match (args.partition, args.offset.as_deref()) {
        _ if member.is_some() => {}
        (Some(p), Some("earliest")) => {
            consumer
                .assign(&args.topic, &[p], StartAt::Earliest)
                .await?
        }
        (Some(p), Some("latest")) => consumer.assign(&args.topic, &[p], StartAt::Latest).await?,
        (Some(p), Some(o)) => {
            let o: i64 = o
                .parse()
                .with_context(|| format!("--offset {o:?} is not an offset, earliest or latest"))?;
            consumer
                .assign(&args.topic, &[p], StartAt::Offset(o))
                .await?
        }
        (Some(p), None) => {
            consumer
                .assign(
                    &args.topic,
                    &[p],
                    if args.from_beginning {
                        StartAt::Earliest
                    } else {
                        StartAt::Latest
                    },
                )
                .await?
        }
        (None, _) => {
            consumer
                .assign(
                    &args.topic,
                    &[],
                    if args.from_beginning {
                        StartAt::Earliest
                    } else {
                        StartAt::Latest
                    },
                )
                .await?
        }
    }
    let mut printed = 0usize;
    // What was printed, per partition: the offsets a group commits.
    let mut delivered: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    let mut last = Instant::now();
    let stdout = std::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if args.max_messages.is_some_and(|m| printed >= m) {
            break;
        }
        if args
            .timeout_ms
            .is_some_and(|t| last.elapsed() >= Duration::from_millis(t))
        {
            break;
        }
        if let Some(m) = member.as_mut()
            && m.rebalance_needed()
        {
            // Hand back what was consumed, rejoin, then stop the partitions taken away and
            // start the new ones; the rest keep their positions (cooperative rebalancing).
            let _ = m.commit(&delivered).await;
            delivered.clear();
            let assigned = m.join().await.context("cannot rejoin the group")?;
            let current: Vec<_> = consumer.positions().keys().cloned().collect();
            for tp in current.iter().filter(|tp| !assigned.contains(tp)) {
                consumer.unassign(tp);
            }
            let added: Vec<_> = assigned
                .iter()
                .filter(|tp| !current.contains(tp))
                .cloned()
                .collect();
            start_assigned(&mut consumer, m, &added, args.from_beginning).await?;
        }
        let records = tokio::select! {
            r = consumer.poll() => r.with_context(|| format!("cannot consume {}", args.topic))?,
            _ = &mut ctrl_c => break,
        };
        if !records.is_empty() {
            last = Instant::now();
        }
        let mut out = stdout.lock();
        for r in records {
            if args.max_messages.is_some_and(|m| printed >= m) {
                break;
            }
            writeln!(out, "{}", render(&args.format, &r))?;
            delivered.insert((r.topic.clone(), r.partition), r.offset + 1);
            printed += 1;
        }
        out.flush()?;
    }
    if let Some(m) = member {
        m.commit(&delivered)
            .await
            .context("cannot commit the consumed offsets")?;
        m.leave().await.context("cannot leave the group")?;
    }
    eprintln!("Processed a total of {printed} messages");
    Ok(())
}

/// Starts each assigned partition at the group's committed offset, or at the reset point.
async fn start_assigned(
    consumer: &mut Consumer,
    member: &GroupMember,
    assigned: &[(String, i32)],
    from_beginning: bool,
) -> anyhow::Result<()> {
    let committed = member.committed(assigned).await?;
    for tp in assigned {
        match committed.get(tp) {
            Some(o) => consumer.assign_at(tp.clone(), *o).await?,
            None => {
                consumer
                    .assign(
                        &tp.0,
                        &[tp.1],
                        if from_beginning {
                            StartAt::Earliest
                        } else {
                            StartAt::Latest
                        },
                    )
                    .await?
            }
        }
    }
    Ok(())
}
