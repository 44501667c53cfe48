//! The broker's life in the cluster, as Kafka's BrokerLifecycleManager: it registers with
//! the active controller at start and is fenced until its first heartbeat; it heartbeats
//! every `broker.heartbeat.interval.ms`, and registers again when the controller no longer
//! knows its epoch (it was restarted, or a new controller lost track); on shutdown it asks
//! the controller to move its leadership away first (controlled shutdown). The same task
//! asks the controller for producer-id blocks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use strom_controller::quorum::active::{BrokerAnswer, BrokerRequest};
use strom_metadata::errors;

use crate::broker::Broker;
use crate::errors::BrokerError;

/// The broker epoch before a registration succeeded.
pub(crate) const UNREGISTERED: i64 = -1;

impl Broker {
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.config.kraft.heartbeat_interval_ms.max(10))
    }

    /// Whether a controller admits this broker (not so for a broker on its own).
    fn has_controller(&self) -> bool {
        self.metadata_log.has_controller()
    }

    pub(crate) async fn ask_controller(
        &self,
        req: BrokerRequest,
    ) -> Result<BrokerAnswer, BrokerError> {
        let timeout = Duration::from_millis(self.config.kraft.session_timeout_ms.max(100)) / 2;
        self.ask_controller_within(req, timeout).await
    }

    /// [`Broker::ask_controller`] for an operator's request (elections, reassignments):
    /// it rides out a controller failover, as Kafka's forwarding does within the request's
    /// timeout, instead of failing the moment the old controller's address refuses.
    pub(crate) async fn ask_controller_for_admin(
        &self,
        req: BrokerRequest,
    ) -> Result<BrokerAnswer, BrokerError> {
        self.ask_controller_within(req, Duration::from_secs(30))
            .await
    }

    async fn ask_controller_within(
        &self,
        req: BrokerRequest,
        timeout: Duration,
    ) -> Result<BrokerAnswer, BrokerError> {
        match self.metadata_log.call_controller(req, timeout) {
            Some(answer) => answer.await,
            None => Err(BrokerError::MetadataLog("no controller".into())),
        }
    }

    /// Registers this broker (this process: a new incarnation) and heartbeats until the
    /// controller unfences it, then waits for this node's image to show it. Another live
    /// process registered under this node id is waited out for one session timeout, then
    /// refused.
    pub(crate) async fn join_cluster(&self) -> Result<(), BrokerError> {
        if !self.has_controller() {
            return Ok(());
        }
        let session = Duration::from_millis(self.config.kraft.session_timeout_ms);
        let deadline = tokio::time::Instant::now() + session + Duration::from_secs(30);
        loop {
            let last_refusal;
            match self.register().await {
                Ok(epoch) => match self.heartbeat_until_unfenced(epoch).await {
                    Ok(BrokerAnswer::Heartbeat { fenced: false, .. }) => {
                        // Not fatal: a controller change right now refuses it, and the
                        // heartbeat task fetches a block whenever one is wanted.
                        self.producer_ids.expect_controller_blocks();
                        if let Err(e) = self.fetch_producer_id_block().await {
                            tracing::warn!(error = %e, "no producer id block yet; will retry");
                        }
                        return Ok(());
                    }
                    Ok(other) => last_refusal = Some(format!("{other:?}")),
                    Err(e) => last_refusal = Some(e.to_string()),
                },
                Err(e) => last_refusal = Some(e.to_string()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::MetadataLog(format!(
                    "the controller did not admit broker {} into the cluster: {}",
                    self.config.node_id,
                    last_refusal.unwrap_or_default()
                )));
            }
            tracing::warn!(
                reason = last_refusal.as_deref().unwrap_or(""),
                "registration with the controller to retry"
            );
            // A backoff between attempts (another process's session has to expire first).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn register(&self) -> Result<i64, BrokerError> {
        let c = &self.config;
        let req = BrokerRequest::Register {
            id: c.node_id,
            incarnation: self.incarnation,
            host: c.advertised_host.clone(),
            port: c.advertised_port,
            rack: c.kraft.rack.clone(),
            endpoints: c.endpoints(),
        };
        match self.ask_controller(req).await? {
            BrokerAnswer::Registered { epoch } => {
                self.broker_epoch.store(epoch, Ordering::SeqCst);
                tracing::info!(epoch, "registered with the controller");
                Ok(epoch)
            }
            BrokerAnswer::Refused { code, message } => Err(BrokerError::MetadataLog(format!(
                "the controller refused the registration (error {code}): {message}"
            ))),
            other => Err(BrokerError::MetadataLog(format!(
                "no controller took the registration: {other:?}"
            ))),
        }
    }

    async fn heartbeat(&self, want_shutdown: bool) -> Result<BrokerAnswer, BrokerError> {
        let req = BrokerRequest::Heartbeat {
            id: self.config.node_id,
            epoch: self.broker_epoch.load(Ordering::SeqCst),
            want_shutdown,
        };
        self.ask_controller(req).await
    }

    /// A heartbeat whose answer renews or ends this node's lease (see
    /// [`Broker::leadership_current`]).
    async fn heartbeat_renewing(&self, want_shutdown: bool) -> Result<BrokerAnswer, BrokerError> {
        let sent = std::time::Instant::now();
        let answer = self.heartbeat(want_shutdown).await;
        if let Ok(BrokerAnswer::Heartbeat {
            fenced,
            metadata_offset,
            confirmed_ago_ms,
            ..
        }) = &answer
        {
            self.lease.lock().unwrap().on_answer(
                sent,
                *fenced,
                *metadata_offset,
                Duration::from_millis(*confirmed_ago_ms),
            );
        }
        answer
    }

    /// Heartbeats until the controller unfences this broker and this node has applied its
    /// own unfencing (its image shows this broker, with this epoch, unfenced). It keeps
    /// heartbeating while it catches up: a node slow to apply the metadata log (a restart
    /// under load) would otherwise be fenced again by the session timeout, and the image
    /// that showed it unfenced passed by unseen. The last answer is returned; an unfenced
    /// one means it is shown here.
    async fn heartbeat_until_unfenced(&self, epoch: i64) -> Result<BrokerAnswer, BrokerError> {
        let me = self.config.node_id;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.heartbeat_renewing(false).await?;
            if !matches!(answer, BrokerAnswer::Heartbeat { fenced: false, .. }) {
                return Ok(answer);
            }
            let Some(mut images) = self.metadata_log.watch() else {
                return Ok(answer);
            };
            let shown = images.wait_for(|image| {
                image
                    .brokers
                    .get(&me)
                    .is_some_and(|b| b.epoch == epoch && !b.fenced)
            });
            match tokio::time::timeout(self.heartbeat_interval(), shown).await {
                Ok(Ok(_)) => return Ok(answer),
                Ok(Err(_)) => {
                    return Err(BrokerError::MetadataLog(
                        "the metadata quorum stopped".into(),
                    ));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(BrokerError::MetadataLog(format!(
                        "broker {me} was unfenced, but this node's metadata did not show it within 30 s"
                    )));
                }
                Err(_) => {}
            }
        }
    }

    /// Heartbeats until `stop` fires, registering again when the controller asks for it.
    pub async fn run_heartbeats(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.has_controller() {
            return;
        }
        let mut interval = tokio::time::interval(self.heartbeat_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.producer_ids.wanted.notified() => {
                    if let Err(e) = self.fetch_producer_id_block().await {
                        tracing::warn!(error = %e, "no producer id block from the controller");
                    }
                    continue;
                }
                _ = stop.changed() => return,
            }
            match self.heartbeat_renewing(false).await {
                Ok(BrokerAnswer::Refused { code, message })
                    if code == errors::STALE_BROKER_EPOCH
                        || code == errors::BROKER_ID_NOT_REGISTERED =>
                {
                    tracing::warn!(%message, "the controller lost this broker's registration: registering again");
                    if let Err(e) = self.register().await {
                        tracing::warn!(error = %e, "registering again");
                    }
                }
                Ok(BrokerAnswer::Heartbeat { .. }) => {}
                Ok(other) => tracing::warn!(answer = ?other, "heartbeat not taken"),
                Err(e) => tracing::warn!(error = %e, "heartbeat not delivered"),
            }
        }
    }

    /// Whether what this node's metadata says it leads can be trusted now, for the
    /// coordinators' answers from memory (committed offsets, transaction states). In a
    /// cluster, only while a lease holds: a heartbeat answered by a controller that a
    /// quorum confirmed as leader, sent less than `broker.session.timeout.ms` (less the
    /// confirmation's age) ago, before any controller can have fenced this broker and
    /// moved its leadership, and this node's metadata at least as new as the
    /// controller's when it answered. A node paused or cut off past its session serves
    /// none of it until it has heard from the controller and caught up: a client is sent
    /// to the new coordinator instead of reading the old one's stale state.
    pub fn leadership_current(&self) -> bool {
        let cluster = self.config.kraft.multi_node(self.config.node_id)
            || !self.config.kraft.roles.controller;
        if !cluster {
            return true;
        }
        let session = Duration::from_millis(self.config.kraft.session_timeout_ms);
        let image_offset = self.image().offset;
        self.lease
            .lock()
            .unwrap()
            .holds(std::time::Instant::now(), session, image_offset)
    }

    /// Sends the ISR changes of the partitions led here to the controller (AlterPartition),
    /// checking for laggards several times per `replica.lag.time.max.ms`, until `stop`
    /// fires. A committed change reaches the partitions through the metadata.
    pub async fn run_isr_changes(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.has_controller() {
            return;
        }
        let every = Duration::from_millis(
            (self.config.replica_lag_time_max_ms as u64 / 4).clamp(10, 1_000),
        );
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let now = strom_storage::clock::now_ms();
            // Most replicas have none (a follower, or a leader whose followers keep up).
            let mut changes = Vec::new();
            self.replicas.for_each(|p| {
                if let Some(change) = p.isr_change(now) {
                    changes.push((p.clone(), change));
                }
            });
            for (p, (change, leader_epoch)) in changes {
                let req = BrokerRequest::AlterPartition {
                    id: self.config.node_id,
                    epoch: self.broker_epoch.load(Ordering::SeqCst),
                    topic: p.topic.to_string(),
                    partition: p.index,
                    leader_epoch,
                    partition_epoch: change.partition_epoch,
                    isr: change.isr.clone(),
                };
                match self.ask_controller(req).await {
                    Ok(BrokerAnswer::PartitionChanged {
                        isr,
                        partition_epoch,
                    }) => {
                        tracing::info!(topic = %p.topic, partition = p.index, ?isr, partition_epoch, "ISR changed");
                    }
                    Ok(other) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, answer = ?other, "ISR change refused");
                        p.isr_change_refused();
                    }
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "ISR change not delivered");
                        p.isr_change_refused();
                    }
                }
            }
        }
    }

    /// Controlled shutdown: the controller fences this broker and moves the leadership of
    /// its partitions to other replicas before it stops, so clients move on at once instead
    /// of after a session timeout. Gives up after `timeout` (the controller may be gone).
    pub async fn controlled_shutdown(&self, timeout: Duration) {
        if !self.has_controller() {
            return;
        }
        if self.broker_epoch.load(Ordering::SeqCst) == UNREGISTERED {
            return;
        }
        let asked = async {
            loop {
                match self.heartbeat(true).await {
                    Ok(BrokerAnswer::Heartbeat {
                        shutdown_ready: true,
                        ..
                    }) => return true,
                    Ok(BrokerAnswer::Refused { code, message }) => {
                        tracing::warn!(code, %message, "controlled shutdown refused");
                        return false;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(true) => tracing::info!("controlled shutdown: leadership moved away"),
            _ => tracing::warn!("controlled shutdown did not complete: stopping anyway"),
        }
    }
}
