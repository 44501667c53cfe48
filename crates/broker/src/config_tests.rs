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
