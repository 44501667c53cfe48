//! Framing, headers, strings, versions, over-declared arrays and truncations.

use super::*;

/// A request whose array count is replaced by an attack value. The control (an honest
/// count) must be answered.
pub(crate) struct ArrayCase {
    pub(crate) name: &'static str,
    pub(crate) api: i16,
    pub(crate) version: i16,
    pub(crate) flexible: bool,
    pub(crate) prefix: Vec<u8>,
    pub(crate) suffix: Vec<u8>,
    /// A nullable array: any negative count is null, as in Kafka's own decoders.
    pub(crate) nullable: bool,
}

#[rustfmt::skip]
pub(crate) fn array_cases() -> Vec<ArrayCase> {
    let produce_v3 = cat(&[&[0xff, 0xff, 0, 1], &TIMEOUT_30S]); // txn id null, acks 1
    let produce_v9 = cat(&[&[0, 0, 1], &TIMEOUT_30S]);
    // replica -1, max wait 0, min bytes 1, max bytes 1 MiB, read_uncommitted
    let fetch_v4 = cat(&[&[0xff; 4], &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0x10, 0, 0, 0]]);
    // ... then session id 0, session epoch -1 (no session)
    let fetch_v12 = cat(&[&fetch_v4, &[0, 0, 0, 0], &[0xff; 4]]);
    let join_v5 = cat(&[
        &s16("g"),
        &[0, 0, 0x27, 0x10, 0, 0, 0x27, 0x10], // session, rebalance timeouts
        &s16(""),                              // member id
        &[0xff, 0xff],                         // group instance id: null
        &s16("consumer"),
    ]);
    let offset_commit_v2 = cat(&[&s16("g"), &[0xff; 4], &s16(""), &[0xff; 8]]);
    let sync_v0 = cat(&[&s16("g"), &[0, 0, 0, 1], &s16("m")]);
    let timeout_validate = cat(&[&TIMEOUT_30S, &[1]]);
    let a = |name, api, version, flexible, nullable, prefix: &[u8], suffix: &[u8]| ArrayCase {
        name, api, version, flexible, nullable, prefix: prefix.to_vec(), suffix: suffix.to_vec(),
    };
    //    name                                       api ver  flex   nullable prefix (up to the count)                    suffix (after the array)
    vec![
        a("produce v3 topics",                        0,  3, false, false, &produce_v3,                                   &[]),
        a("produce v3 partitions",                    0,  3, false, false, &cat(&[&produce_v3, &[0, 0, 0, 1], &s16("t")]), &[]),
        a("produce v9 topics",                        0,  9, true,  false, &produce_v9,                                   &[0]),
        a("produce v9 partitions",                    0,  9, true,  false, &cat(&[&produce_v9, &[2], &cs("t")]),           &[0, 0]),
        a("metadata v4 topics",                       3,  4, false, true,  &[],                                           &[1]),
        a("metadata v12 topics",                      3, 12, true,  true,  &[],                                           &[1, 0, 0]),
        a("fetch v4 topics",                          1,  4, false, false, &fetch_v4,                                     &[]),
        a("fetch v4 partitions",                      1,  4, false, false, &cat(&[&fetch_v4, &[0, 0, 0, 1], &s16("t")]),   &[]),
        a("fetch v12 topics",                         1, 12, true,  false, &fetch_v12,                                    &[1, 1, 0]),
        a("fetch v12 partitions",                     1, 12, true,  false, &cat(&[&fetch_v12, &[2], &cs("t")]),            &[0, 1, 1, 0]),
        a("fetch v12 forgotten topics",               1, 12, true,  false, &cat(&[&fetch_v12, &[1]]),                      &[1, 0]),
        a("list offsets v1 topics",                   2,  1, false, false, &[0xff; 4],                                    &[]),
        a("create topics v2 topics",                 19,  2, false, false, &[],                                           &timeout_validate),
        a("delete topics v1 names",                  20,  1, false, false, &[],                                           &TIMEOUT_30S),
        a("delete records v0 topics",                21,  0, false, false, &[],                                           &TIMEOUT_30S),
        a("describe configs v1 resources",           32,  1, false, false, &[],                                           &[0]),
        a("describe configs v1 keys",                32,  1, false, true,  &cat(&[&[0, 0, 0, 1, 2], &s16("t")]),           &[0]),
        a("alter configs v0 resources",              33,  0, false, false, &[],                                           &[1]),
        a("incremental alter configs v0 resources",  44,  0, false, false, &[],                                           &[1]),
        a("create partitions v0 topics",             37,  0, false, false, &[],                                           &timeout_validate),
        a("describe log dirs v1 topics",             35,  1, false, true,  &[],                                           &[]),
        a("join group v5 protocols",                 11,  5, false, false, &join_v5,                                      &[]),
        a("sync group v0 assignments",               14,  0, false, false, &sync_v0,                                      &[]),
        a("leave group v3 members",                  13,  3, false, false, &s16("g"),                                     &[]),
        a("describe groups v0 groups",               15,  0, false, false, &[],                                           &[]),
        a("list groups v4 states filter",            16,  4, true,  false, &[],                                           &[0]),
        a("offset commit v2 topics",                  8,  2, false, false, &offset_commit_v2,                             &[]),
        a("offset fetch v1 topics",                   9,  1, false, false, &s16("g"),                                     &[]),
        a("offset delete v0 topics",                 47,  0, false, false, &s16("g"),                                     &[]),
        a("delete groups v0 names",                  42,  0, false, false, &[],                                           &[]),
        a("find coordinator v4 keys",                10,  4, true,  false, &[0],                                          &[0]),
    ]
}

