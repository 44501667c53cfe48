//! Arbitrary bytes as a request frame (size prefix removed), through the whole request path
//! of a broker on a temporary directory.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use strom_broker::broker::NewTopic;
use strom_broker::{Broker, BrokerConfig};

struct World {
    broker: Arc<Broker>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig { log_dir: dir.path().to_path_buf(), auto_create_topics_enable: false, ..BrokerConfig::default() };
        config.groups.group.initial_rebalance_delay_ms = 0;
        config.groups.offsets_partitions = 2;
        let broker = Broker::open(config).unwrap();
        broker
            .create_topic(NewTopic { name: "t".into(), partitions: Some(2), replication_factor: None, assignments: vec![], configs: Default::default() }, false)
            .unwrap();
        World {
            broker: Arc::new(broker),
            runtime: tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap(),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // Requests that create or delete topics would fill the disk over millions of runs.
    if data.len() >= 2 && matches!(i16::from_be_bytes([data[0], data[1]]), 19 | 20 | 37) {
        return;
    }
    let w = world();
    let frame = bytes::Bytes::copy_from_slice(data);
    let peer = "127.0.0.1:1".parse().unwrap();
    let _ = w.runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(10), strom_broker::handlers::handle(&w.broker, frame, peer)).await
    });
});
