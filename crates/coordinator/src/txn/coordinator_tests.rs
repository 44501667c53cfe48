//! The transaction coordinator against the in-memory host: failures injected into its
//! writes, markers and producer ids; restarts between prepare and complete; expiry and
//! compaction; one id never waiting for another; shards that load, resign and refuse.

use std::sync::Arc;

use strom_metadata::TopicPartition;
use strom_metadata::errors::{
    CONCURRENT_TRANSACTIONS, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
    INVALID_TRANSACTION_TIMEOUT, NONE, NOT_COORDINATOR,
};

use super::coordinator::*;
use super::records;
use super::state::TxnState;
use crate::fake::{Node, Store};
use crate::host::PartitionWriter;

fn both() -> Vec<(String, i32)> {
    vec![("t".to_string(), 0), ("t".to_string(), 1)]
}

fn t(p: i32) -> TopicPartition {
    TopicPartition::new("t", p)
}

fn markers(b: &Node, p: i32) -> Vec<(i64, bool)> {
    b.partition(&t(p), |p| p.markers())
}

async fn describe(b: &Node, id: &str) -> Option<super::state::TxnMetadata> {
    b.txns.describe(b, id).await.unwrap()
}

#[tokio::test]
async fn commit_and_abort_write_their_markers_to_every_partition() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, false).await, NONE);
    for p in 0..2 {
        assert_eq!(markers(&b, p), vec![(pid, true), (pid, false)]);
    }
    let m = describe(&b, "tx").await.unwrap();
    assert_eq!(m.state, TxnState::CompleteAbort);
}

#[tokio::test]
async fn a_refused_init_producer_id_leaves_no_entry_and_burns_no_producer_id() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    for timeout in [0, 900_001] {
        assert_eq!(
            b.txns.init_producer(&b, "tx", timeout, None).await,
            Err(INVALID_TRANSACTION_TIMEOUT)
        );
    }
    assert!(describe(&b, "tx").await.is_none() && b.txns.list().await.is_empty());
    assert_eq!(
        b.txns.init_producer(&b, "tx", 60_000, None).await,
        Ok((0, 0))
    );

    // Nothing could be persisted: no entry either.
    b.faults.lock().unwrap().txn_appends = true;
    assert_eq!(
        b.txns.init_producer(&b, "other", 60_000, None).await,
        Err(COORDINATOR_NOT_AVAILABLE)
    );
    b.faults.lock().unwrap().txn_appends = false;
    assert!(describe(&b, "other").await.is_none());
    assert_eq!(b.txns.list().await.len(), 1);
}

#[tokio::test]
async fn no_producer_id_is_an_error_not_producer_id_minus_one() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let exhausted = b
        .txns
        .with_metadata(&b, "tx", |m| {
            m.producer_epoch = i16::MAX - 1;
            m.clone()
        })
        .await
        .unwrap()
        .unwrap();
    b.faults.lock().unwrap().producer_ids = true;
    for id in ["tx", "new"] {
        assert_eq!(
            b.txns.init_producer(&b, id, 60_000, None).await,
            Err(COORDINATOR_NOT_AVAILABLE),
            "{id}"
        );
    }
    assert_eq!(describe(&b, "tx").await, Some(exhausted));
    assert!(describe(&b, "new").await.is_none());
    b.faults.lock().unwrap().producer_ids = false;
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert!(pid >= 0 && epoch == 0);
}

#[tokio::test]
async fn a_timeout_fence_that_cannot_be_persisted_is_rolled_back() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    let (pid, epoch) = b
        .txns
        .init_producer(&b, "slow", 60_000, None)
        .await
        .unwrap();
    assert_eq!(
        b.txns.add_partitions(&b, "slow", pid, epoch, &both()).await,
        NONE
    );
    let start = describe(&b, "slow").await.unwrap().start_ms;
    b.txns.tick(&b, start + 60_000).await;
    assert_eq!(describe(&b, "slow").await.unwrap().state, TxnState::Ongoing);
    b.faults.lock().unwrap().txn_appends = true;
    b.txns.tick(&b, start + 60_001).await;
    let m = describe(&b, "slow").await.unwrap();
    assert_eq!((m.state, m.producer_epoch), (TxnState::Ongoing, epoch));
    assert!(markers(&b, 0).is_empty() && markers(&b, 1).is_empty());
    // The next round fences with one bump, not two.
    b.faults.lock().unwrap().txn_appends = false;
    b.txns.tick(&b, start + 60_002).await;
    let m = describe(&b, "slow").await.unwrap();
    assert_eq!(
        (m.state, m.producer_epoch),
        (TxnState::CompleteAbort, epoch + 1)
    );
    assert_eq!(
        (markers(&b, 0), markers(&b, 1)),
        (vec![(pid, false)], vec![(pid, false)])
    );
    assert_eq!(
        b.txns.init_producer(&b, "slow", 60_000, None).await,
        Ok((pid, epoch + 2))
    );
}

