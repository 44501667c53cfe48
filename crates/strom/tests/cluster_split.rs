//! Split mode (see `cluster_nodes::split_nodes`): three controllers that are only the
//! metadata quorum, two brokers that follow it as observers. Clients know only the brokers.

mod cluster_nodes;
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_nodes::{Node, bootstrap, ok, split_nodes};
use common::wait_for;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

fn describe(n: &Node) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "cluster",
            "describe",
            "--json",
            "--bootstrap-server",
            &bootstrap(n),
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).ok()
}

fn leaders(n: &Node, topic: &str) -> Option<Vec<i64>> {
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "topics",
            "describe",
            "--topic",
            topic,
            "--json",
            "--bootstrap-server",
            &bootstrap(n),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let parts = v.as_array()?.first()?["partitions"].as_array()?.clone();
    Some(parts.iter().filter_map(|p| p["leader"].as_i64()).collect())
}

fn create(n: &Node, topic: &str, partitions: u32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "topics",
            "create",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--bootstrap-server",
            &bootstrap(n),
        ])
        .output()
        .unwrap()
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|x| x[key].as_i64()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn brokers_follow_a_quorum_of_controllers_and_serve_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let (_controllers, brokers) = split_nodes(tmp.path(), "");
    let (b4, b5) = (&brokers[0], &brokers[1]);

    // The brokers are the cluster's brokers; the controllers are its voters; the brokers
    // are observers of the metadata log.
    let d = wait_for("observers in the quorum", Duration::from_secs(30), || {
        describe(b4).filter(|d| ids(&d["quorum"]["observers"], "id") == vec![4, 5])
    });
    assert_eq!(ids(&d["brokers"], "id"), vec![4, 5], "{d}");
    assert_eq!(ids(&d["quorum"]["voters"], "id"), vec![1, 2, 3], "{d}");
    assert!(
        (1..=3).contains(&d["quorum"]["leader"].as_i64().unwrap()),
        "{d}"
    );

    // Topics created through either broker are seen through both, spread over both.
    assert!(create(b4, "a", 12).status.success());
    assert!(create(b5, "b", 12).status.success());
    for t in ["a", "b"] {
        let seen = wait_for("the topic on broker 4", Duration::from_secs(30), || {
            leaders(b4, t).filter(|l| l.len() == 12)
        });
        wait_for("the same on broker 5", Duration::from_secs(30), || {
            leaders(b5, t).filter(|l| *l == seen)
        });
        let mut spread = seen.clone();
        spread.sort();
        spread.dedup();
        assert_eq!(spread, vec![4, 5], "{t}: {seen:?}");
    }

    // One name created through both brokers at once, then grown through both at once:
    // the controller decides, and exactly one of each pair wins.
    let race = |args: &[&str], loser: &str| {
        let racers: Vec<_> = [b4, b5]
            .iter()
            .map(|b| {
                Command::new(env!("CARGO_BIN_EXE_strom"))
                    .args(args)
                    .args(["--bootstrap-server", &bootstrap(b)])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = racers
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "{args:?}: {outs:?}");
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(err.contains(loser), "{args:?}: {err}");
    };
    for i in 0..4 {
        let name = format!("race-{i}");
        race(
            &["topics", "create", "--topic", &name, "--partitions", "3"],
            "TOPIC_ALREADY_EXISTS",
        );
        race(
            &["topics", "alter", "--topic", &name, "--partitions", "5"],
            "INVALID_PARTITIONS",
        );
        for b in [b4, b5] {
            wait_for(
                "the grown topic on both brokers",
                Duration::from_secs(30),
                || leaders(b, &name).filter(|l| l.len() == 5),
            );
        }
    }

    librdkafka_round_trip(b4, b5);
    transactions_across_brokers(b5, b4);
    offsets_committed_in_a_transaction(b4, b5);

    // A group through broker 5, its offsets seen through broker 4.
    let input: String = (0..60).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(
        &[
            "produce",
            "--topic",
            "b",
            "--key-separator",
            ":",
            "--bootstrap-server",
            &bootstrap(b4),
        ],
        &input,
    );
    let out = ok(
        &[
            "consume",
            "--topic",
            "b",
            "--from-beginning",
            "--group",
            "readers",
            "--isolation-level",
            "read_committed",
            "--max-messages",
            "132",
            "--timeout-ms",
            "20000",
            "--bootstrap-server",
            &bootstrap(b5),
        ],
        "",
    );
    assert_eq!(out.lines().count(), 132);
    let g = wait_for("the group's offsets", Duration::from_secs(30), || {
        let out = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args([
                "groups",
                "describe",
                "--group",
                "readers",
                "--json",
                "--bootstrap-server",
                &bootstrap(b4),
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        // Every partition holds a record of the group's (the end markers at least).
        let offsets = v["offsets"].as_array()?;
        let all = offsets.len() == 12
            && offsets
                .iter()
                .all(|o| o["current_offset"].as_i64().is_some_and(|c| c > 0));
        all.then_some(v)
    });
    // Nothing left but what no record follows: transaction markers.
    assert!(g["total_lag"].as_i64().unwrap() <= 12, "{g}");
}

/// Idempotent `acks=all` records through one broker, read back exactly through the other.
fn librdkafka_round_trip(via: &Node, back: &Node) {
    type Acked = std::sync::Arc<std::sync::Mutex<Vec<(i32, i64, String)>>>;
    let acked: Acked = Default::default();
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
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(via))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Ctx(acked.clone()))
        .expect("producer");
    for i in 0..600 {
        let (key, value) = (format!("key{}", i % 37), format!("value{i}"));
        producer
            .send(BaseRecord::to("a").key(&key).payload(&value))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
    let mut want: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (p, o, v) in acked.lock().unwrap().iter() {
        want.entry(*p).or_default().push((*o, v.clone()));
    }
    for r in want.values_mut() {
        r.sort();
    }
    assert_eq!(want.values().map(Vec::len).sum::<usize>(), 600);
    let got = read(back, "a", "read_uncommitted", 600);
    assert_eq!(got, want, "exactly the acknowledged records, in order");
}

/// Every record of `topic` through `n`, per partition, until `count` arrived.
fn read(n: &Node, topic: &str, isolation: &str, count: usize) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(n))
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..12 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while n < count {
        assert!(Instant::now() < deadline, "read only {n} of {count}");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no consume error");
            let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            got.entry(m.partition()).or_default().push((m.offset(), v));
            n += 1;
        }
    }
    got
}

