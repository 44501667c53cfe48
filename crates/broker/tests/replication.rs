//! The leader's side of replication, request by request: OffsetForLeaderEpoch, and the
//! fetches of a follower driven by hand moving the high watermark.

mod common;

use bytes::BytesMut;
use common::*;
use krabka_protocol::Encode;
use strom_broker::handlers::handle;

fn encode<T: Encode>(req: &T, version: i16) -> Vec<u8> {
    let mut b = BytesMut::new();
    req.encode(&mut b, version).unwrap();
    b.to_vec()
}

/// OffsetForLeaderEpoch: epoch 0 ends where epoch 2 began (when this node became leader at
/// epoch 2, before anything was written in it); epoch 1, never used, answers for epoch 0;
/// the current epoch ends at the log end; a newer one is undefined; a stale or future
/// current_leader_epoch is FENCED_LEADER_EPOCH or UNKNOWN_LEADER_EPOCH, as in Kafka.
#[tokio::test]
async fn offset_for_leader_epoch_answers_where_each_epoch_ended() {
    use krabka_protocol::owned::offset_for_leader_epoch_request::{
        OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use krabka_protocol::owned::offset_for_leader_epoch_response::OffsetForLeaderEpochResponse;
    use krabka_protocol::owned::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };
    use krabka_protocol::owned::produce_response::ProduceResponse;
    use krabka_protocol::records::RecordsPayload;
    use strom_metadata::image::{PartitionInfo, Record as MetaRecord};
    use strom_storage::batch::{BatchBuilder, Record};
    const PRODUCE: i16 = 0;
    const OFFSET_FOR_LEADER_EPOCH: i16 = 23;

    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let produce = |n: usize| {
        let mut builder = BatchBuilder::new();
        for _ in 0..n {
            builder = builder.record(Record {
                timestamp: 1,
                key: None,
                value: Some(b"v".to_vec()),
                headers: vec![],
            });
        }
        let req = ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topic_data: vec![TopicProduceData {
                name: "t".into(),
                partition_data: vec![PartitionProduceData {
                    index: 0,
                    records: Some(RecordsPayload::Raw(bytes::Bytes::from(builder.build()))),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        frame(PRODUCE, 9, true, &encode(&req, 9))
    };
    let r: ProduceResponse = decode(handle(&b, produce(3), peer()).await, 9, true);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    // Leader again at epoch 2 (as after a failover), then more records.
    b.commit(vec![MetaRecord::Partition {
        topic: "t".into(),
        partition: 0,
        info: PartitionInfo {
            replicas: vec![0].into(),
            isr: vec![0].into(),
            leader: 0,
            leader_epoch: 2,
            partition_epoch: 2,
            ..PartitionInfo::default()
        },
    }])
    .await
    .unwrap();
    let ask = |epochs: &[(i32, i32, i32)], version: i16| {
        let req = OffsetForLeaderEpochRequest {
            replica_id: -1,
            topics: vec![OffsetForLeaderTopic {
                topic: "t".into(),
                partitions: epochs
                    .iter()
                    .map(|(partition, current, epoch)| OffsetForLeaderPartition {
                        partition: *partition,
                        current_leader_epoch: *current,
                        leader_epoch: *epoch,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        frame(
            OFFSET_FOR_LEADER_EPOCH,
            version,
            version >= 4,
            &encode(&req, version),
        )
    };
    let answers = |r: OffsetForLeaderEpochResponse| -> Vec<(i16, i32, i64)> {
        r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
            .collect()
    };
    let r = decode(
        handle(&b, ask(&[(0, -1, 2), (0, 2, 0)], 4), peer()).await,
        4,
        true,
    );
    assert_eq!(answers(r), vec![(0, 2, 3), (0, 0, 3)]);
    let r: ProduceResponse = decode(handle(&b, produce(2), peer()).await, 9, true);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    for version in [2, 3, 4] {
        let r = decode(
            handle(
                &b,
                ask(
                    &[
                        (0, 2, 0),
                        (0, 2, 1),
                        (0, 2, 2),
                        (0, 2, 7),
                        (0, 1, 2),
                        (0, 3, 2),
                        (9, -1, 0),
                    ],
                    version,
                ),
                peer(),
            )
            .await,
            version,
            version >= 4,
        );
        assert_eq!(
            answers(r),
            vec![
                (0, 0, 3),
                (0, 0, 3),
                (0, 2, 5),
                (0, -1, -1),
                (74, -1, -1), // FENCED_LEADER_EPOCH
                (76, -1, -1), // UNKNOWN_LEADER_EPOCH
                (3, -1, -1),  // UNKNOWN_TOPIC_OR_PARTITION
            ],
            "v{version}"
        );
    }
}

/// The leader's side of replication, with follower 7 driven by hand: records appended with
/// acks=1 are readable by consumers only once the follower's fetch offset shows it has
/// them (the high watermark); the follower itself reads up to the log end; an acks=all
/// produce answers once the follower's next fetch commits it; a node that is not a replica,
/// or a fetch past the log end, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_fetches_move_the_high_watermark() {
    use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use krabka_protocol::owned::fetch_response::FetchResponse;
    use krabka_protocol::owned::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };
    use krabka_protocol::owned::produce_response::ProduceResponse;
    use krabka_protocol::records::RecordsPayload;
    use strom_metadata::image::{BrokerInfo, PartitionInfo, Record as MetaRecord};
    use strom_storage::batch::{BatchBuilder, Record};
    const PRODUCE: i16 = 0;
    const FETCH: i16 = 1;

    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.commit(vec![
        MetaRecord::RegisterBroker(BrokerInfo {
            id: 7,
            host: "follower".into(),
            port: 9097,
            ..BrokerInfo::default()
        }),
        MetaRecord::Partition {
            topic: "t".into(),
            partition: 0,
            info: PartitionInfo {
                replicas: vec![0, 7].into(),
                isr: vec![0, 7].into(),
                leader: 0,
                leader_epoch: 1,
                partition_epoch: 1,
                ..PartitionInfo::default()
            },
        },
    ])
    .await
    .unwrap();
    let produce = |n: usize, acks: i16| {
        let mut builder = BatchBuilder::new();
        for i in 0..n {
            builder = builder.record(Record {
                timestamp: 1,
                key: None,
                value: Some(format!("v{i}").into_bytes()),
                headers: vec![],
            });
        }
        let req = ProduceRequest {
            acks,
            timeout_ms: 10_000,
            topic_data: vec![TopicProduceData {
                name: "t".into(),
                partition_data: vec![PartitionProduceData {
                    index: 0,
                    records: Some(RecordsPayload::Raw(bytes::Bytes::from(builder.build()))),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        frame(PRODUCE, 9, true, &encode(&req, 9))
    };
    // (error, high watermark, bytes of records) of a fetch by `replica` from `offset`.
    let fetch = |replica: i32, offset: i64| {
        let req = FetchRequest {
            replica_id: replica,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "t".into(),
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
        frame(FETCH, 12, true, &encode(&req, 12))
    };
    let seen = |r: FetchResponse| {
        let p = &r.responses[0].partitions[0];
        // Decoded, the records are batches: their record count.
        let len = match &p.records {
            Some(RecordsPayload::Raw(b)) => b.len(),
            Some(RecordsPayload::V2(batches)) => batches.iter().map(|b| b.records.len()).sum(),
            _ => 0,
        };
        (p.error_code, p.high_watermark, len)
    };

    let r: ProduceResponse = decode(handle(&b, produce(3, 1), peer()).await, 9, true);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    // Not committed: the follower does not have it yet.
    let (code, hw, len) = seen(decode(handle(&b, fetch(-1, 0), peer()).await, 12, true));
    assert_eq!((code, hw, len), (0, 0, 0));
    // The follower reads it all, up to the log end.
    let (code, hw, len) = seen(decode(handle(&b, fetch(7, 0), peer()).await, 12, true));
    assert_eq!((code, hw), (0, 0));
    assert!(len > 0);
    // Its next fetch says it has the three records: committed.
    let (code, hw, len) = seen(decode(handle(&b, fetch(7, 3), peer()).await, 12, true));
    assert_eq!((code, hw, len), (0, 3, 0));
    let (code, hw, len) = seen(decode(handle(&b, fetch(-1, 0), peer()).await, 12, true));
    assert_eq!((code, hw), (0, 3));
    assert!(len > 0);

    // acks=all waits for the follower.
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            let r: ProduceResponse = decode(handle(&b, produce(1, -1), peer()).await, 9, true);
            r.responses[0].partition_responses[0].error_code
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The follower fetches until the record is there, then reports having it.
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the record never reached the log"
        );
        let (_, _, len) = seen(decode(handle(&b, fetch(7, 3), peer()).await, 12, true));
        if len > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        !waiting.is_finished(),
        "answered before the follower had it"
    );
    let (code, hw, _) = seen(decode(handle(&b, fetch(7, 4), peer()).await, 12, true));
    assert_eq!((code, hw), (0, 4));
    assert_eq!(waiting.await.unwrap(), 0);

    // Not a replica; past the log end.
    let (code, _, _) = seen(decode(handle(&b, fetch(9, 0), peer()).await, 12, true));
    assert_eq!(code, 6, "NOT_LEADER_OR_FOLLOWER");
    let (code, _, _) = seen(decode(handle(&b, fetch(7, 99), peer()).await, 12, true));
    assert_eq!(code, 1, "OFFSET_OUT_OF_RANGE");
}
