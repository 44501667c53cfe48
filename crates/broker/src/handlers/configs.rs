//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics and brokers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::alter_configs_request::AlterConfigsRequest;
use krabka_protocol::owned::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use krabka_protocol::owned::describe_configs_request::DescribeConfigsRequest;
use krabka_protocol::owned::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use krabka_protocol::owned::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use krabka_protocol::owned::incremental_alter_configs_response as incremental;

use super::admin::broker_error;
use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};
use crate::topic_config::{Source, TopicConfig, all_keys};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

/// Kafka's ConfigType numbering, for DescribeConfigs v3+.
fn config_type(key: &str) -> i8 {
    const BOOLEAN: i8 = 1;
    const STRING: i8 = 2;
    const INT: i8 = 3;
    const LONG: i8 = 5;
    const DOUBLE: i8 = 6;
    const LIST: i8 = 7;
    match key {
        "segment.bytes"
        | "index.interval.bytes"
        | "segment.index.bytes"
        | "max.message.bytes"
        | "min.insync.replicas" => INT,
        "segment.ms"
        | "retention.ms"
        | "retention.bytes"
        | "flush.messages"
        | "flush.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "delete.retention.ms" => LONG,
        "min.cleanable.dirty.ratio" => DOUBLE,
        "cleanup.policy" => LIST,
        "unclean.leader.election.enable" => BOOLEAN,
        _ => STRING,
    }
}

fn result(resource_type: i8, name: String) -> DescribeConfigsResult {
    DescribeConfigsResult {
        resource_type,
        resource_name: name,
        ..Default::default()
    }
}

fn wanted(keys: &Option<Vec<String>>, key: &str) -> bool {
    keys.as_ref().is_none_or(|k| k.iter().any(|w| w == key))
}

fn describe_topic(
    broker: &Broker,
    name: String,
    keys: &Option<Vec<String>>,
    synonyms: bool,
) -> DescribeConfigsResult {
    let mut r = result(TOPIC, name.clone());
    let Some(topic) = broker.topic(&name) else {
        r.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
        r.error_message = Some(format!("unknown topic {name}"));
        return r;
    };
    let config = topic.config.read().unwrap();
    let broker_defaults = broker.topic_defaults();
    let defaults = TopicConfig::new(&broker_defaults, BTreeMap::new()).expect("defaults are valid");
    let image = broker.image();
    for key in all_keys().filter(|k| wanted(keys, k)) {
        let Some((value, source)) = config.describe(&broker_defaults, key) else {
            continue;
        };
        let source = match source {
            Source::DynamicTopic => source,
            _ => dynamic_source(broker, &image, key).unwrap_or(source),
        };
        let mut entry = DescribeConfigsResourceResult {
            name: key.to_string(),
            value: Some(value.clone()),
            read_only: false,
            config_source: source as i8,
            is_sensitive: false,
            config_type: config_type(key),
            documentation: None,
            ..Default::default()
        };
        if synonyms {
            if source == Source::DynamicTopic {
                entry.synonyms.push(DescribeConfigsSynonym {
                    name: key.to_string(),
                    value: Some(value),
                    source: Source::DynamicTopic as i8,
                    ..Default::default()
                });
            }
            if let Some((default, default_source)) = defaults.describe(&broker_defaults, key) {
                let default_source = dynamic_source(broker, &image, key).unwrap_or(default_source);
                let synonym = TopicConfig::broker_synonym(key).unwrap_or(key);
                entry.synonyms.push(DescribeConfigsSynonym {
                    name: synonym.to_string(),
                    value: Some(default),
                    source: default_source as i8,
                    ..Default::default()
                });
            }
        }
        r.configs.push(entry);
    }
    r
}

/// Where the broker default of topic config `key` comes from when the metadata log sets
/// it: this broker's dynamic configs, or every broker's.
fn dynamic_source(
    broker: &Broker,
    image: &strom_metadata::image::MetadataImage,
    key: &str,
) -> Option<Source> {
    let broker_key = TopicConfig::broker_synonym(key)?;
    let has = |id: i32| {
        image
            .broker_configs
            .get(&id)
            .is_some_and(|c| c.contains_key(broker_key))
    };
    if has(broker.config.node_id) {
        Some(Source::DynamicBroker)
    } else if has(strom_metadata::image::CLUSTER_DEFAULT) {
        Some(Source::DynamicDefaultBroker)
    } else {
        None
    }
}

