//! The internal topics in a real broker on a temporary directory: created compacted with the
//! configured segment size, an older strom's made compacted with its other overrides kept,
//! and, compacted by the log cleaner, read back after a restart as the same groups and
//! transactional ids.

use std::collections::BTreeMap;

use crate::broker::{Broker, NewTopic};
use crate::config::BrokerConfig;
use crate::group::coordinator::{CommitRequest, OFFSETS_TOPIC};
use crate::group::records::Record;
use crate::txn::coordinator::{TXN_TOPIC, now_ms};
use crate::txn::records;
use crate::txn::state::TxnState;
use strom_metadata::errors::NONE;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A broker on `dir` with one partition per internal topic, segments of `segment_bytes`
/// (`__consumer_offsets`) and twice that (`__transaction_state`), and a topic `t` of 2.
async fn broker(dir: &std::path::Path, segment_bytes: i32) -> Broker {
    let mut config = BrokerConfig {
        log_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    config.groups.offsets_partitions = 1;
    config.txns.partitions = 1;
    config.internal_segment_bytes = (segment_bytes, 2 * segment_bytes);
    let b = Broker::open(config).unwrap();
    if b.topic("t").is_none() {
        create(&b, "t", BTreeMap::new()).await;
    }
    b
}

async fn create(b: &Broker, name: &str, configs: BTreeMap<String, String>) {
    b.create_topic(
        NewTopic {
            name: name.into(),
            partitions: Some(if name == "t" { 2 } else { 1 }),
            replication_factor: None,
            assignments: vec![],
            configs,
        },
        false,
    )
    .await
    .unwrap();
}

fn overrides(b: &Broker, topic: &str) -> BTreeMap<String, String> {
    b.topic(topic)
        .unwrap()
        .config
        .read()
        .unwrap()
        .overrides
        .clone()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every data record of partition 0 of `topic`: (key, value).
type KeyValue = (Vec<u8>, Option<Vec<u8>>);
fn records_of(b: &Broker, topic: &str) -> Vec<KeyValue> {
    let mut out = Vec::new();
    b.partition(topic, 0)
        .unwrap()
        .for_each_batch(|h, batch| {
            if !h.is_control() {
                out.extend(strom_storage::batch::records(batch).map(|r| {
                    (
                        r.key.unwrap_or_default().to_vec(),
                        r.value.map(<[u8]>::to_vec),
                    )
                }));
            }
        })
        .unwrap();
    out
}

/// The last value written under `key` in `topic`: `Some(None)` for a tombstone.
fn last_value(b: &Broker, topic: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
    records_of(b, topic)
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn offset_key(group: &str, partition: i32) -> Vec<u8> {
    Record::Offset {
        group: group.into(),
        topic: "t".into(),
        partition,
        value: None,
    }
    .key()
}

async fn commit(b: &Broker, group: &str, partition: i32, offset: i64) {
    let r = b
        .groups
        .commit(
            b,
            group,
            "",
            None,
            -1,
            vec![CommitRequest {
                topic: "t".into(),
                partition,
                offset,
                leader_epoch: -1,
                metadata: None,
            }],
        )
        .await;
    assert_eq!(r, vec![NONE]);
}

async fn committed(b: &Broker, group: &str) -> Vec<(i32, i64)> {
    b.groups
        .fetch(b, group, None)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(_, p, o)| o.map(|o| (p, o.offset)))
        .collect()
}

#[tokio::test]
async fn internal_topics_are_created_compacted_with_their_segment_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), 4096).await;
    assert_eq!(b.ensure_internal_topic(OFFSETS_TOPIC, 1).await, Ok(1));
    assert_eq!(b.ensure_internal_topic(TXN_TOPIC, 1).await, Ok(1));
    assert_eq!(
        overrides(&b, OFFSETS_TOPIC),
        map(&[("cleanup.policy", "compact"), ("segment.bytes", "4096")])
    );
    assert_eq!(
        overrides(&b, TXN_TOPIC),
        map(&[
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "1"),
            ("segment.bytes", "8192")
        ])
    );
    for (topic, segment) in [(OFFSETS_TOPIC, 4096), (TXN_TOPIC, 8192)] {
        let c = b.partition(topic, 0).unwrap().log().config();
        assert!(c.cleanup_compact && !c.cleanup_delete, "{topic}");
        assert_eq!(c.segment_bytes, segment, "{topic}");
    }
}

