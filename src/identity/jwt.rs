//! Strict parsing of a JWS compact token into header and claims, before any key is looked at.
//!
//! Stricter than RFC 7515 requires, on purpose (RFC 8725): exactly three non-empty segments of
//! canonical unpadded base64url; header and payload are JSON objects with no repeated names;
//! `alg` is RS256; `jku`/`jwk`/`x5u`/`x5c` are refused (keys come only from the pinned JWKS);
//! `crit` is refused (we understand no extension).

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::error::TokenError;
use crate::ids::GroupId;

/// A token split and decoded, signature not yet checked. Borrows the token it was parsed from
/// and, for its claims, the buffer its payload was decoded into.
#[derive(Debug)]
pub struct ParsedJwt<'t> {
    pub header: Header,
    pub claims: Claims<'t>,
    pub signature: Vec<u8>,
    signed: &'t str,
}

impl ParsedJwt<'_> {
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub fn signed_part(&self) -> &[u8] {
        self.signed.as_bytes()
    }
}

/// The header fields we act on.
#[derive(Debug, Clone)]
pub struct Header {
    pub kid: String,
    /// A `nonce` header marks a Microsoft Graph token.
    pub nonce: bool,
}

/// The claims we read. Times are NumericDate (seconds, fractions allowed and floored).
///
/// A string claim borrows from the decoded payload unless it had an escape: a new token's
/// claims are checked and dropped (only a label and the groups are kept), so copying each into
/// its own `String` was a dozen allocations per new token for nothing.
#[derive(Debug, Clone, Default)]
pub struct Claims<'p> {
    pub iss: Option<Text<'p>>,
    /// A string only: Entra never issues an array, and accepting other shapes invites
    /// confusion between validators.
    pub aud: Option<Text<'p>>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub ver: Option<Text<'p>>,
    pub tid: Option<Text<'p>>,
    pub oid: Option<Text<'p>>,
    pub sub: Option<Text<'p>>,
    pub scp: Option<Text<'p>>,
    pub roles: Option<Vec<String>>,
    pub groups: Option<GroupsValue>,
    pub hasgroups: Option<bool>,
    /// `_claim_names`.
    pub claim_names: Option<ClaimNames>,
    pub upn: Option<Text<'p>>,
    pub preferred_username: Option<Text<'p>>,
    pub email: Option<Text<'p>>,
    pub name: Option<Text<'p>>,
    pub azp: Option<Text<'p>>,
    pub appid: Option<Text<'p>>,
    pub idtyp: Option<Text<'p>>,
}

/// A JSON string's value: borrowed where it lies, owned if it had to be unescaped.
pub type Text<'p> = Cow<'p, str>;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClaimNames {
    pub groups: Option<String>,
}

/// The `groups` claim as read: group object ids, or the mark that an entry was not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupsValue {
    Ids(Vec<GroupId>),
    /// An entry that is not a group object id (a group name, an `sAMAccountName`).
    NotIds,
}

impl GroupsValue {
    /// Each entry read as a group object id.
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        entries
            .into_iter()
            .map(GroupId::parse)
            .collect::<Option<_>>()
            .map_or(GroupsValue::NotIds, GroupsValue::Ids)
    }
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

impl Claims<'_> {
    /// The groups, or `GroupsNotObjectIds` when the claim holds anything but group object ids
    /// (an app configured to emit group names or `sAMAccountName`s: a name is not an identity,
    /// and one directory's name can be another's).
    ///
    /// The ids were read with the claims; only their verdict is given here, after every other
    /// check.
    pub fn into_groups_claim(self) -> Result<GroupsClaim, TokenError> {
        let overage = self
            .claim_names
            .as_ref()
            .is_some_and(|n| n.groups.is_some())
            || self.hasgroups == Some(true);
        Ok(match (self.groups, overage) {
            (_, true) => GroupsClaim::Overage,
            (Some(GroupsValue::Ids(g)), false) => GroupsClaim::Listed(g),
            (Some(GroupsValue::NotIds), false) => return Err(TokenError::GroupsNotObjectIds),
            (None, false) => GroupsClaim::Absent,
        })
    }
}

/// Splits, decodes and checks the structure of a token. No key, no clock. The payload is
/// decoded into `payload` (cleared first), which the claims borrow.
///
/// Each JSON segment is read once: its members are collected as borrowed raw values (which
/// checks the whole object's syntax), their names checked for repeats, and only then are the
/// members we read typed. The refusals and their order are those of reading the object twice.
pub fn parse<'t>(token: &'t str, payload: &'t mut Vec<u8>) -> Result<ParsedJwt<'t>, TokenError> {
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
    payload.clear();
    URL_SAFE_NO_PAD
        .decode_vec(p, payload)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let payload: &'t [u8] = payload;
    let signature = b64(s, "signature is not base64url")?;

    let header = header(&header_bytes)?;
    let members = unique_members(payload).map_err(|e| e.into_token_error("claims"))?;
    let claims = claims(&members).ok_or(TokenError::Malformed("claim of the wrong type"))?;
    Ok(ParsedJwt {
        header,
        claims,
        signature,
        signed: &token[..h.len() + 1 + p.len()],
    })
}

