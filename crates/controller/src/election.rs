//! Choosing leaders over the image: from the ISR (or outside it, when the topic allows an
//! unclean election) when brokers are fenced or come back; and Kafka's ElectLeaders, where
//! a preferred election gives each partition back to its first replica when that replica
//! is live and in the ISR (what a restart or a failover took away), and an unclean one
//! gives a partition without a leader any live replica, in or out of the ISR, and says so.

use strom_metadata::errors;
use strom_metadata::image::{NO_LEADER, PartitionInfo, Record, Replicas};

use crate::controller::Controller;

/// One partition's outcome: its topic, index, error code and a message for the operator.
pub type ElectionResult = (String, i32, i16, Option<String>);

impl Controller {
    /// Whether `topic` allows electing a replica outside the ISR: its
    /// `unclean.leader.election.enable`, or the cluster's.
    pub(crate) fn unclean_allowed(&self, topic: &str) -> bool {
        self.image()
            .topics
            .get(topic)
            .and_then(|t| t.configs.get("unclean.leader.election.enable"))
            .map_or(self.config.unclean_leader_election, |v| v.trim() == "true")
    }

    /// The first live replica in the ISR, in replica order (Kafka's preference); with
    /// unclean election allowed for the topic, the first live replica at all (said loudly:
    /// records it lacks are lost); otherwise none, and the partition stays offline.
    pub(crate) fn choose_leader(
        &self,
        topic: &str,
        partition: usize,
        info: &PartitionInfo,
        live: impl Fn(i32) -> bool,
    ) -> i32 {
        let Some(leader) = pick(info, &live, self.unclean_allowed(topic)) else {
            return NO_LEADER;
        };
        if !info.isr.contains(&leader) {
            tracing::warn!(
                topic,
                partition,
                leader,
                isr = ?info.isr,
                "unclean leader election: no replica of the ISR is live, so broker {leader}, outside it, leads; records it lacks are lost (unclean.leader.election.enable=true)"
            );
        }
        leader
    }

    /// Partitions without a leader whose topic allows an unclean election get a live
    /// replica: what the fencing of their last ISR member could not do when the setting
    /// was off, once it is turned on at run time (Kafka's controller checks the same).
    pub fn elect_offline(&self) -> Vec<Record> {
        self.elect_where(
            |name, info| info.leader == NO_LEADER && self.unclean_allowed(name),
            |b| self.is_live(b),
        )
    }

    /// Leaders for the partitions `which` selects, among brokers `live` says are up.
    pub(crate) fn elect_where(
        &self,
        which: impl Fn(&str, &PartitionInfo) -> bool,
        live: impl Fn(i32) -> bool,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        for (name, t) in &self.image().topics {
            for (i, info) in t.partitions.iter().enumerate() {
                if !which(name, info) {
                    continue;
                }
                let leader = self.choose_leader(name, i, info, &live);
                if leader == NO_LEADER {
                    continue;
                }
                let mut next = info.clone();
                next.leader = leader;
                next.leader_epoch += 1;
                next.partition_epoch += 1;
                if !next.isr.contains(&leader) {
                    next.isr = Replicas::from_slice(&[leader]);
                }
                records.push(Record::Partition {
                    topic: name.clone(),
                    partition: i as i32,
                    info: next,
                });
            }
        }
        records
    }

