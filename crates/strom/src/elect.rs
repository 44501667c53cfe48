//! `strom topics elect-leaders`: Kafka's kafka-leader-election.sh over ElectLeaders.

use anyhow::bail;
use serde_json::json;

use crate::admin::Conn;

/// Kafka's code for a partition already led by the replica an election would choose.
const ELECTION_NOT_NEEDED: i16 = 84;
use crate::output::{Table, print_json};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ElectionType {
    /// Leadership back to each partition's first replica, when it is live and in the ISR.
    Preferred,
    /// A live replica outside the ISR for partitions without a leader; may lose records.
    Unclean,
}

#[derive(clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, value_enum, ignore_case = true)]
    election_type: ElectionType,
    /// The topic whose partitions to elect (all of them, or --partition's).
    #[arg(long, conflicts_with = "all_topic_partitions")]
    topic: Option<String>,
    /// One partition of --topic.
    #[arg(long, requires = "topic")]
    partition: Option<i32>,
    /// Every partition of every topic.
    #[arg(long)]
    all_topic_partitions: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ElectArgs) -> anyhow::Result<()> {
    let client = args.conn.client().await?;
    let partitions = match (&args.topic, args.partition, args.all_topic_partitions) {
        (None, _, true) => None,
        (Some(t), Some(p), _) => Some(vec![(t.clone(), p)]),
        (Some(t), None, _) => {
            let meta = client.metadata(Some(std::slice::from_ref(t))).await?;
            let Some(topic) = meta.topics.iter().find(|x| &x.name == t) else {
                bail!("topic {t} does not exist");
            };
            Some(
                topic
                    .partitions
                    .iter()
                    .map(|p| (t.clone(), p.index))
                    .collect(),
            )
        }
        (None, _, false) => {
            bail!("name the partitions: --topic (and --partition), or --all-topic-partitions")
        }
    };
    let preferred = args.election_type == ElectionType::Preferred;
    let results = client.elect_leaders(preferred, partitions).await?;
    let failed = results
        .iter()
        .filter(|r| r.2 != 0 && r.2 != ELECTION_NOT_NEEDED)
        .count();
    if args.json {
        print_json(&json!(
            results
                .iter()
                .map(|(t, p, code, message)| json!({
                    "topic": t, "partition": p, "error_code": code, "error": message,
                }))
                .collect::<Vec<_>>()
        ));
    } else if results.is_empty() {
        println!("Every partition already has the leader asked for: nothing to elect.");
    } else {
        let mut table = Table::new(&["TOPIC", "PARTITION", "RESULT"]);
        for (t, p, code, message) in &results {
            let outcome = match *code {
                0 => "elected".to_string(),
                c if c == ELECTION_NOT_NEEDED => "already led by the replica asked for".to_string(),
                c => format!(
                    "{} ({c}){}",
                    strom_client::error_name(c),
                    message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            };
            table.row(vec![t.clone(), p.to_string(), outcome]);
        }
        print!("{}", table.render());
    }
    if failed > 0 {
        bail!("{failed} partition(s) could not be elected");
    }
    Ok(())
}
