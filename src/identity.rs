//! Entra ID access-token validation: bearer extraction, JWT checks, keys, verified-token cache.
//!
//! The flow for one token: size cap → its digests ([`TokenDigest`]) → cache lookup → strict JWT
//! parse ([`jwt`]) → key by `kid` ([`jwks`], refetch on an unknown `kid` at most once per
//! interval) → RS256 signature, of the digest already taken → claims (version, tenant, issuer,
//! key issuer, audience, times, token type, scope/role) → [`Principal`], cached until the
//! token's `exp`.

mod cache;
mod error;
mod jwks;
mod jwt;

use std::sync::Arc;

use aws_lc_rs::digest as lc;
use sha2::{Digest, Sha256};

pub use error::TokenError;
pub use jwks::{JwksError, JwksSource, Key, KeySet, KeyStore};
pub use jwt::{Claims, GroupsClaim, GroupsValue, Header, ParsedJwt, Text, parse as parse_jwt};

use crate::config::EntraConfig;

use crate::clock::unix_now;
use crate::ids::{DirectoryId, GRAPH_APP_ID, ObjectId};

/// Version of an Entra access token (`ver` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// Delegated token: a signed-in user (`scp` present).
    User,
    /// App-only token (client credentials): `roles`, no `scp`.
    App,
}

/// A verified identity. Authorize on `tid` + `oid` (+ groups), never on the labels.
///
/// One is cached per live token, so it keeps only what the Check reads after validation: the
/// token's scopes, roles and client app are checked against the rules and not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tid: DirectoryId,
    pub oid: ObjectId,
    pub kind: PrincipalKind,
    /// Human label for headers and logs (`upn`, `preferred_username`, `email`): mutable in
    /// Entra, so never an authorization key unless policy explicitly opts in.
    pub label: Option<String>,
    pub groups: GroupsClaim,
    pub version: TokenVersion,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

/// The result of validating one bearer token.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Arc<Principal>,
    pub cache_hit: bool,
}

/// Extracts the single bearer token from the request's `authorization` header value(s).
///
/// Envoy joins repeated headers with "," in the `headers` map; the raw header list shows them
/// apart. Either way two tokens are refused, never one picked.
pub fn bearer_token<'a>(values: &[&'a str]) -> Result<&'a str, TokenError> {
    let value = match values {
        [] => return Err(TokenError::Missing),
        [one] => *one,
        _ => return Err(TokenError::Multiple),
    };
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    let (scheme, rest) = value.split_once(' ').ok_or(TokenError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::NotBearer);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    // memchr2, not `contains([',', ' '])`: the generic char-set search was ~2 % of a warm
    // Check's CPU over a 1–2 KB token.
    if memchr::memchr2(b',', b' ', token.as_bytes()).is_some() {
        return Err(TokenError::Multiple);
    }
    Ok(token)
}

/// Token validation rules compiled from configuration.
#[derive(Debug, Clone)]
pub struct ValidationRules {
    pub authority: String,
    /// The allowed directories. Built from validated configuration; an entry that is not a
    /// GUID cannot be one (it is left out, which can only refuse more).
    pub tenants: Vec<DirectoryId>,
    pub audiences: Vec<String>,
    pub accept_v1: bool,
    pub accept_v2: bool,
    pub v1_issuer: String,
    pub required_scopes: Vec<String>,
    pub required_roles: Vec<String>,
    pub allow_app_tokens: bool,
    pub leeway: u64,
    pub max_token_bytes: usize,
    /// When not empty, only tokens whose `azp` (v2) or `appid` (v1) is one of these client ids.
    pub allowed_client_apps: Vec<String>,
}

