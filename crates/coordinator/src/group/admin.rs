//! The admin side of groups: ListGroups, DescribeGroups and DeleteGroups.

use strom_metadata::errors;

use super::coordinator::{GROUP_ID_NOT_FOUND, GroupCoordinator, Located, NON_EMPTY_GROUP, now_ms};
use super::records::Record;
use super::state::State;
use crate::host::Host;

/// A group as DescribeGroups shows it.
pub struct Description {
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// The topics a consumer-protocol subscription names (ConsumerProtocolSubscription: version,
/// then an array of topic names).
pub(super) fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    let mut r = strom_storage::reader::Reader::new(metadata.get(2..).unwrap_or(&[]));
    let mut out = Vec::new();
    let Some(n) = r.count(2) else {
        return out;
    };
    for _ in 0..n {
        match r.string() {
            Some(name) => out.push(name),
            None => break,
        }
    }
    out
}

impl GroupCoordinator {
    /// ListGroups: (group id, protocol type, state) of every group this node coordinates.
    pub async fn list(&self) -> Vec<(String, String, State)> {
        let mut out = Vec::new();
        for (_, shard) in self.shards.active() {
            for (_, slot) in shard.slots() {
                let e = slot.lock().await;
                if e.group.state != State::Dead && !e.removed {
                    out.push((
                        e.group.id.clone(),
                        e.group.protocol_type.clone().unwrap_or_default(),
                        e.group.state,
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// DescribeGroups: `Ok(None)` for a group this coordinator does not know.
    pub async fn describe(
        &self,
        host: &dyn Host,
        group_id: &str,
    ) -> Result<Option<Description>, i16> {
        let entry = match self.locate(host, group_id, false).await? {
            Located::Shard(shard) => self.entry(&shard, group_id, false).await,
            Located::NoTopic => None,
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        let g = &entry.group;
        // As in Kafka: subscriptions and assignments only once the group is stable.
        let stable = g.state == State::Stable;
        let protocol = g.protocol.clone().unwrap_or_default();
        Ok(Some(Description {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members()
                .map(|m| {
                    let (meta, assignment) = if stable {
                        (m.metadata(&protocol), m.assignment.clone())
                    } else {
                        (vec![], vec![])
                    };
                    DescribedMember {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: meta,
                        assignment,
                    }
                })
                .collect(),
        }))
    }

    /// DeleteGroups: only groups without members; their offsets go too.
    pub async fn delete(&self, host: &dyn Host, group_id: &str) -> i16 {
        let shard = match self.locate(host, group_id, false).await {
            Ok(Located::Shard(s)) => s,
            Ok(Located::NoTopic) => return GROUP_ID_NOT_FOUND,
            Err(e) => return e,
        };
        let Some(mut entry) = self.entry(&shard, group_id, false).await else {
            return GROUP_ID_NOT_FOUND;
        };
        if entry.group.state == State::Dead {
            return GROUP_ID_NOT_FOUND;
        }
        if !entry.group.is_empty() {
            return NON_EMPTY_GROUP;
        }
        let mut records: Vec<Record> = entry
            .offsets
            .keys()
            .map(|(t, p)| Record::Offset {
                group: group_id.to_string(),
                topic: t.clone(),
                partition: *p,
                value: None,
            })
            .collect();
        records.push(Record::Group {
            group: group_id.to_string(),
            value: None,
        });
        if let Err(e) = self.persist(host, &shard.tp, group_id, &records).await {
            return e;
        }
        entry.group.mark_dead(now_ms());
        Self::remove(&shard, &mut entry);
        errors::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_their_topics() {
        let mut m = vec![0, 1, 0, 0, 0, 2];
        for t in ["orders", "payments"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(subscribed_topics(&m), vec!["orders", "payments"]);
        assert!(subscribed_topics(&[1, 2]).is_empty());
        assert!(subscribed_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 9]).is_empty());
    }
}
