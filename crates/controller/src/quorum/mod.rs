//! The metadata quorum on openraft (0.9, pinned): a Raft log of metadata records under
//! `<metadata.log.dir>/__cluster_metadata-0`, applied to a metadata image on every node, and
//! compacted by snapshots of that image.
//!
//! openraft rather than TiKV's `raft`: it drives elections, replication and snapshot
//! transfer itself on tokio (which strom runs on), and asks the application only for its
//! storage (`log_store.rs`, `state_machine.rs`) and its transport, where `raft-rs` would have
//! strom write the event loop (ready/advance, persistence ordering, message pumping) by
//! hand: more room for exactly the mistakes a proven library is there to avoid. openraft's
//! own storage test suite runs against our log store and state machine.

// openraft's error types are large and its traits return them: the functions that feed them
// return the same type.
#![allow(clippy::result_large_err)]

pub mod active;
mod log_store;
pub mod network;
pub mod observer;
mod state_machine;

use std::io::Cursor;
use std::time::Duration;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

/// A batch of metadata records, encoded by `strom_metadata::codec`: one Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetadataBatch(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The Raft types of the metadata quorum: node ids are Kafka node ids, entries carry
    /// metadata batches, snapshots are encoded images.
    pub TypeConfig:
        D = MetadataBatch,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

pub(crate) type StorageError = openraft::StorageError<NodeId>;

