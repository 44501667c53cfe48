//! Compression with librdkafka against a real `strom server`: every producer codec stored as
//! received, and a topic's compression.type recompressing whatever the producer sent.

mod common;
mod rdkafka_clients;

use common::Server;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka_clients::*;

#[test]
fn every_compression_codec_is_stored_as_received() {
    let server = Server::start();
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"].iter().enumerate() {
        let topic = format!("codec-{codec}");
        create_topic(&server, &topic, 1, &[]);
        let (p, _) = producer(&server, &[("compression.type", codec), ("linger.ms", "50")]);
        for n in 0..100 {
            let v = format!("{codec} record {n} {}", "x".repeat(100));
            p.send(BaseRecord::<(), _>::to(&topic).payload(&v)).unwrap();
        }
        flush(&p);
        let records = consume_all(&server, &topic, 1, 100);
        for (n, r) in records.iter().enumerate() {
            assert_eq!(r.offset, n as i64);
            assert_eq!(
                r.value,
                format!("{codec} record {n} {}", "x".repeat(100)).into_bytes()
            );
        }
        // On disk, the batches carry the producer's codec (attributes bits 0-2), and are
        // valid as stored.
        let codecs = stored_codecs(&server, &topic);
        assert!(
            codecs.contains(&(i as i16)),
            "{codec}: stored codecs {codecs:?}"
        );
    }
}

/// The codec (attribute bits 0-2) of every batch in partition 0 of `topic` on disk, each
/// batch checked valid as stored.
fn stored_codecs(server: &Server, topic: &str) -> Vec<i16> {
    let seg = server
        .data_dir()
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let bytes = std::fs::read(&seg).unwrap();
    let mut pos = 0;
    let mut codecs = Vec::new();
    while pos < bytes.len() {
        let h = strom_storage::batch::validate(
            &bytes[pos..pos
                + strom_storage::batch::BatchHeader::parse(&bytes[pos..])
                    .unwrap()
                    .total_size()],
        )
        .unwrap();
        codecs.push(h.attributes & 7);
        pos += h.total_size();
    }
    codecs
}

/// A topic's compression.type other than `producer`: whatever codec the producer used,
/// the batches are stored in the topic's and read back exactly (Kafka's broker-side
/// recompression).
#[test]
fn a_topic_codec_recompresses_whatever_the_producer_sent() {
    let server = Server::start();
    let topic_codecs = [
        ("uncompressed", 0),
        ("gzip", 1),
        ("snappy", 2),
        ("lz4", 3),
        ("zstd", 4),
    ];
    for (topic_codec, bits) in topic_codecs {
        for producer_codec in ["none", "lz4", "zstd"] {
            let topic = format!("recompressed-{topic_codec}-{producer_codec}");
            create_topic(&server, &topic, 1, &[("compression.type", topic_codec)]);
            let (p, _) = producer(
                &server,
                &[("compression.type", producer_codec), ("linger.ms", "20")],
            );
            for n in 0..40 {
                let v = format!("{topic_codec}/{producer_codec} {n} {}", "y".repeat(50));
                p.send(
                    BaseRecord::to(&topic)
                        .key(&format!("k{n}"))
                        .payload(&v)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "h",
                            value: Some(&format!("{n}")),
                        })),
                )
                .unwrap();
            }
            flush(&p);
            let records = consume_all(&server, &topic, 1, 40);
            for (n, r) in records.iter().enumerate() {
                assert_eq!(r.offset, n as i64);
                assert_eq!(r.key, Some(format!("k{n}").into_bytes()));
                assert_eq!(
                    r.value,
                    format!("{topic_codec}/{producer_codec} {n} {}", "y".repeat(50)).into_bytes()
                );
                assert_eq!(
                    r.headers,
                    vec![("h".to_string(), format!("{n}").into_bytes())]
                );
            }
            let codecs = stored_codecs(&server, &topic);
            assert!(
                !codecs.is_empty() && codecs.iter().all(|c| *c == bits),
                "{topic_codec} topic, {producer_codec} producer: stored {codecs:?}"
            );
        }
    }
}
