//! The active controller's decisions, as a pure state machine over the metadata image:
//! broker registration and heartbeats, fencing brokers whose heartbeats stopped and
//! unfencing them when they come back, choosing partition leaders, placing new topics and
//! partitions, deleting topics, and handing out producer-id blocks. Requests and the time go
//! in; metadata records (to be committed through the quorum) and answers come out. The
//! image moves only when committed records are replayed, as in Kafka's QuorumController.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use strom_metadata::errors;
use strom_metadata::image::{
    BrokerInfo, MetadataImage, NO_LEADER, PartitionInfo, Record, Replicas, TopicId,
};

#[derive(Debug, Clone, Copy)]
pub struct ControllerConfig {
    /// broker.session.timeout.ms
    pub session_timeout_ms: i64,
    /// Producer ids per block (Kafka: 1000).
    pub producer_id_block: i64,
    /// unclean.leader.election.enable, the cluster default.
    pub unclean_leader_election: bool,
    /// auto.leader.rebalance.enable, leader.imbalance.check.interval.seconds (in ms here)
    /// and leader.imbalance.per.broker.percentage.
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval_ms: i64,
    pub leader_imbalance_percent: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            session_timeout_ms: 9_000,
            producer_id_block: 1_000,
            unclean_leader_election: false,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_percent: 10,
        }
    }
}

/// A BrokerRegistration request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: i32,
    /// Changes with every start of the broker: a registration from an older incarnation
    /// while the newer one's session lives is refused.
    pub incarnation: [u8; 16],
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Every listener of the broker, as advertised.
    pub endpoints: Vec<strom_metadata::image::Endpoint>,
}

struct Session {
    incarnation: [u8; 16],
    /// The broker epoch of this registration.
    epoch: i64,
    last_heartbeat_ms: i64,
    /// This controller has heard from the broker since it took over: a session inherited
    /// from the image at activation is only assumed alive.
    confirmed: bool,
    /// The broker asked for a controlled shutdown: it stays fenced until it registers again.
    shutting_down: bool,
}

/// What a heartbeat changes, and what the broker is told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub records: Vec<Record>,
    /// The broker is fenced once `records` are committed.
    pub fenced: bool,
    /// A controlled shutdown may proceed: the broker leads nothing once `records` are
    /// committed.
    pub shutdown_ready: bool,
}
/// An AlterPartition request: partition `topic`-`partition`'s leader `broker` (registered
/// with `broker_epoch`) asks for the ISR `isr`, from its view at `leader_epoch` and
/// `partition_epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPartition {
    pub broker: i32,
    pub broker_epoch: i64,
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// A topic as CreateTopics asks for it, after request validation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicRequest {
    pub name: String,
    pub id: TopicId,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Explicit replica lists, when given (then `partitions` and the factor follow them).
    pub assignments: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

/// Why a request was refused: the Kafka error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: i16,
    pub message: String,
}

