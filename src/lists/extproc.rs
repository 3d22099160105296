//! The ext_proc server (`envoy.service.ext_proc.v3.ExternalProcessor`): one gRPC stream per
//! list request that Envoy's filter did not skip, its messages answered in order.
//!
//! The only module besides `grpc` that touches Envoy's protos: the Check's [`ListCaller`] to
//! and from dynamic metadata, the answer's headers and body to and from ext_proc messages.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

use super::filter::{MAX_LIST_BYTES, Rewrite, rewrite};
use super::sse::SseRewriter;
use super::{ListCaller, ListError, ListKind, METADATA_NAMESPACE, error_body};
use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName};
use crate::metrics::{ListLabels, Metrics};
use crate::policy::PolicyHandle;

pub use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// The ext_proc service.
pub struct ListFilterService {
    policy: Arc<PolicyHandle>,
    metrics: Arc<Metrics>,
}

impl ListFilterService {
    pub fn new(policy: Arc<PolicyHandle>, metrics: Arc<Metrics>) -> Self {
        Self { policy, metrics }
    }
}

type Responses =
    Pin<Box<dyn futures_util::Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ListFilterService {
    type ProcessStream = Responses;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let inbound = request.into_inner();
        let state = Exchange {
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            caller: None,
            body: Body::Untouched,
        };
        let stream =
            futures_util::stream::unfold((inbound, state), |(mut inbound, mut state)| async {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        let answer = state.on_message(msg);
                        Some((Ok(answer), (inbound, state)))
                    }
                    // Envoy closed the stream (the answer is done, or the client went away).
                    _ => None,
                }
            });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// What is being done with the answer's body.
enum Body {
    /// Passed as it comes (an error status with no list in it).
    Untouched,
    /// `application/json`: collected, then rewritten whole.
    Json(Vec<u8>),
    /// `text/event-stream`: rewritten event by event.
    Sse(SseRewriter),
    /// Refused: nothing more passes.
    Failed,
}

/// One answer's exchange with Envoy.
struct Exchange {
    policy: Arc<PolicyHandle>,
    metrics: Arc<Metrics>,
    /// Shared, so that each body chunk borrows it cheaply.
    caller: Option<Arc<ListCaller>>,
    body: Body,
}

impl Exchange {
    fn on_message(&mut self, msg: ProcessingRequest) -> ProcessingResponse {
        match msg.request {
            Some(Request::ResponseHeaders(h)) => self.on_headers(msg.metadata_context.as_ref(), &h),
            Some(Request::ResponseBody(b)) => self.on_body(&b.body, b.end_of_stream),
            Some(Request::ResponseTrailers(_)) => {
                answer(Response::ResponseTrailers(TrailersResponse::default()))
            }
            // The filter is configured for the answer only; anything of the request passes.
            Some(Request::RequestHeaders(_)) => {
                answer(Response::RequestHeaders(HeadersResponse::default()))
            }
            Some(Request::RequestBody(_)) => answer(Response::RequestBody(BodyResponse::default())),
            Some(Request::RequestTrailers(_)) => {
                answer(Response::RequestTrailers(TrailersResponse::default()))
            }
            None => answer(Response::ResponseHeaders(HeadersResponse::default())),
        }
    }

