//! The controller's decisions, driven without I/O: registration, heartbeats, fencing and
//! unfencing, leader choice, topics and producer-id blocks. Records are replayed as the
//! quorum would commit them.

use std::collections::BTreeSet;

use strom_metadata::errors;
use strom_metadata::image::{NO_LEADER, Record};

use super::*;

/// A controller with brokers 1..=n registered, unfenced by a first heartbeat at t=0.
fn cluster(n: i32, racks: &[&str]) -> (Controller, Vec<i64>) {
    let mut c = Controller::new(ControllerConfig::default());
    let mut epochs = Vec::new();
    for id in 1..=n {
        let (epoch, records) = c
            .register(
                Registration {
                    id,
                    incarnation: [id as u8; 16],
                    host: format!("h{id}"),
                    port: 9092,
                    rack: racks.get(id as usize - 1).map(|r| r.to_string()),
                    endpoints: vec![],
                },
                0,
            )
            .unwrap();
        c.replay(&records);
        assert!(
            c.image().brokers[&id].fenced,
            "fenced until its first heartbeat"
        );
        let records = c.heartbeat(id, epoch, false, 0).unwrap().records;
        c.replay(&records);
        assert!(!c.image().brokers[&id].fenced);
        epochs.push(epoch);
    }
    (c, epochs)
}

fn topic(name: &str, partitions: i32, rf: i16) -> TopicRequest {
    TopicRequest {
        name: name.into(),
        id: [name.len() as u8; 16],
        partitions,
        replication_factor: rf,
        assignments: vec![],
        configs: Default::default(),
    }
}

fn create(c: &mut Controller, t: TopicRequest) {
    let records = c.create_topic(&t, 0).unwrap();
    c.replay(&records);
}

fn leaders(c: &Controller, name: &str) -> Vec<i32> {
    c.image().topics[name]
        .partitions
        .iter()
        .map(|p| p.leader)
        .collect()
}

#[test]
fn topics_are_placed_over_live_brokers_and_refused_when_they_cannot_be() {
    let (mut c, _) = cluster(3, &[]);
    create(&mut c, topic("t", 6, 2));
    let parts = &c.image().topics["t"].partitions;
    assert_eq!(parts.len(), 6);
    for p in parts {
        assert_eq!((p.replicas.len(), p.isr.to_vec()), (2, p.replicas.to_vec()));
        assert_eq!(p.leader, p.replicas[0]);
    }
    let led: BTreeSet<i32> = leaders(&c, "t").into_iter().collect();
    assert_eq!(led, [1, 2, 3].into_iter().collect());
    let refused = c.create_topic(&topic("t", 1, 1), 0).unwrap_err();
    assert_eq!(refused.code, errors::TOPIC_ALREADY_EXISTS);
    let refused = c.create_topic(&topic("big", 1, 4), 0).unwrap_err();
    assert_eq!(refused.code, errors::INVALID_REPLICATION_FACTOR);
    assert!(refused.message.contains("3"), "{}", refused.message);
    let mut bad = topic("bad", 0, 1);
    bad.assignments = vec![vec![1, 9]];
    assert_eq!(
        c.create_topic(&bad, 0).unwrap_err().code,
        errors::INVALID_REPLICA_ASSIGNMENT
    );
    // Explicit assignments are taken as given.
    let mut given = topic("given", 0, 1);
    given.assignments = vec![vec![3, 1], vec![2, 3]];
    create(&mut c, given);
    assert_eq!(leaders(&c, "given"), vec![3, 2]);
    // CreatePartitions keeps the replication factor.
    let records = c.create_partitions("t", 8, None, 0).unwrap();
    c.replay(&records);
    assert!(
        c.image().topics["t"]
            .partitions
            .iter()
            .all(|p| p.replicas.len() == 2)
    );
    assert_eq!(
        c.create_partitions("t", 8, None, 0).unwrap_err().code,
        errors::INVALID_PARTITIONS
    );
    // A name that differs from one in use only by '.' and '_' is refused.
    create(&mut c, topic("a.b", 1, 1));
    let refused = c.create_topic(&topic("a_b", 1, 1), 0).unwrap_err();
    assert_eq!(refused.code, errors::INVALID_TOPIC_EXCEPTION);
    assert!(refused.message.contains("a.b"), "{}", refused.message);
    // Config overrides are replaced whole, on existing topics only.
    let configs: BTreeMap<String, String> = [("retention.ms".to_string(), "1000".to_string())]
        .into_iter()
        .collect();
    let records = c.set_topic_configs("t", configs.clone(), None).unwrap();
    c.replay(&records);
    assert_eq!(c.image().topics["t"].configs, configs);
    assert_eq!(
        c.set_topic_configs("nope", configs.clone(), None)
            .unwrap_err()
            .code,
        errors::UNKNOWN_TOPIC_OR_PARTITION
    );
    // An incremental change made from other configs than the current ones is refused.
    let stale = BTreeMap::new();
    assert_eq!(
        c.set_topic_configs("t", BTreeMap::new(), Some(&stale))
            .unwrap_err()
            .code,
        errors::INVALID_UPDATE_VERSION
    );
    assert!(
        c.set_topic_configs("t", BTreeMap::new(), Some(&configs))
            .is_ok()
    );
    assert_eq!(
        c.set_broker_configs(-1, configs.clone(), Some(&configs))
            .unwrap_err()
            .code,
        errors::INVALID_UPDATE_VERSION
    );
    assert!(
        c.set_broker_configs(-1, configs.clone(), Some(&stale))
            .is_ok()
    );
    let records = c.delete_topic("t").unwrap();
    c.replay(&records);
    assert!(!c.image().topics.contains_key("t"));
    assert_eq!(
        c.delete_topic("t").unwrap_err().code,
        errors::UNKNOWN_TOPIC_OR_PARTITION
    );
}

