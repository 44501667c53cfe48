//! The quorum's transport: openraft's three RPCs (AppendEntries, Vote, InstallSnapshot) over
//! TCP on the CONTROLLER listener. A request is a frame `[length u32][kind u8][json]`, its
//! answer `[length u32][json of Result<response, RaftError>]`; one request at a time per
//! connection, reconnected after any failure. Frames above `MAX_FRAME` close the
//! connection: a peer (or anything else that connects) cannot make us allocate more.
//!
//! Every connection opens with a HELLO naming the cluster id: a node formatted for another
//! cluster is refused before anything else is exchanged (Kafka's INCONSISTENT_CLUSTER_ID),
//! so it can neither vote nor be written to here.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::active::{ActiveController, BrokerAnswer, BrokerRequest};
use super::observer::{FetchAnswer, FetchRequest};
use super::{NodeId, Raft, TypeConfig};
use std::sync::Arc;

/// Snapshots travel in chunks far below this; entries are metadata records.
const MAX_FRAME: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const HELLO: u8 = 0;
const APPEND: u8 = 1;
const VOTE: u8 = 2;
const SNAPSHOT: u8 = 3;
/// A metadata batch a node that does not lead asks the leader to commit.
const WRITE: u8 = 4;
/// A broker's registration or heartbeat, for the active controller.
const CONTROLLER: u8 = 5;
/// An observer's fetch of the metadata image.
const FETCH: u8 = 6;

async fn write_frame(s: &mut TcpStream, kind: Option<u8>, body: &[u8]) -> std::io::Result<()> {
    let len = body.len() + usize::from(kind.is_some());
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend(kind);
    out.extend_from_slice(body);
    s.write_all(&out).await
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a {len}-byte frame, more than {MAX_FRAME}"
        )));
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// Opens a connection to `addr` and introduces this node as a member of `cluster_id`. A
/// peer of another cluster answers with why; that is a `PermissionDenied` error.
async fn connect(addr: &str, cluster_id: &str) -> std::io::Result<TcpStream> {
    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = s.set_nodelay(true);
    let hello = serde_json::to_vec(cluster_id).map_err(std::io::Error::other)?;
    write_frame(&mut s, Some(HELLO), &hello).await?;
    let answer = read_frame(&mut s).await?;
    let welcome: Result<(), String> =
        serde_json::from_slice(&answer).map_err(std::io::Error::other)?;
    welcome.map_err(|why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))?;
    Ok(s)
}

/// How a voter answered a HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    Welcome,
    /// It belongs to another cluster: why, in its words.
    OtherCluster(String),
    Unreachable(String),
}

/// Introduces this node to the voter at `addr`: is it of the same cluster?
pub async fn hello(addr: &str, cluster_id: &str) -> Hello {
    match connect(addr, cluster_id).await {
        Ok(_) => Hello::Welcome,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Hello::OtherCluster(e.to_string())
        }
        Err(e) => Hello::Unreachable(e.to_string()),
    }
}

/// Connects to the quorum's other voters by their CONTROLLER address (the node's `addr`).
#[derive(Clone, Default)]
pub struct TcpNetwork {
    pub cluster_id: Arc<str>,
    /// Voters the last exchange with failed (openraft makes new connections as it retries:
    /// the log says it once per voter, not once per connection).
    pub unreachable: Arc<std::sync::Mutex<std::collections::HashSet<NodeId>>>,
}

pub struct TcpConnection {
    target: NodeId,
    addr: String,
    cluster_id: Arc<str>,
    stream: Option<TcpStream>,
    unreachable: Arc<std::sync::Mutex<std::collections::HashSet<NodeId>>>,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> TcpConnection {
        TcpConnection {
            target,
            addr: node.addr.clone(),
            cluster_id: self.cluster_id.clone(),
            stream: None,
            unreachable: self.unreachable.clone(),
        }
    }
}

