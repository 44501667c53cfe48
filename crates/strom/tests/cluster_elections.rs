//! Preferred leaders on three nodes: after a SIGKILL and restart, leadership that moved
//! away goes back to each partition's first replica, by `strom topics elect-leaders` (as
//! kafka-leader-election.sh) or by itself with `auto.leader.rebalance.enable`.

mod cluster_nodes;
mod common;

use std::time::Duration;

use cluster_nodes::{Node, bootstrap, ok, restart, three_nodes_with};
use common::wait_for;

/// (leader, first replica, ISR size) of every partition of `t`.
fn partitions(n: &Node) -> Option<Vec<(i64, i64, usize)>> {
    cluster_nodes::describe_partitions(&bootstrap(n), "t")?
        .iter()
        .map(|p| {
            Some((
                p["leader"].as_i64()?,
                p["replicas"][0].as_i64()?,
                p["isr"].as_array()?.len(),
            ))
        })
        .collect()
}

/// Three nodes with `extra`, topic `t` (3 partitions, factor 3); node `victim`, the
/// preferred leader of partition 0, is killed and restarted, and is back in every ISR.
fn moved_away(tmp: &std::path::Path, extra: &str) -> (Vec<Node>, i64) {
    let mut nodes = three_nodes_with(
        tmp,
        &format!(
            "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=200\nreplica.lag.time.max.ms=2000\n{extra}"
        ),
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
    let parts = wait_for("t in sync", Duration::from_secs(30), || {
        partitions(&nodes[0]).filter(|p| p.len() == 3 && p.iter().all(|x| x.2 == 3))
    });
    let victim = parts[0].1;
    assert_eq!(parts[0].0, victim, "created led by its first replica");
    let n = &mut nodes[victim as usize - 1];
    n.child.kill().unwrap();
    n.child.wait().unwrap();
    let other = &nodes[(victim as usize) % 3];
    wait_for("partition 0 led elsewhere", Duration::from_secs(30), || {
        partitions(other).filter(|p| p[0].0 >= 1 && p[0].0 != victim)
    });
    restart(&mut nodes[victim as usize - 1]);
    (nodes, victim)
}

#[test]
fn elect_leaders_gives_partitions_back_to_their_preferred_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, victim) = moved_away(tmp.path(), "auto.leader.rebalance.enable=false");
    let via = bootstrap(&nodes[0]);
    // Back in the ISR, it still does not lead: that is what the election is for.
    let parts = wait_for(
        "the restarted node in every ISR",
        Duration::from_secs(60),
        || partitions(&nodes[0]).filter(|p| p.iter().all(|x| x.2 == 3)),
    );
    assert_ne!(parts[0].0, victim);
    let out = ok(
        &[
            "topics",
            "elect-leaders",
            "--election-type",
            "preferred",
            "--all-topic-partitions",
            "--json",
            "--bootstrap-server",
            &via,
        ],
        "",
    );
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        results
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["topic"] == "t" && r["partition"] == 0 && r["error_code"] == 0),
        "{out}"
    );
    // The answering broker shows the leaders at once; the one asked here may be another.
    wait_for(
        "every partition led by its preferred replica",
        Duration::from_secs(10),
        || partitions(&nodes[0]).filter(|p| p.iter().all(|(leader, first, _)| leader == first)),
    );
    // Nothing left to elect: the tool says so and succeeds.
    let again = ok(
        &[
            "topics",
            "elect-leaders",
            "--election-type",
            "PREFERRED",
            "--topic",
            "t",
            "--partition",
            "0",
            "--bootstrap-server",
            &via,
        ],
        "",
    );
    assert!(again.contains("already led"), "{again}");
}

#[test]
fn the_controller_rebalances_leadership_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = moved_away(
        tmp.path(),
        "auto.leader.rebalance.enable=true\nleader.imbalance.check.interval.seconds=1",
    );
    wait_for(
        "every partition led by its first replica again",
        Duration::from_secs(60),
        || {
            partitions(&nodes[0]).filter(|p| {
                p.iter()
                    .all(|(leader, first, isr)| leader == first && *isr == 3)
            })
        },
    );
}
