//! Partition reassignment (Kafka's KIP-455): moving a partition's replicas to other
//! brokers without a moment offline. The partition first holds both sets (the target
//! replicas first, then those leaving): the new replicas fetch from the leader like any
//! follower, and once every target replica is in the ISR the old ones leave, the leader
//! too if it is not a target (the first target replica in the ISR takes over). A
//! reassignment in progress may be replaced by another or cancelled, which puts the
//! original replicas back.

use std::collections::BTreeSet;

use strom_metadata::errors;
use strom_metadata::image::{NO_LEADER, PartitionInfo, Record, Replicas};

use crate::controller::Controller;

/// One partition's outcome: its topic, index, error code and a message for the operator.
pub type ReassignmentResult = (String, i32, i16, Option<String>);

/// One partition of an AlterPartitionReassignments request: its new replicas, or `None`
/// to cancel the reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Option<Vec<i32>>,
}

impl Controller {
    /// AlterPartitionReassignments: the records that start, replace or cancel each asked
    /// reassignment (one that needs no copying completes at once), and a result per
    /// partition. Without `allow_rf_change` (KIP-860), a target of another size than the
    /// partition's replicas is refused.
    pub fn alter_reassignments(
        &self,
        asked: &[Reassignment],
        allow_rf_change: bool,
    ) -> (Vec<Record>, Vec<ReassignmentResult>) {
        let mut records = Vec::new();
        let mut results = Vec::new();
        for a in asked {
            let outcome = self.reassign(a, allow_rf_change);
            let (code, message) = match outcome {
                Ok(Some(next)) => {
                    records.push(Record::Partition {
                        topic: a.topic.clone(),
                        partition: a.partition,
                        info: next,
                    });
                    (errors::NONE, None)
                }
                Ok(None) => (errors::NONE, None),
                Err((code, message)) => (code, Some(message)),
            };
            results.push((a.topic.clone(), a.partition, code, message));
        }
        (records, results)
    }

    /// One partition's new state, `None` when nothing changes.
    fn reassign(
        &self,
        a: &Reassignment,
        allow_rf_change: bool,
    ) -> Result<Option<PartitionInfo>, (i16, String)> {
        let Some(current) = self.image().partition(&a.topic, a.partition) else {
            return Err((
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown partition {}-{}", a.topic, a.partition),
            ));
        };
        let original = revert(current, |b| self.is_live(b)).map_err(|m| {
            (
                errors::INVALID_REPLICA_ASSIGNMENT,
                format!("{}-{}: {m}", a.topic, a.partition),
            )
        })?;
        let next = match &a.replicas {
            None if !current.reassigning() => {
                return Err((
                    errors::NO_REASSIGNMENT_IN_PROGRESS,
                    format!("no reassignment of {}-{} to cancel", a.topic, a.partition),
                ));
            }
            None => original,
            Some(target) => {
                self.check_target(target)
                    .map_err(|m| (errors::INVALID_REPLICA_ASSIGNMENT, m))?;
                if !allow_rf_change && target.len() != original.replicas.len() {
                    return Err((
                        errors::INVALID_REPLICATION_FACTOR,
                        format!(
                            "{}-{} has {} replicas, the target {}: this request does not allow changing the replication factor",
                            a.topic,
                            a.partition,
                            original.replicas.len(),
                            target.len()
                        ),
                    ));
                }
                start(&original, target)
            }
        };
        // The epochs follow from what changed, whatever revert and complete did to them.
        let mut next = PartitionInfo {
            leader_epoch: current.leader_epoch,
            partition_epoch: current.partition_epoch,
            ..self.complete(next)
        };
        if next == *current {
            return Ok(None);
        }
        next.partition_epoch += 1;
        if next.leader != current.leader {
            next.leader_epoch += 1;
        }
        Ok(Some(next))
    }

    fn check_target(&self, target: &[i32]) -> Result<(), String> {
        let distinct: BTreeSet<_> = target.iter().collect();
        if target.is_empty() || distinct.len() != target.len() {
            return Err(format!(
                "the replicas {target:?} must be distinct, and at least one"
            ));
        }
        if let Some(b) = target
            .iter()
            .find(|b| !self.image().brokers.contains_key(b))
        {
            return Err(format!("broker {b} is not registered"));
        }
        Ok(())
    }

    /// The partition once its reassignment is done, if every target replica is in the ISR
    /// (else as it is): the leaving replicas go, and a leaving leader hands over to the
    /// first target replica in the ISR that is live.
    pub(crate) fn complete(&self, info: PartitionInfo) -> PartitionInfo {
        let target = info.target_replicas();
        if !info.reassigning() || !target.iter().all(|r| info.isr.contains(r)) {
            return info;
        }
        let mut next = info.clone();
        next.isr.retain(|r| target.contains(r));
        next.replicas = target.into();
        next.reassignment = None;
        if !next.replicas.contains(&next.leader) {
            next.leader = next
                .replicas
                .iter()
                .find(|r| next.isr.contains(r) && self.is_live(**r))
                .copied()
                .unwrap_or(NO_LEADER);
            next.leader_epoch += 1;
        }
        next
    }
}

/// The partition as it was before its reassignment in progress (itself when none is):
/// the adding replicas leave the replicas and the ISR; a leader among them hands over to
/// the first original replica in the ISR that `live` says is up.
fn revert(info: &PartitionInfo, live: impl Fn(i32) -> bool) -> Result<PartitionInfo, String> {
    if !info.reassigning() {
        return Ok(info.clone());
    }
    let mut next = info.clone();
    next.replicas.retain(|r| !info.adding().contains(r));
    next.isr.retain(|r| !info.adding().contains(r));
    if next.isr.is_empty() {
        return Err(format!(
            "none of the original replicas {:?} is in the ISR {:?}: the reassignment can only go forward",
            next.replicas, info.isr
        ));
    }
    if info.adding().contains(&next.leader) {
        next.leader = next
            .replicas
            .iter()
            .find(|r| next.isr.contains(r) && live(**r))
            .copied()
            .unwrap_or(NO_LEADER);
    }
    next.reassignment = None;
    Ok(next)
}

/// `base` (no reassignment in progress) on its way to `target`: the target replicas
/// first, then the ones leaving.
fn start(base: &PartitionInfo, target: &[i32]) -> PartitionInfo {
    let mut next = base.clone();
    next.replicas = Replicas::from_slice(target);
    next.replicas.extend(
        base.replicas
            .iter()
            .filter(|r| !target.contains(r))
            .copied(),
    );
    let adding = target
        .iter()
        .filter(|r| !base.replicas.contains(r))
        .copied()
        .collect();
    let removing = base
        .replicas
        .iter()
        .filter(|r| !target.contains(r))
        .copied()
        .collect();
    next.set_reassignment(adding, removing);
    next
}

#[cfg(test)]
#[path = "reassignment_tests.rs"]
mod tests;
