//! The log cleaner: background work that compacts the logs whose `cleanup.policy` has
//! `compact`, as Kafka's LogCleaner does. Each cleaner thread takes the filthiest log not
//! being cleaned (a log past `max.compaction.lag.ms` first, then the highest dirty ratio at or
//! above `min.cleanable.dirty.ratio`, or one whose tombstones' delete horizon has passed),
//! cleans it below its high watermark and last stable offset, and looks again; with nothing
//! to do it sleeps `log.cleaner.backoff.ms`. Reads are throttled to
//! `log.cleaner.io.max.bytes.per.second` across threads.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strom_storage::{CleanOptions, CleanStats, Cleanable};

use crate::broker::Broker;

/// The broker's `log.cleaner.*` keys, with Kafka's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanerConfig {
    pub enable: bool,
    pub threads: usize,
    /// Memory for the key maps, shared by the threads.
    pub dedupe_buffer_size: usize,
    pub io_max_bytes_per_second: f64,
    pub backoff_ms: u64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            enable: true,
            threads: 1,
            dedupe_buffer_size: 128 * 1024 * 1024,
            io_max_bytes_per_second: f64::MAX,
            backoff_ms: 15_000,
        }
    }
}

pub const KEYS: &[&str] = &[
    "log.cleaner.enable",
    "log.cleaner.threads",
    "log.cleaner.dedupe.buffer.size",
    "log.cleaner.io.max.bytes.per.second",
    "log.cleaner.backoff.ms",
];

impl CleanerConfig {
    /// Sets one of [`KEYS`]; the error says what is wrong with the value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        let num = |min: f64| -> Result<f64, String> {
            let n: f64 = v.parse().map_err(|_| "not a number".to_string())?;
            if n.is_nan() || n < min {
                return Err(format!("must be at least {min}"));
            }
            Ok(n)
        };
        match key {
            "log.cleaner.enable" => {
                self.enable = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err("must be true or false".into()),
                }
            }
            "log.cleaner.threads" => self.threads = num(0.0)? as usize,
            "log.cleaner.dedupe.buffer.size" => self.dedupe_buffer_size = num(1024.0)? as usize,
            "log.cleaner.io.max.bytes.per.second" => self.io_max_bytes_per_second = num(1.0)?,
            "log.cleaner.backoff.ms" => self.backoff_ms = num(0.0)? as u64,
            _ => return Err(format!("{key} is not a cleaner key")),
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "log.cleaner.enable" => self.enable.to_string(),
            "log.cleaner.threads" => self.threads.to_string(),
            "log.cleaner.dedupe.buffer.size" => self.dedupe_buffer_size.to_string(),
            "log.cleaner.io.max.bytes.per.second" => {
                if self.io_max_bytes_per_second == f64::MAX {
                    "1.7976931348623157E308".into()
                } else {
                    self.io_max_bytes_per_second.to_string()
                }
            }
            "log.cleaner.backoff.ms" => self.backoff_ms.to_string(),
            _ => return None,
        })
    }
}

/// One log's standing with the cleaner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub cleanable: Cleanable,
    pub min_ratio: f64,
    pub max_lag_ms: i64,
}

impl Candidate {
    /// Past `max.compaction.lag.ms`: cleaned first, whatever its ratio.
    fn overdue(&self, now_ms: i64) -> bool {
        self.cleanable.dirty_bytes > 0
            && self
                .cleanable
                .first_dirty_timestamp
                .is_some_and(|t| now_ms.saturating_sub(t) > self.max_lag_ms)
    }

    fn due(&self, now_ms: i64) -> bool {
        let c = &self.cleanable;
        self.overdue(now_ms)
            || (c.dirty_bytes > 0 && c.dirty_ratio() >= self.min_ratio)
            || c.next_horizon.is_some_and(|t| now_ms > t)
    }
}

