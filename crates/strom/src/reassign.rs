//! `strom topics reassign`: Kafka's kafka-reassign-partitions.sh over
//! AlterPartitionReassignments and ListPartitionReassignments, with its JSON plans, and a
//! shortcut that spreads topics over a broker list in one step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use strom_client::Client;

use crate::admin::Conn;
use crate::output::{Table, print_json};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["generate", "execute", "verify", "cancel", "list"])))]
pub struct ReassignArgs {
    #[command(flatten)]
    conn: Conn,
    /// Propose a plan that spreads the topics of --topics-to-move-json-file (or --topic)
    /// over --broker-list; prints the current assignment and the proposal, changes nothing.
    #[arg(long)]
    generate: bool,
    /// Start the reassignment of --reassignment-json-file (or of the plan --topic and
    /// --broker-list make); prints the current assignment, to keep for a rollback.
    #[arg(long)]
    execute: bool,
    /// Say whether the reassignment of --reassignment-json-file is done.
    #[arg(long)]
    verify: bool,
    /// Cancel the reassignments of --reassignment-json-file still in progress: their
    /// partitions go back to their original replicas.
    #[arg(long)]
    cancel: bool,
    /// List the reassignments in progress.
    #[arg(long)]
    list: bool,
    /// A plan: {"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2]}]}.
    #[arg(long, value_name = "FILE")]
    reassignment_json_file: Option<PathBuf>,
    /// The topics to move: {"version":1,"topics":[{"topic":"t"}]}.
    #[arg(long, value_name = "FILE")]
    topics_to_move_json_file: Option<PathBuf>,
    /// A topic to move (instead of --topics-to-move-json-file); may be repeated.
    #[arg(long)]
    topic: Vec<String>,
    /// The brokers to spread the topics over, e.g. 4,5,6.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    broker_list: Vec<i32>,
    /// With --execute or --verify: wait until every partition has moved, with a progress
    /// bar.
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    json: bool,
}

/// One partition's replicas in a plan.
type Plan = BTreeMap<(String, i32), Vec<i32>>;

