//! How an outcome becomes what Envoy does: headers for the upstream, or a response to the
//! client. One table (`Denial::status`) maps reasons to HTTP status; bodies and challenges carry
//! fixed text and reason codes, never library or internal error text.
//!
//! - 401: `WWW-Authenticate: Bearer resource_metadata="…", scope="…"` and, when a token was
//!   sent, `error="invalid_token"` (RFC 6750, MCP authorization spec).
//! - 403 for a token without the scope or role the gateway requires: `Bearer
//!   error="insufficient_scope", scope="…", resource_metadata="…"`, which MCP clients answer by
//!   authorizing again with that scope. A policy denial (tenant, server, tool, level) is a plain
//!   403 with no challenge: no scope would change it, and a step-up prompt would loop.
//! - Bodies are JSON-RPC errors (echoing the request id) when the request was JSON-RPC, else a
//!   JSON object with `error`, `error_description`, `reason`, `decision_id`.

use serde_json::json;
use serde_json::value::RawValue;

use crate::mcp::{FactsError, HttpView};
use crate::policy::TokenForwarding;

pub const HEADER_USER_OID: &str = "x-mcp-user-oid";
pub const HEADER_USER: &str = "x-mcp-user";
pub const HEADER_TENANT: &str = "x-mcp-tenant";
pub const HEADER_ACCESS_LEVEL: &str = "x-mcp-access-level";
pub const HEADER_DECISION_ID: &str = "x-mcp-decision-id";
pub const HEADER_DIRECTORY: &str = "x-mcp-directory";
pub const HEADER_REASON: &str = "x-mcp-authz-reason";
/// Every header with this prefix is ours: inbound ones are removed before the upstream.
pub const TRUSTED_PREFIX: &str = "x-mcp-";

pub const WELL_KNOWN_PRM: &str = "/.well-known/oauth-protected-resource";

/// What Envoy is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        /// Set on the upstream request, replacing any value the client sent.
        set: Vec<(&'static str, String)>,
        remove: Vec<String>,
    },
    Deny {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
}

/// Why a request is refused, in the terms of the response it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 401 with a claims challenge (`error="insufficient_claims"`): Entra needs the user to do
    /// something (MFA, consent) before an on-behalf-of token is issued. `claims` is base64.
    ClaimsChallenge { claims: Option<String> },
    /// 401. `token_sent` adds `error="invalid_token"`.
    Unauthenticated {
        code: &'static str,
        token_sent: bool,
    },
    /// 403, `insufficient_scope`: a valid token without the scope or role the gateway requires;
    /// signing in again with that scope changes the answer.
    InsufficientScope { code: &'static str },
    /// 403 without a challenge: the policy refuses this identity; no token would change it.
    Forbidden { code: &'static str },
    /// 400/404/405/413 from the request's shape.
    BadRequest(FactsError),
    /// 503: a dependency we need for a safe answer is unavailable (fail closed).
    Unavailable { code: &'static str },
    /// 429 with `Retry-After` and `RateLimit-*` (draft-ietf-httpapi-ratelimit-headers).
    RateLimited(RateLimitInfo),
}

/// What a 429 tells the client about the limit that refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// `user`, `tool`, `tenant` or `global`.
    pub scope: &'static str,
    /// Requests per minute.
    pub limit: u32,
    pub burst: u32,
    /// Whole seconds, at least 1.
    pub retry_after: u64,
    pub reset: u64,
}

impl RateLimitInfo {
    pub fn from_outcome(o: &crate::ratelimit::Outcome) -> Self {
        let secs = |d: std::time::Duration| d.as_micros().div_ceil(1_000_000).max(1) as u64;
        RateLimitInfo {
            scope: o.scope.as_str(),
            limit: o.rate.per_minute,
            burst: o.rate.burst,
            retry_after: secs(o.retry_after),
            reset: secs(o.reset),
        }
    }
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Denial::ClaimsChallenge { .. } => "obo_interaction_required",
            Denial::Unauthenticated { code, .. }
            | Denial::Forbidden { code }
            | Denial::InsufficientScope { code }
            | Denial::Unavailable { code } => code,
            Denial::BadRequest(e) => e.code(),
            Denial::RateLimited(_) => "rate_limited",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Denial::Unauthenticated { .. } | Denial::ClaimsChallenge { .. } => 401,
            Denial::Forbidden { .. } | Denial::InsufficientScope { .. } => 403,
            Denial::BadRequest(e) => e.http_status(),
            Denial::Unavailable { .. } => 503,
            Denial::RateLimited(_) => 429,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Denial::Unauthenticated {
                token_sent: false, ..
            } => "Authentication required",
            Denial::Unauthenticated {
                token_sent: true, ..
            } => "Invalid or expired access token",
            Denial::ClaimsChallenge { .. } => "Additional sign-in required",
            Denial::Forbidden { .. } => "Access to this MCP server or tool is not granted",
            Denial::InsufficientScope { .. } => "The access token lacks a required scope",
            Denial::BadRequest(FactsError::BodyTruncated) => "Request body too large",
            Denial::BadRequest(FactsError::Batch) => "JSON-RPC batches are not supported",
            Denial::BadRequest(FactsError::InvalidJson) => "Parse error",
            Denial::BadRequest(FactsError::HeaderMismatch) => "Header mismatch",
            Denial::BadRequest(FactsError::NoServer) => "Not found",
            Denial::BadRequest(FactsError::MethodNotAllowed) => "Method not allowed",
            Denial::BadRequest(FactsError::UnsupportedMediaType) => {
                "Unsupported Media Type: Content-Type must be application/json"
            }
            Denial::BadRequest(FactsError::UnsupportedEncoding) => {
                "Unsupported Media Type: Content-Encoding must be identity"
            }
            Denial::BadRequest(_) => "Invalid request",
            Denial::Unavailable { .. } => "Authorization temporarily unavailable",
            Denial::RateLimited(_) => "Rate limit exceeded",
        }
    }

    fn rpc_code(&self) -> i64 {
        match self {
            Denial::Unauthenticated { .. } | Denial::ClaimsChallenge { .. } => -32001,
            Denial::Forbidden { .. } | Denial::InsufficientScope { .. } => -32003,
            Denial::BadRequest(e) => e.rpc_code(),
            Denial::Unavailable { .. } => -32002,
            Denial::RateLimited(_) => -32029,
        }
    }

    fn oauth_error(&self) -> &'static str {
        match self {
            Denial::Unauthenticated { .. } => "invalid_token",
            Denial::ClaimsChallenge { .. } => "insufficient_claims",
            Denial::Forbidden { .. } => "access_denied",
            Denial::InsufficientScope { .. } => "insufficient_scope",
            Denial::BadRequest(_) => "invalid_request",
            Denial::Unavailable { .. } => "temporarily_unavailable",
            Denial::RateLimited(_) => "rate_limited",
        }
    }
}

