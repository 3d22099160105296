//! The stand-in's own reading of the tokens presented to it (OBO assertions, Graph bearer
//! tokens): a compact JWS, signed RS256 by one of its own keys. Deliberately not mcp-authz's
//! parser: a fake that verified with the code under test would accept what that code accepts.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::Authority;

/// A compact JWS split and decoded, not yet verified.
pub struct Decoded<'a> {
    pub header: Value,
    pub claims: Value,
    signed: &'a str,
    signature: Vec<u8>,
}

/// Splits and decodes `token`; `None` when it is not three base64url parts of JSON objects.
pub fn decode(token: &str) -> Option<Decoded<'_>> {
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = |part: &str| {
        let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()?;
        v.is_object().then_some(v)
    };
    Some(Decoded {
        header: json(h)?,
        claims: json(p)?,
        signed: &token[..h.len() + 1 + p.len()],
        signature: URL_SAFE_NO_PAD.decode(s).ok()?,
    })
}

/// The claims of `token` when it is RS256-signed by a key the authority publishes.
pub fn verified_claims(authority: &Authority, token: &str) -> Option<Value> {
    let d = decode(token)?;
    if d.header["alg"] != "RS256" {
        return None;
    }
    let key = authority.key(d.header["kid"].as_str()?)?;
    key.verify(d.signed.as_bytes(), &d.signature)
        .then_some(d.claims)
}

impl Decoded<'_> {
    /// Whether the RSA key in `spki_der` (SubjectPublicKeyInfo) verifies this RS256 signature.
    pub fn verify_with_spki(&self, spki_der: &[u8]) -> bool {
        use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki_der)
            .verify(self.signed.as_bytes(), &self.signature)
            .is_ok()
    }

    /// Whether the RSA key of `jwk` (`n`, `e`) verifies this RS256 signature.
    pub fn verify_with_jwk(&self, jwk: &Value) -> bool {
        use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
        let part = |name: &str| {
            jwk[name]
                .as_str()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        };
        let (Some(n), Some(e)) = (part("n"), part("e")) else {
            return false;
        };
        RsaPublicKeyComponents { n: &n, e: &e }
            .verify(
                &RSA_PKCS1_2048_8192_SHA256,
                self.signed.as_bytes(),
                &self.signature,
            )
            .is_ok()
    }
}