    /// The elections `preferred` (or unclean) asks for, on `which` partitions (every one
    /// when `None`; then the partitions that needed nothing are left out of the results,
    /// as Kafka leaves them out). The records to commit, and a result per partition.
    pub fn elect_leaders(
        &self,
        preferred: bool,
        which: Option<&[(String, i32)]>,
    ) -> (Vec<Record>, Vec<ElectionResult>) {
        let all: Vec<(String, i32)>;
        let asked = match which {
            Some(w) => w,
            None => {
                all = self
                    .image()
                    .topics
                    .iter()
                    .flat_map(|(name, t)| (0..t.partitions.len() as i32).map(|i| (name.clone(), i)))
                    .collect();
                &all
            }
        };
        let mut records = Vec::new();
        let mut results = Vec::new();
        for (topic, partition) in asked {
            let Some(info) = self.image().partition(topic, *partition) else {
                results.push((
                    topic.clone(),
                    *partition,
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    Some("no such partition".into()),
                ));
                continue;
            };
            let choice = if preferred {
                match info.replicas.first() {
                    Some(&p) if p == info.leader => Err((errors::ELECTION_NOT_NEEDED, None)),
                    Some(&p) if self.is_live(p) && info.isr.contains(&p) => Ok(p),
                    Some(&p) => Err((
                        errors::PREFERRED_LEADER_NOT_AVAILABLE,
                        Some(format!(
                            "the preferred replica {p} is {}",
                            if self.is_live(p) {
                                "not in the ISR"
                            } else {
                                "not live"
                            }
                        )),
                    )),
                    None => Err((errors::PREFERRED_LEADER_NOT_AVAILABLE, None)),
                }
            } else if info.leader != NO_LEADER {
                Err((errors::ELECTION_NOT_NEEDED, None))
            } else {
                pick(info, |r| self.is_live(r), true).ok_or((
                    errors::ELIGIBLE_LEADERS_NOT_AVAILABLE,
                    Some("no replica of the partition is live".into()),
                ))
            };
            match choice {
                Ok(leader) => {
                    let mut next = info.clone();
                    next.leader = leader;
                    next.leader_epoch += 1;
                    next.partition_epoch += 1;
                    if !next.isr.contains(&leader) {
                        tracing::warn!(
                            topic,
                            partition,
                            leader,
                            isr = ?info.isr,
                            "unclean leader election asked for: broker {leader}, outside the ISR, leads; records it lacks are lost"
                        );
                        next.isr = Replicas::from_slice(&[leader]);
                    }
                    records.push(Record::Partition {
                        topic: topic.clone(),
                        partition: *partition,
                        info: next,
                    });
                    results.push((topic.clone(), *partition, errors::NONE, None));
                }
                Err((errors::ELECTION_NOT_NEEDED, _)) if which.is_none() => {}
                Err((code, message)) => results.push((topic.clone(), *partition, code, message)),
            }
        }
        (records, results)
    }

    /// Kafka's `auto.leader.rebalance.enable`: when more than `imbalance_percent` of the
    /// partitions a broker should lead (it is their first replica) are led by others, they
    /// go back to it where it is live and in the ISR.
    pub fn rebalance_leaders(&self, imbalance_percent: u32) -> Vec<Record> {
        let mut preferred: std::collections::BTreeMap<i32, (usize, Vec<(String, i32)>)> =
            Default::default();
        for (name, t) in &self.image().topics {
            for (i, info) in t.partitions.iter().enumerate() {
                let Some(&p) = info.replicas.first() else {
                    continue;
                };
                let e = preferred.entry(p).or_default();
                e.0 += 1;
                if info.leader != p {
                    e.1.push((name.clone(), i as i32));
                }
            }
        }
        let mut wanted = Vec::new();
        for (_, (total, elsewhere)) in preferred {
            if elsewhere.len() * 100 > total * imbalance_percent as usize {
                wanted.extend(elsewhere);
            }
        }
        if wanted.is_empty() {
            return Vec::new();
        }
        self.elect_leaders(true, Some(&wanted)).0
    }
}

/// The first replica `live` says is up that is in the ISR, in replica order; with
/// `unclean`, failing that, the first live replica at all.
fn pick(info: &PartitionInfo, live: impl Fn(i32) -> bool, unclean: bool) -> Option<i32> {
    let clean = info
        .replicas
        .iter()
        .copied()
        .find(|r| info.isr.contains(r) && live(*r));
    clean.or_else(|| {
        unclean
            .then(|| info.replicas.iter().copied().find(|r| live(*r)))
            .flatten()
    })
}
