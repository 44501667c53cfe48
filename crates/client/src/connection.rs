//! One broker connection: requests are pipelined, responses matched in order (the protocol
//! answers in request order), versions negotiated with ApiVersions at connect.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use krabka_protocol::owned::api_versions_request::ApiVersionsRequest;
use krabka_protocol::owned::request_header::RequestHeader;
use krabka_protocol::{Decode, Encode, ProtocolRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ClientError, Result};

const API_VERSIONS: i16 = 18;

type Reply = oneshot::Sender<Result<Bytes>>;

struct Outgoing {
    frame: Bytes,
    correlation: i32,
    reply: Option<(Reply, i16)>,
}

pub struct Connection {
    addr: String,
    client_id: String,
    timeout: Duration,
    outgoing: mpsc::Sender<Outgoing>,
    open: Arc<AtomicBool>,
    next_correlation: AtomicI32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    pub async fn connect(addr: &str, client_id: &str, timeout: Duration) -> Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(addr.to_string()))?
            .map_err(|source| ClientError::Io {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(256);
        let pending: Arc<Mutex<VecDeque<(i32, Reply, i16)>>> = Arc::default();
        let open = Arc::new(AtomicBool::new(true));
        {
            let pending = pending.clone();
            let open = open.clone();
            let addr = addr.to_string();
            tokio::spawn(async move {
                while let Some(o) = rx.recv().await {
                    if let Some((reply, header_version)) = o.reply {
                        pending
                            .lock()
                            .unwrap()
                            .push_back((o.correlation, reply, header_version));
                    }
                    if let Err(e) = wr.write_all(&o.frame).await {
                        tracing::debug!(%addr, error = %e, "write failed");
                        open.store(false, Ordering::Release);
                        break;
                    }
                }
            });
        }
        {
            let pending = pending.clone();
            let open = open.clone();
            let addr = addr.to_string();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let err = loop {
                    let mut body = match read_frame(&mut rd, &mut buf).await {
                        Ok(Ok(body)) => body,
                        Ok(Err(n)) => {
                            break ClientError::Protocol(format!(
                                "{addr} sent a frame of {n} bytes"
                            ));
                        }
                        Err(source) => {
                            break ClientError::Io {
                                addr: addr.clone(),
                                source,
                            };
                        }
                    };
                    let correlation = body.get_i32();
                    let Some((expected, reply, header_version)) =
                        pending.lock().unwrap().pop_front()
                    else {
                        break ClientError::Protocol(format!(
                            "{addr} answered a request never sent"
                        ));
                    };
                    if expected != correlation {
                        break ClientError::Protocol(format!(
                            "{addr} answered correlation id {correlation}, expected {expected}"
                        ));
                    }
                    if header_version >= 1 {
                        // Response header v1: tagged fields, skipped.
                        if let Err(e) = skip_tagged_fields(&mut body) {
                            break e;
                        }
                    }
                    let _ = reply.send(Ok(body));
                };
                open.store(false, Ordering::Release);
                for (_, reply, _) in pending.lock().unwrap().drain(..) {
                    let _ = reply.send(Err(ClientError::Protocol(format!(
                        "connection closed: {err}"
                    ))));
                }
            });
        }
        let mut conn = Connection {
            addr: addr.to_string(),
            client_id: client_id.to_string(),
            timeout,
            outgoing: tx,
            open,
            next_correlation: AtomicI32::new(1),
            versions: HashMap::new(),
        };
        conn.negotiate().await?;
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// ApiVersions v3; a broker that does not know v3 answers in v0 with the list anyway.
    async fn negotiate(&mut self) -> Result<()> {
        let req = ApiVersionsRequest {
            client_software_name: "strom".into(),
            client_software_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let body = self.roundtrip(API_VERSIONS, 3, 2, 0, &req).await?;
        let resp = krabka_protocol::owned::api_versions_response::ApiVersionsResponse::decode(
            &mut body.clone(),
            3,
        );
        let resp = match resp {
            Ok(r) if r.error_code == 0 => r,
            _ => krabka_protocol::owned::api_versions_response::ApiVersionsResponse::decode(
                &mut body.clone(),
                0,
            )?,
        };
        self.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// The version to use for `R`: the highest both sides speak, at most `cap`.
    pub fn version_for<R: ProtocolRequest>(&self, cap: i16, api: &'static str) -> Result<i16> {
        let unsupported = || ClientError::Unsupported {
            addr: self.addr.clone(),
            api,
            key: R::API_KEY,
        };
        let (min, max) = *self.versions.get(&R::API_KEY).ok_or_else(unsupported)?;
        let v = max.min(R::LATEST_STABLE_VERSION).min(cap);
        if v < min.max(R::MIN_VERSION) {
            return Err(unsupported());
        }
        Ok(v)
    }

    /// Sends `req` at the negotiated version (at most `cap`) and decodes the answer.
    pub async fn send<R: ProtocolRequest>(
        &self,
        req: &R,
        cap: i16,
        api: &'static str,
    ) -> Result<(R::Response, i16)> {
        let v = self.version_for::<R>(cap, api)?;
        let flexible = v >= R::FLEXIBLE_MIN;
        let mut body = self
            .roundtrip(
                R::API_KEY,
                v,
                if flexible { 2 } else { 1 },
                if flexible { 1 } else { 0 },
                req,
            )
            .await?;
        Ok((R::Response::decode(&mut body, v)?, v))
    }

    /// Sends `req` at the negotiated version (at most `cap`) and returns the answer's body
    /// undecoded (after the response header), with the version: for a caller that reads
    /// it itself, as a follower reads a Fetch response's records verbatim
    /// ([`crate::fetch_records`]).
    pub async fn send_raw<R: ProtocolRequest>(
        &self,
        req: &R,
        cap: i16,
        api: &'static str,
    ) -> Result<(Bytes, i16)> {
        let v = self.version_for::<R>(cap, api)?;
        let flexible = v >= R::FLEXIBLE_MIN;
        let body = self
            .roundtrip(
                R::API_KEY,
                v,
                if flexible { 2 } else { 1 },
                if flexible { 1 } else { 0 },
                req,
            )
            .await?;
        Ok((body, v))
    }

    /// Queues `req` on the connection now (requests leave in the order they are queued) and
    /// returns the wait for its answer.
    pub async fn enqueue<R: ProtocolRequest>(
        &self,
        req: &R,
        cap: i16,
        api: &'static str,
    ) -> Result<Answer<R>> {
        let v = self.version_for::<R>(cap, api)?;
        let flexible = v >= R::FLEXIBLE_MIN;
        let (frame, correlation) = self.frame(R::API_KEY, v, if flexible { 2 } else { 1 }, req)?;
        let (tx, rx) = oneshot::channel();
        self.outgoing
            .send(Outgoing {
                frame,
                correlation,
                reply: Some((tx, if flexible { 1 } else { 0 })),
            })
            .await
            .map_err(|_| ClientError::Protocol(format!("connection to {} closed", self.addr)))?;
        Ok(Answer {
            rx,
            version: v,
            timeout: self.timeout,
            addr: self.addr.clone(),
            _r: std::marker::PhantomData,
        })
    }

    /// Sends `req` expecting no answer (produce with acks=0).
    pub async fn send_oneway<R: ProtocolRequest>(
        &self,
        req: &R,
        cap: i16,
        api: &'static str,
    ) -> Result<()> {
        let v = self.version_for::<R>(cap, api)?;
        let (frame, correlation) =
            self.frame(R::API_KEY, v, if v >= R::FLEXIBLE_MIN { 2 } else { 1 }, req)?;
        self.outgoing
            .send(Outgoing {
                frame,
                correlation,
                reply: None,
            })
            .await
            .map_err(|_| ClientError::Protocol(format!("connection to {} closed", self.addr)))
    }

    fn frame<T: Encode>(
        &self,
        key: i16,
        version: i16,
        header_version: i16,
        body: &T,
    ) -> Result<(Bytes, i32)> {
        let correlation = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader {
            request_api_key: key,
            request_api_version: version,
            correlation_id: correlation,
            client_id: Some(self.client_id.clone()),
            ..Default::default()
        };
        let len = header.encoded_len(header_version) + body.encoded_len(version);
        let mut b = BytesMut::with_capacity(4 + len);
        b.put_i32(len as i32);
        header.encode(&mut b, header_version)?;
        body.encode(&mut b, version)?;
        Ok((b.freeze(), correlation))
    }

    async fn roundtrip<T: Encode>(
        &self,
        key: i16,
        version: i16,
        header_version: i16,
        response_header: i16,
        body: &T,
    ) -> Result<Bytes> {
        let (frame, correlation) = self.frame(key, version, header_version, body)?;
        let (tx, rx) = oneshot::channel();
        self.outgoing
            .send(Outgoing {
                frame,
                correlation,
                reply: Some((tx, response_header)),
            })
            .await
            .map_err(|_| ClientError::Protocol(format!("connection to {} closed", self.addr)))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(ClientError::Timeout(self.addr.clone())),
            Ok(Err(_)) => Err(ClientError::Protocol(format!(
                "connection to {} closed",
                self.addr
            ))),
            Ok(Ok(r)) => r,
        }
    }
}

