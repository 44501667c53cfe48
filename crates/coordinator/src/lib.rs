//! strom's coordinators: consumer groups and transactions. Their decisions are pure state
//! machines (`group::state`, `txn::state`); around each, a coordinator serves the shards
//! (internal partitions) this node leads and reaches logs, markers and producer ids only
//! through the traits of [`host`]. This crate never imports the broker: the broker
//! implements those traits over its replica manager.

pub mod group;
pub mod host;
mod internal_topic;
mod shards;
pub mod txn;

#[cfg(test)]
mod fake;

pub use host::{BoxFuture, Host, Markers, WriteError};
