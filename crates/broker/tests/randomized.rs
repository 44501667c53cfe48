//! 500,000 mutated valid requests through the request path, from a fixed seed: no panic, no
//! abort, no hang. Requests that would create or delete things are only decoded (a random
//! CreateTopics could otherwise fill the disk); everything else is served.

mod common;
mod seeds;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use krabka_protocol::Decode;
use krabka_protocol::owned::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_broker::handlers::handle;
use strom_broker::protocol;

const ITERATIONS: usize = 500_000;

use seeds::seeds;

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
