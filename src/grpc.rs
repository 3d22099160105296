//! The only module that touches Envoy's ext_authz protos (`lists` has ext_proc's): `CheckRequest` → [`CheckInput`], and
//! [`Verdict`] → `CheckResponse`.
//!
//! Headers arrive either as Envoy's merged map (repeated headers joined with ",") or, with
//! `encode_raw_headers: true`, as a raw list that keeps repeats apart; both are read. A denial
//! is an ordinary `CheckResponse` with a non-OK status, never a gRPC error (a gRPC error would
//! leave the answer to Envoy's `failure_mode_allow`). The Check itself is served ahead of
//! tonic's router (`unary.rs`), its request read where it lies (`wire.rs`).

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;

use crate::mcp::{HeaderField, HttpView};
use crate::pipeline::CheckInput;
use crate::response::Verdict;

mod unary;
mod unvectored;
mod wire;
pub use unary::{CheckServer, GrpcBody, WithCheck};
pub use unvectored::{Unvectored, tcp_connections};
pub use wire::{CheckWire, WireError, reading_differs};

/// The route context extension that names the MCP server.
pub const CONTEXT_SERVER_KEY: &str = "mcp_server";
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
const GRPC_UNAVAILABLE: i32 = 14;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// A CheckRequest that cannot be read: `INVALID_ARGUMENT`, which Envoy (failing closed)
/// answers with `status_on_error`. Only Envoy sends these, so it is logged.
fn malformed(e: WireError) -> tonic::Status {
    tracing::warn!(error = %e, "refused a CheckRequest that could not be read");
    tonic::Status::invalid_argument(e.to_string())
}

/// What a Check answers: the common allow written straight to the wire, anything else as
/// the `CheckResponse` that [`to_check_response`] builds.
pub enum Answer {
    Allow {
        set: Vec<(&'static str, String)>,
        remove: Vec<String>,
    },
    /// Boxed: a denial or a list answer is the rarer, larger case.
    Message(Box<CheckResponse>),
}

impl From<Verdict> for Answer {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow {
                set,
                remove,
                list: None,
            } => Answer::Allow { set, remove },
            other => Answer::Message(Box::new(to_check_response(other))),
        }
    }
}

impl Answer {
    /// Appends this answer's protobuf bytes to `out`, which grows as needed.
    fn encode_into(&self, out: &mut impl bytes::BufMut) {
        match self {
            Answer::Allow { set, remove } => wire::put_allow(set, remove, out),
            Answer::Message(m) => prost::Message::encode_raw(m.as_ref(), out),
        }
    }

    /// The protobuf bytes of this answer.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Header name/value pairs borrowed from a CheckRequest, in arrival order.
pub struct RequestHeaders<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> RequestHeaders<'a> {
    pub fn from_wire(wire: &'a CheckWire) -> Result<Self, WireError> {
        Ok(Self {
            pairs: wire.header_pairs()?,
        })
    }

    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.get_all(name).next()
    }

    /// A header that may appear once: absent, its value, or `Repeated`.
    pub fn single(&self, name: &str) -> HeaderField<'a> {
        let mut values = self.get_all(name);
        match (values.next(), values.next()) {
            (None, _) => HeaderField::Absent,
            (Some(v), None) => HeaderField::One(v),
            (Some(_), Some(_)) => HeaderField::Repeated,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.pairs.iter().map(|(k, _)| *k)
    }
}

/// Builds the pipeline's input; missing parts are empty (and so denied later).
pub fn check_input<'a>(
    wire: &'a CheckWire,
    headers: &RequestHeaders<'a>,
) -> Result<CheckInput<'a>, WireError> {
    let scheme = wire.scheme()?;
    Ok(CheckInput {
        view: HttpView {
            method: wire.method()?,
            path: wire.path()?,
            host: wire.host()?,
            scheme: headers.get("x-forwarded-proto").unwrap_or(scheme),
            route_server: wire.route_server()?,
            body: wire.body()?,
            partial_body: headers
                .get(PARTIAL_BODY_HEADER)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            content_type: headers.single("content-type"),
            content_encoding: headers.single("content-encoding"),
            session_id: headers.single("mcp-session-id"),
            mcp_method_header: headers.get("mcp-method"),
            mcp_name_header: headers.get("mcp-name"),
            traceparent: headers.get("traceparent"),
        },
        authorization: headers.get_all("authorization").collect(),
        header_names: headers.names().collect(),
        trace: crate::pipeline::TraceHeaders {
            traceparent: headers.get("traceparent"),
            tracestate: headers.get("tracestate"),
            b3: headers.get("b3"),
            b3_trace_id: headers.get("x-b3-traceid"),
            b3_span_id: headers.get("x-b3-spanid"),
            b3_sampled: headers.get("x-b3-sampled"),
        },
    })
}

fn header(key: &str, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

pub fn to_check_response(verdict: Verdict) -> CheckResponse {
    match verdict {
        Verdict::Allow { set, remove, list } => CheckResponse {
            status: Some(Status {
                code: GRPC_OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: set
                    .into_iter()
                    .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect(),
                headers_to_remove: remove,
                ..Default::default()
            })),
            // A list request is named in the dynamic metadata (its method, the caller): Envoy
            // creates its list filter (ext_proc) for this request on it, and for no other.
            dynamic_metadata: list.map(|c| crate::lists::to_metadata(&c)),
        },
        // Envoy answers a non-OK Check itself, with the status given: 200 here.
        Verdict::Answer { body } => CheckResponse {
            status: Some(Status {
                code: GRPC_PERMISSION_DENIED,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 200 }),
                headers: vec![
                    header(
                        "content-type",
                        "application/json".into(),
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ),
                    // The caller's own: never from a shared cache.
                    header(
                        "cache-control",
                        "no-store".into(),
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ),
                ],
                body,
            })),
            dynamic_metadata: None,
        },
        Verdict::Deny {
            status,
            headers,
            body,
        } => CheckResponse {
            status: Some(Status {
                code: match status {
                    401 => GRPC_UNAUTHENTICATED,
                    503 => GRPC_UNAVAILABLE,
                    429 => GRPC_RESOURCE_EXHAUSTED,
                    _ => GRPC_PERMISSION_DENIED,
                },
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: headers
                    .into_iter()
                    .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect(),
                body,
            })),
            dynamic_metadata: None,
        },
    }
}

#[cfg(any(test, feature = "test-util"))]
mod test_util;
#[cfg(any(test, feature = "test-util"))]
pub use test_util::http_check_request;