fn header(bytes: &[u8]) -> Result<Header, TokenError> {
    let members = unique_members(bytes).map_err(|e| e.into_token_error("header"))?;
    let fields = || TokenError::Malformed("header fields");
    let (mut alg, mut typ, mut kid) = (None, None, None);
    let (mut nonce, mut crit) = (false, false);
    let mut forbidden = [false; 4];
    for (name, value) in &members {
        match name.as_ref() {
            "alg" => alg = string(value).ok_or_else(fields)?,
            "typ" => typ = string(value).ok_or_else(fields)?,
            "kid" => kid = string(value).ok_or_else(fields)?,
            // Presence is what counts; `null` reads as absent.
            "nonce" => nonce = !is_null(value),
            "crit" => crit = !is_null(value),
            "jku" => forbidden[0] = !is_null(value),
            "jwk" => forbidden[1] = !is_null(value),
            "x5u" => forbidden[2] = !is_null(value),
            "x5c" => forbidden[3] = !is_null(value),
            _ => {}
        }
    }
    match alg.as_deref() {
        Some("RS256") => {}
        _ => return Err(TokenError::AlgorithmNotAllowed),
    }
    if crit {
        return Err(TokenError::CriticalHeader);
    }
    for (present, name) in forbidden.into_iter().zip(["jku", "jwk", "x5u", "x5c"]) {
        if present {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    if let Some(typ) = typ.as_deref()
        && !typ.eq_ignore_ascii_case("JWT")
        && !typ.eq_ignore_ascii_case("at+jwt")
    {
        return Err(TokenError::Malformed("typ is not JWT"));
    }
    let kid = kid
        .filter(|k| !k.is_empty())
        .ok_or(TokenError::MissingKeyId)?
        .into_owned();
    Ok(Header { kid, nonce })
}

/// The claims we read, typed from the members; `None` if one has the wrong type.
fn claims<'p>(members: &[(Name<'_>, &'p RawValue)]) -> Option<Claims<'p>> {
    let mut c = Claims::default();
    for (name, value) in members {
        match name.as_ref() {
            "iss" => c.iss = string(value)?,
            "aud" => c.aud = Some(text(value)?),
            "exp" => c.exp = Some(numeric_date(value)?),
            "nbf" => c.nbf = Some(numeric_date(value)?),
            "iat" => c.iat = Some(numeric_date(value)?),
            "ver" => c.ver = string(value)?,
            "tid" => c.tid = string(value)?,
            "oid" => c.oid = string(value)?,
            "sub" => c.sub = string(value)?,
            "scp" => c.scp = string(value)?,
            "roles" => c.roles = typed(value)?,
            "groups" => c.groups = groups(value)?,
            "hasgroups" => c.hasgroups = typed(value)?,
            "_claim_names" => c.claim_names = typed(value)?,
            "upn" => c.upn = string(value)?,
            "preferred_username" => c.preferred_username = string(value)?,
            "email" => c.email = string(value)?,
            "name" => c.name = string(value)?,
            "azp" => c.azp = string(value)?,
            "appid" => c.appid = string(value)?,
            "idtyp" => c.idtyp = string(value)?,
            _ => {}
        }
    }
    Some(c)
}

fn is_null(value: &RawValue) -> bool {
    value.get() == "null"
}

/// A string or `null` (absent); `None` for any other type.
fn string(value: &RawValue) -> Option<Option<Text<'_>>> {
    if is_null(value) {
        return Some(None);
    }
    text(value).map(Some)
}

/// A string; `None` for any other type (`null` too).
///
/// A string without a backslash is its bytes between the quotes, borrowed: the raw value has
/// already been read as JSON (control characters refused, UTF-8 checked), so only escapes need
/// a second reading. Most claims of a new token take this path.
fn text(value: &RawValue) -> Option<Text<'_>> {
    let inner = value.get().strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    typed::<String>(value).map(Cow::Owned)
}

/// The `groups` claim: an array of strings or `null` (absent); `None` for any other type. Each
/// entry is read as a group id where it lies in the payload, not copied into a string first
/// (a token lists up to 200); an entry with an escape, which cannot be read in place, is
/// unescaped first.
fn groups(value: &RawValue) -> Option<Option<GroupsValue>> {
    Some(
        match serde_json::from_str::<Option<Vec<&str>>>(value.get()) {
            Ok(entries) => entries.map(GroupsValue::of),
            Err(_) => typed::<Option<Vec<String>>>(value)?
                .map(|entries| GroupsValue::of(entries.iter().map(String::as_str))),
        },
    )
}

fn typed<'a, T: Deserialize<'a>>(value: &'a RawValue) -> Option<T> {
    serde_json::from_str(value.get()).ok()
}

/// NumericDate: seconds, fractions allowed and floored; never negative, never `null`.
fn numeric_date(value: &RawValue) -> Option<u64> {
    match serde_json::from_str::<serde_json::Number>(value.get()).ok()? {
        n if n.as_u64().is_some() => n.as_u64(),
        n => n
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64),
    }
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

/// A member name, borrowed from the segment unless it had an escape.
type Name<'a> = Cow<'a, str>;

/// The members of `bytes`, which must be one JSON object whose member names are unique (after
/// unescaping: `"a"` and `"\u0061"` are one name). Parsers disagree on which of two equal names
/// wins; we take neither. Sorted by name.
fn unique_members(bytes: &[u8]) -> Result<Vec<(Name<'_>, &RawValue)>, ObjectError> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(Name<'de>, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::with_capacity(map.size_hint().unwrap_or(24));
            while let Some(NameOf(name)) = map.next_key()? {
                members.push((name, map.next_value::<&RawValue>()?));
            }
            Ok(members)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut members = de
        .deserialize_map(Members)
        .map_err(|_| ObjectError::NotObject)?;
    de.end().map_err(|_| ObjectError::NotObject)?;
    members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if members.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ObjectError::Duplicate);
    }
    Ok(members)
}

/// A member name that borrows when it can (serde's own `Cow<str>` always copies).
struct NameOf<'de>(Name<'de>);

impl<'de> Deserialize<'de> for NameOf<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NameOf<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(NameOf(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(NameOf(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}
