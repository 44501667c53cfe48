//! The broker's state: the cluster identity, the metadata image (topics, partitions,
//! leaders, configs) and this node's replicas, producer id allocation. Handlers call into
//! this; it knows nothing of wire types.
//!
//! Metadata changes go one way: an admin operation makes metadata records, `publish`
//! applies them to the image, the replica manager applies what they mean for this node,
//! and the coordinators hear of the internal partitions this node now leads or left.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use strom_metadata::TopicPartition;
use strom_metadata::image::{MetadataImage, Record};

use crate::config::BrokerConfig;
use crate::errors;
use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;
use crate::topic_config::TopicConfig;

/// More partitions than this in one topic is a mistake (or an attack), not a plan: each is a
/// directory with open files.
pub const MAX_PARTITIONS: i32 = 10_000;

pub use crate::errors::{BrokerError, io};

pub use strom_metadata::image::TopicId;

/// A topic as this broker uses it: its name, id and parsed config (the image holds the raw
/// overrides; this is kept in step with it by `publish`).
pub struct Topic {
    pub name: String,
    pub id: TopicId,
    pub config: RwLock<TopicConfig>,
}

impl Topic {
    /// Kafka's internal topics are a fixed list, not a prefix: users make `__`-topics too
    /// (Debezium's heartbeats, Cruise Control's metrics) and write to them.
    pub fn is_internal(&self) -> bool {
        is_internal(&self.name)
    }
}

