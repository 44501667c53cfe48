//! `strom server` as an operator starts it: configs, errors, output, ordering on the wire.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use common::Server;
use krabka_protocol::Encode;
use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use krabka_protocol::owned::request_header::RequestHeader;

fn strom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strom"))
}

#[test]
fn bad_values_stop_the_server_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    for (arg, key) in [
        ("num.partitions=zero", "num.partitions"),
        ("listeners=localhost:9092", "listeners"),
        ("log.retention.hours=-5", "log.retention.hours"),
        (
            "auto.create.topics.enable=maybe",
            "auto.create.topics.enable",
        ),
    ] {
        let out = strom()
            .current_dir(dir.path())
            .args(["server", "--override", arg])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{arg} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{arg}: {err}");
    }
    let out = strom()
        .args(["server", "--config", "/nonexistent/server.properties"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/server.properties"));
    let out = strom()
        .args(["server", "--override", "novalue"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
}

#[test]
fn a_config_file_with_unknown_keys_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let props = dir.path().join("server.properties");
    std::fs::write(
        &props,
        format!(
            "# a Kafka-style file\nlisteners=PLAINTEXT://127.0.0.1:{port}\nlog.dirs={}\nnum.partitions=4\nmade.up.setting=1\n",
            dir.path().join("d").display()
        ),
    )
    .unwrap();
    let mut child = strom()
        .args(["server", "--config"])
        .arg(&props)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains(&format!("listening on 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(
        line.contains(&dir.path().join("d").display().to_string()),
        "{line}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM should be a clean exit: {status}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("unknown config made.up.setting"), "{err}");
    assert!(err.contains("clean shutdown"), "{err}");
    // The clean shutdown left its markers: topics created later reopen without recovery.
    assert!(dir.path().join("d/meta.properties").exists());
}

#[test]
fn no_arguments_means_127_0_0_1_9092_and_strom_data_here() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = strom()
        .current_dir(dir.path())
        .arg("server")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.is_empty() {
        // Port 9092 is taken on this machine: then the error must say so.
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.contains("cannot listen on 127.0.0.1:9092"), "{err}");
        assert!(!child.wait().unwrap().success());
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on 127.0.0.1:9092"), "{line}");
    assert!(line.contains("strom-data"), "{line}");
    assert!(dir.path().join("strom-data/meta.properties").exists());
}

fn request<T: Encode>(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    header_version: i16,
    body: &T,
) -> Vec<u8> {
    let header = RequestHeader {
        request_api_key: api_key,
        request_api_version: version,
        correlation_id,
        client_id: Some("order-test".into()),
        ..Default::default()
    };
    let mut b = BytesMut::new();
    header.encode(&mut b, header_version).unwrap();
    body.encode(&mut b, version).unwrap();
    let mut framed = BytesMut::new();
    framed.put_i32(b.len() as i32);
    framed.put_slice(&b);
    framed.to_vec()
}

fn read_correlation_id(s: &mut TcpStream) -> i32 {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    (&body[..]).get_i32()
}

/// Metadata with auto-creation (correlation id 1) makes `topic`.
fn create_by_metadata(s: &mut TcpStream, topic: &str) {
    let md = krabka_protocol::owned::metadata_request::MetadataRequest {
        topics: Some(vec![
            krabka_protocol::owned::metadata_request::MetadataRequestTopic {
                name: Some(topic.into()),
                ..Default::default()
            },
        ]),
        allow_auto_topic_creation: true,
        ..Default::default()
    };
    s.write_all(&request(3, 4, 1, 1, &md)).unwrap();
    assert_eq!(read_correlation_id(s), 1);
}

/// A fetch of `topic`'s partition 0 from offset 0 that waits up to `max_wait_ms` for data.
fn waiting_fetch(topic: &str, max_wait_ms: i32) -> FetchRequest {
    FetchRequest {
        replica_id: -1,
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: topic.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn responses_follow_request_order_even_behind_a_waiting_fetch() {
    let server = Server::start();
    // Metadata with auto-creation makes the topic; then a fetch that waits 1.5 s for data,
    // pipelined with a request answered at once: the second answer must wait for the first.
    let mut s = TcpStream::connect(server.bootstrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    create_by_metadata(&mut s, "ordered");
    let fetch = waiting_fetch("ordered", 1500);
    let versions = krabka_protocol::owned::api_versions_request::ApiVersionsRequest::default();
    let mut both = request(1, 4, 2, 1, &fetch);
    both.extend(request(18, 0, 3, 1, &versions));
    let started = std::time::Instant::now();
    s.write_all(&both).unwrap();
    assert_eq!(read_correlation_id(&mut s), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the fetch did not wait"
    );
    assert_eq!(read_correlation_id(&mut s), 3);
}

#[test]
fn an_answer_ready_is_sent_while_a_later_request_still_waits() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.bootstrap()).unwrap();
    // Far less than the fetch below waits: the first answer must not be held behind it.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    create_by_metadata(&mut s, "waiting");
    let fetch = waiting_fetch("waiting", 60_000);
    let versions = krabka_protocol::owned::api_versions_request::ApiVersionsRequest::default();
    // Several answers ready at once, then a fetch that waits a minute for data, in one
    // write: the writer sees the fetch queued behind the ready answers.
    let mut all = Vec::new();
    for correlation_id in 2..6 {
        all.extend(request(18, 0, correlation_id, 1, &versions));
    }
    all.extend(request(1, 4, 6, 1, &fetch));
    s.write_all(&all).unwrap();
    for correlation_id in 2..6 {
        assert_eq!(read_correlation_id(&mut s), correlation_id);
    }
}
