//! 500,000 mutated valid requests through the request path, from a fixed seed: no panic, no
//! abort, no hang. Requests that would create or delete things are only decoded (a random
//! CreateTopics could otherwise fill the disk); everything else is served.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use krabka_protocol::owned::*;
use krabka_protocol::records::RecordsPayload;
use krabka_protocol::{Decode, Encode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_broker::handlers::handle;
use strom_broker::protocol::{self, APIS};

const ITERATIONS: usize = 500_000;

fn encode<T: Encode>(api: i16, version: i16, body: &T) -> Bytes {
    let flexible = version >= protocol::api(api).unwrap().flexible_min;
    let mut b = BytesMut::new();
    body.encode(&mut b, version).unwrap();
    frame(api, version, flexible, &b)
}

fn batch() -> Bytes {
    Bytes::from(
        strom_storage::batch::BatchBuilder::new()
            .record(strom_storage::batch::Record {
                timestamp: 5,
                key: Some(b"key".to_vec()),
                value: Some(b"value".to_vec()),
                headers: vec![("h".into(), Some(b"v".to_vec()))],
            })
            .build(),
    )
}

/// One valid request per API and version we serve (Produce v0-2 use the v3 layout minus
/// the transactional id, built by hand).
fn seeds() -> Vec<Bytes> {
    let mut out = Vec::new();
    for api in APIS {
        for v in api.min..=api.max {
            let f = match api.key {
                0 if v < 3 => {
                    let mut b = BytesMut::new();
                    b.put_i16(1);
                    b.put_i32(1000);
                    b.put_i32(1);
                    b.put_i16(1);
                    b.put_u8(b't');
                    b.put_i32(1);
                    b.put_i32(0);
                    let records = batch();
                    b.put_i32(records.len() as i32);
                    b.put_slice(&records);
                    frame(0, v, false, &b)
                }
                0 => encode(
                    0,
                    v,
                    &produce_request::ProduceRequest {
                        acks: 1,
                        timeout_ms: 1000,
                        topic_data: vec![produce_request::TopicProduceData {
                            name: "t".into(),
                            partition_data: vec![produce_request::PartitionProduceData {
                                index: 0,
                                records: Some(RecordsPayload::Raw(batch())),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                1 => encode(
                    1,
                    v,
                    &fetch_request::FetchRequest {
                        replica_id: -1,
                        max_wait_ms: 0,
                        min_bytes: 0,
                        max_bytes: 1 << 20,
                        session_epoch: -1,
                        topics: vec![fetch_request::FetchTopic {
                            topic: "t".into(),
                            partitions: vec![fetch_request::FetchPartition {
                                partition: 0,
                                fetch_offset: 0,
                                partition_max_bytes: 1 << 20,
                                current_leader_epoch: -1,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                2 => encode(
                    2,
                    v,
                    &list_offsets_request::ListOffsetsRequest {
                        replica_id: -1,
                        topics: vec![list_offsets_request::ListOffsetsTopic {
                            name: "t".into(),
                            partitions: vec![list_offsets_request::ListOffsetsPartition {
                                partition_index: 0,
                                timestamp: -1,
                                current_leader_epoch: -1,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                23 => encode(
                    23,
                    v,
                    &krabka_protocol::owned::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest {
                        replica_id: -1,
                        topics: vec![krabka_protocol::owned::offset_for_leader_epoch_request::OffsetForLeaderTopic {
                            topic: "t".into(),
                            partitions: vec![krabka_protocol::owned::offset_for_leader_epoch_request::OffsetForLeaderPartition {
                                partition: 0,
                                current_leader_epoch: -1,
                                leader_epoch: 0,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                3 => encode(
                    3,
                    v,
                    &metadata_request::MetadataRequest {
                        topics: Some(vec![metadata_request::MetadataRequestTopic {
                            name: Some("t".into()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                ),
                8 => encode(
                    8,
                    v,
                    &offset_commit_request::OffsetCommitRequest {
                        group_id: "g".into(),
                        generation_id_or_member_epoch: -1,
                        retention_time_ms: -1,
                        topics: vec![offset_commit_request::OffsetCommitRequestTopic {
                            name: "t".into(),
                            partitions: vec![offset_commit_request::OffsetCommitRequestPartition {
                                partition_index: 0,
                                committed_offset: 1,
                                committed_leader_epoch: -1,
                                committed_metadata: Some("m".into()),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                9 => encode(
                    9,
                    v,
                    &offset_fetch_request::OffsetFetchRequest {
                        group_id: "g".into(),
                        topics: None,
                        groups: vec![offset_fetch_request::OffsetFetchRequestGroup {
                            group_id: "g".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                10 => encode(
                    10,
                    v,
                    &find_coordinator_request::FindCoordinatorRequest {
                        key: "g".into(),
                        coordinator_keys: vec!["g".into()],
                        ..Default::default()
                    },
                ),
                11 => encode(
                    11,
                    v,
                    &join_group_request::JoinGroupRequest {
                        group_id: format!("join-{v}"), // one group per version: a second joiner would wait
                        session_timeout_ms: 10_000,
                        rebalance_timeout_ms: 10_000,
                        protocol_type: "consumer".into(),
                        protocols: vec![join_group_request::JoinGroupRequestProtocol {
                            name: "range".into(),
                            metadata: Bytes::from_static(&[
                                0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 0,
                            ]),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                12 => encode(
                    12,
                    v,
                    &heartbeat_request::HeartbeatRequest {
                        group_id: "g".into(),
                        generation_id: 1,
                        member_id: "m".into(),
                        ..Default::default()
                    },
                ),
                13 => encode(
                    13,
                    v,
                    &leave_group_request::LeaveGroupRequest {
                        group_id: "g".into(),
                        member_id: "m".into(),
                        members: vec![leave_group_request::MemberIdentity {
                            member_id: "m".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                14 => encode(
                    14,
                    v,
                    &sync_group_request::SyncGroupRequest {
                        group_id: "g".into(),
                        generation_id: 1,
                        member_id: "m".into(),
                        ..Default::default()
                    },
                ),
                15 => encode(
                    15,
                    v,
                    &describe_groups_request::DescribeGroupsRequest {
                        groups: vec!["g".into()],
                        ..Default::default()
                    },
                ),
                16 => encode(
                    16,
                    v,
                    &list_groups_request::ListGroupsRequest {
                        states_filter: vec!["Stable".into()],
                        ..Default::default()
                    },
                ),
                18 => encode(
                    18,
                    v,
                    &api_versions_request::ApiVersionsRequest {
                        client_software_name: "x".into(),
                        client_software_version: "1".into(),
                        ..Default::default()
                    },
                ),
                19 => encode(
                    19,
                    v,
                    &create_topics_request::CreateTopicsRequest {
                        topics: vec![create_topics_request::CreatableTopic {
                            name: "new".into(),
                            num_partitions: 1,
                            replication_factor: 1,
                            ..Default::default()
                        }],
                        validate_only: true,
                        ..Default::default()
                    },
                ),
                20 => encode(
                    20,
                    v,
                    &delete_topics_request::DeleteTopicsRequest {
                        topic_names: vec!["t".into()],
                        ..Default::default()
                    },
                ),
                21 => encode(
                    21,
                    v,
                    &delete_records_request::DeleteRecordsRequest {
                        topics: vec![delete_records_request::DeleteRecordsTopic {
                            name: "t".into(),
                            partitions: vec![delete_records_request::DeleteRecordsPartition {
                                partition_index: 0,
                                offset: 0,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                22 => encode(
                    22,
                    v,
                    &init_producer_id_request::InitProducerIdRequest {
                        transaction_timeout_ms: 60_000,
                        producer_id: -1,
                        producer_epoch: -1,
                        ..Default::default()
                    },
                ),
                32 => encode(
                    32,
                    v,
                    &describe_configs_request::DescribeConfigsRequest {
                        resources: vec![describe_configs_request::DescribeConfigsResource {
                            resource_type: 2,
                            resource_name: "t".into(),
                            configuration_keys: None,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                33 => encode(
                    33,
                    v,
                    &alter_configs_request::AlterConfigsRequest {
                        resources: vec![alter_configs_request::AlterConfigsResource {
                            resource_type: 2,
                            resource_name: "t".into(),
                            configs: vec![alter_configs_request::AlterableConfig {
                                name: "retention.ms".into(),
                                value: Some("1".into()),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        validate_only: true,
                        ..Default::default()
                    },
                ),
                35 => encode(
                    35,
                    v,
                    &describe_log_dirs_request::DescribeLogDirsRequest {
                        topics: None,
                        ..Default::default()
                    },
                ),
                37 => encode(
                    37,
                    v,
                    &create_partitions_request::CreatePartitionsRequest {
                        topics: vec![create_partitions_request::CreatePartitionsTopic {
                            name: "t".into(),
                            count: 3,
                            assignments: None,
                            ..Default::default()
                        }],
                        validate_only: true,
                        ..Default::default()
                    },
                ),
                42 => encode(
                    42,
                    v,
                    &delete_groups_request::DeleteGroupsRequest {
                        groups_names: vec!["g".into()],
                        ..Default::default()
                    },
                ),
                44 => encode(
                    44,
                    v,
                    &incremental_alter_configs_request::IncrementalAlterConfigsRequest {
                        resources: vec![incremental_alter_configs_request::AlterConfigsResource {
                            resource_type: 2,
                            resource_name: "t".into(),
                            configs: vec![incremental_alter_configs_request::AlterableConfig {
                                name: "retention.ms".into(),
                                config_operation: 0,
                                value: Some("1".into()),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        validate_only: true,
                        ..Default::default()
                    },
                ),
                47 => encode(
                    47,
                    v,
                    &offset_delete_request::OffsetDeleteRequest {
                        group_id: "g".into(),
                        ..Default::default()
                    },
                ),
                60 => encode(
                    60,
                    v,
                    &describe_cluster_request::DescribeClusterRequest::default(),
                ),
                43 => encode(
                    43,
                    v,
                    &elect_leaders_request::ElectLeadersRequest {
                        topic_partitions: Some(vec![elect_leaders_request::TopicPartitions {
                            topic: "t".into(),
                            partitions: vec![0],
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                ),
                24 => encode(
                    24,
                    v,
                    &add_partitions_to_txn_request::AddPartitionsToTxnRequest {
                        v3_and_below_transactional_id: "tx".into(),
                        v3_and_below_producer_id: 1,
                        v3_and_below_producer_epoch: 0,
                        v3_and_below_topics: vec![
                            krabka_protocol::owned::common::add_partitions_to_txn_request::add_partitions_to_txn_topic::AddPartitionsToTxnTopic {
                                name: "t".into(),
                                partitions: vec![0, 1],
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    },
                ),
                25 => encode(
                    25,
                    v,
                    &add_offsets_to_txn_request::AddOffsetsToTxnRequest {
                        transactional_id: "tx".into(),
                        producer_id: 1,
                        group_id: "g".into(),
                        ..Default::default()
                    },
                ),
                26 => encode(
                    26,
                    v,
                    &end_txn_request::EndTxnRequest {
                        transactional_id: "tx".into(),
                        producer_id: 1,
                        committed: true,
                        ..Default::default()
                    },
                ),
                27 => encode(
                    27,
                    v,
                    &write_txn_markers_request::WriteTxnMarkersRequest {
                        markers: vec![write_txn_markers_request::WritableTxnMarker {
                            producer_id: 1,
                            transaction_result: false,
                            topics: vec![write_txn_markers_request::WritableTxnMarkerTopic {
                                name: "t".into(),
                                partition_indexes: vec![0],
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                28 => encode(
                    28,
                    v,
                    &txn_offset_commit_request::TxnOffsetCommitRequest {
                        transactional_id: "tx".into(),
                        group_id: "g".into(),
                        producer_id: 1,
                        generation_id_or_member_epoch: -1,
                        topics: vec![txn_offset_commit_request::TxnOffsetCommitRequestTopic {
                            name: "t".into(),
                            partitions: vec![
                                txn_offset_commit_request::TxnOffsetCommitRequestPartition {
                                    partition_index: 0,
                                    committed_offset: 1,
                                    ..Default::default()
                                },
                            ],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                61 => encode(
                    61,
                    v,
                    &describe_producers_request::DescribeProducersRequest {
                        topics: vec![describe_producers_request::TopicRequest {
                            name: "t".into(),
                            partition_indexes: vec![0, 1],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                65 => encode(
                    65,
                    v,
                    &describe_transactions_request::DescribeTransactionsRequest {
                        transactional_ids: vec!["tx".into()],
                        ..Default::default()
                    },
                ),
                66 => encode(
                    66,
                    v,
                    &list_transactions_request::ListTransactionsRequest {
                        state_filters: vec!["Ongoing".into()],
                        duration_filter: -1,
                        ..Default::default()
                    },
                ),
                55 => encode(
                    55,
                    v,
                    &describe_quorum_request::DescribeQuorumRequest {
                        topics: vec![describe_quorum_request::TopicData {
                            topic_name: "__cluster_metadata".into(),
                            partitions: vec![describe_quorum_request::PartitionData {
                                partition_index: 0,
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                45 => encode(
                    45,
                    v,
                    &alter_partition_reassignments_request::AlterPartitionReassignmentsRequest {
                        topics: vec![alter_partition_reassignments_request::ReassignableTopic {
                            name: "t".into(),
                            partitions: vec![
                                alter_partition_reassignments_request::ReassignablePartition {
                                    partition_index: 0,
                                    replicas: Some(vec![0]),
                                    ..Default::default()
                                },
                            ],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                46 => encode(
                    46,
                    v,
                    &list_partition_reassignments_request::ListPartitionReassignmentsRequest {
                        topics: None,
                        ..Default::default()
                    },
                ),
                other => panic!("no seed for api {other}: add one"),
            };
            out.push(f);
        }
    }
    out
}

/// APIs that create or delete topics, groups or records: decoded, not executed.
fn decode_only(api: i16) -> bool {
    matches!(api, 19 | 20 | 21 | 33 | 37 | 42 | 44 | 47)
}

fn decode(mut f: Bytes) {
    let Some((key, version, _)) = protocol::peek_header(&f) else {
        return;
    };
    let Some(api) = protocol::api(key) else {
        return;
    };
    if version < api.min || version > api.max {
        return;
    }
    if protocol::decode_header(&mut f, api, version).is_err() {
        return;
    }
    let _ = match key {
        19 => create_topics_request::CreateTopicsRequest::decode(&mut f, version).map(|_| ()),
        20 => delete_topics_request::DeleteTopicsRequest::decode(&mut f, version).map(|_| ()),
        21 => delete_records_request::DeleteRecordsRequest::decode(&mut f, version).map(|_| ()),
        33 => alter_configs_request::AlterConfigsRequest::decode(&mut f, version).map(|_| ()),
        37 => {
            create_partitions_request::CreatePartitionsRequest::decode(&mut f, version).map(|_| ())
        }
        42 => delete_groups_request::DeleteGroupsRequest::decode(&mut f, version).map(|_| ()),
        44 => incremental_alter_configs_request::IncrementalAlterConfigsRequest::decode(
            &mut f, version,
        )
        .map(|_| ()),
        47 => offset_delete_request::OffsetDeleteRequest::decode(&mut f, version).map(|_| ()),
        _ => Ok(()),
    };
}

fn mutate(rng: &mut StdRng, seed: &Bytes) -> Bytes {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        if b.is_empty() {
            break;
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..6) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = [0x00, 0xff, 0x7f, 0x80][rng.random_range(0..4)],
            2 => b.truncate(at),
            3 => {
                let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                b.splice(at..at, junk);
            }
            4 => {
                // A length field gone wild.
                let v = [
                    [0x7f, 0xff, 0xff, 0xff],
                    [0xff, 0xff, 0xff, 0xff],
                    [0x80, 0, 0, 0],
                    [0, 0, 0x10, 0],
                ][rng.random_range(0..4)];
                for (i, x) in v.iter().enumerate() {
                    if at + i < b.len() {
                        b[at + i] = *x;
                    }
                }
            }
            _ => {
                let end = (at + rng.random_range(1..32)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
        }
    }
    Bytes::from(b)
}

#[tokio::test]
async fn half_a_million_mutated_requests() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let seeds = seeds();
    assert!(seeds.len() > 100, "{} seeds", seeds.len());
    // The unmutated seeds are all served (or decoded) without closing the connection.
    for s in &seeds {
        let key = i16::from_be_bytes([s[0], s[1]]);
        if !decode_only(key) {
            let r =
                tokio::time::timeout(Duration::from_secs(5), handle(&broker, s.clone(), peer()))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "seed for api {key} v{} was not answered",
                            i16::from_be_bytes([s[2], s[3]])
                        )
                    });
            assert!(
                !matches!(r, strom_broker::server::Reply::Close),
                "seed for api {key} v{} was refused",
                i16::from_be_bytes([s[2], s[3]])
            );
        }
    }
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let mut timed_out = 0;
    let (mut decoded, mut closed, mut answered) = (0, 0, 0);
    let started = std::time::Instant::now();
    for _ in 0..ITERATIONS {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let f = mutate(&mut rng, seed);
        let key = if f.len() >= 2 {
            i16::from_be_bytes([f[0], f[1]])
        } else {
            -1
        };
        if decode_only(key) {
            decode(f);
            decoded += 1;
            continue;
        }
        // A mutated fetch may long-poll, a join may wait for others: that is not a hang.
        match tokio::time::timeout(Duration::from_millis(5), handle(&broker, f, peer())).await {
            Err(_) => timed_out += 1,
            Ok(strom_broker::server::Reply::Close) => closed += 1,
            Ok(_) => answered += 1,
        }
    }
    eprintln!(
        "{:?}: decoded {decoded} closed {closed} answered {answered} timed out {timed_out}",
        started.elapsed()
    );
    assert!(timed_out < ITERATIONS / 20, "{timed_out} requests waited");
    // The broker still serves a good request, and its logs read back.
    let r = handle(&broker, seeds[0].clone(), peer()).await;
    assert!(!matches!(r, strom_broker::server::Reply::Close));
    for p in 0..2 {
        let part = broker.partition("t", p).unwrap();
        let mut next = part.log().log_start_offset();
        while next < part.log().log_end_offset() {
            let region = part
                .log()
                .read(next, 1 << 20, None)
                .unwrap()
                .region
                .unwrap();
            let bytes = region.read_all().unwrap();
            let mut pos = 0;
            while pos < bytes.len() {
                let (h, size) = strom_storage::batch::check_framing(&bytes[pos..]).unwrap();
                strom_storage::batch::validate(&bytes[pos..pos + size])
                    .expect("every stored batch is valid");
                next = h.last_offset() as u64 + 1;
                pos += size;
            }
        }
    }
}
