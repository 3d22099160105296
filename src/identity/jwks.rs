//! Signing keys: OIDC discovery → `jwks_uri` → JWKS, parsed once into verifiers.
//!
//! Failure behaviour: a failed fetch keeps the last good key set; an unknown `kid` refetches on
//! the request path at most once per `unknown_kid_refresh` (single-flight: concurrent requests
//! wait for the one fetch); a background task refreshes on a timer. Keys come only from the
//! `jwks_uri` of the configured authority's discovery document, never from a token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use aws_lc_rs::digest::{Digest, SHA256};
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::error::TokenError;

/// Largest discovery or JWKS document we read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    /// `entra_error`: Entra's `error` and first `AADSTS` code when the body is its error JSON
    /// (`invalid_tenant AADSTS90002` for a directory it does not know); never the body itself.
    #[error("GET {url}: HTTP {status}{}", entra_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Status {
        url: String,
        status: u16,
        entra_error: Option<String>,
    },
    #[error("{url}: not the expected JSON: {reason}")]
    Json { url: String, reason: String },
    #[error("jwks_uri {0} is not on the configured authority")]
    ForeignJwksUri(String),
    #[error("{url}: no usable RS256 signing key ({skipped} skipped)")]
    NoUsableKeys { url: String, skipped: usize },
}

/// One verification key.
pub struct Key {
    pub kid: String,
    verifier: ParsedPublicKey,
    /// The key's `issuer`: a concrete issuer, or a template with `{tenantid}`.
    issuer: Option<String>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn from_components(
        kid: &str,
        n_b64: &str,
        e_b64: &str,
        issuer: Option<String>,
    ) -> Result<Self, String> {
        let n = URL_SAFE_NO_PAD
            .decode(n_b64)
            .map_err(|_| "n is not base64url".to_string())?;
        let e = URL_SAFE_NO_PAD
            .decode(e_b64)
            .map_err(|_| "e is not base64url".to_string())?;
        let verifier = RsaPublicKeyComponents { n: &n, e: &e }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .map_err(|err| format!("not an RSA key: {err}"))?;
        Ok(Self {
            kid: kid.to_owned(),
            verifier,
            issuer,
        })
    }

    /// True when `signature` is this key's RS256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // RSA_PKCS1_2048_8192_SHA256 also refuses keys under 2048 bits.
        self.verifier.verify_sig(message, signature).is_ok()
    }

    /// True when `signature` is this key's RS256 signature of the message whose SHA-256 is
    /// `digest`. (aws-lc-rs does not allow this in FIPS mode, which mcp-authz does not build.)
    pub fn verify_digest(&self, digest: &Digest, signature: &[u8]) -> bool {
        digest.algorithm() == &SHA256 && self.verifier.verify_digest_sig(digest, signature).is_ok()
    }

    /// A key that names an issuer verifies only tokens of that issuer. `{tenantid}` templates
    /// are filled with the token's `tid`. Entra publishes v2 issuers on its keys and signs v1
    /// tokens of the same directory with them, so the v2 issuer of the token's own `tid` is
    /// accepted too.
    ///
    /// `also` is asked of the key's issuer (filled with `tid`) when it is not the token's own:
    /// a v1 token may be signed by a key the v2 metadata lists.
    pub fn issuer_allows(&self, token_iss: &str, tid: &str, also: impl Fn(&str) -> bool) -> bool {
        match &self.issuer {
            None => true,
            Some(template) => {
                is_filled_template(template, tid, token_iss) || {
                    let concrete = template.replace(TENANT_PLACEHOLDER, tid);
                    also(&concrete)
                }
            }
        }
    }
}

const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// `s == template.replace("{tenantid}", tid)`, without building the string.
pub fn is_filled_template(template: &str, tid: &str, s: &str) -> bool {
    let mut rest = s;
    let mut pieces = template.split(TENANT_PLACEHOLDER).peekable();
    while let Some(piece) = pieces.next() {
        let Some(after) = rest.strip_prefix(piece) else {
            return false;
        };
        rest = after;
        if pieces.peek().is_some() {
            let Some(after) = rest.strip_prefix(tid) else {
                return false;
            };
            rest = after;
        }
    }
    rest.is_empty()
}

