//! The group coordinator against the in-memory host: offsets persist, reload and expire
//! (as tombstones), and load back the same once compacted; shards load on election and go
//! on resignation.

use super::coordinator::*;
use super::state::JoinRequest;
use crate::fake::{Node, Store};
use strom_metadata::TopicPartition;
use strom_metadata::errors::NONE;

/// A store with topic `t` of 4 partitions.
fn store() -> Store {
    Store::with_topic(4)
}

fn broker(store: &Store) -> Node {
    Node::default_on(store)
}

async fn commit(b: &Node, group: &str, partition: i32, offset: i64) -> i16 {
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
                leader_epoch: 3,
                metadata: Some("m".into()),
            }],
        )
        .await;
    r[0]
}

async fn committed(b: &Node, group: &str, partition: i32) -> Option<i64> {
    b.groups
        .fetch(b, group, Some(&[("t".to_string(), vec![partition])]))
        .await
        .unwrap()[0]
        .2
        .as_ref()
        .map(|o| o.offset)
}

#[tokio::test]
async fn simple_commits_persist_across_restarts() {
    let dir = store();
    {
        let b = broker(&dir);
        assert_eq!(commit(&b, "simple", 0, 10).await, NONE);
        assert_eq!(commit(&b, "simple", 1, 20).await, NONE);
        assert_eq!(commit(&b, "simple", 0, 15).await, NONE);
        assert_eq!(commit(&b, "other", 2, 7).await, NONE);
        // Unknown partitions and oversized metadata are refused per partition.
        let r = b
            .groups
            .commit(
                &b,
                "simple",
                "",
                None,
                -1,
                vec![
                    CommitRequest {
                        topic: "nope".into(),
                        partition: 0,
                        offset: 1,
                        leader_epoch: -1,
                        metadata: None,
                    },
                    CommitRequest {
                        topic: "t".into(),
                        partition: 3,
                        offset: 1,
                        leader_epoch: -1,
                        metadata: Some("x".repeat(5000)),
                    },
                ],
            )
            .await;
        assert_eq!(
            r,
            vec![
                strom_metadata::errors::UNKNOWN_TOPIC_OR_PARTITION,
                OFFSET_METADATA_TOO_LARGE
            ]
        );
        assert_eq!(
            b.store.0.lock().unwrap().topics.get(OFFSETS_TOPIC),
            Some(&3)
        );
    }
    let b = broker(&dir);
    assert_eq!(committed(&b, "simple", 0).await, Some(15));
    assert_eq!(committed(&b, "simple", 1).await, Some(20));
    assert_eq!(committed(&b, "simple", 2).await, None);
    assert_eq!(committed(&b, "other", 2).await, Some(7));
    let all = b.groups.fetch(&b, "simple", None).await.unwrap();
    assert_eq!(all.len(), 2);
    let o = all[0].2.clone().unwrap();
    assert_eq!((o.leader_epoch, o.metadata.as_str()), (3, "m"));
    let names: Vec<String> = b.groups.list().await.into_iter().map(|g| g.0).collect();
    assert_eq!(names, vec!["other", "simple"]);
}

#[tokio::test]
async fn empty_groups_offsets_expire_and_the_group_is_forgotten() {
    let dir = store();
    let b = broker(&dir);
    commit(&b, "old", 0, 5).await;
    let day = 24 * 3600 * 1000;
    b.groups.expire(&b, now_ms() + day).await;
    assert_eq!(
        committed(&b, "old", 0).await,
        Some(5),
        "within offsets.retention.minutes"
    );
    b.groups.expire(&b, now_ms() + 8 * day).await;
    assert_eq!(committed(&b, "old", 0).await, None);
    assert!(b.groups.list().await.is_empty());
    drop(b);
    // The tombstones were persisted: nothing comes back.
    let b = broker(&dir);
    assert_eq!(committed(&b, "old", 0).await, None);
}

