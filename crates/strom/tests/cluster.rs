//! Three `strom server` processes in combined mode (broker and controller), formatted with
//! one cluster id and joined into one metadata quorum over their CONTROLLER listeners:
//! topics created through one broker are seen by all, partitions spread over the brokers,
//! records produced through one broker are consumed through another, and a group's
//! coordinator is wherever its `__consumer_offsets` partition is led.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Formats and starts three nodes at once (each waits for its quorum to form).
fn three_nodes(tmp: &std::path::Path) -> Vec<Node> {
    let brokers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let controllers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let voters = controllers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let cluster = String::from_utf8(strom(&["storage", "random-uuid"]).stdout).unwrap();
    let mut started = Vec::new();
    for i in 0..3 {
        let config = tmp.join(format!("node{}.properties", i + 1));
        std::fs::write(
            &config,
            format!(
                "node.id={}\nprocess.roles=broker,controller\ncontroller.quorum.voters={voters}\n\
                 controller.listener.names=CONTROLLER\n\
                 listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 log.dirs={}\ncontroller.quorum.election.timeout.ms=300\n\
                 offsets.topic.num.partitions=6\ngroup.initial.rebalance.delay.ms=0\n",
                i + 1,
                brokers[i],
                controllers[i],
                tmp.join(format!("data{}", i + 1)).display()
            ),
        )
        .unwrap();
        let c = config.to_str().unwrap().to_string();
        ok(&["storage", "format", "-t", cluster.trim(), "-c", &c], "");
        let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args(["server", "--config", &c])
            .env("STROM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        started.push((
            Node {
                child,
                port: brokers[i],
            },
            rx,
        ));
    }
    started
        .into_iter()
        .map(|(node, rx)| {
            rx.recv_timeout(Duration::from_secs(120))
                .expect("every node starts once its quorum forms");
            node
        })
        .collect()
}

fn bootstrap(n: &Node) -> String {
    format!("127.0.0.1:{}", n.port)
}

#[test]
fn three_nodes_share_one_metadata_view_and_serve_each_others_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());

    // Every broker sees the other two, and the same quorum with one leader.
    for n in &nodes {
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
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["brokers"].as_array().unwrap().len(), 3, "{d}");
        assert_eq!(v["quorum"]["voters"].as_array().unwrap().len(), 3, "{d}");
        assert!(v["quorum"]["leader"].as_i64().unwrap() >= 1, "{d}");
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

