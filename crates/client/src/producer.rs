//! A batching producer: records accumulate per partition until `batch.size` bytes or
//! `linger.ms`, then go to the partition leaders, several requests in flight per broker.
//! Keyed records are placed by murmur2 as in the Java client; records without a key stick to
//! one partition per topic until its batch is sent (KIP-480).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
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
use crate::producer_batch::Pending;
use crate::producer_state::{Ready, State};

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
    /// Shared, so that a record per send costs no copy of its topic's name.
    pub topic: Arc<str>,
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

/// A partition's batch as bytes: (topic, partition, RecordBatch v2).
type Encoded = (String, i32, Bytes);

/// The batches for one leader as successive requests: a request carries at most one batch
/// per partition (Kafka refuses more), so a partition's n-th batch goes in the n-th request,
/// in order. (Searching the requests for each batch was quadratic in the batches waiting: a
/// tenth of a fast producer's CPU.)
fn rounds<T>(batches: Vec<((String, i32), T)>) -> Vec<Vec<((String, i32), T)>> {
    let mut rounds: Vec<Vec<((String, i32), T)>> = Vec::new();
    let mut seen: HashMap<(String, i32), usize> = HashMap::new();
    for (key, b) in batches {
        let n = seen.entry(key.clone()).or_insert(0);
        if *n == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*n].push((key, b));
        *n += 1;
    }
    rounds
}

/// Per partition: (error code, base offset, error message).
type Answers = HashMap<(String, i32), (i16, i64, Option<String>)>;

