//! Request facts: which MCP server a request targets, and what JSON-RPC call it makes.
//!
//! Rules (each a denial with a reason code when broken):
//! - The server is the route's `mcp_server` context extension, else the first path segment
//!   after the configured prefix. A segment is `[A-Za-z0-9._-]+`, not `.`/`..`, with no
//!   percent-encoding: anything else is `bad_path`, never guessed at.
//! - POST is read only as the upstream will read it: `Content-Type` must be `application/json`
//!   with no parameter but `charset=utf-8`, and `Content-Encoding` absent or `identity`, each
//!   sent at most once; anything else is `unsupported_media_type` / `unsupported_content_encoding`
//!   (415), before the body is looked at. An upstream honouring another charset (the TypeScript
//!   SDK's Express helper decodes `charset=utf-7`) or inflating a content coding would read other
//!   bytes than the ones authorized here.
//! - POST carries exactly one JSON-RPC message (MCP 2025-06-18 removed batching): an array is
//!   `batch_not_supported`, non-JSON `invalid_json`, a body Envoy cut at its buffer limit
//!   (`x-envoy-auth-partial-body: true`) `body_truncated`, which is never authorized as if whole.
//! - JSON nested deeper than 64 levels anywhere in the body is `json_too_deep`: upstream
//!   parsers are not all as careful as this one.
//! - `tools/call` needs `params.name` (a string); `resources/read` `params.uri`; `prompts/get`
//!   `params.name`.
//! - `Mcp-Method` / `Mcp-Name` headers (MCP 2026-07-28), when sent, must equal the body's
//!   method and name: a mismatch is `header_mismatch` (JSON-RPC -32020).
//! - `Mcp-Session-Id`, when sent, is sent once, of visible ASCII, at most 256 bytes
//!   (`bad_session_id`); which identity may use it is the pipeline's (`crate::sessions`).
//! - GET (SSE stream) and DELETE (end session) carry no body and are authorized on the server
//!   alone; other HTTP methods are `method_not_allowed`.

use std::borrow::Cow;

use crate::ids::{ServerName, ToolName};
use crate::reason::Reason;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The parts of an HTTP request that facts are read from; built by `grpc`.
#[derive(Debug, Default, Clone)]
pub struct HttpView<'a> {
    pub method: &'a str,
    /// Request target as sent (path and query).
    pub path: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    /// The route's `mcp_server` context extension.
    pub route_server: Option<&'a str>,
    pub body: &'a [u8],
    pub partial_body: bool,
    pub content_type: HeaderField<'a>,
    pub content_encoding: HeaderField<'a>,
    pub session_id: HeaderField<'a>,
    pub mcp_method_header: Option<&'a str>,
    pub mcp_name_header: Option<&'a str>,
    /// W3C trace context, for the audit trail.
    pub traceparent: Option<&'a str>,
}

/// A request header that may appear at most once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum HeaderField<'a> {
    #[default]
    Absent,
    One(&'a str),
    /// Sent more than once: upstreams disagree on which one counts, so it is never read.
    Repeated,
}

impl HttpView<'_> {
    /// The path without query or fragment.
    pub fn path_only(&self) -> &str {
        let end = self.path.find(['?', '#']).unwrap_or(self.path.len());
        &self.path[..end]
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub server: ServerName,
    pub call: Call,
}

/// The MCP-level operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// GET: open the server-to-client SSE stream.
    OpenStream,
    /// DELETE: end a session.
    EndSession,
    /// POST of one JSON-RPC message.
    Rpc(RpcFacts),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFacts {
    /// `None` for a JSON-RPC response (the client answering a server request).
    pub method: Option<String>,
    pub tool: Option<ToolName>,
    pub uri: Option<String>,
    pub prompt: Option<String>,
}

impl Call {
    pub fn method(&self) -> Option<&str> {
        match self {
            Call::Rpc(r) => r.method.as_deref(),
            _ => None,
        }
    }
    pub fn tool_name(&self) -> Option<&ToolName> {
        match self {
            Call::Rpc(r) => r.tool.as_ref(),
            _ => None,
        }
    }

