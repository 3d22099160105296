//! How an outcome becomes what Envoy does: headers for the upstream, or a response to the
//! client. The reason table (`crate::reason`) gives each refusal its status, JSON-RPC error and
//! message; bodies and challenges carry that fixed text and the reason code, never library or
//! internal error text.
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
use crate::reason::{Class, Reason};

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
        /// For a list request: who asked, for the ext_proc filter that filters the answer.
        list: Option<Box<crate::lists::ListCaller>>,
    },
    Deny {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// mcp-authz answers the request itself, 200 with this JSON body (the server catalog); it
    /// never reaches an upstream.
    Answer { body: String },
}

/// Why a request is refused: a row of the reason table ([`Reason`]: code, status, JSON-RPC
/// error, message), with the data that two of the rows carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Every refusal that carries nothing but its reason.
    Refused(Reason),
    /// [`Reason::OboInteractionRequired`]: 401 with a claims challenge
    /// (`error="insufficient_claims"`); Entra needs the user to do something (MFA, consent)
    /// before an on-behalf-of token is issued. `claims` is base64.
    ClaimsChallenge { claims: Option<String> },
    /// [`Reason::RateLimited`]: 429 with `Retry-After` and `RateLimit-*`
    /// (draft-ietf-httpapi-ratelimit-headers).
    RateLimited(RateLimitInfo),
}

impl From<Reason> for Denial {
    fn from(r: Reason) -> Self {
        Denial::Refused(r)
    }
}

impl From<FactsError> for Denial {
    fn from(e: FactsError) -> Self {
        Denial::Refused(e.reason())
    }
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
    pub fn reason(&self) -> Reason {
        match self {
            Denial::Refused(r) => *r,
            Denial::ClaimsChallenge { .. } => Reason::OboInteractionRequired,
            Denial::RateLimited(_) => Reason::RateLimited,
        }
    }

    pub fn code(&self) -> &'static str {
        self.reason().code()
    }

    pub fn status(&self) -> u16 {
        self.reason().status()
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
    let row = denial.reason().row();
    let mut params: Vec<String> = Vec::new();
    match row.class {
        Class::NoToken => {}
        Class::InvalidToken => {
            params.push("error=\"invalid_token\"".into());
            params.push(format!("error_description=\"{}\"", row.message));
        }
        Class::InsufficientScope => params.push("error=\"insufficient_scope\"".into()),
        Class::ClaimsChallenge => {
            params.push("error=\"insufficient_claims\"".into());
            // Base64 (standard alphabet): nothing in it can break the quoted string.
            if let Denial::ClaimsChallenge { claims: Some(c) } = denial {
                params.push(format!("claims=\"{c}\""));
            }
        }
        Class::Forbidden | Class::BadRequest | Class::Unavailable | Class::RateLimited => {
            return None;
        }
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
    let row = denial.reason().row();
    let code = row.code;
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
    let mut data = json!({"reason": code, "decision_id": decision_id});
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
                "code": row.rpc_code,
                "message": row.message,
                "data": data,
            }
        }),
        None => {
            let mut body = json!({
                "error": row.class.oauth_error(),
                "error_description": row.message,
            });
            if let (Some(b), Some(d)) = (body.as_object_mut(), data.as_object()) {
                b.extend(d.clone());
            }
            body
        }
    };
    Verdict::Deny {
        status: row.status,
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
    Verdict::Allow {
        set,
        remove,
        list: None,
    }
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
