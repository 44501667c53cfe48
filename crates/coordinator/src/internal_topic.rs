//! What both coordinators do with their internal topics: build batches of their own
//! records, place keys in partitions as Kafka does, and map a failed write to the client's
//! error. The topics are compacted (`cleanup.policy=compact`): a key's latest record is its
//! state, and a null value (a tombstone) deletes it.

use strom_metadata::errors;
use strom_storage::batch::{self, BatchBuilder};

use crate::host::WriteError;

/// Java's `String.hashCode`, which Kafka uses to place a group in a partition.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The error a client gets for a coordinator write that failed.
pub(crate) fn write_error(e: &WriteError) -> i16 {
    match e {
        WriteError::NotLeader => errors::NOT_COORDINATOR,
        WriteError::InvalidProducerEpoch => errors::INVALID_PRODUCER_EPOCH,
        WriteError::InvalidTxnState(_) => errors::INVALID_TXN_STATE,
        // As Kafka maps NOT_ENOUGH_REPLICAS(_AFTER_APPEND) and timeouts of its own appends.
        WriteError::Timeout | WriteError::NotEnoughReplicas(_) | WriteError::Failed(_) => {
            errors::COORDINATOR_NOT_AVAILABLE
        }
    }
}

/// A batch of the coordinator's own records.
pub(crate) fn build_batch(records: &[(Vec<u8>, Option<Vec<u8>>)], now: i64) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for (key, value) in records {
        b = b.record(batch::Record {
            timestamp: now,
            key: Some(key.clone()),
            value: value.clone(),
            headers: vec![],
        });
    }
    b
}
