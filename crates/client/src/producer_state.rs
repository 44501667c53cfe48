//! What a producer holds between `send` and the sender: per topic, the partition leaders, the
//! sticky partition and the open batch of each partition, found with one lookup per record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::producer_batch::Pending;

/// A batch ready to go, by topic partition.
pub(crate) type Ready = ((String, i32), Pending);

/// One topic's share of the producer's state.
#[derive(Default)]
pub(crate) struct TopicState {
    /// The leader of each partition; `None` until known, and again once found stale (a
    /// failed batch), so that the next record looks them up.
    pub(crate) leaders: Option<Vec<i32>>,
    /// Where records without a key go until their batch closes (KIP-480).
    pub(crate) sticky: Option<i32>,
    /// The open batch of each partition, by partition.
    pub(crate) open: Vec<Option<Pending>>,
}

impl TopicState {
    fn partitions(&self) -> i32 {
        let n = self.leaders.as_ref().map_or(self.open.len(), Vec::len);
        n.max(1) as i32
    }

    /// The partition for a record without a key or partition: the sticky one, the first
    /// time chosen at random (as Kafka's partitioner does: producers started one after the
    /// other do not all begin on partition 0).
    pub(crate) fn sticky(&mut self, stickies: &mut usize) -> i32 {
        let n = self.partitions();
        match self.sticky {
            Some(p) if p < n => p,
            _ => {
                let from = (random_start() as usize).wrapping_add(*stickies) % n as usize;
                *stickies += 1;
                let p = self.next_available(from as i32);
                self.sticky = Some(p);
                p
            }
        }
    }

    /// The first partition from `from` on (wrapping) that has a leader, as Kafka's
    /// partitioner skips the unavailable ones; `from` when none has.
    fn next_available(&self, from: i32) -> i32 {
        let n = self.partitions();
        let has_leader = |p: i32| {
            self.leaders
                .as_ref()
                .is_none_or(|l| l.get(p as usize).is_some_and(|&leader| leader >= 0))
        };
        (0..n)
            .map(|i| (from + i) % n)
            .find(|&p| has_leader(p))
            .unwrap_or(from % n)
    }

    /// Takes the open batch of a partition; records without a key then stick to the next
    /// partition (KIP-480).
    pub(crate) fn close(&mut self, partition: i32) -> Option<Pending> {
        let b = self.open.get_mut(partition as usize)?.take()?;
        if self.sticky == Some(partition) {
            self.sticky = Some(self.next_available(partition + 1));
        }
        Some(b)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) topics: HashMap<String, TopicState>,
    /// Batches that reached `batch_size`, waiting for the sender.
    pub(crate) full: Vec<Ready>,
    /// Bytes of records not yet answered, for back-pressure.
    pub(crate) buffered: usize,
    pub(crate) in_flight: usize,
    /// `send` found the buffer full: the sender sends every open batch.
    pub(crate) exhausted: bool,
    /// Topics given a first sticky partition so far: their first choices are spread.
    pub(crate) stickies: usize,
}

impl State {
    /// The topic's leaders, once known.
    pub(crate) fn leaders(&self, topic: &str) -> Option<&Vec<i32>> {
        self.topics.get(topic).and_then(|t| t.leaders.as_ref())
    }

    pub(crate) fn leader(&self, topic: &str, partition: i32) -> i32 {
        self.leaders(topic)
            .and_then(|l| l.get(partition as usize).copied())
            .unwrap_or(-1)
    }

    pub(crate) fn set_leaders(&mut self, topic: &str, leaders: Vec<i32>) {
        let t = match self.topics.get_mut(topic) {
            Some(t) => t,
            None => self.topics.entry(topic.to_string()).or_default(),
        };
        // Partitions are only ever added.
        if t.open.len() < leaders.len() {
            t.open.resize_with(leaders.len(), || None);
        }
        t.leaders = Some(leaders);
    }

