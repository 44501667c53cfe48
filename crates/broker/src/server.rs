//! The network side: accept connections, frame requests, hand them to handlers, and write the
//! responses back in request order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
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
        // Small responses queued together leave in one write; anything this size or more
        // goes straight to the socket. 8 KiB, not more: every connection holds one.
        let mut out = BufWriter::with_capacity(8 * 1024, wr);
        while let Some(reply) = pending.recv().await {
            match reply.await {
                Ok(Reply::Frame(bytes)) => {
                    if out.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Ok(Reply::Parts(parts)) => {
                    for part in parts {
                        let sent = match part {
                            Part::Bytes(bytes) => out.write_all(&bytes).await,
                            Part::File(region) => match out.flush().await {
                                Ok(()) => send_file(out.get_ref().as_ref(), &region).await,
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
            if pending.is_empty() && out.flush().await.is_err() {
                return;
            }
        }
        let _ = out.flush().await;
        let _ = out.shutdown().await;
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
            let reply = handlers::handle_on(&broker, frame, peer, &listener).await;
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
