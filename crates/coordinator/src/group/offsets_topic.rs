//! `__consumer_offsets`: where the coordinator writes offsets and group metadata, how a shard
//! reads them back when elected, and how they expire. The topic is compacted: what is
//! deleted (expired offsets, a forgotten or deleted group) is written as a tombstone, and
//! the log cleaner keeps only each key's latest record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use strom_metadata::TopicPartition;
use strom_storage::batch;
use strom_storage::txn_index;

use super::coordinator::{GroupCoordinator, GroupShard, OFFSETS_TOPIC, now_ms};
use super::records::{CommittedOffset, GroupMetadata, Record, StoredMember};
use super::state::{Group, State};
use super::txn_offsets::PendingOffsets;
use crate::host::Host;
use crate::internal_topic::{build_batch, write_error};

impl GroupCoordinator {
    /// Appends records for `group` to its partition of `__consumer_offsets`; returns once
    /// they are committed, with the batch's base offset (`None` when there was nothing to
    /// write).
    pub(super) async fn persist(
        &self,
        host: &dyn Host,
        tp: &TopicPartition,
        group: &str,
        records: &[Record],
    ) -> Result<Option<u64>, i16> {
        if records.is_empty() {
            return Ok(None);
        }
        let kv: Vec<_> = records.iter().map(|r| (r.key(), r.value())).collect();
        let bytes = build_batch(&kv, now_ms() as i64).build();
        host.append(tp, bytes, None).await.map(Some).map_err(|e| {
            tracing::error!(group, error = %e, "cannot write to {OFFSETS_TOPIC}");
            write_error(&e)
        })
    }