#[tokio::test]
async fn delete_groups_and_offsets() {
    let dir = store();
    let b = broker(&dir);
    commit(&b, "g", 0, 1).await;
    commit(&b, "g", 1, 2).await;
    let (e, per) = b.groups.delete_offsets(&b, "g", &[("t".into(), 0)]).await;
    assert_eq!((e, per), (NONE, vec![NONE]));
    assert_eq!(committed(&b, "g", 0).await, None);
    assert_eq!(committed(&b, "g", 1).await, Some(2));
    assert_eq!(
        b.groups.delete_offsets(&b, "none", &[]).await.0,
        GROUP_ID_NOT_FOUND
    );
    assert_eq!(b.groups.delete(&b, "g").await, NONE);
    assert_eq!(b.groups.delete(&b, "g").await, GROUP_ID_NOT_FOUND);
    assert_eq!(committed(&b, "g", 1).await, None);
}

#[tokio::test]
async fn active_groups_refuse_deletion_and_simple_commits() {
    let dir = store();
    let b = broker(&dir);
    let join = |member: &str| JoinRequest {
        member_id: member.into(),
        client_id: "c".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![(
            "range".into(),
            vec![0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 0],
        )],
        require_known_member_id: true,
        ..Default::default()
    };
    let r = b.groups.join(&b, "active", join("")).await;
    assert_eq!(r.error, super::state::MEMBER_ID_REQUIRED);
    let r = b.groups.join(&b, "active", join(&r.member_id)).await;
    assert_eq!((r.error, r.generation), (NONE, 1));
    assert_eq!(b.groups.delete(&b, "active").await, NON_EMPTY_GROUP);
    assert_eq!(
        commit(&b, "active", 0, 1).await,
        super::state::UNKNOWN_MEMBER_ID
    );
    // The group subscribes to t: its offsets cannot be deleted while it does.
    let sync = super::state::SyncRequest {
        member_id: &r.member_id,
        generation: 1,
        assignments: vec![(r.member_id.clone(), vec![])],
        ..Default::default()
    };
    assert_eq!(b.groups.sync(&b, "active", sync).await.error, NONE);
    let (e, per) = b
        .groups
        .delete_offsets(&b, "active", &[("t".into(), 0)])
        .await;
    assert_eq!((e, per), (NONE, vec![GROUP_SUBSCRIBED_TO_TOPIC]));
    let desc = b.groups.describe(&b, "active").await.unwrap().unwrap();
    assert_eq!(desc.state, super::state::State::Stable);
    assert_eq!(desc.protocol, "range");
    assert_eq!(desc.members.len(), 1);
    // The group's generation survives a restart of the coordinator.
    drop(b);
    let b = broker(&dir);
    let desc = b.groups.describe(&b, "active").await.unwrap().unwrap();
    assert_eq!(desc.members.len(), 1);
    assert_eq!(
        b.groups
            .heartbeat(&b, "active", &r.member_id, None, 1)
            .await,
        NONE
    );
}

/// The last record of `key` in `tp`: `Some(None)` for a tombstone.
fn last_value(b: &Node, tp: &TopicPartition, key: &[u8]) -> Option<Option<Vec<u8>>> {
    b.partition(tp, |p| {
        p.records()
            .into_iter()
            .rev()
            .find(|r| r.key == key)
            .map(|r| r.value)
    })
}

fn offset_key(group: &str, partition: i32) -> Vec<u8> {
    super::records::Record::Offset {
        group: group.into(),
        topic: "t".into(),
        partition,
        value: None,
    }
    .key()
}

fn group_key(group: &str) -> Vec<u8> {
    super::records::Record::Group {
        group: group.into(),
        value: None,
    }
    .key()
}

type Snapshot = (Vec<Vec<(i32, Option<i64>)>>, Vec<String>);

/// Each group's offsets (by partition), and the groups listed: what a restart must find.
async fn snapshot(b: &Node, groups: &[&str]) -> Snapshot {
    let mut offsets = Vec::new();
    for g in groups {
        let fetched = b.groups.fetch(b, g, None).await.unwrap();
        offsets.push(
            fetched
                .into_iter()
                .map(|(_, p, o)| (p, o.map(|o| o.offset)))
                .collect(),
        );
    }
    let mut listed: Vec<String> = b.groups.list().await.into_iter().map(|g| g.0).collect();
    listed.sort();
    (offsets, listed)
}

