//! Replica fetchers: this broker's copies of partitions led elsewhere. `num.replica.fetchers`
//! tasks per leader broker (a partition's is chosen as Kafka chooses it), each with its own
//! connection, fetch the partitions followed from it in one Fetch request (replica id set,
//! long-polled for `replica.fetch.wait.max.ms`), after truncating each partition where its log diverges from the leader's
//! (`strom_replication::follower`: OffsetForLeaderEpoch, KIP-101/279). Records are stored
//! as the leader sent them (`Partition::append_replicated`); the follower's high watermark
//! is the leader's, capped by its own log. A partition the leader refuses waits
//! `replica.fetch.backoff.ms` before it is asked again (the metadata that explains the
//! refusal resets it sooner), and so does a fetcher whose leader cannot be reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use krabka_protocol::owned::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use krabka_protocol::owned::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use strom_metadata::TopicPartition;
use strom_replication::follower::{FollowerState, Step};

use crate::broker::Broker;
use crate::errors;
use crate::partition::Partition;

/// How long a fetcher with nothing to fetch waits before looking again.
const IDLE: Duration = Duration::from_millis(200);

struct Followed {
    partition: Arc<Partition>,
    state: FollowerState,
    step: Step,
    /// After the leader refused it: not asked again before this.
    retry_at: Option<tokio::time::Instant>,
}

/// What one round of a fetcher did.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// Fetched or checked epochs: the next round at once.
    Busy,
    /// Nothing to ask for now.
    Idle,
    /// The leader could not be reached.
    Failed,
}