/// The log to clean next, by index: overdue logs first, then the highest dirty ratio.
pub fn pick(candidates: &[Candidate], now_ms: i64) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.due(now_ms))
        .max_by(|(_, a), (_, b)| {
            (a.overdue(now_ms), a.cleanable.dirty_ratio())
                .partial_cmp(&(b.overdue(now_ms), b.cleanable.dirty_ratio()))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i)
}

/// Kafka's Throttler: bytes are counted over short periods, and a period that went faster
/// than the rate sleeps off the difference.
#[derive(Debug)]
pub struct Throttler {
    rate: f64,
    period_start: Instant,
    observed: f64,
}

const CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl Throttler {
    pub fn new(rate: f64) -> Self {
        Throttler {
            rate,
            period_start: Instant::now(),
            observed: 0.0,
        }
    }

    /// Counts `bytes`; returns how long to sleep to stay within the rate.
    pub fn observe(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        if self.rate == f64::MAX {
            return None;
        }
        self.observed += bytes as f64;
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed < CHECK_INTERVAL {
            return None;
        }
        let wanted = Duration::from_secs_f64(self.observed / self.rate);
        self.period_start = now;
        self.observed = 0.0;
        wanted.checked_sub(elapsed).filter(|d| !d.is_zero())
    }
}

/// What the cleaner threads share.
pub struct CleanerState {
    busy: Mutex<HashSet<(std::sync::Arc<str>, i32)>>,
    throttler: Mutex<Throttler>,
}

impl CleanerState {
    pub fn new(config: &CleanerConfig) -> Self {
        CleanerState {
            busy: Mutex::new(HashSet::new()),
            throttler: Mutex::new(Throttler::new(config.io_max_bytes_per_second)),
        }
    }
}

impl Broker {
    /// Cleans the filthiest log not being cleaned by another thread. False when no log is
    /// due, or its pass did nothing: the thread then sleeps `log.cleaner.backoff.ms`.
    pub fn clean_filthiest_log(&self, now_ms: i64) -> bool {
        let mut logs = Vec::new();
        let mut candidates = Vec::new();
        // Most logs are not compacted: picked out without copying every replica's pointer,
        // then in name order (ties go to the first).
        let mut compacted = Vec::new();
        self.replicas.for_each(|p| {
            if p.log().config().cleanup_compact {
                compacted.push(p.clone());
            }
        });
        compacted.sort_by(|a, b| (&a.topic, a.index).cmp(&(&b.topic, b.index)));
        {
            let busy = self.cleaner.busy.lock().unwrap();
            for p in compacted {
                let config = p.log().config();
                if !config.cleanup_compact
                    || p.log().is_closed()
                    || busy.contains(&(p.topic.clone(), p.index))
                {
                    continue;
                }
                match p.cleanable(now_ms, config.min_compaction_lag_ms) {
                    Ok(c) => {
                        candidates.push(Candidate {
                            cleanable: c,
                            min_ratio: config.min_cleanable_dirty_ratio,
                            max_lag_ms: config.max_compaction_lag_ms,
                        });
                        logs.push(p);
                    }
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "the cleaner could not size up the log")
                    }
                }
            }
        }
        let Some(i) = pick(&candidates, now_ms) else {
            return false;
        };
        let p = logs.swap_remove(i);
        let key = (p.topic.clone(), p.index);
        if !self.cleaner.busy.lock().unwrap().insert(key.clone()) {
            return false;
        }
        let config = p.log().config();
        let opts = CleanOptions {
            now_ms,
            delete_retention_ms: config.delete_retention_ms,
            min_compaction_lag_ms: config.min_compaction_lag_ms,
            map_bytes: self.config.cleaner.dedupe_buffer_size / self.config.cleaner.threads.max(1),
            upper: 0,
        };
        let ratio = candidates[i].cleanable.dirty_ratio();
        let started = Instant::now();
        let result = p.clean(&opts, &mut |bytes| {
            let sleep = self
                .cleaner
                .throttler
                .lock()
                .unwrap()
                .observe(bytes, Instant::now());
            if let Some(d) = sleep {
                std::thread::sleep(d);
            }
        });
        self.cleaner.busy.lock().unwrap().remove(&key);
        let worked = matches!(result, Ok(Some(_)));
        match result {
            Ok(Some(s)) => log_stats(&p.topic, p.index, ratio, &s, started.elapsed()),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "cleaning failed; the log is left as it was and tried again later")
            }
        }
        worked
    }
}

