//! The ISR through the controller (AlterPartition): a follower that stops fetching leaves
//! it after replica.lag.time.max.ms, and comes back once it fetched up to the log end; the
//! leader keeps the followers' progress across the change. One node is the quorum; the
//! follower (broker 7) is driven by hand with Fetch requests.

mod common;

use bytes::BytesMut;
use common::*;
use krabka_protocol::Encode;
use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use krabka_protocol::owned::fetch_response::FetchResponse;
use krabka_protocol::owned::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use krabka_protocol::owned::produce_response::ProduceResponse;
use krabka_protocol::records::RecordsPayload;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strom_broker::handlers::handle;
use strom_metadata::image::{BrokerInfo, PartitionInfo, Record as MetaRecord};
use strom_storage::batch::{BatchBuilder, Record};

fn encode<T: Encode>(req: &T, version: i16) -> Vec<u8> {
    let mut b = BytesMut::new();
    req.encode(&mut b, version).unwrap();
    b.to_vec()
}

async fn isr_becomes(b: &strom_broker::Broker, want: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let isr = b.image().partition("r", 0).unwrap().isr.clone();
        if isr.as_slice() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ISR stayed {isr:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_leaves_the_isr_and_comes_back_once_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = strom_broker::BrokerConfig {
        node_id: 4,
        log_dir: dir.path().join("data"),
        replica_lag_time_max_ms: 300,
        ..Default::default()
    };
    let b = Arc::new(
        strom_broker::Broker::open_with_quorum(config)
            .await
            .unwrap(),
    );
    b.create_topic(
        strom_broker::broker::NewTopic {
            name: "r".into(),
            partitions: Some(1),
            replication_factor: None,
            assignments: vec![],
            configs: Default::default(),
        },
        false,
    )
    .await
    .unwrap();
    b.commit(vec![
        MetaRecord::RegisterBroker(BrokerInfo {
            id: 7,
            host: "follower".into(),
            port: 9097,
            ..BrokerInfo::default()
        }),
        MetaRecord::Partition {
            topic: "r".into(),
            partition: 0,
            info: PartitionInfo {
                replicas: vec![4, 7].into(),
                isr: vec![4, 7].into(),
                leader: 4,
                leader_epoch: 1,
                partition_epoch: 1,
                ..PartitionInfo::default()
            },
        },
    ])
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // As `strom server` runs them: the ISR changes, and the metadata the controller commits.
    let task = tokio::spawn(b.clone().run_isr_changes(stopped.clone()));
    let follower = tokio::spawn(b.clone().follow_metadata(stopped));

    // 7 never fetches: out after the lag time, through the controller.
    isr_becomes(&b, &[4]).await;
    let p = b.image().partition("r", 0).unwrap().clone();
    assert!(p.partition_epoch > 1);
    assert_eq!(p.leader_epoch, 1, "an ISR change is no new leadership");

    // Alone, the leader commits at once.
    let batch = BatchBuilder::new()
        .record(Record {
            timestamp: 1,
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![],
        })
        .build();
    let produce = ProduceRequest {
        acks: -1,
        timeout_ms: 10_000,
        topic_data: vec![TopicProduceData {
            name: "r".into(),
            partition_data: vec![PartitionProduceData {
                index: 0,
                records: Some(RecordsPayload::Raw(bytes::Bytes::from(batch))),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let r: ProduceResponse = decode(
        handle(&b, frame(0, 9, true, &encode(&produce, 9)), peer()).await,
        9,
        true,
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);

    // 7 fetches up to the log end: back in.
    let fetch = |offset: i64| {
        let req = FetchRequest {
            replica_id: 7,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "r".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: offset,
                    current_leader_epoch: -1,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        frame(1, 12, true, &encode(&req, 12))
    };
    let r: FetchResponse = decode(handle(&b, fetch(1), peer()).await, 12, true);
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert_eq!(r.responses[0].partitions[0].high_watermark, 1);
    isr_becomes(&b, &[4, 7]).await;

    // In the ISR again, its progress counts: the next record waits for it.
    let r: ProduceResponse = decode(
        handle(
            &b,
            frame(
                0,
                9,
                true,
                &encode(&ProduceRequest { acks: 1, ..produce }, 9),
            ),
            peer(),
        )
        .await,
        9,
        true,
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let p = b.partition("r", 0).unwrap();
    assert_eq!(p.high_watermark(), 1);
    let _: FetchResponse = decode(handle(&b, fetch(2), peer()).await, 12, true);
    assert_eq!(p.high_watermark(), 2);

    let _ = stop.send(true);
    task.await.unwrap();
    follower.await.unwrap();
    b.shutdown();
    b.close_metadata_log().await;
}
