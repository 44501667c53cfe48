//! The broker's state: its topics and partitions on disk, the cluster identity, producer id
//! allocation. Handlers call into this; it knows nothing of wire types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use strom_storage::StorageError;

use crate::config::{BrokerConfig, parse_properties};
use crate::partition::Partition;
use crate::topic_config::{TopicConfig, validate_topic_name};

const TOPICS_DIR: &str = ".topics";
const PRODUCER_IDS: &str = ".producer-id-block";
const PRODUCER_ID_BLOCK: i64 = 1000;
/// More partitions than this in one topic is a mistake (or an attack), not a plan: each is a
/// directory with open files.
pub const MAX_PARTITIONS: i32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    InvalidTopic(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}

pub type TopicId = [u8; 16];

pub struct Topic {
    pub name: String,
    pub id: TopicId,
    pub config: RwLock<TopicConfig>,
    pub partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let parts = self.partitions.read().unwrap();
        usize::try_from(index)
            .ok()
            .and_then(|i| parts.get(i).cloned())
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.read().unwrap().len()
    }

    /// Kafka's internal topics are a fixed list, not a prefix: users make `__`-topics too
    /// (Debezium's heartbeats, Cruise Control's metrics) and write to them.
    pub fn is_internal(&self) -> bool {
        self.name == crate::group::coordinator::OFFSETS_TOPIC
            || self.name == crate::txn::coordinator::TXN_TOPIC
    }
}

/// A new topic, as CreateTopics asks for it.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    /// Explicit replica lists per partition, if given.
    pub assignments: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation and deletion (metadata changes), not data traffic.
    admin: Mutex<()>,
    producer_ids: Mutex<(i64, i64)>,
    pub groups: crate::group::coordinator::GroupCoordinator,
    pub txns: crate::txn::coordinator::TxnCoordinator,
}

pub use strom_storage::clock::random_id;

