use std::sync::Arc;

use bytes::Bytes;
use krabka_protocol::owned::init_producer_id_request::InitProducerIdRequest;
use krabka_protocol::owned::init_producer_id_response::InitProducerIdResponse;

use super::{HandlerResult, respond};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::{self, RequestContext};

/// InitProducerId. With a transactional id, the transaction coordinator answers (the id's
/// producer id, its epoch bumped, the previous incarnation fenced). Without, the producer gets
/// a new producer id at epoch 0, whatever id and epoch it gives, as in Kafka.
pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let req: InitProducerIdRequest = protocol::decode(&mut body, ctx.version)?;
    let (error_code, producer_id, producer_epoch) = init_producer_id(
        broker,
        ctx.version,
        req.transactional_id.as_deref(),
        req.transaction_timeout_ms,
        (req.producer_id, req.producer_epoch),
    )
    .await;
    respond(
        ctx,
        &InitProducerIdResponse {
            error_code,
            producer_id,
            producer_epoch,
            ..Default::default()
        },
    )
}

/// The answer to InitProducerId: error code, producer id and epoch. `current` is the
/// producer id and epoch the request gives (v3+; -1 and -1 for none).
pub(crate) async fn init_producer_id(
    broker: &Broker,
    version: i16,
    transactional_id: Option<&str>,
    timeout_ms: i32,
    current: (i64, i16),
) -> (i16, i64, i16) {
    // KafkaApis: both or neither.
    let expected = match current {
        _ if version < 3 => None,
        (-1, -1) => None,
        (-1, _) | (_, -1) => return (errors::INVALID_REQUEST, -1, -1),
        given => Some(given),
    };
    let Some(id) = transactional_id else {
        return match broker.allocate_producer_id() {
            Ok(id) => (errors::NONE, id, 0),
            Err(crate::errors::BrokerError::ProducerIdsNotReady) => {
                (errors::COORDINATOR_LOAD_IN_PROGRESS, -1, -1)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not allocate a producer id");
                (errors::COORDINATOR_NOT_AVAILABLE, -1, -1)
            }
        };
    };
    match broker
        .txns
        .init_producer(broker, id, timeout_ms, expected)
        .await
    {
        Ok((pid, epoch)) => (errors::NONE, pid, epoch),
        // PRODUCER_FENCED came with v4.
        Err(crate::txn::state::PRODUCER_FENCED) if version < 4 => {
            (errors::INVALID_PRODUCER_EPOCH, -1, -1)
        }
        Err(code) => (code, -1, -1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::txn::state::PRODUCER_FENCED;

    fn broker(dir: &std::path::Path) -> Broker {
        let mut config = BrokerConfig {
            log_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        };
        config.txns.partitions = 1;
        Broker::open(config).unwrap()
    }

    #[tokio::test]
    async fn half_given_producers_and_empty_transactional_ids_are_invalid_requests() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path());
        for current in [(5, -1), (-1, 0)] {
            for id in [None, Some("tx")] {
                assert_eq!(
                    init_producer_id(&b, 4, id, 60_000, current).await,
                    (errors::INVALID_REQUEST, -1, -1),
                    "{id:?} {current:?}"
                );
            }
        }
        assert_eq!(
            init_producer_id(&b, 4, Some(""), 60_000, (-1, -1)).await,
            (errors::INVALID_REQUEST, -1, -1)
        );
        // Before v3 there are no such fields: nothing to check.
        assert_eq!(
            init_producer_id(&b, 2, None, 60_000, (5, -1)).await.0,
            errors::NONE
        );
        assert!(b.txns.list().await.is_empty());
    }

    #[tokio::test]
    async fn idempotent_producers_always_get_a_new_producer_id_at_epoch_0() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path());
        let (code, first, epoch) = init_producer_id(&b, 4, None, 60_000, (-1, -1)).await;
        assert_eq!((code, epoch), (errors::NONE, 0));
        // Giving the current id and epoch (after a sequence error) is no epoch bump.
        let again = init_producer_id(&b, 4, None, 60_000, (first, 0)).await;
        assert_eq!(again, (errors::NONE, first + 1, 0));
    }

    #[tokio::test]
    async fn transactional_producers_go_to_the_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path());
        let (code, pid, epoch) = init_producer_id(&b, 4, Some("tx"), 60_000, (-1, -1)).await;
        assert_eq!((code, epoch), (errors::NONE, 0));
        assert_eq!(
            init_producer_id(&b, 4, Some("tx"), 60_000, (pid, 0)).await,
            (errors::NONE, pid, 1)
        );
        // Another producer id is fenced; before v4 that is INVALID_PRODUCER_EPOCH.
        assert_eq!(
            init_producer_id(&b, 4, Some("tx"), 60_000, (pid + 100, 0)).await,
            (PRODUCER_FENCED, -1, -1)
        );
        assert_eq!(
            init_producer_id(&b, 3, Some("tx"), 60_000, (pid + 100, 0)).await,
            (errors::INVALID_PRODUCER_EPOCH, -1, -1)
        );
    }
}