/// A transactional producer through one broker (its coordinator on either broker, its
/// data on both): a committed transaction, an aborted one, then a committed end marker
/// on every partition. A read_committed consumer through the other broker sees the
/// committed records and the markers, nothing of the aborted transaction.
fn transactions_across_brokers(via: &Node, back: &Node) {
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(via))
        .set("transactional.id", "split-copier")
        .create()
        .expect("transactional producer");
    let t = Duration::from_secs(30);
    producer.init_transactions(t).expect("init");
    let send = |value: String, partition: Option<i32>| {
        let key = value.clone();
        let mut r = BaseRecord::to("b").key(&key).payload(&value);
        if let Some(p) = partition {
            r = r.partition(p);
        }
        producer.send(r).expect("queued");
    };
    producer.begin_transaction().unwrap();
    for i in 0..60 {
        send(format!("committed-{i}"), None);
    }
    producer.commit_transaction(t).expect("committed");
    producer.begin_transaction().unwrap();
    for i in 0..30 {
        send(format!("aborted-{i}"), None);
    }
    producer.flush(t).unwrap();
    producer.abort_transaction(t).expect("aborted");
    producer.begin_transaction().unwrap();
    for p in 0..12 {
        send(format!("end-{p}"), Some(p));
    }
    producer.commit_transaction(t).expect("committed");

    let got = read(back, "b", "read_committed", 72);
    let values: Vec<&String> = got.values().flatten().map(|(_, v)| v).collect();
    assert_eq!(
        values
            .iter()
            .filter(|v| v.starts_with("committed-"))
            .count(),
        60
    );
    assert_eq!(values.iter().filter(|v| v.starts_with("end-")).count(), 12);
    assert!(
        !values.iter().any(|v| v.starts_with("aborted-")),
        "{values:?}"
    );
}

