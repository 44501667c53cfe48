//! The metadata quorum on openraft (0.9, pinned): a Raft log of metadata records under
//! `<metadata.log.dir>/__cluster_metadata-0`, applied to a metadata image on every node, and
//! compacted by snapshots of that image.
//!
//! openraft rather than TiKV's `raft`: it drives elections, replication and snapshot
//! transfer itself on tokio (which strom runs on), and asks the application only for its
//! storage (`log_store.rs`, `state_machine.rs`) and its transport, where `raft-rs` would have
//! strom write the event loop (ready/advance, persistence ordering, message pumping) by
//! hand: more room for exactly the mistakes a proven library is there to avoid. openraft's
//! own storage test suite runs against our log store and state machine.

// openraft's error types are large and its traits return them: the functions that feed them
// return the same type.
#![allow(clippy::result_large_err)]

mod log_store;
pub mod network;
mod state_machine;

use std::io::Cursor;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

/// A batch of metadata records, encoded by `strom_metadata::codec`: one Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetadataBatch(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The Raft types of the metadata quorum: node ids are Kafka node ids, entries carry
    /// metadata batches, snapshots are encoded images.
    pub TypeConfig:
        D = MetadataBatch,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

pub(crate) type StorageError = openraft::StorageError<NodeId>;

/// A storage failure, for openraft.
pub(crate) fn io_error(
    verb: openraft::ErrorVerb,
    subject: openraft::ErrorSubject<NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

#[cfg(test)]
mod tests;
