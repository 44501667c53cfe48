//! KRaft's settings, with Kafka's key names and rules: the node's roles, the controller
//! quorum's voters, which listeners are the controller's, where the metadata log lives, and
//! the liveness timers. Parsed and checked here; the quorum and broker registration use them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::ConfigError;

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub broker: bool,
    pub controller: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

/// One entry of `listeners`: its name, host (empty: every interface) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KraftConfig {
    /// process.roles; the embedded default is both.
    pub roles: Roles,
    /// controller.quorum.voters; empty means this node alone (the embedded default).
    pub voters: Vec<Voter>,
    /// controller.listener.names
    pub controller_listener_names: Vec<String>,
    /// The listener of `listeners` the quorum speaks on, when this node is a controller.
    pub controller_listener: Option<Listener>,
    /// metadata.log.dir; the first log dir when unset.
    pub metadata_log_dir: Option<PathBuf>,
    /// broker.rack
    pub rack: Option<String>,
    /// broker.heartbeat.interval.ms
    pub heartbeat_interval_ms: u64,
    /// broker.session.timeout.ms
    pub session_timeout_ms: u64,
    /// controller.quorum.election.timeout.ms
    pub election_timeout_ms: u64,
    /// controller.quorum.fetch.timeout.ms
    pub fetch_timeout_ms: u64,
    /// metadata.log.max.record.bytes.between.snapshots
    pub snapshot_bytes: u64,
}

impl Default for KraftConfig {
    fn default() -> Self {
        KraftConfig {
            roles: Roles {
                broker: true,
                controller: true,
            },
            voters: Vec::new(),
            controller_listener_names: Vec::new(),
            controller_listener: None,
            metadata_log_dir: None,
            rack: None,
            heartbeat_interval_ms: 2_000,
            session_timeout_ms: 9_000,
            election_timeout_ms: 1_000,
            fetch_timeout_ms: 2_000,
            snapshot_bytes: 20 << 20,
        }
    }
}

impl KraftConfig {
    /// Whether the quorum has other voters than this node: then its directories must be
    /// formatted first (`strom storage format`), as Kafka's must.
    pub fn multi_node(&self, node_id: i32) -> bool {
        self.voters.iter().any(|v| v.id != node_id)
    }
}

pub fn parse_roles(key: &str, value: &str) -> Result<Roles, ConfigError> {
    let mut roles = Roles {
        broker: false,
        controller: false,
    };
    for r in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        match r {
            "broker" => roles.broker = true,
            "controller" => roles.controller = true,
            _ => {
                return Err(invalid(
                    key,
                    value,
                    format!("unknown role {r:?}: broker and controller are the roles"),
                ));
            }
        }
    }
    if !roles.broker && !roles.controller {
        return Err(invalid(key, value, "name broker, controller or both"));
    }
    Ok(roles)
}

/// `1@host:port,2@host:port,...`
pub fn parse_voters(key: &str, value: &str) -> Result<Vec<Voter>, ConfigError> {
    let mut out: Vec<Voter> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || invalid(key, value, format!("{entry:?} is not id@host:port"));
        let (id, addr) = entry.split_once('@').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let voter = Voter {
            id: id.parse().map_err(|_| bad())?,
            host: host.trim_matches(['[', ']']).to_string(),
            port: port.parse().map_err(|_| bad())?,
        };
        if out.iter().any(|v| v.id == voter.id) {
            return Err(invalid(
                key,
                value,
                format!("voter {} is listed twice", voter.id),
            ));
        }
        out.push(voter);
    }
    Ok(out)
}

/// `NAME://host:port,...`, each name's protocol looked up in `protocols`
/// (listener.security.protocol.map, over Kafka's defaults).
pub fn parse_listeners(
    key: &str,
    value: &str,
    protocols: &BTreeMap<String, String>,
) -> Result<Vec<Listener>, ConfigError> {
    let mut out: Vec<Listener> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, rest) = entry
            .split_once("://")
            .ok_or_else(|| invalid(key, value, "expected NAME://host:port"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| invalid(key, value, "expected NAME://host:port"))?;
        let protocol = protocols.get(name).ok_or_else(|| {
            invalid(
                key,
                value,
                format!("listener {name} has no security protocol: add {name}:PLAINTEXT to listener.security.protocol.map"),
            )
        })?;
        if protocol != "PLAINTEXT" {
            return Err(invalid(
                key,
                value,
                format!(
                    "listener {name} uses {protocol}: only PLAINTEXT listeners are supported so far"
                ),
            ));
        }
        if out.iter().any(|l| l.name == name) {
            return Err(invalid(
                key,
                value,
                format!("listener {name} is listed twice"),
            ));
        }
        out.push(Listener {
            name: name.to_string(),
            host: host.trim_matches(['[', ']']).to_string(),
            port: port
                .parse()
                .map_err(|_| invalid(key, value, format!("bad port in {entry:?}")))?,
        });
    }
    Ok(out)
}

/// Kafka's default listener.security.protocol.map, with `given` over it.
pub fn protocol_map(given: Option<&str>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map: BTreeMap<String, String> = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
        .iter()
        .map(|p| (p.to_string(), p.to_string()))
        .collect();
    if let Some(v) = given {
        for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, protocol) = entry.split_once(':').ok_or_else(|| {
                invalid(
                    "listener.security.protocol.map",
                    v,
                    format!("{entry:?} is not NAME:PROTOCOL"),
                )
            })?;
            map.insert(name.trim().to_string(), protocol.trim().to_string());
        }
    }
    Ok(map)
}

