//! Offsets committed inside a transaction (TxnOffsetCommit): written to `__consumer_offsets`
//! as transactional records of the producer, held aside per producer, and made the group's
//! committed offsets only when the commit marker reaches that partition (an abort drops them).

use std::collections::{BTreeMap, HashSet};

use strom_metadata::errors;
use strom_storage::batch::BatchBuilder;

use super::coordinator::{
    CommitRequest, GroupCoordinator, INVALID_GROUP_ID, Located, OFFSETS_TOPIC, now_ms, with_failure,
};
use super::records::CommittedOffset;
use crate::host::{Host, WriteError};
use crate::internal_topic::{build_batch, write_error};

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
    /// the producer's first offsets in its transaction (the broker's partition verification
    /// asked the transaction coordinator before this).
    pub async fn txn_commit(
        &self,
        host: &dyn Host,
        c: &TxnCommit<'_>,
        offsets: Vec<CommitRequest>,
        guard: Option<u64>,
    ) -> Vec<i16> {
        let n = offsets.len();
        if c.group_id.is_empty() {
            return vec![INVALID_GROUP_ID; n];
        }
        let shard = match self.locate(host, c.group_id, true).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return vec![errors::COORDINATOR_NOT_AVAILABLE; n],
            Err(e) => return vec![e; n],
        };
        let existed = shard.groups.lock().unwrap().contains_key(c.group_id);
        let mut entry = self.entry(&shard, c.group_id, true).await.expect("created");
        // Before v3 (generation -1 and no member) the commit is not checked against the
        // group, as in Kafka: the producer's epoch is what fences a zombie.
        let check = if existed {
            entry
                .group
                .check_commit(c.member_id, c.instance_id, c.generation, true)
        } else {
            errors::NONE
        };
        if check != errors::NONE {
            return vec![check; n];
        }
        let (records, mut committed, results) = self.offset_records(host, c.group_id, &offsets);
        if records.is_empty() {
            return results;
        }
        let kv: Vec<_> = records.iter().map(|r| (r.key(), r.value())).collect();
        let mut b: BatchBuilder = build_batch(&kv, now_ms() as i64);
        b.producer_id = c.producer_id;
        b.producer_epoch = c.producer_epoch;
        b.transactional = true;
        let appended = match host.append(&shard.tp, b.build(), guard).await {
            Ok(at) => at,
            Err(e) => {
                if matches!(e, WriteError::Failed(_) | WriteError::Timeout) {
                    tracing::error!(group = c.group_id, error = %e, "cannot write to {OFFSETS_TOPIC}");
                }
                // INVALID_PRODUCER_EPOCH, as Kafka answers a producer with an old epoch;
                // INVALID_TXN_STATE when its transaction ended between verification and write.
                return with_failure(results, write_error(&e));
            }
        };
        for o in committed.values_mut() {
            o.appended = Some(appended);
        }
        let pending = entry
            .pending
            .entry(c.producer_id)
            .or_insert_with(|| PendingOffsets {
                partition: shard.tp.partition,
                offsets: BTreeMap::new(),
            });
        pending.offsets.extend(committed);
        results
    }

    /// A commit or abort marker of producer `producer_id` was written to partition
    /// `partition` of `__consumer_offsets`: its pending offsets there become committed or
    /// are dropped. Offsets pending on another partition wait for their own marker.
    pub async fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        // A marker written while the shard loads waits for the load to finish, or its
        // offsets would stay pending for good.
        let Ok(shard) = self.shards.get_settled(partition).await else {
            return;
        };
        let slots: Vec<_> = shard.groups.lock().unwrap().values().cloned().collect();
        for slot in slots {
            let mut entry = slot.lock().await;
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
                apply(&mut entry.offsets, pending.offsets);
            }
        }
    }

    /// Partitions of `group_id` with transactional offsets not yet committed or aborted: a
    /// consumer asking for stable offsets must wait for them.
    pub async fn unstable_partitions(
        &self,
        host: &dyn Host,
        group_id: &str,
    ) -> HashSet<(String, i32)> {
        let entry = match self.locate(host, group_id, false).await {
            Ok(Located::Shard(shard)) => self.entry(&shard, group_id, false).await,
            _ => None,
        };
        entry
            .map(|e| {
                e.pending
                    .values()
                    .flat_map(|p| p.offsets.keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A committed transaction's offsets join the group's: each unless the group holds a commit
/// of that partition appended later (a plain commit after the transactional one), as Kafka's
/// completePendingTxnOffsetCommit decides. Compaction keeps the later record too, so a
/// partition reads back the same before and after it.
pub(super) fn apply(
    offsets: &mut BTreeMap<(String, i32), CommittedOffset>,
    pending: BTreeMap<(String, i32), CommittedOffset>,
) {
    for (k, o) in pending {
        if offsets
            .get(&k)
            .is_none_or(|current| current.appended < o.appended)
        {
            offsets.insert(k, o);
        }
    }
}
