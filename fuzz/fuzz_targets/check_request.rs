//! CheckRequest → request facts → the response a denial would get: any bytes decoded as the
//! protobuf Envoy sends. Never a panic, and every denial is a well-formed response.
#![no_main]

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use mcp_authz::grpc::{RequestHeaders, check_input, to_check_response};
use mcp_authz::reason::Reason;
use mcp_authz::response::{Denial, ResponseSettings, deny};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = CheckRequest::decode(data) else {
        return;
    };
    let headers = RequestHeaders::from_check(&req);
    let input = check_input(&req, &headers);
    let parsed = mcp_authz::mcp::parse(&input.view, "/mcp/");
    let denial = match parsed.facts {
        Ok(_) => Denial::Refused(Reason::NoGrant),
        Err(e) => Denial::from(e),
    };
    let settings = ResponseSettings {
        public_base_url: None,
        path_prefix: "/mcp/".into(),
        scope: "api://mcp-gateway/mcp.access".into(),
    };
    let verdict = deny(denial, parsed.rpc_id, "d", &settings, &input.view, None);
    let resp = to_check_response(verdict);
    assert!(resp.status.is_some_and(|s| s.code != 0), "a denial became OK");
});
