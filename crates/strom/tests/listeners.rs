//! Several listeners on one broker, as docker setups write them (one for the containers'
//! network, one for the host): each client is answered with the addresses of the listener
//! it came in on, and records written through one are read through the other.

mod common;
mod rdkafka_clients;

use std::time::Duration;

use common::Server;
use common::ports::free_port;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka_clients::*;

/// (host, port) of every broker in a Metadata answer, and the leader of each partition
/// of `topic`.
fn seen_through(bootstrap: &str, topic: &str) -> (Vec<(String, i32)>, Vec<i32>) {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let brokers = md
        .brokers()
        .iter()
        .map(|b| (b.host().to_string(), b.port()))
        .collect();
    let leaders = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.leader())
        .collect();
    (brokers, leaders)
}

#[test]
fn each_listener_answers_with_its_own_addresses() {
    let external = free_port();
    let server = Server::start_with(&[
        &format!("listeners=PLAINTEXT://127.0.0.1:{{port}},EXTERNAL://127.0.0.1:{external}"),
        &format!(
            "advertised.listeners=PLAINTEXT://127.0.0.1:{{port}},EXTERNAL://localhost:{external}"
        ),
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,EXTERNAL:PLAINTEXT",
    ]);
    let internal = server.bootstrap();
    let outside = format!("127.0.0.1:{external}");
    create_topic(&server, "both", 3, &[]);

    let port = internal.rsplit(':').next().unwrap().parse::<i32>().unwrap();
    let (brokers, leaders) = seen_through(&internal, "both");
    assert_eq!(brokers, vec![("127.0.0.1".to_string(), port)]);
    assert_eq!(leaders, vec![0, 0, 0]);
    let (brokers, leaders) = seen_through(&outside, "both");
    assert_eq!(brokers, vec![("localhost".to_string(), external as i32)]);
    assert_eq!(leaders, vec![0, 0, 0]);

    // Written through the external listener (its advertised name, localhost, is what the
    // producer connects to after bootstrap)...
    let (p, acks) = producer(&server, &[("bootstrap.servers", &outside), ("acks", "all")]);
    for i in 0..30 {
        let v = format!("v{i}");
        p.send(BaseRecord::<(), _>::to("both").partition(i % 3).payload(&v))
            .unwrap();
    }
    flush(&p);
    let acked = acks.0.lock().unwrap().clone();
    assert_eq!(acked.len(), 30);
    assert!(acked.iter().all(|a| a.is_ok()), "{acked:?}");
    // ...read through the internal one, with a group whose coordinator is found there.
    let got = consume_all(&server, "both", 3, 30);
    let mut values: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8(g.value.clone()).unwrap())
        .collect();
    values.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    assert_eq!(values, (0..30).map(|i| format!("v{i}")).collect::<Vec<_>>());

    // The broker's configuration says what it serves.
    let c = rdkafka_clients::admin(&server);
    let described = block_on(c.describe_configs(
        &[rdkafka::admin::ResourceSpecifier::Broker(0)],
        &rdkafka::admin::AdminOptions::new(),
    ))
    .unwrap();
    let config = described[0].as_ref().unwrap();
    let value = |k: &str| {
        config
            .get(k)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        value("advertised.listeners"),
        format!("PLAINTEXT://127.0.0.1:{port},EXTERNAL://localhost:{external}")
    );
    assert_eq!(value("inter.broker.listener.name"), "PLAINTEXT");
}