#[test]
fn a_silent_broker_is_fenced_and_its_partitions_move_to_the_isr() {
    let (mut c, epochs) = cluster(3, &[]);
    create(&mut c, topic("t", 3, 2));
    create(&mut c, topic("solo", 3, 1));
    let before = c.image().clone();
    // Brokers 1 and 3 heartbeat; 2 goes silent.
    for now in [3_000, 6_000, 9_000] {
        for id in [1, 3] {
            let r = c
                .heartbeat(id, epochs[id as usize - 1], false, now)
                .unwrap()
                .records;
            c.replay(&r);
        }
        let r = c.tick(now);
        c.replay(&r);
    }
    assert!(c.image().brokers[&2].fenced);
    for (i, p) in c.image().topics["t"].partitions.iter().enumerate() {
        let old = &before.topics["t"].partitions[i];
        assert!(!p.isr.contains(&2), "2 left the ISR of t-{i}");
        if old.leader == 2 {
            assert_ne!(p.leader, 2);
            assert!(old.isr.contains(&p.leader), "the new leader was in the ISR");
            assert_eq!(p.leader_epoch, old.leader_epoch + 1);
            assert!(p.partition_epoch > old.partition_epoch);
        } else {
            assert_eq!((p.leader, p.leader_epoch), (old.leader, old.leader_epoch));
        }
    }
    // A partition whose only replica was 2 has no leader (unclean election is off) and keeps
    // 2 in its ISR: nothing committed is given up.
    for p in &c.image().topics["solo"].partitions {
        if p.replicas.to_vec() == vec![2] {
            assert_eq!((p.leader, p.isr.to_vec()), (NO_LEADER, vec![2]));
        }
    }
    // 2 comes back: unfenced by its heartbeat, it leads again what had no leader.
    let r = c.heartbeat(2, epochs[1], false, 12_000).unwrap().records;
    assert!(r.contains(&Record::BrokerFencing {
        id: 2,
        fenced: false
    }));
    c.replay(&r);
    assert!(!c.image().brokers[&2].fenced);
    for p in &c.image().topics["solo"].partitions {
        assert_ne!(p.leader, NO_LEADER);
    }
    // A stale epoch or an unknown broker is refused.
    assert_eq!(
        c.heartbeat(2, 999, false, 12_000).unwrap_err().code,
        errors::STALE_BROKER_EPOCH
    );
    assert_eq!(
        c.heartbeat(7, 1, false, 12_000).unwrap_err().code,
        errors::BROKER_ID_NOT_REGISTERED
    );
}

