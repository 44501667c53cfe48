//! A follower of a new leader (Kafka's `AbstractFetcherThread` with leader epochs, KIP-101
//! and KIP-279): before it fetches, it finds where its log diverges from the leader's and
//! truncates there, so that the replicas never disagree below the high watermark.
//!
//! It asks the leader (OffsetForLeaderEpoch) where the follower's latest epoch ends in the
//! leader's log. The leader answers with the largest epoch it has at or below it, and where
//! that one ends. If the follower has that same epoch, the logs agree up to the smaller of
//! the two ends: truncate there, then fetch. If it does not (it never had that epoch: the
//! double failover of KIP-279), it truncates to where its own largest epoch below that one
//! ends and asks again about that epoch; epochs only go down, so this ends. A follower that
//! has no epoch at or below the leader's keeps nothing past the leader's end. A follower
//! whose log has no epochs (empty) fetches from its end; an undefined answer truncates to
//! the high watermark, the only offset known to be committed.

use strom_storage::EpochCache;

/// What the follower does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Truncate the log to `truncate_to` when given, then ask the leader where `epoch` ends
    /// in its log (OffsetForLeaderEpoch).
    AskEpochEnd {
        truncate_to: Option<u64>,
        epoch: i32,
    },
    /// Truncate the log to `truncate_to` when it is below the log end, then fetch from
    /// `offset`.
    Fetch {
        truncate_to: Option<u64>,
        offset: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Truncating { asked: i32 },
    Fetching,
}

#[derive(Debug, Clone)]
pub struct FollowerState {
    leader: i32,
    leader_epoch: i32,
    phase: Phase,
    log_end: u64,
    high_watermark: u64,
}

impl FollowerState {
    /// Follows `leader` at `leader_epoch`, with a log ending at `log_end` whose epochs are
    /// `epochs`, and the high watermark this replica knew.
    pub fn new(
        leader: i32,
        leader_epoch: i32,
        epochs: &EpochCache,
        log_end: u64,
        high_watermark: u64,
    ) -> (FollowerState, Step) {
        let mut s = FollowerState {
            leader,
            leader_epoch,
            phase: Phase::Fetching,
            log_end,
            high_watermark: high_watermark.min(log_end),
        };
        let step = match epochs.latest_epoch() {
            Some(epoch) if log_end > 0 => {
                s.phase = Phase::Truncating { asked: epoch };
                Step::AskEpochEnd {
                    truncate_to: None,
                    epoch,
                }
            }
            _ => Step::Fetch {
                truncate_to: None,
                offset: log_end,
            },
        };
        (s, step)
    }

    pub fn leader(&self) -> i32 {
        self.leader
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    pub fn is_fetching(&self) -> bool {
        self.phase == Phase::Fetching
    }

    /// The leader's answer for the epoch asked: `(epoch, end_offset)`, `(-1, -1)` when
    /// undefined. `epochs` and `log_end` are this replica's log now.
    pub fn on_epoch_end(&mut self, answer: (i32, i64), epochs: &EpochCache, log_end: u64) -> Step {
        self.log_end = log_end;
        let (leader_epoch, leader_end) = answer;
        if leader_epoch < 0 || leader_end < 0 {
            return self.truncate(self.high_watermark);
        }
        let leader_end = leader_end as u64;
        match epochs.end_offset_for(leader_epoch, log_end) {
            // No epoch at or below the leader's here: nothing past the leader's end stays.
            (mine, _) if mine < 0 => self.truncate(leader_end),
            // The same epoch on both sides: the logs agree up to the smaller end.
            (mine, my_end) if mine == leader_epoch => self.truncate(leader_end.min(my_end as u64)),
            // The leader never had the epoch this replica has there (KIP-279): drop what
            // came after this replica's largest epoch below it, and ask about that one.
            (mine, my_end) => {
                let to = (my_end as u64).min(log_end);
                self.phase = Phase::Truncating { asked: mine };
                self.log_end = to;
                self.high_watermark = self.high_watermark.min(to);
                Step::AskEpochEnd {
                    truncate_to: (to < log_end).then_some(to),
                    epoch: mine,
                }
            }
        }
    }

    fn truncate(&mut self, to: u64) -> Step {
        self.phase = Phase::Fetching;
        let to = to.min(self.log_end);
        let truncate_to = (to < self.log_end).then_some(to);
        self.log_end = to;
        self.high_watermark = self.high_watermark.min(to);
        Step::Fetch {
            truncate_to,
            offset: to,
        }
    }

    /// A fetch response was appended: the log ends at `log_end`, and the leader's high
    /// watermark was `leader_high_watermark`. This replica's high watermark: the leader's,
    /// capped by what it has.
    pub fn on_fetched(&mut self, log_end: u64, leader_high_watermark: u64) -> u64 {
        self.log_end = log_end;
        self.high_watermark = self.high_watermark.max(leader_high_watermark.min(log_end));
        self.high_watermark
    }
}

#[cfg(test)]
#[path = "follower_tests.rs"]
mod tests;
