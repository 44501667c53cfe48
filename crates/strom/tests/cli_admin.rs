//! `strom topics`, `strom configs` and `strom cluster` against a real server: tables, JSON,
//! and the error paths.

mod common;

use std::process::Command;

use common::{Server, fails, ok};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn topics_lifecycle_with_tables_and_json() {
    let server = Server::start();
    assert_eq!(
        ok(
            &server,
            &[
                "topics",
                "create",
                "--topic",
                "orders",
                "--partitions",
                "3",
                "--config",
                "retention.ms=3600000"
            ]
        ),
        "Created topic orders.\n"
    );
    assert_eq!(
        ok(
            &server,
            &["topics", "create", "--topic", "orders", "--if-not-exists"]
        ),
        ""
    );
    assert_eq!(
        ok(
            &server,
            &["topics", "create", "--topic", "dry", "--validate-only"]
        ),
        "Topic dry can be created.\n"
    );
    let err = fails(&server, &["topics", "create", "--topic", "orders"]);
    assert!(err.contains("TOPIC_ALREADY_EXISTS"), "{err}");
    let err = fails(
        &server,
        &[
            "topics",
            "create",
            "--topic",
            "bad",
            "--config",
            "retention.ms=soon",
        ],
    );
    assert!(
        err.contains("INVALID_CONFIG") && err.contains("retention.ms"),
        "{err}"
    );
    let err = fails(
        &server,
        &["topics", "create", "--topic", "bad", "--config", "oops"],
    );
    assert!(err.contains("not key=value"), "{err}");

    assert_eq!(
        ok(&server, &["topics", "list"]),
        "TOPIC   PARTITIONS  REPLICATION-FACTOR\norders  3           1\n"
    );
    let listed = json(&ok(&server, &["topics", "list", "--json"]));
    assert_eq!(listed[0]["name"], "orders");
    assert_eq!(listed[0]["partitions"], 3);

    // Records in partition 1 only, then describe shows offsets and sizes.
    let batch = strom_storage::batch::BatchBuilder::new()
        .record(strom_storage::batch::Record {
            timestamp: 1,
            value: Some(b"v".to_vec()),
            ..Default::default()
        })
        .build();
    produce_raw(&server, "orders", 1, &batch, 4);
    let text = ok(&server, &["topics", "describe", "--topic", "orders"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("Topic: orders\tTopicId: "), "{text}");
    assert!(
        lines[0]
            .ends_with("PartitionCount: 3\tReplicationFactor: 1\tCleanupPolicy: delete\tConfigs: retention.ms=3600000"),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "PARTITION  LEADER  REPLICAS  ISR  LOG-START  LOG-END  SIZE"
    );
    assert!(
        lines[2].starts_with("0          0       0         0    0          0        0 B"),
        "{text}"
    );
    let size = batch.len() * 4;
    assert_eq!(
        lines[3],
        format!("1          0       0         0    0          4        {size} B")
    );
    let d = json(&ok(
        &server,
        &["topics", "describe", "--topic", "orders", "--json"],
    ));
    assert_eq!(d[0]["partitions"][1]["log_end_offset"], 4);
    assert_eq!(d[0]["partitions"][1]["size_bytes"], size);
    assert_eq!(d[0]["configs"][0], "retention.ms=3600000");

    assert_eq!(
        ok(
            &server,
            &["topics", "alter", "--topic", "orders", "--partitions", "5"]
        ),
        "Topic orders now has 5 partitions.\n"
    );
    let err = fails(
        &server,
        &["topics", "alter", "--topic", "orders", "--partitions", "2"],
    );
    assert!(err.contains("INVALID_PARTITIONS"), "{err}");
    assert_eq!(
        ok(&server, &["topics", "delete", "--topic", "orders"]),
        "Deleted topic orders.\n"
    );
    let err = fails(&server, &["topics", "delete", "--topic", "orders"]);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");
    assert_eq!(
        ok(&server, &["topics", "list"]),
        "TOPIC  PARTITIONS  REPLICATION-FACTOR\n"
    );
}

/// Produces `copies` of one batch to a partition with a hand-made Produce v3 request.
/// Produces `copies` of `batch` to one partition, a Produce v3 request each (v3+ carry one
/// batch per partition).
fn produce_raw(server: &Server, topic: &str, partition: i32, batch: &[u8], copies: usize) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.bootstrap()).unwrap();
    for _ in 0..copies {
        let mut body = Vec::new();
        body.extend_from_slice(&0i16.to_be_bytes()); // api key
        body.extend_from_slice(&3i16.to_be_bytes()); // version
        body.extend_from_slice(&7i32.to_be_bytes()); // correlation
        body.extend_from_slice(&(-1i16).to_be_bytes()); // client id: null
        body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
        body.extend_from_slice(&1i16.to_be_bytes()); // acks
        body.extend_from_slice(&5000i32.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&partition.to_be_bytes());
        body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
        body.extend_from_slice(batch);
        s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut size = [0u8; 4];
        s.read_exact(&mut size).unwrap();
        let mut resp = vec![0u8; i32::from_be_bytes(size) as usize];
        s.read_exact(&mut resp).unwrap();
        // correlation id, topics (1), name, partitions (1), index, then the error code.
        let at = 4 + 4 + 2 + topic.len() + 4 + 4;
        assert_eq!(&resp[at..at + 2], &[0, 0], "produce error code");
    }
}

