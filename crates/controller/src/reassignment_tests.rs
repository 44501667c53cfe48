//! Reassignments driven without I/O: started, completed by the leader's ISR changes,
//! replaced, cancelled and refused.

use strom_metadata::errors;
use strom_metadata::image::{PartitionInfo, Record};

use super::Reassignment;
use crate::controller::{AlterPartition, Controller, ControllerConfig, Registration, TopicRequest};

/// Brokers 1..=4, unfenced, and topic `t` with one partition on `replicas`.
fn cluster(replicas: &[i32]) -> (Controller, Vec<i64>) {
    let mut c = Controller::new(ControllerConfig::default());
    let mut epochs = Vec::new();
    for id in 1..=4 {
        let r = Registration {
            id,
            incarnation: [id as u8; 16],
            host: format!("h{id}"),
            port: 9092,
            rack: None,
            endpoints: vec![],
        };
        let (epoch, records) = c.register(r, 0).unwrap();
        c.replay(&records);
        let records = c.heartbeat(id, epoch, false, 0).unwrap().records;
        c.replay(&records);
        epochs.push(epoch);
    }
    let t = TopicRequest {
        name: "t".into(),
        id: [1; 16],
        partitions: 1,
        replication_factor: replicas.len() as i16,
        assignments: vec![replicas.to_vec()],
        configs: Default::default(),
    };
    let records = c.create_topic(&t, 0).unwrap();
    c.replay(&records);
    (c, epochs)
}

fn to(replicas: Option<&[i32]>) -> Vec<Reassignment> {
    vec![Reassignment {
        topic: "t".into(),
        partition: 0,
        replicas: replicas.map(<[i32]>::to_vec),
    }]
}

/// Applies the reassignment; its one result's code.
fn reassign(c: &mut Controller, replicas: Option<&[i32]>) -> i16 {
    let (records, results) = c.alter_reassignments(&to(replicas), true);
    c.replay(&records);
    results[0].2
}

fn partition(c: &Controller) -> PartitionInfo {
    c.image().partition("t", 0).unwrap().clone()
}

