//! The strom broker: a tokio server speaking the Kafka protocol over the partition logs.

pub mod acl;
pub mod broker;
mod broker_configs;
pub mod cleaner;
pub mod compression;
pub mod config;
mod coordinators;
pub mod errors;
mod fetcher;
pub mod handlers;
pub mod heap;
mod internal_topics;
pub mod kraft_config;
mod lease;
mod lifecycle;
mod listener_config;
mod maintenance;
pub mod meta_properties;
pub mod metadata_log;
pub mod partition;
mod peers;
mod producer_ids;
pub mod protocol;
pub mod purgatory;
pub mod quorum_node;
pub mod replica_manager;
pub mod server;
pub mod storage_errors;
pub mod topic_config;
mod topics;
mod txn_verify;

#[cfg(test)]
mod internal_topics_tests;
#[cfg(test)]
mod txn_failure_tests;
#[cfg(test)]
mod txn_tests;

pub use strom_coordinator::{group, txn};

pub use broker::Broker;
pub use config::{BrokerConfig, ConfigError, parse_properties};
pub mod zero_copy;
#[cfg(all(test, target_pointer_width = "64"))]
mod footprint {
    /// What every partition holds, idle or not (see strom-storage's `footprint`).
    #[test]
    fn an_idle_partitions_structures_stay_small() {
        use std::mem::size_of;
        assert!(size_of::<crate::partition::Partition>() <= 200);
        assert!(size_of::<strom_metadata::image::PartitionInfo>() <= 72);
    }
}