/// Expired offsets, forgotten groups and deleted groups are written as tombstones, so that
/// compaction can remove them; a partition compacted as the log cleaner does (latest record
/// per key, aborted transactional offsets and tombstones gone, offset gaps, empty batches
/// left by transactions) loads back as the same groups and offsets.
#[tokio::test]
async fn deletions_are_tombstones_and_a_compacted_partition_loads_the_same() {
    use crate::host::{MarkerWriter, Markers};
    let dir = store();
    let b = broker(&dir);
    // "old" expires, "deleted" is deleted: tombstones for their offsets and group.
    assert_eq!(commit(&b, "old", 0, 5).await, NONE);
    assert_eq!(commit(&b, "deleted", 1, 6).await, NONE);
    assert_eq!(b.groups.delete(&b, "deleted").await, NONE);
    b.groups.expire(&b, now_ms() + 8 * 24 * 3600 * 1000).await;
    for g in ["old", "deleted"] {
        let tp = TopicPartition::new(OFFSETS_TOPIC, super::records::partition_for(g, 3));
        let p = if g == "old" { 0 } else { 1 };
        assert_eq!(last_value(&b, &tp, &offset_key(g, p)), Some(None), "{g}");
        assert_eq!(last_value(&b, &tp, &group_key(g)), Some(None), "{g}");
    }
    // "busy" commits many times; "txg" gets a plain commit, a committed transactional one
    // and an aborted one (which must not win over the plain commit it follows).
    for i in 0..1000 {
        assert_eq!(commit(&b, "busy", i % 2, i as i64).await, NONE);
    }
    assert_eq!(commit(&b, "txg", 3, 1).await, NONE);
    let txg = TopicPartition::new(OFFSETS_TOPIC, super::records::partition_for("txg", 3));
    for (pid, partition, offset, commit) in [(7, 2, 42, true), (8, 3, 99, false)] {
        let c = super::txn_offsets::TxnCommit {
            group_id: "txg",
            producer_id: pid,
            producer_epoch: 0,
            member_id: "",
            instance_id: None,
            generation: -1,
        };
        let offsets = vec![CommitRequest {
            topic: "t".into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
        }];
        assert_eq!(b.groups.txn_commit(&b, &c, offsets, None).await, vec![NONE]);
        let m = Markers {
            producer_id: pid,
            producer_epoch: 0,
            commit,
            coordinator_epoch: 0,
            partitions: vec![txg.clone()],
        };
        assert!(b.write_markers(&m).await.is_empty());
    }
    let groups = ["old", "deleted", "busy", "txg"];
    let before = snapshot(&b, &groups).await;
    assert_eq!(before.0[0], vec![]);
    assert_eq!(before.0[1], vec![]);
    assert_eq!(before.0[2], vec![(0, Some(998)), (1, Some(999))]);
    assert_eq!(before.0[3], vec![(2, Some(42)), (3, Some(1))]);
    assert_eq!(before.1, vec!["busy", "txg"]);
    let written: usize = (0..3)
        .map(|p| {
            b.partition(&TopicPartition::new(OFFSETS_TOPIC, p), |p| {
                p.records().len()
            })
        })
        .sum();
    for p in 0..3 {
        b.compact(&TopicPartition::new(OFFSETS_TOPIC, p));
    }
    let kept: usize = (0..3)
        .map(|p| {
            b.partition(&TopicPartition::new(OFFSETS_TOPIC, p), |p| {
                p.records().len()
            })
        })
        .sum();
    assert!(
        written > 1000 && kept <= 6,
        "{written} records, {kept} kept"
    );
    for g in ["old", "deleted"] {
        let tp = TopicPartition::new(OFFSETS_TOPIC, super::records::partition_for(g, 3));
        assert_eq!(
            last_value(&b, &tp, &group_key(g)),
            None,
            "{g}: tombstone gone"
        );
    }
    // What the load walks: offset gaps, and the aborted transaction's batch and its marker
    // left without records.
    let (mut gaps, mut empty) = (0, 0);
    for p in 0..3 {
        b.partition(&TopicPartition::new(OFFSETS_TOPIC, p), |p| {
            let mut next = 0;
            for (base, batch) in &p.batches {
                let h = strom_storage::batch::BatchHeader::parse(batch).unwrap();
                gaps += usize::from(*base != next);
                empty += usize::from(h.records_count == 0);
                next = base + h.offset_count();
            }
        });
    }
    assert!(gaps > 0 && empty >= 2, "{gaps} gaps, {empty} empty batches");
    drop(b);
    let b = broker(&dir);
    assert_eq!(snapshot(&b, &groups).await, before);
    // The groups go on from there.
    assert_eq!(commit(&b, "busy", 0, 2000).await, NONE);
    assert_eq!(committed(&b, "busy", 0).await, Some(2000));
    assert_eq!(committed(&b, "busy", 1).await, Some(999));
}

