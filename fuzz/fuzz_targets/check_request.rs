//! Any bytes as the CheckRequest Envoy sends: read in place (`CheckWire`) exactly as prost
//! reads the fields the decision uses, then request facts and the response a denial would
//! get. Never a panic, every denial a well-formed response, and wherever prost reads the
//! message, the in-place reading agrees with it field for field.
#![no_main]

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use mcp_authz::grpc::{CheckWire, RequestHeaders, check_input, to_check_response};
use mcp_authz::reason::Reason;
use mcp_authz::response::{Denial, ResponseSettings, deny};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let wire = CheckWire::decode(bytes::Bytes::copy_from_slice(data));
    if let Ok(req) = CheckRequest::decode(data) {
        let wire = wire.as_ref().expect("prost read it, so must CheckWire");
        if let Some(diff) = mcp_authz::grpc::reading_differs(&req, wire) {
            panic!("CheckWire and prost disagree: {diff}");
        }
    }
    let Ok(wire) = wire else {
        return;
    };
    let Ok(headers) = RequestHeaders::from_wire(&wire) else {
        return;
    };
    let Ok(input) = check_input(&wire, &headers) else {
        return;
    };
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
