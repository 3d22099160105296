//! The CheckRequest read where it lies, and the common allow answer written straight to the
//! wire: no owned copy of a header, a body or a map per Check.
//!
//! prost's generated types (envoy-types) decode every string of a CheckRequest into its own
//! `String`, every header into a `HashMap` entry, the body into a `Vec`: about thirty
//! allocations and copies per Check for fields the decision mostly never reads. [`CheckWire`]
//! keeps the message's bytes (as the HTTP/2 body delivered them, without a copy) and records
//! where the fields the decision reads are; [`CheckWire::headers`] and [`CheckWire::input`] borrow from
//! them.
//!
//! It reads the message exactly as prost would, for every field it reads: fields in any
//! order, a field given twice is the last one (a message given twice is merged, so a later
//! `method` in a second `http` still wins and repeated headers add up), a map key given twice
//! is its last value, unknown fields (groups included) are skipped, and a known field with the
//! wrong wire type, a truncated length, an over-long varint or a string that is not UTF-8 is
//! an error (`INVALID_ARGUMENT`, which Envoy, failing closed, turns into a refusal). The one
//! difference: a string field it does not read (the peer addresses, `id`, `protocol`, …) is
//! not checked for UTF-8, where prost would refuse the whole message; nothing reads them.
//! `tests.rs` holds the two readings equal on hand-made edge cases, and the `check_request`
//! fuzz target on arbitrary bytes.

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;

/// Why a CheckRequest could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed CheckRequest: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// A byte range of the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// Where the fields that the decision reads are.
#[derive(Debug, Default)]
struct Fields {
    method: Span,
    path: Span,
    host: Span,
    scheme: Span,
    body: Span,
    raw_body: Span,
    /// `context_extensions["mcp_server"]`.
    server: Option<Span>,
    /// `http.headers` (Envoy's merged map), key and value, in arrival order.
    map_headers: Vec<(Span, Span)>,
    /// `http.header_map.headers` (`encode_raw_headers: true`): key, value, raw_value.
    raw_headers: Vec<(Span, Span, Span)>,
}

/// A CheckRequest: its bytes and where the fields the decision reads are.
#[derive(Debug)]
pub struct CheckWire {
    buf: Bytes,
    f: Fields,
}

// Field numbers (envoy/service/auth/v3/{external_auth,attribute_context}.proto,
// envoy/config/core/v3/base.proto).
const CHECK_ATTRIBUTES: u32 = 1;
const ATTR_REQUEST: u32 = 4;
const ATTR_CONTEXT_EXTENSIONS: u32 = 10;
const REQUEST_HTTP: u32 = 2;
const HTTP_METHOD: u32 = 2;
const HTTP_HEADERS: u32 = 3;
const HTTP_PATH: u32 = 4;
const HTTP_HOST: u32 = 5;
const HTTP_SCHEME: u32 = 6;
const HTTP_BODY: u32 = 11;
const HTTP_RAW_BODY: u32 = 12;
const HTTP_HEADER_MAP: u32 = 13;
const HEADER_MAP_HEADERS: u32 = 1;
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;
const HEADER_RAW_VALUE: u32 = 3;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// Nesting of skipped groups, as prost bounds its recursion.
const MAX_DEPTH: u32 = 100;

/// A cursor over `buf[pos..end]`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    fn within(&self, span: Span) -> Reader<'a> {
        Reader {
            buf: self.buf,
            pos: span.start,
            end: span.end,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf[..self.end].get(self.pos) else {
                return Err(WireError("truncated varint"));
            };
            self.pos += 1;
            // The tenth byte holds the 64th bit only.
            if i == 9 && b > 1 {
                return Err(WireError("varint overflow"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError("varint overflow"))
    }

    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| WireError("invalid key"))?;
        let wire_type = (key & 7) as u8;
        if wire_type > FIXED32 {
            return Err(WireError("invalid wire type"));
        }
        let tag = key >> 3;
        if tag == 0 {
            return Err(WireError("invalid tag"));
        }
        Ok((tag, wire_type))
    }

    /// A length-delimited field's contents (the key already read, of this wire type).
    fn len(&mut self, wire_type: u8) -> Result<Span, WireError> {
        if wire_type != LEN {
            return Err(WireError("invalid wire type for a known field"));
        }
        let n = self.varint()?;
        let left = (self.end - self.pos) as u64;
        if n > left {
            return Err(WireError("length past the end of the message"));
        }
        let span = Span {
            start: self.pos,
            end: self.pos + n as usize,
        };
        self.pos = span.end;
        Ok(span)
    }

    fn skip(&mut self, tag: u32, wire_type: u8, depth: u32) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError("nested too deep"));
        }
        let n = match wire_type {
            VARINT => {
                self.varint()?;
                0
            }
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => {
                self.len(LEN)?;
                0
            }
            START_GROUP => loop {
                let (inner, wt) = self.key()?;
                if wt == END_GROUP {
                    if inner != tag {
                        return Err(WireError("unexpected end group tag"));
                    }
                    break 0;
                }
                self.skip(inner, wt, depth + 1)?;
            },
            _ => return Err(WireError("unexpected end group tag")),
        };
        if n > self.end - self.pos {
            return Err(WireError("field past the end of the message"));
        }
        self.pos += n;
        Ok(())
    }
}

