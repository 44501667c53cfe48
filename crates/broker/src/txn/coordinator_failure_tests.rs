//! The coordinator against a real broker when things go wrong or come back: expired ids,
//! retried InitProducerId, failed writes (injected through [`Faults`]), partial markers,
//! unreadable `__transaction_state` values, and transactional group offsets across markers,
//! restarts and expiry.

use super::*;
use crate::errors::{
    COORDINATOR_NOT_AVAILABLE, INVALID_PRODUCER_EPOCH, INVALID_REQUEST, INVALID_TXN_STATE, NONE,
};
use crate::group::coordinator::{CommitRequest, OFFSETS_TOPIC};
use crate::group::txn_offsets::TxnCommit;
use crate::txn::coordinator_tests::{both, broker};
use crate::txn::state::PRODUCER_FENCED;

fn hw(b: &Broker, partition: i32) -> u64 {
    b.partition("t", partition).unwrap().high_watermark()
}

/// Appends one record to `id`'s `__transaction_state` partition, as a coordinator would.
fn append_state(b: &Broker, id: &str, value: Option<Vec<u8>>) {
    let mut rec = BatchBuilder::new()
        .record(batch::Record {
            timestamp: 1,
            key: Some(records::key(id)),
            value,
            headers: vec![],
        })
        .build();
    TxnCoordinator::state_partition(b, id)
        .unwrap()
        .append(&mut rec, 1)
        .unwrap();
}

#[test]
fn an_expired_transactional_id_recovers_with_the_producer_id_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let idle = b.txns.describe("tx").unwrap().last_update_ms;
    b.txns.tick(&b, idle + b.txns.config.id_expiration_ms + 1);
    assert!(b.txns.describe("tx").is_none());
    // The producer, unaware, bumps its epoch (KIP-360): it gets the new entry's id.
    let (new_pid, new_epoch) = b
        .txns
        .init_producer(&b, "tx", 60_000, Some((pid, epoch)))
        .unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(new_epoch, 0);
    // Now that the entry has an epoch, an unknown producer id is fenced.
    assert_eq!(
        b.txns.init_producer(&b, "tx", 60_000, Some((pid, epoch))),
        Err(PRODUCER_FENCED)
    );
}

#[test]
fn a_retried_epoch_bump_is_answered_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let (pid, _) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let bump = b.txns.init_producer(&b, "tx", 60_000, Some((pid, 0)));
    assert_eq!(bump, Ok((pid, 1)));
    // The response was lost; the producer retries with the epoch it still has.
    assert_eq!(
        b.txns.init_producer(&b, "tx", 60_000, Some((pid, 0))),
        Ok((pid, 1))
    );
    assert_eq!(b.txns.describe("tx").unwrap().producer_epoch, 1);
}

#[test]
fn a_refused_init_producer_id_leaves_no_entry_and_burns_no_producer_id() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let before = b.allocate_producer_id().unwrap();
    for timeout in [0, 900_001] {
        assert_eq!(
            b.txns.init_producer(&b, "tx", timeout, None),
            Err(super::INVALID_TRANSACTION_TIMEOUT)
        );
    }
    assert!(b.txns.describe("tx").is_none() && b.txns.list().is_empty());
    assert_eq!(
        b.txns.init_producer(&b, "tx", 60_000, None),
        Ok((before + 1, 0))
    );

    // Nothing could be persisted: no entry either.
    b.txns.faults.lock().unwrap().appends = true;
    assert_eq!(
        b.txns.init_producer(&b, "other", 60_000, None),
        Err(COORDINATOR_NOT_AVAILABLE)
    );
    b.txns.faults.lock().unwrap().appends = false;
    assert!(b.txns.describe("other").is_none());
    assert_eq!(b.txns.list().len(), 1);
}

