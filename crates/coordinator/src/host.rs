//! What the coordinators need from the broker, as narrow traits: Kafka's group coordinator
//! reaches its logs through `PartitionWriter` the same way. The broker implements them over
//! its replica manager; tests implement them in memory, with faults injected there.
//!
//! Leadership goes the other way: the broker calls the coordinators' `on_election` and
//! `on_resignation` when this node starts or stops leading a partition of their topic.

use std::future::Future;
use std::pin::Pin;

use strom_metadata::TopicPartition;
use strom_storage::batch::BatchHeader;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a coordinator's write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This broker does not lead the partition (any more): the coordinator has moved.
    #[error("this broker does not lead the partition")]
    NotLeader,
    /// A transactional write from a producer whose epoch was bumped since.
    #[error("the producer's epoch is stale")]
    InvalidProducerEpoch,
    /// A transactional write whose transaction ended (or was never verified).
    #[error("{0}")]
    InvalidTxnState(String),
    /// Written but not committed (the in-sync replicas did not confirm it in time).
    #[error("the write was not committed in time")]
    Timeout,
    /// Not written: fewer in-sync replicas than the partition's `min.insync.replicas`.
    #[error("{0}")]
    NotEnoughReplicas(String),
    #[error("{0}")]
    Failed(String),
}

/// One of the coordinator's internal partitions, as the coordinator writes and reads it.
pub trait PartitionWriter: Send + Sync {
    /// Appends one batch the coordinator built to `tp`, which this broker leads; resolves
    /// once it is committed (the high watermark passed it) with its base offset. A
    /// transactional batch's first write in a transaction carries the guard of its
    /// verification.
    fn append<'a>(
        &'a self,
        tp: &'a TopicPartition,
        batch: Vec<u8>,
        verification: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, WriteError>>;

    /// Every committed batch of `tp` from its start, in order: how a shard is loaded. The
    /// topic is compacted: offsets have gaps, a batch may have no records left, and only
    /// the latest record of a key (or its tombstone, for a while) is sure to be there.
    fn replay(
        &self,
        tp: &TopicPartition,
        f: &mut dyn FnMut(&BatchHeader, &[u8]),
    ) -> Result<(), WriteError>;
}

/// The markers that end one producer's transaction.
#[derive(Debug, Clone)]
pub struct Markers {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub partitions: Vec<TopicPartition>,
}

/// Writes transaction markers: into local partitions today, WriteTxnMarkers to their
/// leaders in a cluster.
pub trait MarkerWriter: Send + Sync {
    /// Writes the markers; returns the partitions that failed, with their error code (to be
    /// retried).
    fn write_markers<'a>(&'a self, m: &'a Markers) -> BoxFuture<'a, Vec<(TopicPartition, i16)>>;
}

/// Producer ids: a local block today, the controller's blocks in a cluster. Never waits:
/// Kafka's brokers fetch the next block before the current one runs out, and answer
/// COORDINATOR_NOT_AVAILABLE meanwhile.
pub trait ProducerIdSource: Send + Sync {
    fn next_producer_id(&self) -> Result<i64, WriteError>;
}

/// The topics the coordinators look at.
pub trait Topics: Send + Sync {
    /// Whether the partition exists (offsets for unknown partitions are refused).
    fn partition_exists(&self, topic: &str, partition: i32) -> bool;

    /// The partition count of `topic`, if it exists.
    fn partition_count(&self, topic: &str) -> Option<i32>;

    /// Creates an internal topic on first use, as Kafka does, and elects its partitions;
    /// returns its partition count or the error for the client.
    fn ensure_internal_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, Result<i32, i16>>;

    /// Whether this broker's view of which internal partitions it leads is known to be
    /// current; when not, the coordinators answer NOT_COORDINATOR rather than from state
    /// a new leader may have moved past.
    fn leadership_current(&self) -> bool {
        true
    }
}

/// Everything a coordinator call may need.
pub trait Host: PartitionWriter + MarkerWriter + ProducerIdSource + Topics {}

impl<T: PartitionWriter + MarkerWriter + ProducerIdSource + Topics> Host for T {}