/// DescribeConfigs of the BROKER resource "": the dynamic configs every broker shares.
fn describe_cluster_defaults(broker: &Broker, keys: &Option<Vec<String>>) -> DescribeConfigsResult {
    let mut r = result(BROKER, String::new());
    for (key, value) in broker
        .dynamic_broker_configs("")
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| wanted(keys, k))
    {
        r.configs.push(DescribeConfigsResourceResult {
            name: key,
            value: Some(value),
            read_only: false,
            config_source: Source::DynamicDefaultBroker as i8,
            is_sensitive: false,
            ..Default::default()
        });
    }
    r
}

fn describe_broker(
    broker: &Broker,
    name: String,
    keys: &Option<Vec<String>>,
) -> DescribeConfigsResult {
    if name.is_empty() {
        return describe_cluster_defaults(broker, keys);
    }
    let mut r = result(BROKER, name.clone());
    if name != broker.config.node_id.to_string() {
        r.error_code = errors::INVALID_REQUEST;
        r.error_message = Some(format!(
            "this is broker {}, not {name}",
            broker.config.node_id
        ));
        return r;
    }
    let c = &broker.config;
    let dynamic = broker.topic_defaults();
    let defaults = TopicConfig::new(&dynamic, BTreeMap::new()).expect("defaults are valid");
    let own = broker.dynamic_broker_configs(&name).unwrap_or_default();
    let shared = broker.dynamic_broker_configs("").unwrap_or_default();
    let mut values: Vec<(String, String)> = vec![
        ("node.id".into(), c.node_id.to_string()),
        (
            "listeners".into(),
            c.listeners
                .iter()
                .map(|l| format!("{}://{}", l.name, l.bind))
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "advertised.listeners".into(),
            c.listeners
                .iter()
                .map(|l| format!("{}://{}:{}", l.name, l.host, l.port))
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "inter.broker.listener.name".into(),
            c.inter_broker_listener.clone(),
        ),
        ("log.dirs".into(), c.log_dir.display().to_string()),
        ("num.partitions".into(), c.num_partitions.to_string()),
        (
            "default.replication.factor".into(),
            c.default_replication_factor.to_string(),
        ),
        (
            "auto.create.topics.enable".into(),
            c.auto_create_topics_enable.to_string(),
        ),
        (
            "socket.request.max.bytes".into(),
            c.socket_request_max_bytes.to_string(),
        ),
        (
            "log.retention.check.interval.ms".into(),
            c.log_retention_check_interval_ms.to_string(),
        ),
    ];
    // Groups, transactions and producers: what this broker runs with, under Kafka's keys.
    let g = &c.groups;
    let t = &c.txns;
    for (key, value) in [
        (
            "log.flush.scheduler.interval.ms",
            c.log_flush_scheduler_interval_ms.to_string(),
        ),
        (
            "log.flush.offset.checkpoint.interval.ms",
            c.log_flush_offset_checkpoint_interval_ms.to_string(),
        ),
        (
            "group.min.session.timeout.ms",
            g.group.min_session_timeout_ms.to_string(),
        ),
        (
            "group.max.session.timeout.ms",
            g.group.max_session_timeout_ms.to_string(),
        ),
        (
            "group.initial.rebalance.delay.ms",
            g.group.initial_rebalance_delay_ms.to_string(),
        ),
        ("group.max.size", g.group.max_size.to_string()),
        (
            "offsets.topic.num.partitions",
            g.offsets_partitions.to_string(),
        ),
        (
            "offsets.topic.segment.bytes",
            c.internal_segment_bytes.0.to_string(),
        ),
        (
            "offsets.retention.minutes",
            (g.offsets_retention_ms / 60_000).to_string(),
        ),
        (
            "offsets.retention.check.interval.ms",
            c.offsets_retention_check_interval_ms.to_string(),
        ),
        (
            "offset.metadata.max.bytes",
            g.offset_metadata_max_bytes.to_string(),
        ),
        (
            "transaction.state.log.num.partitions",
            t.partitions.to_string(),
        ),
        (
            "transaction.state.log.segment.bytes",
            c.internal_segment_bytes.1.to_string(),
        ),
        ("transaction.max.timeout.ms", t.max_timeout_ms.to_string()),
        (
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            t.abort_interval_ms.to_string(),
        ),
        (
            "transactional.id.expiration.ms",
            t.id_expiration_ms.to_string(),
        ),
        (
            "producer.id.expiration.ms",
            c.producer_id_expiration_ms.to_string(),
        ),
        (
            "producer.id.expiration.check.interval.ms",
            c.producer_id_expiration_check_interval_ms.to_string(),
        ),
        ("zero.copy.fetch.enable", c.zero_copy_fetch.to_string()),
    ] {
        values.push((key.to_string(), value));
    }
    for key in crate::cleaner::KEYS {
        if let Some(v) = c.cleaner.get(key) {
            values.push((key.to_string(), v));
        }
    }
    // The dynamic values first: the dedup below keeps the first of each key.
    for (key, value) in shared.iter().chain(&own) {
        values.insert(0, (key.clone(), value.clone()));
    }
    for key in all_keys() {
        if let (Some(broker_key), Some((v, _))) = (
            TopicConfig::broker_synonym(key),
            defaults.describe(&dynamic, key),
        ) {
            values.push((broker_key.to_string(), v));
        }
    }
    values.sort_by(|a, b| a.0.cmp(&b.0));
    values.dedup_by(|a, b| a.0 == b.0);
    for (key, value) in values.into_iter().filter(|(k, _)| wanted(keys, k)) {
        let source = if own.contains_key(&key) {
            Source::DynamicBroker
        } else if shared.contains_key(&key) {
            Source::DynamicDefaultBroker
        } else if c.given.contains_key(&key) {
            Source::StaticBroker
        } else {
            Source::Default
        };
        r.configs.push(DescribeConfigsResourceResult {
            name: key.clone(),
            value: Some(value),
            read_only: !crate::broker_configs::is_dynamic(&key),
            config_source: source as i8,
            is_sensitive: false,
            ..Default::default()
        });
    }
    r
}

