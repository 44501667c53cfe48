//! Producing into a transaction: a producer's first transactional batch in a partition is
//! checked with the transaction coordinator before it is written (KIP-890's partition
//! verification), so that no client can open a transaction here that no coordinator knows
//! of: such a transaction would never be ended and would hold the last stable offset, and
//! every read_committed consumer with it, for ever.
//!
//! A verification guard closes the race with the transaction's end: the guard is set in the
//! partition before the coordinator is asked, a marker drops it, and the batch is written
//! only if its guard is still there.

use crate::broker::Broker;
use crate::errors;
use crate::group::coordinator::{CommitRequest, OFFSETS_TOPIC};
use crate::group::records::partition_for as group_partition;
use crate::group::txn_offsets::TxnCommit;
use crate::partition::{AppendError, Appended, Partition};
use crate::txn::state::TxnState;
use strom_storage::batch::BatchHeader;
use strom_storage::producer_state::SequenceError;

impl Broker {
    /// Appends a produce request's records for one partition; `transactional_id` is the
    /// request's.
    pub async fn append_records(
        &self,
        p: &Partition,
        records: &mut [u8],
        acks: i16,
        transactional_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        let guard = match BatchHeader::parse(records) {
            Some(h)
                if h.is_transactional()
                    && !h.is_control()
                    && h.producer_id >= 0
                    && !p.in_transaction(h.producer_id) =>
            {
                let guard = p.start_verification(h.producer_id);
                if let Err(e) = self
                    .verify_in_transaction(p, h.producer_id, h.producer_epoch, transactional_id)
                    .await
                {
                    p.cancel_verification(h.producer_id, guard);
                    return Err(e);
                }
                Some((h.producer_id, guard))
            }
            _ => None,
        };
        let appended = p.append_verified(records, acks, guard.map(|(_, g)| g));
        if let Some((pid, g)) = guard {
            // Written, the batch already dropped it; refused, it must not linger.
            p.cancel_verification(pid, g);
        }
        appended
    }

    /// TxnOffsetCommit: the group's `__consumer_offsets` partition must be in the producer's
    /// open transaction (AddOffsetsToTxn) before offsets are held there for it, or they
    /// would wait for a marker that never comes. One error code per offset, in order.
    pub async fn txn_offset_commit(
        &self,
        transactional_id: &str,
        c: &TxnCommit<'_>,
        offsets: Vec<CommitRequest>,
    ) -> Vec<i16> {
        let p = match self.groups.ensure_offsets_topic(self).await {
            Ok(partitions) if !c.group_id.is_empty() => {
                self.partition(OFFSETS_TOPIC, group_partition(c.group_id, partitions))
            }
            _ => None,
        };
        let Some(p) = p else {
            // No group id, or no offsets topic: the group coordinator says which error.
            return self.groups.txn_commit(self, c, offsets, None).await;
        };
        let mut guard = None;
        if !p.in_transaction(c.producer_id) {
            let g = p.start_verification(c.producer_id);
            let verified = self
                .verify_in_transaction(&p, c.producer_id, c.producer_epoch, Some(transactional_id))
                .await;
            if let Err(e) = verified {
                p.cancel_verification(c.producer_id, g);
                let code = match e {
                    AppendError::Sequence(SequenceError::InvalidEpoch { .. }) => {
                        errors::INVALID_PRODUCER_EPOCH
                    }
                    AppendError::CoordinatorUnavailable => errors::COORDINATOR_NOT_AVAILABLE,
                    _ => errors::INVALID_TXN_STATE,
                };
                return vec![code; offsets.len()];
            }
            guard = Some(g);
        }
        let codes = self.groups.txn_commit(self, c, offsets, guard).await;
        if let Some(g) = guard {
            p.cancel_verification(c.producer_id, g);
        }
        codes
    }