impl CheckWire {
    /// Reads the message in `buf` (a whole CheckRequest, without gRPC framing).
    pub fn decode(buf: Bytes) -> Result<Self, WireError> {
        let mut f = Fields::default();
        let mut r = Reader::new(&buf);
        while !r.done() {
            let (tag, wt) = r.key()?;
            match tag {
                CHECK_ATTRIBUTES => {
                    let s = r.len(wt)?;
                    attributes(r.within(s), &mut f)?;
                }
                _ => r.skip(tag, wt, 0)?,
            }
        }
        // A map key given twice is its last value (as a HashMap insert): keep the last entry
        // of each key, in the order of first arrival. Indexed by key, so that a message of
        // many tiny entries costs linear time, as prost's HashMap does.
        if f.map_headers.len() > 1 {
            let mut seen: Vec<(Span, Span)> = Vec::with_capacity(f.map_headers.len());
            let mut at: std::collections::HashMap<&[u8], usize> =
                std::collections::HashMap::with_capacity(f.map_headers.len());
            for (k, v) in f.map_headers.drain(..) {
                match at.entry(&buf[k.start..k.end]) {
                    std::collections::hash_map::Entry::Occupied(i) => seen[*i.get()].1 = v,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(seen.len());
                        seen.push((k, v));
                    }
                }
            }
            f.map_headers = seen;
        }
        Ok(CheckWire { buf, f })
    }

    /// Encodes `req` and reads it back (tests, benchmarks, fuzzing seeds).
    pub fn from_request(
        req: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
    ) -> Result<Self, WireError> {
        Self::decode(prost::Message::encode_to_vec(req).into())
    }

    fn bytes(&self, s: Span) -> &[u8] {
        &self.buf[s.start..s.end]
    }

    fn str(&self, s: Span) -> Result<&str, WireError> {
        std::str::from_utf8(self.bytes(s)).map_err(|_| WireError("a string field is not UTF-8"))
    }

    pub fn method(&self) -> Result<&str, WireError> {
        self.str(self.f.method)
    }

    pub fn path(&self) -> Result<&str, WireError> {
        self.str(self.f.path)
    }

    pub fn host(&self) -> Result<&str, WireError> {
        self.str(self.f.host)
    }

    pub fn scheme(&self) -> Result<&str, WireError> {
        self.str(self.f.scheme)
    }

    /// The body: `raw_body` when Envoy packed it as bytes, else `body`.
    pub fn body(&self) -> Result<&[u8], WireError> {
        if self.f.raw_body.is_empty() {
            Ok(self.str(self.f.body)?.as_bytes())
        } else {
            Ok(self.bytes(self.f.raw_body))
        }
    }

    /// `context_extensions["mcp_server"]`, the route's server.
    pub fn route_server(&self) -> Result<Option<&str>, WireError> {
        self.f.server.map(|s| self.str(s)).transpose()
    }

    /// The headers as Envoy sent them: the raw list when it is not empty (a value that is
    /// not UTF-8 reads as U+FFFD: it cannot be a token or a name we read, but its name still
    /// counts for stripping), else the merged map.
    pub fn header_pairs(&self) -> Result<Vec<(&str, &str)>, WireError> {
        if !self.f.raw_headers.is_empty() {
            let mut pairs = Vec::with_capacity(self.f.raw_headers.len());
            for &(k, v, raw) in &self.f.raw_headers {
                let value = if raw.is_empty() {
                    self.str(v)?
                } else {
                    // The string field is still a string: prost would refuse it if not UTF-8.
                    self.str(v)?;
                    std::str::from_utf8(self.bytes(raw)).unwrap_or("\u{fffd}")
                };
                pairs.push((self.str(k)?, value));
            }
            return Ok(pairs);
        }
        let mut pairs = Vec::with_capacity(self.f.map_headers.len());
        for &(k, v) in &self.f.map_headers {
            pairs.push((self.str(k)?, self.str(v)?));
        }
        Ok(pairs)
    }
}

