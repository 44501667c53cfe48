//! Delayed operations (long-polling fetches, acks=all produces) wait on the partitions they
//! asked about, and only those: a partition whose high watermark moves wakes the operations
//! watching it, never the rest of the broker. Kafka's purgatory keys its watchers by
//! partition for the same reason: with many partitions, replica fetchers and consumers, one
//! broker-wide signal would wake everybody on every append.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

/// One waiting operation. It watches any number of partitions; a notification from any of
/// them wakes it. A notification that arrives before it waits is kept (a permit), so
/// watching first and checking second loses nothing.
#[derive(Default)]
pub struct Waiter {
    notify: Notify,
}

impl Waiter {
    pub fn new() -> Arc<Waiter> {
        Arc::new(Waiter::default())
    }

    /// Waits for a notification until `deadline`; false once the deadline passed.
    pub async fn wait(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.notify.notified())
            .await
            .is_ok()
    }
}

/// A partition's watchers: the operations waiting for its high watermark to move. Held
/// weakly: an operation that finished (or whose client went away) is dropped, and its
/// entry with it, on the next notification or when the list grows.
#[derive(Default)]
pub struct Watchers {
    /// Boxed, and absent until the first watcher: most partitions of a large broker are
    /// never waited on (16 bytes in every partition instead of 40).
    list: Mutex<Option<Box<WatchList>>>,
}

#[derive(Default)]
struct WatchList {
    /// Dead entries are pruned when the vector is full, before it would grow (no count of
    /// its own to prune at).
    entries: Vec<Weak<Waiter>>,
    /// Notifications delivered, for tests and metrics: how many wake-ups this partition
    /// caused (none before it had a watcher).
    woken: u64,
}

impl Watchers {
    /// `waiter` is woken by every later [`Watchers::notify`] for as long as it lives.
    pub fn watch(&self, waiter: &Arc<Waiter>) {
        let mut l = self.list.lock().unwrap();
        let l = &mut l.get_or_insert_default().entries;
        if l.len() == l.capacity() && l.len() >= 16 {
            l.retain(|w| w.strong_count() > 0);
            // Mostly live: make room for as many again, so that the next pruning is as
            // many pushes away and each push costs O(1) on average.
            if l.len() > l.capacity() / 2 {
                let more = l.len();
                l.reserve(more);
            }
        }
        l.push(Arc::downgrade(waiter));
    }

    /// Wakes every live watcher; returns how many.
    pub fn notify(&self) -> usize {
        let live: Vec<Arc<Waiter>> = {
            let mut l = self.list.lock().unwrap();
            let Some(l) = l.as_mut() else {
                return 0;
            };
            let mut live = Vec::with_capacity(l.entries.len());
            l.entries.retain(|w| match w.upgrade() {
                Some(w) => {
                    live.push(w);
                    true
                }
                None => false,
            });
            l.woken += live.len() as u64;
            live
        };
        for w in &live {
            w.notify.notify_one();
        }
        live.len()
    }

    /// Live watchers now.
    pub fn watching(&self) -> usize {
        let l = self.list.lock().unwrap();
        l.iter()
            .flat_map(|l| l.entries.iter())
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Wake-ups delivered so far.
    pub fn woken(&self) -> u64 {
        self.list.lock().unwrap().as_ref().map_or(0, |l| l.woken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notification_wakes_only_its_partitions_watchers() {
        let (a, b) = (Watchers::default(), Watchers::default());
        let (on_a, on_b, on_both) = (Waiter::new(), Waiter::new(), Waiter::new());
        a.watch(&on_a);
        b.watch(&on_b);
        a.watch(&on_both);
        b.watch(&on_both);
        assert_eq!(a.notify(), 2);
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        // The permit was kept: waiting after the notification returns at once.
        assert!(on_a.wait(soon).await);
        assert!(on_both.wait(soon).await);
        assert!(!on_b.wait(soon).await, "b was not notified");
        assert_eq!((a.woken(), b.woken()), (2, 0));
    }

    #[test]
    fn a_partition_never_waited_on_holds_no_list() {
        let w = Watchers::default();
        assert_eq!(w.notify(), 0);
        assert_eq!(w.watching(), 0);
        assert!(w.list.lock().unwrap().is_none());
        assert!(std::mem::size_of::<Watchers>() <= 16);
    }

    #[test]
    fn finished_waiters_leave_the_list() {
        let w = Watchers::default();
        let kept = Waiter::new();
        w.watch(&kept);
        for _ in 0..1000 {
            w.watch(&Waiter::new());
        }
        assert!(
            w.list.lock().unwrap().as_ref().unwrap().entries.len() <= 16,
            "pruned as it grew"
        );
        assert_eq!(w.watching(), 1);
        assert_eq!(w.notify(), 1);
        assert_eq!(w.list.lock().unwrap().as_ref().unwrap().entries.len(), 1);
    }

    #[test]
    fn live_waiters_are_all_kept_and_the_list_grows_past_them() {
        let w = Watchers::default();
        let live: Vec<_> = (0..1000).map(|_| Waiter::new()).collect();
        for (i, waiter) in live.iter().enumerate() {
            w.watch(waiter);
            if i % 2 == 0 {
                w.watch(&Waiter::new());
            }
        }
        assert_eq!(w.watching(), 1000);
        let l = w.list.lock().unwrap();
        let l = &l.as_ref().unwrap().entries;
        assert!(l.len() < 1500, "dead ones pruned: {}", l.len());
        assert!(l.capacity() < 4096, "grew by doubling: {}", l.capacity());
    }
}
