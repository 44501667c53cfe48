//! The broker's side of the coordinators: their traits implemented over this node's
//! partitions (a coordinator write is a local append, answered once the high watermark
//! passes it), the markers written into local partitions, and the elections that hand the
//! coordinators the internal partitions this node leads.

use std::time::Duration;

use strom_coordinator::group::coordinator::OFFSETS_TOPIC;
use strom_coordinator::host::{
    BoxFuture, MarkerWriter, Markers, PartitionWriter, ProducerIdSource, Topics, WriteError,
};
use strom_coordinator::txn::coordinator::TXN_TOPIC;
use strom_metadata::TopicPartition;
use strom_storage::batch::BatchHeader;
use strom_storage::producer_state::SequenceError;

use crate::broker::Broker;
use crate::errors;
use crate::partition::{AppendError, HighWatermarkWait};

/// How long a coordinator write may wait to be committed (Kafka's
/// `offsets.commit.timeout.ms`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

fn write_error(e: AppendError) -> WriteError {
    match e {
        AppendError::Sequence(SequenceError::InvalidEpoch { .. }) => {
            WriteError::InvalidProducerEpoch
        }
        AppendError::Sequence(SequenceError::TxnState(why)) => {
            WriteError::InvalidTxnState(why.to_string())
        }
        e @ AppendError::NotEnoughReplicas { .. } => WriteError::NotEnoughReplicas(e.to_string()),
        e => WriteError::Failed(e.to_string()),
    }
}

impl PartitionWriter for Broker {
    fn append<'a>(
        &'a self,
        tp: &'a TopicPartition,
        mut batch: Vec<u8>,
        verification: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, WriteError>> {
        Box::pin(async move {
            let p = self
                .leader_partition(&tp.topic, tp.partition)
                .map_err(|_| WriteError::NotLeader)?;
            let transactional = BatchHeader::parse(&batch).is_some_and(|h| h.is_transactional());
            // Kafka's coordinators append with acks=all.
            p.check_min_isr().map_err(write_error)?;
            let epoch = p.leader_epoch();
            let base = if transactional {
                p.append_transactional(&mut batch, verification)
            } else {
                p.append(&mut batch, -1).map(|a| a.base_offset)
            }
            .map_err(write_error)?;
            // The batch was patched in place: its header now holds the offsets it got.
            let last = BatchHeader::parse(&batch).map_or(base, |h| h.last_offset() as u64);
            let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
            match p.wait_for_high_watermark(last + 1, epoch, deadline).await {
                HighWatermarkWait::Reached => Ok(base),
                HighWatermarkWait::TimedOut => Err(WriteError::Timeout),
                HighWatermarkWait::NotLeader => Err(WriteError::NotLeader),
            }
        })
    }

    fn replay(
        &self,
        tp: &TopicPartition,
        f: &mut dyn FnMut(&BatchHeader, &[u8]),
    ) -> Result<(), WriteError> {
        let p = self
            .partition(&tp.topic, tp.partition)
            .ok_or(WriteError::NotLeader)?;
        p.for_each_batch(f).map_err(|e| {
            tracing::error!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot read the partition back");
            WriteError::Failed(e.to_string())
        })
    }
}

impl ProducerIdSource for Broker {
    fn next_producer_id(&self) -> Result<i64, WriteError> {
        self.allocate_producer_id()
            .map_err(|e| WriteError::Failed(e.to_string()))
    }
}

impl Topics for Broker {
    fn partition_exists(&self, topic: &str, partition: i32) -> bool {
        self.image().partition(topic, partition).is_some()
    }

    fn partition_count(&self, topic: &str) -> Option<i32> {
        Broker::partition_count(self, topic)
    }

    fn leadership_current(&self) -> bool {
        Broker::leadership_current(self)
    }

    fn ensure_internal_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, Result<i32, i16>> {
        Box::pin(Broker::ensure_internal_topic(self, name, partitions))
    }
}

impl MarkerWriter for Broker {
    /// Markers for partitions led here are written here; the others go to their leaders
    /// in one WriteTxnMarkers request per broker. What failed is returned to be retried.
    fn write_markers<'a>(&'a self, m: &'a Markers) -> BoxFuture<'a, Vec<(TopicPartition, i16)>> {
        Box::pin(async move {
            let image = self.image();
            let me = self.config.node_id;
            let mut failed = Vec::new();
            let mut remote: std::collections::BTreeMap<i32, Vec<TopicPartition>> =
                Default::default();
            let mut results = Vec::new();
            for tp in &m.partitions {
                match image.partition(&tp.topic, tp.partition).map(|p| p.leader) {
                    Some(l) if l != me && l >= 0 => remote.entry(l).or_default().push(tp.clone()),
                    // No leader now: retried once there is one.
                    Some(l) if l < 0 => failed.push((tp.clone(), errors::NOT_LEADER_OR_FOLLOWER)),
                    _ => {
                        let code = self
                            .write_marker(
                                &tp.topic,
                                tp.partition,
                                m.producer_id,
                                m.producer_epoch,
                                m.commit,
                                m.coordinator_epoch,
                            )
                            .await;
                        results.push((tp.clone(), code));
                    }
                }
            }
            for (leader, tps) in remote {
                results.extend(self.send_markers(leader, m, tps).await);
            }
            for (tp, code) in results {
                match code {
                    errors::NONE => {}
                    // A deleted partition has nothing left to end; a newer epoch already
                    // wrote there, which ended this transaction: neither can be retried into
                    // success.
                    errors::UNKNOWN_TOPIC_OR_PARTITION
                    | errors::INVALID_PRODUCER_EPOCH
                    | errors::TRANSACTION_COORDINATOR_FENCED => {
                        tracing::warn!(topic = %tp.topic, partition = tp.partition, code, "transaction marker skipped");
                    }
                    _ => failed.push((tp, code)),
                }
            }
            failed
        })
    }
}