fn t(name: &str, api: i16, version: i16, flexible: bool, body: &[u8], expect: Expect) -> Case {
    case(name, frame(api, version, flexible, body), expect)
}

#[rustfmt::skip]
fn framing_cases() -> Vec<Case> {
    use Expect::*;
    let eight = |key: i16| cat(&[&key.to_be_bytes(), &[0, 0, 0, 0, 0, 42]]);
    let produce_v3_topic = cat(&[&[0xff, 0xff, 0, 1], &TIMEOUT_30S, &[0, 0, 0, 1], &s16("t"), &[0, 0, 0, 1, 0, 0, 0, 0]]);
    let produce_v9_topic = cat(&[&[0, 0, 1], &TIMEOUT_30S, &[2], &cs("t"), &[2, 0, 0, 0, 0]]);
    let join_v5_protocol = cat(&[&s16("g"), &[0, 0, 0x27, 0x10, 0, 0, 0x27, 0x10], &s16(""), &[0xff, 0xff], &s16("consumer"), &[0, 0, 0, 1], &s16("range")]);
    vec![
        // Frames too short for a request header.
        case("empty frame", Bytes::new(), Close),
        case("4 bytes", Bytes::from_static(&[0, 18, 0, 3]), Close),
        case("7 bytes", Bytes::from_static(&[0, 18, 0, 0, 0, 0, 0]), Close),
        // 8 bytes: api key, version, correlation id, and nothing else.
        case("8 bytes, api key 999", eight(999), Close),
        case("8 bytes, api key -1", eight(-1), Close),
        case("8 bytes, api key i16::MAX", eight(i16::MAX), Close),
        case("8 bytes, api key i16::MIN", eight(i16::MIN), Close),
        case("8 bytes, api key 4 (LeaderAndIsr, not served)", eight(4), Close),
        case("8 bytes, api key 17 (SaslHandshake, not served)", eight(17), Close),
        case("8 bytes, api key 36 (SaslAuthenticate, not served)", eight(36), Close),
        case("8 bytes, api key 67 (not served)", eight(67), Close),
        case("8 bytes, ApiVersions v0 without a client id", eight(18), Close),
        case("8 bytes, ApiVersions v77", cat(&[&[0, 18, 0, 77], &[0, 0, 0, 42]]), ApiVersionsUnsupported),
        case("garbage", Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad]), Close),
        case("HTTP request", Bytes::from_static(b"GET / HTTP/1.1\r\nHost: strom\r\n\r\n"), Close),
        t("unknown api key with a header", 999, 0, false, &[], Close),
        t("negative api key with a header", -5, 0, false, &[], Close),
        // Unsupported versions: ApiVersions answers in v0, everything else closes.
        t("produce v12", 0, 12, true, &[], Close),
        t("produce v-1", 0, -1, false, &[], Close),
        t("fetch v0 (below the served range)", 1, 0, false, &[], Close),
        t("fetch v3 (below the served range)", 1, 3, false, &[], Close),
        t("fetch v17", 1, 17, true, &[], Close),
        t("metadata v13", 3, 13, true, &[], Close),
        t("list offsets v0", 2, 0, false, &[], Close),
        t("offset delete v1", 47, 1, true, &[], Close),
        t("api versions v5", 18, 5, true, &[], ApiVersionsUnsupported),
        t("api versions v-1", 18, -1, false, &[], ApiVersionsUnsupported),
        t("api versions v32767", 18, i16::MAX, false, &[], ApiVersionsUnsupported),
        // Request headers.
        case("client id longer than the frame", Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 42, 0x7f, 0xff, b'a']), Close),
        case("client id length i16::MIN (null)", Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 42, 0x80, 0x00, 0, 0, 0, 0]), Answered),
        t("header v2: i32::MAX tagged fields", 0, 9, false, &cat(&[&[0xff, 0xff, 0xff, 0xff, 0x07], &[0; 8]]), Close),
        t("header v2: a tagged field of i32::MAX bytes", 0, 9, false, &cat(&[&[1, 0, 0xff, 0xff, 0xff, 0xff, 0x07], &[0; 8]]), Close),
        t("header v2: tag count varint too long", 3, 12, false, &VARINT_TOO_LONG, Close),
        t("header only, metadata v1", 3, 1, false, &[], Close),
        t("header only, produce v3", 0, 3, false, &[], Close),
        t("header only, fetch v12", 1, 12, true, &[], Close),
        // Strings and bytes longer than the frame, or negative where null is not allowed.
        t("metadata v4: topic name of 32767 bytes, 1 present", 3, 4, false, &[0, 0, 0, 1, 0x7f, 0xff, b't', 1], Close),
        t("metadata v4: topic name length -2", 3, 4, false, &[0, 0, 0, 1, 0xff, 0xfe, 1], Close),
        t("metadata v12: topic name compact length i32::MAX", 3, 12, true, &cat(&[&[2], &[0; 16], &COMPACT_MAX, &[0, 1, 0, 0]]), Close),
        t("produce v3: records of i32::MAX bytes", 0, 3, false, &cat(&[&produce_v3_topic, &MAX, &[0; 70]]), Close),
        // Records are nullable: -2 reads as null (as in Kafka), answered with CORRUPT_MESSAGE.
        t("produce v3: records of -2 bytes", 0, 3, false, &cat(&[&produce_v3_topic, &MINUS_TWO, &[0; 70]]), Answered),
        t("produce v9: records of compact i32::MAX bytes", 0, 9, true, &cat(&[&produce_v9_topic, &COMPACT_MAX, &[0; 70]]), Close),
        t("produce v9: topic count varint too long", 0, 9, true, &cat(&[&[0, 0, 1], &TIMEOUT_30S, &VARINT_TOO_LONG, &[0]]), Close),
        t("produce v3: transactional id of 32767 bytes", 0, 3, false, &cat(&[&[0x7f, 0xff, 0, 1], &TIMEOUT_30S, &[0, 0, 0, 0]]), Close),
        t("init producer id v0: transactional id of 32767 bytes", 22, 0, false, &[0x7f, 0xff, b'x', 0, 0, 0x75, 0x30], Close),
        t("api versions v3: software name compact length i32::MAX", 18, 3, true, &cat(&[&COMPACT_MAX, &[b'x', 2, b'1', 0]]), Close),
        t("join group v5: protocol metadata of i32::MAX bytes", 11, 5, false, &cat(&[&join_v5_protocol, &MAX, &[0; 8]]), Close),
        t("join group v5: protocol metadata of -2 bytes", 11, 5, false, &cat(&[&join_v5_protocol, &MINUS_TWO, &[0; 8]]), Close),
        // Nullable arrays: -1 (compact: 0) is null, which Metadata reads as "all topics".
        t("metadata v4: topics null", 3, 4, false, &[0xff, 0xff, 0xff, 0xff, 0], Answered),
        t("metadata v12: topics null", 3, 12, true, &[0, 0, 0, 0], Answered),
        t("metadata v4: trailing garbage after a valid body", 3, 4, false, &[0, 0, 0, 0, 0, 0xde, 0xad], Answered),
    ]
}