#[tokio::test]
async fn markers_are_retried_only_where_they_failed() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
    b.faults.lock().unwrap().markers = [t(1)].into_iter().collect();
    // The decision is persisted: the commit is answered, its markers go on in the background.
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    let m = describe(&b, "tx").await.unwrap();
    assert_eq!(m.state, TxnState::PrepareCommit);
    assert_eq!(m.partitions, [("t".to_string(), 1)].into_iter().collect());
    assert_eq!((markers(&b, 0).len(), markers(&b, 1).len()), (1, 0));
    assert_eq!(
        b.txns.end(&b, "tx", pid, epoch, true).await,
        CONCURRENT_TRANSACTIONS
    );
    // Still failing: t-0 gets no second marker.
    b.txns.tick(&b, now_ms()).await;
    assert_eq!((markers(&b, 0).len(), markers(&b, 1).len()), (1, 0));
    b.faults.lock().unwrap().markers.clear();
    b.txns.tick(&b, now_ms()).await;
    assert_eq!((markers(&b, 0).len(), markers(&b, 1).len()), (1, 1));
    let m = describe(&b, "tx").await.unwrap();
    assert_eq!(m.state, TxnState::CompleteCommit);
    assert!(m.partitions.is_empty());
}

/// The coordinator persisted PrepareCommit (or PrepareAbort) and stopped before writing
/// any marker; the restarted one finishes that decision in its timers' first pass.
async fn restart_between_prepare_and_complete(commit: bool) {
    let store = Store::with_topic(2);
    let (pid, epoch) = {
        let b = Node::default_on(&store);
        let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
        assert_eq!(
            b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
            NONE
        );
        let mut m = describe(&b, "tx").await.unwrap();
        m.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        let tp = TopicPartition::new(TXN_TOPIC, partition_for("tx", 3));
        let batch = crate::internal_topic::build_batch(
            &[(records::key("tx"), Some(records::value(&m)))],
            1,
        )
        .build();
        b.append(&tp, batch, None).await.unwrap();
        (pid, epoch)
    };
    let b = Node::default_on(&store);
    assert!(
        markers(&b, 0).is_empty(),
        "nothing written before the restart"
    );
    b.txns.tick(&b, now_ms()).await;
    let complete = if commit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    assert_eq!(describe(&b, "tx").await.unwrap().state, complete);
    for p in 0..2 {
        assert_eq!(markers(&b, p), vec![(pid, commit)]);
    }
    // The producer goes on with the same id and epoch.
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
}

#[tokio::test]
async fn a_restart_between_prepare_and_complete_finishes_the_commit() {
    restart_between_prepare_and_complete(true).await;
}

#[tokio::test]
async fn a_restart_between_prepare_and_complete_finishes_the_abort() {
    restart_between_prepare_and_complete(false).await;
}

