//! ElectLeaders (key 43): preferred or unclean leader elections, decided by the active
//! controller; answered once this broker's metadata shows the new leaders.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use krabka_protocol::owned::elect_leaders_request::ElectLeadersRequest;
use krabka_protocol::owned::elect_leaders_response::{
    ElectLeadersResponse, PartitionResult, ReplicaElectionResult,
};
use strom_controller::quorum::active::{BrokerAnswer, BrokerRequest};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: ElectLeadersRequest = protocol::decode(&mut body, ctx.version)?;
    let asked: Option<Vec<(String, i32)>> = req.topic_partitions.as_ref().map(|tps| {
        tps.iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
            .collect()
    });
    // v0 knows only preferred elections (election_type is 0 there).
    let outcome = match req.election_type {
        0 | 1 => {
            broker
                .elect_leaders(req.election_type == 0, asked.clone())
                .await
        }
        other => Err((
            errors::INVALID_REQUEST,
            format!("election type {other} is neither preferred (0) nor unclean (1)"),
        )),
    };
    let (error_code, results) = match outcome {
        Ok(results) => (errors::NONE, results),
        Err((code, message)) => {
            tracing::warn!(code, %message, "ElectLeaders not done");
            let results = asked
                .unwrap_or_default()
                .into_iter()
                .map(|(t, p)| (t, p, code, Some(message.clone())))
                .collect();
            (code, results)
        }
    };
    let mut topics: Vec<ReplicaElectionResult> = Vec::new();
    for (topic, partition, code, message) in results {
        let r = PartitionResult {
            partition_id: partition,
            error_code: code,
            error_message: message,
            ..Default::default()
        };
        match topics.iter_mut().find(|t| t.topic == topic) {
            Some(t) => t.partition_result.push(r),
            None => topics.push(ReplicaElectionResult {
                topic,
                partition_result: vec![r],
                ..Default::default()
            }),
        }
    }
    respond(
        ctx,
        &ElectLeadersResponse {
            error_code,
            replica_election_results: topics,
            ..Default::default()
        },
    )
}

impl Broker {
    /// Asks the active controller for the elections and waits (a few seconds at most) for
    /// this node's metadata to show the leaders it chose. A result per partition, or the
    /// error for the whole request.
    pub async fn elect_leaders(
        &self,
        preferred: bool,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<strom_controller::election::ElectionResult>, (i16, String)> {
        let answer = self
            .ask_controller_for_admin(BrokerRequest::ElectLeaders {
                preferred,
                partitions,
            })
            .await
            .map_err(|e| (errors::REQUEST_TIMED_OUT, e.to_string()))?;
        let results = match answer {
            BrokerAnswer::Elected { results } => results,
            BrokerAnswer::Refused { code, message } => return Err((code, message)),
            other => return Err((errors::NOT_CONTROLLER, format!("{other:?}"))),
        };
        let elected: Vec<(String, i32)> = results
            .iter()
            .filter(|r| r.2 == errors::NONE)
            .map(|r| (r.0.clone(), r.1))
            .collect();
        if let Some(mut images) = self.metadata_log.watch() {
            // Shown once no elected partition is still led by whoever led it before the
            // answer: a preferred election ends on the first replica, an unclean one on any.
            let shown = images.wait_for(|image| {
                elected.iter().all(|(t, p)| {
                    image.partition(t, *p).is_some_and(|info| {
                        info.leader >= 0
                            && (!preferred || info.replicas.first() == Some(&info.leader))
                    })
                })
            });
            let _ = tokio::time::timeout(Duration::from_secs(5), shown).await;
            // Requests answered from the published image (DescribeTopics, Metadata) must show
            // the leaders once the election is answered.
            if let Err(e) = self.publish_latest().await {
                tracing::warn!("publishing the elected leaders: {e}");
            }
        }
        Ok(results)
    }
}
