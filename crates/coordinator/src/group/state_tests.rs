//! Interleavings of the group protocol, driven without sockets or clocks.

use super::state::*;
use strom_metadata::errors::NONE;

const DELAY: u64 = 3_000;

fn group() -> Group {
    Group::new("g", GroupConfig::default())
}

fn req(member_id: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), p.as_bytes().to_vec()))
            .collect(),
        require_known_member_id: true,
        fresh_id: [7; 16],
    }
}

fn static_req(member_id: &str, instance: &str) -> JoinRequest {
    JoinRequest {
        instance_id: Some(instance.into()),
        ..req(member_id, &["range"])
    }
}

/// Join as a new dynamic member (v4 flow): MEMBER_ID_REQUIRED, then rejoin with the id.
fn join_new(g: &mut Group, token: u64, now: u64) -> String {
    let JoinOutcome::Now(r) = g.join(req("", &["range"]), token, now) else {
        panic!("parked")
    };
    assert_eq!(r.error, MEMBER_ID_REQUIRED);
    assert_eq!(
        g.join(req(&r.member_id, &["range"]), token, now),
        JoinOutcome::Parked
    );
    r.member_id
}

#[allow(clippy::too_many_arguments)]
fn sync(
    g: &mut Group,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
    protocol: (Option<&str>, Option<&str>),
    assignments: Vec<(String, Vec<u8>)>,
    token: u64,
    now: u64,
) -> SyncOutcome {
    let req = SyncRequest {
        member_id,
        instance_id,
        generation,
        protocol_type: protocol.0,
        protocol_name: protocol.1,
        assignments,
    };
    g.sync(req, token, now)
}

fn joins(g: &mut Group) -> Vec<(u64, JoinResponse)> {
    g.drain_outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Join(t, r) => Some((t, r)),
            _ => None,
        })
        .collect()
}

fn syncs(g: &mut Group) -> Vec<(u64, SyncResponse)> {
    g.drain_outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Sync(t, r) => Some((t, r)),
            _ => None,
        })
        .collect()
}

/// Two members through a whole first rebalance: returns (leader, follower).
fn stable_pair(g: &mut Group) -> (String, String) {
    let a = join_new(g, 1, 0);
    let b = join_new(g, 2, 100);
    // Still within the initial delay, extended by b's join: nobody answered yet.
    g.tick(DELAY);
    assert!(joins(g).is_empty());
    g.tick(100 + DELAY);
    let answered = joins(g);
    assert_eq!(answered.len(), 2);
    assert_eq!(g.state, State::CompletingRebalance);
    assert_eq!(g.generation, 1);
    let leader = g.leader.clone().unwrap();
    assert_eq!(leader, a, "the first member leads");
    for (t, r) in &answered {
        assert_eq!(r.error, NONE);
        assert_eq!(r.generation, 1);
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
        assert_eq!(r.leader, leader);
        if r.member_id == leader {
            assert_eq!(*t, 1);
            assert_eq!(r.members.len(), 2);
        } else {
            assert!(r.members.is_empty(), "only the leader sees the members");
        }
    }
    let follower = b;
    assert_eq!(
        sync(g, &follower, None, 1, (None, None), vec![], 12, 3200),
        SyncOutcome::Parked
    );
    assert_eq!(
        sync(
            g,
            &leader,
            None,
            1,
            (Some("consumer"), Some("range")),
            vec![
                (leader.clone(), b"A".to_vec()),
                (follower.clone(), b"B".to_vec())
            ],
            11,
            3200
        ),
        SyncOutcome::Parked
    );
    let mut done = syncs(g);
    done.sort_by_key(|(t, _)| *t);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].1.assignment, b"A");
    assert_eq!(done[1].1.assignment, b"B");
    assert_eq!(g.state, State::Stable);
    (leader, follower)
}

