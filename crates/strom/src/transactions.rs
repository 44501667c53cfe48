//! `strom transactions`: what Kafka's `kafka-transactions.sh` does. List and describe
//! transactional ids, describe a partition's producers, find transactions hanging in a
//! partition, and abort one.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::json;
use strom_client::Client;
use strom_client::txn_admin::{ProducerDescription, TransactionDescription, TransactionFilter};

use crate::admin::Conn;
use crate::output::{Table, print_json};

#[derive(clap::Subcommand)]
pub enum TransactionsCmd {
    /// List transactional ids with their producer id and state, from every broker
    ///
    /// Examples:
    ///   strom transactions list
    ///   strom transactions list --state Ongoing --duration-ms 60000
    #[command(verbatim_doc_comment)]
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only ids in this state (Empty, Ongoing, PrepareCommit, PrepareAbort,
        /// CompleteCommit, CompleteAbort); repeatable.
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only this producer id; repeatable.
        #[arg(long = "producer-id", value_name = "ID")]
        producer_ids: Vec<i64>,
        /// Only transactions open longer than this.
        #[arg(long, value_name = "MS")]
        duration_ms: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Describe a transactional id.
    ///
    /// Its producer id and epoch, state, timeout, and the open transaction's start and
    /// partitions.
    ///
    /// Example: strom transactions describe --transactional-id copier-1
    Describe {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        transactional_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Describe the producers a partition keeps state for.
    ///
    /// Epochs, last sequence and timestamp, coordinator epoch, and where their open
    /// transaction starts.
    ///
    /// Example: strom transactions describe-producers --topic orders --partition 0
    DescribeProducers {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        json: bool,
    },
    /// Find transactions hanging in a topic's partitions.
    ///
    /// Those open longer than the longest transaction timeout that their coordinator does
    /// not have open there: nothing will ever end them, and they hold back read_committed
    /// consumers. End them with `abort`.
    ///
    /// Examples:
    ///   strom transactions find-hanging --topic orders
    ///   strom transactions find-hanging --broker-id 0
    #[command(verbatim_doc_comment)]
    FindHanging {
        #[command(flatten)]
        conn: Conn,
        /// The topic to look at.
        #[arg(
            long,
            required_unless_present = "broker_id",
            conflicts_with = "broker_id"
        )]
        topic: Option<String>,
        /// Only this partition of --topic (all of them by default).
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        /// Every partition this broker leads, internal topics included.
        #[arg(long)]
        broker_id: Option<i32>,
        /// The brokers' transaction.max.timeout.ms, in minutes: younger transactions may
        /// still be ended by their producer.
        #[arg(long, default_value_t = 15, value_name = "MINUTES")]
        max_transaction_timeout: i64,
        #[arg(long)]
        json: bool,
    },
    /// Abort a hanging transaction in one partition with an abort marker
    ///
    /// Give the offset where it starts (from describe-producers or find-hanging), or the
    /// producer id, epoch and coordinator epoch.
    ///
    /// Examples:
    ///   strom transactions abort --topic orders --partition 0 --start-offset 1200
    ///   strom transactions abort --topic orders --partition 0 --producer-id 7 --producer-epoch 3 --coordinator-epoch 0
    #[command(verbatim_doc_comment)]
    Abort {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The first offset of the transaction to abort.
        #[arg(long, value_name = "OFFSET", conflicts_with = "producer_id")]
        start_offset: Option<i64>,
        /// The producer whose transaction to abort, with --producer-epoch and
        /// --coordinator-epoch.
        #[arg(long, requires_all = ["producer_epoch", "coordinator_epoch"])]
        producer_id: Option<i64>,
        #[arg(long)]
        producer_epoch: Option<i16>,
        #[arg(long)]
        coordinator_epoch: Option<i32>,
    },
}

use strom_storage::clock::now_ms;