/// The partitions followed from one leader, and its task (once replication started).
struct Source {
    partitions: Arc<Mutex<BTreeMap<TopicPartition, Followed>>>,
    added: Arc<Added>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Partitions newly given to a fetcher: its fetch in flight (long-polled for up to
/// `replica.fetch.wait.max.ms`) does not ask for them, so it is abandoned for one that
/// does. A new topic's or a new leader's first records are otherwise committed only after
/// that wait.
#[derive(Default)]
struct Added {
    /// Bumped with every partition added.
    generation: std::sync::atomic::AtomicU64,
    notify: tokio::sync::Notify,
}

/// A fetcher: the leader broker it fetches from, and which of that broker's fetchers.
type FetcherId = (i32, u32);

#[derive(Default)]
pub struct Fetchers {
    sources: Mutex<HashMap<FetcherId, Source>>,
    /// The broker the tasks fetch for, from `Broker::start_replication` on.
    broker: std::sync::OnceLock<Weak<Broker>>,
}

impl Fetchers {
    /// Stops every fetcher.
    pub fn stop_all(&self) {
        for (_, s) in self.sources.lock().unwrap().drain() {
            if let Some(t) = s.task {
                t.abort();
            }
        }
    }

    fn spawn(&self, id: FetcherId, source: &mut Source) {
        if source.task.is_none()
            && let Some(b) = self.broker.get()
        {
            source.task = Some(tokio::spawn(run(
                b.clone(),
                id,
                source.partitions.clone(),
                source.added.clone(),
            )));
        }
    }
}

/// Which of a source broker's `fetchers` follows `tp`: Kafka's
/// `abs(31 * topic.hashCode() + partition) % num.replica.fetchers`.
fn fetcher_for(tp: &TopicPartition, fetchers: u32) -> u32 {
    let hash = tp
        .topic
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    let n = hash.wrapping_mul(31).wrapping_add(tp.partition) & 0x7fff_ffff;
    (n as u32) % fetchers.max(1)
}

impl Broker {
    /// This broker follows `partition`, led by `leader` at `leader_epoch`: its fetcher for
    /// that leader takes it (started when needed), from a truncation check. The same
    /// leadership again (an ISR change) changes nothing.
    pub(crate) fn follow(
        &self,
        tp: &TopicPartition,
        partition: Arc<Partition>,
        leader: i32,
        leader_epoch: i32,
    ) {
        let mut sources = self.fetchers.sources.lock().unwrap();
        for ((l, _), s) in sources.iter() {
            let mut ps = s.partitions.lock().unwrap();
            if let Some(f) = ps.get(tp) {
                if *l == leader && f.state.leader_epoch() == leader_epoch {
                    return;
                }
                ps.remove(tp);
            }
        }
        let epochs = partition.log().epoch_cache();
        let (state, step) = FollowerState::new(
            leader,
            leader_epoch,
            &epochs,
            partition.log().log_end_offset(),
            partition.high_watermark(),
        );
        let id = (leader, fetcher_for(tp, self.config.replica_fetch.fetchers));
        let source = sources.entry(id).or_insert_with(|| Source {
            partitions: Arc::default(),
            added: Arc::default(),
            task: None,
        });
        self.fetchers.spawn(id, source);
        source.partitions.lock().unwrap().insert(
            tp.clone(),
            Followed {
                partition,
                state,
                step,
                retry_at: None,
            },
        );
        source
            .added
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        source.added.notify.notify_one();
    }

    /// Starts the fetchers: of the partitions followed so far, and of those to come.
    pub fn start_replication(self: &Arc<Self>) {
        let _ = self.fetchers.broker.set(Arc::downgrade(self));
        let mut sources = self.fetchers.sources.lock().unwrap();
        for (id, source) in sources.iter_mut() {
            self.fetchers.spawn(*id, source);
        }
    }

    /// This broker no longer follows `tp` (it leads it now, or the replica is gone).
    pub(crate) fn unfollow(&self, tp: &TopicPartition) {
        for s in self.fetchers.sources.lock().unwrap().values() {
            s.partitions.lock().unwrap().remove(tp);
        }
    }
}

/// Fetcher `id`, until the broker goes away.
async fn run(
    broker: Weak<Broker>,
    id: FetcherId,
    partitions: Arc<Mutex<BTreeMap<TopicPartition, Followed>>>,
    added: Arc<Added>,
) {
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let backoff = Duration::from_millis(b.config.replica_fetch.backoff_ms);
        let done = round(&b, id, &partitions, &added).await;
        drop(b);
        match done {
            Round::Busy => {}
            Round::Idle => tokio::time::sleep(IDLE.min(backoff)).await,
            Round::Failed => tokio::time::sleep(backoff).await,
        }
    }
}

/// One round: truncation checks, then one fetch.
async fn round(
    b: &Broker,
    (leader, fetcher): FetcherId,
    partitions: &Mutex<BTreeMap<TopicPartition, Followed>>,
    added: &Added,
) -> Round {
    let config = b.config.replica_fetch;
    let now = tokio::time::Instant::now();
    // Read before the request is made: a partition added later interrupts it.
    let generation = added.generation.load(std::sync::atomic::Ordering::Acquire);
    // Truncations first: the fetch offset is where the logs agree.
    let asks: Vec<(TopicPartition, i32, i32)> = {
        let mut ps = partitions.lock().unwrap();
        let mut asks = Vec::new();
        for (tp, f) in ps.iter_mut() {
            if let Step::AskEpochEnd { truncate_to, epoch } = f.step.clone() {
                if let Some(to) = truncate_to
                    && let Err(e) = f.partition.truncate_to(to)
                {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "truncation failed");
                    continue;
                }
                f.step = Step::AskEpochEnd {
                    truncate_to: None,
                    epoch,
                };
                asks.push((tp.clone(), epoch, f.state.leader_epoch()));
            }
        }
        asks
    };
    if !asks.is_empty() {
        let Some(answers) = ask_epoch_ends(b, leader, &asks).await else {
            return Round::Failed;
        };
        let mut ps = partitions.lock().unwrap();
        for (tp, answer) in answers {
            if let Some(f) = ps.get_mut(&tp) {
                let log = f.partition.log();
                f.step = f
                    .state
                    .on_epoch_end(answer, &log.epoch_cache(), log.log_end_offset());
            }
        }
        return Round::Busy;
    }
    // Then the fetch, from each partition's log end.
    // The earliest time a refused partition may be asked again: the long poll must not
    // outlast it, or that partition waits for the whole poll (a follower that learned of a
    // new partition before its leader did was refused once, then waited out the poll).
    let mut next_retry: Option<tokio::time::Instant> = None;
    let wanted: Vec<(TopicPartition, i64, i32)> = {
        let mut ps = partitions.lock().unwrap();
        let mut wanted = Vec::new();
        for (tp, f) in ps.iter_mut() {
            if let Some(at) = f.retry_at.filter(|at| *at > now) {
                next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                continue;
            }
            if let Step::Fetch { truncate_to, .. } = f.step.clone() {
                if let Some(to) = truncate_to {
                    if let Err(e) = f.partition.truncate_to(to) {
                        tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "truncation failed");
                        continue;
                    }
                    f.step = Step::Fetch {
                        truncate_to: None,
                        offset: to,
                    };
                }
                let end = f.partition.log().log_end_offset();
                wanted.push((tp.clone(), end as i64, f.state.leader_epoch()));
            }
        }
        wanted
    };
    if wanted.is_empty() {
        return Round::Idle;
    }
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (tp, offset, epoch) in &wanted {
        let p = FetchPartition {
            partition: tp.partition,
            fetch_offset: *offset,
            current_leader_epoch: *epoch,
            partition_max_bytes: config.max_bytes,
            log_start_offset: -1,
            ..Default::default()
        };
        match topics.last_mut() {
            Some(t) if t.topic == tp.topic => t.partitions.push(p),
            _ => topics.push(FetchTopic {
                topic: tp.topic.clone(),
                partitions: vec![p],
                ..Default::default()
            }),
        }
    }
    let max_wait_ms = match next_retry {
        Some(at) => {
            let until = at.saturating_duration_since(now).as_millis() as i32;
            config.wait_max_ms.min(until.max(1))
        }
        None => config.wait_max_ms,
    };
    let req = FetchRequest {
        replica_id: b.config.node_id,
        max_wait_ms,
        min_bytes: 1,
        max_bytes: config.response_max_bytes,
        topics,
        ..Default::default()
    };
    let fetched = {
        let fetch = b.fetch_from_broker(leader, fetcher, &req);
        tokio::pin!(fetch);
        loop {
            tokio::select! {
                r = &mut fetch => break Some(r),
                _ = added.notify.notified() => {
                    if added.generation.load(std::sync::atomic::Ordering::Acquire) != generation {
                        break None;
                    }
                }
            }
        }
        // The abandoned fetch is dropped here, before the connections are touched: it may
        // be holding them (it was connecting), and waiting for it would wait forever.
    };
    let Some(fetched) = fetched else {
        // The leader answers a connection's requests in order: the next fetch goes on a
        // new connection rather than wait behind this one's long poll.
        b.reset_fetch_connection(leader, fetcher).await;
        return Round::Busy;
    };
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(leader, error = %e, "replica fetch failed");
            return Round::Failed;
        }
    };
    let retry_at = tokio::time::Instant::now() + Duration::from_millis(config.backoff_ms);
    let mut ps = partitions.lock().unwrap();
    for f in fetched {
        let tp = TopicPartition::new(f.topic.clone(), f.partition);
        let Some(followed) = ps.get_mut(&tp) else {
            continue;
        };
        match f.error_code {
            errors::NONE => followed.retry_at = None,
            // The leader moved on or is not there yet: the metadata will say (and reset the
            // partition); until then it is not asked again at every round.
            errors::FENCED_LEADER_EPOCH
            | errors::UNKNOWN_LEADER_EPOCH
            | errors::NOT_LEADER_OR_FOLLOWER
            | errors::UNKNOWN_TOPIC_OR_PARTITION => {
                followed.retry_at = Some(retry_at);
                continue;
            }
            // This replica's log is past the leader's: check where they diverge again.
            errors::OFFSET_OUT_OF_RANGE => {
                let log = followed.partition.log();
                let (state, step) = FollowerState::new(
                    followed.state.leader(),
                    followed.state.leader_epoch(),
                    &log.epoch_cache(),
                    log.log_end_offset(),
                    followed.partition.high_watermark(),
                );
                followed.state = state;
                followed.step = step;
                continue;
            }
            code => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, code, "replica fetch refused");
                followed.retry_at = Some(retry_at);
                continue;
            }
        }
        let whole = whole_batches(&f.records);
        if !whole.is_empty()
            && let Err(e) = followed.partition.append_replicated(whole)
        {
            tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot store replicated batches");
            continue;
        }
        let end = followed.partition.log().log_end_offset();
        let hw = followed
            .state
            .on_fetched(end, f.high_watermark.max(0) as u64);
        followed.partition.set_follower_high_watermark(hw);
    }
    Round::Busy
}