/// A storage failure, for openraft.
pub(crate) fn io_error(
    verb: openraft::ErrorVerb,
    subject: openraft::ErrorSubject<NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

#[cfg(test)]
mod tests;

/// A running member of the metadata quorum: its Raft node, its state machine, and the
/// controller that decides while this node leads.
#[derive(Clone)]
pub struct Quorum {
    pub raft: Raft,
    pub state: StateMachine,
    pub node_id: NodeId,
    pub controller: std::sync::Arc<active::ActiveController>,
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    cluster_id: std::sync::Arc<str>,
}

/// Timers of the quorum, from Kafka's `controller.quorum.*` keys.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub election_timeout_ms: u64,
    /// Entries since the last snapshot before the next one (the log before it is purged).
    pub snapshot_every: u64,
    /// Bytes of records since the last snapshot before the next one
    /// (`metadata.log.max.record.bytes.between.snapshots`): the log is kept in memory until
    /// then, and a start replays it.
    pub snapshot_bytes: u64,
    /// The active controller's settings (broker.session.timeout.ms, ...).
    pub controller: crate::ControllerConfig,
    /// The cluster id of `meta.properties`: voters of another cluster are refused.
    pub cluster_id: String,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        QuorumConfig {
            election_timeout_ms: 1_000,
            snapshot_every: 10_000,
            snapshot_bytes: 20 << 20,
            controller: crate::ControllerConfig::default(),
            cluster_id: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("the metadata log in {dir}: {source}")]
    Storage {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the metadata quorum: {0}")]
    Raft(String),
}

impl Quorum {
    /// Starts this node's member of a quorum whose only voter it is (the embedded single
    /// node): its log and snapshots in `dir` (`<metadata.log.dir>/__cluster_metadata-0`),
    /// initialized on first start, and leader before this returns.
    pub async fn start_alone(
        node_id: NodeId,
        dir: &std::path::Path,
        config: QuorumConfig,
    ) -> Result<Quorum, QuorumError> {
        let voters = std::collections::BTreeMap::from([(node_id, String::new())]);
        Self::start(node_id, dir, voters, None, config).await
    }

    /// Starts this node's member of the quorum of `voters` (node id -> CONTROLLER address),
    /// serving the quorum's RPCs on `listener` when this node is a voter. Every voter
    /// initializes the same voter set on first start (safe in openraft: the same config).
    /// Returns once a leader is known: a node waits for its quorum to form.
    pub async fn start(
        node_id: NodeId,
        dir: &std::path::Path,
        voters: std::collections::BTreeMap<NodeId, String>,
        listener: Option<tokio::net::TcpListener>,
        config: QuorumConfig,
    ) -> Result<Quorum, QuorumError> {
        let storage = |source| QuorumError::Storage {
            dir: dir.display().to_string(),
            source,
        };
        let log = LogStore::open(dir).map_err(storage)?;
        let state =
            StateMachine::open(dir).map_err(|e| storage(std::io::Error::other(e.to_string())))?;
        let raft_config = openraft::Config {
            cluster_name: "strom".into(),
            heartbeat_interval: (config.election_timeout_ms / 4).max(10),
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .map_err(|e| QuorumError::Raft(e.to_string()))?;
        let raft = Raft::new(
            node_id,
            std::sync::Arc::new(raft_config),
            network::TcpNetwork {
                cluster_id: config.cluster_id.as_str().into(),
                ..Default::default()
            },
            log,
            state.clone(),
        )
        .await
        .map_err(|e| QuorumError::Raft(e.to_string()))?;
        let controller = std::sync::Arc::new(active::ActiveController::new(
            raft.clone(),
            state.clone(),
            node_id,
            config.controller,
            Duration::from_millis(config.controller.session_timeout_ms.max(0) as u64 / 4),
        ));
        if let Some(l) = listener {
            tokio::spawn(network::serve(
                raft.clone(),
                controller.clone(),
                config.cluster_id.as_str().into(),
                l,
            ));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Sessions are checked several times per timeout, so a fence comes at most a
        // quarter of a timeout late.
        let every = std::time::Duration::from_millis(
            (config.controller.session_timeout_ms as u64 / 4).clamp(10, 1_000),
        );
        tokio::spawn(snapshot_by_size(
            raft.clone(),
            state.clone(),
            config.snapshot_bytes,
            stopped.clone(),
        ));
        tokio::spawn(controller.clone().run_timers(stopped, every));
        let fail = |e: &dyn std::fmt::Display| QuorumError::Raft(e.to_string());
        let alone = voters.len() == 1 && voters.contains_key(&node_id);
        if !raft.is_initialized().await.map_err(|e| fail(&e))? {
            let members: std::collections::BTreeMap<NodeId, openraft::BasicNode> = voters
                .iter()
                .map(|(id, addr)| (*id, openraft::BasicNode::new(addr.clone())))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {}
                // Another voter's initialization reached this node first: the same config.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(fail(&e)),
            }
        }
        if alone {
            // Alone in the quorum, no election timeout needs to pass.
            raft.trigger().elect().await.map_err(|e| fail(&e))?;
        }
        let wait = if alone { 30 } else { 120 };
        let waiter = raft.wait(Some(std::time::Duration::from_secs(wait)));
        let elected = waiter.metrics(|m| m.current_leader.is_some(), "the quorum elects a leader");
        let others: Vec<String> = voters
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(_, addr)| addr.clone())
            .collect();
        tokio::select! {
            r = elected => { r.map_err(|e| fail(&e))?; }
            // A voter of another cluster refuses this node: say so now, not after the wait.
            why = other_cluster(&others, &config.cluster_id) => {
                let _ = raft.shutdown().await;
                return Err(QuorumError::Raft(why));
            }
        }
        Ok(Quorum {
            raft,
            state,
            node_id,
            controller,
            stop: std::sync::Arc::new(stop),
            cluster_id: config.cluster_id.as_str().into(),
        })
    }

    /// Asks the active controller, wherever it runs, retrying through leader changes for up
    /// to `timeout`.
    pub async fn call_controller(
        &self,
        req: active::BrokerRequest,
        timeout: std::time::Duration,
    ) -> Result<active::BrokerAnswer, QuorumError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.raft.metrics().borrow().clone();
            let attempt = match m.current_leader {
                Some(leader) if leader == self.node_id => {
                    Ok(self.controller.handle(req.clone()).await)
                }
                Some(leader) => match m.membership_config.membership().get_node(&leader) {
                    Some(node) if !node.addr.is_empty() => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        network::call_controller(
                            &node.addr,
                            &self.cluster_id,
                            &req,
                            left.min(std::time::Duration::from_secs(5)),
                        )
                        .await
                    }
                    _ => Err(format!("no address for the quorum leader {leader}")),
                },
                None => Err("no leader of the metadata quorum now".to_string()),
            };
            match attempt {
                Ok(active::BrokerAnswer::NotController { .. }) | Err(_)
                    if tokio::time::Instant::now() < deadline =>
                {
                    let _ = self
                        .raft
                        .wait(Some(std::time::Duration::from_millis(200)))
                        .metrics(|x| x.current_leader != m.current_leader, "another leader")
                        .await;
                }
                Ok(answer) => return Ok(answer),
                Err(e) => return Err(QuorumError::Raft(e)),
            }
        }
    }

    /// Commits `records` through the quorum; resolves with the image that includes them.
    pub async fn commit(
        &self,
        records: &[strom_metadata::image::Record],
    ) -> Result<std::sync::Arc<strom_metadata::image::MetadataImage>, QuorumError> {
        commit_records(&self.raft, &self.state, &self.cluster_id, records).await
    }

    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata quorum");
        }
    }
}

/// One replica of the metadata log, as DescribeQuorum shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    pub id: NodeId,
    /// -1 when this node does not know (it is not the leader).
    pub log_end_offset: i64,
}

/// The quorum as this node sees it, for DescribeQuorum and `strom cluster describe`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumStatus {
    pub leader: Option<NodeId>,
    /// The Raft term: Kafka's leader epoch of the metadata log.
    pub epoch: u64,
    /// The offset after the last committed entry.
    pub high_watermark: i64,
    pub voters: Vec<ReplicaStatus>,
    pub observers: Vec<ReplicaStatus>,
}

impl Quorum {
    pub fn status(&self) -> QuorumStatus {
        self.controller.status()
    }
}

