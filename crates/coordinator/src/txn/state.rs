//! The transaction coordinator's decisions for one transactional id, as a state machine:
//! InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and timeouts go in; the
//! answer and what to do (persist the new state, write markers) come out. No I/O.
//!
//! States as in Kafka: Empty -> Ongoing -> PrepareCommit|PrepareAbort ->
//! CompleteCommit|CompleteAbort -> Ongoing ... A Prepare* state is persisted before any
//! marker is written, so a coordinator restarted in between finishes the job.

use std::collections::BTreeSet;

pub use strom_metadata::errors::{
    CONCURRENT_TRANSACTIONS, INVALID_PRODUCER_EPOCH, INVALID_PRODUCER_ID_MAPPING,
    INVALID_TRANSACTION_TIMEOUT, INVALID_TXN_STATE, PRODUCER_FENCED,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub const ALL: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn completing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's state, as it is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Topic partitions in the transaction (group offsets count as their
    /// `__consumer_offsets` partition).
    pub partitions: BTreeSet<(String, i32)>,
    pub start_ms: i64,
    pub last_update_ms: i64,
    /// The producer id before the last InitProducerId changed the epoch (in memory only, as
    /// in Kafka): after a new producer id, the old one may still retry its InitProducerId.
    pub last_producer_id: i64,
    /// The epoch an InitProducerId with an expected epoch bumped (in memory only, as in
    /// Kafka): its retry, whose response was lost, gets the current epoch again. -1 when a
    /// new incarnation or a fence has taken over since.
    pub last_producer_epoch: i16,
}

/// What the coordinator must do after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the metadata to `__transaction_state` (before answering).
    Persist(TxnMetadata),
    /// Write commit (true) or abort markers with this producer id and epoch to these
    /// partitions; then call [`TxnMetadata::complete`].
    WriteMarkers {
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: BTreeSet<(String, i32)>,
    },
}

/// The answer for the client (a value or a Kafka error code) and what to do, in order.
/// Actions can come with an error: a fenced incarnation's transaction is aborted while
/// the new producer is told CONCURRENT_TRANSACTIONS.
pub type Decision<T> = (Result<T, i16>, Vec<Action>);

fn fail<T>(code: i16) -> Decision<T> {
    (Err(code), vec![])
}

/// No more epochs for this producer id: Short.MaxValue is kept for fencing, so that the
/// coordinator can always fence the current producer.
fn epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

impl TxnMetadata {
    pub fn new(transactional_id: &str, producer_id: i64, timeout_ms: i32, now: i64) -> TxnMetadata {
        TxnMetadata {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now,
            last_producer_id: -1,
            last_producer_epoch: -1,
        }
    }