#[test]
fn no_producer_id_is_an_error_not_producer_id_minus_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let exhausted = b
        .txns
        .with_metadata("tx", |m| {
            m.producer_epoch = i16::MAX - 1;
            m.clone()
        })
        .unwrap();
    b.txns.faults.lock().unwrap().producer_ids = true;
    for id in ["tx", "new"] {
        assert_eq!(
            b.txns.init_producer(&b, id, 60_000, None),
            Err(COORDINATOR_NOT_AVAILABLE),
            "{id}"
        );
    }
    assert_eq!(b.txns.describe("tx"), Some(exhausted));
    assert!(b.txns.describe("new").is_none());
    b.txns.faults.lock().unwrap().producer_ids = false;
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    assert!(pid >= 0 && epoch == 0);
}

#[test]
fn empty_transactional_ids_are_invalid_requests() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    assert_eq!(
        b.txns.init_producer(&b, "", 60_000, None),
        Err(INVALID_REQUEST)
    );
    assert_eq!(
        b.txns.add_partitions(&b, "", 0, 0, &both()),
        INVALID_REQUEST
    );
    assert_eq!(b.txns.end(&b, "", 0, 0, true), INVALID_REQUEST);
    assert!(b.txns.list().is_empty());
}

#[test]
fn a_timeout_fence_that_cannot_be_persisted_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let (pid, epoch) = b.txns.init_producer(&b, "slow", 60_000, None).unwrap();
    assert_eq!(b.txns.add_partitions(&b, "slow", pid, epoch, &both()), NONE);
    let start = b.txns.describe("slow").unwrap().start_ms;
    b.txns.faults.lock().unwrap().appends = true;
    b.txns.tick(&b, start + 60_001);
    let m = b.txns.describe("slow").unwrap();
    assert_eq!((m.state, m.producer_epoch), (TxnState::Ongoing, epoch));
    assert_eq!((hw(&b, 0), hw(&b, 1)), (0, 0), "no markers");
    // The next round fences with one bump, not two.
    b.txns.faults.lock().unwrap().appends = false;
    b.txns.tick(&b, start + 60_002);
    let m = b.txns.describe("slow").unwrap();
    assert_eq!(
        (m.state, m.producer_epoch),
        (TxnState::CompleteAbort, epoch + 1)
    );
    assert_eq!((hw(&b, 0), hw(&b, 1)), (1, 1));
    assert_eq!(
        b.txns.init_producer(&b, "slow", 60_000, None),
        Ok((pid, epoch + 2))
    );
}

#[test]
fn markers_are_retried_only_where_they_failed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &both()), NONE);
    b.txns.faults.lock().unwrap().markers = [("t".to_string(), 1)].into_iter().collect();
    // The decision is persisted: the commit is answered, its markers go on in the background.
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true), NONE);
    let m = b.txns.describe("tx").unwrap();
    assert_eq!(m.state, TxnState::PrepareCommit);
    assert_eq!(m.partitions, [("t".to_string(), 1)].into_iter().collect());
    assert_eq!((hw(&b, 0), hw(&b, 1)), (1, 0));
    assert_eq!(
        b.txns.end(&b, "tx", pid, epoch, true),
        super::CONCURRENT_TRANSACTIONS
    );
    // Still failing: t-0 gets no second marker.
    b.txns.tick(&b, now_ms());
    assert_eq!((hw(&b, 0), hw(&b, 1)), (1, 0));
    b.txns.faults.lock().unwrap().markers.clear();
    b.txns.tick(&b, now_ms());
    assert_eq!((hw(&b, 0), hw(&b, 1)), (1, 1));
    let m = b.txns.describe("tx").unwrap();
    assert_eq!(m.state, TxnState::CompleteCommit);
    assert!(m.partitions.is_empty());
}

#[test]
fn an_unreadable_value_keeps_the_previous_state_and_a_null_one_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (pid, epoch) = {
        let b = broker(dir.path());
        let ids = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
        b.txns.init_producer(&b, "gone", 60_000, None).unwrap();
        append_state(&b, "tx", Some(vec![0, 0, 1, 2, 3]));
        append_state(&b, "tx", Some(vec![0, 9]));
        append_state(&b, "gone", None);
        ids
    };
    let b = broker(dir.path());
    let m = b.txns.describe("tx").unwrap();
    assert_eq!(
        (m.producer_id, m.producer_epoch, m.state),
        (pid, epoch, TxnState::Empty)
    );
    assert!(b.txns.describe("gone").is_none());
}

