//! A cluster of three `strom server` processes (see `cluster_nodes`): topics created through
//! one broker are seen by all, partitions spread over the brokers, records produced through
//! one broker are consumed through another (by strom's CLI and by librdkafka), and a group's
//! coordinator is wherever its `__consumer_offsets` partition is led.

mod cluster_nodes;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_nodes::{Node, bootstrap, ok, three_nodes};
use common::wait_for;

#[test]
fn three_nodes_share_one_metadata_view_and_serve_each_others_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());

    // Every broker sees the other two, and the same quorum with one leader.
    let describe = |n: &Node| -> (String, serde_json::Value) {
        let d = ok(
            &[
                "cluster",
                "describe",
                "--json",
                "--bootstrap-server",
                &bootstrap(n),
            ],
            "",
        );
        let v = serde_json::from_str(&d).unwrap();
        (d, v)
    };
    for n in &nodes {
        // A node serves once its own registration is in; the others' may follow.
        wait_for(
            "every broker in every node's view",
            Duration::from_secs(30),
            || (describe(n).1["brokers"].as_array().unwrap().len() == 3).then_some(()),
        );
        let (d, v) = describe(n);
        assert_eq!(v["brokers"].as_array().unwrap().len(), 3, "{d}");
        assert_eq!(v["quorum"]["voters"].as_array().unwrap().len(), 3, "{d}");
        assert!(v["quorum"]["leader"].as_i64().unwrap() >= 1, "{d}");
    }
    // DescribeQuorum goes to the quorum's leader, which alone knows how far every voter
    // is: any node answers with every voter's log end offset.
    for n in &nodes {
        wait_for(
            "every voter's log end offset through every node",
            Duration::from_secs(30),
            || {
                describe(n).1["quorum"]["voters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["log_end_offset"].as_i64().is_some_and(|o| o > 0))
                    .then_some(())
            },
        );
    }

    // A topic created through node 1 is seen, with the same leaders, through 2 and 3.
    ok(
        &[
            "topics",
            "create",
            "--topic",
            "spread",
            "--partitions",
            "12",
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );
    let leaders = |n: &Node| -> Option<Vec<i64>> {
        let out = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args([
                "topics",
                "describe",
                "--topic",
                "spread",
                "--json",
                "--bootstrap-server",
                &bootstrap(n),
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let parts = v.as_array()?.first()?["partitions"].as_array()?.clone();
        let l: Vec<i64> = parts.iter().filter_map(|p| p["leader"].as_i64()).collect();
        (l.len() == 12).then_some(l)
    };
    let first = wait_for(
        "node 1 describes the topic",
        Duration::from_secs(30),
        || leaders(&nodes[0]),
    );
    for n in &nodes[1..] {
        let same = wait_for(
            "the others see the same leaders",
            Duration::from_secs(30),
            || leaders(n).filter(|l| *l == first),
        );
        assert_eq!(same, first);
    }
    let distinct: std::collections::BTreeSet<i64> = first.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "partitions spread over the three brokers: {first:?}"
    );

    // Records produced through node 3 are consumed, exactly, through node 2.
    let input: String = (0..120).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(
        &[
            "produce",
            "--topic",
            "spread",
            "--key-separator",
            ":",
            "--bootstrap-server",
            &bootstrap(&nodes[2]),
        ],
        &input,
    );
    let out = ok(
        &[
            "consume",
            "--topic",
            "spread",
            "--from-beginning",
            "--max-messages",
            "120",
            "--timeout-ms",
            "20000",
            "--format",
            "{key}:{value}",
            "--bootstrap-server",
            &bootstrap(&nodes[1]),
        ],
        "",
    );
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want: Vec<String> = (0..120).map(|i| format!("k{i}:v{i}")).collect();
    want.sort();
    assert_eq!(got, want);

    // A consumer group through node 1: its coordinator may be any of the three; its
    // committed offsets are seen through node 3.
    let out = ok(
        &[
            "consume",
            "--topic",
            "spread",
            "--from-beginning",
            "--group",
            "readers",
            "--max-messages",
            "120",
            "--timeout-ms",
            "20000",
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );
    assert_eq!(out.lines().count(), 120);
    let described = wait_for(
        "the group's offsets through node 3",
        Duration::from_secs(30),
        || {
            let out = Command::new(env!("CARGO_BIN_EXE_strom"))
                .args([
                    "groups",
                    "describe",
                    "--group",
                    "readers",
                    "--json",
                    "--bootstrap-server",
                    &bootstrap(&nodes[2]),
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains("spread")).then_some(text)
        },
    );
    assert!(described.contains("spread"), "{described}");
}

/// librdkafka against the cluster, knowing only node 1: it follows the metadata to every
/// partition's leader, its idempotent `acks=all` records land on all three brokers, and a
/// consumer bootstrapped from node 2 reads back exactly what was acknowledged, partition
/// by partition and in order.
#[test]
fn librdkafka_produces_and_consumes_across_the_brokers() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    produce_and_consume(&nodes, "1");
}

/// Brokers with a client listener and an INTERNAL one for themselves
/// (`inter.broker.listener.name`): followers copy over INTERNAL (acks=all completes, the
/// ISRs stay whole), and clients are given only the PLAINTEXT addresses.
#[test]
fn brokers_replicate_over_their_inter_broker_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = cluster_nodes::three_nodes_with_internal_listener(tmp.path());
    produce_and_consume(&nodes, "3");
    let c: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap(&nodes[2]))
        .create()
        .unwrap();
    let md =
        rdkafka::consumer::Consumer::fetch_metadata(&c, None, Duration::from_secs(10)).unwrap();
    let mut ports: Vec<i32> = md.brokers().iter().map(|b| b.port()).collect();
    ports.sort();
    let mut want: Vec<i32> = nodes.iter().map(|n| n.port as i32).collect();
    want.sort();
    assert_eq!(ports, want);
    let parts = cluster_nodes::describe_partitions(&bootstrap(&nodes[0]), "rd").unwrap();
    for p in parts {
        assert_eq!(p["isr"].as_array().unwrap().len(), 3, "{p}");
    }
    // The followers' connections are to the INTERNAL ports (from the nodes' configs).
    let internal: Vec<u16> = nodes
        .iter()
        .map(|n| {
            let config = std::fs::read_to_string(&n.config).unwrap();
            let at = config.find("INTERNAL://127.0.0.1:").unwrap() + "INTERNAL://127.0.0.1:".len();
            config[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let established_to_internal = tcp
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
            f.len() > 3 && f[3] == "01" && internal.contains(&port(f[1]))
        })
        .count();
    assert!(
        established_to_internal >= 2,
        "no broker connected to another's INTERNAL listener: {internal:?}"
    );
}

/// 600 keyed records through librdkafka (idempotent, acks=all) to a 6-partition topic of
/// `replication_factor`, read back through another broker: exactly the acknowledged
/// records per partition, in order, spread over all three leaders.
fn produce_and_consume(nodes: &[Node], replication_factor: &str) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};
    use std::collections::BTreeMap;

    ok(
        &[
            "topics",
            "create",
            "--topic",
            "rd",
            "--partitions",
            "6",
            "--replication-factor",
            replication_factor,
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );

    let acked: std::sync::Arc<std::sync::Mutex<Vec<(i32, i64, String)>>> = Default::default();
    struct Ctx(std::sync::Arc<std::sync::Mutex<Vec<(i32, i64, String)>>>);
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
        .set("bootstrap.servers", bootstrap(&nodes[0]))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Ctx(acked.clone()))
        .expect("producer");
    for i in 0..600 {
        let key = format!("key{}", i % 37);
        let value = format!("value{i}");
        producer
            .send(
                BaseRecord::<String, String>::to("rd")
                    .key(&key)
                    .payload(&value),
            )
            .expect("queued");
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 600);

    let mut want: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (p, o, v) in &acked {
        want.entry(*p).or_default().push((*o, v.clone()));
    }
    for records in want.values_mut() {
        records.sort();
    }
    let leaders: std::collections::BTreeSet<i64> = {
        let out = ok(
            &[
                "topics",
                "describe",
                "--topic",
                "rd",
                "--json",
                "--bootstrap-server",
                &bootstrap(&nodes[0]),
            ],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| want.contains_key(&(p["partition"].as_i64().unwrap() as i32)))
            .map(|p| p["leader"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(leaders.len(), 3, "records landed on all three brokers");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(&nodes[1]))
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset("rd", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while n < 600 {
        assert!(Instant::now() < deadline, "consumed only {n} of 600");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no consume error");
            let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            got.entry(m.partition()).or_default().push((m.offset(), v));
            n += 1;
        }
    }
    assert_eq!(
        got, want,
        "each partition holds exactly the acknowledged records, in order"
    );
    for records in got.values() {
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
}
