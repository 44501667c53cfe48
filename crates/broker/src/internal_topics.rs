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
        let txn_topic = name != crate::group::coordinator::OFFSETS_TOPIC;
        let mut rf = if txn_topic { txns } else { offsets };
        // The embedded single-node default has one broker for good: it caps the factor
        // quietly. A cluster refuses until enough brokers are live, as Kafka does.
        let single = !self.config.kraft.multi_node(self.config.node_id)
            && self.config.kraft.roles.controller;
        if single {
            rf = 1;
        }
        if txn_topic {
            let min_isr = self.config.txn_state_min_isr.min(rf as i32);
            configs.insert("min.insync.replicas".to_string(), min_isr.to_string());
        }
        let new = NewTopic {
            name: name.to_string(),
            partitions: Some(partitions),
            replication_factor: Some(rf),
            assignments: vec![],
            configs,
        };
        match self.create_topic(new, false).await {
            Ok(t) => Ok(self.partition_count(&t.name).unwrap_or(0)),
            Err(BrokerError::TopicExists(_)) => Ok(self.partition_count(name).unwrap_or(0)),
            Err(e @ BrokerError::InvalidReplicationFactor(_)) => {
                tracing::warn!(error = %e, "{name} is not created until enough brokers are live (or lower {}.replication.factor)", if txn_topic { "transaction.state.log" } else { "offsets.topic" });
                Err(errors::COORDINATOR_NOT_AVAILABLE)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create {name}");
                Err(errors::COORDINATOR_NOT_AVAILABLE)
            }
        }
    }
}

impl Partition {
    /// Every batch from the log start to the log end, in order, with its bytes, for a
    /// coordinator loading the shard this node now leads. To the log end, as Kafka loads:
    /// a new leader's high watermark lags until its followers fetch, and what its
    /// predecessor acknowledged may lie above it; as leader, its log is what every replica
    /// will hold. A read error ends the walk (it is logged by whoever notices the missing
    /// state).
    pub fn for_each_batch(
        &self,
        mut f: impl FnMut(&BatchHeader, &[u8]),
    ) -> Result<(), strom_storage::StorageError> {
        let start = self.log().log_start_offset();
        self.log().for_each_batch(start, None, |h, b| {
            f(h, b);
            true
        })
    }
}