#[test]
fn the_state_partition_follows_the_topics_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    // The topic was made with 2 partitions; the config says 3.
    assert_eq!(b.ensure_internal_topic(TXN_TOPIC, 2), Ok(2));
    let id = (0..100)
        .map(|i| format!("tx{i}"))
        .find(|id| partition_for(id, 3) == 2)
        .unwrap();
    b.txns.init_producer(&b, &id, 60_000, None).unwrap();
    let p = TxnCoordinator::state_partition(&b, &id).unwrap();
    assert_eq!(p.index, partition_for(&id, 2));
    assert_eq!(p.high_watermark(), 1);
}

/// Group ids by `__consumer_offsets` partition, for `partitions` partitions.
fn group_on(partition: i32, partitions: i32) -> String {
    (0..1000)
        .map(|i| format!("g{i}"))
        .find(|g| crate::group::records::partition_for(g, partitions) == partition)
        .unwrap()
}

fn offsets_partition(group: &str, partitions: i32) -> (String, i32) {
    (
        OFFSETS_TOPIC.to_string(),
        crate::group::records::partition_for(group, partitions),
    )
}

fn commit_offset(b: &Broker, group: &str, pid: i64, epoch: i16, offset: i64) -> Vec<i16> {
    let c = TxnCommit {
        group_id: group,
        producer_id: pid,
        producer_epoch: epoch,
        member_id: "",
        instance_id: None,
        generation: -1,
    };
    let o = CommitRequest {
        topic: "t".to_string(),
        partition: 0,
        offset,
        leader_epoch: -1,
        metadata: None,
    };
    b.txn_offset_commit("tx", &c, vec![o])
}

fn committed(b: &Broker, group: &str) -> Option<i64> {
    b.groups
        .fetch(group, None)
        .into_iter()
        .find(|(t, p, _)| t == "t" && *p == 0)
        .and_then(|(_, _, o)| o.map(|o| o.offset))
}

fn unstable(b: &Broker, group: &str) -> bool {
    b.groups
        .unstable_partitions(group)
        .contains(&("t".to_string(), 0))
}

#[test]
fn txn_offset_commit_from_an_old_epoch_is_invalid_producer_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let group = group_on(0, 3);
    let p = offsets_partition(&group, 3);
    assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &[p]), NONE);
    assert_eq!(commit_offset(&b, &group, pid, epoch, 5), vec![NONE]);
    // A new incarnation aborts the transaction (a marker with a newer epoch).
    let (_, newer) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    assert!(newer > epoch);
    assert_eq!(
        commit_offset(&b, &group, pid, epoch, 6),
        vec![INVALID_PRODUCER_EPOCH]
    );
    assert_eq!(committed(&b, &group), None);
    assert!(!unstable(&b, &group));
}

#[test]
fn markers_commit_group_offsets_on_the_topics_actual_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    // `__consumer_offsets` was made with 2 partitions; the config says 3.
    assert_eq!(b.ensure_internal_topic(OFFSETS_TOPIC, 2), Ok(2));
    let group = (0..1000)
        .map(|i| format!("g{i}"))
        .find(|g| offsets_partition(g, 2) != offsets_partition(g, 3))
        .unwrap();
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let p = offsets_partition(&group, 2);
    assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &[p]), NONE);
    assert_eq!(commit_offset(&b, &group, pid, epoch, 7), vec![NONE]);
    assert!(unstable(&b, &group));
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true), NONE);
    assert_eq!(committed(&b, &group), Some(7));
    assert!(!unstable(&b, &group));
}

#[test]
fn a_marker_ends_only_the_offsets_pending_on_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let (a, c) = (group_on(0, 3), group_on(2, 3));
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let parts = [offsets_partition(&a, 3), offsets_partition(&c, 3)];
    assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &parts), NONE);
    assert_eq!(commit_offset(&b, &a, pid, epoch, 1), vec![NONE]);
    assert_eq!(commit_offset(&b, &c, pid, epoch, 2), vec![NONE]);
    b.groups.complete_txn(2, pid, true);
    assert_eq!((committed(&b, &a), committed(&b, &c)), (None, Some(2)));
    assert!(unstable(&b, &a) && !unstable(&b, &c));
    b.groups.complete_txn(0, pid, true);
    assert_eq!(committed(&b, &a), Some(1));
}

