//! The broker settings' tests: Kafka's keys and values, and the rules between them.

use super::*;

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_kafkas_single_node() {
    let (c, w) = BrokerConfig::from_properties(&BTreeMap::new()).unwrap();
    assert!(w.is_empty());
    assert_eq!(c.node_id, 0);
    assert_eq!(c.listener.to_string(), "127.0.0.1:9092");
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("127.0.0.1", 9092)
    );
    assert_eq!(c.log_dir, PathBuf::from("strom-data"));
    assert!(c.auto_create_topics_enable);
    assert_eq!(c.log.retention_ms, 7 * 24 * 3600 * 1000);
}

#[test]
fn kafka_keys_are_understood() {
    let (c, w) = BrokerConfig::from_properties(&props(&[
        ("listeners", "PLAINTEXT://0.0.0.0:19092"),
        ("advertised.listeners", "PLAINTEXT://broker1:19092"),
        ("log.dirs", "/tmp/a,/tmp/b"),
        ("num.partitions", "6"),
        ("log.retention.hours", "1"),
        ("log.segment.bytes", "1048576"),
        ("auto.create.topics.enable", "false"),
        ("process.roles", "broker,controller"),
        ("offsets.topic.replication.factor", "1"),
        ("transaction.state.log.min.isr", "3"),
        ("transaction.state.log.segment.bytes", "4096"),
        ("num.replica.fetchers", "4"),
        ("unclean.leader.election.enable", "true"),
        ("replica.fetch.wait.max.ms", "250"),
        ("replica.fetch.backoff.ms", "300"),
        ("made.up.key", "1"),
    ]))
    .unwrap();
    assert_eq!(c.internal_replication_factor, (1, 3));
    assert_eq!(c.txn_state_min_isr, 3);
    assert_eq!(c.internal_segment_bytes, (104_857_600, 4096));
    assert_eq!(c.replica_fetch.fetchers, 4);
    assert!(c.unclean_leader_election);
    assert_eq!(c.replica_fetch.wait_max_ms, 250);
    assert_eq!(c.replica_fetch.backoff_ms, 300);
    assert_eq!(c.listener.port(), 19092);
    assert_eq!(c.advertised_host, "broker1");
    assert_eq!(c.log_dir, PathBuf::from("/tmp/a"));
    assert_eq!(c.num_partitions, 6);
    assert_eq!(c.log.retention_ms, 3_600_000);
    assert_eq!(c.log.segment_bytes, 1_048_576);
    assert!(!c.auto_create_topics_enable);
    assert_eq!(w, vec!["unknown config made.up.key is ignored".to_string()]);
}

#[test]
fn retention_ms_wins_over_hours() {
    let (c, _) = BrokerConfig::from_properties(&props(&[
        ("log.retention.hours", "5"),
        ("log.retention.ms", "1234"),
    ]))
    .unwrap();
    assert_eq!(c.log.retention_ms, 1234);
}

#[test]
fn bad_values_name_the_key() {
    for (k, v) in [
        ("num.partitions", "zero"),
        ("num.partitions", "0"),
        ("listeners", "127.0.0.1:9092"),
        ("auto.create.topics.enable", "yes"),
        ("log.segment.bytes", "-5"),
        ("log.retention.hours", "-7"),
        ("transaction.state.log.replication.factor", "0"),
        ("offsets.topic.segment.bytes", "60"),
        ("transaction.state.log.segment.bytes", "big"),
        ("num.replica.fetchers", "0"),
        ("replica.fetch.wait.max.ms", "30000"),
        ("replica.fetch.backoff.ms", "-1"),
    ] {
        let err = BrokerConfig::from_properties(&props(&[(k, v)])).unwrap_err();
        assert!(err.to_string().contains(k), "{err}");
    }
}

#[test]
fn properties_syntax() {
    let text = "# comment\n! other\na=1\nb : 2\nc 3\nlong=x,\\\n   y\n\n";
    let p = parse_properties(text, "t").unwrap();
    assert_eq!(p["a"], "1");
    assert_eq!(p["b"], "2");
    assert_eq!(p["c"], "3");
    assert_eq!(p["long"], "x,y");
    assert!(parse_properties("justakey\n", "t").is_err());
}

#[test]
fn several_listeners_are_served_and_one_carries_the_brokers_traffic() {
    // The docker habit: one listener for the containers' network, one for the host.
    let (c, w) = BrokerConfig::from_properties(&props(&[
        ("process.roles", "broker,controller"),
        ("node.id", "1"),
        ("controller.quorum.voters", "1@127.0.0.1:19093"),
        ("controller.listener.names", "CONTROLLER"),
        (
            "listeners",
            "PLAINTEXT://0.0.0.0:19092,PLAINTEXT_HOST://0.0.0.0:29092,CONTROLLER://127.0.0.1:19093",
        ),
        (
            "advertised.listeners",
            "PLAINTEXT://broker1:19092,PLAINTEXT_HOST://localhost:29092",
        ),
        (
            "listener.security.protocol.map",
            "PLAINTEXT:PLAINTEXT,PLAINTEXT_HOST:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ),
    ]))
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    let names: Vec<(&str, u16, &str, u16)> = c
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.bind.port(), l.host.as_str(), l.port))
        .collect();
    assert_eq!(
        names,
        vec![
            ("PLAINTEXT", 19092, "broker1", 19092),
            ("PLAINTEXT_HOST", 29092, "localhost", 29092),
        ]
    );
    // PLAINTEXT by default carries replication; the registration lists both.
    assert_eq!(c.inter_broker_listener, "PLAINTEXT");
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("broker1", 19092)
    );
    assert_eq!(c.endpoints().len(), 2);

    let mut named = props(&[
        (
            "listeners",
            "INTERNAL://127.0.0.1:19092,EXTERNAL://127.0.0.1:29092",
        ),
        (
            "listener.security.protocol.map",
            "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT",
        ),
        ("inter.broker.listener.name", "EXTERNAL"),
    ]);
    let (c, _) = BrokerConfig::from_properties(&named).unwrap();
    assert_eq!(c.inter_broker_listener, "EXTERNAL");
    assert_eq!(c.listener.port(), 29092);
    // Without the key and without a PLAINTEXT listener: the first.
    named.remove("inter.broker.listener.name");
    let (c, _) = BrokerConfig::from_properties(&named).unwrap();
    assert_eq!(c.inter_broker_listener, "INTERNAL");

    named.insert("inter.broker.listener.name".into(), "NOPE".into());
    let e = BrokerConfig::from_properties(&named)
        .unwrap_err()
        .to_string();
    assert!(e.contains("INTERNAL, EXTERNAL"), "{e}");
    named.remove("inter.broker.listener.name");
    named.insert("advertised.listeners".into(), "OTHER://h:1".into());
    named.insert(
        "listener.security.protocol.map".into(),
        "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,OTHER:PLAINTEXT".into(),
    );
    let e = BrokerConfig::from_properties(&named)
        .unwrap_err()
        .to_string();
    assert!(e.contains("OTHER is not in listeners"), "{e}");
}
