use bytes::Bytes;
use krabka_protocol::owned::api_versions_request::ApiVersionsRequest;
use krabka_protocol::owned::api_versions_response::{ApiVersion, ApiVersionsResponse};

use super::{HandlerResult, respond};
use crate::errors;
use crate::protocol::{self, APIS, RequestContext};

fn advertised() -> Vec<ApiVersion> {
    APIS.iter()
        .map(|a| ApiVersion {
            api_key: a.key,
            min_version: a.min,
            max_version: a.max,
            ..Default::default()
        })
        .collect()
}

/// No supported features, no finalized features: the v3+ tagged fields stay absent, which is
/// what librdkafka 2.0.2 (Debian's kcat) can parse.
pub fn handle(ctx: &RequestContext, mut body: Bytes) -> HandlerResult {
    let _req: ApiVersionsRequest = protocol::decode(&mut body, ctx.version)?;
    respond(
        ctx,
        &ApiVersionsResponse {
            error_code: errors::NONE,
            api_keys: advertised(),
            ..Default::default()
        },
    )
}

/// The answer to an ApiVersions request of a version we do not serve: v0 format (which
/// every client can read), UNSUPPORTED_VERSION, and the list so the client can retry.
pub fn unsupported(correlation_id: i32) -> Bytes {
    let ctx = RequestContext {
        api_key: protocol::API_VERSIONS,
        version: 0,
        correlation_id,
        client_id: None,
        response_header_version: 0,
        listener: std::sync::Arc::from(""),
    };
    let body = ApiVersionsResponse {
        error_code: errors::UNSUPPORTED_VERSION,
        api_keys: advertised(),
        ..Default::default()
    };
    protocol::encode_response(&ctx, &body).expect("v0 ApiVersions always encodes")
}
