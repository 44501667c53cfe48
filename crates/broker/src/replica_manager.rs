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
    /// By topic, then by partition index: one name shared by a topic's replicas, and a
    /// pointer per replica (a map entry with its own copy of the name per partition was a
    /// tenth of an idle partition's memory).
    partitions: RwLock<HashMap<Arc<str>, Slots>>,
}

/// A topic's replicas here, by partition index.
type Slots = Vec<Option<Arc<Partition>>>;

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
        let index = usize::try_from(tp.partition).ok()?;
        let map = self.partitions.read().unwrap();
        map.get(tp.topic.as_str())?.get(index)?.clone()
    }

    /// Every replica on this node, in no particular order: for periodic passes over all
    /// of them (sorting tens of thousands every second was most of an idle broker's work).
    pub fn all_unordered(&self) -> Vec<Arc<Partition>> {
        let map = self.partitions.read().unwrap();
        map.values().flatten().flatten().cloned().collect()
    }

    /// Calls `f` on every replica here, in no particular order, holding the map's read lock
    /// (so `f` must neither block nor add or remove replicas): a periodic pass that picks the
    /// few replicas with something to do, without copying out tens of thousands of pointers
    /// every second.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Partition>)) {
        let map = self.partitions.read().unwrap();
        for p in map.values().flatten().flatten() {
            f(p);
        }
    }

    /// The replicas of `topic` here.
    pub fn of_topic(&self, topic: &str) -> Vec<Arc<Partition>> {
        let map = self.partitions.read().unwrap();
        map.get(topic)
            .map(|slots| slots.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Every replica on this node.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        let mut all = self.all_unordered();
        all.sort_by(|a, b| (&a.topic, a.index).cmp(&(&b.topic, b.index)));
        all
    }

    /// The topic's name as its replicas share it.
    fn topic_name(&self, topic: &str) -> Arc<str> {
        if let Some((name, _)) = self.partitions.read().unwrap().get_key_value(topic) {
            return name.clone();
        }
        let mut map = self.partitions.write().unwrap();
        // Another open may have added it since the read.
        if let Some((name, _)) = map.get_key_value(topic) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        map.insert(name.clone(), Vec::new());
        name
    }

    fn remove(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        let index = usize::try_from(tp.partition).ok()?;
        let mut map = self.partitions.write().unwrap();
        let slots = map.get_mut(tp.topic.as_str())?;
        let p = slots.get_mut(index)?.take();
        while slots.last().is_some_and(Option::is_none) {
            slots.pop();
        }
        if slots.is_empty() {
            map.remove(tp.topic.as_str());
        }
        p
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
        let index = usize::try_from(tp.partition).map_err(|_| BrokerError::Io {
            context: format!("opening {tp}"),
            source: std::io::Error::other("a negative partition index"),
        })?;
        let p = Arc::new(Partition::open(
            &self.dir(tp),
            self.topic_name(&tp.topic),
            tp.partition,
            self.node_id,
            config,
        )?);
        let mut map = self.partitions.write().unwrap();
        let slots = map.entry(p.topic.clone()).or_default();
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        Ok(slots[index].get_or_insert(p).clone())
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
        let new = to_open
            .iter()
            .filter(|(tp, ..)| self.get(tp).is_none())
            .count();
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
            // Opening left the freed buffers of tens of thousands of reads in the threads'
            // malloc arenas (a third more resident memory after a start than after
            // creating the same partitions): give them back.
            if new >= 1000 {
                crate::heap::trim();
            }
        }
        for tp in &changes.deleted {
            let Some(p) = self.remove(tp) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    #[test]
    fn replicas_are_found_by_topic_and_index_and_share_the_topic_name() {
        let dir = tempfile::tempdir().unwrap();
        let rm = ReplicaManager::new(1, dir.path().to_path_buf());
        let config = TopicConfig::new(&BrokerConfig::default(), Default::default()).unwrap();
        let tp = |t: &str, i| TopicPartition::new(t, i);
        let a2 = rm.open(&tp("a", 2), &config).unwrap();
        let a0 = rm.open(&tp("a", 0), &config).unwrap();
        let b0 = rm.open(&tp("b", 0), &config).unwrap();
        assert!(Arc::ptr_eq(&a0.topic, &a2.topic), "one name per topic");
        assert!(Arc::ptr_eq(&rm.open(&tp("a", 2), &config).unwrap(), &a2));
        assert!(Arc::ptr_eq(&rm.get(&tp("a", 0)).unwrap(), &a0));
        assert!(rm.get(&tp("a", 1)).is_none() && rm.get(&tp("a", 3)).is_none());
        assert!(rm.get(&tp("a", -1)).is_none() && rm.get(&tp("c", 0)).is_none());
        let names: Vec<_> = rm
            .all()
            .iter()
            .map(|p| (p.topic.to_string(), p.index))
            .collect();
        assert_eq!(names, [("a".into(), 0), ("a".into(), 2), ("b".into(), 0)]);
        assert!(Arc::ptr_eq(&rm.remove(&tp("a", 2)).unwrap(), &a2));
        assert!(rm.remove(&tp("a", 2)).is_none());
        assert!(Arc::ptr_eq(&rm.remove(&tp("b", 0)).unwrap(), &b0));
        assert_eq!(rm.all_unordered().len(), 1);
        assert!(
            !rm.partitions.read().unwrap().contains_key("b"),
            "an empty topic goes"
        );
        for p in [a0, a2, b0] {
            p.close().unwrap();
        }
    }
}
