//! The transaction coordinator in a real broker on a temporary directory: markers in real
//! partitions, read_committed, timeouts, a restart between prepare and complete, and producer
//! state that survives restarts.

use strom_storage::batch::{BatchBuilder, Record};

use crate::broker::{Broker, NewTopic};
use crate::config::BrokerConfig;
use crate::txn::coordinator::*;
use crate::txn::records;
use crate::txn::state::{PRODUCER_FENCED, TxnState};
use strom_metadata::errors::NONE;

/// A broker on `dir` with 3 partitions per internal topic and a topic `t` of 2.
pub(crate) async fn broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig {
        log_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    config.groups.offsets_partitions = 3;
    config.txns.partitions = 3;
    let b = Broker::open(config).unwrap();
    if b.topic("t").is_none() {
        b.create_topic(
            NewTopic {
                name: "t".into(),
                partitions: Some(2),
                replication_factor: None,
                assignments: vec![],
                configs: Default::default(),
            },
            false,
        )
        .await
        .unwrap();
    }
    b
}

/// A transactional batch of `n` records from producer `pid`, starting at sequence `seq`.
fn txn_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b = b.record(Record {
            timestamp: 1,
            key: None,
            value: Some(format!("v{i}").into_bytes()),
            headers: vec![],
        });
    }
    b.producer_id = pid;
    b.producer_epoch = epoch;
    b.base_sequence = seq;
    b.transactional = true;
    b.build()
}

/// Produces as the transactional producer `id` does, verification included.
async fn produce(b: &Broker, id: &str, partition: i32, batch: Vec<u8>) -> u64 {
    let mut batch = batch;
    let p = b.partition("t", partition).unwrap();
    b.append_records(&p, &mut batch, -1, Some(id))
        .await
        .unwrap()
        .base_offset
}

pub(crate) fn both() -> Vec<(String, i32)> {
    vec![("t".to_string(), 0), ("t".to_string(), 1)]
}

#[tokio::test]
async fn commit_and_abort_write_markers_and_move_the_stable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
    produce(&b, "tx", 0, txn_batch(pid, epoch, 0, 3)).await;
    produce(&b, "tx", 1, txn_batch(pid, epoch, 0, 2)).await;
    let p0 = b.partition("t", 0).unwrap();
    assert_eq!((p0.last_stable_offset(), p0.high_watermark()), (0, 3));
    assert!(p0.read_committed(0, 1 << 20).unwrap().0.region.is_none());

    assert_eq!(b.txns.end(&b, "tx", pid, epoch, true).await, NONE);
    // Data and the commit marker: all stable, nothing aborted.
    assert_eq!((p0.last_stable_offset(), p0.high_watermark()), (4, 4));
    let (r, aborted) = p0.read_committed(0, 1 << 20).unwrap();
    assert!(r.region.is_some() && aborted.is_empty());
    assert_eq!(
        b.txns.describe(&b, "tx").await.unwrap().unwrap().state,
        TxnState::CompleteCommit
    );

    // The next transaction is aborted: read_committed is told which producer's records to
    // drop, from which offset.
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
        NONE
    );
    let first = produce(&b, "tx", 0, txn_batch(pid, epoch, 3, 2)).await;
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, false).await, NONE);
    let (_, aborted) = p0.read_committed(0, 1 << 20).unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (aborted[0].producer_id, aborted[0].first_offset),
        (pid, first)
    );
    assert_eq!(p0.last_stable_offset(), p0.high_watermark());
}

#[tokio::test]
async fn a_new_incarnation_fences_the_old_one_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (pid, old) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert_eq!(
        b.txns.add_partitions(&b, "tx", pid, old, &both()).await,
        NONE
    );
    produce(&b, "tx", 0, txn_batch(pid, old, 0, 1)).await;
    // The new incarnation aborts the open transaction at once and gets a newer epoch.
    let (same, new) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
    assert_eq!(same, pid);
    assert!(new > old + 1, "one bump to fence, one for the new producer");
    let p0 = b.partition("t", 0).unwrap();
    assert_eq!(p0.last_stable_offset(), p0.high_watermark());
    // The zombie can neither end a transaction nor write to the partition.
    assert_eq!(b.txns.end(&b, "tx", pid, old, true).await, PRODUCER_FENCED);
    let mut late = txn_batch(pid, old, 1, 1);
    assert!(p0.append(&mut late, -1).is_err());
}