impl ValidationRules {
    pub fn from_config(c: &EntraConfig) -> Self {
        Self {
            authority: c.authority.clone(),
            tenants: c
                .tenants
                .iter()
                .filter_map(|t| DirectoryId::parse(t))
                .collect(),
            audiences: c.audiences.clone(),
            accept_v1: c.token_versions.iter().any(|v| v == "1.0"),
            accept_v2: c.token_versions.iter().any(|v| v == "2.0"),
            v1_issuer: c.v1_issuer.clone(),
            required_scopes: c.required_scopes.clone(),
            required_roles: c.required_roles.clone(),
            allow_app_tokens: c.allow_app_tokens,
            leeway: c.leeway_seconds,
            max_token_bytes: c.max_token_bytes,
            allowed_client_apps: c
                .allowed_client_apps
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `iss` is the issuer a token of this version from this directory must carry:
    /// v1, the configured `v1_issuer` with `{tenantid}` filled; v2, `{authority}/{tid}/v2.0`.
    /// Compared in place, without building the expected string.
    pub fn is_expected_issuer(&self, version: TokenVersion, tid: &str, iss: &str) -> bool {
        match version {
            TokenVersion::V1 => jwks::is_filled_template(&self.v1_issuer, tid, iss),
            TokenVersion::V2 => {
                iss.strip_prefix(self.authority.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|rest| rest.strip_prefix(tid))
                    == Some("/v2.0")
            }
        }
    }
}

/// What a token is hashed into, once per Check.
///
/// - `signed`: SHA-256 of the signed part (all before the last '.'), which RS256 signs. A new
///   token's signature is verified against it, so the signed part is hashed once, not once for
///   the cache key and again inside the verification.
/// - `key`: the cache key, SHA-256 of `signed` followed by the rest of the token (its last '.'
///   and the signature). Collision-resistant over the whole token: equal keys mean an equal
///   rest and, `signed` being of fixed length, an equal digest, so an equal signed part. A hit
///   therefore means these exact bytes were verified before, signature included.
///
/// A block or two more than one SHA-256 of the whole token (≈ 80 ns more on a cache hit); a new
/// token saves the second hash of its signed part (≈ 0.3 µs).
struct TokenDigest {
    signed: [u8; 32],
    signed_len: usize,
    key: [u8; 32],
}

impl TokenDigest {
    fn of(token: &str) -> Self {
        let signed_len = token.rfind('.').unwrap_or(token.len());
        let (signed_part, rest) = token.split_at(signed_len);
        let signed: [u8; 32] = Sha256::digest(signed_part.as_bytes()).into();
        let key = Sha256::new()
            .chain_update(signed)
            .chain_update(rest.as_bytes())
            .finalize()
            .into();
        Self {
            signed,
            signed_len,
            key,
        }
    }
}

/// Validates bearer tokens; cheap to share (`Arc`).
pub struct Validator {
    rules: ValidationRules,
    keys: Arc<KeyStore>,
    cache: cache::TokenCache,
}

impl Validator {
    pub fn new(rules: ValidationRules, keys: Arc<KeyStore>, cache_capacity: u64) -> Self {
        Self {
            rules,
            keys,
            cache: cache::TokenCache::new(cache_capacity),
        }
    }

    pub fn rules(&self) -> &ValidationRules {
        &self.rules
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub fn cached_tokens(&self) -> u64 {
        self.cache.len()
    }

    /// Validates one raw token (the part after `Bearer `).
    pub async fn validate(&self, token: &str) -> Result<Verified, TokenError> {
        if token.len() > self.rules.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let digest = TokenDigest::of(token);
        let now = unix_now();
        // Never an expired principal: the cache checks the token's `exp` against `now`.
        if let Some(principal) = self.cache.get(&digest.key, now) {
            return Ok(Verified {
                principal,
                cache_hit: true,
            });
        }
        let mut payload = Vec::new();
        let parsed = jwt::parse(token, &mut payload)?;
        let key_set = match self.keys.keys_for(&parsed.header.kid) {
            Some(keys) => keys,
            None => {
                // Boxed: rare, and its future is large.
                Box::pin(self.keys.refresh_for_unknown_kid(&parsed.header.kid)).await?
            }
        };
        // The parse took three segments, so its signed part is the one digested: all before the
        // last '.', a prefix of the same token. Its length says so; were it ever another,
        // `check` hashes the parse's own.
        let principal = if parsed.signed_part().len() == digest.signed_len {
            self.check_digested(parsed, &digest.signed, &key_set, now)?
        } else {
            self.check(parsed, &key_set, now)?
        };
        let principal = Arc::new(principal);
        self.cache.insert(digest.key, principal.clone(), now);
        Ok(Verified {
            principal,
            cache_hit: false,
        })
    }

    /// Signature and claims checks. Pure given the keys and the clock, so tests drive it directly.
    pub fn check(
        &self,
        parsed: ParsedJwt<'_>,
        keys: &[Arc<jwks::Key>],
        now: u64,
    ) -> Result<Principal, TokenError> {
        let signed: [u8; 32] = Sha256::digest(parsed.signed_part()).into();
        self.check_digested(parsed, &signed, keys, now)
    }

    /// [`Validator::check`] with the SHA-256 of `parsed.signed_part()` already taken.
    fn check_digested(
        &self,
        parsed: ParsedJwt<'_>,
        signed: &[u8; 32],
        keys: &[Arc<jwks::Key>],
        now: u64,
    ) -> Result<Principal, TokenError> {
        let r = &self.rules;
        let c = &parsed.claims;
        // Signature first: nothing in the claims is trusted before it verifies.
        let signed = lc::Digest::import_less_safe(signed, &lc::SHA256)
            .map_err(|_| TokenError::BadSignature)?;
        let key = keys
            .iter()
            .find(|k| k.verify_digest(&signed, &parsed.signature))
            .ok_or(TokenError::BadSignature)?;

        let exp = c.exp.ok_or(TokenError::MissingExpiry)?;
        if now >= exp.saturating_add(r.leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = c.nbf
            && nbf > now + r.leeway
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(iat) = c.iat
            && iat > now + r.leeway
        {
            return Err(TokenError::IssuedInFuture);
        }
        // Audience before issuer, so a Graph token is named for what it is.
        let aud = c.aud.as_deref().ok_or(TokenError::WrongAudience)?;
        if aud == GRAPH_APP_ID
            || aud.trim_end_matches('/') == "https://graph.microsoft.com"
            || parsed.header.nonce
        {
            return Err(TokenError::GraphToken);
        }
        if !r.audiences.iter().any(|a| a == aud) {
            return Err(TokenError::WrongAudience);
        }
        let version = match c.ver.as_deref() {
            Some("1.0") if r.accept_v1 => TokenVersion::V1,
            Some("2.0") if r.accept_v2 => TokenVersion::V2,
            _ => return Err(TokenError::VersionNotAccepted),
        };
        let tid = c
            .tid
            .as_deref()
            .and_then(DirectoryId::parse)
            .filter(|tid| r.tenants.contains(tid))
            .ok_or(TokenError::TenantNotAllowed)?;
        let iss = c.iss.as_deref().unwrap_or_default();
        if c.iss.is_none() || !r.is_expected_issuer(version, &tid, iss) {
            return Err(TokenError::WrongIssuer);
        }
        if !key.issuer_allows(iss, &tid, |key_iss| {
            version == TokenVersion::V1 && r.is_expected_issuer(TokenVersion::V2, &tid, key_iss)
        }) {
            return Err(TokenError::KeyIssuerMismatch);
        }
        let oid = c
            .oid
            .as_deref()
            .and_then(ObjectId::parse)
            .ok_or(TokenError::MissingObjectId)?;
        // The token's scopes and roles are checked here and not kept: nothing after validation
        // reads them, and a cached principal is held for every live token.
        let mut scopes = c.scp.as_deref().unwrap_or_default().split(' ');
        let roles = c.roles.as_deref().unwrap_or_default();
        let kind = if c.scp.is_some() {
            PrincipalKind::User
        } else if !roles.is_empty() || c.idtyp.as_deref() == Some("app") {
            PrincipalKind::App
        } else {
            return Err(TokenError::NotAccessToken);
        };
        match kind {
            PrincipalKind::User => {
                if !r.required_scopes.is_empty()
                    && !scopes.any(|s| !s.is_empty() && r.required_scopes.iter().any(|r| r == s))
                {
                    return Err(TokenError::MissingScope);
                }
            }
            PrincipalKind::App => {
                if !r.allow_app_tokens {
                    return Err(TokenError::AppTokenNotAllowed);
                }
                if !roles.iter().any(|s| r.required_roles.contains(s)) {
                    return Err(TokenError::MissingRole);
                }
            }
        }
        let client_id = c.azp.as_deref().or(c.appid.as_deref());
        if !r.allowed_client_apps.is_empty()
            && !client_id.is_some_and(|id| r.allowed_client_apps.contains(&id.to_ascii_lowercase()))
        {
            return Err(TokenError::ClientAppNotAllowed);
        }
        // Every check has passed but the groups' shape: the claims are taken, not copied.
        let mut c = parsed.claims;
        let label = c
            .upn
            .take()
            .or_else(|| c.preferred_username.take())
            .or_else(|| c.email.take())
            .map(std::borrow::Cow::into_owned);
        let groups = c.into_groups_claim()?;
        Ok(Principal {
            tid,
            oid,
            kind,
            label,
            groups,
            version,
            expires_at: exp,
        })
    }
}

#[cfg(test)]
mod tests;
