//! Framing and request headers: the part of the wire that comes before any handler.
//!
//! Untrusted bytes are decoded with krabka-protocol, whose decoders bound every declared
//! length by the bytes actually present; the frame size is bounded here first by
//! `socket.request.max.bytes`.

use bytes::{BufMut, Bytes, BytesMut};
use krabka_protocol::owned::request_header::RequestHeader;
use krabka_protocol::owned::response_header::ResponseHeader;
use krabka_protocol::{Decode, Encode, ProtocolError};

/// One API we serve: the version range advertised in ApiVersions, and where the flexible
/// (compact, tagged-field) encoding starts, which decides the header versions.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    pub key: i16,
    pub name: &'static str,
    pub min: i16,
    pub max: i16,
    pub flexible_min: i16,
}

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const LIST_OFFSETS: i16 = 2;
pub const OFFSET_FOR_LEADER_EPOCH: i16 = 23;
pub const METADATA: i16 = 3;
pub const OFFSET_COMMIT: i16 = 8;
pub const OFFSET_FETCH: i16 = 9;
pub const FIND_COORDINATOR: i16 = 10;
pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;
pub const DESCRIBE_GROUPS: i16 = 15;
pub const LIST_GROUPS: i16 = 16;
pub const DELETE_GROUPS: i16 = 42;
pub const OFFSET_DELETE: i16 = 47;
pub const API_VERSIONS: i16 = 18;
pub const CREATE_TOPICS: i16 = 19;
pub const DELETE_TOPICS: i16 = 20;
pub const DELETE_RECORDS: i16 = 21;
pub const INIT_PRODUCER_ID: i16 = 22;
pub const DESCRIBE_CONFIGS: i16 = 32;
pub const ALTER_CONFIGS: i16 = 33;
pub const DESCRIBE_LOG_DIRS: i16 = 35;
pub const CREATE_PARTITIONS: i16 = 37;
pub const INCREMENTAL_ALTER_CONFIGS: i16 = 44;
pub const DESCRIBE_CLUSTER: i16 = 60;
pub const ELECT_LEADERS: i16 = 43;
pub const ALTER_PARTITION_REASSIGNMENTS: i16 = 45;
pub const LIST_PARTITION_REASSIGNMENTS: i16 = 46;
pub const ADD_PARTITIONS_TO_TXN: i16 = 24;
pub const ADD_OFFSETS_TO_TXN: i16 = 25;
pub const END_TXN: i16 = 26;
pub const WRITE_TXN_MARKERS: i16 = 27;
pub const TXN_OFFSET_COMMIT: i16 = 28;
pub const DESCRIBE_PRODUCERS: i16 = 61;
pub const DESCRIBE_TRANSACTIONS: i16 = 65;
pub const LIST_TRANSACTIONS: i16 = 66;
pub const DESCRIBE_QUORUM: i16 = 55;

