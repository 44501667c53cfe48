//! Reassignment on three nodes, with `strom topics reassign` (as
//! kafka-reassign-partitions.sh): replicas move to another broker while an idempotent
//! acks=all producer writes, with no failed delivery; the new replica holds the leader's
//! bytes, the old one's log is deleted, and every acknowledged record is read back once,
//! in order. A reassignment waiting for a dead broker is listed, shown in describe, and
//! cancelled back to the original replicas.

mod cluster_nodes;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_nodes::{Node, bootstrap, create_topic, ok, three_nodes_with};
use common::wait_for;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const CONFIG: &str = "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=200\nreplica.lag.time.max.ms=2000\nmin.insync.replicas=1";

#[derive(Default)]
struct Book {
    acked: Mutex<Vec<(i32, i64, String)>>,
    failed: Mutex<Vec<String>>,
}

struct Ctx(Arc<Book>);
impl rdkafka::ClientContext for Ctx {}
impl rdkafka::producer::ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        match r {
            Ok(m) => {
                let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                self.0
                    .acked
                    .lock()
                    .unwrap()
                    .push((m.partition(), m.offset(), v));
            }
            Err((e, _)) => self.0.failed.lock().unwrap().push(e.to_string()),
        }
    }
}

/// Produces to `topic` until `stop`, then flushes.
fn produce(bootstrap: String, topic: &'static str, book: Arc<Book>, stop: Arc<AtomicBool>) {
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Ctx(book))
        .expect("producer");
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let (key, value) = (format!("key{}", i % 13), format!("value{i}"));
        if producer
            .send(BaseRecord::to(topic).key(&key).payload(&value))
            .is_ok()
        {
            i += 1;
        }
        // Pacing, about 2,000 records a second.
        if i.is_multiple_of(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
}

/// A partition's replicas, ISR and adding replicas.
type Part = (Vec<i64>, Vec<i64>, Vec<i64>);

/// Every partition of `topic`, as describe shows it.
fn partitions(n: &Node, topic: &str) -> Option<Vec<Part>> {
    let ids = |v: &serde_json::Value| -> Option<Vec<i64>> {
        v.as_array()?.iter().map(|x| x.as_i64()).collect()
    };
    cluster_nodes::describe_partitions(&bootstrap(n), topic)?
        .iter()
        .map(|p| {
            Some((
                ids(&p["replicas"])?,
                ids(&p["isr"])?,
                ids(&p["adding_replicas"])?,
            ))
        })
        .collect()
}

/// `strom topics reassign <args> --bootstrap-server <n>`.
fn reassign(n: &Node, args: &[&str]) -> String {
    let mut all = vec!["topics", "reassign"];
    all.extend_from_slice(args);
    let b = bootstrap(n);
    all.extend_from_slice(&["--bootstrap-server", &b]);
    ok(&all, "")
}

