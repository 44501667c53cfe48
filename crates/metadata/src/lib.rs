//! Pure data the layers above storage share: Kafka's error codes, the topic-partition, and
//! the cluster metadata image (brokers, topics, partitions with replicas, ISR, leaders and
//! epochs, configs), the records that change it and what a change means for one node. No
//! I/O.

pub mod codec;
pub mod errors;
pub mod image;
pub mod uuid;

use std::fmt;

/// A partition of a topic, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}