fn attributes(mut r: Reader<'_>, f: &mut Fields) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key()?;
        match tag {
            ATTR_REQUEST => {
                let s = r.len(wt)?;
                request(r.within(s), f)?;
            }
            ATTR_CONTEXT_EXTENSIONS => {
                let s = r.len(wt)?;
                let (k, v) = map_entry(r.within(s))?;
                if r.buf[k.start..k.end] == *crate::grpc::CONTEXT_SERVER_KEY.as_bytes() {
                    f.server = Some(v);
                }
            }
            _ => r.skip(tag, wt, 0)?,
        }
    }
    Ok(())
}

fn request(mut r: Reader<'_>, f: &mut Fields) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key()?;
        match tag {
            REQUEST_HTTP => {
                let s = r.len(wt)?;
                http(r.within(s), f)?;
            }
            _ => r.skip(tag, wt, 0)?,
        }
    }
    Ok(())
}

fn http(mut r: Reader<'_>, f: &mut Fields) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key()?;
        match tag {
            HTTP_METHOD => f.method = r.len(wt)?,
            HTTP_PATH => f.path = r.len(wt)?,
            HTTP_HOST => f.host = r.len(wt)?,
            HTTP_SCHEME => f.scheme = r.len(wt)?,
            HTTP_BODY => f.body = r.len(wt)?,
            HTTP_RAW_BODY => f.raw_body = r.len(wt)?,
            HTTP_HEADERS => {
                let s = r.len(wt)?;
                f.map_headers.push(map_entry(r.within(s))?);
            }
            HTTP_HEADER_MAP => {
                let s = r.len(wt)?;
                header_map(r.within(s), f)?;
            }
            _ => r.skip(tag, wt, 0)?,
        }
    }
    Ok(())
}

fn header_map(mut r: Reader<'_>, f: &mut Fields) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key()?;
        match tag {
            HEADER_MAP_HEADERS => {
                let s = r.len(wt)?;
                let mut h = r.within(s);
                let (mut k, mut v, mut raw) = (Span::default(), Span::default(), Span::default());
                while !h.done() {
                    let (tag, wt) = h.key()?;
                    match tag {
                        HEADER_KEY => k = h.len(wt)?,
                        HEADER_VALUE => v = h.len(wt)?,
                        HEADER_RAW_VALUE => raw = h.len(wt)?,
                        _ => h.skip(tag, wt, 0)?,
                    }
                }
                f.raw_headers.push((k, v, raw));
            }
            _ => r.skip(tag, wt, 0)?,
        }
    }
    Ok(())
}

/// One `map<string, string>` entry: its key and value (each empty when absent).
fn map_entry(mut r: Reader<'_>) -> Result<(Span, Span), WireError> {
    let (mut k, mut v) = (Span::default(), Span::default());
    while !r.done() {
        let (tag, wt) = r.key()?;
        match tag {
            MAP_KEY => k = r.len(wt)?,
            MAP_VALUE => v = r.len(wt)?,
            _ => r.skip(tag, wt, 0)?,
        }
    }
    Ok((k, v))
}

// The allow answer, written as prost would write the `CheckResponse` that
// `to_check_response` builds (fields in tag order, defaults left out), without building it.
const RESPONSE_STATUS: u32 = 1;
const RESPONSE_OK: u32 = 3;
const OK_HEADERS: u32 = 2;
const OK_HEADERS_TO_REMOVE: u32 = 5;
const OPTION_HEADER: u32 = 1;
const OPTION_APPEND_ACTION: u32 = 3;

