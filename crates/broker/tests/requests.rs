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
    let b = broker(dir.path());
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
