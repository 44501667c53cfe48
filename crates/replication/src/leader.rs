//! The leader's view of a partition's replicas (Kafka's `Partition` on the leader): how far
//! each follower has the log, the high watermark, and the ISR.
//!
//! - A follower's log end offset is the offset it fetches from: it has everything below.
//! - It is caught up at a fetch that reaches the leader's log end, or that reaches what the
//!   leader's log end was at its previous fetch (then it was caught up at that one's time).
//! - The high watermark is the smallest log end offset among the leader, the ISR, the
//!   followers whose addition to the ISR is in flight (Kafka's "maximal ISR": a record is
//!   not committed before a replica that is about to count has it), and the followers that
//!   are caught up but not in the ISR yet. It never goes back.
//! - An ISR member not caught up for `replica.lag.time.max.ms` is proposed out; a follower
//!   that reaches the high watermark and the start of the leader's epoch is proposed in.
//!   Proposals carry the partition epoch (Kafka's AlterPartition): the controller refuses
//!   one made from a stale view. One proposal is in flight at a time, and the ISR changes
//!   only once the controller's change is in the metadata.

use strom_metadata::errors;
use strom_metadata::image::{PartitionInfo, Replicas};

#[derive(Debug, Clone, Copy)]
pub struct LeaderConfig {
    /// replica.lag.time.max.ms
    pub replica_lag_time_max_ms: i64,
    /// min.insync.replicas of the topic
    pub min_insync_replicas: usize,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            replica_lag_time_max_ms: 30_000,
            min_insync_replicas: 1,
        }
    }
}

/// An ISR change for the controller: the new ISR, from the view at `partition_epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub isr: Vec<i32>,
    pub partition_epoch: i32,
}

/// What a follower's fetch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The new high watermark, when it moved.
    pub high_watermark: Option<u64>,
    /// The follower caught up: it should join the ISR.
    pub expand: Option<IsrChange>,
}

#[derive(Debug, Clone)]
struct Follower {
    /// Unknown until its first fetch since this leadership began.
    log_end: Option<u64>,
    last_caught_up_ms: i64,
    last_fetch_ms: i64,
    /// The leader's log end at that fetch.
    last_fetch_leader_end: u64,
}

#[derive(Debug, Clone)]
pub struct LeaderState {
    id: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    /// Inline: an ISR is a few ids, and every partition a broker leads keeps one.
    isr: Replicas,
    /// The ISR proposed to the controller and not yet in the metadata.
    pending: Option<Box<[i32]>>,
    /// By id. A few entries: a vector (a `BTreeMap` took a 500-byte node per partition led).
    followers: Vec<(i32, Follower)>,
    log_end: u64,
    high_watermark: u64,
    /// Where this leader's epoch starts: a follower joins the ISR only past it.
    epoch_start: u64,
    config: LeaderConfig,
}