fn plan(entries: &[(&str, i32, Vec<i64>)]) -> String {
    serde_json::json!({
        "version": 1,
        "partitions": entries.iter().map(|(t, p, r)| serde_json::json!({"topic": t, "partition": p, "replicas": r})).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Every segment of partition `p` of `topic` in node `id`'s data directory, in order.
fn stored(tmp: &std::path::Path, id: i64, topic: &str, p: i32) -> Option<Vec<u8>> {
    let dir = tmp.join(format!("data{id}")).join(format!("{topic}-{p}"));
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    Some(
        logs.iter()
            .flat_map(|l| std::fs::read(l).unwrap_or_default())
            .collect(),
    )
}

#[test]
fn replicas_move_to_another_broker_while_a_producer_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes_with(tmp.path(), CONFIG);
    create_topic(&nodes[0], "mv", 2, 2);
    let before = wait_for("mv in sync", Duration::from_secs(30), || {
        partitions(&nodes[0], "mv").filter(|ps| ps.iter().all(|p| p.1.len() == 2))
    });
    let book = Arc::new(Book::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (b, book, stop) = (bootstrap(&nodes[0]), book.clone(), stop.clone());
        std::thread::spawn(move || produce(b, "mv", book, stop))
    };
    wait_for("records before the move", Duration::from_secs(30), || {
        (book.acked.lock().unwrap().len() > 2000).then_some(())
    });

    // Each partition: the broker it lacks joins as the first replica, its first leaves.
    let targets: Vec<Vec<i64>> = before
        .iter()
        .map(|(replicas, _, _)| {
            let newcomer = (1..=3).find(|b| !replicas.contains(b)).unwrap();
            vec![newcomer, replicas[1]]
        })
        .collect();
    let plan_file = tmp.path().join("plan.json");
    std::fs::write(
        &plan_file,
        plan(&[("mv", 0, targets[0].clone()), ("mv", 1, targets[1].clone())]),
    )
    .unwrap();
    let plan_path = plan_file.to_str().unwrap();
    let out = reassign(
        &nodes[0],
        &["--reassignment-json-file", plan_path, "--execute", "--wait"],
    );
    assert!(
        out.contains("Successfully started partition reassignments for mv-0,mv-1"),
        "{out}"
    );
    assert!(
        out.contains("--reassignment-json-file option during rollback"),
        "{out}"
    );

    // Node 1's metadata may trail the broker that took the reassignment.
    let after = wait_for("node 1 shows the move", Duration::from_secs(30), || {
        partitions(&nodes[0], "mv").filter(|ps| {
            ps.iter()
                .zip(&targets)
                .all(|(p, t)| &p.0 == t && p.1.len() == 2)
        })
    });
    for (p, (replicas, isr, adding)) in after.iter().enumerate() {
        assert_eq!(replicas, &targets[p], "mv-{p} on its target");
        let mut isr = isr.clone();
        isr.sort_unstable();
        let mut want = targets[p].clone();
        want.sort_unstable();
        assert_eq!(isr, want);
        assert!(adding.is_empty());
    }
    let verify = reassign(
        &nodes[0],
        &["--reassignment-json-file", plan_path, "--verify"],
    );
    assert!(
        verify.contains("Reassignment of partition mv-0 is completed."),
        "{verify}"
    );
    assert!(
        verify.contains("Reassignment of partition mv-1 is completed."),
        "{verify}"
    );
    assert!(reassign(&nodes[0], &["--list"]).contains("No partition reassignment is in progress."));

    // A little more under the new replicas, then stop.
    let moved = book.acked.lock().unwrap().len();
    wait_for("records after the move", Duration::from_secs(30), || {
        (book.acked.lock().unwrap().len() > moved + 1000).then_some(())
    });
    stop.store(true, Ordering::Release);
    producer.join().unwrap();
    assert_eq!(
        *book.failed.lock().unwrap(),
        Vec::<String>::new(),
        "no failed delivery"
    );

    // The new replicas hold the leader's bytes; the old ones' logs are gone.
    for (p, (replicas, _, _)) in before.iter().enumerate() {
        let target = &targets[p];
        wait_for(
            &format!("mv-{p}'s replicas identical"),
            Duration::from_secs(30),
            || {
                let a = stored(tmp.path(), target[0], "mv", p as i32)?;
                (Some(&a) == stored(tmp.path(), target[1], "mv", p as i32).as_ref()
                    && !a.is_empty())
                .then_some(())
            },
        );
        let gone = replicas[0];
        wait_for(
            &format!("mv-{p}'s log deleted from broker {gone}"),
            Duration::from_secs(30),
            || {
                stored(tmp.path(), gone, "mv", p as i32)
                    .is_none()
                    .then_some(())
            },
        );
    }

    // Every acknowledged record once, at its offset, in send order per partition.
    let acked = book.acked.lock().unwrap().clone();
    // A write the old leader was waiting on when it left timed out after 30 s before the
    // old leader woke its waiters; the client then acknowledged it without an offset.
    let unknown: Vec<_> = acked.iter().filter(|a| a.1 < 0).collect();
    assert!(
        unknown.is_empty(),
        "acknowledged without an offset: {unknown:?}"
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(&nodes[1]))
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("mv", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut read = std::collections::BTreeMap::new();
    wait_for("every record read back", Duration::from_secs(60), || {
        while let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            assert!(
                read.insert((m.partition(), m.offset()), v).is_none(),
                "read twice"
            );
        }
        (read.len() >= acked.len()).then_some(())
    });
    assert_eq!(read.len(), acked.len(), "nothing but what was acknowledged");
    for (p, o, v) in &acked {
        assert_eq!(read.get(&(*p, *o)), Some(v), "{p}/{o}");
    }
}

#[test]
fn a_reassignment_waiting_for_a_dead_broker_is_listed_and_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(tmp.path(), CONFIG);
    create_topic(&nodes[0], "c", 1, 2);
    let (replicas, _, _) = wait_for("c in sync", Duration::from_secs(30), || {
        partitions(&nodes[0], "c").and_then(|ps| ps.into_iter().next().filter(|p| p.1.len() == 2))
    });
    let dead = (1..=3).find(|b| !replicas.contains(b)).unwrap();
    let alive = nodes
        .iter()
        .position(|n| bootstrap(n) != bootstrap(&nodes[dead as usize - 1]))
        .unwrap();
    {
        let n = &mut nodes[dead as usize - 1];
        n.child.kill().unwrap();
        n.child.wait().unwrap();
    }
    let via = &nodes[alive];

    // --generate proposes without changing anything.
    let generated = reassign(
        via,
        &["--topic", "c", "--broker-list", "1,2,3", "--generate"],
    );
    assert!(
        generated.contains("Proposed partition reassignment configuration"),
        "{generated}"
    );
    assert_eq!(partitions(via, "c").unwrap()[0].0, replicas);

    let target = vec![replicas[0], dead];
    let plan_file = tmp.path().join("plan.json");
    std::fs::write(&plan_file, plan(&[("c", 0, target.clone())])).unwrap();
    let plan_path = plan_file.to_str().unwrap();
    reassign(via, &["--reassignment-json-file", plan_path, "--execute"]);

    // The dead broker never catches up: in progress, listed and shown.
    let (now, _, adding) = partitions(via, "c").unwrap().remove(0);
    assert_eq!(adding, vec![dead]);
    assert_eq!(
        now,
        vec![replicas[0], dead, replicas[1]],
        "the target first, then the leaving"
    );
    let listed = reassign(via, &["--list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["adding_replicas"], serde_json::json!([dead]));
    assert_eq!(
        listed[0]["removing_replicas"],
        serde_json::json!([replicas[1]])
    );
    let verify = reassign(via, &["--reassignment-json-file", plan_path, "--verify"]);
    assert!(
        verify.contains("Reassignment of partition c-0 is still in progress."),
        "{verify}"
    );
    let described = ok(
        &[
            "topics",
            "describe",
            "--topic",
            "c",
            "--bootstrap-server",
            &bootstrap(via),
        ],
        "",
    );
    assert!(described.contains("REASSIGNING"), "{described}");
    assert!(described.contains(&format!("adding {dead}")), "{described}");

    // Cancelled: back to the original replicas, nothing in progress.
    let out = reassign(via, &["--reassignment-json-file", plan_path, "--cancel"]);
    assert!(
        out.contains("Successfully cancelled partition reassignments for: c-0"),
        "{out}"
    );
    let (now, _, adding) = partitions(via, "c").unwrap().remove(0);
    assert_eq!((now, adding), (replicas.clone(), vec![]));
    assert!(reassign(via, &["--list"]).contains("No partition reassignment is in progress."));
    let verify = reassign(via, &["--reassignment-json-file", plan_path, "--verify"]);
    assert!(
        verify.contains("There is no active reassignment of partition c-0"),
        "{verify}"
    );
}
