//! The active controller: the quorum leader runs the [`Controller`] state machine over the
//! committed image. Brokers' registrations and heartbeats reach it (in process, or over the
//! quorum's transport from another node); a timer fences brokers whose heartbeats stopped.
//! Every decision is committed through the Raft log before it is answered, and decisions are
//! taken one at a time, each on the image that includes the previous one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strom_metadata::errors;
use strom_metadata::image::Record;

use super::observer::{FetchAnswer, FetchRequest};
use super::{NodeId, QuorumError, Raft, StateMachine};
use crate::controller::{Controller, ControllerConfig, Registration};

/// What a broker asks of the active controller (Kafka's BrokerRegistration and
/// BrokerHeartbeat, with the heartbeat's `want_shut_down`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerRequest {
    Register {
        id: i32,
        incarnation: [u8; 16],
        host: String,
        port: u16,
        rack: Option<String>,
        #[serde(default)]
        endpoints: Vec<strom_metadata::image::Endpoint>,
    },
    Heartbeat {
        id: i32,
        epoch: i64,
        want_shutdown: bool,
    },
    /// Kafka's AlterPartition: a partition's leader asks for a new ISR.
    AlterPartition {
        id: i32,
        epoch: i64,
        topic: String,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// Kafka's ElectLeaders (preferred, or unclean), on the partitions named (all when
    /// `None`).
    ElectLeaders {
        preferred: bool,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// Kafka's AlterPartitionReassignments: start, replace or cancel (no replicas) each.
    AlterReassignments {
        reassignments: Vec<crate::reassignment::Reassignment>,
        allow_rf_change: bool,
    },
    /// Kafka's AllocateProducerIds: a block of ids no other broker is given.
    AllocateProducerIds {
        id: i32,
        epoch: i64,
        /// The block starts here or later.
        at_least: i64,
    },
    /// CreateTopics, forwarded by the broker that received it (validated there): the
    /// controller places the partitions over the brokers it knows live, and of two
    /// creations of one name the first committed wins.
    CreateTopic {
        topic: crate::controller::TopicRequest,
    },
    /// CreatePartitions: the topic grows to `count` partitions.
    CreatePartitions {
        topic: String,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
    },
    /// DeleteTopics.
    DeleteTopic { topic: String },
    /// AlterConfigs and IncrementalAlterConfigs on a topic: its whole set of overrides.
    SetTopicConfigs {
        topic: String,
        configs: std::collections::BTreeMap<String, String>,
        /// For an incremental change: the overrides it was made from, which must still be
        /// the topic's.
        #[serde(default)]
        expected: Option<std::collections::BTreeMap<String, String>>,
    },
    /// The same on a broker, or on every broker (`CLUSTER_DEFAULT`): its dynamic configs.
    SetBrokerConfigs {
        broker: i32,
        configs: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        expected: Option<std::collections::BTreeMap<String, String>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerAnswer {
    Registered {
        epoch: i64,
    },
    Heartbeat {
        fenced: bool,
        shutdown_ready: bool,
        /// The metadata offset this controller had applied once it had confirmed, with a
        /// quorum, that it still leads: the broker's view is current once it has this much.
        #[serde(default)]
        metadata_offset: u64,
        /// How long before this answer that confirmation was had (confirmations are
        /// reused for a while): the broker's lease counts from that much before its send.
        #[serde(default)]
        confirmed_ago_ms: u64,
    },
    ProducerIds {
        start: i64,
        len: i64,
    },
    /// ElectLeaders' outcome per partition: topic, partition, error code, message.
    Elected {
        results: Vec<crate::election::ElectionResult>,
    },
    /// AlterPartitionReassignments' outcome per partition: topic, partition, error code,
    /// message.
    Reassigned {
        results: Vec<crate::reassignment::ReassignmentResult>,
    },
    /// The partition's state once an AlterPartition is committed.
    PartitionChanged {
        isr: Vec<i32>,
        partition_epoch: i32,
    },
    /// The change is committed: a broker's metadata shows it once it has applied the log
    /// up to `metadata_offset`.
    Committed {
        metadata_offset: u64,
    },
    /// A Kafka error code and why.
    Refused {
        code: i16,
        message: String,
    },
    /// This node does not lead the quorum (any more): ask `leader`.
    NotController {
        leader: Option<NodeId>,
    },
}

struct Inner {
    controller: Controller,
    /// The quorum term this controller was activated in.
    active_term: Option<u64>,
    last_tick_ms: i64,
    /// When leadership was last rebalanced to the preferred replicas.
    last_rebalance_ms: i64,
}

pub struct ActiveController {
    raft: Raft,
    state: StateMachine,
    node_id: NodeId,
    started: Instant,
    /// When a quorum last confirmed this node's leadership (taken before the confirmation
    /// was asked), and how long such a confirmation is reused (a quarter of the session
    /// timeout; see `confirmed_heartbeat`).
    confirmed: std::sync::Mutex<Option<Instant>>,
    confirmation_reuse: Duration,
    inner: tokio::sync::Mutex<Inner>,
    /// Observers that fetched the image from this node: how far they had it.
    observers: std::sync::Mutex<std::collections::BTreeMap<NodeId, u64>>,
}

impl ActiveController {
    pub(crate) fn new(
        raft: Raft,
        state: StateMachine,
        node_id: NodeId,
        config: ControllerConfig,
        confirmation_reuse: Duration,
    ) -> Self {
        ActiveController {
            raft,
            state,
            node_id,
            confirmed: std::sync::Mutex::new(None),
            confirmation_reuse,
            started: Instant::now(),
            inner: tokio::sync::Mutex::new(Inner {
                controller: Controller::new(config),
                active_term: None,
                last_tick_ms: 0,
                last_rebalance_ms: 0,
            }),
            observers: Default::default(),
        }
    }

    /// The quorum as this node sees it, with the observers that fetched from it (the
    /// leader, mostly: observers prefer it) and how far they had the log.
    pub fn status(&self) -> super::QuorumStatus {
        let mut status = super::status_of(&self.raft);
        for (id, offset) in self.observers.lock().unwrap().iter() {
            if !status.observers.iter().any(|o| o.id == *id) {
                status.observers.push(super::ReplicaStatus {
                    id: *id,
                    log_end_offset: *offset as i64,
                });
            }
        }
        status
    }

    /// An observer's fetch: this node's image once it is past what the observer has, or
    /// after `max_wait_ms` without a change (then without the image).
    pub async fn serve_fetch(&self, req: FetchRequest) -> FetchAnswer {
        if req.status_only {
            return FetchAnswer {
                offset: self.state.applied().await.0,
                image: None,
                entries: None,
                status: self.status(),
            };
        }
        self.observers.lock().unwrap().insert(req.node, req.after);
        let wait = Duration::from_millis(req.max_wait_ms.min(10_000));
        // Past `after`: the entry at index `after` applied.
        let _ = self
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(req.after), "a change for the observer")
            .await;
        let (offset, catchup) = self.state.catchup(req.after, req.entries_ok).await;
        let (image, entries) = match catchup {
            super::state_machine::Catchup::Current => (None, None),
            super::state_machine::Catchup::Entries(e) => (None, Some(e)),
            super::state_machine::Catchup::Image(image) => (
                Some(strom_metadata::codec::encode(&image.to_records())),
                None,
            ),
        };
        FetchAnswer {
            offset,
            image,
            entries,
            status: self.status(),
        }
    }

    /// Monotonic milliseconds: sessions measure silence, which a wall clock step would fake.
    fn now(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    /// The term this node leads in, if it leads.
    fn leading(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.current_leader == Some(self.node_id) && m.state.is_leader()).then_some(m.current_term)
    }

    /// Before a decision: this node still leads, its image is the committed one, and on the
    /// first decision of a term the sessions are rebuilt. `None` when it does not lead.
    async fn prepare(&self, inner: &mut Inner) -> Option<()> {
        let term = self.leading()?;
        if inner.active_term != Some(term) {
            // Everything committed before this term is applied here before deciding on it.
            if let Err(e) = self.raft.ensure_linearizable().await {
                tracing::debug!(error = %e, "not the active controller after all");
                return None;
            }
            inner.controller.sync(self.state.image());
            let now = self.now();
            inner.controller.activate(now);
            inner.last_tick_ms = now;
            // A new controller waits a whole interval before its first rebalance.
            inner.last_rebalance_ms = now;
            inner.active_term = Some(term);
            tracing::info!(
                node = self.node_id,
                term,
                "this node is the active controller"
            );
        }
        inner.controller.sync(self.state.image());
        Some(())
    }

    async fn commit(&self, records: &[Record]) -> Result<(), QuorumError> {
        if records.is_empty() {
            return Ok(());
        }
        // Only as the leader: a deposed controller's decision, taken on an image that may be
        // stale, must not be forwarded to the next one.
        let batch = super::MetadataBatch(strom_metadata::codec::encode(records));
        let written = self
            .raft
            .client_write(batch)
            .await
            .map_err(|e| QuorumError::Raft(e.to_string()))?;
        self.raft
            .wait(Some(Duration::from_secs(30)))
            .applied_index_at_least(Some(written.log_id.index), "the change is applied here")
            .await
            .map_err(|e| QuorumError::Raft(e.to_string()))?;
        Ok(())
    }

    /// A heartbeat's answer renews the broker's lease on what it leads (see the broker's
    /// `leadership_current`): only a controller that a quorum still follows may give it,
    /// with the offset the broker's metadata must reach before the lease counts.
    ///
    /// A confirmation is reused for a while rather than asked of the quorum for every
    /// heartbeat of every broker; the answer says how old it is. That stays safe: a
    /// successor is elected no sooner than an election timeout after the confirmation, and
    /// gives every broker a whole session from then, while the broker's lease ends one
    /// session after its send less the confirmation's age, which is before.
    async fn confirmed_heartbeat(&self, fenced: bool, shutdown_ready: bool) -> BrokerAnswer {
        let cached = *self.confirmed.lock().unwrap();
        let confirmed_at = match cached.filter(|at| at.elapsed() < self.confirmation_reuse) {
            Some(at) => Ok(at),
            None => {
                let asked = Instant::now();
                self.raft.ensure_linearizable().await.map(|_| asked)
            }
        };
        let confirmed_at = match confirmed_at {
            Ok(at) => {
                *self.confirmed.lock().unwrap() = Some(at);
                at
            }
            Err(e) => {
                return BrokerAnswer::NotController {
                    leader: match e {
                        openraft::error::RaftError::APIError(
                            openraft::error::CheckIsLeaderError::ForwardToLeader(f),
                        ) => f.leader_id,
                        _ => None,
                    },
                };
            }
        };
        let (metadata_offset, _) = self.state.applied().await;
        BrokerAnswer::Heartbeat {
            fenced,
            shutdown_ready,
            metadata_offset,
            confirmed_ago_ms: confirmed_at.elapsed().as_millis() as u64,
        }
    }

    /// Answers one broker request, once its consequences are committed.
    pub async fn handle(&self, req: BrokerRequest) -> BrokerAnswer {
        let mut inner = self.inner.lock().await;
        if self.prepare(&mut inner).await.is_none() {
            return BrokerAnswer::NotController {
                leader: self.raft.metrics().borrow().current_leader,
            };
        }
        let now = self.now();
        let decided = match req {
            BrokerRequest::Register {
                id,
                incarnation,
                host,
                port,
                rack,
                endpoints,
            } => {
                let r = Registration {
                    id,
                    incarnation,
                    host,
                    port,
                    rack,
                    endpoints,
                };
                inner
                    .controller
                    .register(r, now)
                    .map(|(epoch, records)| (records, BrokerAnswer::Registered { epoch }))
            }
            BrokerRequest::Heartbeat {
                id,
                epoch,
                want_shutdown,
            } => inner
                .controller
                .heartbeat(id, epoch, want_shutdown, now)
                .map(|o| {
                    let answer = BrokerAnswer::Heartbeat {
                        fenced: o.fenced,
                        shutdown_ready: o.shutdown_ready,
                        metadata_offset: 0,
                        confirmed_ago_ms: 0,
                    };
                    (o.records, answer)
                }),
            BrokerRequest::AlterPartition {
                id,
                epoch,
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                isr,
            } => inner
                .controller
                .alter_partition(&crate::AlterPartition {
                    broker: id,
                    broker_epoch: epoch,
                    topic,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    isr,
                })
                .map(|(info, records)| {
                    let answer = BrokerAnswer::PartitionChanged {
                        isr: info.isr.to_vec(),
                        partition_epoch: info.partition_epoch,
                    };
                    (records, answer)
                }),
            BrokerRequest::ElectLeaders {
                preferred,
                partitions,
            } => {
                let (records, results) = inner
                    .controller
                    .elect_leaders(preferred, partitions.as_deref());
                Ok((records, BrokerAnswer::Elected { results }))
            }
            BrokerRequest::AlterReassignments {
                reassignments,
                allow_rf_change,
            } => {
                let (records, results) = inner
                    .controller
                    .alter_reassignments(&reassignments, allow_rf_change);
                Ok((records, BrokerAnswer::Reassigned { results }))
            }
            BrokerRequest::AllocateProducerIds {
                id,
                epoch,
                at_least,
            } => inner
                .controller
                .allocate_producer_ids(id, epoch, at_least)
                .map(|((start, len), records)| (records, BrokerAnswer::ProducerIds { start, len })),
            // The offset is filled in once the records are committed.
            BrokerRequest::CreateTopic { topic } => inner
                .controller
                .create_topic(&topic, now as usize)
                .map(committed),
            BrokerRequest::CreatePartitions {
                topic,
                count,
                assignments,
            } => inner
                .controller
                .create_partitions(&topic, count, assignments, now as usize)
                .map(committed),
            BrokerRequest::DeleteTopic { topic } => {
                inner.controller.delete_topic(&topic).map(committed)
            }
            BrokerRequest::SetTopicConfigs {
                topic,
                configs,
                expected,
            } => inner
                .controller
                .set_topic_configs(&topic, configs, expected.as_ref())
                .map(committed),
            BrokerRequest::SetBrokerConfigs {
                broker,
                configs,
                expected,
            } => inner
                .controller
                .set_broker_configs(broker, configs, expected.as_ref())
                .map(committed),
        };
        match decided {
            Ok((records, answer)) => match self.commit(&records).await {
                Ok(()) => {
                    log_changes(&records);
                    // The decision is committed: the quorum round of a heartbeat's
                    // confirmation need not hold up the other brokers' requests.
                    drop(inner);
                    match answer {
                        BrokerAnswer::Heartbeat {
                            fenced,
                            shutdown_ready,
                            ..
                        } => self.confirmed_heartbeat(fenced, shutdown_ready).await,
                        BrokerAnswer::Committed { .. } => BrokerAnswer::Committed {
                            metadata_offset: self.state.applied().await.0,
                        },
                        answer => answer,
                    }
                }
                Err(e) => BrokerAnswer::Refused {
                    code: errors::REQUEST_TIMED_OUT,
                    message: format!("the metadata change was not committed: {e}"),
                },
            },
            Err(r) => BrokerAnswer::Refused {
                code: r.code,
                message: r.message,
            },
        }
    }

    /// Fences brokers whose sessions expired, while this node leads, until `stop` fires.
    pub(crate) async fn run_timers(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        every: Duration,
    ) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            if self.leading().is_none() {
                continue;
            }
            let mut inner = self.inner.lock().await;
            if self.prepare(&mut inner).await.is_none() {
                continue;
            }
            let now = self.now();
            let session = inner.controller.config.session_timeout_ms;
            if now - inner.last_tick_ms > session / 2 {
                // This controller was not running (paused, starved): the silence it did not
                // witness fences nobody.
                tracing::warn!(
                    ms = now - inner.last_tick_ms,
                    "the controller's timer ran late: broker sessions restart from now"
                );
                inner.controller.refresh_sessions(now);
            }
            inner.last_tick_ms = now;
            let mut records = inner.controller.tick(now);
            if records.is_empty() {
                records = inner.controller.elect_offline();
            }
            let config = inner.controller.config;
            if records.is_empty()
                && config.auto_leader_rebalance
                && now - inner.last_rebalance_ms >= config.leader_imbalance_check_interval_ms
            {
                inner.last_rebalance_ms = now;
                records = inner
                    .controller
                    .rebalance_leaders(config.leader_imbalance_percent);
                if !records.is_empty() {
                    tracing::info!(
                        partitions = records.len(),
                        "leadership goes back to preferred replicas (auto.leader.rebalance.enable)"
                    );
                }
            }
            if records.is_empty() {
                continue;
            }
            match self.commit(&records).await {
                Ok(()) => log_changes(&records),
                Err(e) => tracing::warn!(error = %e, "fencing brokers: not committed"),
            }
        }
    }
}

/// A topic change's records, answered with the offset that includes them (filled in after
/// the commit).
fn committed(records: Vec<Record>) -> (Vec<Record>, BrokerAnswer) {
    (records, BrokerAnswer::Committed { metadata_offset: 0 })
}

fn log_changes(records: &[Record]) {
    for r in records {
        match r {
            Record::BrokerFencing { id, fenced: true } => {
                tracing::info!(broker = id, "broker fenced")
            }
            Record::BrokerFencing { id, fenced: false } => {
                tracing::info!(broker = id, "broker unfenced")
            }
            Record::RegisterBroker(b) => {
                tracing::info!(broker = b.id, epoch = b.epoch, "broker registered")
            }
            _ => {}
        }
    }
}
