//! A consumer of partitions it is given (or that its group assigns): it owns its positions,
//! fetches from the leaders, and hands out records in offset order per partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use krabka_protocol::records::{RecordBatch, RecordsPayload, TimestampType};

use crate::Client;
use crate::admin::{EARLIEST, LATEST};
use crate::error::{ClientError, Result, check};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
}

#[derive(Debug, Clone, Copy)]
pub struct ConsumerConfig {
    pub max_wait: Duration,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// 0 read_uncommitted, 1 read_committed.
    pub isolation_level: i8,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
            isolation_level: 0,
        }
    }
}

pub type TopicPartition = (String, i32);

pub struct Consumer {
    client: Arc<Client>,
    config: ConsumerConfig,
    positions: BTreeMap<TopicPartition, i64>,
    leaders: HashMap<TopicPartition, i32>,
    /// Where each partition ends for this consumer, as the last fetch said: the high
    /// watermark, or the last stable offset for read_committed.
    pub high_watermarks: BTreeMap<TopicPartition, i64>,
    /// The next fetch round, sent ahead.
    inflight: Option<tokio::task::JoinSet<Result<FetchOutcome>>>,
}

impl Consumer {
    pub fn new(client: Arc<Client>, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            positions: BTreeMap::new(),
            leaders: HashMap::new(),
            high_watermarks: BTreeMap::new(),
            inflight: None,
        }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Consumes `partitions` of `topic` from `start` (all partitions when empty).
    pub async fn assign(&mut self, topic: &str, partitions: &[i32], start: StartAt) -> Result<()> {
        self.inflight = None;
        let meta = self.client.metadata(Some(&[topic.to_string()])).await?;
        let t = meta
            .topic(topic)
            .ok_or_else(|| ClientError::Protocol(format!("no metadata for {topic}")))?;
        check(t.error, Some(format!("topic {topic}")))?;
        let wanted: Vec<i32> = if partitions.is_empty() {
            t.partitions.iter().map(|p| p.index).collect()
        } else {
            partitions.to_vec()
        };
        for p in &wanted {
            let Some(pm) = t.partitions.iter().find(|x| x.index == *p) else {
                return Err(ClientError::Kafka {
                    code: 3,
                    name: "UNKNOWN_TOPIC_OR_PARTITION",
                    message: Some(format!("{topic}-{p}")),
                });
            };
            self.leaders.insert((topic.to_string(), *p), pm.leader);
        }
        let offsets: HashMap<i32, i64> = match start {
            StartAt::Offset(o) => wanted.iter().map(|p| (*p, o)).collect(),
            StartAt::Earliest => self
                .client
                .list_offsets(topic, EARLIEST)
                .await?
                .into_iter()
                .collect(),
            StartAt::Latest => self
                .client
                .list_offsets(topic, LATEST)
                .await?
                .into_iter()
                .collect(),
        };
        for p in wanted {
            self.positions.insert(
                (topic.to_string(), p),
                offsets.get(&p).copied().unwrap_or(0),
            );
        }
        Ok(())
    }

    /// Starts `tp` at `offset`.
    pub async fn assign_at(&mut self, tp: TopicPartition, offset: i64) -> Result<()> {
        self.assign(&tp.0, &[tp.1], StartAt::Offset(offset)).await
    }

    pub fn unassign(&mut self, tp: &TopicPartition) {
        self.inflight = None;
        self.positions.remove(tp);
        self.leaders.remove(tp);
    }

    pub fn positions(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.positions
    }