#[test]
fn unclean_election_picks_a_live_replica_outside_the_isr_only_when_allowed() {
    let (mut c, _) = cluster(2, &[]);
    create(&mut c, topic("t", 1, 2));
    // The ISR shrank to the leader alone (as replication will report), then it dies.
    let mut info = c.image().topics["t"].partitions[0].clone();
    let leader = info.leader;
    let other = info
        .replicas
        .iter()
        .copied()
        .find(|r| *r != leader)
        .unwrap();
    info.isr = vec![leader].into();
    info.partition_epoch += 1;
    c.replay(&[Record::Partition {
        topic: "t".into(),
        partition: 0,
        info,
    }]);
    let fenced = c.fence(leader);
    let p = fenced.iter().find_map(|r| match r {
        Record::Partition { info, .. } => Some(info.clone()),
        _ => None,
    });
    assert_eq!(
        p.unwrap().leader,
        NO_LEADER,
        "clean: offline rather than lose records"
    );
    let unclean = |c: &Controller| {
        c.fence(leader)
            .iter()
            .find_map(|r| match r {
                Record::Partition { info, .. } => Some(info.clone()),
                _ => None,
            })
            .unwrap()
    };
    // The topic's own unclean.leader.election.enable, over the cluster's default.
    c.replay(&[Record::TopicConfigs {
        topic: "t".into(),
        configs: [(
            "unclean.leader.election.enable".to_string(),
            "true".to_string(),
        )]
        .into(),
    }]);
    let p = unclean(&c);
    assert_eq!((p.leader, p.isr.to_vec()), (other, vec![other]));
    c.replay(&[Record::TopicConfigs {
        topic: "t".into(),
        configs: Default::default(),
    }]);
    assert_eq!(unclean(&c).leader, NO_LEADER, "back to the cluster default");
    c.config.unclean_leader_election = true;
    let p = unclean(&c);
    assert_eq!((p.leader, p.isr.to_vec()), (other, vec![other]));
    c.replay(&[Record::TopicConfigs {
        topic: "t".into(),
        configs: [(
            "unclean.leader.election.enable".to_string(),
            "false".to_string(),
        )]
        .into(),
    }]);
    assert_eq!(unclean(&c).leader, NO_LEADER, "the topic says no");
}

/// An offline partition (its last ISR member fenced while unclean election was off) is
/// elected by the controller's timer once its topic allows unclean election at run time,
/// not only at the next fence or unfence.
#[test]
fn turning_unclean_election_on_elects_the_partitions_left_offline() {
    let (mut c, _) = cluster(2, &[]);
    create(&mut c, topic("t", 1, 2));
    let mut info = c.image().topics["t"].partitions[0].clone();
    let leader = info.leader;
    info.isr = vec![leader].into();
    info.partition_epoch += 1;
    c.replay(&[Record::Partition {
        topic: "t".into(),
        partition: 0,
        info,
    }]);
    let fenced = c.fence(leader);
    c.replay(&fenced);
    assert_eq!(c.image().topics["t"].partitions[0].leader, NO_LEADER);
    assert_eq!(c.elect_offline(), vec![], "unclean election is off");

    c.replay(&[Record::TopicConfigs {
        topic: "t".into(),
        configs: [(
            "unclean.leader.election.enable".to_string(),
            "true".to_string(),
        )]
        .into(),
    }]);
    let elected = c.elect_offline();
    c.replay(&elected);
    let p = &c.image().topics["t"].partitions[0];
    let other = if leader == 1 { 2 } else { 1 };
    assert_eq!((p.leader, p.isr.to_vec()), (other, vec![other]));
    assert_eq!(c.elect_offline(), vec![], "nothing left offline");
}

