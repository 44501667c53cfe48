//! `strom transactions` against a real server, with a librdkafka transactional producer:
//! list, describe, describe-producers, find-hanging and abort.

mod common;

use std::time::Duration;

use common::{Server, fails, ok};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `strom transactions ARGS`, which must succeed; its standard output.
fn txn_ok(server: &Server, args: &[&str]) -> String {
    ok(server, &[&["transactions"], args].concat())
}

/// `strom transactions ARGS`, which must fail; its standard error.
fn txn_fails(server: &Server, args: &[&str]) -> String {
    fails(server, &[&["transactions"], args].concat())
}

/// The last stable offset of `orders`-`partition`, as a read_committed consumer sees it.
fn lso(server: &Server, partition: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", "lso")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.fetch_watermarks("orders", partition, T).unwrap().1
}

#[test]
fn inspect_and_abort_an_open_transaction() {
    let server = Server::start();
    ok(
        &server,
        &["topics", "create", "--topic", "orders", "--partitions", "2"],
    );
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", "copier-1")
        .set("transaction.timeout.ms", "60000")
        .create()
        .unwrap();
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        p.send(
            BaseRecord::<(), str>::to("orders")
                .partition(0)
                .payload(&format!("r{i}")),
        )
        .unwrap();
    }
    p.flush(T).unwrap();

    let listed = json(&txn_ok(&server, &["list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["transactional_id"], "copier-1");
    assert_eq!(listed[0]["state"], "Ongoing");
    assert_eq!(listed[0]["coordinator"], 0);
    let pid = listed[0]["producer_id"].as_i64().unwrap();
    let table = txn_ok(&server, &["list", "--state", "Ongoing"]);
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        [
            "TRANSACTIONAL-ID  COORDINATOR  PRODUCER-ID  STATE".to_string(),
            format!("copier-1          0            {pid:<11}  Ongoing"),
        ]
    );
    let none = txn_ok(&server, &["list", "--state", "CompleteCommit", "--json"]);
    assert_eq!(json(&none), json("[]"));

    let d = json(&txn_ok(
        &server,
        &["describe", "--transactional-id", "copier-1", "--json"],
    ));
    assert_eq!(d["state"], "Ongoing");
    assert_eq!(d["producer_id"], pid);
    assert_eq!(d["timeout_ms"], 60000);
    assert_eq!(d["partitions"], json(r#"["orders-0"]"#));
    let epoch = d["producer_epoch"].as_i64().unwrap();
    assert!(d["duration_ms"].as_i64().unwrap() >= 0);

    let producers = json(&txn_ok(
        &server,
        &[
            "describe-producers",
            "--topic",
            "orders",
            "--partition",
            "0",
            "--json",
        ],
    ));
    assert_eq!(producers.as_array().unwrap().len(), 1, "{producers}");
    assert_eq!(producers[0]["producer_id"], pid);
    assert_eq!(producers[0]["producer_epoch"], epoch);
    assert_eq!(producers[0]["last_sequence"], 2);
    assert_eq!(producers[0]["current_transaction_start_offset"], 0);
    assert_eq!(lso(&server, 0), 0);

    // Its coordinator has it open in orders-0: not hanging, however old.
    let hanging = txn_ok(
        &server,
        &[
            "find-hanging",
            "--topic",
            "orders",
            "--max-transaction-timeout",
            "0",
            "--json",
        ],
    );
    assert_eq!(json(&hanging), json("[]"));
    let hanging = txn_ok(
        &server,
        &[
            "find-hanging",
            "--broker-id",
            "0",
            "--max-transaction-timeout",
            "0",
            "--json",
        ],
    );
    assert_eq!(json(&hanging), json("[]"), "every partition of broker 0");
    let err = txn_fails(&server, &["find-hanging", "--broker-id", "7"]);
    assert!(err.contains("there is no broker 7"), "{err}");

    let err = txn_fails(
        &server,
        &[
            "abort",
            "--topic",
            "orders",
            "--partition",
            "0",
            "--start-offset",
            "7",
        ],
    );
    assert!(
        err.contains("no transaction starts at offset 7 in orders-0"),
        "{err}"
    );
    let err = txn_fails(&server, &["describe", "--transactional-id", "nobody"]);
    assert!(err.contains("TRANSACTIONAL_ID_NOT_FOUND"), "{err}");

    // The operator's abort writes the marker: read_committed consumers move past it.
    let out = txn_ok(
        &server,
        &[
            "abort",
            "--topic",
            "orders",
            "--partition",
            "0",
            "--start-offset",
            "0",
        ],
    );
    assert_eq!(
        out,
        format!("Aborted producer {pid}'s transaction (epoch {epoch}) in orders-0.\n")
    );
    assert_eq!(lso(&server, 0), 4, "3 records and the abort marker");
    let producers = json(&txn_ok(
        &server,
        &[
            "describe-producers",
            "--topic",
            "orders",
            "--partition",
            "0",
            "--json",
        ],
    ));
    assert_eq!(producers[0]["current_transaction_start_offset"], -1);
    let table = txn_ok(
        &server,
        &[
            "describe-producers",
            "--topic",
            "orders",
            "--partition",
            "0",
        ],
    );
    assert!(
        table.starts_with(
            "PRODUCER-ID  EPOCH  LAST-SEQUENCE  LAST-TIMESTAMP  COORDINATOR-EPOCH  TXN-START-OFFSET\n"
        ),
        "{table}"
    );
    assert!(
        table.trim_end().ends_with(" -"),
        "no open transaction: {table}"
    );
    // The producer has no transaction open now: its -1 never matches.
    let err = txn_fails(
        &server,
        &[
            "abort",
            "--topic",
            "orders",
            "--partition",
            "0",
            "--start-offset=-1",
        ],
    );
    assert!(err.contains("no transaction starts at offset -1"), "{err}");
}

#[test]
fn consume_read_committed_skips_aborted_transactions() {
    let server = Server::start();
    ok(
        &server,
        &["topics", "create", "--topic", "orders", "--partitions", "1"],
    );
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", "writer")
        .create()
        .unwrap();
    p.init_transactions(T).unwrap();
    for (values, commit) in [
        (["a1", "a2"], false),
        (["c1", "c2"], true),
        (["a3", "a4"], false),
    ] {
        p.begin_transaction().unwrap();
        for v in values {
            p.send(BaseRecord::<(), str>::to("orders").partition(0).payload(v))
                .unwrap();
        }
        p.flush(T).unwrap();
        if commit {
            p.commit_transaction(T).unwrap();
        } else {
            p.abort_transaction(T).unwrap();
        }
    }
    // A plain record after them all: read_committed must reach it past the last abort.
    let plain: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .unwrap();
    plain
        .send(
            BaseRecord::<(), str>::to("orders")
                .partition(0)
                .payload("p1"),
        )
        .unwrap();
    plain.flush(T).unwrap();
    let read = |isolation: &str, n: &str| {
        ok(
            &server,
            &[
                "consume",
                "--topic",
                "orders",
                "--from-beginning",
                "--isolation-level",
                isolation,
                "--max-messages",
                n,
                "--timeout-ms",
                "10000",
                "--format",
                "{offset}:{value}",
            ],
        )
    };
    assert_eq!(read("read_committed", "3"), "3:c1\n4:c2\n9:p1\n");
    assert_eq!(
        read("read_uncommitted", "7"),
        "0:a1\n1:a2\n3:c1\n4:c2\n6:a3\n7:a4\n9:p1\n"
    );
    // strom perf consume counts what read_committed consumers get, and no more.
    let perf = |n: &str| {
        common::run(
            &server,
            &[
                "perf",
                "consume",
                "--topic",
                "orders",
                "--messages",
                n,
                "--isolation-level",
                "read_committed",
                "--timeout-ms",
                "1000",
                "--json",
            ],
            "",
        )
    };
    let out = perf("3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&String::from_utf8(out.stdout).unwrap())["records"], 3);
    let out = perf("4");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("only 3 of 4 records"), "{err}");
}

#[test]
fn read_committed_gets_past_an_aborted_transaction_larger_than_a_fetch() {
    let server = Server::start();
    ok(
        &server,
        &["topics", "create", "--topic", "big", "--partitions", "1"],
    );
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("transactional.id", "bulk")
        .create()
        .unwrap();
    p.init_transactions(T).unwrap();
    // 3 MB aborted: every fetch of 1 MiB from its start holds nothing to deliver.
    p.begin_transaction().unwrap();
    let large = "x".repeat(100_000);
    for _ in 0..30 {
        loop {
            match p.send(
                BaseRecord::<(), str>::to("big")
                    .partition(0)
                    .payload(&large),
            ) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(100));
                }
            }
        }
    }
    p.flush(T).unwrap();
    p.abort_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    p.send(
        BaseRecord::<(), str>::to("big")
            .partition(0)
            .payload("after"),
    )
    .unwrap();
    p.commit_transaction(T).unwrap();
    let out = ok(
        &server,
        &[
            "consume",
            "--topic",
            "big",
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
        ],
    );
    assert_eq!(out, "after\n");
}
