//! Broker settings, read from a Kafka-style `server.properties` with Kafka's own key names.
//! Unknown keys are warned about; a bad value stops the server with the key named.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use strom_storage::LogConfig;

use crate::errors::BrokerError;
use crate::kraft_config as kraft;
pub use crate::listener_config::BrokerListener;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line} of {path} is not key=value: {text:?}")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// The inter-broker listener's bind address and advertised address (those of
    /// `listeners[0]` unless `inter.broker.listener.name` names another).
    pub listener: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: u16,
    /// Every listener that is not the controller's (Kafka's `listeners`), each served.
    pub listeners: Vec<BrokerListener>,
    /// inter.broker.listener.name: the listener other brokers use to reach this one
    /// (replication, forwarding); `PLAINTEXT` when there is one, else the first.
    pub inter_broker_listener: String,
    pub log_dir: PathBuf,
    /// The directories `log.dirs` lists after the first: `strom storage format` formats
    /// them, but a node keeps every partition in `log_dir` and refuses to start with them
    /// (their data would go unseen).
    pub other_log_dirs: Vec<PathBuf>,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// offsets.topic.replication.factor and transaction.state.log.replication.factor
    /// (Kafka's default 3), capped at 1 in the embedded single-node default only.
    pub internal_replication_factor: (i16, i16),
    /// offsets.topic.segment.bytes and transaction.state.log.segment.bytes (Kafka's default
    /// 104857600 each): the internal topics' segment.bytes when they are created.
    pub internal_segment_bytes: (i32, i32),
    /// transaction.state.log.min.isr (Kafka's default 2): `__transaction_state`'s
    /// min.insync.replicas, capped at its replication factor.
    pub txn_state_min_isr: i32,
    /// replica.lag.time.max.ms: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// How this broker's followers fetch: num.replica.fetchers tasks (and connections) per
    /// source broker, replica.fetch.wait.max.ms, replica.fetch.max.bytes and
    /// replica.fetch.response.max.bytes, with Kafka's defaults.
    pub replica_fetch: ReplicaFetchConfig,
    pub auto_create_topics_enable: bool,
    pub message_max_bytes: usize,
    pub socket_request_max_bytes: usize,
    pub min_insync_replicas: i32,
    /// compression.type and its levels: the topics' default.
    pub compression: crate::compression::Compression,
    /// unclean.leader.election.enable: the cluster default, a topic may override it.
    pub unclean_leader_election: bool,
    /// auto.leader.rebalance.enable, leader.imbalance.check.interval.seconds (as ms),
    /// leader.imbalance.per.broker.percentage: Kafka's defaults true, 300, 10.
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval_ms: i64,
    pub leader_imbalance_percent: u32,
    pub log_retention_check_interval_ms: u64,
    pub log_flush_scheduler_interval_ms: u64,
    pub log_flush_offset_checkpoint_interval_ms: u64,
    pub offsets_retention_check_interval_ms: u64,
    /// producer.id.expiration.ms: idle producers' state is forgotten after this long.
    pub producer_id_expiration_ms: i64,
    pub producer_id_expiration_check_interval_ms: u64,
    /// Consumer groups and `__consumer_offsets`.
    pub groups: crate::group::coordinator::CoordinatorConfig,
    /// Transactions and `__transaction_state`.
    pub txns: crate::txn::coordinator::TxnConfig,
    /// Roles, the controller quorum, the controller listener, liveness timers.
    pub kraft: crate::kraft_config::KraftConfig,
    /// The topic defaults that `log.*` keys set.
    pub log: LogConfig,
    /// `zero.copy.fetch.enable` (strom's own, true): fetch responses send their records from
    /// the segment files with sendfile(2); false reads them into memory first (to compare).
    pub zero_copy_fetch: bool,
    /// `log.cleaner.*`: the background compaction of `cleanup.policy=compact` logs.
    pub cleaner: crate::cleaner::CleanerConfig,
    /// Every key as given (after overrides), for DescribeConfigs on the broker.
    pub given: BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            listener: "127.0.0.1:9092".parse().unwrap(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            listeners: vec![BrokerListener {
                name: "PLAINTEXT".into(),
                bind: "127.0.0.1:9092".parse().unwrap(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            inter_broker_listener: "PLAINTEXT".into(),
            log_dir: PathBuf::from("strom-data"),
            other_log_dirs: Vec::new(),
            num_partitions: 1,
            default_replication_factor: 1,
            internal_replication_factor: (3, 3),
            internal_segment_bytes: (104_857_600, 104_857_600),
            txn_state_min_isr: 2,
            replica_lag_time_max_ms: 30_000,
            replica_fetch: ReplicaFetchConfig::default(),
            auto_create_topics_enable: true,
            message_max_bytes: 1024 * 1024 + 12,
            socket_request_max_bytes: 100 * 1024 * 1024,
            min_insync_replicas: 1,
            compression: Default::default(),
            unclean_leader_election: false,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_percent: 10,
            log_retention_check_interval_ms: 300_000,
            log_flush_scheduler_interval_ms: 1000,
            log_flush_offset_checkpoint_interval_ms: 60_000,
            offsets_retention_check_interval_ms: 600_000,
            producer_id_expiration_ms: 86_400_000,
            producer_id_expiration_check_interval_ms: 600_000,
            groups: Default::default(),
            txns: Default::default(),
            kraft: Default::default(),
            log: LogConfig::default(),
            cleaner: Default::default(),
            zero_copy_fetch: true,
            given: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaFetchConfig {
    pub fetchers: u32,
    pub wait_max_ms: i32,
    pub max_bytes: i32,
    pub response_max_bytes: i32,
    /// replica.fetch.backoff.ms: after a refusal or an unreachable leader.
    pub backoff_ms: u64,
}

impl Default for ReplicaFetchConfig {
    fn default() -> Self {
        ReplicaFetchConfig {
            fetchers: 1,
            wait_max_ms: 500,
            max_bytes: 1 << 20,
            response_max_bytes: 10 << 20,
            backoff_ms: 1_000,
        }
    }
}

/// Keys Kafka users put in server.properties that strom accepts without using them yet
/// (they concern features that come later); no warning for those.
const ACCEPTED: &[&str] = &[
    "controller.quorum.bootstrap.servers",
    "num.network.threads",
    "num.io.threads",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "num.recovery.threads.per.data.dir",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
];

pub(crate) fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn int<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not a valid number"))
}

fn boolean(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "must be true or false")),
    }
}

