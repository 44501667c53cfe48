//! Brokers of a three-node cluster (see `cluster_nodes`) that stop heartbeating: one paused
//! past its session timeout is fenced and comes back unfenced; one stopped with SIGTERM is
//! fenced at once by its controlled shutdown and leads again after its restart.

mod cluster_nodes;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_nodes::{Node, bootstrap, ok, restart, three_nodes_with};
use common::wait_for;

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

/// Broker id -> fenced, as `n` describes the cluster.
fn fenced(n: &Node) -> Option<Vec<(i64, bool)>> {
    let v = describe(n)?;
    Some(
        v["brokers"]
            .as_array()?
            .iter()
            .map(|b| (b["id"].as_i64().unwrap(), b["fenced"].as_bool().unwrap()))
            .collect(),
    )
}

fn quorum_leader(n: &Node) -> Option<i64> {
    describe(n)?["quorum"]["leader"]
        .as_i64()
        .filter(|l| *l >= 1)
}

/// The leader of every partition of `topic`, as `n` describes it.
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

fn create(n: &Node, topic: &str, partitions: u32) {
    ok(
        &[
            "topics",
            "create",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--bootstrap-server",
            &bootstrap(n),
        ],
        "",
    );
}

fn produce(n: &Node, topic: &str, lines: &[String]) {
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    ok(
        &[
            "produce",
            "--topic",
            topic,
            "--key-separator",
            ":",
            "--bootstrap-server",
            &bootstrap(n),
        ],
        &input,
    );
}

fn consume_sorted(n: &Node, topic: &str, count: usize) -> Vec<String> {
    let out = ok(
        &[
            "consume",
            "--topic",
            topic,
            "--from-beginning",
            "--max-messages",
            &count.to_string(),
            "--timeout-ms",
            "20000",
            "--format",
            "{key}:{value}",
            "--bootstrap-server",
            &bootstrap(n),
        ],
        "",
    );
    let mut got: Vec<String> = out.lines().map(str::to_string).collect();
    got.sort();
    got
}

fn records(prefix: &str, n: usize) -> Vec<String> {
    let mut r: Vec<String> = (0..n).map(|i| format!("{prefix}{i}:v{i}")).collect();
    r.sort();
    r
}