#[test]
fn configs_and_cluster() {
    let server = Server::start_with(&["num.partitions=2"]);
    ok(&server, &["topics", "create", "--topic", "c"]);
    assert_eq!(
        ok(&server, &["configs", "describe", "--topic", "c"]),
        "NAME  VALUE  SOURCE\n"
    );
    assert_eq!(
        ok(
            &server,
            &[
                "configs",
                "alter",
                "--topic",
                "c",
                "--add-config",
                "retention.ms=1000,segment.bytes=1048576"
            ]
        ),
        "Completed updating config for c.\n"
    );
    assert_eq!(
        ok(&server, &["configs", "describe", "--topic", "c"]),
        "NAME           VALUE    SOURCE\nretention.ms   1000     DYNAMIC_TOPIC_CONFIG\nsegment.bytes  1048576  DYNAMIC_TOPIC_CONFIG\n"
    );
    ok(
        &server,
        &[
            "configs",
            "alter",
            "--topic",
            "c",
            "--delete-config",
            "segment.bytes",
        ],
    );
    let all = json(&ok(
        &server,
        &["configs", "describe", "--topic", "c", "--all", "--json"],
    ));
    let by_name = |n: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("segment.bytes")["source"], "DEFAULT_CONFIG");
    assert_eq!(by_name("retention.ms")["value"], "1000");
    let err = fails(
        &server,
        &[
            "configs",
            "alter",
            "--topic",
            "c",
            "--add-config",
            "retention.ms=never",
        ],
    );
    assert!(err.contains("INVALID_CONFIG"), "{err}");
    let err = fails(&server, &["configs", "alter", "--topic", "c"]);
    assert!(err.contains("nothing to change"), "{err}");
    let broker = ok(&server, &["configs", "describe", "--broker", "0"]);
    assert!(broker.contains("num.partitions  2"), "{broker}");
    // The coordinators' settings are there too, under Kafka's keys.
    let all = json(&ok(
        &server,
        &["configs", "describe", "--broker", "0", "--all", "--json"],
    ));
    let value = |n: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {all}"))["value"]
            .clone()
    };
    assert_eq!(value("transaction.max.timeout.ms"), "900000");
    assert_eq!(value("producer.id.expiration.ms"), "86400000");
    assert_eq!(value("offsets.retention.minutes"), "10080");
    assert_eq!(value("group.initial.rebalance.delay.ms"), "3000");
    let err = fails(
        &server,
        &[
            "configs",
            "alter",
            "--broker",
            "0",
            "--add-config",
            "num.partitions=3",
        ],
    );
    assert!(
        err.contains("cannot update these configs dynamically"),
        "{err}"
    );
    assert!(err.contains("server.properties"), "{err}");

    let c = ok(&server, &["cluster", "describe"]);
    let lines: Vec<&str> = c.lines().collect();
    assert!(
        lines[0].starts_with("Cluster id: ") && lines[0].len() == "Cluster id: ".len() + 22,
        "{c}"
    );
    assert_eq!(lines[1], "Controller: 0");
    assert_eq!(lines[2], "BROKER  HOST       PORT   RACK  STATE");
    assert_eq!(
        lines[3],
        format!("0       127.0.0.1  {}  -     live", server.port)
    );
    // The node is its own metadata quorum: leader, one voter, no lag.
    assert!(
        lines[5].starts_with("Metadata quorum: leader 0, epoch "),
        "{c}"
    );
    assert_eq!(lines[6], "NODE  ROLE    LOG-END-OFFSET  LAG");
    assert!(
        lines[7].starts_with("0     leader  ") && lines[7].ends_with("  0"),
        "{c}"
    );
    let j = json(&ok(&server, &["cluster", "describe", "--json"]));
    assert_eq!(j["brokers"][0]["port"], server.port);
    assert_eq!(j["quorum"]["leader"], 0);
    assert_eq!(j["quorum"]["voters"][0]["lag"], 0);
    assert_eq!(
        j["quorum"]["voters"][0]["log_end_offset"],
        j["quorum"]["high_watermark"]
    );
}

