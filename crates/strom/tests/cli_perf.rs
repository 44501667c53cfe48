//! `strom perf` counts what it claims (speed is measured elsewhere, never asserted).

mod common;

use std::process::Command;

use common::Server;

fn json(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .args(["--bootstrap-server", &server.bootstrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn perf_produce_and_consume_count_every_record() {
    let server = Server::start_with(&["num.partitions=3"]);
    let p = json(
        &server,
        &[
            "perf",
            "produce",
            "--topic",
            "perf",
            "--num-records",
            "20000",
            "--record-size",
            "64",
            "--acks",
            "all",
            "--compression",
            "lz4",
        ],
    );
    assert_eq!(p["records"], 20000);
    assert_eq!(p["failed"], 0);
    for k in ["p50", "p95", "p99", "p99_9", "max"] {
        assert!(p["latency_ms"][k].as_f64().unwrap() >= 0.0, "{k}");
    }
    assert!(p["latency_ms"]["p50"].as_f64() <= p["latency_ms"]["max"].as_f64());
    let c = json(
        &server,
        &["perf", "consume", "--topic", "perf", "--messages", "20000"],
    );
    assert_eq!(c["records"], 20000);
    // The log holds exactly what was sent.
    let d: serde_json::Value = {
        let out = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args([
                "topics",
                "describe",
                "--topic",
                "perf",
                "--json",
                "--bootstrap-server",
                &server.bootstrap(),
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let total: i64 = d[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 20000);
    // A paced run keeps to its rate: 300 records at 1000/s cannot finish in under ~0.3 s.
    let paced = json(
        &server,
        &[
            "perf",
            "produce",
            "--topic",
            "perf",
            "--num-records",
            "300",
            "--record-size",
            "10",
            "--throughput",
            "1000",
        ],
    );
    assert_eq!(paced["records"], 300);
    assert!(paced["seconds"].as_f64().unwrap() >= 0.29, "{paced}");
}

#[test]
fn perf_consume_reports_a_short_topic() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "perf",
            "produce",
            "--topic",
            "short",
            "--num-records",
            "10",
            "--bootstrap-server",
            &server.bootstrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "perf",
            "consume",
            "--topic",
            "short",
            "--messages",
            "20",
            "--timeout-ms",
            "1000",
            "--bootstrap-server",
            &server.bootstrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only 10 of 20 records"));
}