/// SIGKILL of the quorum's leader during a stream of topic creations: the other two elect
/// a new leader, creations go on through them, and every creation that was acknowledged
/// exists afterwards on both survivors.
#[test]
fn killing_the_quorum_leader_loses_no_acknowledged_creation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(tmp.path());
    let describe = |n: &Node| -> Option<serde_json::Value> {
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
    };
    let leader = wait_for("a quorum leader", Duration::from_secs(30), || {
        describe(&nodes[0])?["quorum"]["leader"]
            .as_i64()
            .filter(|l| *l >= 1)
    }) as usize;
    let killed = leader - 1;
    let through = (killed + 1) % 3;
    let create = |n: &Node, name: &str| -> bool {
        Command::new(env!("CARGO_BIN_EXE_strom"))
            .args([
                "topics",
                "create",
                "--topic",
                name,
                "--partitions",
                "1",
                "--bootstrap-server",
                &bootstrap(n),
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        assert!(create(&nodes[through], &name));
        acknowledged.push(name);
    }
    let _ = nodes[killed].child.kill();
    let _ = nodes[killed].child.wait();
    let killed_at = Instant::now();
    let mut first_after = None;
    for i in 0..5 {
        let name = format!("after-{i}");
        wait_for(
            "a creation through a survivor",
            Duration::from_secs(60),
            || create(&nodes[through], &name).then_some(()),
        );
        first_after.get_or_insert(killed_at.elapsed());
        acknowledged.push(name);
    }
    eprintln!(
        "SIGKILL of the quorum leader to the next committed creation: {:?}",
        first_after.unwrap()
    );
    for (i, n) in nodes.iter().enumerate() {
        if i == killed {
            continue;
        }
        let listed = wait_for(
            "every acknowledged topic on a survivor",
            Duration::from_secs(30),
            || {
                let out = Command::new(env!("CARGO_BIN_EXE_strom"))
                    .args(["topics", "list", "--bootstrap-server", &bootstrap(n)])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                acknowledged
                    .iter()
                    .all(|t| text.contains(t.as_str()))
                    .then_some(text)
            },
        );
        for t in &acknowledged {
            assert!(
                listed.contains(t.as_str()),
                "{t} on node {}: {listed}",
                i + 1
            );
        }
    }
}

/// librdkafka against the cluster, knowing only node 1: it follows the metadata to every
/// partition's leader, its idempotent `acks=all` records land on all three brokers, and a
/// consumer bootstrapped from node 2 reads back exactly what was acknowledged, partition
/// by partition and in order.
#[test]
fn librdkafka_produces_and_consumes_across_the_brokers() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};
    use std::collections::BTreeMap;

    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    ok(
        &[
            "topics",
            "create",
            "--topic",
            "rd",
            "--partitions",
            "6",
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

/// SIGSTOP of the quorum's leader: the other two elect a new leader and creations go on
/// through them; after SIGCONT the paused node gives up its stale leadership, catches up
/// with every creation made while it slept, and commits again through the new leader.
#[test]
fn a_paused_quorum_leader_catches_up_after_it_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    let leader_seen_by = |n: &Node| -> Option<i64> {
        let out = strom(&[
            "cluster",
            "describe",
            "--json",
            "--bootstrap-server",
            &bootstrap(n),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["quorum"]["leader"].as_i64().filter(|l| *l >= 1)
    };
    let leader = wait_for("a quorum leader", Duration::from_secs(30), || {
        leader_seen_by(&nodes[0])
    }) as usize;
    let paused = leader - 1;
    let through = (paused + 1) % 3;
    let create = |n: &Node, name: &str| -> bool {
        strom(&[
            "topics",
            "create",
            "--topic",
            name,
            "--partitions",
            "1",
            "--bootstrap-server",
            &bootstrap(n),
        ])
        .status
        .success()
    };
    let signal = |n: &Node, sig: &str| {
        let status = Command::new("kill")
            .args([sig, &n.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    let mut acknowledged = vec!["before".to_string()];
    assert!(create(&nodes[through], "before"));

    signal(&nodes[paused], "-STOP");
    let paused_at = Instant::now();
    for i in 0..5 {
        let name = format!("while-paused-{i}");
        wait_for(
            "a creation through a survivor",
            Duration::from_secs(60),
            || create(&nodes[through], &name).then_some(()),
        );
        acknowledged.push(name);
    }
    eprintln!(
        "SIGSTOP of the quorum leader to five committed creations: {:?}",
        paused_at.elapsed()
    );
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || {
        leader_seen_by(&nodes[through])
    });
    assert_ne!(
        new_leader as usize, leader,
        "a paused node cannot stay leader"
    );

    signal(&nodes[paused], "-CONT");
    let resumed_at = Instant::now();
    wait_for(
        "the resumed node follows the new leader",
        Duration::from_secs(30),
        || (leader_seen_by(&nodes[paused]) == Some(new_leader)).then_some(()),
    );
    wait_for(
        "a creation through the resumed node",
        Duration::from_secs(60),
        || create(&nodes[paused], "after-resume").then_some(()),
    );
    acknowledged.push("after-resume".to_string());
    eprintln!(
        "SIGCONT to a creation through the resumed node: {:?}",
        resumed_at.elapsed()
    );
    let names = |n: &Node| -> Vec<String> {
        let out = strom(&[
            "topics",
            "list",
            "--json",
            "--bootstrap-server",
            &bootstrap(n),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (i, n) in nodes.iter().enumerate() {
        let mut listed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            listed = names(n);
            if acknowledged.iter().all(|t| listed.contains(t)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for t in &acknowledged {
            assert!(listed.contains(t), "{t} on node {}: {listed:?}", i + 1);
        }
    }
}