#[test]
fn first_rebalance_elects_a_leader_and_hands_out_assignments() {
    let mut g = group();
    let (leader, follower) = stable_pair(&mut g);
    assert_eq!(g.heartbeat(&leader, None, 1, 4000), NONE);
    assert_eq!(g.heartbeat(&follower, None, 1, 4000), NONE);
    // A late sync in Stable gets its assignment at once.
    assert_eq!(
        sync(&mut g, &follower, None, 1, (None, None), vec![], 13, 4000),
        SyncOutcome::Now(SyncResponse {
            error: NONE,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignment: b"B".to_vec()
        })
    );
}

#[test]
fn generations_and_unknown_members_are_fenced() {
    let mut g = group();
    let (leader, _) = stable_pair(&mut g);
    assert_eq!(g.heartbeat(&leader, None, 0, 4000), ILLEGAL_GENERATION);
    assert_eq!(g.heartbeat("nobody", None, 1, 4000), UNKNOWN_MEMBER_ID);
    assert_eq!(g.check_commit(&leader, None, 0, false), ILLEGAL_GENERATION);
    assert_eq!(g.check_commit(&leader, None, 1, false), NONE);
    assert_eq!(
        sync(&mut g, &leader, None, 7, (None, None), vec![], 9, 4000),
        SyncOutcome::Now(SyncResponse {
            error: ILLEGAL_GENERATION,
            ..Default::default()
        })
    );
    // Simple consumers and admins may not commit while members are active: the empty
    // member is not one of them (Kafka answers UNKNOWN_MEMBER_ID, which admin tools act on).
    assert_eq!(g.check_commit("", None, -1, false), UNKNOWN_MEMBER_ID);
    assert_eq!(group().check_commit("", None, -1, false), NONE);
}

/// Kafka's `validateOffsetCommit` in every state, for a member of the current generation,
/// one of an old generation, an unknown member and the empty (admin) member, plain and
/// transactional.
#[test]
fn offset_commits_follow_kafkas_rule_in_every_state() {
    use strom_metadata::errors::COORDINATOR_NOT_AVAILABLE;
    // Each state with a known member and its generation.
    let empty = (group(), String::new(), 0);
    let mut preparing = group();
    let (leader, _) = stable_pair(&mut preparing);
    join_new(&mut preparing, 3, 5000);
    assert_eq!(preparing.state, State::PreparingRebalance);
    let preparing = (preparing, leader, 1);
    let mut completing = group();
    let a = join_new(&mut completing, 1, 0);
    completing.tick(DELAY);
    joins(&mut completing);
    assert_eq!(completing.state, State::CompletingRebalance);
    let completing = (completing, a, 1);
    let mut stable = group();
    let (leader, _) = stable_pair(&mut stable);
    assert_eq!(stable.state, State::Stable);
    let stable = (stable, leader, 1);
    let mut dead = group();
    dead.mark_dead(0);
    let dead = (dead, String::new(), 0);

    // (state, plain member, plain old generation, plain unknown, plain admin, txn member,
    //  txn admin)
    let rows = [
        (&empty, NONE, NONE, NONE, NONE, NONE, NONE),
        (
            &preparing,
            NONE,
            ILLEGAL_GENERATION,
            UNKNOWN_MEMBER_ID,
            UNKNOWN_MEMBER_ID,
            NONE,
            NONE,
        ),
        (
            &completing,
            REBALANCE_IN_PROGRESS,
            ILLEGAL_GENERATION,
            UNKNOWN_MEMBER_ID,
            UNKNOWN_MEMBER_ID,
            NONE,
            NONE,
        ),
        (
            &stable,
            NONE,
            ILLEGAL_GENERATION,
            UNKNOWN_MEMBER_ID,
            UNKNOWN_MEMBER_ID,
            NONE,
            NONE,
        ),
        (
            &dead,
            COORDINATOR_NOT_AVAILABLE,
            COORDINATOR_NOT_AVAILABLE,
            COORDINATOR_NOT_AVAILABLE,
            COORDINATOR_NOT_AVAILABLE,
            COORDINATOR_NOT_AVAILABLE,
            COORDINATOR_NOT_AVAILABLE,
        ),
    ];
    for ((g, member, generation), plain, old, unknown, admin, txn, txn_admin) in rows {
        let state = g.state;
        if !member.is_empty() {
            assert_eq!(
                g.check_commit(member, None, *generation, false),
                plain,
                "{state:?}: member"
            );
            assert_eq!(
                g.check_commit(member, None, generation - 1, false),
                old,
                "{state:?}: old generation"
            );
            assert_eq!(
                g.check_commit(member, None, *generation, true),
                txn,
                "{state:?}: txn member"
            );
        } else if state == State::Empty {
            // No members: a member id that commits is unknown whatever its generation.
            assert_eq!(g.check_commit("m", None, 0, false), UNKNOWN_MEMBER_ID);
        }
        if state != State::Empty {
            assert_eq!(
                g.check_commit("nobody", None, 1, false),
                unknown,
                "{state:?}: unknown"
            );
        }
        assert_eq!(
            g.check_commit("", None, -1, false),
            admin,
            "{state:?}: admin"
        );
        assert_eq!(
            g.check_commit("", None, -1, true),
            txn_admin,
            "{state:?}: txn admin"
        );
    }
}

