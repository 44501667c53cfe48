#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use krabka_protocol::Decode;
use strom_broker::broker::NewTopic;
use strom_broker::server::Reply;
use strom_broker::{Broker, BrokerConfig};

pub fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

/// A broker on a temporary directory with topic `t` (2 partitions), no auto-creation.
pub async fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let mut config = BrokerConfig {
        log_dir: dir.to_path_buf(),
        auto_create_topics_enable: false,
        ..BrokerConfig::default()
    };
    config.groups.group.initial_rebalance_delay_ms = 0;
    config.groups.offsets_partitions = 2;
    let b = Broker::open(config).unwrap();
    b.create_topic(
        NewTopic {
            name: "t".into(),
            partitions: Some(2),
            replication_factor: None,
            assignments: vec![],
            configs: Default::default(),
        },
        false,
    )
    .await
    .unwrap();
    Arc::new(b)
}

/// A request frame (without the size prefix): header v1, or v2 when `flexible`.
pub fn frame(api: i16, version: i16, flexible: bool, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(api);
    b.put_i16(version);
    b.put_i32(42);
    b.put_i16(1);
    b.put_u8(b'c');
    if flexible {
        b.put_u8(0);
    }
    b.put_slice(body);
    b.freeze()
}

/// The response body of a frame reply, header skipped.
pub fn body(reply: Reply, flexible_header: bool) -> Bytes {
    let Reply::Frame(mut f) = reply.materialized().expect("file parts readable") else {
        panic!("expected a response frame")
    };
    let size = f.get_i32();
    assert_eq!(size as usize, f.len());
    assert_eq!(f.get_i32(), 42, "correlation id");
    if flexible_header {
        assert_eq!(f.get_u8(), 0, "no tagged fields");
    }
    f
}

pub fn decode<T: for<'de> Decode<'de>>(reply: Reply, version: i16, flexible_header: bool) -> T {
    let mut b = body(reply, flexible_header);
    T::decode(&mut b, version).expect("decodable response")
}
