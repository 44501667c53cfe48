//! The partition log of strom: segmented, append-only storage of Kafka RecordBatch v2 bytes
//! with sparse offset and time indexes, crash recovery, retention and flush policy.
//!
//! This crate knows files and batch bytes only: nothing of sockets, requests or replication.
//! [`PartitionLog`] keeps a log and its producer state (idempotence, transactions) as one
//! unit.

pub mod batch;
mod checkpoint;
pub mod clock;
mod compact;
pub mod config;
mod durable;
mod error;
mod index;
mod log;
pub mod open_files;
mod partition_log;
pub mod producer_state;
mod read;
pub mod reader;
mod recovery;
mod segment;
mod segment_map;
mod txn_files;
pub mod txn_index;

pub use checkpoint::{CheckpointBatch, EpochCache};
pub use compact::{CleanOptions, CleanStats, Cleanable, dirty_bytes_on_disk};
pub use config::{LogConfig, TimestampType};
pub use durable::settle;
pub use error::{Result, StorageError};
pub use log::{AppendInfo, FileRegion, Log, ReadResult, TimestampOffset};
pub use partition_log::{AppendError, LeaderAppend, PartitionLog};

#[cfg(all(test, target_pointer_width = "64"))]
mod footprint {
    /// What every partition holds, idle or not: a broker keeps tens of thousands. Growing
    /// one of these is a decision, not an accident (each is one allocation; glibc rounds
    /// it up to 16 bytes with its 8-byte header).
    #[test]
    fn an_idle_logs_structures_stay_small() {
        use std::mem::size_of;
        assert!(size_of::<crate::log::Shared>() <= 224);
        assert!(size_of::<crate::segment::Segment>() <= 104);
        assert!(size_of::<crate::PartitionLog>() <= 40);
    }
}