/// Everything advertised in ApiVersions, and nothing else: each entry has a handler that
/// serves every version in its range.
#[rustfmt::skip]
pub const APIS: &[Api] = &[
    // v0-2 are advertised because librdkafka before 2.1 only compresses when they are (as
    // Kafka 4 does); such requests are served, and old message formats are refused.
    Api { key: PRODUCE, name: "Produce", min: 0, max: 11, flexible_min: 9 },
    Api { key: FETCH, name: "Fetch", min: 4, max: 16, flexible_min: 12 },
    Api { key: LIST_OFFSETS, name: "ListOffsets", min: 1, max: 8, flexible_min: 6 },
    Api { key: OFFSET_FOR_LEADER_EPOCH, name: "OffsetForLeaderEpoch", min: 2, max: 4, flexible_min: 4 },
    Api { key: METADATA, name: "Metadata", min: 0, max: 12, flexible_min: 9 },
    Api { key: OFFSET_COMMIT, name: "OffsetCommit", min: 2, max: 9, flexible_min: 8 },
    Api { key: OFFSET_FETCH, name: "OffsetFetch", min: 1, max: 9, flexible_min: 6 },
    Api { key: FIND_COORDINATOR, name: "FindCoordinator", min: 0, max: 4, flexible_min: 3 },
    Api { key: JOIN_GROUP, name: "JoinGroup", min: 0, max: 9, flexible_min: 6 },
    Api { key: HEARTBEAT, name: "Heartbeat", min: 0, max: 4, flexible_min: 4 },
    Api { key: LEAVE_GROUP, name: "LeaveGroup", min: 0, max: 5, flexible_min: 4 },
    Api { key: SYNC_GROUP, name: "SyncGroup", min: 0, max: 5, flexible_min: 4 },
    Api { key: DESCRIBE_GROUPS, name: "DescribeGroups", min: 0, max: 5, flexible_min: 5 },
    Api { key: LIST_GROUPS, name: "ListGroups", min: 0, max: 5, flexible_min: 3 },
    Api { key: API_VERSIONS, name: "ApiVersions", min: 0, max: 4, flexible_min: 3 },
    Api { key: CREATE_TOPICS, name: "CreateTopics", min: 2, max: 7, flexible_min: 5 },
    Api { key: DELETE_TOPICS, name: "DeleteTopics", min: 1, max: 6, flexible_min: 4 },
    Api { key: DELETE_RECORDS, name: "DeleteRecords", min: 0, max: 2, flexible_min: 2 },
    Api { key: INIT_PRODUCER_ID, name: "InitProducerId", min: 0, max: 5, flexible_min: 2 },
    Api { key: DESCRIBE_CONFIGS, name: "DescribeConfigs", min: 1, max: 4, flexible_min: 4 },
    Api { key: ALTER_CONFIGS, name: "AlterConfigs", min: 0, max: 2, flexible_min: 2 },
    // v4 adds the volume's total and usable bytes, which this broker does not measure.
    Api { key: DESCRIBE_LOG_DIRS, name: "DescribeLogDirs", min: 1, max: 3, flexible_min: 2 },
    Api { key: CREATE_PARTITIONS, name: "CreatePartitions", min: 0, max: 3, flexible_min: 2 },
    Api { key: INCREMENTAL_ALTER_CONFIGS, name: "IncrementalAlterConfigs", min: 0, max: 1, flexible_min: 1 },
    Api { key: DELETE_GROUPS, name: "DeleteGroups", min: 0, max: 2, flexible_min: 2 },
    Api { key: OFFSET_DELETE, name: "OffsetDelete", min: 0, max: 0, flexible_min: i16::MAX },
    Api { key: DESCRIBE_CLUSTER, name: "DescribeCluster", min: 0, max: 2, flexible_min: 0 },
    Api { key: ELECT_LEADERS, name: "ElectLeaders", min: 0, max: 2, flexible_min: 2 },
    Api { key: ALTER_PARTITION_REASSIGNMENTS, name: "AlterPartitionReassignments", min: 0, max: 1, flexible_min: 0 },
    Api { key: LIST_PARTITION_REASSIGNMENTS, name: "ListPartitionReassignments", min: 0, max: 0, flexible_min: 0 },
    // Transactions. Later versions are KIP-890's (server-side partition verification, epoch
    // bumps on every EndTxn), which this coordinator does not do.
    Api { key: ADD_PARTITIONS_TO_TXN, name: "AddPartitionsToTxn", min: 0, max: 4, flexible_min: 3 },
    Api { key: ADD_OFFSETS_TO_TXN, name: "AddOffsetsToTxn", min: 0, max: 3, flexible_min: 3 },
    Api { key: END_TXN, name: "EndTxn", min: 0, max: 3, flexible_min: 3 },
    Api { key: WRITE_TXN_MARKERS, name: "WriteTxnMarkers", min: 1, max: 1, flexible_min: 1 },
    Api { key: TXN_OFFSET_COMMIT, name: "TxnOffsetCommit", min: 0, max: 3, flexible_min: 3 },
    Api { key: DESCRIBE_PRODUCERS, name: "DescribeProducers", min: 0, max: 0, flexible_min: 0 },
    Api { key: DESCRIBE_TRANSACTIONS, name: "DescribeTransactions", min: 0, max: 0, flexible_min: 0 },
    Api { key: LIST_TRANSACTIONS, name: "ListTransactions", min: 0, max: 1, flexible_min: 0 },
    Api { key: DESCRIBE_QUORUM, name: "DescribeQuorum", min: 0, max: 1, flexible_min: 0 },
];

