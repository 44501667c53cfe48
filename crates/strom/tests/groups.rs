//! Consumer groups with real clients (librdkafka through the rdkafka crate, and kcat as a
//! member that can be killed) against a real `strom server`.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const T: Duration = Duration::from_secs(60);

fn server() -> Server {
    Server::start_with(&["group.initial.rebalance.delay.ms=0"])
}

fn create_topic(server: &Server, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .unwrap();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

fn produce(server: &Server, topic: &str, from: u32, to: u32) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .unwrap();
    for n in from..to {
        p.send(
            BaseRecord::to(topic)
                .key(&format!("k{n}"))
                .payload(&n.to_be_bytes()),
        )
        .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(T).unwrap();
}

/// Records rebalance events: ("assign" | "revoke", partitions).
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<Event>>>);

/// ("assign" | "revoke", partitions)
type Event = (&'static str, BTreeSet<i32>);

impl ClientContext for Events {}
impl ConsumerContext for Events {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let (kind, tpl) = match r {
            Rebalance::Assign(t) => ("assign", t),
            Rebalance::Revoke(t) => ("revoke", t),
            Rebalance::Error(_) => return,
        };
        let parts = tpl.elements().iter().map(|e| e.partition()).collect();
        self.0.lock().unwrap().push((kind, parts));
    }
}

