//! The only module that touches Envoy's ext_authz protos (`lists` has ext_proc's): `CheckRequest` → [`CheckInput`], and
//! [`Verdict`] → `CheckResponse`.
//!
//! Headers arrive either as Envoy's merged map (repeated headers joined with ",") or, with
//! `encode_raw_headers: true`, as a raw list that keeps repeats apart; both are read. A denial
//! is an ordinary `CheckResponse` with a non-OK status, never a gRPC error (a gRPC error would
//! leave the answer to Envoy's `failure_mode_allow`).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;

use crate::mcp::{HeaderField, HttpView};
use crate::pipeline::{Authorizer, CheckInput};
use crate::response::Verdict;

pub use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// The route context extension that names the MCP server.
pub const CONTEXT_SERVER_KEY: &str = "mcp_server";
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
const GRPC_UNAVAILABLE: i32 = 14;
const GRPC_UNAUTHENTICATED: i32 = 16;

pub struct AuthorizationService {
    authorizer: Arc<Authorizer>,
}

impl AuthorizationService {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self { authorizer }
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let headers = RequestHeaders::from_check(&request);
        let input = check_input(&request, &headers);
        let outcome = self.authorizer.check(&input).await;
        Ok(tonic::Response::new(to_check_response(outcome.verdict)))
    }
}

/// Header name/value pairs borrowed from a CheckRequest, in arrival order.
pub struct RequestHeaders<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> RequestHeaders<'a> {
    pub fn from_check(req: &'a CheckRequest) -> Self {
        let http = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let mut pairs = Vec::new();
        if let Some(http) = http {
            match &http.header_map {
                Some(raw) if !raw.headers.is_empty() => {
                    for h in &raw.headers {
                        let value = if h.raw_value.is_empty() {
                            Some(h.value.as_str())
                        } else {
                            std::str::from_utf8(&h.raw_value).ok()
                        };
                        // A value that is not UTF-8 cannot be a token or a name we read;
                        // the name still counts for stripping.
                        pairs.push((h.key.as_str(), value.unwrap_or("\u{fffd}")));
                    }
                }
                _ => {
                    for (k, v) in &http.headers {
                        pairs.push((k.as_str(), v.as_str()));
                    }
                }
            }
        }
        Self { pairs }
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
pub fn check_input<'a>(req: &'a CheckRequest, headers: &RequestHeaders<'a>) -> CheckInput<'a> {
    let attrs = req.attributes.as_ref();
    let http = attrs
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let route_server = attrs
        .and_then(|a| a.context_extensions.get(CONTEXT_SERVER_KEY))
        .map(String::as_str);
    let (method, path, host, scheme, body): (&str, &str, &str, &str, &[u8]) = match http {
        Some(h) => (
            h.method.as_str(),
            h.path.as_str(),
            h.host.as_str(),
            h.scheme.as_str(),
            if h.raw_body.is_empty() {
                h.body.as_bytes()
            } else {
                &h.raw_body
            },
        ),
        None => ("", "", "", "", &[]),
    };
    CheckInput {
        view: HttpView {
            method,
            path,
            host,
            scheme: headers.get("x-forwarded-proto").unwrap_or(scheme),
            route_server,
            body,
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
    }
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
                // A list answer is marked for Envoy's ext_proc filter, which filters it and
                // removes the mark.
                response_headers_to_add: match &list {
                    Some(c) => vec![header(
                        crate::lists::MARK_HEADER,
                        c.kind.method().to_owned(),
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    )],
                    None => Vec::new(),
                },
                ..Default::default()
            })),
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