    fn launch(&self) -> tokio::task::JoinSet<Result<FetchOutcome>> {
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for (tp, pos) in &self.positions {
            let leader = self.leaders.get(tp).copied().unwrap_or(-1);
            by_leader
                .entry(leader)
                .or_default()
                .push((tp.clone(), *pos));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (leader, parts) in by_leader {
            let client = self.client.clone();
            let config = self.config;
            tasks.spawn(async move { fetch_from(&client, config, leader, parts).await });
        }
        tasks
    }

    /// The records of one fetch round to every leader (waiting up to `max_wait` for data).
    /// The next round is sent before this returns, so it is under way while the caller works
    /// on these records (fetch pipelining); assigning or seeking discards it.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>> {
        let mut tasks = match self.inflight.take() {
            Some(t) => t,
            None => self.launch(),
        };
        let mut out = Vec::new();
        let mut moved = false;
        let mut out_of_range = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (records, hws, errors, ends) =
                r.map_err(|e| ClientError::Protocol(e.to_string()))??;
            for (tp, hw) in hws {
                self.high_watermarks.insert(tp, hw);
            }
            for (tp, code) in errors {
                match code {
                    // The leader moved or is being elected: look it up again.
                    5 | 6 | 74 | 76 => moved = true,
                    1 => out_of_range.push(tp),
                    _ => return check(code, Some(format!("{}-{}", tp.0, tp.1))).map(|_| vec![]),
                }
            }
            for rec in records {
                let tp = (rec.topic.clone(), rec.partition);
                if let Some(pos) = self.positions.get_mut(&tp)
                    && rec.offset >= *pos
                {
                    *pos = rec.offset + 1;
                    out.push(rec);
                }
            }
            // Past what held nothing to deliver (markers, aborted transactions): else a
            // partition that ends with them would be fetched from the same place for ever.
            for (tp, end) in ends {
                if let Some(pos) = self.positions.get_mut(&tp) {
                    *pos = (*pos).max(end);
                }
            }
        }
        if moved {
            self.refresh_leaders().await?;
        }
        // auto.offset.reset=earliest: a position that fell off the log starts over at its
        // start.
        for tp in out_of_range {
            let earliest: HashMap<i32, i64> = self
                .client
                .list_offsets(&tp.0, EARLIEST)
                .await?
                .into_iter()
                .collect();
            if let (Some(pos), Some(start)) = (self.positions.get_mut(&tp), earliest.get(&tp.1)) {
                *pos = *start;
            }
        }
        self.inflight = Some(self.launch());
        Ok(out)
    }

    async fn refresh_leaders(&mut self) -> Result<()> {
        let topics: Vec<String> = self
            .positions
            .keys()
            .map(|(t, _)| t.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let meta = self.client.metadata(Some(&topics)).await?;
        for t in &meta.topics {
            for p in &t.partitions {
                let tp = (t.name.clone(), p.index);
                if self.leaders.contains_key(&tp) {
                    self.leaders.insert(tp, p.leader);
                }
            }
        }
        Ok(())
    }

    /// True once every assigned partition's position has reached its high watermark.
    pub fn at_end(&self) -> bool {
        self.positions
            .iter()
            .all(|(tp, pos)| self.high_watermarks.get(tp).is_some_and(|hw| pos >= hw))
    }
}

/// Records, where partitions end, partitions that answered with an error, and the offset
/// after the last batch each partition returned (delivered or not).
type FetchOutcome = (
    Vec<ConsumedRecord>,
    Vec<(TopicPartition, i64)>,
    Vec<(TopicPartition, i16)>,
    Vec<(TopicPartition, i64)>,
);

fn is_abort_marker(b: &RecordBatch) -> bool {
    b.records
        .first()
        .and_then(|r| r.key.as_deref())
        .is_some_and(|k| k.len() >= 4 && k[..4] == [0, 0, 0, 0])
}

/// The batches that hold records for the application, in order: never control batches,
/// and for read_committed none of a producer's transaction that the fetch answer lists as
/// aborted (`aborted`: first offset and producer id), from its first offset to its abort
/// marker, as Kafka's consumer filters them.
fn deliverable(
    batches: Vec<RecordBatch>,
    aborted: &[(i64, i64)],
    read_committed: bool,
) -> Vec<RecordBatch> {
    let mut pending = aborted.to_vec();
    pending.sort_unstable();
    let mut next = 0;
    let mut skipping = HashSet::new();
    batches
        .into_iter()
        .filter(|b| {
            if read_committed {
                let last = b.base_offset + b.last_offset_delta as i64;
                while let Some(&(_, pid)) = pending.get(next).filter(|(f, _)| *f <= last) {
                    skipping.insert(pid);
                    next += 1;
                }
                if b.attributes.is_control_batch() {
                    if is_abort_marker(b) {
                        skipping.remove(&b.producer_id);
                    }
                    return false;
                }
                if b.attributes.is_transactional() && skipping.contains(&b.producer_id) {
                    return false;
                }
            }
            !b.attributes.is_control_batch()
        })
        .collect()
}

