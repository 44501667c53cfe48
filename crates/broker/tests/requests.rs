//! Requests served by the handlers, checked field by field where a real client reads them.

mod common;

use bytes::BytesMut;
use common::*;
use krabka_protocol::Encode;
use krabka_protocol::owned::describe_cluster_request::DescribeClusterRequest;
use krabka_protocol::owned::describe_cluster_response::DescribeClusterResponse;
use krabka_protocol::owned::describe_groups_request::DescribeGroupsRequest;
use krabka_protocol::owned::describe_groups_response::DescribeGroupsResponse;
use krabka_protocol::owned::metadata_request::{MetadataRequest, MetadataRequestTopic};
use krabka_protocol::owned::metadata_response::MetadataResponse;
use strom_broker::handlers::handle;

const METADATA: i16 = 3;
const DESCRIBE_GROUPS: i16 = 15;
const DESCRIBE_CLUSTER: i16 = 60;
const OMITTED: i32 = i32::MIN;

fn encode<T: Encode>(req: &T, version: i16) -> Vec<u8> {
    let mut b = BytesMut::new();
    req.encode(&mut b, version).unwrap();
    b.to_vec()
}

/// Without an authorizer, Kafka reports every operation a resource supports when asked
/// (librdkafka's admin test counts 8 for a topic and 7 for the cluster), and nothing when
/// not asked.
#[tokio::test]
async fn authorized_operations_are_every_supported_one_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    for asked in [true, false] {
        let req = MetadataRequest {
            topics: Some(vec![MetadataRequestTopic {
                name: Some("t".into()),
                ..Default::default()
            }]),
            include_cluster_authorized_operations: asked,
            include_topic_authorized_operations: asked,
            ..Default::default()
        };
        let reply = handle(&b, frame(METADATA, 10, true, &encode(&req, 10)), peer()).await;
        let r: MetadataResponse = decode(reply, 10, true);
        let topic_ops = r.topics[0].topic_authorized_operations;
        let cluster_ops = r.cluster_authorized_operations;
        if asked {
            assert_eq!((topic_ops.count_ones(), cluster_ops.count_ones()), (8, 7));
        } else {
            assert_eq!((topic_ops, cluster_ops), (OMITTED, OMITTED));
        }

        let req = DescribeClusterRequest {
            include_cluster_authorized_operations: asked,
            ..Default::default()
        };
        let reply = handle(
            &b,
            frame(DESCRIBE_CLUSTER, 1, true, &encode(&req, 1)),
            peer(),
        )
        .await;
        let r: DescribeClusterResponse = decode(reply, 1, true);
        let expected = if asked { 8096 } else { OMITTED };
        assert_eq!(r.cluster_authorized_operations, expected);
        assert_eq!((r.error_code, r.endpoint_type), (0, 1));
        // Controllers are described by the controllers (KIP-919); other types are unknown.
        for (endpoint_type, code) in [(2, 114), (7, 115)] {
            let req = DescribeClusterRequest {
                endpoint_type,
                ..Default::default()
            };
            let reply = handle(
                &b,
                frame(DESCRIBE_CLUSTER, 1, true, &encode(&req, 1)),
                peer(),
            )
            .await;
            let r: DescribeClusterResponse = decode(reply, 1, true);
            assert_eq!(r.error_code, code);
            assert!(r.brokers.is_empty());
        }

        let req = DescribeGroupsRequest {
            groups: vec!["nobody".into()],
            include_authorized_operations: asked,
            ..Default::default()
        };
        let reply = handle(
            &b,
            frame(DESCRIBE_GROUPS, 5, true, &encode(&req, 5)),
            peer(),
        )
        .await;
        let r: DescribeGroupsResponse = decode(reply, 5, true);
        // READ, DESCRIBE and DELETE.
        let expected = if asked { 328 } else { OMITTED };
        assert_eq!(r.groups[0].authorized_operations, expected);
    }
}

