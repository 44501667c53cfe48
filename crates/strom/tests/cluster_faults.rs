//! Faults in a three-node metadata quorum (see `cluster_nodes`): its leader SIGKILLed or
//! SIGSTOPped while topics are being created.

mod cluster_nodes;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_nodes::{Node, bootstrap, strom, three_nodes};
use common::wait_for;

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
        let listed = wait_for("every acknowledged topic", Duration::from_secs(30), || {
            let listed = names(n);
            acknowledged
                .iter()
                .all(|t| listed.contains(t))
                .then_some(listed)
        });
        for t in &acknowledged {
            assert!(listed.contains(t), "{t} on node {}: {listed:?}", i + 1);
        }
    }
}
