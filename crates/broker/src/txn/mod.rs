//! Transactions: the coordinator's state machine (the coordinator, `__transaction_state`,
//! markers and read_committed come next).

pub mod state;