pub fn describe(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: DescribeConfigsRequest = protocol::decode(&mut body, ctx.version)?;
    let results = req
        .resources
        .into_iter()
        .map(|res| match res.resource_type {
            TOPIC => describe_topic(
                broker,
                res.resource_name,
                &res.configuration_keys,
                req.include_synonyms,
            ),
            BROKER => describe_broker(broker, res.resource_name, &res.configuration_keys),
            other => {
                let mut r = result(other, res.resource_name);
                r.error_code = errors::INVALID_REQUEST;
                r.error_message = Some(format!("resource type {other} is not supported"));
                r
            }
        })
        .collect();
    respond(
        ctx,
        &DescribeConfigsResponse {
            results,
            ..Default::default()
        },
    )
}

/// Applies new configs to a TOPIC resource (its overrides) or a BROKER one (its dynamic
/// configs), or explains why not: (error code, message).
async fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    configs: Result<BTreeMap<String, String>, String>,
    validate_only: bool,
    expected: Option<BTreeMap<String, String>>,
) -> (i16, Option<String>) {
    let configs = match configs {
        Ok(c) => c,
        Err(msg) => return (errors::INVALID_CONFIG, Some(msg)),
    };
    let done = if resource_type == TOPIC {
        broker
            .set_topic_config(name, configs, validate_only, expected)
            .await
            .map_err(|e| (broker_error(&e), e.to_string()))
    } else {
        broker
            .set_broker_configs(name, configs, validate_only, expected)
            .await
    };
    match done {
        Ok(()) => (errors::NONE, None),
        Err((code, msg)) => (code, Some(msg)),
    }
}

