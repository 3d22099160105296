//! Signed identity assertions for upstreams (opt-in, `identity_assertion`).
//!
//! The `x-mcp-*` identity headers are trustworthy only if nothing but the gateway can reach the
//! upstream (the shipped NetworkPolicy). An assertion lets an upstream check who is calling
//! without trusting the network: on every allowed request mcp-authz adds
//! `x-mcp-identity-assertion`, a JWS (ES256, `kid`) whose claims are `iss` (the gateway),
//! `aud` (the MCP server's name in the policy), `sub` and `oid` (the user), `tid`, `tenant`,
//! `access_level`, `upn` when known, `iat`/`nbf`/`exp` (at most five minutes) and `jti`. One
//! assertion is made per user, server, tenant and level and reused until a minute before it
//! expires (a bounded cache), so signing is not on the path of most requests.
//!
//! The public keys are served as a JWKS on the metadata listener at [`JWKS_PATH`]. The private
//! key (P-256, PEM, PKCS#8 or SEC1) is `key_file`, re-read every `key_reload_seconds`: a new key
//! signs from then on, and the one it replaced stays in the JWKS for one assertion lifetime and
//! a minute more, so assertions already issued keep verifying. Without `key_file` each process
//! makes its own key at start, which suits one replica only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::IdentityAssertionConfig;

/// Where the public keys are served (metadata listener, and through Envoy).
pub const JWKS_PATH: &str = "/.well-known/mcp-authz/jwks.json";
/// The header the upstream gets.
pub const HEADER: &str = "x-mcp-identity-assertion";
/// How long before its expiry a cached assertion is replaced.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM private key (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)")]
    NotPem { path: PathBuf },
    #[error("{path}: not a P-256 private key ({reason})")]
    Rejected { path: PathBuf, reason: String },
    #[error("cannot make a signing key")]
    Generate,
}

struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    jwk: Value,
    /// The key file's content hash (`None` for an ephemeral key).
    source_hash: Option<[u8; 32]>,
}

impl SigningKey {
    fn new(pair: EcdsaKeyPair, source_hash: Option<[u8; 32]>) -> Self {
        // The uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .map(|(x, y)| (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)))
            .unwrap_or_default();
        // RFC 7638 thumbprint: the required members, in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256"});
        SigningKey {
            pair,
            kid,
            jwk,
            source_hash,
        }
    }

    fn from_file(path: &PathBuf) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let der = pem_body(&text).ok_or_else(|| KeyError::NotPem { path: path.clone() })?;
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| KeyError::Rejected {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(SigningKey::new(pair, Some(hash)))
    }

    fn ephemeral() -> Result<Self, KeyError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| KeyError::Generate)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
            .map_err(|_| KeyError::Generate)?;
        Ok(SigningKey::new(pair, None))
    }
}

/// The DER inside the first `PRIVATE KEY` or `EC PRIVATE KEY` PEM block.
fn pem_body(text: &str) -> Option<Vec<u8>> {
    let begin = [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----",
    ]
    .iter()
    .find_map(|b| text.find(b).map(|i| i + b.len()))?;
    let rest = &text[begin..];
    let end = rest.find("-----END")?;
    let b64: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).ok()
}

/// The signing key and the public keys published beside it.
struct KeyRing {
    signing: SigningKey,
    /// Keys it replaced, with when they stop being published.
    retired: Vec<(Value, Instant)>,
}

/// Who an assertion is about.
pub struct Subject<'a> {
    pub server: &'a str,
    pub tid: &'a str,
    pub oid: &'a str,
    pub label: Option<&'a str>,
    pub tenant: &'a str,
    pub access_level: &'a str,
}

pub struct IdentityAssertions {
    ring: ArcSwap<KeyRing>,
    cache: moka::sync::Cache<[u8; 32], (Arc<str>, Instant)>,
    issuer: String,
    lifetime: Duration,
    key_file: Option<PathBuf>,
    reload: Duration,
    rng: SystemRandom,
}