fn plan_json(plan: &Plan) -> Value {
    json!({
        "version": 1,
        "partitions": plan.iter().map(|((t, p), r)| json!({
            "topic": t, "partition": p, "replicas": r,
            "log_dirs": r.iter().map(|_| "any").collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn read_plan(path: &PathBuf) -> anyhow::Result<Plan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(parts) = v["partitions"].as_array() else {
        bail!(
            "{}: no \"partitions\" array; a plan looks like {{\"version\":1,\"partitions\":[{{\"topic\":\"t\",\"partition\":0,\"replicas\":[1,2]}}]}}",
            path.display()
        );
    };
    let mut plan = Plan::new();
    for (i, p) in parts.iter().enumerate() {
        let (Some(topic), Some(partition), Some(replicas)) = (
            p["topic"].as_str(),
            p["partition"].as_i64(),
            p["replicas"].as_array(),
        ) else {
            bail!(
                "{}: entry {i} needs \"topic\", \"partition\" and \"replicas\"",
                path.display()
            );
        };
        let replicas = replicas
            .iter()
            .map(|r| r.as_i64().map(|r| r as i32))
            .collect::<Option<Vec<i32>>>()
            .with_context(|| format!("{}: entry {i}: replicas are broker ids", path.display()))?;
        if plan
            .insert((topic.to_string(), partition as i32), replicas)
            .is_some()
        {
            bail!("{}: {topic}-{partition} appears twice", path.display());
        }
    }
    Ok(plan)
}

fn topics_to_move(args: &ReassignArgs) -> anyhow::Result<Vec<String>> {
    let mut topics = args.topic.clone();
    if let Some(path) = &args.topics_to_move_json_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let listed = v["topics"].as_array().with_context(|| {
            format!(
                "{}: no \"topics\" array; it looks like {{\"version\":1,\"topics\":[{{\"topic\":\"t\"}}]}}",
                path.display()
            )
        })?;
        for t in listed {
            topics.push(
                t["topic"]
                    .as_str()
                    .with_context(|| format!("{}: a topic without a name", path.display()))?
                    .to_string(),
            );
        }
    }
    if topics.is_empty() {
        bail!("name the topics to move: --topic or --topics-to-move-json-file");
    }
    Ok(topics)
}

/// The current replicas of every partition of `topics`.
async fn current(client: &Client, topics: &[String]) -> anyhow::Result<Plan> {
    let meta = client.metadata(Some(topics)).await?;
    let mut plan = Plan::new();
    for name in topics {
        let Some(t) = meta.topics.iter().find(|t| &t.name == name && t.error == 0) else {
            bail!("topic {name} does not exist");
        };
        for p in &t.partitions {
            plan.insert((name.clone(), p.index), p.replicas.clone());
        }
    }
    Ok(plan)
}

/// Each partition of `current` on as many of `brokers` as it has replicas, striped so
/// that leaders and replicas spread evenly (Kafka's rack-unaware assignment, without its
/// random start).
fn spread(current: &Plan, brokers: &[i32]) -> anyhow::Result<Plan> {
    let mut brokers = brokers.to_vec();
    brokers.sort_unstable();
    brokers.dedup();
    if brokers.is_empty() {
        bail!("--broker-list names no broker");
    }
    let mut plan = Plan::new();
    for (i, ((topic, p), replicas)) in current.iter().enumerate() {
        let rf = replicas.len();
        if rf > brokers.len() {
            bail!(
                "{topic}-{p} has {rf} replicas, more than the {} brokers of --broker-list",
                brokers.len()
            );
        }
        let n = brokers.len();
        let shift = 1 + (i / n) % (n - 1).max(1);
        let first = i % n;
        let mut r = vec![brokers[first]];
        for j in 1..rf {
            let mut k = (first + j * shift) % n;
            while r.contains(&brokers[k]) {
                k = (k + 1) % n;
            }
            r.push(brokers[k]);
        }
        plan.insert((topic.clone(), *p), r);
    }
    Ok(plan)
}

fn names(parts: impl IntoIterator<Item = String>) -> String {
    parts.into_iter().collect::<Vec<_>>().join(",")
}

/// The Kafka errors of `results` as one failure naming each partition, or nothing.
fn failures(results: &[(String, i32, i16, Option<String>)]) -> anyhow::Result<()> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.2 != 0)
        .map(|(t, p, code, message)| {
            format!(
                "{t}-{p}: {} ({})",
                message.clone().unwrap_or_default(),
                strom_client::error_name(*code)
            )
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    bail!(
        "not every partition was reassigned:\n  {}",
        failed.join("\n  ")
    )
}

/// Each partition of `plan`: done (its replicas are the plan's, no reassignment left), in
/// progress, or neither (its replicas are others, with no reassignment in progress).
async fn status(client: &Client, plan: &Plan) -> anyhow::Result<BTreeMap<(String, i32), String>> {
    let topics: Vec<String> = plan.keys().map(|(t, _)| t.clone()).collect();
    let ongoing = client.list_partition_reassignments(Some(&topics)).await?;
    let now = current(client, &dedup(topics)).await?;
    Ok(plan
        .iter()
        .map(|(key, target)| {
            let state = if ongoing
                .iter()
                .any(|o| o.topic == key.0 && o.partition == key.1)
            {
                "in progress".to_string()
            } else if now.get(key) == Some(target) {
                "completed".to_string()
            } else {
                format!(
                    "not in progress, but its replicas are {:?} rather than {target:?}",
                    now.get(key).cloned().unwrap_or_default()
                )
            };
            (key.clone(), state)
        })
        .collect())
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

async fn wait_done(client: &Client, plan: &Plan) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(plan.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} partitions moved",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // The brokers answering may not have the newest metadata yet: a partition neither
    // moved nor moving is given a few seconds before it is reported.
    let mut stray_since: Option<std::time::Instant> = None;
    loop {
        let s = status(client, plan).await?;
        let done = s.values().filter(|v| *v == "completed").count();
        bar.set_position(done as u64);
        match s
            .iter()
            .find(|(_, v)| *v != "completed" && *v != "in progress")
        {
            Some((key, v))
                if stray_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) =>
            {
                bar.abandon();
                bail!("{}-{} is {v}", key.0, key.1);
            }
            Some(_) => {
                stray_since.get_or_insert_with(std::time::Instant::now);
            }
            None => stray_since = None,
        }
        if done == plan.len() {
            bar.finish();
            return Ok(());
        }
        // Polling the cluster's progress for the bar.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(args: ReassignArgs) -> anyhow::Result<()> {
    let client = args.conn.client().await?;
    if args.list {
        let ongoing = client.list_partition_reassignments(None).await?;
        if args.json {
            print_json(&json!(
                ongoing
                    .iter()
                    .map(|o| json!({"topic": o.topic, "partition": o.partition, "replicas": o.replicas,
                        "adding_replicas": o.adding, "removing_replicas": o.removing}))
                    .collect::<Vec<_>>()
            ));
            return Ok(());
        }
        if ongoing.is_empty() {
            println!("No partition reassignment is in progress.");
            return Ok(());
        }
        let mut table = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]);
        for o in &ongoing {
            table.row(vec![
                o.topic.clone(),
                o.partition.to_string(),
                crate::admin::list_nodes(&o.replicas),
                crate::admin::list_nodes(&o.adding),
                crate::admin::list_nodes(&o.removing),
            ]);
        }
        print!("{}", table.render());
        return Ok(());
    }
    let plan = match (&args.reassignment_json_file, args.generate) {
        (Some(path), false) => read_plan(path)?,
        (Some(_), true) => bail!(
            "--generate makes a plan: give it --topic or --topics-to-move-json-file and --broker-list, not --reassignment-json-file"
        ),
        (None, _) if args.verify || args.cancel => {
            bail!("--verify and --cancel need the plan: --reassignment-json-file")
        }
        (None, _) => {
            if args.broker_list.is_empty() {
                bail!("--broker-list is needed to make a plan (or give --reassignment-json-file)");
            }
            let now = current(&client, &topics_to_move(&args)?).await?;
            let proposed = spread(&now, &args.broker_list)?;
            if args.generate {
                if args.json {
                    print_json(
                        &json!({"current": plan_json(&now), "proposed": plan_json(&proposed)}),
                    );
                } else {
                    println!(
                        "Current partition replica assignment\n{}\n",
                        plan_json(&now)
                    );
                    println!(
                        "Proposed partition reassignment configuration\n{}",
                        plan_json(&proposed)
                    );
                }
                return Ok(());
            }
            proposed
        }
    };
    if args.execute {
        let topics = dedup(plan.keys().map(|(t, _)| t.clone()).collect());
        let before = current(&client, &topics).await?;
        let before: Plan = before
            .into_iter()
            .filter(|(k, _)| plan.contains_key(k))
            .collect();
        let asked = plan
            .iter()
            .map(|((t, p), r)| (t.clone(), *p, Some(r.clone())))
            .collect();
        let results = client.alter_partition_reassignments(asked).await?;
        if args.json {
            print_json(
                &json!({"current": plan_json(&before), "results": results.iter().map(|(t, p, c, m)| json!({
                "topic": t, "partition": p, "error_code": c, "error": (*c != 0).then(|| strom_client::error_name(*c)), "message": m,
            })).collect::<Vec<_>>()}),
            );
        } else {
            println!(
                "Current partition replica assignment\n\n{}\n",
                plan_json(&before)
            );
            println!("Save this to use as the --reassignment-json-file option during rollback");
        }
        failures(&results)?;
        if !args.json {
            println!(
                "Successfully started partition reassignments for {}",
                names(plan.keys().map(|(t, p)| format!("{t}-{p}")))
            );
        }
        if args.wait {
            wait_done(&client, &plan).await?;
        }
        return Ok(());
    }
    if args.cancel {
        let ongoing = client.list_partition_reassignments(None).await?;
        let asked: Vec<(String, i32, Option<Vec<i32>>)> = plan
            .keys()
            .filter(|(t, p)| ongoing.iter().any(|o| &o.topic == t && o.partition == *p))
            .map(|(t, p)| (t.clone(), *p, None))
            .collect();
        let cancelled = names(asked.iter().map(|(t, p, _)| format!("{t}-{p}")));
        let results = if asked.is_empty() {
            Vec::new()
        } else {
            client.alter_partition_reassignments(asked).await?
        };
        failures(&results)?;
        if args.json {
            print_json(
                &json!({"cancelled": results.iter().map(|(t, p, _, _)| format!("{t}-{p}")).collect::<Vec<_>>()}),
            );
        } else if results.is_empty() {
            println!("No reassignment of the plan's partitions was in progress.");
        } else {
            println!("Successfully cancelled partition reassignments for: {cancelled}");
        }
        return Ok(());
    }
    // --verify
    if args.wait {
        wait_done(&client, &plan).await?;
    }
    let s = status(&client, &plan).await?;
    if args.json {
        print_json(&json!(
            s.iter()
                .map(|((t, p), v)| json!({"topic": t, "partition": p, "status": v}))
                .collect::<Vec<_>>()
        ));
    } else {
        println!("Status of partition reassignment:");
        for ((t, p), v) in &s {
            match v.as_str() {
                "completed" => println!("Reassignment of partition {t}-{p} is completed."),
                "in progress" => {
                    println!("Reassignment of partition {t}-{p} is still in progress.")
                }
                other => {
                    println!("There is no active reassignment of partition {t}-{p}: it is {other}.")
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_uses_every_broker_evenly_and_never_one_twice() {
        let current: Plan = (0..6).map(|p| (("t".to_string(), p), vec![1, 2])).collect();
        let plan = spread(&current, &[4, 5, 6]).unwrap();
        let mut leaders = BTreeMap::new();
        let mut replicas = BTreeMap::new();
        for r in plan.values() {
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
            *leaders.entry(r[0]).or_insert(0) += 1;
            for b in r {
                *replicas.entry(*b).or_insert(0) += 1;
            }
        }
        assert_eq!(leaders, [(4, 2), (5, 2), (6, 2)].into());
        assert_eq!(replicas, [(4, 4), (5, 4), (6, 4)].into());
        assert!(
            spread(&current, &[4]).is_err(),
            "two replicas on one broker"
        );
    }
}
