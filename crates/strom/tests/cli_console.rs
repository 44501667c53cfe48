//! `strom produce` and `strom consume` against a real server, checked against librdkafka.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, ok_with, run};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[test]
fn produce_and_consume_round_trip_with_keys_headers_and_codecs() {
    let server = Server::start();
    ok_with(
        &server,
        &[
            "topics",
            "create",
            "--topic",
            "console",
            "--partitions",
            "3",
        ],
        "",
    );
    let input: String = (0..30).map(|i| format!("key{i}:value {i}\n")).collect();
    ok_with(
        &server,
        &[
            "produce",
            "--topic",
            "console",
            "--key-separator",
            ":",
            "--header",
            "origin=cli",
            "--acks",
            "all",
        ],
        &input,
    );
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        ok_with(
            &server,
            &[
                "produce",
                "--topic",
                "console",
                "--partition",
                "0",
                "--compression",
                codec,
            ],
            &format!("{codec} line\n"),
        );
    }
    let out = ok_with(
        &server,
        &[
            "consume",
            "--topic",
            "console",
            "--from-beginning",
            "--max-messages",
            "34",
            "--format",
            "{partition} {offset} {key} {value} {headers}",
        ],
        "",
    );
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 34);
    // librdkafka reads the same records; its murmur2 partitioner (the Java client's) put each
    // key where strom's did.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("console", p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    common::wait_for(
        "34 records through librdkafka",
        Duration::from_secs(60),
        || {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_else(|| "null".into());
                let value = String::from_utf8_lossy(m.payload().unwrap()).into_owned();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                format!("{}:{}", h.key, String::from_utf8_lossy(h.value.unwrap()))
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                seen.push(format!(
                    "{} {} {key} {value} {headers}",
                    m.partition(),
                    m.offset()
                ));
            }
            (seen.len() >= 34).then_some(())
        },
    );
    seen.sort();
    assert_eq!(lines, seen.iter().map(String::as_str).collect::<Vec<_>>());

    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    ok_with(
        &server,
        &[
            "topics",
            "create",
            "--topic",
            "viardkafka",
            "--partitions",
            "3",
        ],
        "",
    );
    for i in 0..30 {
        p.send(
            BaseRecord::to("viardkafka")
                .key(&format!("key{i}"))
                .payload("x"),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let theirs = ok_with(
        &server,
        &[
            "consume",
            "--topic",
            "viardkafka",
            "--from-beginning",
            "--max-messages",
            "30",
            "--format",
            "{key} {partition}",
        ],
        "",
    );
    let ours: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(" key"))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            format!("{} {}", f[2], f[0])
        })
        .collect();
    let mut theirs: Vec<&str> = theirs.lines().collect();
    theirs.sort();
    let mut ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    ours.sort();
    assert_eq!(
        ours, theirs,
        "keys land on the partitions the Java partitioner picks"
    );
}

#[test]
fn consume_from_a_partition_and_offset_and_stop_on_timeout() {
    let server = Server::start();
    ok_with(
        &server,
        &["topics", "create", "--topic", "seek", "--partitions", "2"],
        "",
    );
    ok_with(
        &server,
        &["produce", "--topic", "seek", "--partition", "1"],
        "a\nb\nc\nd\n",
    );
    assert_eq!(
        ok_with(
            &server,
            &[
                "consume",
                "--topic",
                "seek",
                "--partition",
                "1",
                "--offset",
                "2",
                "--timeout-ms",
                "1000"
            ],
            ""
        ),
        "c\nd\n"
    );
    assert_eq!(
        ok_with(
            &server,
            &[
                "consume",
                "--topic",
                "seek",
                "--partition",
                "1",
                "--offset",
                "earliest",
                "--max-messages",
                "1",
                "--format",
                "{offset}:{value}"
            ],
            ""
        ),
        "0:a\n"
    );
    assert_eq!(
        ok_with(
            &server,
            &[
                "consume",
                "--topic",
                "seek",
                "--partition",
                "1",
                "--offset",
                "latest",
                "--timeout-ms",
                "500"
            ],
            ""
        ),
        ""
    );
    assert_eq!(
        ok_with(
            &server,
            &["consume", "--topic", "seek", "--timeout-ms", "500"],
            ""
        ),
        "",
        "latest by default"
    );
}

