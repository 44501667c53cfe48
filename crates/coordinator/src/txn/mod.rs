//! Transactions: the coordinator's state machine, the coordinator that runs it over
//! `__transaction_state`.

pub mod coordinator;
pub mod records;
pub mod state;

#[cfg(test)]
mod coordinator_tests;
