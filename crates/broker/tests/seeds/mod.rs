//! One valid request per API and version the broker serves: what the randomized test
//! mutates. An API added to the table without a seed here fails that test.

use bytes::{BufMut, Bytes, BytesMut};
use krabka_protocol::Encode;
use krabka_protocol::owned::*;
use krabka_protocol::records::RecordsPayload;
use strom_broker::protocol::{self, APIS};

use crate::common::frame;

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
pub fn seeds() -> Vec<Bytes> {
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