/// The complete batches at the start of `records`: a leader may cut the last one at the
/// size limit, and the next fetch starts at it again.
fn whole_batches(records: &[u8]) -> &[u8] {
    let mut pos = 0;
    while let Ok((_, size)) = strom_storage::batch::check_framing(&records[pos..]) {
        if pos + size > records.len() {
            break;
        }
        pos += size;
    }
    &records[..pos]
}

/// OffsetForLeaderEpoch to `leader` for each (partition, epoch asked, current leader
/// epoch); `None` when it could not be asked.
async fn ask_epoch_ends(
    b: &Broker,
    leader: i32,
    asks: &[(TopicPartition, i32, i32)],
) -> Option<Vec<(TopicPartition, (i32, i64))>> {
    let mut topics: Vec<OffsetForLeaderTopic> = Vec::new();
    for (tp, epoch, current) in asks {
        let p = OffsetForLeaderPartition {
            partition: tp.partition,
            current_leader_epoch: *current,
            leader_epoch: *epoch,
            ..Default::default()
        };
        match topics.last_mut() {
            Some(t) if t.topic == tp.topic => t.partitions.push(p),
            _ => topics.push(OffsetForLeaderTopic {
                topic: tp.topic.clone(),
                partitions: vec![p],
                ..Default::default()
            }),
        }
    }
    let req = OffsetForLeaderEpochRequest {
        replica_id: b.config.node_id,
        topics,
        ..Default::default()
    };
    let resp = match b
        .send_to_broker(leader, &req, 4, "OffsetForLeaderEpoch")
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(leader, error = %e, "OffsetForLeaderEpoch failed");
            return None;
        }
    };
    let mut out = Vec::new();
    for t in resp.topics {
        for p in t.partitions {
            // A refused partition is asked again next round.
            if p.error_code == errors::NONE {
                out.push((
                    TopicPartition::new(t.topic.clone(), p.partition),
                    (p.leader_epoch, p.end_offset),
                ));
            }
        }
    }
    Some(out)
}
