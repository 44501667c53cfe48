//! The transaction state machine as a table: (state, operation) -> (answer, new state, what
//! is persisted, which markers are written), and Kafka's InitProducerId rules for expected
//! producer ids and epochs (KIP-360).

use super::tests::{Markers, markers, persisted, ready, t};
use super::*;
use strom_metadata::errors::COORDINATOR_NOT_AVAILABLE;

const PID: i64 = 7;
const EPOCH: i16 = 3;
const NOW: i64 = 1_000_000;

/// A transactional id in `state`, producer 7 at epoch 3; open and completing transactions
/// have partition t-0 and started at 100.
fn in_state(state: TxnState) -> TxnMetadata {
    let mut m = TxnMetadata::new("tx", PID, 60_000, 0);
    m.producer_epoch = EPOCH;
    m.state = state;
    if matches!(
        state,
        TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
    ) {
        m.partitions.insert(t(0));
    }
    if state != TxnState::Empty {
        m.start_ms = 100;
    }
    m
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// InitProducerId from a new incarnation (no expected id and epoch).
    Init,
    /// AddPartitionsToTxn with t-1 by the current producer.
    Add,
    /// EndTxn by the current producer: commit (true) or abort.
    End(bool),
    /// The transaction timeout check, long after the start.
    Expire,
    /// The markers are written.
    Complete,
}

fn apply(m: &mut TxnMetadata, op: Op) -> (Result<(), i16>, Vec<Action>) {
    match op {
        Op::Init => {
            let (r, a) = m.init_producer(60_000, 900_000, None, || Ok(99), NOW);
            (r.map(|_| ()), a)
        }
        Op::Add => m.add_partitions(PID, EPOCH, &[t(1)], NOW),
        Op::End(commit) => m.end(PID, EPOCH, commit, NOW),
        Op::Expire => (Ok(()), m.expire(NOW)),
        Op::Complete => (Ok(()), m.complete(NOW)),
    }
}

struct Row {
    state: TxnState,
    op: Op,
    result: Result<(), i16>,
    new_state: TxnState,
    persisted: &'static [TxnState],
    /// Commit (true) or abort markers.
    markers: Option<bool>,
}

const fn row(
    state: TxnState,
    op: Op,
    result: Result<(), i16>,
    new_state: TxnState,
    persisted: &'static [TxnState],
    markers: Option<bool>,
) -> Row {
    Row {
        state,
        op,
        result,
        new_state,
        persisted,
        markers,
    }
}

use TxnState::{CompleteAbort, CompleteCommit, Empty, Ongoing, PrepareAbort, PrepareCommit};

const OK: Result<(), i16> = Ok(());
const BAD_STATE: Result<(), i16> = Err(INVALID_TXN_STATE);
const WAIT: Result<(), i16> = Err(CONCURRENT_TRANSACTIONS);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // EndTxn
    row(Empty, Op::End(false), BAD_STATE, Empty, &[], None),
    row(Empty, Op::End(true), BAD_STATE, Empty, &[], None),
    row(Ongoing, Op::End(true), OK, PrepareCommit, &[PrepareCommit], Some(true)),
    row(Ongoing, Op::End(false), OK, PrepareAbort, &[PrepareAbort], Some(false)),
    row(PrepareCommit, Op::End(true), WAIT, PrepareCommit, &[], None),
    row(PrepareCommit, Op::End(false), BAD_STATE, PrepareCommit, &[], None),
    row(PrepareAbort, Op::End(false), WAIT, PrepareAbort, &[], None),
    row(PrepareAbort, Op::End(true), BAD_STATE, PrepareAbort, &[], None),
    // A retried EndTxn of a finished transaction succeeds; the opposite one does not.
    row(CompleteCommit, Op::End(true), OK, CompleteCommit, &[], None),
    row(CompleteCommit, Op::End(false), BAD_STATE, CompleteCommit, &[], None),
    row(CompleteAbort, Op::End(false), OK, CompleteAbort, &[], None),
    row(CompleteAbort, Op::End(true), BAD_STATE, CompleteAbort, &[], None),
    // InitProducerId
    row(Empty, Op::Init, OK, Empty, &[Empty], None),
    row(Ongoing, Op::Init, WAIT, PrepareAbort, &[PrepareAbort], Some(false)),
    row(PrepareCommit, Op::Init, WAIT, PrepareCommit, &[], None),
    row(PrepareAbort, Op::Init, WAIT, PrepareAbort, &[], None),
    row(CompleteCommit, Op::Init, OK, Empty, &[Empty], None),
    row(CompleteAbort, Op::Init, OK, Empty, &[Empty], None),
    // AddPartitionsToTxn
    row(Empty, Op::Add, OK, Ongoing, &[Ongoing], None),
    row(Ongoing, Op::Add, OK, Ongoing, &[Ongoing], None),
    row(PrepareCommit, Op::Add, WAIT, PrepareCommit, &[], None),
    row(PrepareAbort, Op::Add, WAIT, PrepareAbort, &[], None),
    row(CompleteCommit, Op::Add, OK, Ongoing, &[Ongoing], None),
    row(CompleteAbort, Op::Add, OK, Ongoing, &[Ongoing], None),
    // The timeout only ever aborts an open transaction.
    row(Empty, Op::Expire, OK, Empty, &[], None),
    row(Ongoing, Op::Expire, OK, PrepareAbort, &[PrepareAbort], Some(false)),
    row(PrepareCommit, Op::Expire, OK, PrepareCommit, &[], None),
    row(PrepareAbort, Op::Expire, OK, PrepareAbort, &[], None),
    row(CompleteCommit, Op::Expire, OK, CompleteCommit, &[], None),
    row(CompleteAbort, Op::Expire, OK, CompleteAbort, &[], None),
    // Written markers complete only a Prepare* state.
    row(Empty, Op::Complete, OK, Empty, &[], None),
    row(Ongoing, Op::Complete, OK, Ongoing, &[], None),
    row(PrepareCommit, Op::Complete, OK, CompleteCommit, &[CompleteCommit], None),
    row(PrepareAbort, Op::Complete, OK, CompleteAbort, &[CompleteAbort], None),
    row(CompleteCommit, Op::Complete, OK, CompleteCommit, &[], None),
    row(CompleteAbort, Op::Complete, OK, CompleteAbort, &[], None),
];

