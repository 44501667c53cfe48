//! Replication's decisions, as state machines driven by events and the time, without I/O
//! (Kafka's `Partition`/`ReplicaManager` logic for the leader, `AbstractFetcherThread` and
//! `LeaderEpochFileCache.endOffsetFor` for the follower):
//!
//! - [`leader::LeaderState`]: the followers' progress, the high watermark (the smallest log
//!   end offset in the ISR), the ISR shrinking when a follower lags for
//!   `replica.lag.time.max.ms` and growing when it catches up (changes proposed to the
//!   controller with the partition epoch, applied once committed), and the
//!   `min.insync.replicas` checks of acks=all produce.
//! - [`follower::FollowerState`]: where a follower of a new leader truncates its log (by
//!   leader epoch, KIP-101 and KIP-279) before it fetches, and the high watermark it learns.
//!
//! The broker feeds them what its logs and fetches say and carries out what they decide.

pub mod follower;
pub mod leader;
