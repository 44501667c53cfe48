//! The records of `__consumer_offsets`, in Kafka's formats, so that the topic reads the same
//! as Kafka's: committed offsets (key v1, value v3) and group metadata (key v2, value v3).
//! A record with a null value deletes its key.

use super::state::Member;
use strom_storage::reader::{Reader, put_bytes, put_opt_string, put_string};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Where its record lies in `__consumer_offsets` (its batch's base offset, Kafka's
    /// appendedBatchOffset), once written or read back; not part of the value. Of a plain
    /// and a transactional commit of the same partition, the later in the log wins when the
    /// transaction commits, as in Kafka: what compaction keeps is the same.
    pub appended: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<StoredMember>,
}

impl GroupMetadata {
    pub fn members_for_state(&self) -> Vec<Member> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .iter()
            .map(|m| {
                Member::stored(
                    m.member_id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    m.rebalance_timeout_ms,
                    m.session_timeout_ms,
                    self.protocol_type.clone(),
                    (protocol.clone(), m.subscription.clone()),
                    m.assignment.clone(),
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<CommittedOffset>,
    },
    Group {
        group: String,
        value: Option<GroupMetadata>,
    },
}

impl Record {
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::new();
        match self {
            Record::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                k.extend_from_slice(&1i16.to_be_bytes());
                put_string(&mut k, group);
                put_string(&mut k, topic);
                k.extend_from_slice(&partition.to_be_bytes());
            }
            Record::Group { group, .. } => {
                k.extend_from_slice(&2i16.to_be_bytes());
                put_string(&mut k, group);
            }
        }
        k
    }

    pub fn value(&self) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        match self {
            Record::Offset { value: None, .. } | Record::Group { value: None, .. } => return None,
            Record::Offset { value: Some(o), .. } => {
                v.extend_from_slice(&3i16.to_be_bytes());
                v.extend_from_slice(&o.offset.to_be_bytes());
                v.extend_from_slice(&o.leader_epoch.to_be_bytes());
                put_string(&mut v, &o.metadata);
                v.extend_from_slice(&o.commit_timestamp.to_be_bytes());
            }
            Record::Group { value: Some(g), .. } => {
                v.extend_from_slice(&3i16.to_be_bytes());
                put_string(&mut v, &g.protocol_type);
                v.extend_from_slice(&g.generation.to_be_bytes());
                put_opt_string(&mut v, g.protocol.as_deref());
                put_opt_string(&mut v, g.leader.as_deref());
                v.extend_from_slice(&g.state_timestamp.to_be_bytes());
                v.extend_from_slice(&(g.members.len() as i32).to_be_bytes());
                for m in &g.members {
                    put_string(&mut v, &m.member_id);
                    put_opt_string(&mut v, m.instance_id.as_deref());
                    put_string(&mut v, &m.client_id);
                    put_string(&mut v, &m.client_host);
                    v.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
                    v.extend_from_slice(&m.session_timeout_ms.to_be_bytes());
                    put_bytes(&mut v, &m.subscription);
                    put_bytes(&mut v, &m.assignment);
                }
            }
        }
        Some(v)
    }

    /// Decodes a stored record; `None` for anything that is not one of ours or is damaged.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Record> {
        let mut k = Reader::new(key);
        match k.i16()? {
            0 | 1 => {
                let group = k.string()?;
                let topic = k.string()?;
                let partition = k.i32()?;
                let value = match value {
                    None => None,
                    Some(v) => Some(decode_offset(v)?),
                };
                Some(Record::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group = k.string()?;
                let value = match value {
                    None => None,
                    Some(v) => Some(decode_group(v)?),
                };
                Some(Record::Group { group, value })
            }
            _ => None,
        }
    }
}

fn decode_offset(v: &[u8]) -> Option<CommittedOffset> {
    let mut r = Reader::new(v);
    let version = r.i16()?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp = r.i64()?;
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
        appended: None,
    })
}

fn decode_group(v: &[u8]) -> Option<GroupMetadata> {
    let mut r = Reader::new(v);
    let version = r.i16()?;
    if version != 3 {
        return None;
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.opt_string()?;
    let leader = r.opt_string()?;
    let state_timestamp = r.i64()?;
    let n = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..n.max(0) {
        members.push(StoredMember {
            member_id: r.string()?,
            instance_id: r.opt_string()?,
            client_id: r.string()?,
            client_host: r.string()?,
            rebalance_timeout_ms: r.i32()?,
            session_timeout_ms: r.i32()?,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    Some(GroupMetadata {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

/// A bounds-checked reader: every read fails cleanly on short input.
pub use crate::internal_topic::java_hash;

/// The `__consumer_offsets` partition that holds `group`, as Kafka computes it.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    (java_hash(group) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip() {
        let r = Record::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: Some(CommittedOffset {
                offset: 42,
                leader_epoch: 7,
                metadata: "meta".into(),
                commit_timestamp: 1234,
                appended: None,
            }),
        };
        assert_eq!(
            Record::decode(&r.key(), r.value().as_deref()),
            Some(r.clone())
        );
        let tomb = Record::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: None,
        };
        assert_eq!(tomb.value(), None);
        assert_eq!(Record::decode(&tomb.key(), None), Some(tomb));
    }

    #[test]
    fn group_metadata_round_trips() {
        let r = Record::Group {
            group: "g".into(),
            value: Some(GroupMetadata {
                protocol_type: "consumer".into(),
                generation: 5,
                protocol: Some("range".into()),
                leader: Some("m1".into()),
                state_timestamp: 99,
                members: vec![StoredMember {
                    member_id: "m1".into(),
                    instance_id: Some("i".into()),
                    client_id: "c".into(),
                    client_host: "/1.2.3.4".into(),
                    rebalance_timeout_ms: 300000,
                    session_timeout_ms: 45000,
                    subscription: vec![1, 2],
                    assignment: vec![3],
                }],
            }),
        };
        assert_eq!(Record::decode(&r.key(), r.value().as_deref()), Some(r));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert_eq!(Record::decode(&[], None), None);
        assert_eq!(Record::decode(&[0, 1, 0, 5, b'a'], Some(&[])), None);
        assert_eq!(Record::decode(&[0, 9], None), None);
        let r = Record::Group {
            group: "g".into(),
            value: None,
        };
        assert_eq!(Record::decode(&r.key(), Some(&[0, 3, 0xff])), None);
    }

    #[test]
    fn partitioning_matches_kafka() {
        // Java: "test-group".hashCode() == 1217478476 (from Kafka's own tests' arithmetic).
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("ab"), 97 * 31 + 98);
        assert!((0..50).contains(&partition_for("any group", 50)));
        // Negative hashes are masked, not negated, as Kafka's Utils.abs does.
        let h = java_hash("polygenelubricants");
        assert_eq!(h, i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
    }
}