#[test]
fn a_new_member_triggers_a_rebalance_that_waits_for_everyone() {
    let mut g = group();
    let (leader, follower) = stable_pair(&mut g);
    let c = join_new(&mut g, 3, 5000);
    assert_eq!(g.state, State::PreparingRebalance);
    // The others learn of it through their heartbeats.
    assert_eq!(g.heartbeat(&leader, None, 1, 5100), REBALANCE_IN_PROGRESS);
    assert_eq!(
        g.join(req(&leader, &["range"]), 21, 5200),
        JoinOutcome::Parked
    );
    assert!(
        joins(&mut g).is_empty(),
        "the follower has not rejoined yet"
    );
    assert_eq!(
        g.join(req(&follower, &["range"]), 22, 5300),
        JoinOutcome::Parked
    );
    let answered = joins(&mut g);
    assert_eq!(answered.len(), 3);
    assert!(answered.iter().all(|(_, r)| r.generation == 2));
    assert_eq!(g.leader.as_deref(), Some(leader.as_str()));
    assert!(g.members().any(|m| m.member_id == c));
}

#[test]
fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
    let mut g = group();
    let (leader, follower) = stable_pair(&mut g);
    assert_eq!(g.leave(&leader, None, 5000), NONE);
    assert_eq!(g.state, State::PreparingRebalance);
    // The follower keeps heartbeating but never rejoins: its session is alive, but the join
    // phase ends at the rebalance timeout (30 s) without it.
    for t in (6000..35_000).step_by(3000) {
        g.heartbeat(&follower, None, 1, t);
        g.tick(t);
    }
    g.tick(35_000);
    assert_eq!(g.member_count(), 0);
    assert_eq!(g.state, State::Empty);
    assert_eq!(g.generation, 2);
}

#[test]
fn session_expiry_in_stable_rebalances_the_rest() {
    let mut g = group();
    let (leader, follower) = stable_pair(&mut g);
    // Only the leader heartbeats.
    for t in (4000..14_000).step_by(2000) {
        assert_eq!(g.heartbeat(&leader, None, 1, t), NONE);
    }
    g.tick(13_201);
    assert_eq!(g.state, State::PreparingRebalance);
    assert!(!g.members().any(|m| m.member_id == follower));
    assert_eq!(g.heartbeat(&leader, None, 1, 13_300), REBALANCE_IN_PROGRESS);
    assert_eq!(
        g.join(req(&leader, &["range"]), 30, 13_400),
        JoinOutcome::Parked
    );
    let answered = joins(&mut g);
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].1.generation, 2);
    assert_eq!(answered[0].1.members.len(), 1);
}

