//! Producing into a transaction: a producer's first transactional batch in a partition is
//! checked with the transaction coordinator before it is written (KIP-890's partition
//! verification), so that no client can open a transaction here that no coordinator knows
//! of: such a transaction would never be ended and would hold the last stable offset, and
//! every read_committed consumer with it, for ever.
//!
//! A verification guard closes the race with the transaction's end: the guard is set in the
//! partition before the coordinator is asked, a marker drops it, and the batch is written
//! only if its guard is still there.

use super::state::TxnState;
use crate::broker::Broker;
use crate::partition::{AppendError, Appended, Partition};
use crate::producer_state::SequenceError;
use strom_storage::batch::BatchHeader;

impl Broker {
    /// Appends a produce request's records for one partition; `transactional_id` is the
    /// request's.
    pub fn append_records(
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
                if let Err(e) = self.verify_in_transaction(p, &h, transactional_id) {
                    p.cancel_verification(h.producer_id, guard);
                    return Err(AppendError::Sequence(e));
                }
                Some(guard)
            }
            _ => None,
        };
        p.append_verified(records, acks, guard)
    }

    /// Whether the coordinator has this producer's transaction open with the partition in
    /// it. On one node the coordinator is local; in a cluster this becomes an
    /// AddPartitionsToTxn request with verify_only.
    fn verify_in_transaction(
        &self,
        p: &Partition,
        h: &BatchHeader,
        transactional_id: Option<&str>,
    ) -> Result<(), SequenceError> {
        const NOT_IN_TXN: SequenceError =
            SequenceError::TxnState("the batch is not part of an ongoing transaction");
        let m = transactional_id
            .and_then(|id| self.txns.describe(id))
            .ok_or(NOT_IN_TXN)?;
        if m.producer_id != h.producer_id {
            return Err(NOT_IN_TXN);
        }
        if m.producer_epoch != h.producer_epoch {
            return Err(SequenceError::InvalidEpoch {
                current: m.producer_epoch,
            });
        }
        if m.state != TxnState::Ongoing || !m.partitions.contains(&(p.topic.clone(), p.index)) {
            return Err(NOT_IN_TXN);
        }
        Ok(())
    }
}
