use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::init_producer_id_request::InitProducerIdRequest;
use krabka_protocol::owned::init_producer_id_response::InitProducerIdResponse;

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

/// InitProducerId. With a transactional id, the transaction coordinator answers (the id's
/// producer id, its epoch bumped, the previous incarnation fenced). Without, an idempotent
/// producer gets a new id; one that gives its current id and epoch (v3+, after a sequence
/// error) gets the epoch bumped.
pub fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: InitProducerIdRequest = protocol::decode(&mut body, ctx.version)?;
    let mut resp = InitProducerIdResponse {
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    };
    if let Some(id) = req.transactional_id.as_deref().filter(|id| !id.is_empty()) {
        let expected = (ctx.version >= 3 && req.producer_id >= 0)
            .then_some((req.producer_id, req.producer_epoch));
        match broker
            .txns
            .init_producer(broker, id, req.transaction_timeout_ms, expected)
        {
            Ok((pid, epoch)) => {
                resp.producer_id = pid;
                resp.producer_epoch = epoch;
            }
            Err(code) => {
                resp.error_code = if code == crate::txn::state::PRODUCER_FENCED && ctx.version < 4 {
                    errors::INVALID_PRODUCER_EPOCH
                } else {
                    code
                };
            }
        }
        return respond(ctx, &resp);
    }
    let bump = ctx.version >= 3 && req.producer_id >= 0 && req.producer_epoch >= 0;
    if bump && req.producer_epoch < i16::MAX - 1 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch + 1;
    } else {
        match broker.allocate_producer_id() {
            Ok(id) => {
                resp.producer_id = id;
                resp.producer_epoch = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not allocate a producer id");
                resp.error_code = errors::COORDINATOR_NOT_AVAILABLE;
            }
        }
    }
    respond(ctx, &resp)
}
