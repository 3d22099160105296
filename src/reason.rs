//! Every reason a Check can be refused for, in one table: the stable code (logs, audit, metrics,
//! the `x-mcp-authz-reason` header), the class of answer (which decides the challenge and the
//! OAuth `error`), the HTTP status, the JSON-RPC error code and the fixed message the client
//! reads. The causes (`TokenError`, `FactsError`, `GroupsError`, the policy's `DenyReason`, the
//! pipeline's own refusals) each name their `Reason`; nothing else spells a code, a status or a
//! message. README's "Reason codes" table is this one (a test compares them).
//!
//! A leaf: it imports nothing of the crate.

/// The kind of answer a reason gets; it decides the `WWW-Authenticate` challenge and the OAuth
/// `error` of a non-JSON-RPC body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 401 without `error=`: no token was sent (RFC 6750 §3.1).
    NoToken,
    /// 401 `error="invalid_token"`: the token sent is not acceptable.
    InvalidToken,
    /// 401 `error="insufficient_claims"` with the claims Entra asks for (MFA, consent).
    ClaimsChallenge,
    /// 403 `error="insufficient_scope"`: signing in again with the advertised scope changes it.
    InsufficientScope,
    /// 403 without a challenge: no token would change it (a step-up prompt would loop).
    Forbidden,
    /// 400/404/405/413/415 from the request's shape.
    BadRequest,
    /// 503: a dependency needed for a safe answer is unavailable (fail closed).
    Unavailable,
    /// 429 with `Retry-After` and `RateLimit-*`.
    RateLimited,
}

impl Class {
    /// The OAuth `error` of a non-JSON-RPC body.
    pub fn oauth_error(self) -> &'static str {
        match self {
            Class::NoToken | Class::InvalidToken => "invalid_token",
            Class::ClaimsChallenge => "insufficient_claims",
            Class::InsufficientScope => "insufficient_scope",
            Class::Forbidden => "access_denied",
            Class::BadRequest => "invalid_request",
            Class::Unavailable => "temporarily_unavailable",
            Class::RateLimited => "rate_limited",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub code: &'static str,
    pub class: Class,
    pub status: u16,
    /// The JSON-RPC `error.code` when the request was JSON-RPC.
    pub rpc_code: i64,
    /// The client's `error.message` / `error_description`: fixed text, never a cause's detail.
    pub message: &'static str,
}

// The client messages, shared by the rows that say the same thing.
const AUTH_REQUIRED: &str = "Authentication required";
const BAD_TOKEN: &str = "Invalid or expired access token";
const NO_SCOPE: &str = "The access token lacks a required scope";
const NOT_GRANTED: &str = "Access to this MCP server or tool is not granted";
const UNAVAILABLE: &str = "Authorization temporarily unavailable";
const INVALID: &str = "Invalid request";

// JSON-RPC error codes: the spec's own, then the server-error range (-32000..-32099).
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;
const UNAUTHORIZED: i64 = -32001;
const UNAVAILABLE_RPC: i64 = -32002;
const FORBIDDEN: i64 = -32003;
const HEADER_MISMATCH: i64 = -32020;
const RATE_LIMITED: i64 = -32029;

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $name:ident => $code:literal, $class:ident, $status:literal, $rpc:expr, $msg:expr; )*) => {
        /// Why a Check was refused. See the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason { $( $(#[doc = $doc])* $name, )* }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$name, )* ];

            /// The table.
            pub const fn row(self) -> Row {
                match self {
                    $( Reason::$name => Row {
                        code: $code,
                        class: Class::$class,
                        status: $status,
                        rpc_code: $rpc,
                        message: $msg,
                    }, )*
                }
            }
        }
    };
}