#[test]
fn a_second_process_with_the_same_node_id_is_refused_while_the_first_lives() {
    let (mut c, _) = cluster(1, &[]);
    let twin = Registration {
        id: 1,
        incarnation: [99; 16],
        host: "h".into(),
        port: 1,
        rack: None,
        endpoints: vec![],
    };
    assert_eq!(
        c.register(twin.clone(), 1_000).unwrap_err().code,
        errors::DUPLICATE_BROKER_REGISTRATION
    );
    // Once the first one's session has expired, the restart registers with a new epoch.
    let (epoch, _) = c.register(twin, 20_000).unwrap();
    assert!(epoch > 1);
}

#[test]
fn producer_id_blocks_never_overlap() {
    let (mut c, epochs) = cluster(3, &[]);
    let mut blocks = Vec::new();
    for round in 0..10 {
        let b = 1 + round % 3;
        // A broker's ids from before the quorum are skipped: here, below 500.
        let ((start, len), records) = c
            .allocate_producer_ids(b, epochs[b as usize - 1], 500)
            .unwrap();
        c.replay(&records);
        blocks.push(start..start + len);
    }
    assert_eq!(blocks[0].start, 500);
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            assert!(a.end <= b.start || b.end <= a.start, "{a:?} overlaps {b:?}");
        }
    }
    assert_eq!(c.image().next_producer_id, 500 + 10 * 1_000);
    assert_eq!(
        c.allocate_producer_ids(1, 999, 0).unwrap_err().code,
        errors::STALE_BROKER_EPOCH
    );
}

#[test]
fn racks_spread_replicas() {
    let (mut c, _) = cluster(4, &["a", "a", "b", "b"]);
    create(&mut c, topic("t", 8, 2));
    for p in &c.image().topics["t"].partitions {
        let racks: BTreeSet<bool> = p.replicas.iter().map(|r| *r <= 2).collect();
        assert_eq!(racks.len(), 2, "one replica per rack: {:?}", p.replicas);
    }
}

#[test]
fn a_controlled_shutdown_moves_leadership_at_once_and_the_restart_takes_it_back() {
    let (mut c, epochs) = cluster(2, &[]);
    create(&mut c, topic("t", 4, 2));
    create(&mut c, topic("solo", 4, 1));
    let out = c.heartbeat(1, epochs[0], true, 1_000).unwrap();
    assert!(out.fenced && out.shutdown_ready);
    c.replay(&out.records);
    assert!(c.image().brokers[&1].fenced);
    for p in &c.image().topics["t"].partitions {
        assert_eq!(p.leader, 2, "2 leads every replicated partition");
        assert_eq!(p.isr.to_vec(), vec![2]);
    }
    for p in &c.image().topics["solo"].partitions {
        if p.replicas.to_vec() == vec![1] {
            assert_eq!(p.leader, NO_LEADER);
        }
    }
    // Heartbeats while it stops do not unfence it.
    let out = c.heartbeat(1, epochs[0], false, 1_500).unwrap();
    assert!(out.records.is_empty() && out.fenced);
    // Its next process registers at once (no session to wait out) and is unfenced by its
    // first heartbeat, leading again what had no leader.
    let (epoch, records) = c
        .register(
            Registration {
                id: 1,
                incarnation: [42; 16],
                host: "h1".into(),
                port: 9092,
                rack: None,
                endpoints: vec![],
            },
            2_000,
        )
        .unwrap();
    c.replay(&records);
    let out = c.heartbeat(1, epoch, false, 2_000).unwrap();
    c.replay(&out.records);
    assert!(!c.image().brokers[&1].fenced);
    for p in &c.image().topics["solo"].partitions {
        assert_ne!(p.leader, NO_LEADER);
    }
}

