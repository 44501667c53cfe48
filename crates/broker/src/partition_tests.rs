//! A partition's transaction bookkeeping on its own log: the last stable offset and the
//! aborted-transaction index across deletions and unclean restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_storage::batch::{BatchBuilder, Record};

use crate::config::BrokerConfig;
use crate::partition::Partition;
use crate::topic_config::TopicConfig;

fn open(dir: &std::path::Path, overrides: &[(&str, &str)]) -> Partition {
    let overrides: BTreeMap<String, String> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = TopicConfig::new(&BrokerConfig::default(), overrides).unwrap();
    Partition::open(dir, "t", 0, 0, &config).unwrap()
}

fn records(pid: i64, seq: i32, n: usize, transactional: bool) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b = b.record(Record {
            timestamp: 1,
            key: None,
            value: Some(format!("value {i} of a batch from {pid}").into_bytes()),
            headers: vec![],
        });
    }
    b.producer_id = pid;
    b.producer_epoch = 0;
    b.base_sequence = seq;
    b.transactional = transactional;
    b.build()
}

/// Opens producer `pid`'s transaction here as a verified first batch does.
fn begin(p: &Partition, pid: i64, n: usize) {
    let guard = p.start_verification(pid);
    p.append_verified(&mut records(pid, 0, n, true), -1, Some(guard))
        .unwrap();
}

#[test]
fn the_stable_offset_never_falls_below_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), &[]);
    begin(&p, 1, 2);
    p.append(&mut records(-1, -1, 3, false), -1).unwrap();
    assert_eq!(p.last_stable_offset(), 0);
    // DeleteRecords is bounded by the high watermark, not the stable offset: it may take
    // the start of the open transaction with it.
    assert_eq!(p.delete_records(4).unwrap(), 4);
    assert_eq!(p.last_stable_offset(), 4);
    let (r, aborted) = p.read_committed(4, 1 << 20).unwrap();
    assert!(r.region.is_none() && aborted.is_empty());
    p.write_marker(1, 0, false, 0).unwrap();
    assert_eq!(p.last_stable_offset(), 6);
}

#[test]
fn aborted_transactions_are_reindexed_after_an_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let segment = [("segment.bytes", "1024")];
    let marker = {
        let p = open(dir.path(), &segment);
        begin(&p, 1, 2);
        let marker = p.write_marker(1, 0, false, 0).unwrap();
        // Roll past the marker's segment: the roll snapshots the producer state.
        while p.log().segment_count() < 3 {
            p.append(&mut records(-1, -1, 4, false), -1).unwrap();
        }
        marker
    };
    // A power loss before the rolled segments were fsynced: their recovery point was not
    // checkpointed and the marker segment's `.txnindex` never reached the disk, while the
    // newer producer snapshot (fsynced when written) did.
    std::fs::write(dir.path().join("recovery-point-checkpoint"), "0\n0\n").unwrap();
    std::fs::remove_file(dir.path().join("00000000000000000000.txnindex")).unwrap();
    assert!(
        std::fs::read_dir(dir.path()).unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".snapshot") && !name.starts_with("00000000000000000000")
        }),
        "a snapshot after the marker's segment"
    );
    let p = open(dir.path(), &segment);
    let (r, aborted) = p.read_committed(0, 1 << 20).unwrap();
    assert!(r.region.is_some());
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(
        (
            aborted[0].producer_id,
            aborted[0].first_offset,
            aborted[0].last_offset
        ),
        (1, 0, marker)
    );
}

#[test]
fn a_fetch_hears_only_of_aborts_within_what_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), &[]);
    for pid in 1..=3 {
        begin(&p, pid, 2);
        p.write_marker(pid, 0, false, 0).unwrap();
    }
    // Each transaction spans offsets 3k..3k+1 and its marker 3k+2. A fetch of one batch
    // returns offsets 0-1: only producer 1's abort concerns it.
    let (r, aborted) = p.read_committed(0, 1).unwrap();
    assert_eq!(r.region.unwrap().next_offset, 2);
    let pids: Vec<i64> = aborted.iter().map(|t| t.producer_id).collect();
    assert_eq!(pids, vec![1]);
    let (_, aborted) = p.read_committed(0, 1 << 20).unwrap();
    assert_eq!(aborted.len(), 3);
}

#[test]
fn a_stale_coordinator_cannot_write_markers_even_after_a_restart() {
    use crate::partition::AppendError;
    use strom_storage::producer_state::SequenceError;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let p = open(dir.path(), &[]);
        begin(&p, 1, 1);
        p.write_marker(1, 0, false, 5).unwrap();
        assert!(matches!(
            p.write_marker(1, 0, true, 4),
            Err(AppendError::Sequence(SequenceError::CoordinatorFenced {
                current: 5
            }))
        ));
        assert_eq!(p.producers()[0].coordinator_epoch, 5);
        // Unclean: the state comes back from the log itself.
    }
}

