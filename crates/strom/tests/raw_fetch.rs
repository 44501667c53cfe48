//! What a follower will read: a Fetch response's records as the exact bytes the broker
//! stored, through the client's connection (`send_raw`) and the verbatim walk
//! (`fetch_records`), compared with the segment file on disk.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use strom_client::connection::Connection;
use strom_client::fetch_records::fetched_partitions;

#[test]
fn fetched_records_are_the_stored_bytes() {
    let server = Server::start();
    let mut produce = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "produce",
            "--topic",
            "raw",
            "--compression",
            "gzip",
            "--bootstrap-server",
            &server.bootstrap(),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = (0..200).map(|i| format!("record {i}\n")).collect();
    std::io::Write::write_all(&mut produce.stdin.take().unwrap(), input.as_bytes()).unwrap();
    assert!(produce.wait().unwrap().success());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (records, hw) = rt.block_on(async {
        let c = Connection::connect(&server.bootstrap(), "raw-fetch", Duration::from_secs(10))
            .await
            .unwrap();
        let req = FetchRequest {
            replica_id: -1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "raw".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 0,
                    current_leader_epoch: -1,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (body, version) = c.send_raw(&req, 12, "Fetch").await.unwrap();
        let (error, parts) = fetched_partitions(body, version).unwrap();
        assert_eq!(error, 0);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].error_code, 0);
        (parts[0].records.clone(), parts[0].high_watermark)
    });
    assert_eq!(hw, 200);
    let segment = std::fs::read_dir(server.dir.join("raw-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let stored = std::fs::read(segment).unwrap();
    assert_eq!(records.len(), stored.len());
    assert!(
        records == stored,
        "byte for byte, compressed batches included"
    );
}