/// Settings for building responses, from configuration.
#[derive(Debug, Clone, Default)]
pub struct ResponseSettings {
    pub public_base_url: Option<String>,
    pub path_prefix: String,
    /// Space-separated scopes advertised in challenges; empty for none.
    pub scope: String,
}

/// The base URL of the client's view: configured, or from the request's scheme and host.
pub fn public_base(settings: &ResponseSettings, view: &HttpView<'_>) -> Option<String> {
    if let Some(base) = &settings.public_base_url {
        return Some(base.clone());
    }
    let host_ok = !view.host.is_empty()
        && view
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    let scheme = match view.scheme {
        "https" => "https",
        _ => "http",
    };
    host_ok.then(|| format!("{scheme}://{}", view.host))
}

/// `https://host/.well-known/oauth-protected-resource/mcp/github` for `https://host/mcp/github`.
pub fn resource_metadata_url(
    settings: &ResponseSettings,
    view: &HttpView<'_>,
    server: Option<&str>,
) -> Option<String> {
    let base = public_base(settings, view)?;
    let path = view.path_only();
    let path_ok = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    let resource_path = if path_ok {
        path.trim_end_matches('/').to_owned()
    } else if let Some(s) = server {
        format!("{}{s}", settings.path_prefix)
    } else {
        String::new()
    };
    Some(format!("{base}{WELL_KNOWN_PRM}{resource_path}"))
}

fn challenge(
    denial: &Denial,
    settings: &ResponseSettings,
    metadata_url: Option<&str>,
) -> Option<String> {
    let mut params: Vec<String> = Vec::new();
    match denial {
        Denial::Unauthenticated { token_sent, .. } => {
            if *token_sent {
                params.push("error=\"invalid_token\"".into());
                params.push(format!("error_description=\"{}\"", denial.message()));
            }
        }
        Denial::InsufficientScope { .. } => params.push("error=\"insufficient_scope\"".into()),
        Denial::ClaimsChallenge { claims } => {
            params.push("error=\"insufficient_claims\"".into());
            // Base64 (standard alphabet): nothing in it can break the quoted string.
            if let Some(c) = claims {
                params.push(format!("claims=\"{c}\""));
            }
        }
        _ => return None,
    }
    if let Some(url) = metadata_url {
        params.push(format!("resource_metadata=\"{url}\""));
    }
    if !settings.scope.is_empty() {
        params.push(format!("scope=\"{}\"", settings.scope));
    }
    Some(if params.is_empty() {
        "Bearer".into()
    } else {
        format!("Bearer {}", params.join(", "))
    })
}