pub async fn alter(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: AlterConfigsRequest = protocol::decode(&mut body, ctx.version)?;
    let mut responses = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        responses.push({
            let (code, msg) = match res.resource_type {
                // AlterConfigs replaces the whole set.
                TOPIC | BROKER => {
                    let configs = res
                        .configs
                        .iter()
                        .map(|c| match &c.value {
                            Some(v) => Ok((c.name.clone(), v.clone())),
                            None => Err(format!("config {} has no value", c.name)),
                        })
                        .collect();
                    alter_resource(
                        broker,
                        res.resource_type,
                        &res.resource_name,
                        configs,
                        req.validate_only,
                        None,
                    )
                    .await
                }
                other => (
                    errors::INVALID_REQUEST,
                    Some(format!("resource type {other} is not supported")),
                ),
            };
            AlterConfigsResourceResponse {
                error_code: code,
                error_message: msg,
                resource_type: res.resource_type,
                resource_name: res.resource_name,
                ..Default::default()
            }
        });
    }
    respond(
        ctx,
        &AlterConfigsResponse {
            responses,
            ..Default::default()
        },
    )
}

/// Applies SET / DELETE / APPEND / SUBTRACT to a topic's current overrides.
fn apply_incremental(
    current: &BTreeMap<String, String>,
    ops: &[krabka_protocol::owned::incremental_alter_configs_request::AlterableConfig],
) -> Result<BTreeMap<String, String>, String> {
    let mut next = current.clone();
    for op in ops {
        match op.config_operation {
            SET => {
                let v = op
                    .value
                    .clone()
                    .ok_or_else(|| format!("SET {} needs a value", op.name))?;
                next.insert(op.name.clone(), v);
            }
            DELETE => {
                next.remove(&op.name);
            }
            APPEND | SUBTRACT => {
                if config_type(&op.name) != 7 {
                    return Err(format!(
                        "{} is not a list: APPEND and SUBTRACT apply to lists only",
                        op.name
                    ));
                }
                let value = op.value.clone().unwrap_or_default();
                let mut items: Vec<String> = next
                    .get(&op.name)
                    .map(|v| {
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_else(|| vec!["delete".to_string()]);
                for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if op.config_operation == APPEND {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    } else {
                        items.retain(|i| i != item);
                    }
                }
                next.insert(op.name.clone(), items.join(","));
            }
            other => return Err(format!("unknown config operation {other}")),
        }
    }
    Ok(next)
}

/// How many times an incremental change is made again from newer metadata.
const INCREMENTAL_ATTEMPTS: usize = 5;

pub async fn incremental_alter(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    mut body: Bytes,
) -> HandlerResult {
    let req: IncrementalAlterConfigsRequest = protocol::decode(&mut body, ctx.version)?;
    let mut responses = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        responses.push({
            // Made from the configs this broker sees, which the controller checks are still
            // the current ones: when they are not (another change came first, or this
            // broker's metadata is behind), the change is made again from newer metadata.
            let mut outcome = (errors::NONE, None);
            for _ in 0..INCREMENTAL_ATTEMPTS {
                outcome = match res.resource_type {
                    TOPIC => match broker.latest_image().topic(&res.resource_name) {
                        None => (
                            errors::UNKNOWN_TOPIC_OR_PARTITION,
                            Some(format!("unknown topic {}", res.resource_name)),
                        ),
                        Some(t) => {
                            let current = t.configs.clone();
                            alter_resource(
                                broker,
                                TOPIC,
                                &res.resource_name,
                                apply_incremental(&current, &res.configs),
                                req.validate_only,
                                Some(current),
                            )
                            .await
                        }
                    },
                    BROKER => match broker.dynamic_broker_configs(&res.resource_name) {
                        Err((code, msg)) => (code, Some(msg)),
                        Ok(current) => {
                            alter_resource(
                                broker,
                                BROKER,
                                &res.resource_name,
                                apply_incremental(&current, &res.configs),
                                req.validate_only,
                                Some(current),
                            )
                            .await
                        }
                    },
                    other => (
                        errors::INVALID_REQUEST,
                        Some(format!("resource type {other} is not supported")),
                    ),
                };
                if outcome.0 != errors::INVALID_UPDATE_VERSION {
                    break;
                }
                broker
                    .newer_metadata(std::time::Duration::from_millis(500))
                    .await;
            }
            let (code, msg) = outcome;
            incremental::AlterConfigsResourceResponse {
                error_code: code,
                error_message: msg,
                resource_type: res.resource_type,
                resource_name: res.resource_name,
                ..Default::default()
            }
        });
    }
    respond(
        ctx,
        &incremental::IncrementalAlterConfigsResponse {
            responses,
            ..Default::default()
        },
    )
}