/// An immutable set of keys by `kid`.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<[Arc<Key>]>>,
    pub fetched_at: Option<SystemTime>,
    pub jwks_uri: Option<String>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.values().map(|v| v.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.by_kid.keys().cloned().collect();
        k.sort();
        k
    }

    /// Parses a JWKS document. Keys that are not RSA signing keys are skipped and counted.
    pub fn from_jwks(bytes: &[u8], url: &str) -> Result<Self, JwksError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            #[serde(rename = "use")]
            use_: Option<String>,
            kid: Option<String>,
            n: Option<String>,
            e: Option<String>,
            alg: Option<String>,
            issuer: Option<String>,
        }
        let doc: Jwks = serde_json::from_slice(bytes).map_err(|e| JwksError::Json {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let mut by_kid: HashMap<String, Vec<Arc<Key>>> = HashMap::new();
        let mut skipped = 0;
        for raw in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                skipped += 1;
                continue;
            };
            let usable = jwk.kty == "RSA"
                && jwk.use_.as_deref().is_none_or(|u| u == "sig")
                && jwk.alg.as_deref().is_none_or(|a| a == "RS256");
            let (Some(kid), Some(n), Some(e), true) = (jwk.kid, jwk.n, jwk.e, usable) else {
                skipped += 1;
                continue;
            };
            match Key::from_components(&kid, &n, &e, jwk.issuer) {
                Ok(key) => by_kid.entry(kid).or_default().push(Arc::new(key)),
                Err(reason) => {
                    tracing::warn!(%url, %kid, %reason, "skipping JWKS key");
                    skipped += 1;
                }
            }
        }
        if by_kid.is_empty() {
            return Err(JwksError::NoUsableKeys {
                url: url.to_owned(),
                skipped,
            });
        }
        Ok(Self {
            by_kid: by_kid.into_iter().map(|(k, v)| (k, v.into())).collect(),
            fetched_at: Some(SystemTime::now()),
            jwks_uri: Some(url.to_owned()),
        })
    }
}

/// Where keys come from: the discovery document of one directory at the configured authority.
pub struct JwksSource {
    http: reqwest::Client,
    pub discovery_url: String,
    authority: url::Url,
}

impl JwksSource {
    pub fn new(
        http: reqwest::Client,
        authority: &str,
        discovery_tenant: &str,
    ) -> Result<Self, String> {
        let authority_url = url::Url::parse(authority).map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            discovery_url: format!(
                "{authority}/{discovery_tenant}/v2.0/.well-known/openid-configuration"
            ),
            authority: authority_url,
        })
    }

    /// Discovery, then the JWKS (a `jwks fetch` span when a Check is waiting for it).
    pub async fn fetch(&self) -> Result<KeySet, JwksError> {
        crate::telemetry::in_child(
            "jwks fetch",
            vec![opentelemetry::KeyValue::new(
                "url.full",
                self.discovery_url.clone(),
            )],
            self.fetch_inner(),
        )
        .await
    }

    async fn fetch_inner(&self) -> Result<KeySet, JwksError> {
        #[derive(Deserialize)]
        struct Discovery {
            jwks_uri: String,
        }
        let body = get_capped(&self.http, &self.discovery_url).await?;
        let discovery: Discovery = serde_json::from_slice(&body).map_err(|e| JwksError::Json {
            url: self.discovery_url.clone(),
            reason: e.to_string(),
        })?;
        let jwks_uri = url::Url::parse(&discovery.jwks_uri)
            .map_err(|_| JwksError::ForeignJwksUri(discovery.jwks_uri.clone()))?;
        if jwks_uri.origin() != self.authority.origin() {
            return Err(JwksError::ForeignJwksUri(discovery.jwks_uri));
        }
        let body = get_capped(&self.http, jwks_uri.as_str()).await?;
        KeySet::from_jwks(&body, jwks_uri.as_str())
    }
}