    pub(super) fn group_record(group: &Group) -> Record {
        let protocol = group.protocol.clone().unwrap_or_default();
        Record::Group {
            group: group.id.clone(),
            value: Some(GroupMetadata {
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                generation: group.generation,
                protocol: group.protocol.clone(),
                leader: group.leader.clone(),
                state_timestamp: group.state_timestamp as i64,
                members: group
                    .members()
                    .map(|m| StoredMember {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        session_timeout_ms: m.session_timeout_ms,
                        subscription: m.metadata(&protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect(),
            }),
        }
    }

    /// Offsets of groups without members expire `offsets.retention.minutes` after their
    /// last commit or the group's emptying, whichever is later; a group left with nothing,
    /// not even offsets of an open transaction, is forgotten.
    pub async fn expire(&self, host: &dyn Host, now: u64) {
        let retention = self.config.offsets_retention_ms as i64;
        for (_, shard) in self.shards.active() {
            for (id, _) in shard_slots(&shard) {
                let Some(mut entry) = self.entry(&shard, &id, false).await else {
                    continue;
                };
                if entry.group.state != State::Empty {
                    continue;
                }
                let since = entry.group.state_timestamp as i64;
                let expired: Vec<(String, i32)> = entry
                    .offsets
                    .iter()
                    .filter(|(_, o)| o.commit_timestamp.max(since) + retention < now as i64)
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut records: Vec<Record> = expired
                    .iter()
                    .map(|(t, p)| Record::Offset {
                        group: id.clone(),
                        topic: t.clone(),
                        partition: *p,
                        value: None,
                    })
                    .collect();
                // As Kafka's hasOffsets: offsets of an open transaction keep the group too.
                let forget = expired.len() == entry.offsets.len()
                    && entry.pending.is_empty()
                    && since + retention < now as i64;
                if forget {
                    records.push(Record::Group {
                        group: id.clone(),
                        value: None,
                    });
                }
                if self.persist(host, &shard.tp, &id, &records).await.is_err() {
                    continue;
                }
                for k in &expired {
                    entry.offsets.remove(k);
                }
                if forget {
                    Self::remove(&shard, &mut entry);
                }
            }
        }
    }

    /// Reads one partition of `__consumer_offsets` back: the shard of an election. The
    /// partition is compacted: offsets have gaps, batches may have no records left, and a
    /// tombstone may be gone together with what it deleted; a batch's base offset only
    /// orders a transaction's offsets against plain commits. `None` when the partition
    /// cannot be read: its shard is not served.
    pub(super) fn load(&self, host: &dyn Host, tp: TopicPartition) -> Option<GroupShard> {
        let mut offsets: HashMap<String, BTreeMap<(String, i32), CommittedOffset>> = HashMap::new();
        let mut metas: HashMap<String, GroupMetadata> = HashMap::new();
        // Transactional offsets by partition and producer, then group, until their marker is
        // read: markers are per partition, so one ends only what is pending there.
        type Offsets = BTreeMap<(String, i32), CommittedOffset>;
        let mut pending: HashMap<(i32, i64), HashMap<String, Offsets>> = HashMap::new();
        let index = tp.partition;
        let replayed = host.replay(&tp, &mut |h, b| {
            if h.is_control() {
                let commit = batch::records(b)
                    .next()
                    .and_then(|r| r.key)
                    .and_then(txn_index::marker_type);
                if let Some(groups) = pending.remove(&(index, h.producer_id))
                    && commit == Some(true)
                {
                    for (group, offs) in groups {
                        super::txn_offsets::apply(offsets.entry(group).or_default(), offs);
                    }
                }
            } else {
                let appended = Some(h.base_offset as u64);
                for rec in batch::records(b) {
                    let Some(key) = rec.key else { continue };
                    match Record::decode(key, rec.value) {
                        Some(Record::Offset {
                            group,
                            topic,
                            partition,
                            value: Some(mut v),
                        }) if h.is_transactional() => {
                            v.appended = appended;
                            pending
                                .entry((index, h.producer_id))
                                .or_default()
                                .entry(group)
                                .or_default()
                                .insert((topic, partition), v);
                        }
                        Some(Record::Offset {
                            group,
                            topic,
                            partition,
                            value,
                        }) => {
                            let g = offsets.entry(group).or_default();
                            match value {
                                Some(mut v) => {
                                    v.appended = appended;
                                    g.insert((topic, partition), v)
                                }
                                None => g.remove(&(topic, partition)),
                            };
                        }
                        Some(Record::Group {
                            group,
                            value: Some(v),
                        }) => {
                            metas.insert(group, v);
                        }
                        Some(Record::Group { group, value: None }) => {
                            metas.remove(&group);
                            offsets.remove(&group);
                        }
                        None => {}
                    }
                }
            }
        });
        if let Err(e) = replayed {
            tracing::error!(partition = index, error = %e, "cannot read {OFFSETS_TOPIC}; its groups are not served");
            return None;
        }
        let now = now_ms();
        let mut groups: HashMap<String, super::coordinator::Entry> = HashMap::new();
        for (id, offs) in offsets {
            let entry = groups
                .entry(id.clone())
                .or_insert_with(|| self.new_entry(&id));
            entry.offsets = offs;
        }
        for ((partition, pid), by_group) in pending {
            for (id, offsets) in by_group {
                let entry = groups
                    .entry(id.clone())
                    .or_insert_with(|| self.new_entry(&id));
                entry
                    .pending
                    .insert(pid, PendingOffsets { partition, offsets });
            }
        }
        for (id, meta) in metas {
            let entry = groups
                .entry(id.clone())
                .or_insert_with(|| self.new_entry(&id));
            entry.group.restore(
                meta.generation,
                Some(meta.protocol_type.clone()).filter(|t| !t.is_empty()),
                meta.protocol.clone(),
                meta.leader.clone(),
                meta.members_for_state(),
                now,
            );
            if entry.group.is_empty() {
                entry.group.state_timestamp = meta.state_timestamp.max(0) as u64;
            }
        }
        tracing::info!(
            partition = index,
            groups = groups.len(),
            "loaded {OFFSETS_TOPIC}"
        );
        Some(GroupShard {
            tp,
            resigned: std::sync::atomic::AtomicBool::new(false),
            groups: Mutex::new(
                groups
                    .into_iter()
                    .map(|(id, e)| (id, Arc::new(tokio::sync::Mutex::new(e))))
                    .collect(),
            ),
        })
    }

    /// The periodic offsets check: expiry. What expires is deleted with tombstones, which
    /// the log cleaner removes from the compacted topic after `delete.retention.ms`.
    pub async fn maintain(&self, host: &dyn Host) {
        self.expire(host, now_ms()).await;
    }
}

fn shard_slots(shard: &GroupShard) -> Vec<(String, super::coordinator::Slot)> {
    let groups = shard.groups.lock().unwrap();
    groups.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
