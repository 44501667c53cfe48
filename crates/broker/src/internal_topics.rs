//! What the coordinators' internal topics (`__consumer_offsets`, `__transaction_state`)
//! need from the broker: creation on first use, and reading a partition back when a shard
//! loads.

use std::collections::BTreeMap;

use strom_storage::batch::BatchHeader;

use crate::broker::{Broker, BrokerError, NewTopic};
use crate::errors;
use crate::partition::Partition;

impl Broker {
    /// Creates an internal topic on first use, as Kafka does; returns its partition count.
    pub async fn ensure_internal_topic(&self, name: &str, partitions: i32) -> Result<i32, i16> {
        if let Some(n) = self.partition_count(name) {
            return Ok(n);
        }
        let mut configs = BTreeMap::new();
        // Kept whole until compaction exists: the coordinators trim them themselves.
        configs.insert("retention.ms".to_string(), "-1".to_string());
        configs.insert("segment.bytes".to_string(), (100 * 1024 * 1024).to_string());
        let (offsets, txns) = self.config.internal_replication_factor;
        let wanted = if name == crate::group::coordinator::OFFSETS_TOPIC {
            ("offsets.topic.replication.factor", offsets)
        } else {
            ("transaction.state.log.replication.factor", txns)
        };
        // A single node caps it at its one broker quietly, as Kafka's embedded default would.
        let cluster = self.config.kraft.multi_node(self.config.node_id)
            || !self.config.kraft.roles.controller;
        if wanted.1 > 1 && cluster {
            tracing::warn!(
                topic = name,
                "{} is {}, but partitions have one replica until strom replicates them: {name} is created with one",
                wanted.0,
                wanted.1
            );
        }
        let new = NewTopic {
            name: name.to_string(),
            partitions: Some(partitions),
            replication_factor: Some(1),
            assignments: vec![],
            configs,
        };
        match self.create_topic(new, false).await {
            Ok(t) => Ok(self.partition_count(&t.name).unwrap_or(0)),
            Err(BrokerError::TopicExists(_)) => Ok(self.partition_count(name).unwrap_or(0)),
            Err(e) => {
                tracing::error!(error = %e, "cannot create {name}");
                Err(errors::COORDINATOR_NOT_AVAILABLE)
            }
        }
    }
}

impl Partition {
    /// Every batch from the log start to the high watermark, in order, with its bytes. A read
    /// error ends the walk (it is logged by whoever notices the missing state).
    pub fn for_each_batch(
        &self,
        mut f: impl FnMut(&BatchHeader, &[u8]),
    ) -> Result<(), strom_storage::StorageError> {
        let start = self.log().log_start_offset();
        self.log()
            .for_each_batch(start, Some(self.high_watermark()), |h, b| {
                f(h, b);
                true
            })
    }
}