pub fn api(key: i16) -> Option<&'static Api> {
    APIS.iter().find(|a| a.key == key)
}

/// What every handler needs to know about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub api_key: i16,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    /// Response header version: 1 for flexible versions, except ApiVersions (always 0).
    pub response_header_version: i16,
    /// The name of the listener the request came in on: addresses in the answer are that
    /// listener's (empty: the inter-broker one's).
    pub listener: std::sync::Arc<str>,
}

/// The smallest frame that names an API, a version and a correlation id.
pub const MIN_FRAME: usize = 8;

/// Reads api key, version and correlation id, which are at fixed places in every header
/// version, so that even a request we cannot decode gets an answer or a useful log line.
pub fn peek_header(frame: &[u8]) -> Option<(i16, i16, i32)> {
    if frame.len() < MIN_FRAME {
        return None;
    }
    Some((
        i16::from_be_bytes([frame[0], frame[1]]),
        i16::from_be_bytes([frame[2], frame[3]]),
        i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    ))
}

/// Decodes the request header of a supported API version; `frame` is left at the body.
pub fn decode_header(
    frame: &mut Bytes,
    api: &Api,
    version: i16,
) -> Result<RequestContext, ProtocolError> {
    let flexible = version >= api.flexible_min;
    let header = RequestHeader::decode(frame, if flexible { 2 } else { 1 })?;
    let response_header_version = if flexible && api.key != API_VERSIONS {
        1
    } else {
        0
    };
    Ok(RequestContext {
        api_key: api.key,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id,
        response_header_version,
        listener: std::sync::Arc::from(""),
    })
}

pub fn decode<T: for<'de> Decode<'de>>(body: &mut Bytes, version: i16) -> Result<T, ProtocolError> {
    T::decode(body, version)
}

/// A whole response frame: size, header, body.
pub fn encode_response<T: Encode>(ctx: &RequestContext, body: &T) -> Result<Bytes, ProtocolError> {
    let header = ResponseHeader {
        correlation_id: ctx.correlation_id,
        ..Default::default()
    };
    let len = header.encoded_len(ctx.response_header_version) + body.encoded_len(ctx.version);
    let mut out = BytesMut::with_capacity(4 + len);
    out.put_i32(len as i32);
    header.encode(&mut out, ctx.response_header_version)?;
    body.encode(&mut out, ctx.version)?;
    debug_assert_eq!(out.len(), 4 + len);
    Ok(out.freeze())
}

/// [`encode_response`] for a body that holds region placeholders: the frame as parts, the
/// regions by reference.
pub fn encode_response_parts<T: Encode>(
    ctx: &RequestContext,
    body: &T,
    regions: &mut crate::zero_copy::Regions,
) -> Result<Vec<crate::zero_copy::Part>, ProtocolError> {
    let header = ResponseHeader {
        correlation_id: ctx.correlation_id,
        ..Default::default()
    };
    let len = header.encoded_len(ctx.response_header_version) + body.encoded_len(ctx.version);
    let mut out = crate::zero_copy::PartsBuf::new(4096, regions);
    out.put_i32(len as i32);
    header.encode(&mut out, ctx.response_header_version)?;
    body.encode(&mut out, ctx.version)?;
    debug_assert_eq!(out.len_so_far(), 4 + len);
    Ok(out.finish())
}

/// A response frame whose body was encoded by hand (Produce v0-2, which the codec's
/// current schemas no longer carry).
pub fn frame_raw(correlation_id: i32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_i32(4 + body.len() as i32);
    out.put_i32(correlation_id);
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_table_is_sane() {
        for a in APIS {
            assert!(a.min <= a.max, "{}", a.name);
            assert_eq!(
                APIS.iter().filter(|b| b.key == a.key).count(),
                1,
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn peek_needs_eight_bytes() {
        assert_eq!(peek_header(&[0, 18, 0, 3, 0, 0, 0]), None);
        assert_eq!(peek_header(&[0, 18, 0, 3, 0, 0, 0, 9]), Some((18, 3, 9)));
    }
}