fn signal(n: &Node, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &n.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGSTOP of a broker (not the quorum leader) past `broker.session.timeout.ms`: the
/// controller fences it, the partitions it led have no leader (they have one replica) and
/// are not offered to clients through it, new topics are placed on the live brokers only;
/// after SIGCONT it is unfenced, leads its partitions again and serves them.
#[test]
fn a_paused_broker_is_fenced_and_unfenced_when_it_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes_with(
        tmp.path(),
        "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=200",
    );
    create(&nodes[0], "t", 6);
    let before = wait_for("t on every broker", Duration::from_secs(30), || {
        leaders(&nodes[0], "t").filter(|l| l.len() == 6)
    });
    let leader = wait_for("a quorum leader", Duration::from_secs(30), || {
        quorum_leader(&nodes[0])
    });
    // The victim is not the quorum leader: this test is about the broker, not the quorum.
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    let (v, o) = (&nodes[victim as usize - 1], &nodes[other as usize - 1]);
    assert!(before.contains(&victim), "{before:?}");
    produce(o, "t", &records("a", 60));

    signal(v, "-STOP");
    let paused = Instant::now();
    wait_for(
        "the paused broker is fenced",
        Duration::from_secs(30),
        || fenced(o).filter(|b| b.contains(&(victim, true))),
    );
    let fenced_after = paused.elapsed();
    let offline = wait_for(
        "its partitions lose their leader",
        Duration::from_secs(30),
        || {
            leaders(o, "t").filter(|l| {
                l.iter().zip(&before).all(|(now, was)| {
                    if *was == victim {
                        *now == -1
                    } else {
                        now == was
                    }
                })
            })
        },
    );
    assert!(!offline.contains(&victim));
    // `--unavailable-partitions` lists exactly those, as kafka-topics.sh does.
    let listed = ok(
        &[
            "topics",
            "describe",
            "--unavailable-partitions",
            "--json",
            "--bootstrap-server",
            &bootstrap(o),
        ],
        "",
    );
    let described: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let unavailable: Vec<(String, i64)> = described
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        t["name"].as_str().unwrap().to_string(),
                        p["partition"].as_i64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<(String, i64)> = before
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == victim)
        .map(|(i, _)| ("t".to_string(), i as i64))
        .collect();
    assert_eq!(unavailable, expected, "{listed}");
    // New partitions go to the live brokers only.
    create(o, "fresh", 6);
    let placed = wait_for("fresh is placed", Duration::from_secs(30), || {
        leaders(o, "fresh").filter(|l| l.len() == 6)
    });
    assert!(
        placed.iter().all(|l| *l != victim && *l != -1),
        "{placed:?}"
    );
    eprintln!(
        "SIGSTOP to fenced: {} ms (session timeout 2000 ms)",
        fenced_after.as_millis()
    );

    signal(v, "-CONT");
    wait_for(
        "the resumed broker is unfenced",
        Duration::from_secs(30),
        || fenced(o).filter(|b| b.contains(&(victim, false))),
    );
    // It leads its partitions again (with a new leader epoch), on every broker's view.
    for n in &nodes {
        wait_for("the old leaders are back", Duration::from_secs(30), || {
            leaders(n, "t").filter(|l| *l == before)
        });
    }
    produce(v, "t", &records("b", 60));
    let mut want = records("a", 60);
    want.extend(records("b", 60));
    want.sort();
    assert_eq!(consume_sorted(o, "t", 120), want);
}

/// SIGTERM runs a controlled shutdown: the broker is fenced long before its session would
/// have expired (default 9 s), its partitions are released at once; restarted, it registers
/// again, leads them again, and its records are all there.
#[test]
fn sigterm_releases_leadership_at_once_and_the_restart_takes_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(tmp.path(), "");
    create(&nodes[0], "t", 6);
    let before = wait_for("t on every broker", Duration::from_secs(30), || {
        leaders(&nodes[0], "t").filter(|l| l.len() == 6)
    });
    let leader = wait_for("a quorum leader", Duration::from_secs(30), || {
        quorum_leader(&nodes[0])
    });
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    produce(&nodes[other as usize - 1], "t", &records("a", 60));

    let stopping = Instant::now();
    signal(&nodes[victim as usize - 1], "-TERM");
    let status = nodes[victim as usize - 1].child.wait().unwrap();
    assert!(status.success(), "a clean exit: {status:?}");
    let o = &nodes[other as usize - 1];
    // Fenced when the process has exited (the others apply the change within moments),
    // not a session timeout (9 s) later.
    let released = |l: &Vec<i64>| {
        l.iter()
            .zip(&before)
            .all(|(now, was)| *now == if *was == victim { -1 } else { *was })
    };
    wait_for(
        "the stopped broker is fenced",
        Duration::from_secs(2),
        || fenced(o).filter(|b| b.contains(&(victim, true))),
    );
    wait_for(
        "its partitions are released",
        Duration::from_secs(2),
        || leaders(o, "t").filter(released),
    );
    eprintln!(
        "SIGTERM to exit, fenced and released: {} ms",
        stopping.elapsed().as_millis()
    );

    restart(&mut nodes[victim as usize - 1]);
    let o = &nodes[other as usize - 1];
    wait_for(
        "the restarted broker is unfenced",
        Duration::from_secs(30),
        || fenced(o).filter(|b| b.contains(&(victim, false))),
    );
    for n in &nodes {
        wait_for("the old leaders are back", Duration::from_secs(30), || {
            leaders(n, "t").filter(|l| *l == before)
        });
    }
    assert_eq!(consume_sorted(o, "t", 60), records("a", 60));
}