/// Kafka's cluster id form: 16 bytes in URL-safe base64 without padding (22 characters).
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn write_file_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn topic_id_hex(id: &TopicId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_topic_id(s: &str) -> Option<TopicId> {
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

impl Broker {
    /// Opens the data directory: identity, topics and their logs (recovering them).
    pub fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let dir = config.log_dir.clone();
        std::fs::create_dir_all(dir.join(TOPICS_DIR))
            .map_err(io(format!("creating {}", dir.display())))?;
        crate::storage_errors::warn_if_low_on_space(&dir);
        let cluster_id = Self::identity(&dir, config.node_id)?;
        let producer_ids = Self::next_producer_id_block(&dir, None)?;
        let config_groups = config.groups;
        let config_txns = config.txns;
        let broker = Broker {
            config,
            cluster_id,
            topics: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            producer_ids: Mutex::new(producer_ids),
            groups: crate::group::coordinator::GroupCoordinator::new(config_groups),
            txns: crate::txn::coordinator::TxnCoordinator::new(config_txns),
        };
        broker.load_topics()?;
        // This node leads every partition it has: the coordinators load their shards now,
        // and the transaction timers' first pass finishes what was prepared before a stop.
        for topic in broker.topics() {
            broker.elect(&topic, 0..topic.partition_count() as i32);
        }
        Ok(broker)
    }

    /// `meta.properties`: the cluster id made on first start, and the node id it belongs to.
    fn identity(dir: &Path, node_id: i32) -> Result<String, BrokerError> {
        let path = dir.join("meta.properties");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(io(format!("reading {}", path.display())))?;
            let props = parse_properties(&text, &path.display().to_string())
                .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
            let stored: Option<i32> = props.get("node.id").and_then(|v| v.parse().ok());
            if stored.is_some_and(|n| n != node_id) {
                return Err(BrokerError::InvalidConfig(format!(
                    "{} belongs to node {}, but this is node.id={node_id}; point log.dirs elsewhere or fix node.id",
                    path.display(),
                    stored.unwrap()
                )));
            }
            if let Some(id) = props.get("cluster.id") {
                return Ok(id.clone());
            }
        }
        let id = base64url(&random_id());
        let text = format!("version=1\ncluster.id={id}\nnode.id={node_id}\n");
        write_file_atomically(&path, &text).map_err(io(format!("writing {}", path.display())))?;
        Ok(id)
    }

    /// Producer ids come in blocks recorded on disk before use, so none is handed out twice
    /// across restarts.
    fn next_producer_id_block(
        dir: &Path,
        current_end: Option<i64>,
    ) -> Result<(i64, i64), BrokerError> {
        let path = dir.join(PRODUCER_IDS);
        let start = match current_end {
            Some(end) => end,
            None => std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
        };
        let end = start + PRODUCER_ID_BLOCK;
        write_file_atomically(&path, &format!("{end}\n"))
            .map_err(io("writing the producer id block"))?;
        Ok((start, end))
    }

    pub fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        let mut ids = self.producer_ids.lock().unwrap();
        if ids.0 >= ids.1 {
            *ids = Self::next_producer_id_block(&self.config.log_dir, Some(ids.1))?;
        }
        ids.0 += 1;
        Ok(ids.0 - 1)
    }

    fn topic_file(&self, name: &str) -> PathBuf {
        self.config
            .log_dir
            .join(TOPICS_DIR)
            .join(format!("{name}.properties"))
    }

    fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.config.log_dir.join(format!("{topic}-{index}"))
    }

    fn load_topics(&self) -> Result<(), BrokerError> {
        let dir = self.config.log_dir.clone();
        for entry in std::fs::read_dir(&dir).map_err(io("listing the data directory"))? {
            let entry = entry.map_err(io("listing the data directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with("-delete") {
                // A deletion that did not finish before a crash.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let topics_dir = dir.join(TOPICS_DIR);
        for entry in std::fs::read_dir(&topics_dir).map_err(io("listing topics"))? {
            let path = entry.map_err(io("listing topics"))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".properties"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .map_err(io(format!("reading {}", path.display())))?;
            let props = parse_properties(&text, &path.display().to_string())
                .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
            let id = props
                .get("topic.id")
                .and_then(|s| parse_topic_id(s))
                .ok_or_else(|| {
                    BrokerError::InvalidConfig(format!(
                        "{}: missing or bad topic.id",
                        path.display()
                    ))
                })?;
            let count: i32 = props
                .get("partitions")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            let overrides: BTreeMap<String, String> = props
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("config.")
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect();
            let config = TopicConfig::new(&self.config, overrides)
                .map_err(|e| BrokerError::InvalidConfig(format!("topic {name}: {e}")))?;
            let topic = Arc::new(Topic {
                name: name.to_string(),
                id,
                config: RwLock::new(config.clone()),
                partitions: RwLock::new(Vec::new()),
            });
            for i in 0..count {
                let p = self.open_partition(name, i, &config)?;
                topic.partitions.write().unwrap().push(Arc::new(p));
            }
            self.topics.write().unwrap().insert(name.to_string(), topic);
        }
        Ok(())
    }

    fn open_partition(
        &self,
        topic: &str,
        index: i32,
        config: &TopicConfig,
    ) -> Result<Partition, BrokerError> {
        Ok(Partition::open(
            &self.partition_dir(topic, index),
            topic,
            index,
            self.config.node_id,
            config,
        )?)
    }

    fn save_topic(&self, topic: &Topic) -> Result<(), BrokerError> {
        let config = topic.config.read().unwrap();
        let mut text = format!(
            "topic.id={}\npartitions={}\nreplication.factor=1\n",
            topic_id_hex(&topic.id),
            topic.partition_count()
        );
        for (k, v) in &config.overrides {
            text.push_str(&format!("config.{k}={v}\n"));
        }
        let path = self.topic_file(&topic.name);
        write_file_atomically(&path, &text).map_err(io(format!("writing {}", path.display())))
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap().get(name).cloned()
    }

    pub fn topic_by_id(&self, id: &TopicId) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap()
            .values()
            .find(|t| &t.id == id)
            .cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.topic(topic)?.partition(index)
    }

    fn check_assignments(
        &self,
        assignments: &[Vec<i32>],
        replication_factor: usize,
    ) -> Result<(), BrokerError> {
        for (i, replicas) in assignments.iter().enumerate() {
            if replicas.len() != replication_factor
                || replicas.iter().any(|r| *r != self.config.node_id)
            {
                return Err(BrokerError::InvalidReplicaAssignment(format!(
                    "partition {i} is assigned to brokers {replicas:?}, but this cluster has only broker {}",
                    self.config.node_id
                )));
            }
        }
        Ok(())
    }

    /// Validates a new topic and, unless `validate_only`, creates it.
    pub fn create_topic(
        &self,
        new: NewTopic,
        validate_only: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(&new.name).map_err(BrokerError::InvalidTopic)?;
        let _admin = self.admin.lock().unwrap();
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
        if rf > 1 {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "replication factor {rf} is larger than the number of brokers (1)"
            )));
        }
        self.check_assignments(&new.assignments, rf as usize)?;
        let config =
            TopicConfig::new(&self.config, new.configs).map_err(BrokerError::InvalidConfig)?;
        let topic = Arc::new(Topic {
            name: new.name.clone(),
            id: random_id(),
            config: RwLock::new(config.clone()),
            partitions: RwLock::new(Vec::new()),
        });
        if validate_only {
            return Ok(topic);
        }
        for i in 0..partitions {
            let p = self.open_partition(&new.name, i, &config)?;
            topic.partitions.write().unwrap().push(Arc::new(p));
        }
        self.save_topic(&topic)?;
        self.topics
            .write()
            .unwrap()
            .insert(new.name.clone(), topic.clone());
        tracing::info!(topic = %new.name, partitions, "created topic");
        self.elect(&topic, 0..partitions);
        Ok(topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock().unwrap();
        let topic = self
            .topics
            .write()
            .unwrap()
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        self.resign(&topic);
        let path = self.topic_file(name);
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        for p in topic.partitions.read().unwrap().iter() {
            // Rename first so that a crash leaves a "-delete" directory that the next start
            // removes, never a live-looking partition of a deleted topic.
            let dir = p.log().dir().to_path_buf();
            let doomed = dir.with_file_name(format!(
                "{}.{}-delete",
                dir.file_name().unwrap().to_string_lossy(),
                topic_id_hex(&topic.id)
            ));
            p.close()?;
            std::fs::rename(&dir, &doomed).map_err(io(format!("renaming {}", dir.display())))?;
            std::fs::remove_dir_all(&doomed)
                .map_err(io(format!("removing {}", doomed.display())))?;
        }
        tracing::info!(topic = %name, "deleted topic");
        Ok(topic)
    }

    /// CreatePartitions: grows a topic to `count` partitions.
    pub fn add_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().unwrap();
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count() as i32;
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
            self.check_assignments(a, 1)?;
        }
        if validate_only {
            return Ok(());
        }
        let config = topic.config.read().unwrap().clone();
        for i in current..count {
            let p = self.open_partition(name, i, &config)?;
            topic.partitions.write().unwrap().push(Arc::new(p));
        }
        self.save_topic(&topic)?;
        self.elect(&topic, current..count);
        Ok(())
    }

    /// Replaces a topic's overrides (validated first), live on every partition.
    pub fn set_topic_config(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let config =
            TopicConfig::new(&self.config, overrides).map_err(BrokerError::InvalidConfig)?;
        if validate_only {
            return Ok(());
        }
        let _admin = self.admin.lock().unwrap();
        for p in topic.partitions.read().unwrap().iter() {
            p.set_config(&config);
        }
        *topic.config.write().unwrap() = config;
        self.save_topic(&topic)
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics()
            .iter()
            .flat_map(|t| t.partitions.read().unwrap().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_of_cluster_ids() {
        assert_eq!(base64url(&[0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(base64url(&[0xff; 16]).len(), 22);
        assert_eq!(base64url(b"Man"), "TWFu");
    }

    #[test]
    fn topic_ids_round_trip() {
        let id = random_id();
        assert_eq!(parse_topic_id(&topic_id_hex(&id)), Some(id));
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn topics_survive_a_restart_with_their_configs() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            log_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        let b = Broker::open(config.clone()).unwrap();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "5000".to_string());
        let t = b
            .create_topic(
                NewTopic {
                    name: "t".into(),
                    partitions: Some(3),
                    replication_factor: None,
                    assignments: vec![],
                    configs,
                },
                false,
            )
            .unwrap();
        let id = t.id;
        let cluster = b.cluster_id.clone();
        let pid = b.allocate_producer_id().unwrap();
        assert!(matches!(
            b.create_topic(
                NewTopic {
                    name: "t".into(),
                    partitions: None,
                    replication_factor: None,
                    assignments: vec![],
                    configs: BTreeMap::new()
                },
                false
            ),
            Err(BrokerError::TopicExists(_))
        ));
        b.add_partitions("t", 4, None, false).unwrap();
        b.shutdown();
        drop(b);
        let b = Broker::open(config).unwrap();
        assert_eq!(b.cluster_id, cluster);
        let t = b.topic("t").unwrap();
        assert_eq!(t.id, id);
        assert_eq!(t.partition_count(), 4);
        assert_eq!(t.config.read().unwrap().log.retention_ms, 5000);
        assert!(b.allocate_producer_id().unwrap() > pid);
        b.delete_topic("t").unwrap();
        assert!(b.topic("t").is_none());
        assert!(!dir.path().join("t-0").exists());
    }
}