    fn method(&self) -> &'static str {
        self.caller.as_ref().map_or("unknown", |c| c.kind.method())
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .lists
            .get_or_create(&ListLabels {
                method: self.method(),
                result,
            })
            .inc();
    }

    /// The list cannot be passed: the client gets a JSON-RPC error in its place.
    fn refuse(&mut self, e: ListError) -> ProcessingResponse {
        tracing::warn!(
            method = self.method(),
            server = self.caller.as_ref().map(|c| c.server.as_str()),
            reason = e.code(),
            error = %e,
            "list answer refused: the client gets an error instead"
        );
        self.count(e.code());
        self.body = Body::Failed;
        let body = error_body(self.caller.as_ref().map(|c| c.rpc_id.as_str()), &e);
        answer(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: 502 }),
            headers: Some(HeaderMutation {
                set_headers: vec![
                    set_header("content-type", "application/json"),
                    set_header("cache-control", "no-store"),
                    set_header("x-mcp-authz-reason", e.code()),
                ],
                remove_headers: Vec::new(),
            }),
            body,
            grpc_status: None,
            details: format!("mcp_authz_{}", e.code()),
        }))
    }

    fn on_headers(&mut self, metadata: Option<&Metadata>, h: &HttpHeaders) -> ProcessingResponse {
        // Created for a list request, yet without the Check's whole metadata: the filter is
        // configured without `metadata_options`, or a part is malformed. Refused either way.
        self.caller = metadata.and_then(from_metadata).map(Arc::new);
        if self.caller.is_none() {
            return self.refuse(ListError::NoCaller);
        }
        let header = |name: &str| header_value(h, name);
        if let Some(coding) = header("content-encoding")
            && !coding.trim().eq_ignore_ascii_case("identity")
        {
            return self.refuse(ListError::Unreadable("compressed"));
        }
        // Without its status or content type (a filter configured to forward neither) the
        // answer cannot be told from a list: refused, never passed.
        let Some(status) = header(":status").and_then(|s| s.parse::<u16>().ok()) else {
            return self.refuse(ListError::Unreadable("without a status"));
        };
        let content_type = header("content-type").unwrap_or_default();
        let (media, utf8) = media_type(&content_type);
        let mode = match media.as_str() {
            "application/json" if utf8 => {
                self.body = Body::Json(Vec::new());
                BodySendMode::Buffered
            }
            "text/event-stream" if utf8 => {
                self.body = Body::Sse(SseRewriter::default());
                BodySendMode::Streamed
            }
            "application/json" | "text/event-stream" => {
                return self.refuse(ListError::Unreadable("not UTF-8"));
            }
            // An error page carries no list; a success must be one of the two.
            _ if !(200..300).contains(&status) => {
                self.count("unchanged");
                return answer(Response::ResponseHeaders(HeadersResponse {
                    response: Some(CommonResponse::default()),
                }));
            }
            _ => return self.refuse(ListError::Unreadable("of another content type")),
        };
        let mut response = answer(Response::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: Vec::new(),
                    // The body changes length; Envoy frames it anew (a buffered JSON answer
                    // gets its new length with the body).
                    remove_headers: vec!["content-length".into()],
                }),
                ..Default::default()
            }),
        }));
        response.mode_override = Some(ProcessingMode {
            response_body_mode: mode as i32,
            ..Default::default()
        });
        response
    }

    fn on_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ProcessingResponse {
        if matches!(self.body, Body::Untouched) {
            return answer(Response::ResponseBody(BodyResponse::default()));
        }
        let Some(caller) = self.caller.clone() else {
            return self.refuse(ListError::NoCaller);
        };
        let Some(snapshot) = self.policy.load() else {
            return self.refuse(ListError::Unreadable("without a policy to filter by"));
        };
        match &mut self.body {
            Body::Untouched => answer(Response::ResponseBody(BodyResponse::default())),
            Body::Failed => body_answer(Vec::new(), None),
            Body::Json(buf) => {
                if buf.len() + chunk.len() > MAX_LIST_BYTES {
                    return self.refuse(ListError::TooLarge);
                }
                buf.extend_from_slice(chunk);
                if !end_of_stream {
                    return body_answer(Vec::new(), None);
                }
                let whole = std::mem::take(buf);
                match rewrite(&snapshot, &caller, &whole) {
                    Ok(Rewrite::Unchanged) => {
                        self.count("unchanged");
                        let len = whole.len();
                        body_answer(whole, Some(len))
                    }
                    Ok(Rewrite::Filtered { body, hidden, .. }) => {
                        self.count("filtered");
                        self.metrics.list_items_hidden.inc_by(hidden as u64);
                        let len = body.len();
                        body_answer(body, Some(len))
                    }
                    Err(e) => self.refuse(e),
                }
            }
            Body::Sse(sse) => {
                let mut decide = |data: &[u8]| rewrite(&snapshot, &caller, data);
                let error_event = |e: &ListError| {
                    let mut ev = b"event: message\ndata: ".to_vec();
                    ev.extend_from_slice(&error_body(Some(&caller.rpc_id), e));
                    ev.extend_from_slice(b"\n\n");
                    ev
                };
                let (filtered_before, hidden_before) = (sse.filtered, sse.hidden);
                match sse.push(chunk, end_of_stream, &mut decide, &error_event) {
                    Ok(out) => {
                        let (filtered, hidden) = (sse.filtered, sse.hidden);
                        if filtered > filtered_before {
                            self.count("filtered");
                            self.metrics
                                .list_items_hidden
                                .inc_by((hidden - hidden_before) as u64);
                        }
                        body_answer(out, None)
                    }
                    Err((out, e)) => {
                        tracing::warn!(
                            method = caller.kind.method(),
                            server = caller.server.as_str(),
                            reason = e.code(),
                            error = %e,
                            "list event stream refused: the client gets an error event and nothing after it"
                        );
                        self.count(e.code());
                        body_answer(out, None)
                    }
                }
            }
        }
    }
}

