//! Replication across three nodes (see `cluster_nodes`): a topic with replication factor 3,
//! written with librdkafka's idempotent acks=all producer, is copied byte for byte to every
//! replica; SIGKILL of a partition's leader moves leadership to another replica of the
//! ISR, and every acknowledged record is read back exactly once, in order. Each node runs two
//! replica fetchers per leader (`num.replica.fetchers=2`).

mod cluster_nodes;
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_nodes::{Node, bootstrap, ok, three_nodes_with};
use common::wait_for;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

type Acked = Arc<Mutex<Vec<(i32, i64, String)>>>;

struct Ctx(Acked);
impl rdkafka::ClientContext for Ctx {}
impl rdkafka::producer::ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        let m = r.as_ref().expect("every record is acknowledged");
        let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        self.0.lock().unwrap().push((m.partition(), m.offset(), v));
    }
}

fn produce(via: &Node, from: usize, n: usize, acked: &Acked) {
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(via))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Ctx(acked.clone()))
        .expect("producer");
    for i in from..from + n {
        let (key, value) = (format!("key{}", i % 13), format!("value{i}"));
        producer
            .send(BaseRecord::to("rep").key(&key).payload(&value))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
}

/// (leader, replicas, isr) of every partition of `rep`, as `n` describes them.
fn partitions(n: &Node) -> Option<Vec<(i64, usize, usize)>> {
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "topics",
            "describe",
            "--topic",
            "rep",
            "--json",
            "--bootstrap-server",
            &bootstrap(n),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let parts = v.as_array()?.first()?["partitions"].as_array()?.clone();
    Some(
        parts
            .iter()
            .map(|p| {
                (
                    p["leader"].as_i64().unwrap(),
                    p["replicas"].as_array().unwrap().len(),
                    p["isr"].as_array().unwrap().len(),
                )
            })
            .collect(),
    )
}

/// The bytes of partition `p` of `rep` in node `i`'s data directory.
fn stored(tmp: &std::path::Path, i: usize, p: i32) -> Vec<u8> {
    let dir = tmp.join(format!("data{i}")).join(format!("rep-{p}"));
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    logs.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    logs.iter()
        .flat_map(|l| std::fs::read(l).unwrap())
        .collect()
}

#[test]
fn replicas_copy_the_leader_byte_for_byte_and_a_killed_leader_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(
        tmp.path(),
        "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=200\nreplica.lag.time.max.ms=2000\n\
         num.replica.fetchers=2",
    );
    ok(
        &[
            "topics",
            "create",
            "--topic",
            "rep",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );
    let parts = wait_for("rep everywhere", Duration::from_secs(30), || {
        partitions(&nodes[1]).filter(|p| p.len() == 3)
    });
    assert!(
        parts.iter().all(|(_, r, i)| *r == 3 && *i == 3),
        "{parts:?}"
    );

    let acked: Acked = Arc::default();
    produce(&nodes[0], 0, 300, &acked);
    assert_eq!(acked.lock().unwrap().len(), 300);
    // Every replica holds the leader's bytes.
    for p in 0..3 {
        wait_for("the replicas to agree", Duration::from_secs(30), || {
            let first = stored(tmp.path(), 1, p);
            (!first.is_empty()
                && first == stored(tmp.path(), 2, p)
                && first == stored(tmp.path(), 3, p))
            .then_some(())
        });
    }

    // SIGKILL the leader of partition 0: another replica of the ISR takes over.
    let victim = parts[0].0;
    let survivor = (1..=3).find(|id| *id != victim).unwrap();
    let s = survivor as usize - 1;
    nodes[victim as usize - 1].child.kill().unwrap();
    nodes[victim as usize - 1].child.wait().unwrap();
    let killed = Instant::now();
    wait_for(
        "a new leader for partition 0",
        Duration::from_secs(30),
        || partitions(&nodes[s]).filter(|p| p[0].0 != victim && p[0].0 >= 1),
    );
    eprintln!(
        "SIGKILL to a new leader: {} ms",
        killed.elapsed().as_millis()
    );
    produce(&nodes[s], 300, 100, &acked);
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 400);

    let mut want: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (p, o, v) in &acked {
        want.entry(*p).or_default().push((*o, v.clone()));
    }
    for r in want.values_mut() {
        r.sort();
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(&nodes[s]))
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("rep", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while n < 400 {
        assert!(Instant::now() < deadline, "read only {n} of 400");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no consume error");
            let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            got.entry(m.partition()).or_default().push((m.offset(), v));
            n += 1;
        }
    }
    assert_eq!(got, want, "every acknowledged record once, at its offset");
}

/// Followers long-poll their leaders (here for 110 s): a partition new to a follower does
/// not wait for the poll in flight to end. An acks=all write to a new topic, created while
/// every follower's fetch is parked on an idle topic, is acknowledged within the client's
/// 60 s delivery timeout (it waited out the poll before, and failed).
#[test]
fn a_new_topic_is_replicated_without_waiting_out_the_followers_long_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes_with(
        tmp.path(),
        "replica.fetch.wait.max.ms=110000\nreplica.lag.time.max.ms=120000\nmin.insync.replicas=3",
    );
    // Every broker leads a partition of the idle topic: every follower polls every leader.
    cluster_nodes::create_topic(&nodes[0], "idle", 3, 3);
    wait_for("idle everywhere", Duration::from_secs(30), || {
        cluster_nodes::describe_partitions(&bootstrap(&nodes[1]), "idle").filter(|ps| {
            ps.len() == 3
                && ps
                    .iter()
                    .all(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
        })
    });
    cluster_nodes::create_topic(&nodes[0], "fresh", 1, 3);
    struct Outcome(Arc<Mutex<Option<Result<i64, String>>>>);
    impl rdkafka::ClientContext for Outcome {}
    impl rdkafka::producer::ProducerContext for Outcome {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
            *self.0.lock().unwrap() = Some(match r {
                Ok(m) => Ok(m.offset()),
                Err((e, _)) => Err(e.to_string()),
            });
        }
    }
    let outcome = Arc::new(Mutex::new(None));
    let producer: rdkafka::producer::BaseProducer<Outcome> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(&nodes[0]))
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create_with_context(Outcome(outcome.clone()))
        .unwrap();
    producer
        .send(BaseRecord::<(), str>::to("fresh").payload("first"))
        .expect("queued");
    producer.flush(Duration::from_secs(90)).unwrap();
    assert_eq!(
        outcome.lock().unwrap().clone(),
        Some(Ok(0)),
        "acknowledged by all three replicas within the delivery timeout"
    );
}
