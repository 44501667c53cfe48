//! Dynamic broker configs (Kafka's AlterConfigs and IncrementalAlterConfigs on a BROKER
//! resource): the topic defaults a broker reads from server.properties, changed at runtime
//! for one broker or for all of them (the resource named ""), kept in the metadata log so
//! that every broker applies them and they survive restarts. Which keys may change is
//! Kafka's rule for the log defaults: each broker synonym of a topic config.

use std::collections::BTreeMap;

use strom_controller::quorum::active::BrokerRequest;
use strom_metadata::errors;
use strom_metadata::image::{CLUSTER_DEFAULT, Record};

use crate::broker::Broker;
use crate::topic_config::{TopicConfig, all_keys};

/// Broker keys of topic defaults that other keys than the synonyms also set.
const OTHER_FORMS: &[&str] = &[
    "log.retention.minutes",
    "log.retention.hours",
    "log.roll.hours",
];

/// Whether `key` may be changed at runtime. unclean.leader.election.enable is left out:
/// the controller reads it at start.
pub fn is_dynamic(key: &str) -> bool {
    key != "unclean.leader.election.enable"
        && (OTHER_FORMS.contains(&key)
            || all_keys().any(|k| TopicConfig::broker_synonym(k) == Some(key)))
}

/// The broker id a BROKER resource names: "" is every broker's default.
fn resource_id(name: &str) -> Result<i32, (i16, String)> {
    if name.is_empty() {
        return Ok(CLUSTER_DEFAULT);
    }
    name.parse::<i32>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            (
                errors::INVALID_REQUEST,
                format!("broker resource {name:?} is neither a broker id nor \"\" (every broker)"),
            )
        })
}

impl Broker {
    /// The dynamic configs of the BROKER resource `name`, as the metadata log has them.
    pub fn dynamic_broker_configs(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, String>, (i16, String)> {
        let id = resource_id(name)?;
        Ok(self
            .latest_image()
            .broker_configs
            .get(&id)
            .cloned()
            .unwrap_or_default())
    }

    /// Replaces the dynamic configs of the BROKER resource `name` with `configs`, checked
    /// first (keys that may change at runtime, values this broker accepts); committed by
    /// the active controller unless `validate_only`.
    /// With `expected`, only if the resource's dynamic configs are still those (an
    /// incremental change made from them): INVALID_UPDATE_VERSION otherwise.
    pub async fn set_broker_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        expected: Option<BTreeMap<String, String>>,
    ) -> Result<(), (i16, String)> {
        let id = resource_id(name)?;
        let fixed: Vec<&str> = configs
            .keys()
            .map(String::as_str)
            .filter(|k| !is_dynamic(k))
            .collect();
        if !fixed.is_empty() {
            return Err((
                errors::INVALID_REQUEST,
                format!(
                    "cannot update these configs dynamically: {}; set them in server.properties and restart",
                    fixed.join(", ")
                ),
            ));
        }
        // Checked as they would apply here: another broker's are tried as this one's own
        // (its server.properties may differ, but a value no broker accepts is refused).
        let mut all = self.image().broker_configs.clone();
        let as_here = if id == CLUSTER_DEFAULT {
            id
        } else {
            self.config.node_id
        };
        all.insert(as_here, configs.clone());
        self.with_dynamic_configs(&all)
            .map_err(|e| (errors::INVALID_CONFIG, e.to_string()))?;
        if validate_only {
            return Ok(());
        }
        let done = if self.metadata_log.has_controller() {
            let req = BrokerRequest::SetBrokerConfigs {
                broker: id,
                configs,
                expected,
            };
            self.changed_by_controller(name, req).await
        } else {
            self.commit(vec![Record::BrokerConfigs {
                broker: id,
                configs,
            }])
            .await
        };
        done.map_err(|e| (crate::handlers::admin::broker_error(&e), e.to_string()))
    }
}