/// The leader asks for the ISR `isr`, as its AlterPartition would.
fn isr(c: &mut Controller, epochs: &[i64], isr: &[i32]) {
    let p = partition(c);
    let (_, records) = c
        .alter_partition(&AlterPartition {
            broker: p.leader,
            broker_epoch: epochs[p.leader as usize - 1],
            topic: "t".into(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: isr.to_vec(),
        })
        .unwrap();
    c.replay(&records);
}

#[test]
fn new_replicas_join_then_the_old_ones_leave_and_the_leader_hands_over() {
    let (mut c, epochs) = cluster(&[1, 2]);
    let before = partition(&c);
    assert_eq!(reassign(&mut c, Some(&[3, 4])), errors::NONE);
    let p = partition(&c);
    assert_eq!(p.replicas.to_vec(), vec![3, 4, 1, 2], "the target first");
    assert_eq!(
        (p.adding().to_vec(), p.removing().to_vec()),
        (vec![3, 4], vec![1, 2])
    );
    assert_eq!((p.isr.to_vec(), p.leader), (vec![1, 2], 1));
    assert_eq!(
        p.leader_epoch, before.leader_epoch,
        "the leader stays for now"
    );
    assert_eq!(p.partition_epoch, before.partition_epoch + 1);

    // One new replica caught up: not done yet.
    isr(&mut c, &epochs, &[1, 2, 3]);
    let p = partition(&c);
    assert_eq!(
        (p.isr.to_vec(), p.adding().to_vec()),
        (vec![1, 2, 3], vec![3, 4])
    );

    // Both: the old replicas leave, the leader with them.
    isr(&mut c, &epochs, &[1, 2, 3, 4]);
    let p = partition(&c);
    assert_eq!(p.replicas.to_vec(), vec![3, 4]);
    assert_eq!(p.isr.to_vec(), vec![3, 4]);
    assert!(!p.reassigning());
    assert_eq!(p.leader, 3, "the first target replica in the ISR");
    assert_eq!(p.leader_epoch, before.leader_epoch + 1);
}

#[test]
fn a_leader_that_stays_keeps_its_epoch_and_a_reorder_completes_at_once() {
    let (mut c, epochs) = cluster(&[1, 2]);
    assert_eq!(reassign(&mut c, Some(&[1, 3])), errors::NONE);
    isr(&mut c, &epochs, &[1, 2, 3]);
    let p = partition(&c);
    assert_eq!(
        (p.replicas.to_vec(), p.isr.to_vec(), p.leader),
        (vec![1, 3], vec![1, 3], 1)
    );
    assert_eq!(p.leader_epoch, 0);

    // Only the order changes: nothing to copy, done in the same record.
    assert_eq!(reassign(&mut c, Some(&[3, 1])), errors::NONE);
    let p = partition(&c);
    assert_eq!((p.replicas.to_vec(), p.leader), (vec![3, 1], 1));
    assert!(!p.reassigning());
    // The same assignment again changes nothing.
    let (records, results) = c.alter_reassignments(&to(Some(&[3, 1])), true);
    assert_eq!((records, results[0].2), (vec![], errors::NONE));
}

#[test]
fn a_cancellation_puts_the_original_replicas_back() {
    let (mut c, _) = cluster(&[1, 2]);
    assert_eq!(reassign(&mut c, None), errors::NO_REASSIGNMENT_IN_PROGRESS);
    assert_eq!(reassign(&mut c, Some(&[3, 4])), errors::NONE);
    assert_eq!(reassign(&mut c, None), errors::NONE);
    let p = partition(&c);
    assert_eq!(
        (p.replicas.to_vec(), p.isr.to_vec(), p.leader),
        (vec![1, 2], vec![1, 2], 1)
    );
    assert!(!p.reassigning());
}

#[test]
fn a_new_target_replaces_the_reassignment_in_progress() {
    let (mut c, _) = cluster(&[1, 2]);
    assert_eq!(reassign(&mut c, Some(&[3, 4])), errors::NONE);
    // From the original [1, 2], not from [3, 4, 1, 2]: 4 is no longer wanted.
    assert_eq!(reassign(&mut c, Some(&[1, 3])), errors::NONE);
    let p = partition(&c);
    assert_eq!(p.replicas.to_vec(), vec![1, 3, 2]);
    assert_eq!(
        (p.adding().to_vec(), p.removing().to_vec()),
        (vec![3], vec![2])
    );
}

#[test]
fn bad_targets_are_refused_with_kafkas_codes() {
    let (mut c, _) = cluster(&[1, 2]);
    let code = |c: &mut Controller, r: &[i32]| reassign(c, Some(r));
    assert_eq!(code(&mut c, &[]), errors::INVALID_REPLICA_ASSIGNMENT);
    assert_eq!(code(&mut c, &[1, 1]), errors::INVALID_REPLICA_ASSIGNMENT);
    assert_eq!(code(&mut c, &[1, 9]), errors::INVALID_REPLICA_ASSIGNMENT);
    let unknown = Reassignment {
        topic: "nope".into(),
        partition: 0,
        replicas: Some(vec![1]),
    };
    let (records, results) = c.alter_reassignments(&[unknown], true);
    assert_eq!(
        (records, results[0].2),
        (vec![], errors::UNKNOWN_TOPIC_OR_PARTITION)
    );
    // KIP-860: a request may forbid changing the replication factor.
    let (records, results) = c.alter_reassignments(&to(Some(&[1, 2, 3])), false);
    assert_eq!(
        (records, results[0].2),
        (Vec::<Record>::new(), errors::INVALID_REPLICATION_FACTOR)
    );
    assert_eq!(code(&mut c, &[1, 2, 3]), errors::NONE, "allowed by default");
}

/// xorshift64*: the same steps for a seed on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// What must hold of a partition whatever happened to it.
fn check(p: &PartitionInfo, step: &str) {
    let distinct: std::collections::BTreeSet<_> = p.replicas.iter().collect();
    assert_eq!(distinct.len(), p.replicas.len(), "{step}: replicas {p:?}");
    for r in p.adding().iter().chain(p.removing()).chain(&p.isr) {
        assert!(
            p.replicas.contains(r),
            "{step}: {r} is not a replica: {p:?}"
        );
    }
    assert!(
        p.adding().iter().all(|r| !p.removing().contains(r)),
        "{step}: adding and removing overlap: {p:?}"
    );
    assert!(!p.isr.is_empty(), "{step}: empty ISR: {p:?}");
    assert!(
        p.leader == strom_metadata::image::NO_LEADER || p.isr.contains(&p.leader),
        "{step}: a leader outside the ISR: {p:?}"
    );
    if p.reassigning() {
        let target = p.target_replicas();
        assert!(!target.is_empty(), "{step}: {p:?}");
        assert!(
            !target.iter().all(|r| p.isr.contains(r)),
            "{step}: every target replica in the ISR, yet still reassigning: {p:?}"
        );
        // The target first, then the replicas leaving.
        assert_eq!(
            p.replicas[..target.len()],
            target[..],
            "{step}: replica order {p:?}"
        );
    }
}

/// Random reassignments, cancellations, ISR changes by the leader, fencings and returns,
/// 200 seeds of 40 steps: after every step the partition keeps its invariants, and its
/// partition epoch and leader epoch never go back.
#[test]
fn random_steps_keep_the_reassignment_invariants() {
    for seed in 1..=200u64 {
        let (mut c, epochs) = cluster(&[1, 2]);
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut before = partition(&c);
        for step in 0..40 {
            let p = partition(&c);
            let what = match next(&mut rng) % 5 {
                0 => {
                    let n = 1 + (next(&mut rng) % 3) as usize;
                    let mut target: Vec<i32> = Vec::new();
                    while target.len() < n {
                        let b = 1 + (next(&mut rng) % 4) as i32;
                        if !target.contains(&b) {
                            target.push(b);
                        }
                    }
                    let code = reassign(&mut c, Some(&target));
                    assert!(
                        code == errors::NONE || code == errors::INVALID_REPLICA_ASSIGNMENT,
                        "seed {seed} step {step}: reassign to {target:?} gave {code}"
                    );
                    format!("reassign to {target:?}")
                }
                1 => {
                    let code = reassign(&mut c, None);
                    assert!(
                        code == errors::NONE
                            || code == errors::NO_REASSIGNMENT_IN_PROGRESS
                            || code == errors::INVALID_REPLICA_ASSIGNMENT,
                        "seed {seed} step {step}: cancel gave {code}"
                    );
                    "cancel".into()
                }
                2 | 3 if p.leader != strom_metadata::image::NO_LEADER => {
                    // The leader takes in a replica that caught up, or drops a laggard.
                    let r = p.replicas[(next(&mut rng) % p.replicas.len() as u64) as usize];
                    let mut asked = p.isr.to_vec();
                    if asked.contains(&r) {
                        if r != p.leader && asked.len() > 1 {
                            asked.retain(|x| *x != r);
                        }
                    } else {
                        asked.push(r);
                    }
                    let a = AlterPartition {
                        broker: p.leader,
                        broker_epoch: epochs[p.leader as usize - 1],
                        topic: "t".into(),
                        partition: 0,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        isr: asked.to_vec(),
                    };
                    if let Ok((_, records)) = c.alter_partition(&a) {
                        c.replay(&records);
                    }
                    format!("ISR {asked:?} asked by {}", p.leader)
                }
                _ => {
                    let b = 1 + (next(&mut rng) % 4) as i32;
                    if c.image().brokers[&b].fenced {
                        let records = c
                            .heartbeat(b, epochs[b as usize - 1], false, 0)
                            .unwrap()
                            .records;
                        c.replay(&records);
                        format!("broker {b} back")
                    } else {
                        let records = c.fence(b);
                        c.replay(&records);
                        format!("broker {b} fenced")
                    }
                }
            };
            let after = partition(&c);
            let at = format!("seed {seed} step {step} ({what})");
            check(&after, &at);
            assert!(after.partition_epoch >= before.partition_epoch, "{at}");
            assert!(after.leader_epoch >= before.leader_epoch, "{at}");
            before = after;
        }
    }
}
