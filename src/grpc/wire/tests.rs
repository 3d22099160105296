//! `CheckWire` reads what prost reads; the allow answer is the bytes prost would write.

use super::*;
use crate::grpc::{Answer, to_check_response};
use crate::response::Verdict;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, SocketAddress, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message;

fn raw(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: String::new(),
        raw_value: value.as_bytes().to_vec(),
    }
}

fn peer(port: u32) -> Option<Peer> {
    Some(Peer {
        address: Some(envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    })
}

/// A CheckRequest shaped as Envoy 1.40 sends it with the shipped `envoy.yaml`:
/// `encode_raw_headers`, `pack_as_bytes`, the peers, the route's context extension.
fn envoy_shaped() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(50312),
            destination: peer(10000),
            context_extensions: [
                ("mcp_server".to_string(), "github".to_string()),
                ("other".to_string(), "x".to_string()),
            ]
            .into(),
            request: Some(Request {
                time: Some(Default::default()),
                http: Some(HttpRequest {
                    id: "1234567890".into(),
                    method: "POST".into(),
                    header_map: Some(HeaderMap {
                        headers: vec![
                            raw(":authority", "gateway.example"),
                            raw(":path", "/mcp/github"),
                            raw(":method", "POST"),
                            raw("content-type", "application/json"),
                            raw("authorization", "Bearer a.b.c"),
                            raw("x-mcp-user", "spoofed"),
                            raw("authorization", "Bearer second"),
                        ],
                    }),
                    path: "/mcp/github".into(),
                    host: "gateway.example".into(),
                    scheme: "http".into(),
                    size: 44,
                    protocol: "HTTP/1.1".into(),
                    raw_body: br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn both(
    bytes: &[u8],
) -> (
    Result<CheckRequest, prost::DecodeError>,
    Result<CheckWire, WireError>,
) {
    (
        CheckRequest::decode(bytes),
        CheckWire::decode(Bytes::copy_from_slice(bytes)),
    )
}

fn agree(bytes: &[u8]) -> CheckWire {
    let (req, wire) = both(bytes);
    let req = req.expect("prost reads it");
    let wire = wire.expect("CheckWire reads it");
    assert_eq!(reading_differs(&req, &wire), None);
    wire
}

#[test]
fn an_envoy_shaped_request_reads_as_prost_reads_it() {
    let wire = agree(&envoy_shaped().encode_to_vec());
    assert_eq!(wire.method(), Ok("POST"));
    assert_eq!(wire.path(), Ok("/mcp/github"));
    assert_eq!(wire.route_server(), Ok(Some("github")));
    let pairs = wire.header_pairs().expect("headers");
    // Repeated headers stay apart, in order (a second authorization must be seen).
    let auth: Vec<_> = pairs
        .iter()
        .filter(|(k, _)| *k == "authorization")
        .collect();
    assert_eq!(auth.len(), 2);
    assert_eq!(auth[1].1, "Bearer second");
}

#[test]
fn the_merged_header_map_keeps_the_last_value_of_a_key() {
    // Attack: two map entries for `authorization` (an encoder that repeats a key); prost keeps
    // the last, and so must the reading the decision uses, or the two would disagree on the
    // token.
    let first = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    headers: [("authorization".to_string(), "Bearer first".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut second = first.clone();
    let http = second
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("http");
    http.headers
        .insert("authorization".into(), "Bearer last".into());
    http.headers
        .insert("content-type".into(), "application/json".into());
    // Two encoded messages one after the other are their merge.
    let mut bytes = first.encode_to_vec();
    bytes.extend(second.encode_to_vec());
    let wire = agree(&bytes);
    let pairs = wire.header_pairs().expect("headers");
    assert_eq!(
        pairs
            .iter()
            .filter(|(k, _)| *k == "authorization")
            .collect::<Vec<_>>(),
        vec![&("authorization", "Bearer last")]
    );
}

#[test]
fn a_message_given_twice_is_merged_as_prost_merges_it() {
    let later = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    header_map: Some(HeaderMap {
                        headers: vec![raw("mcp-session-id", "s1")],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("mcp_server".to_string(), "jira".to_string())].into(),
            ..Default::default()
        }),
    };
    let mut bytes = envoy_shaped().encode_to_vec();
    bytes.extend(later.encode_to_vec());
    let wire = agree(&bytes);
    assert_eq!(wire.method(), Ok("GET"));
    assert_eq!(wire.path(), Ok("/mcp/github"));
    assert_eq!(wire.route_server(), Ok(Some("jira")));
    assert_eq!(wire.header_pairs().expect("headers").len(), 8);
}

/// A key varint for `tag` and `wire_type`.
fn key(tag: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    put_key(tag, wire_type, &mut out);
    out
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let mut bytes = Vec::new();
    bytes.extend(key(99, VARINT));
    bytes.extend([0xff, 0x01]);
    bytes.extend(key(98, FIXED64));
    bytes.extend([0; 8]);
    bytes.extend(key(97, FIXED32));
    bytes.extend([0; 4]);
    bytes.extend(key(96, START_GROUP));
    bytes.extend(key(1, VARINT));
    bytes.push(5);
    bytes.extend(key(96, END_GROUP));
    bytes.extend(envoy_shaped().encode_to_vec());
    let wire = agree(&bytes);
    assert_eq!(wire.host(), Ok("gateway.example"));
}

#[test]
fn malformed_framing_is_refused_like_prost_refuses_it() {
    let good = envoy_shaped().encode_to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut short", good[..good.len() - 3].to_vec()),
        ("attributes as a varint", [key(1, VARINT), vec![1]].concat()),
        ("length past the end", [key(1, LEN), vec![0x7f, 0]].concat()),
        ("tag 0", vec![0x02, 0x00]),
        ("wire type 6", vec![0x0e]),
        ("end group without a start", key(5, END_GROUP)),
        (
            "eleven-byte varint",
            [key(99, VARINT), vec![0xff; 10], vec![0]].concat(),
        ),
        (
            "group closed by another tag",
            [key(96, START_GROUP), key(95, END_GROUP)].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let (req, wire) = both(&bytes);
        assert!(req.is_err(), "{what}: prost read it");
        assert!(wire.is_err(), "{what}: CheckWire read it");
    }
}

#[test]
fn a_string_that_is_not_utf8_is_never_read() {
    // Attack: a path or header that is not UTF-8 (prost refuses the message); the decision
    // must never read it as some other text.
    let mut req = envoy_shaped();
    let http = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("http");
    http.path = "/mcp/gith\u{7f}b".into();
    let mut bytes = req.encode_to_vec();
    let at = bytes
        .windows(2)
        .position(|w| w == [b'h', 0x7f])
        .expect("the marker")
        + 1;
    bytes[at] = 0xff;
    let (prost, wire) = both(&bytes);
    assert!(prost.is_err());
    let wire = wire.expect("framing is fine");
    assert!(wire.path().is_err());
    assert!(crate::grpc::RequestHeaders::from_wire(&wire).is_ok());
    let headers = crate::grpc::RequestHeaders::from_wire(&wire).expect("headers");
    assert!(crate::grpc::check_input(&wire, &headers).is_err());
}

#[test]
fn a_raw_header_value_that_is_not_utf8_reads_as_a_replacement() {
    let mut req = envoy_shaped();
    if let Some(m) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .and_then(|h| h.header_map.as_mut())
    {
        m.headers.push(HeaderValue {
            key: "x-mcp-tenant".into(),
            value: String::new(),
            raw_value: vec![0xff, 0xfe],
        });
    }
    let wire = agree(&req.encode_to_vec());
    let pairs = wire.header_pairs().expect("headers");
    assert_eq!(pairs.last(), Some(&("x-mcp-tenant", "\u{fffd}")));
}

#[test]
fn the_allow_answer_is_the_bytes_prost_writes() {
    let cases = [
        Verdict::Allow {
            set: vec![
                (
                    "x-mcp-user-oid",
                    "9f1c2d3e-0000-4000-8000-000000000001".into(),
                ),
                (
                    "x-mcp-directory",
                    "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c".into(),
                ),
                ("x-mcp-tenant", "engineering".into()),
                ("x-mcp-access-level", "write".into()),
                (
                    "x-mcp-decision-id",
                    "0193f3c2-7d2a-7000-8000-000000000000".into(),
                ),
                ("x-mcp-user", "ada@example.com".into()),
                ("authorization", "Bearer ".to_string() + &"x".repeat(300)),
            ],
            remove: vec!["x-mcp-user".into(), "authorization".into()],
            list: None,
        },
        Verdict::Allow {
            set: vec![("x-mcp-tenant", String::new())],
            remove: Vec::new(),
            list: None,
        },
        Verdict::Allow {
            set: Vec::new(),
            remove: vec![String::new()],
            list: None,
        },
    ];
    for v in cases {
        let want = to_check_response(v.clone()).encode_to_vec();
        let got = Answer::from(v.clone()).encode_to_vec();
        assert_eq!(got, want, "{v:?}");
        let Verdict::Allow { set, remove, .. } = &v else {
            unreachable!()
        };
        assert_eq!(allow_len(set, remove), want.len());
    }
}

#[test]
fn varint_lengths_match_their_encoding() {
    for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
        let mut out = Vec::new();
        put_varint(v, &mut out);
        assert_eq!(out.len(), varint_len(v), "{v}");
        let mut r = Reader::new(&out);
        assert_eq!(r.varint(), Ok(v));
    }
}
