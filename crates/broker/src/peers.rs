//! Requests this broker sends to the other brokers of the cluster: transaction markers to
//! the leaders of a transaction's partitions, and the verification of a transactional
//! batch with its transaction coordinator, and the replica fetchers' Fetch. Two connections
//! per broker, found by its registration in the metadata image, opened on first use and
//! again after a failure: one for the replica fetcher and one for everything else, as
//! Kafka keeps its fetcher threads' connections apart. Sharing one would queue a marker
//! behind a long-polling fetch, and a fetch behind a marker that waits for that very
//! fetch to commit it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use krabka_protocol::ProtocolRequest;
use strom_client::connection::Connection;

use crate::broker::Broker;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Which of a broker's two connections a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Channel {
    Control,
    /// One per replica fetcher (num.replica.fetchers).
    Replication(u32),
}

#[derive(Default)]
pub struct Peers {
    connections: tokio::sync::Mutex<HashMap<(i32, Channel), Arc<Connection>>>,
}

impl Broker {
    /// Sends `req` to broker `id` (at most version `cap`) and returns its answer.
    pub(crate) async fn send_to_broker<R: ProtocolRequest>(
        &self,
        id: i32,
        req: &R,
        cap: i16,
        api: &'static str,
    ) -> Result<R::Response, String> {
        let conn = self.peer(id, Channel::Control).await?;
        match conn.send(req, cap, api).await {
            Ok((resp, _)) => Ok(resp),
            Err(e) => {
                // The next request opens a fresh connection.
                self.peers
                    .connections
                    .lock()
                    .await
                    .remove(&(id, Channel::Control));
                Err(format!("broker {id}: {e}"))
            }
        }
    }

    /// A follower's Fetch to broker `id`: the partitions with their records verbatim.
    pub(crate) async fn fetch_from_broker(
        &self,
        id: i32,
        fetcher: u32,
        req: &krabka_protocol::owned::fetch_request::FetchRequest,
    ) -> Result<Vec<strom_client::fetch_records::FetchedPartition>, String> {
        let conn = self.peer(id, Channel::Replication(fetcher)).await?;
        let answer = match conn.send_raw(req, 12, "Fetch").await {
            Ok(a) => a,
            Err(e) => {
                self.peers
                    .connections
                    .lock()
                    .await
                    .remove(&(id, Channel::Replication(fetcher)));
                return Err(format!("broker {id}: {e}"));
            }
        };
        let (error, parts) = strom_client::fetch_records::fetched_partitions(answer.0, answer.1)
            .map_err(|e| format!("broker {id}: an unreadable Fetch response: {e}"))?;
        if error != crate::errors::NONE {
            return Err(format!("broker {id}: Fetch error {error}"));
        }
        Ok(parts)
    }

    /// The next fetch of fetcher `fetcher` from broker `id` opens a new connection.
    pub(crate) async fn reset_fetch_connection(&self, id: i32, fetcher: u32) {
        self.peers
            .connections
            .lock()
            .await
            .remove(&(id, Channel::Replication(fetcher)));
    }

    async fn peer(&self, id: i32, channel: Channel) -> Result<Arc<Connection>, String> {
        let addr = {
            let image = self.image();
            let b = image
                .brokers
                .get(&id)
                .ok_or_else(|| format!("broker {id} is not registered"))?;
            // Its endpoint on this node's inter-broker listener, as Kafka picks it.
            let (host, port) = b
                .endpoint(&self.config.inter_broker_listener)
                .unwrap_or((&b.host, b.port));
            format!("{host}:{port}")
        };
        let usable = |c: &Arc<Connection>| c.is_open() && c.addr() == addr;
        if let Some(c) = self.peers.connections.lock().await.get(&(id, channel))
            && usable(c)
        {
            return Ok(c.clone());
        }
        // Connected without the lock: a broker slow to answer (paused, or cut off) would
        // otherwise hold up every request to every other broker for the whole timeout.
        let client_id = format!("strom-broker-{}", self.config.node_id);
        let c = Arc::new(
            Connection::connect(&addr, &client_id, TIMEOUT)
                .await
                .map_err(|e| format!("broker {id} at {addr}: {e}"))?,
        );
        let mut conns = self.peers.connections.lock().await;
        match conns.get(&(id, channel)) {
            // Another request connected meanwhile: one connection per channel.
            Some(other) if usable(other) => Ok(other.clone()),
            _ => {
                conns.insert((id, channel), c.clone());
                Ok(c)
            }
        }
    }
}
