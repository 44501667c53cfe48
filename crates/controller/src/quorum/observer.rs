//! A node outside the quorum (a broker without the controller role) follows the metadata
//! as an observer: it fetches the image from the voters, long-polling for the next change
//! (Kafka's brokers fetch the metadata log the same way, without a vote). Its changes go to
//! a voter, which has the leader commit them; its registration and heartbeats go to the
//! active controller.
//!
//! An observer a little behind gets the records of the entries it misses, applied to its
//! image in order (a change to one topic among thousands costs that topic, not the whole
//! image); one further behind than the voter remembers, or just starting, gets the whole
//! image (the records of `MetadataImage::to_records`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strom_metadata::image::{MetadataImage, Record};
use tokio::sync::watch;

use super::active::{BrokerAnswer, BrokerRequest};
use super::{NodeId, QuorumError, QuorumStatus, network};

/// An observer asks a voter for the image once it is past `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    pub node: NodeId,
    /// The offset of the image the observer has (0: none).
    pub after: u64,
    pub max_wait_ms: u64,
    /// Only the quorum's status, at once (DescribeQuorum forwarded to the leader, which
    /// alone knows the voters' progress): the asker is not an observer.
    #[serde(default)]
    pub status_only: bool,
    /// The observer applies the entries after `after` (`FetchAnswer::entries`) when the
    /// voter still has them; an observer from before entries were sent gets whole images.
    #[serde(default)]
    pub entries_ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchAnswer {
    /// The offset of the voter's image.
    pub offset: u64,
    /// The image's records (`codec`), when `offset` is past the request's `after` and the
    /// entries in between are not sent.
    pub image: Option<Vec<u8>>,
    /// The records (`codec`) of each entry after the request's `after` up to `offset`, in
    /// order: applied to the image at `after`, they make the image at `offset`.
    #[serde(default)]
    pub entries: Option<Vec<Vec<u8>>>,
    pub status: QuorumStatus,
}

pub struct Observer {
    node_id: NodeId,
    voters: BTreeMap<NodeId, String>,
    cluster_id: Arc<str>,
    offset: AtomicU64,
    image: watch::Sender<Arc<MetadataImage>>,
    status: std::sync::Mutex<QuorumStatus>,
    stop: watch::Sender<bool>,
    /// controller.quorum.fetch.timeout.ms: how long a voter may take to answer a fetch
    /// beyond its long poll before the next voter is asked.
    fetch_timeout: Duration,
}