/// A copier's transaction: what it read of "a" (through one broker) and the group offsets
/// of that read go in one transaction (through the other broker). The group coordinator,
/// the transaction coordinator and the data may each be on either broker: the offsets
/// count only once the transaction commits, and an aborted one leaves none.
fn offsets_committed_in_a_transaction(read_via: &Node, write_via: &Node) {
    let t = Duration::from_secs(30);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(read_via))
        .set("group.id", "split-copier-group")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..12 {
        tpl.add_partition_offset("a", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(write_via))
        .set("transactional.id", "split-copier-2")
        .create()
        .expect("transactional producer");
    producer.init_transactions(t).expect("init");
    let committed = |c: &BaseConsumer| -> i64 {
        let mut tpl = TopicPartitionList::new();
        for p in 0..12 {
            tpl.add_partition("a", p);
        }
        c.committed_offsets(tpl, t)
            .unwrap()
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .sum()
    };
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut copied = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while copied < 600 {
        assert!(Instant::now() < deadline, "copied only {copied} of 600");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no consume error");
            positions.insert(m.partition(), m.offset() + 1);
            copied += 1;
        }
    }
    let mut offsets = TopicPartitionList::new();
    for (p, o) in &positions {
        offsets
            .add_partition_offset("a", *p, Offset::Offset(*o))
            .unwrap();
    }
    let metadata = consumer.group_metadata().expect("group metadata");
    // Aborted: the offsets do not count.
    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::to("b").key("copy").payload("aborted copy"))
        .expect("queued");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, t)
        .expect("offsets in the transaction");
    producer.abort_transaction(t).expect("aborted");
    assert_eq!(
        committed(&consumer),
        0,
        "an aborted transaction commits no offsets"
    );
    // Committed: they count, all of them.
    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::to("b").key("copy").payload("copied"))
        .expect("queued");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, t)
        .expect("offsets in the transaction");
    producer.commit_transaction(t).expect("committed");
    assert_eq!(committed(&consumer), 600);
}

/// SIGKILL of the controller that leads the quorum: the brokers follow the new one (their
/// fetches and heartbeats go to the other voters), stay unfenced, and go on serving: a topic
/// created through a broker afterwards is placed on both and takes records through both.
#[test]
fn brokers_ride_out_the_loss_of_the_active_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut controllers, brokers) = split_nodes(
        tmp.path(),
        "broker.session.timeout.ms=3000\nbroker.heartbeat.interval.ms=300",
    );
    let (b4, b5) = (&brokers[0], &brokers[1]);
    let leader = wait_for("a quorum leader", Duration::from_secs(30), || {
        describe(b4)?["quorum"]["leader"]
            .as_i64()
            .filter(|l| (1..=3).contains(l))
    });
    let victim = &mut controllers[leader as usize - 1];
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();

    let d = wait_for("a new quorum leader", Duration::from_secs(30), || {
        describe(b5).filter(|d| {
            d["quorum"]["leader"]
                .as_i64()
                .is_some_and(|l| l != leader && l >= 1)
        })
    });
    assert_eq!(ids(&d["brokers"], "id"), vec![4, 5], "{d}");
    // Watched for twice the session timeout: had their heartbeats not reached the new
    // controller, it would have fenced them by then.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(6) {
        if let Some(d) = describe(b4) {
            let fenced: Vec<&serde_json::Value> = d["brokers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["fenced"].as_bool() == Some(true))
                .collect();
            assert!(fenced.is_empty(), "fenced after the failover: {d}");
        }
    }
    assert!(create(b5, "after", 12).status.success());
    let placed = wait_for("after on both brokers", Duration::from_secs(30), || {
        leaders(b4, "after").filter(|l| l.len() == 12)
    });
    let mut spread = placed.clone();
    spread.sort();
    spread.dedup();
    assert_eq!(spread, vec![4, 5], "both brokers are live: {placed:?}");
    let input: String = (0..48).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(
        &[
            "produce",
            "--topic",
            "after",
            "--key-separator",
            ":",
            "--bootstrap-server",
            &bootstrap(b4),
        ],
        &input,
    );
    let out = ok(
        &[
            "consume",
            "--topic",
            "after",
            "--from-beginning",
            "--max-messages",
            "48",
            "--timeout-ms",
            "20000",
            "--format",
            "{key}:{value}",
            "--bootstrap-server",
            &bootstrap(b5),
        ],
        "",
    );
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want: Vec<String> = (0..48).map(|i| format!("k{i}:v{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}
