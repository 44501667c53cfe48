//! The controller of the metadata quorum. Its decisions (placing replicas, fencing brokers
//! whose heartbeats stopped, choosing leaders, handing out producer-id blocks) are a pure
//! state machine over the metadata image, in `controller`; the Raft quorum that commits the
//! records it produces comes next, on a proven Raft library.

pub mod controller;
pub mod placement;

pub use controller::{Controller, ControllerConfig, Refusal, Registration, TopicRequest};