/// GET with a size cap; the client carries the timeout.
pub(crate) async fn get_capped(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let http_err = |e: reqwest::Error| JwksError::Http {
        url: url.to_owned(),
        reason: without_url(&e),
    };
    let mut resp = http.get(url).send().await.map_err(http_err)?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            if body.len() + chunk.len() > MAX_ERROR_BYTES {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        return Err(JwksError::Status {
            url: url.to_owned(),
            status,
            entra_error: entra_error(&body),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(JwksError::Http {
                url: url.to_owned(),
                reason: format!("document larger than {MAX_DOCUMENT_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Largest error body read for Entra's error code.
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// `invalid_tenant AADSTS90002` from Entra's error JSON (`error`, `error_codes`), or `None`.
/// Only the code and a name from a closed vocabulary leave here: descriptions can echo input.
fn entra_error(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct EntraError {
        error: String,
        #[serde(default)]
        error_codes: Vec<u64>,
    }
    let e: EntraError = serde_json::from_slice(body).ok()?;
    let name_ok = !e.error.is_empty()
        && e.error.len() <= 64
        && e.error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let name = if name_ok { e.error.as_str() } else { "error" };
    Some(match e.error_codes.first() {
        Some(code) => format!("{name} AADSTS{code}"),
        None => name.to_owned(),
    })
}

fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// The current keys plus how to get new ones.
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    source: Option<JwksSource>,
    /// When the request path last fetched keys for an unknown `kid`; the lock makes it
    /// single-flight.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    generation: AtomicU64,
    unknown_kid_interval: Duration,
    pub refresh_failures: AtomicU64,
    pub refreshes: AtomicU64,
}

impl KeyStore {
    pub fn new(source: JwksSource, unknown_kid_interval: Duration) -> Self {
        Self {
            current: ArcSwap::from_pointee(KeySet::default()),
            source: Some(source),
            on_demand: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            unknown_kid_interval,
            refresh_failures: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        }
    }

    /// A fixed key set (tests, benchmarks).
    pub fn fixed(keys: KeySet) -> Self {
        Self {
            current: ArcSwap::from_pointee(keys),
            source: None,
            on_demand: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(1),
            unknown_kid_interval: Duration::MAX,
            refresh_failures: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        !self.current.load().is_empty()
    }

    pub fn discovery_url(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.discovery_url.as_str())
    }

    pub fn keys_for(&self, kid: &str) -> Option<Arc<[Arc<Key>]>> {
        self.current.load().by_kid.get(kid).cloned()
    }

    /// Fetches and installs a new key set; on failure the current set stays.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let Some(source) = &self.source else {
            return Ok(self.current.load().len());
        };
        match source.fetch().await {
            Ok(set) => {
                let n = set.len();
                let kids = set.kids();
                self.current.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(keys = n, ?kids, "JWKS loaded");
                Ok(n)
            }
            Err(e) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, kept_keys = self.current.load().len(), "JWKS refresh failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// The request path met a `kid` we do not know: refetch, at most once per interval, with
    /// concurrent callers sharing one fetch.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> Result<Arc<[Arc<Key>]>, TokenError> {
        let generation_seen = self.generation.load(Ordering::Acquire);
        let mut last = self.on_demand.lock().await;
        if self.generation.load(Ordering::Acquire) == generation_seen {
            let allowed = last.is_none_or(|t| t.elapsed() >= self.unknown_kid_interval);
            if allowed && self.source.is_some() {
                *last = Some(Instant::now());
                let _ = self.refresh().await;
            }
        }
        drop(last);
        match self.keys_for(kid) {
            Some(keys) => Ok(keys),
            None if !self.is_loaded() => Err(TokenError::KeysUnavailable),
            None => Err(TokenError::UnknownKeyId),
        }
    }

    /// Loads keys at start (retrying with backoff until it works or shutdown), then refreshes
    /// every `every`, retrying sooner after a failure.
    pub async fn run_refresh(
        self: Arc<Self>,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(500);
        loop {
            let wait = match self.refresh().await {
                Ok(_) => {
                    backoff = Duration::from_millis(500);
                    every
                }
                Err(_) => {
                    let w = backoff;
                    backoff = (backoff * 2).min(every).min(Duration::from_secs(60));
                    w
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return,
            }
        }
    }
}
