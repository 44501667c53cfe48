//! The coordinators' internal topics replicated across three nodes: `__consumer_offsets`
//! and `__transaction_state` get Kafka's replication factor 3 (and the transaction log its
//! min.insync.replicas 2), so SIGKILL of a group's coordinator loses no committed offset
//! and of a transaction coordinator no transactional id: the new leader of the internal
//! partition takes the coordinators over with their state.

mod cluster_nodes;
mod common;

use std::time::Duration;

use cluster_nodes::{Node, bootstrap, ok, three_nodes_with};
use common::wait_for;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// (leader, replicas, isr) of one partition.
type Placement = (i32, Vec<i64>, Vec<i64>);

/// Every partition of `topic`, as `n` describes them.
fn partitions(n: &Node, topic: &str) -> Option<Vec<Placement>> {
    let ids = |v: &serde_json::Value| -> Option<Vec<i64>> {
        v.as_array()?.iter().map(|x| x.as_i64()).collect()
    };
    cluster_nodes::describe_partitions(&bootstrap(n), topic)?
        .iter()
        .map(|p| {
            Some((
                p["leader"].as_i64()? as i32,
                ids(&p["replicas"])?,
                ids(&p["isr"])?,
            ))
        })
        .collect()
}

fn consumer(via: &Node, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap(via))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

fn offsets(list: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in list {
        tpl.add_partition_offset("t", *p, Offset::Offset(*o))
            .unwrap();
    }
    tpl
}

/// Commits `list` for `group` through `via`, retrying while the coordinator moves.
fn commit(via: &Node, group: &str, list: &[(i32, i64)]) {
    let c = consumer(via, group);
    wait_for("the commit", Duration::from_secs(60), || {
        c.commit(&offsets(list), CommitMode::Sync).ok()
    });
}

/// The committed offsets of `group` on `t`'s three partitions, as `via`'s cluster answers.
fn committed(via: &Node, group: &str) -> Option<Vec<(i32, i64)>> {
    let c = consumer(via, group);
    let tpl = c
        .committed_offsets(offsets(&[(0, 0), (1, 0), (2, 0)]), Duration::from_secs(5))
        .ok()?;
    Some(
        tpl.elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), o)
            })
            .collect(),
    )
}

/// Kafka's placement of a group or transactional id in an internal topic's partitions.
fn partition_for(id: &str, partitions: i32) -> usize {
    let hash = id
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    ((hash & 0x7fff_ffff) % partitions) as usize
}

fn transactional_producer(
    via: &Node,
    id: &str,
) -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap(via))
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("producer")
}

/// One committed transaction of `n` records, retried whole while coordinators move.
fn commit_transaction(p: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>, n: usize) {
    p.begin_transaction().expect("begin");
    for i in 0..n {
        let v = format!("txn{i}");
        p.send(BaseRecord::to("t").key(&v).payload(&v))
            .expect("queued");
    }
    p.commit_transaction(Duration::from_secs(60))
        .expect("committed");
}

#[test]
fn internal_topics_are_replicated_and_their_coordinators_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(
        tmp.path(),
        "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=200\nreplica.lag.time.max.ms=2000",
    );
    ok(
        &[
            "topics",
            "create",
            "--topic",
            "t",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );
    commit(&nodes[0], "g1", &[(0, 5), (1, 7), (2, 9)]);
    let p = transactional_producer(&nodes[0], "tx1");
    p.init_transactions(Duration::from_secs(60)).expect("init");
    commit_transaction(&p, 10);
    drop(p);

    // Both internal topics have three replicas per partition, all in sync.
    for (topic, count) in [("__consumer_offsets", 6), ("__transaction_state", 4)] {
        let parts = wait_for(
            &format!("{topic} in sync on three replicas"),
            Duration::from_secs(30),
            || {
                partitions(&nodes[1], topic)
                    .filter(|ps| ps.len() == count && ps.iter().all(|(_, _, isr)| isr.len() == 3))
            },
        );
        assert!(
            parts.iter().all(|(_, r, _)| r.len() == 3),
            "{topic}: {parts:?}"
        );
    }
    let configs = ok(
        &[
            "configs",
            "describe",
            "--topic",
            "__transaction_state",
            "--bootstrap-server",
            &bootstrap(&nodes[1]),
        ],
        "",
    );
    assert!(
        configs
            .lines()
            .any(|l| l.contains("min.insync.replicas") && l.split_whitespace().any(|w| w == "2")),
        "{configs}"
    );

    // SIGKILL the group's coordinator: the leader of its __consumer_offsets partition.
    let offsets_parts = partitions(&nodes[1], "__consumer_offsets").unwrap();
    let coordinator = offsets_parts[partition_for("g1", 6)].0;
    assert!((1..=3).contains(&coordinator), "{offsets_parts:?}");
    let victim = &mut nodes[coordinator as usize - 1];
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let survivor = &nodes[(1..=3).find(|i| *i != coordinator).unwrap() as usize - 1];

    // The new coordinator has every offset committed before the kill.
    let got = wait_for(
        "the offsets from the new coordinator",
        Duration::from_secs(60),
        || committed(survivor, "g1").filter(|o| o.iter().all(|(_, off)| *off >= 0)),
    );
    assert_eq!(got, vec![(0, 5), (1, 7), (2, 9)]);
    // And takes new commits with one replica gone.
    commit(survivor, "g1", &[(0, 6), (1, 8), (2, 10)]);
    assert_eq!(
        committed(survivor, "g1"),
        Some(vec![(0, 6), (1, 8), (2, 10)])
    );

    // The transactional id survives too: a new producer with it fences the old epoch and
    // commits, with two of three replicas in the ISR (min.insync.replicas 2).
    let p = transactional_producer(survivor, "tx1");
    p.init_transactions(Duration::from_secs(60))
        .expect("init after the kill");
    commit_transaction(&p, 10);
    let txn_parts = partitions(survivor, "__transaction_state").unwrap();
    let (leader, _, isr) = &txn_parts[partition_for("tx1", 4)];
    assert_ne!(*leader, coordinator);
    assert!(!isr.contains(&(coordinator as i64)), "{txn_parts:?}");
}
