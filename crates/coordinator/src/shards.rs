//! Coordinator shards: a coordinator serves the state of each internal partition it leads as
//! one unit (Kafka's coordinator shards). A shard is loaded when this node is elected leader
//! of the partition and dropped when it resigns; requests for a partition not led here get
//! NOT_COORDINATOR, and COORDINATOR_LOAD_IN_PROGRESS while its shard loads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use strom_metadata::errors;

enum Slot<S> {
    Loading,
    Active(Arc<S>),
}

struct Entry<S> {
    epoch: i32,
    slot: Slot<S>,
}

pub struct Shards<S> {
    map: RwLock<HashMap<i32, Entry<S>>>,
    /// Woken whenever a load ends (finished, superseded or resigned).
    settled: tokio::sync::Notify,
}

impl<S> Default for Shards<S> {
    fn default() -> Self {
        Shards {
            map: RwLock::new(HashMap::new()),
            settled: tokio::sync::Notify::new(),
        }
    }
}

impl<S> Shards<S> {
    /// The shard of `partition`, or the error a request for it gets.
    pub fn get(&self, partition: i32) -> Result<Arc<S>, i16> {
        match self.map.read().unwrap().get(&partition) {
            None => Err(errors::NOT_COORDINATOR),
            Some(Entry {
                slot: Slot::Loading,
                ..
            }) => Err(errors::COORDINATOR_LOAD_IN_PROGRESS),
            Some(Entry {
                slot: Slot::Active(s),
                ..
            }) => Ok(s.clone()),
        }
    }

    /// The shard of `partition` once any load in progress has ended, or the error a
    /// request for it gets then (for work that must not be refused while a shard loads).
    pub async fn get_settled(&self, partition: i32) -> Result<Arc<S>, i16> {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a load ending in between is not missed.
            settled.as_mut().enable();
            match self.get(partition) {
                Err(errors::COORDINATOR_LOAD_IN_PROGRESS) => settled.await,
                other => return other,
            }
        }
    }

    /// Marks `partition` as loading at `epoch`; false if a newer (or the same) election
    /// already holds it, in which case nothing is to be loaded.
    pub fn begin_load(&self, partition: i32, epoch: i32) -> bool {
        let mut map = self.map.write().unwrap();
        if map.get(&partition).is_some_and(|e| e.epoch >= epoch) {
            return false;
        }
        map.insert(
            partition,
            Entry {
                epoch,
                slot: Slot::Loading,
            },
        );
        true
    }

    /// Makes a loaded shard active, unless a resignation or a newer election came first.
    pub fn finish_load(&self, partition: i32, epoch: i32, shard: S) -> bool {
        let mut map = self.map.write().unwrap();
        match map.get_mut(&partition) {
            Some(e) if e.epoch == epoch && matches!(e.slot, Slot::Loading) => {
                e.slot = Slot::Active(Arc::new(shard));
                self.settled.notify_waiters();
                true
            }
            _ => false,
        }
    }

    /// Drops `partition`'s shard, if it was elected at `epoch` or earlier (any epoch when
    /// `None`); returns it if it was active.
    pub fn resign(&self, partition: i32, epoch: Option<i32>) -> Option<Arc<S>> {
        let mut map = self.map.write().unwrap();
        if epoch.is_some_and(|epoch| map.get(&partition).is_some_and(|e| e.epoch > epoch)) {
            return None;
        }
        let removed = map.remove(&partition);
        self.settled.notify_waiters();
        match removed?.slot {
            Slot::Active(s) => Some(s),
            Slot::Loading => None,
        }
    }

    /// Every active shard, by partition.
    pub fn active(&self) -> Vec<(i32, Arc<S>)> {
        let map = self.map.read().unwrap();
        let mut out: Vec<(i32, Arc<S>)> = map
            .iter()
            .filter_map(|(p, e)| match &e.slot {
                Slot::Active(s) => Some((*p, s.clone())),
                Slot::Loading => None,
            })
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_served_only_between_its_load_and_its_resignation() {
        let s: Shards<&str> = Shards::default();
        assert_eq!(s.get(3).unwrap_err(), errors::NOT_COORDINATOR);
        assert!(s.begin_load(3, 5));
        assert_eq!(s.get(3).unwrap_err(), errors::COORDINATOR_LOAD_IN_PROGRESS);
        assert!(!s.begin_load(3, 5), "the same election loads once");
        assert!(s.finish_load(3, 5, "state"));
        assert_eq!(*s.get(3).unwrap(), "state");
        // A resignation from an older epoch does not drop a newer election's shard.
        assert!(s.resign(3, Some(4)).is_none());
        assert!(s.get(3).is_ok());
        assert_eq!(s.resign(3, Some(5)).as_deref(), Some(&"state"));
        assert_eq!(s.get(3).unwrap_err(), errors::NOT_COORDINATOR);
        // A load that a resignation overtook is not installed.
        assert!(s.begin_load(3, 6));
        assert!(s.resign(3, None).is_none());
        assert!(!s.finish_load(3, 6, "late"));
        assert_eq!(s.get(3).unwrap_err(), errors::NOT_COORDINATOR);
    }

    #[tokio::test]
    async fn a_settled_lookup_waits_for_the_load_to_end() {
        let s = Arc::new(Shards::<u8>::default());
        assert!(s.begin_load(1, 0));
        assert!(s.begin_load(2, 0));
        let loaded = tokio::spawn({
            let s = s.clone();
            async move { s.get_settled(1).await }
        });
        let failed = tokio::spawn({
            let s = s.clone();
            async move { s.get_settled(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!loaded.is_finished() && !failed.is_finished());
        assert!(s.finish_load(1, 0, 7));
        s.resign(2, Some(0));
        assert_eq!(*loaded.await.unwrap().unwrap(), 7);
        assert_eq!(failed.await.unwrap().unwrap_err(), errors::NOT_COORDINATOR);
    }
}
