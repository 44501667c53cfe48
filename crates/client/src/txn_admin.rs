//! Transaction administration, as Kafka's admin client does it (KIP-664): listing and
//! describing transactions, describing a partition's producers, and aborting a hanging
//! transaction by writing its abort marker.

use krabka_protocol::owned::describe_producers_request::{DescribeProducersRequest, TopicRequest};
use krabka_protocol::owned::describe_transactions_request::DescribeTransactionsRequest;
use krabka_protocol::owned::list_transactions_request::ListTransactionsRequest;
use krabka_protocol::owned::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic, WriteTxnMarkersRequest,
};

use crate::Client;
use crate::error::{ClientError, Result, check};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: String,
    /// The broker that answered: the id's transaction coordinator.
    pub coordinator: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    pub coordinator: i32,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    /// When the current or last transaction started; -1 before the first.
    pub start_time_ms: i64,
    pub partitions: Vec<(String, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerDescription {
    pub producer_id: i64,
    pub producer_epoch: i32,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
    /// -1 when the producer has no transaction open in the partition.
    pub txn_start_offset: i64,
}

/// Which transactions ListTransactions returns; empty filters match everything.
#[derive(Debug, Clone, Default)]
pub struct TransactionFilter {
    pub states: Vec<String>,
    pub producer_ids: Vec<i64>,
    /// Only transactions open longer than this (ListTransactions v1); -1 for any.
    pub min_duration_ms: i64,
}

fn unknown_partition(topic: &str, partition: i32) -> ClientError {
    ClientError::Kafka {
        code: 3,
        name: "UNKNOWN_TOPIC_OR_PARTITION",
        message: Some(format!("{topic}-{partition}")),
    }
}

impl Client {
    /// The broker coordinating transactional id `id`.
    pub async fn transaction_coordinator(&self, id: &str) -> Result<i32> {
        self.find_coordinator(id, 1).await
    }

    /// The leader of `topic`'s partition `partition`.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<i32> {
        let meta = self.metadata(Some(&[topic.to_string()])).await?;
        let t = meta
            .topic(topic)
            .ok_or_else(|| unknown_partition(topic, partition))?;
        check(t.error, Some(format!("topic {topic}")))?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.index == partition)
            .ok_or_else(|| unknown_partition(topic, partition))?;
        check(p.error, Some(format!("{topic}-{partition}")))?;
        Ok(p.leader)
    }

    /// Every transactional id known to any broker, by id.
    pub async fn list_transactions(
        &self,
        filter: &TransactionFilter,
    ) -> Result<Vec<TransactionListing>> {
        let meta = self.metadata(Some(&[])).await?;
        let mut out = Vec::new();
        for b in &meta.brokers {
            let req = ListTransactionsRequest {
                state_filters: filter.states.clone(),
                producer_id_filters: filter.producer_ids.clone(),
                duration_filter: filter.min_duration_ms,
                ..Default::default()
            };
            let (resp, _) = self
                .node(b.id)
                .await?
                .send(&req, 1, "ListTransactions")
                .await?;
            check(resp.error_code, None)?;
            if !resp.unknown_state_filters.is_empty() {
                return Err(ClientError::Protocol(format!(
                    "unknown transaction states: {}",
                    resp.unknown_state_filters.join(", ")
                )));
            }
            out.extend(
                resp.transaction_states
                    .into_iter()
                    .map(|t| TransactionListing {
                        transactional_id: t.transactional_id,
                        producer_id: t.producer_id,
                        state: t.transaction_state,
                        coordinator: b.id,
                    }),
            );
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        Ok(out)
    }

    pub async fn describe_transaction(&self, id: &str) -> Result<TransactionDescription> {
        let coordinator = self.transaction_coordinator(id).await?;
        let req = DescribeTransactionsRequest {
            transactional_ids: vec![id.to_string()],
            ..Default::default()
        };
        let (resp, _) = self
            .node(coordinator)
            .await?
            .send(&req, 0, "DescribeTransactions")
            .await?;
        let t = resp
            .transaction_states
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("empty DescribeTransactions answer".into()))?;
        check(t.error_code, Some(format!("transactional id {id}")))?;
        let mut partitions: Vec<(String, i32)> = t
            .topics
            .into_iter()
            .flat_map(|d| {
                let topic = d.topic;
                d.partitions.into_iter().map(move |p| (topic.clone(), p))
            })
            .collect();
        partitions.sort();
        Ok(TransactionDescription {
            transactional_id: t.transactional_id,
            coordinator,
            state: t.transaction_state,
            producer_id: t.producer_id,
            producer_epoch: t.producer_epoch,
            timeout_ms: t.transaction_timeout_ms,
            start_time_ms: t.transaction_start_time_ms,
            partitions,
        })
    }

    /// The producers a partition's leader keeps state for.
    pub async fn describe_producers(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<ProducerDescription>> {
        let leader = self.leader(topic, partition).await?;
        let req = DescribeProducersRequest {
            topics: vec![TopicRequest {
                name: topic.to_string(),
                partition_indexes: vec![partition],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (resp, _) = self
            .node(leader)
            .await?
            .send(&req, 0, "DescribeProducers")
            .await?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| ClientError::Protocol("empty DescribeProducers answer".into()))?;
        check(p.error_code, p.error_message)?;
        Ok(p.active_producers
            .into_iter()
            .map(|s| ProducerDescription {
                producer_id: s.producer_id,
                producer_epoch: s.producer_epoch,
                last_sequence: s.last_sequence,
                last_timestamp: s.last_timestamp,
                coordinator_epoch: s.coordinator_epoch,
                txn_start_offset: s.current_txn_start_offset,
            })
            .collect())
    }

    /// Ends producer `producer_id`'s open transaction in one partition with an abort
    /// marker, written by the partition's leader: what `kafka-transactions.sh abort` does
    /// for a transaction its coordinator forgot.
    pub async fn abort_transaction(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<()> {
        let leader = self.leader(topic, partition).await?;
        let req = WriteTxnMarkersRequest {
            markers: vec![WritableTxnMarker {
                producer_id,
                producer_epoch,
                transaction_result: false,
                topics: vec![WritableTxnMarkerTopic {
                    name: topic.to_string(),
                    partition_indexes: vec![partition],
                    ..Default::default()
                }],
                coordinator_epoch,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (resp, _) = self
            .node(leader)
            .await?
            .send(&req, 1, "WriteTxnMarkers")
            .await?;
        let code = resp
            .markers
            .into_iter()
            .flat_map(|m| m.topics)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .map(|p| p.error_code)
            .ok_or_else(|| ClientError::Protocol("empty WriteTxnMarkers answer".into()))?;
        check(code, Some(format!("{topic}-{partition}")))
    }
}