    /// Leaders may have moved: the next record of `topic` looks them up again.
    pub(crate) fn forget_leaders(&mut self, topic: &str) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.leaders = None;
        }
    }

    #[cfg(test)]
    fn sticky(&mut self, topic: &str) -> i32 {
        let t = self.topics.get_mut(topic).expect("a known topic");
        t.sticky(&mut self.stickies)
    }

    pub(crate) fn close_batch(&mut self, topic: &str, partition: i32) -> Option<Pending> {
        self.topics.get_mut(topic)?.close(partition)
    }

    /// Takes the full batches and the open ones that are due: all of them, or those at
    /// `batch_size` or open for `linger`.
    pub(crate) fn take_due(
        &mut self,
        all: bool,
        batch_size: usize,
        linger: Duration,
    ) -> Vec<Ready> {
        let due: Vec<(String, i32)> = self
            .topics
            .iter()
            .flat_map(|(name, t)| {
                t.open.iter().enumerate().filter_map(move |(p, b)| {
                    let b = b.as_ref()?;
                    (all || b.bytes >= batch_size || b.created.elapsed() >= linger)
                        .then(|| (name.clone(), p as i32))
                })
            })
            .collect();
        let mut out = std::mem::take(&mut self.full);
        for (topic, p) in due {
            if let Some(b) = self.close_batch(&topic, p) {
                out.push(((topic, p), b));
            }
        }
        out
    }

    /// When the oldest open batch will have lingered `linger`.
    pub(crate) fn next_due(&self, linger: Duration) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|t| t.open.iter().flatten())
            .map(|b| b.created + linger)
            .min()
    }

    /// Nothing open, nothing waiting, nothing in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.full.is_empty()
            && self.in_flight == 0
            && self
                .topics
                .values()
                .all(|t| t.open.iter().all(Option::is_none))
    }
}

/// A random number from the standard library's per-process hash keys (no dependency for
/// one number per topic).
fn random_start() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records without a key stick to one partition until its batch closes, then move to the
    /// next one, wrapping around; topics start on different partitions.
    #[test]
    fn the_sticky_partition_moves_on_when_its_batch_closes() {
        let mut s = State::default();
        s.set_leaders("a", vec![1, 1, 1]);
        s.set_leaders("b", vec![1, 1, 1]);
        let first = s.sticky("a");
        let b = s.sticky("b");
        assert!((0..3).contains(&first) && (0..3).contains(&b));
        for i in 0..4 {
            let p = s.sticky("a");
            assert_eq!(p, (first + i) % 3);
            s.topics.get_mut("a").unwrap().open[p as usize] = Some(Pending::new(0, 16));
            assert!(!s.is_idle());
            assert!(s.close_batch("a", p).is_some());
            assert!(s.close_batch("a", p).is_none());
        }
        assert_eq!(s.sticky("b"), b);
        assert!(s.is_idle());
    }

    /// Keyless records skip partitions without a leader, unless none has one.
    #[test]
    fn the_sticky_partition_skips_partitions_without_a_leader() {
        let mut s = State::default();
        s.set_leaders("t", vec![-1, 1, -1]);
        for _ in 0..3 {
            let p = s.sticky("t");
            assert_eq!(p, 1);
            s.topics.get_mut("t").unwrap().open[1] = Some(Pending::new(0, 16));
            s.close_batch("t", 1);
        }
        s.set_leaders("u", vec![-1, -1]);
        assert!((0..2).contains(&s.sticky("u")));
    }

    /// Forgetting a topic's leaders keeps its open batches; learning them again, with more
    /// partitions, keeps them too.
    #[test]
    fn stale_leaders_keep_the_open_batches() {
        let mut s = State::default();
        s.set_leaders("t", vec![1, 2]);
        s.topics.get_mut("t").unwrap().open[1] = Some(Pending::new(0, 16));
        s.forget_leaders("t");
        assert!(s.leaders("t").is_none());
        assert_eq!(s.leader("t", 1), -1);
        s.set_leaders("t", vec![1, 3, 2]);
        assert_eq!(s.leader("t", 1), 3);
        let opened = s.topics["t"].open[1].as_ref().unwrap().created;
        let linger = Duration::from_secs(60);
        assert_eq!(s.next_due(linger), Some(opened + linger));
        assert!(s.take_due(false, 16_384, linger).is_empty());
        let due = s.take_due(true, 16_384, linger);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, ("t".to_string(), 1));
        assert!(s.is_idle());
        assert_eq!(s.next_due(linger), None);
    }
}
