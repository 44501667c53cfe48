//! The cluster metadata as every broker sees it: brokers, topics, and per partition its
//! replicas, ISR, leader and epochs, plus topic configs. An image changes only by applying
//! metadata records (Kafka's KRaft records, simplified): today the single node writes them
//! itself; with the controller quorum they arrive from the Raft log. What a change means for
//! one node (partitions to lead, to follow, to drop) is computed here, without I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::TopicPartition;

pub type TopicId = [u8; 16];

/// Kafka's "no leader".
pub const NO_LEADER: i32 = -1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    pub fenced: bool,
    /// Changes with every start of the broker's process (Kafka's incarnation id).
    pub incarnation: [u8; 16],
    /// The epoch of this registration (Kafka's broker epoch): heartbeats carry it, and one
    /// from an older registration is refused.
    pub epoch: i64,
    /// Every listener the broker serves on, as advertised (Kafka's registration endpoints);
    /// `host` and `port` are those of its inter-broker listener. Empty in registrations
    /// from before strom had several listeners.
    pub endpoints: Vec<Endpoint>,
}

/// One listener of a broker: its name (`PLAINTEXT`, `EXTERNAL`...) and advertised address.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl BrokerInfo {
    /// Where a client that came in on `listener` reaches this broker (Kafka answers each
    /// client with the endpoints of the listener it used): `None` when the broker has no
    /// such listener. An unnamed listener, or a registration without endpoints, gives the
    /// inter-broker address.
    pub fn endpoint(&self, listener: &str) -> Option<(&str, u16)> {
        if listener.is_empty() || self.endpoints.is_empty() {
            return Some((&self.host, self.port));
        }
        self.endpoints
            .iter()
            .find(|e| e.name == listener)
            .map(|e| (e.host.as_str(), e.port))
    }
}

/// A few replica ids, held inline: every partition of the image keeps its replicas and ISR
/// (two heap allocations per partition otherwise, a tenth of an idle partition's memory).
pub type Replicas = smallvec::SmallVec<[i32; 4]>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Every replica; during a reassignment, the target ones first, then those leaving.
    pub replicas: Replicas,
    pub isr: Replicas,
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped by every change to the partition (Kafka's partition epoch): an ISR change
    /// from a stale view is refused by it.
    pub partition_epoch: i32,
    /// A reassignment in progress, `None` otherwise. Boxed: absent from every partition but
    /// those moving, 8 bytes in each (the image holds one `PartitionInfo` per partition).
    pub reassignment: Option<Box<Reassignment>>,
}

/// Kafka's addingReplicas and removingReplicas: replicas that join once they caught up,
/// and replicas that leave then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reassignment {
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

impl PartitionInfo {
    /// The replicas a reassignment in progress moves the partition to (all of them when
    /// none is).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .filter(|r| !self.removing().contains(r))
            .copied()
            .collect()
    }

    pub fn reassigning(&self) -> bool {
        self.reassignment.is_some()
    }

    /// The replicas a reassignment in progress adds (none when none is).
    pub fn adding(&self) -> &[i32] {
        self.reassignment.as_ref().map_or(&[], |r| &r.adding)
    }

    /// The replicas a reassignment in progress removes (none when none is).
    pub fn removing(&self) -> &[i32] {
        self.reassignment.as_ref().map_or(&[], |r| &r.removing)
    }

    /// A reassignment in progress with these lists; none when both are empty.
    pub fn set_reassignment(&mut self, adding: Vec<i32>, removing: Vec<i32>) {
        self.reassignment = (!adding.is_empty() || !removing.is_empty())
            .then(|| Box::new(Reassignment { adding, removing }));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: TopicId,
    pub partitions: Vec<PartitionInfo>,
    /// The topic's config overrides (the broker's defaults apply to the rest).
    pub configs: BTreeMap<String, String>,
}

/// One change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    RegisterBroker(BrokerInfo),
    Topic {
        name: String,
        id: TopicId,
    },
    /// A new partition, or a new state of one (leader, ISR, replicas).
    Partition {
        topic: String,
        partition: i32,
        info: PartitionInfo,
    },
    /// Replaces a topic's config overrides.
    TopicConfigs {
        topic: String,
        configs: BTreeMap<String, String>,
    },
    RemoveTopic {
        name: String,
    },
    /// A broker's heartbeats stopped (fenced: it leads nothing and is offered to no client)
    /// or resumed.
    BrokerFencing {
        id: i32,
        fenced: bool,
    },
    /// A block of producer ids went to `broker`: the next block starts at
    /// `next_producer_id`, so no two brokers ever hand out the same id.
    ProducerIds {
        broker: i32,
        next_producer_id: i64,
    },
    /// Replaces the dynamic configs of broker `broker`, or the cluster-wide default ones
    /// when it is [`CLUSTER_DEFAULT`] (Kafka's ConfigRecord for a BROKER resource).
    BrokerConfigs {
        broker: i32,
        configs: BTreeMap<String, String>,
    },
}