/// Kafka's rules between the keys: a controller is a voter and has a controller listener;
/// a broker's listeners are not the controller's.
pub fn check(k: &KraftConfig, node_id: i32, listeners: &[Listener]) -> Result<(), ConfigError> {
    let names = k.controller_listener_names.join(",");
    for name in &k.controller_listener_names {
        if k.roles.controller && !listeners.iter().any(|l| &l.name == name) {
            return Err(invalid(
                "controller.listener.names",
                &names,
                format!(
                    "{name} is not in listeners: a controller listens on its controller listener"
                ),
            ));
        }
        if !k.roles.controller && listeners.iter().any(|l| &l.name == name) {
            return Err(invalid(
                "listeners",
                &names,
                format!("{name} is a controller listener, and this node has no controller role"),
            ));
        }
    }
    if k.multi_node(node_id) {
        if k.controller_listener_names.is_empty() {
            return Err(invalid(
                "controller.listener.names",
                "",
                "must be set when controller.quorum.voters names other nodes",
            ));
        }
        let is_voter = k.voters.iter().any(|v| v.id == node_id);
        if k.roles.controller && !is_voter {
            return Err(invalid(
                "controller.quorum.voters",
                &k.voters
                    .iter()
                    .map(|v| format!("{}@{}:{}", v.id, v.host, v.port))
                    .collect::<Vec<_>>()
                    .join(","),
                format!("node.id {node_id} has the controller role but is not a voter"),
            ));
        }
    }
    if k.roles.broker
        && !listeners
            .iter()
            .any(|l| !k.controller_listener_names.contains(&l.name))
        && !listeners.is_empty()
    {
        return Err(invalid(
            "listeners",
            &listeners
                .iter()
                .map(|l| l.name.clone())
                .collect::<Vec<_>>()
                .join(","),
            "a broker needs a listener for clients besides the controller's",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(v: &str, map: Option<&str>) -> Result<Vec<Listener>, ConfigError> {
        parse_listeners("listeners", v, &protocol_map(map).unwrap())
    }

    #[test]
    fn roles_voters_and_listeners_parse_as_kafka_writes_them() {
        assert_eq!(
            parse_roles("process.roles", "broker,controller").unwrap(),
            Roles {
                broker: true,
                controller: true
            }
        );
        assert!(parse_roles("process.roles", "broker,zookeeper").is_err());
        assert!(parse_roles("process.roles", "").is_err());
        let v = parse_voters("controller.quorum.voters", "1@a:9093, 2@[::1]:9093").unwrap();
        assert_eq!(
            v,
            vec![
                Voter {
                    id: 1,
                    host: "a".into(),
                    port: 9093
                },
                Voter {
                    id: 2,
                    host: "::1".into(),
                    port: 9093
                }
            ]
        );
        for bad in ["1@a", "x@a:1", "1@a:1,1@b:2", "a:1"] {
            assert!(
                parse_voters("controller.quorum.voters", bad).is_err(),
                "{bad}"
            );
        }
        let l = listeners(
            "PLAINTEXT://127.0.0.1:9092,CONTROLLER://:9093",
            Some("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
        )
        .unwrap();
        assert_eq!(
            l[1],
            Listener {
                name: "CONTROLLER".into(),
                host: "".into(),
                port: 9093
            }
        );
        let err = listeners("PLAINTEXT://:9092,CONTROLLER://:9093", None).unwrap_err();
        assert!(err.to_string().contains("CONTROLLER:PLAINTEXT"), "{err}");
        assert!(
            listeners("SSL://:9093", None)
                .unwrap_err()
                .to_string()
                .contains("only PLAINTEXT")
        );
    }

    #[test]
    fn kafkas_rules_between_the_keys() {
        let l = listeners(
            "PLAINTEXT://:9092,CONTROLLER://:9093",
            Some("CONTROLLER:PLAINTEXT"),
        )
        .unwrap();
        let mut k = KraftConfig {
            voters: parse_voters("v", "1@a:9093,2@b:9093,3@c:9093").unwrap(),
            controller_listener_names: vec!["CONTROLLER".into()],
            ..KraftConfig::default()
        };
        assert!(check(&k, 1, &l).is_ok());
        assert!(k.multi_node(1));
        // A controller that is not a voter.
        assert!(
            check(&k, 7, &l)
                .unwrap_err()
                .to_string()
                .contains("not a voter")
        );
        // A broker only must not listen on the controller's listener.
        k.roles = Roles {
            broker: true,
            controller: false,
        };
        assert!(check(&k, 7, &l).is_err());
        let broker_only = listeners("PLAINTEXT://:9092", None).unwrap();
        assert!(check(&k, 7, &broker_only).is_ok());
        // Other voters but no controller listener names.
        k.controller_listener_names.clear();
        assert!(check(&k, 7, &broker_only).is_err());
        // The embedded default: no voters, both roles, one listener.
        assert!(check(&KraftConfig::default(), 0, &broker_only).is_ok());
        assert!(!KraftConfig::default().multi_node(0));
    }
}
