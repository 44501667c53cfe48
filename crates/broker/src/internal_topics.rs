//! What the coordinators' internal topics (`__consumer_offsets`, `__transaction_state`)
//! need from the broker: creation on first use as compacted topics, and reading a partition
//! back when a shard loads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strom_storage::batch::BatchHeader;

use crate::broker::{Broker, BrokerError, NewTopic};
use crate::errors;
use crate::partition::Partition;

/// How long after a failed attempt to make an internal topic compacted the next one waits.
const UPGRADE_RETRY: Duration = Duration::from_secs(60);
/// How long the change may take: its caller (a FindCoordinator, the offsets check) waits.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a `cleanup.policy` value has `compact`.
fn compacts(policy: Option<&String>) -> bool {
    policy.is_some_and(|p| p.split(',').any(|s| s.trim() == "compact"))
}

impl Broker {
    /// Creates an internal topic on first use, as Kafka does: compacted, with
    /// `offsets.topic.segment.bytes` or `transaction.state.log.segment.bytes`. Returns its
    /// partition count. An existing one made by an older strom is made compacted.
    pub async fn ensure_internal_topic(&self, name: &str, partitions: i32) -> Result<i32, i16> {
        if let Some(n) = self.partition_count(name) {
            self.compact_internal_topic(name).await;
            return Ok(n);
        }
        let txn_topic = name != crate::group::coordinator::OFFSETS_TOPIC;
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        let (offsets_segment, txns_segment) = self.config.internal_segment_bytes;
        let segment = if txn_topic {
            txns_segment
        } else {
            offsets_segment
        };
        configs.insert("segment.bytes".to_string(), segment.to_string());
        let (offsets, txns) = self.config.internal_replication_factor;
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
        // Not shown here yet (another request's creation, still on its way to this
        // node's metadata): the client asks again.
        let shown = |n: Option<i32>| {
            n.filter(|n| *n > 0)
                .ok_or(errors::COORDINATOR_NOT_AVAILABLE)
        };
        match self.create_topic(new, false).await {
            Ok(t) => shown(self.partition_count(&t.name)),
            Err(BrokerError::TopicExists(_)) => shown(self.partition_count(name)),
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

    /// Adds `cleanup.policy=compact` to the overrides of internal topic `name` if it lacks
    /// it: an older strom created the internal topics with `retention.ms=-1` and kept them
    /// small itself. Its other overrides stay. Called at start, periodically and on the
    /// topic's use; a failure is logged, never the caller's, and the next attempt comes no
    /// sooner than a minute later.
    pub async fn compact_internal_topic(&self, name: &str) {
        let Some(topic) = self.topic(name) else {
            return;
        };
        let overrides = {
            let config = topic.config.read().unwrap();
            if compacts(config.overrides.get("cleanup.policy")) {
                return;
            }
            config.overrides.clone()
        };
        {
            let mut tried = self.internal_topic_upgrades.lock().unwrap();
            let now = Instant::now();
            if tried
                .get(name)
                .is_some_and(|t| now.duration_since(*t) < UPGRADE_RETRY)
            {
                return;
            }
            tried.insert(name.to_string(), now);
        }
        let previous = overrides.get("cleanup.policy").cloned();
        let mut compacted = overrides;
        compacted.insert("cleanup.policy".to_string(), "compact".to_string());
        let set = self.set_topic_config(name, compacted, false, None);
        let result = match tokio::time::timeout(UPGRADE_TIMEOUT, set).await {
            Ok(r) => r,
            Err(_) => Err(BrokerError::MetadataLog(format!(
                "no answer within {UPGRADE_TIMEOUT:?}"
            ))),
        };
        match result {
            Ok(()) => tracing::info!(
                topic = name,
                previous = previous.as_deref().unwrap_or("(default)"),
                "internal topic {name} made compacted (cleanup.policy=compact), as Kafka creates it"
            ),
            Err(e) => tracing::warn!(
                topic = name,
                error = %e,
                "cannot make internal topic {name} compacted; will retry"
            ),
        }
    }

    /// [`Broker::compact_internal_topic`] for both internal topics that exist.
    pub async fn compact_internal_topics(&self) {
        for name in [
            crate::group::coordinator::OFFSETS_TOPIC,
            crate::txn::coordinator::TXN_TOPIC,
        ] {
            self.compact_internal_topic(name).await;
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