#[tokio::test]
async fn open_transactions_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let (pid, epoch) = b
        .txns
        .init_producer(&b, "slow", 60_000, None)
        .await
        .unwrap();
    assert_eq!(
        b.txns.add_partitions(&b, "slow", pid, epoch, &both()).await,
        NONE
    );
    produce(&b, "slow", 1, txn_batch(pid, epoch, 0, 4)).await;
    // Explicit times from the transaction's start: no race with the wall clock.
    let start = b.txns.describe(&b, "slow").await.unwrap().unwrap().start_ms;
    b.txns.tick(&b, start + 60_000).await;
    assert_eq!(
        b.txns.describe(&b, "slow").await.unwrap().unwrap().state,
        TxnState::Ongoing
    );
    b.txns.tick(&b, start + 60_000 + 1).await;
    let m = b.txns.describe(&b, "slow").await.unwrap().unwrap();
    assert_eq!(
        (m.state, m.producer_epoch),
        (TxnState::CompleteAbort, epoch + 1)
    );
    let p1 = b.partition("t", 1).unwrap();
    assert_eq!(p1.last_stable_offset(), 5);
    assert_eq!(p1.read_committed(0, 1 << 20).unwrap().1.len(), 1);
}

/// The coordinator persisted PrepareCommit (or PrepareAbort) and died before writing any
/// marker; the restarted one finishes that decision.
async fn restart_between_prepare_and_complete(commit: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (pid, epoch, first) = {
        let b = broker(dir.path()).await;
        let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
        assert_eq!(
            b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
            NONE
        );
        let first = produce(&b, "tx", 0, txn_batch(pid, epoch, 0, 2)).await;
        let mut m = b.txns.describe(&b, "tx").await.unwrap().unwrap();
        m.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        let index = partition_for("tx", 3);
        let mut rec = BatchBuilder::new()
            .record(Record {
                timestamp: 1,
                key: Some(records::key("tx")),
                value: Some(records::value(&m)),
                headers: vec![],
            })
            .build();
        b.partition(TXN_TOPIC, index)
            .unwrap()
            .append(&mut rec, 1)
            .unwrap();
        let p0 = b.partition("t", 0).unwrap();
        assert_eq!(p0.last_stable_offset(), 0, "open before the restart");
        (pid, epoch, first)
    };
    let b = broker(dir.path()).await;
    // The restarted coordinator finishes prepared transactions in its timers' first pass.
    b.txns.tick(&b, now_ms()).await;
    let m = b.txns.describe(&b, "tx").await.unwrap().unwrap();
    let complete = if commit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    assert_eq!(m.state, complete);
    let p0 = b.partition("t", 0).unwrap();
    assert_eq!((p0.last_stable_offset(), p0.high_watermark()), (3, 3));
    // The outcome is the prepared one: committed records are read, aborted ones are
    // dropped from the offset they start at.
    let (r, aborted) = p0.read_committed(0, 1 << 20).unwrap();
    assert!(r.region.is_some());
    let aborted: Vec<(i64, u64)> = aborted
        .iter()
        .map(|a| (a.producer_id, a.first_offset))
        .collect();
    if commit {
        assert_eq!(aborted, vec![]);
    } else {
        assert_eq!(aborted, vec![(pid, first)]);
    }
    let p1 = b.partition("t", 1).unwrap();
    assert_eq!(
        p1.high_watermark(),
        1,
        "a marker even where nothing was written"
    );
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

#[tokio::test]
async fn producer_state_survives_restarts_clean_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let (pid, epoch) = {
        let b = broker(dir.path()).await;
        let (pid, epoch) = b.txns.init_producer(&b, "tx", 60_000, None).await.unwrap();
        assert_eq!(
            b.txns.add_partitions(&b, "tx", pid, epoch, &both()).await,
            NONE
        );
        produce(&b, "tx", 0, txn_batch(pid, epoch, 0, 2)).await;
        b.shutdown();
        (pid, epoch)
    };
    for clean in [true, false] {
        let b = broker(dir.path()).await;
        let p0 = b.partition("t", 0).unwrap();
        // Still open after the restart, and the retried batch is a duplicate.
        assert_eq!(p0.last_stable_offset(), 0, "clean: {clean}");
        let mut retry = txn_batch(pid, epoch, 0, 2);
        assert_eq!(p0.append(&mut retry, -1).unwrap().base_offset, 0);
        assert_eq!(p0.high_watermark(), 2);
        if clean {
            b.shutdown();
        }
    }
    // After an unclean stop with no snapshot newer than the data, the state is rebuilt from
    // the log: remove every snapshot and reopen.
    for e in std::fs::read_dir(dir.path().join("t-0")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "snapshot") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let b = broker(dir.path()).await;
    let p0 = b.partition("t", 0).unwrap();
    assert_eq!(p0.last_stable_offset(), 0);
    assert_eq!(b.txns.end(&b, "tx", pid, epoch, false).await, NONE);
    assert_eq!(p0.last_stable_offset(), 3);
    assert_eq!(p0.read_committed(0, 1 << 20).unwrap().1.len(), 1);
}