/// 200 long-polling fetches, each on one of 1,000 partitions: an append to one partition
/// wakes the fetch waiting on it and no other (wake-ups counted, not timed). A broker-wide
/// signal would have woken all 200 to re-read everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_wakes_only_the_fetches_waiting_on_its_partition() {
    use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use krabka_protocol::owned::fetch_response::FetchResponse;
    use krabka_protocol::records::RecordsPayload;
    use strom_broker::broker::NewTopic;
    use strom_storage::batch::{BatchBuilder, Record};

    const FETCH: i16 = 1;
    const PARTITIONS: i32 = 1000;
    const FETCHES: i32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic(
        NewTopic {
            name: "many".into(),
            partitions: Some(PARTITIONS),
            replication_factor: None,
            assignments: vec![],
            configs: Default::default(),
        },
        false,
    )
    .await
    .unwrap();
    let partition = |i: i32| b.partition("many", i).unwrap();
    let fetch = |partition: i32| {
        let req = FetchRequest {
            replica_id: -1,
            max_wait_ms: 60_000,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "many".into(),
                partitions: vec![FetchPartition {
                    partition,
                    current_leader_epoch: -1,
                    fetch_offset: 0,
                    log_start_offset: -1,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        frame(FETCH, 12, true, &encode(&req, 12))
    };
    // Fetch i waits on partition 5 * i: 200 of the 1,000 partitions have one waiter each.
    let mut tasks = Vec::new();
    for i in 0..FETCHES {
        let (b, f) = (b.clone(), fetch(5 * i));
        tasks.push(tokio::spawn(async move { handle(&b, f, peer()).await }));
    }
    let waiting = || {
        (0..PARTITIONS)
            .map(|i| partition(i).watchers().watching())
            .sum::<usize>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while waiting() < FETCHES as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "fetches did not start waiting"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let woken_before: u64 = (0..PARTITIONS)
        .map(|i| partition(i).watchers().woken())
        .sum();
    assert_eq!(woken_before, 0);

    // Append to partition 35, watched by fetch 7.
    let mut records = BatchBuilder::new()
        .record(Record {
            timestamp: 1,
            key: None,
            value: Some(b"wake up".to_vec()),
            headers: vec![],
        })
        .build();
    partition(35).append(&mut records, 1).unwrap();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), &mut tasks[7])
        .await
        .expect("the fetch on the appended partition answers")
        .unwrap();
    let r: FetchResponse = decode(reply, 12, true);
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.partition_index, p.high_watermark), (35, 1));
    let Some(RecordsPayload::V2(batches)) = &p.records else {
        panic!("records expected, got {:?}", p.records)
    };
    assert_eq!(batches.len(), 1, "the one batch appended");

    let woken: Vec<(i32, u64)> = (0..PARTITIONS)
        .map(|i| (i, partition(i).watchers().woken()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        woken,
        vec![(35, 1)],
        "one wake-up, on the appended partition"
    );
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t.is_finished(), i == 7, "fetch {i}");
    }
    for t in tasks {
        t.abort();
    }
}

