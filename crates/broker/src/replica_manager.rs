//! This node's replicas: the partitions it holds, by topic-partition. Leadership is data: a
//! metadata change makes a replica leader or follower (with the image's leader epoch,
//! replicas and ISR), creates it, or stops and deletes it; every request that touches a
//! partition asks here, and a replica this node does not lead answers
//! NOT_LEADER_OR_FOLLOWER.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use strom_metadata::TopicPartition;
use strom_metadata::image::{LocalChanges, PartitionInfo};

use crate::errors::BrokerError;
use crate::partition::Partition;
use crate::topic_config::TopicConfig;

pub struct ReplicaManager {
    node_id: i32,
    log_dir: PathBuf,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
}

impl ReplicaManager {
    pub fn new(node_id: i32, log_dir: PathBuf) -> Self {
        ReplicaManager {
            node_id,
            log_dir,
            partitions: RwLock::new(HashMap::new()),
        }
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    fn dir(&self, tp: &TopicPartition) -> PathBuf {
        self.log_dir.join(format!("{}-{}", tp.topic, tp.partition))
    }

    /// This node's replica of `tp`, led here or not.
    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().unwrap().get(tp).cloned()
    }

    /// Every replica on this node.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        let mut all: Vec<_> = self.partitions.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| (&a.topic, a.index).cmp(&(&b.topic, b.index)));
        all
    }

    /// Opens (recovering) the replica of `tp` in its directory, without a role yet: what a
    /// start does before the first metadata is published.
    pub fn open(
        &self,
        tp: &TopicPartition,
        config: &TopicConfig,
    ) -> Result<Arc<Partition>, BrokerError> {
        if let Some(p) = self.get(tp) {
            return Ok(p);
        }
        let p = Arc::new(Partition::open(
            &self.dir(tp),
            &tp.topic,
            tp.partition,
            self.node_id,
            config,
        )?);
        self.partitions
            .write()
            .unwrap()
            .insert(tp.clone(), p.clone());
        Ok(p)
    }

    /// Applies what a metadata change means here: replicas to lead or follow (opened when
    /// new) take the image's role and epochs; replicas dropped are closed and their
    /// directories deleted. `config` gives a new replica's topic config.
    pub fn apply(
        &self,
        changes: &LocalChanges,
        config: impl Fn(&str) -> Option<TopicConfig>,
    ) -> Result<(), BrokerError> {
        let mut opened = Vec::new();
        for (tp, info, leader) in changes
            .leaders
            .iter()
            .map(|(tp, i)| (tp, i, true))
            .chain(changes.followers.iter().map(|(tp, i)| (tp, i, false)))
        {
            let Some(c) = config(&tp.topic) else {
                continue;
            };
            opened.push((self.open(tp, &c)?, info, leader));
        }
        // Opening after a clean shutdown removed each log's marker without fsync: one sync
        // for all of them before their roles write to them (at a start with tens of
        // thousands of partitions, one each took minutes).
        strom_storage::settle()?;
        for (p, info, leader) in opened {
            become_role(&p, info, leader);
        }
        for tp in &changes.deleted {
            let Some(p) = self.partitions.write().unwrap().remove(tp) else {
                continue;
            };
            p.drop_replica();
            // Rename first so that a crash leaves a "-delete" directory that the next start
            // removes, never a live-looking partition of a deleted topic.
            let dir = p.log().dir().to_path_buf();
            let doomed = dir.with_file_name(format!(
                "{}.{}-delete",
                dir.file_name().unwrap().to_string_lossy(),
                strom_storage::clock::now_ms()
            ));
            p.close()?;
            std::fs::rename(&dir, &doomed).map_err(|source| BrokerError::Io {
                context: format!("renaming {}", dir.display()),
                source,
            })?;
            std::fs::remove_dir_all(&doomed).map_err(|source| BrokerError::Io {
                context: format!("removing {}", doomed.display()),
                source,
            })?;
        }
        Ok(())
    }
}

fn become_role(p: &Partition, info: &PartitionInfo, leader: bool) {
    if leader {
        p.make_leader(info);
    } else {
        p.make_follower(info);
    }
}