impl IdentityAssertions {
    pub fn new(cfg: &IdentityAssertionConfig, issuer: String) -> Result<Self, KeyError> {
        let signing = match &cfg.key_file {
            Some(path) => SigningKey::from_file(path)?,
            None => {
                tracing::warn!(
                    "identity_assertion without key_file: this process signs with a key of its own, which suits one replica only"
                );
                SigningKey::ephemeral()?
            }
        };
        let lifetime = Duration::from_secs(cfg.lifetime_seconds);
        Ok(IdentityAssertions {
            ring: ArcSwap::from_pointee(KeyRing {
                signing,
                retired: Vec::new(),
            }),
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_capacity)
                .time_to_live(
                    lifetime
                        .saturating_sub(REFRESH_MARGIN)
                        .max(Duration::from_secs(1)),
                )
                .build(),
            issuer,
            lifetime,
            key_file: cfg.key_file.clone(),
            reload: Duration::from_secs(cfg.key_reload_seconds.max(1)),
            rng: SystemRandom::new(),
        })
    }

    /// The signing key's id.
    pub fn current_kid(&self) -> String {
        self.ring.load().signing.kid.clone()
    }

    /// The JWKS document: the signing key and the recently replaced ones.
    pub fn jwks(&self) -> Value {
        let ring = self.ring.load();
        let now = Instant::now();
        let mut keys = vec![ring.signing.jwk.clone()];
        keys.extend(
            ring.retired
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(jwk, _)| jwk.clone()),
        );
        json!({ "keys": keys })
    }

    /// The assertion for this subject, cached per user, server, tenant and level.
    pub fn assertion(&self, who: &Subject<'_>) -> Option<Arc<str>> {
        let mut h = Sha256::new();
        for part in [
            who.server,
            who.tid,
            who.oid,
            who.label.unwrap_or(""),
            who.tenant,
            who.access_level,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let key: [u8; 32] = h.finalize().into();
        let now = Instant::now();
        if let Some((token, fresh_until)) = self.cache.get(&key)
            && fresh_until > now
        {
            return Some(token);
        }
        let token: Arc<str> = self.sign(who)?.into();
        self.cache.insert(
            key,
            (
                token.clone(),
                now + self.lifetime.saturating_sub(REFRESH_MARGIN),
            ),
        );
        Some(token)
    }

    fn sign(&self, who: &Subject<'_>) -> Option<String> {
        let ring = self.ring.load();
        let now = crate::clock::unix_now();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": ring.signing.kid});
        let mut claims = json!({
            "iss": self.issuer,
            "aud": who.server,
            "sub": who.oid,
            "oid": who.oid,
            "tid": who.tid,
            "tenant": who.tenant,
            "access_level": who.access_level,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime.as_secs(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(label) = who.label {
            claims["upn"] = json!(label);
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        match ring.signing.pair.sign(&self.rng, signing_input.as_bytes()) {
            Ok(sig) => Some(format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(sig.as_ref())
            )),
            Err(_) => {
                tracing::error!("identity assertion: signing failed");
                None
            }
        }
    }

    /// Re-reads the key file; a changed, valid key signs from now on. `Ok(true)` on rotation.
    pub fn reload_key(&self) -> Result<bool, KeyError> {
        let Some(path) = &self.key_file else {
            return Ok(false);
        };
        let next = SigningKey::from_file(path)?;
        let ring = self.ring.load();
        if next.source_hash == ring.signing.source_hash || next.kid == ring.signing.kid {
            return Ok(false);
        }
        let now = Instant::now();
        let mut retired: Vec<(Value, Instant)> = ring
            .retired
            .iter()
            .filter(|(_, until)| *until > now)
            .cloned()
            .collect();
        retired.push((
            ring.signing.jwk.clone(),
            now + self.lifetime + Duration::from_secs(60),
        ));
        tracing::info!(old_kid = %ring.signing.kid, new_kid = %next.kid, "identity assertion key rotated");
        self.ring.store(Arc::new(KeyRing {
            signing: next,
            retired,
        }));
        // Assertions signed with the old key still verify, but new ones use the new key.
        self.cache.invalidate_all();
        Ok(true)
    }

    /// Polls the key file until `shutdown`; a file that is unreadable or not a key is logged
    /// and the current key keeps signing.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if self.key_file.is_none() {
            return;
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.reload) => {}
                _ = &mut shutdown => return,
            }
            if let Err(e) = self.reload_key() {
                tracing::error!(error = %e, kid = %self.current_kid(), "identity assertion key not reloaded; the current key keeps signing");
            }
        }
    }
}

#[cfg(test)]
mod tests;
