//! `strom storage random-uuid | format`, as an operator preparing a cluster node runs them,
//! and what `strom server` says about directories and quorums it cannot serve.

mod common;

use std::process::Command;

fn strom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strom"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = strom().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn random_uuids_are_kafka_cluster_ids() {
    let (ok, a, _) = run(&["storage", "random-uuid"]);
    let (_, b, _) = run(&["storage", "random-uuid"]);
    assert!(ok);
    let (a, b) = (a.trim(), b.trim());
    assert_eq!(a.len(), 22, "{a}");
    assert_ne!(a, b);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
}

#[test]
fn format_writes_every_directory_once_and_the_server_keeps_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2, meta) = (
        tmp.path().join("logs-a"),
        tmp.path().join("logs-b"),
        tmp.path().join("meta"),
    );
    let config = tmp.path().join("server.properties");
    std::fs::write(
        &config,
        format!(
            "node.id=4\nlog.dirs={},{}\nmetadata.log.dir={}\nlisteners=PLAINTEXT://127.0.0.1:0\n",
            d1.display(),
            d2.display(),
            meta.display()
        ),
    )
    .unwrap();
    let id = "MkU3OEVBNTcwNTJENDM2Qk";
    let cfg = config.to_str().unwrap();
    let (ok, out, err) = run(&["storage", "format", "-t", id, "-c", cfg]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let mut dir_ids = Vec::new();
    for d in [&d1, &d2, &meta] {
        let text = std::fs::read_to_string(d.join("meta.properties")).unwrap();
        assert!(text.contains(&format!("cluster.id={id}")), "{text}");
        assert!(
            text.contains("node.id=4") && text.contains("version=1"),
            "{text}"
        );
        let dir_id = text
            .lines()
            .find_map(|l| l.strip_prefix("directory.id="))
            .unwrap()
            .to_string();
        dir_ids.push(dir_id);
    }
    dir_ids.dedup();
    assert_eq!(dir_ids.len(), 3, "every directory has an id of its own");

    // Formatting twice is refused, and names the way out.
    let (ok, _, err) = run(&["storage", "format", "-t", id, "-c", cfg]);
    assert!(!ok);
    assert!(
        err.contains("already formatted") && err.contains("--ignore-formatted"),
        "{err}"
    );
    let (ok, out, _) = run(&[
        "storage",
        "format",
        "-t",
        id,
        "-c",
        cfg,
        "--ignore-formatted",
    ]);
    assert!(ok);
    assert_eq!(out.matches("skipped").count(), 3, "{out}");

    // A bad cluster id is refused before anything is written.
    let other = tmp.path().join("other.properties");
    std::fs::write(
        &other,
        format!("log.dirs={}\n", tmp.path().join("x").display()),
    )
    .unwrap();
    let (ok, _, err) = run(&[
        "storage",
        "format",
        "-t",
        "not-an-id",
        "-c",
        other.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("random-uuid"), "{err}");
    assert!(!tmp.path().join("x").exists());

    // A server with another node.id on the formatted directory refuses to start.
    let (ok, _, err) = run(&[
        "server",
        "--config",
        cfg,
        "--override",
        "node.id=5",
        "--override",
        &format!("log.dirs={}", d1.display()),
    ]);
    assert!(!ok);
    assert!(err.contains("belongs to node 4"), "{err}");

    // A metadata log directory formatted for another cluster is refused as well.
    let foreign = tmp.path().join("foreign-meta");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("meta.properties"),
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=4\n",
    )
    .unwrap();
    let (ok, _, err) = run(&[
        "server",
        "--config",
        cfg,
        "--override",
        &format!("log.dirs={}", d1.display()),
        "--override",
        &format!("metadata.log.dir={}", foreign.display()),
    ]);
    assert!(!ok);
    assert!(
        err.contains("belongs to cluster AAAAAAAAAAAAAAAAAAAAAA") && err.contains(id),
        "{err}"
    );
    // Several log directories are refused rather than all but the first ignored.
    let (ok, _, err) = run(&["server", "--config", cfg]);
    assert!(!ok);
    assert!(err.contains("keeps every partition in one"), "{err}");
}

/// `strom server` as node `node` of a three-voter quorum with its data in `data`.
fn quorum_node(node: &str, data: &std::path::Path) -> (bool, String, String) {
    run(&[
        "server",
        "--override",
        &format!("node.id={node}"),
        "--override",
        "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:19094,3@127.0.0.1:19095",
        "--override",
        "controller.listener.names=CONTROLLER",
        "--override",
        "listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:19093",
        "--override",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "--override",
        &format!("log.dirs={}", data.display()),
    ])
}

#[test]
fn a_node_of_a_larger_quorum_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (ok, _, err) = quorum_node("1", &data);
    assert!(!ok);
    assert!(err.contains("strom storage format"), "{err}");
    // Kafka's rules between the keys: a controller must be one of the voters.
    let (ok, _, err) = quorum_node("9", &data);
    assert!(!ok);
    assert!(err.contains("not a voter"), "{err}");
}

