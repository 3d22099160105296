//! On-behalf-of: a token for an upstream MCP server, obtained from Entra with the user's token
//! as the assertion (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
//! `requested_token_use=on_behalf_of`). The upstream gets that token, never the client's.
//!
//! Cached per (`tid`, `oid`, scope) until a minute before it expires, bounded; concurrent misses
//! share one exchange. `interaction_required` (MFA, consent, Conditional Access) is passed to the
//! client as a claims challenge; every other failure is a 503 with no Entra text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use moka::future::Cache;
use serde::Deserialize;

/// Tokens are dropped from the cache this long before they expire.
const EARLY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OboError {
    /// The user must satisfy a claims challenge; the value is base64 of Entra's `claims`.
    #[error("interaction required")]
    InteractionRequired { claims: Option<String> },
    #[error("token exchange refused: {0}")]
    Refused(String),
    #[error("token endpoint unreachable: {0}")]
    Transport(&'static str),
}

#[derive(Debug, Clone)]
pub struct OboSettings {
    pub authority: String,
    pub client_id: String,
    /// A secret, a certificate or the workload's federated token.
    pub credential: crate::credential::Credential,
}

#[derive(Clone)]
struct Minted {
    token: Arc<str>,
    valid_until: Instant,
}

struct ValidUntil;

impl moka::Expiry<(String, String, String), Minted> for ValidUntil {
    fn expire_after_create(
        &self,
        _k: &(String, String, String),
        v: &Minted,
        now: Instant,
    ) -> Option<Duration> {
        Some(v.valid_until.saturating_duration_since(now))
    }
}

pub struct OboClient {
    http: reqwest::Client,
    s: OboSettings,
    cache: Cache<(String, String, String), Minted>,
    pub exchanges: AtomicU64,
    pub failures: AtomicU64,
}

impl OboClient {
    pub fn new(http: reqwest::Client, s: OboSettings, capacity: u64) -> Self {
        Self {
            http,
            s,
            cache: Cache::builder()
                .max_capacity(capacity)
                .expire_after(ValidUntil)
                .build(),
            exchanges: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// A token for `scope` on behalf of the user whose token is `assertion`.
    pub async fn token(
        &self,
        tid: &str,
        oid: &str,
        scope: &str,
        assertion: &str,
    ) -> Result<Arc<str>, OboError> {
        let key = (tid.to_owned(), oid.to_owned(), scope.to_owned());
        let minted = self
            .cache
            .try_get_with(key, self.exchange(tid, scope, assertion))
            .await
            .map_err(|e| (*e).clone())?;
        Ok(minted.token)
    }

    async fn exchange(&self, tid: &str, scope: &str, assertion: &str) -> Result<Minted, OboError> {
        #[derive(Deserialize)]
        struct Ok_ {
            access_token: String,
            expires_in: u64,
        }
        #[derive(Deserialize)]
        struct Err_ {
            error: Option<String>,
            error_codes: Option<Vec<u64>>,
            claims: Option<String>,
        }
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/{tid}/oauth2/v2.0/token", self.s.authority);
        let auth = self
            .s
            .credential
            .form_fields(&self.s.client_id, &url)
            .await
            .map_err(|e| {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "on-behalf-of: no client credential to present");
                OboError::Transport("client credential unavailable")
            })?;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", self.s.client_id.as_str()),
            ("assertion", assertion),
            ("scope", scope),
            ("requested_token_use", "on_behalf_of"),
        ];
        form.extend(auth.iter().map(|(k, v)| (*k, v.as_str())));
        let resp = self.http.post(&url).form(&form).send().await.map_err(|e| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            OboError::Transport(if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            })
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|_| OboError::Transport("unreadable response"))?;
        if status.is_success() {
            let t: Ok_ = serde_json::from_slice(&body)
                .map_err(|_| OboError::Refused("not a token response".into()))?;
            let lifetime = Duration::from_secs(t.expires_in).saturating_sub(EARLY);
            return Ok(Minted {
                token: t.access_token.into(),
                valid_until: Instant::now() + lifetime,
            });
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let e: Err_ = serde_json::from_slice(&body)
            .map_err(|_| OboError::Refused(format!("HTTP {}", status.as_u16())))?;
        if e.error.as_deref() == Some("interaction_required") {
            let claims = e
                .claims
                .filter(|c| !c.is_empty())
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c));
            return Err(OboError::InteractionRequired { claims });
        }
        Err(OboError::Refused(format!(
            "HTTP {} {} {:?}",
            status.as_u16(),
            e.error.unwrap_or_default(),
            e.error_codes.unwrap_or_default()
        )))
    }
}