    pub fn tool(&self) -> Option<&str> {
        match self {
            Call::Rpc(r) => r.tool.as_deref(),
            _ => None,
        }
    }
    /// A label for logs: `tools/call`, `GET`, `DELETE`, `response`.
    pub fn label(&self) -> &str {
        match self {
            Call::OpenStream => "GET",
            Call::EndSession => "DELETE",
            Call::Rpc(r) => r.method.as_deref().unwrap_or("response"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("no MCP server in the route or path")]
    NoServer,
    #[error("path is not a plain server path")]
    BadPath,
    #[error("HTTP method not allowed")]
    MethodNotAllowed,
    #[error("body was truncated at the proxy's buffer limit")]
    BodyTruncated,
    #[error("POST without a body")]
    EmptyBody,
    #[error("JSON-RPC batches are not supported")]
    Batch,
    #[error("body is not valid JSON")]
    InvalidJson,
    #[error("body is not a JSON-RPC 2.0 message")]
    NotJsonRpc,
    #[error("JSON nested deeper than the limit")]
    TooDeep,
    #[error("params missing or of the wrong shape for this method")]
    InvalidParams,
    #[error("Mcp-Method or Mcp-Name header disagrees with the body")]
    HeaderMismatch,
    #[error("Content-Type is not application/json (charset utf-8 at most)")]
    UnsupportedMediaType,
    #[error("Content-Encoding other than identity")]
    UnsupportedEncoding,
    #[error("Mcp-Session-Id repeated, too long or not visible ASCII")]
    BadSessionId,
}

impl FactsError {
    /// Its row of the reason table (code, status, JSON-RPC error, message).
    pub fn reason(&self) -> Reason {
        match self {
            FactsError::NoServer => Reason::NoServer,
            FactsError::BadPath => Reason::BadPath,
            FactsError::MethodNotAllowed => Reason::MethodNotAllowed,
            FactsError::BodyTruncated => Reason::BodyTruncated,
            FactsError::EmptyBody => Reason::EmptyBody,
            FactsError::Batch => Reason::BatchNotSupported,
            FactsError::InvalidJson => Reason::InvalidJson,
            FactsError::NotJsonRpc => Reason::InvalidJsonRpc,
            FactsError::TooDeep => Reason::JsonTooDeep,
            FactsError::InvalidParams => Reason::InvalidParams,
            FactsError::HeaderMismatch => Reason::HeaderMismatch,
            FactsError::UnsupportedMediaType => Reason::UnsupportedMediaType,
            FactsError::UnsupportedEncoding => Reason::UnsupportedContentEncoding,
            FactsError::BadSessionId => Reason::BadSessionId,
        }
    }

    pub fn code(&self) -> &'static str {
        self.reason().code()
    }

    pub fn http_status(&self) -> u16 {
        self.reason().status()
    }

    /// The JSON-RPC error code for the body.
    pub fn rpc_code(&self) -> i64 {
        self.reason().row().rpc_code
    }
}

/// Facts plus the JSON-RPC id, which error bodies echo even when the facts are refused.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub facts: Result<RequestFacts, FactsError>,
    pub rpc_id: Option<&'a RawValue>,
}

impl Parsed<'_> {
    /// True when the client spoke JSON-RPC, so errors should answer in JSON-RPC.
    pub fn is_jsonrpc(&self) -> bool {
        self.rpc_id.is_some()
    }
}

pub fn parse<'a>(req: &HttpView<'a>, path_prefix: &str) -> Parsed<'a> {
    let mut rpc_id = None;
    let facts = server_of(req, path_prefix).and_then(|server| {
        if !valid_session_id(req.session_id) {
            return Err(FactsError::BadSessionId);
        }
        let call = match req.method {
            "GET" => Call::OpenStream,
            "DELETE" => Call::EndSession,
            "POST" => Call::Rpc(parse_rpc(req, &mut rpc_id)?),
            _ => return Err(FactsError::MethodNotAllowed),
        };
        Ok(RequestFacts { server, call })
    });
    Parsed { facts, rpc_id }
}

/// A `GET` on the MCP prefix itself (`/mcp` or `/mcp/`): the server catalog, which names no
/// server.
pub fn is_catalog(req: &HttpView<'_>, prefix: &str) -> bool {
    req.method == "GET" && req.path_only().trim_end_matches('/') == prefix.trim_end_matches('/')
}

fn server_of(req: &HttpView<'_>, prefix: &str) -> Result<ServerName, FactsError> {
    let path = req.path_only();
    if path.contains('%') || path.split('/').any(|s| s == "." || s == "..") {
        return Err(FactsError::BadPath);
    }
    let segment = match req.route_server {
        Some(s) if !s.is_empty() => s,
        _ => {
            let rest = path.strip_prefix(prefix).ok_or(FactsError::NoServer)?;
            rest.split('/').next().unwrap_or_default()
        }
    };
    if segment.is_empty() {
        return Err(FactsError::NoServer);
    }
    // The one rule policy names follow: a segment no server row could have is a bad path.
    ServerName::parse(segment).ok_or(FactsError::BadPath)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    result: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uri: Option<Cow<'a, str>>,
}