fn answer(r: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(r),
        ..Default::default()
    }
}

/// The body in place of the chunk Envoy sent (empty: nothing passes for it), with the answer's
/// new length when the whole body is known before its headers leave.
fn body_answer(body: Vec<u8>, length: Option<usize>) -> ProcessingResponse {
    let mutation = if body.is_empty() {
        body_mutation::Mutation::ClearBody(true)
    } else {
        body_mutation::Mutation::Body(body)
    };
    answer(Response::ResponseBody(BodyResponse {
        response: Some(CommonResponse {
            header_mutation: length.map(|n| HeaderMutation {
                set_headers: vec![set_header("content-length", &n.to_string())],
                remove_headers: Vec::new(),
            }),
            body_mutation: Some(BodyMutation {
                mutation: Some(mutation),
            }),
            ..Default::default()
        }),
    }))
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A header of the answer (Envoy sends values as `raw_value`); `None` when absent.
fn header_value(h: &HttpHeaders, name: &str) -> Option<String> {
    let map = h.headers.as_ref()?;
    let mut found = map
        .headers
        .iter()
        .filter(|v| v.key.eq_ignore_ascii_case(name));
    let first = found.next()?;
    if found.next().is_some() {
        // Two Content-Type headers: clients disagree on which counts.
        return Some("\u{0}repeated".into());
    }
    Some(if first.raw_value.is_empty() {
        first.value.clone()
    } else {
        String::from_utf8_lossy(&first.raw_value).into_owned()
    })
}

/// The media type (lower case) and whether the charset, if any, is UTF-8.
fn media_type(content_type: &str) -> (String, bool) {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let utf8 = parts.all(|p| {
        let p = p.trim();
        match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        }
    });
    (media, utf8)
}

const KEY_METHOD: &str = "mcp_list";
const KEY_SERVER: &str = "mcp_server";
const KEY_TID: &str = "tid";
const KEY_OID: &str = "oid";
const KEY_UPN: &str = "upn";
const KEY_GROUPS: &str = "groups";
const KEY_RPC_ID: &str = "rpc_id";

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// The Check's dynamic metadata for a list request.
pub fn to_metadata(c: &ListCaller) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert(KEY_METHOD.to_owned(), string(c.kind.method()));
    fields.insert(KEY_SERVER.to_owned(), string(c.server.as_str()));
    fields.insert(KEY_TID.to_owned(), string(c.tid.as_str()));
    fields.insert(KEY_OID.to_owned(), string(c.oid.as_str()));
    if let Some(upn) = &c.upn {
        fields.insert(KEY_UPN.to_owned(), string(upn));
    }
    fields.insert(
        KEY_GROUPS.to_owned(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: c.groups.iter().map(|g| string(g.as_str())).collect(),
            })),
        },
    );
    fields.insert(KEY_RPC_ID.to_owned(), string(&c.rpc_id));
    Struct { fields }
}

/// The caller from the metadata Envoy forwards; `None` when any part is missing or malformed.
fn from_metadata(m: &Metadata) -> Option<ListCaller> {
    let fields = &m.filter_metadata.get(METADATA_NAMESPACE)?.fields;
    let text = |k: &str| match fields.get(k)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.as_str()),
        _ => None,
    };
    let groups = match fields.get(KEY_GROUPS)?.kind.as_ref()? {
        Kind::ListValue(l) => l
            .values
            .iter()
            .map(|v| match v.kind.as_ref()? {
                Kind::StringValue(s) => GroupId::parse(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    Some(ListCaller {
        kind: ListKind::from_method(text(KEY_METHOD)?)?,
        server: ServerName::parse(text(KEY_SERVER)?)?,
        tid: DirectoryId::parse(text(KEY_TID)?)?,
        oid: ObjectId::parse(text(KEY_OID)?)?,
        upn: text(KEY_UPN).map(str::to_owned),
        groups,
        rpc_id: text(KEY_RPC_ID)?.to_owned(),
    })
}

#[cfg(test)]
pub(super) fn metadata_for_test(c: &ListCaller) -> Metadata {
    Metadata {
        filter_metadata: [(METADATA_NAMESPACE.to_owned(), to_metadata(c))].into(),
        ..Default::default()
    }
}

#[cfg(test)]
pub(super) fn caller_from_metadata_for_test(m: &Metadata) -> Option<ListCaller> {
    from_metadata(m)
}