/// An id that expires (transactional.id.expiration.ms) is written as a tombstone, so that
/// compaction can remove it; a `__transaction_state` compacted as the log cleaner does
/// (latest record per id, tombstones gone, offset gaps) loads back as the same ids, and
/// each goes on with its producer id.
#[tokio::test]
async fn an_expired_id_is_a_tombstone_and_a_compacted_topic_loads_the_same() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    let ids = ["busy", "other", "old"];
    for id in ids {
        let (pid, epoch) = b.txns.init_producer(&b, id, 60_000, None).await.unwrap();
        let rounds = if id == "busy" { 300 } else { 1 };
        for i in 0..rounds {
            assert_eq!(
                b.txns.add_partitions(&b, id, pid, epoch, &both()).await,
                NONE
            );
            assert_eq!(b.txns.end(&b, id, pid, epoch, i % 3 != 0).await, NONE);
        }
    }
    // Only "old" is idle past the expiration.
    b.txns
        .with_metadata(&b, "old", |m| m.last_update_ms = 0)
        .await
        .unwrap();
    b.txns.tick(&b, now_ms()).await;
    assert!(describe(&b, "old").await.is_none());
    let old = TopicPartition::new(TXN_TOPIC, partition_for("old", 3));
    let last = b.partition(&old, |p| {
        p.records()
            .into_iter()
            .rev()
            .find(|r| r.key == records::key("old"))
    });
    assert_eq!(last.unwrap().value, None, "a tombstone");
    let before = b.txns.list().await;
    assert_eq!(before.len(), 2);
    let state_tps: Vec<TopicPartition> =
        (0..3).map(|p| TopicPartition::new(TXN_TOPIC, p)).collect();
    let written: usize = state_tps
        .iter()
        .map(|tp| b.partition(tp, |p| p.records().len()))
        .sum();
    for tp in &state_tps {
        b.compact(tp);
    }
    let kept: usize = state_tps
        .iter()
        .map(|tp| b.partition(tp, |p| p.records().len()))
        .sum();
    assert!(written > 900 && kept == 2, "{written} records, {kept} kept");
    drop(b);
    let b = Node::default_on(&store);
    // As a restart without compaction reads it (last_producer_id is not in the record).
    let persisted = |all: Vec<super::state::TxnMetadata>| -> Vec<_> {
        all.into_iter()
            .map(|m| {
                (
                    m.transactional_id,
                    m.producer_id,
                    m.producer_epoch,
                    m.state,
                    m.partitions,
                    m.last_update_ms,
                )
            })
            .collect()
    };
    assert_eq!(persisted(b.txns.list().await), persisted(before.clone()));
    // Each id goes on: the same producer id with the next epoch, and a transaction commits.
    for m in &before {
        let id = m.transactional_id.as_str();
        let (pid, epoch) = b.txns.init_producer(&b, id, 60_000, None).await.unwrap();
        assert_eq!((pid, epoch), (m.producer_id, m.producer_epoch + 1), "{id}");
        assert_eq!(
            b.txns.add_partitions(&b, id, pid, epoch, &both()).await,
            NONE
        );
        assert_eq!(b.txns.end(&b, id, pid, epoch, true).await, NONE);
    }
    // The expired id starts over with a new producer id.
    let (pid, epoch) = b.txns.init_producer(&b, "old", 60_000, None).await.unwrap();
    assert!(before.iter().all(|m| m.producer_id != pid));
    assert_eq!(epoch, 0);
}

/// One id's lock held (as while its markers are written) never holds up another id: a
/// whole transaction of another id runs, on another runtime, while it is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ids_work_never_waits_for_another_ids() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    b.txns
        .init_producer(&b, "slow", 60_000, None)
        .await
        .unwrap();
    let outcome = b
        .txns
        .with_metadata(&b, "slow", |_| {
            std::thread::scope(|s| {
                let fast = s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let (pid, epoch) = b
                            .txns
                            .init_producer(&b, "fast", 60_000, None)
                            .await
                            .unwrap();
                        let added = b.txns.add_partitions(&b, "fast", pid, epoch, &both()).await;
                        let ended = b.txns.end(&b, "fast", pid, epoch, true).await;
                        (added, ended)
                    })
                });
                fast.join().unwrap()
            })
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        (NONE, NONE),
        "another id's transaction went through"
    );
    assert_eq!(
        describe(&b, "fast").await.unwrap().state,
        TxnState::CompleteCommit
    );
}

#[tokio::test]
async fn a_resigned_shard_answers_not_coordinator_and_a_new_election_serves_it_again() {
    let store = Store::with_topic(2);
    let b = Node::default_on(&store);
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    let partition = partition_for("tx", 3);
    b.txns.on_resignation(partition, None);
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NOT_COORDINATOR
    );
    assert_eq!(b.txns.describe(&b, "tx").await, Err(NOT_COORDINATOR));
    assert!(b.txns.list().await.is_empty());
    // Elected again (a later epoch): the state is read back from the partition.
    b.txns.on_election(&b, partition, 1);
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    assert_eq!(markers(&b, 0), vec![(pid, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_shard_answers_coordinator_load_in_progress() {
    let store = Store::with_topic(2);
    let b = Arc::new(Node::default_on(&store));
    b.txns.init_producer(&*b, "tx", 60_000, None).await.unwrap();
    let partition = partition_for("tx", 3);
    b.txns.on_resignation(partition, None);
    b.faults.lock().unwrap().hold_replay = true;
    let loading = {
        let b = b.clone();
        std::thread::spawn(move || b.txns.on_election(&*b, partition, 1))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match b.txns.describe(&*b, "tx").await {
            Err(COORDINATOR_LOAD_IN_PROGRESS) => break,
            Err(NOT_COORDINATOR) if std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            other => panic!("expected COORDINATOR_LOAD_IN_PROGRESS, got {other:?}"),
        }
    }
    b.faults.lock().unwrap().hold_replay = false;
    loading.join().unwrap();
    assert!(b.txns.describe(&*b, "tx").await.unwrap().is_some());
}
