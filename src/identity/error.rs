//! Why a token was refused, and its row of the reason table.

use crate::reason::{Class, Reason};

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
    /// Its row of the reason table (code, status, challenge, message).
    pub fn reason(&self) -> Reason {
        use TokenError::*;
        match self {
            Missing => Reason::TokenMissing,
            Multiple => Reason::TokenMultiple,
            NotBearer => Reason::TokenNotBearer,
            TooLarge => Reason::TokenTooLarge,
            Malformed(_) => Reason::TokenMalformed,
            DuplicateName(_) => Reason::TokenDuplicateName,
            AlgorithmNotAllowed => Reason::TokenAlgNotAllowed,
            ForbiddenHeader(_) => Reason::TokenHeaderForbidden,
            CriticalHeader => Reason::TokenCritHeader,
            MissingKeyId => Reason::TokenKidMissing,
            UnknownKeyId => Reason::TokenKidUnknown,
            KeysUnavailable => Reason::KeysUnavailable,
            BadSignature => Reason::TokenSignatureInvalid,
            MissingExpiry => Reason::TokenExpMissing,
            Expired => Reason::TokenExpired,
            NotYetValid => Reason::TokenNotYetValid,
            IssuedInFuture => Reason::TokenIatFuture,
            VersionNotAccepted => Reason::TokenVersion,
            TenantNotAllowed => Reason::TokenTenant,
            WrongIssuer => Reason::TokenIssuer,
            KeyIssuerMismatch => Reason::TokenKeyIssuer,
            WrongAudience => Reason::TokenAudience,
            GraphToken => Reason::TokenGraphAudience,
            NotAccessToken => Reason::TokenNotAccessToken,
            AppTokenNotAllowed => Reason::TokenAppNotAllowed,
            MissingObjectId => Reason::TokenOid,
            MissingScope => Reason::TokenScopeMissing,
            MissingRole => Reason::TokenRoleMissing,
            ClientAppNotAllowed => Reason::TokenClientAppNotAllowed,
            GroupsNotObjectIds => Reason::TokenGroupsNotObjectIds,
        }
    }

    /// Stable code for logs, audit and the reason header.
    pub fn code(&self) -> &'static str {
        self.reason().code()
    }

    /// A valid token without the needed scope/role: 403 `insufficient_scope`.
    pub fn is_insufficient_scope(&self) -> bool {
        self.reason().class() == Class::InsufficientScope
    }
}