impl BrokerConfig {
    /// Refuses a configuration that asks for what strom does not do: several log directories.
    pub fn check_one_log_dir(&self) -> Result<(), BrokerError> {
        if self.other_log_dirs.is_empty() {
            return Ok(());
        }
        Err(BrokerError::InvalidConfig(format!(
            "log.dirs lists {} directories, but strom keeps every partition in one: list only {}",
            self.other_log_dirs.len() + 1,
            self.log_dir.display()
        )))
    }

    /// Builds the config from properties, returning it and the warnings for unknown keys.
    pub fn from_properties(
        props: &BTreeMap<String, String>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut c = BrokerConfig::default();
        let mut warnings = Vec::new();
        let mut retention_set_by = 0; // ms > minutes > hours, as in Kafka
        for (key, value) in props {
            let k = key.as_str();
            let v = value.as_str();
            match k {
                "node.id" | "broker.id" => c.node_id = int(k, v)?,
                // Read after the loop: which listener is whose depends on other keys.
                "listeners"
                | "advertised.listeners"
                | "listener.security.protocol.map"
                | "inter.broker.listener.name"
                | "controller.listener.names" => {}
                "process.roles" => c.kraft.roles = kraft::parse_roles(k, v)?,
                "controller.quorum.voters" => c.kraft.voters = kraft::parse_voters(k, v)?,
                "metadata.log.dir" => c.kraft.metadata_log_dir = Some(PathBuf::from(v.trim())),
                "broker.rack" => {
                    c.kraft.rack = Some(v.trim().to_string()).filter(|r| !r.is_empty())
                }
                "broker.heartbeat.interval.ms" => c.kraft.heartbeat_interval_ms = int(k, v)?,
                "broker.session.timeout.ms" => c.kraft.session_timeout_ms = int(k, v)?,
                "controller.quorum.election.timeout.ms" => c.kraft.election_timeout_ms = int(k, v)?,
                "controller.quorum.fetch.timeout.ms" => c.kraft.fetch_timeout_ms = int(k, v)?,
                "metadata.log.max.record.bytes.between.snapshots" => {
                    c.kraft.snapshot_bytes = int(k, v)?;
                    if c.kraft.snapshot_bytes == 0 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "log.dirs" | "log.dir" => {
                    let dirs: Vec<&str> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .collect();
                    let Some((first, rest)) = dirs.split_first() else {
                        return Err(invalid(k, v, "must name a directory"));
                    };
                    c.log_dir = PathBuf::from(first);
                    c.other_log_dirs = rest.iter().map(PathBuf::from).collect();
                }
                "num.partitions" => {
                    c.num_partitions = int(k, v)?;
                    if c.num_partitions < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "default.replication.factor" => {
                    c.default_replication_factor = int(k, v)?;
                    if c.default_replication_factor < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "offsets.topic.replication.factor" | "transaction.state.log.replication.factor" => {
                    let rf: i16 = int(k, v)?;
                    if rf < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                    if k.starts_with("offsets") {
                        c.internal_replication_factor.0 = rf;
                    } else {
                        c.internal_replication_factor.1 = rf;
                    }
                }
                "transaction.state.log.min.isr" => {
                    c.txn_state_min_isr = int(k, v)?;
                    if c.txn_state_min_isr < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "replica.lag.time.max.ms" => {
                    c.replica_lag_time_max_ms = int(k, v)?;
                    if c.replica_lag_time_max_ms < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "num.replica.fetchers" => {
                    c.replica_fetch.fetchers = int(k, v)?;
                    if !(1..=64).contains(&c.replica_fetch.fetchers) {
                        return Err(invalid(k, v, "must be between 1 and 64"));
                    }
                }
                "replica.fetch.wait.max.ms" => {
                    c.replica_fetch.wait_max_ms = int(k, v)?;
                    if c.replica_fetch.wait_max_ms < 0 {
                        return Err(invalid(k, v, "must not be negative"));
                    }
                }
                "replica.fetch.max.bytes" => {
                    c.replica_fetch.max_bytes = int(k, v)?;
                    if c.replica_fetch.max_bytes < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "replica.fetch.backoff.ms" => c.replica_fetch.backoff_ms = int(k, v)?,
                "replica.fetch.response.max.bytes" => {
                    c.replica_fetch.response_max_bytes = int(k, v)?;
                    if c.replica_fetch.response_max_bytes < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                k if crate::compression::KEYS.contains(&k) => {
                    c.compression.set(k, v).map_err(|why| invalid(k, v, why))?
                }
                "unclean.leader.election.enable" => c.unclean_leader_election = boolean(k, v)?,
                "auto.leader.rebalance.enable" => c.auto_leader_rebalance = boolean(k, v)?,
                "leader.imbalance.check.interval.seconds" => {
                    let secs: i64 = int(k, v)?;
                    if secs < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                    c.leader_imbalance_check_interval_ms = secs * 1000;
                }
                "leader.imbalance.per.broker.percentage" => {
                    c.leader_imbalance_percent = int(k, v)?;
                    if c.leader_imbalance_percent > 100 {
                        return Err(invalid(k, v, "must be between 0 and 100"));
                    }
                }
                "auto.create.topics.enable" => c.auto_create_topics_enable = boolean(k, v)?,
                "message.max.bytes" => {
                    c.message_max_bytes = int::<i32>(k, v)?.max(0) as usize;
                    c.log.max_message_bytes = c.message_max_bytes;
                }
                "socket.request.max.bytes" => {
                    let n: i32 = int(k, v)?;
                    if n < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                    c.socket_request_max_bytes = n as usize;
                }
                "min.insync.replicas" => c.min_insync_replicas = int(k, v)?,
                "log.retention.check.interval.ms" => c.log_retention_check_interval_ms = int(k, v)?,
                "log.flush.scheduler.interval.ms" => c.log_flush_scheduler_interval_ms = int(k, v)?,
                "log.flush.offset.checkpoint.interval.ms" => {
                    c.log_flush_offset_checkpoint_interval_ms = int(k, v)?
                }
                "log.retention.ms" | "log.retention.minutes" | "log.retention.hours" => {
                    let (rank, factor) = match k {
                        "log.retention.ms" => (3, 1),
                        "log.retention.minutes" => (2, 60_000),
                        _ => (1, 3_600_000),
                    };
                    let n: i64 = int(k, v)?;
                    if n < -1 {
                        return Err(invalid(k, v, "must be -1 (unlimited) or more"));
                    }
                    if rank > retention_set_by {
                        retention_set_by = rank;
                        c.log.retention_ms = if n < 0 { -1 } else { n * factor };
                    }
                }
                "log.retention.bytes" => set_log(&mut c.log, "retention.bytes", k, v)?,
                "log.segment.bytes" => set_log(&mut c.log, "segment.bytes", k, v)?,
                "log.roll.ms" => set_log(&mut c.log, "segment.ms", k, v)?,
                "log.roll.hours" => {
                    let h: i64 = int(k, v)?;
                    set_log(&mut c.log, "segment.ms", k, &(h * 3_600_000).to_string())?
                }
                "log.index.interval.bytes" => set_log(&mut c.log, "index.interval.bytes", k, v)?,
                "log.index.size.max.bytes" => set_log(&mut c.log, "segment.index.bytes", k, v)?,
                "log.flush.interval.messages" => set_log(&mut c.log, "flush.messages", k, v)?,
                "log.flush.interval.ms" => set_log(&mut c.log, "flush.ms", k, v)?,
                "zero.copy.fetch.enable" => c.zero_copy_fetch = boolean(k, v)?,
                "log.cleanup.policy" => set_log(&mut c.log, "cleanup.policy", k, v)?,
                "log.cleaner.min.cleanable.ratio" => {
                    set_log(&mut c.log, "min.cleanable.dirty.ratio", k, v)?
                }
                "log.cleaner.min.compaction.lag.ms" => {
                    set_log(&mut c.log, "min.compaction.lag.ms", k, v)?
                }
                "log.cleaner.max.compaction.lag.ms" => {
                    set_log(&mut c.log, "max.compaction.lag.ms", k, v)?
                }
                "log.cleaner.delete.retention.ms" => {
                    set_log(&mut c.log, "delete.retention.ms", k, v)?
                }
                k if crate::cleaner::KEYS.contains(&k) => {
                    c.cleaner.set(k, v).map_err(|why| invalid(k, v, why))?
                }
                "log.message.timestamp.type" => {
                    set_log(&mut c.log, "message.timestamp.type", k, v)?
                }
                "offsets.topic.num.partitions" => {
                    c.groups.offsets_partitions = int(k, v)?;
                    if c.groups.offsets_partitions < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "offsets.topic.segment.bytes" | "transaction.state.log.segment.bytes" => {
                    let bytes: i32 = int(k, v)?;
                    // The least a topic's segment.bytes may be: one batch header.
                    let min = strom_storage::batch::HEADER_LEN as i32;
                    if bytes < min {
                        return Err(invalid(k, v, format!("must be at least {min}")));
                    }
                    if k.starts_with("offsets") {
                        c.internal_segment_bytes.0 = bytes;
                    } else {
                        c.internal_segment_bytes.1 = bytes;
                    }
                }
                "offsets.retention.minutes" => {
                    c.groups.offsets_retention_ms = int::<u64>(k, v)? * 60_000
                }
                "offset.metadata.max.bytes" => c.groups.offset_metadata_max_bytes = int(k, v)?,
                "group.min.session.timeout.ms" => {
                    c.groups.group.min_session_timeout_ms = int(k, v)?
                }
                "group.max.session.timeout.ms" => {
                    c.groups.group.max_session_timeout_ms = int(k, v)?
                }
                "group.initial.rebalance.delay.ms" => {
                    c.groups.group.initial_rebalance_delay_ms = int(k, v)?
                }
                "group.max.size" => {
                    let n: i32 = int(k, v)?;
                    if n < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                    c.groups.group.max_size = n as usize;
                }
                "transaction.state.log.num.partitions" => {
                    c.txns.partitions = int(k, v)?;
                    if c.txns.partitions < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "transaction.max.timeout.ms" => {
                    c.txns.max_timeout_ms = int(k, v)?;
                    if c.txns.max_timeout_ms < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                    c.txns.abort_interval_ms = int(k, v)?;
                    if c.txns.abort_interval_ms < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "transactional.id.expiration.ms" => {
                    c.txns.id_expiration_ms = int(k, v)?;
                    if c.txns.id_expiration_ms < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "offsets.retention.check.interval.ms" => {
                    c.offsets_retention_check_interval_ms = int(k, v)?
                }
                "producer.id.expiration.ms" => {
                    c.producer_id_expiration_ms = int(k, v)?;
                    if c.producer_id_expiration_ms < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                "producer.id.expiration.check.interval.ms" => {
                    c.producer_id_expiration_check_interval_ms = int(k, v)?;
                    if c.producer_id_expiration_check_interval_ms < 1 {
                        return Err(invalid(k, v, "must be at least 1"));
                    }
                }
                _ if ACCEPTED.contains(&k) => {}
                _ => warnings.push(format!("unknown config {k} is ignored")),
            }
        }
        // Kafka's rule: a follower's fetch must come back before it would count as lagging.
        if c.replica_fetch.wait_max_ms as i64 >= c.replica_lag_time_max_ms {
            return Err(invalid(
                "replica.fetch.wait.max.ms",
                &c.replica_fetch.wait_max_ms.to_string(),
                format!(
                    "must be less than replica.lag.time.max.ms ({}), or followers would drop out of the ISR while they wait",
                    c.replica_lag_time_max_ms
                ),
            ));
        }
        crate::listener_config::apply(&mut c, props)?;
        c.given = props.clone();
        Ok((c, warnings))
    }
}

fn set_log(
    log: &mut LogConfig,
    topic_key: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    log.set(topic_key, value)
        .map_err(|e| invalid(key, value, e.to_string()))
}

/// Parses Java properties text: `key=value`, `key: value` or `key value`; `#` and `!`
/// comments; a trailing backslash continues the line.
pub fn parse_properties(text: &str, path: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    let mut pending = String::new();
    let mut start_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if pending.is_empty() {
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            start_line = i + 1;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let split = entry
            .find(['=', ':'])
            .or_else(|| entry.find(char::is_whitespace));
        let Some(at) = split else {
            return Err(ConfigError::Syntax {
                path: path.into(),
                line: start_line,
                text: entry,
            });
        };
        let key = entry[..at].trim().to_string();
        let value = entry[at + 1..].trim().to_string();
        if key.is_empty() {
            return Err(ConfigError::Syntax {
                path: path.into(),
                line: start_line,
                text: entry,
            });
        }
        out.insert(key, value);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
