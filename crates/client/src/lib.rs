//! An async Kafka client over the Kafka wire protocol: connections with version negotiation,
//! cluster metadata and leader routing, admin operations. Used by the CLI and the tests, and
//! later by the replica fetchers; it works against any Kafka-compatible broker.

pub mod admin;
pub mod assignor;
pub mod connection;
pub mod consumer;
mod error;
pub mod fetch_records;
pub mod group;
mod metadata;
pub mod partitioner;
pub mod producer;
mod producer_batch;
mod producer_state;
pub mod txn_admin;

pub use connection::{Answer, Connection};
pub use error::{ClientError, Result, check, error_name};
pub use metadata::{BrokerMeta, ClusterMeta, PartitionMeta, TopicMeta};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

/// A client of one cluster: a connection per broker, opened on demand, and the metadata.
pub struct Client {
    bootstrap: Vec<String>,
    client_id: String,
    timeout: Duration,
    nodes: Mutex<HashMap<i32, Arc<Connection>>>,
    any: Mutex<Option<Arc<Connection>>>,
    brokers: std::sync::Mutex<HashMap<i32, String>>,
}

impl Client {
    /// Connects to the first reachable bootstrap server (`host:port[,host:port...]`).
    pub async fn connect(bootstrap: &str, client_id: &str, timeout: Duration) -> Result<Client> {
        let client = Client {
            bootstrap: bootstrap
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            client_id: client_id.to_string(),
            timeout,
            nodes: Mutex::new(HashMap::new()),
            any: Mutex::new(None),
            brokers: std::sync::Mutex::new(HashMap::new()),
        };
        client.any().await?;
        Ok(client)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection to some broker (the bootstrap one, first).
    pub async fn any(&self) -> Result<Arc<Connection>> {
        let mut any = self.any.lock().await;
        if let Some(c) = any.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let mut errors = Vec::new();
        for addr in &self.bootstrap {
            match Connection::connect(addr, &self.client_id, self.timeout).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    *any = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(ClientError::Unreachable(errors.join("; ")))
    }

    /// A connection to broker `node`, as the metadata names it.
    pub async fn node(&self, node: i32) -> Result<Arc<Connection>> {
        let mut nodes = self.nodes.lock().await;
        if let Some(c) = nodes.get(&node).filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let addr = self.brokers.lock().unwrap().get(&node).cloned();
        let addr = match addr {
            Some(a) => a,
            None => {
                drop(nodes);
                self.metadata(Some(&[])).await?;
                nodes = self.nodes.lock().await;
                self.brokers
                    .lock()
                    .unwrap()
                    .get(&node)
                    .cloned()
                    .ok_or_else(|| {
                        ClientError::Protocol(format!("broker {node} is not in the metadata"))
                    })?
            }
        };
        let c = Arc::new(Connection::connect(&addr, &self.client_id, self.timeout).await?);
        nodes.insert(node, c.clone());
        Ok(c)
    }

    /// Metadata for `topics` (all topics when `None`), remembering the brokers' addresses.
    pub async fn metadata(&self, topics: Option<&[String]>) -> Result<ClusterMeta> {
        self.metadata_with(topics, false).await
    }

    /// Metadata that may auto-create missing topics, as a producer's does.
    pub async fn metadata_with(
        &self,
        topics: Option<&[String]>,
        auto_create: bool,
    ) -> Result<ClusterMeta> {
        let meta = metadata::fetch(&*self.any().await?, topics, auto_create).await?;
        let mut brokers = self.brokers.lock().unwrap();
        for b in &meta.brokers {
            brokers.insert(b.id, format!("{}:{}", b.host, b.port));
        }
        Ok(meta)
    }
}