/// A data directory written before the metadata quorum (topics in `.topics/`) opens with
/// its topics, configs and records; they move into the metadata log on first start, and a
/// topic deleted afterwards stays deleted across restarts.
#[test]
fn topics_of_a_data_directory_from_before_the_quorum_move_into_the_metadata_log() {
    use common::{Server, ok};

    let mut s = Server::start();
    s.stop();
    let data = s.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data).unwrap();
    // The layout the single node wrote before: topic files and partition logs.
    {
        let config = strom_broker::BrokerConfig {
            log_dir: data.clone(),
            ..Default::default()
        };
        let b = strom_broker::Broker::open(config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(b.create_topic(
            strom_broker::broker::NewTopic {
                name: "legacy".into(),
                partitions: Some(3),
                replication_factor: None,
                assignments: vec![],
                configs: [("retention.ms".to_string(), "5000".to_string())].into(),
            },
            false,
        ))
        .unwrap();
        let mut batch = strom_storage::batch::BatchBuilder::new()
            .record(strom_storage::batch::Record {
                timestamp: 1,
                key: Some(b"k".to_vec()),
                value: Some(b"from before".to_vec()),
                headers: vec![],
            })
            .build();
        b.partition("legacy", 1)
            .unwrap()
            .append(&mut batch, 1)
            .unwrap();
        b.shutdown();
    }
    assert!(data.join(".topics/legacy.properties").exists());
    assert!(!data.join("__cluster_metadata-0").exists());

    s.restart();
    let described = ok(&s, &["topics", "describe", "--topic", "legacy", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&described).unwrap();
    let text = v.to_string();
    assert!(text.contains("\"partition\":2"), "{text}");
    let configs = ok(&s, &["configs", "describe", "--topic", "legacy"]);
    assert!(
        configs.contains("retention.ms") && configs.contains("5000"),
        "{configs}"
    );
    let read = ok(
        &s,
        &[
            "consume",
            "--topic",
            "legacy",
            "--partition",
            "1",
            "--offset",
            "earliest",
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
        ],
    );
    assert!(read.contains("from before"), "{read}");
    assert!(data.join("__cluster_metadata-0").exists());
    assert!(
        !data.join(".topics/legacy.properties").exists(),
        "read once, then retired"
    );

    // Deleted now, it stays deleted: nothing brings it back from the old files.
    ok(&s, &["topics", "delete", "--topic", "legacy"]);
    s.stop();
    s.restart();
    let listed = ok(&s, &["topics", "list"]);
    assert!(!listed.contains("legacy"), "{listed}");
}

/// The same from a data directory with committed offsets and transactions in it, written by
/// the single node before the quorum (served here in-process, as it served then): after
/// the move, the group's offsets are where they were committed, a read_committed consumer
/// sees the committed transaction and not the aborted one, and the transactional id goes
/// on.
#[test]
fn offsets_and_transactions_from_before_the_quorum_survive_the_move() {
    use common::{Server, ok};
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::Duration;

    let mut s = Server::start();
    s.stop();
    let data = s.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = strom_broker::BrokerConfig {
            log_dir: data.clone(),
            listener: addr,
            advertised_port: addr.port(),
            ..Default::default()
        };
        config.listeners[0].bind = addr;
        config.listeners[0].port = addr.port();
        config.groups.group.initial_rebalance_delay_ms = 0;
        let b = std::sync::Arc::new(strom_broker::Broker::open(config).unwrap());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(strom_broker::server::serve(
            b.clone(),
            listener,
            "PLAINTEXT".into(),
            stopped.clone(),
        ));
        tokio::spawn(b.clone().run_group_timers(stopped.clone()));
        tokio::spawn(b.clone().run_txn_timers(stopped.clone()));
        let bootstrap = addr.to_string();
        tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(30);
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("transactional.id", "old-tx")
                .create()
                .unwrap();
            p.init_transactions(t).unwrap();
            for (values, commit) in [
                (["kept-1", "kept-2"], true),
                (["dropped", "dropped"], false),
            ] {
                p.begin_transaction().unwrap();
                for v in values {
                    p.send(BaseRecord::<(), _>::to("old").partition(0).payload(v))
                        .unwrap();
                }
                p.flush(t).unwrap();
                if commit {
                    p.commit_transaction(t).unwrap();
                } else {
                    p.abort_transaction(t).unwrap();
                }
            }
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "old-group")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset("old", 0, rdkafka::Offset::Offset(2))
                .unwrap();
            c.commit(&tpl, CommitMode::Sync).unwrap();
        })
        .await
        .unwrap();
        let _ = stop.send(true);
        tokio::task::spawn_blocking(move || b.shutdown())
            .await
            .unwrap();
    });
    drop(rt);
    assert!(data.join(".topics").exists());

    s.restart();
    let group = ok(
        &s,
        &["groups", "describe", "--group", "old-group", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&group).unwrap();
    let committed: Vec<i64> = v["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["topic"] == "old")
        .filter_map(|o| o["current_offset"].as_i64())
        .collect();
    assert_eq!(committed, vec![2], "{group}");
    let read = ok(
        &s,
        &[
            "consume",
            "--topic",
            "old",
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--timeout-ms",
            "3000",
        ],
    );
    assert_eq!(read, "kept-1\nkept-2\n");
    // The transactional id is known: a new producer fences the old one and goes on.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", s.bootstrap())
        .set("transactional.id", "old-tx")
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    p.init_transactions(t).unwrap();
    p.begin_transaction().unwrap();
    p.send(BaseRecord::<(), _>::to("old").partition(0).payload("after"))
        .unwrap();
    p.commit_transaction(t).unwrap();
    let txns = ok(
        &s,
        &[
            "transactions",
            "describe",
            "--transactional-id",
            "old-tx",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&txns).unwrap();
    assert!(v["producer_epoch"].as_i64().unwrap() >= 1, "{txns}");
}
