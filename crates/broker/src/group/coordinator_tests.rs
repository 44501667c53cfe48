//! The coordinator against a real broker on a temporary directory: offsets persist, reload,
//! expire and stay bounded.

use super::coordinator::*;
use super::state::JoinRequest;
use crate::broker::{Broker, NewTopic};
use crate::config::BrokerConfig;
use crate::errors::NONE;

fn broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig {
        log_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    config.groups.offsets_partitions = 3;
    config.groups.group.initial_rebalance_delay_ms = 0;
    let b = Broker::open(config).unwrap();
    if b.topic("t").is_none() {
        b.create_topic(
            NewTopic {
                name: "t".into(),
                partitions: Some(4),
                replication_factor: None,
                assignments: vec![],
                configs: Default::default(),
            },
            false,
        )
        .unwrap();
    }
    b
}

fn commit(b: &Broker, group: &str, partition: i32, offset: i64) -> i16 {
    let r = b.groups.commit(
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
    );
    r[0]
}

fn committed(b: &Broker, group: &str, partition: i32) -> Option<i64> {
    b.groups
        .fetch(group, Some(&[("t".to_string(), vec![partition])]))[0]
        .2
        .as_ref()
        .map(|o| o.offset)
}

#[test]
fn simple_commits_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path());
        assert_eq!(commit(&b, "simple", 0, 10), NONE);
        assert_eq!(commit(&b, "simple", 1, 20), NONE);
        assert_eq!(commit(&b, "simple", 0, 15), NONE);
        assert_eq!(commit(&b, "other", 2, 7), NONE);
        // Unknown partitions and oversized metadata are refused per partition.
        let r = b.groups.commit(
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
        );
        assert_eq!(
            r,
            vec![
                crate::errors::UNKNOWN_TOPIC_OR_PARTITION,
                OFFSET_METADATA_TOO_LARGE
            ]
        );
        assert!(b.topic(OFFSETS_TOPIC).unwrap().is_internal());
        b.shutdown();
    }
    let b = broker(dir.path());
    assert_eq!(committed(&b, "simple", 0), Some(15));
    assert_eq!(committed(&b, "simple", 1), Some(20));
    assert_eq!(committed(&b, "simple", 2), None);
    assert_eq!(committed(&b, "other", 2), Some(7));
    let all = b.groups.fetch("simple", None);
    assert_eq!(all.len(), 2);
    let o = all[0].2.clone().unwrap();
    assert_eq!((o.leader_epoch, o.metadata.as_str()), (3, "m"));
    let names: Vec<String> = b.groups.list().into_iter().map(|g| g.0).collect();
    assert_eq!(names, vec!["other", "simple"]);
}

#[test]
fn empty_groups_offsets_expire_and_the_group_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    commit(&b, "old", 0, 5);
    let day = 24 * 3600 * 1000;
    b.groups.expire(&b, now_ms() + day);
    assert_eq!(
        committed(&b, "old", 0),
        Some(5),
        "within offsets.retention.minutes"
    );
    b.groups.expire(&b, now_ms() + 8 * day);
    assert_eq!(committed(&b, "old", 0), None);
    assert!(b.groups.list().is_empty());
    b.shutdown();
    drop(b);
    // The tombstones were persisted: nothing comes back.
    let b = broker(dir.path());
    assert_eq!(committed(&b, "old", 0), None);
}

#[test]
fn delete_groups_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    commit(&b, "g", 0, 1);
    commit(&b, "g", 1, 2);
    let (e, per) = b.groups.delete_offsets(&b, "g", &[("t".into(), 0)]);
    assert_eq!((e, per), (NONE, vec![NONE]));
    assert_eq!(committed(&b, "g", 0), None);
    assert_eq!(committed(&b, "g", 1), Some(2));
    assert_eq!(
        b.groups.delete_offsets(&b, "none", &[]).0,
        GROUP_ID_NOT_FOUND
    );
    assert_eq!(b.groups.delete(&b, "g"), NONE);
    assert_eq!(b.groups.delete(&b, "g"), GROUP_ID_NOT_FOUND);
    assert_eq!(committed(&b, "g", 1), None);
}

#[tokio::test]
async fn active_groups_refuse_deletion_and_simple_commits() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
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
    assert_eq!(b.groups.delete(&b, "active"), NON_EMPTY_GROUP);
    assert_eq!(commit(&b, "active", 0, 1), super::state::UNKNOWN_MEMBER_ID);
    // The group subscribes to t: its offsets cannot be deleted while it does.
    let sync = super::state::SyncRequest {
        member_id: &r.member_id,
        generation: 1,
        assignments: vec![(r.member_id.clone(), vec![])],
        ..Default::default()
    };
    assert_eq!(b.groups.sync(&b, "active", sync).await.error, NONE);
    let (e, per) = b.groups.delete_offsets(&b, "active", &[("t".into(), 0)]);
    assert_eq!((e, per), (NONE, vec![GROUP_SUBSCRIBED_TO_TOPIC]));
    let desc = b.groups.describe("active").unwrap();
    assert_eq!(desc.state, super::state::State::Stable);
    assert_eq!(desc.protocol, "range");
    assert_eq!(desc.members.len(), 1);
    // The group's generation survives a restart of the coordinator.
    b.shutdown();
    drop(b);
    let b = broker(dir.path());
    let desc = b.groups.describe("active").unwrap();
    assert_eq!(desc.members.len(), 1);
    assert_eq!(
        b.groups.heartbeat(&b, "active", &r.member_id, None, 1),
        NONE
    );
}

#[test]
fn the_offsets_topic_is_trimmed_to_its_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    for i in 0..3000 {
        assert_eq!(commit(&b, "busy", i % 2, i as i64), NONE);
    }
    let p = super::records::partition_for("busy", 3);
    let partition = b.partition(OFFSETS_TOPIC, p).unwrap();
    let log = partition.log();
    assert_eq!(log.log_end_offset() - log.log_start_offset(), 3000);
    b.groups.maintain(&b);
    assert!(
        log.log_start_offset() >= 3000,
        "start {}",
        log.log_start_offset()
    );
    assert!(
        log.log_end_offset() - log.log_start_offset() <= 3,
        "live: 2 offsets and the group"
    );
    assert_eq!(committed(&b, "busy", 0), Some(2998));
    b.shutdown();
    drop(b);
    let b = broker(dir.path());
    assert_eq!(committed(&b, "busy", 0), Some(2998));
    assert_eq!(committed(&b, "busy", 1), Some(2999));
}