#[test]
fn the_state_machine_table() {
    for r in TABLE {
        let case = format!("{:?} in {:?}", r.op, r.state);
        let mut m = in_state(r.state);
        let before = m.clone();
        let (result, actions) = apply(&mut m, r.op);
        assert_eq!(result, r.result, "{case}: answer");
        assert_eq!(m.state, r.new_state, "{case}: new state");
        assert_eq!(persisted(&actions), r.persisted, "{case}: persisted");
        assert_eq!(
            markers(&actions).map(|(commit, ..)| commit),
            r.markers,
            "{case}: markers"
        );
        if actions.is_empty() {
            assert_eq!(m, before, "{case}: nothing to do changes nothing");
        }
        // What is persisted is the state the coordinator is left in.
        if let Some(Action::Persist(last)) = actions
            .iter()
            .rev()
            .find(|a| matches!(a, Action::Persist(_)))
        {
            assert_eq!(*last, m, "{case}: persisted snapshot");
        }
        // Markers go to the transaction's partitions, before anything is forgotten.
        if let Some((_, epoch, partitions)) = markers(&actions) {
            assert_eq!(partitions, before.partitions, "{case}: marker partitions");
            assert_eq!(epoch, m.producer_epoch, "{case}: marker epoch");
        }
    }
}

#[test]
fn end_txn_persists_the_prepare_state_then_writes_markers() {
    for commit in [true, false] {
        let mut m = in_state(Ongoing);
        let (r, actions) = m.end(PID, EPOCH, commit, NOW);
        assert_eq!(r, Ok(()));
        let mut prepared = in_state(Ongoing);
        prepared.state = if commit { PrepareCommit } else { PrepareAbort };
        prepared.last_update_ms = NOW;
        assert_eq!(
            actions,
            vec![
                Action::Persist(prepared),
                Action::WriteMarkers {
                    producer_id: PID,
                    producer_epoch: EPOCH,
                    commit,
                    partitions: [t(0)].into_iter().collect(),
                },
            ]
        );
    }
}

#[test]
fn any_epoch_but_the_current_one_is_fenced() {
    for epoch in [EPOCH - 1, EPOCH + 1] {
        let mut m = in_state(Ongoing);
        assert_eq!(
            m.add_partitions(PID, epoch, &[t(1)], NOW),
            (Err(PRODUCER_FENCED), vec![])
        );
        assert_eq!(m.end(PID, epoch, true, NOW), (Err(PRODUCER_FENCED), vec![]));
        assert_eq!(m, in_state(Ongoing));
    }
    let mut m = in_state(Ongoing);
    assert_eq!(
        m.end(PID + 1, EPOCH, true, NOW).0,
        Err(INVALID_PRODUCER_ID_MAPPING)
    );
}

#[test]
fn init_after_a_timeout_abort_is_two_epochs_on() {
    let mut m = ready(0);
    assert!(m.add_partitions(7, 0, &[t(0)], 10).0.is_ok());
    let a = m.expire(60_011);
    assert_eq!(markers(&a).map(|(c, e, _)| (c, e)), Some((false, 1)));
    m.complete(60_012);
    assert_eq!(m.state, CompleteAbort);
    let (r, a) = m.init_producer(60_000, 900_000, None, || Ok(99), 60_013);
    assert_eq!(r, Ok((7, 2)));
    assert_eq!(persisted(&a), vec![Empty]);
}

