//! `strom topics describe`: each topic's partitions (leader, replicas, ISR, offsets, size)
//! as kafka-topics.sh --describe shows them, with a reassignment's progress and, on a
//! broker's host (`--log-dir`), each partition's dirty ratio.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::json;
use strom_client::admin::{EARLIEST, LATEST, TOPIC};

use crate::admin::{Conn, hex, list_nodes};
use crate::output::{Table, print_json};

/// Which partitions `topics describe` shows: all, or those Kafka's flags of the same names
/// select (either one matching is enough).
#[derive(Clone, Copy)]
pub(crate) struct PartitionFilter {
    pub under_replicated: bool,
    pub unavailable: bool,
}

impl PartitionFilter {
    fn shows(&self, p: &strom_client::PartitionMeta) -> bool {
        if !self.under_replicated && !self.unavailable {
            return true;
        }
        (self.under_replicated && p.isr.len() < p.replicas.len())
            || (self.unavailable && p.leader < 0)
    }
}

pub(crate) async fn describe_topics(
    conn: Conn,
    topic: Option<String>,
    include_internal: bool,
    only: PartitionFilter,
    log_dir: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let wanted = topic.clone().map(|t| vec![t]);
    let meta = client.metadata(wanted.as_deref()).await?;
    let mut sizes = BTreeMap::new();
    // Each replica's size, by broker: how far a reassignment's new replicas have copied.
    let mut replica_sizes = BTreeMap::new();
    for b in &meta.brokers {
        if let Ok(s) = client.log_dir_sizes(b.id).await {
            for ((t, p), size) in &s {
                replica_sizes.insert((b.id, t.clone(), *p), *size);
            }
            sizes.extend(s);
        }
    }
    let mut out_json = Vec::new();
    let mut text = String::new();
    for t in meta
        .topics
        .iter()
        .filter(|t| topic.is_some() || include_internal || !t.internal)
        // With a filter, a topic none of whose partitions it selects is left out.
        .filter(|t| t.error != 0 || t.partitions.iter().any(|p| only.shows(p)))
    {
        if t.error != 0 {
            bail!(
                "topic {}: {}",
                t.name,
                strom_client::ClientError::Kafka {
                    code: t.error,
                    name: strom_client::error_name(t.error),
                    message: None
                }
            );
        }
        let starts: BTreeMap<i32, i64> = client
            .list_offsets(&t.name, EARLIEST)
            .await?
            .into_iter()
            .collect();
        let ends: BTreeMap<i32, i64> = client
            .list_offsets(&t.name, LATEST)
            .await?
            .into_iter()
            .collect();
        let configs = client
            .describe_configs(TOPIC, &t.name)
            .await
            .unwrap_or_default();
        let overrides: Vec<String> = configs
            .iter()
            .filter(|c| c.source == "DYNAMIC_TOPIC_CONFIG")
            .map(|c| format!("{}={}", c.name, c.value.clone().unwrap_or_default()))
            .collect();
        // The effective policy, whether set on the topic or inherited from the broker.
        let policy = configs
            .iter()
            .find(|c| c.name == "cleanup.policy")
            .and_then(|c| c.value.clone())
            .unwrap_or_else(|| "delete".into());
        // A server without reassignments (older, or another Kafka) shows none.
        let ongoing = client
            .list_partition_reassignments(Some(std::slice::from_ref(&t.name)))
            .await
            .unwrap_or_default();
        let rf = t.partitions.first().map(|p| p.replicas.len()).unwrap_or(0);
        let mut columns = vec![
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "LOG-START",
            "LOG-END",
            "SIZE",
        ];
        if !ongoing.is_empty() {
            columns.push("REASSIGNING");
        }
        if log_dir.is_some() {
            columns.push("DIRTY");
        }
        let mut table = Table::new(&columns);
        let mut parts = Vec::new();
        for p in t.partitions.iter().filter(|p| only.shows(p)) {
            let size = sizes.get(&(t.name.clone(), p.index)).copied();
            let (start, end) = (
                starts.get(&p.index).copied().unwrap_or(-1),
                ends.get(&p.index).copied().unwrap_or(-1),
            );
            let reassignment = ongoing.iter().find(|o| o.partition == p.index);
            let (adding, removing) = reassignment
                .map(|o| (o.adding.clone(), o.removing.clone()))
                .unwrap_or_default();
            // A new replica's progress: its size against the leader's.
            let leader_size = replica_sizes.get(&(p.leader, t.name.clone(), p.index));
            let progress: Vec<(i32, Option<f64>)> = adding
                .iter()
                .map(|r| {
                    let copied = replica_sizes.get(&(*r, t.name.clone(), p.index));
                    let pct = match (copied, leader_size) {
                        (Some(c), Some(l)) if *l > 0 => {
                            Some((*c as f64 / *l as f64 * 100.0).min(100.0))
                        }
                        (Some(_), Some(_)) => Some(100.0),
                        _ => None,
                    };
                    (*r, pct)
                })
                .collect();
            let mut row = vec![
                p.index.to_string(),
                p.leader.to_string(),
                list_nodes(&p.replicas),
                list_nodes(&p.isr),
                start.to_string(),
                end.to_string(),
                size.map(human_bytes).unwrap_or_else(|| "-".into()),
            ];
            if !ongoing.is_empty() {
                row.push(match reassignment {
                    None => "-".into(),
                    Some(_) => format!(
                        "adding {} removing {}",
                        progress
                            .iter()
                            .map(|(r, pct)| match pct {
                                Some(pct) => format!("{r} ({pct:.0}%)"),
                                None => r.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        list_nodes(&removing)
                    ),
                });
            }
            // Clean and dirty bytes of this host's replica, when asked and held here.
            let dirty = log_dir.as_ref().and_then(|d| {
                strom_storage::dirty_bytes_on_disk(&d.join(format!("{}-{}", t.name, p.index)))
            });
            let ratio = dirty.map(|(c, d)| {
                if c + d == 0 {
                    0.0
                } else {
                    d as f64 / (c + d) as f64
                }
            });
            if log_dir.is_some() {
                row.push(match ratio {
                    Some(r) => format!("{:.0}%", r * 100.0),
                    None => "-".into(),
                });
            }
            table.row(row);
            parts.push(json!({
                "dirty_ratio": ratio,
                "partition": p.index, "leader": p.leader, "leader_epoch": p.leader_epoch,
                "replicas": p.replicas, "isr": p.isr, "log_start_offset": start, "log_end_offset": end, "size_bytes": size,
                "adding_replicas": adding, "removing_replicas": removing,
                "adding_progress_pct": progress.iter().map(|(_, pct)| pct).collect::<Vec<_>>(),
            }));
        }
        text.push_str(&format!(
            "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tCleanupPolicy: {}\tConfigs: {}\n",
            t.name,
            hex(&t.id),
            t.partitions.len(),
            rf,
            policy,
            overrides.join(",")
        ));
        text.push_str(&table.render());
        text.push('\n');
        out_json.push(json!({
            "name": t.name, "topic_id": hex(&t.id), "internal": t.internal, "replication_factor": rf,
            "configs": overrides, "cleanup_policy": policy, "partitions": parts,
        }));
    }
    if json {
        print_json(&json!(out_json));
    } else {
        print!("{text}");
    }
    Ok(())
}

pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
