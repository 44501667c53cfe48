use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::find_coordinator_request::FindCoordinatorRequest;
use krabka_protocol::owned::find_coordinator_response::{Coordinator, FindCoordinatorResponse};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::group::coordinator::OFFSETS_TOPIC;
use crate::group::records::partition_for as group_partition;
use crate::protocol::{self, RequestContext};
use crate::txn::coordinator::{TXN_TOPIC, partition_for as txn_partition};

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

/// FindCoordinator: the coordinator of a group or transactional id is the leader of its
/// partition of `__consumer_offsets` or `__transaction_state` (created on first use, as
/// Kafka does), as the metadata image says.
pub async fn find(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: FindCoordinatorRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let ready = match req.key_type {
        GROUP => Some(
            b.groups
                .ensure_offsets_topic(b)
                .await
                .map(|n| (OFFSETS_TOPIC, n, group_partition as fn(&str, i32) -> i32)),
        ),
        TRANSACTION => Some(
            b.txns
                .ensure_topic(b)
                .await
                .map(|n| (TXN_TOPIC, n, txn_partition as fn(&str, i32) -> i32)),
        ),
        _ => None,
    };
    let image = b.image();
    let answer = |key: String| {
        let mut c = Coordinator {
            key,
            node_id: -1,
            host: String::new(),
            port: -1,
            ..Default::default()
        };
        let Some(ready) = ready else {
            c.error_code = errors::INVALID_REQUEST;
            c.error_message = Some(format!("unknown coordinator key type {}", req.key_type));
            return c;
        };
        let (topic, partitions, partition_for) = match ready {
            Ok(r) if r.1 > 0 => r,
            Ok(_) => {
                c.error_code = errors::COORDINATOR_NOT_AVAILABLE;
                return c;
            }
            Err(e) => {
                c.error_code = e;
                return c;
            }
        };
        let leader = image
            .partition(topic, partition_for(&c.key, partitions))
            .and_then(|p| image.brokers.get(&p.leader))
            .filter(|b| !b.fenced)
            .and_then(|b| Some((b.id, b.endpoint(&ctx.listener)?)));
        match leader {
            Some((id, (host, port))) => {
                c.node_id = id;
                c.host = host.to_string();
                c.port = port as i32;
            }
            // No leader now (an election is under way): the client asks again.
            None => c.error_code = errors::COORDINATOR_NOT_AVAILABLE,
        }
        c
    };
    let resp = if ctx.version >= 4 {
        FindCoordinatorResponse {
            coordinators: req
                .coordinator_keys
                .clone()
                .into_iter()
                .map(answer)
                .collect(),
            ..Default::default()
        }
    } else {
        let c = answer(req.key.clone());
        FindCoordinatorResponse {
            error_code: c.error_code,
            error_message: c.error_message,
            node_id: c.node_id,
            host: c.host,
            port: c.port,
            ..Default::default()
        }
    };
    respond(ctx, &resp)
}
