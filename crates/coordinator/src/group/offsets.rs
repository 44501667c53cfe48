//! Committed offsets of groups: OffsetCommit, OffsetFetch and OffsetDelete.

use strom_metadata::errors;

use super::admin::subscribed_topics;
use super::coordinator::*;
use super::records::{CommittedOffset, Record};
use super::state::State;
use crate::host::Host;

impl GroupCoordinator {
    /// The records for offsets that pass the checks, the offsets they commit, and an error
    /// per offset.
    pub(super) fn offset_records(
        &self,
        host: &dyn Host,
        group_id: &str,
        offsets: &[CommitRequest],
    ) -> (Vec<Record>, Offsets, Vec<i16>) {
        let now = now_ms() as i64;
        let mut records = Vec::new();
        let mut committed = Offsets::new();
        let results = offsets
            .iter()
            .map(|o| {
                if !host.partition_exists(&o.topic, o.partition) {
                    errors::UNKNOWN_TOPIC_OR_PARTITION
                } else if o
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
                {
                    OFFSET_METADATA_TOO_LARGE
                } else {
                    let value = CommittedOffset {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata.clone().unwrap_or_default(),
                        commit_timestamp: now,
                        appended: None,
                    };
                    records.push(Record::Offset {
                        group: group_id.to_string(),
                        topic: o.topic.clone(),
                        partition: o.partition,
                        value: Some(value.clone()),
                    });
                    committed.insert((o.topic.clone(), o.partition), value);
                    errors::NONE
                }
            })
            .collect();
        (records, committed, results)
    }

    /// OffsetCommit: checks membership and generation, persists, then remembers. Returns an
    /// error per partition.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &self,
        host: &dyn Host,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<CommitRequest>,
    ) -> Vec<i16> {
        let n = offsets.len();
        if group_id.is_empty() {
            return vec![INVALID_GROUP_ID; n];
        }
        let shard = match self.locate(host, group_id, true).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return vec![errors::COORDINATOR_NOT_AVAILABLE; n],
            Err(e) => return vec![e; n],
        };
        // A group nobody joined: only simple (generation -1) commits create it.
        let mut entry = match self.entry(&shard, group_id, generation < 0).await {
            Some(e) => e,
            None => return vec![super::state::ILLEGAL_GENERATION; n],
        };
        let check = entry
            .group
            .check_commit(member_id, instance_id, generation, false);
        if check != errors::NONE {
            return vec![check; n];
        }
        let (records, mut committed, results) = self.offset_records(host, group_id, &offsets);
        let appended = match self.persist(host, &shard.tp, group_id, &records).await {
            Ok(at) => at,
            Err(e) => return with_failure(results, e),
        };
        for o in committed.values_mut() {
            o.appended = appended;
        }
        entry.offsets.extend(committed);
        results
    }

    /// OffsetFetch: the committed offsets of `topics` (all when `None`).
    pub async fn fetch(
        &self,
        host: &dyn Host,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<(String, i32, Option<CommittedOffset>)>, i16> {
        let entry = match self.locate(host, group_id, false).await? {
            Located::Shard(shard) => self.entry(&shard, group_id, false).await,
            Located::NoTopic => None,
        };
        let entry = entry.as_deref();
        Ok(match topics {
            None => entry
                .map(|e| {
                    e.offsets
                        .iter()
                        .map(|((t, p), o)| (t.clone(), *p, Some(o.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            Some(topics) => topics
                .iter()
                .flat_map(|(t, ps)| {
                    ps.iter().map(move |p| {
                        let o = entry.and_then(|e| e.offsets.get(&(t.clone(), *p))).cloned();
                        (t.clone(), *p, o)
                    })
                })
                .collect(),
        })
    }

    /// OffsetDelete: (group error, per-partition errors).
    pub async fn delete_offsets(
        &self,
        host: &dyn Host,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> (i16, Vec<i16>) {
        let shard = match self.locate(host, group_id, false).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return (GROUP_ID_NOT_FOUND, vec![]),
            Err(e) => return (e, vec![]),
        };
        let Some(mut entry) = self.entry(&shard, group_id, false).await else {
            return (GROUP_ID_NOT_FOUND, vec![]);
        };
        let subscribed: Vec<String> = if entry.group.state == State::Empty {
            vec![]
        } else {
            let protocol = entry.group.protocol.clone().unwrap_or_default();
            entry
                .group
                .members()
                .flat_map(|m| subscribed_topics(&m.metadata(&protocol)))
                .collect()
        };
        let mut results = Vec::new();
        let mut records = Vec::new();
        for (t, p) in partitions {
            if subscribed.contains(t) {
                results.push(GROUP_SUBSCRIBED_TO_TOPIC);
            } else {
                results.push(errors::NONE);
                if entry.offsets.contains_key(&(t.clone(), *p)) {
                    records.push(Record::Offset {
                        group: group_id.to_string(),
                        topic: t.clone(),
                        partition: *p,
                        value: None,
                    });
                }
            }
        }
        if let Err(e) = self.persist(host, &shard.tp, group_id, &records).await {
            return (e, vec![]);
        }
        for r in records {
            if let Record::Offset {
                topic, partition, ..
            } = r
            {
                entry.offsets.remove(&(topic, partition));
            }
        }
        (errors::NONE, results)
    }
}
