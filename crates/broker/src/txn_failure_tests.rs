//! The transaction coordinator in a real broker when things come back: expired ids, retried
//! InitProducerId, unreadable `__transaction_state` values, and transactional group offsets
//! across markers, verification, restarts and expiry. Injected failures are the coordinator
//! crate's tests, against its in-memory host.

use strom_storage::batch::{self, BatchBuilder};

use crate::broker::Broker;
use crate::errors::{INVALID_PRODUCER_EPOCH, INVALID_REQUEST, INVALID_TXN_STATE, NONE};
use crate::group::coordinator::{CommitRequest, OFFSETS_TOPIC};
use crate::group::txn_offsets::TxnCommit;
use crate::txn::coordinator::{TXN_TOPIC, partition_for};
use crate::txn::records;
use crate::txn::state::PRODUCER_FENCED;
use crate::txn::state::TxnState;
use crate::txn_tests::{both, broker};

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
    b.partition(TXN_TOPIC, partition_for(id, 3))
        .unwrap()
        .append(&mut rec, 1)
        .unwrap();
}

#[tokio::test]
async fn an_expired_transactional_id_recovers_with_the_producer_id_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let idle = b
        .txns
        .describe(&b, "tx")
        .await
        .unwrap()
        .unwrap()
        .last_update_ms;
    b.txns
        .tick(&b, idle + b.txns.config.id_expiration_ms + 1)
        .await;
    assert!(b.txns.describe(&b, "tx").await.unwrap().is_none());
    // The producer, unaware, bumps its epoch (KIP-360): it gets the new entry's id.
    let (new_pid, new_epoch) = b
        .txns
        .init_producer(&b, "tx", 60_000, Some((pid, epoch)))
        .await
        .unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(new_epoch, 0);
    // Now that the entry has an epoch, an unknown producer id is fenced.
    assert_eq!(
        b.txns
            .init_producer(&b, "tx", 60_000, Some((pid, epoch)))
            .await,
        Err(PRODUCER_FENCED)
    );
}

#[tokio::test]
async fn a_retried_epoch_bump_is_answered_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (pid, _) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let bump = b.txns.init_producer(&b, "tx", 60_000, Some((pid, 0))).await;
    assert_eq!(bump, Ok((pid, 1)));
    // The response was lost; the producer retries with the epoch it still has.
    assert_eq!(
        b.txns.init_producer(&b, "tx", 60_000, Some((pid, 0))).await,
        Ok((pid, 1))
    );
    assert_eq!(
        b.txns
            .describe(&b, "tx")
            .await
            .unwrap()
            .unwrap()
            .producer_epoch,
        1
    );
}

#[tokio::test]
async fn empty_transactional_ids_are_invalid_requests() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    assert_eq!(
        b.txns.init_producer(&b, "", 60_000, None).await,
        Err(INVALID_REQUEST)
    );
    assert_eq!(
        b.txns.add_partitions(&b, "", 0, 0, &both()).await,
        INVALID_REQUEST
    );
    assert_eq!(b.txns.end(&b, "", 0, 0, true).await, INVALID_REQUEST);
    assert!(b.txns.list().await.is_empty());
}

#[tokio::test]
async fn an_unreadable_value_keeps_the_previous_state_and_a_null_one_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (pid, epoch) = {
        let b = broker(dir.path()).await;
        let ids = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
        b.txns
            .init_producer(&b, "gone", 60_000, None)
            .await
            .unwrap();
        append_state(&b, "tx", Some(vec![0, 0, 1, 2, 3]));
        append_state(&b, "tx", Some(vec![0, 9]));
        append_state(&b, "gone", None);
        ids
    };
    let b = broker(dir.path()).await;
    let m = b.txns.describe(&b, "tx").await.unwrap().unwrap();
    assert_eq!(
        (m.producer_id, m.producer_epoch, m.state),
        (pid, epoch, TxnState::Empty)
    );
    assert!(b.txns.describe(&b, "gone").await.unwrap().is_none());
}

#[tokio::test]
async fn the_state_partition_follows_the_topics_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    // The topic was made with 2 partitions; the config says 3.
    assert_eq!(b.ensure_internal_topic(TXN_TOPIC, 2).await, Ok(2));
    let id = (0..100)
        .map(|i| format!("tx{i}"))
        .find(|id| partition_for(id, 3) == 2)
        .unwrap();
    b.txns.init_producer(&b, &id, 60_000, None).await.unwrap();
    let p = b.partition(TXN_TOPIC, partition_for(&id, 2)).unwrap();
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

async fn commit_offset(b: &Broker, group: &str, pid: i64, epoch: i16, offset: i64) -> Vec<i16> {
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
    b.txn_offset_commit("tx", &c, vec![o]).await
}

async fn committed(b: &Broker, group: &str) -> Option<i64> {
    b.groups
        .fetch(b, group, None)
        .await
        .unwrap()
        .into_iter()
        .find(|(t, p, _)| t == "t" && *p == 0)
        .and_then(|(_, _, o)| o.map(|o| o.offset))
}

async fn unstable(b: &Broker, group: &str) -> bool {
    b.groups
        .unstable_partitions(b, group)
        .await
        .contains(&("t".to_string(), 0))
}