pub fn is_internal(name: &str) -> bool {
    name == crate::group::coordinator::OFFSETS_TOPIC || name == crate::txn::coordinator::TXN_TOPIC
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
    /// The cluster metadata as this broker sees it.
    image: RwLock<Arc<MetadataImage>>,
    /// What topics default to: server.properties, with the metadata log's dynamic broker
    /// configs over it.
    topic_defaults: RwLock<Arc<BrokerConfig>>,
    /// Parsed configs of the image's topics.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// This node's replicas.
    pub replicas: ReplicaManager,
    /// Serializes metadata changes (topic creation, deletion, configs), not data traffic:
    /// held from a change's checks to its publication.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Where metadata changes are committed before they are applied.
    pub(crate) metadata_log: Box<dyn crate::metadata_log::MetadataLog>,
    pub(crate) producer_ids: crate::producer_ids::ProducerIds,
    /// This process's registration with the controller: its incarnation, and the broker
    /// epoch the controller gave it.
    pub(crate) incarnation: [u8; 16],
    pub(crate) broker_epoch: std::sync::atomic::AtomicI64,
    /// This node's lease on what it leads: see [`Broker::leadership_current`].
    pub(crate) lease: std::sync::Mutex<crate::lease::Lease>,
    /// Connections to the other brokers.
    pub(crate) peers: crate::peers::Peers,
    /// The replica fetchers of the partitions followed here.
    pub(crate) fetchers: crate::fetcher::Fetchers,
    pub groups: crate::group::coordinator::GroupCoordinator,
    pub txns: crate::txn::coordinator::TxnCoordinator,
    /// What the log cleaner's threads share.
    pub(crate) cleaner: crate::cleaner::CleanerState,
    /// When this node last tried to make an older strom's internal topic compacted, by
    /// topic: see [`Broker::compact_internal_topic`].
    pub(crate) internal_topic_upgrades:
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

pub use strom_storage::clock::random_id;

pub(crate) fn write_file_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn topic_id_hex(id: &TopicId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn parse_topic_id(s: &str) -> Option<TopicId> {
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
    /// Opens the data directory: identity, topics and their logs (recovering them), then
    /// publishes the metadata they make, which hands the coordinators their shards.
    pub fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let dir = config.log_dir.clone();
        let mut broker = Self::new(config)?;
        let mut records = vec![broker.registration()];
        records.extend(broker.load_topics()?);
        let (image, ignored) = MetadataImage::default().apply(&records);
        for why in ignored {
            tracing::warn!("metadata record ignored: {why}");
        }
        let image = Arc::new(image);
        broker.publish_image(image.clone())?;
        broker.metadata_log = Box::new(crate::metadata_log::TopicFiles::new(
            dir.join(crate::topics::TOPICS_DIR),
            image,
        ));
        Ok(broker)
    }

    /// Opens the data directory with the controller quorum's log as the metadata: topics
    /// stored by a strom from before the quorum (`.topics/`) move into it on first start;
    /// this node registers itself; then the quorum's image is published here. A broker
    /// without the controller role follows the quorum as an observer.
    pub async fn open_with_quorum(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let broker = Self::join_with_quorum(config).await?;
        broker.publish_joined()?;
        Ok(broker)
    }

    /// The first half of [`Broker::open_with_quorum`]: the metadata log, and this node
    /// registered and unfenced; its partitions are not open yet. Opening thousands of them
    /// ([`Broker::publish_joined`]) can outlast `broker.session.timeout.ms`: a server sends
    /// heartbeats meanwhile, or the controller fences the node in the middle of its start.
    pub async fn join_with_quorum(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let mut broker = Self::new(config)?;
        let c = &broker.config;
        let log: Box<dyn crate::metadata_log::MetadataLog> = if c.kraft.roles.controller {
            let quorum = crate::quorum_node::start_quorum(c, &broker.cluster_id).await?;
            let log = crate::metadata_log::QuorumLog { quorum };
            broker.move_stored_topics(&log).await?;
            Box::new(log)
        } else {
            let voters = crate::quorum_node::voters(c);
            if voters.is_empty() {
                return Err(BrokerError::InvalidConfig(
                    "process.roles=broker needs controller.quorum.voters: the controllers it follows".into(),
                ));
            }
            let observer = strom_controller::quorum::observer::Observer::start(
                c.node_id as u64,
                voters,
                &broker.cluster_id,
                std::time::Duration::from_millis(c.kraft.fetch_timeout_ms),
            )
            .await
            .map_err(|e| BrokerError::MetadataLog(e.to_string()))?;
            Box::new(crate::metadata_log::ObserverLog { observer })
        };
        broker.metadata_log = log;
        // Registered and unfenced by the active controller before this node serves: the
        // image published next shows what it leads.
        broker.join_cluster().await?;
        Ok(broker)
    }

    /// The second half of [`Broker::open_with_quorum`]: the metadata log's image now is
    /// published here, which opens (recovering) the partitions this node holds.
    pub fn publish_joined(&self) -> Result<(), BrokerError> {
        let image = self
            .metadata_log
            .watch()
            .map(|w| w.borrow().clone())
            .unwrap_or_default();
        self.publish_image(image)
    }

    /// Topics stored by a strom from before the quorum (`.topics/`) move into the metadata
    /// log, once: when the log has no topics yet.
    async fn move_stored_topics(
        &self,
        log: &crate::metadata_log::QuorumLog,
    ) -> Result<(), BrokerError> {
        use crate::metadata_log::MetadataLog;
        if !log.quorum.state.image().topics.is_empty() {
            return Ok(());
        }
        let stored = self.load_topics()?;
        if !stored.iter().any(|r| matches!(r, Record::Topic { .. })) {
            return Ok(());
        }
        tracing::info!(
            topics = stored
                .iter()
                .filter(|r| matches!(r, Record::Topic { .. }))
                .count(),
            "moving the topics of .topics/ into the metadata log"
        );
        log.commit(stored).await?;
        // The metadata log holds them now: read again, the files would bring back topics
        // deleted since.
        crate::topics::retire_topic_files(&self.config.log_dir)
    }

    /// Identity, producer ids and empty state: what both ways of opening share.
    fn new(config: BrokerConfig) -> Result<Broker, BrokerError> {
        config.check_one_log_dir()?;
        let dir = config.log_dir.clone();
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        crate::storage_errors::warn_if_low_on_space(&dir);
        let cluster_id = Self::identity(&dir, &config)?;
        let producer_ids = crate::producer_ids::ProducerIds::open(&dir, config.node_id)?;
        crate::topics::remove_unfinished_deletions(&dir)?;
        let topic_defaults = RwLock::new(Arc::new(config.clone()));
        Ok(Broker {
            replicas: ReplicaManager::new(config.node_id, dir.clone()),
            groups: crate::group::coordinator::GroupCoordinator::new(config.groups),
            txns: crate::txn::coordinator::TxnCoordinator::new(config.txns),
            cleaner: crate::cleaner::CleanerState::new(&config.cleaner),
            internal_topic_upgrades: Default::default(),
            config,
            cluster_id,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            topic_defaults,
            topics: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            metadata_log: Box::new(crate::metadata_log::TopicFiles::new(
                dir.join(crate::topics::TOPICS_DIR),
                Arc::default(),
            )),
            producer_ids,
            incarnation: random_id(),
            broker_epoch: std::sync::atomic::AtomicI64::new(crate::lifecycle::UNREGISTERED),
            lease: std::sync::Mutex::default(),
            peers: Default::default(),
            fetchers: Default::default(),
        })
    }

    /// Publishes the images other nodes commit (and this node's own, which it has already
    /// applied: those are skipped) until `stop` fires.
    pub async fn follow_metadata(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(mut images) = self.metadata_log.watch() else {
            return;
        };
        loop {
            tokio::select! {
                changed = images.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            // Under the admin lock, and the newest image read there: a commit of this node
            // may have published a newer one meanwhile.
            let _admin = self.admin.lock().await;
            let image = images.borrow_and_update().clone();
            if Arc::ptr_eq(&image, &self.image()) {
                continue;
            }
            if let Err(e) = self.publish_image(image) {
                tracing::error!(error = %e, "cannot apply a metadata change");
            }
        }
    }

    /// Stops the metadata log (the quorum's Raft node), after `shutdown`.
    pub async fn close_metadata_log(&self) {
        self.metadata_log.close().await
    }

    /// The metadata quorum as this node sees it; `None` without one.
    pub fn quorum_status(&self) -> Option<strom_controller::quorum::QuorumStatus> {
        self.metadata_log.quorum_status()
    }

    /// The metadata quorum as its leader sees it (the voters' and observers' log end
    /// offsets are known there only), as Kafka's brokers forward DescribeQuorum; this
    /// node's own view when the leader is unknown or does not answer within 2 s.
    pub async fn quorum_status_at_leader(&self) -> Option<strom_controller::quorum::QuorumStatus> {
        let local = self.quorum_status()?;
        let Some(leader) = local.leader else {
            return Some(local);
        };
        if leader == self.config.node_id as u64 {
            return Some(local);
        }
        let voters = crate::quorum_node::voters(&self.config);
        let Some(addr) = voters.get(&leader) else {
            return Some(local);
        };
        let req = strom_controller::quorum::observer::FetchRequest {
            node: self.config.node_id as u64,
            after: u64::MAX,
            max_wait_ms: 0,
            status_only: true,
            entries_ok: false,
        };
        match strom_controller::quorum::network::fetch_image(
            addr,
            &self.cluster_id,
            &req,
            std::time::Duration::from_secs(2),
        )
        .await
        {
            Ok(answer) => Some(answer.status),
            Err(e) => {
                tracing::debug!(leader, error = %e, "DescribeQuorum answered from this node's view");
                Some(local)
            }
        }
    }

    /// This node's registration record.
    fn registration(&self) -> Record {
        Record::RegisterBroker(strom_metadata::image::BrokerInfo {
            id: self.config.node_id,
            host: self.config.advertised_host.clone(),
            port: self.config.advertised_port,
            rack: self.config.kraft.rack.clone(),
            fenced: false,
            incarnation: self.incarnation,
            epoch: 0,
            endpoints: self.config.endpoints(),
        })
    }

    /// `meta.properties`: the cluster id and the node it belongs to. A cluster node's
    /// directories are formatted first (`strom storage format`); a node alone in its quorum
    /// (the embedded default) formats its own on first start.
    pub(crate) fn identity(dir: &Path, config: &BrokerConfig) -> Result<String, BrokerError> {
        let node_id = config.node_id;
        if let Some(m) = crate::meta_properties::read(dir)? {
            if m.node_id != node_id {
                return Err(BrokerError::InvalidConfig(format!(
                    "{} belongs to node {}, but this is node.id={node_id}; point log.dirs elsewhere or fix node.id",
                    dir.join(crate::meta_properties::FILE).display(),
                    m.node_id
                )));
            }
            return Ok(m.cluster_id);
        }
        if config.kraft.multi_node(node_id) {
            return Err(BrokerError::InvalidConfig(format!(
                "{} is not formatted, and this node's quorum has other voters: run `strom storage format -t <cluster id> -c <server.properties>` on every node with the same cluster id (make one with `strom storage random-uuid`)",
                dir.display()
            )));
        }
        let m = crate::meta_properties::MetaProperties {
            cluster_id: strom_metadata::uuid::random(),
            node_id,
            directory_id: Some(strom_metadata::uuid::random()),
        };
        crate::meta_properties::write(dir, &m)?;
        Ok(m.cluster_id)
    }

    /// The broker settings topics default to now (server.properties, with the dynamic
    /// broker configs over it).
    pub fn topic_defaults(&self) -> Arc<BrokerConfig> {
        self.topic_defaults.read().unwrap().clone()
    }

    /// This broker's settings with `dynamic` over them: the cluster-wide ones, then this
    /// broker's own, over server.properties (Kafka's order). Only the topic defaults are
    /// taken from the result: the other settings are read at start.
    pub(crate) fn with_dynamic_configs(
        &self,
        dynamic: &BTreeMap<i32, BTreeMap<String, String>>,
    ) -> Result<BrokerConfig, BrokerError> {
        // The keys that make the topic defaults only: parsing the listeners again would
        // resolve their host names, and a DNS hiccup would refuse a valid change.
        let mut props: BTreeMap<String, String> = self
            .config
            .given
            .iter()
            .filter(|(k, _)| k.starts_with("log.") || crate::broker_configs::is_dynamic(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for id in [strom_metadata::image::CLUSTER_DEFAULT, self.config.node_id] {
            if let Some(c) = dynamic.get(&id) {
                props.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let (parsed, _) = BrokerConfig::from_properties(&props)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        let mut c = self.config.clone();
        c.log = parsed.log;
        c.min_insync_replicas = parsed.min_insync_replicas;
        c.compression = parsed.compression;
        Ok(c)
    }

    /// The newest metadata image the metadata log has, published here or not yet.
    pub(crate) fn latest_image(&self) -> Arc<MetadataImage> {
        match self.metadata_log.watch() {
            Some(w) => {
                let latest = w.borrow().clone();
                let published = self.image();
                if latest.offset >= published.offset {
                    latest
                } else {
                    published
                }
            }
            None => self.image(),
        }
    }

    /// Waits (up to `timeout`) for the metadata log to move past the newest image.
    pub(crate) async fn newer_metadata(&self, timeout: std::time::Duration) {
        if let Some(mut w) = self.metadata_log.watch() {
            let now = self.latest_image().offset;
            let _ = tokio::time::timeout(timeout, w.wait_for(|i| i.offset > now)).await;
        }
    }

    /// The metadata image now.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.read().unwrap().clone()
    }

    /// Commits a metadata change and publishes it: the records go to the metadata log, and
    /// the image that includes them is applied here.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), BrokerError> {
        let admin = self.admin.lock().await;
        self.commit_locked(&admin, records).await
    }

    /// [`Broker::commit`] for a caller that holds the admin lock from its checks on.
    pub(crate) async fn commit_locked(
        &self,
        _admin: &tokio::sync::MutexGuard<'_, ()>,
        records: Vec<Record>,
    ) -> Result<(), BrokerError> {
        let next = self.metadata_log.commit(records).await?;
        self.publish_image(next)
    }

    /// Applies a committed image: this node's replicas, then the parsed topic configs, then
    /// the coordinators (shards of internal partitions led here are loaded; those no longer
    /// led are dropped before their logs go).
    pub(crate) fn publish_image(&self, next: Arc<MetadataImage>) -> Result<(), BrokerError> {
        let old = self.image();
        let changes = old.local_changes(&next, self.config.node_id);
        // New dynamic broker configs: every topic's config is made again over them.
        let defaults_changed = old.broker_configs != next.broker_configs;
        if defaults_changed {
            match self.with_dynamic_configs(&next.broker_configs) {
                Ok(c) => *self.topic_defaults.write().unwrap() = Arc::new(c),
                Err(e) => {
                    tracing::error!(error = %e, "dynamic broker configs ignored: server.properties stays in force")
                }
            }
        }
        let defaults = self.topic_defaults();
        let mut replicas_of: BTreeMap<String, Vec<Arc<Partition>>> = BTreeMap::new();
        if defaults_changed {
            for p in self.replicas.all() {
                replicas_of.entry(p.topic.to_string()).or_default().push(p);
            }
        }
        // Topic configs first: a new replica opens with its topic's config.
        let mut parsed = BTreeMap::new();
        for (name, t) in &next.topics {
            // A topic the change did not touch is the same shared copy: nothing to compare.
            if !defaults_changed
                && old.topics.get(name).is_some_and(|o| Arc::ptr_eq(o, t))
                && let Some(existing) = self.topic(name)
            {
                parsed.insert(name.clone(), existing);
                continue;
            }
            let config = match self.topic(name) {
                Some(existing) if existing.id == t.id => {
                    if defaults_changed || existing.config.read().unwrap().overrides != t.configs {
                        let c = TopicConfig::new(&defaults, t.configs.clone())
                            .map_err(BrokerError::InvalidConfig)?;
                        let replicas = match replicas_of.get(name) {
                            Some(r) => r.clone(),
                            None => self.replicas.of_topic(name),
                        };
                        for p in replicas {
                            p.set_config(&c);
                        }
                        *existing.config.write().unwrap() = c;
                    }
                    existing
                }
                _ => Arc::new(Topic {
                    name: name.clone(),
                    id: t.id,
                    config: RwLock::new(
                        TopicConfig::new(&defaults, t.configs.clone()).map_err(|e| {
                            BrokerError::InvalidConfig(format!("topic {name}: {e}"))
                        })?,
                    ),
                }),
            };
            parsed.insert(name.clone(), config);
        }
        for tp in &changes.deleted {
            self.resign(tp);
        }
        // The fetchers let go first, as Kafka removes a partition's fetcher before it makes
        // the replica leader: a fetch answered by the old leader and stored after this
        // node's epoch started at its log end would put the old epoch's batches past that
        // start, and the epoch history would lose where the old epoch began.
        for tp in changes
            .leaders
            .iter()
            .map(|(tp, _)| tp)
            .chain(&changes.deleted)
        {
            self.unfollow(tp);
        }
        self.replicas.apply(&changes, |name| {
            parsed.get(name).map(|t| t.config.read().unwrap().clone())
        })?;
        *self.topics.write().unwrap() = parsed;
        *self.image.write().unwrap() = next;
        for (tp, info) in &changes.leaders {
            self.elect(tp, info.leader_epoch);
        }
        for (tp, info) in &changes.followers {
            self.resign(tp);
            if let Some(p) = self.replicas.get(tp)
                && info.leader >= 0
            {
                self.follow(tp, p, info.leader, info.leader_epoch);
            } else {
                self.unfollow(tp);
            }
        }
        Ok(())
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

    /// The partition count of `topic` in the metadata.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.image().topic(topic).map(|t| t.partitions.len() as i32)
    }

    /// This node's replica of a partition, whoever leads it.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.replicas.get(&TopicPartition::new(topic, index))
    }

    /// The partition, if this node leads it: UNKNOWN_TOPIC_OR_PARTITION when the metadata
    /// has no such partition, NOT_LEADER_OR_FOLLOWER when another node leads it (or none
    /// does), as Kafka answers produce, fetch and list-offsets requests.
    pub fn leader_partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, i16> {
        let image = self.image();
        let Some(info) = image.partition(topic, index) else {
            return Err(errors::UNKNOWN_TOPIC_OR_PARTITION);
        };
        if info.leader != self.config.node_id {
            return Err(errors::NOT_LEADER_OR_FOLLOWER);
        }
        self.partition(topic, index)
            .filter(|p| p.leader() == self.config.node_id)
            .ok_or(errors::NOT_LEADER_OR_FOLLOWER)
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.replicas.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_round_trip() {
        let id = random_id();
        assert_eq!(parse_topic_id(&topic_id_hex(&id)), Some(id));
        assert_ne!(random_id(), random_id());
    }

    #[tokio::test]
    async fn topics_survive_a_restart_with_their_configs() {
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
            .await
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
            )
            .await,
            Err(BrokerError::TopicExists(_))
        ));
        b.add_partitions("t", 4, None, false).await.unwrap();
        b.shutdown();
        drop(b);
        let b = Broker::open(config).unwrap();
        assert_eq!(b.cluster_id, cluster);
        let t = b.topic("t").unwrap();
        assert_eq!(t.id, id);
        assert_eq!(b.partition_count("t"), Some(4));
        assert_eq!(t.config.read().unwrap().log.retention_ms, 5000);
        assert!(b.allocate_producer_id().unwrap() > pid);
        // Another node hands out ids from a range of its own.
        let other = tempfile::tempdir().unwrap();
        let node7 = Broker::open(BrokerConfig {
            node_id: 7,
            log_dir: other.path().to_path_buf(),
            ..BrokerConfig::default()
        })
        .unwrap();
        let id = node7.allocate_producer_id().unwrap();
        assert_eq!(id, 7 << 40);
        assert!(id > b.allocate_producer_id().unwrap() + 1_000_000);
        b.delete_topic("t").await.unwrap();
        assert!(b.topic("t").is_none());
        assert!(!dir.path().join("t-0").exists());
    }
}