    /// The producer's id and epoch must be the current ones. Any other epoch, older or newer,
    /// is PRODUCER_FENCED, as in Kafka's AddPartitionsToTxn and EndTxn (handlers tell old
    /// request versions INVALID_PRODUCER_EPOCH instead).
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), i16> {
        if producer_id != self.producer_id {
            return Err(INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch != self.producer_epoch {
            return Err(PRODUCER_FENCED);
        }
        Ok(())
    }

    /// Kafka's isValidProducerId: the id and epoch a producer gives with InitProducerId are
    /// accepted when the entry is new (epoch -1: the id expired and the producer recovers),
    /// when the id is the current one (the epoch is checked later), or when the id is the
    /// previous one and its epoch is exhausted (a retry after the id was rotated).
    fn valid_expected(&self, (producer_id, epoch): (i64, i16)) -> bool {
        self.producer_epoch == -1
            || producer_id == self.producer_id
            || (producer_id == self.last_producer_id && epoch_exhausted(epoch))
    }

    /// Starts an abort of the open transaction with a bumped epoch (fencing the producer).
    fn begin_abort(&mut self, now: i64, actions: &mut Vec<Action>) {
        self.state = TxnState::PrepareAbort;
        self.last_update_ms = now;
        actions.push(Action::Persist(self.clone()));
        actions.push(Action::WriteMarkers {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            commit: false,
            partitions: self.partitions.clone(),
        });
    }

    /// InitProducerId with this transactional id. `expected` is the producer id and epoch a
    /// v3+ producer gives to have its own epoch bumped (KIP-360); another incarnation's is
    /// fenced, and a retry of a bump that succeeded gets the same answer again.
    /// `new_producer_id` is used when the epoch is exhausted. An open transaction of the
    /// previous incarnation is aborted first; the caller answers CONCURRENT_TRANSACTIONS
    /// until that is done (the client retries).
    pub fn init_producer(
        &mut self,
        timeout_ms: i32,
        max_timeout_ms: i32,
        expected: Option<(i64, i16)>,
        new_producer_id: impl FnOnce() -> Result<i64, i16>,
        now: i64,
    ) -> Decision<(i64, i16)> {
        if timeout_ms <= 0 || timeout_ms > max_timeout_ms {
            return fail(INVALID_TRANSACTION_TIMEOUT);
        }
        if expected.is_some_and(|e| !self.valid_expected(e)) {
            return fail(PRODUCER_FENCED);
        }
        let mut actions = Vec::new();
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return fail(CONCURRENT_TRANSACTIONS);
            }
            TxnState::Ongoing => {
                // Fence the old producer: bump the epoch, abort its transaction; the new one
                // retries until the abort is complete.
                self.producer_epoch = self.producer_epoch.saturating_add(1);
                self.last_producer_epoch = -1;
                self.begin_abort(now, &mut actions);
                return (Err(CONCURRENT_TRANSACTIONS), actions);
            }
            _ => {}
        }
        // With an expected epoch, the epoch before the bump is remembered for retries.
        let last_epoch = if expected.is_some() {
            self.producer_epoch
        } else {
            -1
        };
        match expected {
            Some((_, epoch)) if self.producer_epoch != -1 && epoch != self.producer_epoch => {
                if self.last_producer_epoch == -1 || epoch != self.last_producer_epoch {
                    return fail(PRODUCER_FENCED);
                }
                // A retry of a bump whose response was lost: the same id and epoch again.
            }
            _ if epoch_exhausted(self.producer_epoch) => match new_producer_id() {
                Ok(id) => {
                    self.last_producer_id = self.producer_id;
                    self.last_producer_epoch = last_epoch;
                    self.producer_id = id;
                    self.producer_epoch = 0;
                }
                Err(code) => return fail(code),
            },
            _ => {
                self.last_producer_id = self.producer_id;
                self.last_producer_epoch = last_epoch;
                self.producer_epoch += 1;
            }
        }
        self.timeout_ms = timeout_ms;
        self.state = TxnState::Empty;
        self.partitions.clear();
        self.start_ms = -1;
        self.last_update_ms = now;
        actions.push(Action::Persist(self.clone()));
        (Ok((self.producer_id, self.producer_epoch)), actions)
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's offsets partition).
    pub fn add_partitions(
        &mut self,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        now: i64,
    ) -> Decision<()> {
        if let Err(e) = self.check_producer(producer_id, epoch) {
            return fail(e);
        }
        if self.state.completing() {
            return fail(CONCURRENT_TRANSACTIONS);
        }
        if self.state == TxnState::Ongoing && partitions.iter().all(|p| self.partitions.contains(p))
        {
            return (Ok(()), vec![]);
        }
        if self.state != TxnState::Ongoing {
            self.partitions.clear();
            self.start_ms = now;
        }
        self.state = TxnState::Ongoing;
        self.partitions.extend(partitions.iter().cloned());
        self.last_update_ms = now;
        (Ok(()), vec![Action::Persist(self.clone())])
    }

    /// EndTxn: commit or abort. A retry of a finished EndTxn succeeds again; the opposite
    /// decision, or ending nothing, is INVALID_TXN_STATE.
    pub fn end(&mut self, producer_id: i64, epoch: i16, commit: bool, now: i64) -> Decision<()> {
        if let Err(e) = self.check_producer(producer_id, epoch) {
            return fail(e);
        }
        match (self.state, commit) {
            (TxnState::Ongoing, _) => {
                self.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                self.last_update_ms = now;
                (
                    Ok(()),
                    vec![
                        Action::Persist(self.clone()),
                        Action::WriteMarkers {
                            producer_id: self.producer_id,
                            producer_epoch: self.producer_epoch,
                            commit,
                            partitions: self.partitions.clone(),
                        },
                    ],
                )
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                fail(CONCURRENT_TRANSACTIONS)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => (Ok(()), vec![]),
            _ => fail(INVALID_TXN_STATE),
        }
    }

    /// The markers of a Prepare* state are written: the transaction is complete.
    pub fn complete(&mut self, now: i64) -> Vec<Action> {
        self.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return vec![],
        };
        self.partitions.clear();
        self.last_update_ms = now;
        vec![Action::Persist(self.clone())]
    }

    /// transaction.timeout.ms: an open transaction that is too old is aborted, and its
    /// producer fenced by an epoch bump.
    pub fn expire(&mut self, now: i64) -> Vec<Action> {
        if self.state != TxnState::Ongoing || now - self.start_ms <= self.timeout_ms as i64 {
            return vec![];
        }
        self.producer_epoch = self.producer_epoch.saturating_add(1);
        self.last_producer_epoch = -1;
        let mut actions = Vec::new();
        self.begin_abort(now, &mut actions);
        actions
    }

    /// After a restart: a Prepare* state still needs its markers.
    pub fn recover(&self) -> Vec<Action> {
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => vec![Action::WriteMarkers {
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                commit: self.state == TxnState::PrepareCommit,
                partitions: self.partitions.clone(),
            }],
            _ => vec![],
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod table_tests;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn t(p: i32) -> (String, i32) {
        ("t".to_string(), p)
    }

    pub(super) fn persisted(actions: &[Action]) -> Vec<TxnState> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Persist(m) => Some(m.state),
                _ => None,
            })
            .collect()
    }

    pub(super) type Markers = (bool, i16, BTreeSet<(String, i32)>);

    pub(super) fn markers(actions: &[Action]) -> Option<Markers> {
        actions.iter().find_map(|a| match a {
            Action::WriteMarkers {
                commit,
                producer_epoch,
                partitions,
                ..
            } => Some((*commit, *producer_epoch, partitions.clone())),
            _ => None,
        })
    }

    pub(super) fn ready(now: i64) -> TxnMetadata {
        let mut m = TxnMetadata::new("tx", 7, 60_000, now);
        let (r, a) = m.init_producer(60_000, 900_000, None, || Ok(99), now);
        assert_eq!(r, Ok((7, 0)));
        assert_eq!(persisted(&a), vec![TxnState::Empty]);
        m
    }

    #[test]
    fn commit_goes_through_prepare_markers_and_complete() {
        let mut m = ready(0);
        let (r, a) = m.add_partitions(7, 0, &[t(0), t(1)], 10);
        assert_eq!((r, persisted(&a)), (Ok(()), vec![TxnState::Ongoing]));
        assert_eq!(m.start_ms, 10);
        // Adding what is already there writes nothing.
        assert_eq!(m.add_partitions(7, 0, &[t(1)], 11), (Ok(()), vec![]));
        let (r, a) = m.end(7, 0, true, 20);
        assert_eq!(r, Ok(()));
        assert_eq!(persisted(&a), vec![TxnState::PrepareCommit]);
        assert_eq!(
            markers(&a),
            Some((true, 0, [t(0), t(1)].into_iter().collect()))
        );
        // While markers are written, the same EndTxn is told to wait, the other refused.
        assert_eq!(m.end(7, 0, true, 21).0, Err(CONCURRENT_TRANSACTIONS));
        assert_eq!(m.end(7, 0, false, 21).0, Err(INVALID_TXN_STATE));
        assert_eq!(
            m.add_partitions(7, 0, &[t(2)], 21).0,
            Err(CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(persisted(&m.complete(30)), vec![TxnState::CompleteCommit]);
        assert!(m.partitions.is_empty());
        // A retried commit succeeds; an abort of a committed transaction does not.
        assert_eq!(m.end(7, 0, true, 31), (Ok(()), vec![]));
        assert_eq!(m.end(7, 0, false, 31).0, Err(INVALID_TXN_STATE));
        // The next transaction starts fresh.
        assert!(m.add_partitions(7, 0, &[t(5)], 40).0.is_ok());
        assert_eq!(m.partitions, [t(5)].into_iter().collect());
    }

    #[test]
    fn abort_and_ending_nothing() {
        let mut m = ready(0);
        assert_eq!(m.end(7, 0, true, 1).0, Err(INVALID_TXN_STATE));
        assert!(m.add_partitions(7, 0, &[t(0)], 2).0.is_ok());
        let (r, a) = m.end(7, 0, false, 3);
        assert_eq!(r, Ok(()));
        assert_eq!(markers(&a).map(|m| m.0), Some(false));
        m.complete(4);
        assert_eq!(m.state, TxnState::CompleteAbort);
    }

    #[test]
    fn a_new_incarnation_fences_the_old_and_aborts_its_transaction() {
        let mut m = ready(0);
        assert!(m.add_partitions(7, 0, &[t(0)], 1).0.is_ok());
        let (r, a) = m.init_producer(60_000, 900_000, None, || Ok(99), 2);
        assert_eq!(r, Err(CONCURRENT_TRANSACTIONS));
        assert_eq!(persisted(&a), vec![TxnState::PrepareAbort]);
        assert_eq!(markers(&a), Some((false, 1, [t(0)].into_iter().collect())));
        // The zombie is fenced: its epoch is old now.
        assert_eq!(m.add_partitions(7, 0, &[t(1)], 3).0, Err(PRODUCER_FENCED));
        assert_eq!(m.end(7, 0, true, 3).0, Err(PRODUCER_FENCED));
        assert_eq!(
            m.init_producer(60_000, 900_000, None, || Ok(99), 3).0,
            Err(CONCURRENT_TRANSACTIONS)
        );
        m.complete(4);
        let (r, _) = m.init_producer(60_000, 900_000, None, || Ok(99), 5);
        assert_eq!(r, Ok((7, 2)));
        assert_eq!(
            m.add_partitions(6, 2, &[t(1)], 6).0,
            Err(INVALID_PRODUCER_ID_MAPPING)
        );
    }

    #[test]
    fn exhausted_epochs_get_a_new_producer_id_and_timeouts_are_checked() {
        let mut m = ready(0);
        m.producer_epoch = i16::MAX - 1;
        assert_eq!(
            m.init_producer(60_000, 900_000, None, || Ok(99), 1).0,
            Ok((99, 0))
        );
        assert_eq!(
            m.init_producer(0, 900_000, None, || Ok(99), 1).0,
            Err(INVALID_TRANSACTION_TIMEOUT)
        );
        assert_eq!(
            m.init_producer(900_001, 900_000, None, || Ok(99), 1).0,
            Err(INVALID_TRANSACTION_TIMEOUT)
        );
    }

    #[test]
    fn open_transactions_time_out_into_an_abort() {
        let mut m = ready(0);
        assert!(m.add_partitions(7, 0, &[t(0)], 100).0.is_ok());
        assert!(m.expire(60_100).is_empty());
        let a = m.expire(60_101);
        assert_eq!(persisted(&a), vec![TxnState::PrepareAbort]);
        assert_eq!(markers(&a).map(|m| (m.0, m.1)), Some((false, 1)));
        assert_eq!(m.end(7, 0, true, 60_102).0, Err(PRODUCER_FENCED));
    }

    #[test]
    fn a_restarted_coordinator_finishes_prepared_transactions() {
        let mut m = ready(0);
        assert!(m.add_partitions(7, 0, &[t(0)], 1).0.is_ok());
        assert!(m.end(7, 0, true, 2).0.is_ok());
        let restored = m.clone();
        assert_eq!(
            markers(&restored.recover()),
            Some((true, 0, [t(0)].into_iter().collect()))
        );
        m.complete(3);
        assert!(m.recover().is_empty());
    }
}
