//! The controller of the metadata quorum. Its decisions (placing replicas, fencing brokers
//! whose heartbeats stopped, choosing leaders, handing out producer-id blocks) are a pure
//! state machine over the metadata image, in `controller`; `quorum` commits the records it
//! produces through a Raft log on openraft and applies them to every node's image.

pub mod controller;
pub mod election;
pub mod placement;
pub mod quorum;
pub mod reassignment;
mod topic_admin;

pub use controller::{
    AlterPartition, Controller, ControllerConfig, Refusal, Registration, TopicRequest,
};