/// Every strict prefix of a valid request (from the end of the fixed header on) is closed.
fn truncation_cases() -> Vec<Case> {
    let valid: Vec<(&str, Bytes)> = vec![
        ("produce v3", produce(3, 1, "t", 0, Some(&batch()))),
        ("produce v9", produce(9, 1, "t", 0, Some(&batch()))),
        ("produce v2", produce(2, 1, "t", 0, Some(&batch()))),
        (
            "metadata v12",
            frame(
                3,
                12,
                true,
                &cat(&[&[2], &[0; 16], &cs("t"), &[0, 1, 0, 0]]),
            ),
        ),
        (
            "fetch v12",
            frame(
                1,
                12,
                true,
                &cat(&[
                    &[0xff; 4],
                    &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0x10, 0, 0, 0, 0, 0, 0, 0],
                    &[0xff; 4],
                    &[2],
                    &cs("t"),
                    &[2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                    &[0; 8],
                    &[0xff; 4],
                    &[0; 8],
                    &[0, 0x10, 0, 0, 0, 0, 1, 1, 0],
                ]),
            ),
        ),
        (
            "api versions v3",
            frame(18, 3, true, &cat(&[&cs("x"), &cs("1"), &[0]])),
        ),
    ];
    let mut cases = Vec::new();
    for (name, f) in valid {
        // The untruncated request is served...
        cases.push(case(format!("{name}, whole"), f.clone(), Expect::Answered));
        // ... and each cut of it closes the connection.
        for cut in 8..f.len() {
            cases.push(case(
                format!("{name}, cut to {cut} of {} bytes", f.len()),
                f.slice(..cut),
                Expect::Close,
            ));
        }
    }
    cases
}

