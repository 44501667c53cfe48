//! The leader's ISR and high-watermark decisions, driven by appends, fetches, metadata
//! changes and the time.

use super::*;

const LAG: i64 = 30_000;

fn info(replicas: &[i32], isr: &[i32], partition_epoch: i32) -> PartitionInfo {
    PartitionInfo {
        replicas: Replicas::from_slice(replicas),
        isr: Replicas::from_slice(isr),
        leader: 1,
        leader_epoch: 5,
        partition_epoch,
        ..PartitionInfo::default()
    }
}

fn leader(isr: &[i32], min_isr: usize) -> LeaderState {
    LeaderState::new(
        1,
        &info(&[1, 2, 3], isr, 10),
        0,
        0,
        0,
        LeaderConfig {
            replica_lag_time_max_ms: LAG,
            min_insync_replicas: min_isr,
        },
    )
}

#[test]
fn the_high_watermark_is_the_smallest_log_end_in_the_isr_and_never_goes_back() {
    let mut l = leader(&[1, 2, 3], 2);
    assert_eq!(l.on_append(10, 1), None, "the followers have nothing yet");
    assert_eq!(l.on_fetch(2, 10, 2).unwrap().high_watermark, None);
    assert_eq!(l.on_fetch(3, 6, 3).unwrap().high_watermark, Some(6));
    assert_eq!(l.on_fetch(3, 10, 4).unwrap().high_watermark, Some(10));
    // A follower that fetches from further back (it restarted and truncated) does not take
    // the high watermark back.
    assert_eq!(l.on_fetch(2, 8, 5).unwrap().high_watermark, None);
    assert_eq!(l.high_watermark(), 10);
}

#[test]
fn alone_in_the_isr_the_leader_commits_at_once() {
    let mut l = LeaderState::new(1, &info(&[1], &[1], 0), 0, 0, 0, LeaderConfig::default());
    assert_eq!(l.on_append(7, 1), Some(7));
    assert_eq!(l.acks_all_outcome(7), Some(errors::NONE));
}

#[test]
fn a_follower_lagging_past_the_lag_time_is_proposed_out_and_the_high_watermark_moves_on() {
    let mut l = leader(&[1, 2, 3], 2);
    l.on_append(10, 0);
    l.on_fetch(2, 10, 100).unwrap();
    // 3 fetches but never catches up.
    l.on_fetch(3, 2, 100).unwrap();
    assert_eq!(l.high_watermark(), 2);
    assert_eq!(l.tick(LAG), None, "still within the lag time");
    l.on_fetch(3, 4, LAG + 1).unwrap();
    let change = l.tick(LAG + 2).expect("3 lags");
    assert_eq!(
        change,
        IsrChange {
            isr: vec![1, 2],
            partition_epoch: 10
        }
    );
    // One proposal at a time.
    assert_eq!(l.tick(LAG + 3), None);
    // Until the controller's change is in the metadata, 3 still holds the high watermark.
    assert_eq!(l.high_watermark(), 4);
    assert_eq!(
        l.on_partition_change(&info(&[1, 2, 3], &[1, 2], 11), LAG + 4),
        Some(10)
    );
    assert_eq!(l.isr(), &[1, 2]);
}

#[test]
fn a_follower_that_fetches_steadily_but_behind_a_busy_leader_stays_in() {
    // Kafka's rule: caught up at a fetch that reaches where the leader's log ended at the
    // previous fetch.
    let mut l = leader(&[1, 2], 1);
    let mut end = 0;
    for step in 1..=100 {
        let now = step * 1_000;
        end += 100;
        l.on_append(end, now);
        // Always one append behind, but at the previous fetch's leader end.
        l.on_fetch(2, end - 100, now).unwrap();
        assert_eq!(l.tick(now), None, "at {now}");
    }
}

#[test]
fn a_follower_that_catches_up_is_proposed_in_and_counts_for_the_high_watermark_at_once() {
    let mut l = leader(&[1, 2], 2);
    l.on_append(10, 0);
    l.on_fetch(2, 10, 1).unwrap();
    assert_eq!(l.high_watermark(), 10);
    // 3 is not in the ISR: behind the high watermark it is not proposed.
    assert_eq!(l.on_fetch(3, 5, 2).unwrap().expand, None);
    let out = l.on_fetch(3, 10, 3).unwrap();
    assert_eq!(
        out.expand,
        Some(IsrChange {
            isr: vec![1, 2, 3],
            partition_epoch: 10
        })
    );
    // In flight, the addition already holds the high watermark back.
    l.on_append(20, 4);
    l.on_fetch(2, 20, 5).unwrap();
    assert_eq!(l.high_watermark(), 10);
    l.on_fetch(3, 20, 6).unwrap();
    assert_eq!(l.high_watermark(), 20);
    // Refused (a stale view): nothing is in flight any more, and it may be proposed again.
    l.on_proposal_refused();
    assert!(l.on_fetch(3, 20, 7).unwrap().expand.is_some());
}