impl TcpConnection {
    /// Sends one request and reads its answer; a broken connection is dropped, so the next
    /// call reconnects.
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &mut self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The connection is owned by the exchange until its answer is read: openraft may
        // drop this future half way (a heartbeat it no longer waits for), and a connection
        // left with an unread answer would hand that answer to the next request, a success
        // for entries the follower never got. A dropped exchange drops its connection.
        let existing = self.stream.take();
        let (addr, cluster_id) = (&self.addr, &self.cluster_id);
        let exchange = async move {
            let mut s = match existing {
                Some(s) => s,
                None => connect(addr, cluster_id).await?,
            };
            write_frame(&mut s, Some(kind), &body).await?;
            let bytes = read_frame(&mut s).await?;
            Ok::<_, std::io::Error>((s, bytes))
        };
        let answer = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(Ok((s, bytes))) => {
                self.stream = Some(s);
                bytes
            }
            failed => {
                self.stream = None;
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => std::io::Error::new(std::io::ErrorKind::TimedOut, "rpc timed out"),
                };
                if self.unreachable.lock().unwrap().insert(self.target) {
                    tracing::warn!(node = self.target, addr = %self.addr, error = %e, "quorum voter unreachable");
                }
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        if self.unreachable.lock().unwrap().remove(&self.target) {
            tracing::info!(node = self.target, addr = %self.addr, "quorum voter reachable again");
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&answer).map_err(|e| {
                self.stream = None;
                RPCError::Network(NetworkError::new(&e))
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for TcpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(VOTE, &rpc, &option).await
    }
}

async fn answer<Req: DeserializeOwned, Resp: Serialize, E: Serialize>(
    body: &[u8],
    handle: impl AsyncFnOnce(Req) -> Result<Resp, E>,
) -> std::io::Result<Vec<u8>> {
    let req: Req = serde_json::from_slice(body).map_err(std::io::Error::other)?;
    let result = handle(req).await;
    serde_json::to_vec(&result).map_err(std::io::Error::other)
}

async fn connection(
    raft: Raft,
    controller: Arc<ActiveController>,
    cluster_id: Arc<str>,
    mut s: TcpStream,
    peer: SocketAddr,
) {
    // The first frame introduces the peer; one of another cluster goes no further.
    let introduced = match read_frame(&mut s).await {
        Ok(f) if f.first() == Some(&HELLO) => serde_json::from_slice::<String>(&f[1..]).ok(),
        _ => None,
    };
    let welcome = match introduced {
        Some(theirs) if *theirs == *cluster_id => Ok(()),
        Some(theirs) => {
            tracing::error!(%peer, theirs, ours = %cluster_id, "a node of another cluster tried to join the metadata quorum: refused");
            Err(format!(
                "the node at {} belongs to cluster {cluster_id}, not {theirs}: this node's directories were formatted for another cluster (check log.dirs and the cluster id given to `strom storage format`)",
                s.local_addr().map(|a| a.to_string()).unwrap_or_default()
            ))
        }
        None => {
            tracing::warn!(%peer, "closing a quorum connection: it did not open with a HELLO");
            return;
        }
    };
    let refused = welcome.is_err();
    let Ok(bytes) = serde_json::to_vec(&welcome) else {
        return;
    };
    if write_frame(&mut s, None, &bytes).await.is_err() || refused {
        return;
    }
    loop {
        let frame = match read_frame(&mut s).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::warn!(%peer, error = %e, "closing a quorum connection");
                }
                return;
            }
        };
        let Some((&kind, body)) = frame.split_first() else {
            tracing::warn!(%peer, "closing a quorum connection: an empty frame");
            return;
        };
        let reply = match kind {
            APPEND => {
                answer(body, async |r: AppendEntriesRequest<TypeConfig>| {
                    raft.append_entries(r).await
                })
                .await
            }
            VOTE => answer(body, async |r: VoteRequest<NodeId>| raft.vote(r).await).await,
            SNAPSHOT => {
                answer(body, async |r: InstallSnapshotRequest<TypeConfig>| {
                    raft.install_snapshot(r).await
                })
                .await
            }
            WRITE => {
                // From a voter that does not lead, or from an observer: this voter has the
                // leader commit it.
                answer(body, async |batch: super::MetadataBatch| {
                    super::commit_batch(&raft, &cluster_id, &batch)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
            }
            FETCH => {
                answer(body, async |r: FetchRequest| {
                    Ok::<_, ()>(controller.serve_fetch(r).await)
                })
                .await
            }
            CONTROLLER => {
                answer(body, async |r: BrokerRequest| {
                    Ok::<_, ()>(controller.handle(r).await)
                })
                .await
            }
            other => Err(std::io::Error::other(format!(
                "unknown request kind {other}"
            ))),
        };
        let sent = match reply {
            Ok(bytes) => write_frame(&mut s, None, &bytes).await,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing a quorum connection: a bad request");
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Serves the quorum's RPCs to the other voters until the task is dropped.
pub async fn serve(
    raft: Raft,
    controller: Arc<ActiveController>,
    cluster_id: Arc<str>,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(
                    raft.clone(),
                    controller.clone(),
                    cluster_id.clone(),
                    s,
                    peer,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "quorum accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Asks the leader at `addr` to commit `batch`; the log id it was committed at.
pub async fn forward_write(
    addr: &str,
    cluster_id: &str,
    batch: &super::MetadataBatch,
    timeout: Duration,
) -> Result<openraft::LogId<NodeId>, String> {
    let answer: Result<openraft::LogId<NodeId>, String> =
        exchange(addr, cluster_id, WRITE, batch, timeout).await?;
    answer
}

/// One request to the active controller at `addr`.
async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    cluster_id: &str,
    kind: u8,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, String> {
    let exchange = async {
        let mut s = connect(addr, cluster_id)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        write_frame(&mut s, Some(kind), &body)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut s).await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&answer).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr} did not answer in {timeout:?}"))?
}

/// Asks the active controller at `addr` (a CONTROLLER address).
pub async fn call_controller(
    addr: &str,
    cluster_id: &str,
    req: &BrokerRequest,
    timeout: Duration,
) -> Result<BrokerAnswer, String> {
    let answer: Result<BrokerAnswer, ()> =
        exchange(addr, cluster_id, CONTROLLER, req, timeout).await?;
    answer.map_err(|()| "refused".to_string())
}

/// Fetches the metadata image from the voter at `addr` (see `observer`).
pub async fn fetch_image(
    addr: &str,
    cluster_id: &str,
    req: &FetchRequest,
    timeout: Duration,
) -> Result<FetchAnswer, String> {
    let answer: Result<FetchAnswer, ()> = exchange(addr, cluster_id, FETCH, req, timeout).await?;
    answer.map_err(|()| "refused".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voter that answers each request with the number it carries, the first one late.
    async fn slow_first_voter() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _hello = read_frame(&mut s).await?;
                    write_frame(&mut s, None, br#"{"Ok":null}"#).await?;
                    loop {
                        let req = read_frame(&mut s).await?;
                        let n: u64 = serde_json::from_slice(&req[1..]).unwrap();
                        if n == 1 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        write_frame(&mut s, None, format!(r#"{{"Ok":{n}}}"#).as_bytes()).await?;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                });
            }
        });
        addr
    }

    /// A call openraft stops waiting for must not leave its answer to the next call (the
    /// nemesis found a leader that counted a follower's entries as matched from a stale
    /// answer, then saw the follower's log "revert").
    #[tokio::test]
    async fn an_abandoned_call_does_not_answer_the_next_one() {
        let mut c = TcpConnection {
            target: 2,
            addr: slow_first_voter().await,
            cluster_id: Arc::from("c"),
            stream: None,
            unreachable: Arc::default(),
        };
        let option = RPCOption::new(Duration::from_secs(5));
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            c.call::<u64, u64, openraft::error::InstallSnapshotError>(APPEND, &1, &option),
        )
        .await;
        assert!(abandoned.is_err(), "the first answer is late");
        let answer = c
            .call::<u64, u64, openraft::error::InstallSnapshotError>(APPEND, &2, &option)
            .await
            .unwrap();
        assert_eq!(
            answer, 2,
            "the answer to the abandoned call was taken for this one"
        );
    }
}