/// The quorum as `raft` sees it.
pub(crate) fn status_of(raft: &Raft) -> QuorumStatus {
    {
        let m = raft.metrics().borrow().clone();
        let end = |index: Option<u64>| index.map_or(0, |i| i as i64 + 1);
        let known = |id: NodeId| -> i64 {
            if id == m.id {
                return end(m.last_log_index);
            }
            match &m.replication {
                Some(r) => r
                    .get(&id)
                    .map_or(-1, |matched| end(matched.map(|l| l.index))),
                None => -1,
            }
        };
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let observers: Vec<NodeId> = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains(id))
            .collect();
        QuorumStatus {
            leader: m.current_leader,
            epoch: m.current_term,
            high_watermark: end(m.last_applied.map(|l| l.index)),
            voters: voters
                .into_iter()
                .map(|id| ReplicaStatus {
                    id,
                    log_end_offset: known(id),
                })
                .collect(),
            observers: observers
                .into_iter()
                .map(|id| ReplicaStatus {
                    id,
                    log_end_offset: known(id),
                })
                .collect(),
        }
    }
}

impl Quorum {
    /// Follows the image as committed entries are applied here, whoever committed them.
    pub fn watch(
        &self,
    ) -> tokio::sync::watch::Receiver<std::sync::Arc<strom_metadata::image::MetadataImage>> {
        self.state.watch()
    }
}

/// Commits `records` through the quorum from this node; resolves with the image that
/// includes them, once this node has applied them.
async fn commit_records(
    raft: &Raft,
    state: &StateMachine,
    cluster_id: &str,
    records: &[strom_metadata::image::Record],
) -> Result<std::sync::Arc<strom_metadata::image::MetadataImage>, QuorumError> {
    let batch = MetadataBatch(strom_metadata::codec::encode(records));
    let log_id = commit_batch(raft, cluster_id, &batch).await?;
    raft.wait(Some(std::time::Duration::from_secs(30)))
        .applied_index_at_least(Some(log_id.index), "the change is applied here")
        .await
        .map_err(|e| QuorumError::Raft(e.to_string()))?;
    Ok(state.image())
}

/// Has the leader commit `batch`, from this voter: directly when it leads, else forwarded
/// to the leader. The log id it was committed at.
pub(crate) async fn commit_batch(
    raft: &Raft,
    cluster_id: &str,
    batch: &MetadataBatch,
) -> Result<openraft::LogId<NodeId>, QuorumError> {
    // Leadership may be changing: retry until a leader commits it, for up to 30 s.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let attempt = match raft.client_write(batch.clone()).await {
            Ok(r) => Ok(r.log_id),
            // Not the leader: the leader commits it, and this node waits until it has
            // applied it too, so that its own image shows the change.
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => match f.leader_node.map(|n| n.addr).filter(|a| !a.is_empty()) {
                Some(addr) => {
                    // A paused or partitioned leader never answers: give up on it as
                    // soon as this node learns of another leader, not after the timeout.
                    let leader = f.leader_id;
                    let waiter = raft.wait(Some(std::time::Duration::from_secs(10)));
                    let deposed = waiter.metrics(|m| m.current_leader != leader, "another leader");
                    tokio::select! {
                        r = network::forward_write(
                            &addr,
                            cluster_id,
                            batch,
                            std::time::Duration::from_secs(10),
                        ) => r,
                        Ok(_) = deposed => Err(format!("the leader at {addr} was replaced")),
                    }
                }
                None => Err("no leader of the metadata quorum now".to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(id) => return Ok(id),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(QuorumError::Raft(e));
            }
            Err(e) => {
                tracing::debug!(error = %e, "metadata commit to retry");
                let _ = raft
                    .wait(Some(std::time::Duration::from_millis(500)))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Resolves, with why, once one of the voters at `addrs` says it belongs to another
/// cluster; pends forever otherwise (unreachable voters are asked again).
async fn other_cluster(addrs: &[String], cluster_id: &str) -> String {
    let mut asked: Vec<&String> = addrs.iter().collect();
    loop {
        let mut still = Vec::new();
        for addr in asked {
            match network::hello(addr, cluster_id).await {
                network::Hello::Welcome => {}
                network::Hello::OtherCluster(why) => return why,
                network::Hello::Unreachable(_) => still.push(addr),
            }
        }
        if still.is_empty() {
            return std::future::pending().await;
        }
        asked = still;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Builds a snapshot once the records applied since the last one pass `limit` bytes, as
/// Kafka does: openraft's own policy counts entries, and one entry may carry the records of
/// thousands of partitions (every start adds one with a record per partition).
async fn snapshot_by_size(
    raft: Raft,
    state: StateMachine,
    limit: u64,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        // A trigger while one is being built is ignored; the build resets the count.
        if state.unsnapshotted_bytes() >= limit.max(1) && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}
