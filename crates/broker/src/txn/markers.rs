//! Writing transaction markers into this broker's partitions: what the coordinator does
//! through [`MarkerWriter`] and what a WriteTxnMarkers request asks for.

use super::coordinator::{MarkerWriter, Markers};
use crate::broker::Broker;
use crate::errors;
use crate::group::coordinator::OFFSETS_TOPIC;
use crate::partition::AppendError;
use strom_storage::producer_state::SequenceError;

impl Broker {
    /// Writes one marker into a local partition; a commit into `__consumer_offsets` also
    /// makes the producer's pending group offsets there committed.
    pub fn write_marker(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> i16 {
        let Some(p) = self.partition(topic, partition) else {
            return errors::UNKNOWN_TOPIC_OR_PARTITION;
        };
        match p.write_marker(producer_id, producer_epoch, commit, coordinator_epoch) {
            Ok(_) => {
                if topic == OFFSETS_TOPIC {
                    self.groups.complete_txn(partition, producer_id, commit);
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
}

impl MarkerWriter for Broker {
    fn write_markers(&self, m: &Markers) -> Vec<((String, i32), i16)> {
        let mut failed = Vec::new();
        for (topic, partition) in m.partitions {
            let code = self.write_marker(
                topic,
                *partition,
                m.producer_id,
                m.producer_epoch,
                m.commit,
                m.coordinator_epoch,
            );
            match code {
                errors::NONE => {}
                // A deleted partition has nothing left to end; a newer epoch already wrote
                // there, which ended this transaction: neither can be retried into success.
                errors::UNKNOWN_TOPIC_OR_PARTITION
                | errors::INVALID_PRODUCER_EPOCH
                | errors::TRANSACTION_COORDINATOR_FENCED => {
                    tracing::warn!(topic, partition, code, "transaction marker skipped");
                }
                _ => failed.push(((topic.clone(), *partition), code)),
            }
        }
        failed
    }
}