/// An older strom made the internal topics with `retention.ms=-1` and no cleanup.policy:
/// they get `cleanup.policy=compact` at start (the periodic offsets check) or on first use,
/// their other overrides kept, and it stays over a restart.
#[tokio::test]
async fn an_older_strom_s_internal_topics_are_made_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let old_offsets = map(&[("retention.ms", "-1"), ("segment.bytes", "104857600")]);
    let old_txns = map(&[
        ("min.insync.replicas", "1"),
        ("retention.ms", "-1"),
        ("segment.bytes", "104857600"),
    ]);
    {
        let b = broker(dir.path(), 4096).await;
        create(&b, OFFSETS_TOPIC, old_offsets.clone()).await;
        create(&b, TXN_TOPIC, old_txns.clone()).await;
        assert!(
            !b.partition(OFFSETS_TOPIC, 0)
                .unwrap()
                .log()
                .config()
                .cleanup_compact
        );
    }
    let compacted = |mut m: BTreeMap<String, String>| {
        m.insert("cleanup.policy".into(), "compact".into());
        m
    };
    {
        let b = broker(dir.path(), 4096).await;
        // First use: FindCoordinator and the coordinators' writes ensure the topic.
        assert_eq!(b.ensure_internal_topic(TXN_TOPIC, 1).await, Ok(1));
        assert_eq!(overrides(&b, TXN_TOPIC), compacted(old_txns.clone()));
        // At start: the periodic offsets check.
        b.maintain_groups().await;
        assert_eq!(overrides(&b, OFFSETS_TOPIC), compacted(old_offsets.clone()));
        for topic in [OFFSETS_TOPIC, TXN_TOPIC] {
            let c = b.partition(topic, 0).unwrap().log().config();
            assert!(c.cleanup_compact && !c.cleanup_delete, "{topic}");
        }
        // One attempt each; none once compacted.
        let attempts = b.internal_topic_upgrades.lock().unwrap().clone();
        assert_eq!(attempts.len(), 2);
        assert_eq!(b.ensure_internal_topic(OFFSETS_TOPIC, 1).await, Ok(1));
        b.maintain_groups().await;
        assert_eq!(*b.internal_topic_upgrades.lock().unwrap(), attempts);
    }
    let b = broker(dir.path(), 4096).await;
    assert_eq!(overrides(&b, OFFSETS_TOPIC), compacted(old_offsets));
    assert_eq!(overrides(&b, TXN_TOPIC), compacted(old_txns));
    assert!(b.internal_topic_upgrades.lock().unwrap().is_empty());
    b.maintain_groups().await;
    assert!(
        b.internal_topic_upgrades.lock().unwrap().is_empty(),
        "no attempt"
    );
}

/// Cleans every compacted log until none is due, as the cleaner threads do, at `now_ms`.
fn clean_all(b: &Broker, now_ms: i64) {
    let mut passes = 0;
    while b.clean_filthiest_log(now_ms) {
        passes += 1;
        assert!(passes < 100, "the cleaner never runs out of work");
    }
}