fn log_stats(topic: &str, partition: i32, ratio: f64, s: &CleanStats, took: Duration) {
    let secs = took.as_secs_f64().max(1e-6);
    tracing::info!(
        topic,
        partition,
        dirty_ratio = format!("{:.2}", ratio),
        offsets = format!("{}..{}", s.first_dirty, s.end),
        read_mb = format!("{:.1}", s.bytes_read as f64 / 1e6),
        written_mb = format!("{:.1}", s.bytes_written as f64 / 1e6),
        records_removed = s.records_removed,
        records_read = s.records_read,
        segments = format!("{} -> {}", s.segments_before, s.segments_after),
        mb_per_s = format!("{:.1}", s.bytes_read as f64 / 1e6 / secs),
        "cleaned log"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(dirty: u64, clean: u64, first_ts: Option<i64>, horizon: Option<i64>) -> Candidate {
        Candidate {
            cleanable: Cleanable {
                first_dirty: 0,
                first_uncleanable: 0,
                clean_bytes: clean,
                dirty_bytes: dirty,
                first_dirty_timestamp: first_ts,
                next_horizon: horizon,
            },
            min_ratio: 0.5,
            max_lag_ms: 1000,
        }
    }

    #[test]
    fn the_dirtiest_log_above_its_ratio_goes_first_and_an_overdue_one_before_it() {
        let now = 10_000;
        let logs = [
            cand(40, 60, Some(now), None), // 0.4: below the ratio
            cand(60, 40, Some(now), None), // 0.6
            cand(90, 10, Some(now), None), // 0.9
            cand(0, 100, None, None),      // nothing dirty
        ];
        assert_eq!(pick(&logs, now), Some(2));
        // Past max.compaction.lag.ms, a log below its ratio comes first.
        let mut overdue = logs;
        overdue[0] = cand(40, 60, Some(now - 5000), None);
        assert_eq!(pick(&overdue, now), Some(0));
        // Nothing dirty, but tombstones whose horizon passed.
        assert_eq!(pick(&[cand(0, 100, None, Some(now - 1))], now), Some(0));
        assert_eq!(pick(&[cand(0, 100, None, Some(now + 1))], now), None);
        assert_eq!(pick(&[cand(40, 60, Some(now), None)], now), None);
    }

    #[test]
    fn the_throttler_sleeps_off_what_went_too_fast() {
        let start = Instant::now();
        let mut t = Throttler::new(1000.0);
        t.period_start = start;
        assert_eq!(t.observe(500, start + Duration::from_millis(50)), None);
        // 1000 bytes in 200 ms at 1000 B/s: 800 ms too fast.
        let sleep = t.observe(500, start + Duration::from_millis(200)).unwrap();
        assert_eq!(sleep, Duration::from_millis(800));
        let mut free = Throttler::new(f64::MAX);
        assert_eq!(free.observe(1 << 30, start + Duration::from_secs(1)), None);
    }

    #[test]
    fn config_keys_parse_and_show_as_kafka() {
        let mut c = CleanerConfig::default();
        for k in KEYS {
            assert!(c.get(k).is_some(), "{k}");
        }
        c.set("log.cleaner.threads", "2").unwrap();
        c.set("log.cleaner.io.max.bytes.per.second", "1048576")
            .unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.io_max_bytes_per_second, 1048576.0);
        assert!(c.set("log.cleaner.enable", "yes").is_err());
        assert!(c.set("log.cleaner.backoff.ms", "-1").is_err());
    }
}
