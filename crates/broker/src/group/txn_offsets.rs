//! Offsets committed inside a transaction (TxnOffsetCommit): written to `__consumer_offsets`
//! as transactional records of the producer, held aside per producer, and made the group's
//! committed offsets only when the commit marker reaches that partition (an abort drops them).

use std::collections::{BTreeMap, HashSet};

use strom_storage::batch::{self, BatchBuilder};

use super::coordinator::{CommitRequest, GroupCoordinator, OFFSETS_TOPIC, now_ms};
use super::records::{CommittedOffset, Record, partition_for};
use crate::broker::Broker;
use crate::errors;
use crate::partition::AppendError;
use strom_storage::producer_state::SequenceError;

/// Offsets a producer's open transaction committed for one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingOffsets {
    /// The `__consumer_offsets` partition they were written to: only a marker there ends
    /// them.
    pub partition: i32,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
}

/// The producer and, from TxnOffsetCommit v3, the group member it commits for.
pub struct TxnCommit<'a> {
    pub group_id: &'a str,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub member_id: &'a str,
    pub instance_id: Option<&'a str>,
    pub generation: i32,
}

impl GroupCoordinator {
    /// TxnOffsetCommit: one error code per offset, in order. `guard` is the verification of
    /// the producer's first offsets in its transaction ([`Broker::txn_offset_commit`]).
    pub fn txn_commit(
        &self,
        broker: &Broker,
        c: &TxnCommit,
        offsets: Vec<CommitRequest>,
        guard: Option<u64>,
    ) -> Vec<i16> {
        let n = offsets.len();
        if c.group_id.is_empty() {
            return vec![super::coordinator::INVALID_GROUP_ID; n];
        }
        let partitions = match self.ensure_offsets_topic(broker) {
            Ok(p) => p,
            Err(e) => return vec![e; n],
        };
        let mut groups = self.lock();
        // Before v3 (generation -1 and no member) the commit is not checked against the
        // group, as in Kafka: the producer's epoch is what fences a zombie.
        if let Some(entry) = groups.get(c.group_id) {
            let check = entry
                .group
                .check_commit(c.member_id, c.instance_id, c.generation, true);
            if check != errors::NONE {
                return vec![check; n];
            }
        }
        let now = now_ms() as i64;
        let mut results = Vec::with_capacity(n);
        let mut records = Vec::new();
        for o in &offsets {
            if broker.partition(&o.topic, o.partition).is_none() {
                results.push(errors::UNKNOWN_TOPIC_OR_PARTITION);
                continue;
            }
            if o.metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                results.push(super::coordinator::OFFSET_METADATA_TOO_LARGE);
                continue;
            }
            records.push(Record::Offset {
                group: c.group_id.to_string(),
                topic: o.topic.clone(),
                partition: o.partition,
                value: Some(CommittedOffset {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata.clone().unwrap_or_default(),
                    commit_timestamp: now,
                }),
            });
            results.push(errors::NONE);
        }
        if records.is_empty() {
            return results;
        }
        let offsets_partition = partition_for(c.group_id, partitions);
        let Some(p) = broker.partition(OFFSETS_TOPIC, offsets_partition) else {
            return vec![errors::COORDINATOR_NOT_AVAILABLE; n];
        };
        let mut b = BatchBuilder::new();
        for r in &records {
            b = b.record(batch::Record {
                timestamp: now,
                key: Some(r.key()),
                value: r.value(),
                headers: vec![],
            });
        }
        b.producer_id = c.producer_id;
        b.producer_epoch = c.producer_epoch;
        b.transactional = true;
        if let Err(e) = p.append_transactional(&mut b.build(), guard) {
            let code = match e {
                // As Kafka answers TxnOffsetCommit from a producer with an old epoch.
                AppendError::Sequence(SequenceError::InvalidEpoch { .. }) => {
                    errors::INVALID_PRODUCER_EPOCH
                }
                // Its transaction ended between the verification and the write.
                AppendError::Sequence(SequenceError::TxnState(_)) => errors::INVALID_TXN_STATE,
                e => {
                    tracing::error!(group = c.group_id, error = %e, "cannot write to {OFFSETS_TOPIC}");
                    errors::COORDINATOR_NOT_AVAILABLE
                }
            };
            return results
                .into_iter()
                .map(|r| if r == errors::NONE { code } else { r })
                .collect();
        }
        let entry = groups
            .entry(c.group_id.to_string())
            .or_insert_with(|| self.new_entry(c.group_id));
        let pending = entry
            .pending
            .entry(c.producer_id)
            .or_insert_with(|| PendingOffsets {
                partition: offsets_partition,
                offsets: BTreeMap::new(),
            });
        for r in records {
            if let Record::Offset {
                topic,
                partition,
                value: Some(v),
                ..
            } = r
            {
                pending.offsets.insert((topic, partition), v);
            }
        }
        results
    }

    /// A commit or abort marker of producer `producer_id` was written to partition
    /// `partition` of `__consumer_offsets`: its pending offsets there become committed or
    /// are dropped. Offsets pending on another partition wait for their own marker.
    pub fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        let mut groups = self.lock();
        for entry in groups.values_mut() {
            if entry
                .pending
                .get(&producer_id)
                .is_none_or(|p| p.partition != partition)
            {
                continue;
            }
            if let Some(pending) = entry.pending.remove(&producer_id)
                && commit
            {
                entry.offsets.extend(pending.offsets);
            }
        }
    }

    /// Partitions of `group_id` with transactional offsets not yet committed or aborted: a
    /// consumer asking for stable offsets must wait for them.
    pub fn unstable_partitions(&self, group_id: &str) -> HashSet<(String, i32)> {
        let groups = self.lock();
        groups
            .get(group_id)
            .map(|e| {
                e.pending
                    .values()
                    .flat_map(|p| p.offsets.keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
