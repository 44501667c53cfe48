//! The consumer protocol's bytes (subscriptions and assignments, as the Java client writes
//! them) and the partition assignors a group leader runs: range and cooperative-sticky.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// ConsumerProtocolSubscription v1: the topics a member wants and the partitions it owns
/// (which the cooperative-sticky assignor keeps where they are).
pub fn encode_subscription(topics: &[String], owned: &[(String, i32)]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_i32(topics.len() as i32);
    for t in topics {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
    }
    b.put_i32(-1); // no user data
    let by_topic = group_by_topic(owned);
    b.put_i32(by_topic.len() as i32);
    for (t, ps) in &by_topic {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(*p);
        }
    }
    b.freeze()
}

pub(crate) fn group_by_topic(parts: &[(String, i32)]) -> BTreeMap<String, Vec<i32>> {
    let mut m: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        m.entry(t.clone()).or_default().push(*p);
    }
    m
}

/// A decoded subscription: topics, and the partitions owned (v1+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    pub owned: Vec<(String, i32)>,
}

pub fn decode_subscription_full(mut b: Bytes) -> Option<Subscription> {
    if b.remaining() < 6 {
        return None;
    }
    let version = b.get_i16();
    let n = b.get_i32();
    let topics = (0..n.max(0))
        .map(|_| get_string(&mut b))
        .collect::<Option<Vec<_>>>()?;
    let mut owned = Vec::new();
    if version >= 1 {
        if b.remaining() < 4 {
            return None;
        }
        let user = b.get_i32();
        if user > 0 {
            if b.remaining() < user as usize {
                return None;
            }
            b.advance(user as usize);
        }
        if b.remaining() >= 4 {
            let k = b.get_i32();
            for _ in 0..k.max(0) {
                let t = get_string(&mut b)?;
                if b.remaining() < 4 {
                    return None;
                }
                let m = b.get_i32();
                for _ in 0..m.max(0) {
                    if b.remaining() < 4 {
                        return None;
                    }
                    owned.push((t.clone(), b.get_i32()));
                }
            }
        }
    }
    Some(Subscription { topics, owned })
}

fn get_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_i16();
    if n < 0 || b.remaining() < n as usize {
        return None;
    }
    Some(String::from_utf8_lossy(&b.split_to(n as usize)).into_owned())
}

pub fn decode_subscription(b: Bytes) -> Option<Vec<String>> {
    decode_subscription_full(b).map(|s| s.topics)
}

/// ConsumerProtocolAssignment v0.
pub fn encode_assignment(parts: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(parts.len() as i32);
    for (t, ps) in parts {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(*p);
        }
    }
    b.put_i32(-1);
    b.freeze()
}

pub fn decode_assignment(mut b: Bytes) -> Option<Vec<(String, i32)>> {
    if b.remaining() < 6 {
        return if b.is_empty() { Some(vec![]) } else { None };
    }
    b.get_i16();
    let n = b.get_i32();
    let mut out = Vec::new();
    for _ in 0..n.max(0) {
        let t = get_string(&mut b)?;
        if b.remaining() < 4 {
            return None;
        }
        let k = b.get_i32();
        for _ in 0..k.max(0) {
            if b.remaining() < 4 {
                return None;
            }
            out.push((t.clone(), b.get_i32()));
        }
    }
    Some(out)
}

