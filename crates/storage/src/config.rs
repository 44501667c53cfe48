//! Per-log settings, named and defaulted as Kafka's topic configs so that `--config k=v`
//! habits carry over.

use crate::error::{Result, StorageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment before it would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first append.
    pub segment_ms: i64,
    /// `retention.ms`: delete closed segments whose largest timestamp is older; -1 keeps all.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest closed segments while the log is larger; -1 = no limit.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: bytes between two sparse index entries.
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`: an index this large forces a roll.
    pub segment_index_bytes: u64,
    /// `flush.messages`: fsync after this many messages; i64::MAX leaves it to the page cache.
    pub flush_messages: i64,
    /// `flush.ms`: fsync when the last flush is this old; i64::MAX leaves it to the page cache.
    pub flush_ms: i64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `max.message.bytes`: the largest batch accepted, framing included.
    pub max_message_bytes: usize,
    /// `cleanup.policy` has `delete`: retention by time and size applies.
    pub cleanup_delete: bool,
    /// `cleanup.policy` has `compact`: the cleaner keeps the last record of every key, and
    /// records without a key are refused.
    pub cleanup_compact: bool,
    /// `min.cleanable.dirty.ratio`: the share of dirty bytes that makes a log worth cleaning.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the log due.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`: how long tombstones and markers outlive their first cleaning.
    pub delete_retention_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 * 1024 * 1024,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            timestamp_type: TimestampType::CreateTime,
            max_message_bytes: 1024 * 1024 + 12,
            cleanup_delete: true,
            cleanup_compact: false,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

/// One shared copy of each distinct config: the logs of a topic (and every topic on the
/// defaults) point at the same one instead of holding 112 bytes each.
pub(crate) fn shared(config: LogConfig) -> std::sync::Arc<LogConfig> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Option<HashMap<Key, Weak<LogConfig>>>> = Mutex::new(None);
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let table = guard.get_or_insert_with(HashMap::new);
    if let Some(c) = table.get(&Key(config)).and_then(Weak::upgrade) {
        return c;
    }
    // Dropped configs leave dead entries: swept whenever the table doubles.
    if table.len() >= 64 && table.len().is_power_of_two() {
        table.retain(|_, w| w.strong_count() > 0);
    }
    let c = Arc::new(config);
    table.insert(Key(config), Arc::downgrade(&c));
    c
}

/// A config as a map key: equal when every field is bit for bit.
#[derive(Clone, Copy)]
struct Key(LogConfig);

impl Key {
    fn bits(&self) -> [u64; 16] {
        let LogConfig {
            segment_bytes,
            segment_ms,
            retention_ms,
            retention_bytes,
            index_interval_bytes,
            segment_index_bytes,
            flush_messages,
            flush_ms,
            timestamp_type,
            max_message_bytes,
            cleanup_delete,
            cleanup_compact,
            min_cleanable_dirty_ratio,
            min_compaction_lag_ms,
            max_compaction_lag_ms,
            delete_retention_ms,
        } = self.0;
        [
            segment_bytes,
            segment_ms as u64,
            retention_ms as u64,
            retention_bytes as u64,
            index_interval_bytes,
            segment_index_bytes,
            flush_messages as u64,
            flush_ms as u64,
            timestamp_type as u64,
            max_message_bytes as u64,
            cleanup_delete as u64,
            cleanup_compact as u64,
            min_cleanable_dirty_ratio.to_bits(),
            min_compaction_lag_ms as u64,
            max_compaction_lag_ms as u64,
            delete_retention_ms as u64,
        ]
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.bits() == other.bits()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits().hash(state)
    }
}

/// The topic-level keys this config understands, for listing in DescribeConfigs.
pub const KEYS: &[&str] = &[
    "segment.bytes",
    "segment.ms",
    "retention.ms",
    "retention.bytes",
    "index.interval.bytes",
    "segment.index.bytes",
    "flush.messages",
    "flush.ms",
    "message.timestamp.type",
    "max.message.bytes",
    "cleanup.policy",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "delete.retention.ms",
];

