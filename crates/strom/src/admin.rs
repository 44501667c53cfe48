//! `strom topics`, `strom cluster`, `strom configs`: admin over the Kafka protocol, so they
//! work against any Kafka-compatible cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use strom_client::Client;
use strom_client::admin::{BROKER, ConfigOp, TOPIC};

use crate::output::{Table, print_json};

#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The broker to bootstrap from (host:port, comma-separated for several).
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    pub bootstrap_server: String,
    /// How long to wait for the cluster, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub request_timeout_ms: u64,
}

impl Conn {
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(
            &self.bootstrap_server,
            "strom-cli",
            Duration::from_millis(self.request_timeout_ms),
        )
        .await
        .with_context(|| format!("cannot connect to {}", self.bootstrap_server))
    }
}

fn parse_kv(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => bail!("{s:?} is not key=value"),
    }
}

#[derive(clap::Subcommand)]
pub enum TopicsCmd {
    /// List topics.
    ///
    /// Example: strom topics list --bootstrap-server 127.0.0.1:9092
    List {
        #[command(flatten)]
        conn: Conn,
        /// Also list internal topics such as __consumer_offsets.
        #[arg(long)]
        include_internal: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create a topic.
    ///
    /// Example: strom topics create --topic orders --partitions 6 --config retention.ms=86400000
    Create {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        /// Number of partitions (the broker's num.partitions when omitted).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replicas per partition (the broker's default.replication.factor when omitted).
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config, key=value; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Succeed quietly if the topic exists.
        #[arg(long)]
        if_not_exists: bool,
        /// Only check that the topic could be created.
        #[arg(long)]
        validate_only: bool,
    },
    /// Describe topics: partitions with leader, replicas, ISR, offsets and size.
    ///
    /// Example: strom topics describe --topic orders
    Describe {
        #[command(flatten)]
        conn: Conn,
        /// The topic (all topics when omitted).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        include_internal: bool,
        /// Only partitions whose ISR is smaller than their replica set.
        #[arg(long)]
        under_replicated_partitions: bool,
        /// Only partitions without a leader (their replicas' brokers are fenced or gone).
        #[arg(long)]
        unavailable_partitions: bool,
        /// Run on a broker's host: add each partition's dirty ratio (the share of its bytes
        /// the log cleaner has not compacted yet), read from the partition directories in
        /// this log dir. Read-only, safe beside the running broker.
        #[arg(long, value_name = "DIR")]
        log_dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and all its records.
    ///
    /// Example: strom topics delete --topic orders
    Delete {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
    },
    /// Add partitions to a topic.
    ///
    /// Example: strom topics alter --topic orders --partitions 12
    Alter {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        /// The new, larger number of partitions.
        #[arg(long)]
        partitions: i32,
    },
    /// Move leadership back to preferred replicas (the first of each partition's replicas),
    /// or elect a leader outside the ISR for partitions that have none (unclean: records
    /// the new leader lacks are lost). What kafka-leader-election.sh does.
    ///
    /// Examples:
    ///   strom topics elect-leaders --election-type preferred --all-topic-partitions
    ///   strom topics elect-leaders --election-type unclean --topic orders --partition 3
    ElectLeaders(crate::elect::ElectArgs),
    /// Move partitions' replicas to other brokers without taking them offline: the new
    /// replicas copy the log, then the old ones leave. What kafka-reassign-partitions.sh
    /// does, with its JSON plans.
    ///
    /// Examples:
    ///   strom topics reassign --topic orders --broker-list 4,5,6 --generate
    ///   strom topics reassign --topic orders --broker-list 4,5,6 --execute --wait
    ///   strom topics reassign --reassignment-json-file plan.json --execute
    ///   strom topics reassign --reassignment-json-file plan.json --verify
    ///   strom topics reassign --list
    Reassign(crate::reassign::ReassignArgs),
}

pub(crate) fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn list_nodes(nodes: &[i32]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn topics(cmd: TopicsCmd) -> anyhow::Result<()> {
    match cmd {
        TopicsCmd::List {
            conn,
            include_internal,
            json,
        } => {
            let meta = conn.client().await?.metadata(None).await?;
            let topics: Vec<_> = meta
                .topics
                .iter()
                .filter(|t| include_internal || !t.internal)
                .collect();
            if json {
                print_json(&json!(topics.iter().map(|t| json!({
                    "name": t.name,
                    "topic_id": hex(&t.id),
                    "partitions": t.partitions.len(),
                    "replication_factor": t.partitions.first().map(|p| p.replicas.len()).unwrap_or(0),
                    "internal": t.internal,
                })).collect::<Vec<_>>()));
            } else {
                let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICATION-FACTOR"]);
                for t in topics {
                    let rf = t.partitions.first().map(|p| p.replicas.len()).unwrap_or(0);
                    table.row(vec![
                        t.name.clone(),
                        t.partitions.len().to_string(),
                        rf.to_string(),
                    ]);
                }
                print!("{}", table.render());
            }
        }
        TopicsCmd::Create {
            conn,
            topic,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
            validate_only,
        } => {
            let configs: BTreeMap<String, String> = configs
                .iter()
                .map(|c| parse_kv(c))
                .collect::<anyhow::Result<_>>()?;
            let client = conn.client().await?;
            match client
                .create_topic(
                    &topic,
                    partitions,
                    replication_factor,
                    &configs,
                    validate_only,
                )
                .await
            {
                Ok(()) if validate_only => println!("Topic {topic} can be created."),
                Ok(()) => println!("Created topic {topic}."),
                Err(strom_client::ClientError::Kafka { code: 36, .. }) if if_not_exists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create topic {topic}")),
            }
        }
        TopicsCmd::ElectLeaders(args) => crate::elect::run(args).await?,
        TopicsCmd::Reassign(args) => crate::reassign::run(args).await?,
        TopicsCmd::Delete { conn, topic } => {
            conn.client()
                .await?
                .delete_topic(&topic)
                .await
                .with_context(|| format!("cannot delete topic {topic}"))?;
            println!("Deleted topic {topic}.");
        }
        TopicsCmd::Alter {
            conn,
            topic,
            partitions,
        } => {
            conn.client()
                .await?
                .create_partitions(&topic, partitions)
                .await
                .with_context(|| format!("cannot change the partitions of {topic}"))?;
            println!("Topic {topic} now has {partitions} partitions.");
        }
        TopicsCmd::Describe {
            conn,
            topic,
            include_internal,
            under_replicated_partitions,
            unavailable_partitions,
            log_dir,
            json,
        } => {
            let only = crate::describe::PartitionFilter {
                under_replicated: under_replicated_partitions,
                unavailable: unavailable_partitions,
            };
            crate::describe::describe_topics(conn, topic, include_internal, only, log_dir, json)
                .await?
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Show the cluster id, the controller, the brokers and the metadata quorum (leader,
    /// epoch, voters with their log end offsets and lag).
    ///
    /// Example: strom cluster describe
    Describe {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
}

pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    let ClusterCmd::Describe { conn, json } = cmd;
    let client = conn.client().await?;
    let meta = client.metadata(Some(&[])).await?;
    // Fenced brokers too, where DescribeCluster v2 exists (Kafka 4.0+, strom); else the
    // live ones Metadata lists.
    let brokers = match client.describe_cluster().await {
        Ok(b) => b,
        Err(_) => meta
            .brokers
            .iter()
            .map(|b| strom_client::admin::ClusterBroker {
                id: b.id,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
                fenced: false,
            })
            .collect(),
    };
    // A broker that is not Kafka 3.3+ (or strom) may not speak DescribeQuorum.
    let quorum = client.describe_quorum().await.ok();
    if json {
        print_json(&json!({
            "cluster_id": meta.cluster_id,
            "controller": meta.controller,
            "brokers": brokers.iter().map(|b| json!({"id": b.id, "host": b.host, "port": b.port, "rack": b.rack, "fenced": b.fenced})).collect::<Vec<_>>(),
            "quorum": quorum.as_ref().map(|q| json!({
                "leader": q.leader,
                "epoch": q.epoch,
                "high_watermark": q.high_watermark,
                "voters": q.voters.iter().map(|(id, leo)| json!({"id": id, "log_end_offset": leo, "lag": lag(q.high_watermark, *leo)})).collect::<Vec<_>>(),
                "observers": q.observers.iter().map(|(id, leo)| json!({"id": id, "log_end_offset": leo, "lag": lag(q.high_watermark, *leo)})).collect::<Vec<_>>(),
            })),
        }));
        return Ok(());
    }
    println!("Cluster id: {}", meta.cluster_id.unwrap_or_default());
    println!("Controller: {}", meta.controller);
    let mut t = Table::new(&["BROKER", "HOST", "PORT", "RACK", "STATE"]);
    for b in &brokers {
        t.row(vec![
            b.id.to_string(),
            b.host.clone(),
            b.port.to_string(),
            b.rack.clone().unwrap_or_else(|| "-".into()),
            if b.fenced { "fenced" } else { "live" }.to_string(),
        ]);
    }
    print!("{}", t.render());
    if let Some(q) = quorum {
        println!(
            "\nMetadata quorum: leader {}, epoch {}, high watermark {}",
            q.leader, q.epoch, q.high_watermark
        );
        let mut t = Table::new(&["NODE", "ROLE", "LOG-END-OFFSET", "LAG"]);
        for (role, replicas) in [("voter", &q.voters), ("observer", &q.observers)] {
            for (id, leo) in replicas {
                let role = if *id == q.leader { "leader" } else { role };
                let shown = |v: i64| {
                    if v < 0 {
                        "-".to_string()
                    } else {
                        v.to_string()
                    }
                };
                t.row(vec![
                    id.to_string(),
                    role.to_string(),
                    shown(*leo),
                    lag(q.high_watermark, *leo).map_or("-".into(), |l| l.to_string()),
                ]);
            }
        }
        print!("{}", t.render());
    }
    Ok(())
}

/// How far a replica's log is behind the high watermark; unknown offsets have no lag.
fn lag(high_watermark: i64, log_end_offset: i64) -> Option<i64> {
    (log_end_offset >= 0).then(|| (high_watermark - log_end_offset).max(0))
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Entity {
    /// A topic.
    #[arg(long)]
    topic: Option<String>,
    /// A broker, by node id.
    #[arg(long)]
    broker: Option<i32>,
    /// Every broker: the cluster-wide dynamic broker configs (kafka-configs.sh
    /// --entity-type brokers --entity-default).
    #[arg(long)]
    broker_defaults: bool,
}

impl Entity {
    fn resource(&self) -> (i8, String) {
        match (&self.topic, self.broker) {
            (Some(t), _) => (TOPIC, t.clone()),
            (None, Some(b)) => (BROKER, b.to_string()),
            (None, None) if self.broker_defaults => (BROKER, String::new()),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

#[derive(clap::Subcommand)]
pub enum ConfigsCmd {
    /// Show a topic's or broker's configs (the ones set explicitly, or --all).
    ///
    /// Examples:
    ///   strom configs describe --topic orders
    ///   strom configs describe --broker 0 --all
    ///   strom configs describe --broker-defaults
    #[command(verbatim_doc_comment)]
    Describe {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        entity: Entity,
        /// Every config with its value and source, defaults included.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change configs: set some (--add-config k=v,k2=v2) and remove others (--delete-config k).
    ///
    /// Examples:
    ///   strom configs alter --topic orders --add-config retention.ms=3600000 --delete-config segment.ms
    ///   strom configs alter --broker-defaults --add-config log.retention.ms=86400000
    #[command(verbatim_doc_comment)]
    Alter {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        entity: Entity,
        #[arg(long, value_name = "K=V[,K=V...]")]
        add_config: Vec<String>,
        #[arg(long, value_name = "K[,K...]")]
        delete_config: Vec<String>,
    },
}

pub async fn configs(cmd: ConfigsCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigsCmd::Describe {
            conn,
            entity,
            all,
            json,
        } => {
            let (kind, name) = entity.resource();
            let entries = conn
                .client()
                .await?
                .describe_configs(kind, &name)
                .await
                .with_context(|| format!("cannot describe the configs of {name}"))?;
            let shown: Vec<_> = entries
                .into_iter()
                .filter(|e| {
                    all || matches!(
                        e.source,
                        "DYNAMIC_TOPIC_CONFIG"
                            | "DYNAMIC_BROKER_CONFIG"
                            | "DYNAMIC_DEFAULT_BROKER_CONFIG"
                            | "STATIC_BROKER_CONFIG"
                    )
                })
                .collect();
            if json {
                print_json(&json!(shown.iter().map(|e| json!({
                    "name": e.name, "value": if e.sensitive { None } else { e.value.clone() }, "source": e.source, "read_only": e.read_only,
                })).collect::<Vec<_>>()));
            } else {
                let mut t = Table::new(&["NAME", "VALUE", "SOURCE"]);
                for e in shown {
                    let v = if e.sensitive {
                        "(sensitive)".to_string()
                    } else {
                        e.value.unwrap_or_else(|| "null".into())
                    };
                    t.row(vec![e.name, v, e.source.to_string()]);
                }
                print!("{}", t.render());
            }
        }
        ConfigsCmd::Alter {
            conn,
            entity,
            add_config,
            delete_config,
        } => {
            let (kind, name) = entity.resource();
            let mut ops = Vec::new();
            for item in add_config
                .iter()
                .flat_map(|s| s.split(','))
                .filter(|s| !s.is_empty())
            {
                let (k, v) = parse_kv(item)?;
                ops.push((k, ConfigOp::Set, Some(v)));
            }
            for k in delete_config
                .iter()
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                ops.push((k.to_string(), ConfigOp::Delete, None));
            }
            if ops.is_empty() {
                bail!("nothing to change: give --add-config and/or --delete-config");
            }
            conn.client()
                .await?
                .alter_configs(kind, &name, &ops)
                .await
                .with_context(|| format!("cannot alter the configs of {name}"))?;
            if name.is_empty() {
                println!("Completed updating default config for brokers in the cluster.");
            } else {
                println!("Completed updating config for {name}.");
            }
        }
    }
    Ok(())
}