/// Kafka's RangeAssignor: per topic, partitions split into contiguous ranges over the
/// members subscribed to it, in member id order.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .iter()
        .map(|(m, _)| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &count) in partitions {
        let mut subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        subscribers.sort();
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as i32;
        let per = count / n;
        let extra = count % n;
        for (i, m) in subscribers.iter().enumerate() {
            let i = i as i32;
            let start = per * i + i.min(extra);
            let len = per + if i < extra { 1 } else { 0 };
            if len > 0 {
                out.get_mut(*m)
                    .unwrap()
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

/// The cooperative-sticky assignor: every member keeps what it owns as far as balance
/// allows; partitions that must move are only taken away in this round (their new owner
/// gets them in the next one, once the old owner has let go), as in KIP-429.
pub fn cooperative_sticky_assign(
    members: &[(String, Subscription)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut ids: Vec<&String> = members.iter().map(|(m, _)| m).collect();
    ids.sort();
    let subs: BTreeMap<&String, &Subscription> = members.iter().map(|(m, s)| (m, s)).collect();
    let all: Vec<(String, i32)> = partitions
        .iter()
        .filter(|(t, _)| members.iter().any(|(_, s)| s.topics.contains(t)))
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
        .collect();
    // Each partition stays with its previous owner if that owner still wants it.
    let mut owner: BTreeMap<(String, i32), &String> = BTreeMap::new();
    for m in &ids {
        for tp in &subs[m].owned {
            if all.contains(tp) && subs[m].topics.contains(&tp.0) && !owner.contains_key(tp) {
                owner.insert(tp.clone(), *m);
            }
        }
    }
    let previous = owner.clone();
    let n = ids.len().max(1);
    let (base, mut extra) = (all.len() / n, all.len() % n);
    let mut quota: BTreeMap<&String, usize> = BTreeMap::new();
    // Members that own the most get the larger quotas, so fewer partitions move.
    let mut by_owned: Vec<&String> = ids.clone();
    by_owned.sort_by_key(|m| std::cmp::Reverse(owner.values().filter(|o| **o == *m).count()));
    for m in by_owned {
        quota.insert(
            m,
            base + if extra > 0 {
                extra -= 1;
                1
            } else {
                0
            },
        );
    }
    // Over quota: give back the highest partitions.
    for m in &ids {
        let mut mine: Vec<(String, i32)> = owner
            .iter()
            .filter(|(_, o)| **o == *m)
            .map(|(tp, _)| tp.clone())
            .collect();
        while mine.len() > quota[m] {
            let tp = mine.pop().unwrap();
            owner.remove(&tp);
        }
    }
    // Unowned partitions go to members under quota that subscribe to their topic.
    for tp in &all {
        if owner.contains_key(tp) {
            continue;
        }
        let count = |m: &String| owner.values().filter(|o| **o == m).count();
        if let Some(m) = ids
            .iter()
            .filter(|m| subs[**m].topics.contains(&tp.0) && count(m) < quota[**m])
            .min_by_key(|m| count(m))
        {
            owner.insert(tp.clone(), *m);
        }
    }
    let mut out: BTreeMap<String, Vec<(String, i32)>> =
        ids.iter().map(|m| ((*m).clone(), Vec::new())).collect();
    for (tp, m) in owner {
        // Moving from one member to another: revoke first, assign next round.
        if previous.get(&tp).is_some_and(|old| *old != m) {
            continue;
        }
        out.get_mut(m).unwrap().push(tp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignor_matches_kafka() {
        let members = vec![
            ("c0".to_string(), vec!["t".to_string()]),
            ("c1".to_string(), vec!["t".to_string()]),
            ("c2".to_string(), vec!["t".to_string(), "u".to_string()]),
        ];
        let counts: BTreeMap<String, i32> = [("t".to_string(), 7), ("u".to_string(), 2)]
            .into_iter()
            .collect();
        let a = range_assign(&members, &counts);
        assert_eq!(a["c0"]["t"], vec![0, 1, 2]);
        assert_eq!(a["c1"]["t"], vec![3, 4]);
        assert_eq!(a["c2"]["t"], vec![5, 6]);
        assert_eq!(a["c2"]["u"], vec![0, 1]);
        assert!(!a["c0"].contains_key("u"));
    }

    fn sub(topics: &[&str], owned: &[i32]) -> Subscription {
        Subscription {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|p| ("t".to_string(), *p)).collect(),
        }
    }

    fn parts(a: &BTreeMap<String, Vec<(String, i32)>>, m: &str) -> Vec<i32> {
        a[m].iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn cooperative_sticky_moves_partitions_in_two_rounds() {
        let counts: BTreeMap<String, i32> = [("t".to_string(), 4)].into_iter().collect();
        let a = cooperative_sticky_assign(&[("a".into(), sub(&["t"], &[]))], &counts);
        assert_eq!(parts(&a, "a"), vec![0, 1, 2, 3]);
        // b joins: a keeps half, the other half is only revoked in this round.
        let r1 = cooperative_sticky_assign(
            &[
                ("a".into(), sub(&["t"], &[0, 1, 2, 3])),
                ("b".into(), sub(&["t"], &[])),
            ],
            &counts,
        );
        assert_eq!(parts(&r1, "a"), vec![0, 1]);
        assert!(parts(&r1, "b").is_empty());
        // Second round: the freed partitions go to b; a keeps its own.
        let r2 = cooperative_sticky_assign(
            &[
                ("a".into(), sub(&["t"], &[0, 1])),
                ("b".into(), sub(&["t"], &[])),
            ],
            &counts,
        );
        assert_eq!(parts(&r2, "a"), vec![0, 1]);
        assert_eq!(parts(&r2, "b"), vec![2, 3]);
        // A balanced group stays as it is, whatever the layout.
        let same = cooperative_sticky_assign(
            &[
                ("a".into(), sub(&["t"], &[0, 2])),
                ("b".into(), sub(&["t"], &[1, 3])),
            ],
            &counts,
        );
        assert_eq!(parts(&same, "a"), vec![0, 2]);
        assert_eq!(parts(&same, "b"), vec![1, 3]);
        // A member left: its partitions go straight to the others.
        let left = cooperative_sticky_assign(&[("b".into(), sub(&["t"], &[1, 3]))], &counts);
        assert_eq!(parts(&left, "b"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn subscriptions_carry_owned_partitions() {
        let s = encode_subscription(
            &["t".to_string()],
            &[("t".to_string(), 3), ("t".to_string(), 5)],
        );
        let d = decode_subscription_full(s).unwrap();
        assert_eq!(d.topics, vec!["t"]);
        assert_eq!(d.owned, vec![("t".to_string(), 3), ("t".to_string(), 5)]);
    }

    #[test]
    fn consumer_protocol_round_trips() {
        let topics = vec!["a".to_string(), "bb".to_string()];
        assert_eq!(
            decode_subscription(encode_subscription(&topics, &[])),
            Some(topics)
        );
        let mut parts = BTreeMap::new();
        parts.insert("a".to_string(), vec![0, 2]);
        assert_eq!(
            decode_assignment(encode_assignment(&parts)),
            Some(vec![("a".to_string(), 0), ("a".to_string(), 2)])
        );
        assert_eq!(decode_assignment(Bytes::new()), Some(vec![]));
        assert_eq!(
            decode_assignment(Bytes::from_static(&[0, 0, 0, 0, 0, 1, 0, 9])),
            None
        );
    }
}
