use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::find_coordinator_request::FindCoordinatorRequest;
use krabka_protocol::owned::find_coordinator_response::{Coordinator, FindCoordinatorResponse};

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

/// FindCoordinator: on a single node, this broker coordinates every group and every
/// transactional id (and creates `__consumer_offsets` or `__transaction_state` on first use,
/// as Kafka does).
pub async fn find(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: FindCoordinatorRequest = protocol::decode(&mut body, ctx.version)?;
    let b: &Broker = broker;
    let ready = match req.key_type {
        GROUP => Some(b.groups.ensure_offsets_topic(b).await.map(|_| ())),
        TRANSACTION => Some(b.txns.ensure_topic(b).await.map(|_| ())),
        _ => None,
    };
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
        match ready {
            Ok(()) => {
                c.node_id = broker.config.node_id;
                c.host = broker.config.advertised_host.clone();
                c.port = broker.config.advertised_port as i32;
            }
            Err(e) => c.error_code = e,
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
