//! Our client's producer against a real server: what it knows of a topic follows the topic.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use strom_client::producer::{ProduceRecord, Producer, ProducerConfig};

/// A producer that knew a topic with one partition writes to a partition added later: a
/// partition past those it knows makes it look at the topic again instead of failing.
#[test]
fn a_producer_sees_partitions_added_after_it_first_looked() {
    let server = Server::start();
    common::with_client(&server, "grow", |client| async move {
        client
            .create_topic("grow", Some(1), None, &BTreeMap::new(), false)
            .await
            .unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let record = |partition: i32, value: &'static str| ProduceRecord {
            topic: "grow".into(),
            partition: Some(partition),
            value: Some(Bytes::from_static(value.as_bytes())),
            ..Default::default()
        };
        let first = producer.send(record(0, "a")).await.unwrap();
        producer.flush().await;
        assert_eq!(first.await.unwrap().unwrap(), (0, 0));

        client.create_partitions("grow", 3).await.unwrap();
        // Until the broker's metadata has them (the producer looks once more, not forever):
        // each look is a round trip to the broker.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.list_offsets("grow", -1).await.unwrap().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "partitions not added"
            );
        }
        let later = producer.send(record(2, "b")).await.unwrap();
        producer.flush().await;
        assert_eq!(later.await.unwrap().unwrap(), (2, 0));

        // A partition that does not exist still fails, after one more look.
        let err = producer.send(record(7, "c")).await.unwrap_err();
        assert!(
            err.to_string().contains("UNKNOWN_TOPIC_OR_PARTITION"),
            "{err}"
        );
        let offsets = client.list_offsets("grow", -1).await.unwrap();
        assert_eq!(offsets, vec![(0, 1), (1, 0), (2, 1)]);
    });
}