/// The answer to a queued request.
pub struct Answer<R: ProtocolRequest> {
    rx: oneshot::Receiver<Result<Bytes>>,
    version: i16,
    timeout: Duration,
    addr: String,
    _r: std::marker::PhantomData<fn() -> R>,
}

impl<R: ProtocolRequest> Answer<R> {
    pub async fn wait(self) -> Result<R::Response> {
        let mut body = match tokio::time::timeout(self.timeout, self.rx).await {
            Err(_) => return Err(ClientError::Timeout(self.addr)),
            Ok(Err(_)) => {
                return Err(ClientError::Protocol(format!(
                    "connection to {} closed",
                    self.addr
                )));
            }
            Ok(Ok(r)) => r?,
        };
        Ok(R::Response::decode(&mut body, self.version)?)
    }
}

fn skip_tagged_fields(b: &mut Bytes) -> Result<()> {
    let bad = || ClientError::Protocol("bad tagged fields in a response header".into());
    let n = read_uvarint(b).ok_or_else(bad)?;
    for _ in 0..n {
        read_uvarint(b).ok_or_else(bad)?;
        let len = read_uvarint(b).ok_or_else(bad)? as usize;
        if b.remaining() < len {
            return Err(bad());
        }
        b.advance(len);
    }
    Ok(())
}

