//! Transactions: the coordinator's state machine, the coordinator that runs it over
//! `__transaction_state`, and the markers it has written into the partitions.

pub mod coordinator;
pub mod markers;
pub mod records;
pub mod state;
pub mod verify;

#[cfg(test)]
mod coordinator_tests;
