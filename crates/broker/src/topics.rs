//! Topic administration on this node: CreateTopics, DeleteTopics, CreatePartitions and
//! config changes become metadata records, published through the image. Until the
//! controller quorum keeps the metadata log, the single node stores each topic in
//! `.topics/<name>.properties` and reads them back at start.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strom_metadata::TopicPartition;
use strom_metadata::image::{PartitionInfo, Record, Replicas};

use strom_controller::quorum::active::{BrokerAnswer, BrokerRequest};

use crate::broker::{
    Broker, BrokerError, MAX_PARTITIONS, NewTopic, Topic, TopicId, io, parse_topic_id, random_id,
};
use crate::config::parse_properties;
use crate::topic_config::{TopicConfig, validate_topic_name};

pub(crate) const TOPICS_DIR: &str = ".topics";

/// A topic as stored in `.topics/<name>.properties`.
struct Stored {
    name: String,
    id: TopicId,
    partitions: i32,
    overrides: BTreeMap<String, String>,
}

/// Removes partition directories whose deletion did not finish before a crash.
pub(crate) fn remove_unfinished_deletions(dir: &Path) -> Result<(), BrokerError> {
    for entry in std::fs::read_dir(dir).map_err(io("listing the data directory"))? {
        let entry = entry.map_err(io("listing the data directory"))?;
        if entry.file_name().to_string_lossy().ends_with("-delete") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Moves `.topics/` aside once its topics are in the metadata log, so that they are never
/// read again.
pub(crate) fn retire_topic_files(dir: &Path) -> Result<(), BrokerError> {
    let from = dir.join(TOPICS_DIR);
    let to = dir.join(".topics-moved-to-metadata-log");
    std::fs::rename(&from, &to).map_err(io(format!("renaming {}", from.display())))
}

impl Broker {
    /// The records of this node's partition `index` of a topic it alone holds: led here,
    /// from the leader epoch its log last wrote with.
    fn led_here(&self, topic: &str, index: i32, leader_epoch: i32) -> Record {
        self.led_by(self.config.node_id, topic, index, leader_epoch)
    }

    /// The record of partition `index` of `topic`, held and led by broker `node` alone.
    fn led_by(&self, node: i32, topic: &str, index: i32, leader_epoch: i32) -> Record {
        Self::held_by(vec![node], topic, index, leader_epoch)
    }

    /// The record of a new partition `index` of `topic` on `replicas`, all in the ISR, the
    /// first leading (Kafka's preferred leader).
    fn held_by(replicas: Vec<i32>, topic: &str, index: i32, leader_epoch: i32) -> Record {
        let replicas = Replicas::from_vec(replicas);
        Record::Partition {
            topic: topic.to_string(),
            partition: index,
            info: PartitionInfo {
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch,
                partition_epoch: 0,
                ..PartitionInfo::default()
            },
        }
    }

    /// Reads the stored topics and opens (recovering) their partitions; returns the metadata
    /// records they make.
    pub(crate) fn load_topics(&self) -> Result<Vec<Record>, BrokerError> {
        let dir = self.config.log_dir.clone();
        let mut records = Vec::new();
        let topics_dir = dir.join(TOPICS_DIR);
        std::fs::create_dir_all(&topics_dir)
            .map_err(io(format!("creating {}", topics_dir.display())))?;
        for entry in std::fs::read_dir(&topics_dir).map_err(io("listing topics"))? {
            let path = entry.map_err(io("listing topics"))?.path();
            let Some(stored) = self.read_stored(&path)? else {
                continue;
            };
            let config = TopicConfig::new(&self.config, stored.overrides.clone())
                .map_err(|e| BrokerError::InvalidConfig(format!("topic {}: {e}", stored.name)))?;
            records.push(Record::Topic {
                name: stored.name.clone(),
                id: stored.id,
            });
            records.push(Record::TopicConfigs {
                topic: stored.name.clone(),
                configs: stored.overrides,
            });
            for i in 0..stored.partitions {
                let p = self
                    .replicas
                    .open(&TopicPartition::new(stored.name.clone(), i), &config)?;
                records.push(self.led_here(&stored.name, i, p.leader_epoch()));
            }
        }
        Ok(records)
    }

    fn read_stored(&self, path: &std::path::Path) -> Result<Option<Stored>, BrokerError> {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".properties"))
        else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
        let props = parse_properties(&text, &path.display().to_string())
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        let id = props
            .get("topic.id")
            .and_then(|s| parse_topic_id(s))
            .ok_or_else(|| {
                BrokerError::InvalidConfig(format!("{}: missing or bad topic.id", path.display()))
            })?;
        Ok(Some(Stored {
            name: name.to_string(),
            id,
            partitions: props
                .get("partitions")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
            overrides: props
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("config.")
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect(),
        }))
    }

    fn check_assignments(
        &self,
        assignments: &[Vec<i32>],
        replication_factor: usize,
    ) -> Result<(), BrokerError> {
        let image = self.image();
        for (i, replicas) in assignments.iter().enumerate() {
            if replicas.len() != replication_factor
                || replicas.iter().any(|r| !image.brokers.contains_key(r))
            {
                let known: Vec<i32> = image.brokers.keys().copied().collect();
                return Err(BrokerError::InvalidReplicaAssignment(format!(
                    "partition {i} is assigned to brokers {replicas:?}; the registered brokers are {known:?}"
                )));
            }
        }
        Ok(())
    }

    /// Replicas for partitions `first..first + count`: spread over the unfenced brokers
    /// (rack-aware when racks are set), striped from a random start as Kafka places them,
    /// leaders balanced.
    fn place(&self, first: i32, count: i32, rf: i16) -> Result<Vec<Vec<i32>>, BrokerError> {
        let image = self.image();
        let brokers: Vec<strom_controller::placement::Candidate> = image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| strom_controller::placement::Candidate {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect();
        let start = strom_storage::clock::random_id()[0] as usize;
        strom_controller::placement::place(&brokers, first, count, rf, start)
            .map_err(|e| BrokerError::InvalidReplicationFactor(e.to_string()))
    }

    /// Validates a new topic and, unless `validate_only`, creates it.
    pub async fn create_topic(
        &self,
        new: NewTopic,
        validate_only: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(&new.name).map_err(BrokerError::InvalidTopic)?;
        let admin = self.admin.lock().await;
        if self.topic(&new.name).is_some() {
            return Err(BrokerError::TopicExists(new.name));
        }
        let collides = self
            .topics()
            .into_iter()
            .find(|t| t.name.replace('.', "_") == new.name.replace('.', "_"));
        if let Some(t) = collides {
            return Err(BrokerError::InvalidTopic(format!(
                "topic {} collides with existing topic {}: '.' and '_' are interchangeable in metric names",
                new.name, t.name
            )));
        }
        let partitions = if new.assignments.is_empty() {
            new.partitions.unwrap_or(self.config.num_partitions)
        } else {
            new.assignments.len() as i32
        };
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        let rf = if new.assignments.is_empty() {
            new.replication_factor
                .unwrap_or(self.config.default_replication_factor)
        } else {
            new.assignments[0].len() as i16
        };
        if rf < 1 {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "replication factor must be at least 1, got {rf}"
            )));
        }
        self.check_assignments(&new.assignments, rf as usize)?;
        let config = TopicConfig::new(&self.topic_defaults(), new.configs.clone())
            .map_err(BrokerError::InvalidConfig)?;
        let id = random_id();
        if validate_only {
            return Ok(Arc::new(Topic {
                name: new.name,
                id,
                config: std::sync::RwLock::new(config),
            }));
        }
        if self.metadata_log.has_controller() {
            drop(admin);
            let topic = strom_controller::TopicRequest {
                name: new.name.clone(),
                id,
                partitions,
                replication_factor: rf,
                assignments: new.assignments.clone(),
                configs: config.overrides.clone(),
            };
            match self
                .changed_by_controller(&new.name, BrokerRequest::CreateTopic { topic })
                .await
            {
                Ok(()) => {}
                // Created first by another request, or by this one's own attempt that the
                // retry of a lost answer ran into: this node's metadata tells which once it
                // shows the topic.
                Err(BrokerError::TopicExists(_)) => {
                    self.publish_when(std::time::Duration::from_secs(5), |image| {
                        image.topics.contains_key(&new.name)
                    })
                    .await;
                }
                Err(e) => return Err(e),
            }
            return match self.topic(&new.name) {
                Some(t) if t.id == id => {
                    tracing::info!(topic = %new.name, partitions, "created topic");
                    Ok(t)
                }
                Some(_) => Err(BrokerError::TopicExists(new.name)),
                None => Err(BrokerError::UnknownTopic(new.name)),
            };
        }
        let mut records = vec![
            Record::Topic {
                name: new.name.clone(),
                id,
            },
            Record::TopicConfigs {
                topic: new.name.clone(),
                configs: config.overrides.clone(),
            },
        ];
        let replicas = if new.assignments.is_empty() {
            self.place(0, partitions, rf)?
        } else {
            new.assignments.clone()
        };
        records.extend(
            replicas
                .into_iter()
                .enumerate()
                .map(|(i, r)| Self::held_by(r, &new.name, i as i32, 0)),
        );
        self.commit_locked(&admin, records).await?;
        // Another broker's creation of the name may have reached the log first: then the
        // log ignored this one whole.
        match self.topic(&new.name) {
            Some(t) if t.id == id => {
                tracing::info!(topic = %new.name, partitions, "created topic");
                Ok(t)
            }
            Some(_) => Err(BrokerError::TopicExists(new.name)),
            None => Err(BrokerError::UnknownTopic(new.name)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        if self.metadata_log.has_controller() {
            drop(admin);
            let topic_name = name.to_string();
            self.changed_by_controller(name, BrokerRequest::DeleteTopic { topic: topic_name })
                .await?;
            tracing::info!(topic = %name, "deleted topic");
            return Ok(topic);
        }
        self.commit_locked(
            &admin,
            vec![Record::RemoveTopic {
                name: name.to_string(),
            }],
        )
        .await?;
        tracing::info!(topic = %name, "deleted topic");
        Ok(topic)
    }

    /// CreatePartitions: grows a topic to `count` partitions.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let admin = self.admin.lock().await;
        if self.topic(name).is_none() {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        let current = self.partition_count(name).unwrap_or(0);
        // New partitions get as many replicas as the topic's first.
        let rf = self
            .image()
            .partition(name, 0)
            .map_or(1, |p| p.replicas.len().max(1));
        if count > MAX_PARTITIONS {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic {name} may have at most {MAX_PARTITIONS} partitions, not {count}"
            )));
        }
        if count <= current {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic {name} has {current} partitions; the new count {count} must be larger"
            )));
        }
        if let Some(a) = &assignments {
            if a.len() as i32 != count - current {
                return Err(BrokerError::InvalidReplicaAssignment(format!(
                    "{} assignments given for {} new partitions",
                    a.len(),
                    count - current
                )));
            }
            self.check_assignments(a, rf)?;
        }
        if validate_only {
            return Ok(());
        }
        if self.metadata_log.has_controller() {
            drop(admin);
            let req = BrokerRequest::CreatePartitions {
                topic: name.to_string(),
                count,
                assignments,
            };
            return self.changed_by_controller(name, req).await;
        }
        let replicas = match assignments {
            Some(a) => a,
            None => self.place(current, count - current, rf as i16)?,
        };
        let records: Vec<Record> = replicas
            .into_iter()
            .zip(current..count)
            .map(|(r, i)| Self::held_by(r, name, i, 0))
            .collect();
        self.commit_locked(&admin, records).await
    }

    /// Replaces a topic's overrides (validated first), live on every partition.
    /// With `expected`, only if the topic's overrides are still those (an incremental change
    /// made from them): BrokerError::StaleConfigs otherwise.
    pub async fn set_topic_config(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
        expected: Option<BTreeMap<String, String>>,
    ) -> Result<(), BrokerError> {
        if self.topic(name).is_none() {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        let config = TopicConfig::new(&self.topic_defaults(), overrides)
            .map_err(BrokerError::InvalidConfig)?;
        if validate_only {
            return Ok(());
        }
        if self.metadata_log.has_controller() {
            let req = BrokerRequest::SetTopicConfigs {
                topic: name.to_string(),
                configs: config.overrides,
                expected,
            };
            return self.changed_by_controller(name, req).await;
        }
        let admin = self.admin.lock().await;
        self.commit_locked(
            &admin,
            vec![Record::TopicConfigs {
                topic: name.to_string(),
                configs: config.overrides,
            }],
        )
        .await
    }

    /// A topic change decided by the active controller (Kafka's brokers forward these
    /// requests): asked for, then answered once this node's metadata shows it, so that a
    /// Metadata request right after sees it. The controller's refusal comes back as the
    /// error it names.
    pub(crate) async fn changed_by_controller(
        &self,
        topic: &str,
        req: BrokerRequest,
    ) -> Result<(), BrokerError> {
        let offset = match self.ask_controller_for_admin(req).await? {
            BrokerAnswer::Committed { metadata_offset } => metadata_offset,
            BrokerAnswer::Refused { code, message } => {
                return Err(refused(code, message, topic));
            }
            other => {
                return Err(BrokerError::MetadataLog(format!(
                    "the controller answered {other:?}"
                )));
            }
        };
        let Some(mut images) = self.metadata_log.watch() else {
            return Ok(());
        };
        let shown = images.wait_for(|image| image.offset >= offset);
        match tokio::time::timeout(std::time::Duration::from_secs(30), shown).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(BrokerError::MetadataLog(format!(
                    "committed at metadata offset {offset}, but this node's metadata did not reach it within 30 s"
                )));
            }
        }
        self.publish_latest().await
    }

    /// Publishes the metadata log's newest image here now, not when the follower task gets
    /// to it: an answer must not run ahead of this node's own view.
    pub(crate) async fn publish_latest(&self) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let image = self.latest_image();
        if image.offset > self.image().offset {
            self.publish_image(image)?;
        }
        Ok(())
    }

    /// Waits (up to `timeout`) for the metadata log's image to satisfy `shows`, then
    /// publishes it here.
    async fn publish_when(
        &self,
        timeout: std::time::Duration,
        shows: impl Fn(&strom_metadata::image::MetadataImage) -> bool,
    ) {
        if let Some(mut images) = self.metadata_log.watch() {
            let _ = tokio::time::timeout(timeout, images.wait_for(|i| shows(i))).await;
        }
        if let Err(e) = self.publish_latest().await {
            tracing::warn!(error = %e, "cannot apply a metadata change");
        }
    }
}

/// The broker error for a controller's refusal of a change to `topic`.
fn refused(code: i16, message: String, topic: &str) -> BrokerError {
    use strom_metadata::errors as e;
    match code {
        e::TOPIC_ALREADY_EXISTS => BrokerError::TopicExists(topic.to_string()),
        e::UNKNOWN_TOPIC_OR_PARTITION => BrokerError::UnknownTopic(topic.to_string()),
        e::INVALID_TOPIC_EXCEPTION => BrokerError::InvalidTopic(message),
        e::INVALID_PARTITIONS => BrokerError::InvalidPartitions(message),
        e::INVALID_REPLICATION_FACTOR => BrokerError::InvalidReplicationFactor(message),
        e::INVALID_REPLICA_ASSIGNMENT => BrokerError::InvalidReplicaAssignment(message),
        e::INVALID_CONFIG => BrokerError::InvalidConfig(message),
        e::INVALID_UPDATE_VERSION => BrokerError::StaleConfigs(message),
        _ => BrokerError::MetadataLog(format!("the controller refused (error {code}): {message}")),
    }
}
