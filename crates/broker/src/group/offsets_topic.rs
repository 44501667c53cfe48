//! `__consumer_offsets`: where the coordinator writes offsets and group metadata, how it
//! reads them back at start, expires them, and keeps the topic small until compaction exists
//! (re-appending the live records and deleting what came before them once a partition holds
//! much more than the live state).

use std::collections::{BTreeMap, HashMap};

use strom_storage::batch::{self, BatchBuilder};

use super::coordinator::{GroupCoordinator, OFFSETS_TOPIC, now_ms};
use super::records::{CommittedOffset, GroupMetadata, Record, StoredMember, partition_for};
use super::state::{Group, State};
use super::txn_offsets::PendingOffsets;
use crate::broker::Broker;
use crate::errors;
use strom_storage::txn_index;

impl GroupCoordinator {
    /// Creates `__consumer_offsets` on first use, as Kafka does.
    pub fn ensure_offsets_topic(&self, broker: &Broker) -> Result<i32, i16> {
        broker.ensure_internal_topic(OFFSETS_TOPIC, self.config.offsets_partitions)
    }

    /// Appends records for `group` to its partition of `__consumer_offsets`.
    pub(super) fn persist(
        &self,
        broker: &Broker,
        group: &str,
        records: &[Record],
    ) -> Result<(), i16> {
        if records.is_empty() {
            return Ok(());
        }
        let partitions = self.ensure_offsets_topic(broker)?;
        let p = broker
            .partition(OFFSETS_TOPIC, partition_for(group, partitions))
            .ok_or(errors::COORDINATOR_NOT_AVAILABLE)?;
        let now = now_ms() as i64;
        let mut b = BatchBuilder::new();
        for r in records {
            b = b.record(batch::Record {
                timestamp: now,
                key: Some(r.key()),
                value: r.value(),
                headers: vec![],
            });
        }
        let mut bytes = b.build();
        p.append(&mut bytes, 1).map(|_| ()).map_err(|e| {
            tracing::error!(group, error = %e, "cannot write to {OFFSETS_TOPIC}");
            errors::COORDINATOR_NOT_AVAILABLE
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
    pub fn expire(&self, broker: &Broker, now: u64) {
        let retention = self.config.offsets_retention_ms as i64;
        let mut groups = self.lock();
        let ids: Vec<String> = groups.keys().cloned().collect();
        for id in ids {
            let entry = groups.get_mut(&id).unwrap();
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
            if self.persist(broker, &id, &records).is_err() {
                continue;
            }
            for k in &expired {
                entry.offsets.remove(k);
            }
            if forget {
                groups.remove(&id);
            }
        }
    }

    /// Reads `__consumer_offsets` back (at start); then trims partitions that hold far more
    /// records than live keys.
    pub fn load(&self, broker: &Broker) {
        let Some(topic) = broker.topic(OFFSETS_TOPIC) else {
            return;
        };
        let mut offsets: HashMap<String, BTreeMap<(String, i32), CommittedOffset>> = HashMap::new();
        let mut metas: HashMap<String, GroupMetadata> = HashMap::new();
        // Transactional offsets by partition and producer, then group, until their marker is
        // read: markers are per partition, so one ends only what is pending there.
        type Offsets = BTreeMap<(String, i32), CommittedOffset>;
        let mut pending: HashMap<(i32, i64), HashMap<String, Offsets>> = HashMap::new();
        let mut read_per_partition = Vec::new();
        for p in topic.partitions.read().unwrap().iter() {
            let mut read = 0u64;
            p.for_each_batch(|h, b| {
                if h.is_control() {
                    let commit = batch::records(b)
                        .next()
                        .and_then(|r| r.key)
                        .and_then(txn_index::marker_type);
                    if let Some(groups) = pending.remove(&(p.index, h.producer_id))
                        && commit == Some(true)
                    {
                        for (group, offs) in groups {
                            offsets.entry(group).or_default().extend(offs);
                        }
                    }
                } else {
                    for rec in batch::records(b) {
                        read += 1;
                        let Some(key) = rec.key else { continue };
                        match Record::decode(key, rec.value) {
                            Some(Record::Offset {
                                group,
                                topic,
                                partition,
                                value: Some(v),
                            }) if h.is_transactional() => {
                                pending
                                    .entry((p.index, h.producer_id))
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
                                    Some(v) => g.insert((topic, partition), v),
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
            read_per_partition.push((p.index, read));
        }
        let now = now_ms();
        let mut groups = self.lock();
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
        let live = groups.len();
        drop(groups);
        tracing::info!(groups = live, "loaded {OFFSETS_TOPIC}");
        self.trim(broker, &read_per_partition);
    }

    /// Re-appends the live records of partitions whose logs hold more than twice as many
    /// records as live keys (plus slack), then deletes what came before them.
    fn trim(&self, broker: &Broker, records_per_partition: &[(i32, u64)]) {
        let Some(topic) = broker.topic(OFFSETS_TOPIC) else {
            return;
        };
        let partitions = topic.partition_count() as i32;
        let groups = self.lock();
        for &(index, stored) in records_per_partition {
            let live: Vec<Record> = groups
                .values()
                .filter(|e| partition_for(&e.group.id, partitions) == index)
                .flat_map(|e| {
                    let mut v: Vec<Record> = e
                        .offsets
                        .iter()
                        .map(|((t, p), o)| Record::Offset {
                            group: e.group.id.clone(),
                            topic: t.clone(),
                            partition: *p,
                            value: Some(o.clone()),
                        })
                        .collect();
                    v.push(Self::group_record(&e.group));
                    v
                })
                .collect();
            if stored <= 2 * live.len() as u64 + 1000 {
                continue;
            }
            let Some(p) = topic.partition(index) else {
                continue;
            };
            // An open transaction's offsets are not live yet: deleting its records would lose
            // them, so such a partition waits for the next round.
            if p.last_stable_offset() < p.high_watermark() {
                continue;
            }
            let live: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                live.iter().map(|r| (r.key(), r.value())).collect();
            if p.rewrite_live(&live, now_ms() as i64) {
                let _ = p.log().apply_retention(now_ms() as i64);
                tracing::info!(
                    partition = index,
                    stored,
                    live = live.len(),
                    "trimmed {OFFSETS_TOPIC}"
                );
            }
        }
    }

    /// The periodic offsets check: expiry, then trimming by the log's size in records.
    pub fn maintain(&self, broker: &Broker) {
        self.expire(broker, now_ms());
        let Some(topic) = broker.topic(OFFSETS_TOPIC) else {
            return;
        };
        let sizes: Vec<(i32, u64)> = topic
            .partitions
            .read()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p.index,
                    p.log().log_end_offset() - p.log().log_start_offset(),
                )
            })
            .collect();
        self.trim(broker, &sizes);
    }
}