#[test]
fn a_restarted_broker_loses_its_leadership_before_its_new_process_gets_it_back() {
    let (mut c, _) = cluster(1, &[]);
    create(&mut c, topic("t", 2, 1));
    let before = c.image().topics["t"].partitions.clone();
    // A new controller takes over: the sessions it inherits are only assumed alive, so the
    // broker's quick restart (a new incarnation) is not mistaken for a twin.
    let mut next = Controller::new(ControllerConfig::default());
    next.sync(Arc::new(c.image().clone()));
    next.activate(5_000);
    let (epoch, records) = next
        .register(
            Registration {
                id: 1,
                incarnation: [77; 16],
                host: "h1".into(),
                port: 9092,
                rack: None,
                endpoints: vec![],
            },
            5_100,
        )
        .unwrap();
    assert!(epoch > c.image().brokers[&1].epoch);
    next.replay(&records);
    for (i, p) in next.image().topics["t"].partitions.iter().enumerate() {
        assert_eq!(p.leader, NO_LEADER, "the old process's leadership ended");
        assert_eq!(p.leader_epoch, before[i].leader_epoch + 1);
    }
    let out = next.heartbeat(1, epoch, false, 5_200).unwrap();
    next.replay(&out.records);
    for (i, p) in next.image().topics["t"].partitions.iter().enumerate() {
        assert_eq!((p.leader, p.leader_epoch), (1, before[i].leader_epoch + 2));
    }
    // The old process, still heartbeating with its epoch, is told it is stale.
    assert_eq!(
        next.heartbeat(1, 1, false, 5_300).unwrap_err().code,
        errors::STALE_BROKER_EPOCH
    );
}

#[test]
fn brokers_silent_together_are_fenced_together_and_none_inherits_the_others() {
    let (mut c, epochs) = cluster(3, &[]);
    create(&mut c, topic("t", 6, 3));
    for now in [4_000, 8_000, 9_500] {
        let r = c.heartbeat(3, epochs[2], false, now).unwrap().records;
        c.replay(&r);
    }
    let r = c.tick(9_500);
    c.replay(&r);
    assert!(c.image().brokers[&1].fenced && c.image().brokers[&2].fenced);
    for p in &c.image().topics["t"].partitions {
        assert_eq!((p.leader, p.isr.to_vec()), (3, vec![3]));
    }
}

#[test]
fn silence_the_controller_did_not_witness_fences_nobody() {
    let (mut c, _) = cluster(2, &[]);
    // The controller itself was paused from t=0 to t=60 s.
    c.refresh_sessions(60_000);
    assert!(c.tick(60_001).is_empty());
    assert_eq!(
        c.tick(69_000).len(),
        2,
        "silence after the pause still counts"
    );
}

#[test]
fn alter_partition_takes_the_leaders_current_view_only() {
    let (mut c, epochs) = cluster(3, &[]);
    create(&mut c, topic("t", 1, 3));
    let p = c.image().topics["t"].partitions[0].clone();
    let leader = p.leader;
    let follower = *p.replicas.iter().find(|r| **r != leader).unwrap();
    let ask = |isr: Vec<i32>, partition_epoch: i32| AlterPartition {
        broker: leader,
        broker_epoch: epochs[leader as usize - 1],
        topic: "t".into(),
        partition: 0,
        leader_epoch: p.leader_epoch,
        partition_epoch,
        isr,
    };
    // Shrink: the follower leaves; the partition epoch moves on.
    let shrunk: Vec<i32> = p.isr.iter().copied().filter(|r| *r != follower).collect();
    let (next, records) = c
        .alter_partition(&ask(shrunk.clone(), p.partition_epoch))
        .unwrap();
    assert_eq!(next.isr.to_vec(), shrunk);
    assert_eq!(next.partition_epoch, p.partition_epoch + 1);
    c.replay(&records);
    // The same change again, from the old view: refused.
    assert_eq!(
        c.alter_partition(&ask(shrunk, p.partition_epoch))
            .unwrap_err()
            .code,
        errors::INVALID_UPDATE_VERSION
    );
    // Not the leader, an old leader epoch, a stale broker epoch, a leaderless ISR, a
    // stranger: refused with Kafka's codes.
    let mut a = ask(p.isr.to_vec(), next.partition_epoch);
    a.broker = follower;
    a.broker_epoch = epochs[follower as usize - 1];
    assert_eq!(
        c.alter_partition(&a).unwrap_err().code,
        errors::NOT_LEADER_OR_FOLLOWER
    );
    let mut a = ask(p.isr.to_vec(), next.partition_epoch);
    a.leader_epoch -= 1;
    assert_eq!(
        c.alter_partition(&a).unwrap_err().code,
        errors::FENCED_LEADER_EPOCH
    );
    let mut a = ask(p.isr.to_vec(), next.partition_epoch);
    a.broker_epoch += 100;
    assert_eq!(
        c.alter_partition(&a).unwrap_err().code,
        errors::STALE_BROKER_EPOCH
    );
    assert_eq!(
        c.alter_partition(&ask(vec![follower], next.partition_epoch))
            .unwrap_err()
            .code,
        errors::INVALID_REQUEST
    );
    assert_eq!(
        c.alter_partition(&ask(vec![leader, 9], next.partition_epoch))
            .unwrap_err()
            .code,
        errors::INVALID_REQUEST
    );
    // A fenced follower cannot come back in; once unfenced it can.
    let r = c.fence(follower);
    c.replay(&r);
    let epoch_now = c.image().topics["t"].partitions[0].partition_epoch;
    assert_eq!(
        c.alter_partition(&ask(p.isr.to_vec(), epoch_now))
            .unwrap_err()
            .code,
        errors::INELIGIBLE_REPLICA
    );
    let out = c
        .heartbeat(follower, epochs[follower as usize - 1], false, 1)
        .unwrap();
    c.replay(&out.records);
    let epoch_now = c.image().topics["t"].partitions[0].partition_epoch;
    let (grown, _) = c.alter_partition(&ask(p.isr.to_vec(), epoch_now)).unwrap();
    assert_eq!(grown.isr.len(), 3);
}