#[test]
fn a_follower_joins_only_past_the_start_of_the_leaders_epoch() {
    // This leader's epoch began at offset 10; a follower at 8 has a tail from an older
    // epoch it may still have to truncate: not in sync yet, even at the high watermark.
    let mut l = LeaderState::new(
        1,
        &info(&[1, 2], &[1], 3),
        10,
        8,
        0,
        LeaderConfig::default(),
    );
    assert_eq!(l.high_watermark(), 10, "alone in the ISR: everything");
    let mut l2 = l.clone();
    assert_eq!(
        l.on_fetch(2, 10, 1).unwrap().expand.map(|c| c.isr),
        Some(vec![1, 2])
    );
    let fetched = l2.on_fetch(2, 8, 1).unwrap();
    assert_eq!(fetched.expand, None);
}

#[test]
fn a_fetch_past_the_log_end_or_from_a_stranger_is_refused() {
    let mut l = leader(&[1, 2, 3], 1);
    l.on_append(5, 0);
    // A follower restarted with a longer log than the new leader: it must truncate first.
    assert_eq!(l.on_fetch(2, 9, 1), Err(errors::OFFSET_OUT_OF_RANGE));
    assert_eq!(l.on_fetch(7, 0, 1), Err(errors::NOT_LEADER_OR_FOLLOWER));
}

#[test]
fn acks_all_is_refused_below_min_isr_and_answered_once_committed() {
    let mut l = leader(&[1, 2, 3], 2);
    assert_eq!(l.check_append(-1), Ok(()));
    l.on_append(10, 0);
    assert_eq!(l.acks_all_outcome(10), None, "waits for the ISR");
    l.on_fetch(2, 10, 1).unwrap();
    l.on_fetch(3, 10, 1).unwrap();
    assert_eq!(l.acks_all_outcome(10), Some(errors::NONE));

    // The ISR shrinks to the leader alone.
    l.on_partition_change(&info(&[1, 2, 3], &[1], 11), 2);
    assert_eq!(l.check_append(-1), Err(errors::NOT_ENOUGH_REPLICAS));
    assert_eq!(l.check_append(1), Ok(()), "acks=1 is not checked");
    assert_eq!(l.check_append(0), Ok(()));
}

#[test]
fn a_leader_that_loses_its_isr_while_acks_all_waits_answers_after_append() {
    let mut l = leader(&[1, 2, 3], 2);
    l.on_append(10, 0);
    l.on_fetch(2, 4, 1).unwrap();
    l.on_fetch(3, 4, 1).unwrap();
    // Written to the leader; the followers stop.
    assert_eq!(l.acks_all_outcome(10), None);
    let shrink = l.tick(LAG + 10).expect("both lag");
    assert_eq!(shrink.isr, vec![1]);
    assert_eq!(
        l.acks_all_outcome(10),
        None,
        "not before the change is committed"
    );
    assert_eq!(
        l.on_partition_change(&info(&[1, 2, 3], &[1], 11), LAG + 11),
        Some(10)
    );
    assert_eq!(
        l.acks_all_outcome(10),
        Some(errors::NOT_ENOUGH_REPLICAS_AFTER_APPEND)
    );
}

#[test]
fn a_stale_partition_change_is_ignored() {
    let mut l = leader(&[1, 2, 3], 1);
    l.on_partition_change(&info(&[1, 2, 3], &[1, 2], 12), 0);
    l.on_partition_change(&info(&[1, 2, 3], &[1, 2, 3], 11), 0);
    assert_eq!(l.isr(), &[1, 2]);
}

#[test]
fn followers_in_the_isr_get_a_full_lag_time_from_the_election() {
    let mut l = LeaderState::new(
        1,
        &info(&[1, 2, 3], &[1, 2, 3], 4),
        100,
        100,
        50_000,
        LeaderConfig::default(),
    );
    assert_eq!(l.tick(50_000 + LAG), None);
    assert_eq!(
        l.tick(50_000 + LAG + 1).map(|c| c.isr),
        Some(vec![1]),
        "neither fetched within the lag time"
    );
}