#[test]
fn reloaded_offsets_wait_for_a_marker_on_their_own_partition() {
    let dir = tempfile::tempdir().unwrap();
    // Group `a` is on offsets partition 0, read back first; `c` on partition 2.
    let (a, c) = (group_on(0, 3), group_on(2, 3));
    let (pid, epoch) = {
        let b = broker(dir.path());
        let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
        // The first transaction commits offsets of `c`.
        let pc = offsets_partition(&c, 3);
        assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &[pc]), NONE);
        assert_eq!(commit_offset(&b, &c, pid, epoch, 2), vec![NONE]);
        assert_eq!(b.txns.end(&b, "tx", pid, epoch, true), NONE);
        // The second, still open, has offsets of `a`.
        let pa = offsets_partition(&a, 3);
        assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &[pa]), NONE);
        assert_eq!(commit_offset(&b, &a, pid, epoch, 1), vec![NONE]);
        (pid, epoch)
    };
    let b = broker(dir.path());
    assert_eq!((committed(&b, &a), committed(&b, &c)), (None, Some(2)));
    assert!(unstable(&b, &a));
    // The open transaction commits now, and only now are `a`'s offsets committed.
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true), NONE);
    assert_eq!(committed(&b, &a), Some(1));
    assert!(!unstable(&b, &a));
}

#[test]
fn a_group_with_offsets_of_an_open_transaction_is_not_expired() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let group = group_on(1, 3);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let p = offsets_partition(&group, 3);
    assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &[p]), NONE);
    assert_eq!(commit_offset(&b, &group, pid, epoch, 3), vec![NONE]);
    let retention = b.groups.config.offsets_retention_ms;
    b.groups
        .expire(&b, crate::group::coordinator::now_ms() + 2 * retention);
    assert!(unstable(&b, &group));
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true), NONE);
    assert_eq!(committed(&b, &group), Some(3));
}

#[test]
fn txn_offsets_outside_the_transaction_are_refused_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let group = group_on(1, 3);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    // The transaction exists but AddOffsetsToTxn was never sent for the group.
    assert_eq!(
        b.txns
            .add_partitions(&b, "tx", pid, epoch, &[("t".into(), 0)]),
        NONE
    );
    b.ensure_internal_topic(OFFSETS_TOPIC, 3).unwrap();
    assert_eq!(
        commit_offset(&b, &group, pid, epoch, 3),
        vec![INVALID_TXN_STATE]
    );
    let p = b
        .partition(OFFSETS_TOPIC, offsets_partition(&group, 3).1)
        .unwrap();
    assert_eq!(
        p.log().log_end_offset(),
        0,
        "nothing held for a marker that never comes"
    );
    assert_eq!(p.last_stable_offset(), 0);
    // Once the group's partition is in the transaction, the same commit is taken.
    let part = offsets_partition(&group, 3);
    assert_eq!(b.txns.add_partitions(&b, "tx", pid, epoch, &[part]), NONE);
    assert_eq!(commit_offset(&b, &group, pid, epoch, 3), vec![NONE]);
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true), NONE);
    assert_eq!(committed(&b, &group), Some(3));
}

#[test]
fn an_expired_slot_stays_while_a_request_waits_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.txns.init_producer(&b, "tx", 60_000, None).unwrap();
    let expiring = b.txns.slot("tx").unwrap();
    // A request took the slot and waits for it while the tick writes the tombstone.
    let waiting = b.txns.slot("tx").unwrap();
    *expiring.lock().unwrap() = None;
    b.txns.forget_if_empty("tx", &expiring);
    assert!(
        b.txns.slot("tx").is_some_and(|s| Arc::ptr_eq(&s, &waiting)),
        "the waiting request's slot is still the id's"
    );
    // Once it let go, an empty slot goes.
    drop(waiting);
    b.txns.forget_if_empty("tx", &expiring);
    assert!(b.txns.slot("tx").is_none());
}
