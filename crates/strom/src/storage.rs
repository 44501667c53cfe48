//! `strom storage`: what `kafka-storage.sh` does. `random-uuid` makes a cluster id;
//! `format` writes each log directory's identity (`meta.properties`: cluster id, node id,
//! a new directory id) before a cluster node first starts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use strom_broker::meta_properties::{self, MetaProperties};
use strom_broker::{BrokerConfig, parse_properties};

#[derive(clap::Subcommand)]
pub enum StorageCmd {
    /// Print a new cluster id (22 characters of URL-safe base64, as Kafka's).
    ///
    /// Example: strom storage format -t $(strom storage random-uuid) -c server.properties
    #[command(verbatim_doc_comment)]
    RandomUuid,
    /// Write meta.properties (cluster id, node id, directory id) into every log directory
    /// and the metadata log directory of a node, as kafka-storage.sh format does. Every node
    /// of a cluster is formatted with the same cluster id.
    ///
    /// Example: strom storage format -t MkU3OEVBNTcwNTJENDM2Qk -c server.properties
    #[command(verbatim_doc_comment)]
    Format {
        /// The cluster id (from `strom storage random-uuid`).
        #[arg(short = 't', long = "cluster-id")]
        cluster_id: String,
        /// The node's server.properties.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Skip directories that are already formatted instead of failing.
        #[arg(short = 'g', long)]
        ignore_formatted: bool,
    },
}

pub fn storage(cmd: StorageCmd) -> anyhow::Result<()> {
    match cmd {
        StorageCmd::RandomUuid => {
            println!("{}", strom_metadata::uuid::random());
            Ok(())
        }
        StorageCmd::Format {
            cluster_id,
            config,
            ignore_formatted,
        } => format(&cluster_id, &config, ignore_formatted),
    }
}

fn format(cluster_id: &str, config: &PathBuf, ignore_formatted: bool) -> anyhow::Result<()> {
    if strom_metadata::uuid::decode(cluster_id).is_none() {
        bail!(
            "{cluster_id:?} is not a cluster id (22 characters of URL-safe base64): make one with `strom storage random-uuid`"
        );
    }
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read the config file {}", config.display()))?;
    let props: BTreeMap<String, String> = parse_properties(&text, &config.display().to_string())?;
    let (c, _) = BrokerConfig::from_properties(&props)?;
    let mut dirs: Vec<PathBuf> = props
        .get("log.dirs")
        .or(props.get("log.dir"))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_else(|| vec![c.log_dir.clone()]);
    if let Some(m) = &c.kraft.metadata_log_dir
        && !dirs.contains(m)
    {
        dirs.push(m.clone());
    }
    // Check every directory before writing any: a refused format leaves nothing half done.
    let mut todo = Vec::new();
    for dir in dirs {
        match meta_properties::read(&dir)? {
            Some(m) if ignore_formatted => {
                println!(
                    "{} is already formatted (cluster {}, node {}): skipped",
                    dir.display(),
                    m.cluster_id,
                    m.node_id
                );
            }
            Some(m) => bail!(
                "{} is already formatted (cluster {}, node {}): pass --ignore-formatted to skip it",
                dir.display(),
                m.cluster_id,
                m.node_id
            ),
            None => todo.push(dir),
        }
    }
    for dir in todo {
        meta_properties::write(
            &dir,
            &MetaProperties {
                cluster_id: cluster_id.to_string(),
                node_id: c.node_id,
                directory_id: Some(strom_metadata::uuid::random()),
            },
        )?;
        println!(
            "Formatted {} for cluster {cluster_id}, node {}",
            dir.display(),
            c.node_id
        );
    }
    Ok(())
}