pub fn deny(
    denial: Denial,
    rpc_id: Option<&RawValue>,
    decision_id: &str,
    settings: &ResponseSettings,
    view: &HttpView<'_>,
    server: Option<&str>,
) -> Verdict {
    let code = denial.code();
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
        (HEADER_DECISION_ID, decision_id.to_string()),
        (HEADER_REASON, code.to_string()),
    ];
    let metadata_url = resource_metadata_url(settings, view, server);
    if let Some(c) = challenge(&denial, settings, metadata_url.as_deref()) {
        headers.push(("www-authenticate", c));
    }
    let mut data = json!({"reason": denial.code(), "decision_id": decision_id});
    if let Denial::RateLimited(rl) = &denial {
        headers.push(("retry-after", rl.retry_after.to_string()));
        headers.push(("ratelimit-limit", rl.limit.to_string()));
        headers.push(("ratelimit-remaining", "0".to_string()));
        headers.push(("ratelimit-reset", rl.reset.to_string()));
        headers.push((
            "ratelimit-policy",
            format!("{};w=60;burst={}", rl.limit, rl.burst),
        ));
        data["retry_after"] = json!(rl.retry_after);
        data["limit"] = json!(rl.scope);
    }
    let body = match rpc_id {
        Some(id) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": denial.rpc_code(),
                "message": denial.message(),
                "data": data,
            }
        }),
        None => {
            let mut body = json!({
                "error": denial.oauth_error(),
                "error_description": denial.message(),
            });
            if let (Some(b), Some(d)) = (body.as_object_mut(), data.as_object()) {
                b.extend(d.clone());
            }
            body
        }
    };
    Verdict::Deny {
        status: denial.status(),
        headers,
        body: body.to_string(),
    }
}

/// Identity headers for the upstream.
pub struct Identity<'a> {
    pub oid: &'a str,
    pub tid: &'a str,
    pub label: Option<&'a str>,
    pub tenant: &'a str,
    pub level: &'a str,
}

/// What the upstream gets in `authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// Removed: the default, and the MCP spec's rule.
    Remove,
    /// The client's header as sent (`token_forwarding: passthrough`).
    Keep,
    /// Replaced by this value (an on-behalf-of token).
    Replace(String),
}

impl UpstreamAuth {
    /// For the modes that need no exchange; `Obo` must be resolved to `Replace` by the caller.
    pub fn for_forwarding(f: TokenForwarding) -> Option<Self> {
        match f {
            TokenForwarding::None => Some(UpstreamAuth::Remove),
            TokenForwarding::Passthrough => Some(UpstreamAuth::Keep),
            TokenForwarding::Obo => None,
        }
    }
}

pub fn allow<'h>(
    who: &Identity<'_>,
    decision_id: &str,
    upstream_auth: UpstreamAuth,
    inbound_header_names: impl Iterator<Item = &'h str>,
) -> Verdict {
    let mut set = vec![
        (HEADER_USER_OID, who.oid.to_owned()),
        (HEADER_DIRECTORY, who.tid.to_owned()),
        (HEADER_TENANT, who.tenant.to_owned()),
        (HEADER_ACCESS_LEVEL, who.level.to_owned()),
        (HEADER_DECISION_ID, decision_id.to_owned()),
    ];
    if let Some(label) = who.label {
        set.push((HEADER_USER, header_safe(label)));
    }
    let mut remove: Vec<String> = inbound_header_names
        .filter(|n| {
            n.len() >= TRUSTED_PREFIX.len()
                && n[..TRUSTED_PREFIX.len()].eq_ignore_ascii_case(TRUSTED_PREFIX)
        })
        .filter(|n| !set.iter().any(|(s, _)| s.eq_ignore_ascii_case(n)))
        .map(|n| n.to_ascii_lowercase())
        .collect();
    match upstream_auth {
        UpstreamAuth::Remove => remove.push("authorization".into()),
        UpstreamAuth::Keep => {}
        UpstreamAuth::Replace(value) => set.push(("authorization", value)),
    }
    Verdict::Allow { set, remove }
}

/// Printable ASCII stays; anything else (and `%`) is percent-encoded as UTF-8, so a label can
/// never break a header.
pub fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