reasons! {
    // The bearer token (identity::TokenError).
    /// No `Authorization: Bearer` header.
    TokenMissing => "token_missing", NoToken, 401, UNAUTHORIZED, AUTH_REQUIRED;
    TokenMultiple => "token_multiple", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenNotBearer => "token_not_bearer", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenTooLarge => "token_too_large", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenMalformed => "token_malformed", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenDuplicateName => "token_duplicate_name", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenAlgNotAllowed => "token_alg_not_allowed", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenHeaderForbidden => "token_header_forbidden", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenCritHeader => "token_crit_header", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenKidMissing => "token_kid_missing", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenKidUnknown => "token_kid_unknown", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    /// The JWKS could not be fetched and no key set is held: 503, not a verdict on the token.
    KeysUnavailable => "keys_unavailable", Unavailable, 503, UNAVAILABLE_RPC, UNAVAILABLE;
    TokenSignatureInvalid => "token_signature_invalid", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenExpMissing => "token_exp_missing", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenExpired => "token_expired", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenNotYetValid => "token_not_yet_valid", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenIatFuture => "token_iat_future", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenVersion => "token_version", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenTenant => "token_tenant", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenIssuer => "token_issuer", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenKeyIssuer => "token_key_issuer", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenAudience => "token_audience", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenGraphAudience => "token_graph_audience", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenNotAccessToken => "token_not_access_token", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenAppNotAllowed => "token_app_not_allowed", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    TokenOid => "token_oid", InvalidToken, 401, UNAUTHORIZED, BAD_TOKEN;
    /// A valid token without a required scope: the client signs in again with it.
    TokenScopeMissing => "token_scope_missing", InsufficientScope, 403, FORBIDDEN, NO_SCOPE;
    TokenRoleMissing => "token_role_missing", InsufficientScope, 403, FORBIDDEN, NO_SCOPE;
    /// A valid token from a client app not on `entra.allowed_client_apps`.
    TokenClientAppNotAllowed => "token_client_app_not_allowed", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    TokenGroupsNotObjectIds => "token_groups_not_object_ids", Forbidden, 403, FORBIDDEN, NOT_GRANTED;

    // The request's shape (mcp::FactsError).
    NoServer => "no_server", BadRequest, 404, INVALID_REQUEST, "Not found";
    BadPath => "bad_path", BadRequest, 400, INVALID_REQUEST, INVALID;
    MethodNotAllowed => "method_not_allowed", BadRequest, 405, INVALID_REQUEST, "Method not allowed";
    BodyTruncated => "body_truncated", BadRequest, 413, INVALID_REQUEST, "Request body too large";
    EmptyBody => "empty_body", BadRequest, 400, INVALID_REQUEST, INVALID;
    BatchNotSupported => "batch_not_supported", BadRequest, 400, INVALID_REQUEST, "JSON-RPC batches are not supported";
    InvalidJson => "invalid_json", BadRequest, 400, PARSE_ERROR, "Parse error";
    InvalidJsonRpc => "invalid_jsonrpc", BadRequest, 400, INVALID_REQUEST, INVALID;
    JsonTooDeep => "json_too_deep", BadRequest, 400, INVALID_REQUEST, INVALID;
    InvalidParams => "invalid_params", BadRequest, 400, INVALID_PARAMS, INVALID;
    HeaderMismatch => "header_mismatch", BadRequest, 400, HEADER_MISMATCH, "Header mismatch";
    UnsupportedMediaType => "unsupported_media_type", BadRequest, 415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json";
    UnsupportedContentEncoding => "unsupported_content_encoding", BadRequest, 415, INVALID_REQUEST, "Unsupported Media Type: Content-Encoding must be identity";
    BadSessionId => "bad_session_id", BadRequest, 400, INVALID_REQUEST, INVALID;

    // The policy snapshot (pipeline) and the decision (policy::DenyReason).
    /// No policy snapshot is loaded yet.
    PolicyUnavailable => "policy_unavailable", Unavailable, 503, UNAVAILABLE_RPC, UNAVAILABLE;
    UnknownServer => "unknown_server", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    ServerDisabled => "server_disabled", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    NoGrant => "no_grant", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    ServerNotGranted => "server_not_granted", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    ToolDenied => "tool_denied", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    ToolNotAllowed => "tool_not_allowed", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    AccessLevelTooLow => "access_level_too_low", Forbidden, 403, FORBIDDEN, NOT_GRANTED;

    // Groups (groups::GroupsError). One code, two answers: an overage nothing can resolve here
    // is a standing refusal; Graph down with nothing usable cached is transient.
    /// A groups overage and no `graph` section.
    GroupsOverageUnresolved => "groups_unavailable", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    /// Graph failed and no cached answer is within `graph.max_stale_seconds`.
    GroupsUnavailable => "groups_unavailable", Unavailable, 503, UNAVAILABLE_RPC, UNAVAILABLE;

    // Limits, sessions, the upstream's credentials (pipeline).
    RateLimited => "rate_limited", RateLimited, 429, RATE_LIMITED, "Rate limit exceeded";
    /// The `Mcp-Session-Id` is bound to another identity.
    SessionNotOwned => "session_not_owned", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    /// An on-behalf-of server, asked with an app-only token.
    OboUserOnly => "obo_user_only", Forbidden, 403, FORBIDDEN, NOT_GRANTED;
    /// An on-behalf-of server, and no `obo` section configured.
    OboUnavailable => "obo_unavailable", Unavailable, 503, UNAVAILABLE_RPC, UNAVAILABLE;
    /// Entra answered the exchange with `interaction_required`: the claims challenge.
    OboInteractionRequired => "obo_interaction_required", ClaimsChallenge, 401, UNAUTHORIZED, "Additional sign-in required";
    OboFailed => "obo_failed", Unavailable, 503, UNAVAILABLE_RPC, UNAVAILABLE;
    /// The identity assertion could not be signed (fail closed).
    IdentityAssertionFailed => "identity_assertion_failed", Unavailable, 503, UNAVAILABLE_RPC, UNAVAILABLE;
}

impl Reason {
    pub const fn code(self) -> &'static str {
        self.row().code
    }

    pub const fn class(self) -> Class {
        self.row().class
    }

    pub const fn status(self) -> u16 {
        self.row().status
    }
}

#[cfg(test)]
mod tests;
