//! The JSON-RPC body parser (request facts): any bytes as a POST body to /mcp/github, with and
//! without the Mcp-Method / Mcp-Name headers. It must never panic, and what it accepts must be
//! about the server the path names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_authz::mcp::{self, HeaderField, HttpView};

fuzz_target!(|data: &[u8]| {
    for (method_header, partial) in [(None, false), (Some("tools/call"), false), (None, true)] {
        let view = HttpView {
            method: "POST",
            path: "/mcp/github",
            host: "gw.example",
            scheme: "https",
            route_server: None,
            body: data,
            partial_body: partial,
            content_type: HeaderField::One("application/json"),
            content_encoding: HeaderField::Absent,
            session_id: HeaderField::Absent,
            mcp_method_header: method_header,
            mcp_name_header: method_header.map(|_| "echo"),
            traceparent: None,
        };
        let parsed = mcp::parse(&view, "/mcp/");
        if let Ok(facts) = &parsed.facts {
            assert_eq!(facts.server, "github");
            assert!(!partial, "a truncated body was accepted");
        }
    }
});