#[test]
fn an_unclean_stop_replays_from_the_newest_snapshot_it_can_trust() {
    let dir = tempfile::tempdir().unwrap();
    let segment = [("segment.bytes", "1024")];
    let (active, snapshot) = {
        let p = open(dir.path(), &segment);
        begin(&p, 1, 2);
        p.write_marker(1, 0, false, 0).unwrap();
        while p.log().segment_count() < 4 {
            p.append(&mut records(-1, -1, 4, false), -1).unwrap();
        }
        let active = p.log().active_segment_base();
        (active, p.log().producer_snapshots().unwrap()[0].0)
    };
    assert!(
        snapshot > active,
        "taken after the active segment's first append"
    );
    // The rolled segments were fsynced: recovery starts at the active segment, whose only
    // batches below the snapshot are plain records. The snapshot stands.
    let checkpoint = dir.path().join("recovery-point-checkpoint");
    std::fs::write(&checkpoint, format!("0\n{active}\n")).unwrap();
    let p = open(dir.path(), &segment);
    assert_eq!(p.replayed_from(), snapshot);
    assert_eq!(p.read_committed(0, 1 << 20).unwrap().1.len(), 1);
    drop(p);
    // Recovery from an earlier segment: the snapshot covers unsynced index entries. (The
    // recovery point the open queued is written first.)
    strom_storage::settle().unwrap();
    std::fs::write(&checkpoint, "0\n0\n").unwrap();
    let p = open(dir.path(), &segment);
    assert!(p.replayed_from() < active, "{}", p.replayed_from());
    assert_eq!(p.read_committed(0, 1 << 20).unwrap().1.len(), 1);
}

/// A storage failure reaches the server log at ERROR with the partition, the path and the
/// OS error, not only the client's KAFKA_STORAGE_ERROR. Before, a full disk failed every
/// produce and the log said nothing.
#[test]
fn a_storage_failure_is_logged_with_partition_path_and_os_error() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();

    let dir = tempfile::tempdir().unwrap();
    // Every batch rolls a new segment, which cannot be created once the directory is gone.
    let p = open(dir.path(), &[("segment.bytes", "100")]);
    p.append(&mut records(-1, -1, 1, false), 1).unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let failed = tracing::subscriber::with_default(subscriber, || {
        p.append(&mut records(-1, -1, 1, false), 1)
    });
    let Err(crate::partition::AppendError::Storage(e)) = failed else {
        panic!("expected a storage error, got {failed:?}");
    };
    assert_eq!(
        crate::errors::from_storage(&e),
        crate::errors::KAFKA_STORAGE_ERROR
    );
    let logged = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(
        logged.contains("topic=\"t\"") || logged.contains("topic=t"),
        "{logged}"
    );
    assert!(logged.contains("partition=0"), "{logged}");
    assert!(
        logged.contains(&dir.path().display().to_string()),
        "{logged}"
    );
    assert!(logged.contains("No such file"), "{logged}");
}

/// The high watermark survives a restart as it was, not as the log end: with a follower
/// that never fetched, records above it were never committed and stay hidden after the
/// restart; alone, the leader's log end is committed.
#[test]
fn the_high_watermark_is_checkpointed_not_guessed_at_restart() {
    use strom_metadata::image::PartitionInfo;
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), &[]);
    let info = |replicas: Vec<i32>| PartitionInfo {
        isr: replicas.clone().into(),
        replicas: replicas.into(),
        leader: 0,
        leader_epoch: 1,
        partition_epoch: 1,
        ..PartitionInfo::default()
    };
    p.make_leader(&info(vec![0]));
    p.append(&mut records(-1, -1, 2, false), 1).unwrap();
    assert_eq!(p.high_watermark(), 2);
    // A follower joins the replicas and the ISR; it never fetches.
    p.make_leader(&PartitionInfo {
        leader_epoch: 2,
        ..info(vec![0, 7])
    });
    p.append(&mut records(-1, -1, 3, false), 1).unwrap();
    assert_eq!(p.high_watermark(), 2, "the follower has nothing of them");
    p.close().unwrap();
    drop(p);

    let p = open(dir.path(), &[]);
    assert_eq!(p.log().log_end_offset(), 5);
    assert_eq!(p.high_watermark(), 2);
    // Leading alone again, everything is committed.
    p.make_leader(&PartitionInfo {
        leader_epoch: 3,
        ..info(vec![0])
    });
    assert_eq!(p.high_watermark(), 5);
}