fn init(m: &mut TxnMetadata, expected: Option<(i64, i16)>) -> Result<(i64, i16), i16> {
    let (r, a) = m.init_producer(60_000, 900_000, expected, || Ok(99), NOW);
    match r {
        Ok(_) => assert_eq!(persisted(&a), vec![Empty], "{expected:?}"),
        Err(_) => assert!(a.is_empty(), "{expected:?}"),
    }
    r
}

#[test]
fn a_new_entry_accepts_any_expected_producer() {
    // The transactional id expired; the producer comes back with the id it had.
    let mut m = TxnMetadata::new("tx", 7, 60_000, 0);
    assert_eq!(init(&mut m, Some((5, 3))), Ok((7, 0)));
}

#[test]
fn another_producer_id_is_fenced() {
    let mut m = ready(0);
    assert_eq!(init(&mut m, Some((8, 0))), Err(PRODUCER_FENCED));
    assert_eq!(init(&mut m, Some((7, 5))), Err(PRODUCER_FENCED));
    assert_eq!((m.producer_id, m.producer_epoch), (7, 0));
}

#[test]
fn a_retried_epoch_bump_gets_the_same_epoch() {
    let mut m = ready(0);
    assert_eq!(init(&mut m, Some((7, 0))), Ok((7, 1)));
    // The response was lost: the retry gives the old epoch and gets the bumped one again.
    assert_eq!(init(&mut m, Some((7, 0))), Ok((7, 1)));
    assert_eq!(init(&mut m, Some((7, 1))), Ok((7, 2)));
    assert_eq!(init(&mut m, Some((7, 1))), Ok((7, 2)));
    // A new incarnation takes over: the old producer's retries are fenced now.
    assert_eq!(init(&mut m, None), Ok((7, 3)));
    assert_eq!(init(&mut m, Some((7, 1))), Err(PRODUCER_FENCED));
    assert_eq!(init(&mut m, Some((7, 2))), Err(PRODUCER_FENCED));
    assert_eq!(init(&mut m, Some((7, 3))), Ok((7, 4)));
}

#[test]
fn a_fence_forgets_the_epoch_a_retry_could_have() {
    let mut m = ready(0);
    assert_eq!(init(&mut m, Some((7, 0))), Ok((7, 1)));
    assert!(m.add_partitions(7, 1, &[t(0)], 1).0.is_ok());
    let (r, _) = m.init_producer(60_000, 900_000, None, || Ok(99), 2);
    assert_eq!(r, Err(CONCURRENT_TRANSACTIONS));
    m.complete(3);
    assert_eq!(init(&mut m, Some((7, 0))), Err(PRODUCER_FENCED));
}

#[test]
fn an_exhausted_epoch_rotates_the_producer_id_and_its_retry_gets_the_new_one() {
    let mut m = ready(0);
    m.producer_epoch = i16::MAX - 1;
    assert_eq!(init(&mut m, Some((7, i16::MAX - 1))), Ok((99, 0)));
    assert_eq!(
        (m.last_producer_id, m.last_producer_epoch),
        (7, i16::MAX - 1)
    );
    assert_eq!(init(&mut m, Some((7, i16::MAX - 1))), Ok((99, 0)));
    assert_eq!(init(&mut m, Some((7, 5))), Err(PRODUCER_FENCED));
    assert_eq!(init(&mut m, None), Ok((99, 1)));
    assert_eq!(init(&mut m, Some((7, i16::MAX - 1))), Err(PRODUCER_FENCED));
}

#[test]
fn no_new_producer_id_leaves_the_state_alone() {
    let mut m = ready(0);
    m.producer_epoch = i16::MAX - 1;
    let before = m.clone();
    let r = m.init_producer(60_000, 900_000, None, || Err(COORDINATOR_NOT_AVAILABLE), 1);
    assert_eq!(r, (Err(COORDINATOR_NOT_AVAILABLE), vec![]));
    assert_eq!(m, before);
}

#[test]
fn recovery_markers_follow_the_prepared_decision() {
    for (state, commit) in [(PrepareCommit, true), (PrepareAbort, false)] {
        let m = in_state(state);
        let expected: Markers = (commit, EPOCH, [t(0)].into_iter().collect());
        assert_eq!(markers(&m.recover()), Some(expected), "{state:?}");
    }
    for state in [Empty, Ongoing, CompleteCommit, CompleteAbort] {
        assert!(in_state(state).recover().is_empty(), "{state:?}");
    }
}
