//! librdkafka clients (the rdkafka crate) for tests against a `strom server`: a producer
//! that books its delivery reports, a consumer, topic creation, reading everything back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Headers, Message};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::common::Server;

pub const T: Duration = Duration::from_secs(60);

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// (partition, offset, value) of every acknowledged record, as delivery reports say.
#[derive(Default, Clone)]
pub struct Acks(pub Arc<Mutex<Vec<Delivery>>>);

/// A delivery report: (partition, offset, value), or the error.
pub type Delivery = Result<(i32, i64, Vec<u8>), String>;

impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let r = match result {
            Ok(m) => Ok((
                m.partition(),
                m.offset(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().push(r);
    }
}

pub fn producer(server: &Server, extra: &[(&str, &str)]) -> (BaseProducer<Acks>, Acks) {
    let acks = Acks::default();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", server.bootstrap())
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    (c.create_with_context(acks.clone()).expect("producer"), acks)
}

pub fn consumer(server: &Server, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = ClientConfig::new();
    // librdkafka needs a group id even to assign partitions by hand; no offsets are committed.
    c.set("bootstrap.servers", server.bootstrap())
        .set("group.id", "strom-tests")
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("consumer")
}

pub fn admin(server: &Server) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .expect("admin")
}

pub fn create_topic(server: &Server, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = block_on(admin(server).create_topics([&t], &AdminOptions::new())).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp: Option<i64>,
}

pub fn got(m: &BorrowedMessage<'_>) -> Got {
    Got {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| k.to_vec()),
        value: m.payload().unwrap_or_default().to_vec(),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
        timestamp: m.timestamp().to_millis(),
    }
}

/// Reads `count` records of `topic` from the beginning of every partition.
pub fn consume_all(server: &Server, topic: &str, partitions: i32, count: usize) -> Vec<Got> {
    let c = consumer(server, &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while out.len() < count {
        if let Some(r) = c.poll(Duration::from_millis(100)) {
            out.push(got(&r.expect("consume")));
        }
        if std::time::Instant::now() > deadline {
            let per: BTreeMap<i32, usize> = out.iter().fold(BTreeMap::new(), |mut m, g| {
                *m.entry(g.partition).or_default() += 1;
                m
            });
            let marks: Vec<_> = (0..partitions)
                .map(|p| c.fetch_watermarks(topic, p, T))
                .collect();
            panic!(
                "got {} of {count} records from {topic}: per partition {per:?}, watermarks {marks:?}",
                out.len()
            );
        }
    }
    // Nothing more than expected arrives.
    assert!(
        c.poll(Duration::from_millis(300)).is_none(),
        "more records than produced"
    );
    out
}

pub fn flush<C: ProducerContext>(p: &BaseProducer<C>) {
    p.flush(T).expect("flush");
}
