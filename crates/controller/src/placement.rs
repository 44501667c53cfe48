//! Where a new partition's replicas go: spread over the live brokers, over racks when racks
//! are set (no two replicas of a partition on one rack while there are racks to spare), and
//! with leaders (the first replica) balanced. Kafka's rack-aware assignment
//! (`AdminUtils.assignReplicasToBrokers`), with the starting point passed in so that tests
//! and the state machine stay deterministic.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor must be at least 1, got {0}")]
    ReplicationFactorTooSmall(i16),
    #[error("replication factor {rf} is larger than the number of available brokers ({brokers})")]
    NotEnoughBrokers { rf: i16, brokers: usize },
    #[error("some brokers have a rack and others do not: set broker.rack on all or none")]
    PartialRacks,
}

/// Brokers in the order replicas are taken from: by id, or, with racks, alternating over
/// racks (rack a's first broker, rack b's first, ..., rack a's second, ...).
fn ordered(brokers: &[Candidate]) -> Result<Vec<Candidate>, PlacementError> {
    let mut sorted = brokers.to_vec();
    sorted.sort_by_key(|b| b.id);
    let with_rack = sorted.iter().filter(|b| b.rack.is_some()).count();
    if with_rack == 0 {
        return Ok(sorted);
    }
    if with_rack != sorted.len() {
        return Err(PlacementError::PartialRacks);
    }
    let mut by_rack: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for b in sorted {
        by_rack.entry(b.rack.clone().unwrap()).or_default().push(b);
    }
    let mut out = Vec::new();
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    for i in 0..deepest {
        for brokers in by_rack.values() {
            if let Some(b) = brokers.get(i) {
                out.push(b.clone());
            }
        }
    }
    Ok(out)
}

fn replica_index(first: usize, shift: usize, j: usize, n: usize) -> usize {
    (first + 1 + (shift + j) % (n - 1)) % n
}

/// Replica lists for partitions `first_partition..first_partition + count` on `brokers`,
/// `start` choosing where the striping begins (random in the controller, fixed in tests).
pub fn place(
    brokers: &[Candidate],
    first_partition: i32,
    count: i32,
    rf: i16,
    start: usize,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    if rf < 1 {
        return Err(PlacementError::ReplicationFactorTooSmall(rf));
    }
    if rf as usize > brokers.len() {
        return Err(PlacementError::NotEnoughBrokers {
            rf,
            brokers: brokers.len(),
        });
    }
    let list = ordered(brokers)?;
    let n = list.len();
    let racks: BTreeSet<&str> = list.iter().filter_map(|b| b.rack.as_deref()).collect();
    let start_index = start % n;
    let mut shift = start % n;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for p in first_partition..first_partition + count {
        let p = p as usize;
        if p > 0 && p.is_multiple_of(n) {
            shift += 1;
        }
        let first = (p + start_index) % n;
        let mut replicas = vec![list[first].id];
        let mut used_racks: BTreeSet<&str> = list[first].rack.as_deref().into_iter().collect();
        let mut k = 0;
        while replicas.len() < rf as usize {
            let c = &list[replica_index(first, shift, k, n)];
            k += 1;
            if replicas.contains(&c.id) {
                continue;
            }
            // A rack already holding a replica is skipped while other racks are free.
            if let Some(r) = c.rack.as_deref()
                && used_racks.contains(r)
                && used_racks.len() < racks.len()
            {
                continue;
            }
            replicas.push(c.id);
            if let Some(r) = c.rack.as_deref() {
                used_racks.insert(r);
            }
        }
        out.push(replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(racks: &[Option<&str>]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| Candidate {
                id: i as i32 + 1,
                rack: r.map(String::from),
            })
            .collect()
    }

    fn leaders(p: &[Vec<i32>]) -> BTreeMap<i32, usize> {
        let mut m = BTreeMap::new();
        for r in p {
            *m.entry(r[0]).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn replicas_are_distinct_and_leaders_balanced_on_one_to_five_brokers() {
        for n in 1..=5usize {
            for rf in 1..=n as i16 {
                for start in 0..n {
                    let b = brokers(&vec![None; n]);
                    let p = place(&b, 0, 12, rf, start).unwrap();
                    assert_eq!(p.len(), 12);
                    for r in &p {
                        let distinct: BTreeSet<_> = r.iter().collect();
                        assert_eq!((r.len(), distinct.len()), (rf as usize, rf as usize));
                    }
                    let l = leaders(&p);
                    let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
                    assert!(
                        max - min <= 1 && l.len() == n,
                        "{n} brokers, rf {rf}: {l:?}"
                    );
                    // Every broker carries about the same number of replicas too.
                    let mut load: BTreeMap<i32, usize> = BTreeMap::new();
                    for id in p.iter().flatten() {
                        *load.entry(*id).or_insert(0) += 1;
                    }
                    let (lo, hi) = (load.values().min().unwrap(), load.values().max().unwrap());
                    assert!(hi - lo <= 2, "{n} brokers, rf {rf}: {load:?}");
                }
            }
        }
    }

    #[test]
    fn with_racks_no_two_replicas_share_a_rack_while_racks_are_free() {
        let b = brokers(&[Some("a"), Some("a"), Some("b"), Some("b"), Some("c")]);
        let rack = |id: i32| b.iter().find(|c| c.id == id).unwrap().rack.clone();
        for rf in 1..=3 {
            for start in 0..5 {
                for r in place(&b, 0, 10, rf, start).unwrap() {
                    let racks: BTreeSet<_> = r.iter().map(|id| rack(*id)).collect();
                    assert_eq!(racks.len(), rf as usize, "{r:?}");
                }
            }
        }
        // More replicas than racks: racks repeat, brokers do not.
        for r in place(&b, 0, 10, 4, 1).unwrap() {
            let distinct: BTreeSet<_> = r.iter().collect();
            assert_eq!(distinct.len(), 4);
        }
    }

    #[test]
    fn impossible_placements_are_refused_with_the_reason() {
        let b = brokers(&[None, None]);
        assert_eq!(
            place(&b, 0, 1, 3, 0),
            Err(PlacementError::NotEnoughBrokers { rf: 3, brokers: 2 })
        );
        assert_eq!(
            place(&b, 0, 1, 0, 0),
            Err(PlacementError::ReplicationFactorTooSmall(0))
        );
        let mixed = brokers(&[Some("a"), None]);
        assert_eq!(place(&mixed, 0, 1, 1, 0), Err(PlacementError::PartialRacks));
    }

    #[test]
    fn new_partitions_continue_the_striping() {
        let b = brokers(&[None, None, None]);
        let all = place(&b, 0, 6, 2, 0).unwrap();
        let tail = place(&b, 3, 3, 2, 0).unwrap();
        assert_eq!(&all[3..], &tail[..]);
    }
}
