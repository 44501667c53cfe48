//! Consumer groups: the protocol state machine and, around it, the coordinator that drives
//! it with requests and time and stores offsets and group metadata.

mod admin;
pub mod coordinator;
mod join;
mod messages;
mod offsets;
mod offsets_topic;
pub mod records;
pub mod state;
pub mod txn_offsets;

#[cfg(test)]
mod state_tests;

#[cfg(test)]
mod coordinator_tests;