/// One long-polling fetch over 100 partitions, with min_bytes above what one append
/// brings: each append wakes it, and it re-reads only the partition that moved, not the 99
/// others (reads counted, not timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_fetch_rereads_only_the_partitions_that_moved() {
    use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use strom_broker::broker::NewTopic;
    use strom_storage::batch::{BatchBuilder, Record};

    const FETCH: i16 = 1;
    const PARTITIONS: i32 = 100;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic(
        NewTopic {
            name: "wide".into(),
            partitions: Some(PARTITIONS),
            replication_factor: None,
            assignments: vec![],
            configs: Default::default(),
        },
        false,
    )
    .await
    .unwrap();
    let partition = |i: i32| b.partition("wide", i).unwrap();
    let req = FetchRequest {
        replica_id: -1,
        max_wait_ms: 60_000,
        // More than one small batch: the first append does not end the wait.
        min_bytes: 10_000,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: "wide".into(),
            partitions: (0..PARTITIONS)
                .map(|partition| FetchPartition {
                    partition,
                    current_leader_epoch: -1,
                    fetch_offset: 0,
                    log_start_offset: -1,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let task = {
        let (b, f) = (b.clone(), frame(FETCH, 12, true, &encode(&req, 12)));
        tokio::spawn(async move { handle(&b, f, peer()).await })
    };
    let reads = || {
        (0..PARTITIONS)
            .map(|i| partition(i).reads())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while reads().contains(&0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first read of every partition"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(reads(), vec![1; PARTITIONS as usize]);

    // A small append to partition 42 wakes the fetch, which re-reads it alone and waits on.
    let mut records = BatchBuilder::new()
        .record(Record {
            timestamp: 1,
            key: None,
            value: Some(b"small".to_vec()),
            headers: vec![],
        })
        .build();
    partition(42).append(&mut records, 1).unwrap();
    while partition(42).reads() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the re-read of partition 42"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let again: Vec<i32> = (0..PARTITIONS)
        .filter(|i| partition(*i).reads() > 1)
        .collect();
    assert_eq!(
        again,
        vec![42],
        "only the partition that moved is read again"
    );
    assert!(!task.is_finished(), "below min_bytes: still waiting");
    task.abort();
}

/// Leadership is data: once the metadata makes another node the leader of t-1 (this node a
/// follower), Produce, Fetch and ListOffsets for it answer NOT_LEADER_OR_FOLLOWER while t-0
/// is served as before, Metadata shows the new leader and epoch, and the group coordinator
/// gives up the `__consumer_offsets` partition it no longer leads (NOT_COORDINATOR).
#[tokio::test]
async fn partitions_led_elsewhere_answer_not_leader_or_follower() {
    use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use krabka_protocol::owned::fetch_response::FetchResponse;
    use krabka_protocol::owned::list_offsets_request::{
        ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
    };
    use krabka_protocol::owned::list_offsets_response::ListOffsetsResponse;
    use krabka_protocol::owned::offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use krabka_protocol::owned::offset_commit_response::OffsetCommitResponse;
    use krabka_protocol::owned::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };
    use krabka_protocol::owned::produce_response::ProduceResponse;
    use krabka_protocol::records::RecordsPayload;
    use strom_metadata::image::{BrokerInfo, PartitionInfo, Record as MetaRecord};
    use strom_storage::batch::{BatchBuilder, Record};

    const PRODUCE: i16 = 0;
    const FETCH: i16 = 1;
    const LIST_OFFSETS: i16 = 2;
    const OFFSET_COMMIT: i16 = 8;
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    const NOT_COORDINATOR: i16 = 16;
    const FIND_COORDINATOR: i16 = 10;
    use krabka_protocol::owned::find_coordinator_request::FindCoordinatorRequest;
    use krabka_protocol::owned::find_coordinator_response::FindCoordinatorResponse;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let group = "readers";
    let commit = |partition: i32| {
        let req = OffsetCommitRequest {
            group_id: group.into(),
            generation_id_or_member_epoch: -1,
            topics: vec![OffsetCommitRequestTopic {
                name: "t".into(),
                partitions: vec![OffsetCommitRequestPartition {
                    partition_index: partition,
                    committed_offset: 1,
                    committed_leader_epoch: -1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        frame(OFFSET_COMMIT, 8, true, &encode(&req, 8))
    };
    // The group's coordinator works here first (and creates `__consumer_offsets`).
    let r: OffsetCommitResponse = decode(handle(&b, commit(0), peer()).await, 8, true);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);

    let elsewhere = PartitionInfo {
        replicas: vec![0, 7].into(),
        isr: vec![7].into(),
        leader: 7,
        leader_epoch: 3,
        partition_epoch: 1,
        ..PartitionInfo::default()
    };
    let offsets_partition = (0..2)
        .find(|p| {
            // The broker helper makes `__consumer_offsets` with 2 partitions.
            strom_broker::group::records::partition_for(group, 2) == *p
        })
        .unwrap();
    b.commit(vec![
        MetaRecord::RegisterBroker(BrokerInfo {
            id: 7,
            host: "elsewhere".into(),
            port: 9097,
            rack: None,
            fenced: false,
            ..BrokerInfo::default()
        }),
        MetaRecord::Partition {
            topic: "t".into(),
            partition: 1,
            info: elsewhere.clone(),
        },
        MetaRecord::Partition {
            topic: "__consumer_offsets".into(),
            partition: offsets_partition,
            info: elsewhere.clone(),
        },
    ])
    .await
    .unwrap();

    let batch = BatchBuilder::new()
        .record(Record {
            timestamp: 1,
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![],
        })
        .build();
    let produce = ProduceRequest {
        acks: 1,
        timeout_ms: 5000,
        topic_data: vec![TopicProduceData {
            name: "t".into(),
            partition_data: (0..2)
                .map(|index| PartitionProduceData {
                    index,
                    records: Some(RecordsPayload::Raw(bytes::Bytes::from(batch.clone()))),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r: ProduceResponse = decode(
        handle(&b, frame(PRODUCE, 9, true, &encode(&produce, 9)), peer()).await,
        9,
        true,
    );
    let codes: Vec<i16> = r.responses[0]
        .partition_responses
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![0, NOT_LEADER_OR_FOLLOWER]);

    let fetch = FetchRequest {
        replica_id: -1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: "t".into(),
            partitions: (0..2)
                .map(|partition| FetchPartition {
                    partition,
                    current_leader_epoch: -1,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r: FetchResponse = decode(
        handle(&b, frame(FETCH, 12, true, &encode(&fetch, 12)), peer()).await,
        12,
        true,
    );
    let codes: Vec<(i16, i64)> = r.responses[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.high_watermark))
        .collect();
    assert_eq!(codes, vec![(0, 1), (NOT_LEADER_OR_FOLLOWER, -1)]);

    let list = ListOffsetsRequest {
        replica_id: -1,
        topics: vec![ListOffsetsTopic {
            name: "t".into(),
            partitions: (0..3)
                .map(|partition_index| ListOffsetsPartition {
                    partition_index,
                    current_leader_epoch: -1,
                    timestamp: -1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r: ListOffsetsResponse = decode(
        handle(&b, frame(LIST_OFFSETS, 7, true, &encode(&list, 7)), peer()).await,
        7,
        true,
    );
    let codes: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![0, NOT_LEADER_OR_FOLLOWER, 3]);

    let req = MetadataRequest {
        topics: None,
        ..Default::default()
    };
    let r: MetadataResponse = decode(
        handle(&b, frame(METADATA, 12, true, &encode(&req, 12)), peer()).await,
        12,
        true,
    );
    let t = r
        .topics
        .iter()
        .find(|t| t.name.as_deref() == Some("t"))
        .unwrap();
    let p1 = &t.partitions[1];
    assert_eq!(
        (p1.leader_id, p1.leader_epoch, p1.isr_nodes.clone()),
        (7, 3, vec![7])
    );
    let brokers: Vec<(i32, String)> = r
        .brokers
        .iter()
        .map(|b| (b.node_id, b.host.clone()))
        .collect();
    assert_eq!(
        brokers,
        vec![(0, "127.0.0.1".into()), (7, "elsewhere".into())]
    );

    // The coordinator resigned the partition of the group: its requests go elsewhere, and
    // FindCoordinator names the partition's new leader.
    let r: OffsetCommitResponse = decode(handle(&b, commit(0), peer()).await, 8, true);
    assert_eq!(r.topics[0].partitions[0].error_code, NOT_COORDINATOR);
    let find = FindCoordinatorRequest {
        key: group.into(),
        key_type: 0,
        ..Default::default()
    };
    let r: FindCoordinatorResponse = decode(
        handle(
            &b,
            frame(FIND_COORDINATOR, 3, true, &encode(&find, 3)),
            peer(),
        )
        .await,
        3,
        true,
    );
    assert_eq!(
        (r.error_code, r.node_id, r.host.as_str(), r.port),
        (0, 7, "elsewhere", 9097)
    );
}

/// DescribeQuorum on a node that is its own quorum: it leads, at some epoch, and its log end
/// offset is the high watermark; the file-backed broker of these tests has no quorum
/// (NOT_CONTROLLER); any other topic-partition is unknown.
#[tokio::test]
async fn describe_quorum_shows_the_node_alone_in_its_quorum() {
    use krabka_protocol::owned::describe_quorum_request::{
        DescribeQuorumRequest, PartitionData, TopicData,
    };
    use krabka_protocol::owned::describe_quorum_response::DescribeQuorumResponse;
    const DESCRIBE_QUORUM: i16 = 55;
    let req = |topic: &str| DescribeQuorumRequest {
        topics: vec![TopicData {
            topic_name: topic.into(),
            partitions: vec![PartitionData {
                partition_index: 0,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = strom_broker::BrokerConfig {
        node_id: 4,
        log_dir: dir.path().join("data"),
        ..Default::default()
    };
    let b = std::sync::Arc::new(
        strom_broker::Broker::open_with_quorum(config)
            .await
            .unwrap(),
    );
    b.create_topic(
        strom_broker::broker::NewTopic {
            name: "x".into(),
            partitions: Some(1),
            replication_factor: None,
            assignments: vec![],
            configs: Default::default(),
        },
        false,
    )
    .await
    .unwrap();
    let reply = handle(
        &b,
        frame(
            DESCRIBE_QUORUM,
            1,
            true,
            &encode(&req("__cluster_metadata"), 1),
        ),
        peer(),
    )
    .await;
    let r: DescribeQuorumResponse = decode(reply, 1, true);
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.leader_id), (0, 4));
    assert!(p.leader_epoch >= 1 && p.high_watermark >= 2, "{p:?}");
    let voters: Vec<(i32, i64)> = p
        .current_voters
        .iter()
        .map(|v| (v.replica_id, v.log_end_offset))
        .collect();
    assert_eq!(voters, vec![(4, p.high_watermark)]);
    let reply = handle(
        &b,
        frame(DESCRIBE_QUORUM, 1, true, &encode(&req("other"), 1)),
        peer(),
    )
    .await;
    let r: DescribeQuorumResponse = decode(reply, 1, true);
    assert_eq!(r.topics[0].partitions[0].error_code, 3);
    b.close_metadata_log().await;

    let files = broker(dir.path()).await;
    let reply = handle(
        &files,
        frame(
            DESCRIBE_QUORUM,
            0,
            true,
            &encode(&req("__cluster_metadata"), 0),
        ),
        peer(),
    )
    .await;
    let r: DescribeQuorumResponse = decode(reply, 0, true);
    assert_eq!(r.topics[0].partitions[0].error_code, 41, "NOT_CONTROLLER");
}
