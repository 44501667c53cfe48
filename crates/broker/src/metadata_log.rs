//! Where the broker's metadata changes are committed before it applies them. A change is
//! a list of metadata records; committing resolves with the image that includes them, and
//! only then does `Broker::commit` publish that image to the replicas and coordinators.
//!
//! `QuorumLog` is the controller quorum's Raft log (crates/controller): what `strom server`
//! runs on a controller. `ObserverLog` follows that log from a broker without the
//! controller role. `TopicFiles`, one properties file per topic, is what data directories written
//! before the quorum hold (read once, into the quorum, on first start) and what tests of the
//! broker alone use.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strom_controller::quorum::active::{BrokerAnswer, BrokerRequest};
use strom_controller::quorum::observer::Observer;

use strom_coordinator::host::BoxFuture;
use strom_metadata::image::{MetadataImage, Record, TopicInfo};

use crate::broker::{topic_id_hex, write_file_atomically};
use crate::errors::{BrokerError, io};

pub trait MetadataLog: Send + Sync {
    /// Commits `records`; resolves with the committed image that includes them.
    fn commit<'a>(
        &'a self,
        records: Vec<Record>,
    ) -> BoxFuture<'a, Result<Arc<MetadataImage>, BrokerError>>;

    /// Stops whatever runs behind the log.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The quorum behind the log, when there is one.
    fn quorum_status(&self) -> Option<strom_controller::quorum::QuorumStatus> {
        None
    }

    /// Whether there is a controller to register with.
    fn has_controller(&self) -> bool {
        false
    }

    /// Asks the active controller (broker registration and heartbeats), when there is one.
    fn call_controller(
        &self,
        _req: BrokerRequest,
        _timeout: Duration,
    ) -> Option<BoxFuture<'_, Result<BrokerAnswer, BrokerError>>> {
        None
    }

    /// Follows the committed image, when others can commit too.
    fn watch(&self) -> Option<tokio::sync::watch::Receiver<Arc<MetadataImage>>> {
        None
    }
}

/// The single node's topic store: one properties file per topic (id, partition count,
/// config overrides), rewritten when a commit changes the topic.
pub struct TopicFiles {
    dir: PathBuf,
    image: Mutex<Arc<MetadataImage>>,
}

impl TopicFiles {
    /// The store in `dir` (`<log dir>/.topics`), whose files make `image`.
    pub fn new(dir: PathBuf, image: Arc<MetadataImage>) -> Self {
        TopicFiles {
            dir,
            image: Mutex::new(image),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.properties"))
    }

    fn save(&self, t: &TopicInfo) -> Result<(), BrokerError> {
        let mut text = format!(
            "topic.id={}\npartitions={}\nreplication.factor=1\n",
            topic_id_hex(&t.id),
            t.partitions.len()
        );
        for (k, v) in &t.configs {
            text.push_str(&format!("config.{k}={v}\n"));
        }
        let path = self.file(&t.name);
        write_file_atomically(&path, &text).map_err(io(format!("writing {}", path.display())))
    }

    fn persist(&self, before: &MetadataImage, after: &MetadataImage) -> Result<(), BrokerError> {
        let shape = |t: &TopicInfo| (t.id, t.partitions.len(), t.configs.clone());
        for (name, t) in &after.topics {
            if before.topics.get(name).map(|b| shape(b)) != Some(shape(t)) {
                self.save(t)?;
            }
        }
        let gone: Vec<&String> = before
            .topics
            .keys()
            .filter(|n| !after.topics.contains_key(*n))
            .collect();
        for name in gone {
            let path = self.file(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("removing {}", path.display()))(e)),
            }
        }
        Ok(())
    }
}

impl MetadataLog for TopicFiles {
    fn commit<'a>(
        &'a self,
        records: Vec<Record>,
    ) -> BoxFuture<'a, Result<Arc<MetadataImage>, BrokerError>> {
        Box::pin(async move {
            let mut image = self.image.lock().unwrap();
            let (next, ignored) = image.apply(&records);
            for why in ignored {
                tracing::warn!("metadata record ignored: {why}");
            }
            self.persist(&image, &next)?;
            *image = Arc::new(next);
            Ok(image.clone())
        })
    }
}

/// The controller quorum's Raft log: a commit is a Raft entry, resolved once it is applied
/// to the quorum's image.
pub struct QuorumLog {
    pub quorum: strom_controller::quorum::Quorum,
}

impl MetadataLog for QuorumLog {
    fn commit<'a>(
        &'a self,
        records: Vec<Record>,
    ) -> BoxFuture<'a, Result<Arc<MetadataImage>, BrokerError>> {
        Box::pin(async move {
            self.quorum
                .commit(&records)
                .await
                .map_err(|e| BrokerError::MetadataLog(e.to_string()))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.quorum.shutdown())
    }

    fn quorum_status(&self) -> Option<strom_controller::quorum::QuorumStatus> {
        Some(self.quorum.status())
    }

    fn has_controller(&self) -> bool {
        true
    }

    fn call_controller(
        &self,
        req: BrokerRequest,
        timeout: Duration,
    ) -> Option<BoxFuture<'_, Result<BrokerAnswer, BrokerError>>> {
        Some(Box::pin(async move {
            self.quorum
                .call_controller(req, timeout)
                .await
                .map_err(|e| BrokerError::MetadataLog(e.to_string()))
        }))
    }

    fn watch(&self) -> Option<tokio::sync::watch::Receiver<Arc<MetadataImage>>> {
        Some(self.quorum.watch())
    }
}

/// A broker outside the quorum: it follows the voters' image, and commits through them.
pub struct ObserverLog {
    pub observer: Arc<Observer>,
}

impl MetadataLog for ObserverLog {
    fn commit<'a>(
        &'a self,
        records: Vec<Record>,
    ) -> BoxFuture<'a, Result<Arc<MetadataImage>, BrokerError>> {
        Box::pin(async move {
            self.observer
                .commit(&records)
                .await
                .map_err(|e| BrokerError::MetadataLog(e.to_string()))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.observer.shutdown();
        Box::pin(async {})
    }

    fn quorum_status(&self) -> Option<strom_controller::quorum::QuorumStatus> {
        Some(self.observer.status())
    }

    fn watch(&self) -> Option<tokio::sync::watch::Receiver<Arc<MetadataImage>>> {
        Some(self.observer.watch())
    }

    fn has_controller(&self) -> bool {
        true
    }

    fn call_controller(
        &self,
        req: BrokerRequest,
        timeout: Duration,
    ) -> Option<BoxFuture<'_, Result<BrokerAnswer, BrokerError>>> {
        Some(Box::pin(async move {
            self.observer
                .call_controller(req, timeout)
                .await
                .map_err(|e| BrokerError::MetadataLog(e.to_string()))
        }))
    }
}