/// Where a record went: (partition, offset); the offset is -1 with acks=0.
pub type Delivery = Result<(i32, i64)>;

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
                let linger = p.config.linger.max(Duration::from_millis(1));
                // Until the oldest open batch has lingered enough, not a whole linger from
                // now: a batch opened just after a wake-up would wait almost two.
                let due = p.state.lock().unwrap().next_due(linger);
                let due = due.unwrap_or_else(|| Instant::now() + linger);
                let _ = tokio::time::timeout_at(due.into(), p.wake.notified()).await;
                // A full buffer sends every batch, due or not, as Kafka's accumulator does
                // when its memory is exhausted: open batches may be what fills it.
                let all = std::mem::take(&mut p.state.lock().unwrap().exhausted);
                p.send_ready(all).await;
            }
        });
        p
    }

    async fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        if let Some(l) = self.state.lock().unwrap().leaders(topic) {
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
        // By partition index: a broker may list them in any order.
        let n = t
            .partitions
            .iter()
            .map(|p| p.index + 1)
            .max()
            .unwrap_or(0)
            .max(0);
        let mut leaders = vec![-1; n as usize];
        for p in t.partitions.iter().filter(|p| p.index >= 0) {
            leaders[p.index as usize] = p.leader;
        }
        self.state
            .lock()
            .unwrap()
            .set_leaders(topic, leaders.clone());
        Ok(leaders)
    }

    /// Queues a record; the returned receiver yields where it went. One lock per record, and
    /// no allocation but the reply's unless a batch opens or closes.
    pub async fn send(&self, record: ProduceRecord) -> Result<oneshot::Receiver<Delivery>> {
        let mut refreshed = false;
        loop {
            // Made before looking, so that an answer freeing the buffer is not missed.
            let idle = self.idle.notified();
            let outcome = {
                let mut s = self.state.lock().unwrap();
                // Back-pressure: wait while too much is buffered (buffer.memory).
                if s.buffered >= BUFFER_MEMORY {
                    s.exhausted = true;
                    Err(true)
                } else {
                    self.add(&mut s, &record).ok_or(false)
                }
            };
            match outcome {
                // A partition past those known: the topic may have grown; look once more.
                Ok(Err(ClientError::Kafka { code: 3, .. })) if !refreshed => {
                    refreshed = true;
                    self.state.lock().unwrap().forget_leaders(&record.topic);
                    self.partitions(&record.topic).await?;
                }
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

    /// Adds `record` to its partition's open batch, under the state's lock: one lookup of
    /// its topic. `None` while the topic's leaders are not known.
    fn add(
        &self,
        s: &mut State,
        record: &ProduceRecord,
    ) -> Option<Result<oneshot::Receiver<Delivery>>> {
        let State {
            topics,
            full,
            buffered,
            stickies,
            ..
        } = s;
        let t = topics.get_mut(&*record.topic)?;
        let n = t.leaders.as_ref()?.len() as i32;
        if n == 0 {
            return Some(Err(ClientError::Protocol(format!(
                "topic {} has no partitions",
                record.topic
            ))));
        }
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => t.sticky(stickies),
        };
        if partition < 0 || partition >= n {
            return Some(Err(ClientError::Kafka {
                code: 3,
                name: "UNKNOWN_TOPIC_OR_PARTITION",
                message: Some(format!("{}-{partition}", record.topic)),
            }));
        }
        let (tx, rx) = oneshot::channel();
        let ts = record.timestamp.unwrap_or_else(now_ms);
        // The batch closes once past batch.size: a quarter more holds the record that
        // crosses it, unless that one is large.
        let capacity = self.config.batch_size.min(1 << 20) * 5 / 4;
        let slot = &mut t.open[partition as usize];
        // Memory is counted as reserved, as Kafka's buffer pool does: a batch holds its
        // capacity from its first record.
        let before = slot.as_ref().map_or(0, |b| b.records.capacity());
        let b = slot.get_or_insert_with(|| Pending::new(ts, capacity));
        b.push(record, ts);
        b.replies.push(tx);
        let is_full = b.bytes >= self.config.batch_size;
        *buffered += b.records.capacity() - before;
        if is_full {
            let b = t.close(partition).expect("the batch just filled");
            full.push(((record.topic.to_string(), partition), b));
            self.wake.notify_one();
        }
        Some(Ok(rx))
    }

    /// Sends every batch now and waits until all answers are in.
    pub async fn flush(self: &Arc<Self>) {
        loop {
            let notified = self.idle.notified();
            self.clone().send_ready(true).await;
            {
                let s = self.state.lock().unwrap();
                if s.is_idle() {
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
        let ready = {
            let mut s = self.state.lock().unwrap();
            s.take_due(all, self.config.batch_size, self.config.linger)
        };
        // Leaders forgotten after an error are looked up before the batches go (while the
        // send order is held): sent to no leader, a batch would spend a retry and could be
        // passed by the partition's next batch.
        let unknown: std::collections::BTreeSet<&str> = {
            let s = self.state.lock().unwrap();
            ready
                .iter()
                .map(|((t, _), _)| t.as_str())
                .filter(|t| s.leaders(t).is_none())
                .collect()
        };
        for topic in unknown {
            if let Err(e) = self.partitions(topic).await {
                tracing::debug!(topic, error = %e, "no leaders for a batch's topic");
            }
        }
        let leaders: Vec<i32> = {
            let s = self.state.lock().unwrap();
            ready.iter().map(|((t, p), _)| s.leader(t, *p)).collect()
        };
        let mut by_leader: HashMap<i32, Vec<Ready>> = HashMap::new();
        for (b, leader) in ready.into_iter().zip(leaders) {
            by_leader.entry(leader).or_default().push(b);
        }
        for (leader, batches) in by_leader {
            for mut round in rounds(batches) {
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore");
                self.state.lock().unwrap().in_flight += 1;
                let bytes: usize = round.iter().map(|(_, b)| b.records.capacity()).sum();
                let (items, failed) = self.encode(&mut round);
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
    fn encode(&self, batches: &mut [Ready]) -> (Vec<Encoded>, Vec<(String, i32)>) {
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
                self.state.lock().unwrap().forget_leaders(&t);
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
                self.state.lock().unwrap().forget_leaders(&topic);
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
    use super::rounds;

    #[test]
    fn a_request_carries_one_batch_per_partition_in_order() {
        let key = |t: &str, p: i32| (t.to_string(), p);
        let batches = vec![
            (key("a", 0), 1),
            (key("a", 1), 2),
            (key("a", 0), 3),
            (key("b", 0), 4),
            (key("a", 0), 5),
            (key("a", 1), 6),
        ];
        let got: Vec<Vec<i32>> = rounds(batches)
            .into_iter()
            .map(|r| r.into_iter().map(|(_, b)| b).collect())
            .collect();
        assert_eq!(got, vec![vec![1, 2, 4], vec![3, 6], vec![5]]);
    }
}
