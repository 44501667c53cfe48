//! Kafka error codes (the one table, in `strom_metadata::errors`) and how the broker's domain
//! errors map to them.

use strom_storage::StorageError;

pub use strom_metadata::errors::*;

/// The error code a client should see for a storage failure.
pub fn from_storage(e: &StorageError) -> i16 {
    match e {
        StorageError::CorruptMessage(_) => CORRUPT_MESSAGE,
        StorageError::InvalidRecord(_) | StorageError::RecordErrors { .. } => INVALID_RECORD,
        StorageError::MessageTooLarge { .. } => MESSAGE_TOO_LARGE,
        StorageError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        StorageError::InvalidConfig { .. } | StorageError::UnknownConfig(_) => INVALID_CONFIG,
        StorageError::Io { .. } => KAFKA_STORAGE_ERROR,
    }
}

/// What the broker's own operations (topics, metadata, storage) fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    InvalidTopic(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// An incremental config change was made from configs that changed since.
    #[error("{0}")]
    StaleConfigs(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The metadata log could not commit the change (the client retries).
    #[error("the metadata log: {0}")]
    MetadataLog(String),
    /// The controller's next block of producer ids has not arrived yet (the client
    /// retries).
    #[error("no producer id block yet")]
    ProducerIdsNotReady,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}