fn member(
    server: &Server,
    group: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> (BaseConsumer<Events>, Events) {
    let events = Events::default();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", server.bootstrap())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        // The rebalance timeout: when a test drops its members one by one, a member left
        // waiting in a rebalance for one that is no longer polled gives up after this,
        // rather than after the default 5 minutes.
        .set("max.poll.interval.ms", "10000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer<Events> = c.create_with_context(events.clone()).unwrap();
    consumer.subscribe(&[topic]).unwrap();
    (consumer, events)
}

fn assignment<C: ConsumerContext>(c: &BaseConsumer<C>) -> BTreeSet<i32> {
    c.assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Polls every consumer until `done` holds for their assignments; collects the records
/// they read meanwhile: (consumer index, partition, offset, value).
fn poll_until<C: ConsumerContext>(
    consumers: &[&BaseConsumer<C>],
    what: &str,
    mut done: impl FnMut(&[BTreeSet<i32>], &[(usize, i32, i64, u32)]) -> bool,
) -> Vec<(usize, i32, i64, u32)> {
    let deadline = Instant::now() + T;
    let mut records = Vec::new();
    loop {
        for (i, c) in consumers.iter().enumerate() {
            if let Some(m) = c.poll(Duration::from_millis(20)) {
                let m = m.expect("consume");
                let v = u32::from_be_bytes(m.payload().unwrap().try_into().unwrap());
                records.push((i, m.partition(), m.offset(), v));
            }
        }
        let assignments: Vec<BTreeSet<i32>> = consumers.iter().map(|c| assignment(c)).collect();
        if done(&assignments, &records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: assignments {assignments:?}, {} records",
            records.len()
        );
    }
}

fn disjoint_cover(a: &[BTreeSet<i32>], n: i32) -> bool {
    let total: usize = a.iter().map(|s| s.len()).sum();
    let union: BTreeSet<i32> = a.iter().flatten().copied().collect();
    total == n as usize && union == (0..n).collect() && a.iter().all(|s| !s.is_empty())
}

#[test]
fn three_members_split_six_partitions_and_read_everything_once() {
    let server = server();
    create_topic(&server, "six", 6);
    let (a, _) = member(&server, "three", "six", &[]);
    let (b, _) = member(&server, "three", "six", &[]);
    let (c, _) = member(&server, "three", "six", &[]);
    let all = [&a, &b, &c];
    poll_until(&all, "a stable group of three", |asg, _| {
        disjoint_cover(asg, 6)
    });
    produce(&server, "six", 0, 600);
    let records = poll_until(&all, "600 records", |_, r| r.len() >= 600);
    let values: HashSet<u32> = records.iter().map(|r| r.3).collect();
    assert_eq!(values.len(), 600, "every record exactly once");
    assert_eq!(records.len(), 600);
    // Each partition was read by exactly one member, the one it is assigned to.
    let mut reader: HashMap<i32, usize> = HashMap::new();
    for (i, p, _, _) in &records {
        assert_eq!(
            *reader.entry(*p).or_insert(*i),
            *i,
            "partition {p} read by two members"
        );
        assert!(assignment(all[*i]).contains(p));
    }
}

fn kcat_member(server: &Server, group: &str, topic: &str) -> Child {
    Command::new("kcat")
        .args([
            "-b",
            &server.bootstrap(),
            "-G",
            group,
            topic,
            "-q",
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat is installed by scripts/test.sh")
}

#[test]
fn a_killed_member_loses_its_partitions_to_the_others_within_the_session_timeout() {
    let server = server();
    create_topic(&server, "killme", 6);
    let (a, _) = member(&server, "k", "killme", &[]);
    let (b, _) = member(&server, "k", "killme", &[]);
    let mut victim = kcat_member(&server, "k", "killme");
    // Three members: the two here hold 4 partitions between them, kcat the other 2.
    poll_until(&[&a, &b], "a group of three", |asg, _| {
        asg.iter().all(|s| s.len() == 2) && asg[0].is_disjoint(&asg[1])
    });
    victim.kill().unwrap(); // SIGKILL: no LeaveGroup
    victim.wait().unwrap();
    let killed = Instant::now();
    poll_until(&[&a, &b], "the survivors to take over", |asg, _| {
        disjoint_cover(asg, 6)
    });
    let took = killed.elapsed();
    // Session timeout 6 s, plus the rebalance itself.
    assert!(took < Duration::from_secs(6 + 5), "took {took:?}");
    produce(&server, "killme", 0, 60);
    let records = poll_until(&[&a, &b], "60 records", |_, r| r.len() >= 60);
    assert_eq!(
        records.iter().map(|r| r.3).collect::<HashSet<_>>().len(),
        60
    );
}

#[test]
fn committed_offsets_survive_a_server_restart() {
    let mut server = server();
    create_topic(&server, "resume", 2);
    produce(&server, "resume", 0, 100);
    {
        let (c, _) = member(
            &server,
            "resumers",
            "resume",
            &[("enable.auto.commit", "false")],
        );
        let records = poll_until(&[&c], "100 records", |_, r| r.len() >= 100);
        assert_eq!(records.len(), 100);
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        let committed = c.committed(T).unwrap();
        let mut offsets: Vec<_> = committed
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap())
            .collect();
        offsets.sort();
        let per_partition: Vec<i64> = {
            let mut counts = HashMap::new();
            for r in &records {
                *counts.entry(r.1).or_insert(0i64) += 1;
            }
            let mut v: Vec<i64> = counts.values().copied().collect();
            v.sort();
            v
        };
        assert_eq!(offsets, per_partition);
    }
    server.stop();
    server.restart();
    produce(&server, "resume", 100, 150);
    let (c, _) = member(&server, "resumers", "resume", &[]);
    let records = poll_until(&[&c], "the 50 new records", |_, r| r.len() >= 50);
    let values: BTreeSet<u32> = records.iter().map(|r| r.3).collect();
    assert_eq!(
        values,
        (100..150).collect(),
        "resumed exactly after the committed offsets"
    );
    assert!(c.poll(Duration::from_millis(500)).is_none());
}

#[test]
fn separate_groups_each_receive_everything() {
    let server = server();
    create_topic(&server, "fanout", 3);
    produce(&server, "fanout", 0, 90);
    let (x, _) = member(&server, "gx", "fanout", &[]);
    let (y, _) = member(&server, "gy", "fanout", &[]);
    let rx = poll_until(&[&x], "group gx", |_, r| r.len() >= 90);
    let ry = poll_until(&[&y], "group gy", |_, r| r.len() >= 90);
    let vx: BTreeSet<u32> = rx.iter().map(|r| r.3).collect();
    let vy: BTreeSet<u32> = ry.iter().map(|r| r.3).collect();
    assert_eq!(vx, (0..90).collect());
    assert_eq!(vy, (0..90).collect());
}

#[test]
fn cooperative_sticky_keeps_unaffected_partitions_assigned() {
    let server = server();
    create_topic(&server, "coop", 6);
    let coop = [("partition.assignment.strategy", "cooperative-sticky")];
    let (a, ea) = member(&server, "co", "coop", &coop);
    let (b, eb) = member(&server, "co", "coop", &coop);
    poll_until(&[&a, &b], "two members", |asg, _| disjoint_cover(asg, 6));
    let before_a = assignment(&a);
    let before_b = assignment(&b);
    ea.0.lock().unwrap().clear();
    eb.0.lock().unwrap().clear();
    let (c, _) = member(&server, "co", "coop", &coop);
    poll_until(&[&a, &b, &c], "three members", |asg, _| {
        disjoint_cover(asg, 6) && asg.iter().all(|s| s.len() == 2)
    });
    for (events, before, now) in [
        (&ea, &before_a, assignment(&a)),
        (&eb, &before_b, assignment(&b)),
    ] {
        // Only partitions that moved were revoked; the rest stayed assigned throughout.
        let revoked: BTreeSet<i32> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.0 == "revoke")
            .flat_map(|e| e.1.clone())
            .collect();
        let kept: BTreeSet<i32> = before.intersection(&now).copied().collect();
        assert!(!kept.is_empty());
        assert!(
            revoked.is_disjoint(&kept),
            "revoked {revoked:?} although it kept {kept:?}"
        );
        assert_eq!(&(&kept | &revoked), before);
    }
}

#[test]
fn simple_consumers_commit_without_joining_and_admins_see_groups() {
    let server = server();
    create_topic(&server, "admin", 2);
    produce(&server, "admin", 0, 10);
    // A consumer that assigns partitions itself commits with generation -1.
    let simple: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", "simple")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("admin", 0, rdkafka::Offset::Offset(3))
        .unwrap();
    tpl.add_partition_offset("admin", 1, rdkafka::Offset::Offset(4))
        .unwrap();
    simple.commit(&tpl, CommitMode::Sync).unwrap();
    let committed = simple.committed_offsets(tpl.clone(), T).unwrap();
    let offsets: Vec<_> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_eq!(
        offsets,
        vec![
            (0, rdkafka::Offset::Offset(3)),
            (1, rdkafka::Offset::Offset(4))
        ]
    );

    let (active, _) = member(&server, "active", "admin", &[]);
    poll_until(&[&active], "the active member", |asg, _| asg[0].len() == 2);
    let list = active.fetch_group_list(None, T).unwrap();
    let mut groups: Vec<(String, String, String)> = list
        .groups()
        .iter()
        .map(|g| {
            (
                g.name().to_string(),
                g.state().to_string(),
                g.protocol_type().to_string(),
            )
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            (
                "active".to_string(),
                "Stable".to_string(),
                "consumer".to_string()
            ),
            ("simple".to_string(), "Empty".to_string(), String::new()),
        ]
    );
    let described = active.fetch_group_list(Some("active"), T).unwrap();
    let g = &described.groups()[0];
    assert_eq!(g.protocol(), "range");
    assert_eq!(g.members().len(), 1);
    assert!(g.members()[0].assignment().is_some_and(|a| !a.is_empty()));

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.delete_groups(&["simple", "active", "missing"], &AdminOptions::new()))
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    assert_eq!(
        r[1].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::NonEmptyGroup
    );
    assert_eq!(
        r[2].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::GroupIdNotFound
    );
    let committed = simple.committed_offsets(tpl, T).unwrap();
    assert!(
        committed
            .elements()
            .iter()
            .all(|e| e.offset() == rdkafka::Offset::Invalid)
    );
}

/// strom's own client as group members with the cooperative-sticky assignor: the first
/// member keeps half its partitions through the rebalance, the other half moves.
#[test]
fn strom_client_members_rebalance_cooperatively() {
    use strom_client::group::{Assignor, GroupMember};
    let server = server();
    create_topic(&server, "coop4", 4);
    common::with_client(&server, "t", |client| async move {
        let coop = [Assignor::CooperativeSticky];
        let mut a = GroupMember::new(
            client.clone(),
            "cg",
            vec!["coop4".into()],
            &coop,
            Duration::from_secs(6),
        )
        .await
        .unwrap();
        let first: BTreeSet<(String, i32)> = a.join().await.unwrap().into_iter().collect();
        assert_eq!(first.len(), 4);
        // Each member rejoins whenever asked, and reports every assignment it gets.
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(&'static str, BTreeSet<(String, i32)>)>();
        let run =
            |mut m: GroupMember, name: &'static str, tx: tokio::sync::mpsc::UnboundedSender<_>| {
                tokio::spawn(async move {
                    loop {
                        let got: BTreeSet<(String, i32)> =
                            m.join().await.unwrap().into_iter().collect();
                        if tx.send((name, got)).is_err() {
                            return;
                        }
                        m.rebalance_requested().await;
                    }
                })
            };
        let b = GroupMember::new(
            client.clone(),
            "cg",
            vec!["coop4".into()],
            &coop,
            Duration::from_secs(6),
        )
        .await
        .unwrap();
        let tb = run(b, "b", tx.clone());
        a.rebalance_requested().await;
        let ta = run(a, "a", tx);
        let mut latest: HashMap<&str, BTreeSet<(String, i32)>> = HashMap::new();
        let mut history_a = vec![first.clone()];
        let deadline = tokio::time::Instant::now() + T;
        while !(latest.get("a").is_some_and(|s| s.len() == 2)
            && latest.get("b").is_some_and(|s| s.len() == 2))
        {
            let (name, got) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("balanced in time")
                .unwrap();
            if name == "a" {
                history_a.push(got.clone());
            }
            latest.insert(name, got);
        }
        let (fa, fb) = (&latest["a"], &latest["b"]);
        assert!(fa.is_disjoint(fb));
        assert_eq!(fa | fb, first);
        // a never gave up what it ended with: every assignment it had contains it.
        for h in &history_a {
            assert!(fa.is_subset(h), "a lost {fa:?} in {h:?}");
        }
        ta.abort();
        tb.abort();
    });
}
