//! Strict parsing of a JWS compact token into header and claims, before any key is looked at.
//!
//! Stricter than RFC 7515 requires, on purpose (RFC 8725): exactly three non-empty segments of
//! canonical unpadded base64url; header and payload are JSON objects with no repeated names;
//! `alg` is RS256; `jku`/`jwk`/`x5u`/`x5c` are refused (keys come only from the pinned JWKS);
//! `crit` is refused (we understand no extension).

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::error::TokenError;
use crate::ids::GroupId;

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct ParsedJwt {
    pub header: Header,
    pub claims: Claims,
    pub signature: Vec<u8>,
    signed_len: usize,
    raw: String,
}

impl ParsedJwt {
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub fn signed_part(&self) -> &[u8] {
        &self.raw.as_bytes()[..self.signed_len]
    }
}

/// The header fields we act on.
#[derive(Debug, Clone)]
pub struct Header {
    pub kid: String,
    /// A `nonce` header marks a Microsoft Graph token.
    pub nonce: bool,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
    nonce: Option<IgnoredAny>,
    jku: Option<IgnoredAny>,
    jwk: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
    crit: Option<IgnoredAny>,
}

/// The claims we read. Times are NumericDate (seconds, fractions allowed and floored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    pub iss: Option<String>,
    #[serde(default, deserialize_with = "string_only")]
    pub aud: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<u64>,
    pub ver: Option<String>,
    pub tid: Option<String>,
    pub oid: Option<String>,
    pub sub: Option<String>,
    pub scp: Option<String>,
    pub roles: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub hasgroups: Option<bool>,
    #[serde(rename = "_claim_names")]
    pub claim_names: Option<ClaimNames>,
    pub upn: Option<String>,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub azp: Option<String>,
    pub appid: Option<String>,
    pub idtyp: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClaimNames {
    pub groups: Option<String>,
}

/// What a token says about its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupsClaim {
    /// The `groups` claim, complete: group object ids, parsed (lower-case).
    Listed(Vec<GroupId>),
    /// Too many groups for the token (`_claim_names.groups` or `hasgroups`): ask Graph.
    Overage,
    /// No groups claim configured for the app, or the user is in none.
    Absent,
}

impl Claims {
    /// The groups, or `GroupsNotObjectIds` when the claim holds anything but group object ids
    /// (an app configured to emit group names or `sAMAccountName`s: a name is not an identity,
    /// and one directory's name can be another's).
    pub fn groups_claim(&self) -> Result<GroupsClaim, TokenError> {
        let overage = self
            .claim_names
            .as_ref()
            .is_some_and(|n| n.groups.is_some())
            || self.hasgroups == Some(true);
        Ok(match (&self.groups, overage) {
            (_, true) => GroupsClaim::Overage,
            (Some(g), false) => GroupsClaim::Listed(
                g.iter()
                    .map(|s| GroupId::parse(s))
                    .collect::<Option<_>>()
                    .ok_or(TokenError::GroupsNotObjectIds)?,
            ),
            (None, false) => GroupsClaim::Absent,
        })
    }
}

/// Splits, decodes and checks the structure of a token. No key, no clock.
pub fn parse(token: &str) -> Result<ParsedJwt, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three segments"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    if s.is_empty() {
        // `alg: none` tokens end in an empty signature; refuse before reading the header.
        return Err(TokenError::AlgorithmNotAllowed);
    }
    let header_bytes = b64(h, "header is not base64url")?;
    let payload_bytes = b64(p, "payload is not base64url")?;
    let signature = b64(s, "signature is not base64url")?;

    unique_object(&header_bytes).map_err(|e| e.into_token_error("header"))?;
    let raw: RawHeader = serde_json::from_slice(&header_bytes)
        .map_err(|_| TokenError::Malformed("header fields"))?;
    match raw.alg.as_deref() {
        Some("RS256") => {}
        _ => return Err(TokenError::AlgorithmNotAllowed),
    }
    if raw.crit.is_some() {
        return Err(TokenError::CriticalHeader);
    }
    for (present, name) in [
        (raw.jku.is_some(), "jku"),
        (raw.jwk.is_some(), "jwk"),
        (raw.x5u.is_some(), "x5u"),
        (raw.x5c.is_some(), "x5c"),
    ] {
        if present {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    if let Some(typ) = raw.typ.as_deref()
        && !typ.eq_ignore_ascii_case("JWT")
        && !typ.eq_ignore_ascii_case("at+jwt")
    {
        return Err(TokenError::Malformed("typ is not JWT"));
    }
    let kid = raw
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(TokenError::MissingKeyId)?;

    unique_object(&payload_bytes).map_err(|e| e.into_token_error("claims"))?;
    let claims: Claims = serde_json::from_slice(&payload_bytes)
        .map_err(|_| TokenError::Malformed("claim of the wrong type"))?;

    Ok(ParsedJwt {
        header: Header {
            kid,
            nonce: raw.nonce.is_some(),
        },
        claims,
        signature,
        signed_len: h.len() + 1 + p.len(),
        raw: token.to_owned(),
    })
}

fn b64(segment: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    // The engine rejects padding and non-canonical trailing bits, so one token has one encoding.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed(what))
}

enum ObjectError {
    NotObject,
    Duplicate,
}

impl ObjectError {
    fn into_token_error(self, part: &'static str) -> TokenError {
        match self {
            ObjectError::NotObject => TokenError::Malformed(if part == "header" {
                "header is not a JSON object"
            } else {
                "claims are not a JSON object"
            }),
            ObjectError::Duplicate => TokenError::DuplicateName(part),
        }
    }
}

/// Checks that `bytes` is one JSON object whose member names are unique. Parsers disagree on
/// which of two equal names wins; we take neither.
fn unique_object(bytes: &[u8]) -> Result<(), ObjectError> {
    struct UniqueKeys;
    impl<'de> Visitor<'de> for UniqueKeys {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = HashSet::new();
            let mut unique = true;
            // Read to the end even after a repeat, so the object's syntax is still checked.
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                unique &= seen.insert(key);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(unique)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match de.deserialize_map(UniqueKeys) {
        Ok(true) => de.end().map_err(|_| ObjectError::NotObject),
        Ok(false) => Err(ObjectError::Duplicate),
        Err(_) => Err(ObjectError::NotObject),
    }
}

/// `aud` must be a string: Entra never issues an array, and accepting other shapes invites
/// confusion between validators.
fn string_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(Some(s)),
        _ => Err(de::Error::custom("aud must be a string")),
    }
}

fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                Ok(Some(f as u64))
            } else {
                Err(de::Error::custom("time claim out of range"))
            }
        }
        _ => Err(de::Error::custom("time claim must be a number")),
    }
}