fn read_uvarint(b: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        if !b.has_remaining() {
            return None;
        }
        let byte = b.get_u8();
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// How much a read asks the socket for at least: a frame's size and the start of its body
/// (or several small frames) arrive with one call.
const READ_CHUNK: usize = 64 * 1024;

/// The next response frame's body (its size prefix taken off), read into `buf` without zeroing
/// it first; bytes read past the frame stay in `buf` for the next one. `Ok(Err(size))` for a
/// size no frame can have.
async fn read_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> std::io::Result<std::result::Result<Bytes, i32>> {
    fill(rd, buf, 4).await?;
    let size = buf.get_i32();
    if size < 4 {
        return Ok(Err(size));
    }
    fill(rd, buf, size as usize).await?;
    Ok(Ok(buf.split_to(size as usize).freeze()))
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    n: usize,
) -> std::io::Result<()> {
    while buf.len() < n {
        buf.reserve((n - buf.len()).max(READ_CHUNK));
        if rd.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Frames arrive whole whatever the writes' boundaries: a size prefix split across
    /// writes, several frames in one write, a frame larger than a read; a size below 4 is
    /// refused, and a stream cut in the middle of a frame is an error, not a short frame.
    #[tokio::test]
    async fn frames_are_read_whole_across_any_write_boundaries() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let frame = |body: &[u8]| {
            let mut f = (body.len() as i32).to_be_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        let mut stream = frame(b"first");
        stream.extend(frame(b"second!"));
        stream.extend(frame(&big));
        stream.extend(frame(b"last"));
        stream.extend(2i32.to_be_bytes());
        let writer = {
            let stream = stream.clone();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                // Odd pieces: 1, 2, 3 ... bytes, then the rest.
                let (mut at, mut n) = (0, 1);
                while at < 40 {
                    s.write_all(&stream[at..at + n]).await.unwrap();
                    s.flush().await.unwrap();
                    at += n;
                    n += 1;
                }
                s.write_all(&stream[at..]).await.unwrap();
            })
        };
        let (mut rd, _wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut buf = BytesMut::new();
        for want in [&b"first"[..], b"second!", &big, b"last"] {
            let got = read_frame(&mut rd, &mut buf).await.unwrap().unwrap();
            assert_eq!(&got[..], want);
        }
        assert_eq!(read_frame(&mut rd, &mut buf).await.unwrap(), Err(2));
        writer.await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&frame(b"0123456789")[..8]).await.unwrap();
        });
        let (mut rd, _wr) = TcpStream::connect(addr).await.unwrap().into_split();
        cut.await.unwrap();
        let err = read_frame(&mut rd, &mut BytesMut::new()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