fn join_req(member: &str) -> JoinRequest {
    JoinRequest {
        member_id: member.into(),
        client_id: "c".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), vec![])],
        require_known_member_id: true,
        ..Default::default()
    }
}

/// A shard is served between its election and its resignation: after it, requests get
/// NOT_COORDINATOR, and a JoinGroup parked in it is answered NOT_COORDINATOR at once (its
/// member looks for the new coordinator instead of waiting out its rebalance timeout).
#[tokio::test]
async fn resignation_hands_the_groups_over_and_a_new_election_reads_them_back() {
    let dir = store();
    let b = std::sync::Arc::new(broker(&dir));
    assert_eq!(commit(&b, "g", 0, 42).await, NONE);
    // Two members: the second one's join waits for the first to rejoin.
    let first = b.groups.join(&*b, "g", join_req("")).await;
    let first = b.groups.join(&*b, "g", join_req(&first.member_id)).await;
    assert_eq!((first.error, first.generation), (NONE, 1));
    let second = b.groups.join(&*b, "g", join_req("")).await;
    let parked = {
        let b = b.clone();
        let id = second.member_id.clone();
        tokio::spawn(async move { b.groups.join(&*b, "g", join_req(&id)).await })
    };
    let partition = super::records::partition_for("g", 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while b.groups.describe(&*b, "g").await.unwrap().unwrap().state
        != super::state::State::PreparingRebalance
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the join never parked"
        );
        tokio::task::yield_now().await;
    }
    // A request holds the group's lock through the resignation: the parked join is
    // answered all the same.
    let shard = b.groups.shards.get(partition).unwrap();
    let held = b.groups.entry(&shard, "g", false).await.unwrap();
    b.groups.on_resignation(partition, None);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), parked)
        .await
        .expect("the parked join is answered")
        .unwrap();
    assert_eq!(answer.error, NOT_COORDINATOR_CODE);
    drop(held);
    // A request that found the shard before the resignation finds no group in it (it
    // used to loop for ever on the removed group).
    let late = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        b.groups.entry(&shard, "g", true),
    )
    .await
    .expect("no spin");
    assert!(late.is_none());
    tokio::time::timeout(std::time::Duration::from_secs(5), b.groups.maintain(&*b))
        .await
        .expect("the periodic check ends");
    assert_eq!(
        b.groups
            .heartbeat(&*b, "g", &first.member_id, None, 1)
            .await,
        NOT_COORDINATOR_CODE
    );
    assert_eq!(
        b.groups.fetch(&*b, "g", None).await.unwrap_err(),
        NOT_COORDINATOR_CODE
    );
    assert!(b.groups.list().await.is_empty());
    // Elected again: offsets and the generation come back from the partition.
    b.groups.on_election(&*b, partition, 1);
    assert_eq!(committed(&b, "g", 0).await, Some(42));
    let d = b.groups.describe(&*b, "g").await.unwrap().unwrap();
    assert_eq!(d.members.len(), 1, "the member of generation 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_shard_answers_coordinator_load_in_progress() {
    let dir = store();
    let b = std::sync::Arc::new(broker(&dir));
    assert_eq!(commit(&b, "g", 0, 1).await, NONE);
    let partition = super::records::partition_for("g", 3);
    b.groups.on_resignation(partition, None);
    b.faults.lock().unwrap().hold_replay = true;
    let loading = {
        let b = b.clone();
        std::thread::spawn(move || b.groups.on_election(&*b, partition, 1))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let code = commit(&b, "g", 0, 2).await;
        if code == strom_metadata::errors::COORDINATOR_LOAD_IN_PROGRESS {
            break;
        }
        assert_eq!(code, NOT_COORDINATOR_CODE, "before the load starts");
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    b.faults.lock().unwrap().hold_replay = false;
    loading.join().unwrap();
    assert_eq!(commit(&b, "g", 0, 3).await, NONE);
    assert_eq!(committed(&b, "g", 0).await, Some(3));
}

const NOT_COORDINATOR_CODE: i16 = strom_metadata::errors::NOT_COORDINATOR;

/// A partition that cannot be read back is not served: serving the groups read so far
/// would answer for the rest as if they had nothing.
#[tokio::test]
async fn an_unreadable_partition_is_not_served() {
    let dir = store();
    let b = broker(&dir);
    assert_eq!(commit(&b, "g", 0, 5).await, NONE);
    let partition = super::records::partition_for("g", 3);
    b.groups.on_resignation(partition, None);
    b.faults.lock().unwrap().replay_fails = true;
    b.groups.on_election(&b, partition, 1);
    assert_eq!(commit(&b, "g", 0, 6).await, NOT_COORDINATOR_CODE);
    b.faults.lock().unwrap().replay_fails = false;
    b.groups.on_election(&b, partition, 2);
    assert_eq!(committed(&b, "g", 0).await, Some(5));
}

/// Of a plain and a transactional commit of one partition, the later in the log wins when
/// the transaction commits, as in Kafka: what compaction keeps (the key's latest record) then
/// reads back the same, before and after it.
#[tokio::test]
async fn the_later_of_a_plain_and_a_transactional_commit_wins() {
    use crate::host::{MarkerWriter, Markers};
    let dir = store();
    let b = broker(&dir);
    let tp = TopicPartition::new(OFFSETS_TOPIC, super::records::partition_for("mix", 3));
    let txn_commit = |pid: i64, partition: i32, offset: i64| {
        let b = &b;
        async move {
            let c = super::txn_offsets::TxnCommit {
                group_id: "mix",
                producer_id: pid,
                producer_epoch: 0,
                member_id: "",
                instance_id: None,
                generation: -1,
            };
            let offsets = vec![CommitRequest {
                topic: "t".into(),
                partition,
                offset,
                leader_epoch: -1,
                metadata: None,
            }];
            assert_eq!(b.groups.txn_commit(b, &c, offsets, None).await, vec![NONE]);
        }
    };
    let commit_marker = |pid: i64| Markers {
        producer_id: pid,
        producer_epoch: 0,
        commit: true,
        coordinator_epoch: 0,
        partitions: vec![tp.clone()],
    };
    // Partition 0: transactional 5, then plain 7, then the commit marker: 7 stays.
    txn_commit(9, 0, 5).await;
    assert_eq!(commit(&b, "mix", 0, 7).await, NONE);
    // Partition 1: plain 3, then transactional 4, then the commit marker: 4.
    assert_eq!(commit(&b, "mix", 1, 3).await, NONE);
    txn_commit(9, 1, 4).await;
    assert!(b.write_markers(&commit_marker(9)).await.is_empty());
    assert_eq!(committed(&b, "mix", 0).await, Some(7));
    assert_eq!(committed(&b, "mix", 1).await, Some(4));
    drop(b);
    let b = broker(&dir);
    assert_eq!(committed(&b, "mix", 0).await, Some(7));
    assert_eq!(committed(&b, "mix", 1).await, Some(4));
    b.compact(&tp);
    drop(b);
    let b = broker(&dir);
    assert_eq!(committed(&b, "mix", 0).await, Some(7));
    assert_eq!(committed(&b, "mix", 1).await, Some(4));
}
