//! Kafka error codes (the one table, in `strom_metadata::errors`) and how the broker's domain
//! errors map to them.

use strom_storage::StorageError;

pub use strom_metadata::errors::*;

/// The error code a client should see for a storage failure.
pub fn from_storage(e: &StorageError) -> i16 {
    match e {
        StorageError::CorruptMessage(_) => CORRUPT_MESSAGE,
        StorageError::InvalidRecord(_) => INVALID_RECORD,
        StorageError::MessageTooLarge { .. } => MESSAGE_TOO_LARGE,
        StorageError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        StorageError::InvalidConfig { .. } | StorageError::UnknownConfig(_) => INVALID_CONFIG,
        StorageError::Io { .. } => KAFKA_STORAGE_ERROR,
    }
}