/// An acks=all write waits for the leader of the epoch it was written in: when leadership
/// moves, the wait ends with NotLeader at once, and the follower's high watermark passing
/// the offset later (over the new leader's records) does not turn it into an ack.
#[tokio::test]
async fn a_write_waiting_for_the_isr_ends_when_leadership_moves() {
    use crate::partition::HighWatermarkWait;
    use strom_metadata::image::PartitionInfo;
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(open(dir.path(), &[]));
    let info = PartitionInfo {
        isr: vec![0, 7].into(),
        replicas: vec![0, 7].into(),
        leader: 0,
        leader_epoch: 1,
        partition_epoch: 1,
        ..PartitionInfo::default()
    };
    p.make_leader(&info);
    let a = p.append(&mut records(-1, -1, 3, false), -1).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let waiting = tokio::spawn({
        let p = p.clone();
        async move {
            p.wait_for_high_watermark(a.last_offset + 1, 1, deadline)
                .await
        }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "the follower has not fetched");
    p.make_follower(&PartitionInfo {
        leader: 7,
        leader_epoch: 2,
        ..info.clone()
    });
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("woken by the change of leader")
        .unwrap();
    assert_eq!(ended, HighWatermarkWait::NotLeader);
    p.set_follower_high_watermark(3);
    assert_eq!(
        p.wait_for_high_watermark(3, 1, deadline).await,
        HighWatermarkWait::NotLeader
    );
    // Leading again in a later epoch does not make the old write acknowledged either.
    p.make_leader(&PartitionInfo {
        leader_epoch: 3,
        isr: vec![0].into(),
        ..info
    });
    assert_eq!(
        p.wait_for_high_watermark(3, 1, deadline).await,
        HighWatermarkWait::NotLeader
    );
}

/// A follower may read an append before its writer has told the leader state (the writer
/// is between the log and the state): its next fetch, from past what the state knows, is
/// taken, not refused as out of range (a follower would truncate on that answer).
#[test]
fn a_fetch_past_an_append_the_leader_state_has_not_seen_is_taken() {
    use strom_metadata::image::PartitionInfo;
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), &[]);
    p.make_leader(&PartitionInfo {
        isr: vec![0, 7].into(),
        replicas: vec![0, 7].into(),
        leader: 0,
        leader_epoch: 1,
        partition_epoch: 1,
        ..PartitionInfo::default()
    });
    // Straight to the log: the leader state has not seen these two records.
    p.log().append(&mut records(-1, -1, 2, false), 1).unwrap();
    assert_eq!(p.on_follower_fetch(7, 2), Ok(()));
    assert_eq!(p.high_watermark(), 2, "the follower has both: committed");
}

/// A replica dropped from this node (a reassignment moved it away) ends the acks=all
/// writes waiting on it at once: they are not acknowledged here, and the client retries
/// at the new leader instead of waiting out its request timeout.
#[tokio::test]
async fn a_dropped_replica_ends_the_writes_waiting_for_its_isr() {
    use crate::partition::HighWatermarkWait;
    use strom_metadata::image::PartitionInfo;
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(open(dir.path(), &[]));
    p.make_leader(&PartitionInfo {
        isr: vec![0, 7].into(),
        replicas: vec![0, 7].into(),
        leader: 0,
        leader_epoch: 1,
        partition_epoch: 1,
        ..PartitionInfo::default()
    });
    let a = p.append(&mut records(-1, -1, 3, false), -1).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let waiting = tokio::spawn({
        let p = p.clone();
        async move {
            p.wait_for_high_watermark(a.last_offset + 1, 1, deadline)
                .await
        }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "the follower has not fetched");
    p.drop_replica();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("woken when the replica is dropped")
        .unwrap();
    assert_eq!(ended, HighWatermarkWait::NotLeader);
}

/// A sole replica keeps no leader state (most partitions of a single node): what it writes
/// is committed at once, a fetch from another node is refused, and a replica added by a
/// reassignment in the same leader epoch is then waited for like any follower.
#[test]
fn a_sole_replica_commits_at_once_and_tracks_a_replica_added_later() {
    use strom_metadata::image::PartitionInfo;
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), &[]);
    let alone = PartitionInfo {
        isr: vec![0].into(),
        replicas: vec![0].into(),
        leader: 0,
        leader_epoch: 1,
        partition_epoch: 1,
        ..PartitionInfo::default()
    };
    p.make_leader(&alone);
    assert!(p.leading.lock().unwrap().is_none());
    p.append(&mut records(-1, -1, 3, false), -1).unwrap();
    assert_eq!(
        p.high_watermark(),
        3,
        "alone in the ISR: committed as written"
    );
    assert_eq!(
        p.on_follower_fetch(7, 3),
        Err(crate::errors::NOT_LEADER_OR_FOLLOWER)
    );
    assert_eq!(p.isr_change(i64::MAX), None);

    // A reassignment adds node 7 (not in the ISR yet), same leader epoch.
    p.make_leader(&PartitionInfo {
        replicas: vec![0, 7].into(),
        reassignment: Some(Box::new(strom_metadata::image::Reassignment {
            adding: vec![7],
            removing: vec![],
        })),
        partition_epoch: 2,
        ..alone.clone()
    });
    p.append(&mut records(-1, -1, 2, false), -1).unwrap();
    assert_eq!(p.high_watermark(), 5, "7 is not in the ISR: not waited for");
    assert_eq!(p.on_follower_fetch(7, 5), Ok(()));
    let (change, epoch) = p.isr_change(strom_storage::clock::now_ms()).unwrap();
    assert_eq!(
        (change.isr, change.partition_epoch, epoch),
        (vec![0, 7], 2, 1)
    );

    // Back to one replica: the state goes, the log end is committed.
    p.make_leader(&PartitionInfo {
        partition_epoch: 3,
        ..alone
    });
    assert!(p.leading.lock().unwrap().is_none());
    assert_eq!(p.high_watermark(), 5);
}