impl LeaderState {
    /// Node `id` becomes the leader of `info` at `now`, its log ending at `log_end`, with the
    /// high watermark it had (from its checkpoint, or as a follower). The followers in the
    /// ISR are given a full lag time from now to show up.
    pub fn new(
        id: i32,
        info: &PartitionInfo,
        log_end: u64,
        high_watermark: u64,
        now: i64,
        config: LeaderConfig,
    ) -> LeaderState {
        let followers = info
            .replicas
            .iter()
            .filter(|r| **r != id)
            .map(|r| {
                let in_isr = info.isr.contains(r);
                (
                    *r,
                    Follower {
                        log_end: None,
                        last_caught_up_ms: if in_isr { now } else { i64::MIN / 2 },
                        last_fetch_ms: i64::MIN / 2,
                        last_fetch_leader_end: 0,
                    },
                )
            })
            .collect();
        let mut s = LeaderState {
            id,
            leader_epoch: info.leader_epoch,
            partition_epoch: info.partition_epoch,
            isr: info.isr.clone(),
            pending: None,
            followers,
            log_end,
            high_watermark: high_watermark.min(log_end),
            epoch_start: log_end,
            config,
        };
        s.advance(now);
        s
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    pub fn isr(&self) -> &[i32] {
        &self.isr
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// A follower's log end offset, once it fetched under this leadership.
    pub fn follower_log_end(&self, id: i32) -> Option<u64> {
        self.follower(id).and_then(|f| f.log_end)
    }

    fn follower(&self, id: i32) -> Option<&Follower> {
        self.followers
            .iter()
            .find(|(r, _)| *r == id)
            .map(|(_, f)| f)
    }

    /// The ISR and the additions in flight.
    fn maximal_isr(&self) -> Vec<i32> {
        let mut m = self.isr.to_vec();
        for r in self.pending.iter().flatten() {
            if !m.contains(r) {
                m.push(*r);
            }
        }
        m
    }

    fn caught_up(&self, f: &Follower, now: i64) -> bool {
        f.log_end == Some(self.log_end)
            || now - f.last_caught_up_ms <= self.config.replica_lag_time_max_ms
    }

    /// Moves the high watermark up to what every replica it waits for has; the new one if
    /// it moved.
    fn advance(&mut self, now: i64) -> Option<u64> {
        let maximal = self.maximal_isr();
        let mut hw = self.log_end;
        for (id, f) in &self.followers {
            if maximal.contains(id) || self.caught_up(f, now) {
                hw = hw.min(f.log_end.unwrap_or(0));
            }
        }
        (hw > self.high_watermark).then(|| {
            self.high_watermark = hw;
            hw
        })
    }

    /// Records were appended: the log ends at `log_end`. The new high watermark if it
    /// moved (alone in the ISR, at once).
    pub fn on_append(&mut self, log_end: u64, now: i64) -> Option<u64> {
        self.log_end = self.log_end.max(log_end);
        self.advance(now)
    }

    /// Follower `id` fetches from `fetch_offset` at `now`. Refused (OFFSET_OUT_OF_RANGE) past
    /// the leader's log end: a follower must truncate to the leader's log first; and
    /// (NOT_LEADER_OR_FOLLOWER) from a node that is not a replica.
    pub fn on_fetch(&mut self, id: i32, fetch_offset: u64, now: i64) -> Result<FetchOutcome, i16> {
        let log_end = self.log_end;
        let f = self
            .followers
            .iter_mut()
            .find(|(r, _)| *r == id)
            .map(|(_, f)| f)
            .ok_or(errors::NOT_LEADER_OR_FOLLOWER)?;
        if fetch_offset > log_end {
            return Err(errors::OFFSET_OUT_OF_RANGE);
        }
        if fetch_offset >= log_end {
            f.last_caught_up_ms = now;
        } else if fetch_offset >= f.last_fetch_leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.last_fetch_ms = now;
        f.last_fetch_leader_end = log_end;
        f.log_end = Some(fetch_offset);
        let mut out = FetchOutcome::default();
        if self.pending.is_none()
            && !self.isr.contains(&id)
            && fetch_offset >= self.high_watermark
            && fetch_offset >= self.epoch_start
        {
            let mut isr = self.isr.to_vec();
            isr.push(id);
            self.pending = Some(isr.as_slice().into());
            out.expand = Some(IsrChange {
                isr,
                partition_epoch: self.partition_epoch,
            });
        }
        out.high_watermark = self.advance(now);
        Ok(out)
    }

    /// The passing of time: ISR members that have not caught up for the lag time are
    /// proposed out (the leader never is).
    pub fn tick(&mut self, now: i64) -> Option<IsrChange> {
        if self.pending.is_some() {
            return None;
        }
        let lagging: Vec<i32> = self
            .isr
            .iter()
            .filter(|r| **r != self.id)
            .filter(|r| self.follower(**r).is_none_or(|f| !self.caught_up(f, now)))
            .copied()
            .collect();
        if lagging.is_empty() {
            return None;
        }
        let isr: Vec<i32> = self
            .isr
            .iter()
            .filter(|r| !lagging.contains(r))
            .copied()
            .collect();
        self.pending = Some(isr.as_slice().into());
        Some(IsrChange {
            isr,
            partition_epoch: self.partition_epoch,
        })
    }

    /// The metadata shows the partition at a new partition epoch (the controller took a
    /// proposal, or changed the partition itself): the ISR is what it says. The new high
    /// watermark if it moved.
    pub fn on_partition_change(&mut self, info: &PartitionInfo, now: i64) -> Option<u64> {
        if info.partition_epoch < self.partition_epoch {
            return None;
        }
        self.partition_epoch = info.partition_epoch;
        self.isr = info.isr.clone();
        self.pending = None;
        self.followers.retain(|(r, _)| info.replicas.contains(r));
        for r in &info.replicas {
            if *r != self.id && self.follower(*r).is_none() {
                self.followers.push((
                    *r,
                    Follower {
                        log_end: None,
                        last_caught_up_ms: i64::MIN / 2,
                        last_fetch_ms: i64::MIN / 2,
                        last_fetch_leader_end: 0,
                    },
                ));
            }
        }
        self.advance(now)
    }

    /// The controller refused the proposal (made from a stale view): wait for the metadata,
    /// then propose again if still needed.
    pub fn on_proposal_refused(&mut self) {
        self.pending = None;
    }

    /// Before an acks=all append: Kafka refuses it (NOT_ENOUGH_REPLICAS) when the ISR is
    /// smaller than `min.insync.replicas`. Other acks are not checked.
    pub fn check_append(&self, acks: i16) -> Result<(), i16> {
        if acks == -1 && self.isr.len() < self.config.min_insync_replicas {
            return Err(errors::NOT_ENOUGH_REPLICAS);
        }
        Ok(())
    }

    /// An acks=all request whose records end at `required_end` (the offset after its last
    /// record): `None` while the high watermark is below it; then its answer, with
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank below `min.insync.replicas`
    /// meanwhile (the records are written but fewer replicas than asked have them).
    pub fn acks_all_outcome(&self, required_end: u64) -> Option<i16> {
        if self.high_watermark < required_end {
            return None;
        }
        Some(if self.isr.len() < self.config.min_insync_replicas {
            errors::NOT_ENOUGH_REPLICAS_AFTER_APPEND
        } else {
            errors::NONE
        })
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