    /// Whether the coordinator has this producer's transaction open with the partition in
    /// it: asked in process when this broker is the coordinator, else with an
    /// AddPartitionsToTxn request with verify_only (KIP-890) to the broker that is.
    async fn verify_in_transaction(
        &self,
        p: &Partition,
        producer_id: i64,
        producer_epoch: i16,
        transactional_id: Option<&str>,
    ) -> Result<(), AppendError> {
        const NOT_IN_TXN: AppendError = AppendError::Sequence(SequenceError::TxnState(
            "the batch is not part of an ongoing transaction",
        ));
        let Some(id) = transactional_id else {
            return Err(NOT_IN_TXN);
        };
        let code = match self.txn_coordinator_node(id) {
            Some(node) if node != self.config.node_id => {
                self.verify_remotely(node, id, producer_id, producer_epoch, p)
                    .await
            }
            _ => {
                self.verify_locally(id, producer_id, producer_epoch, &p.topic, p.index)
                    .await
            }
        };
        match code {
            errors::NONE => Ok(()),
            errors::INVALID_PRODUCER_EPOCH | errors::PRODUCER_FENCED => {
                Err(AppendError::Sequence(SequenceError::InvalidEpoch {
                    current: producer_epoch,
                }))
            }
            // A coordinator that moved or is loading is asked again by the client's retry
            // (Kafka answers NOT_ENOUGH_REPLICAS for it), not refused for good.
            errors::COORDINATOR_NOT_AVAILABLE
            | errors::NOT_COORDINATOR
            | errors::COORDINATOR_LOAD_IN_PROGRESS => Err(AppendError::CoordinatorUnavailable),
            _ => Err(NOT_IN_TXN),
        }
    }

    /// The broker that coordinates `transactional_id` now, as the image says.
    fn txn_coordinator_node(&self, transactional_id: &str) -> Option<i32> {
        let image = self.image();
        let partitions = image
            .topic(crate::txn::coordinator::TXN_TOPIC)?
            .partitions
            .len();
        let index = crate::txn::coordinator::partition_for(transactional_id, partitions as i32);
        let leader = image
            .partition(crate::txn::coordinator::TXN_TOPIC, index)?
            .leader;
        (leader >= 0).then_some(leader)
    }

    /// The verification, by this broker's transaction coordinator: a Kafka error code.
    pub(crate) async fn verify_locally(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
    ) -> i16 {
        let m = match self.txns.describe(self, transactional_id).await {
            Ok(Some(m)) => m,
            Ok(None) => return errors::INVALID_PRODUCER_ID_MAPPING,
            Err(code) => return code,
        };
        if m.producer_id != producer_id {
            return errors::INVALID_PRODUCER_ID_MAPPING;
        }
        if m.producer_epoch != producer_epoch {
            return errors::INVALID_PRODUCER_EPOCH;
        }
        if m.state != TxnState::Ongoing || !m.partitions.contains(&(topic.to_string(), partition)) {
            return errors::INVALID_TXN_STATE;
        }
        errors::NONE
    }

    /// The verification, by the coordinator on broker `node`.
    async fn verify_remotely(
        &self,
        node: i32,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        p: &Partition,
    ) -> i16 {
        use krabka_protocol::owned::add_partitions_to_txn_request::{
            AddPartitionsToTxnRequest, AddPartitionsToTxnTransaction,
        };
        use krabka_protocol::owned::common::add_partitions_to_txn_request::add_partitions_to_txn_topic::AddPartitionsToTxnTopic;
        let req = AddPartitionsToTxnRequest {
            transactions: vec![AddPartitionsToTxnTransaction {
                transactional_id: transactional_id.to_string(),
                producer_id,
                producer_epoch,
                verify_only: true,
                topics: vec![AddPartitionsToTxnTopic {
                    name: p.topic.to_string(),
                    partitions: vec![p.index],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        match self
            .send_to_broker(node, &req, 4, "AddPartitionsToTxn")
            .await
        {
            Ok(resp) if resp.error_code != errors::NONE => resp.error_code,
            Ok(resp) => resp
                .results_by_transaction
                .iter()
                .flat_map(|t| &t.topic_results)
                .flat_map(|t| &t.results_by_partition)
                .map(|r| r.partition_error_code)
                .next()
                .unwrap_or(errors::INVALID_TXN_STATE),
            Err(e) => {
                tracing::warn!(node, error = %e, "transaction verification not delivered");
                errors::COORDINATOR_NOT_AVAILABLE
            }
        }
    }
}