fn parse_rpc<'a>(
    req: &HttpView<'a>,
    id_out: &mut Option<&'a RawValue>,
) -> Result<RpcFacts, FactsError> {
    // A POST is answered in JSON-RPC: with the request's id once the body yields one, before
    // that (media type, truncation, parse errors) with id null (JSON-RPC 2.0, section 5).
    *id_out = null_id();
    if !is_plain_json(req.content_type) {
        return Err(FactsError::UnsupportedMediaType);
    }
    if !is_identity_coding(req.content_encoding) {
        return Err(FactsError::UnsupportedEncoding);
    }
    if req.partial_body {
        return Err(FactsError::BodyTruncated);
    }
    // JSON's own whitespace only (RFC 8259: space, tab, LF, CR): `trim_ascii` would also take a
    // form feed, which the upstreams' parsers refuse.
    let body = trim_json_whitespace(req.body);
    match body.first() {
        None => return Err(FactsError::EmptyBody),
        Some(b'[') => return Err(FactsError::Batch),
        Some(b'{') => {}
        Some(_) => return Err(FactsError::InvalidJson),
    }
    if nesting_exceeds(body, MAX_JSON_DEPTH) {
        return Err(FactsError::TooDeep);
    }
    // Repeated member names are an error here (serde's derive refuses them), so a body
    // cannot name one tool to us and another to a last-wins upstream parser.
    let env: Envelope<'a> = serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            FactsError::InvalidJson
        } else {
            FactsError::NotJsonRpc
        }
    })?;
    if env.id.is_some() {
        *id_out = env.id;
    }
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(FactsError::NotJsonRpc);
    }
    let Some(method) = env.method else {
        // A response to a server-initiated request: needs an id and a result or error.
        if env.id.is_some() && (env.result.is_some() || env.error.is_some()) && env.params.is_none()
        {
            if req.mcp_method_header.is_some() || req.mcp_name_header.is_some() {
                return Err(FactsError::HeaderMismatch);
            }
            return Ok(RpcFacts {
                method: None,
                tool: None,
                uri: None,
                prompt: None,
            });
        }
        return Err(FactsError::NotJsonRpc);
    };
    let params: Option<Params<'a>> = match env.params {
        None => None,
        Some(raw) if raw.get().starts_with('{') => {
            Some(serde_json::from_str(raw.get()).map_err(|_| FactsError::InvalidParams)?)
        }
        Some(_) => return Err(FactsError::InvalidParams),
    };
    let name = params.as_ref().and_then(|p| p.name.as_deref());
    let uri = params.as_ref().and_then(|p| p.uri.as_deref());
    let mut facts = RpcFacts {
        method: Some(method.clone().into_owned()),
        tool: None,
        uri: None,
        prompt: None,
    };
    let named = match method.as_ref() {
        "tools/call" => {
            let tool = name
                .and_then(ToolName::parse)
                .ok_or(FactsError::InvalidParams)?;
            facts.tool = Some(tool);
            name
        }
        "prompts/get" => {
            let prompt = name
                .filter(|n| !n.is_empty())
                .ok_or(FactsError::InvalidParams)?;
            facts.prompt = Some(prompt.to_owned());
            Some(prompt)
        }
        "resources/read" => {
            let uri = uri
                .filter(|u| !u.is_empty())
                .ok_or(FactsError::InvalidParams)?;
            facts.uri = Some(uri.to_owned());
            Some(uri)
        }
        _ => None,
    };
    if let Some(h) = req.mcp_method_header
        && h != method
    {
        return Err(FactsError::HeaderMismatch);
    }
    if let Some(h) = req.mcp_name_header
        && Some(h) != named
    {
        return Err(FactsError::HeaderMismatch);
    }
    Ok(facts)
}

/// Absent, or once with 1 to 256 visible ASCII characters (0x21–0x7E, the MCP spec's set).
fn valid_session_id(session_id: HeaderField<'_>) -> bool {
    match session_id {
        HeaderField::Absent => true,
        HeaderField::One(v) => {
            !v.is_empty()
                && v.len() <= crate::sessions::MAX_SESSION_ID_BYTES
                && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
        }
        HeaderField::Repeated => false,
    }
}

fn trim_json_whitespace(b: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

/// The JSON-RPC id `null`, borrowed from a static text.
fn null_id() -> Option<&'static RawValue> {
    serde_json::from_str("null").ok()
}

/// `application/json`, optionally with `charset=utf-8` (quoted or not): RFC 9110 makes type,
/// subtype, parameter name and this charset value case-insensitive and allows whitespace around
/// `;`, nothing else. Any other parameter, a repeated charset, or a second header is refused:
/// an upstream may honour it.
fn is_plain_json(content_type: HeaderField<'_>) -> bool {
    let HeaderField::One(value) = content_type else {
        return false;
    };
    let ows = [' ', '\t'];
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim_matches(ows);
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    let mut charset_seen = false;
    for param in parts {
        let Some((name, value)) = param.trim_matches(ows).split_once('=') else {
            return false;
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if charset_seen
            || !name.eq_ignore_ascii_case("charset")
            || !value.eq_ignore_ascii_case("utf-8")
        {
            return false;
        }
        charset_seen = true;
    }
    true
}

/// No `Content-Encoding`, or exactly `identity`: the body is the bytes on the wire.
fn is_identity_coding(content_encoding: HeaderField<'_>) -> bool {
    match content_encoding {
        HeaderField::Absent => true,
        HeaderField::One(v) => v.trim_matches([' ', '\t']).eq_ignore_ascii_case("identity"),
        HeaderField::Repeated => false,
    }
}

/// Deepest nesting of objects and arrays a body may have.
pub const MAX_JSON_DEPTH: usize = 64;

/// True when `[`/`{` nest deeper than `limit` outside strings. One pass, no allocation.
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
