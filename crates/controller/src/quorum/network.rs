//! The quorum's transport: openraft's three RPCs (AppendEntries, Vote, InstallSnapshot) over
//! TCP on the CONTROLLER listener. A request is a frame `[length u32][kind u8][json]`, its
//! answer `[length u32][json of Result<response, RaftError>]`; one request at a time per
//! connection, reconnected after any failure. Frames above `MAX_FRAME` close the
//! connection: a peer (or anything else that connects) cannot make us allocate more.

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
use super::{NodeId, Raft, TypeConfig};
use std::sync::Arc;

/// Snapshots travel in chunks far below this; entries are metadata records.
const MAX_FRAME: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const APPEND: u8 = 1;
const VOTE: u8 = 2;
const SNAPSHOT: u8 = 3;
/// A metadata batch a node that does not lead asks the leader to commit.
const WRITE: u8 = 4;
/// A broker's registration or heartbeat, for the active controller.
const CONTROLLER: u8 = 5;

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

/// Connects to the quorum's other voters by their CONTROLLER address (the node's `addr`).
#[derive(Clone, Default)]
pub struct TcpNetwork;

pub struct TcpConnection {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
    /// The last exchange failed: said once in the log, and once when it works again.
    unreachable: bool,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> TcpConnection {
        TcpConnection {
            target,
            addr: node.addr.clone(),
            stream: None,
            unreachable: false,
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
        let exchange = async {
            if self.stream.is_none() {
                let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                    })??;
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
            }
            let s = self.stream.as_mut().expect("connected");
            write_frame(s, Some(kind), &body).await?;
            read_frame(s).await
        };
        let answer = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(Ok(bytes)) => bytes,
            failed => {
                self.stream = None;
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => std::io::Error::new(std::io::ErrorKind::TimedOut, "rpc timed out"),
                };
                if !self.unreachable {
                    self.unreachable = true;
                    tracing::warn!(node = self.target, addr = %self.addr, error = %e, "quorum voter unreachable");
                }
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        if std::mem::take(&mut self.unreachable) {
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
    mut s: TcpStream,
    peer: SocketAddr,
) {
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
                answer(body, async |batch: super::MetadataBatch| {
                    raft.client_write(batch)
                        .await
                        .map(|r| r.log_id)
                        .map_err(|e| e.to_string())
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
pub async fn serve(raft: Raft, controller: Arc<ActiveController>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(raft.clone(), controller.clone(), s, peer));
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
    batch: &super::MetadataBatch,
    timeout: Duration,
) -> Result<openraft::LogId<NodeId>, String> {
    let answer: Result<openraft::LogId<NodeId>, String> =
        exchange(addr, WRITE, batch, timeout).await?;
    answer
}

/// One request to the active controller at `addr`.
async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    kind: u8,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, String> {
    let exchange = async {
        let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| e.to_string())?;
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
    req: &BrokerRequest,
    timeout: Duration,
) -> Result<BrokerAnswer, String> {
    let answer: Result<BrokerAnswer, ()> = exchange(addr, CONTROLLER, req, timeout).await?;
    answer.map_err(|()| "refused".to_string())
}