#[tokio::test]
async fn txn_offset_commit_from_an_old_epoch_is_invalid_producer_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let group = group_on(0, 3);
    let p = offsets_partition(&group, 3);
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &[p]).await,
        NONE
    );
    assert_eq!(commit_offset(&b, &group, pid, epoch, 5).await, vec![NONE]);
    // A new incarnation aborts the transaction (a marker with a newer epoch).
    let (_, newer) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert!(newer > epoch);
    assert_eq!(
        commit_offset(&b, &group, pid, epoch, 6).await,
        vec![INVALID_PRODUCER_EPOCH]
    );
    assert_eq!(committed(&b, &group).await, None);
    assert!(!unstable(&b, &group).await);
}

#[tokio::test]
async fn markers_commit_group_offsets_on_the_topics_actual_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    // `__consumer_offsets` was made with 2 partitions; the config says 3.
    assert_eq!(b.ensure_internal_topic(OFFSETS_TOPIC, 2).await, Ok(2));
    let group = (0..1000)
        .map(|i| format!("g{i}"))
        .find(|g| offsets_partition(g, 2) != offsets_partition(g, 3))
        .unwrap();
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let p = offsets_partition(&group, 2);
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &[p]).await,
        NONE
    );
    assert_eq!(commit_offset(&b, &group, pid, epoch, 7).await, vec![NONE]);
    assert!(unstable(&b, &group).await);
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    assert_eq!(committed(&b, &group).await, Some(7));
    assert!(!unstable(&b, &group).await);
}

#[tokio::test]
async fn a_marker_ends_only_the_offsets_pending_on_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (a, c) = (group_on(0, 3), group_on(2, 3));
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let parts = [offsets_partition(&a, 3), offsets_partition(&c, 3)];
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &parts).await,
        NONE
    );
    assert_eq!(commit_offset(&b, &a, pid, epoch, 1).await, vec![NONE]);
    assert_eq!(commit_offset(&b, &c, pid, epoch, 2).await, vec![NONE]);
    b.groups.complete_txn(2, pid, true).await;
    assert_eq!(
        (committed(&b, &a).await, committed(&b, &c).await),
        (None, Some(2))
    );
    assert!(unstable(&b, &a).await && !unstable(&b, &c).await);
    b.groups.complete_txn(0, pid, true).await;
    assert_eq!(committed(&b, &a).await, Some(1));
}

#[tokio::test]
async fn reloaded_offsets_wait_for_a_marker_on_their_own_partition() {
    let dir = tempfile::tempdir().unwrap();
    // Group `a` is on offsets partition 0, read back first; `c` on partition 2.
    let (a, c) = (group_on(0, 3), group_on(2, 3));
    let (pid, epoch) = {
        let b = broker(dir.path()).await;
        let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
        // The first transaction commits offsets of `c`.
        let pc = offsets_partition(&c, 3);
        assert_eq!(
            b.txns.add_partitions(&b, "tx", pid, epoch, &[pc]).await,
            NONE
        );
        assert_eq!(commit_offset(&b, &c, pid, epoch, 2).await, vec![NONE]);
        assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
        // The second, still open, has offsets of `a`.
        let pa = offsets_partition(&a, 3);
        assert_eq!(
            b.txns.add_partitions(&b, "tx", pid, epoch, &[pa]).await,
            NONE
        );
        assert_eq!(commit_offset(&b, &a, pid, epoch, 1).await, vec![NONE]);
        (pid, epoch)
    };
    let b = broker(dir.path()).await;
    assert_eq!(
        (committed(&b, &a).await, committed(&b, &c).await),
        (None, Some(2))
    );
    assert!(unstable(&b, &a).await);
    // The open transaction commits now, and only now are `a`'s offsets committed.
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    assert_eq!(committed(&b, &a).await, Some(1));
    assert!(!unstable(&b, &a).await);
}

#[tokio::test]
async fn a_group_with_offsets_of_an_open_transaction_is_not_expired() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let group = group_on(1, 3);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let p = offsets_partition(&group, 3);
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &[p]).await,
        NONE
    );
    assert_eq!(commit_offset(&b, &group, pid, epoch, 3).await, vec![NONE]);
    let retention = b.groups.config.offsets_retention_ms;
    b.groups
        .expire(&b, crate::group::coordinator::now_ms() + 2 * retention)
        .await;
    assert!(unstable(&b, &group).await);
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    assert_eq!(committed(&b, &group).await, Some(3));
}

#[tokio::test]
async fn txn_offsets_outside_the_transaction_are_refused_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let group = group_on(1, 3);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    // The transaction exists but AddOffsetsToTxn was never sent for the group.
    assert_eq!(
        b.txns
            .add_partitions(&b, "tx", pid, epoch, &[("t".into(), 0)])
            .await,
        NONE
    );
    b.ensure_internal_topic(OFFSETS_TOPIC, 3).await.unwrap();
    assert_eq!(
        commit_offset(&b, &group, pid, epoch, 3).await,
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
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &[part]).await,
        NONE
    );
    assert_eq!(commit_offset(&b, &group, pid, epoch, 3).await, vec![NONE]);
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    assert_eq!(committed(&b, &group).await, Some(3));
}