impl Observer {
    /// Follows the quorum of `voters` (id -> CONTROLLER address); returns once a first
    /// image arrived, and keeps it current until `shutdown`. A voter that has not answered
    /// a fetch `fetch_timeout` after its long poll is given up for the next one.
    pub async fn start(
        node_id: NodeId,
        voters: BTreeMap<NodeId, String>,
        cluster_id: &str,
        fetch_timeout: Duration,
    ) -> Result<Arc<Observer>, QuorumError> {
        let observer = Arc::new(Observer {
            node_id,
            voters,
            cluster_id: cluster_id.into(),
            offset: AtomicU64::new(0),
            image: watch::channel(Arc::default()).0,
            status: std::sync::Mutex::new(QuorumStatus {
                leader: None,
                epoch: 0,
                high_watermark: 0,
                voters: vec![],
                observers: vec![],
            }),
            stop: watch::channel(false).0,
            fetch_timeout,
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        loop {
            for addr in observer.voters.values() {
                match observer.fetch_from(addr, 0).await {
                    Ok(()) => {
                        tokio::spawn(observer.clone().follow());
                        return Ok(observer);
                    }
                    Err(e) if e.contains("another cluster") => return Err(QuorumError::Raft(e)),
                    Err(e) => last = e,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QuorumError::Raft(format!(
                    "no voter of the metadata quorum answered in 120 s: {last}"
                )));
            }
            // Voters may still be starting: ask again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One fetch from `addr`, waiting up to `wait_ms` for a change; applies what comes.
    async fn fetch_from(&self, addr: &str, wait_ms: u64) -> Result<(), String> {
        let after = self.offset.load(Ordering::SeqCst);
        let req = FetchRequest {
            node: self.node_id,
            after,
            max_wait_ms: wait_ms,
            status_only: false,
            entries_ok: true,
        };
        let answer = network::fetch_image(
            addr,
            &self.cluster_id,
            &req,
            Duration::from_millis(wait_ms) + self.fetch_timeout,
        )
        .await?;
        let next = if answer.offset <= after {
            None
        } else if let Some(entries) = answer.entries {
            // Only one task fetches: the image is still the one at `after`.
            let mut image = (*self.image()).clone();
            for bytes in entries.iter().filter(|b| !b.is_empty()) {
                let records = strom_metadata::codec::decode(bytes)
                    .ok_or_else(|| format!("{addr} sent a damaged metadata entry"))?;
                image = image.apply(&records).0;
            }
            Some(image)
        } else if let Some(bytes) = answer.image {
            let records = strom_metadata::codec::decode(&bytes)
                .ok_or_else(|| format!("{addr} sent a damaged metadata image"))?;
            Some(MetadataImage::default().apply(&records).0)
        } else {
            None
        };
        if let Some(mut image) = next {
            image.offset = answer.offset;
            self.offset.store(answer.offset, Ordering::SeqCst);
            self.image.send_replace(Arc::new(image));
        }
        *self.status.lock().unwrap() = answer.status;
        Ok(())
    }

    /// The voter to ask first: the leader when known.
    fn preferred(&self) -> Vec<&String> {
        let leader = self.status.lock().unwrap().leader;
        let mut addrs: Vec<(bool, &String)> = self
            .voters
            .iter()
            .map(|(id, a)| (Some(*id) != leader, a))
            .collect();
        addrs.sort();
        addrs.into_iter().map(|(_, a)| a).collect()
    }

    async fn follow(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let mut fetched = false;
            for addr in self.preferred() {
                let attempt = tokio::select! {
                    r = self.fetch_from(addr, 500) => r,
                    _ = stop.changed() => return,
                };
                match attempt {
                    Ok(()) => {
                        fetched = true;
                        break;
                    }
                    Err(e) => tracing::debug!(addr, error = %e, "metadata fetch to retry"),
                }
            }
            if !fetched {
                // No voter answered: back off before the next round.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.subscribe()
    }

    /// The quorum as the last voter that answered described it.
    pub fn status(&self) -> QuorumStatus {
        self.status.lock().unwrap().clone()
    }

    /// Commits `records` through a voter; resolves once this observer's image includes
    /// them.
    pub async fn commit(&self, records: &[Record]) -> Result<Arc<MetadataImage>, QuorumError> {
        let batch = super::MetadataBatch(strom_metadata::codec::encode(records));
        let mut last = String::new();
        for addr in self.preferred() {
            match network::forward_write(addr, &self.cluster_id, &batch, Duration::from_secs(30))
                .await
            {
                Ok(log_id) => {
                    let wanted = log_id.index + 1;
                    let mut rx = self.watch();
                    let caught_up = rx.wait_for(|_| self.offset.load(Ordering::SeqCst) >= wanted);
                    tokio::time::timeout(Duration::from_secs(30), caught_up)
                        .await
                        .map_err(|_| {
                            QuorumError::Raft(
                                "committed, but this node's metadata did not show it within 30 s"
                                    .into(),
                            )
                        })?
                        .map_err(|_| QuorumError::Raft("the observer stopped".into()))?;
                    return Ok(self.image());
                }
                Err(e) => last = e,
            }
        }
        Err(QuorumError::Raft(format!(
            "no voter took the metadata change: {last}"
        )))
    }

    /// Asks the active controller, wherever it runs, for up to `timeout`.
    pub async fn call_controller(
        &self,
        req: BrokerRequest,
        timeout: Duration,
    ) -> Result<BrokerAnswer, QuorumError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            for addr in self.preferred() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match network::call_controller(addr, &self.cluster_id, &req, left).await {
                    Ok(BrokerAnswer::NotController { .. }) => {
                        last = format!("{addr} is not the active controller");
                    }
                    Ok(answer) => return Ok(answer),
                    Err(e) => last = e,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QuorumError::Raft(last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}