fn invalid(key: &str, value: &str, reason: &str) -> StorageError {
    StorageError::InvalidConfig {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_i64(key: &str, value: &str, min: i64) -> Result<i64> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not a whole number"))?;
    if v < min {
        return Err(invalid(key, value, &format!("must be at least {min}")));
    }
    Ok(v)
}

/// A Kafka INT setting: segment positions and sizes are 32-bit, as in Kafka's indexes.
fn parse_int(key: &str, value: &str, min: i64) -> Result<i64> {
    let v = parse_i64(key, value, min)?;
    if v > i32::MAX as i64 {
        return Err(invalid(
            key,
            value,
            &format!("must be at most {}", i32::MAX),
        ));
    }
    Ok(v)
}

impl LogConfig {
    /// Sets one Kafka-named key. `UnknownConfig` for keys that are not the log's business
    /// (the broker handles those), `InvalidConfig` naming the key for bad values.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "segment.bytes" => {
                self.segment_bytes = parse_int(key, value, crate::batch::HEADER_LEN as i64)? as u64
            }
            "segment.ms" => self.segment_ms = parse_i64(key, value, 1)?,
            "retention.ms" => self.retention_ms = parse_i64(key, value, -1)?,
            "retention.bytes" => self.retention_bytes = parse_i64(key, value, -1)?,
            "index.interval.bytes" => self.index_interval_bytes = parse_int(key, value, 0)? as u64,
            "segment.index.bytes" => {
                self.segment_index_bytes = parse_int(key, value, 8 * 4)? as u64;
            }
            "flush.messages" => self.flush_messages = parse_i64(key, value, 1)?,
            "flush.ms" => self.flush_ms = parse_i64(key, value, 0)?,
            "message.timestamp.type" => {
                self.timestamp_type = match value.trim() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid(key, value, "must be CreateTime or LogAppendTime")),
                }
            }
            "max.message.bytes" => {
                self.max_message_bytes = parse_i64(key, value, 0)?.min(i32::MAX as i64) as usize;
            }
            "cleanup.policy" => {
                let (mut delete, mut compact) = (false, false);
                for p in value.split(',').map(str::trim) {
                    match p {
                        "delete" => delete = true,
                        "compact" => compact = true,
                        _ => {
                            return Err(invalid(
                                key,
                                value,
                                "must be delete, compact or compact,delete",
                            ));
                        }
                    }
                }
                self.cleanup_delete = delete;
                self.cleanup_compact = compact;
            }
            "min.cleanable.dirty.ratio" => {
                let r: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(key, value, "not a number"))?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(invalid(key, value, "must be between 0 and 1"));
                }
                self.min_cleanable_dirty_ratio = r;
            }
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = parse_i64(key, value, 0)?,
            "max.compaction.lag.ms" => self.max_compaction_lag_ms = parse_i64(key, value, 1)?,
            "delete.retention.ms" => self.delete_retention_ms = parse_i64(key, value, 0)?,
            _ => return Err(StorageError::UnknownConfig(key.to_string())),
        }
        Ok(())
    }

    /// The current value of a key, in Kafka's string form.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "segment.index.bytes" => self.segment_index_bytes.to_string(),
            "flush.messages" => self.flush_messages.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "cleanup.policy" => match (self.cleanup_compact, self.cleanup_delete) {
                (true, true) => "compact,delete".into(),
                (true, false) => "compact".into(),
                (false, true) => "delete".into(),
                (false, false) => "".into(),
            },
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            _ => return None,
        })
    }

    pub(crate) fn max_index_entries(&self) -> usize {
        (self.segment_index_bytes / 12).max(1) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_configs_share_one_copy() {
        let a = shared(LogConfig::default());
        let b = shared(LogConfig::default());
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let other = LogConfig {
            min_cleanable_dirty_ratio: 0.25,
            ..LogConfig::default()
        };
        let c = shared(other);
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        assert_eq!(*c, other);
        assert!(std::sync::Arc::ptr_eq(&c, &shared(other)));
    }

    #[test]
    fn defaults_match_kafka() {
        let c = LogConfig::default();
        assert_eq!(c.get("segment.bytes").unwrap(), "1073741824");
        assert_eq!(c.get("retention.ms").unwrap(), "604800000");
        assert_eq!(c.get("retention.bytes").unwrap(), "-1");
        assert_eq!(c.get("index.interval.bytes").unwrap(), "4096");
        assert_eq!(c.get("max.message.bytes").unwrap(), "1048588");
        assert_eq!(c.get("flush.messages").unwrap(), i64::MAX.to_string());
        assert_eq!(c.get("message.timestamp.type").unwrap(), "CreateTime");
        assert_eq!(c.get("cleanup.policy").unwrap(), "delete");
        assert_eq!(c.get("min.cleanable.dirty.ratio").unwrap(), "0.5");
        assert_eq!(c.get("delete.retention.ms").unwrap(), "86400000");
        assert_eq!(
            c.get("max.compaction.lag.ms").unwrap(),
            i64::MAX.to_string()
        );
        for k in KEYS {
            assert!(c.get(k).is_some(), "{k}");
        }
    }

    /// Kafka's INT settings refuse what does not fit 31 bits: a segment's positions are
    /// 32-bit in its index, and a larger segment.bytes would wrap them.
    #[test]
    fn int_settings_stop_at_i32_max() {
        let mut c = LogConfig::default();
        for key in [
            "segment.bytes",
            "index.interval.bytes",
            "segment.index.bytes",
        ] {
            c.set(key, "2147483647").unwrap();
            let e = c.set(key, "2147483648").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at most 2147483647"), "{e}");
        }
        assert_eq!(c.segment_bytes, 2_147_483_647);
    }

    #[test]
    fn set_validates_and_names_the_key() {
        let mut c = LogConfig::default();
        c.set("retention.ms", "1000").unwrap();
        assert_eq!(c.retention_ms, 1000);
        c.set("message.timestamp.type", "LogAppendTime").unwrap();
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
        c.set("cleanup.policy", "compact, delete").unwrap();
        assert!(c.cleanup_compact && c.cleanup_delete);
        assert_eq!(c.get("cleanup.policy").unwrap(), "compact,delete");
        assert!(c.set("cleanup.policy", "shred").is_err());
        assert!(c.set("min.cleanable.dirty.ratio", "1.5").is_err());
        let err = c.set("segment.bytes", "lots").unwrap_err().to_string();
        assert!(err.contains("segment.bytes"), "{err}");
        assert!(matches!(
            c.set("retention.bytes", "-2"),
            Err(StorageError::InvalidConfig { .. })
        ));
        assert!(matches!(
            c.set("min.insync.replicas", "2"),
            Err(StorageError::UnknownConfig(_))
        ));
    }
}
