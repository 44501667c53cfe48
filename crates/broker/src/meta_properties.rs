//! `meta.properties`, the identity of a data directory, as Kafka writes it: `version=1`,
//! `cluster.id`, `node.id` and `directory.id`. `strom storage format` writes it into every
//! log dir before a cluster node first starts; the embedded single node writes its own.

use std::path::Path;

use crate::config::parse_properties;
use crate::errors::{BrokerError, io};

pub const FILE: &str = "meta.properties";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    pub cluster_id: String,
    pub node_id: i32,
    /// Absent in directories written by strom before directories had ids.
    pub directory_id: Option<String>,
}

/// The identity of `dir`, if it has been formatted.
pub fn read(dir: &Path) -> Result<Option<MetaProperties>, BrokerError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let props = parse_properties(&text, &path.display().to_string())
        .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
    let bad = |what: &str| {
        BrokerError::InvalidConfig(format!(
            "{} has no valid {what}: restore it, or format the directory again",
            path.display()
        ))
    };
    Ok(Some(MetaProperties {
        cluster_id: props
            .get("cluster.id")
            .cloned()
            .ok_or_else(|| bad("cluster.id"))?,
        node_id: props
            .get("node.id")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("node.id"))?,
        directory_id: props.get("directory.id").cloned(),
    }))
}

/// Writes `dir`'s identity (atomically), creating the directory.
pub fn write(dir: &Path, m: &MetaProperties) -> Result<(), BrokerError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut text = format!(
        "#\n#Written by strom\nversion=1\ncluster.id={}\nnode.id={}\n",
        m.cluster_id, m.node_id
    );
    if let Some(d) = &m.directory_id {
        text.push_str(&format!("directory.id={d}\n"));
    }
    let path = dir.join(FILE);
    crate::broker::write_file_atomically(&path, &text)
        .map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_damaged_ones_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let m = MetaProperties {
            cluster_id: strom_metadata::uuid::random(),
            node_id: 3,
            directory_id: Some(strom_metadata::uuid::random()),
        };
        write(dir.path(), &m).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m));
        std::fs::write(dir.path().join(FILE), "version=1\nnode.id=x\n").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cluster.id") && e.contains("format"), "{e}");
    }
}
