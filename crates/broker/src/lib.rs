//! The strom broker: a tokio server speaking the Kafka protocol over the partition logs.

pub mod acl;
pub mod broker;
pub mod config;
pub mod errors;
pub mod group;
pub mod handlers;
mod internal_topics;
mod maintenance;
pub mod partition;
pub mod protocol;
pub mod purgatory;
pub mod server;
pub mod storage_errors;
pub mod topic_config;
pub mod txn;

pub use broker::Broker;
pub use config::{BrokerConfig, ConfigError, parse_properties};