#[test]
fn an_unreachable_broker_is_named_in_the_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "topics",
            "list",
            "--bootstrap-server",
            "127.0.0.1:1",
            "--request-timeout-ms",
            "2000",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("is a broker running there?"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(["topics", "create"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--topic"));
}

#[test]
fn dynamic_broker_configs_set_the_topics_defaults_and_survive_a_restart() {
    let mut server = Server::start();
    ok(&server, &["topics", "create", "--topic", "d"]);
    let retention = |server: &Server| {
        let all = json(&ok(
            server,
            &["configs", "describe", "--topic", "d", "--all", "--json"],
        ));
        let e = all
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "retention.ms")
            .cloned()
            .unwrap();
        (e["value"].clone(), e["source"].clone())
    };
    assert_eq!(
        retention(&server),
        ("604800000".into(), "DEFAULT_CONFIG".into())
    );

    // Every broker's default, then this broker's own over it.
    assert_eq!(
        ok(
            &server,
            &[
                "configs",
                "alter",
                "--broker-defaults",
                "--add-config",
                "log.retention.ms=3600000",
            ],
        ),
        "Completed updating default config for brokers in the cluster.\n"
    );
    assert_eq!(
        retention(&server),
        ("3600000".into(), "DYNAMIC_DEFAULT_BROKER_CONFIG".into())
    );
    assert_eq!(
        ok(&server, &["configs", "describe", "--broker-defaults"]),
        "NAME              VALUE    SOURCE\nlog.retention.ms  3600000  DYNAMIC_DEFAULT_BROKER_CONFIG\n"
    );
    ok(
        &server,
        &[
            "configs",
            "alter",
            "--broker",
            "0",
            "--add-config",
            "log.retention.ms=7200000",
        ],
    );
    assert_eq!(
        retention(&server),
        ("7200000".into(), "DYNAMIC_BROKER_CONFIG".into())
    );
    let broker = ok(&server, &["configs", "describe", "--broker", "0"]);
    let line = broker.lines().find(|l| l.starts_with("log.retention.ms"));
    assert_eq!(
        line.map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["log.retention.ms", "7200000", "DYNAMIC_BROKER_CONFIG"]),
        "{broker}"
    );
    // A bad value is refused, the configs unchanged.
    let err = fails(
        &server,
        &[
            "configs",
            "alter",
            "--broker-defaults",
            "--add-config",
            "log.segment.bytes=tiny",
        ],
    );
    assert!(err.contains("INVALID_CONFIG"), "{err}");
    // Another broker's too, though this one does not apply them.
    let err = fails(
        &server,
        &[
            "configs",
            "alter",
            "--broker",
            "7",
            "--add-config",
            "log.segment.bytes=tiny",
        ],
    );
    assert!(err.contains("INVALID_CONFIG"), "{err}");

    // The metadata log keeps them.
    server.stop();
    server.restart();
    assert_eq!(
        retention(&server),
        ("7200000".into(), "DYNAMIC_BROKER_CONFIG".into())
    );
    ok(
        &server,
        &[
            "configs",
            "alter",
            "--broker",
            "0",
            "--delete-config",
            "log.retention.ms",
        ],
    );
    assert_eq!(
        retention(&server),
        ("3600000".into(), "DYNAMIC_DEFAULT_BROKER_CONFIG".into())
    );
}
