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

    /// Every replica on this node, in no particular order: for periodic passes over all
    /// of them (sorting tens of thousands every second was most of an idle broker's work).
    pub fn all_unordered(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().unwrap().values().cloned().collect()
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
        let mut to_open = Vec::new();
        for (tp, info, leader) in changes
            .leaders
            .iter()
            .map(|(tp, i)| (tp, i, true))
            .chain(changes.followers.iter().map(|(tp, i)| (tp, i, false)))
        {
            let Some(c) = config(&tp.topic) else {
                continue;
            };
            to_open.push((tp, c, info, leader));
        }
        let started = std::time::Instant::now();
        let count = to_open.len();
        // Several threads when there are many: a start opens tens of thousands of logs,
        // each a few small files to read, and a new leader epoch to write.
        let opened: Vec<_> = in_parallel(to_open, |(tp, c, info, leader)| {
            Ok::<_, BrokerError>((self.open(tp, &c)?, info, leader))
        })
        .into_iter()
        .collect::<Result<_, _>>()?;
        let opened_in = started.elapsed();
        // Opening after a clean shutdown removed each log's marker without fsync: one sync
        // for all of them before their roles write to them (at a start with tens of
        // thousands of partitions, one each took minutes).
        strom_storage::settle()?;
        let synced_in = started.elapsed();
        in_parallel(opened, |(p, info, leader)| become_role(&p, info, leader));
        if count >= 1000 {
            // Kafka's "Loaded N logs": where a slow start spends its time.
            tracing::info!(
                replicas = count,
                open_ms = opened_in.as_millis() as u64,
                sync_ms = (synced_in - opened_in).as_millis() as u64,
                roles_ms = (started.elapsed() - synced_in).as_millis() as u64,
                "replicas opened"
            );
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

/// `f` of every item, results in order: on up to 8 threads (as many as the machine has)
/// when there are more than a few hundred items, else on this one.
fn in_parallel<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> R + Sync) -> Vec<R> {
    const PER_THREAD: usize = 256;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(items.len().div_ceil(PER_THREAD));
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let size = items.len().div_ceil(threads);
    let mut chunks = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let tail = rest.split_off(size.min(rest.len()));
        chunks.push(rest);
        rest = tail;
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a thread opening logs panicked"))
            .collect()
    })
}

fn become_role(p: &Partition, info: &PartitionInfo, leader: bool) {
    if leader {
        p.make_leader(info);
    } else {
        p.make_follower(info);
    }
}