/// Expiry writes tombstones (expired offsets and the forgotten group, an expired
/// transactional id); the log cleaner removes what they and later records overwrote, then the
/// tombstones past `delete.retention.ms`; after a restart the coordinators read back the same
/// state from the compacted partitions (gaps, emptied batches) and go on from it.
#[tokio::test]
async fn compacted_internal_topics_read_back_the_same_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (pid, epoch) = {
        let b = broker(dir.path(), 4096).await;
        // "old" commits, then expires: tombstones for its offset and its group.
        commit(&b, "old", 0, 5).await;
        b.groups.expire(&b, (now_ms() + 8 * DAY_MS) as u64).await;
        assert_eq!(
            last_value(&b, OFFSETS_TOPIC, &offset_key("old", 0)),
            Some(None)
        );
        let group_key = Record::Group {
            group: "old".into(),
            value: None,
        }
        .key();
        assert_eq!(last_value(&b, OFFSETS_TOPIC, &group_key), Some(None));
        // Transactional id "old" expires: a tombstone.
        let (old_pid, _) = b.txns.init_producer(&b, "old", 60_000, None).await.unwrap();
        b.txns
            .with_metadata(&b, "old", |m| m.last_update_ms = 0)
            .await
            .unwrap();
        b.txns.tick(&b, now_ms()).await;
        assert!(b.txns.describe(&b, "old").await.unwrap().is_none());
        assert_eq!(last_value(&b, TXN_TOPIC, &records::key("old")), Some(None));
        // Many writes over the same keys.
        for i in 0..1500 {
            commit(&b, "busy", i % 2, i as i64).await;
        }
        let (pid, epoch) = b
            .txns
            .init_producer(&b, "busy", 60_000, None)
            .await
            .unwrap();
        assert_ne!(pid, old_pid);
        let both = vec![("t".to_string(), 0), ("t".to_string(), 1)];
        for i in 0..200 {
            assert_eq!(
                b.txns.add_partitions(&b, "busy", pid, epoch, &both).await,
                NONE
            );
            assert_eq!(b.txns.end(&b, "busy", pid, epoch, i % 4 != 0).await, NONE);
        }
        let written = (
            records_of(&b, OFFSETS_TOPIC).len(),
            records_of(&b, TXN_TOPIC).len(),
        );
        assert!(written.0 > 1500 && written.1 > 600, "{written:?}");
        clean_all(&b, now_ms());
        // Past delete.retention.ms, the tombstones go too.
        clean_all(&b, now_ms() + 2 * DAY_MS);
        let kept = (
            records_of(&b, OFFSETS_TOPIC).len(),
            records_of(&b, TXN_TOPIC).len(),
        );
        // What is left: the latest records, and what the active segment holds.
        assert!(
            kept.0 < written.0 / 10 && kept.1 < written.1 / 10,
            "written {written:?}, kept {kept:?}"
        );
        let offsets_log = records_of(&b, OFFSETS_TOPIC);
        assert!(offsets_log.iter().all(|(k, _)| *k != offset_key("old", 0)));
        assert!(offsets_log.iter().all(|(k, _)| *k != group_key));
        assert!(
            records_of(&b, TXN_TOPIC)
                .iter()
                .all(|(k, _)| *k != records::key("old"))
        );
        (pid, epoch)
    };
    let b = broker(dir.path(), 4096).await;
    assert_eq!(committed(&b, "busy").await, vec![(0, 1498), (1, 1499)]);
    assert_eq!(committed(&b, "old").await, vec![]);
    let groups: Vec<String> = b.groups.list().await.into_iter().map(|g| g.0).collect();
    assert_eq!(groups, vec!["busy"]);
    let m = b.txns.describe(&b, "busy").await.unwrap().unwrap();
    assert_eq!(
        (m.producer_id, m.producer_epoch, m.state),
        (pid, epoch, TxnState::CompleteCommit)
    );
    assert!(b.txns.describe(&b, "old").await.unwrap().is_none());
    // Both go on from there.
    commit(&b, "busy", 0, 5000).await;
    assert_eq!(committed(&b, "busy").await, vec![(0, 5000), (1, 1499)]);
    let (pid2, epoch2) = b
        .txns
        .init_producer(&b, "busy", 60_000, None)
        .await
        .unwrap();
    assert_eq!((pid2, epoch2), (pid, epoch + 1));
    let both = vec![("t".to_string(), 0)];
    assert_eq!(
        b.txns.add_partitions(&b, "busy", pid2, epoch2, &both).await,
        NONE
    );
    assert_eq!(b.txns.end(&b, "busy", pid2, epoch2, true).await, NONE);
}