fn put_varint(mut v: u64, out: &mut impl BufMut) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_key(tag: u32, wire_type: u8, out: &mut impl BufMut) {
    put_varint(u64::from(tag << 3 | u32::from(wire_type)), out);
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

fn len_field_len(tag: u32, n: usize) -> usize {
    key_len(tag) + varint_len(n as u64) + n
}

fn put_str(tag: u32, s: &[u8], out: &mut impl BufMut) {
    put_key(tag, LEN, out);
    put_varint(s.len() as u64, out);
    out.put_slice(s);
}

const OVERWRITE: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32 as u64;

/// A proto3 string field: left out when empty, as prost does.
fn str_field_len(tag: u32, n: usize) -> usize {
    if n == 0 { 0 } else { len_field_len(tag, n) }
}

fn put_str_field(tag: u32, s: &str, out: &mut impl BufMut) {
    if !s.is_empty() {
        put_str(tag, s.as_bytes(), out);
    }
}

/// The length of one `HeaderValue{key, value}`.
fn header_len(key: &str, value: &str) -> usize {
    str_field_len(HEADER_KEY, key.len()) + str_field_len(HEADER_VALUE, value.len())
}

/// The length of one `HeaderValueOption{header: {key, value}, append_action: OVERWRITE…}`.
fn option_len(key: &str, value: &str) -> usize {
    len_field_len(OPTION_HEADER, header_len(key, value))
        + key_len(OPTION_APPEND_ACTION)
        + varint_len(OVERWRITE)
}

/// The length of the `OkHttpResponse` that sets `set` and removes `remove`.
fn ok_len(set: &[(&'static str, String)], remove: &[String]) -> usize {
    set.iter()
        .map(|(k, v)| len_field_len(OK_HEADERS, option_len(k, v)))
        .sum::<usize>()
        + remove
            .iter()
            .map(|n| len_field_len(OK_HEADERS_TO_REMOVE, n.len()))
            .sum::<usize>()
}

/// The encoded length of an allow answer with these headers to set and remove (the tests hold
/// it equal to prost's).
#[cfg(test)]
fn allow_len(set: &[(&'static str, String)], remove: &[String]) -> usize {
    // An OK status is an empty message: its code, 0, is the default.
    len_field_len(RESPONSE_STATUS, 0) + len_field_len(RESPONSE_OK, ok_len(set, remove))
}

/// Writes the allow answer: an OK status and an `ok_response` that sets `set` (replacing what
/// the client sent) and removes `remove` (`to_check_response` of a `Verdict::Allow` without a
/// list, byte for byte).
pub fn put_allow(set: &[(&'static str, String)], remove: &[String], out: &mut impl BufMut) {
    put_key(RESPONSE_STATUS, LEN, out);
    put_varint(0, out);
    put_key(RESPONSE_OK, LEN, out);
    put_varint(ok_len(set, remove) as u64, out);
    for (k, v) in set {
        put_key(OK_HEADERS, LEN, out);
        put_varint(option_len(k, v) as u64, out);
        put_key(OPTION_HEADER, LEN, out);
        put_varint(header_len(k, v) as u64, out);
        put_str_field(HEADER_KEY, k, out);
        put_str_field(HEADER_VALUE, v, out);
        put_key(OPTION_APPEND_ACTION, VARINT, out);
        put_varint(OVERWRITE, out);
    }
    for n in remove {
        put_str(OK_HEADERS_TO_REMOVE, n.as_bytes(), out);
    }
}

/// Where [`CheckWire`]'s reading of a message differs from prost's reading `req` of the same
/// bytes, if anywhere (the tests and the `check_request` fuzz target hold them equal).
pub fn reading_differs(
    req: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
    wire: &CheckWire,
) -> Option<String> {
    let attrs = req.attributes.clone().unwrap_or_default();
    let http = attrs
        .request
        .clone()
        .unwrap_or_default()
        .http
        .unwrap_or_default();
    let body: &[u8] = if http.raw_body.is_empty() {
        http.body.as_bytes()
    } else {
        &http.raw_body
    };
    let mut want_headers: Vec<(String, String)> = match &http.header_map {
        Some(m) if !m.headers.is_empty() => m
            .headers
            .iter()
            .map(|h| {
                let v = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8(h.raw_value.clone()).unwrap_or_else(|_| "\u{fffd}".into())
                };
                (h.key.clone(), v)
            })
            .collect(),
        _ => http
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let got = (|| -> Result<_, WireError> {
        Ok((
            wire.method()?.to_owned(),
            wire.path()?.to_owned(),
            wire.host()?.to_owned(),
            wire.scheme()?.to_owned(),
            wire.body()?.to_vec(),
            wire.route_server()?.map(str::to_owned),
            wire.header_pairs()?
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>(),
        ))
    })();
    let (method, path, host, scheme, got_body, server, mut got_headers) = match got {
        Ok(g) => g,
        Err(e) => return Some(format!("prost read the message, CheckWire refused it: {e}")),
    };
    // The merged map has no order (prost's is a HashMap): compare it sorted.
    if http
        .header_map
        .as_ref()
        .is_none_or(|m| m.headers.is_empty())
    {
        want_headers.sort();
        got_headers.sort();
    }
    let want_server = attrs
        .context_extensions
        .get(crate::grpc::CONTEXT_SERVER_KEY)
        .cloned();
    let pairs = [
        ("method", method == http.method),
        ("path", path == http.path),
        ("host", host == http.host),
        ("scheme", scheme == http.scheme),
        ("body", got_body == body),
        ("route server", server == want_server),
        ("headers", got_headers == want_headers),
    ];
    pairs
        .iter()
        .find(|(_, same)| !same)
        .map(|(what, _)| format!("{what} differs"))
}

#[cfg(test)]
mod tests;