/// The broker id under which the cluster-wide dynamic broker configs are kept (Kafka's
/// BROKER resource with an empty name).
pub const CLUSTER_DEFAULT: i32 = -1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Shared between images: a change copies the topics it touches, not the others (an
    /// image is cloned per change, and a copy of every partition made creating one topic
    /// among thousands cost time in proportion to all of them).
    pub topics: BTreeMap<String, Arc<TopicInfo>>,
    /// The first producer id of the next block the controller hands out.
    pub next_producer_id: i64,
    /// Dynamic broker configs (AlterConfigs on a BROKER resource), per broker id, with the
    /// cluster-wide defaults under [`CLUSTER_DEFAULT`].
    pub broker_configs: BTreeMap<i32, BTreeMap<String, String>>,
    /// The metadata log offset after the last record this image includes (0 when not
    /// known): how current a node's view is, against the offset a controller answered at.
    pub offset: u64,
}

/// What a metadata change means for one node's replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalChanges {
    /// Partitions this node now leads (new, or with a new leader epoch or replica set).
    pub leaders: Vec<(TopicPartition, PartitionInfo)>,
    /// Partitions this node now follows.
    pub followers: Vec<(TopicPartition, PartitionInfo)>,
    /// Replicas this node no longer holds (topic deleted or replica moved away).
    pub deleted: Vec<TopicPartition>,
}