pub async fn transactions(cmd: TransactionsCmd) -> anyhow::Result<()> {
    match cmd {
        TransactionsCmd::List {
            conn,
            states,
            producer_ids,
            duration_ms,
            json,
        } => {
            let filter = TransactionFilter {
                states,
                producer_ids,
                min_duration_ms: duration_ms.unwrap_or(-1),
            };
            let all = conn.client().await?.list_transactions(&filter).await?;
            if json {
                print_json(&json!(
                    all.iter()
                        .map(|t| json!({
                            "transactional_id": t.transactional_id,
                            "coordinator": t.coordinator,
                            "producer_id": t.producer_id,
                            "state": t.state,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                let mut table =
                    Table::new(&["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"]);
                for t in all {
                    table.row(vec![
                        t.transactional_id,
                        t.coordinator.to_string(),
                        t.producer_id.to_string(),
                        t.state,
                    ]);
                }
                print!("{}", table.render());
            }
        }
        TransactionsCmd::Describe {
            conn,
            transactional_id,
            json,
        } => {
            let d = conn
                .client()
                .await?
                .describe_transaction(&transactional_id)
                .await
                .with_context(|| format!("cannot describe transactional id {transactional_id}"))?;
            print_description(&d, json);
        }
        TransactionsCmd::DescribeProducers {
            conn,
            topic,
            partition,
            json,
        } => {
            let producers = conn
                .client()
                .await?
                .describe_producers(&topic, partition)
                .await
                .with_context(|| format!("cannot describe the producers of {topic}-{partition}"))?;
            print_producers(&producers, json);
        }
        TransactionsCmd::FindHanging {
            conn,
            topic,
            partition,
            broker_id,
            max_transaction_timeout,
            json,
        } => {
            let client = conn.client().await?;
            let partitions = match (topic, broker_id) {
                (Some(topic), _) => match partition {
                    Some(p) => vec![(topic, p)],
                    None => topic_partitions(&client, &topic).await?,
                },
                (None, Some(broker)) => led_by(&client, broker).await?,
                (None, None) => bail!("give --topic or --broker-id"),
            };
            find_hanging(&client, partitions, max_transaction_timeout, json).await?
        }
        TransactionsCmd::Abort {
            conn,
            topic,
            partition,
            start_offset,
            producer_id,
            producer_epoch,
            coordinator_epoch,
        } => {
            let client = conn.client().await?;
            let (pid, epoch, coordinator_epoch) = match (start_offset, producer_id) {
                (Some(offset), _) => {
                    let producers = client.describe_producers(&topic, partition).await?;
                    let Some(p) = producers
                        .iter()
                        .find(|p| offset >= 0 && p.txn_start_offset == offset)
                    else {
                        bail!(
                            "no transaction starts at offset {offset} in {topic}-{partition}: see `strom transactions describe-producers --topic {topic} --partition {partition}`"
                        );
                    };
                    // No marker yet means coordinator epoch -1: the marker says 0, as Kafka's
                    // admin client writes it.
                    (
                        p.producer_id,
                        p.producer_epoch as i16,
                        p.coordinator_epoch.max(0),
                    )
                }
                (None, Some(pid)) => (
                    pid,
                    producer_epoch.unwrap_or_default(),
                    coordinator_epoch.unwrap_or_default(),
                ),
                (None, None) => bail!("give --start-offset, or --producer-id with its epochs"),
            };
            client
                .abort_transaction(&topic, partition, pid, epoch, coordinator_epoch)
                .await
                .with_context(|| {
                    format!("cannot abort producer {pid}'s transaction in {topic}-{partition}")
                })?;
            println!(
                "Aborted producer {pid}'s transaction (epoch {epoch}) in {topic}-{partition}."
            );
        }
    }
    Ok(())
}

fn print_description(d: &TransactionDescription, json: bool) {
    let now = now_ms();
    let open = !matches!(
        d.state.as_str(),
        "Empty" | "CompleteCommit" | "CompleteAbort"
    );
    let duration = (open && d.start_time_ms >= 0).then(|| now - d.start_time_ms);
    let partitions: Vec<String> = d
        .partitions
        .iter()
        .map(|(t, p)| format!("{t}-{p}"))
        .collect();
    if json {
        print_json(&json!({
            "transactional_id": d.transactional_id,
            "coordinator": d.coordinator,
            "producer_id": d.producer_id,
            "producer_epoch": d.producer_epoch,
            "state": d.state,
            "timeout_ms": d.timeout_ms,
            "start_time_ms": d.start_time_ms,
            "duration_ms": duration,
            "partitions": partitions,
        }));
        return;
    }
    let mut t = Table::new(&[
        "TRANSACTIONAL-ID",
        "COORDINATOR",
        "PRODUCER-ID",
        "EPOCH",
        "STATE",
        "TIMEOUT-MS",
        "OPEN-FOR-MS",
        "PARTITIONS",
    ]);
    t.row(vec![
        d.transactional_id.clone(),
        d.coordinator.to_string(),
        d.producer_id.to_string(),
        d.producer_epoch.to_string(),
        d.state.clone(),
        d.timeout_ms.to_string(),
        duration.map_or("-".into(), |ms| ms.to_string()),
        if partitions.is_empty() {
            "-".into()
        } else {
            partitions.join(",")
        },
    ]);
    print!("{}", t.render());
}

fn dash_if_negative(v: i64) -> String {
    if v < 0 { "-".into() } else { v.to_string() }
}

fn print_producers(producers: &[ProducerDescription], json: bool) {
    if json {
        print_json(&json!(
            producers
                .iter()
                .map(|p| json!({
                    "producer_id": p.producer_id,
                    "producer_epoch": p.producer_epoch,
                    "last_sequence": p.last_sequence,
                    "last_timestamp": p.last_timestamp,
                    "coordinator_epoch": p.coordinator_epoch,
                    "current_transaction_start_offset": p.txn_start_offset,
                }))
                .collect::<Vec<_>>()
        ));
        return;
    }
    let mut t = Table::new(&[
        "PRODUCER-ID",
        "EPOCH",
        "LAST-SEQUENCE",
        "LAST-TIMESTAMP",
        "COORDINATOR-EPOCH",
        "TXN-START-OFFSET",
    ]);
    for p in producers {
        t.row(vec![
            p.producer_id.to_string(),
            p.producer_epoch.to_string(),
            dash_if_negative(p.last_sequence as i64),
            dash_if_negative(p.last_timestamp),
            dash_if_negative(p.coordinator_epoch as i64),
            dash_if_negative(p.txn_start_offset),
        ]);
    }
    print!("{}", t.render());
}

/// A transaction open in a partition, as find-hanging reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub topic: String,
    pub partition: i32,
    pub producer: ProducerDescription,
}

/// Which of the partitions' long-open transactions are hanging: their producer id belongs to
/// no transactional id (`owners`), or its coordinator does not have this partition in that
/// producer's transaction (`described`), as Kafka's find-hanging decides.
pub fn hanging(
    open: Vec<Open>,
    owners: &BTreeMap<i64, String>,
    described: &BTreeMap<String, TransactionDescription>,
) -> Vec<Open> {
    open.into_iter()
        .filter(|o| {
            let tracked = owners
                .get(&o.producer.producer_id)
                .and_then(|id| described.get(id))
                // Whatever its state: a transaction being committed or aborted keeps the
                // partitions its markers have yet to reach, and a timed-out one has a bumped
                // epoch. Its coordinator will end it there; an abort could contradict it.
                .is_some_and(|d| {
                    d.producer_id == o.producer.producer_id
                        && d.partitions.contains(&(o.topic.clone(), o.partition))
                });
            !tracked
        })
        .collect()
}

async fn find_hanging(
    client: &Client,
    partitions: Vec<(String, i32)>,
    max_timeout_minutes: i64,
    json: bool,
) -> anyhow::Result<()> {
    let older_than = now_ms() - max_timeout_minutes * 60_000;
    let mut open = Vec::new();
    for (topic, p) in partitions {
        for producer in client.describe_producers(&topic, p).await? {
            // The last write of a producer with a transaction open here is no older than
            // the transaction: a recent one may still be ended by its producer.
            if producer.txn_start_offset >= 0 && producer.last_timestamp < older_than {
                open.push(Open {
                    topic: topic.clone(),
                    partition: p,
                    producer,
                });
            }
        }
    }
    let mut owners = BTreeMap::new();
    let mut described = BTreeMap::new();
    if !open.is_empty() {
        let filter = TransactionFilter {
            producer_ids: open.iter().map(|o| o.producer.producer_id).collect(),
            min_duration_ms: -1,
            ..Default::default()
        };
        for t in client.list_transactions(&filter).await? {
            match client.describe_transaction(&t.transactional_id).await {
                Ok(d) => {
                    described.insert(t.transactional_id.clone(), d);
                }
                // Gone since it was listed: nothing tracks its transaction any more.
                Err(strom_client::ClientError::Kafka { code: 105, .. }) => {}
                // Anything else (a coordinator moving, say) says nothing about it: a
                // transaction wrongly called hanging could be aborted by hand.
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot describe transactional id {}", t.transactional_id)
                    });
                }
            }
            owners.insert(t.producer_id, t.transactional_id);
        }
    }
    let found = hanging(open, &owners, &described);
    if json {
        print_json(&json!(
            found
                .iter()
                .map(|o| json!({
                    "topic": o.topic,
                    "partition": o.partition,
                    "producer_id": o.producer.producer_id,
                    "producer_epoch": o.producer.producer_epoch,
                    "coordinator_epoch": o.producer.coordinator_epoch,
                    "start_offset": o.producer.txn_start_offset,
                    "last_timestamp": o.producer.last_timestamp,
                }))
                .collect::<Vec<_>>()
        ));
        return Ok(());
    }
    let mut t = Table::new(&[
        "TOPIC",
        "PARTITION",
        "PRODUCER-ID",
        "EPOCH",
        "COORDINATOR-EPOCH",
        "START-OFFSET",
        "LAST-TIMESTAMP",
    ]);
    for o in &found {
        t.row(vec![
            o.topic.clone(),
            o.partition.to_string(),
            o.producer.producer_id.to_string(),
            o.producer.producer_epoch.to_string(),
            o.producer.coordinator_epoch.to_string(),
            o.producer.txn_start_offset.to_string(),
            o.producer.last_timestamp.to_string(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn topic_partitions(client: &Client, topic: &str) -> anyhow::Result<Vec<(String, i32)>> {
    let meta = client.metadata(Some(&[topic.to_string()])).await?;
    let t = meta
        .topic(topic)
        .with_context(|| format!("topic {topic} does not exist"))?;
    strom_client::check(t.error, Some(format!("topic {topic}")))?;
    Ok(t.partitions
        .iter()
        .map(|p| (topic.to_string(), p.index))
        .collect())
}

/// Every partition that broker `broker` leads.
async fn led_by(client: &Client, broker: i32) -> anyhow::Result<Vec<(String, i32)>> {
    let meta = client.metadata(None).await?;
    if !meta.brokers.iter().any(|b| b.id == broker) {
        bail!("there is no broker {broker} in the cluster");
    }
    Ok(meta
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.leader == broker)
                .map(|p| (t.name.clone(), p.index))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(partition: i32, pid: i64, epoch: i32) -> Open {
        Open {
            topic: "t".into(),
            partition,
            producer: ProducerDescription {
                producer_id: pid,
                producer_epoch: epoch,
                last_sequence: 3,
                last_timestamp: 1,
                coordinator_epoch: 0,
                txn_start_offset: 10,
            },
        }
    }

    fn described(
        id: &str,
        pid: i64,
        epoch: i16,
        state: &str,
        partitions: &[i32],
    ) -> TransactionDescription {
        TransactionDescription {
            transactional_id: id.into(),
            coordinator: 0,
            state: state.into(),
            producer_id: pid,
            producer_epoch: epoch,
            timeout_ms: 60_000,
            start_time_ms: 1,
            partitions: partitions.iter().map(|p| ("t".to_string(), *p)).collect(),
        }
    }

    #[test]
    fn a_transaction_is_hanging_unless_its_coordinator_still_has_the_partition() {
        let owners: BTreeMap<i64, String> = [
            (1, "a".into()),
            (2, "b".into()),
            (3, "c".into()),
            (4, "d".into()),
        ]
        .into();
        let described: BTreeMap<String, TransactionDescription> = [
            ("a".to_string(), described("a", 1, 0, "Ongoing", &[0])),
            ("b".to_string(), described("b", 2, 0, "CompleteAbort", &[])),
            ("c".to_string(), described("c", 3, 1, "PrepareAbort", &[0])),
            ("d".to_string(), described("d", 4, 0, "Ongoing", &[1])),
        ]
        .into();
        let candidates = vec![
            open(0, 1, 0), // tracked: not hanging
            open(0, 2, 0), // its transactional id moved on
            open(0, 3, 0), // fenced by a timeout, its abort still to be written here
            open(0, 4, 0), // the coordinator's transaction is elsewhere
            open(0, 5, 0), // no transactional id at all
        ];
        let found: Vec<i64> = hanging(candidates, &owners, &described)
            .iter()
            .map(|o| o.producer.producer_id)
            .collect();
        assert_eq!(found, vec![2, 4, 5]);
    }
}
