//! A three-node cluster (see `cluster_nodes`) stopped and started again as a whole, and a
//! node whose directories were formatted for another cluster.

mod cluster_nodes;
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_nodes::{Node, bootstrap, ok, restart_all, strom, three_nodes_with};
use common::wait_for;

fn signal(n: &Node, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &n.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn consume(n: &Node, topic: &str, group: Option<&str>, count: usize) -> Vec<String> {
    let mut args = vec![
        "consume",
        "--topic",
        topic,
        "--from-beginning",
        "--timeout-ms",
        "20000",
        "--format",
        "{key}:{value}",
    ];
    let count = count.to_string();
    args.extend(["--max-messages", &count]);
    if let Some(g) = group {
        args.extend(["--group", g]);
    }
    let b = bootstrap(n);
    args.extend(["--bootstrap-server", &b]);
    let mut got: Vec<String> = ok(&args, "").lines().map(str::to_string).collect();
    got.sort();
    got
}

/// A producer id from broker `n` (InitProducerId without a transactional id), asked again
/// while the broker answers COORDINATOR_LOAD_IN_PROGRESS (its first block of ids from the
/// controller is on its way), as clients do.
fn producer_id(n: &Node) -> i64 {
    wait_for("a producer id", Duration::from_secs(30), || {
        let (code, id) = init_producer_id(n);
        match code {
            0 => Some(id),
            14 => None,
            code => panic!("InitProducerId answered {code}"),
        }
    })
}

/// One InitProducerId to broker `n`: (error code, producer id).
fn init_producer_id(n: &Node) -> (i16, i64) {
    use krabka_protocol::owned::init_producer_id_request::InitProducerIdRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = strom_client::connection::Connection::connect(
            &bootstrap(n),
            "test",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let req = InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            producer_id: -1,
            producer_epoch: -1,
            ..Default::default()
        };
        let (resp, _) = c.send(&req, 4, "InitProducerId").await.unwrap();
        (resp.error_code, resp.producer_id)
    })
}

/// SIGTERM to every node, then all started again: topics, records and a group's committed
/// offsets are all there, through every node; producer ids from the controller's blocks
/// are never handed out twice, across brokers and restarts.
#[test]
fn the_whole_cluster_restarts_with_its_topics_records_and_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    // A short session: the last nodes' controlled shutdowns find no quorum, and give up
    // after it.
    let mut nodes = three_nodes_with(tmp.path(), "broker.session.timeout.ms=3000");
    ok(
        &[
            "topics",
            "create",
            "--topic",
            "kept",
            "--partitions",
            "6",
            "--config",
            "retention.ms=86400000",
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );
    let input: String = (0..90).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(
        &[
            "produce",
            "--topic",
            "kept",
            "--key-separator",
            ":",
            "--bootstrap-server",
            &bootstrap(&nodes[1]),
        ],
        &input,
    );
    let mut want: Vec<String> = (0..90).map(|i| format!("k{i}:v{i}")).collect();
    want.sort();
    assert_eq!(consume(&nodes[2], "kept", Some("g"), 90), want);

    let mut ids: Vec<i64> = nodes.iter().map(producer_id).collect();

    for n in &nodes {
        signal(n, "-TERM");
    }
    for n in &mut nodes {
        let status = n.child.wait().unwrap();
        assert!(status.success(), "a clean exit: {status:?}");
    }
    restart_all(&mut nodes);

    for n in &nodes {
        let described = wait_for("the topic and its config", Duration::from_secs(30), || {
            let out = strom(&[
                "topics",
                "describe",
                "--topic",
                "kept",
                "--json",
                "--bootstrap-server",
                &bootstrap(n),
            ]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let t = v.as_array()?.first()?.clone();
            let parts = t["partitions"].as_array()?;
            (parts.len() == 6 && parts.iter().all(|p| p["leader"].as_i64() > Some(0))).then_some(t)
        });
        assert!(
            described.to_string().contains("retention.ms=86400000"),
            "{described}"
        );
    }
    assert_eq!(consume(&nodes[0], "kept", None, 90), want);
    ids.extend(nodes.iter().map(producer_id));
    let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "{ids:?}");
    // From the controller's blocks of 1000 (not a node's own range of file-made ids).
    assert!(ids.iter().all(|id| *id < 10_000), "{ids:?}");
    // The group's offsets survived: nothing left to read, no lag.
    let g = wait_for("the group's offsets", Duration::from_secs(30), || {
        let out = strom(&[
            "groups",
            "describe",
            "--group",
            "g",
            "--json",
            "--bootstrap-server",
            &bootstrap(&nodes[1]),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["offsets"].as_array()?.len() == 6).then_some(v)
    });
    assert_eq!(g["total_lag"].as_i64(), Some(0), "{g}");
    let committed: i64 = g["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["current_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(committed, 90, "{g}");
}

/// A node whose data directory was formatted for another cluster id is refused by the
/// others and stops with an error saying so; the cluster goes on without it.
#[test]
fn a_node_formatted_for_another_cluster_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes_with(tmp.path(), "");
    signal(&nodes[2], "-TERM");
    nodes[2].child.wait().unwrap();
    std::fs::remove_dir_all(tmp.path().join("data3")).unwrap();
    let other = String::from_utf8(strom(&["storage", "random-uuid"]).stdout).unwrap();
    let config = nodes[2].config.to_str().unwrap().to_string();
    ok(
        &["storage", "format", "-t", other.trim(), "-c", &config],
        "",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(["server", "--config", &config])
        .env("STROM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the node stops", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    });
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("formatted for another cluster") && err.contains(other.trim()),
        "{err}"
    );
    // The two others still make a quorum.
    ok(
        &[
            "topics",
            "create",
            "--topic",
            "after",
            "--bootstrap-server",
            &bootstrap(&nodes[0]),
        ],
        "",
    );
}
