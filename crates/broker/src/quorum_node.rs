//! Starting this node's member of the controller quorum, from the KRaft settings; and a
//! node with the controller role only (`process.roles=controller`), which runs the quorum
//! and the active controller but no broker.

use std::path::Path;

use strom_controller::quorum::{Quorum, QuorumConfig};

use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::errors::{BrokerError, io};

/// The voters of `controller.quorum.voters`: node id -> CONTROLLER address.
pub(crate) fn voters(c: &BrokerConfig) -> std::collections::BTreeMap<u64, String> {
    c.kraft
        .voters
        .iter()
        .map(|v| (v.id as u64, format!("{}:{}", v.host, v.port)))
        .collect()
}

/// Starts this node's voter: its log under `<metadata.log.dir>/__cluster_metadata-0`, its
/// controller listener when the quorum has other voters; alone in its quorum (the embedded
/// default) otherwise.
pub(crate) async fn start_quorum(
    c: &BrokerConfig,
    cluster_id: &str,
) -> Result<Quorum, BrokerError> {
    if let Some(meta) = &c.kraft.metadata_log_dir
        && meta != &c.log_dir
    {
        check_metadata_dir(meta, c, cluster_id)?;
    }
    let dir = c
        .kraft
        .metadata_log_dir
        .clone()
        .unwrap_or_else(|| c.log_dir.clone())
        .join("__cluster_metadata-0");
    let qc = QuorumConfig {
        election_timeout_ms: c.kraft.election_timeout_ms,
        snapshot_bytes: c.kraft.snapshot_bytes,
        controller: strom_controller::ControllerConfig {
            session_timeout_ms: c.kraft.session_timeout_ms as i64,
            unclean_leader_election: c.unclean_leader_election,
            auto_leader_rebalance: c.auto_leader_rebalance,
            leader_imbalance_check_interval_ms: c.leader_imbalance_check_interval_ms,
            leader_imbalance_percent: c.leader_imbalance_percent,
            ..Default::default()
        },
        cluster_id: cluster_id.to_string(),
        ..Default::default()
    };
    if !c.kraft.multi_node(c.node_id) {
        return Quorum::start_alone(c.node_id as u64, &dir, qc)
            .await
            .map_err(|e| BrokerError::MetadataLog(e.to_string()));
    }
    let listener = match &c.kraft.controller_listener {
        Some(l) => {
            let host = if l.host.is_empty() {
                "0.0.0.0"
            } else {
                &l.host
            };
            Some(
                tokio::net::TcpListener::bind((host, l.port))
                    .await
                    .map_err(io(format!(
                        "cannot listen on the controller listener {host}:{}",
                        l.port
                    )))?,
            )
        }
        None => None,
    };
    Quorum::start(c.node_id as u64, &dir, voters(c), listener, qc)
        .await
        .map_err(|e| BrokerError::MetadataLog(e.to_string()))
}

/// A separate metadata log directory belongs to this node and to the cluster of its log
/// directory, as `strom storage format` wrote them; a node alone in its quorum formats it on
/// first start, as it does its log directory.
fn check_metadata_dir(dir: &Path, c: &BrokerConfig, cluster_id: &str) -> Result<(), BrokerError> {
    use crate::meta_properties as meta;
    match meta::read(dir)? {
        Some(m) if m.cluster_id != cluster_id => Err(BrokerError::InvalidConfig(format!(
            "{} belongs to cluster {}, but the log directory to cluster {cluster_id}; point metadata.log.dir at this cluster's directory",
            dir.join(meta::FILE).display(),
            m.cluster_id
        ))),
        Some(m) if m.node_id != c.node_id => Err(BrokerError::InvalidConfig(format!(
            "{} belongs to node {}, but this is node.id={}; point metadata.log.dir elsewhere or fix node.id",
            dir.join(meta::FILE).display(),
            m.node_id,
            c.node_id
        ))),
        Some(_) => Ok(()),
        None if c.kraft.multi_node(c.node_id) => Err(BrokerError::InvalidConfig(format!(
            "the metadata log directory {} is not formatted: run `strom storage format -t {cluster_id} -c <server.properties>` on this node",
            dir.display()
        ))),
        None => meta::write(
            dir,
            &meta::MetaProperties {
                cluster_id: cluster_id.to_string(),
                node_id: c.node_id,
                directory_id: Some(strom_metadata::uuid::random()),
            },
        ),
    }
}

/// A node with the controller role only.
pub struct ControllerNode {
    pub quorum: Quorum,
    pub cluster_id: String,
}

impl ControllerNode {
    /// Checks the node's formatted directory, then starts its voter; returns once the
    /// quorum has a leader.
    pub async fn start(config: &BrokerConfig) -> Result<ControllerNode, BrokerError> {
        config.check_one_log_dir()?;
        let dir = &config.log_dir;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let cluster_id = Broker::identity(dir, config)?;
        let quorum = start_quorum(config, &cluster_id).await?;
        Ok(ControllerNode { quorum, cluster_id })
    }
}
