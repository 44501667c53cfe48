//! Where a follower truncates before it fetches from a new leader: the scenarios of KIP-101
//! (a high watermark is not enough to truncate by) and KIP-279 (a double failover), and the
//! plain cases.

use super::*;

fn epochs(entries: &[(i32, u64)]) -> EpochCache {
    EpochCache::from_entries(entries.to_vec())
}

/// The leader's side: Kafka's answer for `epoch` from the leader's cache and log end.
fn leader_answers(leader: &EpochCache, leader_end: u64, epoch: i32) -> (i32, i64) {
    leader.end_offset_for(epoch, leader_end)
}

/// Runs the exchange to its end: the offset the follower fetches from, and every
/// truncation it made on the way.
fn converge(
    follower: &[(i32, u64)],
    follower_end: u64,
    follower_hw: u64,
    leader: &[(i32, u64)],
    leader_end: u64,
) -> (u64, Vec<u64>) {
    let leader = epochs(leader);
    let mut mine = epochs(follower);
    let mut end = follower_end;
    let mut truncations = Vec::new();
    let (mut s, mut step) = FollowerState::new(2, 9, &mine, end, follower_hw);
    for _ in 0..10 {
        match step {
            Step::AskEpochEnd { truncate_to, epoch } => {
                if let Some(to) = truncate_to {
                    truncations.push(to);
                    end = to;
                    mine = epochs(
                        &mine
                            .entries()
                            .iter()
                            .copied()
                            .filter(|e| e.1 < to)
                            .collect::<Vec<_>>(),
                    );
                }
                step = s.on_epoch_end(leader_answers(&leader, leader_end, epoch), &mine, end);
            }
            Step::Fetch {
                truncate_to,
                offset,
            } => {
                if let Some(to) = truncate_to {
                    truncations.push(to);
                }
                assert!(s.is_fetching());
                return (offset, truncations);
            }
        }
    }
    panic!("no agreement after 10 exchanges");
}

#[test]
fn an_empty_follower_fetches_from_the_start_without_asking() {
    let (s, step) = FollowerState::new(1, 3, &EpochCache::default(), 0, 0);
    assert!(s.is_fetching());
    assert_eq!(
        step,
        Step::Fetch {
            truncate_to: None,
            offset: 0
        }
    );
}

#[test]
fn a_follower_with_the_leaders_log_keeps_all_of_it() {
    // Both have epoch 0 on [0, 5) and epoch 2 from 5; the follower has it up to 8, the
    // leader further.
    let (offset, cut) = converge(&[(0, 0), (2, 5)], 8, 6, &[(0, 0), (2, 5)], 12);
    assert_eq!((offset, cut), (8, vec![]));
}

#[test]
fn kip_101_a_tail_the_leader_never_had_is_dropped_not_what_is_above_the_high_watermark() {
    // The follower led epoch 1 briefly and wrote [4, 6) that nobody else got; it knew a high
    // watermark of 3 only. The new leader (epoch 2) has epoch 0 on [0, 4), then epoch 2.
    // Truncating to the high watermark (pre-KIP-101) would drop offset 3, which the leader
    // has and may have acknowledged; by epoch it keeps [0, 4).
    let (offset, cut) = converge(&[(0, 0), (1, 4)], 6, 3, &[(0, 0), (2, 4)], 9);
    assert_eq!((offset, cut), (4, vec![4]));
}

#[test]
fn kip_101_replicas_that_both_restarted_keep_the_same_records() {
    // The follower has epoch 0 on [0, 2) only; the leader has [0, 2) in epoch 0 and went on
    // in epoch 1. The follower's high watermark was lost (1): it keeps both records.
    let (offset, cut) = converge(&[(0, 0)], 2, 1, &[(0, 0), (1, 2)], 5);
    assert_eq!((offset, cut), (2, vec![]));
}

#[test]
fn kip_279_a_double_failover_truncates_epoch_by_epoch() {
    // Follower: epoch 1 on [0, 3), epoch 3 on [3, 7) (it led epoch 3, unreplicated).
    // Leader: epoch 1 on [0, 2), epoch 2 on [2, 6), now epoch 4 from 6.
    // The follower asks about 3: the leader answers (2, 6): its largest epoch <= 3 is 2. The
    // follower never had epoch 2: it drops what came after its epoch 1 ([3, 7) is gone) and
    // asks about 1: (1, 2). Both have epoch 1, agreeing up to 2: offset 2 of the follower
    // (epoch 1) differs from the leader's (epoch 2) and goes too.
    let (offset, cut) = converge(&[(1, 0), (3, 3)], 7, 1, &[(1, 0), (2, 2), (4, 6)], 8);
    assert_eq!((offset, cut), (2, vec![3, 2]));
}

#[test]
fn a_follower_with_a_longer_log_than_the_new_leader_truncates_to_it() {
    // The same epochs; the follower got further in epoch 5 than the leader did before it
    // took over at epoch 6 (the tail was never committed).
    let (offset, cut) = converge(&[(0, 0), (5, 10)], 20, 12, &[(0, 0), (5, 10), (6, 15)], 18);
    assert_eq!((offset, cut), (15, vec![15]));
}

#[test]
fn records_of_an_epoch_the_leader_never_had_are_all_dropped() {
    // The follower's records [0, 4) are all from epoch 7, which the leader never had; the
    // leader has epoch 3 on [0, 2) and leads epoch 8 from 2. Asked about 7, it answers
    // (3, 2); the follower has nothing of epoch 3 (its first epoch is 7): the same offsets
    // hold other records, and it refetches everything.
    let (offset, cut) = converge(&[(7, 0)], 4, 0, &[(3, 0), (8, 2)], 2);
    assert_eq!((offset, cut), (0, vec![0]));
}

#[test]
fn an_epoch_newer_than_the_leaders_is_undefined_and_the_high_watermark_is_kept() {
    // A leader whose cache lacks the follower's epoch and anything after it answers
    // undefined: the follower keeps what is committed only.
    let (offset, cut) = converge(&[(0, 0), (7, 3)], 6, 3, &[(0, 0)], 5);
    assert_eq!((offset, cut), (3, vec![3]));
}

#[test]
fn an_undefined_answer_truncates_to_the_high_watermark() {
    let mine = epochs(&[(0, 0), (4, 5)]);
    let (mut s, step) = FollowerState::new(1, 6, &mine, 9, 7);
    assert_eq!(
        step,
        Step::AskEpochEnd {
            truncate_to: None,
            epoch: 4
        }
    );
    assert_eq!(
        s.on_epoch_end((-1, -1), &mine, 9),
        Step::Fetch {
            truncate_to: Some(7),
            offset: 7
        }
    );
}

#[test]
fn the_followers_high_watermark_is_the_leaders_capped_by_its_log() {
    let (mut s, _) = FollowerState::new(1, 2, &EpochCache::default(), 0, 0);
    assert_eq!(s.on_fetched(5, 9), 5);
    assert_eq!(s.on_fetched(12, 9), 9);
    assert_eq!(s.on_fetched(12, 3), 9, "never back");
}
