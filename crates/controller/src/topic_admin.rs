//! The controller's topic decisions (Kafka's CreateTopics, CreatePartitions, DeleteTopics
//! and config changes, forwarded by the broker that received them): taken on the committed
//! image, so that of two brokers' requests the first committed wins.

use std::collections::BTreeMap;

use strom_metadata::errors;
use strom_metadata::image::{PartitionInfo, Record, Replicas};

use crate::controller::{Controller, Refusal, TopicRequest, refuse};
use crate::placement::{Candidate, PlacementError, place};

/// An incremental config change computed from configs that changed since.
fn stale_configs(what: &str) -> Refusal {
    refuse(
        errors::INVALID_UPDATE_VERSION,
        format!("the configs of {what} changed while this change was made from them"),
    )
}

impl Controller {
    fn candidates(&self) -> Vec<Candidate> {
        self.image()
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| Candidate {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect()
    }

    fn partition_records(topic: &str, first: i32, replicas: Vec<Vec<i32>>) -> Vec<Record> {
        replicas
            .into_iter()
            .enumerate()
            .map(|(i, r)| Record::Partition {
                topic: topic.to_string(),
                partition: first + i as i32,
                info: PartitionInfo {
                    leader: r[0],
                    isr: Replicas::from_slice(&r),
                    replicas: r.into(),
                    ..PartitionInfo::default()
                },
            })
            .collect()
    }

    fn placed(
        &self,
        first: i32,
        count: i32,
        rf: i16,
        start: usize,
    ) -> Result<Vec<Vec<i32>>, Refusal> {
        place(&self.candidates(), first, count, rf, start).map_err(|e| {
            let code = match e {
                PlacementError::ReplicationFactorTooSmall(_)
                | PlacementError::NotEnoughBrokers { .. } => errors::INVALID_REPLICATION_FACTOR,
                PlacementError::PartialRacks => errors::INVALID_REPLICATION_FACTOR,
            };
            refuse(code, e.to_string())
        })
    }

    fn check_assignments(&self, assignments: &[Vec<i32>]) -> Result<(), Refusal> {
        let rf = assignments.first().map_or(0, Vec::len);
        for (i, a) in assignments.iter().enumerate() {
            let distinct: std::collections::BTreeSet<_> = a.iter().collect();
            if a.is_empty() || a.len() != rf || distinct.len() != a.len() {
                return Err(refuse(
                    errors::INVALID_REPLICA_ASSIGNMENT,
                    format!(
                        "partition {i}: replicas {a:?} must be distinct and as many as every other partition's"
                    ),
                ));
            }
            if let Some(b) = a.iter().find(|b| !self.image().brokers.contains_key(b)) {
                return Err(refuse(
                    errors::INVALID_REPLICA_ASSIGNMENT,
                    format!("partition {i} is assigned to broker {b}, which is not registered"),
                ));
            }
        }
        Ok(())
    }

    /// CreateTopics for one topic: the records that create it, placed over the live
    /// brokers (`start` picks where the striping begins).
    pub fn create_topic(&self, t: &TopicRequest, start: usize) -> Result<Vec<Record>, Refusal> {
        if self.image().topics.contains_key(&t.name) {
            return Err(refuse(
                errors::TOPIC_ALREADY_EXISTS,
                format!("topic {} already exists", t.name),
            ));
        }
        // Kafka refuses names that differ only by '.' and '_': its metric names mix them up.
        let metric_name = |n: &str| n.replace('.', "_");
        if let Some(other) = self
            .image()
            .topics
            .keys()
            .find(|n| metric_name(n) == metric_name(&t.name))
        {
            return Err(refuse(
                errors::INVALID_TOPIC_EXCEPTION,
                format!(
                    "topic {} collides with existing topic {other}: '.' and '_' are interchangeable in metric names",
                    t.name
                ),
            ));
        }
        let replicas = if t.assignments.is_empty() {
            if t.partitions < 1 {
                return Err(refuse(
                    errors::INVALID_PARTITIONS,
                    format!(
                        "number of partitions must be at least 1, got {}",
                        t.partitions
                    ),
                ));
            }
            self.placed(0, t.partitions, t.replication_factor, start)?
        } else {
            self.check_assignments(&t.assignments)?;
            t.assignments.clone()
        };
        let mut records = vec![
            Record::Topic {
                name: t.name.clone(),
                id: t.id,
            },
            Record::TopicConfigs {
                topic: t.name.clone(),
                configs: t.configs.clone(),
            },
        ];
        records.extend(Self::partition_records(&t.name, 0, replicas));
        Ok(records)
    }

    /// CreatePartitions: new partitions placed with the topic's replication factor.
    pub fn create_partitions(
        &self,
        topic: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        start: usize,
    ) -> Result<Vec<Record>, Refusal> {
        let Some(t) = self.image().topic(topic) else {
            return Err(refuse(
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {topic}"),
            ));
        };
        let current = t.partitions.len() as i32;
        if count <= current {
            return Err(refuse(
                errors::INVALID_PARTITIONS,
                format!(
                    "topic {topic} has {current} partitions; the new count {count} must be larger"
                ),
            ));
        }
        let rf = t.partitions.first().map_or(1, |p| p.replicas.len()) as i16;
        let replicas = match assignments {
            Some(a) => {
                if a.len() as i32 != count - current || a.iter().any(|r| r.len() != rf as usize) {
                    return Err(refuse(
                        errors::INVALID_REPLICA_ASSIGNMENT,
                        format!(
                            "{} new partitions need {} assignments of {rf} replicas",
                            count - current,
                            count - current
                        ),
                    ));
                }
                self.check_assignments(&a)?;
                a
            }
            None => self.placed(current, count - current, rf, start)?,
        };
        Ok(Self::partition_records(topic, current, replicas))
    }

    /// A topic's configuration overrides (validated by the broker that received the
    /// request) become `configs`.
    /// With `expected`, only if the overrides are those now (an incremental change made
    /// from them; INVALID_UPDATE_VERSION otherwise, and the broker computes it again).
    pub fn set_topic_configs(
        &self,
        topic: &str,
        configs: BTreeMap<String, String>,
        expected: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<Record>, Refusal> {
        let Some(t) = self.image().topics.get(topic) else {
            return Err(refuse(
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {topic}"),
            ));
        };
        if expected.is_some_and(|e| *e != t.configs) {
            return Err(stale_configs(topic));
        }
        Ok(vec![Record::TopicConfigs {
            topic: topic.to_string(),
            configs,
        }])
    }

    /// The dynamic configs of broker `broker` (of every broker, for
    /// [`strom_metadata::image::CLUSTER_DEFAULT`]) become `configs`, validated by the
    /// broker that received the request.
    pub fn set_broker_configs(
        &self,
        broker: i32,
        configs: BTreeMap<String, String>,
        expected: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<Record>, Refusal> {
        if broker < strom_metadata::image::CLUSTER_DEFAULT {
            return Err(refuse(
                errors::INVALID_REQUEST,
                format!("{broker} is not a broker id"),
            ));
        }
        let empty = BTreeMap::new();
        let current = self.image().broker_configs.get(&broker).unwrap_or(&empty);
        if expected.is_some_and(|e| e != current) {
            return Err(stale_configs(&format!("broker {broker}")));
        }
        Ok(vec![Record::BrokerConfigs { broker, configs }])
    }

    pub fn delete_topic(&self, topic: &str) -> Result<Vec<Record>, Refusal> {
        if !self.image().topics.contains_key(topic) {
            return Err(refuse(
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {topic}"),
            ));
        }
        Ok(vec![Record::RemoveTopic {
            name: topic.to_string(),
        }])
    }
}