#[test]
fn leader_dying_during_completing_rebalance_sends_followers_back() {
    let mut g = group();
    let a = join_new(&mut g, 1, 0);
    let b = join_new(&mut g, 2, 0);
    g.tick(DELAY);
    assert_eq!(joins(&mut g).len(), 2);
    assert_eq!(g.leader.as_deref(), Some(a.as_str()));
    // The follower waits for the leader's assignment; the leader never syncs.
    assert_eq!(
        sync(&mut g, &b, None, 1, (None, None), vec![], 50, DELAY + 10),
        SyncOutcome::Parked
    );
    g.tick(DELAY + 10_001);
    let s = syncs(&mut g);
    assert_eq!(
        s,
        vec![(
            50,
            SyncResponse {
                error: REBALANCE_IN_PROGRESS,
                ..Default::default()
            }
        )]
    );
    assert!(!g.members().any(|m| m.member_id == a));
    assert_eq!(
        g.join(req(&b, &["range"]), 51, DELAY + 10_100),
        JoinOutcome::Parked
    );
    let answered = joins(&mut g);
    assert_eq!(answered[0].1.leader, b, "the survivor leads");
}

#[test]
fn leaving_during_a_rebalance_completes_it_for_the_others() {
    let mut g = group();
    let (leader, follower) = stable_pair(&mut g);
    join_new(&mut g, 3, 5000);
    assert_eq!(
        g.join(req(&leader, &["range"]), 21, 5100),
        JoinOutcome::Parked
    );
    assert!(joins(&mut g).is_empty());
    assert_eq!(g.leave(&follower, None, 5200), NONE);
    assert_eq!(joins(&mut g).len(), 2);
    assert_eq!(g.state, State::CompletingRebalance);
    assert_eq!(g.leave(&follower, None, 5300), UNKNOWN_MEMBER_ID);
}

#[test]
fn static_member_restart_rejoins_without_a_rebalance() {
    let mut g = group();
    assert_eq!(g.join(static_req("", "pod-1"), 1, 0), JoinOutcome::Parked);
    assert_eq!(g.join(static_req("", "pod-2"), 2, 0), JoinOutcome::Parked);
    g.tick(DELAY);
    let answered = joins(&mut g);
    let leader = g.leader.clone().unwrap();
    let follower = answered
        .iter()
        .map(|(_, r)| r.member_id.clone())
        .find(|m| *m != leader)
        .unwrap();
    sync(
        &mut g,
        &follower,
        Some("pod-2"),
        1,
        (None, None),
        vec![],
        3,
        DELAY,
    );
    sync(
        &mut g,
        &leader,
        Some("pod-1"),
        1,
        (None, None),
        vec![(follower.clone(), b"P2".to_vec())],
        4,
        DELAY,
    );
    assert_eq!(g.state, State::Stable);
    g.drain_outputs();

    // pod-2 restarts: a new member id, same instance id, same subscription.
    let JoinOutcome::Now(r) = g.join(static_req("", "pod-2"), 5, 4000) else {
        panic!("parked")
    };
    assert_eq!(r.error, NONE);
    assert_eq!(r.generation, 1, "no new generation");
    assert_ne!(r.member_id, follower);
    assert_eq!(g.state, State::Stable);
    let new_id = r.member_id;
    assert_eq!(
        sync(
            &mut g,
            &new_id,
            Some("pod-2"),
            1,
            (None, None),
            vec![],
            6,
            4100
        ),
        SyncOutcome::Now(SyncResponse {
            error: NONE,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignment: b"P2".to_vec()
        })
    );
    // The old incarnation is fenced.
    assert_eq!(
        g.heartbeat(&follower, Some("pod-2"), 1, 4200),
        FENCED_INSTANCE_ID
    );
    assert_eq!(g.heartbeat(&follower, None, 1, 4200), FENCED_INSTANCE_ID);
    assert_eq!(g.heartbeat(&new_id, Some("pod-2"), 1, 4200), NONE);
    // A member claiming someone else's instance id is fenced too.
    assert_eq!(
        g.heartbeat(&leader, Some("pod-2"), 1, 4200),
        FENCED_INSTANCE_ID
    );
}