pub(crate) fn refuse(code: i16, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

pub struct Controller {
    pub config: ControllerConfig,
    image: Arc<MetadataImage>,
    sessions: HashMap<i32, Session>,
}

impl Controller {
    pub fn new(config: ControllerConfig) -> Self {
        Controller {
            config,
            image: Arc::default(),
            sessions: HashMap::new(),
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Committed records, from the quorum's log: the image moves.
    pub fn replay(&mut self, records: &[Record]) {
        let (next, _) = self.image.apply(records);
        self.image = Arc::new(next);
    }

    /// The committed image, as the quorum applied it.
    pub fn sync(&mut self, image: Arc<MetadataImage>) {
        self.image = image;
    }

    /// This controller becomes the active one: the brokers' sessions are rebuilt from the
    /// image, every one given a full session timeout from `now` to be heard from (the
    /// previous controller's clock is not ours to trust).
    pub fn activate(&mut self, now: i64) {
        self.sessions = self
            .image
            .brokers
            .values()
            .map(|b| {
                (
                    b.id,
                    Session {
                        incarnation: b.incarnation,
                        epoch: b.epoch,
                        last_heartbeat_ms: now,
                        confirmed: false,
                        shutting_down: false,
                    },
                )
            })
            .collect();
    }

    /// Every session is treated as heard from at `now`: after this controller itself was
    /// paused, silence it did not witness proves nothing about the brokers.
    pub fn refresh_sessions(&mut self, now: i64) {
        for s in self.sessions.values_mut() {
            s.last_heartbeat_ms = now;
        }
    }

    pub(crate) fn is_live(&self, id: i32) -> bool {
        self.live(id)
    }

    fn live(&self, id: i32) -> bool {
        self.image.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// BrokerRegistration: the broker's epoch and the records that register it, fenced until
    /// its first heartbeat. A broker registering again (it restarted) first loses what it
    /// led: its new process starts from a new leader epoch.
    pub fn register(&mut self, r: Registration, now: i64) -> Result<(i64, Vec<Record>), Refusal> {
        let current = self.image.brokers.get(&r.id);
        if let Some(s) = self.sessions.get(&r.id)
            && s.confirmed
            && s.incarnation != r.incarnation
            && current.is_some_and(|b| !b.fenced)
            && now - s.last_heartbeat_ms < self.config.session_timeout_ms
        {
            return Err(refuse(
                errors::DUPLICATE_BROKER_REGISTRATION,
                format!(
                    "broker {} is registered by another process whose session is alive: is node.id {} used twice?",
                    r.id, r.id
                ),
            ));
        }
        let epoch = self
            .image
            .brokers
            .values()
            .map(|b| b.epoch)
            .chain(self.sessions.values().map(|s| s.epoch))
            .max()
            .unwrap_or(0)
            + 1;
        let mut records = Vec::new();
        if current.is_some_and(|b| !b.fenced) {
            records.extend(self.fence(r.id).into_iter().skip(1));
        }
        records.insert(
            0,
            Record::RegisterBroker(BrokerInfo {
                id: r.id,
                host: r.host,
                port: r.port,
                rack: r.rack,
                fenced: true,
                incarnation: r.incarnation,
                epoch,
                endpoints: r.endpoints,
            }),
        );
        self.sessions.insert(
            r.id,
            Session {
                incarnation: r.incarnation,
                epoch,
                last_heartbeat_ms: now,
                confirmed: true,
                shutting_down: false,
            },
        );
        Ok((epoch, records))
    }

    /// BrokerHeartbeat: keeps the session alive; the first one unfences the broker and gives
    /// it back the leadership of partitions that had none. With `want_shutdown`, the broker
    /// is fenced at once and leadership moves away (Kafka's controlled shutdown).
    pub fn heartbeat(
        &mut self,
        id: i32,
        epoch: i64,
        want_shutdown: bool,
        now: i64,
    ) -> Result<HeartbeatOutcome, Refusal> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(refuse(
                errors::BROKER_ID_NOT_REGISTERED,
                format!("broker {id} is not registered"),
            ));
        };
        if s.epoch != epoch {
            return Err(refuse(
                errors::STALE_BROKER_EPOCH,
                format!(
                    "broker {id} heartbeats with epoch {epoch}, its registration has {}",
                    s.epoch
                ),
            ));
        }
        s.last_heartbeat_ms = now;
        s.confirmed = true;
        s.shutting_down |= want_shutdown;
        let shutting_down = s.shutting_down;
        let fenced = self.image.brokers.get(&id).is_none_or(|b| b.fenced);
        if shutting_down {
            return Ok(HeartbeatOutcome {
                records: if fenced { vec![] } else { self.fence(id) },
                fenced: true,
                shutdown_ready: true,
            });
        }
        if !fenced {
            return Ok(HeartbeatOutcome::default());
        }
        let mut records = vec![Record::BrokerFencing { id, fenced: false }];
        records.extend(self.elect_where(
            |_, info| info.leader == NO_LEADER,
            |b| b == id || self.live(b),
        ));
        Ok(HeartbeatOutcome {
            records,
            fenced: false,
            shutdown_ready: false,
        })
    }

    /// The passing of time: brokers whose heartbeats stopped for the session timeout are
    /// fenced, and the partitions they led get new leaders from their ISR.
    pub fn tick(&mut self, now: i64) -> Vec<Record> {
        let mut expired: Vec<i32> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                now - s.last_heartbeat_ms >= self.config.session_timeout_ms
                    && self.image.brokers.get(id).is_some_and(|b| !b.fenced)
            })
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        self.fence_all(&expired)
    }

    /// Fences `id` (its session expired, or a controlled shutdown): it leaves the ISR of
    /// every partition where others remain, and every partition it led gets a new leader.
    pub fn fence(&self, id: i32) -> Vec<Record> {
        self.fence_all(&[id])
    }

    /// Fences several brokers at once: none of them is chosen to lead what another led.
    fn fence_all(&self, ids: &[i32]) -> Vec<Record> {
        let mut records: Vec<Record> = ids
            .iter()
            .map(|id| Record::BrokerFencing {
                id: *id,
                fenced: true,
            })
            .collect();
        if ids.is_empty() {
            return records;
        }
        let gone = |b: &i32| ids.contains(b);
        for (name, t) in &self.image.topics {
            for (i, info) in t.partitions.iter().enumerate() {
                if !info.replicas.iter().any(gone) {
                    continue;
                }
                let mut next = info.clone();
                // The ISR never empties: its last member keeps the committed records.
                for id in ids {
                    if next.isr.len() > 1 {
                        next.isr.retain(|r| r != id);
                    }
                }
                if gone(&next.leader) {
                    next.leader = self.choose_leader(name, i, &next, |b| !gone(&b) && self.live(b));
                    next.leader_epoch += 1;
                    if next.leader != NO_LEADER && !next.isr.contains(&next.leader) {
                        // Only an unclean election picks outside the ISR.
                        next.isr = Replicas::from_slice(&[next.leader]);
                    }
                }
                if next != *info {
                    next.partition_epoch += 1;
                    records.push(Record::Partition {
                        topic: name.clone(),
                        partition: i as i32,
                        info: next,
                    });
                }
            }
        }
        records
    }

    /// AlterPartition (Kafka's, from a partition's leader): the ISR becomes `isr`, if the
    /// request comes from the leader's current registration and leadership, and from the
    /// partition's current state (`partition_epoch`: a change made on a stale view is
    /// refused with INVALID_UPDATE_VERSION). The ISR keeps the leader, holds only replicas,
    /// and takes in no fenced broker (INELIGIBLE_REPLICA). The partition's new state, and
    /// the record that makes it.
    pub fn alter_partition(
        &self,
        a: &AlterPartition,
    ) -> Result<(PartitionInfo, Vec<Record>), Refusal> {
        match self.sessions.get(&a.broker) {
            Some(s) if s.epoch == a.broker_epoch => {}
            _ => {
                return Err(refuse(
                    errors::STALE_BROKER_EPOCH,
                    format!(
                        "broker {} asks with epoch {}, not its registration's",
                        a.broker, a.broker_epoch
                    ),
                ));
            }
        }
        let Some(info) = self.image.partition(&a.topic, a.partition) else {
            return Err(refuse(
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown partition {}-{}", a.topic, a.partition),
            ));
        };
        if info.leader != a.broker {
            return Err(refuse(
                errors::NOT_LEADER_OR_FOLLOWER,
                format!(
                    "broker {} does not lead {}-{} (broker {} does)",
                    a.broker, a.topic, a.partition, info.leader
                ),
            ));
        }
        if info.leader_epoch != a.leader_epoch {
            return Err(refuse(
                errors::FENCED_LEADER_EPOCH,
                format!(
                    "leader epoch {} is not the partition's {}",
                    a.leader_epoch, info.leader_epoch
                ),
            ));
        }
        if info.partition_epoch != a.partition_epoch {
            return Err(refuse(
                errors::INVALID_UPDATE_VERSION,
                format!(
                    "partition epoch {} is not the partition's {}: the change was made on a stale view",
                    a.partition_epoch, info.partition_epoch
                ),
            ));
        }
        if !a.isr.contains(&a.broker) || a.isr.iter().any(|r| !info.replicas.contains(r)) {
            return Err(refuse(
                errors::INVALID_REQUEST,
                format!(
                    "ISR {:?} must hold the leader and replicas of {:?} only",
                    a.isr, info.replicas
                ),
            ));
        }
        if let Some(r) = a
            .isr
            .iter()
            .find(|r| !info.isr.contains(r) && !self.live(**r))
        {
            return Err(refuse(
                errors::INELIGIBLE_REPLICA,
                format!("broker {r} is fenced: it cannot join the ISR"),
            ));
        }
        let mut next = info.clone();
        next.isr = Replicas::from_slice(&a.isr);
        // A replica a reassignment waits for may just have joined: the old ones leave.
        let mut next = self.complete(next);
        next.partition_epoch += 1;
        let record = Record::Partition {
            topic: a.topic.clone(),
            partition: a.partition,
            info: next.clone(),
        };
        Ok((next, vec![record]))
    }

    /// AllocateProducerIds: the next block for `broker` (registered with `epoch`), starting
    /// at `at_least` or later (ids a broker handed out before the quorum existed), and the
    /// record that moves the cluster's next id past it.
    pub fn allocate_producer_ids(
        &self,
        broker: i32,
        epoch: i64,
        at_least: i64,
    ) -> Result<((i64, i64), Vec<Record>), Refusal> {
        match self.sessions.get(&broker) {
            Some(s) if s.epoch == epoch => {}
            Some(_) => {
                return Err(refuse(
                    errors::STALE_BROKER_EPOCH,
                    format!("broker {broker} asks with epoch {epoch}, not its registration's"),
                ));
            }
            None => {
                return Err(refuse(
                    errors::BROKER_ID_NOT_REGISTERED,
                    format!("broker {broker} is not registered"),
                ));
            }
        }
        let start = self.image.next_producer_id.max(at_least);
        let len = self.config.producer_id_block;
        Ok((
            (start, len),
            vec![Record::ProducerIds {
                broker,
                next_producer_id: start + len,
            }],
        ))
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
