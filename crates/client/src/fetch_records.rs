//! A follower's reading of a Fetch response: every partition's records as the wire bytes the
//! leader sent (zero-copy slices of the response), not parsed batches, since a follower
//! stores them byte for byte. krabka's generated decoder parses (and decompresses) them; this
//! walk mirrors its field order for the flexible versions (12-16) with krabka's primitive
//! readers, which refuse truncated or oversized input, and its test runs it against
//! krabka's encoder so that the two cannot drift.

use bytes::{Buf, Bytes};
use krabka_protocol::ProtocolError;
use krabka_protocol::primitives::array::{get_array_len, get_nullable_array_len};
use krabka_protocol::primitives::fixed::{get_i16, get_i32, get_i64};
use krabka_protocol::primitives::string_bytes::get_compact_string_owned;
use krabka_protocol::primitives::uuid::{Uuid, get_uuid};
use krabka_protocol::primitives::varint::get_uvarint;
use krabka_protocol::tagged_fields::read_tagged_fields;

/// One partition of a Fetch response, with its records as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    /// The topic's name (versions 12) or id (13 and later); the other is empty.
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole and possibly a truncated last batch (Kafka may cut one at the size limit).
    pub records: Bytes,
}

fn skip_tagged<B: Buf>(buf: &mut B) -> Result<(), ProtocolError> {
    read_tagged_fields(buf, |_, _| Ok(false)).map(|_| ())
}

/// The response's top-level error code and its partitions, from a Fetch response body of
/// version 12 to 16 (after the response header).
pub fn fetched_partitions(
    mut body: Bytes,
    version: i16,
) -> Result<(i16, Vec<FetchedPartition>), ProtocolError> {
    if !(12..=16).contains(&version) {
        return Err(ProtocolError::InvalidValue(
            "raw records are read from Fetch versions 12 to 16 only",
        ));
    }
    let b = &mut body;
    let _throttle = get_i32(b)?;
    let error_code = get_i16(b)?;
    let _session = get_i32(b)?;
    let mut out = Vec::new();
    for _ in 0..get_array_len(b, true)? {
        let (topic, topic_id) = if version < 13 {
            (get_compact_string_owned(b)?, Uuid::ZERO)
        } else {
            (String::new(), get_uuid(b)?)
        };
        for _ in 0..get_array_len(b, true)? {
            let partition = get_i32(b)?;
            let error_code = get_i16(b)?;
            let high_watermark = get_i64(b)?;
            let last_stable_offset = get_i64(b)?;
            let log_start_offset = get_i64(b)?;
            if let Some(n) = get_nullable_array_len(b, true)? {
                for _ in 0..n {
                    let _producer_id = get_i64(b)?;
                    let _first_offset = get_i64(b)?;
                    skip_tagged(b)?;
                }
            }
            let _preferred_read_replica = get_i32(b)?;
            let records = match get_uvarint(b)? {
                0 => Bytes::new(),
                n => {
                    let len = (n - 1) as usize;
                    if b.remaining() < len {
                        return Err(ProtocolError::UnexpectedEof {
                            needed: len - b.remaining(),
                        });
                    }
                    b.copy_to_bytes(len)
                }
            };
            skip_tagged(b)?;
            out.push(FetchedPartition {
                topic: topic.clone(),
                topic_id,
                partition,
                error_code,
                high_watermark,
                last_stable_offset,
                log_start_offset,
                records,
            });
        }
        skip_tagged(b)?;
    }
    skip_tagged(b)?;
    Ok((error_code, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use krabka_protocol::Encode;
    use krabka_protocol::owned::fetch_response::{
        AbortedTransaction, FetchResponse, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use krabka_protocol::records::RecordsPayload;

    fn response() -> FetchResponse {
        let part = |partition: i32, records: Option<&[u8]>| PartitionData {
            partition_index: partition,
            error_code: if records.is_none() { 6 } else { 0 },
            high_watermark: 100 + partition as i64,
            last_stable_offset: 90 + partition as i64,
            log_start_offset: partition as i64,
            aborted_transactions: Some(vec![AbortedTransaction {
                producer_id: 7,
                first_offset: 3,
                ..Default::default()
            }]),
            preferred_read_replica: -1,
            // A tagged field on the way.
            current_leader: LeaderIdAndEpoch {
                leader_id: 2,
                leader_epoch: 9,
                ..Default::default()
            },
            records: records.map(|r| RecordsPayload::Raw(Bytes::copy_from_slice(r))),
            ..Default::default()
        };
        FetchResponse {
            error_code: 0,
            responses: vec![
                FetchableTopicResponse {
                    topic: "a".into(),
                    topic_id: Uuid([1; 16]),
                    partitions: vec![part(0, Some(b"batch bytes as stored")), part(1, None)],
                    ..Default::default()
                },
                FetchableTopicResponse {
                    topic: "b".into(),
                    topic_id: Uuid([2; 16]),
                    partitions: vec![part(4, Some(&[0u8; 300]))],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    /// (topic, partition, error, high watermark, last stable offset, log start, records)
    type Seen = (String, i32, i16, i64, i64, i64, Vec<u8>);

    #[test]
    fn the_walk_reads_what_krabka_encodes_with_the_records_verbatim() {
        for version in 12..=16 {
            let mut wire = BytesMut::new();
            response().encode(&mut wire, version).unwrap();
            let (error, parts) = fetched_partitions(wire.freeze(), version).unwrap();
            assert_eq!(error, 0);
            let seen: Vec<Seen> = parts
                .iter()
                .map(|p| {
                    let name = if version < 13 {
                        p.topic.clone()
                    } else {
                        format!("{}", p.topic_id.0[0])
                    };
                    (
                        name,
                        p.partition,
                        p.error_code,
                        p.high_watermark,
                        p.last_stable_offset,
                        p.log_start_offset,
                        p.records.to_vec(),
                    )
                })
                .collect();
            let (a, b) = if version < 13 { ("a", "b") } else { ("1", "2") };
            assert_eq!(
                seen,
                vec![
                    (
                        a.into(),
                        0,
                        0,
                        100,
                        90,
                        0,
                        b"batch bytes as stored".to_vec()
                    ),
                    (a.into(), 1, 6, 101, 91, 1, vec![]),
                    (b.into(), 4, 0, 104, 94, 4, vec![0u8; 300]),
                ],
                "v{version}"
            );
        }
    }

    #[test]
    fn truncated_or_garbled_responses_are_refused_not_panicked_on() {
        let mut wire = BytesMut::new();
        response().encode(&mut wire, 12).unwrap();
        let wire = wire.freeze();
        for cut in 0..wire.len() {
            assert!(
                fetched_partitions(wire.slice(..cut), 12).is_err(),
                "cut at {cut}"
            );
        }
        for i in 0..wire.len() {
            let mut b = wire.to_vec();
            b[i] ^= 0xff;
            let _ = fetched_partitions(Bytes::from(b), 12);
        }
        assert!(fetched_partitions(wire, 11).is_err());
    }
}