#[tokio::test]
async fn over_declared_arrays_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let mut cases = Vec::new();
    for c in array_cases() {
        let f = |count: &[u8]| {
            frame(
                c.api,
                c.version,
                c.flexible,
                &cat(&[&c.prefix, count, &c.suffix]),
            )
        };
        if c.flexible {
            cases.push(case(
                format!("{}: empty (control)", c.name),
                f(&[1]),
                Expect::Answered,
            ));
            cases.push(case(
                format!("{}: compact i32::MAX", c.name),
                f(&COMPACT_MAX),
                Expect::Close,
            ));
            cases.push(case(
                format!("{}: count varint too long", c.name),
                f(&VARINT_TOO_LONG),
                Expect::Close,
            ));
        } else {
            cases.push(case(
                format!("{}: empty (control)", c.name),
                f(&[0; 4]),
                Expect::Answered,
            ));
            cases.push(case(
                format!("{}: i32::MAX", c.name),
                f(&MAX),
                Expect::Close,
            ));
            // Negative counts: null for a nullable array, malformed otherwise.
            let negative = if c.nullable {
                Expect::Answered
            } else {
                Expect::Close
            };
            cases.push(case(format!("{}: -2", c.name), f(&MINUS_TWO), negative));
            cases.push(case(
                format!("{}: i32::MIN", c.name),
                f(&[0x80, 0, 0, 0]),
                negative,
            ));
        }
    }
    assert!(cases.len() >= 100, "{} cases", cases.len());
    run(&broker, cases).await;
    assert_logs_empty(&broker);
}

#[tokio::test]
async fn bad_frames_headers_strings_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let cases = framing_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    run(&broker, cases).await;
    assert_logs_empty(&broker);
}

#[tokio::test]
async fn truncated_requests_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    run(&broker, truncation_cases()).await;
    // The three whole produce requests went in, nothing else.
    let end: u64 = (0..2)
        .map(|p| broker.partition("t", p).unwrap().log().log_end_offset())
        .sum();
    assert_eq!(end, 3);
}

pub(crate) fn assert_logs_empty(broker: &Broker) {
    for p in 0..2 {
        assert_eq!(
            broker.partition("t", p).unwrap().log().log_end_offset(),
            0,
            "t-{p} was written to"
        );
    }
    let topics: Vec<String> = broker.topics().iter().map(|t| t.name.clone()).collect();
    assert!(
        topics.iter().all(|t| t == "t" || t.starts_with("__")),
        "topics created: {topics:?}"
    );
}

#[tokio::test]
async fn a_negative_client_id_length_reads_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let f = bytes::Bytes::from_static(&[0, 18, 0, 0, 0, 0, 0, 42, 0xff, 0xf0]);
    let r: ApiVersionsResponse = decode(handle(&broker, f, peer()).await, 0, false);
    assert_eq!(r.error_code, 0);
}

#[tokio::test]
async fn unsupported_api_versions_gets_the_list_in_v0() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let r: ApiVersionsResponse = decode(
        handle(&broker, frame(18, 77, true, &[]), peer()).await,
        0,
        false,
    );
    check_unsupported(&r).unwrap();
}

#[tokio::test]
async fn metadata_null_topics_lists_everything() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let r: MetadataResponse = decode(
        serve(&broker, frame(3, 4, false, &[0xff, 0xff, 0xff, 0xff, 0])).await,
        4,
        false,
    );
    assert!(r.topics.iter().any(|t| t.name.as_deref() == Some("t")));
}