#[test]
fn preferred_elections_give_leadership_back_to_the_first_replica() {
    let (mut c, epochs) = cluster(3, &[]);
    create(&mut c, topic("t", 3, 3));
    let preferred = |c: &Controller, p: usize| c.image().topics["t"].partitions[p].replicas[0];
    // Every partition led by its first replica: nothing to do.
    let (records, results) = c.elect_leaders(true, None);
    assert!(records.is_empty() && results.is_empty(), "{results:?}");
    // Partition 0's preferred replica goes away and comes back: another leads it.
    let first = preferred(&c, 0);
    let fenced = c.fence(first);
    c.replay(&fenced);
    assert_ne!(c.image().topics["t"].partitions[0].leader, first);
    let (records, results) = c.elect_leaders(true, Some(&[("t".into(), 0)]));
    assert!(records.is_empty());
    assert_eq!(
        results[0].2,
        errors::PREFERRED_LEADER_NOT_AVAILABLE,
        "not live"
    );
    let back = c
        .heartbeat(first, epochs[first as usize - 1], false, 1)
        .unwrap()
        .records;
    c.replay(&back);
    // Live but not in the ISR yet: still not available.
    let (_, results) = c.elect_leaders(true, Some(&[("t".into(), 0)]));
    assert_eq!(results[0].2, errors::PREFERRED_LEADER_NOT_AVAILABLE);
    let mut info = c.image().topics["t"].partitions[0].clone();
    info.isr.push(first);
    info.partition_epoch += 1;
    c.replay(&[Record::Partition {
        topic: "t".into(),
        partition: 0,
        info: info.clone(),
    }]);
    // The automatic rebalance takes it back (one of its partitions of three is elsewhere).
    let records = c.rebalance_leaders(10);
    c.replay(&records);
    let now = &c.image().topics["t"].partitions[0];
    assert_eq!(now.leader, first);
    assert_eq!(now.leader_epoch, info.leader_epoch + 1);
    let (records, results) = c.elect_leaders(
        true,
        Some(&[("t".into(), 0), ("t".into(), 9), ("u".into(), 0)]),
    );
    assert!(records.is_empty());
    let codes: Vec<i16> = results.iter().map(|r| r.2).collect();
    assert_eq!(
        codes,
        vec![
            errors::ELECTION_NOT_NEEDED,
            errors::UNKNOWN_TOPIC_OR_PARTITION,
            errors::UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
}