impl Broker {
    /// WriteTxnMarkers to broker `leader` for `tps`: a code per partition.
    async fn send_markers(
        &self,
        leader: i32,
        m: &Markers,
        tps: Vec<TopicPartition>,
    ) -> Vec<(TopicPartition, i16)> {
        use krabka_protocol::owned::write_txn_markers_request::{
            WritableTxnMarker, WritableTxnMarkerTopic, WriteTxnMarkersRequest,
        };
        let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
        for tp in &tps {
            match topics.last_mut() {
                Some(t) if t.name == tp.topic => t.partition_indexes.push(tp.partition),
                _ => topics.push(WritableTxnMarkerTopic {
                    name: tp.topic.clone(),
                    partition_indexes: vec![tp.partition],
                    ..Default::default()
                }),
            }
        }
        let req = WriteTxnMarkersRequest {
            markers: vec![WritableTxnMarker {
                producer_id: m.producer_id,
                producer_epoch: m.producer_epoch,
                transaction_result: m.commit,
                topics,
                coordinator_epoch: m.coordinator_epoch,
                ..Default::default()
            }],
            ..Default::default()
        };
        match self
            .send_to_broker(leader, &req, 1, "WriteTxnMarkers")
            .await
        {
            Ok(resp) => {
                let codes: std::collections::HashMap<(String, i32), i16> = resp
                    .markers
                    .iter()
                    .flat_map(|r| &r.topics)
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .map(|p| ((t.name.clone(), p.partition_index), p.error_code))
                    })
                    .collect();
                tps.into_iter()
                    .map(|tp| {
                        let code = codes
                            .get(&(tp.topic.clone(), tp.partition))
                            .copied()
                            .unwrap_or(errors::UNKNOWN_SERVER_ERROR);
                        (tp, code)
                    })
                    .collect()
            }
            Err(e) => {
                tracing::warn!(leader, error = %e, "transaction markers not delivered; will retry");
                tps.into_iter()
                    .map(|tp| (tp, errors::NOT_LEADER_OR_FOLLOWER))
                    .collect()
            }
        }
    }
}

impl Broker {
    /// Writes one marker into a local partition (for the coordinator, or a WriteTxnMarkers
    /// request); a marker in `__consumer_offsets` also ends the producer's pending group
    /// offsets there.
    pub async fn write_marker(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> i16 {
        let p = match self.leader_partition(topic, partition) {
            Ok(p) => p,
            Err(code) => return code,
        };
        // Kafka writes markers with acks=all: a marker the ISR has not confirmed could be
        // lost to a failover after the coordinator counted it written, leaving the
        // transaction open here for good. A marker that times out is retried (a second
        // marker for an ended transaction changes nothing).
        if p.check_min_isr().is_err() {
            return errors::NOT_ENOUGH_REPLICAS;
        }
        let epoch = p.leader_epoch();
        match p.write_marker(producer_id, producer_epoch, commit, coordinator_epoch) {
            Ok(offset) => {
                let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
                match p.wait_for_high_watermark(offset + 1, epoch, deadline).await {
                    HighWatermarkWait::Reached => {}
                    HighWatermarkWait::TimedOut => return errors::REQUEST_TIMED_OUT,
                    HighWatermarkWait::NotLeader => return errors::NOT_LEADER_OR_FOLLOWER,
                }
                if topic == OFFSETS_TOPIC {
                    self.groups
                        .complete_txn(partition, producer_id, commit)
                        .await;
                }
                errors::NONE
            }
            Err(AppendError::Sequence(SequenceError::InvalidEpoch { .. })) => {
                errors::INVALID_PRODUCER_EPOCH
            }
            Err(AppendError::Sequence(SequenceError::CoordinatorFenced { .. })) => {
                errors::TRANSACTION_COORDINATOR_FENCED
            }
            Err(e) => {
                tracing::error!(topic, partition, error = %e, "cannot write a transaction marker");
                errors::KAFKA_STORAGE_ERROR
            }
        }
    }

    /// This node leads `tp` from `epoch` on: an internal partition's coordinator loads
    /// its shard.
    pub(crate) fn elect(&self, tp: &TopicPartition, epoch: i32) {
        match tp.topic.as_str() {
            OFFSETS_TOPIC => self.groups.on_election(self, tp.partition, epoch),
            TXN_TOPIC => self.txns.on_election(self, tp.partition, epoch),
            _ => {}
        }
    }

    /// This node no longer leads `tp` (it follows, or the partition is gone).
    pub(crate) fn resign(&self, tp: &TopicPartition) {
        match tp.topic.as_str() {
            OFFSETS_TOPIC => self.groups.on_resignation(tp.partition, None),
            TXN_TOPIC => self.txns.on_resignation(tp.partition, None),
            _ => {}
        }
    }
}

impl Broker {
    /// Group timers (session expiry, join phase ends) until `stop` fires.
    pub async fn run_group_timers(
        self: std::sync::Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        self.groups.run_timers(&*self, stop).await
    }

    /// Transaction timers (timeouts, prepared transactions to finish, id expiry) until
    /// `stop` fires.
    pub async fn run_txn_timers(
        self: std::sync::Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        self.txns.run_timers(&*self, stop).await
    }

    /// The periodic committed-offsets check (at start, then every
    /// offsets.retention.check.interval.ms): an older strom's internal topics are made
    /// compacted, then offsets expire.
    pub async fn maintain_groups(&self) {
        self.compact_internal_topics().await;
        self.groups.maintain(self).await
    }
}