#[test]
fn produce_failures_exit_non_zero_and_say_why() {
    let server = Server::start_with(&["auto.create.topics.enable=false"]);
    let out = run(&server, &["produce", "--topic", "missing"], "x\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UNKNOWN_TOPIC_OR_PARTITION") && err.contains("missing"),
        "{err}"
    );
    ok_with(
        &server,
        &[
            "topics",
            "create",
            "--topic",
            "strict",
            "--config",
            "max.message.bytes=100",
        ],
        "",
    );
    ok_with(
        &server,
        &["produce", "--topic", "strict", "--key-separator", "="],
        "a=b\n",
    );
    // A batch goes whole or not at all: the oversized record travels without the good one.
    let out = run(
        &server,
        &["produce", "--topic", "strict", "--key-separator", "="],
        &format!("nosep\nk={}\n", "x".repeat(300)),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1: no key separator"), "{err}");
    assert!(
        err.contains("2 of 2 records were not acknowledged"),
        "{err}"
    );
    assert!(err.contains("MESSAGE_TOO_LARGE"), "{err}");
    let out = run(
        &server,
        &["produce", "--topic", "strict", "--acks", "2"],
        "",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--acks must be 0, 1 or all"));
}

#[test]
fn retriable_errors_are_retried_then_reported() {
    let server = Server::start();
    ok_with(
        &server,
        &[
            "topics",
            "create",
            "--topic",
            "isr",
            "--config",
            "min.insync.replicas=2",
        ],
        "",
    );
    let started = std::time::Instant::now();
    let out = run(
        &server,
        &["produce", "--topic", "isr", "--acks", "all"],
        "x\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NOT_ENOUGH_REPLICAS"), "{err}");
    // Three retries with 100, 200 and 300 ms of backoff came first.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    ok_with(
        &server,
        &["produce", "--topic", "isr", "--acks", "1"],
        "y\n",
    );
}

#[test]
fn ctrl_c_stops_a_group_consumer_cleanly_and_commits() {
    let server = Server::start_with(&["group.initial.rebalance.delay.ms=0"]);
    ok_with(&server, &["produce", "--topic", "sig"], "1\n2\n3\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "consume",
            "--topic",
            "sig",
            "--group",
            "sigg",
            "--from-beginning",
            "--bootstrap-server",
            &server.bootstrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut got = String::new();
    for _ in 0..3 {
        std::io::BufRead::read_line(&mut stdout, &mut got).unwrap();
    }
    assert_eq!(got, "1\n2\n3\n");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let d: serde_json::Value = serde_json::from_str(&ok_with(
        &server,
        &["groups", "describe", "--group", "sigg", "--json"],
        "",
    ))
    .unwrap();
    assert_eq!(d["offsets"][0]["current_offset"], 3);
    assert_eq!(d["state"], "Empty", "it left the group");
}

#[test]
fn files_out_of_range_offsets_and_internal_topics() {
    let server = Server::start_with(&["group.initial.rebalance.delay.ms=0"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.txt");
    std::fs::write(
        &file,
        (0..10).map(|i| format!("r{i}\n")).collect::<String>(),
    )
    .unwrap();
    ok_with(
        &server,
        &["produce", "--topic", "f", "--file", file.to_str().unwrap()],
        "",
    );
    assert_eq!(
        ok_with(
            &server,
            &[
                "consume",
                "--topic",
                "f",
                "--from-beginning",
                "--max-messages",
                "10"
            ],
            ""
        )
        .lines()
        .count(),
        10
    );
    // Records before 5 are deleted: a consumer asking for offset 2 starts over at 5.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", server.bootstrap())
            .create()
            .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("f", 0, rdkafka::Offset::Offset(5))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.delete_records(&tpl, &rdkafka::admin::AdminOptions::new()))
        .unwrap();
    assert_eq!(
        ok_with(
            &server,
            &[
                "consume",
                "--topic",
                "f",
                "--partition",
                "0",
                "--offset",
                "2",
                "--timeout-ms",
                "1500",
                "--format",
                "{offset}"
            ],
            ""
        ),
        "5\n6\n7\n8\n9\n"
    );
    // Group offsets live in __consumer_offsets, which topic listings hide unless asked.
    ok_with(
        &server,
        &[
            "consume",
            "--topic",
            "f",
            "--group",
            "fg",
            "--from-beginning",
            "--max-messages",
            "1",
        ],
        "",
    );
    let listed = ok_with(&server, &["topics", "list"], "");
    assert!(!listed.contains("__consumer_offsets"), "{listed}");
    assert!(
        ok_with(&server, &["topics", "list", "--include-internal"], "")
            .contains("__consumer_offsets")
    );
    ok_with(
        &server,
        &[
            "groups",
            "reset-offsets",
            "--group",
            "fg",
            "--topic",
            "f",
            "--to-offset",
            "8",
            "--execute",
        ],
        "",
    );
    assert_eq!(
        ok_with(
            &server,
            &[
                "consume",
                "--topic",
                "f",
                "--group",
                "fg",
                "--timeout-ms",
                "1500",
                "--format",
                "{value}"
            ],
            ""
        ),
        "r8\nr9\n"
    );
}
