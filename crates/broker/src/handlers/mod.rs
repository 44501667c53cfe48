//! Request handlers, one file per API family. Each turns wire types into calls on the
//! broker's domain types and the answer back into a response.

pub(crate) mod admin;
mod api_versions;
mod configs;
mod coordinator;
mod elect;
mod fetch;
mod groups;
mod leader_epoch;
mod list_offsets;
mod metadata;
mod produce;
mod producer_id;
mod quorum;
mod reassign;
mod txn;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::{Encode, ProtocolError};

use crate::broker::Broker;
use crate::protocol::{self, RequestContext};

/// What a handler hands to the connection's writer.
pub enum Reply {
    Frame(Bytes),
    /// A response whose records are sent from the segment files (`sendfile`).
    Parts(Vec<crate::zero_copy::Part>),
    /// acks=0 produce: nothing goes back.
    Nothing,
    /// The request could not be decoded: close after the earlier responses.
    Close,
}

impl Reply {
    /// The reply with its file parts read into memory: one frame, as tests and any
    /// connection that cannot `sendfile` (TLS, later) need it.
    pub fn materialized(self) -> std::io::Result<Reply> {
        let Reply::Parts(parts) = self else {
            return Ok(self);
        };
        let mut out = bytes::BytesMut::new();
        for part in parts {
            match part {
                crate::zero_copy::Part::Bytes(b) => out.extend_from_slice(&b),
                crate::zero_copy::Part::File(region) => out.extend_from_slice(&region.read_all()?),
            }
        }
        Ok(Reply::Frame(out.freeze()))
    }
}

/// Decodes and serves one request frame (size prefix already removed).
pub async fn handle(broker: &Arc<Broker>, frame: Bytes, peer: SocketAddr) -> Reply {
    handle_on(broker, frame, peer, &Arc::from("")).await
}

/// [`handle`] for a request that came in on `listener` (its name).
pub async fn handle_on(
    broker: &Arc<Broker>,
    mut frame: Bytes,
    peer: SocketAddr,
    listener: &Arc<str>,
) -> Reply {
    let Some((api_key, version, correlation_id)) = protocol::peek_header(&frame) else {
        tracing::warn!(%peer, size = frame.len(), "closing connection: frame too short for a request header");
        return Reply::Close;
    };
    let Some(api) = protocol::api(api_key) else {
        tracing::warn!(%peer, api_key, version, "closing connection: unsupported api key");
        return Reply::Close;
    };
    if version < api.min || version > api.max {
        if api_key == protocol::API_VERSIONS {
            // The client will retry with a version from the list.
            return Reply::Frame(api_versions::unsupported(correlation_id));
        }
        tracing::warn!(%peer, api = api.name, version, "closing connection: unsupported version");
        return Reply::Close;
    }
    let ctx = match protocol::decode_header(&mut frame, api, version) {
        Ok(ctx) => protocol::RequestContext {
            listener: listener.clone(),
            ..ctx
        },
        Err(e) => {
            tracing::warn!(%peer, api = api.name, version, error = %e, "closing connection: bad request header");
            return Reply::Close;
        }
    };
    let result = match api_key {
        protocol::API_VERSIONS => api_versions::handle(&ctx, frame),
        protocol::METADATA => metadata::handle(broker, &ctx, frame).await,
        protocol::PRODUCE => produce::handle(broker, &ctx, frame).await,
        protocol::FETCH => fetch::handle(broker, &ctx, frame).await,
        protocol::LIST_OFFSETS => list_offsets::handle(broker, &ctx, frame),
        protocol::OFFSET_FOR_LEADER_EPOCH => leader_epoch::handle(broker, &ctx, frame),
        protocol::CREATE_TOPICS => admin::create_topics(broker, &ctx, frame).await,
        protocol::DELETE_TOPICS => admin::delete_topics(broker, &ctx, frame).await,
        protocol::CREATE_PARTITIONS => admin::create_partitions(broker, &ctx, frame).await,
        protocol::DELETE_RECORDS => admin::delete_records(broker, &ctx, frame),
        protocol::DESCRIBE_CLUSTER => admin::describe_cluster(broker, &ctx, frame),
        protocol::DESCRIBE_LOG_DIRS => admin::describe_log_dirs(broker, &ctx, frame),
        protocol::DESCRIBE_CONFIGS => configs::describe(broker, &ctx, frame),
        protocol::ALTER_CONFIGS => configs::alter(broker, &ctx, frame).await,
        protocol::INCREMENTAL_ALTER_CONFIGS => {
            configs::incremental_alter(broker, &ctx, frame).await
        }
        protocol::FIND_COORDINATOR => coordinator::find(broker, &ctx, frame).await,
        protocol::JOIN_GROUP => groups::join(broker, &ctx, frame, peer).await,
        protocol::SYNC_GROUP => groups::sync(broker, &ctx, frame).await,
        protocol::HEARTBEAT => groups::heartbeat(broker, &ctx, frame).await,
        protocol::LEAVE_GROUP => groups::leave(broker, &ctx, frame).await,
        protocol::OFFSET_COMMIT => groups::offset_commit(broker, &ctx, frame).await,
        protocol::OFFSET_FETCH => groups::offset_fetch(broker, &ctx, frame).await,
        protocol::LIST_GROUPS => groups::list(broker, &ctx, frame).await,
        protocol::DESCRIBE_GROUPS => groups::describe(broker, &ctx, frame).await,
        protocol::DELETE_GROUPS => groups::delete(broker, &ctx, frame).await,
        protocol::OFFSET_DELETE => groups::offset_delete(broker, &ctx, frame).await,
        protocol::INIT_PRODUCER_ID => producer_id::handle(broker, &ctx, frame).await,
        protocol::ADD_PARTITIONS_TO_TXN => txn::add_partitions(broker, &ctx, frame).await,
        protocol::ADD_OFFSETS_TO_TXN => txn::add_offsets(broker, &ctx, frame).await,
        protocol::END_TXN => txn::end(broker, &ctx, frame).await,
        protocol::WRITE_TXN_MARKERS => txn::write_markers(broker, &ctx, frame).await,
        protocol::TXN_OFFSET_COMMIT => txn::offset_commit(broker, &ctx, frame).await,
        protocol::DESCRIBE_PRODUCERS => txn::describe_producers(broker, &ctx, frame),
        protocol::DESCRIBE_TRANSACTIONS => txn::describe(broker, &ctx, frame).await,
        protocol::LIST_TRANSACTIONS => txn::list(broker, &ctx, frame).await,
        protocol::DESCRIBE_QUORUM => quorum::describe(broker, &ctx, frame).await,
        protocol::ELECT_LEADERS => elect::handle(broker, &ctx, frame).await,
        protocol::ALTER_PARTITION_REASSIGNMENTS => reassign::alter(broker, &ctx, frame).await,
        protocol::LIST_PARTITION_REASSIGNMENTS => reassign::list(broker, &ctx, frame).await,
        _ => unreachable!("every api in the table has a handler"),
    };
    match result {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(%peer, api = api.name, version, error = %e, "closing connection: bad request");
            Reply::Close
        }
    }
}

pub(crate) type HandlerResult = Result<Reply, ProtocolError>;

pub(crate) fn respond<T: Encode>(ctx: &RequestContext, body: &T) -> HandlerResult {
    Ok(Reply::Frame(protocol::encode_response(ctx, body)?))
}
