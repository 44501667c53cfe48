//! A batching producer: records accumulate per partition until `batch.size` bytes or
//! `linger.ms`, then go to the partition leaders, several requests in flight per broker.
//! Keyed records are placed by murmur2 as in the Java client; records without a key stick to
//! one partition per topic until its batch is sent (KIP-480).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use krabka_compression::CompressionType;
use krabka_protocol::owned::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use krabka_protocol::records::RecordsPayload;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::Client;
use crate::connection::Answer;
use crate::error::{ClientError, Result, check};
use crate::partitioner::partition_for_key;

#[derive(Debug, Clone, Copy)]
pub struct ProducerConfig {
    /// 0, 1 or -1 (all).
    pub acks: i16,
    pub compression: Compression,
    pub batch_size: usize,
    pub linger: Duration,
    /// Requests in flight at once, over all brokers.
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: -1,
            compression: Compression::None,
            batch_size: 16 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 5,
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => {
                return Err(format!(
                    "unknown compression {s:?}: none, gzip, snappy, lz4 or zstd"
                ));
            }
        })
    }
}

impl Compression {
    fn codec(self) -> CompressionType {
        match self {
            Compression::None => CompressionType::None,
            Compression::Gzip => CompressionType::Gzip,
            Compression::Snappy => CompressionType::Snappy,
            Compression::Lz4 => CompressionType::Lz4,
            Compression::Zstd => CompressionType::Zstd,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProduceRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; now when `None`.
    pub timestamp: Option<i64>,
}

/// Error codes worth another try: the leader moved or is not there yet, a timeout, too few
/// in-sync replicas for acks=all.
const RETRIABLE: [i16; 4] = [5, 6, 7, 19];
const RETRIES: u32 = 3;
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How many bytes of records may wait for answers before `send` waits (buffer.memory).
const BUFFER_MEMORY: usize = 32 * 1024 * 1024;

/// A batch ready to go, by topic partition.
type Ready = ((String, i32), Pending);

/// A partition's batch as bytes: (topic, partition, RecordBatch v2).
type Encoded = (String, i32, Bytes);

/// Per partition: (error code, base offset, error message).
type Answers = HashMap<(String, i32), (i16, i64, Option<String>)>;

/// Where a record went: (partition, offset); the offset is -1 with acks=0.
pub type Delivery = Result<(i32, i64)>;

/// A partition's open batch: its records already encoded (the records section of a
/// RecordBatch v2, uncompressed), so that closing it costs one header and, with a codec, one
/// compression.
struct Pending {
    records: BytesMut,
    count: i32,
    /// The first record's timestamp: the others are stored as deltas from it.
    base_ts: i64,
    max_ts: i64,
    replies: Vec<oneshot::Sender<Delivery>>,
    /// Bytes the batch will take, header included: what `batch.size` compares with.
    bytes: usize,
    created: Instant,
}

impl Pending {
    fn new(first_ts: i64) -> Pending {
        Pending {
            records: BytesMut::with_capacity(1024),
            count: 0,
            base_ts: first_ts,
            max_ts: first_ts,
            replies: Vec::new(),
            bytes: HEADER_LEN,
            created: Instant::now(),
        }
    }

    /// Appends one record, as Kafka's DefaultRecord encodes it.
    fn push(&mut self, r: &ProduceRecord, ts: i64) {
        let ts_delta = ts - self.base_ts;
        let offset_delta = self.count as i64;
        let opt_len = |b: &Option<Bytes>| {
            b.as_ref()
                .map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len())
        };
        let headers_len: usize = r
            .headers
            .iter()
            .map(|(k, v)| varint_len(k.len() as i64) + k.len() + opt_len(v))
            .sum();
        let body = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + opt_len(&r.key)
            + opt_len(&r.value)
            + varint_len(r.headers.len() as i64)
            + headers_len;
        let out = &mut self.records;
        out.reserve(body + 5);
        put_varint(out, body as i64);
        out.put_u8(0);
        put_varint(out, ts_delta);
        put_varint(out, offset_delta);
        put_opt_bytes(out, r.key.as_deref());
        put_opt_bytes(out, r.value.as_deref());
        put_varint(out, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_opt_bytes(out, Some(k.as_bytes()));
            put_opt_bytes(out, v.as_deref());
        }
        self.count += 1;
        self.max_ts = self.max_ts.max(ts);
        self.bytes += body + varint_len(body as i64);
    }

    /// The whole RecordBatch v2: header, then the records, compressed with `codec`.
    fn encode(&self, codec: CompressionType) -> Result<Bytes> {
        let compressed;
        let records: &[u8] = if codec == CompressionType::None {
            &self.records
        } else {
            compressed = krabka_compression::compress(codec, &self.records)
                .map_err(|e| ClientError::Protocol(format!("compressing a batch: {e}")))?;
            &compressed
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + records.len());
        out.put_i64(0); // base offset: the broker assigns it
        out.put_i32((HEADER_LEN - 12 + records.len()) as i32);
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // crc, below
        out.put_i16(codec.as_attribute_bits() as i16);
        out.put_i32(self.count - 1);
        out.put_i64(self.base_ts);
        out.put_i64(self.max_ts);
        out.put_i64(-1); // producer id
        out.put_i16(-1); // producer epoch
        out.put_i32(-1); // base sequence
        out.put_i32(self.count);
        out.put_slice(records);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

const HEADER_LEN: usize = 61;

fn varint_len(v: i64) -> usize {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while raw >= 0x80 {
        raw >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut BytesMut, v: i64) {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    while raw >= 0x80 {
        out.put_u8((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.put_u8(raw as u8);
}

fn put_opt_bytes(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

#[derive(Default)]
struct State {
    /// The open batch per partition.
    /// By topic, then partition: a record finds its batch without its topic being copied.
    batches: HashMap<String, HashMap<i32, Pending>>,
    /// Batches that reached `batch_size`, waiting for the sender.
    full: Vec<Ready>,
    /// Bytes of records not yet answered, for back-pressure.
    buffered: usize,
    /// Partitions and leaders per topic.
    topics: HashMap<String, Vec<i32>>,
    sticky: HashMap<String, i32>,
    in_flight: usize,
}

impl State {
    /// Takes the open batch of a partition; records without a key then stick to the next
    /// partition (KIP-480).
    fn close_batch(&mut self, key: &(String, i32)) -> Pending {
        let b = self
            .batches
            .get_mut(&key.0)
            .and_then(|open| open.remove(&key.1))
            .expect("an open batch");
        let n = self
            .topics
            .get(&key.0)
            .map(|l| l.len() as i32)
            .unwrap_or(1)
            .max(1);
        if self.sticky.get(&key.0) == Some(&key.1) {
            self.sticky.insert(key.0.clone(), (key.1 + 1) % n);
        }
        b
    }
}

pub struct Producer {
    client: Arc<Client>,
    config: ProducerConfig,
    state: Mutex<State>,
    wake: Notify,
    idle: Notify,
    permits: Arc<Semaphore>,
    /// Held while batches are taken and their requests queued, so that batches of one
    /// partition leave in the order they were made.
    send_order: tokio::sync::Mutex<()>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// Starts a producer; its sender task runs until the producer is dropped.
    pub fn new(client: Arc<Client>, config: ProducerConfig) -> Arc<Producer> {
        let p = Arc::new(Producer {
            client,
            config,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            send_order: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&p);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                let linger = p.config.linger;
                let woken =
                    tokio::time::timeout(linger.max(Duration::from_millis(1)), p.wake.notified());
                let _ = woken.await;
                p.send_ready(false).await;
            }
        });
        p
    }

    async fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        if let Some(l) = self.state.lock().unwrap().topics.get(topic) {
            return Ok(l.clone());
        }
        let meta = self
            .client
            .metadata_with(Some(&[topic.to_string()]), true)
            .await?;
        let t = meta
            .topic(topic)
            .ok_or_else(|| ClientError::Protocol(format!("no metadata for {topic}")))?;
        check(t.error, Some(format!("topic {topic}")))?;
        let leaders: Vec<i32> = t.partitions.iter().map(|p| p.leader).collect();
        self.state
            .lock()
            .unwrap()
            .topics
            .insert(topic.to_string(), leaders.clone());
        Ok(leaders)
    }

    /// Queues a record; the returned receiver yields where it went. One lock per record, and
    /// no allocation but the reply's unless a batch opens or closes.
    pub async fn send(&self, record: ProduceRecord) -> Result<oneshot::Receiver<Delivery>> {
        loop {
            // Made before looking, so that an answer freeing the buffer is not missed.
            let idle = self.idle.notified();
            let outcome = {
                let mut s = self.state.lock().unwrap();
                match s.topics.get(&record.topic).map(|l| l.len() as i32) {
                    None => Err(false),
                    // Back-pressure: wait while too much is buffered (buffer.memory).
                    Some(_) if s.buffered >= BUFFER_MEMORY => Err(true),
                    Some(n) => Ok(self.add(&mut s, &record, n)),
                }
            };
            match outcome {
                Ok(added) => return added,
                // The partition count is looked up once per topic.
                Err(false) => {
                    self.partitions(&record.topic).await?;
                }
                Err(true) => {
                    self.wake.notify_one();
                    idle.await;
                }
            }
        }
    }

    /// Adds `record` to its partition's open batch, under the state's lock.
    fn add(
        &self,
        s: &mut State,
        record: &ProduceRecord,
        n: i32,
    ) -> Result<oneshot::Receiver<Delivery>> {
        if n == 0 {
            return Err(ClientError::Protocol(format!(
                "topic {} has no partitions",
                record.topic
            )));
        }
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => match s.sticky.get(&record.topic) {
                Some(p) => *p,
                None => {
                    let p = s.sticky.len() as i32 % n;
                    s.sticky.insert(record.topic.clone(), p);
                    p
                }
            },
        };
        if partition < 0 || partition >= n {
            return Err(ClientError::Kafka {
                code: 3,
                name: "UNKNOWN_TOPIC_OR_PARTITION",
                message: Some(format!("{}-{partition}", record.topic)),
            });
        }
        let (tx, rx) = oneshot::channel();
        let ts = record.timestamp.unwrap_or_else(now_ms);
        if !s.batches.contains_key(&record.topic) {
            s.batches.insert(record.topic.clone(), HashMap::new());
        }
        let open = s.batches.get_mut(&record.topic).expect("inserted above");
        let b = open.entry(partition).or_insert_with(|| Pending::new(ts));
        let before = b.bytes;
        b.push(record, ts);
        b.replies.push(tx);
        let (after, full) = (b.bytes, b.bytes >= self.config.batch_size);
        s.buffered += after - before;
        if full {
            let key = (record.topic.clone(), partition);
            let b = s.close_batch(&key);
            s.full.push((key, b));
            self.wake.notify_one();
        }
        Ok(rx)
    }

    /// Sends every batch now and waits until all answers are in.
    pub async fn flush(self: &Arc<Self>) {
        loop {
            let notified = self.idle.notified();
            self.clone().send_ready(true).await;
            {
                let s = self.state.lock().unwrap();
                if s.batches.values().all(HashMap::is_empty)
                    && s.full.is_empty()
                    && s.in_flight == 0
                {
                    return;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// Sends the batches that are full, lingered long enough, or all of them; each leader's
    /// share goes as one request, up to `max_in_flight` at a time.
    async fn send_ready(self: Arc<Self>, all: bool) {
        let order = self.send_order.lock().await;
        let ready: Vec<Ready> = {
            let mut s = self.state.lock().unwrap();
            let keys: Vec<(String, i32)> = s
                .batches
                .iter()
                .flat_map(|(t, open)| open.iter().map(move |(p, b)| (t, *p, b)))
                .filter(|(_, _, b)| {
                    all || b.bytes >= self.config.batch_size
                        || b.created.elapsed() >= self.config.linger
                })
                .map(|(t, p, _)| (t.clone(), p))
                .collect();
            let mut out = std::mem::take(&mut s.full);
            for k in keys {
                let b = s.close_batch(&k);
                out.push((k, b));
            }
            out
        };
        let mut by_leader: HashMap<i32, Vec<Ready>> = HashMap::new();
        for (k, b) in ready {
            let leader = self
                .state
                .lock()
                .unwrap()
                .topics
                .get(&k.0)
                .and_then(|l| l.get(k.1 as usize).copied())
                .unwrap_or(-1);
            by_leader.entry(leader).or_default().push((k, b));
        }
        for (leader, batches) in by_leader {
            // A request carries at most one batch per partition (Kafka refuses more):
            // several batches of one partition go in successive requests, in order.
            let mut rounds: Vec<Vec<Ready>> = Vec::new();
            for (key, b) in batches {
                match rounds
                    .iter_mut()
                    .find(|r| !r.iter().any(|(k, _)| *k == key))
                {
                    Some(r) => r.push((key, b)),
                    None => rounds.push(vec![(key, b)]),
                }
            }
            for round in rounds {
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore");
                self.state.lock().unwrap().in_flight += 1;
                let bytes: usize = round.iter().map(|(_, b)| b.bytes - HEADER_LEN).sum();
                let (items, failed) = self.encode(&round);
                // Queued now, in order; answered whenever the broker answers.
                let first = self.queue(leader, &items).await;
                let this = self.clone();
                tokio::spawn(async move {
                    this.finish(leader, round, items, failed, first).await;
                    this.state.lock().unwrap().buffered -= bytes;
                    drop(permit);
                    this.state.lock().unwrap().in_flight -= 1;
                    this.idle.notify_waiters();
                });
            }
        }
        drop(order);
    }

    /// The batches as RecordBatch v2 bytes; those that cannot be encoded, apart.
    fn encode(&self, batches: &[Ready]) -> (Vec<Encoded>, Vec<(String, i32)>) {
        let mut items = Vec::with_capacity(batches.len());
        let mut failed = Vec::new();
        for ((topic, partition), b) in batches {
            match b.encode(self.config.compression.codec()) {
                Ok(bytes) => items.push((topic.clone(), *partition, bytes)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a batch");
                    failed.push((topic.clone(), *partition));
                }
            }
        }
        (items, failed)
    }

    fn request(&self, items: &[(String, i32, Bytes)]) -> ProduceRequest {
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for (topic, partition, bytes) in items {
            let pd = PartitionProduceData {
                index: *partition,
                records: Some(RecordsPayload::Raw(bytes.clone())),
                ..Default::default()
            };
            match topics.iter_mut().find(|t| t.name == *topic) {
                Some(t) => t.partition_data.push(pd),
                None => topics.push(TopicProduceData {
                    name: topic.clone(),
                    partition_data: vec![pd],
                    ..Default::default()
                }),
            }
        }
        ProduceRequest {
            acks: self.config.acks,
            timeout_ms: self.config.request_timeout.as_millis() as i32,
            topic_data: topics,
            ..Default::default()
        }
    }

    /// Queues the Produce request for `items` on the leader's connection.
    async fn queue(
        &self,
        leader: i32,
        items: &[(String, i32, Bytes)],
    ) -> Result<Option<Answer<ProduceRequest>>> {
        if items.is_empty() {
            return Ok(None);
        }
        let req = self.request(items);
        let conn = self.client.node(leader).await?;
        if self.config.acks == 0 {
            conn.send_oneway(&req, 9, "Produce").await?;
            return Ok(None);
        }
        Ok(Some(conn.enqueue(&req, 9, "Produce").await?))
    }

    /// Waits for the answer, retries what may succeed later, and tells every record.
    async fn finish(
        &self,
        leader: i32,
        batches: Vec<Ready>,
        items: Vec<(String, i32, Bytes)>,
        failed: Vec<(String, i32)>,
        first: Result<Option<Answer<ProduceRequest>>>,
    ) {
        // Each partition ends with its base offset or an error. Retriable errors (a moved
        // leader, a timeout, too few replicas, a broken connection) are retried against the
        // leader the refreshed metadata names, up to RETRIES times.
        let mut answers: HashMap<(String, i32), std::result::Result<i64, String>> = HashMap::new();
        for key in failed {
            answers.insert(key, Err("the batch could not be encoded".into()));
        }
        let mut todo: Vec<(String, i32, Bytes, i32)> = items
            .into_iter()
            .map(|(t, p, b)| (t, p, b, leader))
            .collect();
        let mut first = Some(first);
        for attempt in 0..=RETRIES {
            let mut by_leader: HashMap<i32, Vec<(String, i32, Bytes)>> = HashMap::new();
            for (t, p, b, l) in todo.drain(..) {
                by_leader.entry(l).or_default().push((t, p, b));
            }
            let mut retry: Vec<(String, i32, Bytes, String)> = Vec::new();
            for (leader, items) in by_leader {
                let result = match first.take() {
                    Some(Ok(Some(answer))) => answer.wait().await.map(|r| Some(answers_of(r))),
                    Some(Ok(None)) => Ok(None),
                    Some(Err(e)) => Err(e),
                    None => self.produce_once(leader, &items).await,
                };
                for (t, p, b) in items {
                    let key = (t.clone(), p);
                    match &result {
                        Err(e) => retry.push((t, p, b, e.to_string())),
                        Ok(None) => {
                            answers.insert(key, Ok(-1));
                        }
                        Ok(Some(m)) => match m.get(&key) {
                            Some((0, base, _)) => {
                                answers.insert(key, Ok(*base));
                            }
                            Some((code, _, msg)) if RETRIABLE.contains(code) => retry.push((
                                t,
                                p,
                                b,
                                check(*code, msg.clone()).unwrap_err().to_string(),
                            )),
                            Some((code, _, msg)) => {
                                answers.insert(
                                    key,
                                    Err(check(*code, msg.clone()).unwrap_err().to_string()),
                                );
                            }
                            None => {
                                answers.insert(key, Err(format!("no answer for {t}-{p}")));
                            }
                        },
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if attempt == RETRIES {
                for (t, p, _, e) in retry {
                    answers.insert((t, p), Err(e));
                }
                break;
            }
            tokio::time::sleep_until((Instant::now() + RETRY_BACKOFF * (attempt + 1)).into()).await;
            for (t, p, b, _) in retry {
                self.state.lock().unwrap().topics.remove(&t);
                let l = self
                    .partitions(&t)
                    .await
                    .ok()
                    .and_then(|ls| ls.get(p as usize).copied())
                    .unwrap_or(leader);
                todo.push((t, p, b, l));
            }
        }
        for ((topic, partition), b) in batches {
            let answer = answers
                .remove(&(topic.clone(), partition))
                .unwrap_or_else(|| Err("no answer".into()))
                .map(|base| (0i16, base));
            if answer.is_err() {
                // Leaders may have moved: look again next time.
                self.state.lock().unwrap().topics.remove(&topic);
            }
            for (i, reply) in b.replies.into_iter().enumerate() {
                let r = match &answer {
                    Ok((_, -1)) => Ok((partition, -1)),
                    Ok((_, base)) => Ok((partition, base + i as i64)),
                    Err(e) => Err(ClientError::Protocol(e.clone())),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// One Produce request to `leader`: per partition (error, base offset, message); `None`
    /// with acks=0, which gets no answer.
    async fn produce_once(
        &self,
        leader: i32,
        items: &[(String, i32, Bytes)],
    ) -> Result<Option<Answers>> {
        match self.queue(leader, items).await? {
            Some(answer) => Ok(Some(answers_of(answer.wait().await?))),
            None => Ok(None),
        }
    }
}

fn answers_of(resp: krabka_protocol::owned::produce_response::ProduceResponse) -> Answers {
    let mut out = HashMap::new();
    for t in resp.responses {
        for p in t.partition_responses {
            out.insert(
                (t.name.clone(), p.index),
                (p.error_code, p.base_offset, p.error_message),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use krabka_compression::RecordDecompressionPolicy;
    use krabka_protocol::records::RecordBatch;

    fn record(
        key: Option<&str>,
        value: Option<&str>,
        headers: &[(&str, Option<&str>)],
    ) -> ProduceRecord {
        ProduceRecord {
            topic: "t".into(),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A batch encoded record by record reads back, through krabka's decoder, exactly as
    /// given: keys, null values, headers, timestamps before and after the first one, in
    /// every codec; its size is what `bytes` predicted.
    #[test]
    fn batches_built_record_by_record_decode_exactly() {
        let records = [
            (record(Some("k1"), Some("v1"), &[]), 1_000),
            (
                record(
                    None,
                    Some(&"x".repeat(300)),
                    &[("h", Some("1")), ("n", None)],
                ),
                990,
            ),
            (record(Some("k3"), None, &[]), 1_200),
        ];
        for codec in [
            CompressionType::None,
            CompressionType::Gzip,
            CompressionType::Snappy,
            CompressionType::Lz4,
            CompressionType::Zstd,
        ] {
            let mut b = Pending::new(records[0].1);
            for (r, ts) in &records {
                b.push(r, *ts);
            }
            let bytes = b.encode(codec).unwrap();
            if codec == CompressionType::None {
                assert_eq!(bytes.len(), b.bytes);
            }
            let mut cursor = &bytes[..];
            let batch =
                RecordBatch::decode_with_policy(&mut cursor, RecordDecompressionPolicy::default())
                    .unwrap();
            assert_eq!(batch.last_offset_delta, 2);
            assert_eq!((batch.base_timestamp, batch.max_timestamp), (1_000, 1_200));
            assert_eq!(batch.producer_id, -1);
            for (i, ((r, ts), got)) in records.iter().zip(&batch.records).enumerate() {
                assert_eq!(got.offset_delta, i as i32);
                assert_eq!(batch.base_timestamp + got.timestamp_delta, *ts);
                assert_eq!(got.key, r.key);
                assert_eq!(got.value, r.value);
                let headers: Vec<(String, Option<Bytes>)> = got
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                assert_eq!(headers, r.headers);
            }
        }
    }
}
