//! A topic's effective configuration: broker defaults plus the topic's own overrides, with
//! Kafka's key names. The log's part is handed to storage; the rest is the broker's.

use std::collections::BTreeMap;

use strom_storage::LogConfig;

use crate::config::BrokerConfig;

/// Topic keys the broker itself (not the log) understands.
const BROKER_KEYS: &[&str] = &[
    "min.insync.replicas",
    "compression.type",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
    "unclean.leader.election.enable",
];

/// Where a value comes from, as DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    DynamicTopic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

#[derive(Debug, Clone)]
pub struct TopicConfig {
    pub log: LogConfig,
    pub min_insync_replicas: i32,
    /// compression.type and its levels: how batches are stored.
    pub compression: crate::compression::Compression,
    /// The broker's replica.lag.time.max.ms (not a topic key).
    pub replica_lag_time_max_ms: i64,
    /// The topic's own overrides, as given (validated).
    pub overrides: BTreeMap<String, String>,
}

/// Kafka's broker key behind a topic key, for synonyms and for the default's source.
fn broker_synonym(topic_key: &str) -> Option<&'static str> {
    Some(match topic_key {
        "segment.bytes" => "log.segment.bytes",
        "segment.ms" => "log.roll.ms",
        "retention.ms" => "log.retention.ms",
        "retention.bytes" => "log.retention.bytes",
        "index.interval.bytes" => "log.index.interval.bytes",
        "segment.index.bytes" => "log.index.size.max.bytes",
        "flush.messages" => "log.flush.interval.messages",
        "flush.ms" => "log.flush.interval.ms",
        "message.timestamp.type" => "log.message.timestamp.type",
        "max.message.bytes" => "message.max.bytes",
        "min.insync.replicas" => "min.insync.replicas",
        "cleanup.policy" => "log.cleanup.policy",
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
        "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
        "max.compaction.lag.ms" => "log.cleaner.max.compaction.lag.ms",
        "delete.retention.ms" => "log.cleaner.delete.retention.ms",
        "compression.type" => "compression.type",
        "compression.gzip.level" => "compression.gzip.level",
        "compression.lz4.level" => "compression.lz4.level",
        "compression.zstd.level" => "compression.zstd.level",
        "unclean.leader.election.enable" => "unclean.leader.election.enable",
        _ => return None,
    })
}

pub fn all_keys() -> impl Iterator<Item = &'static str> {
    strom_storage::config::KEYS
        .iter()
        .copied()
        .chain(BROKER_KEYS.iter().copied())
}

impl TopicConfig {
    /// Applies `overrides` over the broker defaults; the error names the offending key.
    pub fn new(broker: &BrokerConfig, overrides: BTreeMap<String, String>) -> Result<Self, String> {
        let mut c = TopicConfig {
            log: broker.log,
            min_insync_replicas: broker.min_insync_replicas,
            compression: broker.compression,
            replica_lag_time_max_ms: broker.replica_lag_time_max_ms,
            overrides: BTreeMap::new(),
        };
        for (k, v) in &overrides {
            c.apply(k, v)?;
        }
        c.overrides = overrides;
        Ok(c)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let bad = |why: &str| format!("invalid value {value:?} for {key}: {why}");
        match key {
            "min.insync.replicas" => {
                let n: i32 = value.trim().parse().map_err(|_| bad("not a number"))?;
                if n < 1 {
                    return Err(bad("must be at least 1"));
                }
                self.min_insync_replicas = n;
            }
            k if crate::compression::KEYS.contains(&k) => {
                self.compression.set(k, value).map_err(|why| bad(&why))?
            }
            "unclean.leader.election.enable" => {
                if !matches!(value.trim(), "true" | "false") {
                    return Err(bad("must be true or false"));
                }
            }
            _ => self.log.set(key, value).map_err(|e| match e {
                strom_storage::StorageError::UnknownConfig(_) => {
                    format!("unknown topic config {key}")
                }
                other => other.to_string(),
            })?,
        }
        Ok(())
    }

    /// The effective value of `key` and where it comes from.
    pub fn describe(&self, broker: &BrokerConfig, key: &str) -> Option<(String, Source)> {
        if let Some(v) = self.overrides.get(key) {
            return Some((v.clone(), Source::DynamicTopic));
        }
        let value = match key {
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            k if crate::compression::KEYS.contains(&k) => self.compression.get(k)?,
            "unclean.leader.election.enable" => broker.unclean_leader_election.to_string(),
            _ => self.log.get(key)?,
        };
        let from_broker = broker_synonym(key).is_some_and(|b| broker.given.contains_key(b));
        Some((
            value,
            if from_broker {
                Source::StaticBroker
            } else {
                Source::Default
            },
        ))
    }

    pub fn broker_synonym(key: &str) -> Option<&'static str> {
        broker_synonym(key)
    }
}

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long; the maximum is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_apply_and_describe() {
        let b = BrokerConfig::default();
        let c = TopicConfig::new(
            &b,
            over(&[("retention.ms", "1000"), ("min.insync.replicas", "2")]),
        )
        .unwrap();
        assert_eq!(c.log.retention_ms, 1000);
        assert_eq!(c.min_insync_replicas, 2);
        assert_eq!(
            c.describe(&b, "retention.ms"),
            Some(("1000".into(), Source::DynamicTopic))
        );
        assert_eq!(
            c.describe(&b, "segment.bytes"),
            Some(("1073741824".into(), Source::Default))
        );
        assert_eq!(c.describe(&b, "nope"), None);
        assert_eq!(
            all_keys().filter(|k| c.describe(&b, k).is_none()).count(),
            0
        );
    }

    #[test]
    fn bad_overrides_are_refused_with_the_key() {
        let b = BrokerConfig::default();
        for (k, v) in [
            ("retention.ms", "soon"),
            ("cleanup.policy", "shred"),
            ("min.insync.replicas", "0"),
            ("no.such.key", "1"),
            ("compression.type", "brotli"),
            ("compression.zstd.level", "99"),
        ] {
            let e = TopicConfig::new(&b, over(&[(k, v)])).unwrap_err();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a/b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
