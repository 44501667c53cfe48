//! The broker's listeners, from Kafka's `listeners`, `advertised.listeners`,
//! `listener.security.protocol.map`, `controller.listener.names` and
//! `inter.broker.listener.name`: which it serves, where each is advertised, and which one the
//! brokers use among themselves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{BrokerConfig, ConfigError, invalid};
use crate::kraft_config as kraft;

/// A listener for clients and brokers: its name, where it binds, and the address it is
/// advertised at (from `advertised.listeners`, else its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerListener {
    pub name: String,
    pub bind: SocketAddr,
    pub host: String,
    pub port: u16,
}

/// Sets `c`'s listeners from `props`, checked by Kafka's rules between the keys.
pub(crate) fn apply(
    c: &mut BrokerConfig,
    props: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let protocols = kraft::protocol_map(
        props
            .get("listener.security.protocol.map")
            .map(String::as_str),
    )?;
    c.kraft.controller_listener_names = props
        .get("controller.listener.names")
        .map(|v| {
            v.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let listeners = match props.get("listeners") {
        Some(v) => kraft::parse_listeners("listeners", v, &protocols)?,
        None => Vec::new(),
    };
    kraft::check(&c.kraft, c.node_id, &listeners)?;
    let is_controller = |l: &&kraft::Listener| c.kraft.controller_listener_names.contains(&l.name);
    c.kraft.controller_listener = listeners.iter().find(is_controller).cloned();
    let advertised: Vec<kraft::Listener> = match props.get("advertised.listeners") {
        Some(v) => kraft::parse_listeners("advertised.listeners", v, &protocols)?,
        None => Vec::new(),
    };
    let broker_listeners: Vec<&kraft::Listener> =
        listeners.iter().filter(|l| !is_controller(l)).collect();
    if !broker_listeners.is_empty() {
        c.listeners = Vec::new();
        for l in &broker_listeners {
            let bind = resolve("listeners", &l.host, l.port)?;
            let (host, port) = match advertised.iter().find(|a| a.name == l.name) {
                Some(a) => (a.host.clone(), a.port),
                None => (advertised_host_of(bind), bind.port()),
            };
            c.listeners.push(BrokerListener {
                name: l.name.clone(),
                bind,
                host,
                port,
            });
        }
    } else if let Some(a) = advertised
        .iter()
        .find(|a| !c.kraft.controller_listener_names.contains(&a.name))
    {
        // The default listener, advertised as given.
        c.listeners[0].host = a.host.clone();
        c.listeners[0].port = a.port;
    }
    if let Some(a) = advertised
        .iter()
        .find(|a| !is_controller(a) && !c.listeners.iter().any(|l| l.name == a.name))
    {
        return Err(invalid(
            "advertised.listeners",
            props.get("advertised.listeners").map_or("", String::as_str),
            format!(
                "{} is not in listeners: only a listener can be advertised",
                a.name
            ),
        ));
    }
    c.inter_broker_listener = match props.get("inter.broker.listener.name") {
        Some(name) => {
            let name = name.trim();
            if !c.listeners.iter().any(|l| l.name == name) {
                return Err(invalid(
                    "inter.broker.listener.name",
                    name,
                    format!(
                        "must be one of the broker's listeners ({})",
                        c.listeners
                            .iter()
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            name.to_string()
        }
        None => c
            .listeners
            .iter()
            .find(|l| l.name == "PLAINTEXT")
            .unwrap_or(&c.listeners[0])
            .name
            .clone(),
    };
    let inter = c
        .listeners
        .iter()
        .find(|l| l.name == c.inter_broker_listener)
        .cloned()
        .unwrap_or_else(|| c.listeners[0].clone());
    c.listener = inter.bind;
    c.advertised_host = inter.host;
    c.advertised_port = inter.port;
    Ok(())
}

impl BrokerConfig {
    /// Every listener as advertised, for this broker's registration.
    pub fn endpoints(&self) -> Vec<strom_metadata::image::Endpoint> {
        self.listeners
            .iter()
            .map(|l| strom_metadata::image::Endpoint {
                name: l.name.clone(),
                host: l.host.clone(),
                port: l.port,
            })
            .collect()
    }
}

/// The host a listener bound to `bind` is advertised as when `advertised.listeners` does
/// not say: its address, or 127.0.0.1 for every interface.
fn advertised_host_of(bind: SocketAddr) -> String {
    if bind.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bind.ip().to_string()
    }
}

/// The address to bind for `host` (empty: every interface) and `port`.
fn resolve(key: &str, host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    let ip = if host.is_empty() { "0.0.0.0" } else { host };
    let addr = format!("{ip}:{port}");
    match addr.parse() {
        Ok(a) => Ok(a),
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| invalid(key, &addr, "cannot resolve the host")),
    }
}