impl LocalChanges {
    pub fn is_empty(&self) -> bool {
        self.leaders.is_empty() && self.followers.is_empty() && self.deleted.is_empty()
    }
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name).map(|t| &**t)
    }

    pub fn topic_by_id(&self, id: &TopicId) -> Option<&TopicInfo> {
        self.topics.values().find(|t| &t.id == id).map(|t| &**t)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionInfo> {
        self.topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)
    }

    /// The image after `records`. Records about unknown topics, or partitions that are
    /// neither the next one nor an existing one, are ignored (and reported). A batch that
    /// creates a topic whose name is taken is ignored whole: of two creations of one name
    /// racing through the log, exactly the first one happens, wherever each came from.
    pub fn apply(&self, records: &[Record]) -> (MetadataImage, Vec<String>) {
        let mut next = self.clone();
        let mut ignored = Vec::new();
        for r in records {
            match r {
                Record::RegisterBroker(b) => {
                    next.brokers.insert(b.id, b.clone());
                }
                Record::Topic { name, .. } if next.topics.contains_key(name) => {
                    return (
                        self.clone(),
                        vec![format!("a creation of topic {name}, which exists")],
                    );
                }
                Record::Topic { name, id } => {
                    next.topics.insert(
                        name.clone(),
                        Arc::new(TopicInfo {
                            name: name.clone(),
                            id: *id,
                            partitions: Vec::new(),
                            configs: BTreeMap::new(),
                        }),
                    );
                }
                Record::Partition {
                    topic,
                    partition,
                    info,
                } => {
                    let Some(t) = next.topics.get_mut(topic) else {
                        ignored.push(format!("partition {partition} of unknown topic {topic}"));
                        continue;
                    };
                    let t = Arc::make_mut(t);
                    match usize::try_from(*partition) {
                        // Every change of a partition bumps its partition epoch (the
                        // controller's AlterPartition, elections, fencing, reassignment): a
                        // record that does not is a second creation of the index (two
                        // brokers' CreatePartitions racing) or a change made from a stale
                        // view, and overwriting would reset the partition's epochs.
                        Ok(i)
                            if i < t.partitions.len()
                                && info.partition_epoch <= t.partitions[i].partition_epoch =>
                        {
                            ignored.push(format!(
                                "partition {partition} of {topic} at partition epoch {}, not \
                                 newer than its {}",
                                info.partition_epoch, t.partitions[i].partition_epoch
                            ))
                        }
                        Ok(i) if i < t.partitions.len() => t.partitions[i] = info.clone(),
                        Ok(i) if i == t.partitions.len() => t.partitions.push(info.clone()),
                        _ => ignored.push(format!("partition {partition} of {topic} out of order")),
                    }
                }
                Record::TopicConfigs { topic, configs } => match next.topics.get_mut(topic) {
                    Some(t) => Arc::make_mut(t).configs = configs.clone(),
                    None => ignored.push(format!("configs of unknown topic {topic}")),
                },
                Record::RemoveTopic { name } => {
                    if next.topics.remove(name).is_none() {
                        ignored.push(format!("removal of unknown topic {name}"));
                    }
                }
                Record::BrokerFencing { id, fenced } => match next.brokers.get_mut(id) {
                    Some(b) => b.fenced = *fenced,
                    None => ignored.push(format!("fencing of unknown broker {id}")),
                },
                Record::BrokerConfigs { broker, configs } => {
                    if configs.is_empty() {
                        next.broker_configs.remove(broker);
                    } else {
                        next.broker_configs.insert(*broker, configs.clone());
                    }
                }
                Record::ProducerIds {
                    next_producer_id, ..
                } => {
                    if *next_producer_id <= next.next_producer_id {
                        ignored.push(format!(
                            "producer id block going back to {next_producer_id}"
                        ));
                    } else {
                        next.next_producer_id = *next_producer_id;
                    }
                }
            }
        }
        (next, ignored)
    }

    /// Records that rebuild this image from an empty one: what a snapshot of the metadata
    /// log holds.
    pub fn to_records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .brokers
            .values()
            .cloned()
            .map(Record::RegisterBroker)
            .collect();
        for t in self.topics.values() {
            out.push(Record::Topic {
                name: t.name.clone(),
                id: t.id,
            });
            out.push(Record::TopicConfigs {
                topic: t.name.clone(),
                configs: t.configs.clone(),
            });
            out.extend(
                t.partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Record::Partition {
                        topic: t.name.clone(),
                        partition: i as i32,
                        info: p.clone(),
                    }),
            );
        }
        for (broker, configs) in &self.broker_configs {
            out.push(Record::BrokerConfigs {
                broker: *broker,
                configs: configs.clone(),
            });
        }
        if self.next_producer_id > 0 {
            out.push(Record::ProducerIds {
                broker: -1,
                next_producer_id: self.next_producer_id,
            });
        }
        out
    }

    /// What changed for node `node` between `self` and `next`: Kafka's
    /// `TopicsDelta.localChanges`.
    pub fn local_changes(&self, next: &MetadataImage, node: i32) -> LocalChanges {
        let mut changes = LocalChanges::default();
        for (name, t) in &next.topics {
            let before = self.topics.get(name).filter(|b| b.id == t.id);
            // A topic the change did not touch is the same shared copy.
            if before.is_some_and(|b| Arc::ptr_eq(b, t)) {
                continue;
            }
            for (i, info) in t.partitions.iter().enumerate() {
                let old = before.and_then(|b| b.partitions.get(i));
                if old == Some(info) {
                    continue;
                }
                let tp = TopicPartition::new(name.clone(), i as i32);
                let was_replica = old.is_some_and(|o| o.replicas.contains(&node));
                if info.replicas.contains(&node) {
                    if info.leader == node {
                        changes.leaders.push((tp, info.clone()));
                    } else {
                        changes.followers.push((tp, info.clone()));
                    }
                } else if was_replica {
                    changes.deleted.push(tp);
                }
            }
        }
        for (name, t) in &self.topics {
            let gone = next.topics.get(name).is_none_or(|n| n.id != t.id);
            if !gone {
                continue;
            }
            for (i, info) in t.partitions.iter().enumerate() {
                if info.replicas.contains(&node) {
                    changes
                        .deleted
                        .push(TopicPartition::new(name.clone(), i as i32));
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(replicas: &[i32], leader: i32, epoch: i32) -> PartitionInfo {
        PartitionInfo {
            replicas: Replicas::from_slice(replicas),
            isr: Replicas::from_slice(replicas),
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
            ..PartitionInfo::default()
        }
    }

    fn topic(name: &str, id: u8, parts: &[PartitionInfo]) -> Vec<Record> {
        let mut r = vec![Record::Topic {
            name: name.into(),
            id: [id; 16],
        }];
        r.extend(parts.iter().enumerate().map(|(i, p)| Record::Partition {
            topic: name.into(),
            partition: i as i32,
            info: p.clone(),
        }));
        r
    }

    #[test]
    fn a_second_creation_of_a_topic_is_ignored_whole() {
        let (first, _) = MetadataImage::default().apply(&topic("t", 1, &[info(&[1], 1, 0)]));
        // Another broker's creation of the same name, committed after the first: none of
        // its records apply, not even its partitions.
        let (after, ignored) = first.apply(&topic("t", 2, &[info(&[2], 2, 0), info(&[2], 2, 0)]));
        assert_eq!(after, first);
        assert_eq!(ignored.len(), 1);
        assert_eq!(after.topic("t").unwrap().id, [1; 16]);
    }

    #[test]
    fn a_partition_changes_only_with_a_newer_partition_epoch() {
        let (img, _) = MetadataImage::default().apply(&topic("t", 1, &[info(&[1, 2], 1, 0)]));
        // Another broker's CreatePartitions of the same index, or a change from a stale
        // view: ignored, reported.
        let (same, ignored) = img.apply(&[Record::Partition {
            topic: "t".into(),
            partition: 0,
            info: info(&[2, 1], 2, 0),
        }]);
        assert_eq!(same, img);
        assert_eq!(ignored.len(), 1);
        let (next, ignored) = img.apply(&[Record::Partition {
            topic: "t".into(),
            partition: 0,
            info: info(&[2, 1], 2, 1),
        }]);
        assert!(ignored.is_empty());
        assert_eq!(next.partition("t", 0).unwrap().leader, 2);
    }

    #[test]
    fn records_build_the_image_and_bad_ones_are_reported_not_applied() {
        let (img, ignored) = MetadataImage::default().apply(&topic("t", 1, &[info(&[1], 1, 0)]));
        assert!(ignored.is_empty());
        assert_eq!(img.partition("t", 0).unwrap().leader, 1);
        assert_eq!(img.topic_by_id(&[1; 16]).unwrap().name, "t");
        let (same, ignored) = img.apply(&[
            Record::Partition {
                topic: "t".into(),
                partition: 5,
                info: info(&[1], 1, 0),
            },
            Record::Partition {
                topic: "nope".into(),
                partition: 0,
                info: info(&[1], 1, 0),
            },
            Record::RemoveTopic {
                name: "nope".into(),
            },
        ]);
        assert_eq!(same, img);
        assert_eq!(ignored.len(), 3);
    }

    #[test]
    fn local_changes_name_what_this_node_leads_follows_and_drops() {
        let (before, _) = MetadataImage::default().apply(
            &[
                topic("a", 1, &[info(&[1, 2], 1, 0), info(&[2, 3], 2, 0)]),
                topic("gone", 2, &[info(&[1], 1, 0)]),
            ]
            .concat(),
        );
        let (after, _) = before.apply(&[
            // a-0: leadership moves to 2 (epoch 1); a-1: 1 replaces 3; a-2: new, led by 1.
            Record::Partition {
                topic: "a".into(),
                partition: 0,
                info: info(&[1, 2], 2, 1),
            },
            Record::Partition {
                topic: "a".into(),
                partition: 1,
                info: info(&[2, 1], 2, 1),
            },
            Record::Partition {
                topic: "a".into(),
                partition: 2,
                info: info(&[1], 1, 0),
            },
            Record::RemoveTopic {
                name: "gone".into(),
            },
        ]);
        let c = before.local_changes(&after, 1);
        let names = |v: &[(TopicPartition, PartitionInfo)]| -> Vec<String> {
            v.iter().map(|(tp, _)| tp.to_string()).collect()
        };
        assert_eq!(names(&c.leaders), vec!["a-2"]);
        assert_eq!(names(&c.followers), vec!["a-0", "a-1"]);
        assert_eq!(c.deleted, vec![TopicPartition::new("gone", 0)]);
        // Node 3 lost its replica of a-1; nothing changes for node 9.
        assert_eq!(
            before.local_changes(&after, 3).deleted,
            vec![TopicPartition::new("a", 1)]
        );
        assert!(before.local_changes(&after, 9).is_empty());
        // Unchanged partitions are not changes.
        assert!(after.local_changes(&after, 1).is_empty());
    }

    #[test]
    fn an_image_rebuilds_from_its_own_records() {
        let (img, _) = MetadataImage::default().apply(
            &[
                topic("a", 1, &[info(&[1, 2], 1, 3), info(&[2], 2, 0)]),
                vec![
                    Record::RegisterBroker(BrokerInfo {
                        id: 1,
                        host: "h".into(),
                        port: 1,
                        rack: None,
                        fenced: true,
                        incarnation: [5; 16],
                        epoch: 3,
                        endpoints: vec![],
                    }),
                    Record::TopicConfigs {
                        topic: "a".into(),
                        configs: [("k".to_string(), "v".to_string())].into(),
                    },
                    Record::ProducerIds {
                        broker: 1,
                        next_producer_id: 2000,
                    },
                    Record::BrokerConfigs {
                        broker: CLUSTER_DEFAULT,
                        configs: [("log.retention.ms".to_string(), "60000".to_string())].into(),
                    },
                ],
            ]
            .concat(),
        );
        let (rebuilt, ignored) = MetadataImage::default().apply(&img.to_records());
        assert!(ignored.is_empty());
        assert_eq!(rebuilt, img);
    }

    #[test]
    fn a_topic_recreated_under_the_same_name_is_a_new_topic() {
        let (before, _) = MetadataImage::default().apply(&topic("t", 1, &[info(&[1], 1, 0)]));
        let (after, _) = before.apply(
            &[
                vec![Record::RemoveTopic { name: "t".into() }],
                topic("t", 2, &[info(&[1], 1, 0)]),
            ]
            .concat(),
        );
        let c = before.local_changes(&after, 1);
        assert_eq!(c.deleted, vec![TopicPartition::new("t", 0)]);
        assert_eq!(c.leaders.len(), 1);
    }
}
