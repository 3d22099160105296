//! Why a token was refused, with its stable reason code.

/// Why a token was refused. Each has a stable reason code for logs, audit and the
/// `x-mcp-authz-reason` header; none carries text from the token or from a library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one authorization header or token")]
    Multiple,
    #[error("authorization header is not a bearer token")]
    NotBearer,
    #[error("token longer than the configured maximum")]
    TooLarge,
    #[error("token is not a well-formed JWS compact serialization: {0}")]
    Malformed(&'static str),
    #[error("duplicate name in token {0}")]
    DuplicateName(&'static str),
    #[error("algorithm not allowed (only RS256)")]
    AlgorithmNotAllowed,
    #[error("header {0} is never honoured")]
    ForbiddenHeader(&'static str),
    #[error("crit header present")]
    CriticalHeader,
    #[error("token has no kid")]
    MissingKeyId,
    #[error("no key with this kid")]
    UnknownKeyId,
    #[error("signing keys are not available")]
    KeysUnavailable,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has no exp")]
    MissingExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    #[error("token version not accepted")]
    VersionNotAccepted,
    #[error("tid missing or not an allowed directory")]
    TenantNotAllowed,
    #[error("iss does not match the token's version and tid")]
    WrongIssuer,
    #[error("the signing key's issuer does not match iss")]
    KeyIssuerMismatch,
    #[error("aud is not an accepted audience")]
    WrongAudience,
    #[error("token is for Microsoft Graph")]
    GraphToken,
    #[error("not an access token (no scp and no roles)")]
    NotAccessToken,
    #[error("app-only tokens are not accepted")]
    AppTokenNotAllowed,
    #[error("oid missing or not a GUID")]
    MissingObjectId,
    #[error("token lacks a required scope")]
    MissingScope,
    #[error("token lacks a required app role")]
    MissingRole,
    #[error("the token's client app (azp/appid) is not on entra.allowed_client_apps")]
    ClientAppNotAllowed,
    #[error("the groups claim holds a value that is not a group object id (GUID)")]
    GroupsNotObjectIds,
}

impl TokenError {
    /// Stable code for logs, audit and the reason header.
    pub fn code(&self) -> &'static str {
        use TokenError::*;
        match self {
            Missing => "token_missing",
            Multiple => "token_multiple",
            NotBearer => "token_not_bearer",
            TooLarge => "token_too_large",
            Malformed(_) => "token_malformed",
            DuplicateName(_) => "token_duplicate_name",
            AlgorithmNotAllowed => "token_alg_not_allowed",
            ForbiddenHeader(_) => "token_header_forbidden",
            CriticalHeader => "token_crit_header",
            MissingKeyId => "token_kid_missing",
            UnknownKeyId => "token_kid_unknown",
            KeysUnavailable => "keys_unavailable",
            BadSignature => "token_signature_invalid",
            MissingExpiry => "token_exp_missing",
            Expired => "token_expired",
            NotYetValid => "token_not_yet_valid",
            IssuedInFuture => "token_iat_future",
            VersionNotAccepted => "token_version",
            TenantNotAllowed => "token_tenant",
            WrongIssuer => "token_issuer",
            KeyIssuerMismatch => "token_key_issuer",
            WrongAudience => "token_audience",
            GraphToken => "token_graph_audience",
            NotAccessToken => "token_not_access_token",
            AppTokenNotAllowed => "token_app_not_allowed",
            MissingObjectId => "token_oid",
            MissingScope => "token_scope_missing",
            MissingRole => "token_role_missing",
            ClientAppNotAllowed => "token_client_app_not_allowed",
            GroupsNotObjectIds => "token_groups_not_object_ids",
        }
    }

    /// A valid token without the needed scope/role is a 403 (`insufficient_scope`), the rest
    /// 401 (`invalid_token`, or no error attribute when no token was sent).
    pub fn is_insufficient_scope(&self) -> bool {
        matches!(self, TokenError::MissingScope | TokenError::MissingRole)
    }

    /// A valid token that no sign-in would change (its client app, its groups' form): a plain
    /// 403, since a 401 or a scope challenge would send the client to sign in again in a loop.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            TokenError::ClientAppNotAllowed | TokenError::GroupsNotObjectIds
        )
    }
}