#[test]
fn static_leader_restart_skips_assignment() {
    let mut g = group();
    g.join(static_req("", "pod-1"), 1, 0);
    g.tick(DELAY);
    let leader = g.leader.clone().unwrap();
    sync(
        &mut g,
        &leader,
        Some("pod-1"),
        1,
        (None, None),
        vec![(leader.clone(), b"L".to_vec())],
        2,
        DELAY,
    );
    let JoinOutcome::Now(r) = g.join(static_req("", "pod-1"), 3, 5000) else {
        panic!("parked")
    };
    assert!(r.skip_assignment);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(g.state, State::Stable);
}

#[test]
fn protocol_selection_and_validation() {
    let mut g = group();
    let JoinOutcome::Now(r) = g.join(req("", &["range", "roundrobin"]), 1, 0) else {
        panic!()
    };
    g.join(req(&r.member_id, &["range", "roundrobin"]), 1, 0);
    let JoinOutcome::Now(r2) = g.join(req("", &["roundrobin", "cooperative-sticky"]), 2, 0) else {
        panic!()
    };
    g.join(
        req(&r2.member_id, &["roundrobin", "cooperative-sticky"]),
        2,
        0,
    );
    g.tick(DELAY);
    assert_eq!(
        g.protocol.as_deref(),
        Some("roundrobin"),
        "the only protocol both support"
    );
    // Nothing in common, or another protocol type: refused.
    let JoinOutcome::Now(bad) = g.join(req("", &["sticky"]), 3, DELAY) else {
        panic!()
    };
    assert_eq!(bad.error, INCONSISTENT_GROUP_PROTOCOL);
    let mut other = req("", &["range"]);
    other.protocol_type = "connect".into();
    let JoinOutcome::Now(bad) = g.join(other, 4, DELAY) else {
        panic!()
    };
    assert_eq!(bad.error, INCONSISTENT_GROUP_PROTOCOL);
    let mut short = req("", &["range"]);
    short.session_timeout_ms = 10;
    let JoinOutcome::Now(bad) = g.join(short, 5, DELAY) else {
        panic!()
    };
    assert_eq!(bad.error, INVALID_SESSION_TIMEOUT);
}

#[test]
fn old_clients_get_a_member_id_without_the_extra_round_trip() {
    let mut g = group();
    let mut r = req("", &["range"]);
    r.require_known_member_id = false;
    assert_eq!(g.join(r, 1, 0), JoinOutcome::Parked);
    g.tick(DELAY);
    let answered = joins(&mut g);
    assert_eq!(answered.len(), 1);
    assert!(!answered[0].1.member_id.is_empty());
}

#[test]
fn pending_members_that_never_return_expire() {
    let mut g = group();
    let JoinOutcome::Now(r) = g.join(req("", &["range"]), 1, 0) else {
        panic!()
    };
    assert_eq!(r.error, MEMBER_ID_REQUIRED);
    g.tick(10_001);
    // Its id is no longer reserved: a rejoin with it is unknown.
    let JoinOutcome::Now(again) = g.join(req(&r.member_id, &["range"]), 2, 10_002) else {
        panic!()
    };
    assert_eq!(again.error, UNKNOWN_MEMBER_ID);
}

#[test]
fn max_group_size_is_enforced() {
    let mut g = Group::new(
        "g",
        GroupConfig {
            max_size: 1,
            ..GroupConfig::default()
        },
    );
    join_new(&mut g, 1, 0);
    let JoinOutcome::Now(r) = g.join(req("", &["range"]), 2, 0) else {
        panic!()
    };
    assert_eq!(r.error, GROUP_MAX_SIZE_REACHED);
}
