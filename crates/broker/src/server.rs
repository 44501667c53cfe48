//! The network side: accept connections, frame requests, hand them to handlers, and write the
//! responses back in request order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::Broker;
use crate::handlers;
use crate::protocol::{self, MIN_FRAME};
use crate::zero_copy::{Part, send_file};

pub use crate::handlers::Reply;

/// Serves the connections of listener `name` until `shutdown` turns true.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    name: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let broker = broker.clone();
                    let shutdown = shutdown.clone();
                    let name = name.clone();
                    tokio::spawn(async move { connection(broker, stream, peer, name, shutdown).await });
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off a little, unless stopping.
                    tracing::warn!(error = %e, "accept failed");
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(50), shutdown.changed()).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut rd, wr) = stream.into_split();
    // Responses leave in request order: the reader queues one receiver per request, the
    // writer awaits them in that order whatever order the handlers finish in.
    let (queue, mut pending) = mpsc::channel::<oneshot::Receiver<Reply>>(64);
    let writer = tokio::spawn(async move {
        let mut out = Outgoing {
            socket: wr,
            buf: Vec::new(),
        };
        loop {
            let mut next = match pending.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if out.idle().await.is_err() {
                        return;
                    }
                    match pending.recv().await {
                        Some(next) => next,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            // A response still being prepared (a fetch waiting for data, a join waiting
            // for the group) must not hold back those before it: a client may wait for
            // them (a heartbeat's answer) before it does what ends the wait.
            let reply = match next.try_recv() {
                Ok(reply) => Ok(reply),
                Err(oneshot::error::TryRecvError::Empty) => {
                    if out.flush().await.is_err() {
                        return;
                    }
                    next.await
                }
                Err(oneshot::error::TryRecvError::Closed) => break,
            };
            match reply {
                Ok(Reply::Frame(bytes)) => {
                    if out.put(&bytes).await.is_err() {
                        return;
                    }
                    let len = bytes.len();
                    drop(bytes);
                    crate::heap::response_sent(len);
                }
                Ok(Reply::Parts(parts)) => {
                    for part in parts {
                        let sent = match part {
                            Part::Bytes(bytes) => out.put(&bytes).await,
                            Part::File(region) => match out.flush().await {
                                Ok(()) => send_file(out.socket.as_ref(), &region).await,
                                Err(e) => Err(e),
                            },
                        };
                        if let Err(e) = sent {
                            // Half a response cannot be taken back: the client reconnects.
                            tracing::debug!(%peer, error = %e, "closing connection: a fetch response could not be sent");
                            return;
                        }
                    }
                }
                Ok(Reply::Nothing) => {}
                Ok(Reply::Close) | Err(_) => break,
            }
        }
        let _ = out.flush().await;
        let _ = out.socket.shutdown().await;
    });
    let max = broker.config.socket_request_max_bytes;
    loop {
        let size = tokio::select! {
            r = rd.read_i32() => match r {
                Ok(n) => n,
                Err(_) => break, // the client went away
            },
            _ = shutdown.changed() => break,
        };
        if size < MIN_FRAME as i32 || size as usize > max {
            tracing::warn!(%peer, size, max, "closing connection: request size out of bounds (socket.request.max.bytes)");
            break;
        }
        let mut frame = BytesMut::zeroed(size as usize);
        if rd.read_exact(&mut frame).await.is_err() {
            tracing::warn!(%peer, size, "closing connection: truncated request");
            break;
        }
        let frame = frame.freeze();
        let (tx, rx) = oneshot::channel();
        if queue.send(rx).await.is_err() {
            break;
        }
        let (api_key, version, correlation_id) =
            protocol::peek_header(&frame).expect("size checked");
        if api_key == protocol::FETCH {
            // A fetch may wait for data; later requests on this connection go ahead of it.
            let broker = broker.clone();
            let listener = listener.clone();
            tokio::spawn(async move {
                let _ = tx.send(handlers::handle_on(&broker, frame, peer, &listener).await);
            });
        } else {
            // Everything else runs in arrival order, so appends from one connection keep
            // the order the producer sent them in.
            // Boxed: the handler's state exists while it runs, not for the connection's
            // whole life (an idle connection's task would be sized for the largest one).
            let reply = Box::pin(handlers::handle_on(&broker, frame, peer, &listener)).await;
            let close = matches!(reply, Reply::Close);
            let _ = tx.send(reply);
            if close {
                tracing::debug!(%peer, api_key, version, correlation_id, "closed after an undecodable request");
                break;
            }
        }
    }
    drop(queue);
    let _ = writer.await;
    crate::heap::connection_closed();
}

/// Responses queued together leave in one write, up to this many bytes; a response this
/// size or more goes to the socket as it is.
const COALESCE_BYTES: usize = 64 * 1024;

/// A connection's outgoing bytes. The buffer exists only while there is something to send:
/// an idle connection holds none (a fixed 64 KiB buffer was most of what an idle
/// connection cost).
struct Outgoing {
    socket: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Outgoing {
    async fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() >= COALESCE_BYTES {
            self.flush().await?;
            return self.socket.write_all(bytes).await;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= COALESCE_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.socket.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Nothing more queued: sends what is buffered and lets the buffer go.
    async fn idle(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.buf = Vec::new();
        Ok(())
    }
}