async fn fetch_from(
    client: &Client,
    config: ConsumerConfig,
    leader: i32,
    parts: Vec<(TopicPartition, i64)>,
) -> Result<FetchOutcome> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for ((topic, partition), pos) in &parts {
        let fp = FetchPartition {
            partition: *partition,
            current_leader_epoch: -1,
            fetch_offset: *pos,
            last_fetched_epoch: -1,
            log_start_offset: -1,
            partition_max_bytes: config.partition_max_bytes,
            ..Default::default()
        };
        match topics.iter_mut().find(|t| t.topic == *topic) {
            Some(t) => t.partitions.push(fp),
            None => topics.push(FetchTopic {
                topic: topic.clone(),
                partitions: vec![fp],
                ..Default::default()
            }),
        }
    }
    let req = FetchRequest {
        replica_id: -1,
        max_wait_ms: config.max_wait.as_millis() as i32,
        min_bytes: config.min_bytes,
        max_bytes: config.max_bytes,
        isolation_level: config.isolation_level,
        session_id: 0,
        session_epoch: -1,
        topics,
        ..Default::default()
    };
    let (resp, _) = client.node(leader).await?.send(&req, 12, "Fetch").await?;
    check(resp.error_code, None)?;
    let mut records = Vec::new();
    let mut hws = Vec::new();
    let mut errors = Vec::new();
    let mut ends = Vec::new();
    for t in resp.responses {
        for p in t.partitions {
            if p.error_code != 0 {
                errors.push(((t.topic.clone(), p.partition_index), p.error_code));
                continue;
            }
            let read_committed = config.isolation_level == 1;
            // A read_committed consumer's end is the last stable offset.
            let end = if read_committed {
                p.last_stable_offset
            } else {
                p.high_watermark
            };
            hws.push(((t.topic.clone(), p.partition_index), end));
            let Some(RecordsPayload::V2(batches)) = p.records else {
                continue;
            };
            if let Some(last) = batches.last() {
                ends.push((
                    (t.topic.clone(), p.partition_index),
                    last.base_offset + last.last_offset_delta as i64 + 1,
                ));
            }
            let aborted: Vec<(i64, i64)> = p
                .aborted_transactions
                .unwrap_or_default()
                .iter()
                .map(|a| (a.first_offset, a.producer_id))
                .collect();
            for b in deliverable(batches, &aborted, read_committed) {
                for r in b.records {
                    records.push(ConsumedRecord {
                        topic: t.topic.clone(),
                        partition: p.partition_index,
                        offset: b.base_offset + r.offset_delta as i64,
                        timestamp: if matches!(
                            b.attributes.timestamp_type(),
                            TimestampType::LogAppendTime
                        ) {
                            b.max_timestamp
                        } else {
                            b.base_timestamp + r.timestamp_delta
                        },
                        key: r.key,
                        value: r.value,
                        headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                    });
                }
            }
        }
    }
    Ok((records, hws, errors, ends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use krabka_protocol::records::{Attributes, Record};

    /// A one-record batch at `offset` from `pid`; a marker when `marker` is Some(commit).
    fn batch(offset: i64, pid: i64, transactional: bool, marker: Option<bool>) -> RecordBatch {
        let mut attributes = Attributes::default().with_transactional(transactional);
        let mut record = Record {
            value: Some(Bytes::from(format!("{offset}"))),
            ..Default::default()
        };
        if let Some(commit) = marker {
            attributes = Attributes(attributes.0 | 0x20);
            record.key = Some(Bytes::from(vec![0, 0, 0, commit as u8]));
        }
        RecordBatch {
            base_offset: offset,
            attributes,
            producer_id: pid,
            records: vec![record],
            ..Default::default()
        }
    }

    fn offsets(batches: Vec<RecordBatch>) -> Vec<i64> {
        batches.iter().map(|b| b.base_offset).collect()
    }

    #[test]
    fn read_committed_drops_aborted_transactions_up_to_their_marker() {
        // Producer 1 aborts 0-1 (marker at 3), producer 2 commits 2 (marker at 4), plain
        // records at 5, producer 1 again at 6, committed (marker at 7).
        let log = || {
            vec![
                batch(0, 1, true, None),
                batch(1, 1, true, None),
                batch(2, 2, true, None),
                batch(3, 1, true, Some(false)),
                batch(4, 2, true, Some(true)),
                batch(5, -1, false, None),
                batch(6, 1, true, None),
                batch(7, 1, true, Some(true)),
            ]
        };
        let aborted = [(0, 1)];
        assert_eq!(offsets(deliverable(log(), &aborted, true)), vec![2, 5, 6]);
        // read_uncommitted: everything but the markers.
        assert_eq!(
            offsets(deliverable(log(), &aborted, false)),
            vec![0, 1, 2, 5, 6]
        );
        // A fetch from the middle of the aborted transaction.
        let tail: Vec<RecordBatch> = log().into_iter().skip(1).collect();
        assert_eq!(offsets(deliverable(tail, &aborted, true)), vec![2, 5, 6]);
    }
}
